"""Shared fixtures: the bundled real sample run once per test session."""
from __future__ import annotations

import csv
import os
from pathlib import Path

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

    from curate.embstore import list_parts

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
