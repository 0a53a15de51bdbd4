"""Retrieval rules of rule packs (``kind: retrieval``): samples near reference images or text
concepts.

They are evaluated in Python before the SQL of the pack runs: :func:`prepare_retrieval` fills one
temp table per rule (one row per sample: best score, all evidence), which the rule's SQL
(:func:`curate.stages.flag.basic.basic_sql`) reads. Reference images match as in claims
(:func:`curate.stages.flag.references.reference_matches`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.errors import ConfigError
from curate.models.feeder import normalise
from curate.models.recipe import image_key, load_model
from curate.stages.flag.basic import retrieval_table
from curate.stages.flag.claims import image_files
from curate.stages.flag.references import reference_matches, vectors_above
from curate.stages.flag.rules import Retrieval
from curate.store.catalog import file_fingerprint


def retrieval_rows(ws, cfg, rule, base: str | Path) -> list[tuple]:
    """Hits of a ``retrieval`` rule: rows (sample_id, signal, score, evidence).

    Reference images match as in claims (sha256, mirror-aware pHash when the rule sets
    ``phash_max_distance``, embedding cosine ≥ ``min_cosine``); text concepts match by
    cosine(text vector, image vector) ≥ ``min_cosine`` in the open_clip model's joint space.

    Raises:
        ConfigError: missing reference files; text concepts with an image model that has no
            text tower (efficientnet_lite0, sscd) or no image embeddings in the catalog.
    """
    who = f"retrieval rule {rule.id!r}"
    rows: list[tuple] = []
    if rule.reference_images:
        refs = image_files(rule.reference_images, base, who)
        rows += [(sid, sig, sc, ev) for sid, sig, sc, ev, _ in
                 reference_matches(ws, cfg, refs, rule.phash_max_distance, rule.min_cosine, {})]
    if rule.text:
        key = image_key(cfg)
        if not ws.scalar("SELECT count(*) FROM embeddings WHERE model = ? AND status = 'ok'", [key]):
            raise ConfigError(f"{who}: no image embeddings under {key} in the catalog; run `curate embed` first")
        if not cfg.embed.model.startswith("open_clip:"):
            raise ConfigError(f"{who}: text concepts need an image model with a text tower in the same space "
                              f"(embed.model: open_clip:<arch>/<pretrained>); {cfg.embed.model} has none")
        model = load_model(cfg)
        t, ok = normalise(model.text.encode(list(rule.text)))
        T = np.ascontiguousarray(t[ok].T)
        texts = [x for x, g in zip(rule.text, ok) if g]
        for sid, c, sim in vectors_above(ws.embeddings_dir(key), T, rule.min_cosine):
            rows.append((sid, "text", round(sim, 4), f"cosine {sim:.3f} to text {texts[c]!r} ≥ {rule.min_cosine}"))
    return rows


def prepare_retrieval(ws, cfg, packs) -> dict[str, int]:
    """Evaluate every retrieval rule of ``packs`` into its temp table (one row per sample:
    best score, all evidence) and its scope table ``<table>_scope`` (sample_id, known: the
    sample has an image vector under the embedding key, or was matched by another signal —
    what :func:`curate.stages.flag.basic.basic_known_sql` reads). Returns hits per ``pack/rule``."""
    out = {}
    for pack in packs:
        for rule in pack.rules:
            if not isinstance(rule, Retrieval):
                continue
            rows = retrieval_rows(ws, cfg, rule, pack.base)
            t = retrieval_table(rule)
            ws.con.execute(f"CREATE OR REPLACE TEMP TABLE {t}_raw (sample_id BIGINT, signal VARCHAR, score DOUBLE, "
                           "evidence VARCHAR)")
            if rows:
                ws.con.executemany(f"INSERT INTO {t}_raw VALUES (?, ?, ?, ?)", rows)
            ws.con.execute(f"CREATE OR REPLACE TEMP TABLE {t} AS SELECT sample_id, "
                           "max(score) FILTER (signal <> 'phash') AS score, "
                           "string_agg(signal || ': ' || evidence, ' | ' ORDER BY signal, evidence) AS evidence "
                           f"FROM {t}_raw GROUP BY sample_id")
            ws.con.execute(f"DROP TABLE {t}_raw")
            # coverage (curate.stages.flag.coverage): compared = an image vector under the key, or a hit
            ws.con.execute(f"CREATE OR REPLACE TEMP TABLE {t}_scope AS SELECT s.sample_id, (e.sample_id IS NOT NULL "
                           f"OR h.sample_id IS NOT NULL) AS known FROM samples s LEFT JOIN (SELECT DISTINCT sample_id "
                           "FROM embeddings WHERE model = ? AND status = 'ok') e USING (sample_id) "
                           f"LEFT JOIN {t} h USING (sample_id)", [image_key(cfg)])
            out[f"{pack.pack}/{rule.id}"] = len({r[0] for r in rows})
    return out


def retrieval_fingerprint(packs) -> list:
    """Reference files (path, fingerprint) of every retrieval rule: part of the flag digest."""
    return [[str(p), file_fingerprint(p)] for pack in packs for rule in pack.rules if isinstance(rule, Retrieval)
            for p in image_files(rule.reference_images, pack.base, f"retrieval rule {rule.id!r}")]
