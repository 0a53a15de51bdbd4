"""Dedup search at scale (issue #5): multi-index hashing gives exactly brute force's pairs (K12),
the IVF embedding path keeps recall, identical vectors are collapsed before k-means, and
results do not depend on row order."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from curate.stages.dedup.clusters import components
from curate.stages.dedup.phash_search import _mih_plan, phash_pairs
from curate.stages.dedup.vector_search import cosine_pairs, embedding_edges


def _planted_hashes(n: int, seed: int, skewed: bool = False) -> np.ndarray:
    """Random uint64 hashes, every 4th row a copy of the previous one with 0–6 bits flipped,
    plus a group of 5 identical hashes; ``skewed``: only the top 24 bits vary (big MIH buckets)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    if skewed:
        h = (h & np.uint64(0xFFFFFF0000000000)) | np.uint64(0x5A5A5A5A5A)
    for k in range(0, n - 1, 4):
        flips = rng.choice(64, rng.integers(0, 7), replace=False)
        h[k + 1] = h[k] ^ np.uint64(sum(1 << int(f) for f in flips))
    h[n // 2 : n // 2 + 5] = h[7]
    return h


def _naive(h: np.ndarray, r: int) -> set[tuple[int, int, int]]:
    """O(n²) popcount over all pairs, independent of faiss and of curate.stages.dedup.phash_search."""
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= r, 1))
    return set(zip(i.tolist(), j.tolist(), d[i, j].tolist()))


@pytest.mark.parametrize("r", [0, 1, 3, 6, 10, 16, 33, 64])
@pytest.mark.parametrize("skewed", [False, True])
def test_mih_pairs_identical_to_brute_force_k12(r, skewed):
    n = (2000 if r <= 6 else 1000 if r <= 16 else 400) // (2 if skewed else 1)
    h = _planted_hashes(n, seed=r, skewed=skewed)
    stats: dict = {}
    mi, mj, md = phash_pairs(h, r, method="mih", stats=stats)
    bi, bj, bd = phash_pairs(h, r, method="brute")
    assert stats["method"] == "mih" and sum(stats["blocks"]) == 64
    assert sum(stats["thresholds"]) == r - len(stats["blocks"]) + 1  # generalised pigeonhole
    assert mi.dtype == bi.dtype == np.int64 and md.dtype == bd.dtype == np.int32
    assert np.array_equal(mi, bi) and np.array_equal(mj, bj) and np.array_equal(md, bd)
    assert set(zip(mi.tolist(), mj.tolist(), md.tolist())) == _naive(h, r)
    assert (mi < mj).all() and np.all(np.diff(mi * n + mj) > 0)  # i < j, sorted by (i, j)
    if r == 0:
        assert (md == 0).all() and len(mi) >= 10  # the identical group of 5 alone gives 10 pairs
    if r == 64:
        assert len(mi) == n * (n - 1) // 2
    if r >= 6 and not skewed:
        assert len(mi) >= n // 4  # every planted pair (≤ 6 bits) is there


def test_mih_radius_is_inclusive_at_every_distance():
    base = np.uint64(0x0123456789ABCDEF)
    h = np.array([base] + [base ^ np.uint64((1 << k) - 1) for k in range(1, 65)], np.uint64)  # distances 1…64 to row 0
    for r in (0, 5, 10, 63, 64):
        i, j, d = phash_pairs(h, r, method="mih")
        from_zero = set(j[i == 0].tolist())
        assert from_zero == set(range(1, r + 1)), r
        assert (d <= r).all()


def test_phash_pairs_do_not_depend_on_input_order():
    h = _planted_hashes(5000, seed=3)
    i, j, d = phash_pairs(h, 10, method="mih")
    perm = np.random.default_rng(1).permutation(len(h))
    pi, pj, pd = phash_pairs(h[perm], 10, method="mih")
    a, b = perm[pi], perm[pj]  # back to the original rows
    got = set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist(), pd.tolist()))
    assert got == set(zip(i.tolist(), j.tolist(), d.tolist())) and len(got) >= 1250


