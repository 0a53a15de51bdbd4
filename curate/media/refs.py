"""Image references that point inside a table: image bytes stored in a parquet or Arrow file.

Metadata queries never read image bytes: ingest stores only a reference, and the bytes are
fetched one sample at a time when a stage decodes the image.

Forms (``<row>`` is the 0-based row in the file, ``<column>`` the column holding the image):

- ``parquet:<row>:<abs path>#<column>`` — img2dataset's parquet output format (``jpg``
  column), Hugging Face datasets exported to parquet (``image`` column,
  ``struct<bytes: binary, path: string>``), Data-Juicer's ``image_bytes`` (``list<binary>``);
- ``arrow:<row>:<abs path>#<column>`` — an Arrow IPC stream file written by
  ``datasets.Dataset.save_to_disk`` (``data-00000-of-00001.arrow``);
- ``missing:<reason>`` — a row whose image does not exist (e.g. img2dataset status
  ``failed_to_download``); reading it gives None, so the image status is ``missing``.

Column value → bytes: ``binary`` as is; a ``struct`` with ``bytes`` (and ``path``) takes
``bytes``, or reads ``path`` when ``bytes`` is null (a relative path is taken relative to the
table's folder; only a regular file inside that folder is read, :func:`cell_path_refusal`); a
``list`` takes its first element (documented choice: one image per sample).

Parquet is read a batch of :data:`BATCH_ROWS` rows at a time, the image column only, through a
buffered stream (:class:`_Cursor`): a process holds one batch of image bytes per open file (two
files at most), never a whole row group, so reading the samples of a file in row order reads each
row group once with memory bounded by the batch — plus, for a file whose column is
dictionary-encoded (pyarrow's default, which img2dataset uses), its dictionary page, which the
reader must hold whole: about 2× the row group's image bytes at the peak, measured in
tests/test_config_errors.py. Reading backwards in a row group starts it again. Arrow files are
memory-mapped.
"""
from __future__ import annotations

import bisect
import os
import stat
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from curate.store import fsio

PREFIXES = ("parquet:", "arrow:", "missing:")


class ParsedRef(NamedTuple):
    """An image reference taken apart (:func:`parse_ref`).

    Attributes:
        kind: 'missing', 'parquet', 'arrow', 'tar', 'uri' (a file on object storage) or 'path'
            (a local file).
        file: the file the bytes are read from (the image file, the tar shard, the table); None
            for 'missing'.
        row: the 0-based row of a table reference; the byte offset of a tar member's data.
        size: a tar member's size in bytes.
        part: the column of a table reference, the member name of a tar one; for 'missing' the
            reason it carries.
    """

    kind: str
    file: str | None
    row: int | None = None
    size: int | None = None
    part: str | None = None


def parse_ref(ref: str) -> ParsedRef:
    """The one parser of image references (``samples.image_ref``; forms in the module doc and in
    :mod:`curate.media.images`).

    Raises:
        ValueError: a malformed ``parquet:`` / ``arrow:`` / ``tar:`` reference.
    """
    if ref.startswith("missing:"):
        return ParsedRef("missing", None, part=ref[len("missing:"):])
    if ref.startswith(("parquet:", "arrow:")):
        kind, row_s, rest = ref.split(":", 2)
        path, _, column = rest.rpartition("#")
        if not path or not row_s.isdigit():
            raise ValueError(f"malformed image reference {ref!r}")
        return ParsedRef(kind, path, int(row_s), None, column)
    if ref.startswith("tar:"):
        parts = ref.split(":", 3)
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit() or "#" not in parts[3]:
            raise ValueError(f"malformed image reference {ref!r}")
        shard, _, member = parts[3].rpartition("#")
        return ParsedRef("tar", shard, int(parts[1]), int(parts[2]), member)
    return ParsedRef("uri" if fsio.is_uri(ref) else "path", ref)


def ref_file_sql(ref: str) -> str:
    """SQL of ``parse_ref(ref).file`` over the column expression ``ref`` (NULL for ``missing:``)."""
    return (f"CASE WHEN {ref} IS NULL OR {ref} LIKE 'missing:%' THEN NULL "
            f"WHEN {ref} LIKE 'parquet:%' OR {ref} LIKE 'arrow:%' THEN regexp_extract({ref}, '^[a-z]+:[0-9]+:(.*)#[^#]*$', 1) "
            f"WHEN {ref} LIKE 'tar:%' THEN regexp_extract({ref}, '^tar:[0-9]+:[0-9]+:(.*)#[^#]*$', 1) "
            f"ELSE {ref} END")


