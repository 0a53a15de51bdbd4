"""The Ray engine on one machine (issue #8): its overhead against the local engine, and the
driver's commit rate (the one-writer catalog bounds a cluster run).

- ``engines``: the bundled sample (examples/sample, 652 rows) ingested into two workspaces;
  hash and embed (efficientnet_lite0, CPU) run with ``engine: local`` in one and ``engine:
  ray`` (a Ray instance on this machine, started before the timing, 2 hash actors of 1 CPU,
  1 embed actor of all CPUs) in the other. Baseline: the local engine, same run. The two
  workspaces' ``images`` rows and embedding parts are compared (must be identical).
- ``commits``: what the driver does per result on a cluster, alone: ``images`` rows inserted
  ``--batch`` at a time from the arrow tables the hash actors return (hash), ``embeddings`` rows
  one part of ``--part-rows`` at a time (embed), ``--rows`` synthetic rows each, into a fresh catalog. Rows per second bound the
  cluster's rate whatever its size (an estimate for 2·10⁹ rows is printed).

Run by hand::

    .venv/bin/python benchmarks/bench_ray_engine.py --out benchmarks/results/ray_engine.json

stdout: one JSON object; progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CURATE_QUIET", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def engines(tmp: Path) -> dict:
    import logging

    import duckdb
    import ray

    from curate import api

    cfg = api.workspace_config(tmp, ROOT / "examples" / "sample" / "curate.yaml")
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    out: dict = {"ray_init_seconds": round(time.perf_counter() - t0, 2)}
    ws = {e: tmp / e for e in ("local", "ray")}
    for e, w in ws.items():
        api.run(w, cfg, stages=["ingest"])
    over = {"local": {}, "ray": {"hash": {"engine": "ray", "actors": 2}, "embed": {"engine": "ray",
                                                                             "actor_cpus": os.cpu_count()}}}
    for stage in ("hash", "embed"):
        for e in ("local", "ray"):
            c = api.with_overrides(cfg, stage, over[e].get(stage, {}))
            t = time.perf_counter()
            api.run_one(ws[e], stage, c)
            out.setdefault(stage, {})[f"{e}_seconds"] = round(time.perf_counter() - t, 2)
            _log(f"{stage} {e}: {out[stage][f'{e}_seconds']} s")
        out[stage]["ray_over_local"] = round(out[stage]["ray_seconds"] / out[stage]["local_seconds"], 2)
    ray.shutdown()

    def q(w, sql):
        con = duckdb.connect(str(w / "catalog.duckdb"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    out["images_identical"] = q(ws["local"], "SELECT * FROM images ORDER BY sample_id") == \
        q(ws["ray"], "SELECT * FROM images ORDER BY sample_id")
    pa_, pb_ = [sorted(p for p in (w / "embeddings").rglob("part-*")) for w in (ws["local"], ws["ray"])]
    out["parts_identical"] = [p.name for p in pa_] == [p.name for p in pb_] and all(
        a.read_bytes() == b.read_bytes() for a, b in zip(pa_, pb_))
    return out


def commits(tmp: Path, rows: int, batch: int, part_rows: int) -> dict:
    from curate.store.catalog import Workspace
    from curate.stages.embed.parts import commit_rows as _insert_rows
    from curate.stages.hash.stage import _insert

    from curate.stages.hash.stage import rows_table

    ws = Workspace(tmp / "commits")
    try:
        tables = [rows_table([(i, "ok", None, 30_000, "%064x" % i, i * 2654435761 % 2**64, 384, 256, 384, 256, "RGB",
                               "JPEG", None, [], i * 40503 % 2**64) for i in range(s, min(rows, s + batch))])
                  for s in range(0, rows, batch)]  # what HashWorkers hand the driver
        t = time.perf_counter()
        for tb in tables:
            _insert(ws, tb)
        hash_s = time.perf_counter() - t
        import numpy as np
        import pyarrow as pa

        t = time.perf_counter()
        for s in range(0, rows, part_rows):  # as the Ray engine commits a part: built column-wise
            ids = np.arange(s, min(rows, s + part_rows), dtype=np.int64)
            _insert_rows(ws, pa.table({"sample_id": pa.array(ids), "model": pa.array(np.full(len(ids), "m@0123456789ab",
                                                                                          dtype=object), pa.string()),
                                      "part": pa.array(np.full(len(ids), s // part_rows, np.int32)),
                                      "status": pa.array(["ok"] * len(ids), pa.string())}))
        emb_s = time.perf_counter() - t
    finally:
        ws.close()
    hr, er = rows / hash_s, rows / emb_s
    return {"rows": rows, "images_batch": batch, "images_rows_per_s": round(hr), "embed_part_rows": part_rows,
            "embeddings_rows_per_s": round(er),
            "hours_for_2e9_rows": {"hash": round(2e9 / hr / 3600, 2), "embed": round(2e9 / er / 3600, 2)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows committed in the commits part")
    ap.add_argument("--batch", type=int, default=4096, help="images rows per commit (hash.batch_size)")
    ap.add_argument("--part-rows", type=int, default=65536, help="embeddings rows per commit (embed.part_rows)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = {"machine": {"cpus": os.cpu_count()}, "engines": engines(Path(d)),
               "commits": commits(Path(d), a.rows, a.batch, a.part_rows)}
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
