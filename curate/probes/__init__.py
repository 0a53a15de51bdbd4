"""Memorization probes: which training samples a diffusion model trained on this data is most
likely to regurgitate (before training), and how much a trained model actually copies (after).

Three steps, each a ``curate probe`` command and a function here:

- :mod:`curate.probes.select` — rank prompts by replication risk from the catalog (duplicate
  cluster size, caption duplication, image+caption duplication, template captions, caption
  specificity) → table ``probes`` and ``out/probes.parquet``.
- :mod:`curate.probes.generate` — a ``diffusers`` text-to-image pipeline on the probe prompts,
  N seeds each, images + seeds saved, resumable, with Wen et al.'s noise-difference magnitude
  recorded in the same run; or generations made elsewhere imported from a folder + prompt list
  → table ``generations``.
- :mod:`curate.probes.score` — copy-detection descriptors of the generations searched against
  the training embeddings (:mod:`curate.probes.search`), Somepalli et al.'s statistics and
  Carlini et al.'s tiled ℓ2 (:mod:`curate.probes.stats`), a verdict per generation and per
  prompt → tables ``gen_matches``, ``gen_scores``, ``probe_verdicts``, ``probe_stats`` and
  ``out/probe_scores.json``.

The report stage shows the results (:mod:`curate.probes.plots` draws the figures).
Each command records a ``runs`` row (stage ``probe-select``, ``probe-generate``,
``probe-import``, ``probe-score``) with its config and counters.
"""
from __future__ import annotations

import hashlib
import time
import traceback
from typing import Any, Callable

from curate.store.catalog import Workspace

PROBE_STAGES = ("probe-select", "probe-generate", "probe-import", "probe-score")


def stable_id(*parts: Any) -> int:
    """A stable positive int64 (60 bits) from ``parts``: the first 15 hex digits of the sha256 of
    their ``\\x00``-joined text. Used for ``probe_id`` (of the prompt text) and ``gen_id``."""
    text = "\x00".join(str(p) for p in parts)
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16)


def probe_id(prompt: str) -> int:
    """The probe id of a prompt: :func:`stable_id` of the exact prompt text (so the same prompt
    keeps its id across selections and imports)."""
    return stable_id("prompt", prompt)


def recorded(ws: Workspace, stage: str, config: dict, fn: Callable[[], dict]) -> dict:
    """Run ``fn`` as a ``runs`` row named ``stage`` (status ok / failed with the error)."""
    from curate.store.catalog import digest_of
    from curate.progress import info

    run_id = ws.start_run(stage, config, digest_of(stage, config, time.time()))
    t0 = time.perf_counter()
    info(f"[{stage}] running")
    try:
        counters = fn()
    except BaseException as e:
        ws.finish_run(run_id, {}, status="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        raise
    counters["seconds"] = round(time.perf_counter() - t0, 3)
    ws.finish_run(run_id, counters)
    info(f"[{stage}] done in {counters['seconds']:.1f}s")
    return counters


def run_command(workspace: Any, command: str, config: Any = None, overrides: dict | None = None,
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
        the step's counters (also recorded in ``runs`` as stage ``probe-<command>``).

    Raises:
        ConfigError / CurateError: from the step (see each module).
    """
    from curate import api

    cfg = api.workspace_config(workspace, config)
    cfg = api.with_overrides(cfg, "probe", overrides or {})
    ws = api.open_workspace(workspace, cfg)
    try:
        api.save_config(ws.root, cfg)
        section = {"section": cfg.model_dump(mode="json")["probe"], "base_dir": cfg.base_dir,
                   "args": {k: str(v) for k, v in kwargs.items() if k != "pipe"}}
        if command == "select":
            from curate.probes import select

            return recorded(ws, "probe-select", section, lambda: select.run(ws, cfg))
        if command == "generate":
            from curate.probes import generate

            return recorded(ws, "probe-generate", section, lambda: generate.generate(ws, cfg, **kwargs))
        if command == "import":
            from curate.probes import generate

            return recorded(ws, "probe-import", section, lambda: generate.import_generations(ws, cfg, **kwargs))
        if command == "score":
            from curate.probes import score

            return recorded(ws, "probe-score", section, lambda: score.run(ws, cfg, **kwargs))
        raise ValueError(f"unknown probe command {command!r}")
    finally:
        ws.close()
