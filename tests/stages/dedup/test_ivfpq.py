"""The IVF-PQ path for dedup at cluster scale (curate/ivfpq.py, issue #8): every edge is exact,
recall against exact search is high and measured, the result does not depend on how the
vectors are stored or sharded, and the dedup stage's ``embedding_search: ivfpq`` gives the
exact search's clusters on the bundled sample."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from curate import api
from curate.stages.dedup import ivfpq, shuffle
from curate.stages.dedup.sources import ArraySource, PartsSource
from tests.conftest import exact, query
from tests.conftest import planted as planted_vectors


@pytest.fixture(scope="module")
def planted():
    ids, vecs = planted_vectors()
    return ids, vecs, exact(ids, vecs, 0.93)


def test_every_edge_is_exact_and_recall_is_measured(planted):
    ids, vecs, exact = planted
    res = ivfpq.pairs(ArraySource(ids, vecs, shard_rows=9000), 0.93, ivfpq.Params(nlist=128, nprobe=8),
                      recall_sample=3000)
    got = set(zip(res.a.tolist(), res.b.tolist()))
    assert len(got) == len(res.a) and (res.a < res.b).all()
    assert got <= exact  # verified by the exact cosine: never a false edge
    assert len(got & exact) / len(exact) >= 0.97
    assert (res.cosine >= 0.93).all()
    st = res.stats
    assert st["nlist"] == 128 and st["m"] == 4 and st["nbits"] == 8 and 0.01 < st["margin"] < 0.5
    assert st["recall_pairs"] > 100 and st["recall"] >= 0.95  # measured on a sample, against exact search
    assert st["candidates"] >= len(got) and st["index_bytes"] == len(ids) * (4 + 8)


def test_storage_and_sharding_do_not_change_the_pairs(planted, tmp_path):
    from curate.store.embeddings import write_part

    ids, vecs, _ = planted
    p = ivfpq.Params(nlist=128, nprobe=8)
    base = ivfpq.pairs(ArraySource(ids, vecs, shard_rows=10_000), 0.93, p, recall_sample=0)
    sharded = ivfpq.pairs(ArraySource(ids, vecs, shard_rows=10_000), 0.93,
                          ivfpq.Params(nlist=128, nprobe=8, index_shards=3), recall_sample=0)
    (tmp_path / "parts").mkdir()
    for folder in (tmp_path / "parts", "memory://ivfpq-test/parts"):  # a local folder and an object store
        for k, s in enumerate(range(0, len(ids), 10_000)):
            write_part(folder, k, ids[s:s + 10_000], vecs[s:s + 10_000])
        parts = ivfpq.pairs(PartsSource(folder), 0.93, p, recall_sample=0)
        assert np.array_equal(parts.a, base.a) and np.array_equal(parts.b, base.b)
    assert np.array_equal(sharded.a, base.a) and np.array_equal(sharded.b, base.b)
    assert sharded.stats["index_shards"] == 3


def test_local_search_spills_candidates_to_disk_between_the_phases(planted, tmp_path, monkeypatch):
    """engine="local": phase 1's candidates wait in files under spill_dir (not all in memory),
    phase 2 reads them back one group at a time, and the folder is removed afterwards."""
    ids, vecs, _ = planted
    p = ivfpq.Params(nlist=128, nprobe=8)
    spill = tmp_path / "spill"
    spill.mkdir()
    seen = []
    real = shuffle.verify_group

    def watch(source, keys, lo, min_cosine, *chunks):
        files = sorted(q.name for q in spill.rglob("*.npy"))
        seen.append((lo, len(chunks), files))
        return real(source, keys, lo, min_cosine, *chunks)

    monkeypatch.setattr(shuffle, "verify_group", watch)
    got = ivfpq.pairs(ArraySource(ids, vecs, shard_rows=10_000), 0.93, p, recall_sample=0, spill_dir=spill)
    monkeypatch.setattr(shuffle, "verify_group", real)
    ref = ivfpq.pairs(ArraySource(ids, vecs, shard_rows=10_000), 0.93, p, recall_sample=0)
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.b, ref.b) and np.array_equal(got.cosine, ref.cosine)
    assert len(seen) == 4  # one verification group per shard (4 shards of 10,000 rows)
    for lo, n_chunks, files in seen:  # every group's chunks came from the spill files
        assert n_chunks >= 1 and sum(f.startswith(f"g{lo:05d}-") for f in files) == 3 * n_chunks
    assert not any(spill.iterdir())  # removed once the search returns


def test_model_of_two_billion_vectors():
    w = ivfpq.model(2e9, 768, nlist=262_144, nprobe=16, m=96)
    assert w["codes_bytes"] == 2e9 * 104  # 96 code bytes + an 8-byte id per vector
    assert w["quantizer_bytes"] == 262_144 * 768 * 4
    assert w["scan_codes"] == pytest.approx(2e9 * 16 * 2e9 / 262_144)
    assert w["assign_madds"] == pytest.approx(2e9 * 262_144 * 768)
    shuffled = ivfpq.model(2e9, 768, nlist=131_072, nprobe=16, m=96, candidates_per_row=3.87)["shuffle_bytes"]
    assert shuffled == pytest.approx(2e9 * 3.87 * (768 * 2 + 16)) and 1.1e13 < shuffled < 1.3e13  # ≈ 12 TB


def test_dedup_with_ivfpq_gives_the_exact_clusters_on_the_sample(sample_ws, tmp_path, monkeypatch):
    """The stage's ivfpq path reads the embedding parts part by part (load_all, which loads
    every vector, must not be called) and gives the exact search's edges and clusters."""
    from curate.stages.dedup import stage as dedup

    local, _ = sample_ws
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("catalog.duckdb", "config.json"):
        shutil.copy(local / name, ws / name)
    shutil.copytree(local / "embeddings", ws / "embeddings")
    # the exact search on the same catalog, containment off (ivfpq skips it: it never loads the vectors)
    exact = tmp_path / "exact"
    shutil.copytree(ws, exact)
    api.run_one(exact, "dedup", api.with_overrides(api.workspace_config(exact), "dedup", {"containment": False}),
                force=True)
    local = exact
    cfg = api.with_overrides(api.workspace_config(ws), "dedup", {"embedding_search": "ivfpq"})
    monkeypatch.setattr(dedup, "load_all", lambda *a, **k: pytest.fail("load_all on the ivfpq path"))
    out = api.run_one(ws, "dedup", cfg, force=True)["counters"]
    assert out["embedding_search"]["method"] == "ivfpq" and out["embedding_search"]["recall"] == 1.0
    assert out["embedding_search"]["identical_collapsed"] > 0  # identical vectors: star edges, searched once

    sql = "SELECT sample_id, cluster_id, cluster_size FROM clusters ORDER BY sample_id"
    assert query(ws, sql) == query(local, sql)
    edges = "SELECT a, b, signal FROM dup_edges ORDER BY ALL"
    assert query(ws, edges) == query(local, edges)
    dist = "SELECT a, b, distance FROM dup_edges WHERE signal = 'embedding' ORDER BY a, b"
    assert all(abs(x[2] - y[2]) < 1e-6 for x, y in zip(query(ws, dist), query(local, dist)))  # float32 cosines
