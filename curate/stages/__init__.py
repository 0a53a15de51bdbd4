"""Pipeline stages. Each module exposes ``run(ws, cfg) -> counters`` and ``inputs(ws, cfg)``.

:func:`run_stage` wraps a stage with the bookkeeping every stage shares: it computes the
stage's digest (its own config section without the engine keys — ``curate.config.ENGINE_KEYS``,
which place the work but never change it —, the fingerprint of its inputs, and the digests of
the upstream stages' last successful runs), skips the stage when the last successful run
has the same digest (idempotency), and records the run with its counters in ``runs``.
"""
from __future__ import annotations

import importlib
import time
import traceback
from typing import Any

from curate.store.catalog import STAGES, Workspace, digest_of
from curate.config import ENGINE_KEYS, RunConfig
from curate.progress import info

UPSTREAM: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "hash": ("ingest",),
    "embed": ("ingest",),
    "dedup": ("hash", "embed"),
    "flag": ("ingest", "hash", "dedup"),  # claims extend to duplicate clusters
    "export": ("dedup", "flag"),
    "report": ("export",),
}


def stage_module(name: str):
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}")
    return importlib.import_module(f"curate.stages.{name}")


def stage_digest(ws: Workspace, cfg: RunConfig, name: str) -> str:
    mod = stage_module(name)
    ups = []
    for u in UPSTREAM[name]:
        r = ws.last_run(u)
        ups.append(r["digest"] if r else None)
    own = mod.inputs(ws, cfg) if hasattr(mod, "inputs") else None
    section = cfg.model_dump(mode="json", by_alias=True).get(name)
    if isinstance(section, dict):  # where a stage runs (local / ray, actors, GPUs) never changes its results
        section = {k: v for k, v in section.items() if k not in ENGINE_KEYS}
    return digest_of(name, section, own, ups)


def run_stage(ws: Workspace, cfg: RunConfig, name: str, *, force: bool = False) -> dict[str, Any]:
    """Run one stage unless its digest matches its last successful run.

    Returns:
        {'stage', 'skipped': bool, 'counters': dict, 'seconds': float}

    Raises:
        whatever the stage raises, after recording the run as 'failed' with the error.
    """
    _check_upstream(ws, name)
    digest = stage_digest(ws, cfg, name)
    last = ws.last_run(name)
    if not force and last is not None and last["digest"] == digest:
        info(f"[{name}] up to date (run {last['run_id']}), skipped")
        return {"stage": name, "skipped": True, "counters": last["counters"], "seconds": 0.0}
    section = cfg.model_dump(mode="json", by_alias=True).get(name)
    run_id = ws.start_run(name, {"section": section, "base_dir": cfg.base_dir}, digest)
    t0 = time.perf_counter()
    info(f"[{name}] running")
    try:
        counters = stage_module(name).run(ws, cfg)
    except BaseException as e:
        ws.finish_run(run_id, {}, status="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        raise
    dt = time.perf_counter() - t0
    ws.finish_run(run_id, counters)
    info(f"[{name}] done in {dt:.1f}s: {_short(counters)}")
    return {"stage": name, "skipped": False, "counters": counters, "seconds": dt}


def _check_upstream(ws: Workspace, name: str) -> None:
    """Refuse to build on a stage whose latest run failed or was killed (its tables may be partial)."""
    from curate.errors import CurateError

    for u in UPSTREAM[name]:
        r = ws.last_run(u, status=None)
        if r is not None and r["status"] != "ok":
            why = (r.get("error") or "killed before it finished").splitlines()[0]
            raise CurateError(
                f"{name} needs {u}, whose last run ({r['run_id']}) {r['status']}: {why}; fix that and re-run "
                f"`curate {u}` (or `curate run CONFIG.yaml`)"
            )


def out_of_date(status: dict[str, Any]) -> list[str]:
    """Stages whose last successful run is older than an upstream stage's (their outputs are stale)."""
    stale = []
    for name, ups in UPSTREAM.items():
        own = status.get(name, {})
        if own.get("status") != "ok":
            continue
        if any(status.get(u, {}).get("run_id", 0) > own["run_id"] for u in ups) or any(u in stale for u in ups):
            stale.append(name)
    return stale


def _short(counters: dict[str, Any]) -> str:
    items = [f"{k}={v}" for k, v in counters.items() if isinstance(v, (int, float, str))]
    # nested counters (per rule, per claimant, …): their size, so the line never ends empty
    items += [f"{k}: {len(v)}" for k, v in counters.items() if isinstance(v, (dict, list)) and v]
    return ", ".join(items[:8]) or "nothing to report"
