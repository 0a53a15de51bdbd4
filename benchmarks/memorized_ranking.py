"""``probe select``'s risk ranking against prompts known to be memorized (issue #18).

Positives: Wen et al.'s 500 LAION-2B captions whose images Stable Diffusion v1 regurgitates
("Detecting, Explaining, and Mitigating Memorization in Diffusion Models", ICLR 2024;
``laion2b_sdv1_memorized_500.jsonl`` in the ``--data`` folder: caption, LAION-2B row index,
URL). Background: the real caption/URL tables beside it — img2dataset's 10,000 LAION-style
alt texts, the Conceptual Captions validation split (caption<TAB>url), fondant-cc25m's first
1,000 rows and fondant's 100 Common Crawl rows — read by curate's ingest as they are.

What is measured, and what is not:

- **No images.** Only caption and URL text exist, so a workspace's duplicate clusters are
  empty: ``image_duplicates`` and ``pair_duplicates`` are 0 for every prompt and *cannot be
  validated here*; their weights are not fitted (:data:`FIXED`, the literature's scale: one
  unit per doubling of copies).
- **No simulated duplication.** Each memorized caption is once in the file, while in LAION-2B
  these pairs are heavily duplicated (that is why they are memorized); their LAION caption
  counts are unknown to us. Planting copies would decide the result by construction, so the
  benchmark measures what the caption text supports: templates (template families of the
  prompts, Webster 2023), specificity, and repetition inside the files (``caption_duplicates``
  sees only the background's own repeated captions). ``caption_duplicates`` keeps its
  literature weight like the image features (fitting it on captions that are, by construction,
  never repeated when memorized would fit the construction); its ablation is reported.
- **Held-out split.** Memorized prompts are split by *template family* (curate's template key:
  captions that differ only in numbers or capitalised words stay on one side), background rows
  at random, each into two halves; each half is its own workspace. The template and
  specificity weights are chosen on the *train* half (grid :data:`GRID`: among the points within
  0.001 of the highest AUC, the smallest weights — P@k is not the criterion: at the top of the
  ranking the background's repeated boilerplate competes, and weights that push it down exploit
  the construction), every figure reported is from the *test* half.
- **Leakage checks**: memorized captions equal to a background caption (normalised), and the
  test-half memorized prompts whose template family holds no background caption (their
  template evidence comes only from other memorized prompts: Wen et al.'s set is made of such
  families, e.g. "Shaw Floors … Collection …", "… Backpack - View N").

Each ranking is a real ``probe select`` run (:func:`curate.api.probe`, ``top_k`` = every
prompt) on the workspace after curate's real ingest → hash → embed → dedup. Metrics per
ranking over probes (one per distinct normalised prompt): ROC AUC (Mann–Whitney with mid-ranks
for tied risks; 95 % bootstrap interval, positives and negatives resampled separately) and
precision at k = 50, 100, 500 (tie-aware: the expected precision when prompts tied at the
k-th risk are ordered at random; ``p_at_k_as_ranked`` uses ``probe select``'s own tie-break).

Usage::

    python benchmarks/memorized_ranking.py [--data DIR] [--out benchmarks/results] [--write-docs]
        [--work DIR] [--limit-background N] [--limit-memorized N]

Writes ``memorized_ranking.json`` (default folder ``benchmarks/results``) and, with
``--write-docs``, the section "## Probe risk ranking against memorized prompts (issue #18)" of
docs/BENCHMARKS.md. stdout: the headline figures as JSON; progress on stderr.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_quality import bench_workspace, machine, replace_section  # noqa: E402  (a sibling script)

DATA = ROOT.parent / "shared" / "data" / "laion-meta"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Probe risk ranking against memorized prompts (issue #18)"
RESULT = "memorized_ranking.json"
SEED = 18
MEMORIZED = "laion2b_sdv1_memorized_500.jsonl"
BACKGROUND = {  # source name → file in --data (read by curate's ingest as is)
    "img2dataset": "img2dataset_test_10000.parquet",
    "cc3m": "cc3m_Validation_GCC-1.1.0-Validation.tsv",
    "fondant_cc25m": "fondant_cc25m_1000.parquet",
    "fondant_commoncrawl": "fondant_commoncrawl_url_dedup_test_100.parquet",
}
FEATURES = ["image_duplicates", "caption_duplicates", "pair_duplicates", "template", "specificity"]
#: weights not fitted here (see the module doc): one unit per doubling of copies
FIXED = {"image_duplicates": 1.0, "caption_duplicates": 1.0, "pair_duplicates": 1.0}
GRID = {"template": [0, 0.125, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6],
        "specificity": [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8]}
PREVIOUS = {"image_duplicates": 1.0, "caption_duplicates": 1.0, "pair_duplicates": 1.0, "template": 0.5,
            "specificity": 1.0}
KS = (50, 100, 500)


def log(msg: str) -> None:
    if not os.environ.get("CURATE_QUIET_BENCH"):
        print(f"[memorized] {msg}", file=sys.stderr, flush=True)


# -- metrics -------------------------------------------------------------------------------------

def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1…n of ``x`` (ascending), tied values sharing their mean rank."""
    _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    end = np.cumsum(cnt)
    return ((end - cnt + 1 + end) / 2.0)[inv]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC = P(random positive scores above random negative), ties counted ½ (Mann–Whitney)."""
    pos = labels.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    r = midranks(scores)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_interval(scores: np.ndarray, labels: np.ndarray, n: int = 1000, seed: int = SEED) -> list[float]:
    """95 % bootstrap interval of :func:`auc` (positives and negatives resampled separately)."""
    rng = np.random.default_rng(seed)
    pi, ni = np.flatnonzero(labels), np.flatnonzero(~labels.astype(bool))
    lab = np.r_[np.ones(len(pi), bool), np.zeros(len(ni), bool)]
    vals = [auc(np.r_[scores[rng.choice(pi, len(pi))], scores[rng.choice(ni, len(ni))]], lab) for _ in range(n)]
    return [round(float(np.quantile(vals, 0.025)), 4), round(float(np.quantile(vals, 0.975)), 4)]


def p_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Expected precision of the top ``k`` when prompts tied at the k-th score are ordered at random."""
    k = min(k, len(scores))
    t = np.sort(scores)[::-1][k - 1]
    above, tied = scores > t, scores == t
    return float((labels[above].sum() + (k - above.sum()) * labels[tied].mean()) / k)


