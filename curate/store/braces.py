"""Brace patterns in input paths, as the shell expands them (before any globbing).

img2dataset, clip-retrieval and curate's own ``out/webdataset/index.json`` name shard sets as
``shards/{00000..00099}.tar``; ``{a,b}.parquet`` lists files. :func:`expand_braces` gives the
paths a pattern stands for, in the shell's order:

- ``{a,b,c}``: a comma list (each part may hold braces itself: ``{a,b{1..2}}``);
- ``{M..N}`` / ``{M..N..S}``: a numeric range, ascending or descending, with step ``S``;
  zero padding is kept (``{008..010}`` → ``008 009 010``: every number as wide as the wider
  end when either end starts with ``0``);
- anything else is literal: ``{a}``, ``{}``, an unmatched brace, a letter range ``{a..e}``.

Wildcards (``*``, ``?``, ``[…]``) are left for the glob that follows. A pattern that would
expand to more than :data:`MAX_EXPANSIONS` paths is refused (``{0..99999999}`` is a typo, not a
shard list).
"""
from __future__ import annotations

import re

MAX_EXPANSIONS = 100_000
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")


class _TooMany(Exception):
    pass


def _closing(s: str, start: int) -> tuple[int, list[str]] | None:
    """(index of the ``}`` matching the ``{`` at ``start``, the parts between top-level commas),
    or None when it is never closed."""
    depth, parts, last = 0, [], start + 1
    for i in range(start, len(s)):
        c = s[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i, parts + [s[last:i]]
        elif c == "," and depth == 1:
            parts.append(s[last:i])
            last = i + 1
    return None


def _range(body: str) -> list[str] | None:
    m = _RANGE.fullmatch(body)
    if not m:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    step = abs(int(m.group(3) or 1)) or 1
    if abs(b - a) // step + 1 > MAX_EXPANSIONS:
        raise _TooMany
    padded = any(re.match(r"-?0\d", g) for g in (m.group(1), m.group(2)))
    width = max(len(m.group(1)), len(m.group(2))) if padded else 0
    nums = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
    return [f"{n:0{width}d}" for n in nums]


def _expand(s: str) -> list[str]:
    i = 0
    while True:
        start = s.find("{", i)
        if start < 0:
            return [s]
        found = _closing(s, start)
        if found is None:  # never closed: a literal "{"
            i = start + 1
            continue
        end, parts = found
        alts = [a for p in parts for a in _expand(p)] if len(parts) > 1 else _range(parts[0])
        if alts is None:  # {a}, {}, {a..e}: literal; look for a brace expression after this "{"
            i = start + 1
            continue
        rest = _expand(s[end + 1:])
        if len(alts) * len(rest) > MAX_EXPANSIONS:
            raise _TooMany
        return [s[:start] + a + r for a in alts for r in rest]


def expand_braces(pattern: str) -> list[str]:
    """The paths ``pattern`` stands for (module doc); ``[pattern]`` when it has no brace expression.

    Raises:
        ValueError: more than :data:`MAX_EXPANSIONS` paths, naming the pattern.
    """
    if "{" not in pattern:
        return [pattern]
    try:
        return _expand(pattern)
    except _TooMany:
        raise ValueError(f"{pattern!r}: brace expansion gives more than {MAX_EXPANSIONS} paths") from None
