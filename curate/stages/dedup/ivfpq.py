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
   (:func:`curate.stages.dedup.sources.sample_ids`), so the sample does not depend on row order or sharding.
2. **Margin** (:func:`calibrate_margin`): PQ inner products are approximate. For a unit row x
   and its reconstruction x̂, δ = 1 − ⟨x, x̂⟩ is the error a near-identical query sees; the
   search radius is ``min_cosine − margin`` with ``margin`` = the 99.9th percentile of δ on
   held-out rows (+ 0.01), so a pair at the threshold is rarely lost to quantization.
3. **Fill** (:func:`fill`): every shard (an embedding part, or a slice of an array) is encoded
   (list number + ``m`` bytes of code + 8 bytes of label per row) and appended to the inverted
   lists under its *location* label (:func:`curate.stages.dedup.shuffle.locations`: the
   shard's position in ``source.shards()`` << 32 | the row's number as stored, before any keep
   mask), not its id
   — in this process, or one Ray task per shard whose per-shard index is merged into the
   index (``merge_from``). ``index_shards`` > 1 splits the shards into that many indexes
   with the same trained quantizers, so each fits one node; every query searches all of them.
4. **Search** (:func:`curate.stages.dedup.shuffle.search`), two phases with a shuffle by shard
   between them. Phase 1 (:func:`~curate.stages.dedup.shuffle.search_shard`): one task per
   query shard range-searches its rows in every index shard (``nprobe`` lists) at the radius of
   step 2 and cuts its candidates by the shard their location names, emitting (query id,
   location, query vector as stored) per destination — d·2 + 16 bytes per candidate; nothing is
   read but the query shard. Phase 2 (:func:`~curate.stages.dedup.shuffle.verify_shard`): the
   candidates of each destination shard, brought together (here: spilled files read back by
   groups of shards, :func:`~curate.stages.dedup.shuffle.verify_group`; on Ray: Ray Data's hash
   shuffle and ``map_groups``), are verified reading that shard once; pairs with float32 cosine
   ≥ ``min_cosine`` are kept. Each shard's vectors are thus read once per phase, whatever the
   number of shards and candidates. An edge is never false; a pair is missed only when neither
   row's probes reach the other's list or its PQ score falls below the radius, so recall is
   **measured** (:func:`recall`): exact flat search of a sample of rows against every shard.
   Tasks run here (faiss's OpenMP threads) or as Ray tasks (``engine="ray"``, index shards
   shared through the object store, phase-1 outputs shuffled by Ray Data).
5. Pairs found from both ends are counted once (a < b, sorted).

Sources (:mod:`curate.stages.dedup.sources`): :class:`~curate.stages.dedup.sources.ArraySource`
(vectors in memory) and :class:`~curate.stages.dedup.sources.PartsSource` (embedding parts,
read one part at a time, optionally restricted to some rows by a one-bit-per-row keep mask).
:func:`~curate.stages.dedup.sources.survey` reads every part once (one Ray task per part) for
the ids, the K13 check and a content key per row; the dedup stage builds its keep masks from it
without loading vectors.

Memory and time model (:func:`model`, docs/SCALE_OUT.md): codes n·(m + 8) bytes plus the
quantizer nlist·d·4; assignment n·nlist·d multiply-adds for the fill and again for the
queries, encoding n·2^nbits·d, scanning n·nprobe·n/nlist code distances, verification
candidates·d, shuffle candidates·(d·2 + 16) bytes. :mod:`benchmarks.bench_ivfpq` measures
the rates on 10M synthetic vectors.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from curate.engine import get_engine
from curate.stages.dedup.shuffle import locations, search
from curate.stages.dedup.sources import sample_ids, splitmix64

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
        (candidates·d), ``shuffle_bytes`` (candidates·(d·2 + 16): each candidate's query vector as
        stored, query id and location, written by the search tasks and read by the verification
        tasks once).
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
        "shuffle_bytes": n * candidates_per_row * (d * 2.0 + 16),
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
    index.cp.niter = 10  # as curate.stages.dedup.vector_search's IVF; the lists only need to be balanced, not optimal
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


def _positions(source) -> dict[int, int]:
    """{shard key: its position in ``source.shards()``}: the high half of a location label."""
    return {k: i for i, k in enumerate(source.shards())}


