"""flag: evaluate rule packs over the catalog → ``flags`` (one row per sample × rule hit),
then claims and opt-out lists (:mod:`curate.stages.flag.claims`) → ``claim_matches`` and one ``flags``
row per sample × claimant (``holder`` = the claimant).

Scores are stored as numbers and thresholds live in the packs, so changing a threshold
re-runs only this stage (and export/report), never hashing or embedding. The stage
rewrites all rule-pack flags on each run, and with them each rule's coverage — samples
checked, unknown (and what the rule did with them), hits — in ``rule_stats`` and
``category_stats`` (:mod:`curate.stages.flag.coverage`).
"""
from __future__ import annotations

import hashlib
from typing import Any

from curate.config import RunConfig
from curate.engine import get_engine
from curate.models.recipe import image_key
from curate.stages.flag.claims import fingerprint, load_all, run_claims
from curate.stages.flag.classifiers import ensure_scores, is_classifier_rule, pending, spec_of
from curate.stages.flag.coverage import COVERAGE_VERSION, measure, store, unknown_action
from curate.stages.flag.distributed import classify_batches
from curate.stages.flag.evaluate import known_sql, rule_sql
from curate.stages.flag.retrieval import prepare_retrieval, retrieval_fingerprint
from curate.stages.flag.rules import Pack, load_pack, pack_path
from curate.store.catalog import Workspace


def load_packs(cfg: RunConfig, packs: list[str] | None = None) -> list[Pack]:
    return [load_pack(pack_path(p, cfg.base_dir)) for p in (packs if packs is not None else cfg.flag.packs)]


def load_claims(cfg: RunConfig, claims: list[str] | None = None, opt_out: list[str] | None = None):
    return load_all(cfg.flag.claims if claims is None else claims, cfg.flag.opt_out if opt_out is None else opt_out,
                    cfg.base_dir)


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    packs: Any = [hashlib.sha256(pack_path(p, cfg.base_dir).read_bytes()).hexdigest() for p in cfg.flag.packs]
    loaded = load_packs(cfg)
    # classifier keys carry the package versions: upgrading nudenet / rapidocr re-runs flag
    keys = sorted({spec_of(r).key for p in loaded for r in p.rules if is_classifier_rule(r)})
    # the coverage version: a catalog flagged before per-rule coverage (rule_stats) is flagged again
    packs = {"packs": packs, "coverage": COVERAGE_VERSION} | ({"classifiers": keys} if keys else {})
    refs = retrieval_fingerprint(loaded)
    claims = load_claims(cfg)
    if not claims and not refs:
        return packs
    # reference images are matched with the dedup thresholds and the embedding model's vectors
    return {"packs": packs, "claims": fingerprint(claims), "retrieval": refs, "embedding_key": image_key(cfg),
            "dedup": cfg.dedup.model_dump(mode="json")}


def hit_counts(ws: Workspace, packs: list[Pack], cfg: RunConfig | None = None) -> dict[str, dict[str, Any]]:
    """Per ``pack/rule``: hits, distinct samples, and coverage — ``checked``, ``unknown``,
    ``unknown_action`` (:mod:`curate.stages.flag.coverage`) — without writing anything (``--dry-run``).

    Classifier rules are evaluated on the scores already stored (nothing is classified);
    ``unscored`` counts their candidates still to classify, which count as unknown here."""
    if cfg is not None:
        prepare_retrieval(ws, cfg, packs)  # temp tables only
    out = {}
    for pack in packs:
        for rule in pack.rules:
            n, s = ws.q(f"SELECT count(*), count(DISTINCT sample_id) FROM ({rule_sql(rule)})")[0]
            checked, unknown = ws.q(f"SELECT count(*) FILTER (known), count(*) FILTER (NOT known) FROM ({known_sql(rule)})")[0]
            out[f"{pack.pack}/{rule.id}"] = {"category": rule.category, "action": rule.action, "hits": int(n), "samples": int(s),
                                             "checked": int(checked), "unknown": int(unknown),
                                             "unknown_action": unknown_action(rule)}
            if is_classifier_rule(rule):  # dry-run computes no scores: candidates not yet classified count as unknown
                out[f"{pack.pack}/{rule.id}"]["unscored"] = pending(ws, rule)
    return out


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    packs = load_packs(cfg)
    prepare_retrieval(ws, cfg, packs)  # retrieval rules: reference images / text concepts → temp tables
    # classifier rules read stored scores: compute missing ones first (engine: ray → in a Ray actor pool)
    sec = cfg.flag
    batches = ((lambda ws, spec, todo, n, max_pixels: classify_batches(ws, sec, spec, todo, n, max_pixels))
               if get_engine(sec.engine).distributed else None)
    classifiers = ensure_scores(ws, packs, max_pixels=cfg.hash.max_pixels, batches=batches)
    per_rule: dict[str, int] = {}
    with ws.transaction() as con:
        con.execute("DELETE FROM flags WHERE holder IS NULL")
        for pack in packs:
            for rule in pack.rules:
                con.execute(
                    "INSERT INTO flags SELECT sample_id, ?, ?, ?, ?, score, evidence, NULL "
                    f"FROM ({rule_sql(rule)})",
                    [pack.pack, rule.id, rule.category, rule.action],
                )
                per_rule[f"{pack.pack}/{rule.id}"] = int(
                    ws.scalar("SELECT count(*) FROM flags WHERE pack = ? AND rule_id = ?", [pack.pack, rule.id])
                )
        rules, unscored = measure(con, packs)  # per-rule coverage: checked, unknown, hits (rule_stats)
        store(con, rules, unscored)
    claims = run_claims(ws, cfg, load_claims(cfg))["claimants"]
    by_action = dict(ws.q("SELECT action, count(DISTINCT sample_id) FROM flags GROUP BY action ORDER BY action"))
    return {"packs": [p.pack for p in packs], "hits_per_rule": per_rule, "claimants": claims,
            "samples_by_action": by_action, "classifiers": classifiers, "unscored": unscored,
            "rules": [{k: r[k] for k in ("pack", "rule_id", "action", "checked", "unknown", "unknown_action", "hits")}
                      for r in rules]}
