"""SQL and RE2 text helpers shared by rule packs, classifier rules and claims.

Nothing here knows a rule kind: :mod:`curate.stages.flag.rules` builds a rule's patterns
from these, and :mod:`curate.stages.flag.basic`, :mod:`curate.stages.flag.classifiers` and
:mod:`curate.stages.flag.claims` quote them into SQL.
"""
from __future__ import annotations

import re


def lit(s: str) -> str:
    """``s`` as a SQL string literal (single quotes doubled)."""
    return "'" + s.replace("'", "''") + "'"


def re2_escape(s: str) -> str:
    """``s`` with RE2's special characters escaped (matches ``s`` literally)."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", s)


def words_pattern(words: list[str], case_sensitive: bool) -> str:
    """RE2 pattern: any of ``words`` (stripped) at Unicode word boundaries — a letter, digit or
    underscore never adjoins the match; the word is capture group 1; ``(?i)`` unless
    ``case_sensitive``."""
    alts = "|".join(re2_escape(w.strip()) for w in words)
    pat = rf"(?:^|[^\pL\pN_])((?:{alts}))(?:$|[^\pL\pN_])"
    return pat if case_sensitive else "(?i)" + pat


def any_pattern(patterns: list[str]) -> str:
    """RE2 pattern matching any of ``patterns`` (each in a non-capturing group)."""
    return "|".join(f"(?:{p})" for p in patterns)
