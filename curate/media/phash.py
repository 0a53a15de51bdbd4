"""Perceptual hash (pHash), bit for bit the one imagededup computes, for batches of images.

``imagededup.methods.PHash`` (idealo/imagededup 0.3.x, ``methods/hashing.py`` and
``utils/image_utils.py``; algorithm after N. Krawetz, "Looks Like It", hackerfactor.com 2011):

1. image → RGB (imagededup: ``convert('RGBA').convert('RGB')``; here: :mod:`curate.media.images`,
   which also applies EXIF orientation, composites transparency on white and rescales
   16-bit images — the only places where the hashes differ, on purpose);
2. resize to 32×32 with Pillow's LANCZOS filter, on the RGB image;
3. ``convert('L')``: ITU-R 601-2 luma, Pillow's integer formula;
4. 2-D DCT-II, unnormalised: ``scipy.fftpack.dct(dct(x, axis=0), axis=1)``;
5. keep the top-left 8×8 coefficients; bit = coefficient ≥ median of the 63 non-DC ones;
6. 64 bits in row-major order, first bit most significant (imagededup's 16-hex-digit string).

Steps 4–6 run vectorised over a batch (one DCT call for n images). Steps 2–3 read every
decoded pixel, as imagededup does, so the hashes stay identical; they run in
:mod:`curate.media.lanczos`, Pillow's integer arithmetic reproduced bit for bit in compiled code.

:func:`phash_with_mirror` also gives the pHash of each image's horizontal mirror (the dedup
stage's mirror-aware pHash edges, signal ``phash_mirror``).

Hashes are uint64; Hamming distance between two hashes is ``popcount(a ^ b)`` (bits, 0–64,
smaller is closer).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from curate.media import lanczos

SIZE = 32  # side of the resized grayscale image (px)
KEEP = 8  # side of the kept low-frequency DCT block


def gray32(im) -> np.ndarray:
    """imagededup's pHash input for a decoded image: uint8 (32, 32), values 0–255.

    Pillow's 32×32 LANCZOS resize of the image, then Pillow's luma
    ``(19595·R + 38470·G + 7471·B + 2¹⁵) >> 16`` — bit for bit what
    ``im.resize((32, 32), Image.LANCZOS).convert('L')`` gives, computed by
    :func:`curate.media.lanczos.resize_gray` (the same integer arithmetic, vectorised; it falls back
    to Pillow itself on a Pillow whose pass order it does not know).

    Args:
        im: a Pillow image of mode 'RGB', or 'L' when its pixels are gray by construction
            (as :func:`curate.media.images.open_image` returns). For 'L' the RGB round trip is
            skipped: resizing three equal channels and taking the luma gives exactly the
            resized gray channel (Pillow's luma weights 19595 + 38470 + 7471 = 2¹⁶).

    Raises:
        ValueError: any other mode.
    """
    return lanczos.resize_gray(im, (SIZE, SIZE))  # checks the mode


def phash_batch(gray: np.ndarray) -> np.ndarray:
    """pHashes of a batch of 32×32 grayscale images.

    Args:
        gray: uint8 (n, 32, 32) from :func:`gray32`.

    Returns:
        uint64 (n,): bit 63 is the first (top-left) coefficient's bit.

    Raises:
        ValueError: wrong shape.
    """
    from scipy.fftpack import dct  # the routine imagededup calls, so rounding is the same

    g = np.asarray(gray)
    if g.ndim != 3 or g.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected (n, {SIZE}, {SIZE}) gray images, got shape {g.shape}")
    if len(g) == 0:
        return np.zeros(0, np.uint64)
    coef = dct(dct(g.astype(np.float64), axis=1), axis=2)[:, :KEEP, :KEEP].reshape(len(g), KEEP * KEEP)
    med = np.median(coef[:, 1:], axis=1)
    bits = coef >= med[:, None]
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def phash_with_mirror(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pHashes of a batch of 32×32 grayscale images and of their horizontal mirror images.

    The mirror hash is the pHash of the gray array flipped left–right (``gray[:, :, ::-1]``),
    computed in the same DCT call. It equals the pHash of the mirrored picture
    (``PIL.ImageOps.mirror``, then :func:`gray32`) bit for bit, because Pillow's LANCZOS
    resampling and its luma conversion commute with a left–right flip (checked on every
    decodable image of ``../shared/data/images-captioned`` and on random images of random
    sizes, ``tests/test_phash.py``). Costs one more 32×32 DCT per image, nothing else.

    Args:
        gray: uint8 (n, 32, 32) from :func:`gray32`.

    Returns:
        (hash uint64 (n,), mirror hash uint64 (n,)), same bit layout as :func:`phash_batch`.

    Raises:
        ValueError: wrong shape.
    """
    g = np.asarray(gray)
    if g.ndim != 3 or g.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected (n, {SIZE}, {SIZE}) gray images, got shape {g.shape}")
    both = phash_batch(np.concatenate([g, g[:, :, ::-1]]))
    return both[: len(g)], both[len(g) :]


#: gray levels of mean gradient that score 100 (and 1 gray level scores 25)
INFORMATION_FULL = 4.0


def information(gray: np.ndarray) -> np.ndarray:
    """How much picture a pHash has to work with: 0 (flat) to 100, per 32×32 gray image.

    The mean absolute difference between neighbouring pixels of the pHash's own 32×32 gray
    input (vertical and horizontal pairs, in gray levels), times 25, capped at 100. In the
    spirit of PDQ's quality metric (Meta ThreatExchange, ``pdqhashing``: the gradient energy of
    its 64×64 luma buffer, 0–100, hashes below ~50 ignored): a flat or near-flat image has
    almost no DCT energy, so the signs its 64 bits are made of are rounding noise and unrelated
    flat images hash alike (every single-colour image has the same pHash).

    Measured (``tests/media/test_phash.py``): single colours score 0, also after JPEG q30; with ±6
    levels of pixel noise 7–11; a "photo no longer available" placeholder 8; a soft
    vertical gradient 16; a line chart on white 86. Of the 673 decodable images of the shared
    real data, 644 score 100; 21 score under 25 (blank or single-colour pictures, faint text on
    white, Flickr's "photo is no longer available", a near-flat orange square); 8 score 40–89
    (faint grey icons, a dark silhouette, motion blur).
    dedup gives pHash edges only to images scoring at least ``dedup.phash_min_quality``
    (default 25: one gray level of mean gradient).

    Args:
        gray: uint8 (n, 32, 32) from :func:`gray32`.

    Returns:
        int16 (n,) in [0, 100].

    Raises:
        ValueError: wrong shape.
    """
    g = np.asarray(gray)
    if g.ndim != 3 or g.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected (n, {SIZE}, {SIZE}) gray images, got shape {g.shape}")
    g = g.astype(np.int16)
    grad = (np.abs(np.diff(g, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(g, axis=2)).mean(axis=(1, 2))) / 2
    return np.minimum(100, np.round(grad * (100 / INFORMATION_FULL))).astype(np.int16)


def gray32_rgb(im) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`gray32` and the 32×32 colour pixels it was computed from (None for an 'L' image),
    in one call (:func:`curate.media.lanczos.resize_gray_rgb`): what :func:`colourfulness` and
    :func:`border_fraction` measure, at no extra decoding or resizing cost.

    Raises:
        ValueError: a mode other than 'RGB' or 'L'.
    """
    return lanczos.resize_gray_rgb(im, (SIZE, SIZE))


def colourfulness(rgb: np.ndarray | None) -> int:
    """Hasler & Süsstrunk's colourfulness (2003, "Measuring colourfulness in natural images",
    SPIE 5007): with rg = R − G and yb = (R + G)/2 − B over the pixels,
    ``sqrt(σ_rg² + σ_yb²) + 0.3 · sqrt(μ_rg² + μ_yb²)``, rounded; 0 for gray pixels (None, or
    three equal channels), about 15 for a "slightly colourful" and 60+ for a "highly colourful"
    picture in their scale. Measured on the 32×32 colour pixels of :func:`gray32_rgb`.

    Args:
        rgb: uint8 (h, w, 3), or None for a gray image.

    Returns:
        int ≥ 0.
    """
    if rgb is None:
        return 0
    a = np.asarray(rgb, np.float64)
    rg = a[..., 0] - a[..., 1]
    yb = (a[..., 0] + a[..., 1]) / 2 - a[..., 2]
    return int(round(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())))


#: a row or column of the 32×32 image is border when its pixels span at most this many levels
BORDER_TOLERANCE = 12


def border_fraction(pixels: np.ndarray) -> float:
    """Fraction of the picture (0–1) taken by uniform bands at its edges: letterboxing, padding,
    a frame of one colour. Rows are peeled from the top and the bottom, and columns from the
    left and the right, while every pixel of the row (column) stays within
    :data:`BORDER_TOLERANCE` levels of the band's first row (column) and within the row itself
    (per channel); at most 45 % of a side on each edge. Measured on the 32×32 pixels of
    :func:`gray32_rgb` (a band of 1/32 of a side or more is seen).

    Args:
        pixels: uint8 (h, w) gray or (h, w, 3) colour.

    Returns:
        float in [0, 1): 1 − (inner height × inner width) / (h × w).
    """
    a = np.asarray(pixels, np.int16)
    if a.ndim == 2:
        a = a[..., None]
    h, w = a.shape[:2]

    def peel(lines: np.ndarray) -> int:  # lines: (n, length, channels), from the edge inwards
        first = lines[0]
        k = 0
        for line in lines[: int(len(lines) * 0.45)]:
            if np.ptp(line, axis=0).max() > BORDER_TOLERANCE or np.abs(line - first).max() > BORDER_TOLERANCE:
                break
            k += 1
        return k

    top = peel(a)
    bottom = peel(a[::-1])
    rows = a[top : h - bottom] if top + bottom < h else a[:0]
    if not len(rows):
        return 0.0  # uniform everywhere: a flat picture, not a border
    left = peel(rows.transpose(1, 0, 2))
    right = peel(rows.transpose(1, 0, 2)[::-1])
    inner = (h - top - bottom) * max(0, w - left - right)
    return round(1 - inner / (h * w), 4)


def phash_images(images: Iterable) -> np.ndarray:
    """uint64 (n,) pHashes of decoded Pillow images ('RGB' or gray 'L'); see :func:`gray32`."""
    grays = [gray32(im) for im in images]
    return phash_batch(np.stack(grays) if grays else np.zeros((0, SIZE, SIZE), np.uint8))


def to_hex(h: int) -> str:
    """uint64 hash → imagededup's 16-character lower-case hex string."""
    return f"{int(h):016x}"


def from_hex(s: str) -> int:
    """imagededup's hex string → int in [0, 2**64)."""
    return int(s, 16)


def hamming(a: int, b: int) -> int:
    """Hamming distance in bits (0–64) between two 64-bit hashes."""
    return int(bin(int(a) ^ int(b)).count("1"))