def metrics(scores: np.ndarray, labels: np.ndarray, ranks: np.ndarray | None = None, ci: bool = False) -> dict:
    out = {"auc": round(auc(scores, labels), 4),
           "p_at_k": {str(k): round(p_at_k(scores, labels, k), 4) for k in KS}}
    if ci:
        out["auc_95"] = auc_interval(scores, labels)
    if ranks is not None:
        out["p_at_k_as_ranked"] = {str(k): round(float(labels[ranks <= k].mean()), 4) for k in KS}
    return out


# -- data ----------------------------------------------------------------------------------------

def template_keys(captions: list[str]) -> list[str]:
    """curate's template of each caption (:data:`curate.media.captions.TEMPLATE_SQL`)."""
    import duckdb

    from curate.media.captions import TEMPLATE_SQL

    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER, caption VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(captions)))
    return [r[0] for r in con.execute(f"SELECT {TEMPLATE_SQL} FROM t ORDER BY i").fetchall()]


def split_memorized(rows: list[dict], seed: int = SEED) -> tuple[list[dict], list[dict], int]:
    """Two halves of the memorized rows, whole template families on one side (shuffled families,
    each to the half with fewer rows so far). Returns (train, test, families)."""
    fam: dict[str, list[dict]] = {}
    for r, key in zip(rows, template_keys([r["caption"] for r in rows])):
        fam.setdefault(key, []).append(r)
    keys = sorted(fam)
    random.Random(seed).shuffle(keys)
    halves: tuple[list[dict], list[dict]] = ([], [])
    for key in keys:
        min(halves, key=len).extend(fam[key])
    return halves[0], halves[1], len(fam)


