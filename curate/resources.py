"""Locate the shipped ``rules/`` and ``schemas/`` folders.

They live at the repository root (editable installs, a source checkout) or under
``<prefix>/share/curate/`` (wheel installs, see pyproject's data-files).
"""
from __future__ import annotations

import sys
from pathlib import Path


def shipped_dir(name: str) -> Path:
    """Return the folder holding shipped files of kind ``name`` ('rules' or 'schemas').

    Raises:
        FileNotFoundError: if neither the source tree nor the installed share folder has it.
    """
    candidates = [
        Path(__file__).resolve().parent.parent / name,
        Path(sys.prefix) / "share" / "curate" / name,
    ]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"cannot find curate's shipped '{name}/' folder (looked in {', '.join(map(str, candidates))})")
