"""ingest: metadata tables, image folders, webdataset shards, img2dataset outputs and HF
datasets → ``sources``, ``samples``, ``rejects``.

Every input row ends as exactly one ``samples`` row or one ``rejects`` row with a reason.

Units and resumability: an input is split into *units* (one metadata file, one shard, one
folder). One unit is ingested in one transaction, so a run killed mid-unit (even SIGKILL)
leaves nothing of it and the re-run ingests it whole; units already ingested with the same
fingerprint are skipped, so adding a file to a set ingests only that file. A unit that
changed after it was ingested is an error (sample ids would silently change meaning).
Paths inside the workspace are never inputs: a glob skips them, a named path is an error.

Reading: parquet goes straight through DuckDB's ``read_parquet`` (streamed, never whole in
Python memory); a file DuckDB refuses for invalid UTF-8 is re-read through pyarrow in batches
with the bad values repaired per row (case K05). Columns holding image bytes are never read
by ingest — samples get a reference (:mod:`curate.media.refs`). TSV (CC3M/CC12M) is read in
batches of lines; a line with the wrong number of fields is rejected (``malformed_row``).

Inputs by URI (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, or any fsspec protocol;
:mod:`curate.store.fsio`): metadata parquet / TSV (and a metadata source's ``images`` folder), webdataset
shards, img2dataset output folders and image folders; not ``hf_dataset`` (its Arrow files are
memory-mapped), which is an error naming these. Globs are expanded by listing the store
(:func:`curate.store.fsio.glob`, ``glob.glob``'s rules, sorted). Parquet is read through the pyarrow
filesystem in batches of ``ingest.batch_rows`` (DuckDB's httpfs is not used), with the same plan,
types, row numbers, notes and rejects as the local DuckDB path, so the rows are identical; a
shard (or img2dataset companion tar) is streamed once into a temp file under the workspace and
parsed like a local one, its ``tar:`` references naming the URI (ranged reads later). A URI
unit's fingerprint is its size and the store's mtime, or, where the store keeps none (fsspec's
``memory://``), its size and a sha256 of its bytes (:func:`curate.store.fsio.fingerprint`).

Casting never rounds or drops silently: a value that does not fit its canonical type becomes
NULL with a per-row note; NaN/±inf scores become NULL with a note (DuckDB sorts NaN above
every number, so a threshold rule would otherwise treat it as "unsafe", case K15).

Per-row notes are ``<code>(<column>): <detail>``; codes: ``not_integer``, ``not_bigint``,
``not_finite``, ``invalid_utf8``, ``not_a_url``, ``repeated_member``, ``bad_json``.

Reject reasons: ``no_url_or_image`` (nothing identifies the sample), ``invalid_url`` (a URL
that is not ``scheme://host…`` and no image either — e.g. LAION's NSFW/similarity values
shifted into URL/TEXT), ``malformed_row`` (a TSV line with the wrong number of fields).
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from curate.store import fsio
from curate.store.catalog import ROW_BITS, Workspace, digest_of, file_fingerprint
from curate.config import RunConfig, SourceConfig
from curate.errors import InputError
from curate.media.images import tar_ref
from curate.progress import bar, info
from curate.media.refs import ref_prefix_sql
from curate.stages.ingest.schemas import CANONICAL, Mapping, detect_headerless, load_layouts, match, resolve

IMAGE_EXTS = {
    ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ico", ".ppm", ".pgm", ".pbm",
    ".pnm", ".psd", ".avif", ".heic", ".jp2", ".j2k", ".mpo", ".svg", ".jfif", ".tga", ".dib",
}
# scheme://host then a path, query, fragment or the end; the host holds no whitespace (spaces later
# in a path are real: browsers encode them)
URL_RE = r"^[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#]+([/?#]|$)"
TSV_EXTS = (".tsv", ".tsv.gz", ".txt", ".txt.gz")
# preference among several image-bytes columns of one table
BYTES_COLUMN_ORDER = ["jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "images", "data", "bytes"]


# ----------------------------------------------------------------------------------------------
# input discovery


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


def _expand(ws: Workspace, cfg: RunConfig, pattern: str, skipped: list[str]) -> list[Path]:
    p = cfg.path(pattern)
    if any(ch in pattern for ch in "*?["):
        files = sorted(Path(x) for x in glob.glob(str(p), recursive=True))
        skipped += [str(f) for f in files if _inside(ws, f)]
        return [f for f in files if not _inside(ws, f)]
    if _inside(ws, p):
        raise InputError(f"input {p} lies inside the workspace {ws.root}; curate never reads its own outputs")
    return [p]


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
    """The files a URI (glob) names, sorted; an error naming the source when there is none."""
    try:
        files = fsio.glob(pattern)
        st = None if files or fsio.has_magic(pattern) else fsio.stat(pattern)
    except (ValueError, OSError) as e:  # unknown scheme, credentials, permissions
        raise InputError(f"source {src.name!r}: cannot list {what} {pattern!r}: {e}") from None
    if not files:
        why = "matches no file" if fsio.has_magic(pattern) else "is a folder, not a file" if st else "does not exist"
        raise InputError(f"source {src.name!r}: {what} {pattern!r} {why}")
    return files


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
        return _img2dataset_units_uri(src, _loc(cfg, src.img2dataset))
    if kind == "folder":
        return [Unit(src, "folder", _uri_dir(src, _loc(cfg, src.images), "images"))]
    raise InputError(f"source {src.name!r}: a {kind} source cannot be read from a URI ({getattr(src, kind)!r}); "
                     f"URIs work for {URI_SOURCES}. Copy it to a local path or mount the bucket")


def _source_uri(src: SourceConfig) -> bool:
    """The source names its input by URI (the ``images`` folder of a metadata source aside)."""
    v = src.images if src.kind == "folder" else getattr(src, src.kind)
    return fsio.is_uri(v)


def _unit_list(ws: Workspace, cfg: RunConfig) -> tuple[list[Unit], list[str]]:
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
            root = _expand(ws, cfg, src.img2dataset, skipped)[0]
            units += _img2dataset_units(src, root)
        elif kind == "hf_dataset":
            root = _expand(ws, cfg, src.hf_dataset, skipped)[0]
            units += _hf_units(src, root)
        else:
            d = _expand(ws, cfg, src.images or "", skipped)[0]
            if not d.is_dir():
                raise InputError(f"source {src.name!r}: images folder {d} does not exist")
            units.append(Unit(src, "folder", d))
    return units, skipped


def _folder_files(root: Path, skip: Path | None = None) -> list[Path]:
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


def _uri_image_files(root: str, listing: list[fsio.FileStat] | None = None) -> list[tuple[str, fsio.FileStat]]:
    """(path relative to ``root``, entry) of every image file under a URI folder, in the order
    of :func:`_folder_files` (relative POSIX path); ``listing``: ``fsio.walk(root)`` if done."""
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
            return digest_of([(rel, fsio.fingerprint(f)) for rel, f in _uri_image_files(uri)])
    except (ValueError, OSError) as e:
        raise InputError(f"{uri}: cannot read: {e}") from None
    return fsio.fingerprint(st)


def _fingerprint(unit: Unit, ws: Workspace) -> str:
    def fp(p: Path | str) -> str:
        if isinstance(p, str):
            return _uri_fingerprint(p, unit.stat if p == unit.path else None)
        if p.is_dir():
            return digest_of([(f.relative_to(p).as_posix(), file_fingerprint(f)) for f in _folder_files(p, ws.root)])
        return file_fingerprint(p)

    return fp(unit.path) if unit.images is None or not unit.img2dataset else f"{fp(unit.path)}+{fp(unit.images)}"


def inputs(ws: Workspace, cfg: RunConfig) -> list[Any]:
    """Fingerprints of all input units (the ingest digest depends on them)."""
    units, _ = _unit_list(ws, cfg)
    return [(u.source.name, u.source.schema_, u.source.images, u.fmt, u.uri, _fingerprint(u, ws)) for u in units]


# ----------------------------------------------------------------------------------------------
# row producers: pyarrow tables with __row (0-based row in the unit) and optionally
# __fix_notes (list<string>), __reject (string), __raw (string)


def _repair_utf8(t: pa.Table) -> pa.Table:
    """Replace invalid UTF-8 in string columns with U+FFFD, row by row, with a per-row note
    (column ``__fix_notes``); every other row of the file survives (case K05)."""
    notes: list[list[str]] | None = None
    for k, name in enumerate(t.column_names):
        col = t.column(k)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = col.cast(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary()).to_pylist()
        fixed = []
        for i, b in enumerate(raw):
            if b is None:
                fixed.append(None)
                continue
            try:
                fixed.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                fixed.append(b.decode("utf-8", errors="replace"))
                notes = notes if notes is not None else [[] for _ in range(t.num_rows)]
                notes[i].append(f"invalid_utf8({name}): replaced with U+FFFD")
        t = t.set_column(k, name, pa.array(fixed, pa.string()))
    if notes is not None:
        t = t.append_column("__fix_notes", pa.array(notes, pa.list_(pa.string())))
    return t


def _is_bytes_type(t: pa.DataType) -> bool:
    """Image bytes: binary, struct with a binary ``bytes`` field (HF Image), or a list of those."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return True
    if pa.types.is_struct(t):
        return any(t.field(i).name == "bytes" and _is_bytes_type(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _is_bytes_type(t.value_type)
    return False


def _arrow_batches(batches: Iterator[pa.RecordBatch], offset: int = 0) -> Iterator[pa.Table]:
    for rb in batches:
        t = _repair_utf8(pa.Table.from_batches([rb]))
        t = t.append_column("__row", pa.array(range(offset, offset + t.num_rows), pa.int64()))
        offset += t.num_rows
        yield t


@contextlib.contextmanager
def _open_binary(path: Path | str) -> Iterator[Any]:
    """A local file or a URI (one sequential read, buffered) opened for reading lines; ``.gz``
    decompressed."""
    gz = fsio.name_of(path).lower().endswith(".gz")
    if not isinstance(path, str):
        with (gzip.open if gz else open)(path, "rb") as f:
            yield f
        return
    with fsio.open_input_stream(path) as raw, io.BufferedReader(raw, 1 << 20) as f:
        if gz:
            with gzip.GzipFile(fileobj=f) as g:
                yield g
        else:
            yield f


def _tsv_batches(path: Path | str, names: list[str] | None, batch_rows: int) -> Iterator[pa.Table]:
    """Batches of a tab-separated file (no quoting: CC3M/CC12M captions contain quotes).

    ``names`` None: the first line is the header (and is not a row). A line whose field count
    differs from the header's is rejected with ``malformed_row``; invalid UTF-8 is repaired
    with a per-row note.
    """
    with _open_binary(path) as f:
        row = 0  # 0-based line number in the file (the header is line 0; blank lines keep their number)
        if names is None:
            names = f.readline().rstrip(b"\r\n").decode("utf-8", "replace").removeprefix("\ufeff").split("\t")
            row = 1
        n = len(names)
        cols: list[list[Any]] = [[] for _ in range(n)]
        fix, rej, raw, rows = [], [], [], []

        def flush() -> pa.Table:
            arrays = [pa.array(c, pa.string()) for c in cols]
            arrays += [pa.array(rows, pa.int64()), pa.array(fix, pa.list_(pa.string())),
                       pa.array(rej, pa.string()), pa.array(raw, pa.string())]
            return pa.table(arrays, names=[*names, "__row", "__fix_notes", "__reject", "__raw"])

        for line in f:
            line = line.rstrip(b"\r\n")
            if row == 0 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # UTF-8 byte order mark
            if not line.strip():
                row += 1
                continue  # blank lines are not rows
            try:
                text, notes = line.decode("utf-8"), []
            except UnicodeDecodeError:
                text, notes = line.decode("utf-8", "replace"), ["invalid_utf8(line): replaced with U+FFFD"]
            parts = text.split("\t")
            if len(parts) != n:
                rej.append(f"malformed_row: {len(parts)} tab-separated fields, expected {n}")
                raw.append(text[:2000])
                parts = [None] * n
            else:
                rej.append(None)
                raw.append(None)
            for c, v in zip(cols, parts):
                c.append(v)
            fix.append(notes)
            rows.append(row)
            row += 1
            if len(rows) >= batch_rows:
                yield flush()
                cols = [[] for _ in range(n)]
                fix, rej, raw, rows = [], [], [], []
        if rows or not row:
            yield flush()


def _tsv_layout(path: Path | str, schema: str) -> tuple[list[str] | None, Mapping]:
    """(column names if headerless else None, mapping) for a TSV file."""
    layouts = load_layouts()
    with _open_binary(path) as f:
        head = [ln.rstrip(b"\r\n").decode("utf-8", "replace").removeprefix("\ufeff").split("\t")
                for _, ln in zip(range(200), f)]
    if schema != "auto" and schema in layouts and not layouts[schema].header:
        lay = layouts[schema]
    elif schema != "auto":
        return None, resolve(head[0] if head else [], schema, str(path), layouts)
    else:
        lay = detect_headerless(head, str(path), layouts)
        if lay is None:
            return None, resolve(head[0], "auto", str(path), layouts)
    m = match(lay, lay.names or [])
    assert m is not None
    return list(lay.names or []), m


def _folder_table(root: Path | str, ws: Workspace) -> pa.Table:
    """One row per image file under ``root`` (a local folder or a URI), caption from the
    ``<stem>.txt`` sidecar, url / sha256 / other fields from ``<stem>.json``."""
    if isinstance(root, str):
        base = root.rstrip("/")
        listing = fsio.walk(root)
        present = {st.uri[len(base) + 1:] for st in listing}  # every file, for the sidecars

        def sidecar(rel: str, ext: str):
            r = PurePosixPath(rel).with_suffix(ext).as_posix()
            return (lambda: fsio.read_bytes(f"{base}/{r}")) if r in present else None

        entries = [(rel, f"{base}/{rel}") for rel, _ in _uri_image_files(root, listing)]
    else:
        def sidecar(rel: str, ext: str):
            q = (root / rel).with_suffix(ext)
            return q.read_bytes if q.is_file() else None

        entries = [(p.relative_to(root).as_posix(), str(p.resolve())) for p in _folder_files(root, ws.root)]
    rows: dict[str, list[Any]] = {k: [] for k in _WDS_SCHEMA.names}
    for i, (rel, ref) in enumerate(entries):
        side = sidecar(rel, ".txt")
        notes: list[str] = []
        data = side() if side else None
        caption = _text(data, "txt", notes) if data is not None else None
        url = sha = extra = None
        js = sidecar(rel, ".json")
        data = js() if js else None
        if data is not None:
            try:
                meta = json.loads(_text(data, "json", notes))
                if isinstance(meta, dict):
                    url, sha, extra = meta.get("url"), meta.get("sha256"), _json_rest(meta)
                    caption = caption if caption is not None else meta.get("caption")
            except ValueError:
                notes.append(f"bad_json({PurePosixPath(rel).with_suffix('.json').name}): not valid JSON")
        _wds_row(rows, rel, caption, url, ref, sha, i, notes, extra)
    return pa.table(rows, schema=_WDS_SCHEMA)


_WDS_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("url", pa.string()), ("image_ref", pa.string()),
    ("sha256", pa.string()), ("__row", pa.int64()), ("__fix_notes", pa.list_(pa.string())),
    ("__extra_json", pa.string()),  # the sidecar .json's other fields (img2dataset status, sizes, LAION scores…)
])
_JSON_MAPPED = ("caption", "url", "sha256", "key")


