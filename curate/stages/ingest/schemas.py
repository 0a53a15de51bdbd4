"""Metadata layouts: declarative column mappings in ``schemas/*.yaml`` and auto-detection.

Each layout maps canonical columns (below) to the alternative names a source file may use.
Detection (``--schema auto``): a layout is a candidate when its file format matches and
every one of its ``required`` canonical columns is present in the file; ``generic`` layouts
(``url_caption``, ``image_text``) are candidates only when no specific layout fits; the
candidate mapping the most columns wins; a tie is an error naming the candidates; the winner
also maps any other column whose exact name a layout gives to a canonical column it leaves
unmapped (:func:`with_known_columns`: ``punsafe`` beside laion400m's columns). Names are
matched exactly (case-sensitive) after a check that no two columns of the file differ only
in case (case K01).

Headerless TSV layouts (CC3M ``caption<TAB>url``, CC12M ``url<TAB>caption``) are told apart
by content: the field holding URLs in the first rows (:func:`detect_headerless`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from curate.errors import ConfigError, InputError
from curate.resources import shipped_dir
from curate.yamlconf import load_model

# canonical column -> DuckDB type. Scores are DOUBLE; NaN becomes NULL at ingest.
CANONICAL: dict[str, str] = {
    "key": "VARCHAR",
    "url": "VARCHAR",
    "caption": "VARCHAR",
    "width": "INTEGER",
    "height": "INTEGER",
    "image_ref": "VARCHAR",
    "license": "VARCHAR",
    "nsfw": "VARCHAR",
    "similarity": "DOUBLE",
    "punsafe": "DOUBLE",
    "pwatermark": "DOUBLE",
    "aesthetic": "DOUBLE",
    "laion_hash": "BIGINT",
    "sha256_meta": "VARCHAR",
}

# columns that name an image file relative to a source's ``images`` folder, tried when a
# layout maps no image_ref itself
IMAGE_REF_ALIASES = ["file", "filepath", "file_path", "image_path"]


class Layout(BaseModel):
    """One ``schemas/<name>.yaml`` file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str
    reference: str | None = None
    required: list[str]
    columns: dict[str, list[str]]
    format: Literal["parquet", "tsv"] = "parquet"
    header: bool = Field(True, description="tsv only: first line holds column names")
    names: list[str] | None = Field(None, description="tsv without header: the column names, in file order")
    generic: bool = Field(False, description="candidate only when no specific layout fits")

    def model_post_init(self, _ctx) -> None:
        bad = [c for c in [*self.columns, *self.required] if c not in CANONICAL]
        if bad:
            raise ValueError(f"unknown canonical column(s) {bad}; known: {sorted(CANONICAL)}")
        if not self.header and not self.names:
            raise ValueError("a layout without header needs 'names'")
        if self.names and self.format != "tsv":
            raise ValueError("'names' is only for tsv layouts without header")


@dataclass(frozen=True)
class Mapping:
    """The outcome of matching a layout to a file: canonical -> source column name."""

    layout: str
    columns: dict[str, str]
    unmapped: list[str]

    def describe(self) -> str:
        pairs = ", ".join(f"{src}→{dst}" for dst, src in self.columns.items())
        extra = f"; into extra: {', '.join(self.unmapped)}" if self.unmapped else ""
        return f"layout {self.layout}: {pairs}{extra}"


def load_layouts(folder: Path | None = None) -> dict[str, Layout]:
    """All layouts in ``folder`` (default: the shipped ``schemas/``), keyed by name; parsed
    once per process and folder state.

    Raises:
        ConfigError: a layout file is invalid (file and line named).
    """
    folder = folder or shipped_dir("schemas")
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.yaml")))
    return dict(_load_layouts(folder, stamp))


@lru_cache(maxsize=8)
def _load_layouts(folder: Path, _stamp: tuple) -> dict[str, Layout]:
    layouts = {}
    for p in sorted(folder.glob("*.yaml")):
        lay = load_model(Layout, p)
        layouts[lay.name] = lay
    return layouts


def check_case_collisions(columns: list[str], where: str) -> None:
    """Raise InputError if two column names differ only in case (e.g. ``url`` and ``URL``)."""
    seen: dict[str, str] = {}
    for c in columns:
        k = c.casefold()
        if k in seen:
            raise InputError(
                f"{where}: columns {seen[k]!r} and {c!r} differ only in case; rename one "
                "(curate never guesses which is the real one)"
            )
        seen[k] = c
    dup = {c for c in columns if columns.count(c) > 1}
    if dup:
        raise InputError(f"{where}: repeated column name(s) {sorted(dup)}")


def match(layout: Layout, columns: list[str]) -> Mapping | None:
    """Map ``layout`` onto a file's ``columns``; None if a required column is missing."""
    present = set(columns)
    mapped: dict[str, str] = {}
    for canon, alts in layout.columns.items():
        for a in alts:
            if a in present:
                mapped[canon] = a
                break
    if any(r not in mapped for r in layout.required):
        return None
    if "image_ref" not in mapped:
        for a in IMAGE_REF_ALIASES:
            if a in present and a not in mapped.values():
                mapped["image_ref"] = a
                break
    used = set(mapped.values())
    return Mapping(layout.name, mapped, [c for c in columns if c not in used])


