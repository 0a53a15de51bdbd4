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
table's folder); a ``list`` takes its first element (documented choice: one image per sample).

Each process caches the last two row groups (parquet) or memory-maps the file (Arrow), so
reading the samples of one file in row order costs one decode of each row group.
"""
from __future__ import annotations

import bisect
from functools import lru_cache
from pathlib import Path
from typing import Any

from curate.store import fsio

PREFIXES = ("parquet:", "arrow:", "missing:")


def table_ref(kind: str, path: str | Path, column: str, row: int) -> str:
    """Build a ``parquet:``/``arrow:`` reference (see the module doc)."""
    return f"{kind}:{int(row)}:{Path(path).resolve()}#{column}"


def ref_prefix_sql(kind: str, path: str | Path, column: str) -> tuple[str, str]:
    """(prefix, suffix) such that ``prefix || row || suffix`` is the reference of ``row``."""
    return f"{kind}:", f":{Path(path).resolve()}#{column}"


def read_table_ref(ref: str) -> bytes | None:
    """Bytes behind a ``parquet:``, ``arrow:`` or ``missing:`` reference; None when the file,
    the row or the value is missing.

    Raises:
        ValueError: malformed reference.
    """
    if ref.startswith("missing:"):
        return None
    kind, row_s, rest = ref.split(":", 2)
    path, _, column = rest.rpartition("#")
    if not path or not row_s.isdigit():
        raise ValueError(f"malformed image reference {ref!r}")
    row = int(row_s)
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


def _to_bytes(value: Any, base: Path | str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        p = value.get("path")
        if p:
            if fsio.is_uri(p) or fsio.is_uri(base):  # next to a parquet on object storage
                return fsio.read_bytes(p if fsio.is_uri(p) else fsio.join(base, p))
            q = Path(p) if Path(p).is_absolute() else Path(base) / p
            try:
                return q.read_bytes()
            except OSError:
                return None
        return None
    if isinstance(value, list):
        return _to_bytes(value[0], base) if value else None
    if isinstance(value, str):  # a path stored as a string in a list/struct
        return _to_bytes({"path": value}, base)
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


@lru_cache(maxsize=8)
def _row_group_starts(path: str) -> tuple[list[int], int]:
    md = _parquet_file(path).metadata
    starts, n = [], 0
    for i in range(md.num_row_groups):
        starts.append(n)
        n += md.row_group(i).num_rows
    return starts, n


@lru_cache(maxsize=2)
def _row_group_column(path: str, rg: int, column: str):
    return _parquet_file(path).read_row_group(rg, columns=[column]).column(0)


def _parquet_file(path: str):
    """A parquet file by local path or by URI (s3://, gs://, memory://…, through curate.store.fsio)."""
    import pyarrow.parquet as pq

    if not fsio.is_uri(path):
        return pq.ParquetFile(path)
    if not fsio.exists(path):
        raise FileNotFoundError(path)
    return pq.ParquetFile(fsio.open_input_file(path))


def _parquet_value(path: str, column: str, row: int) -> Any:
    starts, n = _row_group_starts(path)
    if row >= n:
        raise IndexError(row)
    rg = bisect.bisect_right(starts, row) - 1
    return _row_group_column(path, rg, column)[row - starts[rg]].as_py()


@lru_cache(maxsize=4)
def _arrow_table(path: str):
    import pyarrow as pa

    src = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(src).read_all()  # zero-copy over the memory map
    except pa.ArrowInvalid:
        return pa.ipc.open_file(src).read_all()


def _arrow_value(path: str, column: str, row: int) -> Any:
    return _arrow_table(path).column(column)[row].as_py()
