"""Ingest at LAION scale: N LAION-400M-style rows over F parquet files, against a bare DuckDB
``CREATE TABLE AS SELECT * FROM read_parquet(...)`` of the same files, measured in one run.

Captions and URLs are sampled from the real files in ../shared/data/laion-meta (img2dataset's
test_10000.parquet, the CC3M validation TSV, fondant-cc-25m), made unique per row with a query
string. Each side runs in its own process (peak RSS = that process's ru_maxrss), with the
same DuckDB thread count and a fresh database file.

Run by hand (takes a few minutes at 10M rows on 2 cores)::

    .venv/bin/python benchmarks/ingest_scale.py --rows 10000000 --files 25 --write-docs

``--write-docs`` replaces the "Ingest (issues #3, #19)" section of docs/BENCHMARKS.md from every
results/ingest_scale_<layout>.json (``--layout laion400m`` or ``laion2b_joined``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "laion-meta"
SECTION = "## Ingest (issues #3, #19)"


def real_pool() -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    t = pq.read_table(SHARED / "img2dataset_test_10000.parquet")
    urls, caps = t.column("URL").to_pylist(), t.column("TEXT").to_pylist()
    for line in (SHARED / "cc3m_Validation_GCC-1.1.0-Validation.tsv").read_text().splitlines():
        c, _, u = line.partition("\t")
        caps.append(c)
        urls.append(u)
    f = pq.read_table(SHARED / "fondant_cc25m_1000.parquet", columns=["url", "alt+text"])
    urls += f.column("url").to_pylist()
    caps += [c or "" for c in f.column("alt+text").to_pylist()]
    keep = [i for i, u in enumerate(urls) if u and u.startswith("http")]
    return [urls[i] for i in keep], [caps[i] for i in keep]


def generate(folder: Path, rows: int, files: int, seed: int = 0, layout: str = "laion400m") -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    urls, caps = real_pool()
    ua, ca = pa.array(urls), pa.array(caps)
    rng = np.random.default_rng(seed)
    per = -(-rows // files)
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for f in range(files):
        n = min(per, rows - start)
        if n <= 0:
            break
        iu = pa.array(rng.integers(0, len(urls), n))
        ic = pa.array(rng.integers(0, len(caps), n))
        ids = np.arange(start, start + n, dtype=np.int64)
        suffix = pc.binary_join_element_wise("?r=", pc.cast(pa.array(ids), pa.string()), "")
        url, text = pc.binary_join_element_wise(ua.take(iu), suffix, ""), ca.take(ic)
        if layout == "laion2b_joined":  # laion2B-en-joined's columns and types
            t = pa.table({
                "URL": url, "TEXT": text,
                "WIDTH": pa.array(rng.integers(64, 2048, n).astype(np.int32)),
                "HEIGHT": pa.array(rng.integers(64, 2048, n).astype(np.int32)),
                "similarity": pa.array(rng.uniform(0.28, 0.45, n)),
                "hash": pa.array(rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)),
                "punsafe": pa.array(rng.beta(0.5, 8, n).astype(np.float32)),
                "pwatermark": pa.array(rng.beta(1, 4, n).astype(np.float32)),
            })
        else:
            t = pa.table({
                "SAMPLE_ID": pa.array(ids), "URL": url, "TEXT": text,
                "HEIGHT": pa.array(rng.integers(64, 2048, n).astype(np.int32)),
                "WIDTH": pa.array(rng.integers(64, 2048, n).astype(np.int32)),
                "LICENSE": pa.array(np.where(rng.random(n) < 0.9, "?", "by-sa")),
                "NSFW": pa.array(np.where(rng.random(n) < 0.95, "UNLIKELY", "UNSURE")),
                "similarity": pa.array(rng.uniform(0.28, 0.45, n)),
            })
        pq.write_table(t, folder / f"part-{f:05d}.parquet", row_group_size=128_000)
        start += n


BASELINE = r"""
import duckdb, resource, sys, time
storage = sys.argv[4] if len(sys.argv) > 4 else ""
con = duckdb.connect(sys.argv[1], config={"storage_compatibility_version": storage} if storage else {})
con.execute(f"SET threads = {int(sys.argv[3])}")
con.execute("SET enable_progress_bar = false")
t = time.perf_counter()
con.execute(f"CREATE TABLE t AS SELECT * FROM read_parquet('{sys.argv[2]}/*.parquet')")
n = con.execute("SELECT count(*) FROM t").fetchall()[0][0]
con.close()
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, n)
"""

CURATE = r"""
import resource, sys, time
from curate import api
from curate.config import RunConfig
cfg = RunConfig.model_validate({"sources": [{"name": "laion", "metadata": sys.argv[2] + "/*.parquet"}],
                                "ingest": {"duckdb_threads": int(sys.argv[3])}})
