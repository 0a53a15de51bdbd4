"""Near-duplicate search with faiss and connected components.

- :func:`phash_pairs`: all pairs of 64-bit pHashes within Hamming distance ``r`` (bits,
  0–64, smaller is closer), using a faiss binary index (never an O(n²) Python loop).
- :func:`cosine_pairs`: all pairs of L2-normalised vectors with cosine similarity ≥ ``t``
  (−1…1, larger is closer), exact inner-product search in bounded query blocks.
- :func:`components`: connected components of an edge list (the duplicate clusters).
"""
from __future__ import annotations

import numpy as np

QUERY_BLOCK = 16384  # query rows per faiss range search (bounds the result buffers)
ADD_BLOCK = 65536  # rows converted to float32 and added to a faiss index at a time


def _hashes_to_codes(hashes: np.ndarray) -> np.ndarray:
    """uint64 (n,) → uint8 (n, 8) big-endian codes (faiss binary layout), C-contiguous."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=">u8").view(np.uint8).reshape(-1, 8))


def phash_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of row indices whose Hamming distance is ≤ ``max_distance``.

    Args:
        hashes: uint64 (n,) pHashes.
        max_distance: bits, 0–64.

    Returns:
        (i int64 (m,), j int64 (m,), distance int32 (m,)), sorted by (i, j).

    Raises:
        ValueError: ``max_distance`` outside 0–64.
    """
    import faiss

    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be in 0..64 bits, got {max_distance}")
    n = len(hashes)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    codes = _hashes_to_codes(hashes)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    i, j, d = _range_pairs(index, codes, max_distance + 1)  # faiss: strictly below radius
    return i, j, d.astype(np.int32)


def check_normalised(vecs: np.ndarray, tol: float = 1e-2) -> None:
    """Raise ValueError unless every row of float (n, d) has L2 norm 1 ± ``tol`` (case K13)."""
    norms = np.linalg.norm(vecs, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > tol)
    if bad.size:
        raise ValueError(f"{bad.size} vectors are not L2-normalised (e.g. row {bad[0]} has norm {norms[bad[0]]:.4f})")


def cosine_pairs(vecs: np.ndarray, min_cosine: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows with cosine similarity ≥ ``min_cosine`` (exact search).

    Args:
        vecs: float (n, d) — float32, or float16 as stored (converted to C-contiguous float32
            in blocks of ``ADD_BLOCK``/``QUERY_BLOCK`` rows) — L2-normalised (checked per block).
        min_cosine: threshold in [-1, 1].

    Raises:
        ValueError: a row is not L2-normalised (K13: exclude zero/NaN vectors first).

    Returns:
        (i int64 (m,), j int64 (m,), cosine float32 (m,)), sorted by (i, j).
    """
    import faiss

    n = len(vecs)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(vecs.shape[1])
    for start in range(0, n, ADD_BLOCK):  # faiss gets C-contiguous float32 blocks, never one big copy
        block = np.ascontiguousarray(vecs[start : start + ADD_BLOCK], dtype=np.float32)
        check_normalised(block)
        index.add(block)
    i, j, sims = _range_pairs(index, vecs, float(min_cosine) - 1e-4, min_value=min_cosine, dtype=np.float32)
    return i, j, sims.astype(np.float32)


def _range_pairs(index, x: np.ndarray, radius, min_value: float | None = None, dtype=None):
    """Range-search every row of ``x`` against ``index`` in bounded query blocks.

    Returns (i int64, j int64, value) for pairs i < j, sorted by (i, j); ``min_value`` drops
    pairs whose value is below it (inner-product searches return similarities).
    """
    out_i, out_j, out_v = [], [], []
    for start in range(0, len(x), QUERY_BLOCK):
        q = x[start : start + QUERY_BLOCK] if dtype is None else np.ascontiguousarray(x[start : start + QUERY_BLOCK], dtype=dtype)
        lims, vals, labels = index.range_search(q, radius)
        rows = np.repeat(np.arange(start, start + len(q), dtype=np.int64), np.diff(lims).astype(np.int64))
        keep = labels > rows
        if min_value is not None:
            keep &= vals >= min_value
        out_i.append(rows[keep])
        out_j.append(labels[keep].astype(np.int64))
        out_v.append(vals[keep])
    i, j, v = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_v)
    order = np.lexsort((j, i))
    return i[order], j[order], v[order]


def components(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph with edges (a[k], b[k]) over node ids.

    Args:
        ids: int64 (n,) all node ids appearing in a or b (any order).
        a, b: int64 (m,) edge endpoints (ids, not indices).

    Returns:
        (node ids int64 (n',), cluster id int64 (n',)) for nodes in components of size ≥ 2;
        the cluster id is the smallest member id, so it does not depend on edge order.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([a, b])) if len(a) else np.zeros(0, np.int64)
    if nodes.size == 0:
        return nodes, nodes
    ai, bi = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    g = coo_matrix((np.ones(len(ai), np.int8), (ai, bi)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(g, directed=False)
    # smallest member id per label: nodes are sorted, so the first occurrence is the minimum
    first = np.full(labels.max() + 1, -1, np.int64)
    order = np.arange(len(nodes))[::-1]
    first[labels[order]] = nodes[order]
    return nodes, first[labels]
