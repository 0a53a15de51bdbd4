"""hash: sha256 of the image bytes, decode status, and pHash → ``images``.

pHash is imagededup's perceptual hash, bit for bit (:mod:`curate.media.phash`: 32×32 LANCZOS
grayscale, 2-D DCT, top-left 8×8 block against its median → 64 bits), computed on the
pixels our loader decoded (:mod:`curate.media.images`: EXIF orientation applied, transparency
composited, every mode normalised), so orientation variants hash alike. Stored as UBIGINT,
most significant bit = first hex digit of imagededup's 16-character string. ``phash_mirror``
is the pHash of the horizontally mirrored image (the 32×32 gray array flipped before the DCT,
:func:`curate.media.phash.phash_with_mirror`), for dedup's mirror-aware pHash edges.
``phash_quality`` (0–100, :func:`curate.media.phash.information`) says how much picture the
pHash had to work with: flat and near-flat images score under 25 and get no pHash edges.

Catalogs hashed before ``phash_mirror`` existed (:data:`HASH_VERSION` 1) are brought up to
date by the next hash run: the stage's digest includes :data:`HASH_VERSION`, so it runs again,
and the decoded rows that lack a mirror hash are forgotten and hashed again (the same rows
come back, now with their mirror hash; nothing else changes).

Changed image files (:mod:`curate.stages.hash.changes`): every row records the size and mtime
of the file its bytes came from; the stage's input fingerprint is the digest of the current
ones, so a file replaced, deleted or restored makes it run, and it forgets (to hash again) the
rows whose file's bytes changed, went or came back. ``force`` (``curate hash --force``) forgets
every row: every file is read and hashed again. The counter ``output_digest`` (a digest of the
``images`` table) reaches the digests of the stages that read it (:func:`curate.stages.stage_digest`).

Decoding runs in ``hash.workers`` processes; each takes a run of samples, decodes them one by
one inside the loader's guard, and hashes the run in one vectorised DCT. Rows are committed
in batches of ``hash.batch_size``; a killed run resumes with the samples that have no
``images`` row yet (nothing hashed twice, nothing lost).

``hash.engine: ray`` (:mod:`curate.engine`, :mod:`curate.stages.hash.distributed`): the same runs of samples are hashed by
:func:`hash_items` in a Ray actor pool and come back in order; this process commits them exactly
as above (the catalog has one writer), so both engines store the same rows.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from curate.config import RunConfig
from curate.engine import get_engine
from curate.media import lanczos
from curate.media.refs import clear_caches, ref_file_sql
from curate.progress import bar
from curate.stages.hash.compute import hash_items, images_schema, rows_table, run_size, work, worker_init  # noqa: F401
from curate.stages.hash.changes import (
    CURRENT_TABLE,
    content_digest,
    ensure_current,
    files_digest,
    forget_changed,
    load_current,
)
from curate.stages.hash.distributed import hash_runs
from curate.store.catalog import Workspace


def _insert(ws: Workspace, rows) -> None:
    """Insert ``images`` rows (tuples, or an arrow table of :func:`images_schema` as the Ray
    engine returns them) in one transaction (typed through arrow: phash is uint64)."""
    t = rows if hasattr(rows, "num_rows") else rows_table(rows)
    with ws.transaction() as con:
        con.register("_img_batch", t)
        try:
            cols = ", ".join(images_schema().names)  # by name: older catalogs have phash_mirror appended last too
            ensure_current(con)  # the file's size and mtime, taken before its bytes were read (hash.changes)
            con.execute(f"INSERT INTO images ({cols}, file_size, file_mtime_ns) "
                        f"SELECT {', '.join('b.' + c for c in images_schema().names)}, f.size, f.mtime_ns "
                        f"FROM _img_batch b JOIN samples s USING (sample_id) "
                        f"LEFT JOIN {CURRENT_TABLE} f ON f.present AND f.file = {ref_file_sql('s.image_ref')}")
        finally:
            con.unregister("_img_batch")


HASH_VERSION = 6  # bump when the stage stores something new: 2 = phash_mirror, 3 = phash_quality, 4 = colourfulness, border,
#                 5 = pHash of the border-trimmed picture (compute.trimmed_gray32), 6 = jpeg_quality


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    """What the stage stores (:data:`HASH_VERSION`) and the size and mtime of every image file
    now (:func:`curate.stages.hash.changes.files_digest`), so a file replaced, deleted or
    restored since the last run makes the stage run again (it also depends on ingest's digest
    and its config section, through the runner). While some image is ``unreadable`` (the OS
    refused to open its file), the stage runs on every run, so the file is tried again."""
    load_current(ws)
    out = {"hash_version": HASH_VERSION, "files": files_digest(ws)}
    if ws.scalar("SELECT count(*) FROM images WHERE status = 'unreadable'"):
        out["retry_unreadable"] = time.time_ns()
    return out


def _forget_all(ws: Workspace) -> int:
    """Forget every ``images`` row (``curate hash --force``), so this run reads and hashes every
    file again. Returns how many were forgotten."""
    with ws.transaction() as con:
        return int(con.execute("DELETE FROM images").fetchall()[0][0])


def _forget_incomplete_rows(ws: Workspace) -> int:
    """Forget decoded rows hashed before mirror hashes (or the information, colourfulness and
    border measures, or a JPEG's quality) existed (a pHash but no ``phash_mirror``, ``phash_quality``,
    ``colourfulness`` or ``border``, a JPEG without ``jpeg_quality``), so this run hashes them again. Returns how many were
    forgotten."""
    with ws.transaction() as con:
        n = con.execute("DELETE FROM images WHERE phash IS NOT NULL AND (phash_mirror IS NULL OR phash_quality IS NULL "
                        "OR colourfulness IS NULL OR border IS NULL OR (format = 'JPEG' AND jpeg_quality IS NULL))"
                        ).fetchall()[0][0]
    return int(n)


def _forget_older_hashes(ws: Workspace) -> int:
    """Forget every stored row when the last hash run stored an older :data:`HASH_VERSION`
    whose pHash meant something else (before 5: taken on the untrimmed image), so this run
    hashes them again. Returns how many were forgotten."""
    last = ws.last_run("hash")
    if last is None or int((last.get("counters") or {}).get("hash_version", 0)) >= 5:
        return 0
    with ws.transaction() as con:
        n = con.execute("DELETE FROM images").fetchall()[0][0]
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


def run(ws: Workspace, cfg: RunConfig, force: bool = False) -> dict[str, Any]:
    """Hash every sample's image that has no ``images`` row, after forgetting the rows that
    must be computed again: images whose file changed since they were hashed
    (:func:`curate.stages.hash.changes.forget_changed`), or every row with ``force`` (``curate
    hash --force``: every file is read and hashed again).

    Returns:
        counters: ``hashed``, ``rehashed_changed``, ``rechecked_unchanged``, ``rehashed_forced``,
        ``rehashed_for_…``, ``by_status``, ``output_digest`` (:func:`~curate.stages.hash.changes.content_digest`), ….
    """
    clear_caches()  # no reader of a table opened by an earlier run of this process (a notebook)
    load_current(ws)  # sizes and mtimes before any byte is read: recorded with the rows inserted
    changed = forget_changed(ws)
    forced = _forget_all(ws) if force else 0
    rehash = _forget_for_new_limit(ws, cfg.hash.max_pixels)
    rehash_mirror = _forget_incomplete_rows(ws)
    rehash_version = _forget_older_hashes(ws)
    todo_sql = ("SELECT s.sample_id, s.image_ref FROM samples s ANTI JOIN images i USING (sample_id) "
                "WHERE s.image_ref IS NOT NULL ORDER BY s.sample_id")
    bs = cfg.hash.batch_size
    # runs of `sub` samples stream through the workers (in order) while the main process
    # commits every `bs` rows, so workers never wait for a commit; both engines hash the same runs
    sub = run_size(bs, cfg.hash.workers)
    if get_engine(cfg.hash.engine).distributed:  # runs hashed by the engine's workers, rows committed here (single writer)
        total = int(ws.scalar(f"SELECT count(*) FROM ({todo_sql})"))
        ray_stats: dict[str, Any] = {}
        hashed = _commit(ws, hash_runs(ws, cfg.hash, todo_sql, sub, stats=ray_stats), bs, total)
    else:
        todo = ws.q(todo_sql)
        pool = None
        if cfg.hash.workers > 0 and len(todo) > 64:
            lanczos.warm()  # compile (or load) the resize kernels once; forked workers inherit them
            pool = mp.get_context("fork").Pool(cfg.hash.workers, initializer=worker_init)
        try:
            pieces = ((todo[i : i + sub], cfg.hash.max_pixels) for i in range(0, len(todo), sub))
            hashed = _commit(ws, pool.imap(work, pieces) if pool else map(work, pieces), bs, len(todo))
        finally:
            if pool:
                pool.close()
                pool.join()
    by_status = dict(ws.q("SELECT status, count(*) FROM images GROUP BY status ORDER BY status"))
    out = {
        "hashed": hashed,
        **changed,
        "rehashed_forced": forced,
        "rehashed_for_new_max_pixels": rehash,
        "rehashed_for_mirror_phash": rehash_mirror,
        "rehashed_for_hash_version": rehash_version,
        "hash_version": HASH_VERSION,
        "images_total": int(sum(by_status.values())),
        "by_status": by_status,
        "metadata_only": int(ws.scalar("SELECT count(*) FROM samples WHERE image_ref IS NULL")),
        "notes": int(ws.scalar("SELECT count(*) FROM images WHERE len(notes) > 0")),
        "output_digest": content_digest(ws),
    }
    if get_engine(cfg.hash.engine).distributed:
        out[cfg.hash.engine] = ray_stats  # cluster, actors, units, shards, worker processes
    return out
