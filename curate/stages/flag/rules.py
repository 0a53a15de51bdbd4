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
Listed domains are reduced to their registrable domain (Public Suffix List, see
:mod:`curate.stages.flag.urls`) and match the URL host or any subdomain of it (``cdn.example.co.uk`` is
under ``example.co.uk``); a bare public suffix (``co.uk``) is refused. Regexes are RE2 (DuckDB); they are checked when the pack is loaded.

``classifier_score`` (NudeNet) and ``ocr_text`` (RapidOCR text, matched like captions) read
scores that the flag stage computes first and stores in ``image_scores``; ``only_if_hit``
limits them to the samples hit by other rules of the pack (see :mod:`curate.stages.flag.classifiers`).

Every rule yields rows (sample_id, score, evidence): the evidence says what matched.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

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
        from curate.stages.flag.urls import normalise_domain

        return sorted({normalise_domain(d) for d in v})  # registrable domains (curate.stages.flag.urls)


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


class _ClassifierRule(_Rule):
    only_if_hit: list[str] | None = Field(
        None, min_length=1, description="ids of rules of the same pack (not classifier rules): classify and "
        "evaluate only the samples any of them hits; default every sample with a decodable image")
    _candidates: list = PrivateAttr(default_factory=list)  # the named rules, set by Pack validation


class ClassifierScore(_ClassifierRule):
    kind: Literal["classifier_score"]
    classifier: Literal["nudenet"]
    label: str = Field("nsfw", description="'nsfw' (max over the exposed classes) or one NudeNet class name")
    op: Literal[">", ">=", "<", "<="]
    value: float = Field(ge=0.0, le=1.0)
    unknown: Literal["pass", "flag"]

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        from curate.stages.flag.classifiers import NUDENET_CLASSES

        if v != "nsfw" and v not in NUDENET_CLASSES:
            raise ValueError(f"{v!r} is not a nudenet label; use nsfw or one of {', '.join(NUDENET_CLASSES)}")
        return v


class OcrText(_ClassifierRule):
    kind: Literal["ocr_text"]
    words: list[str] = []
    patterns: list[str] = []
    case_sensitive: bool = False
    max_side: int = Field(640, ge=32, le=4096, description="px: images are downscaled to this long side for OCR")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="OCR lines below this confidence are dropped")
    unknown: Literal["pass", "flag"] = "pass"

    @model_validator(mode="after")
    def _needs_something(self):
        if not self.words and not self.patterns:
            raise ValueError("ocr_text needs words and/or patterns")
        return self


class Retrieval(_Rule):
    """Samples near reference images or text concepts (evaluated in Python, not SQL: see
    :func:`retrieval_rows`). Reference paths are relative to the pack file."""

    kind: Literal["retrieval"]
    reference_images: list[str] = Field(default_factory=list, description="image files or folders")
    text: list[str] = Field(default_factory=list,
                            description="concepts, e.g. 'a photo of Mickey Mouse'; needs an open_clip image model")
    min_cosine: float = Field(gt=-1.0, le=1.0, description="cosine similarity threshold (image or text vs sample)")
    phash_max_distance: int | None = Field(None, ge=0, le=32,
                                           description="also a pHash hit within this many bits of a reference")

    @field_validator("text")
    @classmethod
    def _texts(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("text concepts must not be empty")
        return v

    @model_validator(mode="after")
    def _something(self):
        if not (self.reference_images or self.text):
            raise ValueError("a retrieval rule needs reference_images or text")
        return self


Rule = Annotated[
    Union[CaptionRegex, CaptionWords, UrlRegex, DomainList, MetadataThreshold, MetadataValue, ImageSize,
          ClassifierScore, OcrText, Retrieval],
    Field(discriminator="kind"),
]


class Pack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pack: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str
    sources: list[str] = []
    rules: list[Rule] = Field(min_length=1)
    _base: str = PrivateAttr(".")  # the pack file's folder: relative reference paths start here

    @property
    def base(self) -> str:
        return self._base

    @field_validator("rules")
    @classmethod
    def _unique(cls, v):
        ids = [r.id for r in v]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"rule ids must be unique in a pack; repeated: {dup}")
        return v

    @field_validator("rules")
    @classmethod
    def _only_if_hit(cls, v):
        by_id = {r.id: r for r in v}
        for r in v:
            refs = getattr(r, "only_if_hit", None) or []
            for ref in refs:
                if ref not in by_id or ref == r.id:
                    raise ValueError(f"rule {r.id}: only_if_hit names {ref!r}, which is not another rule of this pack "
                                     f"(rules: {', '.join(sorted(by_id))})")
                if isinstance(by_id[ref], _ClassifierRule):
                    raise ValueError(f"rule {r.id}: only_if_hit names {ref!r}, a {by_id[ref].kind} rule; name rules "
                                     "that need no classifier (captions, URLs, metadata, size)")
            if refs:
                r._candidates = [by_id[i] for i in refs]
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
    pack._base = str(Path(path).resolve().parent)
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
    if isinstance(rule, OcrText):
        from curate.stages.flag.classifiers import ocr_patterns

        return [p for p in ocr_patterns(rule) if p]
    return []




def rule_sql(rule) -> str:
    """SELECT sample_id, score DOUBLE, evidence VARCHAR for every sample the rule hits."""
    if isinstance(rule, (ClassifierScore, OcrText)):
        from curate.stages.flag.classifiers import rule_sql as classifier_rule_sql

        return classifier_rule_sql(rule)
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
        from curate.stages.flag.urls import domain_hits_sql

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
    if isinstance(rule, Retrieval):  # filled by curate.stages.flag.claims.prepare_retrieval (needs images and a model)
        from curate.stages.flag.claims import retrieval_table

        return f"SELECT sample_id, score, evidence FROM {retrieval_table(rule)}"
    raise TypeError(f"unhandled rule kind {type(rule).__name__}")  # pragma: no cover
