"""Shared fixtures: the bundled real sample run once per test session."""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample"
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("CURATE_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# torch's OpenMP threads busy-wait by default; on 2 shared cores that starves the other test
# processes (DataLoader workers, subprocess drivers) and slows small models 15-100×
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def sample_ws(tmp_path_factory):
    """Workspace after `curate run examples/sample/curate.yaml` (the README's demo)."""
    from curate import api

    ws = tmp_path_factory.mktemp("sample") / "ws"
    result = api.run(ws, SAMPLE / "curate.yaml")
    return ws, result


def close_f32(a: float, b: float, ulps: int = 4) -> bool:
    """``a`` and ``b`` equal at float32 precision: for values computed or stored as float32 and
    recomputed here in float64 (a float64 tolerance would make such a test flaky)."""
    eps = float(np.finfo(np.float32).eps)
    return math.isclose(a, b, rel_tol=ulps * eps, abs_tol=ulps * eps)


def write_tar(path, members) -> None:
    """A tar file at ``path`` holding ``members``: (member name, bytes) pairs, in that order
    (repeated names kept, as webdataset shards in the wild have them)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def query(ws, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of ``sql`` on the catalog of workspace ``ws``, over a short-lived read-only connection."""
    import duckdb

    con = duckdb.connect(str(Path(ws) / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def store_with_parts(proc, ws, n: int, timeout: float = 240, poll: float = 0.01):
    """Wait until the embedding store of workspace ``ws`` holds ``n`` complete parts while
    ``proc`` (a running embed process) is alive; return that store's folder (None on timeout)."""
    import time

    from curate.store.embeddings import list_parts

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        d = Path(ws) / "embeddings"
        subs = [p for p in d.iterdir() if p.is_dir()] if d.is_dir() else []
        if subs and len(list_parts(subs[0])) >= n:
            return subs[0]
        time.sleep(poll)
    return None


class _ReadOnly:
    """Runs each query on a short-lived read-only connection (the pipeline may write between)."""

    def __init__(self, path):
        self.path = str(path)

    def execute(self, sql, params=None):
        import duckdb

        con = duckdb.connect(self.path, read_only=True)
        try:
            rows = con.execute(sql, params or []).fetchall()
        finally:
            con.close()
        return _Rows(rows)


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def fetchall(self):
        return self.rows


@pytest.fixture(scope="session")
def sample_db(sample_ws):
    ws, _ = sample_ws
    return _ReadOnly(ws / "catalog.duckdb")


def sample_file_of(image_ref: str) -> str:
    """'near-dup/imagededup/x.jpg' or 'webdataset/clip-retrieval/image1.tar/123_456.jpg'."""
    if image_ref.startswith("tar:"):
        shard, member = image_ref.split(":", 3)[3].rsplit("#", 1)
        return shard.split("/examples/sample/")[-1] + "/" + member
    return image_ref.split("/examples/sample/")[-1]


@pytest.fixture(scope="session")
def by_file(sample_db):
    """sample file path (relative to examples/sample) → decision row dict."""
    rows = sample_db.execute(
        """SELECT s.sample_id, s.image_ref, c.cluster_id, d.keep, d.reasons, i.status, d.keeper_sample_id
           FROM samples s JOIN decisions d USING (sample_id) LEFT JOIN clusters c USING (sample_id)
           LEFT JOIN images i USING (sample_id) WHERE s.image_ref IS NOT NULL"""
    ).fetchall()
    out = {}
    for sid, ref, cid, keep, reasons, status, keeper in rows:
        out.setdefault(sample_file_of(ref), []).append(
            dict(sample_id=sid, cluster_id=cid, keep=keep, reasons=reasons, status=status, keeper=keeper)
        )
    return out


@pytest.fixture(scope="session")
def expected():
    with open(SAMPLE / "EXPECTED.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- helpers shared by test modules in different folders -----------------------------------


@pytest.fixture(scope="module")
def ray_address():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def tiny_model(path: Path) -> Path:
    """A TorchScript CNN (≈ 280 MFLOP per 320×320 image): zero vector for an all-white input,
    +inf for an all-black one, ordinary 16-d features otherwise."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.c1 = torch.nn.Conv2d(3, 32, 3, stride=2)
            self.c2 = torch.nn.Conv2d(32, 64, 3, stride=2)
            self.fc = torch.nn.Linear(64, 16)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)

        def forward(self, x):
            m = x.mean(dim=(1, 2, 3)).unsqueeze(1)
            y = torch.relu(self.c2(torch.relu(self.c1(x))))
            y = self.fc(y.mean(dim=(2, 3)))
            y = torch.where(m > 2.3, torch.zeros_like(y), y)
            return torch.where(m < -1.9, torch.full_like(y, float("inf")), y)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; SSCD ships TorchScript
        torch.jit.script(Tiny()).save(str(path))
    return path


def planted(n: int = 40_000, d: int = 32, seed: int = 0):
    """Clustered unit vectors with a quarter of the rows near-copies of another row (cosine
    spread across the 0.93 threshold); ids are not row numbers."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, d)).astype(np.float32)
    x = centres[rng.integers(0, 300, n)] + rng.standard_normal((n, d)).astype(np.float32) * 0.8
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = n // 4
    src = rng.integers(0, n - k, k)
    w = rng.standard_normal((k, d)).astype(np.float32)
    w *= (rng.uniform(0.05, 0.6, k) / np.linalg.norm(w, axis=1))[:, None].astype(np.float32)
    x[n - k:] = x[src] + w
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 13 + 5
    return ids, x.astype(np.float16)


def exact(ids, vecs, t):
    import faiss

    v = vecs.astype(np.float32)
    flat = faiss.IndexFlatIP(v.shape[1])
    flat.add(v)
    lims, _, lab = flat.range_search(v, t - 1e-3)
    rows = np.repeat(np.arange(len(v)), np.diff(lims).astype(np.int64))
    cos = np.einsum("ij,ij->i", v[rows], v[lab])
    keep = (rows < lab) & (cos >= t)
    return set(zip(ids[rows[keep]].tolist(), ids[lab[keep]].tolist()))


def copy_ws(sample_ws, tmp_path: Path) -> Path:
    """A private copy of the session's sample workspace (the probe commands write to it)."""
    src, _ = sample_ws
    dst = tmp_path / "ws"
    shutil.copytree(src, dst)
    return dst
