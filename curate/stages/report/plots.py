"""The report's overview figures, as base64 PNG (``data:image/png;base64,…``; the page's
Content-Security-Policy allows ``img-src data:`` only).

Drawn with matplotlib's Agg backend, as :mod:`curate.probes.plots` draws the probe figures; a
PNG carries no timestamp, so the same catalog gives the same bytes. Every figure is drawn from
counts aggregated in DuckDB (never one point per sample), so its cost does not grow with the
catalog beyond one scan.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from curate.store.catalog import Workspace

#: caption length bins: characters, 0–500 in 10-character bins; longer captions fall in the last one
CAPTION_BIN = 10
CAPTION_MAX = 500
#: resolution bins per octave of width and height (log2 scale)
RES_BINS_PER_OCTAVE = 4
#: cosine bins of embedding edges
COSINE_BIN = 0.005


def _figure(w: float = 5.8, h: float = 3.2):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def cluster_sizes(size_histogram: dict[str, int]) -> str | None:
    """Bars: duplicate clusters per cluster size (samples), log y; from summary.json's
    ``clusters.size_histogram`` (size → clusters). None when there is no cluster."""
    if not size_histogram:
        return None
    sizes = sorted((int(k), int(v)) for k, v in size_histogram.items())
    fig, ax = _figure()
    ax.bar([str(s) for s, _ in sizes], [n for _, n in sizes], color="#4a78b5")
    ax.set_yscale("log")
    ax.set_xlabel("cluster size (samples)")
    ax.set_ylabel("clusters (log scale)")
    ax.set_title(f"Duplicate clusters by size ({sum(n for _, n in sizes)} clusters)", fontsize=10)
    return _png(fig)


def resolutions(ws: Workspace) -> str | None:
    """2-D histogram of decoded image sizes (width × height, pixels, log2 axes,
    :data:`RES_BINS_PER_OCTAVE` bins per octave) of the images that decoded. None when none did."""
    b = RES_BINS_PER_OCTAVE
    rows = ws.q(f"""SELECT floor(log2(width) * {b}) AS x, floor(log2(height) * {b}) AS y, count(*) FROM images
                    WHERE status = 'ok' AND width > 0 AND height > 0 GROUP BY ALL ORDER BY ALL""")
    if not rows:
        return None
    x, y, n = (np.asarray(c, float) for c in zip(*rows))
    fig, ax = _figure(5.8, 3.8)
    xe = np.arange(x.min(), x.max() + 2) / b
    ye = np.arange(y.min(), y.max() + 2) / b
    from matplotlib.colors import LogNorm

    h, _, _, im = ax.hist2d((x + 0.5) / b, (y + 0.5) / b, bins=[xe, ye], weights=n, cmap="viridis", cmin=1,
                            norm=LogNorm(vmin=1, vmax=max(2.0, float(n.max()))))
    fig.colorbar(im, ax=ax, label="images (log scale)")
    ticks = np.arange(np.floor(xe.min()), np.ceil(xe.max()) + 1)
    ax.set_xticks(ticks, [f"{int(2 ** t)}" for t in ticks], fontsize=7)
    ticks = np.arange(np.floor(ye.min()), np.ceil(ye.max()) + 1)
    ax.set_yticks(ticks, [f"{int(2 ** t)}" for t in ticks], fontsize=7)
    ax.set_xlabel("width (px, log scale)")
    ax.set_ylabel("height (px, log scale)")
    ax.set_title(f"Image sizes ({int(n.sum())} decoded images)", fontsize=10)
    return _png(fig)


def caption_lengths(ws: Workspace) -> str | None:
    """Histogram of caption length (characters, :data:`CAPTION_BIN` wide bins up to
    :data:`CAPTION_MAX`; longer ones in the last bin); missing and blank captions counted in the
    title. None when no sample has a caption."""
    rows = ws.q(f"""SELECT least(length(caption), {CAPTION_MAX}) // {CAPTION_BIN} AS k, count(*) FROM samples
                    WHERE caption IS NOT NULL AND trim(caption) <> '' GROUP BY k ORDER BY k""")
    none = ws.scalar("SELECT count(*) FROM samples WHERE caption IS NULL OR trim(caption) = ''")
    if not rows:
        return None
    k, n = (np.asarray(c, float) for c in zip(*rows))
    fig, ax = _figure()
    ax.bar(k * CAPTION_BIN, n, width=CAPTION_BIN, align="edge", color="#6a9f58")
    ax.set_xlabel(f"caption length (characters; ≥ {CAPTION_MAX} in the last bar)")
    ax.set_ylabel("samples")
    ax.set_title(f"Caption lengths ({int(n.sum())} captioned samples; {int(none)} without a caption)", fontsize=10)
    return _png(fig)


def edge_similarities(ws: Workspace, phash_max: int | None, min_cosine: float | None) -> str | None:
    """Two panels of duplicate edges (``dup_edges``): pHash Hamming distance (bits, 0–64,
    signals ``phash`` and ``phash_mirror``) and cosine of embedding edges (``1 − distance``,
    :data:`COSINE_BIN` wide bins), each with its dedup threshold as a dashed line. None when
    there is neither kind of edge."""
    ph = ws.q("SELECT signal, CAST(distance AS INTEGER) AS d, count(*) FROM dup_edges "
              "WHERE signal IN ('phash', 'phash_mirror') GROUP BY ALL ORDER BY ALL")
    co = ws.q(f"SELECT floor((1 - distance) / {COSINE_BIN}) AS k, count(*) FROM dup_edges "
              "WHERE signal = 'embedding' GROUP BY k ORDER BY k")
    if not ph and not co:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.2))
    bottom = np.zeros(65)
    for signal, colour in (("phash", "#4a78b5"), ("phash_mirror", "#b5784a")):
        counts = np.zeros(65)
        for s, d, n in ph:
            if s == signal and 0 <= d <= 64:
                counts[d] += n
        if counts.any():
            a.bar(np.arange(65), counts, bottom=bottom, width=1.0, color=colour, label=signal)
            bottom += counts
    if phash_max is not None:  # null: pHash edges are off
        a.axvline(phash_max + 0.5, color="#333333", linestyle="--", linewidth=1, label=f"threshold ≤ {phash_max} bits")
    a.set_xlim(-0.5, max((phash_max if phash_max is not None else 6) + 2,
                         int(np.nonzero(bottom)[0].max()) + 1.5 if bottom.any() else 8))
    a.set_xlabel("pHash Hamming distance (bits)")
    a.set_ylabel("edges")
    a.set_title(f"pHash edges ({int(bottom.sum())})", fontsize=10)
    if a.get_legend_handles_labels()[0]:
        a.legend(fontsize=7)
    if co:
        k, n = (np.asarray(c, float) for c in zip(*co))
        b.bar(k * COSINE_BIN, n, width=COSINE_BIN, align="edge", color="#8e5ea2")
    if min_cosine is not None:  # null: embedding edges are off
        b.axvline(min_cosine, color="#333333", linestyle="--", linewidth=1, label=f"threshold ≥ {min_cosine}")
    low = [x for x in (min_cosine, float(k.min() * COSINE_BIN) if co else None) if x is not None]
    b.set_xlim((min(low) if low else 0.8) - 0.01, 1.005)
    b.set_xlabel("cosine of embedding edges")
    b.set_ylabel("edges")
    b.set_title(f"Embedding edges ({int(sum(r[1] for r in co))})", fontsize=10)
    if b.get_legend_handles_labels()[0]:
        b.legend(fontsize=7)
    return _png(fig)


def figures(ws: Workspace, summary: dict[str, Any], phash_max: int | None,
            min_cosine: float | None) -> list[dict[str, str]]:
    """The overview figures that have data: ``{id, title, png}`` each (``png`` base64)."""
    out = []
    for fid, title, png in (
            ("plot-clusters", "Duplicate cluster sizes", cluster_sizes(summary["clusters"]["size_histogram"])),
            ("plot-captions", "Caption lengths", caption_lengths(ws)),
            ("plot-similarity", "Similarity of duplicate edges", edge_similarities(ws, phash_max, min_cosine)),
            ("plot-resolutions", "Image sizes", resolutions(ws))):
        if png:
            out.append({"id": fid, "title": title, "png": png})
    return out