def write_half(data: Path, folder: Path, memorized: list[dict], half: int, limit_bg: int | None) -> dict:
    """Files of one half in ``folder``: the memorized rows (parquet URL, TEXT: the LAION-400M
    layout) and every background file's rows of this half in that file's own format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"URL": [r["url"] for r in memorized], "TEXT": [r["caption"] for r in memorized]}),
                   folder / "memorized.parquet")
    files = {"memorized": folder / "memorized.parquet"}
    for name, fname in BACKGROUND.items():
        src = data / fname
        if src.suffix == ".tsv":
            lines = src.read_bytes().splitlines(keepends=True)
            keep = _half_rows(len(lines), half, limit_bg)
            (folder / fname).write_bytes(b"".join(lines[i] for i in keep))
        else:
            t = pq.read_table(src)
            pq.write_table(t.take(_half_rows(t.num_rows, half, limit_bg)), folder / fname)
        files[name] = folder / fname
    return files


def _half_rows(n: int, half: int, limit: int | None) -> list[int]:
    perm = np.random.default_rng(SEED).permutation(n)
    rows = sorted(int(i) for i in perm[half::2])
    return rows[:limit] if limit else rows


# -- curate --------------------------------------------------------------------------------------

def build_workspace(ws: Path, files: dict[str, Path]) -> dict:
    """curate's real ingest → hash → embed → dedup on the files; returns the stage counters."""
    from curate import api
    from curate.config import RunConfig

    cfg = RunConfig.model_validate({"sources": [{"name": n, "metadata": str(p)} for n, p in files.items()]})
    r = api.run_one(ws, "dedup", cfg)
    ingest = next(u for u in r["upstream"] if u["stage"] == "ingest")["counters"]
    return {"samples": ingest["total_samples"], "rejected": ingest["total_rejected"],
            "rejected_by_reason": ingest["rejected_by_reason"], "clusters": r["counters"]["clusters"],
            "caption_groups_repeated": r["counters"]["captions"]["caption_groups_repeated"],
            "templates_with_variants": r["counters"]["captions"]["templates_with_variants"]}


def select(ws: Path, weights: dict) -> dict:
    """One real ``probe select`` with ``weights`` and top_k = every prompt; returns arrays over
    the probes: risk, rank, label (a memorized prompt), source (the representative's), reasons."""
    import duckdb

    from curate import api
    from curate.media.captions import NORM_SQL

    api.probe(ws, "select", overrides={"weights": weights, "top_k": 10_000_000})
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        rows = con.execute(f"""
            WITH mem AS (SELECT DISTINCT {NORM_SQL.replace('caption', 's.caption')} AS norm
                         FROM samples s JOIN sources USING (source_id) WHERE sources.name = 'memorized')
            SELECT p.risk, p.rank, (m.norm IS NOT NULL) AS label, src.name, p.reasons
            FROM probes p JOIN samples s ON s.sample_id = p.representative_sample_id
                 JOIN sources src ON src.source_id = s.source_id
                 LEFT JOIN mem m ON m.norm = {NORM_SQL.replace('caption', 'p.prompt')}
            WHERE p.origin = 'select' ORDER BY p.rank""").fetchall()
    finally:
        con.close()
    return {"risk": np.round(np.array([r[0] for r in rows], float), 9), "rank": np.array([r[1] for r in rows]),
            "label": np.array([bool(r[2]) for r in rows]), "source": np.array([r[3] for r in rows]),
            "reasons": [json.loads(r[4]) if isinstance(r[4], str) else r[4] for r in rows]}


def feature_matrix(sel: dict) -> np.ndarray:
    """probes × FEATURES, from a run whose weights are all 1 (every non-zero feature is a reason)."""
    f = np.zeros((len(sel["reasons"]), len(FEATURES)))
    for i, rs in enumerate(sel["reasons"]):
        for x in rs:
            f[i, FEATURES.index(x["reason"])] = x["feature"]
    return f


def fit(feats: np.ndarray, labels: np.ndarray) -> tuple[dict, list[dict]]:
    """The train AUC *plateau* (GRID points within 0.001 of the best AUC) and its smallest weights
    (:func:`smallest_on_plateau`); FIXED weights held. Returns (weights, every grid point's scores,
    ``plateau`` marking the plateau and ``best_p`` the plateau point of highest mean P@k)."""
    pts = []
    for wt, ws_ in itertools.product(GRID["template"], GRID["specificity"]):
        w = {**FIXED, "template": wt, "specificity": ws_}
        s = np.round(feats @ np.array([w[f] for f in FEATURES]), 9)
        m = metrics(s, labels)
        pts.append({"weights": w, **m, "mean_p": round(float(np.mean(list(m["p_at_k"].values()))), 4)})
    best = max(p["auc"] for p in pts)
    top = [p for p in pts if p["auc"] >= best - 0.001]
    by_p = max(top, key=lambda p: (p["mean_p"], -(p["weights"]["template"] + p["weights"]["specificity"])))
    for p in pts:
        p["plateau"], p["best_p"] = p in top, p is by_p
    return smallest_on_plateau(pts), pts


