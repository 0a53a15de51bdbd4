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

import errno
import fnmatch
import hashlib
import os
import posixpath
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from curate.errors import CurateError, DiskFullError, NotWritableError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_FS: dict[tuple[str, str], Any] = {}


def is_uri(p: str | Path) -> bool:
    """True for ``scheme://…`` strings other than ``file://`` (those are local paths)."""
    if isinstance(p, Path):
        return False
    m = _SCHEME.match(p)
    return bool(m) and m.group(1).lower() != "file"


def is_within(root: str | Path, path: str | Path) -> bool:
    """True when ``path`` is ``root`` or lies under it, compared as given (both absolute local paths,
    or both URIs; normalise or resolve them first: ``..`` and links are not interpreted here).
    The one containment test of every confinement rule (input folders, table image paths, claim
    files)."""
    r, p = str(root), str(path)
    sep = "/" if is_uri(r) else os.sep
    return p == r or p.startswith(r.rstrip(sep) + sep)


def normalise_uri(uri: str) -> str:
    """``scheme://a/b/../c`` → ``scheme://a/c``: ``.`` and ``..`` segments of a URI's path resolved
    lexically (object stores have no links), so :func:`is_within` can compare URIs."""
    m = _SCHEME.match(uri)
    if not m:
        return uri
    rest = uri[m.end():]
    norm = posixpath.normpath("/" + rest).lstrip("/") if rest else rest
    return uri[:m.end()] + norm


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
    returns the bytes copied. A failed copy removes ``dest`` (no half file is left).

    Raises:
        curate.errors.DiskFullError: no space left for ``dest``.
    """
    n = 0
    with removed_on_failure(dest, dest):
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
    read gives ``<size>:unreadable`` (ingest then reports it when it reads the file)."""
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


@contextmanager
def removed_on_failure(tmp: str | Path, dest: str | Path, needed: int | None = None) -> Iterator[None]:
    """Run the block that writes ``tmp`` (then moves it to ``dest``); when it fails, remove
    ``tmp`` and re-raise — a full disk as :class:`curate.errors.DiskFullError` naming ``dest`` and
    the ``needed`` bytes (:func:`disk_full_error`), anything else as it was."""
    try:
        yield
    except BaseException as e:
        try:
            Path(tmp).unlink()
        except OSError:
            pass
        err = disk_full_error(e, dest, needed)
        if err is not None and err is not e:
            raise err from e
        raise


def write_to(f, data: bytes) -> None:
    """Write ``data`` to the open binary file ``f``, flushed and fsynced (a full disk may only show
    at the flush or the fsync, so both happen before the file is renamed into place)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file (``<name>.tmp<pid>``) + rename: never a
    half-written file, and no temp file left behind when the write fails.

    Raises:
        curate.errors.DiskFullError: no space left (ENOSPC, EDQUOT, EFBIG), naming ``path`` and
            the bytes needed.
        OSError: any other failure of the filesystem.
    """
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with removed_on_failure(tmp, path, len(data)):
        with open(tmp, "wb") as f:
            write_to(f, data)
        os.replace(tmp, path)


def copy_query(con, sql: str, dest: Path, options: str) -> None:
    """DuckDB ``COPY (sql) TO dest (options)`` through a temp file (``<name>.tmp``) renamed into
    place; the temp file is removed when the copy fails.

    Raises:
        curate.errors.DiskFullError: the disk filled while DuckDB wrote ``dest``.
        duckdb.Error: any other failure of the query or the write.
    """
    tmp = dest.with_name(dest.name + ".tmp")
    with removed_on_failure(tmp, dest):
        con.execute(f"COPY ({sql}) TO '{str(tmp).replace(chr(39), chr(39) * 2)}' ({options})")
        os.replace(tmp, dest)


# ----------------------------------------------------------------------------------------------
# full disks and read-only workspaces: one clear message instead of a traceback

#: errno values that mean "no room": no space on the device, quota exceeded, file-size limit
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "file too large")
#: errno values that mean "not writable here"
NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_NOT_WRITABLE_TEXT = ("read-only file system", "permission denied", "operation not permitted")
_DUCKDB_PATH = re.compile(r'(?:file|directory) "([^"]+)"', re.I)


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def is_disk_full(e: BaseException) -> bool:
    """True when ``e`` (or an exception it was raised from) is a write refused for lack of space:
    an OSError with errno ENOSPC / EDQUOT / EFBIG, or a DuckDB error saying so (a CurateError's
    own text is never read as one)."""
    return _refused(e, DISK_FULL_ERRNOS, _DISK_FULL_TEXT)


