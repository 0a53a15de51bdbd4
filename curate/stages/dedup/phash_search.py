"""Near-duplicate pHash search: all pairs of 64-bit pHashes within a Hamming distance, exact.

- :func:`phash_pairs`: all pairs of 64-bit pHashes within Hamming distance ``r`` (bits,
  0–64, smaller is closer), exact: multi-index hashing (Norouzi, Punjani & Fleet) in O(n)
  memory at scale, faiss ``IndexBinaryFlat`` brute force at small n (the reference).
- :func:`phash_edges`: the dedup stage's pHash edges: identical hashes collapsed to star
  edges, distinct hashes searched as in :func:`phash_pairs`, optionally mirror-aware (each
  image's mirror pHash searched against every hash).
"""
from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from curate.stages.dedup.rows import QUERY_BLOCK, range_pairs


def _hashes_to_codes(hashes: np.ndarray) -> np.ndarray:
    """uint64 (n,) → uint8 (n, 8) big-endian codes (faiss binary layout), C-contiguous."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=">u8").view(np.uint8).reshape(-1, 8))


def _check_phash_args(max_distance: int, method: str) -> None:
    """Raises ValueError for a radius outside 0–64 bits or an unknown search method."""
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be in 0..64 bits, got {max_distance}")
    if method not in ("auto", "mih", "brute"):
        raise ValueError(f"method must be 'auto', 'mih' or 'brute', got {method!r}")


def phash_pairs(
    hashes: np.ndarray, max_distance: int, method: str = "auto", stats: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of row indices whose Hamming distance is ≤ ``max_distance`` (exact).

    Two exact methods, identical output:

    - ``"mih"``: multi-index hashing (Norouzi, Punjani & Fleet, "Fast Search in Hamming Space
      with Multi-Index Hashing", CVPR 2012 / "Fast Exact Search in Hamming Space with
      Multi-Index Hashing", TPAMI 2014) over the *distinct* hashes, in numpy. The 64 bits are
      cut into m disjoint blocks of ≤ 22 bits; block k gets a threshold t_k with
      Σ t_k = r − m + 1 (t_k = −1 skips the block). If d(x, y) ≤ r, some block has
      d(x_k, y_k) ≤ t_k, since otherwise d ≥ Σ (t_k + 1) = r + 1 — the pigeonhole bound
      of MIH (t_k = ⌊r/m⌋) generalised as in Qin et al., "GPH: Similarity Search in Hamming
      Space", ICDE 2018. Each block is a direct-address table (2^bits offsets into the rows
      sorted by block value); every row probes the buckets within t_k bit flips of its block
      value and every candidate's full 64-bit distance is verified, so no pair is missed and
      none is invented. Memory: O(n + 2^22) plus bounded probe buffers (``_MIH_PROBE_ELEMS``).
      The number of blocks and the thresholds minimise an estimated cost (probes + expected
      candidates for uniformly random bits); skewed hashes only cost more candidates.
    - ``"brute"``: faiss ``IndexBinaryFlat`` range search, O(n²) distance computations; the
      reference for small n and for radii where MIH would probe more than it saves.

    ``"auto"`` picks ``"brute"`` when its estimated cost is lower (small n or a large radius),
    else ``"mih"``. Rows with identical hashes are searched once and expanded back to every
    pair of rows (distance 0 inside a group, the groups' distance across groups), so the output
    is the same as brute force over all rows — note it is quadratic in the size of a group of
    identical hashes (:func:`phash_edges`, which dedup uses, is not: star edges).

    Args:
        hashes: uint64 (n,) pHashes (any order; the result does not depend on it other than
            through the row indices).
        max_distance: r, bits, 0–64 (inclusive: a pair at exactly r is returned).
        method: ``"auto"``, ``"mih"`` or ``"brute"``.
        stats: optional dict, filled with ``method``, ``unique`` (distinct hashes), for MIH
            ``blocks`` (bits per block), ``thresholds`` (t_k) and ``candidates`` (verified
            full distances).

    Returns:
        (i int64 (m,), j int64 (m,), distance int32 (m,) bits), i < j, sorted by (i, j).

    Raises:
        ValueError: ``max_distance`` outside 0–64, or an unknown ``method``.
    """
    _check_phash_args(max_distance, method)
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    stats = {} if stats is None else stats
    if n < 2:
        stats.update(method="none", unique=n)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    uniq, inverse = np.unique(hashes, return_inverse=True)
    plan = _mih_plan(len(uniq), max_distance)
    if method == "brute" or (method == "auto" and plan is None):
        stats.update(method="brute", unique=len(uniq))
        return _phash_pairs_brute(hashes, max_distance)
    if plan is None:  # method == "mih" forced where the cost model found no usable plan
        plan = _mih_plan(len(uniq), max_distance, force=True)
    a, b, d = _mih_pairs(uniq, max_distance, plan, stats)
    stats.update(method="mih", unique=len(uniq), blocks=[p[1] for p in plan], thresholds=[p[2] for p in plan])
    return _expand_groups(inverse.ravel(), len(uniq), a, b, d)


