"""SQL of the rule kinds that need no image classifier: captions, URLs, domains, metadata,
image size, and ``retrieval`` rules' prepared hits.

Each rule becomes one ``SELECT sample_id, score, evidence`` (:func:`basic_sql`), and its scope
one ``SELECT sample_id, known`` (:func:`basic_known_sql`: which samples it could read, for
:mod:`curate.stages.flag.coverage`). A ``retrieval`` rule reads the temp
table :func:`retrieval_table` names, which :func:`curate.stages.flag.retrieval.prepare_retrieval`
fills first (it needs images and a model). Classifier rules select their candidates with this
module (``only_if_hit``), so it sits below :mod:`curate.stages.flag.classifiers`.
"""
from __future__ import annotations

import hashlib

from curate.errors import ConfigError
from curate.stages.flag.patterns import lit
from curate.stages.flag.rules import (CaptionRegex, CaptionWords, DomainList, ImageSize, MetadataThreshold,
                                      MetadataValue, Retrieval, UrlRegex, rule_patterns)
from curate.stages.flag.urls import domain_hits_sql, raw_host_sql


def retrieval_table(rule) -> str:
    """Name of the temp table :func:`curate.stages.flag.retrieval.prepare_retrieval` fills for a
    rule (read by :func:`basic_sql`)."""
    return "_retrieval_" + hashlib.sha256(rule.model_dump_json().encode()).hexdigest()[:16]


def basic_sql(rule) -> str:
    """SELECT sample_id, score DOUBLE, evidence VARCHAR for every sample the rule hits (any kind
    but ``classifier_score`` / ``ocr_text``: :func:`curate.stages.flag.classifiers.rule_sql`)."""
    if isinstance(rule, (CaptionRegex, CaptionWords)):
        pat = lit(rule_patterns(rule)[0])
        grp = 1 if isinstance(rule, CaptionWords) else 0
        return (
            f"SELECT sample_id, 1.0 AS score, 'caption matches ' || {lit(rule.id)} || ': \"' || "
            f"regexp_extract(nfc_normalize(s.caption), {pat}, {grp}) || '\"' AS evidence "
            f"FROM samples s WHERE s.caption IS NOT NULL AND regexp_matches(nfc_normalize(s.caption), {pat})"
        )
    if isinstance(rule, UrlRegex):
        pat = lit(rule_patterns(rule)[0])
        return (
            f"SELECT sample_id, 1.0 AS score, 'url matches: \"' || regexp_extract(s.url, {pat}, 0) || '\"' AS evidence "
            f"FROM samples s WHERE s.url IS NOT NULL AND regexp_matches(s.url, {pat})"
        )
    if isinstance(rule, DomainList):
        return (f"SELECT sample_id, 1.0 AS score, 'host ' || host || ' is under ' || domain AS evidence "
                f"FROM ({domain_hits_sql(rule.domains)})")
    if isinstance(rule, MetadataThreshold):
        col = f"s.{rule.column}"
        hit = f"{col} {rule.op} {rule.value!r}"
        unknown = f" OR {col} IS NULL" if rule.unknown == "flag" else ""
        return (
            f"SELECT sample_id, {col} AS score, CASE WHEN {col} IS NULL THEN '{rule.column} unknown (rule treats unknown as a hit)' "
            f"ELSE '{rule.column} = ' || round({col}, 4) || ' {rule.op} {rule.value}' END AS evidence "
            f"FROM samples s WHERE ({hit}){unknown}"
        )
    if isinstance(rule, MetadataValue):
        vals = ", ".join(lit(v.upper()) for v in rule.values)
        return (
            f"SELECT sample_id, 1.0 AS score, '{rule.column} = ' || s.{rule.column} AS evidence "
            f"FROM samples s WHERE upper(trim(s.{rule.column})) IN ({vals})"
        )
    if isinstance(rule, ImageSize):
        w = "coalesce(i.width, s.width)"
        h = "coalesce(i.height, s.height)"
        conds, ev = [], []
        if rule.min_side is not None:
            conds.append(f"least({w}, {h}) < {rule.min_side}")
            ev.append(f"CASE WHEN least({w}, {h}) < {rule.min_side} THEN 'short side ' || least({w}, {h}) "
                      f"|| ' px < {rule.min_side}' END")
        if rule.max_aspect is not None:
            conds.append(f"greatest({w}, {h}) > {rule.max_aspect!r} * least({w}, {h})")
            ev.append(f"CASE WHEN greatest({w}, {h}) > {rule.max_aspect!r} * least({w}, {h}) THEN 'aspect ' || "
                      f"round(CAST(greatest({w}, {h}) AS DOUBLE) / nullif(least({w}, {h}), 0), 2) || ' > {rule.max_aspect}' END")
        if not conds:
            raise ConfigError(f"rule {rule.id}: image_size needs min_side or max_aspect")
        return (
            f"SELECT s.sample_id, CAST(greatest({w}, {h}) AS DOUBLE) / nullif(least({w}, {h}), 0) AS score, "
            f"'size ' || {w} || 'x' || {h} || ': ' || concat_ws('; ', {', '.join(ev)}) AS evidence "
            f"FROM samples s LEFT JOIN images i USING (sample_id) "
            f"WHERE {w} IS NOT NULL AND {h} IS NOT NULL AND ({' OR '.join(conds)})"
        )
    if isinstance(rule, Retrieval):  # filled by curate.stages.flag.retrieval.prepare_retrieval (needs images and a model)
        return f"SELECT sample_id, score, evidence FROM {retrieval_table(rule)}"
    raise TypeError(f"unhandled rule kind {type(rule).__name__}")  # pragma: no cover


def basic_known_sql(rule) -> str:
    """SELECT sample_id, known BOOLEAN for every sample (the scope of a rule of these kinds):
    ``known`` when the sample has what the rule reads — a caption (caption rules), a URL (URL
    rules), a URL with a host (``domain_list``), a non-NULL value of the column (metadata rules;
    NaN scores are NULL from ingest on, an empty tag is unknown), a width and a height (decoded,
    else the metadata's: ``image_size``), a stored image vector or image bytes (``retrieval``:
    the scope table :func:`curate.stages.flag.retrieval.prepare_retrieval` fills)."""
    if isinstance(rule, (CaptionRegex, CaptionWords)):
        return "SELECT sample_id, caption IS NOT NULL AS known FROM samples"
    if isinstance(rule, UrlRegex):
        return "SELECT sample_id, url IS NOT NULL AS known FROM samples"
    if isinstance(rule, DomainList):
        return f"SELECT sample_id, coalesce({raw_host_sql('url')} <> '', false) AS known FROM samples"
    if isinstance(rule, MetadataThreshold):
        return f"SELECT sample_id, {rule.column} IS NOT NULL AS known FROM samples"
    if isinstance(rule, MetadataValue):
        return f"SELECT sample_id, nullif(trim({rule.column}), '') IS NOT NULL AS known FROM samples"
    if isinstance(rule, ImageSize):
        return ("SELECT s.sample_id, coalesce(i.width, s.width) IS NOT NULL AND coalesce(i.height, s.height) "
                "IS NOT NULL AS known FROM samples s LEFT JOIN images i USING (sample_id)")
    if isinstance(rule, Retrieval):
        return f"SELECT sample_id, known FROM {retrieval_table(rule)}_scope"
    raise TypeError(f"unhandled rule kind {type(rule).__name__}")  # pragma: no cover
