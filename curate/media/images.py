"""The one image loader every stage uses: bytes in, RGB pixels or a status with a reason out.

Image references (``samples.image_ref``):

- a plain path (absolute) to an image file;
- ``tar:<offset>:<size>:<shard path>#<member>`` for a member of a tar shard
  (``offset`` is the byte offset of the member's data, so reads need no tar scan);
- ``parquet:…``, ``arrow:…``, ``missing:…`` for image bytes inside a table (see
  :mod:`curate.media.refs`).

Decoding rules (cases K07–K11 in shared/cases/CASES.md; outcome per real tricky file in
docs/IMAGES.md):

- **size first**: the header's width×height (pixels) above ``max_pixels`` is ``too_large``
  and no pixel is decoded; Pillow's DecompressionBombError and zlib-bomb text chunks are
  ``too_large`` too. Pillow's ``MAX_IMAGE_PIXELS`` is never disabled; when ``max_pixels`` is
  above it, it is raised to ``max_pixels`` for that one decode (so Pillow's bomb check does
  not refuse what the caller allowed) and restored.
- **forced decode in a guard** (``Image.open`` is lazy): a short read is ``truncated``
  (also a RIFF/WebP container declaring more bytes than the file has); any other decoder
  error is ``decode_error``. ``LOAD_TRUNCATED_IMAGES`` is never set. Nothing raises.
- **EXIF orientation** (tag 0x0112, or the XMP ``tiff:Orientation`` Pillow merges into it)
  is applied; raw (stored) and oriented sizes are both recorded. An unreadable EXIF block or
  a Pillow EXIF warning is noted ``exif_error: …`` and the pixels are kept (unrotated when
  the orientation itself could not be read).
- **every mode becomes 8-bit RGB** (or 'L' for gray-by-construction pixels, see
  :func:`open_image`): 16-bit gray is rescaled v·255/65535 (rounded), never clipped, noted
  ``bit_depth=16``; 32-bit int and float images are min-max scaled; modes with alpha and
  images with a tRNS/transparent palette are composited on the fixed :data:`BACKGROUND`
  (white), so colours stored under fully transparent pixels never leak (noted
  ``alpha_composited`` when some pixel is not opaque); CMYK goes through its embedded ICC
  profile to sRGB when it has one (else Pillow's conversion), LAB through LittleCMS, YCbCr,
  P, 1, … through Pillow. The stored mode is recorded.
- **animated / multi-image files use frame 0**: GIF's first frame, APNG's default image,
  MPO's primary image, a TIFF's first page, WebP's first frame; noted ``frames=N``.
- JPEG draft mode (``draft=``) decodes at 1/2, 1/4 or 1/8 scale when the consumer needs
  fewer pixels (embedding); recorded sizes stay the full ones.

Status values: ``ok``, ``missing`` (no file; also a local file that is not read because its
path now passes through a symbolic link, :func:`link_refusal`; a table cell's ``path`` outside the
table's folder or not a regular file, :func:`curate.media.refs.cell_path_refusal`), ``zero_size`` (0 bytes, or a
header size of 0), ``not_an_image`` (no decoder recognises the bytes), ``unsupported_format``
(an image format curate has no decoder for, told by its magic bytes: SVG text, HEIC/HEIF and
AVIF ``ftyp`` brands; detail ``unsupported_format(svg): …``), ``truncated``, ``too_large``,
``decode_error`` (a recognised image that fails to decode), ``unsupported_mode``; the hash stage
also records ``unreadable`` (:func:`read_ref` raised OSError: the OS refused the file). Other
observations are ``notes`` on an ``ok`` image.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curate.media.refs import parse_ref, read_table_ref, table_missing_reason
from curate.store.fsio import is_uri, read_bytes, read_range

BACKGROUND = (255, 255, 255)  # fixed compositing background for transparent pixels


@dataclass
class Decoded:
    """Result of :func:`decode`.

    Attributes:
        status: 'ok' or a failure reason (see module doc).
        detail: why, for a failure (the decoder's message, the declared size, …).
        rgb: uint8 array (height, width, 3), values 0–255, after orientation; set by
            :func:`decode` only, and only when status is 'ok'.
        width, height: oriented size in pixels, full resolution even after a draft decode
            (None when the header was unreadable).
        raw_width, raw_height: stored size (pixels) before EXIF orientation.
        mode: Pillow mode of the stored image (e.g. 'CMYK', 'I;16', 'P').
        format: Pillow's format name ('JPEG', 'PNG', …), or the sniffed signature.
        orientation: the EXIF orientation tag (1–8) when present.
        notes: non-fatal observations ('exif_error: …', 'bit_depth=16', 'frames=12; using
            frame 0', 'alpha_composited', 'icc_cmyk_to_srgb', 'warning: …').
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

    A file or a ``tar:`` shard may be a URI (``s3://…``, ``gs://…``; :mod:`curate.store.fsio`), so
    workers on any node of a cluster read the same bytes.

    Raises:
        ValueError: malformed reference.
        OSError: the file is there but cannot be read (PermissionError, an I/O error); the hash
            stage records it as status ``unreadable``.
    """
    ref = parse_ref(image_ref)
    if ref.kind in ("parquet", "arrow", "missing"):
        return read_table_ref(image_ref)
    if ref.kind == "tar":
        shard, off, size = ref.file, ref.row, ref.size
        if is_uri(shard):  # a shard on object storage (s3://, gs://, …): a ranged read
            return read_range(shard, off, size)
        try:
            with _open_local(shard) as f:
                f.seek(off)
                data = f.read(size)
        except (FileNotFoundError, _Refused):
            return None
        return data
    if ref.kind == "uri":  # s3://, gs://, … through pyarrow / fsspec (curate.store.fsio)
        return read_bytes(image_ref)
    try:
        with _open_local(image_ref) as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, _Refused):
        return None


class _Refused(OSError):
    """A local path :func:`link_refusal` refuses."""


def link_refusal(path: str | Path) -> str | None:
    """Why the local file ``path`` must not be read, or None.

    Ingest stores every local image reference (file, tar shard) resolved — no symbolic link
    and no ``..`` left in it, links leaving their source folder refused by
    ``ingest.follow_symlinks``. A path that resolves elsewhere now (the file or a folder on
    its way swapped for a link after ingest) is not read."""
    p = os.path.abspath(path)
    real = os.path.realpath(p)
    if real != os.path.normpath(p):
        return f"symlink: {path} now resolves to {real}; not read (ingest stored it resolved)"
    return None


def _open_local(path: str):
    """A local file opened for binary reading, refused when :func:`link_refusal` says so (and,
    against a swap between the check and the open, never through a link as its last part).

    Raises:
        FileNotFoundError, IsADirectoryError, NotADirectoryError: as ``open``.
        _Refused: see :func:`link_refusal`.
    """
    why = link_refusal(path)
    if why is not None:
        if not os.path.lexists(path):
            raise FileNotFoundError(path)
        raise _Refused(why)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if os.path.islink(path):
            raise _Refused(f"symlink: {path}; not read") from None
        if os.path.isdir(path):
            raise IsADirectoryError(path) from None
        raise FileNotFoundError(path) if not os.path.exists(path) else e
    return os.fdopen(fd, "rb")


def missing_reason(image_ref: str) -> str:
    """Why :func:`read_ref` gave no bytes for ``image_ref``: the reason a ``missing:`` reference
    carries (e.g. ``img2dataset failed_to_download: HTTP Error 404``), a refused link
    (:func:`link_refusal`), or ``image file not found``."""
    ref = parse_ref(image_ref)
    if ref.kind == "missing":
        return ref.part or "image file not found"
    if ref.kind in ("parquet", "arrow"):
        return table_missing_reason(image_ref) or "image file not found"
    path = ref.file if ref.kind in ("tar", "path") else None
    if path is not None and not is_uri(path) and os.path.lexists(path):
        why = link_refusal(path)
        if why is None and os.path.islink(path):
            why = f"symlink: {path}; not read"
        if why is not None:
            return why
    return "image file not found"


def tar_ref(shard: str | Path, member: str, offset: int, size: int) -> str:
    """Build the reference of a tar member (see module doc)."""
    return f"tar:{offset}:{size}:{Path(shard).resolve()}#{member}"


_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}  # EXIF 2.32 §4.6.4 Orientation → Pillow transpose
_GRAY_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


#: ISO-BMFF ``ftyp`` brands of HEIC/HEIF (HEVC-coded) and AVIF (AV1-coded) images
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
#: formats told by their magic bytes that curate has no decoder for → ``unsupported_format``
UNSUPPORTED_FORMATS = {
    "SVG": "SVG is a vector drawing, not a raster image; curate decodes raster images only",
    "HEIC": "HEIC/HEIF needs a decoder Pillow does not ship (e.g. pillow-heif)",
    "AVIF": "AVIF could not be decoded by this Pillow (its AVIF plugin is missing or refused the file)",
}


def _sniff(data: bytes) -> str | None:
    """Format named by the file's magic bytes (None when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and len(data) >= 12:
        size = int.from_bytes(data[:4], "big")
        brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(max(size, 16), 256, len(data)) - 3, 4)}
        if data[8:12] in _AVIF_BRANDS or (brands & _AVIF_BRANDS and not brands & (_HEIF_BRANDS - {b"mif1", b"msf1"})):
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIC"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in head):
        return "SVG"
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def _declared_size(data: bytes, fmt: str | None) -> tuple[int, int] | None:
    """(width, height) a GIF/PNG/BMP header declares, read from its fixed offsets, or None."""
    try:
        if fmt == "GIF" and len(data) >= 10:
            return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
        if fmt == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if fmt == "BMP" and len(data) >= 26:
            return (int.from_bytes(data[18:22], "little", signed=True),
                    abs(int.from_bytes(data[22:26], "little", signed=True)))
    except Exception:  # noqa: BLE001
        return None
    return None


def _declared_short(data: bytes) -> str | None:
    """A reason when the container declares more bytes than there are (RIFF/WebP), else None."""
    if data[:4] == b"RIFF" and len(data) >= 8:
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared > len(data):
            return f"RIFF container declares {declared} bytes, file has {len(data)}"
    return None


def _gray_high_depth(im, notes: list[str]):
    """'I;16*' / 'I' / 'F' → 8-bit 'L', rescaled (never clipped); tRNS pixels → background.

    16-bit: v8 = round(v16 · 255 / 65535) (so 40000 → 156, 50000 → 195; Pillow's own
    ``convert('L')`` clips both to 255). 'I' (32-bit signed) holding values in 0..65535 is
    16-bit data (16-bit PNG/PGM decode to it); other 'I' and 'F' images are min-max scaled.
    """
    from PIL import Image

    arr = np.asarray(im)
    mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and (arr.size == 0 or (arr.min() >= 0 and arr.max() < 65536))):
        notes.append("bit_depth=16")
        g = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif mode == "F" and arr.size and np.nanmin(arr) >= 0 and np.nanmax(arr) <= 1:
        notes.append("float_image")
        g = np.rint(np.nan_to_num(arr) * 255.0).astype(np.uint8)
    else:
        a = np.nan_to_num(arr.astype(np.float64))
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        notes.append("bit_depth=32; min-max scaled" if mode == "I" else "float_image; min-max scaled")
        g = np.rint((a - lo) / max(hi - lo, 1e-12) * 255.0).astype(np.uint8)
    trns = im.info.get("transparency")
    if isinstance(trns, int):
        mask = arr == trns
        if mask.any():
            g = g.copy()
            g[mask] = BACKGROUND[0]
            notes.append("alpha_composited")
    return Image.fromarray(np.ascontiguousarray(g), "L")


