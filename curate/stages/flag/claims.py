"""Claims and opt-out lists: a rights-holder's work (or a do-not-train request) → every
matching sample, extended to every near-duplicate copy of it.

**Claim files** (one claimant per file; ``flag.claims`` in the config, or ``curate flag
--claims FILE|FOLDER``), YAML::

    claimant: Example Photo Agency          # required
    contact: legal@example.com
    category: copyright                     # copyright (default) | opt_out
    action: remove                          # remove (default) | review | tag
    domains: [example-photos.com]           # reduced to registrable domains (curate.stages.flag.urls)
    urls: [https://example-photos.com/p/1.jpg]
    url_lists: [urls.txt]                   # files, one URL per line (# comments)
    keywords: [Jane Example]                # names / titles, whole words in captions
    reference_images: [refs/]               # image files or folders of them
    phash_max_distance: 8                   # default: dedup.phash_max_distance
    embedding_min_cosine: 0.93              # default: dedup.embedding_min_cosine
    extend_to_clusters: true

or CSV with a header ``field,value`` and one row per entry (``claimant``, ``contact``,
``category``, ``action``, ``domain``, ``url``, ``keyword``, ``reference_image``). Relative
paths are relative to the claim file. Unknown keys and bad values fail with file:line. A claim
comes from a third party: its ``reference_images`` and ``url_lists`` must lie in the claim
file's folder (or below it) — a path that resolves outside it (``../``, an absolute path, a
symbolic link leading out) is a ConfigError, so a claim can never make curate read other files.

**Opt-out lists** (``flag.opt_out``; ``--opt-out FILE``): a text file, one URL or domain per
line (a line with ``://`` is a URL), ``#`` comments. It becomes the claim of
claimant ``<file stem>`` with category ``opt_out`` and action ``remove``, and goes through the
same matching and cluster extension.

**Signals** (one ``claim_matches`` row per sample × claimant × signal; ``score`` is in the
signal's own unit):

=============  =====================================================  ======================
signal         hit                                                     score
=============  =====================================================  ======================
domain         URL host is the listed registrable domain or under it   1.0
url            canonical URL equal to a listed one (curate.stages.flag.urls)       1.0
keyword        caption contains the keyword as a whole word            1.0
sha256         image bytes identical to a reference image's            1.0
phash          pHash Hamming distance ≤ threshold to a reference,      bits (0–64)
               mirror-aware (min over hash/mirror hash, as dedup)
embedding      cosine(sample, reference) ≥ threshold, same model and    cosine (−1…1)
               preprocessing as the catalog's image embeddings
containment    the sample contains a copy of a reference, or is a      inliers (≥ 20)
               crop of one: SIFT + RANSAC on the embedding's nearest
               candidates (dedup.containment; region in evidence,
               curate.stages.flag.references.containment_matches)
cluster        in the same duplicate cluster as a direct match          NULL (see evidence)
               (``via_cluster`` true; evidence names the matched
               sample, its signal and the dup edge joining them)
=============  =====================================================  ======================

The cluster extension uses the clusters of the dedup stage (graph → components, see
docs/ARCHITECTURE.md), so "every copy" means every sample dedup put in the same component.
Each claimant's hits also become one ``flags`` row per sample (``pack`` = ``claim`` or
``opt_out``, ``rule_id`` = the claimant's slug, ``holder`` = the claimant), which is how the
decision (reason ``claim:<slug>`` or ``opt_out:<slug>``) and the manifest see them.
"""
from __future__ import annotations

