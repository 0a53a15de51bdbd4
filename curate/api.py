"""Python API behind the CLI: each CLI command builds a config and makes one call here.

Example::

    from curate import api
    result = api.run("ws", "examples/sample/curate.yaml")
    print(result["summary"]["kept"])
"""
from __future__ import annotations

import difflib
import json
import time
from pathlib import Path
from typing import Any

import yaml

from curate.config import RunConfig, load_config, with_overrides, with_schema  # noqa: F401  (part of the API)
from curate.errors import ConfigError, CurateError
from curate.probes import PROBE_STAGES, generate, score, select
from curate.progress import info, set_quiet  # noqa: F401  (set_quiet is part of the API: the CLI's --quiet)
from curate.stages import check_upstream, downstream, out_of_date, record_run, run_stage, with_upstream
from curate.stages import counter_text  # noqa: F401  (part of the API: `curate status` lines)
from curate.models.image import weights_file
from curate.models.recipe import caption_key, image_key
from curate.stages.flag.claims import run_claims
from curate.stages.flag.retrieval import retrieval_fingerprint
from curate.stages.flag.rules import Retrieval
from curate.stages.hash.changes import count_changed
from curate.stages.flag.stage import hit_counts, load_claims, load_packs
from curate.stages.ingest.detect import detect_sources
from curate.stages.ingest.schemas import Layout, load_layouts
from curate.store import fsio, runstate
from curate.store.catalog import STAGES, CatalogLocked, Workspace, digest_of
from curate.store.fsio import atomic_write_bytes
from curate.yamlconf import near_files

CONFIG_FILE = "config.json"


def open_workspace(root: str | Path, cfg: RunConfig | None = None) -> Workspace:
    ic = cfg.ingest if cfg else None
    return Workspace(root, threads=ic.duckdb_threads if ic else None, memory_limit=ic.duckdb_memory_limit if ic else None,
                     embeddings_root=cfg.embeddings_root() if cfg else None)