def smallest_on_plateau(pts: list[dict]) -> dict:
    """The plateau point with the smallest template + specificity weights (then the smaller
    template weight): text features no stronger than the AUC needs, so they do not override the
    duplication features this benchmark cannot see."""
    p = min((p for p in pts if p["plateau"]),
            key=lambda p: (p["weights"]["template"] + p["weights"]["specificity"], p["weights"]["template"]))
    return dict(p["weights"])


def leakage(ws: Path) -> dict:
    """Memorized captions equal to a background caption; memorized prompts with template variants
    and how many of them share their template with no background caption."""
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        equal, with_var, only_mem = con.execute("""
            WITH t AS (SELECT cs.*, src.name = 'memorized' AS mem FROM caption_stats cs
                       JOIN samples s USING (sample_id) JOIN sources src USING (source_id)),
                 g AS (SELECT caption_group, bool_or(mem) AS any_mem, bool_and(mem) AS all_mem FROM t GROUP BY 1),
                 tg AS (SELECT template_group, bool_and(mem) AS all_mem FROM t GROUP BY 1)
            SELECT (SELECT count(*) FROM g WHERE any_mem AND NOT all_mem),
                   count(*) FILTER (mem AND template_variants >= 2),
                   count(*) FILTER (mem AND template_variants >= 2 AND tg.all_mem)
            FROM t JOIN tg USING (template_group)""").fetchone()
    finally:
        con.close()
    return {"memorized_captions_equal_to_background": int(equal), "memorized_with_template_variants": int(with_var),
            "of_which_family_has_no_background_caption": int(only_mem)}


def rankings(best: dict, by_p: dict) -> dict[str, dict]:
    """name → weights of every ranking reported on the test half."""
    zero = dict.fromkeys(FEATURES, 0.0)
    out = {"measured (shipped)": best, "plateau point of highest train P@k": by_p,
           "previous weights (1, 1, 1, 0.5, 1)": PREVIOUS,
           "caption repetitions only": {**zero, "caption_duplicates": 1.0},
           "template only": {**zero, "template": 1.0}, "specificity only": {**zero, "specificity": 1.0}}
    for f in FEATURES:
        out[f"measured without {f}"] = {**best, f: 0.0}
    return out


def run_benchmark(data: Path, work: Path, limit_bg: int | None = None, limit_mem: int | None = None) -> dict:
    t0 = time.time()
    mem = [json.loads(line) for line in (data / MEMORIZED).read_text().splitlines() if line.strip()]
    mem = mem[:limit_mem] if limit_mem else mem
    train_mem, test_mem, families = split_memorized(mem)
    res: dict = {"data": {"memorized": len(mem), "template_families": families,
                          "background_files": dict(BACKGROUND)},
                 "split": {"seed": SEED, "memorized_train": len(train_mem), "memorized_test": len(test_mem)},
                 "fixed_weights": FIXED, "grid": GRID, "halves": {}}
    sel: dict[str, dict] = {}
    for half, (name, rows) in enumerate([("train", train_mem), ("test", test_mem)]):
        ws = work / name / "ws"
        shutil.rmtree(ws, ignore_errors=True)
        files = write_half(data, work / name / "files", rows, half, limit_bg)
        log(f"{name}: ingest → dedup on {len(rows)} memorized + background")
        res["halves"][name] = {"workspace": build_workspace(ws, files), "leakage": leakage(ws)}
        sel[name] = select(ws, dict.fromkeys(FEATURES, 1.0))
        res["halves"][name]["probes"] = len(sel[name]["risk"])
        res["halves"][name]["memorized_probes"] = int(sel[name]["label"].sum())
    best, grid = fit(feature_matrix(sel["train"]), sel["train"]["label"])
    res["chosen_weights"] = best
    res["train"] = {"grid_points": len(grid), "chosen": next(p for p in grid if p["weights"] == best),
                    "plateau_points": sum(p["plateau"] for p in grid),
                    "plateau_auc": [min(p["auc"] for p in grid if p["plateau"]), max(p["auc"] for p in grid)]}
    log(f"chosen on train: {best}")
    res["test"] = {}
    ws = work / "test" / "ws"
    for name, w in rankings(best, next(p["weights"] for p in grid if p["best_p"])).items():
        s = select(ws, w)
        m = metrics(s["risk"], s["label"], s["rank"], ci=name in ("measured (shipped)", "previous weights (1, 1, 1, 0.5, 1)",
                                                               "caption repetitions only", "template only"))
        res["test"][name] = {"weights": w, **m}
        log(f"test {name}: AUC {m['auc']} P@k {m['p_at_k']}")
        if name == "template only":  # membership: a template with ≥ 2 variants, yes/no (from this run's risk)
            member = (s["risk"] > 0).astype(float)
            res["test"]["template membership only (≥ 2 variants, yes/no)"] = {
                "weights": None, **metrics(member, s["label"], ci=True)}
        if name == "measured (shipped)":
            res["test_per_background"] = {
                src: round(auc(s["risk"][keep], s["label"][keep]), 4)
                for src in BACKGROUND if (keep := s["label"] | (s["source"] == src)).sum() > s["label"].sum()}
            res["prevalence"] = round(float(s["label"].mean()), 4)
    tr = select(work / "train" / "ws", best)  # the fit's figure, from a real run on the train half
    res["train"]["chosen_real_run"] = metrics(tr["risk"], tr["label"])
    res["not_validated"] = ["image_duplicates", "pair_duplicates"]
    res["seconds"] = round(time.time() - t0, 1)
    return res


