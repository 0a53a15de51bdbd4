"""Embedding parts and their catalog rows, for both engines and for imported embeddings:
``embeddings`` / ``image_text`` rows, writing one chunk's part, and reconciling the catalog
with the parts on disk (see :mod:`curate.stages.embed.stage`, *Resume*)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.store import fsio
from curate.store.catalog import Workspace
from curate.store.embeddings import (
    clean_temp,
    list_parts,
    load_npy,
    part_files,
    read_part_ids,
    read_part_meta,
    write_part,
)


def commit_rows(ws: Workspace, rows, sims: list[tuple] | None = None) -> None:
    """In one transaction: ``embeddings`` rows (sample_id, key, part, status; tuples or an arrow
    table) and ``image_text`` rows (sample_id, image key, caption key, similarity)."""
    if (rows is None or not len(rows)) and not sims:
        return
    with ws.transaction() as con:
        insert_rows(con, rows, sims)


def insert_arrow(con, table, sql: str) -> None:
    """Run ``sql`` with the arrow ``table`` registered as ``_rows`` (unregistered afterwards)."""
    con.register("_rows", table)
    try:
        con.execute(sql)
    finally:
        con.unregister("_rows")


def insert_rows(con, rows, sims: list[tuple] | None = None) -> None:
    """:func:`commit_rows` inside the caller's transaction (``con``), typed through arrow;
    ``rows`` may also be an arrow table with those four columns (the Ray engine's parts)."""
    import pyarrow as pa

    if rows is not None and len(rows):
        if isinstance(rows, pa.Table):
            t = rows
        else:
            cols = list(zip(*rows))
            t = pa.table({
                "sample_id": pa.array(cols[0], pa.int64()), "model": pa.array(cols[1], pa.string()),
                "part": pa.array(cols[2], pa.int32()), "status": pa.array(cols[3], pa.string()),
            })
        # sha256: the image bytes the vector was computed from (images.sha256 now; not for caption or imported keys)
        insert_arrow(con, t, "INSERT INTO embeddings (sample_id, model, part, status, sha256) "
                              "SELECT r.sample_id, r.model, r.part, r.status, CASE WHEN r.model LIKE 'text:%' "
                              "OR r.model LIKE 'precomputed:%' THEN NULL ELSE i.sha256 END "
                              "FROM _rows r LEFT JOIN images i USING (sample_id) ON CONFLICT DO NOTHING")
    if sims:
        cols = list(zip(*sims))
        t = pa.table({
            "sample_id": pa.array(cols[0], pa.int64()), "image_model": pa.array(cols[1], pa.string()),
            "caption_model": pa.array(cols[2], pa.string()), "similarity": pa.array(cols[3], pa.float64()),
        })
        insert_arrow(con, t, "INSERT INTO image_text SELECT * FROM _rows ON CONFLICT DO NOTHING")


def reconcile(ws: Workspace, key: str, folder: Path) -> dict[str, int]:
    """Make the catalog agree with the parts on disk (see module doc, *Resume*); also used by
    :mod:`curate.stages.embed.precomputed` for imported parts."""
    removed_tmp = clean_temp(folder)
    on_disk = set(list_parts(folder))
    known = {r[0] for r in ws.q("SELECT DISTINCT part FROM embeddings WHERE model = ? AND part IS NOT NULL", [key])}
    gone = sorted(known - on_disk)
    if gone:
        with ws.transaction() as con:
            con.execute(f"DELETE FROM embeddings WHERE model = ? AND part IN ({','.join(map(str, gone))})", [key])
    recovered = 0
    for num in sorted(on_disk - known):
        ids = read_part_ids(folder, num)
        meta = read_part_meta(folder, num) or {}
        rows = [(int(i), key, num, "ok") for i in ids]
        rows += [(int(s), key, num, st) for s, st in meta.get("failed", [])]
        sims = meta.get("similarity")  # caption parts of an open_clip model: [image key, [cosine or null]]
        sim_rows = ([(int(i), sims[0], key, x) for i, x in zip(ids.tolist(), sims[1]) if x is not None]
                    if sims else [])
        commit_rows(ws, rows, sim_rows)
        recovered += len(rows)
    return {"recovered_rows": recovered, "forgotten_parts": len(gone), "temp_files_removed": removed_tmp}



def forget_stale_vectors(ws: Workspace, key: str, folder) -> dict[str, int]:
    """Forget the vectors of image key ``key`` whose image changed since they were computed
    (``embeddings.sha256`` is not the sample's ``images.sha256`` any more: the hash stage found
    the file replaced, deleted or restored), so this run embeds those samples again: their rows
    leave the parts (:func:`drop_samples`) and the catalog, with the caption vectors that carry an
    image–caption similarity for them (computed again with the caption).

    Returns:
        ``{'forgotten_changed_images': n}``.
    """
    stale = [sid for sid, in ws.q(
        "SELECT e.sample_id FROM embeddings e LEFT JOIN images i USING (sample_id) WHERE e.model = ? "
        "AND e.sha256 IS NOT NULL AND e.sha256 IS DISTINCT FROM i.sha256 ORDER BY 1", [key])]
    if stale:
        for ck, in ws.q("SELECT DISTINCT caption_model FROM image_text WHERE image_model = ? "
                        "AND sample_id IN (SELECT unnest(?)) ORDER BY 1", [key, stale]):
            drop_samples(ws, ck, ws.embeddings_dir(ck), stale)
        drop_samples(ws, key, folder, stale)
    return {"forgotten_changed_images": len(stale)}


def drop_samples(ws: Workspace, key: str, folder, ids: list[int]) -> None:
    """Remove samples ``ids`` from key ``key``'s parts and catalog rows (and their
    ``image_text`` rows), every other stored vector kept bit for bit.

    Each part holding one of them is written again, without them, as a new part (next number;
    ids, float16 vectors, meta with its failures and similarities filtered alike), then the old
    part's files are deleted, then the catalog rows are moved to the new part in one transaction.
    A run killed in between leaves nothing wrong: before the delete, the new part only repeats
    vectors the old one holds (readers take the first copy, the same bytes); after it, the next
    run's :func:`reconcile` forgets the rows of the gone part and records the new one, and the
    dropped samples, having no row, are embedded again.
    """
    drop = set(int(i) for i in ids)
    parts = [p for p, in ws.q("SELECT DISTINCT part FROM embeddings WHERE model = ? AND part IS NOT NULL "
                              "AND sample_id IN (SELECT unnest(?)) ORDER BY 1", [key, sorted(drop)])]
    for p in parts:
        pids = read_part_ids(folder, p)
        vecs = load_npy(folder, f"part-{p:05d}.npy")
        meta = read_part_meta(folder, p)
        keep = np.array([int(i) not in drop for i in pids.tolist()], bool)
        if meta is not None:
            meta = {**meta, "failed": [f for f in meta.get("failed", []) if int(f[0]) not in drop]}
            if meta.get("similarity"):
                meta["similarity"] = [meta["similarity"][0], [x for x, k in zip(meta["similarity"][1], keep) if k]]
        q = next_part(folder)
        write_part(folder, q, pids[keep], vecs[keep], meta=meta)
        for f in part_files(folder, p):  # vectors first: a part without its vector file is not listed
            fsio.delete(f)
        with ws.transaction() as con:
            con.execute("UPDATE embeddings SET part = ? WHERE model = ? AND part = ? "
                        "AND sample_id NOT IN (SELECT unnest(?))", [q, key, p, sorted(drop)])
    with ws.transaction() as con:
        con.execute("DELETE FROM embeddings WHERE model = ? AND sample_id IN (SELECT unnest(?))", [key, sorted(drop)])
        con.execute("DELETE FROM image_text WHERE (image_model = ? OR caption_model = ?) "
                    "AND sample_id IN (SELECT unnest(?))", [key, key, sorted(drop)])


def next_part(folder: Path) -> int:
    return (list_parts(folder) or [-1])[-1] + 1


def write_chunk(folder, num: int, key: str, dim: int, ids: list[int], vecs: list[np.ndarray],
                failed: list[tuple[int, str]]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Write one work chunk's part (both engines): ids int64 (n,), vectors (n, ``dim``) stored
    float16, and in its meta the chunk's samples without a vector, sorted. Returns (ids,
    sorted failures) — what the chunk's catalog rows are made of."""
    arr = np.asarray(ids, np.int64)
    v = np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)
    bad = sorted(failed)
    write_part(folder, num, arr, v, meta={"key": key, "failed": [list(f) for f in bad]})
    return arr, bad
