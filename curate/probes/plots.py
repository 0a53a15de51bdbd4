"""Figures for the report's probe section, as base64 PNG (``data:image/png;base64,…``): the report
stays one self-contained file and its Content-Security-Policy allows ``img-src data:`` only.

Drawn with matplotlib's Agg backend (no display, no fonts fetched); PNGs carry no timestamp,
so the same data give the same bytes.
"""
from __future__ import annotations

import base64
import io

import numpy as np

from curate.probes.stats import BIN_EDGES, N_BINS


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 7.0, h: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _stairs(hist: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(density, edges) of a stored histogram: DCR's bins, or — for statistics stored by an older
    curate — equal bins of [0, 1] of its own length."""
    c = np.asarray(hist, float)
    edges = BIN_EDGES if len(c) == N_BINS else np.linspace(0.0, 1.0, len(c) + 1)
    return c / (c.sum() * np.diff(edges)), edges


def similarity_histogram(gen_hist: list[int], bg_hist: list[int] | None, lines: dict[str, float], title: str) -> str:
    """Somepalli et al.'s figure: top-1 similarity of generations vs the train→train background,
    in DCR's bins (``numpy.linspace(0, 1, 200)``: 199 bins), each as a density (area 1, DCR's
    ``density=True``) on its own y axis (generations left,
    background right), so a handful of generations does not flatten the background; vertical
    lines at ``lines`` (label → similarity). Returns base64 PNG."""
    fig, ax = _figure()
    handles = []
    if bg_hist and sum(bg_hist):
        bx = ax.twinx()
        dens, edges = _stairs(bg_hist)
        handles.append(bx.stairs(dens, edges, fill=True, color="#bbbbbb", alpha=0.6,
                                 label=f"train → train (background), n={sum(bg_hist)}; right axis"))
        bx.set_ylabel("density (background)", color="#777777")
        bx.tick_params(axis="y", colors="#777777")
        ax.set_zorder(bx.get_zorder() + 1)
        ax.patch.set_visible(False)
    if gen_hist and sum(gen_hist):
        dens, edges = _stairs(gen_hist)
        handles.append(ax.stairs(dens, edges, color="#c0392b", linewidth=1.5,
                                 label=f"generations → train, n={sum(gen_hist)}; left axis"))
    for (label, x), style in zip(lines.items(), ("--", ":", "-.", (0, (1, 3)))):
        if x is not None:
            handles.append(ax.axvline(x, color="#333333", linestyle=style, linewidth=1, label=f"{label} {x:.3f}"))
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 similarity (cosine)")
    ax.set_ylabel("density (generations)")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, fontsize=7, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def risk_vs_cluster(cluster_size: list[int], risk: list[float], caption_count: list[int], verdicts: list[str | None]) -> str:
    """Scatter of probe risk against duplicate-cluster size (log scale); marker size grows with
    caption duplication, colour shows the prompt's worst verdict when scored. Returns base64 PNG."""
    fig, ax = _figure()
    colours = {"replicated": "#c0392b", "close": "#e67e22", "novel": "#27ae60", None: "#7f8c8d"}
    cs = np.asarray(cluster_size, float)
    rk = np.asarray(risk, float)
    sz = 12 + 18 * np.log2(np.maximum(1, np.asarray(caption_count, float)))
    for v in ("replicated", "close", "novel", None):
        m = np.array([x == v for x in verdicts], bool)
        if m.any():
            ax.scatter(cs[m], rk[m], s=sz[m], c=colours[v], alpha=0.7, edgecolors="none",
                       label=v or "not scored")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("duplicate-cluster size (samples, log scale)")
    ax.set_ylabel("replication risk")
    ax.set_title("Probe risk vs cluster size (marker size: caption duplication)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def noise_vs_similarity(noise: list[float], similarity: list[float], verdicts: list[str], title: str) -> str:
    """Per prompt: Wen et al.'s noise-difference magnitude against the highest top-1 similarity of
    its generations. Returns base64 PNG."""
    fig, ax = _figure()
    colours = {"replicated": "#c0392b", "close": "#e67e22", "novel": "#27ae60"}
    for v, c in colours.items():
        idx = [i for i, x in enumerate(verdicts) if x == v]
        if idx:
            ax.scatter([noise[i] for i in idx], [similarity[i] for i in idx], c=c, s=22, alpha=0.8, label=v)
    ax.set_xlabel("noise-difference magnitude d(p) (Wen et al.)")
    ax.set_ylabel("max top-1 similarity")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
