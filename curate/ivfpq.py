"""Embedding near-duplicate pairs at cluster scale: faiss IVF-PQ, trained on a sample, filled
shard by shard, searched in parallel tasks, every candidate verified exactly.

This is the path for collections whose vectors do not fit one machine's memory as floats
(LAION-2B: 2.3·10⁹ × 768 float16 = 3.5 TB). Webster et al. ("On the De-duplication of
LAION-2B", arXiv 2303.12733) deduplicated LAION-2B with compressed CLIP features in a faiss
IVF-PQ index; the index is Jégou, Douze & Schmid's IVFADC ("Product quantization for nearest
neighbor search", TPAMI 2011) as implemented by faiss (Johnson, Douze & Jégou, "Billion-scale
similarity search with GPUs", arXiv 1702.08734).

1. **Train** (:func:`train`): the coarse quantizer (``nlist`` k-means centroids, inner
   product) and the product quantizer of the residuals (``m`` sub-vectors × 2^``nbits``
   centroids) on a sample of ``train_size`` rows chosen by a hash of the sample id
   (:func:`sample_ids`), so the sample does not depend on row order or sharding.
2. **Margin** (:func:`calibrate_margin`): PQ inner products are approximate. For a unit row x
   and its reconstruction x̂, δ = 1 − ⟨x, x̂⟩ is the error a near-identical query sees; the
   search radius is ``min_cosine − margin`` with ``margin`` = the 99.9th percentile of δ on
   held-out rows (+ 0.01), so a pair at the threshold is rarely lost to quantization.
3. **Fill** (:func:`fill`): every shard (an embedding part, or a slice of an array) is encoded
   (list number + ``m`` bytes of code + 8 bytes of id per row) and appended to the inverted
   lists — in this process, or one Ray task per shard whose per-shard index is merged into
   the index (``merge_from``). ``index_shards`` > 1 splits the shards into that many indexes
   with the same trained quantizers, so each fits one node; every query searches all of them.
4. **Search** (:func:`search`): one task per query shard range-searches its rows in every
   index shard (``nprobe`` lists) at the radius of step 2, then reads the exact vectors of the
   candidates and keeps pairs with float32 cosine ≥ ``min_cosine``. An edge is therefore
   never false; a pair is missed only when neither row's probes reach the other's list or its
   PQ score falls below the radius, so recall is **measured** (:func:`recall`): exact flat
   search of a sample of rows against every shard. Tasks run here (faiss's OpenMP threads) or
   as Ray tasks (``engine="ray"``, index shards shared through the object store).
5. Pairs found from both ends are counted once (a < b, sorted).

Memory and time model (:func:`model`, docs/SCALE_OUT.md): codes n·(m + 8) bytes plus the
quantizer nlist·d·4; assignment n·nlist·d multiply-adds for the fill and again for the
queries, encoding n·2^nbits·d, scanning n·nprobe·n/nlist code distances, verification
candidates·d. :mod:`benchmarks.bench_ivfpq` measures the rates on 10M synthetic vectors.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)
VERIFY_BLOCK = 1 << 18  # candidate rows whose vectors are read at once (d = 768: 0.8 GB of float32)


def _mix(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """splitmix64 of int64 ids (+ seed) → uint64, a row-order-free pseudo-random key."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(seed) * _MIX + _MIX
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_ids(ids: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask (n,) selecting about ``fraction`` (0–1) of ``ids`` by a hash of each id."""
    if fraction >= 1:
        return np.ones(len(ids), bool)
    return _mix(np.asarray(ids, np.int64), seed) < np.uint64(int(fraction * 2.0**64))


# ----------------------------------------------------------------------------------------------
# sources of vectors


class ArraySource:
    """Vectors in memory: ids int64 (n,) and L2-normalised float16/float32 (n, d) rows, cut
    into shards of ``shard_rows`` rows (the unit of filling and of search tasks)."""

    def __init__(self, ids: np.ndarray, vecs: np.ndarray, shard_rows: int = 1 << 20):
        self.ids, self.vecs, self.shard_rows = np.asarray(ids, np.int64), vecs, max(1, int(shard_rows))
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]

    @property
    def dim(self) -> int:
        return int(self.vecs.shape[1])

    def shards(self) -> list[int]:
        return list(range(0, len(self.ids), self.shard_rows))

    def count(self) -> int:
        return len(self.ids)

    def load(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (k,), float32 (k, d)) of one shard."""
        s = slice(key, key + self.shard_rows)
        return self.ids[s], np.ascontiguousarray(self.vecs[s], dtype=np.float32)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """float32 (k, d) rows of ``ids`` (every id must be present)."""
        pos = self._order[np.searchsorted(self._sorted, ids)]
        return np.ascontiguousarray(self.vecs[pos], dtype=np.float32)


class PartsSource:
    """Vectors in embedding parts (:mod:`curate.embstore`: a local folder or a URI), one shard
    per part; rows are read part by part, never all at once."""

    def __init__(self, folder):
        from curate.embstore import list_parts

        self.folder = folder
        self.parts = list_parts(folder)
        self._dim: int | None = None
        self._ids: dict | None = None
        self._sorted: dict = {}

    @property
    def dim(self) -> int:
        if self._dim is None:
            from curate.embstore import _load_npy

            self._dim = int(_load_npy(self.folder, f"part-{self.parts[0]:05d}.npy", mmap=True).shape[1])
        return self._dim

    def __getstate__(self):  # Ray tasks get the folder, not the cached ids
        return {"folder": self.folder, "parts": self.parts, "_dim": self._dim, "_ids": None, "_sorted": {}}

    def shards(self) -> list[int]:
        return list(self.parts)

    def count(self) -> int:
        from curate.embstore import read_part_ids

        return int(sum(len(read_part_ids(self.folder, p)) for p in self.parts))

    def load(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        from curate.embstore import _load_npy

        ids = _load_npy(self.folder, f"part-{key:05d}.ids.npy")
        vecs = _load_npy(self.folder, f"part-{key:05d}.npy", mmap=True)
        return ids, np.ascontiguousarray(vecs, dtype=np.float32)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """float32 (k, d) rows of ``ids`` (every id must be present; each part's ids are read
        once and kept, 8 bytes per row; local parts are memory-mapped, so only the rows asked
        for are read)."""
        from curate.embstore import _load_npy

        if self._ids is None:
            self._ids = {p: _load_npy(self.folder, f"part-{p:05d}.ids.npy") for p in self.parts}
            self._sorted = {p: (np.argsort(v, kind="stable"), np.sort(v)) for p, v in self._ids.items()}
        want = np.asarray(ids, np.int64)
        out = np.zeros((len(want), self.dim), np.float32)
        found = np.zeros(len(want), bool)
        for p in self.parts:
            order, srt = self._sorted[p]
            pos = np.searchsorted(srt, want)
            hit = (pos < len(srt)) & (srt[np.minimum(pos, len(srt) - 1)] == want) & ~found
            if hit.any():
                rows = order[pos[hit]]
                vecs = _load_npy(self.folder, f"part-{p:05d}.npy", mmap=True)
                srt_rows = np.argsort(rows)  # ascending reads from the memory map
                out[np.flatnonzero(hit)[srt_rows]] = np.asarray(vecs[rows[srt_rows]], dtype=np.float32)
                found |= hit
        if not found.all():
            raise KeyError(f"{int((~found).sum())} ids not in {self.folder}")
        return out


# ----------------------------------------------------------------------------------------------
# model


@dataclass
class Params:
    """IVF-PQ settings. ``nlist`` None = ≈ 4·√n (rounded to a power of two, ≥ 16); ``m``
    None = d / 8 sub-vectors (8 dimensions each, ``m`` bytes per row at 8 bits)."""

    nlist: int | None = None
    m: int | None = None
    nbits: int = 8
    nprobe: int = 8
    train_size: int = 200_000
    margin: float | None = None  # None = calibrated (calibrate_margin)
    index_shards: int = 1
    seed: int = 0

    def resolved(self, n: int, d: int) -> "Params":
        nlist = self.nlist or max(16, 2 ** round(math.log2(max(16.0, 4 * math.sqrt(n)))))
        nlist = max(1, min(nlist, n // 39 or 1))  # faiss wants ≥ 39 training rows per centroid
        nbits = self.nbits if n >= 39 * 2**self.nbits else max(1, min(self.nbits, int(math.log2(max(2, n // 39)))))
        m = self.m or max(1, d // 8)
        while d % m:
            m -= 1
        return Params(nlist, m, nbits, min(self.nprobe, nlist), self.train_size, self.margin,
                      self.index_shards, self.seed)


def model(n: float, d: int, nlist: int, nprobe: int, m: int, nbits: int = 8, *, candidates_per_row: float = 1.0,
          index_shards: int = 1) -> dict[str, float]:
    """The memory (bytes) and work (operation counts) of the IVF-PQ path for n rows of d dims.

    Returns:
        ``codes_bytes`` (inverted lists: n·(m·nbits/8 + 8)), ``codes_bytes_per_shard``,
        ``quantizer_bytes`` (nlist·d·4), ``train_bytes`` (the float32 training sample at 39 rows per
        list, faiss's minimum), ``vectors_bytes`` (the float16 rows read for verification), ``assign_madds``
        (n·nlist·d, fill; the same again for the queries), ``encode_madds`` (n·2^nbits·d),
        ``scan_codes`` (n·nprobe·n/nlist code distances, the self-join), ``verify_madds``
        (candidates·d).
    """
    code = m * nbits / 8 + 8
    return {
        "codes_bytes": n * code,
        "codes_bytes_per_shard": n * code / index_shards,
        "quantizer_bytes": nlist * d * 4.0,
        "train_bytes": min(n, 39.0 * nlist) * d * 4.0,
        "vectors_bytes": n * d * 2.0,
        "assign_madds": n * float(nlist) * d,
        "encode_madds": n * float(2**nbits) * d,
        "scan_codes": n * float(nprobe) * n / nlist,
        "verify_madds": n * candidates_per_row * d,
    }


# ----------------------------------------------------------------------------------------------
# train, fill


def _train_sample(source, size: int, seed: int) -> np.ndarray:
    n = source.count()
    frac = min(1.0, 1.15 * size / max(n, 1))
    parts = []
    for key in source.shards():
        ids, v = source.load(key)
        parts.append(v[sample_ids(ids, frac, seed)])
    x = np.concatenate(parts) if parts else np.zeros((0, source.dim), np.float32)
    return np.ascontiguousarray(x[:size])


def train(x: np.ndarray, p: Params):
    """An empty, trained ``faiss.IndexIVFPQ`` (inner product) for the float32 rows ``x`` (s, d).

    Raises:
        ValueError: fewer rows than centroids to train (nlist, or 2^nbits for the PQ).
    """
    import faiss

    d = x.shape[1]
    if len(x) < max(p.nlist, 2**p.nbits):
        raise ValueError(f"{len(x)} training rows for {p.nlist} lists and {2 ** p.nbits} PQ centroids")
    quant = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quant, d, p.nlist, p.m, p.nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = p.seed
    index.cp.spherical = True
    index.cp.niter = 10  # as curate.index's IVF; the lists only need to be balanced, not optimal
    index.pq.cp.seed = p.seed
    index.train(x)
    return index


def calibrate_margin(index, x: np.ndarray, q: float = 0.999) -> float:
    """``q``-quantile of 1 − ⟨x, x̂⟩ over the float32 unit rows ``x`` (x̂ = the index's PQ
    reconstruction), + 0.01: how far below its true cosine a near-identical pair may score."""
    codes = index.sa_encode(np.ascontiguousarray(x, dtype=np.float32))
    rec = index.sa_decode(codes)
    delta = 1.0 - (x * rec).sum(axis=1)
    return float(np.quantile(np.abs(delta), q)) + 0.01


def _clone_empty(template):
    import faiss

    ix = faiss.clone_index(template)
    ix.reset()
    return ix


def fill(template, source, keys: list[int] | None = None, engine: str = "local", sec=None,
         batch_rows: int = 1 << 16):
    """A copy of the trained ``template`` with the rows of ``source``'s shards ``keys`` (all by
    default) added under their ids, shard by shard (float32 batches of ``batch_rows``).

    ``engine="ray"``: one task per shard encodes it into its own index, merged here in shard
    order (``merge_from``), so the lists hold the same entries in the same order."""
    import faiss

    keys = source.shards() if keys is None else keys
    index = _clone_empty(template)
    if engine != "ray":
        for key in keys:
            ids, v = source.load(key)
            for s in range(0, len(ids), batch_rows):
                index.add_with_ids(v[s:s + batch_rows], ids[s:s + batch_rows])
        return index
    import ray

    from curate.engine.ray_engine import connect

    connect(sec)
    tref = ray.put(faiss.serialize_index(template))
    task = ray.remote(_fill_task).options(num_cpus=getattr(sec, "actor_cpus", 1) or 1, max_retries=-1)
    refs = [task.remote(tref, source, key, batch_rows) for key in keys]
    for ref in refs:  # in shard order
        part = faiss.deserialize_index(ray.get(ref))
        index.merge_from(part, 0)
    return index


def _fill_task(tref, source, key: int, batch_rows: int):
    import faiss

    ix = _clone_empty(faiss.deserialize_index(tref))
    ids, v = source.load(key)
    for s in range(0, len(ids), batch_rows):
        ix.add_with_ids(v[s:s + batch_rows], ids[s:s + batch_rows])
    return faiss.serialize_index(ix)


# ----------------------------------------------------------------------------------------------
# search


def assign(quantizer, qv: np.ndarray, nprobe: int, batch_rows: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """The ``nprobe`` nearest lists of every float32 row of ``qv``: (inner products float32
    (n, nprobe), list numbers int64 (n, nprobe)). Every index shard shares the template's
    quantizer, so a query part is assigned once, whichever shards scan it."""
    coarse = np.empty((len(qv), nprobe), np.float32)
    lists = np.empty((len(qv), nprobe), np.int64)
    for s in range(0, len(qv), batch_rows):
        coarse[s:s + batch_rows], lists[s:s + batch_rows] = quantizer.search(qv[s:s + batch_rows], nprobe)
    return coarse, lists


def scan(index, qids: np.ndarray, qv: np.ndarray, coarse: np.ndarray, lists: np.ndarray, radius: float,
         batch_rows: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of the rows ``qv`` (ids ``qids``) in one index shard: the entries of their
    preassigned lists whose PQ inner product exceeds ``radius``, self-matches dropped.
    Returns (query row int64, candidate id int64)."""
    from faiss.contrib.ivf_tools import range_search_preassigned

    index.nprobe = lists.shape[1]
    out_r, out_b = [], []
    for s in range(0, len(qids), batch_rows):
        e = s + batch_rows
        lims, _, labels = range_search_preassigned(index, qv[s:e], radius, lists[s:e], coarse[s:e])
        rows = np.repeat(np.arange(s, s + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        keep = labels != qids[rows]
        out_r.append(rows[keep])
        out_b.append(labels[keep].astype(np.int64))
    if not out_r:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_r), np.concatenate(out_b)


def verify(source, qids: np.ndarray, qv: np.ndarray, qrow: np.ndarray, bid: np.ndarray,
           min_cosine: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact float32 cosine of every candidate (query row ``qrow`` of ``qv``, stored row
    ``bid`` read from ``source`` a bounded block at a time); keep ≥ ``min_cosine``.
    Returns (a, b, cosine) ids with a < b."""
    if not len(qrow):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    ub, inv = np.unique(bid, return_inverse=True)
    order = np.argsort(inv, kind="stable")  # candidates grouped by the row they point at
    sinv = inv[order]
    cos = np.empty(len(qrow), np.float32)
    for u0 in range(0, len(ub), VERIFY_BLOCK):
        bv = source.lookup(ub[u0:u0 + VERIFY_BLOCK])
        c0, c1 = np.searchsorted(sinv, [u0, u0 + VERIFY_BLOCK])
        for s in range(c0, c1, 1 << 20):
            sel = order[s:min(c1, s + (1 << 20))]
            cos[sel] = np.einsum("ij,ij->i", qv[qrow[sel]], bv[inv[sel] - u0])
    ok = cos >= min_cosine
    a, b = qids[qrow[ok]], bid[ok]
    return np.minimum(a, b), np.maximum(a, b), cos[ok]


def search_shard(indexes: list, source, key: int, min_cosine: float, radius: float, nprobe: int,
                 assigned: tuple[np.ndarray, np.ndarray] | None = None):
    """One query shard of ``source`` against the index shards ``indexes``: :func:`assign`
    (unless ``assigned`` is given), :func:`scan` in each index, :func:`verify`.

    Returns:
        (a int64, b int64, cosine float32, info) with a < b (ids); info: ``candidates``
        checked, ``range_seconds`` (loading the shard, assignment, list scans), of which
        ``assign_seconds``, and ``verify_seconds`` (reading the candidates' vectors + cosines).
    """
    t0 = time.perf_counter()
    qids, qv = source.load(key)
    ta = time.perf_counter()
    coarse, lists = assigned if assigned is not None else assign(indexes[0].quantizer, qv, nprobe)
    t_assign = time.perf_counter() - ta
    found = [scan(ix, qids, qv, coarse, lists, radius) for ix in indexes]
    qrow = np.concatenate([f[0] for f in found])
    bid = np.concatenate([f[1] for f in found])
    t1 = time.perf_counter()
    a, b, cos = verify(source, qids, qv, qrow, bid, min_cosine)
    info = {"candidates": len(qrow), "range_seconds": t1 - t0, "assign_seconds": t_assign,
            "verify_seconds": time.perf_counter() - t1}
    return a, b, cos, info


def _search_task(source, key, min_cosine, radius, nprobe, *index_bytes):
    import faiss

    indexes = [faiss.deserialize_index(r) for r in index_bytes]  # top-level refs: Ray resolves them
    return search_shard(indexes, source, key, min_cosine, radius, nprobe)


def _assign_task(source, key, nprobe, template_bytes):
    import faiss

    t = time.perf_counter()
    ix = faiss.deserialize_index(template_bytes)  # kept alive: it owns its quantizer
    coarse, lists = assign(ix.quantizer, source.load(key)[1], nprobe)
    return coarse, lists, time.perf_counter() - t


def _shard_task(source, key, min_cosine, radius, nprobe, assigned, index_bytes):
    import faiss

    coarse, lists, t_assign = assigned
    a, b, c, info = search_shard([faiss.deserialize_index(index_bytes)], source, key, min_cosine, radius, nprobe,
                                 (coarse, lists))
    info["assign_seconds"] = t_assign
    return a, b, c, info


def search(indexes: list, source, min_cosine: float, radius: float, nprobe: int, engine: str = "local",
           sec=None, stats: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every shard of ``source`` searched against ``indexes`` (:func:`search_shard`); returns
    (a, b, cosine) with a < b, each pair once, sorted. ``stats`` gets ``candidates``,
    ``range_seconds``, ``assign_seconds`` and ``verify_seconds`` (summed over tasks).

    ``engine="ray"``: with one index, one task per query shard (the index shared through the
    object store). With ``index_shards`` > 1, one assignment task per query shard, then one
    task per (query shard, index shard) that holds only that index shard — so a node needs the
    memory of one index shard, not of the whole index."""
    keys = source.shards()
    if engine != "ray":
        results = [search_shard(indexes, source, k, min_cosine, radius, nprobe) for k in keys]
    else:
        import faiss
        import ray

        from curate.engine.ray_engine import connect

        connect(sec)
        refs = [ray.put(faiss.serialize_index(ix)) for ix in indexes]
        opts = {"num_cpus": getattr(sec, "actor_cpus", 1) or 1, "max_retries": -1}
        if len(indexes) == 1:
            task = ray.remote(_search_task).options(**opts)
            results = ray.get([task.remote(source, k, min_cosine, radius, nprobe, refs[0]) for k in keys])
        else:
            assign_t = ray.remote(_assign_task).options(**opts)
            shard_t = ray.remote(_shard_task).options(**opts)
            assigned = {k: assign_t.remote(source, k, nprobe, refs[0]) for k in keys}
            results = ray.get([shard_t.remote(source, k, min_cosine, radius, nprobe, assigned[k], r)
                               for k in keys for r in refs])
            n_ix = len(refs)  # the assignment of a query shard was paid once, not once per index shard
            for r in results:
                r[3]["assign_seconds"] /= n_ix
    if stats is not None:
        stats["candidates"] = int(sum(r[3]["candidates"] for r in results))
        for k in ("range_seconds", "assign_seconds", "verify_seconds"):
            stats[k] = round(sum(r[3][k] for r in results), 2)
    if not results:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a = np.concatenate([r[0] for r in results])
    b = np.concatenate([r[1] for r in results])
    s = np.concatenate([r[2] for r in results])
    order = np.lexsort((b, a))
    a, b, s = a[order], b[order], s[order]
    first = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.zeros(0, bool)
    return a[first], b[first], s[first]


def exact_pairs_of(source, query_ids: np.ndarray, min_cosine: float,
                   stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact flat search (faiss ``IndexFlatIP`` per shard) of the rows ``query_ids`` against
    every row of ``source``: pairs (a < b) with cosine ≥ ``min_cosine`` touching a query row.
    ``stats`` gets ``flat_search_seconds`` (the faiss searches alone, without reading shards)."""
    import faiss

    qv = source.lookup(np.asarray(query_ids, np.int64))
    out_a, out_b = [], []
    flat_s = 0.0
    for key in source.shards():
        ids, v = source.load(key)
        t = time.perf_counter()
        flat = faiss.IndexFlatIP(v.shape[1])
        flat.add(v)
        lims, _, labels = flat.range_search(qv, float(np.nextafter(np.float32(min_cosine), np.float32(-2))))
        flat_s += time.perf_counter() - t
        rows = np.repeat(np.arange(len(qv)), np.diff(lims).astype(np.int64))
        a, b = np.asarray(query_ids, np.int64)[rows], ids[labels]
        keep = a != b
        # range_search keeps > radius; re-check ≥ min_cosine in float32 like the verification
        sims = np.einsum("ij,ij->i", qv[rows[keep]], v[labels[keep]])
        ok = sims >= min_cosine
        out_a.append(np.minimum(a[keep], b[keep])[ok])
        out_b.append(np.maximum(a[keep], b[keep])[ok])
    if stats is not None:
        stats["flat_search_seconds"] = round(flat_s, 3)
    a, b = np.concatenate(out_a), np.concatenate(out_b)
    key = np.unique(np.stack([a, b], 1), axis=0) if len(a) else np.zeros((0, 2), np.int64)
    return key[:, 0], key[:, 1]


def recall(source, a: np.ndarray, b: np.ndarray, min_cosine: float, sample: int, seed: int = 1,
           stats: dict | None = None) -> float | None:
    """Found / exact pairs over the pairs touching ``sample`` rows chosen by id hash (exact flat
    search, :func:`exact_pairs_of`); None when those rows have no exact pair. ``stats`` gets
    ``recall_sample``, ``recall_pairs``, ``recall_seconds`` (the exact search's wall time)."""
    t0 = time.perf_counter()
    n = source.count()
    picked = []
    for key in source.shards():
        ids, _ = source.load(key)
        picked.append(ids[sample_ids(ids, min(1.0, 1.3 * sample / max(n, 1)), seed)])
    q = np.sort(np.concatenate(picked))[:sample] if picked else np.zeros(0, np.int64)
    ea, eb = exact_pairs_of(source, q, min_cosine)
    hit = int(np.isin(_pair_key(ea, eb), _pair_key(a, b)).sum())
    if stats is not None:
        stats.update(recall_sample=int(len(q)), recall_pairs=int(len(ea)),
                     recall_seconds=round(time.perf_counter() - t0, 2))
    return round(hit / len(ea), 4) if len(ea) else None


def _pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint64 key of the pairs (a, b) (a 64-bit hash; a false match has probability ~n²/2⁶⁴)."""
    with np.errstate(over="ignore"):
        return _mix(np.asarray(a, np.int64)) ^ (_mix(np.asarray(b, np.int64), 7) * np.uint64(3))


@dataclass
class Result:
    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def pairs(source, min_cosine: float, params: Params | None = None, *, engine: str = "local", sec=None,
          recall_sample: int = 1000) -> Result:
    """All pairs with cosine ≥ ``min_cosine`` among the rows of ``source`` (an
    :class:`ArraySource` or :class:`PartsSource`), through steps 1–5 of the module doc.

    Args:
        min_cosine: threshold in [-1, 1] (inclusive), on the float32 cosine of the stored rows.
        params: :class:`Params` (defaults resolved for the source's size and dimension).
        engine: ``"local"`` or ``"ray"`` (``sec``: an :class:`curate.config.EngineConfig`).
        recall_sample: rows whose exact neighbours measure the recall (0 = skip).

    Returns:
        :class:`Result`: a, b int64 ids (a < b, sorted), cosine float32, and ``stats``: the
        resolved ``nlist``, ``m``, ``nbits``, ``nprobe``, ``margin``, ``radius``, ``rows``,
        ``candidates``, ``pairs``, ``recall`` (+ sample and pairs), ``index_bytes`` and the
        seconds of ``train``, ``fill``, ``search``.

    Raises:
        ValueError: the source holds fewer rows than the index needs to train.
    """
    p = (params or Params()).resolved(source.count(), source.dim)
    st: dict[str, Any] = {"rows": source.count(), "nlist": p.nlist, "m": p.m, "nbits": p.nbits, "nprobe": p.nprobe,
                          "index_shards": p.index_shards, "engine": engine}
    t0 = time.perf_counter()
    x = _train_sample(source, p.train_size + 10_000, p.seed)
    hold = min(10_000, len(x) // 5)
    held, x = (x[:hold], x[hold:]) if len(x) - hold >= 39 * max(p.nlist, 2**p.nbits) else (x, x)
    template = train(x, p)  # (a set too small to hold rows out calibrates on its training rows)
    margin = p.margin if p.margin is not None else calibrate_margin(template, held)
    radius = float(min_cosine - margin)
    del x, held
    st.update(margin=round(margin, 5), radius=round(radius, 5), train_seconds=round(time.perf_counter() - t0, 2))
    t1 = time.perf_counter()
    keys = source.shards()
    groups = [keys[i::p.index_shards] for i in range(p.index_shards)] if p.index_shards > 1 else [keys]
    indexes = [fill(template, source, g, engine, sec) for g in groups if g]
    st.update(fill_seconds=round(time.perf_counter() - t1, 2),
              index_bytes=int(sum(ix.ntotal * (ix.code_size + 8) for ix in indexes)))
    t2 = time.perf_counter()
    a, b, s = search(indexes, source, min_cosine, radius, p.nprobe, engine, sec, st)
    st.update(search_seconds=round(time.perf_counter() - t2, 2), pairs=int(len(a)))
    if recall_sample:
        st["recall"] = recall(source, a, b, min_cosine, recall_sample, p.seed + 1, st)
    return Result(a, b, s, st)


def iter_pairs(result: Result) -> Iterator[tuple[int, int, float]]:
    for x, y, c in zip(result.a.tolist(), result.b.tolist(), result.cosine.tolist()):
        yield x, y, c
