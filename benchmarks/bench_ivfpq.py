"""Dedup at cluster scale (issue #8): the IVF-PQ path (:mod:`curate.stages.dedup.ivfpq`) on N synthetic
vectors, against exact flat search measured in the same run.

Data (``generate``, its own process): N × D float16 L2-normalised vectors written as embedding
parts (:mod:`curate.store.embeddings`, ``--part-rows`` rows each) — never all in memory: every block of
100,000 rows is generated from its own counter-based seed (numpy Philox keyed by the block
number), so the data do not depend on how it is cut. Structure: ``--topics`` Gaussian topic
centres; a base row is its topic's centre plus noise (two rows of one topic: cosine ≈ 0.4);
``--dup-fraction`` of the rows are near-copies of a base row of the same block, x + e·w with
‖e·w‖ uniform in [0.1, 0.6] (cosine ≈ 0.86–0.995, so the threshold 0.93 cuts through them).

IVF-PQ (``ivfpq``, its own process; peak RSS = that process's ``ru_maxrss``): train on a
sample, fill part by part, range-search every part's rows in the index, verify the
candidates exactly — :func:`curate.stages.dedup.ivfpq.pairs` — then save the pairs. The coarse-assignment
rate (multiply-adds per second) is timed on its own, so the list-scan rate can be separated.

Exact baseline (``exact``, its own process): ``--sample`` rows chosen by id hash, searched
exactly (faiss ``IndexFlatIP`` over every part, cosine ≥ threshold); recall = IVF-PQ pairs
found / exact pairs touching those rows, and the exact time per query row extrapolated to all
N rows (an extrapolation, labelled so; it is linear in N per row).

Run by hand on an otherwise idle machine (10M × 384 takes about an hour on 2 cores)::

    .venv/bin/python benchmarks/bench_ivfpq.py --n 10000000 --dim 384 --workdir /tmp/ivfpq --out benchmarks/results/ivfpq.json

stdout: one JSON object (also written to ``--out``); progress on stderr. ``--keep`` keeps the
generated parts for a re-run (``--skip-generate``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BLOCK = 100_000


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _block(b: int, n: int, d: int, centres: np.ndarray, dup: float, seed: int) -> np.ndarray:
    """Rows [b·BLOCK, min(n, (b+1)·BLOCK)) as float32 unit vectors (see module doc)."""
    rng = np.random.Generator(np.random.Philox(key=seed * 1_000_003 + b))
    k = min(BLOCK, n - b * BLOCK)
    topic = rng.integers(0, len(centres), k)
    x = centres[topic] + rng.standard_normal((k, d), dtype=np.float32) * np.float32(1.2 / np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ncopy = int(k * dup)
    copies = rng.choice(k, ncopy, replace=False)
    base = np.setdiff1d(np.arange(k), copies)
    src = base[rng.integers(0, len(base), ncopy)]
    e = rng.uniform(0.1, 0.6, ncopy).astype(np.float32)
    w = rng.standard_normal((ncopy, d), dtype=np.float32)
    w *= (e / np.linalg.norm(w, axis=1))[:, None]
    x[copies] = x[src] + w
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def generate(a) -> dict:
    from curate.store.embeddings import write_part

    t0 = time.perf_counter()
    folder = Path(a.workdir) / "parts"
    folder.mkdir(parents=True, exist_ok=True)
    centres = np.random.Generator(np.random.Philox(key=a.seed)).standard_normal((a.topics, a.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    per_part = a.part_rows // BLOCK
    nblocks = -(-a.n // BLOCK)
    for p in range(0, nblocks, per_part):
        blocks = [_block(b, a.n, a.dim, centres, a.dup_fraction, a.seed) for b in range(p, min(nblocks, p + per_part))]
        v = np.concatenate(blocks)
        ids = np.arange(p * BLOCK, p * BLOCK + len(v), dtype=np.int64)
        write_part(folder, p // per_part, ids, v)
        _log(f"generate: part {p // per_part} ({ids[-1] + 1:,} rows)")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": _rss_mb(),
            "bytes_on_disk": sum(f.stat().st_size for f in folder.iterdir())}


def assign_rate(d: int, nlist: int, rows: int = 100_000) -> float:
    """Coarse-assignment multiply-adds per second (faiss IndexFlatIP search, all threads)."""
    import faiss

    rng = np.random.default_rng(0)
    q = faiss.IndexFlatIP(d)
    q.add(rng.standard_normal((nlist, d), dtype=np.float32))
    x = rng.standard_normal((rows, d), dtype=np.float32)
    t = time.perf_counter()
    q.search(x, 8)
    return rows * nlist * d / (time.perf_counter() - t)


def run_ivfpq(a) -> dict:
    from curate.stages.dedup import ivfpq
    from curate.stages.dedup.sources import PartsSource

    src = PartsSource(Path(a.workdir) / "parts")
    p = ivfpq.Params(nlist=a.nlist, m=a.m, nbits=8, nprobe=a.nprobe, train_size=a.train_size)
    t0 = time.perf_counter()
    res = ivfpq.pairs(src, a.threshold, p, recall_sample=0)
    total = time.perf_counter() - t0
    np.save(Path(a.workdir) / "pairs_a.npy", res.a)
    np.save(Path(a.workdir) / "pairs_b.npy", res.b)
    out = {**res.stats, "seconds": round(total, 1), "peak_rss_mb": _rss_mb(),
           "assign_madds_per_s": round(assign_rate(a.dim, res.stats["nlist"]), 0)}
    return out


def run_exact(a) -> dict:
    from curate.stages.dedup import ivfpq
    from curate.stages.dedup.sources import PartsSource, sample_ids

    src = PartsSource(Path(a.workdir) / "parts")
    picked = []
    n = src.count()
    for key in src.shards():
        ids, _ = src.load(key)
        picked.append(ids[sample_ids(ids, min(1.0, 1.3 * a.sample / n), 2)])
    q = np.sort(np.concatenate(picked))[: a.sample]
    t0 = time.perf_counter()
    st: dict = {}
    ea, eb = ivfpq.exact_pairs_of(src, q, a.threshold, st)
    dt = time.perf_counter() - t0
    fa, fb = np.load(Path(a.workdir) / "pairs_a.npy"), np.load(Path(a.workdir) / "pairs_b.npy")
    hit = np.isin(ivfpq.pair_key(ea, eb), ivfpq.pair_key(fa, fb))
    per_row = st["flat_search_seconds"] / len(q)  # the searches alone: reading the parts is paid once
    return {"sample_rows": int(len(q)), "exact_pairs": int(len(ea)), "found": int(hit.sum()),
            "recall": round(float(hit.mean()), 4) if len(ea) else None,
            "seconds": round(dt, 1), "flat_search_seconds": st["flat_search_seconds"], "seconds_per_query_row": per_row,
            "all_rows_seconds_extrapolated": round(per_row * n, 0), "peak_rss_mb": _rss_mb()}


#: LAION-2B as the issue sizes it: 2·10⁹ vectors of 768 dims (ViT-L/14), and the IVF-PQ settings
#: the estimate uses (8 dims per PQ sub-vector as in the benchmark; 2^17 lists ≈ 15k rows each)
LAION = {"n": 2.0e9, "d": 768, "nlist": 2**17, "nprobe": 16, "m": 96, "nbits": 8, "train_per_list": 39, "niter": 10}
#: assumption, not measured here (no GPU was lent): a faiss-gpu flat inner-product search runs at
#: half the FP32 peak of an H100 SXM (67 TFLOPS, NVIDIA datasheet) = 16.7·10¹² multiply-adds/s
GPU_MADDS = 16.7e12


def estimate(res: dict, nodes=(4, 8, 16), vcpus_per_node: int = 96, gpus_per_node: int = 8) -> dict:
    """LAION-2B (:data:`LAION`) on N nodes, from this run's rates per vCPU (the machine's rate ÷
    its vCPUs; scan rate scaled by m_bench / m, as a code distance costs m table look-ups).

    Phases: train (k-means, one node), assign (2·n·nlist·d: fill and queries), encode (n·2^nbits·d),
    scan (n·nprobe·n/nlist codes), verify (candidates·d at this run's candidates per row).
    ``gpu_assign_hours``: the assignment on the nodes' GPUs instead (faiss-gpu — an assumption,
    :data:`GPU_MADDS`; curate ships faiss-cpu)."""
    from curate.stages.dedup import ivfpq

    cpus = res["machine"]["cpus"]
    iv, L = res["ivfpq"], LAION
    a_rate = res["rates"]["assign_madds_per_s"] / cpus
    s_rate = res["rates"]["scan_codes_per_s"] / cpus * iv["m"] / L["m"]
    v_rate = res["rates"]["verify_candidates_per_s"] / cpus * res["params"]["dim"] / L["d"]
    w = ivfpq.model(L["n"], L["d"], L["nlist"], L["nprobe"], L["m"], L["nbits"],
                    candidates_per_row=res["rates"]["candidates_per_row"])
    train_madds = L["niter"] * L["train_per_list"] * L["nlist"] * L["nlist"] * L["d"]
    rows = []
    for n in nodes:
        c = n * vcpus_per_node
        h = {"nodes": n, "vcpus": c,
             "train_hours": train_madds / (a_rate * vcpus_per_node) / 3600,
             "assign_hours": 2 * w["assign_madds"] / (a_rate * c) / 3600,
             "encode_hours": w["encode_madds"] / (a_rate * c) / 3600,
             "scan_hours": w["scan_codes"] / (s_rate * c) / 3600,
             "verify_hours": L["n"] * res["rates"]["candidates_per_row"] / (v_rate * c) / 3600,
             "gpu_assign_hours": 2 * w["assign_madds"] / (GPU_MADDS * n * gpus_per_node) / 3600,
             "index_gb_per_node": w["codes_bytes"] / n / 1e9}
        h["total_hours_cpu"] = sum(h[k] for k in ("train_hours", "assign_hours", "encode_hours", "scan_hours",
                                                   "verify_hours"))
        h["total_hours_gpu_assign"] = h["total_hours_cpu"] - h["assign_hours"] + h["gpu_assign_hours"]
        rows.append({k: (round(v, 2) if isinstance(v, float) else v) for k, v in h.items()})
    return {"laion": L, "per_vcpu": {"assign_madds_per_s": a_rate, "scan_codes_per_s_at_m": s_rate,
                                     "verify_candidates_per_s_at_d": v_rate},
            "model": {k: float(v) for k, v in w.items()}, "nodes": rows}


def _child(phase: str, argv: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--phase", phase, *argv], stdout=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"{phase} failed ({r.returncode})")
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--part-rows", type=int, default=1_000_000, help="rows per part (a multiple of 100,000)")
    ap.add_argument("--topics", type=int, default=20_000)
    ap.add_argument("--dup-fraction", type=float, default=0.25)
    ap.add_argument("--threshold", type=float, default=0.93)
    ap.add_argument("--nlist", type=int, default=8192)
    ap.add_argument("--m", type=int, default=48, help="PQ bytes per vector")
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=320_000)
    ap.add_argument("--sample", type=int, default=2000, help="rows searched exactly (recall, baseline)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/curate-bench-ivfpq")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--estimate-from", default=None, help="print the LAION-2B estimate of a saved result JSON")
    a = ap.parse_args()
    if a.estimate_from:
        res = json.loads(Path(a.estimate_from).read_text())
        res["laion2b_estimate"] = estimate(res)
        print(json.dumps(res, indent=2))
        return
    if a.phase:
        print(json.dumps({"generate": generate, "ivfpq": run_ivfpq, "exact": run_exact}[a.phase](a)))
        return
    argv = [x for x in sys.argv[1:]]
    res: dict = {"params": {k: v for k, v in vars(a).items() if k not in ("phase", "out", "keep", "skip_generate")},
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "python": platform.python_version()}}
    if not a.skip_generate:
        _log("generate …")
        res["generate"] = _child("generate", argv)
    _log("ivfpq …")
    res["ivfpq"] = _child("ivfpq", argv)
    _log("exact baseline …")
    res["exact"] = _child("exact", argv)
    iv, ex = res["ivfpq"], res["exact"]
    res["ratios"] = {
        "baseline": "exact flat search (faiss IndexFlatIP over every part) of the same rows, same run",
        "time_ivfpq_over_exact_all_rows": round(iv["seconds"] / ex["all_rows_seconds_extrapolated"], 5),
        "speedup_over_exact": round(ex["all_rows_seconds_extrapolated"] / iv["seconds"], 1),
        "recall": ex["recall"],
        "peak_rss_ivfpq_over_exact": round(iv["peak_rss_mb"] / ex["peak_rss_mb"], 2),
    }
    from curate.stages.dedup import ivfpq

    w = ivfpq.model(a.n, a.dim, iv["nlist"], iv["nprobe"], iv["m"], iv["nbits"])
    res["rates"] = {  # per second, whole machine (os.cpu_count() cores), from this run
        "assign_madds_per_s": iv["assign_madds_per_s"],
        "scan_codes_per_s": round(w["scan_codes"] / max(iv["range_seconds"] - iv["assign_seconds"], 1e-9), 0),
        "fill_rows_per_s": round(a.n / iv["fill_seconds"], 0),
        "verify_candidates_per_s": round(iv["candidates"] / max(iv["verify_seconds"], 1e-9), 0),
        "candidates_per_row": round(iv["candidates"] / a.n, 3),
    }
    res["laion2b_estimate"] = estimate(res)
    if not a.keep:
        import shutil

        shutil.rmtree(a.workdir, ignore_errors=True)
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
