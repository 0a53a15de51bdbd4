"""Python API behind the CLI: each CLI command builds a config and makes one call here.

Example::

    from curate import api
    result = api.run("ws", "examples/sample/curate.yaml")
    print(result["summary"]["kept"])
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from curate.store.catalog import STAGES, Workspace
from curate.config import RunConfig, load_config
from curate.errors import ConfigError, CurateError
from curate.stages import run_stage

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


def with_overrides(cfg: RunConfig, section: str, overrides: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with ``overrides`` applied to one section, validated.

    Every key given is applied, ``None`` included: ``None`` sets the field to null, which is
    how a signal is switched off (``with_overrides(cfg, "dedup", {"phash_max_distance": None})``:
    no pHash edges; likewise ``embedding_min_cosine``, ``embed.caption_model``). Leave out the
    keys you do not want to change (the CLI drops the options it was not given).

    Args:
        cfg: the config to start from (not modified).
        section: a stage section of :class:`RunConfig` (``dedup``, ``embed``, …).
        overrides: field name → new value (JSON-like, as in the YAML file).

    Returns:
        a new :class:`RunConfig` (``cfg`` itself when ``overrides`` is empty).

    Raises:
        ConfigError: unknown section or key, or a value the field does not accept (e.g. None
            for a field that cannot be null), naming ``section.key``.
    """
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json", by_alias=True)
    if not isinstance(data.get(section), dict):
        raise ConfigError(f"unknown config section {section!r}")
    data[section].update(overrides)
    try:
        new = RunConfig.model_validate(data)
    except ValidationError as e:
        msgs = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid override: " + "; ".join(msgs)) from None
    new.base_dir = cfg.base_dir
    return new


def with_schema(cfg: RunConfig, schema: str) -> RunConfig:
    """A copy of ``cfg`` whose metadata sources all use layout ``schema`` (``auto`` or a name)."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for src in data["sources"]:
        src["schema"] = schema
    new = RunConfig.model_validate(data)
    new.base_dir = cfg.base_dir
    return new


def run(workspace: str | Path, config: str | Path | RunConfig, *, stages: list[str] | None = None,
        force: bool = False) -> dict[str, Any]:
    """Run the pipeline (all stages, or ``stages`` in pipeline order).

    Returns:
        {'stages': [per-stage result], 'summary': out/summary.json contents or None}
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    ws = open_workspace(workspace, cfg)
    try:
        save_config(ws.root, cfg)
        results = [run_stage(ws, cfg, st, force=force) for st in STAGES if stages is None or st in stages]
    finally:
        ws.close()
    summ = Path(workspace) / "out" / "summary.json"
    return {"stages": results, "summary": json.loads(summ.read_text()) if summ.is_file() else None}


def run_one(workspace: str | Path, stage: str, cfg: RunConfig, *, force: bool = False) -> dict[str, Any]:
    """Run one stage with ``cfg`` (saved as the workspace config for later stage commands)."""
    ws = open_workspace(workspace, cfg)
    try:
        save_config(ws.root, cfg)
        return run_stage(ws, cfg, stage, force=force)
    finally:
        ws.close()


def status(workspace: str | Path) -> dict[str, Any]:
    """Per stage: last run status and counters. Raises CurateError if there is no catalog."""
    if not (Path(workspace) / "catalog.duckdb").is_file():
        raise CurateError(f"{workspace} holds no curate catalog (run `curate --workspace {workspace} run CONFIG.yaml`)")
    from curate.stages import out_of_date

    ws = open_workspace(workspace)
    try:
        st = ws.status()
    finally:
        ws.close()
    for name in out_of_date(st):
        st[name]["out_of_date"] = True
    return st
