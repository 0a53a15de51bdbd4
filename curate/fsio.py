"""Files by local path or by URI, through pyarrow filesystems (and fsspec for other protocols).

The Ray engine's work shards, image references and embedding parts may live on object
storage (``s3://bucket/key``, ``gs://…``, ``abfs://…``, ``hdfs://…``): every node of a cluster
reads and writes them through the same :class:`pyarrow.fs.FileSystem`. Plain paths (and
``file://`` URIs) are the local filesystem.

Resolution: :func:`resolve` tries :meth:`pyarrow.fs.FileSystem.from_uri` (s3, gs, abfs, hdfs,
file — credentials from the usual environment, e.g. ``AWS_*`` or instance roles) and falls back
to an installed fsspec implementation wrapped in :class:`pyarrow.fs.PyFileSystem` (``memory://``
in tests, ``az://``, ``http://`` for reading, …). Filesystems are cached per scheme and host.

Atomicity: a local write goes to a temp file that is renamed into place; an object-store write
is one PUT, which is all-or-nothing (object stores have no rename), so a reader never sees a
half-written file in either case. A missing file reads as ``None``, never an error.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_FS: dict[tuple[str, str], Any] = {}


def is_uri(p: str | Path) -> bool:
    """True for ``scheme://…`` strings other than ``file://`` (those are local paths)."""
    if isinstance(p, Path):
        return False
    m = _SCHEME.match(p)
    return bool(m) and m.group(1).lower() != "file"


def local_path(p: str | Path) -> Path | None:
    """The local path of a plain path or ``file://`` URI; None for any other URI."""
    if isinstance(p, Path):
        return p
    if p.lower().startswith("file://"):
        return Path(p[len("file://"):])
    return None if is_uri(p) else Path(p)


def resolve(uri: str):
    """``uri`` → (pyarrow FileSystem, path inside it).

    Raises:
        ValueError: no pyarrow filesystem and no fsspec implementation knows the scheme.
    """
    import pyarrow.fs as pafs

    m = _SCHEME.match(uri)
    if not m:
        raise ValueError(f"not a URI: {uri!r}")
    scheme = m.group(1).lower()
    rest = uri[m.end():]
    host = rest.split("/", 1)[0]
    key = (scheme, host)
    if key in _FS:  # one client per bucket / host (S3's from_uri asks for the bucket's region)
        fs, kind = _FS[key]
        if kind == "bucket" or kind == "fsspec":
            return fs, rest
        return fs, "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        _FS[key] = (fs, "bucket" if path == rest else "host")
        return fs, path
    except Exception:  # noqa: BLE001 - pyarrow does not know the scheme: try fsspec
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            fs = PyFileSystem(FSSpecHandler(fsspec.filesystem(scheme)))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{uri}: no pyarrow or fsspec filesystem for {scheme}:// ({e})") from None
        _FS[key] = (fs, "fsspec")
        return fs, rest


def _fs(uri: str | Path):
    lp = local_path(uri)
    if lp is not None:
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), str(Path(lp).resolve())
    fs, path = resolve(str(uri))
    return fs, path


def join(base: str | Path, *names: str) -> str | Path:
    """``base`` / names: a Path for local paths, a ``/``-joined URI string otherwise."""
    if not is_uri(base):
        return Path(local_path(base)).joinpath(*names)
    return "/".join([str(base).rstrip("/"), *names])


def name_of(p: str | Path) -> str:
    """The last component of a path or URI."""
    return Path(p).name if not is_uri(p) else str(p).rstrip("/").rsplit("/", 1)[-1]


def read_bytes(uri: str | Path) -> bytes | None:
    """The whole file, or None when it does not exist (or is a directory)."""
    lp = local_path(uri)
    if lp is not None:
        try:
            return lp.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    fs, path = _fs(uri)
    try:
        with fs.open_input_file(path) as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as e:  # pyarrow raises OSError subclasses for "not found" on object stores
        if "not found" in str(e).lower() or "does not exist" in str(e).lower() or "no such" in str(e).lower():
            return None
        raise


def read_range(uri: str | Path, offset: int, size: int) -> bytes | None:
    """``size`` bytes from ``offset`` (a tar member, a row group), or None when the file is missing."""
    lp = local_path(uri)
    if lp is not None:
        try:
            with open(lp, "rb") as f:
                f.seek(int(offset))
                return f.read(int(size))
        except FileNotFoundError:
            return None
    fs, path = _fs(uri)
    try:
        with fs.open_input_file(path) as f:
            return f.read_at(int(size), int(offset))
    except FileNotFoundError:
        return None


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a part
    (local: temp + fsync + rename; object store: one PUT)."""
    lp = local_path(uri)
    if lp is not None:
        from curate.catalog import atomic_write_bytes

        lp.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(lp, data)
        return
    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def makedirs(uri: str | Path) -> None:
    lp = local_path(uri)
    if lp is not None:
        lp.mkdir(parents=True, exist_ok=True)
        return
    fs, path = _fs(uri)
    fs.create_dir(path, recursive=True)


def listdir(uri: str | Path) -> list[str]:
    """Names of the files directly in a folder (sorted; [] when the folder does not exist)."""
    import pyarrow.fs as pafs

    lp = local_path(uri)
    if lp is not None:
        return sorted(p.name for p in lp.iterdir() if p.is_file()) if lp.is_dir() else []
    fs, path = _fs(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def exists(uri: str | Path) -> bool:
    import pyarrow.fs as pafs

    lp = local_path(uri)
    if lp is not None:
        return lp.exists()
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete(uri: str | Path) -> None:
    """Remove a file (no error when it is already gone)."""
    lp = local_path(uri)
    if lp is not None:
        try:
            lp.unlink()
        except FileNotFoundError:
            pass
        return
    fs, path = _fs(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def delete_dir(uri: str | Path) -> None:
    """Remove a folder and everything in it (no error when it does not exist)."""
    lp = local_path(uri)
    if lp is not None:
        import shutil

        shutil.rmtree(lp, ignore_errors=True)
        return
    fs, path = _fs(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def arrow_fs(uri: str | Path):
    """(pyarrow FileSystem, path) for handing to pyarrow / Ray Data readers and writers."""
    return _fs(uri)
