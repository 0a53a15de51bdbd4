"""Rule packs (``rules/*.yaml``): a closed, validated schema and SQL evaluation.

A pack::

    pack: laion-safety
    description: ...
    sources: [where the lists and thresholds come from]
    rules:
      - id: nsfw-punsafe
        kind: metadata_threshold
        category: nsfw          # copyright | watermark | nsfw | sensitive | opt_out | quality
        action: remove          # remove | review | tag
        column: punsafe
        op: ">"
        value: 0.5
        unknown: pass           # required: what a NULL/NaN score means (pass | flag)

Rule kinds: ``caption_regex``, ``caption_words``, ``url_regex``, ``domain_list``,
``metadata_threshold``, ``metadata_value``, ``image_size``. Captions are matched after
Unicode NFC normalisation and case-insensitively (unless ``case_sensitive``); word lists
match at Unicode word boundaries (letters/digits/underscore never adjoin the match).
Domains match the URL host or any subdomain of it (``cdn.example.co.uk`` is under
``example.co.uk``). Regexes are RE2 (DuckDB); they are checked when the pack is loaded.

Every rule yields rows (sample_id, score, evidence): the evidence says what matched.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curate.errors import ConfigError
from curate.resources import shipped_dir
from curate.yamlconf import load_yaml, validate

Category = Literal["copyright", "watermark", "nsfw", "sensitive", "opt_out", "quality"]
Action = Literal["remove", "review", "tag"]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    category: Category
    action: Action
    description: str | None = None


class CaptionRegex(_Rule):
    kind: Literal["caption_regex"]
    patterns: list[str] = Field(min_length=1)
    case_sensitive: bool = False


class CaptionWords(_Rule):
    kind: Literal["caption_words"]
    words: list[str] = Field(min_length=1)
    case_sensitive: bool = False


class UrlRegex(_Rule):
    kind: Literal["url_regex"]
    patterns: list[str] = Field(min_length=1)


class DomainList(_Rule):
    kind: Literal["domain_list"]
    domains: list[str] = Field(min_length=1)

    @field_validator("domains")
    @classmethod
    def _norm(cls, v: list[str]) -> list[str]:
        out = []
        for d in v:
            d = d.strip().lower().rstrip(".")
            if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", d):
                raise ValueError(f"{d!r} is not a domain name (write e.g. example.co.uk, no scheme or path)")
            out.append(d)
        return out


class MetadataThreshold(_Rule):
    kind: Literal["metadata_threshold"]
    column: Literal["punsafe", "pwatermark", "aesthetic", "similarity"]
    op: Literal[">", ">=", "<", "<="]
    value: float
    unknown: Literal["pass", "flag"]


class MetadataValue(_Rule):
    kind: Literal["metadata_value"]
    column: Literal["nsfw", "license"]
    values: list[str] = Field(min_length=1)


class ImageSize(_Rule):
    kind: Literal["image_size"]
    min_side: int | None = Field(None, ge=1, description="px; smaller short side is a hit")
    max_aspect: float | None = Field(None, ge=1.0, description="long/short side above this is a hit")


Rule = Annotated[
    Union[CaptionRegex, CaptionWords, UrlRegex, DomainList, MetadataThreshold, MetadataValue, ImageSize],
    Field(discriminator="kind"),
]


class Pack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pack: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str
    sources: list[str] = []
    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique(cls, v):
        ids = [r.id for r in v]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"rule ids must be unique in a pack; repeated: {dup}")
        return v


def pack_path(name_or_path: str, base_dir: str | Path = ".") -> Path:
    """A shipped pack name (``laion-safety``) or a YAML path (relative to ``base_dir``)."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        p = Path(name_or_path)
        return p if p.is_absolute() else (Path(base_dir) / p).resolve()
    p = shipped_dir("rules") / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in shipped_dir("rules").glob("*.yaml"))
        raise ConfigError(f"unknown rule pack {name_or_path!r}; shipped packs: {', '.join(known)}")
    return p


