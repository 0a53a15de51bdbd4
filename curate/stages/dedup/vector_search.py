"""Near-duplicate embedding search: pairs of L2-normalised vectors above a cosine similarity.

- :func:`cosine_pairs`: all pairs of L2-normalised vectors with cosine similarity ≥ ``t``
  (−1…1, larger is closer), exact inner-product search in bounded query blocks.
- :func:`embedding_edges`: the dedup stage's embedding edges: identical vectors collapsed
  to star edges, then exact search, or above a size k-means partitions searched multi-probe
  (SemDeDup-style partitioning, IVF-style probing) with recall measured against exact search,
  or faiss IVF-PQ (:mod:`curate.stages.dedup.ivfpq`).
"""
from __future__ import annotations

import math
import time

import numpy as np

from curate.stages.dedup import ivfpq
from curate.stages.dedup.rows import ADD_BLOCK, check_normalised, range_pairs, row_hashes
from curate.stages.dedup.sources import ArraySource


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

    if len(vecs) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = _filled(faiss.IndexFlatIP(vecs.shape[1]), vecs)
    i, j, sims = range_pairs(index, vecs, float(min_cosine) - 1e-4, min_value=min_cosine, dtype=np.float32)
    return i, j, sims.astype(np.float32)


def _filled(index, vecs: np.ndarray):
    """``index`` with every row of ``vecs`` added as C-contiguous float32 blocks of ``ADD_BLOCK``
    rows (never one big copy), each checked L2-normalised (K13; ValueError otherwise)."""
    for start in range(0, len(vecs), ADD_BLOCK):
        block = np.ascontiguousarray(vecs[start : start + ADD_BLOCK], dtype=np.float32)
        check_normalised(block)
        index.add(block)
    return index


KNN_QUERY_BLOCK = 16384  # query rows per faiss kNN search call


