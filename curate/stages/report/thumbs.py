"""Report thumbnails: base64 JPEGs made by the shared image loader, with regions drawn on them.

A thumbnail is decoded by :func:`curate.media.images.open_image` (the rules every stage decodes
by: size checked before decoding, EXIF orientation, every mode normalised), reduced to at most
``px`` × ``px`` pixels and saved as JPEG quality 80; the page shows it as a ``data:`` URI (the
report's Content-Security-Policy allows no other image source). The same image reference gives
the same bytes.
"""
from __future__ import annotations

import base64
import io
from typing import Iterable, Sequence

from curate.media.images import open_image, read_ref

#: colour of a drawn region (containment: where the copy lies)
REGION_RGB = (230, 30, 30)


def thumbnail(image_ref: str | None, px: int, max_pixels: int,
              regions: Iterable[Sequence[Sequence[float]]] = ()) -> tuple[str | None, str]:
    """(base64 JPEG or None, image status) of an image reference.

    Args:
        image_ref: a catalog image reference (a path, ``tar:…#member``) or a plain file path;
            None or empty → ``(None, 'no image')``.
        px: the thumbnail's longer side at most, pixels.
        max_pixels: images larger than this (width × height, from the header) are not decoded
            (status ``too_large``).
        regions: polygons to outline, each a list of (x, y) points in the full-size decoded
            (oriented) image's pixels — e.g. a containment region's ``polygon``, or a bbox as
            its four corners; drawn as a red outline, scaled to the thumbnail, clipped to it.

    Returns:
        the thumbnail and ``'ok'``, or None and the loader's status (``missing``, ``truncated``, …).
    """
    from PIL import Image, ImageDraw

    if not image_ref:
        return None, "no image"
    d, im = open_image(read_ref(image_ref), max_pixels=max_pixels, draft=px)
    if im is None:
        return None, d.status
    full_w, full_h = d.width or im.width, d.height or im.height
    im.thumbnail((px, px), Image.BICUBIC)
    regions = [list(r) for r in regions]
    if regions:
        im = im.convert("RGB")
        sx, sy = im.width / full_w, im.height / full_h
        draw = ImageDraw.Draw(im)
        line = max(2, px // 64)
        for poly in regions:
            pts = [(min(max(x * sx, 0), im.width - 1), min(max(y * sy, 0), im.height - 1)) for x, y in poly]
            if len(pts) >= 2:
                draw.line(pts + [pts[0]], fill=REGION_RGB, width=line, joint="curve")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii"), "ok"


def bbox_polygon(bbox: Sequence[float]) -> list[tuple[float, float]]:
    """The four corners of ``bbox`` = (x0, y0, x1, y1), pixels, clockwise from top left."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