def fill(template, source, keys: list[int] | None = None, engine: str = "local", sec=None,
         batch_rows: int = 1 << 16):
    """A copy of the trained ``template`` with the rows of ``source``'s shards ``keys`` (all by
    default) added, shard by shard (float32 batches of ``batch_rows``), each under its location
    label (:func:`~curate.stages.dedup.shuffle.locations`: the shard's position in
    ``source.shards()`` and the row's number as stored, before any keep mask) — not its sample id.

    ``engine="ray"``: one task per shard encodes it into its own index, merged here in shard
    order (``merge_from``), so the lists hold the same entries in the same order."""
    import faiss

    keys = source.shards() if keys is None else keys
    pos = _positions(source)
    index = _clone_empty(template)
    eng = get_engine(engine)
    if not eng.distributed:
        for key in keys:
            _add_shard(index, source, key, pos[key], batch_rows)
        return index
    import ray

    eng.connect(sec)
    tref = ray.put(faiss.serialize_index(template))
    sref = ray.put(source)  # once: a source's keep masks are shared by every task, not copied into each
    task = ray.remote(_fill_task).options(num_cpus=getattr(sec, "actor_cpus", 1) or 1, max_retries=-1)
    refs = [task.remote(tref, sref, key, pos[key], batch_rows) for key in keys]
    for ref in refs:  # in shard order
        part = faiss.deserialize_index(ray.get(ref))
        index.merge_from(part, 0)
    return index


def _add_shard(index, source, key: int, position: int, batch_rows: int) -> None:
    _, v, rows = source.load_rows(key)
    loc = locations(position, rows)
    for s in range(0, len(loc), batch_rows):
        index.add_with_ids(v[s:s + batch_rows], loc[s:s + batch_rows])


def _fill_task(tref, source, key: int, position: int, batch_rows: int):
    import faiss

    ix = _clone_empty(faiss.deserialize_index(tref))
    _add_shard(ix, source, key, position, batch_rows)
    return faiss.serialize_index(ix)


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
    hit = int(np.isin(pair_key(ea, eb), pair_key(a, b)).sum())
    if stats is not None:
        stats.update(recall_sample=int(len(q)), recall_pairs=int(len(ea)),
                     recall_seconds=round(time.perf_counter() - t0, 2))
    return round(hit / len(ea), 4) if len(ea) else None


def pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint64 (n,) key of the pairs (a[k], b[k]) of int64 ids (a 64-bit hash; a false match has
    probability ~n²/2⁶⁴): how :func:`recall` matches found pairs against exact ones."""
    with np.errstate(over="ignore"):
        return splitmix64(np.asarray(a, np.int64)) ^ (splitmix64(np.asarray(b, np.int64), 7) * np.uint64(3))


@dataclass
class Result:
    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def pairs(source, min_cosine: float, params: Params | None = None, *, engine: str = "local", sec=None,
          recall_sample: int = 1000, spill_dir=None) -> Result:
    """All pairs with cosine ≥ ``min_cosine`` among the rows of ``source`` (an
    :class:`~curate.stages.dedup.sources.ArraySource` or
    :class:`~curate.stages.dedup.sources.PartsSource`), through steps 1–5 of the module doc.

    Args:
        min_cosine: threshold in [-1, 1] (inclusive), on the float32 cosine of the stored rows.
        params: :class:`Params` (defaults resolved for the source's size and dimension).
        engine: ``"local"`` or ``"ray"`` (``sec``: an :class:`curate.config.EngineConfig`).
        recall_sample: rows whose exact neighbours measure the recall (0 = skip).
        spill_dir: ``engine="local"``: where the candidates wait between the search and the
            verification (:func:`curate.stages.dedup.shuffle.search`); None = the system's temp folder.

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
    a, b, s = search(indexes, source, min_cosine, radius, p.nprobe, engine, sec, st, spill_dir)
    st.update(search_seconds=round(time.perf_counter() - t2, 2), pairs=int(len(a)))
    if recall_sample:
        st["recall"] = recall(source, a, b, min_cosine, recall_sample, p.seed + 1, st)
    return Result(a, b, s, st)


def iter_pairs(result: Result) -> Iterator[tuple[int, int, float]]:
    for x, y, c in zip(result.a.tolist(), result.b.tolist(), result.cosine.tolist()):
        yield x, y, c