def _phash_pairs_brute(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: faiss ``IndexBinaryFlat`` range search over all rows (O(n²) distances)."""
    import faiss

    codes = _hashes_to_codes(hashes)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    i, j, d = range_pairs(index, codes, max_distance + 1)  # faiss: strictly below radius
    return i, j, d.astype(np.int32)


# Multi-index hashing. Cost model constants: rough seconds per unit from micro-benchmarks of
# these numpy kernels on the 2-core dev VM; only their ratios matter for the plan:
_MIH_PROBE_S = 4e-9  # one bucket probe (xor, occupancy lookup)
_MIH_CAND_S = 6e-9  # one candidate (gather its hash, popcount, compare)
_MIH_TABLE_S = 3e-9  # one direct-address table entry (bincount, cumsum), per block
_BRUTE_PAIR_S = 5e-10  # one faiss binary distance
_MIH_MAX_BITS = 22  # direct-address tables of ≤ 2^22 entries (start, count, occupied: 36 MiB), one block at a time
_MIH_MAX_MASKS = 1 << 16  # flip patterns per block beyond which a plan is not considered
_MIH_PROBE_ELEMS = 1 << 20  # probes held at once (bounds the temporary buffers)


def _ball(bits: int, t: int) -> int:
    """Number of bit patterns of weight ≤ t over ``bits`` bits (0 for t < 0)."""
    return sum(math.comb(bits, w) for w in range(min(t, bits) + 1)) if t >= 0 else 0


def _mih_plan(n: int, r: int, force: bool = False) -> list[tuple[int, int, int]] | None:
    """Cheapest MIH plan [(shift, bits, threshold), ...] for n distinct hashes at radius r.

    Considers m = 3…8 blocks of near-equal width and every threshold allocation with
    Σ t_k = r − m + 1 (by dynamic programming over the blocks). Returns None when brute force
    is estimated cheaper (``force`` = False) or no plan stays under ``_MIH_MAX_MASKS`` flips.
    """
    best, best_cost = None, math.inf
    pairs = n * (n - 1) / 2
    for m in range(-(-64 // _MIH_MAX_BITS), 9):
        widths = [64 // m + (1 if k < 64 % m else 0) for k in range(m)]
        need = r - m + 1

        def cost(bits: int, t: int) -> float:
            v = _ball(bits, t)
            if v == 0:
                return 0.0
            if v > _MIH_MAX_MASKS:
                return math.inf
            return _MIH_PROBE_S * n * (v + 1) / 2 + _MIH_CAND_S * pairs * v / 2.0**bits + _MIH_TABLE_S * 2.0**bits

        # dp[s] = (cost, thresholds) over the blocks so far with Σ t = s (s from -m to r)
        dp: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
        for bits in widths:
            nxt: dict[int, tuple[float, list[int]]] = {}
            for s, (c, ts) in dp.items():
                for t in range(-1, min(bits, r) + 1):
                    c2 = c + cost(bits, t)
                    if s + t <= need + m and c2 < nxt.get(s + t, (math.inf,))[0]:
                        nxt[s + t] = (c2, [*ts, t])
            dp = nxt
        if need in dp and dp[need][0] < best_cost:
            best_cost, shift = dp[need][0], 0
            best = []
            for bits, t in zip(widths, dp[need][1]):
                best.append((shift, bits, t))
                shift += bits
    if best is None or (not force and _BRUTE_PAIR_S * pairs <= best_cost):
        return None
    return best


def _masks_by_top_bit(bits: int, t: int) -> list[np.ndarray]:
    """Non-zero flip patterns of weight ≤ t over ``bits`` bits, grouped by their highest bit."""
    out: list[list[int]] = [[] for _ in range(bits)]
    for w in range(1, min(t, bits) + 1):
        for combo in itertools.combinations(range(bits), w):
            out[combo[-1]].append(sum(1 << b for b in combo))
    return [np.array(m, np.int64) for m in out]


def _mih_pairs(u: np.ndarray, r: int, plan: list[tuple[int, int, int]], stats: dict,
               queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MIH over distinct sorted uint64 hashes ``u``: pairs (a < b) of indices into ``u``, distance uint8.

    Each unordered pair is emitted once: inside a block, a pair whose block values differ by the
    flip pattern f is found only from the row whose value has f's highest bit clear (f = 0:
    only from the smaller index); across blocks, only by the first block whose threshold it
    meets.

    With ``queries`` (uint64 (q,)), a cross search instead: every (query index, index into
    ``u``) within ``r`` bits, each once (first block whose threshold it meets); every query
    probes every flip pattern, so it costs about twice a self search of the same size.
    """
    n = len(u)
    cross = queries is not None
    qh = u if queries is None else np.asarray(queries, np.uint64)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
    done: list[tuple[int, int, int]] = []
    for shift, bits, t in plan:
        if t < 0:
            continue
        mask = np.uint64((1 << bits) - 1)
        key = ((u >> np.uint64(shift)) & mask).astype(np.int64)
        qkey = key if not cross else ((qh >> np.uint64(shift)) & mask).astype(np.int64)
        idx = np.int32 if n < 2**31 else np.int64
        order = np.argsort(key, kind="stable").astype(idx)
        counts = np.bincount(key, minlength=1 << bits).astype(idx)
        start = np.zeros(1 << bits, idx)
        np.cumsum(counts[:-1], out=start[1:])
        table = (order, counts, start, counts > 0, u[order])
        by_top = _masks_by_top_bit(bits, t)
        if cross:
            groups = [(-1, np.concatenate([np.zeros(1, np.int64), *by_top]))]
        else:
            groups = [(-1, np.zeros(1, np.int64))] + [(p, m) for p, m in enumerate(by_top) if len(m)]
        chunk = max(256, _MIH_PROBE_ELEMS // max(len(m) for _, m in groups))
        earlier = list(done)

        def work(c0: int, table=table, groups=groups, earlier=earlier, chunk=chunk, qkey=qkey):
            return _mih_chunk(qh, qkey, r, table, groups, earlier, c0, chunk, cross)

        with ThreadPoolExecutor(_threads()) as pool:  # numpy releases the GIL in these kernels
            found.extend(pool.map(work, range(0, len(qh), chunk)))
        done.append((shift, bits, t))
    stats["candidates"] = int(sum(f[3] for f in found))
    found = [f for f in found if len(f[0])]
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    return tuple(np.concatenate([f[k] for f in found]) for k in range(3))


def _threads() -> int:
    """Worker threads for the MIH probes: the CPUs this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _mih_chunk(qh, qk, r, table, groups, earlier, c0: int, chunk: int, cross: bool = False):
    """Probe one block's table with the query rows c0 … c0 + chunk (hashes ``qh``, block values
    ``qk``); returns (a, b, d, candidates). Self search (``qh`` is the table's own ``u``): a < b.
    Cross search: a = query row, b = table row."""
    order, counts, start, occupied, sorted_u = table
    kq, hq = qk[c0 : c0 + chunk], qh[c0 : c0 + chunk]
    out_a, out_b, out_d = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.uint8)]
    n_cand = 0
    for p, masks in groups:
        sel = np.arange(len(kq)) if p < 0 else np.flatnonzero(((kq >> p) & 1) == 0)
        if not len(sel):
            continue
        probe = (kq[sel][None, :] ^ masks[:, None]).ravel()
        hit = np.flatnonzero(occupied.take(probe))
        if not len(hit):
            continue
        bucket = probe[hit]
        qrow = sel[hit % len(sel)]  # chunk row of each probing query
        qhash = hq.take(qrow)
        first = start.take(bucket)
        cnt = counts.take(bucket)
        # the first member of each bucket, then the rest (buckets hold ~1 row on average)
        pos, src = [first], [np.arange(len(first))]
        more = np.flatnonzero(cnt > 1)
        if len(more):
            extra = cnt[more] - 1
            cum = np.cumsum(extra)
            total = int(cum[-1])
            mark = np.zeros(total, np.int64)
            mark[cum[:-1]] = 1
            owner = np.cumsum(mark)  # index into ``more`` of each extra candidate
            pos.append(first[more].take(owner) + 1 + np.arange(total) - (cum - extra).take(owner))
            src.append(more.take(owner))
        pos_all, src_all = np.concatenate(pos), np.concatenate(src)
        n_cand += len(pos_all)
        xor_all = qhash.take(src_all) ^ sorted_u.take(pos_all)
        dist = np.bitwise_count(xor_all)
        ok = np.flatnonzero(dist <= r)
        if not len(ok):
            continue
        x = c0 + qrow.take(src_all[ok])
        y = order.take(pos_all[ok]).astype(np.int64)
        keep = y > x if (p < 0 and not cross) else np.ones(len(ok), bool)
        xor = xor_all[ok]
        for s2, b2, t2 in earlier:  # found by an earlier block already
            keep &= np.bitwise_count((xor >> np.uint64(s2)) & np.uint64((1 << b2) - 1)) > t2
        if cross:
            out_a.append(x[keep])
            out_b.append(y[keep])
        else:
            out_a.append(np.minimum(x, y)[keep])
            out_b.append(np.maximum(x, y)[keep])
        out_d.append(dist[ok][keep])
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_d), n_cand


def _expand_groups(inverse: np.ndarray, n_groups: int, a: np.ndarray, b: np.ndarray, d: np.ndarray):
    """Pairs of distinct values (a, b, d) → pairs of rows, every row of a group with every row of
    the other, plus every pair inside a group (distance 0). Returns (i, j, d int32) sorted by (i, j)."""
    rows = np.argsort(inverse, kind="stable")  # rows grouped by value, ascending row inside a group
    size = np.bincount(inverse, minlength=n_groups)
    gstart = np.zeros(n_groups, np.int64)
    np.cumsum(size[:-1], out=gstart[1:])
    parts_i, parts_j, parts_d = [], [], []
    # inside groups: the row at sorted position k pairs with the later positions of its group
    later = (gstart + size).repeat(size) - np.arange(len(rows)) - 1
    if later.any():
        k = np.repeat(np.arange(len(rows)), later)
        off = np.arange(len(k)) - np.repeat(np.cumsum(later) - later, later)
        parts_i.append(rows[k])
        parts_j.append(rows[k + 1 + off])
        parts_d.append(np.zeros(len(k), np.int32))
    if len(a):
        sa, sb = size[a], size[b]
        per = sa * sb
        k = np.repeat(np.arange(len(a)), per)
        off = np.arange(len(k)) - np.repeat(np.cumsum(per) - per, per)
        ri = rows[gstart[a][k] + off // sb[k]]
        rj = rows[gstart[b][k] + off % sb[k]]
        parts_i.append(np.minimum(ri, rj))
        parts_j.append(np.maximum(ri, rj))
        parts_d.append(d[k].astype(np.int32))
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    i, j, dd = (np.concatenate(x) for x in (parts_i, parts_j, parts_d))
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), dd[order]


def phash_edges(
    hashes: np.ndarray, max_distance: int, mirror: np.ndarray | None = None, method: str = "auto",
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The dedup stage's pHash edges: rows within ``max_distance`` bits, as few edges as keep
    the same connected components, optionally mirror-aware.

    1. **Identical hashes are collapsed first**: each group of equal hashes keeps its smallest
       row as representative and gets k − 1 star edges (representative, member) at distance 0,
       so a placeholder image repeated a million times costs 999,999 edges, not 5·10¹¹.
    2. The distinct hashes are searched exactly (:func:`phash_pairs`'s methods: multi-index
       hashing or faiss brute force, ``method``); a pair of distinct hashes within the radius
       becomes one edge between the two representatives, with its distance.
    3. With ``mirror`` (the pHash of each row's horizontal mirror image,
       :func:`curate.media.phash.phash_with_mirror`): every distinct mirror hash is searched against
       the distinct hashes (the same exact multi-index hashing, as a cross search, or brute
       force). Rows a, b whose hashes are more than the radius apart but where
       min(d(mirror(a), hash(b)), d(hash(a), mirror(b))) ≤ radius get one *mirror* edge between
       their representatives, with that smaller distance (a row matching its own mirror — a
       symmetric picture — is no edge).

    Every pair of rows within the radius (directly, or through a mirror image) ends in one
    connected component, exactly as if every such pair were an edge; only the edge count
    differs. The result does not depend on row order other than through the row indices.

    Args:
        hashes: uint64 (n,) pHashes.
        max_distance: r, bits, 0–64 (inclusive).
        mirror: optional uint64 (n,) pHashes of the mirror images, row-aligned with ``hashes``.
        method: ``"auto"``, ``"mih"`` or ``"brute"`` (as :func:`phash_pairs`; both exact).
        stats: optional dict, filled with ``method``, ``unique`` (distinct hashes),
            ``identical_collapsed`` (rows folded into a representative), for MIH ``blocks``,
            ``thresholds`` and ``candidates``, and with ``mirror``: ``mirror_unique`` (distinct
            mirror hashes), ``mirror_candidates`` (MIH) and ``mirror_edges``.

    Returns:
        (i int64 (m,), j int64 (m,), distance int32 (m,) bits, mirrored bool (m,)), i < j,
        sorted by (i, j), each pair of rows at most once.

    Raises:
        ValueError: ``max_distance`` outside 0–64, an unknown ``method``, or ``mirror`` of
            another length than ``hashes``.
    """
    _check_phash_args(max_distance, method)
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if mirror is not None:
        mirror = np.asarray(mirror, dtype=np.uint64)
        if mirror.shape != hashes.shape:
            raise ValueError(f"mirror has shape {mirror.shape}, hashes {hashes.shape}")
    stats = {} if stats is None else stats
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool))
    if n < 2:
        stats.update(method="none", unique=n)
        return empty
    uniq, inverse = np.unique(hashes, return_inverse=True)
    inverse = inverse.ravel().astype(np.int64)
    u = len(uniq)
    rows = np.argsort(inverse, kind="stable")  # grouped by hash, ascending row inside a group
    gstart = np.r_[0, np.cumsum(np.bincount(inverse, minlength=u))[:-1]]
    rep = rows[gstart]  # smallest row of each distinct hash
    members = np.flatnonzero(rep[inverse] != np.arange(n))
    stats.update(unique=u, identical_collapsed=int(len(members)))
    plan = _mih_plan(u, max_distance)
    brute = method == "brute" or (method == "auto" and plan is None)
    if brute:
        stats["method"] = "brute"
        a, b, d = _phash_pairs_brute(uniq, max_distance) if u > 1 else empty[:3]
    else:
        plan = plan or _mih_plan(u, max_distance, force=True)
        a, b, d = _mih_pairs(uniq, max_distance, plan, stats) if u > 1 else empty[:3]
        stats.update(method="mih", blocks=[p[1] for p in plan], thresholds=[p[2] for p in plan])
    a, b, d = np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(d, np.int32)
    parts = [(rep[inverse[members]], members, np.zeros(len(members), np.int32), np.zeros(len(members), bool)),
             (rep[a], rep[b], d, np.zeros(len(a), bool))]
    if mirror is not None:
        ma, mb, md = _mirror_group_pairs(uniq, inverse, mirror, max_distance, brute, plan, stats)
        direct = np.minimum(a, b) * u + np.maximum(a, b)
        new = ~np.isin(ma * u + mb, direct)  # pairs within the radius directly keep their plain edge
        ma, mb, md = ma[new], mb[new], md[new]
        stats["mirror_edges"] = int(len(ma))
        parts.append((rep[ma], rep[mb], md, np.ones(len(ma), bool)))
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    dd = np.concatenate([p[2] for p in parts])
    mm = np.concatenate([p[3] for p in parts])
    i, j = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((j, i))
    return i[order], j[order], dd[order], mm[order]