def knn_pairs(vecs: np.ndarray, k: int, min_cosine: float, max_cosine: float | None, *,
              ivf_min_n: int = 200_000, nprobe: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, row indices) among each row's ``k`` nearest neighbours by inner product with
    ``min_cosine`` ≤ cosine < ``max_cosine`` (≤ 1 when None), each pair once, sorted by (i, j):
    the containment candidates (:mod:`curate.stages.dedup.containment`), which sit below the
    edge threshold where a range search would return too many pairs.

    Args:
        vecs: float16 or float32 (n, d), L2-normalised rows (K13; checked per block).
        k: neighbours per row (≥ 1; 0 gives no pair).
        min_cosine, max_cosine: the cosine band in [-1, 1].
        ivf_min_n: rows from which the search is faiss ``IndexIVFFlat`` (≈ 4√n lists trained on
            ≤ 64 rows per list, ``nprobe`` probed; approximate) instead of exact ``IndexFlatIP``,
            the index :func:`cosine_pairs` uses.

    Returns:
        (i int64 (m,), j int64 (m,), cosine float32 (m,)).

    Raises:
        ValueError: a row is not L2-normalised.
    """
    import faiss

    n = len(vecs)
    empty = np.zeros(0, np.int64)
    if n < 2 or k < 1:
        return empty, empty, np.zeros(0, np.float32)
    d = vecs.shape[1]
    if n >= ivf_min_n:
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        step = max(1, n // (64 * nlist))
        index.train(np.ascontiguousarray(vecs[::step][: 64 * nlist], np.float32))
        index.nprobe = nprobe
    else:
        index = faiss.IndexFlatIP(d)
    _filled(index, vecs)
    kk = min(k + 1, n)
    ii, jj, cc = [], [], []
    for s in range(0, n, KNN_QUERY_BLOCK):
        sims, nb = index.search(np.ascontiguousarray(vecs[s : s + KNN_QUERY_BLOCK], np.float32), kk)
        rows = np.repeat(np.arange(s, s + len(nb), dtype=np.int64), kk)
        nb, sims = nb.ravel().astype(np.int64), sims.ravel()
        keep = (nb >= 0) & (nb != rows) & (sims >= min_cosine)
        if max_cosine is not None:
            keep &= sims < max_cosine
        ii.append(np.minimum(rows, nb)[keep])
        jj.append(np.maximum(rows, nb)[keep])
        cc.append(sims[keep])
    i, j, c = np.concatenate(ii), np.concatenate(jj), np.concatenate(cc).astype(np.float32)
    _, first = np.unique(i * n + j, return_index=True)  # sorted by (i, j), each pair once
    return i[first], j[first], c[first]


def embedding_edges(
    vecs: np.ndarray,
    min_cosine: float,
    method: str = "auto",
    ivf_min_n: int = 200_000,
    nlist: int | None = None,
    nprobe: int = 8,
    recall_sample: int = 1000,
    seed: int = 0,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Duplicate edges between rows whose cosine similarity is ≥ ``min_cosine``.

    1. **Identical rows are collapsed first** (bytewise equal vectors, found by a 64-bit content
       hash and verified row by row): each group keeps its smallest row as representative and
       gets star edges (representative, member) with cosine 1.0. Only representatives are
       searched, so a set where most vectors are one placeholder image neither costs O(k²)
       edges nor collapses the k-means of step 2.
    2. Representatives are searched

       - ``"exact"``: :func:`cosine_pairs` (faiss ``IndexFlatIP``, every pair);
       - ``"ivf"``: k-means partitioning with exact similarities inside partitions, as in
         SemDeDup (Abbas et al., "SemDeDup: Data-efficient learning at web-scale through
         semantic deduplication", 2023), made multi-probe like a faiss IVF index (Jégou,
         Douze & Schmid, TPAMI 2011): spherical k-means (faiss ``Kmeans``) with ``nlist``
         centroids is trained on a sample of ≤ 40 representatives per centroid chosen by
         content hash (so the result does not depend on row order); every representative
         is stored in its nearest partition and compared, by float32 matrix products, with
         every representative stored in its ``nprobe`` nearest partitions. A pair is found
         when either row probes the other's partition; pairs whose two rows fall in
         partitions neither probes are missed, so recall is measured: exact search of
         ``recall_sample`` representatives (also chosen by content hash) against all
         representatives, recall = found / exact pairs touching those rows. Cost
         ≈ n·d·(nlist + nprobe·n/nlist) multiply-adds for balanced partitions; skewed
         partitions cost more, never more memory than one query block × one partition block.
       - ``"ivfpq"``: :mod:`curate.stages.dedup.ivfpq` — faiss IVF-PQ (compressed codes, the cluster-scale
         path of docs/SCALE_OUT.md), candidates verified by exact cosine; recall measured.
       - ``"auto"``: ``"ivf"`` when there are ≥ ``ivf_min_n`` representatives, else ``"exact"``.

    Edges between representatives carry their cosine; the edge set has the same connected
    components as the set of all pairs, but a member of an identical group is linked only to
    its representative.

    Args:
        vecs: float16 or float32 (n, d), L2-normalised rows (K13; converted to float32 in
            blocks, never as a whole).
        min_cosine: threshold in [-1, 1] (inclusive).
        method: ``"auto"``, ``"exact"`` or ``"ivf"``.
        ivf_min_n: representatives from which ``"auto"`` uses IVF (≥ 1).
        nlist: partitions (≥ 1); None = the k minimising the multiply-adds of k-means training
            (10 iterations over 40 rows per centroid), assignment and search:
            400·k² + n·k + nprobe·n²/k (1,808 for n = 10⁶, nprobe = 8); at most n / 40
            partitions are used either way.
        nprobe: partitions each row is compared against (1 … nlist).
        recall_sample: representatives whose IVF neighbours are checked by exact search (0 = skip).
        seed: k-means seed.
        stats: optional dict, filled with ``method``, ``rows``, ``unique`` (representatives),
            ``identical_collapsed`` (rows folded into a representative), and for IVF
            ``nlist``, ``nprobe``, ``recall_sample``, ``recall_pairs`` (exact pairs touching the
            sample), ``recall`` (0–1, None when the sample has no exact pair) and
            ``recall_seconds`` (wall time of that exact search).

    Returns:
        (i int64 (m,), j int64 (m,), cosine float32 (m,)), i < j, sorted by (i, j).

    Raises:
        ValueError: a row is not L2-normalised (K13), a bad ``method``, ``nprobe`` < 1 or
            ``nlist`` < 1.
    """
    if method not in ("auto", "exact", "ivf", "ivfpq"):
        raise ValueError(f"method must be 'auto', 'exact', 'ivf' or 'ivfpq', got {method!r}")
    if nprobe < 1 or (nlist is not None and nlist < 1):
        raise ValueError(f"nprobe and nlist must be ≥ 1, got nprobe={nprobe}, nlist={nlist}")
    stats = {} if stats is None else stats
    n = len(vecs)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if n == 0:
        stats.update(method="none", rows=0, unique=0, identical_collapsed=0)
        return empty
    content = row_hashes(vecs)
    reps, rep_of = _identical_groups(vecs, content)
    stats.update(rows=n, unique=len(reps), identical_collapsed=n - len(reps))
    use_ivf = method == "ivf" or (method == "auto" and len(reps) >= ivf_min_n)
    if len(reps) < 2:
        stats["method"] = "exact"
        a, b, s = empty
    elif method == "ivfpq":  # compressed codes, candidates verified exactly (curate.stages.dedup.ivfpq, issue #8)
        a, b, s = _ivfpq_pairs(vecs, reps, float(min_cosine), nlist, nprobe, recall_sample, seed, stats)
    elif not use_ivf:
        stats["method"] = "exact"
        a, b, s = cosine_pairs(vecs[reps], min_cosine)
        a, b = reps[a], reps[b]
    else:
        a, b, s = _ivf_pairs(vecs, reps, content[reps], float(min_cosine), nlist, nprobe, recall_sample, seed, stats)
    members = np.flatnonzero(rep_of != np.arange(n))
    i = np.concatenate([a, rep_of[members]])
    j = np.concatenate([b, members])
    c = np.concatenate([s.astype(np.float32), np.ones(len(members), np.float32)])
    order = np.lexsort((j, i))
    return i[order], j[order], c[order]


