"""hash: sha256 of the image bytes, decode status, and pHash → ``images``.

pHash is imagededup's perceptual hash, bit for bit (:mod:`curate.phash`: 32×32 LANCZOS
grayscale, 2-D DCT, top-left 8×8 block against its median → 64 bits), computed on the
pixels our loader decoded (:mod:`curate.images`: EXIF orientation applied, transparency
composited, every mode normalised), so orientation variants hash alike. Stored as UBIGINT,
most significant bit = first hex digit of imagededup's 16-character string. ``phash_mirror``
is the pHash of the horizontally mirrored image (the 32×32 gray array flipped before the DCT,
:func:`curate.phash.phash_with_mirror`), for dedup's mirror-aware pHash edges.

Catalogs hashed before ``phash_mirror`` existed (:data:`HASH_VERSION` 1) are brought up to
date by the next hash run: the stage's digest includes :data:`HASH_VERSION`, so it runs again,
and the decoded rows that lack a mirror hash are forgotten and hashed again (the same rows
come back, now with their mirror hash; nothing else changes).

Decoding runs in ``hash.workers`` processes; each takes a run of samples, decodes them one by
one inside the loader's guard, and hashes the run in one vectorised DCT. Rows are committed
in batches of ``hash.batch_size``; a killed run resumes with the samples that have no
``images`` row yet (nothing hashed twice, nothing lost).

``hash.engine: ray`` (:mod:`curate.engine.ray_engine`): the same runs of samples are hashed by
:func:`hash_items` in a Ray actor pool and come back in order; this process commits them exactly
as above (the catalog has one writer), so both engines store the same rows.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from curate.catalog import Workspace
from curate.config import RunConfig
from curate.images import open_image, read_ref
from curate.phash import gray32, phash_with_mirror
from curate.progress import bar


def hash_items(items: list[tuple[int, str]], max_pixels: int) -> list[tuple]:
    """(sample_id, image_ref) pairs → ``images`` rows, pHashes computed as one batch.

    Returns:
        one tuple per item in the ``images`` column order (see ``_SCHEMA``: …, ``phash`` uint64
        at index 5, …, ``phash_mirror`` uint64 last; both None without a decoded image); never
        raises for a bad image (its status says why).
    """
    rows: list[list] = []
    grays: list[np.ndarray] = []
    with_gray: list[int] = []
    for sid, ref in items:
        data = read_ref(ref)
        d, im = open_image(data, max_pixels=max_pixels)
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        if im is not None:
            try:
                grays.append(gray32(im))
                with_gray.append(len(rows))
            except Exception as e:  # noqa: BLE001 - never lose the row over its hash
                d.notes.append(f"phash_failed: {type(e).__name__}: {e}")
        rows.append([sid, d.status, d.detail, None if data is None else len(data), sha, None, d.width, d.height,
                     d.raw_width, d.raw_height, d.mode, d.format, d.orientation, d.notes, None])
    if grays:
        hashes, mirrors = phash_with_mirror(np.stack(grays))
        for k, h, m in zip(with_gray, hashes.tolist(), mirrors.tolist()):
            rows[k][5] = int(h)
            rows[k][-1] = int(m)
    return [tuple(r) for r in rows]


def hash_one(item: tuple[int, str], max_pixels: int) -> tuple:
    """(sample_id, image_ref) → one ``images`` row (see :func:`hash_items`)."""
    return hash_items([item], max_pixels)[0]


def _work(args):
    items, max_pixels = args
    return hash_items(items, max_pixels)


MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (bytes)
TRIM_THRESHOLD = 128 << 20  # free heap kept before glibc gives it back (bytes): 4 heap-served images


def worker_init() -> None:
    """Initialiser of the hash worker processes: let glibc reuse freed memory.

    Every decoded image is a fresh buffer of up to width × height × 4 bytes. By default glibc
    maps each big one anew and unmaps it when freed, so every image pays a page fault per
    4 KiB page (≈ 12 % of the hash stage's CPU time, most of it in the kernel, measured with
    ``benchmarks/bench_phash.py``). Raising ``M_MMAP_THRESHOLD`` to :data:`MMAP_THRESHOLD` and
    ``M_TRIM_THRESHOLD`` to :data:`TRIM_THRESHOLD` serves images up to 8 MP from the heap and
    keeps it mapped between images. Only these worker processes are changed; a C library
    without ``mallopt`` (musl, macOS) is left as it is.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD


