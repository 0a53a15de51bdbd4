"""The Ray engine (issue #8): hash, embed and the flag classifiers on a local 2-CPU Ray cluster
give the local engine's results, and a Ray worker killed mid-run loses nothing.

The cluster is started once for the module (``ray.init(num_cpus=2)``: no dashboard, no usage
statistics, nothing downloaded) and shut down at its end. ``curate`` commands run as separate
driver processes that join it through ``--ray-address`` (the way a job joins a real cluster);
the worker-kill tests drive the stages in this process so they can SIGKILL an actor at a
chosen point of the run (after the driver's first commit).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from curate import api
from curate.config import RunConfig
from tests.conftest import ROOT, SAMPLE, store_with_parts
from tests.conftest import tiny_model




def _q(ws: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _curate(ws: Path, *args: str) -> dict:
    """Run ``curate --workspace ws --quiet ARGS`` as its own process; its stdout must be JSON."""
    env = {**os.environ, "CURATE_QUIET": "1", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-m", "curate", "--workspace", str(ws), "--quiet", *args],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _store(ws: Path) -> Path:
    (d,) = [p for p in (ws / "embeddings").iterdir() if p.is_dir()]
    return d


def _same_parts(a: Path, b: Path) -> None:
    """The same part files; vectors byte-identical or within float16 rounding (one unit in the
    last place: torch may sum in another order with other thread counts)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()), "part files differ"
    for n in names:
        if n.endswith(".npy") and not n.endswith(".ids.npy"):
            va, vb = np.load(a / n), np.load(b / n)
            assert va.shape == vb.shape and va.dtype == vb.dtype == np.float16
            ulp = np.spacing(np.maximum(np.abs(va), np.abs(vb)).astype(np.float16)).astype(np.float32)
            assert np.all(np.abs(va.astype(np.float32) - vb.astype(np.float32)) <= ulp), n
        else:
            assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_ray_engine_gives_the_local_results_on_the_sample(sample_ws, ray_address, tmp_path):
    """hash and embed of the bundled sample with ``--engine ray`` on a 2-CPU cluster: the same
    images rows (sha256, status, pHash, mirror pHash, sizes, notes), the same embedding parts
    and rows, and — after dedup — the same edges and clusters as the local run of the README's
    demo."""
    local, _ = sample_ws
    ws = tmp_path / "ws"
    _curate(ws, "ingest", "--config", str(SAMPLE / "curate.yaml"))
    h = _curate(ws, "hash", "--engine", "ray", "--ray-address", ray_address, "--actors", "2")
    assert h["counters"]["hashed"] == 652
    assert h["counters"]["ray"]["actors"] == 2 and h["counters"]["ray"]["units"] > 2
    assert h["counters"]["ray"]["worker_pids"] == 2  # both actors did work
    e = _curate(ws, "embed", "--engine", "ray", "--ray-address", ray_address, "--actor-cpus", "2")
    assert e["counters"]["embedded"] == 645 and e["counters"]["ray"]["units"] == 1
    _curate(ws, "dedup")

    assert _q(ws, "SELECT * FROM images ORDER BY sample_id") == _q(local, "SELECT * FROM images ORDER BY sample_id")
    assert _q(ws, "SELECT * FROM embeddings ORDER BY ALL") == _q(local, "SELECT * FROM embeddings ORDER BY ALL")
    _same_parts(_store(local), _store(ws))
    edges = "SELECT a, b, signal, round(distance, 6) FROM dup_edges ORDER BY ALL"
    assert _q(ws, edges) == _q(local, edges)
    clusters = "SELECT sample_id, cluster_id, cluster_size FROM clusters ORDER BY sample_id"
    got = _q(ws, clusters)
    assert got == _q(local, clusters), [x for x in got if x not in _q(local, clusters)][:5]
    assert len({c for _, c, _ in got}) == 28  # no sha256 cluster of broken files (docs/ARCHITECTURE.md)
    # switching the engine changes no stage digest: the local engine finds nothing to redo
    again = _curate(ws, "hash", "--engine", "local")
    assert again["skipped"] is True


