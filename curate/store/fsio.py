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

import fnmatch
import hashlib
import os
import re
import shutil
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


# ----------------------------------------------------------------------------------------------
# listing, globbing and fingerprints of input files (curate ingest reads its sources by URI too)


class FileStat:
    """One entry of a listing: ``uri``, ``size`` (bytes), ``mtime_ns`` (None when the filesystem
    gives no modification time, e.g. fsspec's ``memory://``) and ``is_dir``."""

    __slots__ = ("uri", "size", "mtime_ns", "is_dir")

    def __init__(self, uri: str, size: int | None, mtime_ns: int | None, is_dir: bool = False):
        self.uri, self.size, self.mtime_ns, self.is_dir = uri, size, mtime_ns, is_dir

    def __repr__(self) -> str:
        return f"FileStat({self.uri!r}, size={self.size}, mtime_ns={self.mtime_ns}, is_dir={self.is_dir})"


def _stat_of(uri: str, fi) -> FileStat:
    import pyarrow.fs as pafs

    is_dir = fi.type == pafs.FileType.Directory
    return FileStat(uri, None if is_dir else fi.size, fi.mtime_ns, is_dir)


def stat(uri: str) -> FileStat | None:
    """The entry at a URI (a file or a folder / prefix), or None when nothing is there.

    Raises:
        ValueError: unknown scheme. OSError: the store refused (credentials, permissions).
    """
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    fi = fs.get_file_info(path)
    return None if fi.type == pafs.FileType.NotFound else _stat_of(str(uri), fi)


def _children(base_uri: str, recursive: bool) -> list[FileStat]:
    """Entries under the folder ``base_uri`` (files and folders), as URIs below ``base_uri``."""
    import pyarrow.fs as pafs

    fs, path = _fs(base_uri)
    root = path.strip("/")
    base = str(base_uri).rstrip("/")
    out = []
    for fi in fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True)):
        p = fi.path.strip("/")  # fsspec-backed filesystems add a leading '/', S3 does not
        rel = p[len(root):].lstrip("/") if root and p.startswith(root) else p
        if rel:
            out.append(_stat_of(f"{base}/{rel}", fi))
    return sorted(out, key=lambda s: s.uri)


def list_entries(uri: str) -> list[FileStat]:
    """Files and folders directly in the folder ``uri`` (sorted; [] when it does not exist)."""
    return _children(uri, recursive=False)


def walk(uri: str) -> list[FileStat]:
    """Every file under the folder ``uri``, at any depth (sorted by URI; [] when it does not exist)."""
    return [s for s in _children(uri, recursive=True) if not s.is_dir]


def has_magic(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _match_parts(parts: list[str], pats: list[str]) -> bool:
    if not pats:
        return not parts
    if pats[0] == "**":  # zero or more components (not hidden ones, like glob.glob)
        return _match_parts(parts, pats[1:]) or (
            bool(parts) and not parts[0].startswith(".") and _match_parts(parts[1:], pats))
    if not parts:
        return False
    if parts[0].startswith(".") and not pats[0].startswith("."):
        return False  # a wildcard never matches a leading dot (glob.glob's rule)
    return fnmatch.fnmatchcase(parts[0], pats[0]) and _match_parts(parts[1:], pats[1:])


def glob(pattern: str) -> list[FileStat]:
    """The files a URI pattern matches, sorted by URI: ``*``, ``?`` and ``[…]`` match within one
    path component, ``**`` any number of components, and a wildcard never matches a leading dot
    (the rules of :func:`glob.glob` with ``recursive=True``). The folder before the first
    wildcard is listed once (recursively only when the pattern spans several components).
    A pattern without wildcards gives its file, or [] when there is none.

    Raises:
        ValueError: unknown scheme. OSError: the store refused the listing (credentials, …).
    """
    m = _SCHEME.match(pattern)
    if not m:
        raise ValueError(f"not a URI: {pattern!r}")
    if not has_magic(pattern):
        s = stat(pattern)
        return [s] if s is not None and not s.is_dir else []
    head, rest = pattern[: m.end()], pattern[m.end():]
    comps = rest.split("/")
    k = next(i for i, c in enumerate(comps) if has_magic(c))
    if k == 0:
        raise ValueError(f"{pattern}: a wildcard in the bucket / host name is not supported")
    base = head + "/".join(comps[:k])
    pats = [c for c in comps[k:] if c != ""]
    entries = _children(base, recursive=len(pats) > 1 or "**" in pats)
    b = base.rstrip("/") + "/"
    return [s for s in entries if not s.is_dir and _match_parts(s.uri[len(b):].split("/"), pats)]


def open_input_file(uri: str | Path):
    """A random-access pyarrow file (``read_at``, ``seek``), for parquet readers and ranged reads."""
    fs, path = _fs(uri)
    return fs.open_input_file(path)


def open_input_stream(uri: str | Path):
    """A sequential pyarrow stream (one GET on an object store), for whole-file reads."""
    fs, path = _fs(uri)
    return fs.open_input_stream(path)


def copy_to_local(uri: str | Path, dest: Path, chunk: int = 8 << 20) -> int:
    """Stream a file into the local file ``dest`` in ``chunk``-byte reads (memory stays bounded);
    returns the bytes copied."""
    n = 0
    with open_input_stream(uri) as src, open(dest, "wb") as out:
        while True:
            buf = src.read(chunk)
            if not buf:
                break
            out.write(buf)
            n += len(buf)
    return n


#: files up to this size are hashed whole by :func:`fingerprint` when their store gives no mtime
FINGERPRINT_FULL_MAX = 2 << 20


def fingerprint(st: FileStat) -> str:
    """Change detector for an input file on a filesystem (ingest's resumability).

    ``<size>:<mtime_ns>`` when the store gives a modification time (S3 / GCS / Azure / HDFS and
    local files: the same form as :func:`curate.store.catalog.file_fingerprint`). Without one (fsspec's
    ``memory://``, some HTTP servers): ``<size>:sha256:<hex>`` of the whole file up to 2 MiB,
    else ``<size>:sha256-ends:<hex>`` of its first and last MiB. A file whose bytes cannot be
    read gives ``<size>:unreadable`` (ingest then reports it when it reads the file).
    """
    if st.mtime_ns is not None:
        return f"{st.size}:{st.mtime_ns}"
    size = int(st.size or 0)
    try:
        with open_input_file(st.uri) as f:
            if size <= FINGERPRINT_FULL_MAX:
                return f"{size}:sha256:{hashlib.sha256(f.read()).hexdigest()}"
            mib = 1 << 20
            h = hashlib.sha256(f.read_at(mib, 0))
            h.update(f.read_at(mib, size - mib))
            return f"{size}:sha256-ends:{h.hexdigest()}"
    except OSError:
        return f"{size}:unreadable"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + rename (never a half-written file)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