# -- docs ----------------------------------------------------------------------------------------

def render_docs(res: dict) -> str:
    w = res["chosen_weights"]
    te, lk = res["halves"]["test"], res["halves"]["test"]["leakage"]
    L = [SECTION, "",
         f"`python benchmarks/memorized_ranking.py --write-docs` — Wen et al.'s {res['data']['memorized']} captions that "
         "Stable Diffusion v1 is known to regurgitate (ICLR 2024; each once, in the LAION-400M parquet layout) mixed "
         "into real caption/URL tables as they are (img2dataset's LAION-style alt texts, Conceptual Captions "
         "validation, fondant-cc25m, fondant Common Crawl), through curate's real ingest → hash → embed → dedup and "
         "`probe select` (top_k = every prompt). Split: memorized prompts by template family "
         f"({res['data']['template_families']} families; {res['split']['memorized_train']} train / "
         f"{res['split']['memorized_test']} test), background rows at random, each half its own workspace; weights "
         f"chosen on the train half, every figure below from the test half ({te['probes']} probes, "
         f"{te['memorized_probes']} memorized: prevalence {res['prevalence']}). AUC: Mann–Whitney with tied risks "
         "counted ½ (95 % bootstrap interval). P@k: expected precision of the top k with ties at the k-th risk in "
         "random order. Results: `benchmarks/results/memorized_ranking.json`.", "",
         "| ranking (test half) | weights (image, caption, pair, template, specificity) | AUC | P@50 | P@100 | P@500 |",
         "|---|---|---|---|---|---|"]
    for name, r in res["test"].items():
        ws_ = ", ".join(f"{r['weights'][f]:g}" for f in FEATURES) if r["weights"] else "– (risk > 0 of 'template only')"
        ci = f" [{r['auc_95'][0]:.3f}, {r['auc_95'][1]:.3f}]" if "auc_95" in r else ""
        p = r["p_at_k"]
        L.append(f"| {name} | {ws_} | {r['auc']:.3f}{ci} | {p['50']:.3f} | {p['100']:.3f} | {p['500']:.3f} |")
    L.append(f"| random order | – | 0.500 | {res['prevalence']:.3f} | {res['prevalence']:.3f} | {res['prevalence']:.3f} |")
    L += ["", "'previous weights': the defaults before this measurement (1, 1, 1, 0.5, 1) on the features as now "
          "defined. 'template membership only': 1 for a prompt whose template has ≥ 2 distinct captions, else 0. "
          "Ablations: the shipped weights with one feature's weight set to 0. Every row but 'template "
          "membership only' and 'random order' is a `probe select` run."]
    per = ", ".join(f"{k} {v:.3f}" for k, v in res["test_per_background"].items())
    tc, t = res["train"]["chosen"], res["test"]
    bp = t["plateau point of highest train P@k"]["weights"]["specificity"]
    L += ["",
          f"**Shipped weights** (`probe.weights`): image_duplicates {w['image_duplicates']:g}, caption_duplicates "
          f"{w['caption_duplicates']:g}, pair_duplicates {w['pair_duplicates']:g}, template {w['template']:g}, "
          f"specificity {w['specificity']:g}. Template and specificity were chosen on the train half over the grid "
          f"template ∈ {{{', '.join(f'{x:g}' for x in res['grid']['template'])}}} × specificity ∈ "
          f"{{{', '.join(f'{x:g}' for x in res['grid']['specificity'])}}}: the train AUC is flat — "
          f"{res['train']['plateau_points']} of {res['train']['grid_points']} grid points are within 0.001 of the "
          f"best (AUC {res['train']['plateau_auc'][0]:.3f}–{res['train']['plateau_auc'][1]:.3f}) — and the shipped "
          f"point is the plateau's smallest weights (train AUC {tc['auc']:.3f}, P@50/100/500 "
          f"{tc['p_at_k']['50']:.3f} / {tc['p_at_k']['100']:.3f} / {tc['p_at_k']['500']:.3f}): text features no "
          "stronger than the AUC needs, so that they do not override the duplication features that this "
          "benchmark cannot see. The plateau point of highest train P@k is shown for comparison: its large "
          "specificity weight pushes the background's short repeated boilerplate down (an effect of the "
          f"construction), and with it a unique caption of ≥ 32 distinct words would score {bp:g}, as much as "
          f"{2 ** bp:.0f} copies of an image. "
          f"Nearly all of the signal is the template feature: without it the AUC is "
          f"{t['measured without template']['auc']:.3f}, specificity alone gives {t['specificity only']['auc']:.3f}; "
          "specificity orders prompts within the template families and against short boilerplate. The duplication "
          "weights stay 1 — one unit of risk per doubling of copies (Carlini et al. 2023; Somepalli et al. "
          "NeurIPS 2023) — and are **not** measured here:", "",
          "- **Not validated (no images):** `image_duplicates` and `pair_duplicates` need duplicate image clusters; "
          "the tables carry no images, so both are 0 for every prompt (their ablations change nothing).",
          "- **Caption repetition is only seen inside the files:** every memorized caption is once in the file, "
          "while in LAION-2B these pairs are heavily duplicated (their counts there are unknown to us). No "
          "duplication was simulated. What the files repeat is boilerplate over many different images "
          "(\"Powered by MediaWiki\", \"Creative Commons License\"), none of it memorized: the baseline "
          f"'caption repetitions only' has AUC {t['caption repetitions only']['auc']:.3f}, and without "
          f"`caption_duplicates` the shipped ranking has AUC {t['measured without caption_duplicates']['auc']:.3f} "
          f"(with it {t['measured (shipped)']['auc']:.3f}). "
          "That measures the construction (memorized captions never repeated), not LAION, so its weight was "
          "not fitted.",
          f"- **Template evidence comes from the memorized set's own families:** {lk['memorized_with_template_variants']} "
          f"test-half memorized prompts share a template with another caption, and for "
          f"{lk['of_which_family_has_no_background_caption']} of them every caption of the family is memorized "
          "(Wen et al.'s set is made of template families — Webster 2023's template verbatims — whose other "
          "variants are in LAION-2B, not in these small tables). Memorized captions equal to a background "
          f"caption: {lk['memorized_captions_equal_to_background']}.",
          f"- **Per background** (AUC of the shipped weights, memorized vs that source's prompts only): {per}. "
          "Conceptual Captions are hypernymised and lower-case (no names, so almost no template variants); "
          "img2dataset's raw alt texts are the closest to LAION.",
          "- Feature definitions (each repetition counted once): see `curate/probes/select.py`.", ""]
    return "\n".join(L)