def _ivfpq_pairs(vecs, reps, min_cosine, nlist, nprobe, recall_sample, seed, stats):
    """:func:`curate.stages.dedup.ivfpq.pairs` over the representative rows ``reps``: faiss IVF-PQ trained on
    a sample, range search at ``min_cosine`` − a calibrated margin, every candidate verified by
    its exact float32 cosine (so no false edge), recall measured on ``recall_sample`` rows.
    Returns (a, b, cosine) as row indices of ``vecs``, a < b."""
    res = ivfpq.pairs(ArraySource(reps, vecs[reps]), min_cosine,
                      ivfpq.Params(nlist=nlist, nprobe=nprobe, seed=seed), recall_sample=recall_sample)
    stats.update(method="ivfpq", **{k: v for k, v in res.stats.items() if k not in ("rows", "engine")})
    return res.a, res.b, res.cosine

def _identical_groups(vecs: np.ndarray, content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups of bytewise identical rows: (representatives int64 (u,) ascending, rep_of int64 (n,)).

    ``rep_of[r]`` is the smallest row identical to row r (r itself for a representative).
    Rows with equal content hash are compared byte for byte, so a hash collision never merges
    two different vectors.
    """
    n = len(vecs)
    order = np.argsort(content, kind="stable")  # equal hashes: ascending row
    h = content[order]
    starts = np.flatnonzero(np.r_[True, h[1:] != h[:-1]])
    first = np.repeat(order[starts], np.diff(np.r_[starts, n]))  # candidate representative per sorted row
    rep_of = np.empty(n, np.int64)
    rep_of[order] = first
    cand = np.flatnonzero(rep_of != np.arange(n))
    for s in range(0, len(cand), ADD_BLOCK):  # verify byte for byte
        rows = cand[s : s + ADD_BLOCK]
        a = np.ascontiguousarray(vecs[rows]).view(np.uint8).reshape(len(rows), -1)
        b = np.ascontiguousarray(vecs[rep_of[rows]]).view(np.uint8).reshape(len(rows), -1)
        bad = rows[(a != b).any(axis=1)]
        for r in bad:  # hash collision (never seen in practice): first identical row among the equal-hash run
            same = order[np.searchsorted(h, content[r]) : np.searchsorted(h, content[r], side="right")]
            eq = [x for x in same if x <= r and np.array_equal(np.asarray(vecs[x]).view(np.uint8), np.asarray(vecs[r]).view(np.uint8))]
            rep_of[r] = min(eq)
    return np.flatnonzero(rep_of == np.arange(n)), rep_of


def _by_content(content: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of the k rows with the smallest seeded content hash (a row-order-free random sample)."""
    with np.errstate(over="ignore"):
        key = (content ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) * np.uint64(0xD6E8FEB86659FD93)
    k = min(k, len(content))
    idx = np.argpartition(key, k - 1)[:k] if k < len(content) else np.arange(len(content))
    return idx[np.argsort(key[idx], kind="stable")]


IVF_TRAIN_PER_LIST = 40  # k-means sample: representatives per centroid (faiss warns under 39)
IVF_NITER = 10  # k-means iterations
IVF_QUERY_BLOCK = 2048  # query rows per matrix product
IVF_DB_BLOCK = 8192  # partition rows per matrix product


def _auto_nlist(n: int, nprobe: int) -> int:
    """Partitions minimising k-means + assignment + search multiply-adds (per dimension):
    IVF_NITER·IVF_TRAIN_PER_LIST·k² + n·k + nprobe·n²/k."""
    k = np.arange(1, int(math.sqrt(nprobe * n)) + 2, dtype=np.float64)
    cost = IVF_NITER * IVF_TRAIN_PER_LIST * k**2 + n * k + nprobe * float(n) ** 2 / k
    return int(k[np.argmin(cost)])


def _ivf_pairs(vecs, reps, content, min_cosine, nlist, nprobe, recall_sample, seed, stats):
    """Multi-probe k-means partition search over the representative rows ``reps`` (see
    :func:`embedding_edges`). Returns (a, b, cosine) as row indices of ``vecs``, a < b."""
    import faiss

    n, d = len(reps), vecs.shape[1]
    k = max(1, min(nlist if nlist is not None else _auto_nlist(n, nprobe), n // IVF_TRAIN_PER_LIST))
    nprobe = min(nprobe, k)
    train = _by_content(content, k * IVF_TRAIN_PER_LIST, seed)
    x = np.ascontiguousarray(vecs[reps[train]], dtype=np.float32)
    check_normalised(x)
    km = faiss.Kmeans(d, k, niter=IVF_NITER, spherical=True, seed=seed, max_points_per_centroid=IVF_TRAIN_PER_LIST)
    km.train(x)
    del x
    quant = faiss.IndexFlatIP(d)
    quant.add(km.centroids)
    probes = np.empty((n, nprobe), np.int64)
    for s in range(0, n, ADD_BLOCK):
        block = np.ascontiguousarray(vecs[reps[s : s + ADD_BLOCK]], dtype=np.float32)
        check_normalised(block)
        probes[s : s + ADD_BLOCK] = quant.search(block, nprobe)[1]
    home = probes[:, 0]  # each row is stored in its nearest partition
    db_order = np.argsort(home, kind="stable")
    db_start = np.r_[0, np.cumsum(np.bincount(home, minlength=k))]
    q_order = np.argsort(probes.ravel(), kind="stable") // nprobe  # rows probing each partition
    q_start = np.r_[0, np.cumsum(np.bincount(probes.ravel(), minlength=k))]
    out_a, out_b, out_s = [], [], []
    for lst in range(k):
        db = db_order[db_start[lst] : db_start[lst + 1]]
        qs = q_order[q_start[lst] : q_start[lst + 1]]
        if not len(db) or not len(qs):
            continue
        for d0 in range(0, len(db), IVF_DB_BLOCK):
            dbb = db[d0 : d0 + IVF_DB_BLOCK]
            dv = np.ascontiguousarray(vecs[reps[dbb]], dtype=np.float32)
            for q0 in range(0, len(qs), IVF_QUERY_BLOCK):
                qb = qs[q0 : q0 + IVF_QUERY_BLOCK]
                sims = np.ascontiguousarray(vecs[reps[qb]], dtype=np.float32) @ dv.T
                qi, di = np.nonzero(sims >= min_cosine)
                a, b = qb[qi], dbb[di]
                keep = a != b
                out_a.append(np.minimum(a, b)[keep])
                out_b.append(np.maximum(a, b)[keep])
                out_s.append(sims[qi, di][keep])
    if out_a:
        a, b, s = np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)
        _, first = np.unique(a * n + b, return_index=True)  # a pair found from both sides counts once
        a, b, s = a[first], b[first], s[first]
    else:
        a, b, s = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    stats.update(method="ivf", nlist=k, nprobe=nprobe)
    stats.update(_ivf_recall(vecs, reps, content, min_cosine, a, b, recall_sample, seed))
    return reps[a], reps[b], s


def _ivf_recall(vecs, reps, content, min_cosine, a, b, sample, seed) -> dict:
    """Exact search of ``sample`` representatives (by content hash) against all representatives;
    recall = pairs found by IVF / exact pairs, over pairs touching a sampled row."""
    n = len(reps)
    sample = min(sample, n)
    if sample <= 0:
        return {"recall_sample": 0, "recall_pairs": 0, "recall": None}
    t0 = time.perf_counter()
    qs = np.sort(_by_content(content, sample, seed + 1))
    exact = [np.zeros(0, np.int64)]
    for q0 in range(0, len(qs), IVF_QUERY_BLOCK):  # products bounded to IVF_QUERY_BLOCK × IVF_DB_BLOCK
        qb = qs[q0 : q0 + IVF_QUERY_BLOCK]
        qv = np.ascontiguousarray(vecs[reps[qb]], dtype=np.float32)
        for s in range(0, n, IVF_DB_BLOCK):
            dv = np.ascontiguousarray(vecs[reps[s : s + IVF_DB_BLOCK]], dtype=np.float32)
            qi, di = np.nonzero(qv @ dv.T >= min_cosine)
            a_, b_ = qb[qi], s + di
            keep = a_ != b_
            exact.append(np.minimum(a_, b_)[keep] * n + np.maximum(a_, b_)[keep])
    exact_keys = np.unique(np.concatenate(exact))
    found = np.isin(exact_keys, a * n + b)
    return {
        "recall_sample": int(sample),
        "recall_pairs": int(len(exact_keys)),
        "recall": round(float(found.mean()), 4) if len(exact_keys) else None,
        "recall_seconds": round(time.perf_counter() - t0, 2),
    }