import csv
import hashlib
import os
import io
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from curate.errors import ConfigError
from curate.stages.flag.patterns import lit, words_pattern
from curate.stages.flag.references import reference_matches
from curate.stages.flag.urls import canonical_url_sql, domain_hits_sql, normalise_domain
from curate.store import fsio
from curate.store.catalog import file_fingerprint
from curate.yamlconf import load_yaml, near_files, read_text, validate

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class Claim(BaseModel):
    """One claimant's claim (see module doc); paths are resolved against ``base``."""

    model_config = ConfigDict(extra="forbid")
    claimant: str = Field(min_length=1)
    contact: str | None = None
    category: Literal["copyright", "opt_out"] = "copyright"
    action: Literal["remove", "review", "tag"] = "remove"
    domains: list[str] = []
    urls: list[str] = []
    url_lists: list[str] = []
    keywords: list[str] = []
    reference_images: list[str] = []
    phash_max_distance: int | None = Field(None, ge=0, le=32)
    embedding_min_cosine: float | None = Field(None, gt=0.0, le=1.0)
    extend_to_clusters: bool = True
    base: str = Field(".", exclude=True, description="folder relative paths are resolved against")
    _slug: str | None = PrivateAttr(None)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return sorted({normalise_domain(d) for d in v})

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        out = [k.strip() for k in v if k.strip()]
        if len(out) != len(v):
            raise ValueError("keywords must not be empty")
        return out

    @model_validator(mode="after")
    def _something(self):
        if not (self.domains or self.urls or self.url_lists or self.keywords or self.reference_images):
            raise ValueError("a claim needs at least one of domains, urls, url_lists, keywords, reference_images")
        for field, paths in (("reference_images", self.reference_images), ("url_lists", self.url_lists)):
            for f in paths:
                outside_base(self.path(f), self.base, ValueError, f"{field} entry {f!r}:")
        return self

    @property
    def slug(self) -> str:
        """File-name-safe id of the claimant, unique among the claims of a run (set by
        :func:`load_all`; see :func:`assign_slugs`), else :func:`base_slug`."""
        return self._slug or base_slug(self.claimant)

    @property
    def pack(self) -> str:
        return "opt_out" if self.category == "opt_out" else "claim"

    def path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base) / q

    def all_urls(self) -> list[str]:
        """``urls`` plus every line of ``url_lists`` files.

        Raises:
            ConfigError: a URL list file is missing or not UTF-8.
        """
        out = list(self.urls)
        for f in self.url_lists:
            p = self.path(f)
            outside_base(p, self.base, ConfigError, f"claim {self.claimant!r}: url list")
            if not p.is_file():
                raise ConfigError(f"claim {self.claimant!r}: url list {p} not found")
            out += [ln.strip() for ln in read_text(p).splitlines()
                    if ln.strip() and not ln.lstrip().startswith("#")]
        return out

    def reference_files(self) -> list[Path]:
        """Reference image files (folders expanded, sorted).

        Raises:
            ConfigError: a listed path does not exist, or a folder holds no image.
        """
        files = image_files(self.reference_images, self.base, f"claim {self.claimant!r}")
        for f in files:  # a file under a listed folder may be a link leading out
            outside_base(f, self.base, ConfigError, f"claim {self.claimant!r}: reference image")
        return files


