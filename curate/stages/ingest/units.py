"""Ingest units: what each source of the config expands into, and their fingerprints.

A unit is one metadata file, one webdataset shard, one img2dataset ``NNNNN.parquet`` (with its
companion ``NNNNN.tar`` or ``NNNNN/`` folder), one Arrow file of a ``save_to_disk`` folder, or
one image folder: ingested in one transaction, recorded as one ``sources`` row. A unit's
fingerprint (size and mtime, or a content digest) tells whether it changed since it was
ingested. Sources may name local paths (globs expanded, workspace paths skipped) or URIs
(listed through :mod:`curate.store.fsio`; see :data:`URI_SOURCES`); in both, brace patterns
(``shards/{00000..00099}.tar``, ``{a,b}.parquet``: :mod:`curate.store.braces`) are expanded
first, and a path a brace pattern names that does not exist is an error naming the pattern.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from curate.config import RunConfig, SourceConfig
from curate.errors import InputError
from curate.store import fsio
from curate.store.braces import expand_braces
from curate.store.catalog import Workspace, digest_of, file_fingerprint

#: file suffixes read as images (in folders, shards and img2dataset outputs)
IMAGE_EXTS = {
    ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ico", ".ppm", ".pgm", ".pbm",
    ".pnm", ".psd", ".avif", ".heic", ".jp2", ".j2k", ".mpo", ".svg", ".jfif", ".tga", ".dib",
}
#: metadata files read as tab-separated text (anything else is parquet)
TSV_EXTS = (".tsv", ".tsv.gz", ".txt", ".txt.gz")


@dataclass
class Unit:
    """One ingest unit: one transaction, one ``sources`` row.

    ``path`` (and ``images``) is a local :class:`Path`, or a URI string (``s3://…``, ``gs://…``,
    ``memory://…``: read through :mod:`curate.store.fsio`)."""

    source: SourceConfig
    fmt: str  # parquet | tsv | webdataset | folder | hf_arrow
    path: Path | str
    images: Path | str | None = None  # img2dataset companion: NNNNN.tar or NNNNN/ folder
    img2dataset: bool = False
    stat: fsio.FileStat | None = None  # a URI unit's listing entry (size, mtime): no second request

    @property
    def uri(self) -> str:
        return self.path if isinstance(self.path, str) else str(self.path.resolve())

    @property
    def name(self) -> str:
        return fsio.name_of(self.path)


def _inside(ws: Workspace, p: Path) -> bool:
    p = p.resolve()
    return ws.root == p or ws.root in p.parents


def _braces(pattern: str) -> list[str]:
    """The paths a brace pattern stands for (:func:`curate.store.braces.expand_braces`).

    Raises:
        InputError: too many, naming the pattern.
    """
    try:
        return expand_braces(pattern)
    except ValueError as e:
        raise InputError(f"input {e}") from None


def _expand(ws: Workspace, cfg: RunConfig, pattern: str, skipped: list[str]) -> list[Path]:
    """The local paths ``pattern`` names: brace expressions expanded first (``{00000..00099}``,
    ``{a,b}``), then globs; sorted, workspace paths skipped. A pattern without braces or
    wildcards is its path (existing or not: the caller says what it should be).

    Raises:
        InputError: a named path inside the workspace; a path a brace pattern names that does
        not exist (a listed shard is a promise), naming the pattern.
    """
    alts = _braces(pattern)
    out: set[Path] = set()
    for alt in alts:
        p = cfg.path(alt)
        if any(ch in alt for ch in "*?["):
            files = sorted(Path(x) for x in glob.glob(str(p), recursive=True))
            skipped += [str(f) for f in files if _inside(ws, f)]
            out.update(f for f in files if not _inside(ws, f))
            continue
        if _inside(ws, p):
            raise InputError(f"input {p} lies inside the workspace {ws.root}; curate never reads its own outputs")
        if len(alts) > 1 and not p.exists():
            raise InputError(f"input {pattern!r} names {p}, which does not exist")
        out.add(p)
    return sorted(out)


def _img2dataset_units(src: SourceConfig, root: Path) -> list[Unit]:
    """One unit per ``NNNNN.parquet`` of an img2dataset output folder, with its images."""
    if not root.is_dir():
        raise InputError(f"source {src.name!r}: img2dataset folder {root} does not exist")
    units = []
    for pq_path in sorted(root.glob("*.parquet")):
        stem = pq_path.name[: -len(".parquet")]
        tar, folder = root / f"{stem}.tar", root / stem
        images = tar if tar.is_file() else folder if folder.is_dir() else None
        units.append(Unit(src, "parquet", pq_path, images=images, img2dataset=True))
    if not units:
        raise InputError(
            f"source {src.name!r}: {root} holds no NNNNN.parquet; is it an img2dataset output folder "
            "(written with --save_additional_columns / the default parquet metadata)?"
        )
    return units


def _hf_units(src: SourceConfig, root: Path) -> list[Unit]:
    """Arrow files of a ``save_to_disk`` folder, in the order its state.json lists them."""
    state = root / "state.json"
    if not state.is_file():
        raise InputError(f"source {src.name!r}: {root} has no state.json; write it with datasets' save_to_disk")
    try:
        files = [root / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"source {src.name!r}: unreadable {state}: {e}") from None
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"source {src.name!r}: state.json lists missing files {missing}")
    return [Unit(src, "hf_arrow", f) for f in files]