def load_pack(path: Path) -> Pack:
    """Load and validate a pack; regexes are compiled by DuckDB (RE2) to catch errors early.

    Raises:
        ConfigError: file, line and what is wrong.
    """
    import duckdb

    data, node = load_yaml(path)
    pack = validate(Pack, data, path, node)
    con = duckdb.connect()
    for k, rule in enumerate(pack.rules):
        for pat in _patterns(rule):
            try:
                con.execute("SELECT regexp_matches('', ?)", [pat])
            except duckdb.Error as e:
                from curate.yamlconf import _line_of

                line = _line_of(node, ("rules", k))
                raise ConfigError(f"{path}:{line}: rule {rule.id}: invalid regular expression {pat!r}: {e}") from None
    con.close()
    return pack


# ----------------------------------------------------------------------------------------------
# SQL


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _re2_escape(s: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", s)


def _patterns(rule) -> list[str]:
    if isinstance(rule, (CaptionRegex, UrlRegex)):
        pat = "|".join(f"(?:{p})" for p in rule.patterns)
        if isinstance(rule, UrlRegex) or not rule.case_sensitive:
            pat = "(?i)" + pat
        return [pat]
    if isinstance(rule, CaptionWords):
        alts = "|".join(_re2_escape(w.strip()) for w in rule.words)
        pat = rf"(?:^|[^\pL\pN_])((?:{alts}))(?:$|[^\pL\pN_])"
        return [pat if rule.case_sensitive else "(?i)" + pat]
    return []


HOST_SQL = (
    "rtrim(lower(regexp_extract(s.url, '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/:?#]+)', 1)), '.')"
)


def rule_sql(rule) -> str:
    """SELECT sample_id, score DOUBLE, evidence VARCHAR for every sample the rule hits."""
    if isinstance(rule, (CaptionRegex, CaptionWords)):
        pat = _lit(_patterns(rule)[0])
        grp = 1 if isinstance(rule, CaptionWords) else 0
        return (
            f"SELECT sample_id, 1.0 AS score, 'caption matches ' || {_lit(rule.id)} || ': \"' || "
            f"regexp_extract(nfc_normalize(s.caption), {pat}, {grp}) || '\"' AS evidence "
            f"FROM samples s WHERE s.caption IS NOT NULL AND regexp_matches(nfc_normalize(s.caption), {pat})"
        )
    if isinstance(rule, UrlRegex):
        pat = _lit(_patterns(rule)[0])
        return (
            f"SELECT sample_id, 1.0 AS score, 'url matches: \"' || regexp_extract(s.url, {pat}, 0) || '\"' AS evidence "
            f"FROM samples s WHERE s.url IS NOT NULL AND regexp_matches(s.url, {pat})"
        )
    if isinstance(rule, DomainList):
        doms = ", ".join(f"({_lit(d)})" for d in rule.domains)
        return (
            f"SELECT s.sample_id, 1.0 AS score, 'host ' || h.host || ' is under ' || d.domain AS evidence "
            f"FROM samples s JOIN (SELECT sample_id, {HOST_SQL} AS host FROM samples s WHERE s.url IS NOT NULL) h "
            f"USING (sample_id) JOIN (VALUES {doms}) d(domain) "
            f"ON h.host = d.domain OR suffix(h.host, '.' || d.domain)"
        )
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
        vals = ", ".join(_lit(v.upper()) for v in rule.values)
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
        if rule.max_aspect is not None:
            conds.append(f"greatest({w}, {h}) > {rule.max_aspect!r} * least({w}, {h})")
        if not conds:
            raise ConfigError(f"rule {rule.id}: image_size needs min_side or max_aspect")
        return (
            f"SELECT s.sample_id, CAST(greatest({w}, {h}) AS DOUBLE) / nullif(least({w}, {h}), 0) AS score, "
            f"'size ' || {w} || 'x' || {h} AS evidence FROM samples s LEFT JOIN images i USING (sample_id) "
            f"WHERE {w} IS NOT NULL AND {h} IS NOT NULL AND ({' OR '.join(conds)})"
        )
    raise TypeError(f"unhandled rule kind {type(rule).__name__}")  # pragma: no cover
