"""The IVF-PQ search (:mod:`curate.stages.dedup.ivfpq`, step 4 of its module doc), two phases
with a shuffle by shard between them.

- Phase 1 (:func:`search_shard`): one task per query shard assigns its rows to their
  ``nprobe`` nearest lists (:func:`assign`), range-searches them in every index shard
  (:func:`scan`) and cuts the candidates by the shard their *location* label names
  (:func:`locations`).
- The shuffle: locally, each phase-1 task's candidates are spilled to ``.npy`` files and read
  back by groups of destination shards; on a distributed engine (Ray), Ray Data's hash shuffle
  brings each destination's candidates together (:func:`search`).
- Phase 2 (:func:`verify_shard`, :func:`verify_group`): the candidates of each destination
  shard are verified by their exact float32 cosine, reading that shard once.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from curate.engine import get_engine

VERIFY_BLOCK = 1 << 18  # distinct stored rows whose vectors are converted at once (d = 768: 0.8 GB of float32)
VERIFY_TASKS = 1024  # most verification groups (local: runs of consecutive shards; Ray: shuffle partitions)
LOC_BITS = 32  # a location label is (shard position << LOC_BITS) | stored row


def locations(position: int, rows: np.ndarray) -> np.ndarray:
    """int64 location labels ``(position << 32) | row`` of the stored ``rows`` of the shard at
    ``position`` in ``source.shards()`` — what the index stores instead of sample ids, so a
    candidate names the shard and the row that hold it (:func:`search`'s shuffle by shard).

    Raises:
        ValueError: a row number ≥ 2³² (a shard that large is not supported).
    """
    rows = np.asarray(rows, np.int64)
    if len(rows) and int(rows.max()) >> LOC_BITS:
        raise ValueError(f"shard {position}: stored row {int(rows.max())} does not fit {LOC_BITS} bits")
    return (np.int64(position) << np.int64(LOC_BITS)) | rows


def assign(quantizer, qv: np.ndarray, nprobe: int, batch_rows: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """The ``nprobe`` nearest lists of every float32 row of ``qv``: (inner products float32
    (n, nprobe), list numbers int64 (n, nprobe)). Every index shard shares the template's
    quantizer, so a query part is assigned once, whichever shards scan it."""
    coarse = np.empty((len(qv), nprobe), np.float32)
    lists = np.empty((len(qv), nprobe), np.int64)
    for s in range(0, len(qv), batch_rows):
        coarse[s:s + batch_rows], lists[s:s + batch_rows] = quantizer.search(qv[s:s + batch_rows], nprobe)
    return coarse, lists


def scan(index, qlocs: np.ndarray, qv: np.ndarray, coarse: np.ndarray, lists: np.ndarray, radius: float,
         batch_rows: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of the rows ``qv`` (location labels ``qlocs``, :func:`locations`) in one index
    shard: the entries of their preassigned lists whose PQ inner product exceeds ``radius``,
    self-matches (the query row's own location) dropped.
    Returns (query row int64, candidate location int64)."""
    from faiss.contrib.ivf_tools import range_search_preassigned

    index.nprobe = lists.shape[1]
    out_r, out_b = [], []
    for s in range(0, len(qlocs), batch_rows):
        e = s + batch_rows
        lims, _, labels = range_search_preassigned(index, qv[s:e], radius, lists[s:e], coarse[s:e])
        rows = np.repeat(np.arange(s, s + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        keep = labels != qlocs[rows]
        out_r.append(rows[keep])
        out_b.append(labels[keep].astype(np.int64))
    if not out_r:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_r), np.concatenate(out_b)


def _groups(n_shards: int) -> np.ndarray:
    """int64 (g + 1,) bounds of the verification groups: g = min(n_shards, ``VERIFY_TASKS``)
    runs of consecutive shard positions, group i = positions [bounds[i], bounds[i + 1])."""
    g = max(1, min(n_shards, VERIFY_TASKS))
    return np.array([i * n_shards // g for i in range(g + 1)], np.int64)


def search_shard(indexes: list, source, key: int, position: int, radius: float, nprobe: int,
                 bounds: np.ndarray, assigned: tuple[np.ndarray, np.ndarray] | None = None):
    """Phase 1 for one query shard of ``source`` (at ``position`` in ``source.shards()``)
    against the index shards ``indexes``: :func:`assign` (unless ``assigned`` is given),
    :func:`scan` in each index, the candidates cut by destination — nothing is verified here.

    Returns:
        (chunks, info). chunks: one per verification group of ``bounds`` (:func:`_groups`),
        each (query sample id int64 (c,), candidate location int64 (c,), query vector (c, d) as
        stored — float16 for parts —), sorted by location, each (query row, location) once;
        (d·2 + 16) bytes per candidate. info: ``candidates`` (those pairs: the exact cosines
        phase 2 computes), ``range_seconds`` (loading the shard, assignment, list scans,
        cutting), of which ``assign_seconds``.
    """
    t0 = time.perf_counter()
    qids, qraw, qrows = source.load_rows(key, dtype=None)
    qv = np.ascontiguousarray(qraw, dtype=np.float32)
    qlocs = locations(position, qrows)
    ta = time.perf_counter()
    coarse, lists = assigned if assigned is not None else assign(indexes[0].quantizer, qv, nprobe)
    t_assign = time.perf_counter() - ta
    found = [scan(ix, qlocs, qv, coarse, lists, radius) for ix in indexes]
    qrow = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
    loc = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
    order = np.lexsort((qrow, loc))  # by destination shard, row, then query row
    qrow, loc = qrow[order], loc[order]
    if len(loc):
        first = np.r_[True, (loc[1:] != loc[:-1]) | (qrow[1:] != qrow[:-1])]
        qrow, loc = qrow[first], loc[first]
    ship = qraw if np.asarray(qraw).dtype in (np.float16, np.float32) else qv  # the stored precision
    cut = np.searchsorted(loc, np.asarray(bounds, np.int64) << np.int64(LOC_BITS))
    chunks = []
    for g in range(len(bounds) - 1):
        r = qrow[cut[g]:cut[g + 1]]
        chunks.append((qids[r], loc[cut[g]:cut[g + 1]], np.asarray(ship[r])))
    info = {"candidates": len(qrow), "range_seconds": time.perf_counter() - t0, "assign_seconds": t_assign}
    return chunks, info


def verify_shard(source, key: int, chunks: list, min_cosine: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact float32 cosine of every candidate pointing into shard ``key``; keep ≥ ``min_cosine``.

    Args:
        chunks: (query id int64 (c,), stored row int64 (c,) of the shard, query vector (c, d)
            as shipped — float16 for parts —, converted to float32 here) per phase-1 task.

    The shard is read once (:meth:`stored`: its ids, and its vectors memory-mapped when local)
    and each chunk is verified against it in turn, its distinct wanted rows converted
    ``VERIFY_BLOCK`` at a time in ascending order — the chunks are never concatenated, so memory
    is the shard plus two float32 (``VERIFY_BLOCK``, d) blocks. Returns (a, b, cosine) ids with
    a < b; a pair of one id with itself (an id stored twice, no keep mask) is dropped, as the
    search drops self-matches."""
    chunks = [c for c in chunks if len(c[1])]
    if not chunks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    ids, vecs = source.stored(key)
    ids = np.asarray(ids, np.int64)
    out = [_verify_against(ids, vecs, q, np.asarray(r, np.int64), v, min_cosine) for q, r, v in chunks]
    return tuple(np.concatenate([o[k] for o in out]) for k in range(3))


def _verify_against(ids, vecs, qid, rows, qvec, min_cosine):
    ur, inv = np.unique(rows, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")  # candidates grouped by the row they point at
    sinv = inv[order]
    cos = np.empty(len(rows), np.float32)
    for u0 in range(0, len(ur), VERIFY_BLOCK):
        bv = np.asarray(vecs[ur[u0:u0 + VERIFY_BLOCK]], dtype=np.float32)
        c0, c1 = np.searchsorted(sinv, [u0, u0 + VERIFY_BLOCK])
        for s in range(c0, c1, VERIFY_BLOCK):  # two float32 (VERIFY_BLOCK, d) temporaries at a time
            sel = order[s:min(c1, s + VERIFY_BLOCK)]
            cos[sel] = np.einsum("ij,ij->i", np.asarray(qvec[sel], dtype=np.float32), bv[inv[sel] - u0])
    b = ids[rows]
    qid = np.asarray(qid, np.int64)
    ok = (cos >= min_cosine) & (qid != b)
    a, b = qid[ok], b[ok]
    return np.minimum(a, b), np.maximum(a, b), cos[ok]


def verify_group(source, keys: list[int], lo: int, min_cosine: float, *chunks):
    """Phase 2 for one verification group: the shards ``keys`` (at positions ``lo``,
    ``lo`` + 1, … of ``source.shards()``) and the phase-1 ``chunks`` addressed to them (one per
    query task, each sorted by location). Each shard with candidates is read once
    (:func:`verify_shard`); memory is one shard plus one chunk's blocks (the local engine's
    chunks are memory-mapped spill files).

    Returns:
        (a, b, cosine, info) with a < b; info: ``verify_seconds``.
    """
    t0 = time.perf_counter()
    out_a, out_b, out_c = [], [], []
    starts = [np.searchsorted(c[1], (np.arange(lo, lo + len(keys) + 1, dtype=np.int64) << np.int64(LOC_BITS)))
              for c in chunks]
    mask = np.int64((1 << LOC_BITS) - 1)
    for i, key in enumerate(keys):
        sel = [(c, st[i], st[i + 1]) for c, st in zip(chunks, starts) if st[i + 1] > st[i]]
        if not sel:
            continue  # no candidate points here: the shard is not read
        a, b, cos = verify_shard(source, key, [(c[0][s:e], c[1][s:e] & mask, c[2][s:e]) for c, s, e in sel],
                                 min_cosine)
        out_a.append(a)
        out_b.append(b)
        out_c.append(cos)
    info = {"verify_seconds": time.perf_counter() - t0}
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), info
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_c), info


def _candidate_table(chunk):
    """Phase 1's candidates of one task as an Arrow table for Ray Data's shuffle: ``dest``
    (destination shard position), ``qid``, ``loc`` int64 and ``qvec`` (the query vector's
    stored bytes, fixed-size binary of d × itemsize)."""
    import pyarrow as pa

    qid, loc, qvec = chunk
    q = np.ascontiguousarray(qvec)
    width = q.shape[1] * q.itemsize if q.ndim == 2 else 0
    vec = pa.FixedSizeBinaryArray.from_buffers(pa.binary(max(width, 1)), len(q), [None, pa.py_buffer(q.tobytes())])
    return pa.table({"dest": np.asarray(loc, np.int64) >> np.int64(LOC_BITS), "qid": np.asarray(qid, np.int64),
                     "loc": np.asarray(loc, np.int64), "qvec": vec})


def _search_task(source, key, position, radius, nprobe, index_bytes):
    import faiss

    chunks, info = search_shard([faiss.deserialize_index(index_bytes)], source, key, position, radius, nprobe,
                                _ONE_GROUP)  # index_bytes: a top-level ref, Ray resolves it
    return _candidate_table(chunks[0]), info


def _assign_task(source, key, nprobe, template_bytes):
    import faiss

    t = time.perf_counter()
    ix = faiss.deserialize_index(template_bytes)  # kept alive: it owns its quantizer
    coarse, lists = assign(ix.quantizer, source.load(key)[1], nprobe)
    return coarse, lists, time.perf_counter() - t


def _shard_task(source, key, position, radius, nprobe, assigned, index_bytes):
    import faiss

    coarse, lists, t_assign = assigned
    chunks, info = search_shard([faiss.deserialize_index(index_bytes)], source, key, position, radius, nprobe,
                                _ONE_GROUP, (coarse, lists))
    info["assign_seconds"] = t_assign
    return _candidate_table(chunks[0]), info


_ONE_GROUP = np.array([0, 1 << 30], np.int64)  # every destination in one chunk (Ray Data groups them)
_SOURCES: dict[str, Any] = {}  # a Ray worker's sources, by object reference (fetched once per worker)


def _verify_rows(t, *, source_ref, shard_keys: list, min_cosine: float, dim: int):
    """Ray Data ``map_groups`` function: the candidates of one destination shard (``t``, the
    rows of :func:`_candidate_table` with one ``dest``) verified by :func:`verify_shard`;
    returns an Arrow table (a, b, cosine)."""
    import pyarrow as pa
    import ray

    src = _SOURCES.get(source_ref.hex())
    if src is None:
        src = _SOURCES[source_ref.hex()] = ray.get(source_ref)
    dest = int(t.column("dest")[0].as_py())
    col = t.column("qvec").combine_chunks()
    width = col.type.byte_width
    raw = np.frombuffer(col.buffers()[1], np.uint8)[col.offset * width:(col.offset + len(col)) * width]
    qvec = raw.view(np.float16 if width == 2 * dim else np.float32).reshape(len(col), dim)
    rows = t.column("loc").to_numpy() & np.int64((1 << LOC_BITS) - 1)
    a, b, cos = verify_shard(src, shard_keys[dest], [(t.column("qid").to_numpy(), rows, qvec)], min_cosine)
    return pa.table({"a": pa.array(a, pa.int64()), "b": pa.array(b, pa.int64()), "cosine": pa.array(cos, pa.float32())})


def search(indexes: list, source, min_cosine: float, radius: float, nprobe: int, engine: str = "local",
           sec=None, stats: dict | None = None, spill_dir=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every shard of ``source`` searched against ``indexes`` (filled by
    :func:`curate.stages.dedup.ivfpq.fill`, so their labels are locations) in two phases, then
    verified; returns (a, b, cosine) with a < b, each pair once, sorted.

    1. One task per query shard (:func:`search_shard`) scans its rows and emits its
       candidates — the query id, the candidate's location and the query's stored vector —
       sorted by destination.
    2. The candidates of each destination shard are verified together (:func:`verify_shard`),
       reading that shard once: locally by groups of consecutive shards (:func:`_groups`: one
       per shard up to ``VERIFY_TASKS``, :func:`verify_group`), on Ray one ``map_groups``
       call per shard.

    So every shard's vectors are read once by phase 1 and at most once by phase 2, whatever
    the number of shards and candidates — never a read of another shard's files per block of
    candidates. ``stats`` gets ``candidates`` (the (query row, stored row) pairs whose exact
    cosine was computed: the scans' hits, self-matches dropped, each pair once per task),
    ``range_seconds``, ``assign_seconds`` and ``verify_seconds`` (summed over tasks).

    ``engine="local"``: the same phases in this process; phase 1's chunks are spilled to ``.npy``
    files in a temporary folder under ``spill_dir`` (None: the system's temp folder) and read
    back one group at a time, so memory is one shard's candidates in phase 1 and one group's in
    phase 2 — never every candidate (3.9·10⁷ at 10M rows: 30 GB with d = 384), and the disk
    holds (d·2 + 16) bytes per candidate until the search returns.

    ``engine="ray"``: phase-1 tasks (``max_retries=-1``: pure) return their candidates as one
    Arrow table each (:func:`_candidate_table`, with a ``dest`` column: the destination
    shard); Ray Data's hash shuffle (``groupby("dest", num_partitions=min(shards,
    VERIFY_TASKS))``) brings each destination's candidates together and ``map_groups``
    verifies them (:func:`_verify_rows`: one destination shard read once per group). The shuffle
    is Ray Data's — blocks spilled and moved by its operators — so the driver holds one reference
    per phase-1 task, not one per (task, destination). With one index, one phase-1 task per
    query shard (the index shared through the object store). With ``index_shards`` > 1, one
    assignment task per query shard, then one phase-1 task per (query shard, index shard) that
    holds only that index shard — so a node needs the memory of one index shard, not of the
    whole index. ``verify_seconds`` is then the shuffle's and verification's wall time.
    """
    keys = source.shards()
    eng = get_engine(engine)
    if not eng.distributed:
        bounds = _groups(len(keys))  # local verification groups (Ray Data groups by shard itself)
        groups = [(int(bounds[g]), keys[bounds[g]:bounds[g + 1]]) for g in range(len(bounds) - 1)]
        infos, results = [], []
        with tempfile.TemporaryDirectory(prefix="curate-ivfpq-", dir=spill_dir) as tmp:
            spilled: list[list[Path]] = [[] for _ in groups]
            for i, k in enumerate(keys):
                chunks, info = search_shard(indexes, source, k, i, radius, nprobe, bounds)
                infos.append(info)
                for g, c in enumerate(chunks):
                    if len(c[0]):
                        names = [Path(tmp) / f"g{g:05d}-q{i:06d}-{x}.npy" for x in ("qid", "loc", "qvec")]
                        for name, arr in zip(names, c):
                            np.save(name, arr)
                        spilled[g].append(names)
                del chunks
            for g, (lo, gk) in enumerate(groups):
                chunks = [tuple(np.load(n, mmap_mode="r") for n in names) for names in spilled[g]]  # page cache, not heap
                results.append(verify_group(source, gk, lo, min_cosine, *chunks))
                del chunks
    else:
        import faiss
        import ray

        eng.connect(sec)
        refs = [ray.put(faiss.serialize_index(ix)) for ix in indexes]
        sref = ray.put(source)  # top-level ref arguments: Ray hands each task the source itself
        opts = {"num_cpus": getattr(sec, "actor_cpus", 1) or 1, "max_retries": -1}
        if len(indexes) == 1:
            task = ray.remote(_search_task).options(num_returns=2, **opts)
            outs = [task.remote(sref, k, i, radius, nprobe, refs[0]) for i, k in enumerate(keys)]
        else:
            assign_t = ray.remote(_assign_task).options(**opts)
            shard_t = ray.remote(_shard_task).options(num_returns=2, **opts)
            assigned = {k: assign_t.remote(sref, k, nprobe, refs[0]) for k in keys}
            outs = [shard_t.remote(sref, k, i, radius, nprobe, assigned[k], r)
                    for i, k in enumerate(keys) for r in refs]
        infos = ray.get([o[1] for o in outs])
        if len(indexes) > 1:
            n_ix = len(refs)  # the assignment of a query shard was paid once, not once per index shard
            for r in infos:
                r["assign_seconds"] /= n_ix
        t_v = time.perf_counter()
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        verified = (ray.data.from_arrow_refs([o[0] for o in outs])
                    .groupby("dest", num_partitions=max(1, min(len(keys), VERIFY_TASKS)))
                    .map_groups(_verify_rows, batch_format="pyarrow", num_cpus=opts["num_cpus"],
                                fn_kwargs={"source_ref": sref, "shard_keys": list(keys), "min_cosine": float(min_cosine),
                                           "dim": source.dim}))
        tables = [t for t in ray.get(verified.to_arrow_refs()) if t.num_rows]
        del outs
        results = [(t.column("a").to_numpy(), t.column("b").to_numpy(), t.column("cosine").to_numpy(), {})
                   for t in tables]
        t_verify = time.perf_counter() - t_v  # the shuffle and the verification, wall time
    if stats is not None:
        stats["candidates"] = int(sum(r["candidates"] for r in infos))
        for k in ("range_seconds", "assign_seconds"):
            stats[k] = round(sum(r[k] for r in infos), 2)
        stats["verify_seconds"] = round(t_verify if eng.distributed else sum(r[3]["verify_seconds"] for r in results), 2)
    if not results:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a = np.concatenate([r[0] for r in results])
    b = np.concatenate([r[1] for r in results])
    s = np.concatenate([r[2] for r in results])
    order = np.lexsort((b, a))
    a, b, s = a[order], b[order], s[order]
    first = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.zeros(0, bool)
    return a[first], b[first], s[first]