def _mirror_group_pairs(uniq, inverse, mirror, r, brute, plan, stats):
    """Pairs (g < h) of distinct-hash groups with min over their rows of d(mirror(a), hash(b))
    ≤ r, g ≠ h, with that distance (int32): the distinct mirror hashes searched against ``uniq``."""
    u = len(uniq)
    mu, minv = np.unique(mirror, return_inverse=True)
    minv = minv.ravel().astype(np.int64)
    stats["mirror_unique"] = int(len(mu))
    # the (mirror value, hash group) combinations present; usually one group per mirror value
    combo = np.unique(minv * u + inverse)
    c_m, c_g = combo // u, combo % u
    if brute:
        q, x, d = _phash_cross_brute(mu, uniq, r)
    else:
        st: dict = {}
        q, x, d = _mih_pairs(uniq, r, plan, st, queries=mu)
        stats["mirror_candidates"] = st["candidates"]
    q, x, d = np.asarray(q, np.int64), np.asarray(x, np.int64), np.asarray(d, np.int32)
    # expand each (mirror value q, group x) to every group g whose rows have mirror value q
    lo = np.searchsorted(c_m, q, side="left")
    cnt = np.searchsorted(c_m, q, side="right") - lo
    k = np.repeat(np.arange(len(q)), cnt)
    pos = np.repeat(lo - np.r_[0, np.cumsum(cnt)[:-1]], cnt) + np.arange(len(k))
    g, h, dist = c_g[pos], x[k], d[k]
    keep = g != h
    g, h, dist = np.minimum(g, h)[keep], np.maximum(g, h)[keep], dist[keep]
    if not len(g):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    key = g * u + h
    order = np.lexsort((dist, key))  # the smallest distance of each pair first
    key, dist = key[order], dist[order]
    first = np.r_[True, key[1:] != key[:-1]]
    key, dist = key[first], dist[first]
    return key // u, key % u, dist


def _phash_cross_brute(q: np.ndarray, u: np.ndarray, r: int):
    """faiss ``IndexBinaryFlat``: every (query row, row of ``u``) within r bits (O(q·u))."""
    import faiss

    codes = _hashes_to_codes(u)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    qc = _hashes_to_codes(q)
    out_q, out_x, out_d = [], [], []
    for start in range(0, len(qc), QUERY_BLOCK):
        lims, vals, labels = index.range_search(qc[start : start + QUERY_BLOCK], r + 1)  # strictly below
        out_q.append(np.repeat(np.arange(start, start + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64)))
        out_x.append(labels.astype(np.int64))
        out_d.append(vals.astype(np.int32))
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(out_q), np.concatenate(out_x), np.concatenate(out_d)