def test_mih_plan_chooses_by_cost_and_stays_exact():
    assert _mih_plan(100, 10) is None  # tiny n: brute force is cheaper
    plan = _mih_plan(1_000_000, 10)
    assert plan is not None and sum(b for _, b, _ in plan) == 64 and max(b for _, b, _ in plan) <= 22
    assert sum(t for _, _, t in plan) == 10 - len(plan) + 1
    assert [s for s, _, _ in plan] == list(np.cumsum([0] + [b for _, b, _ in plan[:-1]]))  # disjoint, contiguous
    assert _mih_plan(1_000_000, 64) is None  # every pair is an answer: brute force
    with pytest.raises(ValueError, match="0..64"):
        phash_pairs(np.zeros(3, np.uint64), 65)
    with pytest.raises(ValueError, match="method"):
        phash_pairs(np.zeros(3, np.uint64), 3, method="lsh")


def _planted_vectors(n: int, d: int, seed: int, frac: float = 0.2):
    """float16 unit vectors; a fraction are rotations of another row by 0–0.3 rad (cosine ≥ 0.955)
    or 0.55–0.8 rad (cosine ≤ 0.853): nothing lies near a 0.92 threshold."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = int(n * frac)
    src, dst = rng.choice(n, m, replace=False), rng.choice(n, m, replace=False)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    noise = rng.standard_normal((len(src), d)).astype(np.float32)
    noise -= (noise * x[src]).sum(1, keepdims=True) * x[src]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    ang = np.where(rng.random(len(src)) < 0.7, rng.uniform(0, 0.3, len(src)), rng.uniform(0.55, 0.8, len(src)))
    x[dst] = np.cos(ang)[:, None] * x[src] + np.sin(ang)[:, None] * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)


def _pairs(i, j):
    return set(zip(i.tolist(), j.tolist()))


def test_ivf_path_recall_against_exact_search():
    x = _planted_vectors(8000, 64, seed=0)
    ei, ej, _ = cosine_pairs(x, 0.92)
    stats: dict = {}
    i, j, c = embedding_edges(x, 0.92, ivf_min_n=1000, stats=stats)  # auto → IVF above 1,000 vectors
    assert stats["method"] == "ivf" and stats["nlist"] >= 20 and stats["nprobe"] == 8
    exact, found = _pairs(ei, ej), _pairs(i, j)
    assert len(exact) >= 500
    assert found <= exact and (c >= 0.92).all()  # every IVF edge is a true pair
    recall = len(found & exact) / len(exact)
    assert recall >= 0.95
    assert stats["recall_pairs"] > 0 and stats["recall"] >= 0.95 and stats["recall_sample"] == 1000
    # the exact path returns every pair, as cosine_pairs does
    xi, xj, xc = embedding_edges(x, 0.92, method="exact", stats=(s2 := {}))
    assert s2["method"] == "exact" and np.array_equal(xi, ei) and np.array_equal(xj, ej)
    # one probe per vector finds fewer pairs: recall is measured, not assumed
    s3: dict = {}
    i1, j1, _ = embedding_edges(x, 0.92, method="ivf", nlist=200, nprobe=1, stats=s3)
    assert len(_pairs(i1, j1)) < len(found) and s3["recall"] < stats["recall"]


def test_placeholder_vectors_collapse_before_kmeans():
    """95 % of rows are one placeholder image's vector: they become star edges to the first of
    them and are searched once, so k-means sees the distinct vectors."""
    rng = np.random.default_rng(5)
    distinct = _planted_vectors(1000, 64, seed=1)
    n = 20000
    x = np.empty((n, 64), np.float16)
    rows = rng.permutation(n)
    ph_rows, other = np.sort(rows[:19000]), rows[19000:]
    x[other] = distinct
    x[ph_rows] = distinct[0]  # the placeholder is also near-duplicated among the distinct rows
    stats: dict = {}
    i, j, c = embedding_edges(x, 0.92, method="ivf", stats=stats)
    assert stats["rows"] == n and stats["identical_collapsed"] == 19000 and stats["unique"] == 1000
    assert stats["nlist"] >= 5 and stats["recall"] >= 0.95
    first = min(ph_rows[0], other[0])
    star = (i == first) & (c == 1.0) & np.isin(j, np.r_[ph_rows, other[0]])
    assert star.sum() == 19000  # one edge per placeholder copy, none among the copies
    assert len(i) < 19000 + 2000
    # the same clusters as exact search over every row
    ei, ej, _ = cosine_pairs(x[np.r_[other]], 0.92)
    exact_nodes = set(other[np.r_[ei, ej]].tolist()) | set(ph_rows.tolist())
    nodes, _ = components(np.zeros(0, np.int64), i, j)
    assert len(exact_nodes - set(nodes.tolist())) <= 0.05 * len(exact_nodes)


def test_embedding_edges_do_not_depend_on_input_order():
    x = _planted_vectors(6000, 64, seed=2)
    x[100:110] = x[5]  # an identical group: its representative is the smallest row either way
    perm = np.random.default_rng(3).permutation(len(x))
    for kw in ({"method": "ivf"}, {"method": "exact"}):
        s1: dict = {}
        s2: dict = {}
        i, j, _ = embedding_edges(x, 0.92, stats=s1, **kw)
        pi, pj, _ = embedding_edges(x[perm], 0.92, stats=s2, **kw)
        s1.pop("recall_seconds", None)
        s2.pop("recall_seconds", None)
        assert s1 == s2
        n1, c1 = components(np.zeros(0, np.int64), i, j)
        n2, c2 = components(np.zeros(0, np.int64), perm[pi], perm[pj])
        assert np.array_equal(n1, n2) and np.array_equal(c1, c2)  # same clusters (ids = smallest member)
        # the same pairs, once the identical group is named by one member (its star edges aside)
        group = set(range(100, 110)) | {5}

        def canon(a, b):
            return {(min(p), max(p)) for p in zip([5 if v in group else v for v in a.tolist()],
                                                  [5 if v in group else v for v in b.tolist()]) if p[0] != p[1]}

        assert canon(i, j) == canon(perm[pi], perm[pj]) and len(canon(i, j)) >= 500


def test_embedding_edges_check_normalised_k13_on_both_paths():
    x = _planted_vectors(3000, 32, seed=4).astype(np.float32)
    x[17] *= 3.0
    for method in ("exact", "ivf"):
        with pytest.raises(ValueError, match="not L2-normalised"):
            embedding_edges(x, 0.9, method=method)
    with pytest.raises(ValueError, match="method"):
        embedding_edges(x, 0.9, method="hnsw")


@pytest.mark.slow
def test_dedup_scale_benchmark_runs_small(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dedup_scale.py"), "--phash-n", "20000", "--phash-brute",
         "--imagededup-n", "400", "--embed-n", "4000", "--dim", "32", "--ivf-min-n", "1000"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    ph, im, em, pe = res["phash"], res["imagededup"], res["embed"], res["phash_edges"]
    assert ph["identical_to_brute"] is True and ph["planted_found"] == ph["planted_pairs"] == 2000
    # the dedup stage's search: 1,000 placeholder rows are 999 star edges in one cluster, and
    # every planted flipped copy (mirror hash 0–6 bits from another row's hash) joins that row
    assert pe["placeholder_rows"] == 1000 and pe["placeholder_in_one_cluster"] is True
    assert pe["search"]["identical_collapsed"] >= 999 and pe["edges"] < ph["pairs"] + 200 + 1000
    assert pe["planted_mirror_found"] == pe["planted_mirror_pairs"] == 200 and pe["mirror_edges"] >= 190
    assert im["auto"]["identical"] is True and im["mih"]["identical"] is True and im["imagededup_pairs"] >= 40
    assert em["search"]["method"] == "ivf" and em["search"]["identical_collapsed"] == 40
    assert em["planted_in_one_component"] >= 0.95 * em["planted_pairs_above_threshold"] > 0


def test_dedup_stage_reports_search_and_ivf_agrees_with_exact(tmp_path):
    """Through the stage: imported vectors (500 copies of one placeholder among 3,000 rows) give
    the same clusters with the IVF path as with exact search, and the counters say what ran."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate import api
    from curate.config import RunConfig

    n = 3000
    x = _planted_vectors(n, 32, seed=6)
    x[1000:1500] = x[999]  # placeholder
    urls = [f"https://img.example/{i}.jpg" for i in range(n)]
    (tmp_path / "meta").mkdir()
    (tmp_path / "emb").mkdir()
    pq.write_table(pa.table({"URL": urls, "TEXT": [f"c {i}" for i in range(n)]}), tmp_path / "meta" / "part-0.parquet")
    np.save(tmp_path / "emb" / "img_emb_0000.npy", x)
    pq.write_table(pa.table({"url": urls, "caption": ["x"] * n}), tmp_path / "emb" / "metadata_0000.parquet")
    clusters = {}
    for method in ("exact", "ivf"):
        cfg = RunConfig.model_validate({
            "sources": [{"name": "l", "metadata": "meta/*.parquet"}],
            "embed": {"model": "precomputed:t", "precomputed": [{"vectors": "emb/img_emb_*.npy",
                                                                 "metadata": "emb/metadata_*.parquet"}]},
            "dedup": {"embedding_search": method, "embedding_recall_sample": 500},
        })
        cfg.base_dir = str(tmp_path)
        ws = tmp_path / f"ws_{method}"
        for st in ("ingest", "embed"):
            api.run_one(ws, st, cfg)
        c = api.run_one(ws, "dedup", cfg)["counters"]
        es = c["embedding_search"]
        assert es["method"] == method and es["rows"] == n and es["identical_collapsed"] == 500
        assert "recall_seconds" not in es  # counters hold no timings
        assert c["phash_search"] == {"method": "none", "unique": 0}  # no images, nothing hashed
        if method == "ivf":
            assert es["recall"] >= 0.95 and es["nprobe"] == 8 and es["nlist"] >= 10
        con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
        url_of = dict(con.execute("SELECT sample_id, url FROM samples").fetchall())
        rows = con.execute("SELECT sample_id, cluster_id FROM clusters").fetchall()
        con.close()
        groups: dict[int, set[str]] = {}
        for sid, cid in rows:
            groups.setdefault(cid, set()).add(url_of[sid])
        clusters[method] = {frozenset(g) for g in groups.values()}
        assert max(len(g) for g in clusters[method]) >= 501
    same = clusters["exact"] & clusters["ivf"]
    assert len(same) >= 0.95 * len(clusters["exact"])


def test_identical_groups_survive_content_hash_collisions(monkeypatch):
    """Rows are grouped by content hash but compared byte for byte: with every hash forced equal,
    only truly identical rows are merged."""
    import curate.stages.dedup.vector_search as vs

    x = _planted_vectors(300, 16, seed=7)
    x[[10, 20, 30]] = x[5]
    x[[40, 50]] = x[45]
    want = embedding_edges(x, 0.92, method="exact")
    monkeypatch.setattr(vs, "row_hashes", lambda v: np.zeros(len(v), np.uint64))
    stats: dict = {}
    got = embedding_edges(x, 0.92, method="exact", stats=stats)
    assert stats["identical_collapsed"] == 5 and stats["unique"] == 295
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
    assert {(5, 10), (5, 20), (5, 30), (40, 45), (40, 50)} <= set(zip(got[0].tolist(), got[1].tolist()))
