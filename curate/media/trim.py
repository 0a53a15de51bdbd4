"""Flat padding around a picture: :func:`some_edge_flat` (cheap test), :func:`trim_box` /
:func:`trim_uniform_border` (the crop of an array) and :func:`picture_box` (both, on a Pillow
image). One trim for every consumer, so the descriptor
(:mod:`curate.models.preprocess`) and the pHash (:mod:`curate.stages.hash.compute`) see the
same picture: a thumbnail pasted on a plain background, a letterboxed or
img2dataset-``border``-padded copy matches its original."""
from __future__ import annotations

import numpy as np


def trim_uniform_border(rgb: np.ndarray, tol: int = 10, max_fraction: float = 0.45) -> np.ndarray:
    """The picture inside flat padding: ``rgb`` cropped to :func:`trim_box` (a view)."""
    y0, y1, x0, x1 = trim_box(rgb, tol, max_fraction)
    return rgb[y0:y1, x0:x1]


def trim_box(rgb: np.ndarray, tol: int = 10, max_fraction: float = 0.45) -> tuple[int, int, int, int]:
    """Crop rows/columns at the edges that are one flat colour (padding, letterboxing).

    Padding is a common copy transform (img2dataset ``resize_mode=border`` pads to a square);
    trimming it before embedding lets a padded copy match its original.

    Args:
        rgb: uint8 (h, w, 3).
        tol: max absolute difference (0–255) from the corner colour that still counts as border.
        max_fraction: never trim more than this fraction of either side in total per edge.

    Returns:
        (y0, y1, x0, x1): rows y0:y1 and columns x0:x1 of ``rgb`` hold the picture (the whole
        frame when nothing is trimmed); y1 > y0, x1 > x0.
    """
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return 0, h, 0, w
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
        return 0, h, 0, w
    return top, h - bottom, left, w - right


def some_edge_flat(im, tol: int = 10) -> bool:
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


def picture_box(im, tol: int = 10, max_fraction: float = 0.45) -> tuple[int, int, int, int] | None:
    """The picture inside flat padding of a decoded Pillow image ('RGB' or 'L'):
    :func:`some_edge_flat` first (4 lines read), then :func:`trim_box` on its RGB pixels.

    Args:
        tol, max_fraction: as :func:`trim_box` (0–255 levels; fraction of a side per edge).

    Returns:
        (x0, y0, x1, y1) in the image's pixels, for ``im.crop``; None when nothing is trimmed.
    """
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    if not some_edge_flat(rgb, tol):
        return None
    a = np.asarray(rgb)
    h, w = a.shape[:2]
    y0, y1, x0, x1 = trim_box(a, tol, max_fraction)
    if (y0, y1, x0, x1) == (0, h, 0, w):
        return None
    return x0, y0, x1, y1