def is_not_writable(e: BaseException) -> bool:
    """True when ``e`` (or an exception it was raised from) is a write refused by permissions or
    a read-only filesystem (EROFS / EACCES / EPERM, or a DuckDB error saying so)."""
    return _refused(e, NOT_WRITABLE_ERRNOS, _NOT_WRITABLE_TEXT)


def _refused(e: BaseException, errnos: tuple[int, ...], texts: tuple[str, ...]) -> bool:
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in errnos:
            return True
        if not isinstance(x, (OSError, CurateError)) and any(t in str(x).lower() for t in texts):
            return True
    return False


def error_path(e: BaseException) -> str | None:
    """The file an OSError (``filename``) or a DuckDB error message (``file "…"``) names, or None."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.filename:
            return str(x.filename)
        m = _DUCKDB_PATH.search(str(x))
        if m:
            return m.group(1)
    return None


def _size(n: int) -> str:
    if n < 1e6:
        return f"{max(1, round(n / 1e3))} kB"
    return f"{n / 1e6:.1f} MB" if n < 10e6 else (f"{n / 1e6:.0f} MB" if n < 10e9 else f"{n / 1e9:.0f} GB")


def disk_full_error(e: BaseException, path: str | Path | None = None, needed: int | None = None):
    """The :class:`curate.errors.DiskFullError` for ``e`` when it is a full disk
    (:func:`is_disk_full`), ``e`` itself when it already is one, else None.

    The message names the file (``path``, else the one in the OSError or DuckDB message), the
    bytes needed when known and the space left on its filesystem, and says to free space and rerun.
    """
    if isinstance(e, DiskFullError):
        return e
    if not is_disk_full(e):
        return None
    if path is None:
        path = error_path(e)
    where = f" while writing {path}" if path else ""
    need = [f"needs about {_size(needed)}"] if needed else []
    too_large = any(isinstance(x, OSError) and x.errno == errno.EFBIG or "file too large" in str(x).lower()
                    for x in _chain(e))
    if path and not too_large:
        p = Path(path)
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            need.append(f"{_size(shutil.disk_usage(p).free)} free there")
        except OSError:
            pass
    quota = any(isinstance(x, OSError) and x.errno == errno.EDQUOT or "disk quota exceeded" in str(x).lower()
                for x in _chain(e))
    what = ("the file-size limit was reached" if too_large else "the disk quota is exceeded" if quota
            else "no space left on device")
    extra = f" ({', '.join(need)})" if need else ""
    return DiskFullError(f"{what}{where}{extra}; free space (or raise the limit) and rerun — "
                         "nothing half-written was kept")


def not_writable_error(e: BaseException, where: str | Path):
    """The :class:`curate.errors.NotWritableError` for ``e`` when it is a permission or read-only
    refusal (:func:`is_not_writable`), else None; the message names ``where``."""
    if isinstance(e, NotWritableError):
        return e
    if not is_not_writable(e):
        return None
    detail = next((x.strerror for x in _chain(e) if isinstance(x, OSError) and x.strerror), None) or \
        next((t for x in _chain(e) for t in _NOT_WRITABLE_TEXT if t in str(x).lower()), "not writable")
    return NotWritableError(f"the workspace {where} is not writable ({detail.lower()}): curate writes its catalog "
                            "and outputs there; make it writable, or copy it to a writable place and use that copy")


def check_writable(folder: Path) -> None:
    """Create and remove a probe file in ``folder``.

    Raises:
        curate.errors.NotWritableError: the folder is read-only or not writable by this user.
        curate.errors.DiskFullError: no room even for an empty file's entry.
    """
    probe = folder / f".write-probe.tmp{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        probe.unlink(missing_ok=True)  # a concurrent cleanup may have removed it (never a lock error's stand-in)
    except OSError as e:
        err = not_writable_error(e, folder) or disk_full_error(e, probe)
        if err is not None:
            raise err from None
        raise
