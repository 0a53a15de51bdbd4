"""Ingest readers: each input format read into pyarrow tables of rows.

Parquet / Arrow record batches (invalid UTF-8 repaired per row), TSV files (CC3M/CC12M, with
or without a header), webdataset shards (members grouped by key, sidecar ``.txt`` / ``.json``),
image folders (with sidecars) and img2dataset companion images (key → reference). Every table
carries ``__row`` (the 0-based row in the unit) and optionally ``__fix_notes``, ``__reject``,
``__raw`` and ``__extra_json``, which :mod:`curate.stages.ingest.normalise` turns into catalog
rows. Shards on object storage are streamed into a local temp copy (:func:`local_copy`).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pyarrow as pa

from curate.errors import InputError
from curate.media.images import tar_ref
from curate.stages.ingest.schemas import (
    Mapping,
    detect_headerless,
    load_layouts,
    match,
    resolve,
)
from curate.stages.ingest.units import IMAGE_EXTS, RealPaths, folder_files, uri_image_files
from curate.store import fsio
from curate.store.catalog import Workspace

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


def is_bytes_type(t: pa.DataType) -> bool:
    """Image bytes: binary, struct with a binary ``bytes`` field (HF Image), or a list of those."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return True
    if pa.types.is_struct(t):
        return any(t.field(i).name == "bytes" and is_bytes_type(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return is_bytes_type(t.value_type)
    return False


def arrow_batches(batches: Iterator[pa.RecordBatch], offset: int = 0) -> Iterator[pa.Table]:
    """Record batches as tables with invalid UTF-8 repaired and ``__row`` numbered from ``offset``."""
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


def tsv_batches(path: Path | str, names: list[str] | None, batch_rows: int) -> Iterator[pa.Table]:
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


def tsv_layout(path: Path | str, schema: str) -> tuple[list[str] | None, Mapping]:
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


def folder_table(root: Path | str, ws: Workspace, follow_symlinks: str = "inside") -> pa.Table:
    """One row per image file under ``root`` (a local folder or a URI), caption from the
    ``<stem>.txt`` sidecar, url / sha256 / other fields from ``<stem>.json``.

    Symbolic links (``follow_symlinks``, :class:`curate.stages.ingest.units.RealPaths`): an image
    file that may not be read is a rejected row (``symlink_outside_source: …``,
    ``symlink_not_followed: …``), a sidecar that may not be read a per-row note and not read."""
    rejects: list[str | None] = []
    if isinstance(root, str):
        base = root.rstrip("/")
        listing = fsio.walk(root)
        present = {st.uri[len(base) + 1:]: st.size for st in listing}  # every file, for the sidecars

        def sidecar(rel: str, ext: str, notes: list[str]):
            r = PurePosixPath(rel).with_suffix(ext).as_posix()
            return (present[r], lambda: fsio.read_bytes(f"{base}/{r}")) if r in present else None

        entries = [(rel, f"{base}/{rel}") for rel, _ in uri_image_files(root, listing)]
        rejects = [None] * len(entries)
    else:
        paths = RealPaths(root, follow_symlinks)

        def sidecar(rel: str, ext: str, notes: list[str]):
            r = PurePosixPath(rel).with_suffix(ext).as_posix()
            q = root / r
            if not (q.is_file() or q.is_symlink()):
                return None
            real, why = paths.check(r)
            if why is not None:
                code, _, detail = why.partition(": ")
                notes.append(f"{code}({ext[1:]}): {detail}; not read")
                return None
            return (os.stat(real).st_size, Path(real).read_bytes) if os.path.isfile(real) else None

        entries = []
        for p in folder_files(root, ws.root):
            rel = p.relative_to(root).as_posix()
            real, why = paths.check(rel)
            entries.append((rel, real))
            rejects.append(why)
    rows: dict[str, list[Any]] = {k: [] for k in _WDS_SCHEMA.names}
    for i, (rel, ref) in enumerate(entries):
        notes: list[str] = []
        caption = url = sha = extra = None
        if rejects[i] is not None:  # never read, not even its sidecars
            _wds_row(rows, rel, None, None, None, None, i, notes, None)
            continue
        side = sidecar(rel, ".txt", notes)
        if side and _fits(side[0], PurePosixPath(rel).with_suffix(".txt").name, notes):
            data = side[1]()
            caption = _text(data, "txt", notes) if data is not None else None
        js = sidecar(rel, ".json", notes)
        name = PurePosixPath(rel).with_suffix(".json").name
        meta = _sidecar_json(js[1](), name, notes) if js and _fits(js[0], name, notes) else None
        if meta is not None:
            cap, url, sha, extra = _sidecar_fields(meta, notes)
            caption = caption if caption is not None else cap
        _wds_row(rows, rel, caption, url, ref, sha, i, notes, extra)
    table = pa.table(rows, schema=_WDS_SCHEMA)
    raw = [json.dumps({"file": rel}, ensure_ascii=False) if why else None for (rel, _), why in zip(entries, rejects)]
    return table.append_column("__reject", pa.array(rejects, pa.string())).append_column("__raw", pa.array(raw, pa.string()))


#: a sidecar (``.txt`` caption, ``.json`` metadata) larger than this is not read: a per-row note
#: ``sidecar_too_large`` (img2dataset's are < 2 KB)
MAX_SIDECAR_BYTES = 1 << 20
#: a sidecar JSON nested deeper than this is not used: a per-row note ``bad_json`` (img2dataset's are flat)
MAX_SIDECAR_DEPTH = 64


def _fits(size: int | None, name: str, notes: list[str]) -> bool:
    """The sidecar ``name`` is at most :data:`MAX_SIDECAR_BYTES`; else a note and False."""
    if size is not None and size > MAX_SIDECAR_BYTES:
        notes.append(f"sidecar_too_large({name}): {size} bytes > {MAX_SIDECAR_BYTES}; not read")
        return False
    return True


def _deeper_than(obj: Any, limit: int) -> bool:
    """``obj`` (parsed JSON) nests lists / objects more than ``limit`` levels (no recursion)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (list, dict)):
            if d > limit:
                return True
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return False


def _sidecar_json(data: bytes | None, name: str, notes: list[str]) -> dict | None:
    """A sidecar JSON object, or None with a per-row note: too large, not valid JSON, or nested
    deeper than :data:`MAX_SIDECAR_DEPTH` (such a file never crashes ingest; the sample keeps its
    image and ``.txt`` caption)."""
    if data is None or not _fits(len(data), name, notes):
        return None
    deep = f"bad_json({name}): nested deeper than {MAX_SIDECAR_DEPTH} levels; not used"
    try:
        meta = json.loads(_text(data, "json", notes))
    except RecursionError:
        notes.append(deep)
        return None
    except ValueError:
        notes.append(f"bad_json({name}): not valid JSON")
        return None
    if _deeper_than(meta, MAX_SIDECAR_DEPTH):
        notes.append(deep)
        return None
    return meta if isinstance(meta, dict) else None


_WDS_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("url", pa.string()), ("image_ref", pa.string()),
    ("sha256", pa.string()), ("__row", pa.int64()), ("__fix_notes", pa.list_(pa.string())),
    ("__extra_json", pa.string()),  # the sidecar .json's other fields (img2dataset status, sizes, LAION scores…)
])
#: the fields img2dataset writes into every sample's metadata (its ``.json`` sidecar and its parquet)
IMG2DATASET_FIELDS = frozenset({"key", "status", "error_message", "width", "height", "original_width",
                                "original_height"})


def stored_sha256_field(meta: dict) -> str | None:
    """The field of a sidecar JSON that holds the sha256 of the image stored beside it, or None.

    img2dataset's ``sha256`` (a JSON carrying all of :data:`IMG2DATASET_FIELDS`) is the hash of
    the ORIGINAL download, taken before img2dataset resizes and re-encodes it (its default): it
    says nothing about the stored file, so it is kept in ``extra`` and never compared. curate's
    own webdataset export writes the stored file's hash as ``image_sha256`` (``sha256`` there is
    the source image's). Any other sidecar's ``sha256`` is taken as the stored file's."""
    if "image_sha256" in meta:
        return "image_sha256"
    if IMG2DATASET_FIELDS <= meta.keys():
        return None
    return "sha256" if "sha256" in meta else None


def first_caption(value: Any, notes: list[str], column: str = "caption") -> str | None:
    """A caption given as a list of alternative captions → its first non-empty one (``[]`` → ``''``),
    with a note ``caption_list(<column>): N captions; kept the first non-empty`` when there were
    several; anything else as it is (None stays None)."""
    if not isinstance(value, list):
        return value
    texts = [str(v) for v in value if v is not None]
    if len(value) > 1:
        notes.append(f"caption_list({column}): {len(value)} captions; kept the first non-empty")
    return next((t for t in texts if t.strip()), "")


def _sidecar_fields(meta: dict, notes: list[str]) -> tuple[Any, Any, Any, str | None]:
    """(caption, url, sha256 of the stored image, the other fields as JSON text for ``extra``) of a
    sidecar JSON (:func:`stored_sha256_field`, :func:`first_caption`)."""
    sha_field = stored_sha256_field(meta)
    used = {"caption", "url", "key", *([sha_field] if sha_field else [])}
    rest = {k: v for k, v in meta.items() if k not in used}
    extra = json.dumps(rest, ensure_ascii=False, sort_keys=True, default=str) if rest else None
    return first_caption(meta.get("caption"), notes), meta.get("url"), meta.get(sha_field) if sha_field else None, extra


#: the mapping of a webdataset / folder table: its columns already have the canonical names
IDENTITY = Mapping(
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


#: folder-name prefix of local copies of shards on object storage (a killed run's are removed by the next)
TMP_PREFIX = ".ingest-tmp-"


@contextlib.contextmanager
def local_copy(ws: Workspace, p: Path | str) -> Iterator[Path]:
    """A local path ``p`` as is; a URI streamed (bounded memory) into a temp file under the
    workspace, removed afterwards. A shard is read once, sequentially — one GET instead of a
    ranged request per tar header — and parsed exactly as a local one."""
    if not isinstance(p, str):
        yield p
        return
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=ws.root) as d:
        dest = Path(d) / (fsio.name_of(p) or "file")
        try:
            fsio.copy_to_local(p, dest)
        except (ValueError, OSError) as e:
            raise InputError(f"{p}: cannot read: {e}") from None
        yield dest


def webdataset_table(shard: Path, ref_shard: str | None = None) -> tuple[pa.Table, list[str]]:
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
                if "json" in g and _fits(g["json"].size, f"{key}.json", kn):
                    meta = _sidecar_json(tf.extractfile(g["json"]).read(), f"{key}.json", kn)
                    if meta is not None:
                        caption, url, sha, extra = _sidecar_fields(meta, kn)
                if "txt" in g and _fits(g["txt"].size, f"{key}.txt", kn):
                    caption = _text(tf.extractfile(g["txt"]).read(), "txt", kn)
            except (tarfile.TarError, OSError, EOFError) as e:
                kn.append(f"unreadable_member: {e}")
            img = _image_member(g)
            ref = _tar_ref(shard, ref_shard, img) if img else None
            _wds_row(rows, key, caption, url, ref, sha, i, kn, extra)
    return pa.table(rows, schema=_WDS_SCHEMA), unit_notes


def companion_refs(images: Path | str, ws: Workspace, follow_symlinks: str = "inside") -> pa.Table:
    """key → image reference for an img2dataset shard's ``NNNNN.tar`` or ``NNNNN/`` folder
    (local, or a URI); a file of a local folder that may not be read (``follow_symlinks``,
    :class:`curate.stages.ingest.units.RealPaths`) → ``missing:<why>``."""
    keys, refs = [], []
    if isinstance(images, str):
        st = fsio.stat(images)
        if st is not None and st.is_dir:
            for rel, _ in uri_image_files(images):
                keys.append(PurePosixPath(rel).name.partition(".")[0])
                refs.append(f"{images.rstrip('/')}/{rel}")
        elif st is not None:
            with local_copy(ws, images) as local:
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
        paths = RealPaths(images, follow_symlinks)
        for p in folder_files(images, ws.root):
            real, why = paths.check(p.relative_to(images).as_posix())
            keys.append(p.name.partition(".")[0])
            refs.append(real if why is None else f"missing:{why}")
    first = {}  # one image per key (``a.jpg`` beside ``a.png``, or in two sub-folders): the first, never two rows
    for k, r in zip(keys, refs):
        first.setdefault(k, r)
    return pa.table({"__k": pa.array(list(first), pa.string()), "__ref": pa.array(list(first.values()), pa.string())})

