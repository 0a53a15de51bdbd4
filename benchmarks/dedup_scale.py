"""Dedup at scale (issue #5): pHash and embedding near-duplicate search, measured in one run.

Four measurements, each in its own child process (peak RSS = that process's ``ru_maxrss``,
which includes generating its input):

- ``phash``: N random 64-bit hashes, a tenth of them copies of another hash with 0–6 random
  bits flipped, searched at Hamming radius R by :func:`curate.stages.dedup.phash_search.phash_pairs` (``auto``
  picks multi-index hashing at this size). Every planted pair must be found. With
  ``--phash-brute`` the same hashes are also searched by faiss ``IndexBinaryFlat`` (O(n²))
  in the same process: identical pairs required, speed ratio reported.
- ``phash_edges``: what the dedup stage runs, :func:`curate.stages.dedup.phash_search.phash_edges` with mirror
  hashes, on the same N hashes with 5 % of the rows replaced by one placeholder hash and 1 %
  of the mirror hashes planted 0–6 bits from another row's hash (flipped copies): star edges
  for the placeholder, exact MIH for the distinct hashes, and an exact MIH cross search of the
  distinct mirror hashes against them.
- ``imagededup``: M such hashes as imagededup's 16-hex-digit strings through
  ``imagededup.methods.PHash().find_duplicates(encoding_map=..., max_distance_threshold=R,
  scores=True)`` (its default brute-force search, 2 distance workers), against
  ``phash_pairs`` (``auto`` and forced ``mih``) on the same hashes: identical pairs required,
  speed ratio reported.
- ``embed``: N × D float16 L2-normalised Gaussian vectors; 5 % of rows replaced by a rotation of
  another row by an angle uniform in [0, 0.45] rad (cosine 0.90–1.0), 1 % by exact copies of
  another row; searched at cosine ≥ T by :func:`curate.stages.dedup.vector_search.embedding_edges` (``auto``: IVF
  at this size). Reports the sampled recall against exact search that the function measures,
  the fraction of planted pairs at cosine ≥ T that end in one connected component, and the
  exact-search time of the recall sample extrapolated to all rows (an estimate, labelled so).

Run by hand, when the machine is otherwise idle (it takes several minutes on 2 cores)::

    .venv/bin/python benchmarks/dedup_scale.py --phash-brute --write-docs

``--write-docs`` saves stdout to benchmarks/results/dedup_scale.json and replaces the "Dedup
at scale (issue #5)" section of docs/BENCHMARKS.md with the figures of this run (``--docs-from RUN.json`` does the same from a saved stdout of such a
run). stdout: one JSON object; progress on stderr.
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
SECTION = "## Dedup at scale (issue #5)"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def planted_hashes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint64 (n,) random hashes; rows dst = copies of rows src with 0–6 random bits flipped."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    m = n // 10
    perm = rng.permutation(n)
    src, dst = perm[:m], perm[m : 2 * m]
    flips = np.zeros(m, np.uint64)
    k = rng.integers(0, 7, m)
    for w in range(1, 7):  # OR of w distinct random bits
        rows = np.flatnonzero(k == w)
        bits = np.argsort(rng.random((len(rows), 64)), axis=1)[:, :w].astype(np.uint64)
        flips[rows] = np.bitwise_or.reduce(np.uint64(1) << bits, axis=1)
    h[dst] = h[src] ^ flips
    return h, src, dst


def child_phash(n: int, radius: int, brute: bool, seed: int) -> dict:
    from curate.stages.dedup.phash_search import phash_pairs

    h, src, dst = planted_hashes(n, seed)
    rss_input = _rss_mb()
    stats: dict = {}
    t = time.perf_counter()
    i, j, d = phash_pairs(h, radius, stats=stats)
    wall = time.perf_counter() - t
    got = set((i.astype(np.int64) * n + j).tolist())
    planted = set((np.minimum(src, dst).astype(np.int64) * n + np.maximum(src, dst)).tolist())
    out = {
        "n": n, "radius": radius, "seconds": round(wall, 2), "pairs": int(len(i)), "search": stats,
        "planted_pairs": len(planted), "planted_found": len(planted & got),
        "peak_rss_mb": _rss_mb(), "rss_after_input_mb": rss_input,
    }
    if brute:
        _log("phash: faiss IndexBinaryFlat brute force on the same hashes …")
        t = time.perf_counter()
        bi, bj, bd = phash_pairs(h, radius, method="brute")
        out["brute_seconds"] = round(time.perf_counter() - t, 2)
        out["identical_to_brute"] = bool(len(bi) == len(i) and (bi == i).all() and (bj == j).all() and (bd == d).all())
        out["speedup_vs_brute"] = round(out["brute_seconds"] / wall, 1)
        out["peak_rss_mb_with_brute"] = _rss_mb()
    return out


def child_phash_edges(n: int, radius: int, seed: int) -> dict:
    """What the dedup stage runs: :func:`curate.stages.dedup.phash_search.phash_edges` with mirror hashes, on the
    planted hashes of :func:`planted_hashes` with 5 % of the rows replaced by one placeholder
    hash (a LAION placeholder image) and, for 1 % of the rows, the mirror hash set to another
    row's hash with 0–6 bits flipped (planted flipped copies); the other mirror hashes are random."""
    from curate.stages.dedup.clusters import components
    from curate.stages.dedup.phash_search import phash_edges

    h, src, dst = planted_hashes(n, seed)
    rng = np.random.default_rng(seed + 1)
    m = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    perm = rng.permutation(n)
    k = n // 20
    placeholder = perm[:k]
    h[placeholder] = np.uint64(0x8F3A5C7E1B2D4F60)
    m[placeholder] = np.uint64(0x2C5AF1E7B3D4960F)
    c = n // 100
    msrc, mdst = perm[k : k + c], perm[k + c : k + 2 * c]  # mirror(mdst) ≈ hash(msrc), 0–6 bits apart
    w = rng.integers(0, 7, c)
    flips = np.zeros(c, np.uint64)
    for x in range(1, 7):
        rows = np.flatnonzero(w == x)
        bits = np.argsort(rng.random((len(rows), 64)), axis=1)[:, :x].astype(np.uint64)
        flips[rows] = np.bitwise_or.reduce(np.uint64(1) << bits, axis=1)
    m[mdst] = h[msrc] ^ flips
    rss_input = _rss_mb()
    stats: dict = {}
    t = time.perf_counter()
    i, j, d, mir = phash_edges(h, radius, mirror=m, stats=stats)
    wall = time.perf_counter() - t
    nodes, cid = components(np.zeros(0, np.int64), i, j)
    lab = np.full(n, -1, np.int64)
    lab[nodes] = cid
    joined = (lab[msrc] >= 0) & (lab[msrc] == lab[mdst])
    return {
        "n": n, "radius": radius, "seconds": round(wall, 2), "edges": int(len(i)), "mirror_edges": int(mir.sum()),
        "search": stats, "placeholder_rows": int(k), "placeholder_in_one_cluster": bool(len(set(lab[placeholder].tolist())) == 1),
        "brute_force_pairs_of_placeholder": int(k * (k - 1) // 2),
        "planted_mirror_pairs": int(c), "planted_mirror_found": int(joined.sum()),
        "peak_rss_mb": _rss_mb(), "rss_after_input_mb": rss_input,
    }


def child_imagededup(n: int, radius: int, seed: int) -> dict:
    from imagededup.methods import PHash

    from curate.stages.dedup.phash_search import phash_pairs
    from curate.media.phash import to_hex

    h, _, _ = planted_hashes(n, seed)
    enc = {f"{k:07d}.jpg": to_hex(int(v)) for k, v in enumerate(h)}
    t = time.perf_counter()
    dup = PHash(verbose=False).find_duplicates(encoding_map=enc, max_distance_threshold=radius, scores=True)
    t_ref = time.perf_counter() - t
    ref = set()
    for a, lst in dup.items():
        for b, dist in lst:
            x, y = int(a[:7]), int(b[:7])
            ref.add((min(x, y), max(x, y), int(dist)))
    out = {"n": n, "radius": radius, "imagededup_seconds": round(t_ref, 2), "imagededup_pairs": len(ref)}
    for method in ("auto", "mih"):
        stats: dict = {}
        t = time.perf_counter()
        i, j, d = phash_pairs(h, radius, method=method, stats=stats)
        wall = time.perf_counter() - t
        ours = set(zip(i.tolist(), j.tolist(), d.tolist()))
        out[method] = {
            "seconds": round(wall, 3), "pairs": len(ours), "identical": ours == ref, "search": stats,
            "speedup_vs_imagededup": round(t_ref / wall, 1),
        }
    return out


def planted_vectors(n: int, dim: int, seed: int):
    """float16 (n, dim) unit vectors with planted rotations (5 %) and exact copies (1 %)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float16)
    for s in range(0, n, 65536):
        b = rng.standard_normal((min(65536, n - s), dim), dtype=np.float32)
        x[s : s + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    perm = rng.permutation(n)
    m, c = n // 20, n // 100
    src, dst = perm[:m], perm[m : 2 * m]
    csrc, cdst = perm[2 * m : 2 * m + c], perm[2 * m + c : 2 * m + 2 * c]
    for s in range(0, m, 65536):
        a, b = src[s : s + 65536], dst[s : s + 65536]
        base = x[a].astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        noise = rng.standard_normal(base.shape, dtype=np.float32)
        noise -= (noise * base).sum(1, keepdims=True) * base
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        ang = rng.uniform(0.0, 0.45, len(a)).astype(np.float32)[:, None]
        v = np.cos(ang) * base + np.sin(ang) * noise
        x[b] = v / np.linalg.norm(v, axis=1, keepdims=True)
    x[cdst] = x[csrc]
    return x, src, dst


def child_embed(n: int, dim: int, min_cosine: float, seed: int, ivf_min_n: int) -> dict:
    from curate.stages.dedup.clusters import components
    from curate.stages.dedup.vector_search import embedding_edges

    t = time.perf_counter()
    x, src, dst = planted_vectors(n, dim, seed)
    gen = time.perf_counter() - t
    rss_input = _rss_mb()
    stats: dict = {}
    t = time.perf_counter()
    i, j, c = embedding_edges(x, min_cosine, ivf_min_n=ivf_min_n, stats=stats)
    wall = time.perf_counter() - t
    # planted pairs at cosine ≥ threshold (as stored, float16 → float32) that share a component
    a = x[src].astype(np.float32)
    b = x[dst].astype(np.float32)
    cos = (a * b).sum(1)
    want = cos >= min_cosine
    nodes, cid = components(np.zeros(0, np.int64), i, j)
    lab = np.full(n, -1, np.int64)
    lab[nodes] = cid
    ls, ld = lab[src[want]], lab[dst[want]]
    together = (ls >= 0) & (ls == ld)
    return {
        "n": n, "dim": dim, "min_cosine": min_cosine, "seconds": round(wall, 1), "generate_seconds": round(gen, 1),
        "edges": int(len(i)), "search": stats, "planted_pairs_above_threshold": int(want.sum()),
        "planted_in_one_component": int(together.sum()),
        "peak_rss_mb": _rss_mb(), "rss_after_input_mb": rss_input,
    }


def _busy_cpu_seconds() -> float:
    """CPU-seconds all processes on the machine have used since boot (/proc/stat; 0 elsewhere)."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_child(args: list[str]) -> dict:
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = _busy_cpu_seconds()
    p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"child {args} failed ({p.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = json.loads(p.stdout)
    out["process_seconds"] = round(time.perf_counter() - t, 1)
    out["process_cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    # contention: CPU time the rest of the machine used while this part ran
    out["others_cpu_seconds"] = round(max(0.0, _busy_cpu_seconds() - busy - out["process_cpu_seconds"]), 1)
    return out


def write_docs(res: dict) -> None:
    ph, im, em = res["phash"], res["imagededup"], res["embed"]
    s, es = ph["search"], em["search"]
    parts = [(name, res[k]) for k, name in (("phash", "pHash"), ("phash_edges", "pHash edges"), ("imagededup", "imagededup"),
                                         ("embed", "embedding")) if k in res]
    lines = [
        SECTION,
        "",
        f"Machine: {res['machine']}; numpy {res['numpy']}, faiss {res['faiss']}, imagededup {res['imagededup_version']}.",
        "Contention, per part (" + " / ".join(k for k, _ in parts) + "): CPU-seconds used by other processes on the "
        "machine while it ran: " + " / ".join(str(p["others_cpu_seconds"]) for _, p in parts)
        + ", against the part's own " + " / ".join(str(p["process_cpu_seconds"]) for _, p in parts)
        + " CPU-seconds over " + " / ".join(str(p["process_seconds"]) for _, p in parts) + f" s wall{res['contention']}.",
        "All figures below come from `python benchmarks/dedup_scale.py --phash-brute`"
        + (f" (the parts {', '.join(res['rerun_parts'])} re-run later with `--only`, the others from the saved full run)"
           if res.get("rerun_parts") else " (one run)") + ";",
        "`--write-docs` writes this section, or `--docs-from` from the run's saved stdout; each part",
        "runs in its own process and its peak RSS (`ru_maxrss`) includes generating its input.",
        "The full output: `benchmarks/results/dedup_scale.json`.",
        "",
        "### pHash near-duplicates (`curate.stages.dedup.phash_search.phash_pairs`)",
        "",
        f"{ph['n']:,} random 64-bit hashes, a tenth of them copies of another with 0–6 bits flipped, Hamming radius {ph['radius']}:",
        "",
        "| | value |",
        "|---|---|",
        f"| method (auto) | {s['method']}: blocks of {s.get('blocks')} bits, thresholds {s.get('thresholds')} |",
        f"| distinct hashes | {s['unique']:,} |",
        f"| candidates verified | {s.get('candidates', 0):,} |",
        f"| wall time | **{ph['seconds']} s** (target < 60 s) |",
        f"| peak RSS | **{ph['peak_rss_mb']:,} MB** (target < 2 GB; {ph['rss_after_input_mb']} MB after generating the input) |",
        f"| pairs found | {ph['pairs']:,} |",
        f"| planted pairs found | {ph['planted_found']:,} of {ph['planted_pairs']:,} |",
    ]
    if "brute_seconds" in ph:
        lines += [
            f"| faiss `IndexBinaryFlat` brute force, same hashes, same process | {ph['brute_seconds']} s — "
            f"identical pairs: **{ph['identical_to_brute']}**; MIH is **{ph['speedup_vs_brute']}×** faster |",
        ]
    pe = res.get("phash_edges")
    if pe:
        ps = pe["search"]
        lines += [
            "",
            "### pHash edges as `curate dedup` computes them (`curate.stages.dedup.phash_search.phash_edges`)",
            "",
            f"The same {pe['n']:,} hashes with {pe['placeholder_rows']:,} rows (5 %) replaced by one placeholder hash, "
            f"and each row's mirror hash (pHash of the mirror image): random, except {pe['planted_mirror_pairs']:,} "
            "planted 0–6 bits from another row's hash (flipped copies). Identical hashes become star edges, the "
            f"distinct hashes are searched by MIH as above, and the distinct mirror hashes by an MIH cross search "
            f"against them; Hamming radius {pe['radius']}:",
            "",
            "| | value |",
            "|---|---|",
            f"| distinct hashes / identical collapsed / distinct mirror hashes | {ps['unique']:,} / "
            f"{ps['identical_collapsed']:,} / {ps.get('mirror_unique', 0):,} |",
            f"| candidates verified (hashes / mirror cross search) | {ps.get('candidates', 0):,} / "
            f"{ps.get('mirror_candidates', 0):,} |",
            f"| wall time | **{pe['seconds']} s** (target < 60 s) |",
            f"| peak RSS | **{pe['peak_rss_mb']:,} MB** (target < 2 GB; {pe['rss_after_input_mb']} MB after generating the input) |",
            f"| edges (of which mirror) | {pe['edges']:,} ({pe['mirror_edges']:,}) — the placeholder alone would be "
            f"{pe['brute_force_pairs_of_placeholder']:,} pairs; here {pe['placeholder_rows'] - 1:,} star edges, one cluster: "
            f"{pe['placeholder_in_one_cluster']} |",
            f"| planted flipped copies in one cluster with their original | {pe['planted_mirror_found']:,} of "
            f"{pe['planted_mirror_pairs']:,} |",
        ]
    lines += [
        "",
        f"Against imagededup on {im['n']:,} such hashes (its 16-hex-digit strings, "
        f"`PHash().find_duplicates(encoding_map=…, max_distance_threshold={im['radius']}, scores=True)`, "
        "default brute-force search with 2 distance workers), same process:",
        "",
        "| contender | seconds | pairs | identical to imagededup | speed ÷ imagededup |",
        "|---|---|---|---|---|",
        f"| imagededup `find_duplicates` | {im['imagededup_seconds']} | {im['imagededup_pairs']:,} | — | 1 |",
    ]
    for m in ("auto", "mih"):
        r = im[m]
        lines.append(
            f"| `phash_pairs(method='{m}')` → {r['search']['method']} | {r['seconds']} | {r['pairs']:,} | "
            f"**{r['identical']}** | **{r['speedup_vs_imagededup']}×** |"
        )
    if s.get("candidates"):
        lines += [
            "",
            f"MIH stays exact at any n, but it is not linear: at a fixed plan the candidates grow with n², so "
            f"{s['candidates']:,} here would be ≈ {s['candidates'] * 100:.1e} at 10M hashes (an extrapolation, not a run).",
        ]
    rec = es.get("recall")
    lines += [
        "",
        "### Embedding near-duplicates (`curate.stages.dedup.vector_search.embedding_edges`)",
        "",
        f"{em['n']:,} × {em['dim']} float16 L2-normalised Gaussian vectors; 5 % of rows replaced by a rotation "
        "of another row by 0–0.45 rad (cosine 0.90–1.0), 1 % by exact copies of another row; "
        f"cosine ≥ {em['min_cosine']}:",
        "",
        "| | value |",
        "|---|---|",
        f"| method (auto) | {es['method']}: nlist {es.get('nlist')}, nprobe {es.get('nprobe')} |",
        f"| rows / distinct / identical collapsed | {es['rows']:,} / {es['unique']:,} / {es['identical_collapsed']:,} |",
        f"| wall time | **{em['seconds']} s** (target < 300 s; includes the recall measurement) |",
        f"| peak RSS | **{em['peak_rss_mb']:,} MB** (target < 4 GB; {em['rss_after_input_mb']:,} MB after generating the input, which is {em['n'] * em['dim'] * 2 / 1e6:,.0f} MB of float16) |",
        f"| recall vs exact search, sampled | **{rec}** over {es.get('recall_pairs')} exact pairs touching {es.get('recall_sample')} sampled rows (target ≥ 0.95) |",
        f"| planted pairs at cosine ≥ {em['min_cosine']} in one cluster | {em['planted_in_one_component']:,} of "
        f"{em['planted_pairs_above_threshold']:,} (**{em['planted_in_one_component'] / max(1, em['planted_pairs_above_threshold']):.4f}**) |",
        f"| edges | {em['edges']:,} |",
    ]
    if es.get("recall_seconds"):
        lines.append(
            f"| exact search, extrapolated | ≈ {es['recall_seconds'] * es['unique'] / max(1, es['recall_sample']):,.0f} s "
            f"({es['recall_seconds']} s for the {es['recall_sample']} sampled rows × n — an estimate, not a run) |"
        )
    lines += [
        "",
        "Reading the embedding figures: the sampled recall is what `curate dedup` reports in its",
        "`embedding_search` counter (pairs touching the sampled rows, exact search as reference); with",
        f"{es.get('recall_pairs')} pairs its resolution is about 1 %. The planted-pair line covers many more",
        "pairs but counts a pair as found when both rows end in one cluster, possibly through other",
        "edges. Gaussian vectors have no cluster structure, so partitions come out nearly equal;",
        "real embeddings give unequal partitions, which cost more time (a partition's work grows",
        "with the square of its size) but no memory beyond one block pair.",
        "",
    ]
    path = ROOT / "docs" / "BENCHMARKS.md"
    text = path.read_text()
    body = "\n".join(lines) + "\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--phash-n", type=int, default=1_000_000)
    ap.add_argument("--radius", type=int, default=10)
    ap.add_argument("--phash-brute", action="store_true", help="also run faiss brute force on the N hashes")
    ap.add_argument("--imagededup-n", type=int, default=20_000)
    ap.add_argument("--embed-n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--min-cosine", type=float, default=0.92)
    ap.add_argument("--ivf-min-n", type=int, default=200_000, help="embedding_edges(ivf_min_n=…): IVF from this many vectors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["phash", "phash_edges", "imagededup", "embed"], action="append",
                    help="run only these parts; with --write-docs the others come from the saved "
                         "benchmarks/results/dedup_scale.json")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--docs-from", help="write the docs section from a saved stdout of an earlier full run, run nothing")
    a = ap.parse_args()
    if a.docs_from:
        write_docs(json.loads(Path(a.docs_from).read_text()))
        return
    if a.child is not None:
        kind, *rest = a.child
        if kind == "phash":
            out = child_phash(int(rest[0]), int(rest[1]), rest[2] == "1", int(rest[3]))
        elif kind == "phash_edges":
            out = child_phash_edges(int(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "imagededup":
            out = child_imagededup(int(rest[0]), int(rest[1]), int(rest[2]))
        else:
            out = child_embed(int(rest[0]), int(rest[1]), float(rest[2]), int(rest[3]), int(rest[4]))
        print(json.dumps(out))
        return
    import faiss
    import imagededup

    parts = a.only or ["phash", "phash_edges", "imagededup", "embed"]
    res: dict = {
        "machine": f"{os.cpu_count()} vCPUs, {platform.machine()}, Python {platform.python_version()}",
        "cpus": os.cpu_count(), "numpy": np.__version__, "faiss": faiss.__version__,
        "imagededup_version": getattr(imagededup, "__version__", "?"),
    }
    if "phash" in parts:
        _log(f"phash: {a.phash_n:,} hashes, radius {a.radius} …")
        res["phash"] = run_child(["phash", str(a.phash_n), str(a.radius), "1" if a.phash_brute else "0", str(a.seed)])
        _log(json.dumps(res["phash"]))
    if "phash_edges" in parts:
        _log(f"phash_edges: {a.phash_n:,} hashes with mirror hashes, radius {a.radius} …")
        res["phash_edges"] = run_child(["phash_edges", str(a.phash_n), str(a.radius), str(a.seed)])
        _log(json.dumps(res["phash_edges"]))
    if "imagededup" in parts:
        _log(f"imagededup: {a.imagededup_n:,} hashes …")
        res["imagededup"] = run_child(["imagededup", str(a.imagededup_n), str(a.radius), str(a.seed)])
        _log(json.dumps(res["imagededup"]))
    if "embed" in parts:
        _log(f"embed: {a.embed_n:,} × {a.dim} …")
        res["embed"] = run_child(["embed", str(a.embed_n), str(a.dim), str(a.min_cosine), str(a.seed), str(a.ivf_min_n)])
        _log(json.dumps(res["embed"]))
    share = max(res[k]["others_cpu_seconds"] / max(1e-9, res["cpus"] * res[k]["process_seconds"]) for k in parts)
    res["contention"] = (
        f" — other work took up to {share:.0%} of the machine during a part, so those times are pessimistic"
        if share > 0.05 else " — the machine was otherwise idle (other work < 5 % of it)"
    )
    print(json.dumps(res, indent=1))
    if a.write_docs:
        saved = ROOT / "benchmarks" / "results" / "dedup_scale.json"
        missing = {"phash", "phash_edges", "imagededup", "embed"} - set(parts)
        if missing:  # the parts not run now: from the saved full output of an earlier run
            old = json.loads(saved.read_text())
            if missing - set(old):
                raise SystemExit(f"--write-docs: {sorted(missing - set(old))} neither run now nor in {saved}")
            res = {**old, **{k: res[k] for k in parts}, "rerun_parts": sorted(parts)}
            share = max(res[k]["others_cpu_seconds"] / max(1e-9, res["cpus"] * res[k]["process_seconds"])
                        for k in ("phash", "phash_edges", "imagededup", "embed"))
            res["contention"] = (
                f" — other work took up to {share:.0%} of the machine during a part, so those times are pessimistic"
                if share > 0.05 else " — the machine was otherwise idle (other work < 5 % of it)")
        saved.parent.mkdir(exist_ok=True)
        saved.write_text(json.dumps(res, indent=1) + "\n")
        write_docs(res)


if __name__ == "__main__":
    main()