# ----------------------------------------------------------------------------------------------
# inputs by URI (s3://, gs://, abfs://, hdfs://, memory://, …; curate.store.fsio)

#: what a source may name by URI: metadata parquet / TSV (and its ``images`` folder), webdataset
#: shards, img2dataset output folders, image folders. Not ``hf_dataset``: its Arrow files are
#: memory-mapped (here and by the hash/embed stages through ``arrow:`` references).
URI_SOURCES = "metadata (parquet, tsv), images folders, webdataset shards and img2dataset folders"


def _loc(cfg: RunConfig, p: str) -> Path | str:
    """A path from the config: a URI as written, a path resolved against the config's folder."""
    return p.rstrip("/") if fsio.is_uri(p) else cfg.path(p)


def _uri_files(src: SourceConfig, pattern: str, what: str) -> list[fsio.FileStat]:
    """The files a URI (brace pattern, glob) names, sorted; an error naming the source and the
    pattern when there is none, or when a path a brace pattern names is not a file."""
    alts = _braces(pattern)
    found: dict[str, fsio.FileStat] = {}
    for alt in alts:
        try:
            files = fsio.glob(alt)
            st = None if files or fsio.has_magic(alt) else fsio.stat(alt)
        except (ValueError, OSError) as e:  # unknown scheme, credentials, permissions
            raise InputError(f"source {src.name!r}: cannot list {what} {pattern!r}: {e}") from None
        if not files and not fsio.has_magic(alt):
            why = "is a folder, not a file" if st else "does not exist"
            raise InputError(f"source {src.name!r}: {what} {pattern!r} {why}" if len(alts) == 1 else
                             f"source {src.name!r}: {what} {pattern!r} names {alt}, which {why}")
        found.update((f.uri, f) for f in files)
    if not found:
        raise InputError(f"source {src.name!r}: {what} {pattern!r} matches no file")
    return [found[u] for u in sorted(found)]


def _uri_dir(src: SourceConfig, uri: str, what: str) -> str:
    try:
        st = fsio.stat(uri)
    except (ValueError, OSError) as e:
        raise InputError(f"source {src.name!r}: cannot read {what} folder {uri!r}: {e}") from None
    if st is None or not st.is_dir:
        raise InputError(f"source {src.name!r}: {what} folder {uri} does not exist")
    return uri


def _img2dataset_units_uri(src: SourceConfig, root: str) -> list[Unit]:
    """:func:`_img2dataset_units` for a folder on object storage."""
    entries = {fsio.name_of(e.uri): e for e in fsio.list_entries(_uri_dir(src, root, "img2dataset"))}
    units = []
    for name, st in sorted(entries.items()):
        if st.is_dir or not name.endswith(".parquet"):
            continue
        stem = name[: -len(".parquet")]
        tar, folder = entries.get(f"{stem}.tar"), entries.get(stem)
        images = tar.uri if tar and not tar.is_dir else folder.uri if folder and folder.is_dir else None
        units.append(Unit(src, "parquet", st.uri, images=images, img2dataset=True, stat=st))
    if not units:
        raise InputError(f"source {src.name!r}: {root} holds no NNNNN.parquet; is it an img2dataset output folder?")
    return units


