"""``probe select``: rank prompts by replication risk → table ``probes`` + ``out/probes.parquet``.

Why these reasons (METHODS.md). Each duplicate of a sample counts in **one** duplication
feature: with n = its duplicate cluster's size (1 outside one), c = samples with its normalised
caption and p = samples of its cluster with its caption (itself included, p ≤ n, p ≤ c), the
other samples split into p − 1 exact image+caption copies, n − p copies of the image under other
captions and c − p other images under the caption; an image+caption pair repeated k times thus
contributes log₂ k once (as ``pair_duplicates``), not three times.

- **image and caption duplicated together** — Somepalli et al., "Understanding and Mitigating
  Copying in Diffusion Models" (NeurIPS 2023): duplicating image *and* caption together raises
  copying most; Carlini et al., "Extracting Training Data from Diffusion Models" (USENIX
  Security 2023): the extracted images were concentrated in images duplicated ≥ 100 times.
  Feature: ``log2(p)``.
- **image duplicates under other captions** — Carlini et al. (2023); Somepalli et al., "Diffusion
  Art or Digital Forgery?" (CVPR 2023): matches above 0.5 had ~34 copies on average vs ~12 for
  a random image. Feature: ``log2(1 + n − p)`` (curate's duplicate clusters).
- **caption duplicates over other images** — Somepalli et al. (NeurIPS 2023): caption
  duplication matters as much as image duplication. Feature: ``log2(1 + c − p)`` (caption
  groups of :mod:`curate.media.captions`).
- **template captions** — Webster, "A Reproducible Extraction of Training Images from Diffusion
  Models" (2023): template verbatims, captions that share a fixed template and differ in a few
  tokens. Feature: ``log2(template_variants)``, the *distinct* normalised captions sharing the
  caption's template (``caption_stats``; 0 for a caption alone in its template): a repeated
  caption counts in the caption feature only, each variant once here.
- **caption specificity** — Somepalli et al. (NeurIPS 2023): more specific captions copy more.
  Feature: ``log2(1 + w) / log2(33)`` clipped to [0, 1], w = distinct words (letter runs) in the
  caption: 1 word → 0.20, 5 → 0.51, 10 → 0.69, 32 or more → 1.

Per sample, ``risk = Σ weight_r · feature_r`` (weights in ``probe.weights``; log-additive, i.e.
the log of a weighted product of the counts). The shipped weights are measured by
``benchmarks/memorized_ranking.py`` (docs/BENCHMARKS.md): Wen et al.'s 500 prompts memorized by
Stable Diffusion v1 ("Detecting, Explaining, and Mitigating Memorization in Diffusion Models",
ICLR 2024) mixed into real LAION-style captions, template and specificity weights chosen on one
half and reported on the other (held-out AUC 0.675, P@50 0.58, P@100 0.46; caption repetitions
alone 0.498, template alone 0.671: nearly all of the signal is the template families). That set
has no images, so the image features (and the caption repetition of the memorized captions,
once each in the file) are not validated by it; their weights stay 1, one unit per doubling of
copies. Caption-less samples have p = 1 (the empty prompt groups no caption).

A sample whose image did not decode is not a
candidate (it cannot be trained on); a sample without an ``images`` row (metadata only) is.

A **probe** is one distinct prompt: samples are grouped by normalised caption (NFC, lower-case,
whitespace collapsed: :data:`curate.media.captions.NORM_SQL`). Samples without a caption are trained
under the empty prompt; with ``probe.empty_prompt`` they form the probe ``""`` (unconditional
generation), for which the caption reasons do not apply (features 0). The probe's risk is its
highest-risk sample's (the *representative*, ties → smallest sample_id), its prompt that
sample's caption (leading and trailing whitespace stripped, line breaks included), its reasons
that sample's. Reference samples: the representative,
its duplicate cluster, then every other sample with the prompt and their clusters, in that
order, at most ``probe.max_references``. The top ``probe.top_k`` probes by risk (ties: more
samples with the prompt, then prompt text) are stored with ``rank`` 1…K.

``probe_id`` is a hash of the prompt text (:func:`curate.probes.probe_id`), so re-selecting
keeps the ids of prompts that stay, and generations keep pointing at their prompt.
"""
from __future__ import annotations

