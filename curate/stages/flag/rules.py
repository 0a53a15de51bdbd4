"""Rule packs (``rules/*.yaml``): a closed, validated schema, loading and the rules' patterns.

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

Every rule yields rows (sample_id, score, evidence): the evidence says what matched
(:func:`curate.stages.flag.evaluate.rule_sql`, which hands each kind to the module that owns it).
Every rule also reports which samples it could not read (``unknown``: a NULL score, no caption,
an image never classified) and what it did with them (``unknown: pass`` → ``passed``, ``flag``
→ its action): :mod:`curate.stages.flag.coverage`.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from curate.errors import ConfigError
from curate.resources import shipped_dir
from curate.stages.flag.patterns import any_pattern, words_pattern
from curate.stages.flag.urls import normalise_domain
from curate.yamlconf import line_of, load_yaml, near_files, validate

Category = Literal["copyright", "watermark", "nsfw", "sensitive", "opt_out", "quality"]
Action = Literal["remove", "review", "tag"]

#: every class NudeNet 3.4's detector outputs (label names a ``classifier_score`` rule may use;
#: the classifier itself: :mod:`curate.stages.flag.classifiers`)
NUDENET_CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)


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
    :func:`curate.stages.flag.retrieval.retrieval_rows`). Reference paths are relative to the pack file."""

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
    """A shipped pack name (``laion-safety``) or a YAML path (relative to ``base_dir``).

    Raises:
        ConfigError: no shipped pack of that name, or no file at that path — naming the value,
            the closest shipped names or file names, and the shipped packs.
    """
    known = sorted(x.stem for x in shipped_dir("rules").glob("*.yaml"))
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        p = Path(name_or_path).expanduser()
        p = p if p.is_absolute() else (Path(base_dir) / p).resolve()
        if not p.is_file():
            raise ConfigError(f"rule pack {name_or_path!r}: {p} not found{near_files(p)}; "
                              f"shipped packs (by name): {', '.join(known)}")
        return p
    p = shipped_dir("rules") / f"{name_or_path}.yaml"
    if not p.is_file():
        near = difflib.get_close_matches(name_or_path, known, n=1, cutoff=0.6)
        raise ConfigError(f"unknown rule pack {name_or_path!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                          + f"; shipped packs: {', '.join(known)} (or a path to a .yaml pack)")
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
        for pat in rule_patterns(rule):
            try:
                con.execute("SELECT regexp_matches('', ?)", [pat])
            except duckdb.Error as e:
                line = line_of(node, ("rules", k))
                raise ConfigError(f"{path}:{line}: rule {rule.id}: invalid regular expression {pat!r}: {e}") from None
    con.close()
    return pack


def rule_patterns(rule) -> list[str]:
    """The RE2 patterns a rule matches with (checked by :func:`load_pack`; none for kinds without)."""
    if isinstance(rule, (CaptionRegex, UrlRegex)):
        pat = any_pattern(rule.patterns)
        if isinstance(rule, UrlRegex) or not rule.case_sensitive:
            pat = "(?i)" + pat
        return [pat]
    if isinstance(rule, CaptionWords):
        return [words_pattern(rule.words, rule.case_sensitive)]
    if isinstance(rule, OcrText):
        return [p for p in ocr_patterns(rule) if p]
    return []


def ocr_patterns(rule) -> tuple[str | None, str | None]:
    """(word pattern, regex pattern) of an ``ocr_text`` rule, RE2, None when not given.

    Same semantics as ``caption_words`` / ``caption_regex``: the text is NFC-normalised, matched
    case-insensitively unless ``case_sensitive``; words match at Unicode word boundaries (a
    letter, digit or underscore never adjoins the match; the word is capture group 1).
    """
    flags = "" if rule.case_sensitive else "(?i)"
    words = words_pattern(rule.words, rule.case_sensitive) if rule.words else None
    regex = flags + any_pattern(rule.patterns) if rule.patterns else None
    return words, regex