def _uri_source_units(src: SourceConfig, cfg: RunConfig) -> list[Unit]:
    """Units of a source that names a URI (see :data:`URI_SOURCES`)."""
    kind = src.kind
    if kind == "metadata":
        images = _loc(cfg, src.images) if src.images else None
        return [Unit(src, "tsv" if fsio.name_of(st.uri).lower().endswith(TSV_EXTS) else "parquet", st.uri,
                     images=images, stat=st) for st in _uri_files(src, src.metadata, "metadata")]
    if kind == "webdataset":
        return [Unit(src, "webdataset", st.uri, stat=st) for st in _uri_files(src, src.webdataset, "webdataset")]
    if kind == "img2dataset":
        return [u for root in _braces(src.img2dataset) for u in _img2dataset_units_uri(src, _loc(cfg, root))]
    if kind == "folder":
        return [Unit(src, "folder", _uri_dir(src, _loc(cfg, d), "images")) for d in _braces(src.images)]
    raise InputError(f"source {src.name!r}: a {kind} source cannot be read from a URI ({getattr(src, kind)!r}); "
                     f"URIs work for {URI_SOURCES}. Copy it to a local path or mount the bucket")


def _source_uri(src: SourceConfig) -> bool:
    """The source names its input by URI (the ``images`` folder of a metadata source aside)."""
    v = src.images if src.kind == "folder" else getattr(src, src.kind)
    return fsio.is_uri(v)


def _folders(ws: Workspace, cfg: RunConfig, src: SourceConfig, pattern: str, skipped: list[str]) -> list[Path]:
    """The folders a folder-kind source names (braces and globs expanded, :func:`_expand`)."""
    found = _expand(ws, cfg, pattern, skipped)
    if not found:
        raise InputError(f"source {src.name!r}: {pattern!r} matches nothing")
    return found


def unit_list(ws: Workspace, cfg: RunConfig) -> tuple[list[Unit], list[str]]:
    """All input units, in config order then path order, and the paths skipped because they
    lie inside the workspace."""
    units: list[Unit] = []
    skipped: list[str] = []
    for src in cfg.sources:
        kind = src.kind
        if _source_uri(src):
            units += _uri_source_units(src, cfg)
        elif kind == "metadata":
            files = _expand(ws, cfg, src.metadata, skipped)
            if not files or not all(f.is_file() for f in files):
                raise InputError(f"source {src.name!r}: metadata {src.metadata!r} matches no file")
            for f in files:
                fmt = "tsv" if f.name.lower().endswith(TSV_EXTS) else "parquet"
                units.append(Unit(src, fmt, f, images=_loc(cfg, src.images) if src.images else None))
        elif kind == "webdataset":
            files = _expand(ws, cfg, src.webdataset, skipped)
            if not files or not all(f.is_file() for f in files):
                raise InputError(f"source {src.name!r}: webdataset {src.webdataset!r} matches no tar file")
            units += [Unit(src, "webdataset", f) for f in files]
        elif kind == "img2dataset":
            for root in _folders(ws, cfg, src, src.img2dataset, skipped):
                units += _img2dataset_units(src, root)
        elif kind == "hf_dataset":
            for root in _folders(ws, cfg, src, src.hf_dataset, skipped):
                units += _hf_units(src, root)
        else:
            for d in _folders(ws, cfg, src, src.images or "", skipped):
                if not d.is_dir():
                    raise InputError(f"source {src.name!r}: images folder {d} does not exist")
                units.append(Unit(src, "folder", d))
    return units, skipped


