"""flag: evaluate rule packs over the catalog → ``flags`` (one row per sample × rule hit).

Scores are stored as numbers and thresholds live in the packs, so changing a threshold
re-runs only this stage (and export/report), never hashing or embedding. The stage
rewrites all rule-pack flags on each run.
"""
from __future__ import annotations

import hashlib
from typing import Any

from curate.catalog import Workspace
from curate.config import RunConfig
from curate.rules import Pack, load_pack, pack_path, rule_sql


def load_packs(cfg: RunConfig, packs: list[str] | None = None) -> list[Pack]:
    return [load_pack(pack_path(p, cfg.base_dir)) for p in (packs if packs is not None else cfg.flag.packs)]


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    return [hashlib.sha256(pack_path(p, cfg.base_dir).read_bytes()).hexdigest() for p in cfg.flag.packs]


def hit_counts(ws: Workspace, packs: list[Pack]) -> dict[str, dict[str, Any]]:
    """Per ``pack/rule``: hits and distinct samples, without writing anything (``--dry-run``)."""
    out = {}
    for pack in packs:
        for rule in pack.rules:
            n, s = ws.q(f"SELECT count(*), count(DISTINCT sample_id) FROM ({rule_sql(rule)})")[0]
            out[f"{pack.pack}/{rule.id}"] = {"category": rule.category, "action": rule.action, "hits": int(n), "samples": int(s)}
    return out


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    packs = load_packs(cfg)
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
    by_action = dict(ws.q("SELECT action, count(DISTINCT sample_id) FROM flags GROUP BY action ORDER BY action"))
    return {"packs": [p.pack for p in packs], "hits_per_rule": per_rule, "samples_by_action": by_action}
