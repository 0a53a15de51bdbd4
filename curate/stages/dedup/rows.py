"""Row helpers shared by the dedup searches (:mod:`curate.stages.dedup.phash_search`,
:mod:`curate.stages.dedup.vector_search`, :mod:`curate.stages.dedup.sources`): bounded blocks
of rows, each row's bytes as words and their content hash, L2 norms and the K13 check, and
faiss range search in bounded query blocks.
"""
from __future__ import annotations

import numpy as np

QUERY_BLOCK = 16384  # query rows per faiss range search (bounds the result buffers)
ADD_BLOCK = 65536  # rows converted to float32 and added to a faiss index at a time


def row_words(vecs: np.ndarray):
    """Each row's bytes as uint64 words, ``ADD_BLOCK`` rows at a time: yields (first row,
    uint64 (rows, ceil(row bytes / 8)) zero-padded, row bytes) — the input of :func:`row_hashes`
    and of :func:`curate.stages.dedup.sources.content_keys`."""
    n = len(vecs)
    for s in range(0, n, ADD_BLOCK):
        raw = np.ascontiguousarray(vecs[s : s + ADD_BLOCK]).view(np.uint8).reshape(min(ADD_BLOCK, n - s), -1)
        nbytes = raw.shape[1]
        if nbytes % 8:
            raw = np.pad(raw, ((0, 0), (0, (-nbytes) % 8)))
        yield s, raw.view(np.uint64), nbytes

def row_hashes(vecs: np.ndarray) -> np.ndarray:
    """uint64 (n,) hash of each row's bytes (polynomial over 64-bit words, then a splitmix64 finaliser):
    the content hash that groups identical vectors (:mod:`curate.stages.dedup.vector_search`) and
    column 0 of :func:`curate.stages.dedup.sources.content_keys`."""
    out = np.empty(len(vecs), np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    for s, words, nbytes in row_words(vecs):
        h = np.full(len(words), np.uint64(nbytes), np.uint64)
        with np.errstate(over="ignore"):
            for k in range(words.shape[1]):
                h = (h ^ words[:, k]) * mult
            h ^= h >> np.uint64(31)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(27)
        out[s : s + ADD_BLOCK] = h
    return out

def row_norms(vecs: np.ndarray) -> np.ndarray:
    """float32 (n,) L2 norms of the rows of float (n, d), computed in float32 blocks of ``ADD_BLOCK`` rows
    (no float32 copy of the whole array); NaN/inf where a row has them."""
    out = np.empty(len(vecs), np.float32)
    for s in range(0, len(vecs), ADD_BLOCK):
        out[s : s + ADD_BLOCK] = np.linalg.norm(np.asarray(vecs[s : s + ADD_BLOCK], dtype=np.float32), axis=1)
    return out


def unit_rows(vecs: np.ndarray, tol: float) -> np.ndarray:
    """bool (n,): the rows of float (n, d) that are finite and of L2 norm 1 ± ``tol`` (case K13:
    what dedup searches; the others are excluded and counted), norms as :func:`row_norms`."""
    norms = row_norms(vecs)
    return np.isfinite(norms) & (np.abs(norms - 1.0) <= tol)


def check_normalised(vecs: np.ndarray, tol: float = 1e-2) -> None:
    """Raise ValueError unless every row of float (n, d) has L2 norm 1 ± ``tol`` (case K13)."""
    norms = np.linalg.norm(vecs, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > tol)
    if bad.size:
        raise ValueError(f"{bad.size} vectors are not L2-normalised (e.g. row {bad[0]} has norm {norms[bad[0]]:.4f})")

def range_pairs(index, x: np.ndarray, radius, min_value: float | None = None, dtype=None):
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
