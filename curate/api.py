"""Python API behind the CLI: each CLI command builds a config and makes one call here.

Example::

    from curate import api
    result = api.run("ws", "examples/sample/curate.yaml")
    print(result["summary"]["kept"])
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from curate.config import RunConfig, load_config, with_overrides, with_schema  # noqa: F401  (part of the API)
from curate.errors import ConfigError, CurateError
from curate.probes import PROBE_STAGES, generate, score, select
from curate.progress import set_quiet  # noqa: F401  (part of the API: the CLI's --quiet)
from curate.stages import check_upstream, never_run_upstream, out_of_date, record_run, run_stage
from curate.stages.flag.claims import run_claims
from curate.stages.flag.stage import hit_counts, load_claims, load_packs
from curate.stages.ingest.schemas import Layout, load_layouts
from curate.store.catalog import STAGES, Workspace, digest_of

CONFIG_FILE = "config.json"


def open_workspace(root: str | Path, cfg: RunConfig | None = None) -> Workspace:
    ic = cfg.ingest if cfg else None
    return Workspace(root, threads=ic.duckdb_threads if ic else None, memory_limit=ic.duckdb_memory_limit if ic else None,
                     embeddings_root=cfg.embeddings_root() if cfg else None)


def save_config(ws_root: Path, cfg: RunConfig) -> None:
    data = cfg.model_dump(mode="json", by_alias=True)
    data["__base_dir__"] = cfg.base_dir
    (Path(ws_root) / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def workspace_config(ws_root: str | Path, config_path: str | Path | None = None) -> RunConfig:
    """The config for a stage command: ``config_path`` if given, else the workspace's saved one.

    Raises:
        CurateError: neither exists.
    """
    if config_path:
        return load_config(config_path)
    p = Path(ws_root) / CONFIG_FILE
    if not p.is_file():
        raise CurateError(f"no config given and {p} does not exist; pass --config CONFIG.yaml or run `curate run CONFIG.yaml` first")
    data = json.loads(p.read_text())
    base = data.pop("__base_dir__")
    cfg = RunConfig.model_validate(data)
    cfg.base_dir = base
    return cfg


def run(workspace: str | Path, config: str | Path | RunConfig, *, stages: list[str] | None = None,
        force: bool = False) -> dict[str, Any]:
    """Run the pipeline (all stages, or ``stages`` in pipeline order). An upstream stage of one
    of ``stages`` that never ran in this workspace runs first (a stage never computes on
    missing upstream work).

    Returns:
        {'stages': [per-stage result, in the order they ran, each with its 'stage' name],
        'summary': out/summary.json contents or None}
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    ws = open_workspace(workspace, cfg)
    try:
        save_config(ws.root, cfg)
        results = []
        for st in STAGES:
            if stages is None or st in stages:
                # a stage never computes on missing upstream work: never-run upstream stages run first
                results += [run_stage(ws, cfg, u) for u in never_run_upstream(ws, st)]
                results.append(run_stage(ws, cfg, st, force=force))
    finally:
        ws.close()
    summ = Path(workspace) / "out" / "summary.json"
    return {"stages": results, "summary": json.loads(summ.read_text()) if summ.is_file() else None}


def run_one(workspace: str | Path, stage: str, cfg: RunConfig, *, force: bool = False) -> dict[str, Any]:
    """Run one stage with ``cfg`` (saved as the workspace config for later stage commands).

    Upstream stages that never ran in this workspace run first, in pipeline order (a stage is
    never computed on missing upstream work); their results are listed under ``upstream``.

    Returns:
        the stage's result as :func:`curate.stages.run_stage` gives it, plus ``upstream``: the
        results of the upstream stages this call ran (empty when none was missing).

    Raises:
        CurateError: an upstream stage's last run failed (re-run it first), or the stage's own errors.
    """
    ws = open_workspace(workspace, cfg)
    try:
        save_config(ws.root, cfg)
        ran = [run_stage(ws, cfg, u) for u in never_run_upstream(ws, stage)]
        return {**run_stage(ws, cfg, stage, force=force), "upstream": ran}
    finally:
        ws.close()


