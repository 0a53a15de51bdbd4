"""faiss pHash and cosine search against brute force; components; keeper determinism."""
from __future__ import annotations

import numpy as np
import pytest

from curate.store.embeddings import load_all, write_part
from curate.stages.dedup.clusters import components
from curate.stages.dedup.phash_search import phash_pairs
from curate.stages.dedup.vector_search import cosine_pairs
from curate.models.feeder import normalise


def test_phash_pairs_identical_to_brute_force():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, 400).astype(np.uint64)
    # plant near-duplicates: flip up to 6 bits
    for k in range(0, 100, 2):
        flips = rng.choice(64, rng.integers(0, 7), replace=False)
        h[k + 1] = h[k] ^ np.uint64(sum(1 << int(f) for f in flips))
    i, j, d = phash_pairs(h, 6)
    brute = {(a, b, bin(int(h[a]) ^ int(h[b])).count("1")) for a in range(len(h)) for b in range(a + 1, len(h))
             if bin(int(h[a]) ^ int(h[b])).count("1") <= 6}
    assert set(zip(i.tolist(), j.tolist(), d.tolist())) == brute
    assert len(brute) >= 50


def test_phash_radius_is_inclusive():
    h = np.array([0, 0b111], dtype=np.uint64)
    assert len(phash_pairs(h, 3)[0]) == 1 and len(phash_pairs(h, 2)[0]) == 0


def test_cosine_pairs_need_normalised_vectors_k13():
    raw = np.array([[1, 0, 0, 0], [10, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 0, 0]], np.float32)
    with pytest.raises(ValueError, match="not L2-normalised"):
        cosine_pairs(raw, 0.9)
    v, ok = normalise(raw)
    assert ok.tolist() == [True, True, True, False]  # the zero vector is excluded
    i, j, s = cosine_pairs(v[ok], 0.6)
    got = {(int(a), int(b)): round(float(c), 4) for a, b, c in zip(i, j, s)}
    assert got == {(0, 1): 1.0, (0, 2): 0.6, (1, 2): 0.6}
    assert normalise(np.array([[np.nan, 1, 0, 0]], np.float32))[1].tolist() == [False]


def test_components_cluster_id_is_smallest_member_whatever_edge_order():
    a = np.array([30, 10, 50], np.int64)
    b = np.array([20, 20, 60], np.int64)
    n1, c1 = components(np.zeros(0, np.int64), a, b)
    n2, c2 = components(np.zeros(0, np.int64), a[::-1].copy(), b[::-1].copy())
    assert dict(zip(n1.tolist(), c1.tolist())) == dict(zip(n2.tolist(), c2.tolist())) == {
        10: 10, 20: 10, 30: 10, 50: 50, 60: 50}


def test_embedding_parts_join_on_ids_not_row_order(tmp_path):
    v, _ = normalise(np.eye(3, 4, dtype=np.float32))
    write_part(tmp_path, 0, np.array([7, 3], np.int64), v[:2])
    write_part(tmp_path, 1, np.array([5], np.int64), v[2:])
    ids, vecs = load_all(tmp_path)
    assert ids.tolist() == [3, 5, 7]
    assert vecs.flags.c_contiguous and vecs.dtype == np.float32
    assert vecs[0].argmax() == 1 and vecs[2].argmax() == 0


def _comps(i, j):
    nodes, cids = components(np.zeros(0, np.int64), np.asarray(i, np.int64), np.asarray(j, np.int64))
    return dict(zip(nodes.tolist(), cids.tolist()))