import io
import json
from typing import Any

from curate.config import RunConfig
from curate.errors import CurateError
from curate.media.captions import NORM_SQL, STRIP_SQL
from curate.probes import probe_id
from curate.store.catalog import Workspace
from curate.store.fsio import atomic_write_bytes

REASONS = {
    "image_duplicates": ("cluster_size", "log2(1 + cluster size − samples in the cluster with this caption)",
                         "Carlini et al. 2023; Somepalli et al. 2023"),
    "caption_duplicates": ("caption_count", "log2(1 + samples with this caption − those in the cluster)",
                           "Somepalli et al. 2023 (NeurIPS)"),
    "pair_duplicates": ("pair_count", "log2(samples in the cluster with this caption)", "Somepalli et al. 2023 (NeurIPS)"),
    "template": ("template_variants", "log2(distinct captions sharing the caption template)",
                 "Webster 2023 (template verbatims)"),
    "specificity": ("words", "log2(1 + distinct words) / log2(33), ≤ 1", "Somepalli et al. 2023 (NeurIPS)"),
}

_WORDS_SQL = "len(list_distinct(regexp_extract_all(lower(s.caption), '\\p{L}[\\p{L}\\p{N}''’-]*')))"


def _risk_table(ws: Workspace, cfg: RunConfig) -> None:
    """TEMP table ``_risk``: one row per candidate sample with its features and risk."""
    w = cfg.probe.weights
    stripped = STRIP_SQL.replace("caption", "s.caption")  # all whitespace, not only spaces (\r\n of scraped captions)
    has_cap = f"(s.caption IS NOT NULL AND {stripped} <> '')"
    norm = NORM_SQL.replace("caption", "s.caption")
    where = "(i.status IS NULL OR i.status = 'ok')"
    if not cfg.probe.empty_prompt:
        where += f" AND {has_cap}"
    ws.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _risk_base AS
        SELECT s.sample_id, {has_cap} AS has_caption,
               CASE WHEN {has_cap} THEN {stripped} ELSE '' END AS prompt,
               CASE WHEN {has_cap} THEN {norm} ELSE '' END AS norm,
               c.cluster_id, coalesce(c.cluster_size, 1) AS cluster_size,
               CASE WHEN {has_cap} THEN coalesce(cs.caption_count, 1) ELSE 1 END AS caption_count,
               CASE WHEN {has_cap} THEN coalesce(cs.caption_group, s.sample_id) END AS caption_group,
               CASE WHEN {has_cap} THEN coalesce(cs.template_count, 1) ELSE 1 END AS template_count,
               CASE WHEN {has_cap} THEN coalesce(cs.template_variants, 1) ELSE 1 END AS template_variants,
               CASE WHEN {has_cap} THEN {_WORDS_SQL} ELSE 0 END AS words
        FROM samples s LEFT JOIN clusters c USING (sample_id) LEFT JOIN caption_stats cs USING (sample_id)
             LEFT JOIN images i USING (sample_id)
        WHERE {where}""")
    ws.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _risk AS
        WITH f AS (
            SELECT *, CASE WHEN has_caption
                           THEN count(*) OVER (PARTITION BY coalesce(cluster_id, sample_id), caption_group)
                           ELSE 1 END AS pair_count
            FROM _risk_base),
        g AS (  -- each duplicate in one feature (module doc); greatest() only guards the log
            SELECT *, log2(greatest(1, 1 + cluster_size - pair_count)) AS f_image_duplicates,
                   log2(greatest(1, 1 + caption_count - pair_count)) AS f_caption_duplicates,
                   log2(pair_count) AS f_pair_duplicates,
                   log2(template_variants) AS f_template,
                   least(1.0, log2(1 + words) / log2(33)) AS f_specificity
            FROM f)
        SELECT *,
               {w.image_duplicates} * f_image_duplicates + {w.caption_duplicates} * f_caption_duplicates
               + {w.pair_duplicates} * f_pair_duplicates + {w.template} * f_template
               + {w.specificity} * f_specificity AS risk
        FROM g""")
    ws.con.execute("DROP TABLE _risk_base")