def status(workspace: str | Path) -> dict[str, Any]:
    """Per stage: last run status and counters. Raises CurateError if there is no catalog."""
    if not (Path(workspace) / "catalog.duckdb").is_file():
        raise CurateError(f"{workspace} holds no curate catalog (run `curate --workspace {workspace} run CONFIG.yaml`)")
    ws = open_workspace(workspace)
    try:
        st = ws.status()
    finally:
        ws.close()
    for name in out_of_date(st):
        st[name]["out_of_date"] = True
    return st


def layouts() -> dict[str, Layout]:
    """The known metadata layouts (``schemas/*.yaml``), name -> :class:`~curate.stages.ingest.schemas.Layout`."""
    return load_layouts()


def flag_dry_run(workspace: str | Path, cfg: RunConfig) -> dict[str, Any]:
    """Per-rule hit counts of ``cfg``'s rule packs, and per-claimant match counts, on the
    workspace's catalog; writes nothing (claims are matched and extended inside a transaction
    that is rolled back).

    Returns:
        ``{rule: hits, …}`` as :func:`curate.stages.flag.stage.hit_counts` gives them, plus
        ``claims``: per claimant, when claims or opt-out lists are configured.
    """
    ws = open_workspace(workspace, cfg)
    try:
        out = hit_counts(ws, load_packs(cfg), cfg)
        claims = load_claims(cfg)
        if claims:
            out["claims"] = run_claims(ws, cfg, claims, dry_run=True)["claimants"]
        return out
    finally:
        ws.close()


def probe(workspace: str | Path, command: str, config: str | Path | None = None, overrides: dict | None = None,
          **kwargs: Any) -> dict[str, Any]:
    """One ``curate probe`` command: ``select``, ``generate``, ``import`` or ``score``.

    Args:
        workspace: the workspace folder.
        command: which step.
        config: a curate.yaml path (default: the workspace's saved config).
        overrides: ``probe`` config keys to change (saved with the workspace config, as stage
            commands do).
        kwargs: the step's own arguments (``gen_set``, ``limit``, ``folder``, ``prompts``, ``pipe``).

    Returns:
        the step's counters (also recorded in ``runs`` as stage ``probe-<command>``, with
        ``seconds``).

    Raises:
        ValueError: unknown command.
        CurateError: a table the step reads was never written (e.g. ``score`` before any
            generations), or the step's own errors (see each module).
    """
    steps = {
        "select": lambda ws, cfg: select.run(ws, cfg),
        "generate": lambda ws, cfg: generate.generate(ws, cfg, **kwargs),
        "import": lambda ws, cfg: generate.import_generations(ws, cfg, **kwargs),
        "score": lambda ws, cfg: score.run(ws, cfg, **kwargs),
    }
    if command not in steps:
        raise ValueError(f"unknown probe command {command!r}; known: {', '.join(steps)}")
    name = f"probe-{command}"
    assert name in PROBE_STAGES
    cfg = with_overrides(workspace_config(workspace, config), "probe", overrides or {})
    ws = open_workspace(workspace, cfg)
    try:
        save_config(ws.root, cfg)
        check_upstream(ws, name)
        section = {"section": cfg.model_dump(mode="json")["probe"], "base_dir": cfg.base_dir,
                   "args": {k: str(v) for k, v in kwargs.items() if k != "pipe"}}
        # every probe command runs when asked (no idempotency skip): the digest is unique
        def step() -> dict[str, Any]:
            t0 = time.perf_counter()
            counters = steps[command](ws, cfg)
            counters["seconds"] = round(time.perf_counter() - t0, 3)
            return counters

        return record_run(ws, name, section, digest_of(name, section, time.time()), step)[0]
    finally:
        ws.close()