def _composite(im, notes: list[str], gray: bool):
    """Alpha / transparent-palette image → opaque 'RGB' (or 'L' if ``gray``) on BACKGROUND.

    Fully transparent pixels become exactly BACKGROUND whatever colour they store, so hidden
    colours never reach a hash or an embedding.
    """
    from PIL import Image

    rgba = im.convert("RGBA")
    alpha_lo = rgba.getextrema()[3][0]
    if alpha_lo == 255:  # declared transparency but every pixel opaque
        out = rgba.convert("RGB")
    else:
        notes.append("alpha_composited")
        out = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return out.convert("L") if gray and BACKGROUND[0] == BACKGROUND[1] == BACKGROUND[2] else out


def _to_rgb(im, notes: list[str]):
    """Normalise any Pillow image to 8-bit 'RGB', or to 'L' when every pixel is gray by
    construction (R = G = B; ``.convert('RGB')`` of it gives the RGB pixels exactly).

    Raises:
        whatever Pillow raises for a mode it cannot convert (the caller reports
        ``unsupported_mode``).
    """
    mode = im.mode
    if mode in _GRAY_HIGH_DEPTH:
        return _gray_high_depth(im, notes)
    has_trns = "transparency" in im.info
    if mode in ("RGBA", "RGBa", "PA", "LA", "La") or (mode in ("P", "L", "1", "RGB") and has_trns):
        return _composite(im, notes, gray=mode in ("LA", "La", "L", "1"))
    if mode in ("RGB", "L"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "CMYK":
        icc = im.info.get("icc_profile")
        if icc:
            try:
                from PIL import ImageCms

                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
                notes.append("icc_cmyk_to_srgb")
                return out
            except Exception as e:  # noqa: BLE001 - a broken profile falls back to the plain conversion
                notes.append(f"icc_error: {type(e).__name__}: {e}")
        return im.convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        return ImageCms.profileToProfile(im, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                         outputMode="RGB")
    return im.convert("RGB")  # YCbCr, HSV, RGBX, P without transparency, ...


def _warning_notes(caught) -> list[str]:
    """Pillow warnings → notes: EXIF problems as ``exif_error: …``, others as ``warning: …``."""
    out: list[str] = []
    for w in caught:
        if issubclass(w.category, (ResourceWarning, DeprecationWarning)) or w.category.__name__ == "DecompressionBombWarning":
            continue
        msg = str(w.message).strip()
        low = msg.lower()  # EXIF is a TIFF IFD: Pillow's IFD warnings talk about "tags"
        note = f"exif_error: {msg}" if "exif" in low or " tag" in low else f"warning: {msg}"
        if note not in out:
            out.append(note)
    return out


DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default MAX_IMAGE_PIXELS, as a per-call limit


def open_image(data: bytes | None, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None):
    """Decode image bytes to an oriented 8-bit Pillow image, never raising for bad input.

    The rules are the module's (header size checked before any pixel is decoded, forced
    decode inside a guard, EXIF orientation, every mode normalised, frame 0 of animations).

    Args:
        data: the file's bytes; None means the file is missing.
        max_pixels: width × height from the header (pixels) above which the image is
            ``too_large`` and never decoded. Pillow's own DecompressionBombError (above twice
            its ``MAX_IMAGE_PIXELS``) also gives ``too_large``.
        draft: JPEG only: decode at a reduced DCT scale (1/2, 1/4, 1/8; Pillow draft mode)
            keeping both sides ≥ ``draft`` px. Recorded sizes stay the full ones.

    Returns:
        (Decoded without ``rgb``, image or None). The image is None unless status is 'ok';
        its mode is 'RGB', or 'L' when every pixel is gray by construction (R = G = B).

    Pillow's warnings are captured per call with ``warnings.catch_warnings``, which is
    process-global: decode from one thread per process (stages use worker processes).
    """
    if data is None:
        return Decoded("missing", "image file not found"), None
    if len(data) == 0:
        return Decoded("zero_size", "file has 0 bytes"), None
    notes: list[str] = []
    from PIL import Image

    bomb_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # our own header check enforces max_pixels; Pillow's bomb check (2× its limit)
            # must not refuse what the caller allowed, so it is raised for this call only
            if bomb_limit is not None and max_pixels > bomb_limit:
                Image.MAX_IMAGE_PIXELS = max_pixels
            res, im = _open_checked(data, max_pixels, draft, notes)
        finally:
            Image.MAX_IMAGE_PIXELS = bomb_limit
    notes.extend(n for n in _warning_notes(caught) if n not in notes)
    res.notes = notes
    return res, im


def _unsupported(data: bytes, why: str | None = None) -> Decoded | None:
    """``unsupported_format`` for bytes of a format in :data:`UNSUPPORTED_FORMATS` (by magic bytes)."""
    fmt = _sniff(data)
    if fmt not in UNSUPPORTED_FORMATS:
        return None
    detail = f"unsupported_format({fmt.lower()}): {UNSUPPORTED_FORMATS[fmt]}" + (f" ({why})" if why else "")
    return Decoded("unsupported_format", detail, format=fmt)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, without Pillow (which refuses to open a bomb), or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _open_checked(data: bytes, max_pixels: int, draft: int | None, notes: list[str]):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # above twice Pillow's own limit, refused at open
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = _header_size(data)
        what = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else (f"{m.group(1)} pixels" if m else "the header")
        return Decoded("too_large", f"{what} > max_pixels {max_pixels} (Pillow: {e})", format=_sniff(data)), None
    except UnidentifiedImageError:
        unsupported = _unsupported(data)
        if unsupported is not None:
            return unsupported, None
        short = _declared_short(data)
        if short:
            return Decoded("truncated", short, format=_sniff(data)), None
        fmt = _sniff(data)
        size = _declared_size(data, fmt)
        if size is not None and min(size) == 0:  # Pillow refuses a zero side as "cannot identify"
            return Decoded("zero_size", f"{fmt} header declares {size[0]}x{size[1]} px", format=fmt), None
        why = f"{fmt} signature, but no decoder could read the header" if fmt else "no image decoder recognised the bytes"
        return Decoded("not_an_image", why, format=fmt), None
    except ValueError as e:
        if "too large" in str(e).lower():  # e.g. a zlib bomb in a PNG text chunk
            return Decoded("too_large", f"ValueError: {e}", format=_sniff(data)), None
        return Decoded("not_an_image", f"ValueError: {e}", format=_sniff(data)), None
    except Exception as e:  # noqa: BLE001 - header parsing of hostile files raises anything
        unsupported = _unsupported(data, f"{type(e).__name__}: {e}")
        if unsupported is not None:
            return unsupported, None
        short = _declared_short(data)
        if short:
            return Decoded("truncated", short, format=_sniff(data)), None
        if "truncated" in str(e).lower():  # e.g. a JPEG cut inside its header: "Truncated File Read"
            return Decoded("truncated", f"{type(e).__name__}: {e}", format=_sniff(data)), None
        fmt = _sniff(data)  # a known signature that Pillow refuses (e.g. an unsupported BMP compression)
        return Decoded("decode_error" if fmt else "not_an_image", f"{type(e).__name__}: {e}", format=fmt), None
    w, h = im.size
    res = Decoded("ok", raw_width=w, raw_height=h, width=w, height=h, mode=im.mode, format=im.format)
    if w <= 0 or h <= 0:
        res.status, res.detail = "zero_size", f"header size {w}x{h}"
        return res, None
    if w * h > max_pixels:
        res.status, res.detail = "too_large", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}"
        return res, None
    if im.format == "PNG" and len(data) >= 26 and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 6):
        # 16-bit RGB(A): Pillow has no 16-bit colour mode and keeps the high byte (v >> 8, a
        # rescale that differs from round(v·255/65535) by at most 1; nothing is clipped)
        notes.append("bit_depth=16; colour reduced to 8 bits by Pillow (high byte)")
    n_frames = getattr(im, "n_frames", 1) or 1
    if n_frames > 1:
        notes.append(f"frames={n_frames}; using frame 0")
    try:
        if draft and im.format in ("JPEG", "MPO"):
            im.draft("RGB", (draft, draft))
        im.load()
    except Image.DecompressionBombError as e:
        res.status, res.detail = "too_large", str(e)
        return res, None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e)
        low = msg.lower()
        trunc = "truncat" in low or "broken data stream" in low or isinstance(e, EOFError)
        res.status, res.detail = ("truncated" if trunc else "decode_error"), f"{type(e).__name__}: {msg}"
        return res, None
    except Exception as e:  # noqa: BLE001
        res.status, res.detail = "decode_error", f"{type(e).__name__}: {e}"
        return res, None
    orientation = None
    try:
        orientation = im.getexif().get(0x0112)
        if orientation is not None:
            orientation = int(orientation)
            res.orientation = orientation
            if orientation not in range(1, 9):
                notes.append(f"exif_error: orientation {orientation} is not 1-8; ignored")
    except Exception as e:  # noqa: BLE001 - broken EXIF must not kill the sample
        notes.append(f"exif_error: {type(e).__name__}: {e}")
        orientation = None
    try:
        out = _to_rgb(im, notes)
    except Exception as e:  # noqa: BLE001
        res.status, res.detail = "unsupported_mode", f"mode {im.mode}: {type(e).__name__}: {e}"
        return res, None
    if orientation in _TRANSPOSE:
        try:
            out = out.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
        except Exception as e:  # noqa: BLE001 - keep the unrotated pixels
            notes.append(f"exif_error: orientation {orientation} not applied: {type(e).__name__}: {e}")
            orientation = None
    if orientation in (5, 6, 7, 8):
        res.width, res.height = h, w
    return res, out


def decode(data: bytes | None, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Decoded:
    """Decode image bytes into RGB pixels, never raising for bad input.

    Args:
        data: the file's bytes; None means the file is missing.
        max_pixels: width×height (from the header) above which decoding is refused.
        draft: if set, JPEGs may be decoded at reduced scale (Pillow draft mode) with the
            short side still ≥ ``draft`` px; the recorded sizes stay the full ones.

    Returns:
        A :class:`Decoded`; ``rgb`` (uint8 (h, w, 3), values 0–255, oriented) is set only when
        ``status == 'ok'``. Same rules as :func:`open_image`.
    """
    res, im = open_image(data, max_pixels=max_pixels, draft=draft)
    if im is not None:
        res.rgb = np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)
    return res
