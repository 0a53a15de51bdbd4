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
   (list number + ``m`` bytes of code + 8 bytes of label per row) and appended to the inverted
   lists under its *location* label (:func:`locations`: the shard's position in
   ``source.shards()`` << 32 | the row's number as stored, before any keep mask), not its id
   — in this process, or one Ray task per shard whose per-shard index is merged into the
   index (``merge_from``). ``index_shards`` > 1 splits the shards into that many indexes
   with the same trained quantizers, so each fits one node; every query searches all of them.
4. **Search** (:func:`search`), two phases with a shuffle by shard between them. Phase 1
   (:func:`search_shard`): one task per query shard range-searches its rows in every index
   shard (``nprobe`` lists) at the radius of step 2 and cuts its candidates by the shard their
   location names, emitting (query id, location, query vector as stored) per destination —
   d·2 + 16 bytes per candidate; nothing is read but the query shard. Phase 2
   (:func:`verify_shard`): the candidates of each destination shard, brought together (here:
   spilled files read back by groups of shards, :func:`verify_group`; on Ray: Ray Data's hash
   shuffle and ``map_groups``), are verified reading that shard once; pairs with float32
   cosine ≥ ``min_cosine`` are kept. Each shard's vectors are thus read once per phase, whatever the number of
   shards and candidates. An edge is never false; a pair is missed only when neither row's
   probes reach the other's list or its PQ score falls below the radius, so recall is
   **measured** (:func:`recall`): exact flat search of a sample of rows against every shard.
   Tasks run here (faiss's OpenMP threads) or as Ray tasks (``engine="ray"``, index shards
   shared through the object store, phase-1 outputs shuffled by Ray Data).
5. Pairs found from both ends are counted once (a < b, sorted).

Sources: :class:`ArraySource` (vectors in memory) and :class:`PartsSource` (embedding parts,
read one part at a time, optionally restricted to some rows by a one-bit-per-row keep mask).
:func:`survey` reads every part once (one Ray task per part) for the ids, the K13 check and a
content key per row; the dedup stage builds its keep masks from it without loading vectors.

Memory and time model (:func:`model`, docs/SCALE_OUT.md): codes n·(m + 8) bytes plus the
quantizer nlist·d·4; assignment n·nlist·d multiply-adds for the fill and again for the
queries, encoding n·2^nbits·d, scanning n·nprobe·n/nlist code distances, verification
candidates·d, shuffle candidates·(d·2 + 16) bytes. :mod:`benchmarks.bench_ivfpq` measures
the rates on 10M synthetic vectors.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)
VERIFY_BLOCK = 1 << 18  # distinct stored rows whose vectors are converted at once (d = 768: 0.8 GB of float32)
VERIFY_TASKS = 1024  # most verification groups (local: runs of consecutive shards; Ray: shuffle partitions)
LOC_BITS = 32  # a location label is (shard position << LOC_BITS) | stored row


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
        return self.load_rows(key)[:2]

    def load_rows(self, key: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 (k,), vectors (k, d) as ``dtype`` — None: as stored —, stored rows int64
        (k,): each row's number inside the shard) of one shard."""
        s = slice(key, key + self.shard_rows)
        v = self.vecs[s] if dtype is None else np.ascontiguousarray(self.vecs[s], dtype=dtype)
        return self.ids[s], v, np.arange(len(self.ids[s]), dtype=np.int64)

    def stored(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors as stored) of every row of one shard, indexed by stored row (no copy)."""
        s = slice(key, key + self.shard_rows)
        return self.ids[s], self.vecs[s]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """float32 (k, d) rows of ``ids`` (every id must be present)."""
        pos = self._order[np.searchsorted(self._sorted, ids)]
        return np.ascontiguousarray(self.vecs[pos], dtype=np.float32)


class PartsSource:
    """Vectors in embedding parts (:mod:`curate.store.embeddings`: a local folder or a URI), one shard
    per part; rows are read part by part, never all at once.

    ``keep`` (optional) restricts the source to some rows: {part number: bool (n,) mask over
    the part's rows, or that mask packed by ``np.packbits(mask, bitorder="little")``}; only the
    parts it names are used, and a row whose bit is 0 is never returned — :meth:`load` drops it
    when the part is read and :meth:`lookup` does not find it. Packed, it costs one bit per
    stored row (250 MB for 2·10⁹ rows) and is row-aligned, so an id stored twice (in two parts,
    or twice in one part) can be kept in one place only. The dedup stage builds it from the
    catalog (samples that may get edges, first copy of each id, unit rows, one representative
    per group of identical vectors: :func:`curate.stages.dedup.stage._embedding_edges_from_parts`).

    ``directory`` (optional, else read from the parts' id files once, on first use): int64
    (len(parts), 3) = (rows kept, smallest kept id, largest kept id) per part. :meth:`lookup`
    uses it to read only the parts whose id range holds a wanted id. Ray tasks get the folder,
    the masks and the directory, never cached rows.
    """

    def __init__(self, folder, keep: dict | None = None, directory: np.ndarray | None = None):
        from curate.store.embeddings import list_parts

        self.folder = folder
        self.keep = None
        if keep is not None:
            self.keep = {int(p): (np.packbits(m, bitorder="little") if np.asarray(m).dtype == bool
                                  else np.asarray(m, np.uint8)) for p, m in keep.items()}
        self.parts = list_parts(folder) if keep is None else sorted(self.keep)
        self._dim: int | None = None
        self._dir = None if directory is None else np.asarray(directory, np.int64).reshape(len(self.parts), 3)

    @property
    def dim(self) -> int:
        if self._dim is None:
            from curate.store.embeddings import _load_npy

            self._dim = int(_load_npy(self.folder, f"part-{self.parts[0]:05d}.npy", mmap=True).shape[1])
        return self._dim

    def __getstate__(self):  # Ray tasks get the folder, masks and directory
        return {"folder": self.folder, "parts": self.parts, "keep": self.keep, "_dim": self._dim, "_dir": self._dir}

    def _mask(self, key: int, n: int) -> np.ndarray | None:
        """bool (n,) rows of part ``key`` this source returns; None = all of them."""
        if self.keep is None:
            return None
        bits = self.keep[key]
        if len(bits) != (n + 7) // 8:
            raise ValueError(f"{self.folder}/part-{key:05d} holds {n} rows, its keep mask {len(bits) * 8} bits: "
                             "the part changed after the mask was made")
        return np.unpackbits(bits, count=n, bitorder="little").view(bool)

    def _directory(self) -> np.ndarray:
        """int64 (len(parts), 3): rows kept, smallest and largest kept id of each part (0, 0, 0
        for a part with none); read from the id files once."""
        if self._dir is None:
            from curate.store.embeddings import read_part_ids

            out = np.zeros((len(self.parts), 3), np.int64)
            for i, p in enumerate(self.parts):
                ids = read_part_ids(self.folder, p)
                m = self._mask(p, len(ids))
                kept = ids if m is None else ids[m]
                if len(kept):
                    out[i] = (len(kept), kept.min(), kept.max())
            self._dir = out
        return self._dir

    def shards(self) -> list[int]:
        """Part numbers with at least one row to return, ascending."""
        return [p for p, n in zip(self.parts, self._directory()[:, 0]) if n > 0]

    def count(self) -> int:
        return int(self._directory()[:, 0].sum())

    def load(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (k,), float32 (k, d)) of the kept rows of part ``key``, in stored order."""
        return self.load_rows(key)[:2]

    def stored(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), float16 (n, d)) of every stored row of part ``key``, keep mask not
        applied: one read of its id file and of its vector file (memory-mapped when local, so
        only the rows indexed are read).

        Raises:
            ValueError: the part's vector and id files differ in length.
        """
        return _read_part(self.folder, key)

    def load_rows(self, key: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 (k,), vectors (k, d) as ``dtype`` — None: as stored, float16 —, stored
        rows int64 (k,)) of the kept rows of part ``key``, in stored order: ``rows`` are their
        row numbers in the part's files, before the keep mask (the location labels of
        :func:`fill`)."""
        ids, vecs = self.stored(key)
        m = self._mask(key, len(ids))
        if m is not None and not m.all():
            rows = np.flatnonzero(m)
            ids, vecs = ids[rows], vecs[rows]
        else:
            rows = np.arange(len(ids), dtype=np.int64)
        v = np.asarray(vecs) if dtype is None else np.ascontiguousarray(vecs, dtype=dtype)
        return ids, v, rows

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """float32 (k, d) rows of ``ids`` (every id must be a kept row; duplicates allowed).

        Grouped by part: the wanted ids are sorted once, and each part whose id range (the
        directory) holds some of them is read once per call — its id file, then only the rows
        asked for, in ascending order (memory-mapped when local). Memory: one part's ids plus
        the (k, d) result. An id stored in several parts (no ``keep``) is read from the first.

        Raises:
            KeyError: an id that is not a kept row of this source.
        """
        from curate.store.embeddings import _load_npy

        want = np.asarray(ids, np.int64)
        out = np.zeros((len(want), self.dim), np.float32)
        if not len(want):
            return out
        order = np.argsort(want, kind="stable")
        sw = want[order]
        found = np.zeros(len(want), bool)  # by position in sw
        for p, (n_kept, lo, hi) in zip(self.parts, self._directory()):
            s0, s1 = int(np.searchsorted(sw, lo)), int(np.searchsorted(sw, hi, side="right"))
            if n_kept == 0 or s1 <= s0 or found[s0:s1].all():
                continue
            pids = _load_npy(self.folder, f"part-{p:05d}.ids.npy")
            m = self._mask(p, len(pids))
            rows = np.arange(len(pids)) if m is None else np.flatnonzero(m)
            kid = pids[rows]
            o = np.argsort(kid, kind="stable")  # equal ids: the first stored row
            sk = kid[o]
            seg = sw[s0:s1]
            pos = np.searchsorted(sk, seg)
            hit = (pos < len(sk)) & (sk[np.minimum(pos, len(sk) - 1)] == seg) & ~found[s0:s1]
            if not hit.any():
                continue
            r = rows[o[pos[hit]]]  # part rows
            dest = order[s0:s1][hit]  # result rows
            asc = np.argsort(r, kind="stable")  # ascending reads
            vecs = _load_npy(self.folder, f"part-{p:05d}.npy", mmap=True)
            out[dest[asc]] = np.asarray(vecs[r[asc]], dtype=np.float32)
            found[s0:s1] |= hit
        if not found.all():
            raise KeyError(f"{int((~found).sum())} ids not in {self.folder}")
        return out


def content_keys(vecs: np.ndarray) -> np.ndarray:
    """uint64 (n, 2) content key of each row's bytes (float16 as stored): column 0 is
    :func:`curate.stages.dedup.index._row_hashes` (the in-memory dedup path's hash), column 1 an independent
    64-bit hash (other multiplier, xor-shift per word, splitmix64 finaliser). Rows with equal
    bytes have equal keys; two different rows share a key with probability ~2⁻¹²⁸ per pair
    (at 2·10⁹ rows ≈ 10⁻²⁰ for the whole collection)."""
    from curate.stages.dedup.index import ADD_BLOCK, _row_hashes, row_words

    out = np.empty((len(vecs), 2), np.uint64)
    out[:, 0] = _row_hashes(vecs)
    mult = np.uint64(0xD6E8FEB86659FD93)
    for s, words, nbytes in row_words(vecs):
        h = np.full(len(words), np.uint64(0x243F6A8885A308D3) ^ np.uint64(nbytes), np.uint64)
        with np.errstate(over="ignore"):
            for k in range(words.shape[1]):
                h = (h + words[:, k]) * mult
                h ^= h >> np.uint64(29)
        out[s:s + ADD_BLOCK, 1] = _mix(h, 3)
    return out


def _read_part(folder, key: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (n,), float16 (n, d)) of every stored row of part ``key`` of ``folder``: its
    id file and its vector file (memory-mapped when local). Raises ValueError: the two differ
    in length."""
    from curate.store.embeddings import _load_npy

    ids = _load_npy(folder, f"part-{key:05d}.ids.npy")
    vecs = _load_npy(folder, f"part-{key:05d}.npy", mmap=True)
    if len(vecs) != len(ids):
        raise ValueError(f"{folder}/part-{key:05d}: {len(vecs)} vectors but {len(ids)} ids")
    return ids, vecs


def survey_part(folder, key: int, tol: float = 1e-2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One part of ``folder`` read once: (ids int64 (n,), unit bool (n,): the row is finite with
    L2 norm within ``tol`` of 1 (K13, float32 norms as :func:`curate.stages.dedup.index.row_norms`),
    :func:`content_keys` uint64 (n, 2)).

    Raises:
        ValueError: the part's vector and id files differ in length.
    """
    from curate.stages.dedup.index import row_norms

    ids, vecs = _read_part(folder, key)
    norms = row_norms(vecs)
    unit = np.isfinite(norms) & (np.abs(norms - 1.0) <= tol)
    return np.asarray(ids, np.int64), unit, content_keys(vecs)


def survey(folder, parts: list[int], engine: str = "local", sec=None, tol: float = 1e-2,
           window: int = 64) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`survey_part` of every part in ``parts``, yielded in that order as (part, ids,
    unit, keys): in this process, or one Ray task per part (``engine="ray"``, ``sec`` an
    :class:`curate.config.EngineConfig`) with at most ``window`` results waiting, so the
    caller holds one part's ids and keys at a time (25 bytes per row), never vectors."""
    if engine != "ray":
        for p in parts:
            yield (p, *survey_part(folder, p, tol))
        return
    import collections

    import ray

    from curate.engine.ray_engine import connect

    connect(sec)
    task = ray.remote(survey_part).options(num_cpus=getattr(sec, "actor_cpus", 1) or 1, max_retries=-1)
    todo = collections.deque(parts)
    waiting: collections.deque = collections.deque()
    while todo or waiting:
        while todo and len(waiting) < window:
            p = todo.popleft()
            waiting.append((p, task.remote(folder, p, tol)))
        p, ref = waiting.popleft()
        yield (p, *ray.get(ref))
        del ref


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
    index.cp.niter = 10  # as curate.stages.dedup.index's IVF; the lists only need to be balanced, not optimal
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


def _positions(source) -> dict[int, int]:
    """{shard key: its position in ``source.shards()``}: the high half of a location label."""
    return {k: i for i, k in enumerate(source.shards())}


def fill(template, source, keys: list[int] | None = None, engine: str = "local", sec=None,
         batch_rows: int = 1 << 16):
    """A copy of the trained ``template`` with the rows of ``source``'s shards ``keys`` (all by
    default) added, shard by shard (float32 batches of ``batch_rows``), each under its location
    label (:func:`locations`: the shard's position in ``source.shards()`` and the row's number
    as stored, before any keep mask) — not its sample id.

    ``engine="ray"``: one task per shard encodes it into its own index, merged here in shard
    order (``merge_from``), so the lists hold the same entries in the same order."""
    import faiss

    keys = source.shards() if keys is None else keys
    pos = _positions(source)
    index = _clone_empty(template)
    if engine != "ray":
        for key in keys:
            _add_shard(index, source, key, pos[key], batch_rows)
        return index
    import ray

    from curate.engine.ray_engine import connect

    connect(sec)
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


def _empty_chunk(d: int, dtype=np.float16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, d), dtype)


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
    """Every shard of ``source`` searched against ``indexes`` (filled by :func:`fill`, so their
    labels are locations) in two phases, then verified; returns (a, b, cosine) with a < b, each
    pair once, sorted.

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
    if engine != "ray":
        import tempfile

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

        from curate.engine.ray_engine import connect

        connect(sec)
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
        stats["verify_seconds"] = round(t_verify if engine == "ray" else sum(r[3]["verify_seconds"] for r in results), 2)
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
          recall_sample: int = 1000, spill_dir=None) -> Result:
    """All pairs with cosine ≥ ``min_cosine`` among the rows of ``source`` (an
    :class:`ArraySource` or :class:`PartsSource`), through steps 1–5 of the module doc.

    Args:
        min_cosine: threshold in [-1, 1] (inclusive), on the float32 cosine of the stored rows.
        params: :class:`Params` (defaults resolved for the source's size and dimension).
        engine: ``"local"`` or ``"ray"`` (``sec``: an :class:`curate.config.EngineConfig`).
        recall_sample: rows whose exact neighbours measure the recall (0 = skip).
        spill_dir: ``engine="local"``: where the candidates wait between the search and the
            verification (:func:`search`); None = the system's temp folder.

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