def run_size(batch_size: int, workers: int) -> int:
    """Samples per worker task: a committed batch split so that every worker has two tasks in
    flight, 8–64 samples (each task's pHashes are one vectorised DCT)."""
    return max(8, min(64, batch_size // max(1, 2 * (workers or 1))))


_SCHEMA = None


def images_schema():
    """The arrow schema of :func:`hash_items`' rows (the ``images`` columns, in that order)."""
    import pyarrow as pa

    global _SCHEMA
    if _SCHEMA is None:
        i32, s = pa.int32(), pa.string()
        _SCHEMA = pa.schema([
            ("sample_id", pa.int64()), ("status", s), ("detail", s), ("n_bytes", pa.int64()), ("sha256", s),
            ("phash", pa.uint64()), ("width", i32), ("height", i32), ("raw_width", i32), ("raw_height", i32),
            ("mode", s), ("format", s), ("orientation", i32), ("notes", pa.list_(s)), ("phash_mirror", pa.uint64()),
        ])
    return _SCHEMA


def rows_table(rows: list[tuple]):
    """:func:`hash_items` rows → an arrow table of :func:`images_schema` (exact round trip)."""
    import pyarrow as pa

    schema = images_schema()
    cols = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table([pa.array(list(c), type=f.type) for c, f in zip(cols, schema)], schema=schema)


def _insert(ws: Workspace, rows) -> None:
    """Insert ``images`` rows (tuples, or an arrow table of :func:`images_schema` as the Ray
    engine returns them) in one transaction (typed through arrow: phash is uint64)."""
    t = rows if hasattr(rows, "num_rows") else rows_table(rows)
    with ws.transaction() as con:
        con.register("_img_batch", t)
        try:
            cols = ", ".join(images_schema().names)  # by name: older catalogs have phash_mirror appended last too
            con.execute(f"INSERT INTO images ({cols}) SELECT {cols} FROM _img_batch")
        finally:
            con.unregister("_img_batch")


HASH_VERSION = 2  # bump when the stage stores something new: 2 = phash_mirror


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    # depends on ingest (upstream digest), its config section, and what the stage stores
    return {"hash_version": HASH_VERSION}


def _forget_without_mirror(ws: Workspace) -> int:
    """Forget decoded rows hashed before mirror hashes existed (pHash but no ``phash_mirror``),
    so this run hashes them again. Returns how many were forgotten."""
    with ws.transaction() as con:
        n = con.execute("DELETE FROM images WHERE phash IS NOT NULL AND phash_mirror IS NULL").fetchall()[0][0]
    return int(n)


def _forget_for_new_limit(ws: Workspace, max_pixels: int) -> int:
    """When ``max_pixels`` changed since the last hash run, forget the images whose outcome
    depends on it (``too_large`` ones, and decoded ones now above the limit) so they are
    hashed again under the new limit. Returns how many were forgotten."""
    last = ws.last_run("hash")
    before = ((last or {}).get("config") or {}).get("section", {}).get("max_pixels")
    if before is None or before == max_pixels:
        return 0
    with ws.transaction() as con:
        n = con.execute(
            "DELETE FROM images WHERE status = 'too_large' OR "
            "(status = 'ok' AND CAST(raw_width AS BIGINT) * raw_height > ?)", [max_pixels]
        ).fetchall()[0][0]
    return int(n)


def _commit(ws: Workspace, results, bs: int, total: int) -> int:
    """Insert the ``images`` rows of ``results`` (lists of rows, or arrow tables, in sample
    order) every ``bs`` rows, one transaction each; returns how many were inserted."""
    import pyarrow as pa

    hashed = 0
    pending: list = []  # rows (local engine) or arrow tables (Ray engine: no round trip through Python)
    n = 0
    with bar(total=total, desc="hash", unit="img") as pb:
        for part in results:
            k = part.num_rows if isinstance(part, pa.Table) else len(part)
            if isinstance(part, pa.Table):
                pending.append(part)
            else:
                pending.extend(part)
            n += k
            pb.update(k)
            if n >= bs:
                _insert(ws, pa.concat_tables(pending) if isinstance(part, pa.Table) else pending)
                hashed += n
                pending, n = [], 0
        if pending:
            _insert(ws, pa.concat_tables(pending) if isinstance(pending[0], pa.Table) else pending)
            hashed += n
    return hashed


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    rehash = _forget_for_new_limit(ws, cfg.hash.max_pixels)
    rehash_mirror = _forget_without_mirror(ws)
    todo_sql = ("SELECT s.sample_id, s.image_ref FROM samples s ANTI JOIN images i USING (sample_id) "
                "WHERE s.image_ref IS NOT NULL ORDER BY s.sample_id")
    bs = cfg.hash.batch_size
    # runs of `sub` samples stream through the workers (in order) while the main process
    # commits every `bs` rows, so workers never wait for a commit; both engines hash the same runs
    sub = run_size(bs, cfg.hash.workers)
    if cfg.hash.engine == "ray":  # runs hashed by a Ray actor pool, rows committed here (single writer)
        from curate.engine.ray_engine import hash_runs

        total = int(ws.scalar(f"SELECT count(*) FROM ({todo_sql})"))
        ray_stats: dict[str, Any] = {}
        hashed = _commit(ws, hash_runs(ws, cfg.hash, todo_sql, sub, stats=ray_stats), bs, total)
    else:
        todo = ws.q(todo_sql)
        pool = None
        if cfg.hash.workers > 0 and len(todo) > 64:
            import multiprocessing as mp

            from curate import lanczos

            lanczos.warm()  # compile (or load) the resize kernels once; forked workers inherit them
            pool = mp.get_context("fork").Pool(cfg.hash.workers, initializer=worker_init)
        try:
            pieces = ((todo[i : i + sub], cfg.hash.max_pixels) for i in range(0, len(todo), sub))
            hashed = _commit(ws, pool.imap(_work, pieces) if pool else map(_work, pieces), bs, len(todo))
        finally:
            if pool:
                pool.close()
                pool.join()
    by_status = dict(ws.q("SELECT status, count(*) FROM images GROUP BY status ORDER BY status"))
    out = {
        "hashed": hashed,
        "rehashed_for_new_max_pixels": rehash,
        "rehashed_for_mirror_phash": rehash_mirror,
        "images_total": int(sum(by_status.values())),
        "by_status": by_status,
        "metadata_only": int(ws.scalar("SELECT count(*) FROM samples WHERE image_ref IS NULL")),
        "notes": int(ws.scalar("SELECT count(*) FROM images WHERE len(notes) > 0")),
    }
    if cfg.hash.engine == "ray":
        out["ray"] = ray_stats  # cluster, actors, units, shards, worker processes
    return out
