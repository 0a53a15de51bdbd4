"""What every model is: :class:`ModelSpec` (a resolved registry name: kind, preprocessing,
preset, embedding key), :class:`ImageEmbedder` / :class:`TextEmbedder` (loaded models: float32
(n, d) raw features), device and precision resolution, and the batched forward wrapper."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from curate.errors import ConfigError
from curate.models.preprocess import Preprocess, normalise_tensor


@dataclass(frozen=True)
class ModelSpec:
    """A resolved registry name: what will be loaded and how its inputs are prepared.

    Cheap to build (no weights are loaded); :attr:`key` names the embedding space in the
    workspace (``embeddings.model`` and the folder under ``embeddings/``), so a change of
    model *or* preprocessing gives a new key and never mixes vectors.
    """

    name: str
    kind: str  # a family of curate.models.image.IMAGE_MODELS: 'efficientnet_lite0' | 'open_clip' | 'sscd' | …
    preprocess: Preprocess
    preset: str = "model"
    source: str = ""  # where the weights come from when the name alone does not say (a package version)

    def identity(self) -> dict:
        ident = {"model": self.name, "preset": self.preset, "preprocess": self.preprocess.identity()}
        if self.source:  # only when set, so the keys of the other models stay as they were
            ident["source"] = self.source
        return ident

    @property
    def key(self) -> str:
        return f"{self.name}@{digest_of(self.identity())[:12]}"


def digest_of(obj) -> str:
    """sha256 hex of canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ImageEmbedder:
    """A loaded image model.

    ``forward(x)``: x is uint8 (n, 3, H, W) (normalised on the model's device) or an already
    normalised float tensor; returns float32 numpy (n, dim) — raw features, not normalised.
    ``text`` is the same model's text tower when it has one (open_clip), else None.
    """

    name: str
    dim: int
    preprocess: Preprocess
    forward: Callable
    device: str
    description: str
    precision: str = "fp32"
    spec: ModelSpec | None = None
    text: "TextEmbedder | None" = None


@dataclass
class TextEmbedder:
    """A loaded caption model: ``encode(list of str)`` → float32 numpy (n, dim), not normalised."""

    name: str
    dim: int
    encode: Callable
    device: str
    description: str
    identity: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"text:{self.name}@{digest_of(self.identity)[:12]}"


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when torch sees a GPU, else 'cpu'. Raises ConfigError for 'cuda' without one."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device (use --device auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, not {device!r}")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """'auto' → 'bf16' on a GPU that supports it, else 'fp16' on GPU, 'fp32' on CPU."""
    if precision == "auto":
        if device != "cuda":
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"precision must be auto, fp32, fp16 or bf16, not {precision!r}")
    return precision


def amp_dtype(precision: str):
    import torch

    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def wrap_forward(model, device: str, pre: Preprocess, precision: str, feature_fn=None, channels_last: bool = False) -> Callable:
    """forward(x) for a torch module: move to device, normalise uint8 input there, autocast."""
    import torch

    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = feature_fn or model
    amp = amp_dtype(precision)

    @torch.inference_mode()
    def forward(x):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = normalise_tensor(x.float().div_(255.0), pre.mean, pre.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if amp is not None:
            with torch.autocast(device_type=device, dtype=amp):
                y = fn(x)
        else:
            y = fn(x)
        return y.float().cpu().numpy()

    return forward


# -- registry --------------------------------------------------------------------------------
