"""Every rule kind → its SQL (hits; and which samples it could read, for coverage), from the
module that owns the kind.

``classifier_score`` and ``ocr_text`` read stored classifier scores
(:mod:`curate.stages.flag.classifiers`); every other kind is evaluated in the catalog
(:mod:`curate.stages.flag.basic`; ``retrieval`` rules read the temp tables that
:func:`curate.stages.flag.retrieval.prepare_retrieval` fills first).
"""
from __future__ import annotations

from curate.stages.flag import classifiers
from curate.stages.flag.basic import basic_known_sql, basic_sql


def rule_sql(rule) -> str:
    """SELECT sample_id, score DOUBLE, evidence VARCHAR for every sample the rule hits."""
    if classifiers.is_classifier_rule(rule):
        return classifiers.rule_sql(rule)
    return basic_sql(rule)


def known_sql(rule) -> str:
    """SELECT sample_id, known BOOLEAN for every sample in the rule's scope (every sample, or a
    classifier rule's ``only_if_hit`` candidates): ``known`` when the rule could read what it
    reads, so a NULL score, a missing column or an image never classified is *unknown*, not a
    pass (:mod:`curate.stages.flag.coverage`)."""
    if classifiers.is_classifier_rule(rule):
        return classifiers.known_sql(rule)
    return basic_known_sql(rule)
