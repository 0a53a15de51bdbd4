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
Each command (:func:`curate.api.probe`) records a ``runs`` row (stage ``probe-select``, ``probe-generate``,
``probe-import``, ``probe-score``) with its config and counters.
"""
from __future__ import annotations

import hashlib
from typing import Any

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