def save_config(ws_root: Path, cfg: RunConfig) -> None:
    data = cfg.model_dump(mode="json", by_alias=True)
    data["__base_dir__"] = cfg.base_dir
    # atomic: a killed or disk-full command never leaves a truncated config for the next one
    atomic_write_bytes(Path(ws_root) / CONFIG_FILE, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def workspace_config(ws_root: str | Path, config_path: str | Path | None = None) -> RunConfig:
    """The config for a stage command: ``config_path`` if given, else the workspace's saved one.

    Raises:
        CurateError: neither exists.
    """
    if config_path:
        return load_config(config_path)
    p = Path(ws_root) / CONFIG_FILE
    if not p.is_file():
        raise CurateError(f"no config given and {p} does not exist; pass --config CONFIG.yaml or run `curate run CONFIG.yaml` (or `curate run PATH…`) first")
    data = json.loads(p.read_text())
    base = data.pop("__base_dir__")
    cfg = RunConfig.model_validate(data)
    cfg.base_dir = base
    return cfg


def check_config(cfg: RunConfig) -> None:
    """Check every name and file ``cfg`` refers to, before any stage runs (so a typo in the flag
    section never costs an ingest, a hash and an embedding pass): the metadata layouts
    (``sources[].schema``), the image and caption models (``embed.model``,
    ``embed.caption_model``; names only, no weights loaded), every rule pack (shipped name or
    file, its rules and regular expressions, classifier names, retrieval reference files), every
    claim file and opt-out list (read and validated, their URL lists and reference images
    found). Paths are taken as the config holds them: relative ones against the config's folder.

    Raises:
        ConfigError: the first bad value, naming it, where it comes from, the closest valid
            choice and the valid choices (or the closest file names beside a missing file).
    """
    layouts = load_layouts()
    for src in cfg.sources:
        if src.schema_ != "auto" and src.schema_ not in layouts:
            near = difflib.get_close_matches(src.schema_, list(layouts), n=1, cutoff=0.6)
            raise ConfigError(f"source {src.name!r}: unknown schema {src.schema_!r}"
                              + (f"; did you mean {near[0]!r}?" if near else "")
                              + f"; known: auto, {', '.join(sorted(layouts))}")
    ec = cfg.embed
    if ec.model.startswith("precomputed:"):
        if not ec.precomputed:
            raise ConfigError(f"embed.model {ec.model!r} imports vectors made elsewhere: list their files under "
                              "embed.precomputed (vectors, metadata, key)")
    else:
        image_key(cfg)  # resolves the name and preprocessing (no weights loaded)
        f = weights_file(ec.model)
        if f is not None and not f.is_file():
            raise ConfigError(f"embed.model {ec.model!r}: weights file {f} not found{near_files(f.absolute())}")
    if ec.caption_model:
        caption_key(cfg)
    packs = load_packs(cfg)
    retrieval_fingerprint(packs)  # every reference image of a retrieval rule exists
    for rule in (r for p in packs for r in p.rules if isinstance(r, Retrieval) and r.text):
        if not ec.model.startswith("open_clip:"):
            raise ConfigError(f"retrieval rule {rule.id!r}: text concepts need an image model with a text tower in "
                              f"the same space (embed.model: open_clip:<arch>/<pretrained>); {ec.model} has none")
    for claim in load_claims(cfg):
        claim.all_urls()
        claim.reference_files()


#: the config :func:`run_inputs` writes into the workspace, and the first line that marks it as curate's
INPUTS_CONFIG, INPUTS_HEADER = "curate.yaml", "# written by `curate run PATH…`"


def config_for_inputs(inputs: list[str], cwd: str | Path | None = None) -> RunConfig:
    """The config ``curate run PATH…`` runs: one source per input
    (:func:`curate.stages.ingest.detect.detect_sources`), every other setting at its default.

    Raises:
        InputError: an input curate cannot read, saying what to pass instead.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    cfg = RunConfig(sources=detect_sources(inputs, base))
    cfg.base_dir = str(base.resolve())
    return cfg


def write_inputs_config(ws_root: str | Path, cfg: RunConfig) -> Path:
    """``<workspace>/curate.yaml``: ``cfg`` with every setting spelled out and absolute source
    paths, so ``curate --workspace WS run WS/curate.yaml`` repeats the run and is where to change
    a setting. Never replaces a file of the user's, nor one curate wrote that has been edited since.

    Raises:
        CurateError: the workspace holds a ``curate.yaml`` that curate did not write, or one that
            differs from ``cfg`` (edited, or written for other inputs).
    """
    path = Path(ws_root) / INPUTS_CONFIG
    body = yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True)
    text = (f"{INPUTS_HEADER}: the inputs it detected, every other setting at its default.\n"
            f"# Edit and re-run with: curate --workspace {Path(ws_root)} run {path}\n{body}")
    if path.is_file():
        old = path.read_text(errors="replace")
        if not old.startswith(INPUTS_HEADER):
            raise CurateError(f"{path} exists and was not written by curate; move it, or run `curate run {path}`")
        if old != text:  # edited since (or other inputs): never lose a user's settings silently
            raise CurateError(f"{path} differs from the config these inputs give (edited since curate wrote it, or "
                              f"other inputs): run `curate --workspace {Path(ws_root)} run {path}` to use it, or "
                              "remove it to detect the inputs again")
    Path(ws_root).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def run_inputs(workspace: str | Path, inputs: list[str], *, force: bool = False) -> dict[str, Any]:
    """``curate run PATH…``: detect what each input is (:func:`config_for_inputs`), write the
    config into the workspace (:func:`write_inputs_config`), and run every stage with it.

    Returns:
        :func:`run`'s result, plus ``config``: the path of the written config.

    Raises:
        InputError: an input curate cannot read; ConfigError / CurateError as :func:`run`.
    """
    cfg = config_for_inputs(inputs)
    check_config(cfg)
    written = write_inputs_config(workspace, cfg)
    info(f"config written to {written} (edit it and `curate run` it to change a setting)")
    return {**run(workspace, cfg, force=force), "config": str(written)}


def run(workspace: str | Path, config: str | Path | RunConfig, *, stages: list[str] | None = None,
        force: bool = False) -> dict[str, Any]:
    """Run the pipeline (all stages, or ``stages`` in pipeline order). The upstream stages of
    ``stages`` run first, each skipped when up to date (:func:`curate.stages.run_stage`): a stage
    never computes on missing or stale upstream work.

    Returns:
        {'stages': [per-stage result, in the order they ran, each with its 'stage' name],
        'summary': out/summary.json contents or None}

    Raises:
        ConfigError: a bad name or missing file anywhere in the config (:func:`check_config`),
            before any stage runs or the catalog is created.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    check_config(cfg)  # a bad name fails here, before any stage (or the catalog) exists
    ws = open_workspace(workspace, cfg)
    try:
        save_config(ws.root, cfg)
        # a stage never computes on missing or stale upstream work: upstream stages run first (skipped when up to date)
        wanted = set(STAGES if stages is None else stages)
        results = [run_stage(ws, cfg, st, force=force and st in wanted) for st in with_upstream(wanted)]
    finally:
        ws.close()
    summ = Path(workspace) / "out" / "summary.json"
    return {"stages": results, "summary": json.loads(summ.read_text()) if summ.is_file() else None}


def run_one(workspace: str | Path, stage: str, cfg: RunConfig, *, force: bool = False) -> dict[str, Any]:
    """Run one stage with ``cfg`` (saved as the workspace config for later stage commands).

    Upstream stages that never ran, or are not up to date with ``cfg`` and their own upstream,
    run first, in pipeline order (a stage is never computed on missing or stale upstream work);
    their results are listed under ``upstream``.

    Returns:
        the stage's result as :func:`curate.stages.run_stage` gives it, plus ``upstream``: the
        results of the upstream stages this call ran (empty when all were up to date).

    Raises:
        ConfigError: a bad name or missing file anywhere in ``cfg`` (:func:`check_config`), before anything runs.
        CurateError: an upstream stage's last run failed (re-run it first), or the stage's own errors.
    """
    check_config(cfg)
    ws = open_workspace(workspace, cfg)
    try:
        save_config(ws.root, cfg)
        ran = [run_stage(ws, cfg, u) for u in with_upstream([stage]) if u != stage]
        return {**run_stage(ws, cfg, stage, force=force), "upstream": [r for r in ran if not r["skipped"]]}
    finally:
        ws.close()


def explain_error(e: BaseException, workspace: str | Path | None = None) -> CurateError | None:
    """The user-facing error for an unexpected exception, or None when it has none: a full disk
    (ENOSPC / EDQUOT / EFBIG, from Python or DuckDB) anywhere → :class:`curate.errors.DiskFullError`
    naming the file; a write refused by permissions or a read-only filesystem inside ``workspace``
    → :class:`curate.errors.NotWritableError`. The CLI prints it as one line instead of a traceback."""
    err = fsio.disk_full_error(e)
    path = fsio.error_path(e)
    if err is None and workspace and path and Path(workspace).resolve() in Path(path).resolve().parents:
        err = fsio.not_writable_error(e, Path(workspace).resolve())  # only for writes inside the workspace
    return err


def status(workspace: str | Path) -> dict[str, Any]:
    """Per stage: last run status and counters; ``out_of_date`` on a stage whose outputs are
    older than an upstream run, and on hash and every stage after it when image files changed
    since they were hashed (``hash.changed_images``: how many, by size, mtime or presence —
    :func:`curate.stages.hash.changes.count_changed`; one ``stat`` per image file).

    The catalog is opened for writing when it can be (an older catalog gets its new columns), else
    read-only, so status works while notebooks hold read-only connections. While a run holds the
    catalog (DuckDB then lets no other process open it), the figures come from the
    ``status.json`` the run keeps (:mod:`curate.store.runstate`): the stages as they stood when
    the running stage started, and that stage's entry gains ``run``: ``{pid, host, started,
    progress: {desc, done, total, unit, updated} or null, written, stage, source: 'status.json'}``.
    Between two stages of a command (``stage`` null) the entry of the stage it finished last
    gains ``run`` with ``between_stages: true`` and ``started``: when the command opened the workspace.

    Raises:
        CurateError: there is no catalog, or another process (not a curate run) holds it.
    """
    if not (Path(workspace) / "catalog.duckdb").is_file():
        raise CurateError(f"{workspace} holds no curate catalog (run `curate --workspace {workspace} run CONFIG.yaml`)")
    state = runstate.read(workspace)
    try:
        try:
            ws = open_workspace(workspace)
        except CurateError:  # held by another process (or not writable): read alongside it
            ws = Workspace.read_only(workspace)
    except CatalogLocked as e:
        if not runstate.alive(state):
            raise CurateError(f"{e}; no curate run is in progress there (a notebook with a read-write "
                              "connection?): close that connection, or open it with read_only=True") from None
        st = {name: state["stages"][name] for name in STAGES if name in state["stages"]}  # pipeline order
        run = {k: state.get(k) for k in ("pid", "host", "started", "progress", "written", "stage")} \
            | {"source": "status.json"}
        if state.get("stage"):
            st[state["stage"]] = {**st.get(state["stage"], {}), "status": "running", "run_id": state["run_id"],
                                  "started": state["started"], "run": run}
        else:  # the command holds the workspace between two stages (or before its first)
            at = state.get("last_stage") if state.get("last_stage") in st else next(iter(st))
            st[at] = {**st[at], "run": run | {"started": state.get("opened"), "between_stages": True}}
        return _mark_out_of_date(st)
    try:
        st = ws.status()
        changed = count_changed(ws) if st["hash"].get("status") == "ok" else 0
    finally:
        ws.close()
    if changed:  # image files replaced, deleted or restored since they were hashed: `curate run` re-hashes them
        st["hash"]["changed_images"] = changed
        st["hash"]["out_of_date"] = True
        st["hash"]["out_of_date_because"] = f"{changed} image file(s) changed since they were hashed"
    return _mark_out_of_date(st)


def _mark_out_of_date(st: dict[str, Any]) -> dict[str, Any]:
    """``out_of_date`` and ``out_of_date_because`` on the stale stages (:func:`curate.stages.out_of_date`,
    the rule the stage runner skips by), after hash when image files changed; the bookkeeping keys
    that rule reads (``ok_run_id``, ``result``, ``built_on``) are left out of what status returns."""
    stale = out_of_date(st)
    if st.get("hash", {}).get("out_of_date"):
        stale = {"hash": st["hash"]["out_of_date_because"],
                 **{d: "hash is out of date" for d in downstream("hash") if st.get(d, {}).get("status") == "ok"}, **stale}
    for name, why in stale.items():
        st[name]["out_of_date"] = True
        st[name].setdefault("out_of_date_because", why)
    for entry in st.values():
        for k in ("ok_run_id", "result", "built_on"):
            entry.pop(k, None)
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
