"""Exact nearest-neighbour search of query vectors against a workspace's embedding parts.

Both sides are L2-normalised (the store guarantees it for the training side; queries are
normalised by the caller), so inner product = cosine similarity (−1…1). The training parts are
streamed (memory-mapped float16, converted to float32 one block of rows at a time) and a running
top-k is merged per block, so memory is O(queries × (k + block)), never the whole store, and the
result is exact (every training vector is compared).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.store.embeddings import float32_batches, iter_parts, lookup

BLOCK_ROWS = 65536  # training rows converted to float32 and multiplied at a time


def topk(queries: np.ndarray, folder: Path, k: int, *, exclude_self: np.ndarray | None = None,
         only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar training vectors of every query (exact).

    Args:
        queries: float32 (q, d), L2-normalised rows.
        folder: an embedding folder (``part-NNNNN.npy`` + ``.ids.npy``, see :mod:`curate.store.embeddings`).
        k: neighbours per query (≥ 1).
        exclude_self: int64 (q,) sample ids; a training row with the query's own id is skipped
            (the train→train background: "top-1 similarity to *another* training image").
        only: int64 sample ids; training rows with other ids are skipped (e.g. image status ok).

    Returns:
        (ids int64 (q, k), similarities float32 (q, k)), best first; where fewer than k training
        vectors exist, ids are −1 and similarities −inf. A sample id stored in two parts (which the
        embed stage never writes) would be listed once per copy.

    Raises:
        ValueError: the query dimension differs from the store's.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    nq = len(q)
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    if nq == 0:
        return best_i, best_s
    only_sorted = np.sort(np.asarray(only, np.int64)) if only is not None else None
    for _, ids, vecs in iter_parts(folder):
        if vecs.shape[1] != q.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} dimensions, {folder} stores {vecs.shape[1]}")
        keep = np.ones(len(ids), bool)
        if only_sorted is not None:
            pos = np.searchsorted(only_sorted, ids)
            keep &= (pos < len(only_sorted)) & (only_sorted[np.minimum(pos, len(only_sorted) - 1)] == ids)
        for start, block in float32_batches(vecs, BLOCK_ROWS):
            bids = ids[start : start + len(block)]
            bkeep = keep[start : start + len(block)]
            if not bkeep.any():
                continue
            block, bids = block[bkeep], bids[bkeep]
            s = q @ block.T  # (q, m)
            if exclude_self is not None:
                s[np.asarray(exclude_self, np.int64)[:, None] == bids[None, :]] = -np.inf
            m = min(k, s.shape[1])
            part = np.argpartition(-s, m - 1, axis=1)[:, :m]
            cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
            cand_i = np.concatenate([best_i, bids[part]], axis=1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s = np.take_along_axis(cand_s, order, axis=1)
            best_i = np.take_along_axis(cand_i, order, axis=1)
    best_i[~np.isfinite(best_s)] = -1
    return best_i, best_s


def background(folder: Path, sample: int, seed: int = 0, only: np.ndarray | None = None,
               batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Somepalli et al.'s background distribution: each training image's top-1 similarity to
    *another* training image (CVPR 2023, "Diffusion Art or Digital Forgery?", the train→train
    histogram their generated-vs-train histograms are read against).

    Args:
        folder: the training embedding folder.
        sample: at most this many training images are queried (a uniform random subset,
            ``numpy.random.default_rng(seed)``, sorted by id); each is searched against *all*
            training vectors.
        only: restrict both sides to these sample ids.

    Returns:
        (query sample ids int64 (m,), top-1 similarity to another training image float32 (m,));
        a training set of one image gives empty arrays.
    """
    parts = [ids for _, ids, _ in iter_parts(folder)]
    all_ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    if only is not None:
        all_ids = np.intersect1d(all_ids, np.asarray(only, np.int64))
    if len(all_ids) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if len(all_ids) > sample:
        all_ids = np.sort(np.random.default_rng(seed).choice(all_ids, sample, replace=False))
    out = np.zeros(len(all_ids), np.float32)
    for b in range(0, len(all_ids), batch):
        qids = all_ids[b : b + batch]
        _, qv = lookup(folder, qids)
        _, s = topk(qv, folder, 1, exclude_self=qids, only=only)
        out[b : b + batch] = s[:, 0]
    return all_ids, out