def _json_rest(meta: dict) -> str | None:
    """A sidecar JSON's fields that have no column of their own, as JSON text (kept in ``extra``)."""
    rest = {k: v for k, v in meta.items() if k not in _JSON_MAPPED}
    return json.dumps(rest, ensure_ascii=False, sort_keys=True, default=str) if rest else None
_IDENTITY = Mapping(
    "internal",
    {"key": "key", "caption": "caption", "url": "url", "image_ref": "image_ref", "sha256_meta": "sha256"},
    [],
)


def _wds_row(rows: dict[str, list[Any]], key, caption, url, ref, sha, i, notes, extra: str | None = None) -> None:
    for k, v in (("key", key), ("caption", caption), ("url", url), ("image_ref", ref), ("sha256", sha),
                 ("__row", i), ("__fix_notes", notes), ("__extra_json", extra)):
        rows[k].append(v if v is None or k in ("__row", "__fix_notes") else str(v))


def _tar_groups(
    shard: Path, label: str | None = None,
) -> tuple[dict[str, dict[str, tarfile.TarInfo]], dict[str, list[str]], list[str]]:
    """Members of a tar grouped by webdataset key (member path up to the first dot of its
    basename): (groups, per-key notes, shard notes). A repeated member is noted on its key and
    the first one kept (case K06); links are noted and skipped; a shard cut short keeps the
    members before the cut, with a shard note (its last member may then decode as truncated).

    ``label``: the name in errors (the shard's URI when ``shard`` is its local copy).

    Raises:
        InputError: not a tar at all.
    """
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    notes: dict[str, list[str]] = {}
    unit_notes: list[str] = []
    try:
        tf = tarfile.open(shard, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"{label or shard}: not a readable tar shard: {e}") from None
    with tf:
        it = iter(tf)
        while True:
            try:
                m = next(it)
            except StopIteration:
                break
            except (tarfile.TarError, OSError, EOFError) as e:
                unit_notes.append(f"truncated_shard: {e}; kept the {sum(len(g) for g in groups.values())} members before it")
                break
            d, _, base = m.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{d}/{stem}" if d else stem
            if m.issym() or m.islnk():
                notes.setdefault(key, []).append(f"link_member({ext.lower()}): {m.name!r} is a link; skipped")
                continue
            if not m.isfile():
                continue
            g = groups.setdefault(key, {})
            ext = ext.lower()
            if ext in g:
                notes.setdefault(key, []).append(f"repeated_member({ext}): {m.name!r} appears again; kept the first")
                continue
            g[ext] = m
        if not unit_notes:  # tarfile ends quietly at a cut: look for the end-of-archive marker
            size = shard.stat().st_size
            cut = [m.name for g in groups.values() for m in g.values() if m.offset_data + m.size > size]
            with open(shard, "rb") as f:
                f.seek(tf.offset)
                tail = f.read(1024)
            if cut:
                unit_notes.append(f"truncated_shard: member(s) {cut} extend past the end of the file")
            elif len(tail) < 1024 or tail.strip(b"\0"):
                unit_notes.append(f"truncated_shard: no end-of-archive marker after byte {tf.offset} (file cut short?)")
    return groups, notes, unit_notes