#: slugs a claimant never gets: export's own files in ``out/removals/`` (``all.csv``) and the
#: device names Windows refuses as file names
RESERVED_SLUGS = frozenset({"all", "con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                            *(f"lpt{i}" for i in range(1, 10))})
SLUG_MAX = 80  # characters of the name kept in a slug (file names stay far below 255 bytes)


def _name_digest(claimant: str) -> str:
    return hashlib.sha256(claimant.encode("utf-8")).hexdigest()[:8]


def base_slug(claimant: str) -> str:
    """The claimant name made file-name-safe (``Example Photo Agency`` → ``example-photo-agency``):
    lower-case ASCII letters and digits joined by ``-``, at most :data:`SLUG_MAX` characters;
    a name with none of them → ``claimant-<8 hex of its sha256>``. Different names can share a
    base slug (``ACME``, ``acme``, ``ACME!``): :func:`assign_slugs` makes them unique."""
    s = re.sub(r"[^a-z0-9]+", "-", claimant.lower()).strip("-")
    if len(s) > SLUG_MAX:
        s = s[:SLUG_MAX].rstrip("-") + "-" + _name_digest(claimant)
    return s or "claimant-" + _name_digest(claimant)


def assign_slugs(names: list[str]) -> dict[str, str]:
    """Claimant name → its slug, unique among ``names`` and never one of :data:`RESERVED_SLUGS`.

    A name keeps its :func:`base_slug` when no other name shares it and it is not reserved;
    otherwise every name of that base slug gets ``<base>-<8 hex of the sha256 of the name>``
    (``All`` → ``all-…``, ``ACME`` and ``acme`` → ``acme-…`` and ``acme-…``). The result
    depends only on the set of names, never on their order.

    Raises:
        ConfigError: two slugs still equal (a name written as another's suffixed slug).
    """
    by_base: dict[str, list[str]] = {}
    for n in sorted(set(names)):
        by_base.setdefault(base_slug(n), []).append(n)
    out: dict[str, str] = {}
    for b, group in by_base.items():
        for n in group:
            out[n] = b if len(group) == 1 and b not in RESERVED_SLUGS else f"{b}-{_name_digest(n)}"
    seen: dict[str, str] = {}
    for n, sl in sorted(out.items()):
        if sl in seen or sl in RESERVED_SLUGS:
            raise ConfigError(f"claimants {seen.get(sl, sl)!r} and {n!r} get the same file name {sl!r}; rename one")
        seen[sl] = n
    return out


def outside_base(p: Path, base: str | Path, error: type[Exception] = ValueError, what: str = "path") -> None:
    """Raise ``error`` when ``p`` (symbolic links and ``..`` resolved) is not inside ``base``."""
    root, real = os.path.realpath(base), os.path.realpath(p)
    if not fsio.is_within(root, real):
        raise error(f"{what} {p} resolves to {real}, outside the claim file's folder {root}; a claim may "
                    "only name files in its own folder (copy the file there)")


def image_files(paths: list[str], base: str | Path, who: str) -> list[Path]:
    """Image files from files and folders (recursively, by suffix), relative to ``base``, sorted.

    Raises:
        ConfigError: a listed path does not exist, or a folder holds no image.
    """
    out: list[Path] = []
    for r in paths:
        p = Path(r).expanduser()
        p = p if p.is_absolute() else Path(base) / p
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ConfigError(f"{who}: reference folder {p} holds no image files")
            out += files
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{who}: reference image {p} not found")
    return out


_CSV_FIELDS = {"claimant": "claimant", "contact": "contact", "category": "category", "action": "action",
               "domain": "domains", "url": "urls", "url_list": "url_lists", "keyword": "keywords",
               "name": "keywords", "reference_image": "reference_images"}


def _load_csv(path: Path) -> Claim:
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    rows = list(csv.reader(io.StringIO(read_text(path), newline="")))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["field", "value"]:
        raise ConfigError(f"{path}:1: a claims CSV starts with the header 'field,value'")
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise ConfigError(f"{path}:{n}: expected 2 columns (field,value), got {len(row)}; quote values with commas")
        f, v = row[0].strip().lower(), row[1].strip()
        if f not in _CSV_FIELDS:
            raise ConfigError(f"{path}:{n}: unknown field {f!r}; use one of {', '.join(sorted(_CSV_FIELDS))}")
        key = _CSV_FIELDS[f]
        lines.setdefault(key, n)
        if key in ("claimant", "contact", "category", "action"):
            if key in data:
                raise ConfigError(f"{path}:{n}: {f} given twice")
            data[key] = v
        else:
            data.setdefault(key, []).append(v)
    try:
        return Claim.model_validate({**data, "base": str(path.parent)})
    except ValidationError as e:
        msgs = [f"{path}:{lines.get(str(err['loc'][0]) if err['loc'] else '', 1)}: "
                f"{'.'.join(map(str, err['loc'])) or '(file)'} → {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid claim file:\n  " + "\n  ".join(msgs)) from None


def _load_optout(path: Path) -> Claim:
    domains, urls = [], []
    for n, ln in enumerate(read_text(path).splitlines(), start=1):
        v = ln.split("#", 1)[0].strip() if not ln.lstrip().startswith("#") else ""
        if not v:
            continue
        if "://" in v:
            urls.append(v)
            continue
        try:
            domains.append(normalise_domain(v))
        except ValueError as e:
            raise ConfigError(f"{path}:{n}: {e}") from None
    if not (domains or urls):
        raise ConfigError(f"{path}: opt-out list holds no URL or domain")
    return Claim(claimant=path.stem, category="opt_out", action="remove", domains=domains,
                 urls=urls, base=str(path.parent))


def load_claim(path: str | Path) -> Claim:
    """Load one claim file (``.yaml``/``.yml``/``.csv``).

    Raises:
        ConfigError: unreadable file, unknown key, bad value — with file:line and the fix.
    """
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return _load_csv(p)
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{p}: a claim file is .yaml, .yml or .csv (opt-out lists go to flag.opt_out)")
    data, node = load_yaml(p)
    if isinstance(data, dict) and "base" in data:
        raise ConfigError(f"{p}: base → unknown key (not allowed here)")
    claim = validate(Claim, {**(data or {}), "base": str(p.parent)} if isinstance(data, dict) else data, p, node)
    return claim


def expand_claim_paths(paths: list[str], base_dir: str | Path = ".", what: str = "claims path") -> list[Path]:
    """Claim files from files and folders (a folder: its ``*.yaml``, ``*.yml``, ``*.csv``, sorted).
    Relative paths are relative to ``base_dir``.

    Raises:
        ConfigError: a path does not exist (naming it, ``what`` it is, and the closest names beside it).
    """
    out: list[Path] = []
    for s in paths:
        p = Path(s).expanduser()
        p = p if p.is_absolute() else (Path(base_dir) / p).resolve()
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in (".yaml", ".yml", ".csv"))
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{what} {p} not found{near_files(p)}")
    return out


def load_all(claims: list[str], opt_out: list[str], base_dir: str | Path = ".") -> list[Claim]:
    """Every claim of the config (claim files, then opt-out lists).

    Each claim gets a slug unique among them (:func:`assign_slugs`): its id in the catalog and
    the name of its files in ``out/removals/``.

    Raises:
        ConfigError: bad file, or two claims of the same claimant name.
    """
    out = [load_claim(p) for p in expand_claim_paths(claims, base_dir)]
    out += [_load_optout(p) for p in expand_claim_paths(opt_out, base_dir, "opt-out list")]
    seen: set[str] = set()
    for c in out:
        if c.claimant in seen:
            raise ConfigError(f"two claims of the same claimant {c.claimant!r}; merge them into one file or rename one")
        seen.add(c.claimant)
    slugs = assign_slugs([c.claimant for c in out])
    for c in out:
        c._slug = slugs[c.claimant]
    return out


def fingerprint(claims: list[Claim]) -> list:
    """What a claim run depends on: the claims and the bytes of their URL lists and references."""
    fp = []
    for c in claims:
        files = [str(p) for p in c.reference_files()] + [str(c.path(f)) for f in c.url_lists]
        fp.append([c.model_dump(), [(f, file_fingerprint(Path(f))) for f in files]])
    return fp


# ----------------------------------------------------------------------------------------------
# matching

def _direct_matches(ws, claim: Claim, cfg, counters: dict) -> list[tuple]:
    """Rows (sample_id, signal, score, evidence, matched_reference) for one claim."""
    rows: list[tuple] = []
    if claim.domains:
        rows += ws.q(f"SELECT sample_id, 'domain', 1.0, 'host ' || host || ' is under ' || domain, NULL "
                     f"FROM ({domain_hits_sql(claim.domains)})")
    urls = claim.all_urls()
    if urls:
        ws.con.execute("CREATE OR REPLACE TEMP TABLE _claim_urls (u VARCHAR)")
        ws.con.executemany("INSERT INTO _claim_urls VALUES (?)", [(u,) for u in urls])
        bad = ws.q(f"SELECT u FROM _claim_urls WHERE {canonical_url_sql('u')} IS NULL")
        if bad:
            counters.setdefault("invalid_urls", {})[claim.claimant] = [b[0] for b in bad[:5]]
        rows += ws.q(
            f"SELECT s.sample_id, 'url', 1.0, 'url ' || s.url || ' is listed' || "
            f"CASE WHEN s.url <> c.u THEN ' as ' || c.u ELSE '' END, NULL "
            f"FROM (SELECT sample_id, url, {canonical_url_sql('url')} AS cu FROM samples WHERE url IS NOT NULL) s "
            f"JOIN (SELECT min(u) AS u, {canonical_url_sql('u')} AS cu FROM _claim_urls GROUP BY cu) c USING (cu) "
            f"WHERE cu IS NOT NULL")
        ws.con.execute("DROP TABLE _claim_urls")
    if claim.keywords:
        pat = lit(words_pattern(claim.keywords, case_sensitive=False))  # as a caption_words rule
        rows += ws.q(
            f"SELECT sample_id, 'keyword', 1.0, 'caption contains \"' || regexp_extract(nfc_normalize(caption), {pat}, 1) "
            f"|| '\"', NULL FROM samples WHERE caption IS NOT NULL AND regexp_matches(nfc_normalize(caption), {pat})")
    refs = claim.reference_files()
    if refs:
        rows += reference_matches(ws, cfg, refs,
                                  claim.phash_max_distance if claim.phash_max_distance is not None
                                  else cfg.dedup.phash_max_distance,
                                  claim.embedding_min_cosine if claim.embedding_min_cosine is not None
                                  else cfg.dedup.embedding_min_cosine,
                                  counters.setdefault("references", {}).setdefault(claim.claimant, {}))
    return rows


def match_counts(con, slug: str) -> dict[str, Any]:
    """One claimant's ``claim_matches``: distinct samples in all (``samples``), matched directly
    (``direct``), only through a duplicate cluster (``via_cluster``), and per signal."""
    r = con.execute("SELECT count(DISTINCT sample_id), count(DISTINCT sample_id) FILTER (NOT via_cluster), "
                    "count(DISTINCT sample_id) FILTER (via_cluster) FROM claim_matches WHERE slug = ?", [slug]).fetchone()
    sig = con.execute("SELECT signal, count(DISTINCT sample_id) FROM claim_matches WHERE slug = ? "
                      "GROUP BY signal ORDER BY signal", [slug]).fetchall()
    return {"samples": int(r[0]), "direct": int(r[1]), "via_cluster": int(r[2]),
            "by_signal": {k: int(v) for k, v in sig}}


class _DryRun(Exception):
    pass


def run_claims(ws, cfg, claims: list[Claim], dry_run: bool = False) -> dict[str, Any]:
    """Match every claim, extend to duplicate clusters, and rewrite ``claim_matches`` and the
    claim rows of ``flags`` in one transaction (rolled back when ``dry_run``: counts only).

    Returns:
        counters: per claimant direct / via_cluster / total samples, per signal counts.
    """
    counters: dict[str, Any] = {"claimants": {}}
    per: list[tuple[Claim, list[tuple]]] = [(c, _direct_matches(ws, c, cfg, counters)) for c in claims]
    try:
        _write(ws, per, counters, dry_run)
    except _DryRun:
        pass
    return counters


def _write(ws, per, counters: dict, dry_run: bool) -> None:
    with ws.transaction() as con:
        con.execute("DELETE FROM claim_matches")
        con.execute("DELETE FROM claims")
        con.execute("DELETE FROM flags WHERE holder IS NOT NULL")
        for claim, rows in per:
            con.execute("CREATE OR REPLACE TEMP TABLE _direct (sample_id BIGINT, signal VARCHAR, score DOUBLE, "
                        "evidence VARCHAR, matched_reference VARCHAR)")
            if rows:
                con.executemany("INSERT INTO _direct VALUES (?, ?, ?, ?, ?)", rows)
            base = [claim.claimant, claim.slug, claim.category, claim.action]
            entries = ([("domain", d) for d in claim.domains] + [("url", u) for u in claim.urls]
                       + [("url_list", str(claim.path(f))) for f in claim.url_lists]
                       + [("keyword", k) for k in claim.keywords]
                       + [("reference_image", str(p)) for p in claim.reference_files()])
            con.executemany("INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [[claim.claimant, claim.slug, claim.contact, claim.category, claim.action, k, v]
                             for k, v in entries])
            con.execute("INSERT INTO claim_matches SELECT ?, ?, ?, ?, sample_id, signal, score, evidence, "
                        "matched_reference, false, NULL FROM _direct", base)
            if claim.extend_to_clusters:
                # every other member of a matched sample's cluster; evidence: the matched member
                # (smallest id among the direct matches of that cluster) and the edge joining them
                con.execute(
                    """INSERT INTO claim_matches
                    WITH d AS (SELECT sample_id, min(signal || ': ' || evidence) AS why,
                                      min(matched_reference) AS ref FROM _direct GROUP BY sample_id),
                    dc AS (SELECT c.cluster_id, c.cluster_size, d.sample_id AS seed, d.why, d.ref,
                                  row_number() OVER (PARTITION BY c.cluster_id ORDER BY d.sample_id) AS k
                           FROM d JOIN clusters c USING (sample_id)),
                    ext AS (SELECT m.sample_id, dc.cluster_id, dc.cluster_size, dc.seed, dc.why, dc.ref, m.signals
                            FROM dc JOIN clusters m USING (cluster_id)
                            WHERE dc.k = 1 AND m.sample_id NOT IN (SELECT sample_id FROM d))
                    SELECT ?, ?, ?, ?, e.sample_id, 'cluster', NULL,
                           'copy of sample ' || e.seed || ' (' || e.why || ') in duplicate cluster ' || e.cluster_id
                           || ' of ' || e.cluster_size || ': ' || coalesce(
                               (SELECT string_agg(CASE x.signal WHEN 'sha256' THEN 'identical bytes (sha256)'
                                       WHEN 'embedding' THEN 'cosine ' || round(1 - x.distance, 3)
                                       WHEN 'phash' THEN 'pHash ' || CAST(x.distance AS INTEGER) || ' bits'
                                       WHEN 'phash_mirror' THEN 'mirror pHash ' || CAST(x.distance AS INTEGER) || ' bits'
                                       ELSE x.signal || ' ' || round(x.distance, 4) END, ', ' ORDER BY x.signal)
                                FROM dup_edges x WHERE (x.a = e.seed AND x.b = e.sample_id) OR (x.a = e.sample_id AND x.b = e.seed)),
                               'joined through other members (signals ' || array_to_string(e.signals, ',') || ')'),
                           e.ref, true, e.seed
                    FROM ext e""", base)
            con.execute(
                """INSERT INTO flags
                SELECT sample_id, ?, ?, ?, ?, max(score) FILTER (signal <> 'phash'),
                       string_agg(signal || ': ' || evidence, ' | ' ORDER BY via_cluster, signal, evidence), ?
                FROM claim_matches WHERE claimant = ? GROUP BY sample_id""",
                [claim.pack, claim.slug, claim.category, claim.action, claim.claimant, claim.claimant])
            counters["claimants"][claim.claimant] = {
                "slug": claim.slug, "category": claim.category, "action": claim.action, **match_counts(con, claim.slug)}
        con.execute("DROP TABLE IF EXISTS _direct")
        if dry_run:
            raise _DryRun