def reasons_of(row: dict, cfg: RunConfig) -> list[dict[str, Any]]:
    """The reasons of one ``_risk`` row: [{reason, value (the raw count or word count), feature,
    weight, contribution, definition, source}], largest contribution first, zero ones left out."""
    w = cfg.probe.weights.model_dump()
    out = []
    for name, (col, definition, source) in REASONS.items():
        feat = float(row[f"f_{name}"])
        contrib = w[name] * feat
        if contrib <= 0:
            continue
        out.append({"reason": name, "value": int(row[col]), "feature": round(feat, 6), "weight": w[name],
                    "contribution": round(contrib, 6), "definition": definition, "source": source})
    return sorted(out, key=lambda r: (-r["contribution"], r["reason"]))


def references(ws: Workspace, picks: list[tuple[str, int]], limit: int) -> dict[str, list[int]]:
    """Reference training samples of each prompt (see module doc), at most ``limit`` each, in one query.

    Args:
        picks: (normalised prompt, representative sample_id) per probe; reads TEMP table ``_risk``.

    Returns:
        normalised prompt → sample_ids (the representative first).
    """
    import pyarrow as pa

    ws.con.register("_picks", pa.table({"norm": [p[0] for p in picks], "rep": [int(p[1]) for p in picks]}))
    try:
        rows = ws.q(
            """WITH own AS (SELECT p.norm, p.rep, r.sample_id, r.cluster_id FROM _picks p JOIN _risk r USING (norm)),
                    members AS (
                        SELECT o.norm, o.rep, o.sample_id AS via, coalesce(c.sample_id, o.sample_id) AS sample_id
                        FROM own o LEFT JOIN clusters c ON c.cluster_id = o.cluster_id),
                    agg AS (SELECT norm, rep, sample_id, min(CASE WHEN via = rep THEN 0 ELSE 1 END) AS grp,
                                   min(via) AS first_via
                            FROM members GROUP BY norm, rep, sample_id),
                    ranked AS (SELECT *, row_number() OVER (PARTITION BY norm ORDER BY (sample_id = rep) DESC, grp,
                                                            first_via, sample_id) AS n
                               FROM agg)
               SELECT norm, list(sample_id ORDER BY n) FROM ranked WHERE n <= ? GROUP BY norm""",
            [limit],
        )
    finally:
        ws.con.unregister("_picks")
    return {r[0]: [int(x) for x in r[1]] for r in rows}


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    """Rank prompts and store the top ``probe.top_k`` (see module doc).

    Writes table ``probes`` (rows with ``origin = 'select'`` are replaced; imported prompts stay
    unless selected now) and ``out/probes.parquet`` (probe_id, rank, prompt, sample_ids, risk,
    reasons as JSON text, cluster_size, caption_count, pair_count, template_count, specificity,
    n_samples).

    Returns:
        counters: candidates (samples), prompts (distinct), selected, empty_prompt_selected,
        top (the first 10: rank, prompt, risk, cluster_size, caption_count), weights.

    Raises:
        CurateError: dedup has not run successfully (clusters and caption statistics are needed).
    """
    if ws.last_run("dedup") is None:
        raise CurateError("probe select needs duplicate clusters and caption statistics: run `curate dedup` "
                          "(or `curate run CONFIG.yaml`) first")
    pc = cfg.probe
    _risk_table(ws, cfg)
    cand = ws.q("SELECT count(*), count(DISTINCT norm) FROM _risk")[0]
    cols = ["sample_id", "prompt", "norm", "cluster_id", "cluster_size", "caption_count", "pair_count",
            "template_count", "template_variants", "words", "f_image_duplicates", "f_caption_duplicates",
            "f_pair_duplicates", "f_template", "f_specificity", "risk", "n_samples"]
    top = ws.q(
        f"""WITH ranked AS (
                SELECT *, row_number() OVER (PARTITION BY norm ORDER BY risk DESC, sample_id) AS r,
                       count(*) OVER (PARTITION BY norm) AS n_samples
                FROM _risk)
            SELECT {', '.join(cols)} FROM ranked WHERE r = 1
            ORDER BY risk DESC, n_samples DESC, norm LIMIT ?""",
        [pc.top_k],
    )
    rows = []
    refs_of = references(ws, [(t[cols.index("norm")], t[0]) for t in top], pc.max_references)
    for rank, t in enumerate(top, start=1):
        d = dict(zip(cols, t))
        refs = refs_of[d["norm"]]
        rows.append({
            "probe_id": probe_id(d["prompt"]), "prompt": d["prompt"], "rank": rank, "risk": float(d["risk"]),
            "reasons": reasons_of(d, cfg), "sample_ids": refs, "representative_sample_id": int(d["sample_id"]),
            "cluster_size": int(d["cluster_size"]), "caption_count": int(d["caption_count"]),
            "pair_count": int(d["pair_count"]), "template_count": int(d["template_count"]),
            "specificity": float(d["f_specificity"]), "n_samples": int(d["n_samples"]),
        })
    ws.con.execute("DROP TABLE _risk")
    table = _arrow_table(rows)
    with ws.transaction() as con:  # one set-based insert: top_k may be every prompt of the catalog
        con.register("_new_probes", table)
        try:
            con.execute("DELETE FROM probes WHERE origin = 'select'")
            con.execute("DELETE FROM probes WHERE probe_id IN (SELECT probe_id FROM _new_probes)")
            con.execute("""INSERT INTO probes
                           SELECT probe_id, prompt, rank, risk, CAST(reasons AS JSON), sample_ids,
                                  representative_sample_id, cluster_size, caption_count, pair_count,
                                  template_count, specificity, n_samples, 'select'
                           FROM _new_probes""")
        finally:
            con.unregister("_new_probes")
    _write_table(ws, table)
    return {
        "candidates": int(cand[0]), "prompts": int(cand[1]), "selected": len(rows),
        "empty_prompt_selected": any(r["prompt"] == "" for r in rows),
        "weights": pc.weights.model_dump(),
        "top": [{k: r[k] for k in ("rank", "prompt", "risk", "cluster_size", "caption_count")} for r in rows[:10]],
        "output": str(ws.out / "probes.parquet"),
    }