def _text(data: bytes, what: str, notes: list[str]) -> str:
    """Decode a sidecar text (caption) as UTF-8 without a BOM; invalid bytes → U+FFFD with a note."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        notes.append(f"invalid_utf8({what}): replaced with U+FFFD")
        return data.decode("utf-8", "replace").strip()


def _image_member(g: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo | None:
    return next((m for e, m in g.items() if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)


def _tar_ref(shard: Path, ref_shard: str | None, img: tarfile.TarInfo) -> str:
    """The ``tar:`` reference of a member; ``ref_shard``: the URI ``shard`` is a local copy of
    (read back by :func:`curate.media.images.read_ref` as a ranged read through :mod:`curate.store.fsio`)."""
    if ref_shard is None:
        return tar_ref(shard, img.name, img.offset_data, img.size)
    return f"tar:{img.offset_data}:{img.size}:{ref_shard}#{img.name}"


_TMP_PREFIX = ".ingest-tmp-"  # local copies of shards on object storage (a killed run's are removed by the next)


@contextlib.contextmanager
def _local_copy(ws: Workspace, p: Path | str) -> Iterator[Path]:
    """A local path ``p`` as is; a URI streamed (bounded memory) into a temp file under the
    workspace, removed afterwards. A shard is read once, sequentially — one GET instead of a
    ranged request per tar header — and parsed exactly as a local one."""
    if not isinstance(p, str):
        yield p
        return
    with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=ws.root) as d:
        dest = Path(d) / (fsio.name_of(p) or "file")
        try:
            fsio.copy_to_local(p, dest)
        except (ValueError, OSError) as e:
            raise InputError(f"{p}: cannot read: {e}") from None
        yield dest


def _webdataset_table(shard: Path, ref_shard: str | None = None) -> tuple[pa.Table, list[str]]:
    """One row per key; caption from ``.txt`` (else the ``.json``'s caption), url and sha256
    from ``.json`` (img2dataset writes both). Returns (rows, shard notes). ``ref_shard``: the
    URI ``shard`` is a local copy of."""
    groups, notes, unit_notes = _tar_groups(shard, ref_shard)
    rows: dict[str, list[Any]] = {k: [] for k in _WDS_SCHEMA.names}
    with tarfile.open(shard, "r:*") as tf:
        for i, (key, g) in enumerate(groups.items()):
            caption = url = sha = extra = None
            kn = list(notes.get(key, []))
            try:
                if "json" in g:
                    try:
                        meta = json.loads(_text(tf.extractfile(g["json"]).read(), "json", kn))
                        if isinstance(meta, dict):
                            caption, url, sha = meta.get("caption"), meta.get("url"), meta.get("sha256")
                            extra = _json_rest(meta)
                    except ValueError:
                        kn.append(f"bad_json({key}.json): not valid JSON")
                if "txt" in g:
                    caption = _text(tf.extractfile(g["txt"]).read(), "txt", kn)
            except (tarfile.TarError, OSError, EOFError) as e:
                kn.append(f"unreadable_member: {e}")
            img = _image_member(g)
            ref = _tar_ref(shard, ref_shard, img) if img else None
            _wds_row(rows, key, caption, url, ref, sha, i, kn, extra)
    return pa.table(rows, schema=_WDS_SCHEMA), unit_notes


def _companion_refs(images: Path | str, ws: Workspace) -> pa.Table:
    """key → image reference for an img2dataset shard's ``NNNNN.tar`` or ``NNNNN/`` folder
    (local, or a URI)."""
    keys, refs = [], []
    if isinstance(images, str):
        st = fsio.stat(images)
        if st is not None and st.is_dir:
            for rel, _ in _uri_image_files(images):
                keys.append(PurePosixPath(rel).name.partition(".")[0])
                refs.append(f"{images.rstrip('/')}/{rel}")
        elif st is not None:
            with _local_copy(ws, images) as local:
                groups, _, _ = _tar_groups(local, images)
                for key, g in groups.items():
                    img = _image_member(g)
                    if img is not None:
                        keys.append(key.rpartition("/")[2])
                        refs.append(_tar_ref(local, images, img))
    elif images.is_file():
        groups, _, _ = _tar_groups(images)
        for key, g in groups.items():
            img = _image_member(g)
            if img is not None:
                keys.append(key.rpartition("/")[2])
                refs.append(tar_ref(images, img.name, img.offset_data, img.size))
    else:
        for p in _folder_files(images, ws.root):
            keys.append(p.name.partition(".")[0])
            refs.append(str(p.resolve()))
    return pa.table({"__k": pa.array(keys, pa.string()), "__ref": pa.array(refs, pa.string())})


# ----------------------------------------------------------------------------------------------
# SQL mapping


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass
class _Plan:
    """How one unit's rows become canonical columns."""

    mapping: Mapping
    columns: list[str]  # readable (non-bytes) columns of the rows, incl. internal __ columns
    row_expr: str = "b.__row"
    image_sql: str | None = None  # computed image_ref expression (overrides the mapping's)
    images_root: Path | str | None = None  # a path column is relative to this folder (or URI)
    types: dict[str, pa.DataType] = field(default_factory=dict)  # source column types, when known


def _select_sql(plan: _Plan, source_id: int, from_sql: str) -> str:
    """SELECT turning the rows of ``from_sql`` (alias ``b``) into ``samples`` columns.

    Cheap per row: casts, and a notes list built only for rows that need one. URL checks
    and rejects are a second, narrow pass over the inserted rows (:func:`_reject_pass`)."""
    mapping, columns = plan.mapping, plan.columns
    exprs: dict[str, str] = {}
    notes: list[tuple[str, str]] = []  # (condition, note text)
    for canon, typ in CANONICAL.items():
        src = mapping.columns.get(canon)
        if src is None or (canon == "image_ref" and plan.image_sql is not None):
            exprs[canon] = f"CAST(NULL AS {typ})"
            continue
        col = "b." + _q(src)
        t = plan.types.get(src)
        is_str = t is not None and (pa.types.is_string(t) or pa.types.is_large_string(t))
        if typ == "VARCHAR":
            v = col if is_str else f"CAST({col} AS VARCHAR)"
            e = f"NULLIF(trim({v}), '')" if canon in ("url", "image_ref") else v
        elif t is not None and pa.types.is_integer(t) and _fits(t, typ):
            e = f"CAST({col} AS {typ})"  # exact: every value of the source type fits (no note possible)
        elif t is not None and pa.types.is_integer(t):
            e = f"TRY_CAST({col} AS {typ})"
            code = "not_integer" if typ == "INTEGER" else "not_bigint"
            notes.append((f"{col} IS NOT NULL AND {e} IS NULL",
                          f"'{code}({canon}): ' || CAST({col} AS VARCHAR) || ' does not fit {typ}; stored NULL'"))
        elif t is not None and pa.types.is_floating(t) and typ == "DOUBLE":
            e = f"(CASE WHEN isfinite({col}) THEN CAST({col} AS DOUBLE) END)"
            notes.append((f"NOT isfinite({col})",
                          f"'not_finite({canon}): ' || CAST({col} AS VARCHAR) || ' stored as NULL'"))
        elif typ == "DOUBLE":
            d = f"TRY_CAST({col} AS DOUBLE)"
            e = f"(CASE WHEN isfinite({d}) THEN {d} END)"
            notes.append((f"{col} IS NOT NULL AND {e} IS NULL",
                          f"'not_finite({canon}): ' || CAST({col} AS VARCHAR) || ' stored as NULL'"))
        elif typ == "INTEGER":
            d = f"TRY_CAST({col} AS DOUBLE)"
            e = f"(CASE WHEN {d} = floor({d}) AND abs({d}) < 2147483648 THEN CAST({d} AS INTEGER) END)"
            notes.append((f"{col} IS NOT NULL AND {e} IS NULL",
                          f"'not_integer({canon}): ' || CAST({col} AS VARCHAR) || ' does not fit INTEGER; stored NULL'"))
        else:  # BIGINT
            e = f"TRY_CAST({col} AS BIGINT)"
            notes.append((f"{col} IS NOT NULL AND {e} IS NULL",
                          f"'not_bigint({canon}): ' || CAST({col} AS VARCHAR) || ' does not fit BIGINT; stored NULL'"))
        exprs[canon] = e
    for canon in ("width", "height"):  # a size is never negative
        if mapping.columns.get(canon) is not None:
            col = "b." + _q(mapping.columns[canon])
            notes.append((f"{exprs[canon]} < 0", f"'negative({canon}): ' || CAST({col} AS VARCHAR) || ' stored as NULL'"))
            exprs[canon] = f"(CASE WHEN {exprs[canon]} >= 0 THEN {exprs[canon]} END)"
    if plan.image_sql is not None:
        exprs["image_ref"] = plan.image_sql
    elif plan.images_root is not None and "image_ref" in mapping.columns:
        r = plan.images_root
        root = (r if isinstance(r, str) else str(r.resolve())).rstrip("/") + "/"
        exprs["image_ref"] = f"(CASE WHEN {exprs['image_ref']} IS NOT NULL THEN {_lit(root)} || {exprs['image_ref']} END)"
    used = set(mapping.columns.values())
    extra_cols = [c for c in columns if c not in used and not c.startswith("__") and c != "file_row_number"]
    extra = (
        "json_object(" + ", ".join(f"{_lit(c)}, b.{_q(c)}" for c in extra_cols) + ")" if extra_cols else "CAST(NULL AS JSON)"
    )
    if "__extra_json" in columns:  # webdataset / folder sidecar JSON: its unmapped fields
        extra = "json(b.__extra_json)"
    if notes:
        listed = "list_filter([" + ", ".join(f"CASE WHEN {c} THEN {t} END" for c, t in notes) + "], lambda x: x IS NOT NULL)"
        notes_sql = f"(CASE WHEN {' OR '.join(f'({c})' for c, _ in notes)} THEN {listed} ELSE CAST([] AS VARCHAR[]) END)"
    else:
        notes_sql = "CAST([] AS VARCHAR[])"
    if "__fix_notes" in columns:
        notes_sql = f"list_concat(coalesce(b.__fix_notes, []), {notes_sql})"
    base = source_id << ROW_BITS
    cols = ", ".join(f"{exprs[c]} AS {c}" for c in CANONICAL)
    where = " WHERE b.__reject IS NULL" if "__reject" in columns else ""
    return (
        f"SELECT {base} + {plan.row_expr} AS sample_id, {source_id} AS source_id, {plan.row_expr} AS source_row, "
        f"{cols}, {extra} AS extra, {notes_sql} AS notes FROM {from_sql}{where}"
    )


def _fits(t: pa.DataType, typ: str) -> bool:
    """Every value of arrow integer type ``t`` is representable in DuckDB type ``typ``."""
    if typ == "DOUBLE":
        return True
    signed = pa.types.is_signed_integer(t)
    limit = 32 if typ == "INTEGER" else 64
    return t.bit_width < limit or (signed and t.bit_width == limit)


def _raw_sql(columns: list[str]) -> str:
    """The original row as JSON text (kept in ``rejects.raw``)."""
    raw_cols = [c for c in columns if not c.startswith("__") and c != "file_row_number"]
    return ("CAST(json_object(" + ", ".join(f"{_lit(c)}, b.{_q(c)}" for c in raw_cols) + ") AS VARCHAR)") if raw_cols else "'{}'"


_SAMPLE_COLS = "sample_id, source_id, source_row, " + ", ".join(CANONICAL) + ", extra, notes"


def _insert_from(ws: Workspace, plan: _Plan, source_id: int, from_sql: str, rows: tuple[int, int] | None = None) -> tuple[int, int]:
    """Insert the rows of ``from_sql`` into samples, then move the rows without a usable URL or
    image to rejects (with the original row from ``from_sql``). Returns (samples, rejects).

    ``rows``: the (first, last) source_row this call inserts (None: the whole unit)."""
    con = ws.con
    n_all = con.execute(f"INSERT INTO samples ({_SAMPLE_COLS}) {_select_sql(plan, source_id, from_sql)}").fetchall()[0][0]
    n_pre = 0
    if "__reject" in plan.columns:  # rows the reader already refused (e.g. malformed TSV lines)
        n_pre = con.execute(
            f"INSERT INTO rejects SELECT {source_id}, {plan.row_expr}, b.__reject, b.__raw FROM {from_sql} "
            "WHERE b.__reject IS NOT NULL"
        ).fetchall()[0][0]
    n_rej = _reject_pass(ws, plan, source_id, from_sql, rows)
    return int(n_all) - n_rej, n_rej + int(n_pre)


# the common case of URL_RE without the regex engine: no whitespace at all, http(s)://, a host character
_FAST_URL = (
    "(strpos(url, ' ') = 0 AND strpos(url, chr(9)) = 0 AND strpos(url, chr(10)) = 0 AND strpos(url, chr(13)) = 0 "
    "AND ((starts_with(url, 'https://') AND substr(url, 9, 1) NOT IN ('', '/', '?', '#')) "
    "OR (starts_with(url, 'http://') AND substr(url, 8, 1) NOT IN ('', '/', '?', '#'))))"
)


def _reject_pass(ws: Workspace, plan: _Plan, source_id: int, from_sql: str, rows: tuple[int, int] | None) -> int:
    """One narrow scan (url, image_ref) of the rows just inserted: a row with neither a usable
    URL nor an image is moved to rejects (``no_url_or_image`` / ``invalid_url``); a bad URL
    beside an image is kept with a ``not_a_url`` note."""
    con = ws.con
    where = f"source_id = {source_id}" + (f" AND source_row BETWEEN {rows[0]} AND {rows[1]}" if rows else "")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _bad AS SELECT source_row, url, image_ref IS NULL AS reject FROM samples "
        f"WHERE {where} AND ((url IS NULL AND image_ref IS NULL) OR (url IS NOT NULL AND NOT {_FAST_URL} "
        f"AND NOT regexp_matches(url, {_lit(URL_RE)})))"
    )
    try:
        n_bad, n_rej = con.execute("SELECT count(*), count(*) FILTER (reject) FROM _bad").fetchall()[0]
        if not n_bad:
            return 0
        con.execute(
            f"UPDATE samples SET notes = list_append(notes, 'not_a_url(url): ' || left(_bad.url, 80)) FROM _bad "
            f"WHERE samples.source_id = {source_id} AND samples.source_row = _bad.source_row AND NOT _bad.reject"
        )
        if n_rej:
            con.execute(
                f"INSERT INTO rejects SELECT {source_id}, x.source_row, CASE WHEN x.url IS NULL THEN 'no_url_or_image' "
                f"ELSE 'invalid_url: ' || left(x.url, 80) END, r.raw FROM _bad x LEFT JOIN "
                f"(SELECT {plan.row_expr} AS source_row, {_raw_sql(plan.columns)} AS raw FROM {from_sql} "
                f"WHERE {plan.row_expr} IN (SELECT source_row FROM _bad WHERE reject)) r USING (source_row) "
                f"WHERE x.reject ORDER BY x.source_row"
            )
            con.execute(
                f"DELETE FROM samples WHERE source_id = {source_id} AND source_row IN (SELECT source_row FROM _bad WHERE reject)"
            )
        return int(n_rej)
    finally:
        con.execute("DROP TABLE IF EXISTS _bad")


