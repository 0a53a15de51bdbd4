"""Sources of vectors for the IVF-PQ path (:mod:`curate.stages.dedup.ivfpq`), and the survey of
embedding parts.

- :class:`ArraySource`: vectors in memory, cut into shards of rows.
- :class:`PartsSource`: embedding parts (:mod:`curate.store.embeddings`), one shard per part,
  read part by part, optionally restricted to some rows by a one-bit-per-row keep mask.
- :func:`survey`: every part read once (one Ray task per part on a distributed engine) for the
  ids, the K13 check and a content key per row (:func:`content_keys`); the dedup stage builds
  its keep masks from it without loading vectors.
- :func:`sample_ids`: a row-order-free sample of ids by a hash of each id (:func:`splitmix64`).
"""
from __future__ import annotations

import collections
from typing import Iterator

import numpy as np

from curate.engine import get_engine
from curate.stages.dedup.rows import ADD_BLOCK, row_hashes, row_words, unit_rows
from curate.store import embeddings

_MIX = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """splitmix64 of int64 ids (+ seed) → uint64 (n,), a row-order-free pseudo-random key (the
    id sample of :func:`sample_ids`, :func:`curate.stages.dedup.ivfpq.pair_key`)."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(seed) * _MIX + _MIX
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_ids(ids: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask (n,) selecting about ``fraction`` (0–1) of ``ids`` by a hash of each id."""
    if fraction >= 1:
        return np.ones(len(ids), bool)
    return splitmix64(np.asarray(ids, np.int64), seed) < np.uint64(int(fraction * 2.0**64))

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
        self.folder = folder
        self.keep = None
        if keep is not None:
            self.keep = {int(p): (np.packbits(m, bitorder="little") if np.asarray(m).dtype == bool
                                  else np.asarray(m, np.uint8)) for p, m in keep.items()}
        self.parts = embeddings.list_parts(folder) if keep is None else sorted(self.keep)
        self._dim: int | None = None
        self._dir = None if directory is None else np.asarray(directory, np.int64).reshape(len(self.parts), 3)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(embeddings.load_npy(self.folder, f"part-{self.parts[0]:05d}.npy", mmap=True).shape[1])
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
            out = np.zeros((len(self.parts), 3), np.int64)
            for i, p in enumerate(self.parts):
                ids = embeddings.read_part_ids(self.folder, p)
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
        :func:`curate.stages.dedup.ivfpq.fill`)."""
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
            pids = embeddings.load_npy(self.folder, f"part-{p:05d}.ids.npy")
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
            vecs = embeddings.load_npy(self.folder, f"part-{p:05d}.npy", mmap=True)
            out[dest[asc]] = np.asarray(vecs[r[asc]], dtype=np.float32)
            found[s0:s1] |= hit
        if not found.all():
            raise KeyError(f"{int((~found).sum())} ids not in {self.folder}")
        return out


def content_keys(vecs: np.ndarray) -> np.ndarray:
    """uint64 (n, 2) content key of each row's bytes (float16 as stored): column 0 is
    :func:`curate.stages.dedup.rows.row_hashes` (the in-memory dedup path's hash), column 1 an independent
    64-bit hash (other multiplier, xor-shift per word, splitmix64 finaliser). Rows with equal
    bytes have equal keys; two different rows share a key with probability ~2⁻¹²⁸ per pair
    (at 2·10⁹ rows ≈ 10⁻²⁰ for the whole collection)."""
    out = np.empty((len(vecs), 2), np.uint64)
    out[:, 0] = row_hashes(vecs)
    mult = np.uint64(0xD6E8FEB86659FD93)
    for s, words, nbytes in row_words(vecs):
        h = np.full(len(words), np.uint64(0x243F6A8885A308D3) ^ np.uint64(nbytes), np.uint64)
        with np.errstate(over="ignore"):
            for k in range(words.shape[1]):
                h = (h + words[:, k]) * mult
                h ^= h >> np.uint64(29)
        out[s:s + ADD_BLOCK, 1] = splitmix64(h, 3)
    return out


def _read_part(folder, key: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (n,), float16 (n, d)) of every stored row of part ``key`` of ``folder``: its
    id file and its vector file (memory-mapped when local). Raises ValueError: the two differ
    in length."""
    ids = embeddings.load_npy(folder, f"part-{key:05d}.ids.npy")
    vecs = embeddings.load_npy(folder, f"part-{key:05d}.npy", mmap=True)
    if len(vecs) != len(ids):
        raise ValueError(f"{folder}/part-{key:05d}: {len(vecs)} vectors but {len(ids)} ids")
    return ids, vecs


def survey_part(folder, key: int, tol: float = 1e-2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One part of ``folder`` read once: (ids int64 (n,), unit bool (n,): the row is finite with
    L2 norm within ``tol`` of 1 (K13, float32 norms as :func:`curate.stages.dedup.rows.row_norms`),
    :func:`content_keys` uint64 (n, 2)).

    Raises:
        ValueError: the part's vector and id files differ in length.
    """
    ids, vecs = _read_part(folder, key)
    return np.asarray(ids, np.int64), unit_rows(vecs, tol), content_keys(vecs)


def survey(folder, parts: list[int], engine: str = "local", sec=None, tol: float = 1e-2,
           window: int = 64) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`survey_part` of every part in ``parts``, yielded in that order as (part, ids,
    unit, keys): in this process, or one Ray task per part (a distributed engine: ``engine="ray"``, ``sec`` an
    :class:`curate.config.EngineConfig`) with at most ``window`` results waiting, so the
    caller holds one part's ids and keys at a time (25 bytes per row), never vectors."""
    eng = get_engine(engine)
    if not eng.distributed:
        for p in parts:
            yield (p, *survey_part(folder, p, tol))
        return
    import ray

    eng.connect(sec)
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
