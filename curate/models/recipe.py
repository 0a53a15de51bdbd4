"""The embedding-key recipe: which model, preprocessing and key a run config stands for.

The embed stage writes vectors under :func:`image_key`; dedup, flag (claims, retrieval) and the
probes read them under the same key and load the same model with :func:`load_model`. Keeping
the recipe here, below the stages, means no stage reaches into another for it.
"""
from __future__ import annotations

from curate.config import RunConfig
from curate.models import ModelSpec, load_image_model, resolve_image_model, text_key


def image_spec(cfg: RunConfig) -> ModelSpec:
    """The resolved :class:`~curate.models.ModelSpec` of ``cfg.embed`` (name, preset, border
    trimming, JPEG draft): its ``key`` names the stored vectors; loads no weights."""
    ec = cfg.embed
    return resolve_image_model(ec.model, preset=ec.preprocess, trim_border=ec.trim_border, jpeg_draft=ec.jpeg_draft)


def load_model(cfg: RunConfig):
    """The configured image model (:func:`curate.models.load_image_model` with ``cfg.embed``'s
    name, device, preset, border trimming, JPEG draft and precision): what the stored vectors
    of :func:`image_key` were made with. Raises ConfigError as load_image_model does."""
    ec = cfg.embed
    return load_image_model(ec.model, ec.device, preset=ec.preprocess, trim_border=ec.trim_border,
                            jpeg_draft=ec.jpeg_draft, precision=ec.precision)


def image_key(cfg: RunConfig) -> str:
    """The embedding key the current config writes and dedup reads (``precomputed:<name>``
    as is: those vectors were made elsewhere, see :mod:`curate.stages.embed.precomputed`)."""
    if cfg.embed.model.startswith("precomputed:"):
        return cfg.embed.model
    return image_spec(cfg).key


def caption_key(cfg: RunConfig) -> str | None:
    return text_key(cfg.embed.caption_model) if cfg.embed.caption_model else None