def table_ref(kind: str, path: str | Path, column: str, row: int) -> str:
    """Build a ``parquet:``/``arrow:`` reference (see the module doc)."""
    return f"{kind}:{int(row)}:{Path(path).resolve()}#{column}"


def ref_prefix_sql(kind: str, path: str | Path, column: str) -> tuple[str, str]:
    """(prefix, suffix) such that ``prefix || row || suffix`` is the reference of ``row``."""
    return f"{kind}:", f":{Path(path).resolve()}#{column}"


def read_table_ref(ref: str) -> bytes | None:
    """Bytes behind a ``parquet:``, ``arrow:`` or ``missing:`` reference; None when the file,
    the row or the value is missing, or when a cell's ``path`` may not be read
    (:func:`cell_path_refusal`; :func:`table_missing_reason` says why).

    Raises:
        ValueError: malformed reference.
    """
    try:
        return _read(ref)
    except PathRefused:
        return None


def table_missing_reason(ref: str) -> str | None:
    """Why :func:`read_table_ref` gave no bytes for ``ref``: a refused cell path
    (``image_path_outside_table: …``, ``image_path_symlink_outside_table: …``,
    ``image_path_not_a_regular_file: …``), or None (nothing more to say than "not found")."""
    try:
        _read(ref)
    except PathRefused as e:
        return str(e)
    except (ValueError, OSError):
        return None
    return None


class PathRefused(OSError):
    """A table cell's image ``path`` that :func:`cell_path_refusal` refuses; the message says why."""


def _read(ref: str) -> bytes | None:
    kind, path, row, _, column = parse_ref(ref)
    if kind == "missing":
        return None
    try:
        if kind == "parquet":
            value = _parquet_value(path, column, row)
        elif kind == "arrow":
            value = _arrow_value(path, column, row)
        else:
            raise ValueError(f"unknown image reference kind {kind!r} in {ref!r}")
    except (FileNotFoundError, IndexError, KeyError):
        return None
    return _to_bytes(value, path.rsplit("/", 1)[0] if fsio.is_uri(path) else Path(path).parent)


def cell_path_refusal(p: str, base: Path | str) -> tuple[str, str | None]:
    """Where a table cell's image ``path`` ``p`` may be read, confined to ``base`` (the table's own
    folder, local and resolved, or a URI): (the path to read, None), or (``p``, why not).

    The rule is ``ingest.follow_symlinks: inside`` for every setting (the cell is read long after
    ingest, without the config): a relative path is taken relative to ``base``; the path (relative,
    absolute, or a URI) must lie inside ``base`` after ``..`` is resolved
    (``image_path_outside_table: …``) and, locally, after links are resolved
    (``image_path_symlink_outside_table: …``); a local table never reads a URI. Whether it is a
    regular file is checked when it is opened (:func:`_read_cell_path`)."""
    if fsio.is_uri(base):
        q = p if fsio.is_uri(p) else str(fsio.join(base, p.lstrip("/")))
        q = fsio.normalise_uri(q)
        if not fsio.is_within(fsio.normalise_uri(str(base)), q):
            return p, f"image_path_outside_table: {p} → {q} is outside the table's folder {base}; not read"
        return q, None
    local = fsio.local_path(p)
    if local is None:
        return p, f"image_path_outside_table: {p} is a URI, the table's folder is {base}; not read"
    root = os.path.realpath(base)
    lexical = os.path.normpath(os.path.join(root, str(local)))  # an absolute path replaces root
    if not fsio.is_within(root, lexical):
        return p, f"image_path_outside_table: {p} → {lexical} is outside the table's folder {root}; not read"
    real = os.path.realpath(lexical)
    if not fsio.is_within(root, real):
        return p, f"image_path_symlink_outside_table: {p} → {real} is outside the table's folder {root}; not read"
    return real, None


