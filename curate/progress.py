"""Progress bars on stderr: shown only when stderr is a TTY and not ``--quiet``.

stdout is never used for progress, so commands that print data stay machine-readable.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Turn progress output off (``True``) or back to automatic (``False``)."""
    global _QUIET
    _QUIET = quiet


def enabled() -> bool:
    """True when progress bars should be drawn: stderr is a TTY, not quiet, not CURATE_QUIET."""
    return not _QUIET and not os.environ.get("CURATE_QUIET") and sys.stderr.isatty()


_LISTENER: Callable[[dict], None] | None = None


def set_listener(fn: Callable[[dict], None] | None) -> None:
    """Call ``fn({"desc", "done", "total", "unit"})`` as every progress bar advances (drawn or not),
    at most every :data:`LISTEN_EVERY_S` seconds per bar and once when it closes; None stops it.
    The stage runner uses it for ``<workspace>/status.json`` (:mod:`curate.store.runstate`)."""
    global _LISTENER
    _LISTENER = fn


LISTEN_EVERY_S = 2.0


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar on stderr, disabled when :func:`enabled` is False; reports to the listener of
    :func:`set_listener` either way."""
    from tqdm import tqdm

    class _Bar(tqdm):
        _done, _told = 0, float("-inf")

        def _tell(self, n: int, force: bool = False) -> None:
            self._done += n
            if _LISTENER is not None and (force or time.monotonic() - self._told >= LISTEN_EVERY_S):
                self._told = time.monotonic()
                _LISTENER({"desc": desc, "done": self._done, "total": self.total, "unit": unit})

        def __iter__(self):
            for x in super().__iter__():
                yield x
                self._tell(1)

        def update(self, n=1):
            r = super().update(n)
            self._tell(int(n or 0))
            return r

        def close(self):
            if not getattr(self, "_closed_told", False):
                self._closed_told = True
                self._tell(0, force=True)
            return super().close()

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # tqdm does so itself only when drawn
    return _Bar(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled(), leave=False)


def info(msg: str) -> None:
    """One line of information on stderr (suppressed by ``--quiet``)."""
    if not _QUIET and not os.environ.get("CURATE_QUIET"):
        print(msg, file=sys.stderr)
