"""hash: sha256 of the image bytes, decode status, and pHash → ``images``.

pHash is imagededup's perceptual hash (``imagededup.methods.PHash``: grayscale, 32×32
resize, 2-D DCT, top-left 8×8 block against its median → 64 bits), computed on the pixels
our loader decoded (:mod:`curate.images`: EXIF orientation applied, every mode normalised
to RGB), so orientation variants hash alike. Stored as UBIGINT, most significant bit = first
hex digit of imagededup's 16-character string.

Work is committed in batches; a killed run resumes with the samples that have no
``images`` row yet (nothing hashed twice, nothing lost).
"""
from __future__ import annotations

import hashlib
from typing import Any

from curate.catalog import Workspace
from curate.config import RunConfig
from curate.images import decode, read_ref
from curate.progress import bar

_PHASHER = None


def phash_of(rgb) -> int:
    """imagededup pHash of a uint8 (h, w, 3) array, as an int in [0, 2**64)."""
    global _PHASHER
    if _PHASHER is None:
        from imagededup.methods import PHash

        _PHASHER = PHash(verbose=False)
    return int(_PHASHER.encode_image(image_array=rgb), 16)


def hash_one(item: tuple[int, str], max_pixels: int) -> tuple:
    """(sample_id, image_ref) → one ``images`` row (see the table's columns)."""
    sid, ref = item
    data = read_ref(ref)
    d = decode(data, max_pixels=max_pixels)
    sha = hashlib.sha256(data).hexdigest() if data is not None else None
    ph = None
    if d.status == "ok":
        try:
            ph = phash_of(d.rgb)
        except Exception as e:  # noqa: BLE001 - imagededup rejects some arrays (e.g. 1×1)
            d.notes.append(f"phash_failed: {type(e).__name__}: {e}")
    return (sid, d.status, d.detail, None if data is None else len(data), sha, ph, d.width, d.height,
            d.raw_width, d.raw_height, d.mode, d.format, d.orientation, d.notes)


def _work(args):
    items, max_pixels = args
    return [hash_one(it, max_pixels) for it in items]


_SCHEMA = None


def _insert(ws: Workspace, rows: list[tuple]) -> None:
    """Insert ``images`` rows in one transaction (typed through arrow: phash is uint64)."""
    import pyarrow as pa

    global _SCHEMA
    if _SCHEMA is None:
        i32, s = pa.int32(), pa.string()
        _SCHEMA = pa.schema([
            ("sample_id", pa.int64()), ("status", s), ("detail", s), ("n_bytes", pa.int64()), ("sha256", s),
            ("phash", pa.uint64()), ("width", i32), ("height", i32), ("raw_width", i32), ("raw_height", i32),
            ("mode", s), ("format", s), ("orientation", i32), ("notes", pa.list_(s)),
        ])
    cols = list(zip(*rows))
    t = pa.table([pa.array(list(c), type=f.type) for c, f in zip(cols, _SCHEMA)], schema=_SCHEMA)
    with ws.transaction() as con:
        con.register("_img_batch", t)
        try:
            con.execute("INSERT INTO images SELECT * FROM _img_batch")
        finally:
            con.unregister("_img_batch")


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    return None  # depends only on ingest (upstream digest) and its config section


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    todo = ws.q(
        "SELECT s.sample_id, s.image_ref FROM samples s ANTI JOIN images i USING (sample_id) "
        "WHERE s.image_ref IS NOT NULL ORDER BY s.sample_id"
    )
    bs = cfg.hash.batch_size
    chunks = [todo[i : i + bs] for i in range(0, len(todo), bs)]
    hashed = 0
    pool = None
    if cfg.hash.workers > 0 and len(todo) > 64:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(cfg.hash.workers)
    try:
        sub = max(8, bs // max(1, 4 * (cfg.hash.workers or 1)))
        with bar(total=len(todo), desc="hash", unit="img") as pb:
            for chunk in chunks:
                pieces = [(chunk[i : i + sub], cfg.hash.max_pixels) for i in range(0, len(chunk), sub)]
                results = [r for part in (pool.imap(_work, pieces) if pool else map(_work, pieces)) for r in part]
                _insert(ws, results)
                hashed += len(results)
                pb.update(len(results))
    finally:
        if pool:
            pool.close()
            pool.join()
    by_status = dict(ws.q("SELECT status, count(*) FROM images GROUP BY status ORDER BY status"))
    return {
        "hashed": hashed,
        "images_total": int(sum(by_status.values())),
        "by_status": by_status,
        "metadata_only": int(ws.scalar("SELECT count(*) FROM samples WHERE image_ref IS NULL")),
        "notes": int(ws.scalar("SELECT count(*) FROM images WHERE len(notes) > 0")),
    }
