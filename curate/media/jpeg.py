"""How strongly a JPEG was compressed, read from its quantisation tables (no decoding).

A JPEG encoder divides each 8×8 block's DCT coefficients by a quantisation table; libjpeg
(the Independent JPEG Group's encoder, behind Pillow, OpenCV, ImageMagick, browsers and most
cameras' software) derives its tables from the standard's example tables (ITU-T T.81 /
ISO/IEC 10918-1, Annex K, Table K.1 for luminance) scaled by the quality setting ``q`` (1–100):

    S = 5000 / q          for q < 50
    S = 200 − 2 q         for q ≥ 50
    table[i] = clamp(floor((K1[i] · S + 50) / 100), 1, 255)

:func:`jpeg_quality` inverts this on the luminance table's sum (as ImageMagick's ``identify``
estimates ``Quality``): the ratio (over entries not clamped at 255) of the file's table to Table K.1 gives ``S``, hence ``q``.
Tables that are not scaled K.1 tables (some cameras, Photoshop) still give a monotone figure:
coarser quantisation reads as a lower quality. The keeper rule (``compression``) prefers the less
compressed copy of a picture (issue #16).
"""
from __future__ import annotations

import io

#: ITU-T T.81 Annex K, Table K.1: the luminance quantisation table libjpeg scales by quality
#: (its sum is order-independent, so natural or zig-zag order gives the same estimate)
K1_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)


def quality_from_table(table) -> int:
    """Estimated libjpeg quality (1–100, int) of a 64-entry luminance quantisation table.

    Raises:
        ValueError: ``table`` does not have 64 entries ≥ 1.
    """
    values = list(table)
    if len(values) != 64 or min(values) < 1:
        raise ValueError(f"a JPEG quantisation table has 64 entries ≥ 1, got {len(values)}")
    # entries clamped at 255 (very low qualities) say only "at least": the others give S
    kept = [(v, k) for v, k in zip(values, K1_LUMINANCE) if v < 255] or list(zip(values, K1_LUMINANCE))
    scale = 100.0 * sum(v for v, _ in kept) / sum(k for _, k in kept)  # S in percent of Table K.1
    q = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(100, max(1, round(q))))


def jpeg_quality(data: bytes | None) -> int | None:
    """Estimated libjpeg quality (1–100) of encoded image bytes, or None when they are not a
    JPEG or carry no readable luminance table. Reads the header only (Pillow), ≈ 0.1 ms; never
    raises for bad bytes."""
    if not data or data[:3] != b"\xff\xd8\xff":
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            tables = getattr(im, "quantization", None) or {}
            table = tables.get(0)
            return None if table is None else quality_from_table(table)
    except Exception:  # noqa: BLE001 - a broken header is the decoder's business (images.status)
        return None
