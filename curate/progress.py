"""Progress bars on stderr: shown only when stderr is a TTY and not ``--quiet``.

stdout is never used for progress, so commands that print data stay machine-readable.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Turn progress output off (``True``) or back to automatic (``False``)."""
    global _QUIET
    _QUIET = quiet


def enabled() -> bool:
    """True when progress bars should be drawn: stderr is a TTY, not quiet, not CURATE_QUIET."""
    return not _QUIET and not os.environ.get("CURATE_QUIET") and sys.stderr.isatty()


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar on stderr, disabled when :func:`enabled` is False."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled(), leave=False)


def info(msg: str) -> None:
    """One line of information on stderr (suppressed by ``--quiet``)."""
    if not _QUIET and not os.environ.get("CURATE_QUIET"):
        print(msg, file=sys.stderr)