def write_docs(res: dict, path: Path = DOCS) -> None:
    """Replace (or append) this benchmark's section of docs/BENCHMARKS.md; other sections untouched."""
    replace_section(path, SECTION, render_docs(res))


def headline(res: dict) -> dict:
    return {"chosen_weights": res["chosen_weights"], "prevalence": res["prevalence"],
            "test": {k: {"auc": v["auc"], "p_at_k": v["p_at_k"]} for k, v in res["test"].items()},
            "seconds": res["seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with the memorized jsonl and background tables")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help=f"folder for {RESULT}")
    ap.add_argument("--work", type=Path, default=None, help="build the halves and workspaces here and keep them")
    ap.add_argument("--write-docs", action="store_true", help=f"rewrite the section '{SECTION}' of docs/BENCHMARKS.md")
    ap.add_argument("--limit-background", type=int, default=None, help="background rows per file and half (smoke runs)")
    ap.add_argument("--limit-memorized", type=int, default=None, help="first N memorized prompts (smoke runs)")
    a = ap.parse_args(argv)
    with bench_workspace(a.work, "memorized_ranking_") as work:
        res = run_benchmark(a.data, work, a.limit_background, a.limit_memorized)
    res["machine"] = machine()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / RESULT).write_text(json.dumps(res, indent=1) + "\n")
    if a.write_docs:
        write_docs(res)
    print(json.dumps(headline(res), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
