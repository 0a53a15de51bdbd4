"""Per-rule coverage: what each rule could check, what it could not, and what it did with that.

A rule that cannot read what it reads — a NULL ``punsafe`` (folder, tar and fondant sources
have none), a sample without a caption, an image the classifier never scored — has not
checked that sample; counting such a sample as a pass would make a check that could not run
look like a clean result. So for every rule of every pack (hits or not) the flag stage stores,
in the catalog table ``rule_stats``:

- ``checked``: samples in the rule's scope whose value the rule could read (it decided on them);
- ``unknown``: samples in its scope whose value is unknown (:func:`curate.stages.flag.evaluate.known_sql`);
  ``checked + unknown`` is the scope: every sample, or a classifier rule's ``only_if_hit`` candidates;
- ``unknown_action``: what the rule did with the unknown ones — ``passed`` (not a hit; the pack's
  ``unknown: pass``, and the only behaviour of kinds without an ``unknown`` key), or, with
  ``unknown: flag``, its action applied to them: ``removed`` / ``reviewed`` / ``tagged`` (they
  are then among its hits, with evidence saying the value is unknown);
- ``hits``: distinct samples the rule flagged (rows of ``flags``);

and per rule category (``category_stats``) ``unscored``: samples that *no* rule of that category
could check — e.g. ``nsfw`` counts samples with neither a ``punsafe`` score, nor an NSFW tag, nor
a NudeNet score, whatever the packs. ``curate export`` copies both into ``summary.json``
(``rules``, ``unscored``), and the report shows them (:func:`rule_summary`).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from curate.errors import CurateError
from curate.stages.flag.evaluate import known_sql

#: bump when what ``rule_stats`` holds changes: part of the flag stage's digest, so a catalog
#: flagged by an older curate is flagged again by the next run
COVERAGE_VERSION = 1

#: ``unknown: flag`` → what the rule's action did to the unknown samples
DONE = {"remove": "removed", "review": "reviewed", "tag": "tagged"}

#: the keys of one entry of ``summary.json``'s ``rules`` (and of a ``rule_stats`` row)
FIELDS = ("pack", "rule_id", "category", "kind", "reads", "action", "checked", "unknown", "unknown_action", "hits")


def reads(rule) -> str:
    """What a rule reads, in words (``punsafe``, ``caption``, ``nudenet nsfw score``, …)."""
    kind = rule.kind
    if kind in ("caption_regex", "caption_words"):
        return "caption"
    if kind == "url_regex":
        return "url"
    if kind == "domain_list":
        return "url host"
    if kind in ("metadata_threshold", "metadata_value"):
        return rule.column
    if kind == "image_size":
        return "image width and height"
    if kind == "classifier_score":
        return f"{rule.classifier} {rule.label} score"
    if kind == "ocr_text":
        return "OCR text (rapidocr)"
    return "image embedding"  # retrieval


def unknown_action(rule) -> str:
    """``passed``, or with ``unknown: flag`` the rule's action done (``removed`` / ``reviewed`` / ``tagged``)."""
    return DONE[rule.action] if getattr(rule, "unknown", "pass") == "flag" else "passed"


def measure(con, packs: Iterable) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Coverage of every rule of ``packs`` over the current catalog; the rules' ``flags`` rows
    must already be written (hits are counted from them).

    Args:
        con: a DuckDB connection to the catalog (the flag stage's transaction).
        packs: loaded packs (:class:`curate.stages.flag.rules.Pack`); retrieval rules need
            :func:`curate.stages.flag.retrieval.prepare_retrieval` first (its temp tables).

    Returns:
        (rules, unscored): one dict per rule with :data:`FIELDS` (counts are samples, int ≥ 0),
        sorted by pack and rule id; and category → samples no rule of it could check.
    """
    rules, known_by_cat = [], defaultdict(list)
    for pack in packs:
        for rule in pack.rules:
            k = known_sql(rule)
            checked, unknown = con.execute(
                f"SELECT count(*) FILTER (known), count(*) FILTER (NOT known) FROM ({k})").fetchone()
            hits = con.execute("SELECT count(DISTINCT sample_id) FROM flags WHERE holder IS NULL AND pack = ? "
                               "AND rule_id = ?", [pack.pack, rule.id]).fetchone()[0]
            rules.append(dict(pack=pack.pack, rule_id=rule.id, category=rule.category, kind=rule.kind,
                              reads=reads(rule), action=rule.action, checked=int(checked), unknown=int(unknown),
                              unknown_action=unknown_action(rule), hits=int(hits)))
            known_by_cat[rule.category].append(k)
    unscored = {}
    for cat, ks in sorted(known_by_cat.items()):
        union = " UNION ".join(f"SELECT sample_id FROM ({k}) WHERE known" for k in ks)
        unscored[cat] = int(con.execute(
            f"SELECT count(*) FROM samples WHERE sample_id NOT IN ({union})").fetchone()[0])
    rules.sort(key=lambda r: (r["pack"], r["rule_id"]))
    return rules, unscored


def store(con, rules: list[dict[str, Any]], unscored: dict[str, int]) -> None:
    """Replace ``rule_stats`` and ``category_stats`` with :func:`measure`'s result."""
    con.execute("DELETE FROM rule_stats")
    con.execute("DELETE FROM category_stats")
    if rules:
        con.executemany(f"INSERT INTO rule_stats ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})",
                        [[r[f] for f in FIELDS] for r in rules])
    if unscored:
        con.executemany("INSERT INTO category_stats (category, unscored) VALUES (?, ?)", list(unscored.items()))


def rule_summary(ws) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(``rules``, ``unscored``) of ``summary.json`` from the catalog: as :func:`measure` returns them.

    Raises:
        CurateError: the catalog holds rule-pack flags of rules without coverage rows (flagged
            by a curate older than per-rule coverage): run ``curate flag --force``.
    """
    rows = ws.q(f"SELECT {', '.join(FIELDS)} FROM rule_stats ORDER BY pack, rule_id")
    rules = [{f: (int(v) if f in ("checked", "unknown", "hits") else v) for f, v in zip(FIELDS, r)} for r in rows]
    missing = ws.q("SELECT DISTINCT f.pack || '/' || f.rule_id FROM flags f WHERE f.holder IS NULL AND NOT EXISTS "
                   "(SELECT 1 FROM rule_stats r WHERE r.pack = f.pack AND r.rule_id = f.rule_id) ORDER BY 1")
    if missing:
        raise CurateError(f"the catalog has flags of {len(missing)} rule(s) without coverage counts "
                          f"({', '.join(m[0] for m in missing[:3])}{', …' if len(missing) > 3 else ''}): they were "
                          "flagged by an older curate; run `curate flag --force` (or `curate run`)")
    unscored = {c: int(n) for c, n in ws.q("SELECT category, unscored FROM category_stats ORDER BY category")}
    return rules, unscored