def resolve(
    columns: list[str], schema: str, where: str, layouts: dict[str, Layout] | None = None
) -> Mapping:
    """Choose the mapping for a file.

    Args:
        columns: the file's column names, in file order.
        schema: a layout name, or ``"auto"``.
        where: file name used in error messages.

    Raises:
        InputError: case-colliding columns; the named layout does not fit; no layout or
            more than one equally good layout fits (candidates named).
        ConfigError: unknown layout name.
    """
    check_case_collisions(columns, where)
    layouts = layouts or load_layouts()
    if schema != "auto":
        if schema not in layouts:
            raise ConfigError(f"unknown schema {schema!r}; known: {', '.join(sorted(layouts))} (or 'auto')")
        m = match(layouts[schema], columns)
        if m is None:
            lay = layouts[schema]
            missing = [r for r in lay.required if not any(a in columns for a in lay.columns[r])]
            raise InputError(f"{where}: does not fit schema {schema!r}: missing {missing}; columns are {columns}")
        return m
    usable = [lay for lay in layouts.values() if lay.header]  # headerless TSV layouts: detect_headerless
    cands = [m for lay in usable if not lay.generic and (m := match(lay, columns)) is not None]
    if not cands:
        cands = [m for lay in usable if lay.generic and (m := match(lay, columns)) is not None]
    if not cands:
        raise InputError(
            f"{where}: no known layout fits columns {columns}; name one with --schema "
            f"({', '.join(sorted(layouts))}) or add a file to schemas/"
        )
    best = max(len(m.columns) for m in cands)
    top = [m for m in cands if len(m.columns) == best]
    if len(top) > 1:
        raise InputError(
            f"{where}: ambiguous layout, candidates {[m.layout for m in top]} each map {best} columns; "
            "choose one with schema: in the config or --schema"
        )
    return with_known_columns(top[0], layouts)


#: canonical score columns that rules read: :func:`with_known_columns` maps them by their layouts' names
SCORE_COLUMNS = ("punsafe", "pwatermark", "aesthetic", "similarity")


def with_known_columns(m: Mapping, layouts: dict[str, Layout]) -> Mapping:
    """``m`` plus the file's unmapped columns whose exact name some layout gives to a score
    column (:data:`SCORE_COLUMNS`) that ``m`` leaves unmapped (a column named ``punsafe`` beside
    laion400m's columns is the NSFW score, not an ``extra`` field that no rule reads). A name that
    layouts give to different canonical columns stays in ``extra``; so do generic names such as
    ``hash``, whose meaning differs between datasets."""
    known: dict[str, set[str]] = {}
    for lay in layouts.values():
        for canon, alts in lay.columns.items():
            for a in alts:
                known.setdefault(a, set()).add(canon)
    cols, left = dict(m.columns), []
    for c in m.unmapped:
        canon = known.get(c, set())
        if len(canon) == 1 and (k := next(iter(canon))) not in cols and k in SCORE_COLUMNS:
            cols[k] = c
        else:
            left.append(c)
    return m if len(left) == len(m.unmapped) else Mapping(m.layout, cols, left)


URL_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#]+")


def detect_headerless(rows: list[list[str]], where: str, layouts: dict[str, Layout] | None = None) -> Layout | None:
    """Pick the headerless TSV layout whose ``url`` position holds the URLs of ``rows``.

    Args:
        rows: the first lines of the file split on tabs (a few hundred are plenty).

    Returns:
        The layout, or None when the first row looks like a header (no field of it is a URL
        while most later rows have one) — the caller then matches by column names.

    Raises:
        InputError: no headerless layout has its URL column where the URLs are, or several do.
    """
    layouts = layouts or load_layouts()
    rows = [r for r in rows if any(f.strip() for f in r)]
    if not rows:
        raise InputError(f"{where}: empty file")
    width = max(set(len(r) for r in rows), key=[len(r) for r in rows].count)
    hits = [sum(bool(URL_FIELD.match(r[i].strip())) for r in rows if len(r) > i) for i in range(width)]
    url_at = max(range(width), key=lambda i: hits[i])
    if hits[url_at] * 2 < len(rows):
        raise InputError(f"{where}: no tab-separated field holds URLs in most of the first {len(rows)} rows")
    if len(rows) > 1 and not any(URL_FIELD.match(f.strip()) for f in rows[0]):
        return None  # a header line
    cands = [
        lay for lay in layouts.values()
        if lay.format == "tsv" and not lay.header and len(lay.names or []) == width and lay.names.index("url") == url_at
    ]
    if len(cands) != 1:
        known = [f"{lay.name} ({' <TAB> '.join(lay.names or [])})" for lay in layouts.values() if lay.names]
        what = "no" if not cands else f"several ({[c.name for c in cands]})"
        raise InputError(
            f"{where}: {what} headerless layout has {width} fields with the URL in field {url_at + 1}; known: {known}"
        )
    return cands[0]
