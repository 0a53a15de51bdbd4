"""What a model sees: decode-side preprocessing (:class:`Preprocess`: resize, crop, border
trimming, JPEG draft, mean/std), the presets (ImageNet, SSCD's ``sscd_288`` / ``sscd_320``,
DCR's ``dcr_224`` and ``dcr_laion_224``) and the uniform-border trim. :meth:`Preprocess.identity` is part of every
embedding key, so changing the pixels a model sees never mixes old and new vectors."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from curate.errors import ConfigError
from curate.media.trim import picture_box, trim_uniform_border  # noqa: F401  (trim_uniform_border: re-exported by curate.models)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
    # Somepalli et al. 2023, DCR's LAION / Stable Diffusion search (embedding_search/utils.py,
    # get_transform): torchvision Resize(256) (bilinear), CenterCrop(224), ImageNet mean/std — the
    # transform their 0.5 replication threshold was calibrated on (the probe's default)
    "dcr_laion_224": dict(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize_mode="torchvision",
                          interpolation="bilinear"),
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


@dataclass(frozen=True)
class Preprocess:
    """Decoded image → model input. Picklable (it runs in DataLoader worker processes).

    Steps: (JPEG draft decode at ≥ ``resize`` px when ``jpeg_draft``) → trim flat borders
    (``trim_border``, see :func:`trim_uniform_border`) → resize (``resize_mode`` 'shortest':
    short side to ``resize`` px, aspect kept; 'squash': to ``resize``×``resize``; 'torchvision':
    as torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` on a PIL image — long side
    truncated, one plain resize, crop offsets rounded) with
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
        box = picture_box(im) if self.trim_border else None
        if box is not None:
            im = im.crop(box)
        w, h = im.size
        filt = getattr(Image.Resampling, self.interpolation.upper())
        if self.resize_mode == "squash":
            nw = nh = self.resize
        elif self.resize_mode == "shortest":
            s = self.resize / min(w, h)
            lo = self.crop or 1
            nw, nh = max(lo, round(w * s)), max(lo, round(h * s))
        elif self.resize_mode == "torchvision":  # torchvision Resize(int) on a PIL image: long side truncated
            short, long = min(w, h), max(w, h)
            ns, nl = self.resize, max(self.crop or 1, int(self.resize * long / short))
            nw, nh = (ns, nl) if w <= h else (nl, ns)
        else:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}")
        if (nw, nh) != (w, h):
            # reducing_gap: a large downscale first averages integer blocks (Image.reduce), then
            # resamples the last ≤ 2× (what Pillow's thumbnail does); JPEGs arrive drafted.
            # torchvision mode: one plain Pillow resize, as torchvision calls it
            im = im.resize((nw, nh), filt, reducing_gap=None if self.resize_mode == "torchvision" else 2.0)
        if self.crop and self.resize_mode == "torchvision":  # torchvision CenterCrop: offsets rounded
            left, top = int(round((nw - self.crop) / 2.0)), int(round((nh - self.crop) / 2.0))
            im = im.crop((left, top, left + self.crop, top + self.crop))
        elif self.crop:
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