def _insert_table(ws: Workspace, table: pa.Table, plan: _Plan, source_id: int, join: str = "") -> tuple[int, int]:
    ws.con.register("batch", table)
    try:
        rows = table.column("__row")
        span = (pa.compute.min(rows).as_py(), pa.compute.max(rows).as_py()) if table.num_rows else (0, -1)
        return _insert_from(ws, plan, source_id, f"batch b{join}", span)
    finally:
        _unregister(ws.con, "batch")


def _unregister(con, name: str) -> None:
    """Unregister a view even when the transaction is aborted (the rollback follows)."""
    import duckdb

    try:
        con.unregister(name)
    except duckdb.Error:
        pass


# ----------------------------------------------------------------------------------------------
# units


class _Utf8Fallback(Exception):
    """DuckDB refused the file for invalid UTF-8; re-read it through pyarrow."""


def _table_plan(unit: Unit, schema: pa.Schema, ws: Workspace, kind: str) -> tuple[_Plan, list[str]]:
    """Mapping and image reference rules for a parquet / Arrow table."""
    names = list(schema.names)
    bytes_cols = [n for n in names if _is_bytes_type(schema.field(n).type)]
    readable = [n for n in names if n not in bytes_cols]
    mapping = resolve(names, unit.source.schema_, str(unit.path))
    unit_notes: list[str] = []
    plan = _Plan(mapping, readable)
    img_col = mapping.columns.get("image_ref")
    if bytes_cols:
        chosen = img_col if img_col in bytes_cols else sorted(
            bytes_cols, key=lambda c: (BYTES_COLUMN_ORDER.index(c) if c in BYTES_COLUMN_ORDER else 99, names.index(c))
        )[0]
        cols = {k: v for k, v in mapping.columns.items() if k != "image_ref"}
        cols["image_ref"] = chosen
        unmapped = [c for c in names if c not in cols.values()]
        plan.mapping = Mapping(mapping.layout, cols, unmapped)
        if isinstance(unit.path, str):  # a URI: curate.media.refs reads the row group back through curate.store.fsio
            pre, suf = f"{kind}:", f":{unit.uri}#{chosen}"
        else:
            pre, suf = ref_prefix_sql("parquet" if kind == "parquet" else "arrow", unit.path, chosen)
        plan.image_sql = f"({_lit(pre)} || CAST(__ROW__ AS VARCHAR) || {_lit(suf)})"
        others = [c for c in bytes_cols if c != chosen]
        unit_notes.append(f"images: bytes in column {chosen!r} (referenced, not copied)"
                          + (f"; other bytes columns not read: {others}" if others else ""))
    elif unit.img2dataset and unit.images is not None and "key" in mapping.columns:
        status = "b.status" if "status" in names else "NULL"
        err = "b.error_message" if "error_message" in names else "NULL"
        plan.image_sql = (
            f"coalesce(r.__ref, 'missing:img2dataset ' || coalesce(CAST({status} AS VARCHAR), 'no image') "
            f"|| coalesce(': ' || CAST({err} AS VARCHAR), ''))"
        )
        unit_notes.append(f"images: {fsio.name_of(unit.images)} matched by key")
    elif img_col is not None and unit.images is not None:
        plan.images_root = unit.images
    elif img_col is not None:
        unit_notes.append(f"column {img_col!r} names files but the source has no 'images' folder")
        plan.mapping = Mapping(mapping.layout, {k: v for k, v in mapping.columns.items() if k != "image_ref"},
                               mapping.unmapped + [img_col])
    elif unit.img2dataset:
        unit_notes.append("no images beside this parquet: metadata only")
    return plan, unit_notes