def write_parquet(ws: Workspace, rows: list[dict]) -> None:
    """``out/probes.parquet`` (atomic): one row per selected probe, ``reasons`` as JSON text."""
    _write_table(ws, _arrow_table(rows))


def _arrow_table(rows: list[dict]):
    import pyarrow as pa

    return pa.table({
        "probe_id": pa.array([r["probe_id"] for r in rows], pa.int64()),
        "rank": pa.array([r["rank"] for r in rows], pa.int32()),
        "prompt": pa.array([r["prompt"] for r in rows], pa.string()),
        "sample_ids": pa.array([r["sample_ids"] for r in rows], pa.list_(pa.int64())),
        "risk": pa.array([r["risk"] for r in rows], pa.float64()),
        "reasons": pa.array([json.dumps(r["reasons"], ensure_ascii=False) for r in rows], pa.string()),
        "representative_sample_id": pa.array([r["representative_sample_id"] for r in rows], pa.int64()),
        "cluster_size": pa.array([r["cluster_size"] for r in rows], pa.int32()),
        "caption_count": pa.array([r["caption_count"] for r in rows], pa.int32()),
        "pair_count": pa.array([r["pair_count"] for r in rows], pa.int32()),
        "template_count": pa.array([r["template_count"] for r in rows], pa.int32()),
        "specificity": pa.array([r["specificity"] for r in rows], pa.float64()),
        "n_samples": pa.array([r["n_samples"] for r in rows], pa.int32()),
    })


def _write_table(ws: Workspace, t) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(t, buf)
    atomic_write_bytes(ws.out / "probes.parquet", buf.getvalue())
