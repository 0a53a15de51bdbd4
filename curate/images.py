"""The one image loader every stage uses: bytes in, RGB pixels or a status with a reason out.

Image references (``samples.image_ref``):

- a plain path (absolute) to an image file;
- ``tar:<offset>:<size>:<shard path>#<member>`` for a member of a tar shard
  (``offset`` is the byte offset of the member's data, so reads need no tar scan);
- ``parquet:…``, ``arrow:…``, ``missing:…`` for image bytes inside a table (see
  :mod:`curate.refs`).

Decoding rules (cases K07–K11 in shared/cases/CASES.md):

- the header is read first; width×height above ``max_pixels`` is ``too_large`` and is never
  decoded (Pillow's global ``MAX_IMAGE_PIXELS`` is never changed);
- the decode is forced inside a guard (``Image.open`` is lazy); a short read is ``truncated``
  (``LOAD_TRUNCATED_IMAGES`` is never set);
- EXIF orientation is applied (raw and oriented sizes recorded); a broken EXIF block is
  noted as ``exif_error`` and the unrotated pixels are kept;
- every mode becomes 8-bit RGB: 16-bit and 32-bit integer images are rescaled by their bit
  depth (never clipped), modes with alpha or a transparent palette are composited on a
  fixed white background, CMYK/YCbCr/LAB are converted; animated files use frame 0.

Status values: ``ok``, ``missing``, ``zero_size``, ``not_an_image``, ``truncated``,
``too_large``, ``decode_error``, ``unsupported_mode``.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BACKGROUND = (255, 255, 255)  # fixed compositing background for transparent pixels


@dataclass
class Decoded:
    """Result of :func:`decode`.

    Attributes:
        status: 'ok' or a failure reason (see module doc).
        rgb: uint8 array (height, width, 3) after orientation, or None unless status is 'ok'.
        width, height: oriented size in pixels (None when the header was unreadable).
        raw_width, raw_height: stored size before EXIF orientation.
        mode: Pillow mode of the stored image (e.g. 'CMYK', 'I;16', 'P').
        notes: non-fatal observations ('exif_error', 'bit_depth=16', 'frames=12', ...).
    """

    status: str
    detail: str | None = None
    rgb: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    raw_width: int | None = None
    raw_height: int | None = None
    mode: str | None = None
    format: str | None = None
    orientation: int | None = None
    notes: list[str] = field(default_factory=list)


def read_ref(image_ref: str) -> bytes | None:
    """Bytes behind an image reference, or None if the file (or shard) is missing.

    Raises:
        ValueError: malformed reference.
    """
    if image_ref.startswith(("parquet:", "arrow:", "missing:")):
        from curate.refs import read_table_ref  # image bytes inside a table (see curate.refs)

        return read_table_ref(image_ref)
    if image_ref.startswith("tar:"):
        _, off, size, rest = image_ref.split(":", 3)
        shard = rest.rsplit("#", 1)[0]
        try:
            with open(shard, "rb") as f:
                f.seek(int(off))
                data = f.read(int(size))
        except FileNotFoundError:
            return None
        return data
    try:
        return Path(image_ref).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def tar_ref(shard: str | Path, member: str, offset: int, size: int) -> str:
    """Build the reference of a tar member (see module doc)."""
    return f"tar:{offset}:{size}:{Path(shard).resolve()}#{member}"


def _to_rgb(im, notes: list[str]):
    """Normalise any Pillow image to 8-bit RGB (see module doc)."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode.startswith("I;16"):
            depth = 16
        elif mode == "I":
            # 16-bit PNGs decode as 'I' with values < 65536
            depth = 16 if arr.size == 0 or arr.max() < 65536 else 32
        else:
            depth = 0
        if depth:
            notes.append(f"bit_depth={depth}")
            scaled = arr.astype(np.float64) / (2**depth - 1) * 255.0
        else:  # float images: assume [0, 1] when they fit, else min-max
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scaled = arr * 255.0 if lo >= 0 and hi <= 1 else (arr - lo) / max(hi - lo, 1e-12) * 255.0
            notes.append("float_image")
        g = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g, g, g], axis=-1), "RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB", "1") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        notes.append("alpha_composited")
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "RGB":
        return im
    if mode == "LAB":
        from PIL import ImageCms

        lab = ImageCms.createProfile("LAB")
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, lab, srgb, outputMode="RGB")
    return im.convert("RGB")


def decode(data: bytes | None, *, max_pixels: int = 89_478_485, draft: int | None = None) -> Decoded:
    """Decode image bytes into RGB pixels, never raising for bad input.

    Args:
        data: the file's bytes; None means the file is missing.
        max_pixels: width×height (from the header) above which decoding is refused.
        draft: if set, JPEGs may be decoded at reduced scale (Pillow draft mode) with the
            short side still ≥ ``draft`` px; the recorded sizes stay the full ones.

    Returns:
        A :class:`Decoded`; ``rgb`` is set only when ``status == 'ok'``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if data is None:
        return Decoded("missing", "image file not found")
    if len(data) == 0:
        return Decoded("zero_size", "file has 0 bytes")
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF warnings: we decide ourselves
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            return Decoded("not_an_image", "no image decoder recognised the bytes")
        except Image.DecompressionBombError as e:
            return Decoded("too_large", str(e))
        except Exception as e:  # noqa: BLE001 - header parsing of hostile files raises anything
            return Decoded("not_an_image", f"{type(e).__name__}: {e}")
        w, h = im.size
        res = Decoded("ok", raw_width=w, raw_height=h, width=w, height=h, mode=im.mode, format=im.format, notes=notes)
        if w <= 0 or h <= 0:
            res.status, res.detail = "zero_size", f"header size {w}x{h}"
            return res
        if w * h > max_pixels:
            res.status, res.detail = "too_large", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}"
            return res
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            notes.append(f"frames={n_frames}; using frame 0")
        try:
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            im.load()
        except Image.DecompressionBombError as e:
            res.status, res.detail = "too_large", str(e)
            return res
        except (OSError, SyntaxError, ValueError) as e:
            msg = str(e)
            trunc = "truncat" in msg.lower() or "broken data stream" in msg.lower() or "image file is" in msg.lower()
            res.status, res.detail = ("truncated" if trunc else "decode_error"), f"{type(e).__name__}: {msg}"
            return res
        except Exception as e:  # noqa: BLE001
            res.status, res.detail = "decode_error", f"{type(e).__name__}: {e}"
            return res
        try:
            orientation = im.getexif().get(0x0112)
            res.orientation = int(orientation) if orientation else None
            oriented = ImageOps.exif_transpose(im)
            if oriented is not None:
                im = oriented
        except Exception as e:  # noqa: BLE001 - broken EXIF must not kill the sample
            notes.append(f"exif_error: {type(e).__name__}: {e}")
        try:
            rgb = _to_rgb(im, notes)
        except Exception as e:  # noqa: BLE001
            res.status, res.detail = "unsupported_mode", f"mode {im.mode}: {type(e).__name__}: {e}"
            return res
        if draft:
            # sizes reported are the full-resolution oriented sizes
            if res.orientation in (5, 6, 7, 8):
                res.width, res.height = h, w
        else:
            res.width, res.height = rgb.size
        res.rgb = np.asarray(rgb, dtype=np.uint8)
        return res
