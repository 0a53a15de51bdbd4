"""``probe select``: rank prompts by replication risk → table ``probes`` + ``out/probes.parquet``.

Why these reasons (METHODS.md):

- **image duplicates** — Carlini et al., "Extracting Training Data from Diffusion Models"
  (USENIX Security 2023): the extracted images were concentrated in images duplicated ≥ 100
  times; their candidates were the most-duplicated training images. Somepalli et al., "Diffusion
  Art or Digital Forgery?" (CVPR 2023): matches above 0.5 had ~34 copies on average vs ~12 for a
  random image. Feature: ``log2(cluster_size)`` (curate's duplicate clusters; 1 outside one).
- **caption duplicates** — Somepalli et al., "Understanding and Mitigating Copying in Diffusion
  Models" (NeurIPS 2023): caption duplication matters as much as image duplication. Feature:
  ``log2(caption_count)`` (samples with the same normalised caption, :mod:`curate.media.captions`).
- **image and caption duplicated together** — same paper: duplicating image *and* caption
  together raises copying most. Feature: ``log2(pair_count)``, the samples of the sample's
  duplicate cluster (itself alone outside one) that carry the same normalised caption.
- **template captions** — Webster, "A Reproducible Extraction of Training Images from Diffusion
  Models" (2023): template verbatims. Feature: ``log2(template_count)`` when the template has
  ≥ 2 distinct captions (``caption_stats.template_variants``), else 0.
- **caption specificity** — Somepalli et al. (NeurIPS 2023): more specific captions copy more.
  Feature: ``log2(1 + w) / log2(33)`` clipped to [0, 1], w = distinct words (letter runs) in the
  caption: 1 word → 0.20, 5 → 0.51, 10 → 0.69, 32 or more → 1.

Per sample, ``risk = Σ weight_r · feature_r`` (weights in ``probe.weights``; log-additive, i.e.
the log of a weighted product of the counts). A sample whose image did not decode is not a
candidate (it cannot be trained on); a sample without an ``images`` row (metadata only) is.

A **probe** is one distinct prompt: samples are grouped by normalised caption (NFC, lower-case,
whitespace collapsed: :data:`curate.media.captions.NORM_SQL`). Samples without a caption are trained
under the empty prompt; with ``probe.empty_prompt`` they form the probe ``""`` (unconditional
generation), for which the caption reasons do not apply (features 0). The probe's risk is its
highest-risk sample's (the *representative*, ties → smallest sample_id), its prompt that
sample's caption (trimmed), its reasons that sample's. Reference samples: the representative,
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
from curate.media.captions import NORM_SQL
from curate.probes import probe_id
from curate.store.catalog import Workspace
from curate.store.fsio import atomic_write_bytes

REASONS = {
    "image_duplicates": ("cluster_size", "log2(duplicate-cluster size)", "Carlini et al. 2023; Somepalli et al. 2023"),
    "caption_duplicates": ("caption_count", "log2(samples with this caption)", "Somepalli et al. 2023 (NeurIPS)"),
    "pair_duplicates": ("pair_count", "log2(samples in the cluster with this caption)", "Somepalli et al. 2023 (NeurIPS)"),
    "template": ("template_count", "log2(samples sharing the caption template), ≥ 2 variants",
                 "Webster 2023 (template verbatims)"),
    "specificity": ("words", "log2(1 + distinct words) / log2(33), ≤ 1", "Somepalli et al. 2023 (NeurIPS)"),
}

_WORDS_SQL = "len(list_distinct(regexp_extract_all(lower(s.caption), '\\p{L}[\\p{L}\\p{N}''’-]*')))"


def _risk_table(ws: Workspace, cfg: RunConfig) -> None:
    """TEMP table ``_risk``: one row per candidate sample with its features and risk."""
    w = cfg.probe.weights
    has_cap = "(s.caption IS NOT NULL AND trim(s.caption) <> '')"
    norm = NORM_SQL.replace("caption", "s.caption")
    where = "(i.status IS NULL OR i.status = 'ok')"
    if not cfg.probe.empty_prompt:
        where += f" AND {has_cap}"
    ws.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _risk_base AS
        SELECT s.sample_id, {has_cap} AS has_caption,
               CASE WHEN {has_cap} THEN trim(s.caption) ELSE '' END AS prompt,
               CASE WHEN {has_cap} THEN {norm} ELSE '' END AS norm,
               c.cluster_id, coalesce(c.cluster_size, 1) AS cluster_size,
               CASE WHEN {has_cap} THEN coalesce(cs.caption_count, 1) ELSE 1 END AS caption_count,
               CASE WHEN {has_cap} THEN coalesce(cs.template_count, 1) ELSE 1 END AS template_count,
               CASE WHEN {has_cap} THEN coalesce(cs.template_variants, 1) ELSE 1 END AS template_variants,
               CASE WHEN {has_cap} THEN {_WORDS_SQL} ELSE 0 END AS words
        FROM samples s LEFT JOIN clusters c USING (sample_id) LEFT JOIN caption_stats cs USING (sample_id)
             LEFT JOIN images i USING (sample_id)
        WHERE {where}""")
    ws.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _risk AS
        WITH f AS (
            SELECT *, CASE WHEN has_caption THEN count(*) OVER (PARTITION BY coalesce(cluster_id, sample_id), norm)
                           ELSE 1 END AS pair_count
            FROM _risk_base)
        SELECT *,
               log2(cluster_size) AS f_image_duplicates,
               log2(caption_count) AS f_caption_duplicates,
               log2(pair_count) AS f_pair_duplicates,
               CASE WHEN template_variants >= 2 THEN log2(template_count) ELSE 0 END AS f_template,
               least(1.0, log2(1 + words) / log2(33)) AS f_specificity,
               {w.image_duplicates} * log2(cluster_size) + {w.caption_duplicates} * log2(caption_count)
               + {w.pair_duplicates} * log2(pair_count)
               + {w.template} * (CASE WHEN template_variants >= 2 THEN log2(template_count) ELSE 0 END)
               + {w.specificity} * least(1.0, log2(1 + words) / log2(33)) AS risk
        FROM f""")
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


def references(ws: Workspace, norm: str, representative: int, limit: int) -> list[int]:
    """Reference training samples of a prompt (see module doc), at most ``limit``."""
    rows = ws.q(
        """WITH own AS (SELECT sample_id, cluster_id FROM _risk WHERE norm = ?),
                members AS (
                    SELECT o.sample_id AS via, coalesce(c.sample_id, o.sample_id) AS sample_id
                    FROM own o LEFT JOIN clusters c ON c.cluster_id = o.cluster_id)
           SELECT sample_id, min(CASE WHEN via = ? THEN 0 ELSE 1 END) AS grp, min(via) AS first_via
           FROM members GROUP BY sample_id
           ORDER BY (sample_id = ?) DESC, grp, first_via, sample_id LIMIT ?""",
        [norm, representative, representative, limit],
    )
    return [int(r[0]) for r in rows]


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
    for rank, t in enumerate(top, start=1):
        d = dict(zip(cols, t))
        refs = references(ws, d["norm"], int(d["sample_id"]), pc.max_references)
        rows.append({
            "probe_id": probe_id(d["prompt"]), "prompt": d["prompt"], "rank": rank, "risk": float(d["risk"]),
            "reasons": reasons_of(d, cfg), "sample_ids": refs, "representative_sample_id": int(d["sample_id"]),
            "cluster_size": int(d["cluster_size"]), "caption_count": int(d["caption_count"]),
            "pair_count": int(d["pair_count"]), "template_count": int(d["template_count"]),
            "specificity": float(d["f_specificity"]), "n_samples": int(d["n_samples"]),
        })
    ws.con.execute("DROP TABLE _risk")
    with ws.transaction() as con:
        con.execute("DELETE FROM probes WHERE origin = 'select'")
        if rows:
            con.execute(f"DELETE FROM probes WHERE probe_id IN ({','.join(str(r['probe_id']) for r in rows)})")
        for r in rows:
            con.execute(
                "INSERT INTO probes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'select')",
                [r["probe_id"], r["prompt"], r["rank"], r["risk"], json.dumps(r["reasons"]), r["sample_ids"],
                 r["representative_sample_id"], r["cluster_size"], r["caption_count"], r["pair_count"],
                 r["template_count"], r["specificity"], r["n_samples"]],
            )
    write_parquet(ws, rows)
    return {
        "candidates": int(cand[0]), "prompts": int(cand[1]), "selected": len(rows),
        "empty_prompt_selected": any(r["prompt"] == "" for r in rows),
        "weights": pc.weights.model_dump(),
        "top": [{k: r[k] for k in ("rank", "prompt", "risk", "cluster_size", "caption_count")} for r in rows[:10]],
        "output": str(ws.out / "probes.parquet"),
    }


def write_parquet(ws: Workspace, rows: list[dict]) -> None:
    """``out/probes.parquet`` (atomic): one row per selected probe, ``reasons`` as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({
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
    buf = io.BytesIO()
    pq.write_table(t, buf)
    atomic_write_bytes(ws.out / "probes.parquet", buf.getvalue())
