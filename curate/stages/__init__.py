"""Pipeline stages, one package each (``curate/stages/<stage>/``), and the bookkeeping they share.

Each stage package exposes ``run(ws, cfg) -> counters``, ``inputs(ws, cfg)`` (a fingerprint of
what it reads from outside the catalog), and two tuples of catalog tables: ``READS`` and
``WRITES``. A stage's upstream stages are *derived* from them (:func:`upstream`): the stages
that write a table it reads. So the dependency graph is what the code reads, never a list kept
by hand (embed reads hash's ``images``, so embed depends on hash).

:func:`run_stage` wraps a stage: it refuses to start when an upstream stage never ran or its
last run failed (:func:`check_upstream`), computes the stage's digest (its own config section
without the engine keys — ``curate.config.ENGINE_KEYS``, which place the work but never change
it —, the fingerprint of its inputs, and the digests of the upstream stages' last successful
runs), skips the stage when the last successful run has the same digest (idempotency), and
records the run with its counters in ``runs`` through :func:`record_run` — the one
bookkeeping path, also used by the ``curate probe`` commands.
"""
from __future__ import annotations

import importlib
import inspect
import json
import time
import traceback
from functools import lru_cache
from typing import Any, Callable, Iterable

from curate.config import ENGINE_KEYS, RunConfig
from curate.errors import CurateError
from curate.progress import info, set_listener
from curate.store import runstate
from curate.store.catalog import STAGES, Workspace, digest_of, result_digest

#: the memorization-probe commands (``curate probe …``): their tables, for the same derivation
PROBE_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (reads, writes)
    "probe-select": (("samples", "images", "clusters", "cluster_stats", "caption_stats"), ("probes",)),
    "probe-generate": (("probes",), ("generations",)),
    "probe-import": ((), ("generations",)),
    "probe-score": (("generations", "samples", "images", "embeddings"),
                    ("gen_matches", "gen_scores", "probe_verdicts", "probe_stats")),
}


def stage_module(name: str):
    """The package of stage ``name`` (``curate.stages.<name>``).

    Raises:
        ValueError: not a stage.
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}")
    return importlib.import_module(f"curate.stages.{name}")


@lru_cache(maxsize=None)
def tables(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tables read, tables written) by a stage or a probe command."""
    if name in PROBE_TABLES:
        return PROBE_TABLES[name]
    mod = stage_module(name)
    return tuple(mod.READS), tuple(mod.WRITES)


@lru_cache(maxsize=None)
def upstream(name: str) -> tuple[str, ...]:
    """The stages (in pipeline order) that write a table ``name`` reads, ``name`` itself excluded."""
    reads = set(tables(name)[0])
    return tuple(s for s in STAGES if s != name and reads & set(tables(s)[1]))


def built_on(ws: Workspace, name: str) -> dict[str, Any]:
    """{upstream stage: :func:`result_digest` of its last successful run}: what a run of ``name``
    now would be built on. Recorded with each run (``runs.config.built_on``) so that staleness
    (:func:`out_of_date`) and skipping (:func:`run_stage`) follow one rule."""
    return {u: result_digest(ws.last_run(u)) for u in upstream(name)}


def stage_digest(ws: Workspace, cfg: RunConfig, name: str) -> str:
    mod = stage_module(name)
    ups = list(built_on(ws, name).values())
    own = mod.inputs(ws, cfg)
    section = cfg.model_dump(mode="json", by_alias=True).get(name)
    if isinstance(section, dict):  # where a stage runs (local / ray, actors, GPUs) never changes its results
        section = {k: v for k, v in section.items() if k not in ENGINE_KEYS}
    return digest_of(name, section, own, ups)