def _companion_join(ws: Workspace, unit: Unit, plan: _Plan, row_sql: str) -> str:
    """Finish ``plan.image_sql`` for rows numbered by ``row_sql``; for an img2dataset shard whose
    images are in a companion tar/folder, register its key → reference table as ``_refs`` (the
    caller unregisters it) and return the JOIN clause that brings it in ("" otherwise)."""
    if not plan.image_sql:
        return ""
    plan.image_sql = plan.image_sql.replace("__ROW__", row_sql)
    if "r.__ref" not in plan.image_sql:
        return ""
    ws.con.register("_refs", _companion_refs(unit.images, ws))
    return f" LEFT JOIN _refs r ON r.__k = CAST(b.{_q(plan.mapping.columns['key'])} AS VARCHAR)"


def _parquet_plan(ws: Workspace, unit: Unit):
    """(ParquetFile, arrow schema, plan with column types, unit notes) of a parquet unit, by
    local path or by URI (through :mod:`curate.store.fsio`). Raises InputError: not readable."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fsio.open_input_file(unit.path) if isinstance(unit.path, str) else unit.path)
    except Exception as e:  # noqa: BLE001 - missing object, permissions, not parquet
        raise InputError(f"{unit.uri}: not a readable parquet file: {e}") from None
    schema = pf.schema_arrow
    plan, unit_notes = _table_plan(unit, schema, ws, "parquet")
    plan.types = {f.name: f.type for f in schema}
    info(f"[ingest] {unit.name}: {plan.mapping.describe()}")
    return pf, schema, plan, unit_notes


def _ingest_parquet(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int) -> tuple[Mapping, int, int, list[str], list[str]]:
    import duckdb

    if isinstance(unit.path, str):
        return _ingest_parquet_batches(ws, cfg, unit, source_id)
    _, schema, plan, unit_notes = _parquet_plan(ws, unit)
    join = _companion_join(ws, unit, plan, "file_row_number")
    try:
        plan.row_expr = "b.file_row_number"
        proj = ", ".join(_q(c) for c in plan.columns)
        src = f"(SELECT {proj}, file_row_number FROM read_parquet({_lit(str(unit.path.resolve()))}, file_row_number = true)) b"
        try:
            n_ok, n_rej = _insert_from(ws, plan, source_id, src + join)
        except duckdb.InvalidInputException as e:
            if "UTF8" not in str(e) and "encoding" not in str(e):
                raise InputError(f"{unit.path}: {e}") from None
            raise _Utf8Fallback() from None
        return plan.mapping, n_ok, n_rej, unit_notes, list(schema.names)
    finally:
        if join:
            _unregister(ws.con, "_refs")


def _ingest_parquet_batches(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    """A parquet file read through pyarrow in record batches of ``ingest.batch_rows``, with the
    plan, column types, row numbers (``__row`` = the file row number) and reject pass of
    :func:`_ingest_parquet`, so the catalog rows equal DuckDB's (tested), and invalid UTF-8
    repaired per row with a note. Used for a file named by URI (``s3://…``, through
    :mod:`curate.store.fsio`; DuckDB's httpfs is not used) and for a local file DuckDB refuses for
    its encoding."""
    pf, schema, plan, unit_notes = _parquet_plan(ws, unit)
    join = _companion_join(ws, unit, plan, "b.__row")
    n_ok = n_rej = 0
    repaired = False
    try:
        for t in _arrow_batches(pf.iter_batches(batch_size=cfg.ingest.batch_rows, columns=plan.columns)):
            repaired = repaired or "__fix_notes" in t.column_names
            plan.columns = t.column_names
            a, b = _insert_table(ws, t, plan, source_id, join)
            n_ok, n_rej = n_ok + a, n_rej + b
    except (OSError, pa.ArrowException) as e:  # an object that cannot be read to its end
        raise InputError(f"{unit.uri}: not a readable parquet file: {e}") from None
    finally:
        if join:
            _unregister(ws.con, "_refs")
    if repaired:  # as the local path notes it when DuckDB refuses the file
        unit_notes.append("invalid UTF-8 repaired per row (read through pyarrow)")
    return plan.mapping, n_ok, n_rej, unit_notes, list(schema.names)


def _ingest_hf_arrow(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    """One Arrow stream file of a ``save_to_disk`` folder (memory-mapped; bytes not read)."""
    src = pa.memory_map(str(unit.path), "r")
    try:
        reader = pa.ipc.open_stream(src)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(src)
    schema = reader.schema
    plan, unit_notes = _table_plan(unit, schema, ws, "arrow")
    _companion_join(ws, unit, plan, "b.__row")  # an Arrow file has no companion images: only the row refs
    info(f"[ingest] {unit.path.name}: {plan.mapping.describe()}")
    batches = reader if isinstance(reader, pa.ipc.RecordBatchStreamReader) else (
        reader.get_batch(i) for i in range(reader.num_record_batches))
    keep = plan.columns
    n_ok = n_rej = 0
    for t in _arrow_batches(rb.select(keep) for rb in batches):
        plan.columns = t.column_names
        a, b = _insert_table(ws, t, plan, source_id)
        n_ok, n_rej = n_ok + a, n_rej + b
    return plan.mapping, n_ok, n_rej, unit_notes, list(schema.names)


def _ingest_tsv(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    names, mapping = _tsv_layout(unit.path, unit.source.schema_)
    info(f"[ingest] {unit.name}: {mapping.describe()}" + (" (headerless)" if names else ""))
    plan = _Plan(mapping, [])
    n_ok = n_rej = 0
    for t in _tsv_batches(unit.path, names, cfg.ingest.batch_rows):
        plan.columns = t.column_names
        a, b = _insert_table(ws, t, plan, source_id)
        n_ok, n_rej = n_ok + a, n_rej + b
    return mapping, n_ok, n_rej, [], names or []


def _ingest_unit(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    """Ingest one unit (inside the caller's transaction). Returns (mapping, n_samples,
    n_rejected, unit notes, file columns)."""
    if isinstance(unit.path, str) or isinstance(unit.images, str):
        try:
            return _ingest_unit_local_or_uri(ws, cfg, unit, source_id)
        except (OSError, pa.ArrowException) as e:  # an object store refused a read mid-file
            raise InputError(f"{unit.uri}: cannot read: {e}") from None
    return _ingest_unit_local_or_uri(ws, cfg, unit, source_id)


def _ingest_unit_local_or_uri(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    if unit.fmt == "parquet":
        return _ingest_parquet(ws, cfg, unit, source_id)
    if unit.fmt == "tsv":
        return _ingest_tsv(ws, cfg, unit, source_id)
    if unit.fmt == "hf_arrow":
        return _ingest_hf_arrow(ws, cfg, unit, source_id)
    unit_notes: list[str] = []
    if unit.fmt == "webdataset":
        with _local_copy(ws, unit.path) as local:
            table, unit_notes = _webdataset_table(local, unit.path if isinstance(unit.path, str) else None)
        mapping = Mapping("webdataset", _IDENTITY.columns, [])
    else:
        table = _folder_table(unit.path, ws)
        mapping = Mapping("folder", _IDENTITY.columns, [])
    n_ok, n_rej = _insert_table(ws, table, _Plan(mapping, table.column_names), source_id)
    return mapping, n_ok, n_rej, unit_notes, []


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    """Ingest every input unit not yet ingested. Returns counters.

    Raises:
        InputError: an input that cannot be used at all (unreadable file, unknown layout,
            case-colliding columns, a changed file that was already ingested).
    """
    counters: dict[str, Any] = {"units": 0, "units_skipped": 0, "rows": 0, "samples": 0, "rejected": 0, "layouts": {}}
    units, skipped = _unit_list(ws, cfg)
    counters["inputs_inside_workspace_skipped"] = len(skipped)
    for d in ws.root.glob(_TMP_PREFIX + "*"):  # only one ingest runs at a time (the catalog has one writer)
        shutil.rmtree(d, ignore_errors=True)
    # rows carry their own source_row, so their physical order in the table does not matter:
    # let DuckDB insert from both threads without keeping file order (~5% at 10M rows)
    counters["units_removed"] = _prune(ws, units)
    ws.con.execute("SET preserve_insertion_order = false")
    try:
        _ingest_units(ws, cfg, units, counters)
    finally:
        ws.con.execute("RESET preserve_insertion_order")
    _totals(ws, counters)
    return counters


def _prune(ws: Workspace, units: list[Unit]) -> list[str]:
    """Remove from the catalog every ingested unit the config no longer names (a source taken
    out of the config, a file gone from a glob): the catalog mirrors the config, so its
    samples leave the manifest. Returns the removed URIs."""
    want = {u.uri for u in units}
    gone = [(sid, uri) for sid, uri in ws.q("SELECT source_id, uri FROM sources ORDER BY source_id") if uri not in want]
    if not gone:
        return []
    ids = [sid for sid, _ in gone]
    with ws.transaction() as con:
        for table in ("images", "embeddings", "caption_stats", "flags", "decisions", "clusters"):
            con.execute(f"DELETE FROM {table} WHERE sample_id IN (SELECT sample_id FROM samples "
                        "WHERE source_id IN (SELECT unnest(?)))", [ids])
        con.execute("DELETE FROM dup_edges")  # rebuilt by dedup
        for table in ("samples", "rejects", "sources"):
            con.execute(f"DELETE FROM {table} WHERE source_id IN (SELECT unnest(?))", [ids])
    for _, uri in gone:
        info(f"[ingest] {uri} is no longer an input: its samples were removed from the catalog")
    return [uri for _, uri in gone]


def _bad_file(ws: Workspace, unit: Unit, fp: str, err: Exception) -> None:
    """Record an unreadable unit (``on_bad_file: skip``): a source with 0 rows and the error."""
    source_id = (ws.scalar("SELECT max(source_id) FROM sources") or 0) + 1
    ws.con.execute(
        "INSERT INTO sources VALUES (?, ?, ?, ?, NULL, 0, 0, 0, ?, '{}', ?, '[]')",
        [source_id, unit.source.name, unit.uri, unit.fmt, fp, json.dumps([f"bad_file: {err}"])],
    )
    info(f"[ingest] skipped {unit.uri}: {err}")


def _ingest_units(ws: Workspace, cfg: RunConfig, units: list[Unit], counters: dict[str, Any]) -> None:
    counters["bad_files"] = []
    for unit in bar(units, desc="ingest", unit="file"):
        uri = unit.uri
        fp = _fingerprint(unit, ws)
        row = ws.q("SELECT source_id, fingerprint, notes FROM sources WHERE uri = ?", [uri])
        if row and row[0][1] != fp and "bad_file: " in (row[0][2] or ""):
            ws.con.execute("DELETE FROM sources WHERE source_id = ?", [row[0][0]])  # a skipped file, now changed: retry
            row = []
        if row:
            if row[0][1] != fp:
                raise InputError(
                    f"{uri} changed since it was ingested (source_id {row[0][0]}); start a new workspace "
                    "or restore the file — curate does not silently re-number samples"
                )
            counters["units_skipped"] += 1
            continue
        source_id = (ws.scalar("SELECT max(source_id) FROM sources") or 0) + 1
        try:
            try:
                with ws.transaction():
                    res = _ingest_unit(ws, cfg, unit, source_id)
                    _record_source(ws, unit, source_id, fp, res)
            except _Utf8Fallback:
                with ws.transaction():
                    res = _ingest_parquet_batches(ws, cfg, unit, source_id)
                    _record_source(ws, unit, source_id, fp, res)
        except InputError as e:
            if cfg.ingest.on_bad_file != "skip":
                raise
            _bad_file(ws, unit, fp, e)
            counters["bad_files"].append(uri)
            continue
        mapping, n_ok, n_rej, _, _ = res
        counters["units"] += 1
        counters["rows"] += n_ok + n_rej
        counters["samples"] += n_ok
        counters["rejected"] += n_rej
        counters["layouts"][mapping.layout] = counters["layouts"].get(mapping.layout, 0) + 1


def _totals(ws: Workspace, counters: dict[str, Any]) -> None:
    """Catalog-wide counters (every unit ingested so far, not only this run's)."""
    # cross-shard key reuse (K06): reported, never merged
    wds = [r[0] for r in ws.q("SELECT source_id FROM sources WHERE format = 'webdataset'")]
    reuse = ws.scalar(
        "SELECT count(*) FROM (SELECT s.key FROM samples s JOIN sources o USING (source_id) "
        "WHERE s.source_id IN (SELECT unnest(?)) GROUP BY o.name, s.key HAVING count(DISTINCT s.source_id) > 1)",
        [wds],
    ) if wds else 0
    counters["webdataset_keys_in_several_shards"] = int(reuse or 0)
    # columns that only some files of a source have (case K04): unioned by name, NULL elsewhere
    partial: dict[str, list[str]] = {}
    for name, in ws.q("SELECT DISTINCT name FROM sources WHERE format IN ('parquet', 'hf_arrow') ORDER BY name"):
        cols = [set(json.loads(c)) for c, in ws.q("SELECT columns FROM sources WHERE name = ?", [name])]
        some = sorted(set().union(*cols) - set.intersection(*cols)) if len(cols) > 1 else []
        if some:
            partial[name] = some
    counters["columns_only_in_some_files"] = partial
    counters["total_samples"] = int(ws.scalar("SELECT count(*) FROM samples"))
    counters["total_rejected"] = int(ws.scalar("SELECT count(*) FROM rejects"))
    counters.update(caption_and_note_counts(ws))
    counters["rejected_by_reason"] = rejected_by_reason(ws)
    counters["notes_by_code"] = notes_by_code(ws)


def _record_source(ws: Workspace, unit: Unit, source_id: int, fp: str, res) -> None:
    mapping, n_ok, n_rej, unit_notes, file_columns = res
    ws.con.execute(
        "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [source_id, unit.source.name, unit.uri, unit.fmt, mapping.layout, n_ok + n_rej, n_ok, n_rej, fp,
         json.dumps(mapping.columns), json.dumps(unit_notes), json.dumps(file_columns)],
    )


def caption_and_note_counts(ws: Workspace) -> dict[str, int]:
    """Samples with a NULL caption, an empty/blank caption, and at least one ingest note."""
    missing, empty, noted = ws.q(
        "SELECT count(*) FILTER (caption IS NULL), count(*) FILTER (caption IS NOT NULL AND trim(caption) = ''), "
        "count(*) FILTER (len(notes) > 0) FROM samples"
    )[0]
    return {"captions_missing": int(missing), "captions_empty": int(empty), "rows_with_notes": int(noted)}


def rejected_by_reason(ws: Workspace) -> dict[str, int]:
    """Rejected rows per reason code (the text before the first ':')."""
    return {k: int(v) for k, v in ws.q(
        "SELECT split_part(reason, ':', 1) AS k, count(*) FROM rejects GROUP BY k ORDER BY k")}


def notes_by_code(ws: Workspace) -> dict[str, int]:
    """Per-row ingest notes per ``code(column)`` (see the module doc for the codes)."""
    return {k: int(v) for k, v in ws.q(
        "SELECT split_part(n, ':', 1) AS k, count(*) FROM (SELECT unnest(notes) AS n FROM samples "
        "WHERE len(notes) > 0) GROUP BY k ORDER BY k")}