def folder_files(root: Path, skip: Path | None = None) -> list[Path]:
    """Every image file under a local folder, sorted by relative POSIX path; ``skip``: a folder
    not to descend into (the workspace)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dp = Path(dirpath)
        if skip is not None and (dp == skip or skip in dp.parents):
            dirnames[:] = []
            continue
        dirnames.sort()
        for fn in sorted(filenames):
            if Path(fn).suffix.lower() in IMAGE_EXTS:
                out.append(dp / fn)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


class RealPaths:
    """Resolve files under one local source folder and say which may be read
    (``ingest.follow_symlinks``): ``inside`` — a symbolic link (the file, or a folder on its way)
    only when it resolves inside ``root``; ``never`` — no link; ``always`` — any. A relative path
    that leaves ``root`` without a link (``..`` in a metadata file's ``file`` column) is refused
    under every policy. ``root`` itself may be a link (it is the config's choice). Resolved
    folders are cached, so a file costs one ``lstat``."""

    def __init__(self, root: Path | str, policy: str = "inside"):
        self.root = os.path.realpath(root)
        self.policy = policy
        self._dirs: dict[str, str] = {}

    def _inside(self, p: str) -> bool:
        return fsio.is_within(self.root, p)

    def check(self, rel: str) -> tuple[str, str | None]:
        """``rel`` (a path relative to the root) → (its resolved absolute path, None) when it may be
        read, else (the unresolved path, reason): ``symlink_outside_source: <rel> → <target>``,
        ``symlink_not_followed: <rel> → <target>`` or ``path_outside_source: <rel> → <path>``."""
        full = os.path.join(self.root, rel.lstrip("/"))  # as the OS reads "<root>/" + rel
        lexical = os.path.normpath(full)
        if not self._inside(lexical):
            return full, f"path_outside_source: {rel} → {lexical}"
        d, name = os.path.split(lexical)
        rd = self._dirs.get(d)
        if rd is None:
            rd = self._dirs[d] = os.path.realpath(d)
        real = os.path.realpath(lexical) if os.path.islink(lexical) else os.path.join(rd, name)
        if real == lexical or self.policy == "always":
            return real, None
        if self.policy == "never":
            return full, f"symlink_not_followed: {rel} → {real}"
        return (real, None) if self._inside(real) else (full, f"symlink_outside_source: {rel} → {real}")


def uri_image_files(root: str, listing: list[fsio.FileStat] | None = None) -> list[tuple[str, fsio.FileStat]]:
    """(path relative to ``root``, entry) of every image file under a URI folder, in the order
    of :func:`folder_files` (relative POSIX path); ``listing``: ``fsio.walk(root)`` if done."""
    base = root.rstrip("/") + "/"
    files = [(st.uri[len(base):], st) for st in (fsio.walk(root) if listing is None else listing)]
    return sorted(((r, st) for r, st in files if PurePosixPath(r).suffix.lower() in IMAGE_EXTS), key=lambda x: x[0])


def _uri_fingerprint(uri: str, st: fsio.FileStat | None = None) -> str:
    """:func:`curate.store.catalog.file_fingerprint` for a URI: size and the store's mtime, or size and a
    content hash where the store keeps no mtime (:func:`curate.store.fsio.fingerprint`); a folder: the
    digest of its image files' fingerprints, as for a local folder."""
    try:
        st = st or fsio.stat(uri)
        if st is None:
            return "missing"
        if st.is_dir:
            return digest_of([(rel, fsio.fingerprint(f)) for rel, f in uri_image_files(uri)])
    except (ValueError, OSError) as e:
        raise InputError(f"{uri}: cannot read: {e}") from None
    return fsio.fingerprint(st)


def fingerprint(unit: Unit, ws: Workspace) -> str:
    """The unit's fingerprint (``sources.fingerprint``): a file's size and mtime, a folder's digest
    of its image files' fingerprints; an img2dataset unit adds its companion images'."""
    def fp(p: Path | str) -> str:
        if isinstance(p, str):
            return _uri_fingerprint(p, unit.stat if p == unit.path else None)
        if p.is_dir():
            return digest_of([(f.relative_to(p).as_posix(), file_fingerprint(f)) for f in folder_files(p, ws.root)])
        return file_fingerprint(p)

    return fp(unit.path) if unit.images is None or not unit.img2dataset else f"{fp(unit.path)}+{fp(unit.images)}"
