"""Precomputed embeddings (LAION img_emb_*.npy + metadata_*.parquet, DataComp .npz) are joined
to samples by key, never by row position (case K14)."""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import api
from curate.config import RunConfig
from curate.store.embeddings import load_all
from curate.errors import InputError


def _cfg(tmp_path, emb, **dedup) -> RunConfig:
    cfg = RunConfig.model_validate({
        "sources": [{"name": "l", "metadata": "meta/*.parquet"}],
        "embed": {"model": "precomputed:laion-test", "precomputed": [emb]},
        "dedup": {"embedding_min_cosine": 0.99, **dedup},
    })
    cfg.base_dir = str(tmp_path)
    return cfg


def _setup(tmp_path, n=12, d=8, seed=0):
    """Catalog metadata (in order) + one embeddings pair whose rows are a permutation of it."""
    rng = np.random.default_rng(seed)
    urls = [f"https://img.example/{i}.jpg" for i in range(n)]
    (tmp_path / "meta").mkdir()
    pq.write_table(pa.table({"URL": urls, "TEXT": [f"caption {i}" for i in range(n)]}), tmp_path / "meta" / "part-0.parquet")
    truth = rng.normal(size=(n, d)).astype(np.float32)
    truth[3] = truth[7] * 2.0  # a duplicate pair (cosine 1 after normalisation)
    perm = rng.permutation(n)
    (tmp_path / "emb").mkdir()
    np.save(tmp_path / "emb" / "img_emb_0000.npy", truth[perm].astype(np.float16))
    pq.write_table(pa.table({"url": [urls[i] for i in perm], "caption": ["x"] * n}),
                   tmp_path / "emb" / "metadata_0000.parquet")
    return urls, truth


def _ids_by_url(ws):
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        return dict(con.execute("SELECT url, sample_id FROM samples").fetchall())
    finally:
        con.close()


def test_permuted_pair_is_joined_by_key_and_dedup_uses_it(tmp_path):
    urls, truth = _setup(tmp_path)
    cfg = _cfg(tmp_path, {"vectors": "emb/img_emb_*.npy", "metadata": "emb/metadata_*.parquet"})
    ws = tmp_path / "ws"
    for st in ("ingest", "embed", "dedup"):
        res = api.run_one(ws, st, cfg)
    sid = _ids_by_url(ws)
    ids, vecs = load_all(ws / "embeddings" / "precomputed_laion-test")
    want = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    for i, u in enumerate(urls):
        row = int(np.searchsorted(ids, sid[u]))
        assert np.allclose(vecs[row], want[i], atol=2e-3), u  # the vector of its own URL, not of its row
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    edges = con.execute("SELECT a, b, signal FROM dup_edges").fetchall()
    assert edges == [(sid[urls[3]], sid[urls[7]], "embedding")]
    assert res["counters"]  # dedup ran on imported vectors without any image


def test_rerun_skips_imported_pairs(tmp_path):
    _setup(tmp_path)
    cfg = _cfg(tmp_path, {"vectors": "emb/img_emb_*.npy", "metadata": "emb/metadata_*.parquet"})
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", cfg)
    first = api.run_one(ws, "embed", cfg)["counters"]
    again = api.run_one(ws, "embed", cfg, force=True)["counters"]
    assert (first["pairs"], first["imported"]) == (1, 12)
    assert (again["pairs"], again["pairs_skipped"], again["total_embedded"], again["parts"]) == (0, 1, 12, 1)


def test_row_count_mismatch_is_a_hard_error(tmp_path):
    _setup(tmp_path)
    np.save(tmp_path / "emb" / "img_emb_0000.npy", np.ones((11, 8), np.float16))
    cfg = _cfg(tmp_path, {"vectors": "emb/img_emb_*.npy", "metadata": "emb/metadata_*.parquet"})
    api.run_one(tmp_path / "ws", "ingest", cfg)
    with pytest.raises(InputError, match="holds 11 vectors but metadata_0000.parquet has 12 rows"):
        api.run_one(tmp_path / "ws", "embed", cfg)


def test_unknown_keys_and_unpaired_files_are_hard_errors(tmp_path):
    _setup(tmp_path)
    pq.write_table(pa.table({"url": [f"https://other.example/{i}" for i in range(12)]}),
                   tmp_path / "emb" / "metadata_0000.parquet")
    cfg = _cfg(tmp_path, {"vectors": "emb/img_emb_*.npy", "metadata": "emb/metadata_*.parquet"})
    api.run_one(tmp_path / "ws", "ingest", cfg)
    with pytest.raises(InputError, match="12 of 12 keys .* match no sample's url"):
        api.run_one(tmp_path / "ws", "embed", cfg)
    np.save(tmp_path / "emb" / "img_emb_0001.npy", np.ones((2, 8), np.float16))
    cfg2 = _cfg(tmp_path, {"vectors": "emb/img_emb_*.npy", "metadata": "emb/metadata_*.parquet", "allow_unmatched": True})
    with pytest.raises(InputError, match="img_emb_0001.npy has no metadata partner"):
        api.run_one(tmp_path / "ws", "embed", cfg2)


def test_datacomp_npz_beside_its_parquet_joined_on_uid_and_zero_vector_rejected(tmp_path):
    urls, truth = _setup(tmp_path)
    uids = [f"{i:032x}" for i in range(12)]
    # catalog keyed by uid (DataComp metadata), npz rows in a different order than the catalog
    pq.write_table(pa.table({"uid": uids, "url": urls, "text": ["t"] * 12}), tmp_path / "meta" / "part-0.parquet")
    perm = np.arange(12)[::-1]
    vec = truth[perm].copy()
    vec[0] = 0.0  # K13: the vector of uids[11] is zero
    (tmp_path / "dc").mkdir()
    np.savez(tmp_path / "dc" / "0000.npz", l14_img=vec.astype(np.float16), b32_img=np.ones((12, 4), np.float16))
    pq.write_table(pa.table({"uid": [uids[i] for i in perm]}), tmp_path / "dc" / "0000.parquet")
    cfg = _cfg(tmp_path, {"vectors": "dc/*.npz", "key": "uid", "on": "key", "npz_array": "l14_img"})
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", cfg)
    c = api.run_one(ws, "embed", cfg)["counters"]
    assert (c["imported"], c["bad_vector"], c["dim"]) == (11, 1, 8)
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    bad = con.execute("SELECT s.key FROM embeddings e JOIN samples s USING (sample_id) WHERE e.status = 'zero_vector'").fetchall()
    assert bad == [(uids[11],)]