def record_run(ws: Workspace, name: str, config: dict, digest: str, fn: Callable[[], dict]) -> tuple[dict, float]:
    """Run ``fn`` as one ``runs`` row named ``name``: status ``running`` while it works, then
    ``ok`` with its counters, or ``failed`` with the error (re-raised).

    While it runs, ``<workspace>/status.json`` (:mod:`curate.store.runstate`) says so, with the
    progress of the stage's bars, for ``curate status`` while this process holds the catalog; when
    it ends, status.json still says ``running`` (``stage`` null) until the workspace is closed.

    Returns:
        (counters, seconds).
    """
    run_id = ws.start_run(name, config, digest)
    t0 = time.perf_counter()
    info(f"[{name}] running")
    base = getattr(ws, "run_state", None) or {"opened": runstate.now_iso(), "last_stage": None}
    state: dict[str, Any] = {**base, "running": True, "stage": name, "run_id": run_id, "started": runstate.now_iso(),
                             "progress": None, "stages": ws.status()}
    runstate.write(ws.root, state)

    def ended() -> None:  # the command still holds the workspace: running, between stages
        after = {**state, "running": True, "stage": None, "last_stage": name, "run_id": None, "started": None,
                 "progress": None, "stages": ws.status()}
        if getattr(ws, "run_state", None) is not None:
            ws.run_state = after
        runstate.write(ws.root, after)

    def progressed(p: dict) -> None:
        state["progress"] = {**p, "updated": runstate.now_iso()}
        runstate.write(ws.root, state)

    set_listener(progressed)
    try:
        counters = fn()
    except BaseException as e:
        set_listener(None)
        try:
            ws.finish_run(run_id, {}, status="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
            ended()
        except Exception:  # noqa: BLE001 - e.g. the disk is full: the stage's own error is the one to report
            pass  # the run stays 'running', which check_upstream treats as not finished
        raise
    set_listener(None)
    dt = time.perf_counter() - t0
    ws.finish_run(run_id, counters)
    ended()
    info(f"[{name}] done in {dt:.1f}s: {_short(counters)}")
    return counters, dt


def run_stage(ws: Workspace, cfg: RunConfig, name: str, *, force: bool = False) -> dict[str, Any]:
    """Run one stage unless its digest matches its last successful run.

    Returns:
        {'stage', 'skipped': bool, 'counters': dict, 'seconds': float}

    Raises:
        CurateError: an upstream stage never ran or its last run failed (:func:`check_upstream`).
        whatever the stage raises, after recording the run as 'failed' with the error.
    """
    check_upstream(ws, name)
    digest = stage_digest(ws, cfg, name)
    last = ws.last_run(name)
    if not force and last is not None and last["digest"] == digest:
        if "built_on" not in last["config"]:  # recorded before runs kept it: the same digest means the same upstream
            ws.con.execute("UPDATE runs SET config = ? WHERE run_id = ?",
                           [json.dumps({**last["config"], "built_on": built_on(ws, name)}, sort_keys=True), last["run_id"]])
        info(f"[{name}] up to date (run {last['run_id']}), skipped")
        return {"stage": name, "skipped": True, "counters": last["counters"], "seconds": 0.0}
    section = cfg.model_dump(mode="json", by_alias=True).get(name)
    run = stage_module(name).run
    # `force` reaches a stage that takes it (hash: read every file again); the others recompute when they run
    kw = {"force": True} if force and "force" in inspect.signature(run).parameters else {}
    counters, dt = record_run(ws, name, {"section": section, "base_dir": cfg.base_dir, "built_on": built_on(ws, name)},
                              digest, lambda: run(ws, cfg, **kw))
    return {"stage": name, "skipped": False, "counters": counters, "seconds": dt}


def with_upstream(names: Iterable[str]) -> list[str]:
    """``names`` and every stage they read from, transitively, in pipeline order: what
    :func:`curate.api.run` passes through :func:`run_stage` (which skips the ones up to date) so
    that a stage is never computed on missing or stale upstream work."""
    todo = set(names)
    frontier = list(todo)
    while frontier:
        for u in upstream(frontier.pop()):
            if u not in todo:
                todo.add(u)
                frontier.append(u)
    return [s for s in STAGES if s in todo]


def check_upstream(ws: Workspace, name: str) -> None:
    """Refuse to build on a stage that never ran, whose latest run failed or was killed (its
    tables may be partial), or that is out of date (:func:`out_of_date`: it was built on results
    an earlier stage has since replaced): a result computed on missing or stale upstream work is
    an error, not an empty success.

    Raises:
        CurateError: naming the upstream stage and the command to run.
    """
    for u in upstream(name):
        r = ws.last_run(u, status=None)
        if r is None:
            raise CurateError(f"{name} needs {u}, which has not run in this workspace; run `curate {u}` first "
                              f"(or `curate run CONFIG.yaml`, which runs every stage in order)")
        if r["status"] != "ok":
            why = (r.get("error") or "killed before it finished").splitlines()[0]
            raise CurateError(
                f"{name} needs {u}, whose last run ({r['run_id']}) {r['status']}: {why}; fix that and re-run "
                f"`curate {u}` (or `curate run CONFIG.yaml`)"
            )
    stale = out_of_date(ws.status())
    for u in upstream(name):
        if u in stale:
            raise CurateError(f"{name} needs {u}, which is out of date ({stale[u]}); run `curate {u}` first "
                              f"(or `curate run CONFIG.yaml`)")


def downstream(name: str) -> tuple[str, ...]:
    """The stages (in pipeline order) that read, directly or through others, a table ``name`` writes."""
    below = {name}
    for s in STAGES:  # pipeline order: a stage's upstream comes before it
        if s not in below and set(upstream(s)) & below:
            below.add(s)
    return tuple(s for s in STAGES if s in below and s != name)


def out_of_date(status: dict[str, Any]) -> dict[str, str]:
    """Stages whose outputs are stale, each with why: an upstream stage's last successful run is
    not the one it was built on (it re-ran and its result changed), or an upstream stage is itself
    out of date. The same rule :func:`run_stage` skips by (a stage whose upstream results are
    unchanged is up to date, even when the upstream re-ran). ``status`` is
    :meth:`Workspace.status`'s: per stage ``result`` (:func:`result_digest`) and ``built_on``;
    a run recorded before ``built_on`` existed falls back to run order.

    Returns:
        {stage: reason}, in pipeline order.
    """
    stale: dict[str, str] = {}
    for name in STAGES:
        own = status.get(name, {})
        if own.get("status") != "ok":
            continue
        for u in upstream(name):
            up = status.get(u, {})
            rec = own.get("built_on")
            if u in stale:
                stale[name] = f"{u} is out of date"
            elif rec is not None and u in rec and rec[u] != up.get("result"):
                stale[name] = f"{u} changed since {name} ran"
            elif (rec is None or u not in rec) and up.get("ok_run_id", 0) > own["run_id"]:
                stale[name] = f"{u} ran after {name}"
            else:
                continue
            break
    return stale


def _short(counters: dict[str, Any]) -> str:
    items = [f"{k}={v}" for k, v in counters.items() if isinstance(v, (int, float, str))]
    # nested counters (per rule, per claimant, …): how many entries (not a count of hits), so the line never ends empty
    items += [f"{k}: {len(v)} {'entry' if len(v) == 1 else 'entries'}" for k, v in counters.items()
              if isinstance(v, (dict, list)) and v]
    return ", ".join(items[:8]) or "nothing to report"


def counter_text(counters: dict[str, Any]) -> str:
    """A stage's counters on one line (``curate status``): numbers and words as ``k=v``; a list of words joined
    (``packs: a, b``); a small mapping of numbers spelled out (``samples_by_action: remove=3``);
    anything larger or deeper as its number of entries — never silently left out (flag's
    per-rule lines follow the row)."""
    items = []
    for k, v in counters.items():
        if not isinstance(v, (dict, list)):
            items.append(f"{k}={v}")
        elif not v:
            items.append(f"{k}: none")
        elif isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (str, int, float)) for x in v):
            items.append(f"{k}: {', '.join(map(str, v))}")
        elif isinstance(v, dict) and len(v) <= 6 and all(isinstance(x, (str, int, float)) for x in v.values()):
            items.append(f"{k}: {', '.join(f'{a}={b}' for a, b in v.items())}")
        else:
            items.append(f"{k}: {len(v)} {'entry' if len(v) == 1 else 'entries'}")
    return ", ".join(items)