def _read_cell_path(p: str, base: Path | str) -> bytes | None:
    """Bytes of the file a cell's ``path`` names (:func:`cell_path_refusal`), None when missing.

    Raises:
        PathRefused: the path leaves the table's folder, or is not a regular file (a folder, a
            FIFO, a device: never opened for reading in a way that could block).
    """
    q, why = cell_path_refusal(p, base)
    if why is not None:
        raise PathRefused(why)
    if fsio.is_uri(q):
        st = fsio.stat(q)
        if st is None:
            return None
        if st.is_dir:
            raise PathRefused(f"image_path_not_a_regular_file: {p} is a folder; not read")
        return fsio.read_bytes(q)
    try:
        st = os.stat(q)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        raise PathRefused(f"image_path_not_a_regular_file: {p} ({_kind(st.st_mode)}); not read")
    try:  # no link as the last part (swapped in since the check), never blocking on a FIFO
        fd = os.open(q, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PathRefused(f"image_path_symlink_outside_table: {p} changed to a link since it was checked; "
                          f"not read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise PathRefused(f"image_path_not_a_regular_file: {p}; not read")
        return f.read()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _to_bytes(value: Any, base: Path | str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        p = value.get("path")
        return _read_cell_path(p, base) if p else None
    if isinstance(value, list):
        return _to_bytes(value[0], base) if value else None
    if isinstance(value, str):  # a path stored as a string in a list/struct
        return _to_bytes({"path": value}, base)
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


@lru_cache(maxsize=8)
def _row_group_starts(path: str, version: tuple | None) -> tuple[list[int], int]:
    md = _parquet_file(path).metadata
    starts, n = [], 0
    for i in range(md.num_row_groups):
        starts.append(n)
        n += md.row_group(i).num_rows
    return starts, n


#: rows of image bytes read from a parquet row group at once (one batch held per open file)
BATCH_ROWS = 4
#: bytes of the buffered stream a parquet column is read through (pages are read, not whole column chunks)
READ_BUFFER = 1 << 20


class _Cursor:
    """Reads one column of one parquet file forward, :data:`BATCH_ROWS` rows at a time."""

    def __init__(self, path: str, column: str):
        self.pf, self.column = _parquet_file(path), column
        self.rg, self.it, self.batch, self.lo, self.hi = -1, None, None, 0, 0
        self.lock = threading.Lock()

    def value(self, rg: int, offset: int) -> Any:
        """The value at ``offset`` (0-based) of row group ``rg``. Raises IndexError past its end."""
        with self.lock:
            if rg != self.rg or offset < self.lo:
                self.it = self.pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=[self.column],
                                               use_threads=False)
                self.rg, self.batch, self.lo, self.hi = rg, None, 0, 0
            while offset >= self.hi:
                self.batch = None  # let the previous batch go before the next is read
                try:
                    b = next(self.it)
                except StopIteration:
                    self.rg = -1
                    raise IndexError(offset) from None
                self.lo, self.hi, self.batch = self.hi, self.hi + b.num_rows, b.column(0)
            return self.batch[offset - self.lo].as_py()


@lru_cache(maxsize=2)
def _cursor(path: str, column: str, version: tuple | None) -> _Cursor:
    return _Cursor(path, column)


def _parquet_file(path: str):
    """A parquet file by local path or by URI (s3://, gs://, memory://…, through curate.store.fsio),
    read through a buffered stream (no pre-buffering of whole column chunks)."""
    import pyarrow.parquet as pq

    if not fsio.is_uri(path):
        return pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
    if not fsio.exists(path):
        raise FileNotFoundError(path)
    return pq.ParquetFile(fsio.open_input_file(path), buffer_size=READ_BUFFER, pre_buffer=False)


def _parquet_value(path: str, column: str, row: int) -> Any:
    version = _version(path)
    starts, n = _row_group_starts(path, version)
    if row >= n:
        raise IndexError(row)
    rg = bisect.bisect_right(starts, row) - 1
    return _cursor(path, column, version).value(rg, row - starts[rg])


@lru_cache(maxsize=4)
def _arrow_table(path: str, version: tuple | None):
    import pyarrow as pa

    src = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(src).read_all()  # zero-copy over the memory map
    except pa.ArrowInvalid:
        return pa.ipc.open_file(src).read_all()


def _arrow_value(path: str, column: str, row: int) -> Any:
    return _arrow_table(path, _version(path)).column(column)[row].as_py()


def _version(path: str) -> tuple | None:
    """What the open-reader caches are keyed by besides the path: a local file's (size, mtime_ns,
    inode), so a table replaced while the process runs (a notebook calling ``api.run`` twice) is
    opened again; None for a URI (a stat per sample would be a request per sample: the hash stage
    calls :func:`clear_caches` instead).

    Raises:
        FileNotFoundError: the local file is gone."""
    if fsio.is_uri(path):
        return None
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def clear_caches() -> None:
    """Forget every open parquet / Arrow reader of this process (the hash stage calls it first, so
    a table on object storage replaced since the last run is read again)."""
    for f in (_row_group_starts, _cursor, _arrow_table):
        f.cache_clear()
