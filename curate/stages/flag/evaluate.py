"""Every rule kind → its SQL, from the module that owns the kind.

``classifier_score`` and ``ocr_text`` read stored classifier scores
(:mod:`curate.stages.flag.classifiers`); every other kind is evaluated in the catalog
(:mod:`curate.stages.flag.basic`; ``retrieval`` rules read the temp tables that
:func:`curate.stages.flag.retrieval.prepare_retrieval` fills first).
"""
from __future__ import annotations

from curate.stages.flag import classifiers
from curate.stages.flag.basic import basic_sql


def rule_sql(rule) -> str:
    """SELECT sample_id, score DOUBLE, evidence VARCHAR for every sample the rule hits."""
    if classifiers.is_classifier_rule(rule):
        return classifiers.rule_sql(rule)
    return basic_sql(rule)