def test_identical_phash_group_gives_star_edges_and_the_same_clusters():
    """k identical hashes: k − 1 star edges to the smallest row (phash_pairs gives all k(k−1)/2
    pairs), the same components, and cross-group pairs once between representatives."""
    from curate.stages.dedup.phash_search import phash_edges

    rng = np.random.default_rng(4)
    h = rng.integers(0, 2**64 - 1, 300, dtype=np.uint64, endpoint=True)
    h[[40, 7, 250, 99, 120]] = h[7]  # a group of 5 (rows 7, 40, 99, 120, 250)
    h[60:90] = h[3] ^ np.uint64(0b111)  # 30 identical rows, 3 bits from row 3
    for method in ("mih", "brute"):
        st: dict = {}
        i, j, d, m = phash_edges(h, 6, method=method, stats=st)
        pi, pj, pd = phash_pairs(h, 6, method=method)
        assert _comps(i, j) == _comps(pi, pj)
        assert len(pi) >= 10 + 435 + 30 and len(i) == 4 + 29 + 1 + (len(pi) - 10 - 435 - 30)
        edges = dict(zip(zip(i.tolist(), j.tolist()), d.tolist()))
        assert {(7, 40), (7, 99), (7, 120), (7, 250)} <= set(edges) and edges[(7, 40)] == 0
        assert edges[(3, 60)] == 3 and (3, 61) not in edges  # one edge per pair of groups
        assert not m.any() and st["identical_collapsed"] == 4 + 29 and (i < j).all()
        assert np.all(np.diff(i * 300 + j) > 0)


def test_placeholder_repeated_many_times_costs_linear_edges():
    from curate.stages.dedup.phash_search import phash_edges

    n = 200_000
    h = np.full(n, 0x8F3A5C7E1B2D4F60, np.uint64)  # one placeholder image
    h[::1000] = np.random.default_rng(0).integers(0, 2**63, n // 1000, dtype=np.int64).astype(np.uint64)
    i, j, d, m = phash_edges(h, 10, mirror=h)  # brute force over all pairs: 2·10¹⁰ pairs
    assert len(i) < n and (d[:5] == 0).all()
    lab = _comps(i, j)
    assert len({lab[r] for r in range(n) if r % 1000}) == 1  # every copy in one cluster


def test_mirror_edges_join_flipped_copies_only_when_direct_hashes_do_not():
    from curate.stages.dedup.phash_search import phash_edges

    rng = np.random.default_rng(5)
    n = 2000
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    m = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    h[11] = m[10] ^ np.uint64(0b1011)  # row 11 is a flipped copy of row 10: its hash = 10's mirror hash ± 3 bits
    m[11] = h[10]
    h[21] = h[20] ^ np.uint64(1)  # a plain near-duplicate whose mirror also matches: one plain edge
    m[21] = m[20]
    m[30] = h[30]  # a symmetric picture: its own mirror is no edge
    m[41] = m[40] = h[42] ^ np.uint64(0b11)  # identical mirror hashes from two different rows
    naive_d = np.bitwise_count(h[:, None] ^ h[None, :])
    naive_m = np.bitwise_count(m[:, None] ^ h[None, :])
    naive_m = np.minimum(naive_m, naive_m.T)
    for method in ("mih", "brute"):
        st: dict = {}
        i, j, d, mir = phash_edges(h, 8, mirror=m, method=method, stats=st)
        e = {(a, b): (dd, f) for a, b, dd, f in zip(i.tolist(), j.tolist(), d.tolist(), mir.tolist())}
        assert e[(10, 11)] == (0, True)  # min(d(mirror(10), 11), d(10, mirror(11))) = 0
        assert e[(20, 21)] == (1, False) and (30, 30) not in e
        assert e[(40, 42)] == (2, True) and e[(41, 42)] == (2, True)
        ii, jj = np.nonzero(np.triu((naive_d <= 8) | (naive_m <= 8), 1))
        want = {(a, b): (min(naive_d[a, b], naive_m[a, b]), bool(naive_d[a, b] > 8)) for a, b in zip(ii.tolist(), jj.tolist())}
        assert e == want  # no identical hashes here: every pair within the radius is one edge
        assert st["mirror_edges"] == sum(f for _, f in want.values())
    with pytest.raises(ValueError, match="mirror"):
        phash_edges(h, 8, mirror=m[:5])