t = time.perf_counter()
c = api.run_one(sys.argv[1], "ingest", cfg)["counters"]
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, c["rows"], c["samples"], c["rejected"])
"""


def measure(code: str, *args: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, "CURATE_QUIET": "1"})
    return [float(x) for x in out.stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp folder, removed afterwards")
    ap.add_argument("--layout", choices=["laion400m", "laion2b_joined"], default="laion400m")
    ap.add_argument("--write-docs", action="store_true")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="curate-ingest-bench-"))
    try:
        data = work / "data"
        t = time.perf_counter()
        if not data.is_dir():
            generate(data, a.rows, a.files, layout=a.layout)
        gen_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in data.glob("*.parquet"))
        from curate.store.catalog import STORAGE_VERSION

        def fresh() -> None:
            for p in (work / "baseline.duckdb", work / "baseline.duckdb.wal", work / "ws"):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()

        # warm the page cache first (a cold first reader would make its side look slower), then the baseline in
        # DuckDB's default storage format and in the format curate writes its catalog in, then curate
        fresh()
        measure(BASELINE, str(work / "baseline.duckdb"), str(data), str(a.threads))
        fresh()
        base_s, base_rss, base_n = measure(BASELINE, str(work / "baseline.duckdb"), str(data), str(a.threads))
        fresh()
        same_s, _, _ = measure(BASELINE, str(work / "baseline.duckdb"), str(data), str(a.threads), STORAGE_VERSION)
        fresh()
        cur_s, cur_rss, rows, samples, rejected = measure(CURATE, str(work / "ws"), str(data), str(a.threads))
        assert int(rows) == int(base_n) == a.rows, (rows, base_n, a.rows)
        res = {
            "layout": a.layout, "rows": a.rows, "files": len(list(data.glob("*.parquet"))), "parquet_bytes": size,
            "threads": a.threads, "generate_s": round(gen_s, 1), "duckdb_ctas_s": round(base_s, 2),
            "duckdb_ctas_catalog_format_s": round(same_s, 2), "catalog_format": STORAGE_VERSION,
            "curate_ingest_s": round(cur_s, 2), "ratio_curate_over_ctas": round(cur_s / base_s, 2),
            "ratio_curate_over_ctas_catalog_format": round(cur_s / same_s, 2),
            "duckdb_ctas_peak_rss_mb": round(base_rss / 2**20),
            "curate_peak_rss_mb": round(cur_rss / 2**20), "samples": int(samples), "rejected": int(rejected),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        }
        print(json.dumps(res, indent=2))
        out = ROOT / "benchmarks" / "results" / f"ingest_scale_{a.layout}.json"
        out.write_text(json.dumps(res, indent=2) + "\n")
        if a.write_docs:
            write_docs()
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


LAYOUTS = {"laion400m": "LAION-400M (SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH int32, LICENSE, NSFW, similarity float64)",
           "laion2b_joined": "laion2B-en-joined (URL with a query string, TEXT, WIDTH/HEIGHT int32, similarity "
                             "float64, hash int64, punsafe/pwatermark float32)"}


def write_docs() -> None:
    """The section of docs/BENCHMARKS.md from every ``results/ingest_scale_<layout>.json``."""
    runs = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks" / "results").glob("ingest_scale_*.json"))]
    doc = ROOT / "docs" / "BENCHMARKS.md"
    text = doc.read_text()
    r0 = runs[0]
    rows = "\n".join(
        f"| {r['layout']} | {r['rows']:,} in {r['files']} files ({r['parquet_bytes'] / 2**20:.0f} MiB) | "
        f"{r['duckdb_ctas_s']} s | {r['duckdb_ctas_catalog_format_s']} s | {r['curate_ingest_s']} s | "
        f"**{r['ratio_curate_over_ctas']}×** | {r['ratio_curate_over_ctas_catalog_format']}× | "
        f"{r['duckdb_ctas_peak_rss_mb']} / **{r['curate_peak_rss_mb']}** MiB |" for r in runs)
    body = f"""{SECTION}

`benchmarks/ingest_scale.py --rows N --files F --layout L --write-docs` ({r0['machine']}, DuckDB threads
{r0['threads']}), one run per layout, each side in its own process after one warm-up read of the files. Layouts:
{"; ".join(f"**{k}** — {v}" for k, v in LAYOUTS.items())}. URLs and captions sampled from real LAION-style
metadata files, every URL made unique with a query string. Baseline: a bare DuckDB
`CREATE TABLE t AS SELECT * FROM read_parquet('…/*.parquet')` into a fresh file, same threads, in DuckDB's default
storage format and in the format curate writes its catalog in ({r0['catalog_format']}, so that DuckDB 1.x and its
CLI open it; issue #17).

| layout | rows | CTAS (default format) | CTAS ({r0['catalog_format']}) | `curate ingest` | **ratio** (default format) | ratio (same format) | peak RSS CTAS / curate |
|---|---|---|---|---|---|---|---|
{rows}

Target (issue #19): ≤ 1.5× at 10M rows for both layouts, peak RSS < 4 GB. curate does more than the copy: one
transaction per file (resumable), layout detection, typed casts with per-row notes, URL validation with per-row
reject reasons, caption statistics, and the unmapped columns kept as JSON, under a 3 GB DuckDB memory limit
(`ingest.duckdb_memory_limit`, which keeps its peak RSS under 4 GB; the baseline has none). Where curate's time goes
(one profile, laion2b_joined, 10M rows): the 25 per-file INSERT statements 9–10 s, the checkpoint when the catalog
closes ≈ 5 s, the caption statistics 1.3 s, the URL check pass 1.0 s, the commits 0.7 s. A bare CTAS under the same
3 GB limit took 11.7 s in the catalog's format and 9.2 s in the default one, so most of the gap is the memory cap and
the per-file transactions. Trimming every URL (`NULLIF(trim(url), '')`) cost another 2–4 s before this round: a URL
is now trimmed only when it starts or ends with a space (same result); on the same files the previous commit took
23.1 s against a 10.8 s baseline (2.14×).

"""
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    doc.write_text(text)


if __name__ == "__main__":
    main()
