"""The workspace's ``out/`` folder, published whole: a reader sees one command's outputs or the
previous ones, never a mix, even when the writer is killed (SIGKILL, power loss) or the disk fills.

Layout::

    out -> .out/<n>        a relative symlink to the current generation
    .out/<n>/              the current generation: manifest.parquet, removals/, summary.json, report/, …
    .out/<p>/              the previous generation (p < n), kept until the next publish
    .out/<m>.tmp/          staging of a command that is writing (or was killed while writing)

A command that writes into ``out/`` (``export``, ``report``) builds a new generation in a staging
folder (:func:`publish`): it writes its own outputs there, every other entry of the current
generation is carried over (hard links, so nothing is copied; e.g. ``report/`` and the probe files
survive an export, and the export's files survive a report), and the symlink is switched with one
atomic rename (:func:`os.replace`). The previous generation stays until the next publish, so a
reader that resolved ``out`` once (``os.path.realpath``) and reads several files from it finds
them all; generations older than that are removed. Readers should resolve ``out`` once, not
re-open ``out/…`` per file. A command that fails removes its staging folder; one that is killed
leaves it, and the next command that opens the workspace (:func:`recover`, under the catalog's
lock) removes it, together with generations other than the current and previous ones and the
temp files of single-file writers killed inside the current generation (:data:`TEMP_NAME`: only
the exact names curate's writers use) and ``*.tmp<pid>`` files in the workspace folder (not the
write probe of a process that is still running).

A symlink ``out`` that the user made (to a folder elsewhere) is never moved or emptied: when
its folder is empty, that folder becomes the store of the generations (it gets :data:`MARKER`,
``out`` then points at ``<folder>/<n>``); otherwise :func:`recover` raises a CurateError that
says what to do.

A workspace from an older curate has a plain ``out/`` folder: :func:`recover` moves it to
``.out/<n>`` and puts the symlink in its place (two renames; a kill between them is repaired by
the next :func:`recover`). Where the filesystem refuses symlinks, ``out/`` stays a folder and
:func:`publish` swaps folders with two renames instead (a reader may then find no ``out/`` for
that instant; a kill between the renames is rolled forward by the next :func:`recover`).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from curate.errors import CurateError
from curate.store import fsio

OUT = "out"
GENERATIONS = ".out"
_GEN = re.compile(r"^\d+$")
#: the exact names of the temp files curate's writers use in ``out/``: fsio.atomic_write_bytes
#: (``<output>.tmp<pid>``), fsio.copy_query (``<output>.tmp``), webdataset shards
#: (``NNNNNN.tar.partial``); a user's own ``notes.tmp`` or ``upload.partial`` is not one of them
TEMP_NAME = re.compile(r"(^.+\.(parquet|csv|json|html)\.tmp\d*|^\d{6}\.tar\.partial|^\.webdataset\.(partial|old))$")
#: the file that marks a folder as a store of ``out``'s generations (a user's empty folder, see :func:`recover`)
MARKER = ".curate-generations"
#: fsio.check_writable's probe (``.write-probe.tmp<pid>``), made before the lock is taken
_PROBE = re.compile(r"^\.write-probe\.tmp(\d+)$")


def gens_dir(root: str | Path) -> Path:
    """The folder of ``out``'s generations: ``<root>/.out``, or the folder elsewhere (another disk)
    that the user pointed ``out`` at while it was empty (it holds :data:`MARKER`; :func:`recover`)."""
    root = Path(root)
    t = _link_target(root)
    if t is not None and _ours(root, t):
        return t.parent
    return root / GENERATIONS


def _link_target(root: Path) -> Path | None:
    out = root / OUT
    return Path(os.path.normpath(root / os.readlink(out))) if out.is_symlink() else None


def _ours(root: Path, target: Path) -> bool:
    """Whether ``out``'s symlink target is one of curate's generations (not a user's own folder)."""
    return bool(_GEN.match(target.name)) and (target.parent == root / GENERATIONS
                                              or (target.parent / MARKER).is_file())


def _foreign_error(root: Path, target: Path, why: str) -> Exception:
    return CurateError(
        f"{root / OUT} is a symlink made outside curate, to {target}, which {why}: curate neither moves nor "
        f"deletes what is there. Remove the symlink (curate then keeps out/ in the workspace), point it at an "
        f"empty folder (curate then keeps its outputs in that folder), or put the workspace itself on that disk")


def _gens(root: Path) -> list[int]:
    d = gens_dir(root)
    return sorted(int(p.name) for p in d.iterdir() if _GEN.match(p.name) and p.is_dir()) if d.is_dir() else []


def current(root: str | Path) -> Path | None:
    """The folder ``out`` resolves to (a generation, or a plain folder), or None when there is none."""
    out = Path(root) / OUT
    if out.is_symlink():
        target = out.parent / os.readlink(out)
        return target if target.is_dir() else None
    return out if out.is_dir() else None


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _point(root: Path, gen: int, gd: Path | None = None) -> None:
    """Switch ``out`` to ``<gd>/<gen>`` (default ``.out/<gen>``) in one rename (a new symlink replaces the old one)."""
    gd = gens_dir(root) if gd is None else gd
    link = gd / f"link.tmp{os.getpid()}"
    try:
        link.unlink()
    except FileNotFoundError:
        pass
    os.symlink(f"{GENERATIONS}/{gen}" if gd == root / GENERATIONS else str(gd / str(gen)), link)
    os.replace(link, root / OUT)
    _fsync_dir(root)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _clean_temp_files(folder: Path) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + dirnames:
            if TEMP_NAME.search(name) or name in (".webdataset.partial", ".webdataset.old"):
                _remove(Path(dirpath) / name)
                n += 1
    return n


def recover(root: str | Path) -> dict[str, int]:
    """Make ``<root>/out`` a whole generation and remove what killed writers left behind.

    Call it holding the workspace's lock (:class:`curate.store.catalog.Workspace` does, right after
    it opens the catalog): every staging folder and temp file it finds is then stale.

    Returns:
        counters: ``staging_removed`` (staging folders and old generations), ``temp_files_removed``.

    Raises:
        OSError: the workspace cannot be written (the caller turns it into a clear message).
        curate.errors.CurateError: ``out`` is a symlink made outside curate to a folder that holds
            files, or to nothing (nothing is moved or deleted).
    """
    root = Path(root)
    out = root / OUT
    t = _link_target(root)
    if t is not None and not _ours(root, t):  # the user's own symlink: never move or delete what it points at
        if not out.is_dir():
            raise _foreign_error(root, t, "is not a folder (a disk not mounted?)")
        if any(os.scandir(out)):
            raise _foreign_error(root, t, "is not empty")
        target = Path(os.path.realpath(out))  # empty: it becomes the store of the generations
        (target / MARKER).write_bytes(b"curate keeps the generations of a workspace's out/ here\n")
        (target / "1").mkdir()
        _point(root, 1, target)
    out, gd = root / OUT, gens_dir(root)
    gd.mkdir(exist_ok=True)
    if out.is_dir() and not out.is_symlink():  # an older curate's plain folder
        nxt = (_gens(root) or [0])[-1] + 1
        try:
            _point_probe(gd)
        except OSError:
            return _recover_plain(root)
        os.replace(out, gd / str(nxt))  # the old folder becomes the first generation
        _point(root, nxt)
    elif current(root) is None:  # missing, or dangling (killed between the migration's renames)
        if any(gd.glob("*.done")):  # no symlinks here, killed inside a plain swap
            return _recover_plain(root)
        gens = _gens(root)
        if gens:
            _point(root, gens[-1])
        else:
            (gd / "1").mkdir()
            try:
                _point(root, 1)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                os.replace(gd / "1", out)  # no symlinks on this filesystem: a plain folder
                return _recover_plain(root)
    cur = current(root)
    keep = {MARKER} | ({cur.name} if cur is not None else set())
    prev = _previous(root, cur)
    if prev is not None:  # a reader that resolved out before the last switch may still read it
        keep.add(str(prev))
    removed = 0
    for p in gd.iterdir():
        if p.name not in keep:
            _remove(p)
            removed += 1
    return {"staging_removed": removed,
            "temp_files_removed": (_clean_temp_files(cur) if cur else 0) + _clean_root_temp(root)}


def _previous(root: Path, cur: Path | None) -> int | None:
    """The generation ``out`` pointed at before ``cur`` (the highest one below it), or None."""
    if cur is None or not _GEN.match(cur.name):
        return None
    older = [g for g in _gens(root) if g < int(cur.name)]
    return older[-1] if older else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


def _clean_root_temp(root: Path) -> int:
    """Temp files of killed single-file writers in the workspace folder itself (``config.json.tmp<pid>``,
    ``status.json.tmp<pid>``; fsio.atomic_write_bytes's names). A write probe
    (fsio.check_writable, made before the lock) is removed only when its process is gone."""
    n = 0
    for p in root.iterdir():
        probe = _PROBE.match(p.name)
        if probe and (int(probe.group(1)) == os.getpid() or _alive(int(probe.group(1)))):
            continue
        if re.search(r"\.tmp\d+$", p.name) and p.is_file() and not p.is_symlink():
            p.unlink()
            n += 1
    return n


def _point_probe(gens_dir: Path) -> None:
    """Raise OSError when this filesystem cannot hold a symlink."""
    probe = gens_dir / f"probe.tmp{os.getpid()}"
    try:
        probe.unlink()
    except FileNotFoundError:
        pass
    os.symlink(".", probe)
    probe.unlink()


def _recover_plain(root: Path) -> dict[str, int]:
    out, gens_dir = root / OUT, root / GENERATIONS
    removed = 0
    if not out.exists():  # killed between the plain swap's renames: the new one is complete
        done = sorted(gens_dir.glob("*.done"))
        if done:
            os.replace(done[-1], out)
        else:
            out.mkdir()
    for p in gens_dir.iterdir():
        _remove(p)
        removed += 1
    return {"staging_removed": removed, "temp_files_removed": _clean_temp_files(out) + _clean_root_temp(root)}


def _carry(src: Path, dst: Path) -> None:
    """Recreate ``src`` (file, folder or symlink) at ``dst`` with hard links (copies where the
    filesystem has none)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy,
                        ignore=lambda d, names: [n for n in names if TEMP_NAME.search(n)])
    else:
        _link_or_copy(str(src), str(dst))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def publish(root: str | Path, replaces: Iterable[str]) -> Iterator[Path]:
    """Build the next generation of ``<root>/out`` in a staging folder and switch to it whole.

    Yields the staging folder: the caller writes its outputs into it. When the block ends
    normally, each entry of the current ``out/`` whose name is not in ``replaces`` and that the
    block did not write is carried over (hard links), and ``out`` is switched to the new
    generation atomically; the old generation stays (for readers that resolved ``out`` before the
    switch) and older ones are removed. When the block raises, the staging
    folder is removed and ``out/`` is left as it was.

    Args:
        root: the workspace folder (its lock held: one writer at a time).
        replaces: names in ``out/`` that this command owns: an old entry of that name is dropped
            even when the block does not write it (e.g. ``removals`` of an export).

    Raises:
        curate.errors.DiskFullError: the disk filled while carrying over or switching.
        whatever the block raises.
    """
    root = Path(root)
    gd = gens_dir(root)
    gd.mkdir(exist_ok=True)
    cur = current(root)
    plain = not (root / OUT).is_symlink()
    nxt = max(_gens(root) + [0]) + 1
    stage = gd / f"{nxt}.tmp"
    _remove(stage)
    stage.mkdir()
    try:
        yield stage
        owned = set(replaces)
        if cur is not None:
            for p in sorted(cur.iterdir()):
                if p.name in owned or TEMP_NAME.search(p.name) or (stage / p.name).exists() \
                        or (stage / p.name).is_symlink():
                    continue
                _carry(p, stage / p.name)
        _fsync_dir(stage)
        if plain:
            done = gd / f"{nxt}.done"
            os.replace(stage, done)
            old = gd / f"{nxt}.old"
            if cur is not None:
                os.replace(cur, old)
            os.replace(done, root / OUT)
            _fsync_dir(root)
            _remove(old)
            return
        final = gd / str(nxt)
        os.replace(stage, final)
        _point(root, nxt)
    except BaseException as e:
        _remove(stage)
        err = fsio.disk_full_error(e, stage)
        if err is not None:  # name the published place, not the staging folder
            raise type(err)(str(err).replace(str(stage), str(root / OUT))) from e
        raise
    # the previous generation stays until the next publish (a reader that resolved out once may be
    # reading it); older ones go
    for g in _gens(root):
        if g < nxt and (cur is None or str(g) != cur.name):
            _remove(gd / str(g))