def _descendants() -> list[int]:
    """Process ids of this process's descendants (the Ray cluster started by the fixture)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [os.getpid()]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _kill_actors(worker: str) -> list[int]:
    """SIGKILL every live Ray actor process whose title names ``worker`` (e.g. HashWorker)."""
    killed = []
    for pid in _descendants():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray::" in title and worker in title:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def _kill_after_first(monkeypatch, module, name: str, worker: str, killed: list[int]) -> None:
    """Wrap the driver's commit function ``module.name`` so that right after its first commit
    every actor running ``worker`` is SIGKILLed (the run is then mid-way: units remain)."""
    real = getattr(module, name)

    def commit(*a, **k):
        real(*a, **k)
        if not killed:
            killed.extend(_kill_actors(worker) or [0])

    monkeypatch.setattr(module, name, commit)


def _photos(folder: Path, n: int) -> None:
    """n distinct 1600×1200 JPEG crops of the sample's real photos (large enough that hashing
    80 of them takes a couple of seconds, so a kill lands mid-run) + all-white and all-black
    images (K13 failures for embed)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    srcs = [Image.open(p).convert("RGB") for p in sorted((SAMPLE / "photos").glob("*.jpg"))[:5]]
    rng = np.random.default_rng(3)
    for i in range(n):
        src = srcs[i % len(srcs)]
        w, h = src.size
        x, y = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        src.crop((x, y, x + w * 3 // 4, y + h * 3 // 4)).resize((1600, 1200)).save(folder / f"p{i:03d}.jpg", quality=90)
    Image.new("RGB", (64, 64), (255, 255, 255)).save(folder / "white.png")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(folder / "black.png")


def _small_config(tmp: Path, model: Path, **engine) -> RunConfig:
    cfg = RunConfig.model_validate({
        "sources": [{"name": "imgs", "images": "imgs"}],
        "hash": {"workers": 0, "batch_size": 16, **engine},
        "embed": {"model": f"sscd:{model}", "preprocess": "sscd_320", "device": "cpu", "batch_size": 3,
                  "part_rows": 8, "num_workers": 0, **engine},
    })
    cfg.base_dir = str(tmp)
    return cfg


def test_killed_ray_workers_lose_nothing(ray_address, tmp_path, monkeypatch):
    """SIGKILL the only hash actor after the driver's first commit, and later the only embed
    actor after the first part is committed: Ray restarts them, the units they held are redone,
    and both stages finish with exactly the local engine's rows and parts (no part twice, no
    temp file left)."""
    from curate.stages.embed import distributed as embed_distributed
    from curate.stages.hash import stage as hash_stage

    _photos(tmp_path / "imgs", 78)
    model = tiny_model(tmp_path / "tiny.pt")
    local = _small_config(tmp_path, model)
    api.run(tmp_path / "local", local, stages=["ingest", "hash", "embed"])

    ray_cfg = _small_config(tmp_path, model, engine="ray", actors=1)
    ws = tmp_path / "ray"
    api.run(ws, ray_cfg, stages=["ingest"])
    killed_hash: list[int] = []
    _kill_after_first(monkeypatch, hash_stage, "_insert", "HashWorker", killed_hash)
    h = api.run_one(ws, "hash", ray_cfg)["counters"]
    killed_embed: list[int] = []
    _kill_after_first(monkeypatch, embed_distributed, "commit_rows", "EmbedWorker", killed_embed)
    e = api.run_one(ws, "embed", ray_cfg)["counters"]

    assert killed_hash and killed_hash[0] and killed_embed and killed_embed[0], "no actor to kill"
    # a restarted actor finished the run: two processes returned results through a pool of one
    assert h["ray"]["actors"] == 1 and h["ray"]["worker_pids"] == 2, h["ray"]
    assert e["ray"]["actors"] == 1 and e["ray"]["worker_pids"] == 2, e["ray"]
    assert h["hashed"] == 80 and e["embedded"] == 78 and e["parts_written"] == 10
    loc = tmp_path / "local"
    for sql in ("SELECT * FROM images ORDER BY sample_id", "SELECT * FROM embeddings ORDER BY ALL"):
        assert _q(ws, sql) == _q(loc, sql)
    _same_parts(_store(loc), _store(ws))
    assert not [p for p in _store(ws).iterdir() if ".tmp" in p.name]
    assert not (ws / "tmp" / "ray" / "embed").exists()  # work shards removed


def test_flag_classifiers_on_ray_store_the_local_scores(ray_address, tmp_path):
    """NudeNet and OCR rules classified by Ray actors: the same ``image_scores`` rows and flags
    as the local engine."""
    from tests.stages.flag.test_classifiers import ingested

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ws_a, cfg_a = ingested(tmp_path / "a")
    ws_b, cfg_b = ingested(tmp_path / "b")
    api.run_one(ws_a, "flag", cfg_a)
    res = api.run_one(ws_b, "flag", api.with_overrides(cfg_b, "flag", {"engine": "ray", "ray_address": ray_address}))
    assert {c["classifier"]: c["classified"] for c in res["counters"]["classifiers"].values()} == \
        {"nudenet": 3, "rapidocr": 2}
    scores = "SELECT regexp_extract(s.image_ref, '[^/]+$'), x.classifier, x.label, x.score, x.detail, x.status, x.sha256 " \
             "FROM image_scores x JOIN samples s USING (sample_id) ORDER BY ALL"
    assert _q(ws_b, scores) == _q(ws_a, scores)
    flags = "SELECT sample_id, rule_id, score, evidence FROM flags ORDER BY ALL"
    assert _q(ws_b, flags) == _q(ws_a, flags)


def test_killed_ray_driver_resumes_to_the_same_parts(ray_address, tmp_path):
    """SIGKILL the driver (``curate embed --engine ray`` joined to the cluster) once two parts are
    on disk; Ray ends its actors. Re-running resumes: the parts written before the kill are kept
    (recorded, not recomputed) and the result equals the local engine's."""
    from curate.store.embeddings import list_parts

    _photos(tmp_path / "imgs", 78)
    model = tiny_model(tmp_path / "tiny.pt")
    api.run(tmp_path / "local", _small_config(tmp_path, model), stages=["ingest", "hash", "embed"])
    ws = tmp_path / "ray"
    api.run(ws, _small_config(tmp_path, model), stages=["ingest", "hash"])
    args = [sys.executable, "-m", "curate", "--workspace", str(ws), "--quiet", "embed", "--engine", "ray",
            "--ray-address", ray_address, "--actors", "1"]
    env = {**os.environ, "CURATE_QUIET": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    folder = store_with_parts(p, ws, 2)
    assert p.poll() is None, "the embed finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stdout.close()
    p.stderr.close()
    done = list_parts(folder)
    assert 2 <= len(done) < 10
    before = {n: (folder / f"part-{n:05d}.npy").stat().st_mtime_ns for n in done}
    r = _curate(ws, "embed", "--engine", "ray", "--ray-address", ray_address, "--actors", "1")["counters"]
    assert r["parts_written"] == 10 - len(done)  # only the missing parts were computed
    assert before == {n: (folder / f"part-{n:05d}.npy").stat().st_mtime_ns for n in done}  # not rewritten
    loc = tmp_path / "local"
    assert _q(ws, "SELECT * FROM embeddings ORDER BY ALL") == _q(loc, "SELECT * FROM embeddings ORDER BY ALL")
    _same_parts(_store(loc), _store(ws))


def test_ivfpq_filled_and_searched_in_ray_tasks_gives_the_local_pairs(ray_address, tmp_path):
    """Dedup at cluster scale: the IVF-PQ index filled by one Ray task per embedding part (merged
    in part order) and searched by one Ray task per part gives exactly the in-process result."""
    from curate.stages.dedup import ivfpq
    from curate.stages.dedup.sources import PartsSource
    from curate.config import EngineConfig
    from curate.store.embeddings import write_part
    from tests.conftest import planted

    ids, vecs = planted(20_000)
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, s in enumerate(range(0, len(ids), 5_000)):
        write_part(folder, k, ids[s:s + 5_000], vecs[s:s + 5_000])
    p = ivfpq.Params(nlist=64, nprobe=8, index_shards=2)
    local = ivfpq.pairs(PartsSource(folder), 0.93, p, recall_sample=500)
    sec = EngineConfig(engine="ray", ray_address=ray_address)
    remote = ivfpq.pairs(PartsSource(folder), 0.93, p, engine="ray", sec=sec, recall_sample=500)
    assert len(local.a) > 1000
    assert np.array_equal(local.a, remote.a) and np.array_equal(local.b, remote.b)
    assert np.array_equal(local.cosine, remote.cosine)
    assert remote.stats["engine"] == "ray" and remote.stats["recall"] == local.stats["recall"] >= 0.95
