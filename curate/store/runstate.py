"""``<workspace>/status.json``: what a running command is doing, readable while it holds the catalog.

DuckDB lets one process write a catalog and no other process open it meanwhile, not even
read-only, so ``curate status`` cannot read the catalog during a multi-hour run. The running
command therefore writes this small file (atomically: temp file + rename) when it opens the
workspace, when a stage starts, at most every :data:`curate.progress.LISTEN_EVERY_S` seconds of
progress, when the stage ends, and when it closes the workspace; ``curate status`` reads the
catalog when it can and falls back to this file when a run holds it.

Fields (JSON object):

- ``pid`` int, ``host`` str: the process that writes it;
- ``running`` bool: the process holds the workspace (from opening it until closing it, between
  stages too); ``opened`` ISO-8601 UTC: when it opened it;
- ``stage`` str or null: the stage running now (null between stages), with its ``run_id`` int and
  ``started`` ISO-8601 UTC; ``last_stage``: the stage this process finished last, or null;
- ``progress``: ``{"desc", "done", "total" (null when unknown), "unit", "updated"}`` of the
  stage's current progress bar, or null;
- ``stages``: the per-stage status as :meth:`curate.store.catalog.Workspace.status` gave it when
  the stage started or ended;
- ``written`` ISO-8601 UTC: when the file was written.

A failure to write it (full disk, read-only folder) never fails the run: it is only a view.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path
from typing import Any

from curate.store.fsio import atomic_write_bytes

FILE = "status.json"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def write(root: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus ``pid``, ``host``, ``written``) to ``<root>/status.json`` atomically;
    errors are swallowed (the file is a view, the catalog is the record)."""
    data = {**state, "pid": os.getpid(), "host": socket.gethostname(), "written": now_iso()}
    try:
        atomic_write_bytes(Path(root) / FILE, (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode())
    except Exception:  # noqa: BLE001 - never fail a run over its progress view
        pass


def read(root: str | Path) -> dict[str, Any] | None:
    """The state last written to ``<root>/status.json``; None when absent or unreadable."""
    try:
        data = json.loads((Path(root) / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def alive(state: dict[str, Any] | None) -> bool:
    """True when ``state`` says a stage is running and its process still exists on this host."""
    if not state or not state.get("running") or state.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(state["pid"]), 0)
    except PermissionError:  # exists, owned by another user
        return True
    except (ProcessLookupError, KeyError, TypeError, ValueError, OverflowError):
        return False
    return True
