"""How faithful each copy in a duplicate cluster is to the cluster's picture: drawn over, or softened.

Two defects that no measure of one image can see, because both need the other copies to compare
with (keeper criteria ``no_overlay`` and ``sharp``, :mod:`curate.stages.dedup.keeper`):

- an **overlay** — a text watermark, a logo, a stamp drawn *over* the picture — adds detail: edges
  the clean picture does not have, in some places, while every other place keeps its detail;
- **blur** (or a small copy blown up) loses detail everywhere the picture has some.

A watermark makes a copy *sharper* by any global measure, so the two are told apart cell by cell
and in order: overlays first, then softness measured only against members that carry no overlay.

Per member (decoded once, JPEG draft at ≈ :data:`SIDE` px, flat padding trimmed as the descriptor
does, :func:`curate.media.trim.picture_box`): its luma at a common scale, :data:`SIDE` ×
:data:`SIDE`, standardised (zero mean, unit variance: a colour or contrast change does not count),
and its *detail* per cell — the mean square of the luma minus its Gaussian blur (σ =
:data:`DETAIL_SIGMA` px) in :data:`CELL`-px cells, :data:`MARGIN` px at each edge left out (where a
trimmed border leaves a seam). Members are *aligned* when their block means correlate at
≥ :data:`ALIGN_MIN` (the mirror image is tried too); only the members aligned with the cluster's
best-aligned member are compared (a crop, a rotation or a collage is left to other criteria).

Each member's cells are compared with a reference (cells where either has over
:data:`TEXTURE_FLOOR` of the larger mean detail; ``q`` = member / reference, both + that floor):
``added`` = share of cells with q ≥ :data:`STEP`, ``lost`` = share with q ≤ 1 / :data:`STEP`,
``detail`` = the median q, ``upper`` = its 75th percentile. In three passes:

1. **soft**, first guess: against the per-cell maximum over all aligned members, ``upper`` ≤
   :data:`SOFT_MAX_UPPER` — three quarters of the picture lost most of its detail. A watermark
   raises the maximum only in its own cells, so a clean copy is not made soft by it.
2. **overlay**: against the consensus — the per-cell median over the members not soft (≥ 3: an
   overlay on one copy moves it by nothing) — ``added`` ≥ :data:`OVERLAY_MIN_ADDED` and ``lost``
   ≤ :data:`OVERLAY_MAX_LOST`: detail added in some places, lost nowhere. With two members not
   soft, each against the other, and only a local addition (``detail`` ≤ :data:`PAIR_MAX_DETAIL`:
   against a slightly blurred copy, a sharp one gains detail in most cells). With fewer, none.
3. **soft** again, against the per-cell maximum over the members without an overlay.

Measured on the copy-detection benchmark (``benchmarks/copy_detection.py``), each copy of 120 real
photographs against its original: a text watermark adds detail in 0–67 % of the cells and loses it
in ≤ 2 %; blur at 1–2 % of the short side loses it in 3–100 % and adds it in ≤ 1 %, its ``upper``
≤ 0.40 for 9 in 10; JPEG q30, colour, grayscale, mirror and letterbox copies add and lose in
≤ 18 %. Judged in whole clusters (the original and all its copies): 78 of 98 aligned watermarked
copies carry an overlay, 105 of 111 blurred copies are soft, no original is either; as a pair
(original, watermarked copy): 62 overlays, no original soft. The keeper's figures are in
docs/BENCHMARKS.md ("Keeper").
"""
from __future__ import annotations

import numpy as np

from curate.media.images import open_image, read_ref
from curate.media.trim import picture_box
from curate.stages.dedup.containment import CONTENT_MAX_TRIM

#: the common scale: every member's picture is compared at SIDE × SIDE px (luma)
SIDE = 256
#: px left out at each edge (a trimmed border's last row, JPEG ringing at a letterbox bar)
MARGIN = 8
#: cell side, px at the common scale: (SIDE − 2·MARGIN) / CELL = 15 cells a side
CELL = 16
#: detail = luma minus its Gaussian blur of this σ (px at the common scale)
DETAIL_SIGMA = 1.0
#: aligned: the :data:`ALIGN_BLOCKS` × ALIGN_BLOCKS block means of the luma blurred by σ =
#: :data:`ALIGN_SIGMA` px correlate at least this much — the same framing (letterbox trimmed, mirror
#: tried). On the copy-detection benchmark: blurred, resized, JPEG q30, colour, grayscale and mirrored
#: copies 87–99 % at or above it (blur 93 %); rotations by 10° 1 %, perspective 22 %, crops ≤ 1 %
ALIGN_MIN = 0.97
ALIGN_BLOCKS = 8
ALIGN_SIGMA = 4.0
#: a cell counts when either side's detail is over this share of the larger mean (flat sky: no)
TEXTURE_FLOOR = 0.05
#: a cell gained (lost) detail at ≥ STEP × (≤ 1 / STEP ×) the reference's
STEP = 3.0
#: overlay: at least this share of the cells gained detail …
OVERLAY_MIN_ADDED = 0.05
#: … and at most this share lost it (blur, misalignment)
OVERLAY_MAX_LOST = 0.02
#: two members: an overlay is local — the median cell keeps the other's detail (on the benchmark a
#: sharp copy against a blurred one: median 1.6–37; a watermarked copy against its original:
#: 0.9–7.9, ≤ 1.65 for 9 in 10)
PAIR_MAX_DETAIL = 1.5
#: soft: three quarters of the textured cells hold at most this share of the sharpest copy's detail
#: (per cell, the most any member without an overlay holds). Blur is a loss everywhere (on the
#: benchmark the 75th percentile is ≤ 0.40 for 9 in 10 blurred copies); a watermark the clean copy
#: does not have is a loss in its cells only (the clean copy's 75th percentile against it: ≥ 0.53)
SOFT_MAX_UPPER = 0.45
#: clusters with more members than this are not measured (each member is decoded)
MAX_MEMBERS = 64


def common_luma(im) -> np.ndarray | None:
    """A decoded Pillow image → its picture (flat padding trimmed) as standardised luma,
    float32 :data:`SIDE` × :data:`SIDE` (zero mean, unit variance); None for a flat picture."""
    from PIL import Image

    box = picture_box(im, max_fraction=CONTENT_MAX_TRIM)
    if box is not None:
        im = im.crop(box)
    x = np.asarray(im.convert("L").resize((SIDE, SIDE), Image.BILINEAR), np.float32)
    sd = float(x.std())
    if sd < 1.0:  # under one grey level: nothing to compare
        return None
    return (x - float(x.mean())) / sd


def cell_detail(x: np.ndarray) -> np.ndarray:
    """Standardised luma (:func:`common_luma`) → detail per cell, float64 (n × n,
    n = (SIDE − 2·MARGIN) / CELL): the mean square of ``x`` minus its Gaussian blur (σ
    :data:`DETAIL_SIGMA`) per :data:`CELL`-px cell, :data:`MARGIN` px at each edge left out."""
    from scipy.ndimage import gaussian_filter

    h = x - gaussian_filter(x, DETAIL_SIGMA)
    e = (h[MARGIN:SIDE - MARGIN, MARGIN:SIDE - MARGIN] ** 2).astype(np.float64)
    n = (SIDE - 2 * MARGIN) // CELL
    return e[:n * CELL, :n * CELL].reshape(n, CELL, n, CELL).mean(axis=(1, 3))


def _blocks(x: np.ndarray) -> np.ndarray:
    """:data:`ALIGN_BLOCKS`² block means of ``x`` blurred by σ :data:`ALIGN_SIGMA` (taken on a
    4× box-reduced copy, 16× cheaper), standardised."""
    from scipy.ndimage import gaussian_filter

    r = SIDE // 4
    small = x.reshape(r, 4, r, 4).mean(axis=(1, 3))
    k = r // ALIGN_BLOCKS
    b = gaussian_filter(small, ALIGN_SIGMA / 4).reshape(ALIGN_BLOCKS, k, ALIGN_BLOCKS, k).mean(axis=(1, 3))
    return (b - b.mean()) / max(float(b.std()), 1e-6)


def aligned_group(lumas: list[np.ndarray | None]) -> list[tuple[int, np.ndarray]]:
    """The members aligned with the best-aligned one: [(index, luma — mirrored where the mirror
    aligns)], the best-aligned member first; [] when fewer than two align. Aligned: block means
    (:data:`ALIGN_BLOCKS`, after a blur of σ :data:`ALIGN_SIGMA`) correlate at ≥ :data:`ALIGN_MIN`."""
    idx = [k for k, x in enumerate(lumas) if x is not None]
    if len(idx) < 2:
        return []
    blocks = [_blocks(lumas[k]) for k in idx]
    b = np.stack([x.ravel() for x in blocks])
    bm = np.stack([x[:, ::-1].ravel() for x in blocks])  # the mirror image's block means
    n = b.shape[1]
    straight, mirrored = b @ b.T / n, b @ bm.T / n  # [i, j]: i against j (j mirrored)
    ok = np.maximum(straight, mirrored) >= ALIGN_MIN
    np.fill_diagonal(ok, False)
    anchor = int(np.argmax(ok.sum(axis=1)))  # ties: the first (members come in sample_id order)
    if not ok[anchor].any():
        return []
    group = [(idx[anchor], lumas[idx[anchor]])]
    for j in np.flatnonzero(ok[anchor]):
        x = lumas[idx[j]]
        if mirrored[anchor, j] > straight[anchor, j]:
            x = np.ascontiguousarray(x[:, ::-1])
        group.append((idx[j], x))
    return group


def compare(cells: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, float] | None:
    """(added, lost, detail, upper) of one member's cell detail against a reference's (same shape):
    over the cells where either is over :data:`TEXTURE_FLOOR` of the larger mean, q = (member +
    floor) / (reference + floor); added = share of cells with q ≥ :data:`STEP`, lost = share with
    q ≤ 1 / STEP, detail = median q, upper = 75th percentile of q. None when no cell has texture."""
    floor = TEXTURE_FLOOR * max(float(cells.mean()), float(ref.mean()))
    tex = np.maximum(cells, ref) > floor
    if floor <= 0 or not tex.any():
        return None
    q = (cells[tex] + floor) / (ref[tex] + floor)
    return (float((q >= STEP).mean()), float((q <= 1 / STEP).mean()), float(np.median(q)),
            float(np.quantile(q, 0.75)))


def _soft(cells: list[np.ndarray], among: list[int]) -> list[bool]:
    """Soft against the per-cell maximum over the members ``among``: ``upper`` ≤ :data:`SOFT_MAX_UPPER`."""
    if not among:
        return [False] * len(cells)
    sharpest = np.max(np.stack([cells[k] for k in among]), axis=0)
    out = []
    for c in cells:
        v = compare(c, sharpest)
        out.append(v is not None and v[3] <= SOFT_MAX_UPPER)
    return out


def judge(lumas: list[np.ndarray | None]) -> dict[int, dict]:
    """The members of one cluster (:func:`common_luma` each, None where not decoded or flat) →
    {index: {"peers", "added", "lost", "detail", "overlay", "soft"}} for the aligned members
    (:func:`aligned_group`); the others are not judged. ``added`` / ``lost`` (0–1, shares of
    cells) are against the overlay reference, ``detail`` (median ratio) against the sharpest
    member without an overlay. In three passes (rules in the module docstring): soft against
    every member; overlays against the members not soft; soft again against the members without
    an overlay."""
    group = aligned_group(lumas)
    if not group:
        return {}
    cells = [cell_detail(x) for _, x in group]
    n = len(cells)
    soft = _soft(cells, list(range(n)))
    sharp = [k for k in range(n) if not soft[k]]
    vs: list = [None] * n
    overlay = [False] * n
    if len(sharp) >= 3:
        consensus = np.median(np.stack([cells[k] for k in sharp]), axis=0)
        for k in range(n):
            vs[k] = compare(cells[k], consensus)
            overlay[k] = vs[k] is not None and vs[k][0] >= OVERLAY_MIN_ADDED and vs[k][1] <= OVERLAY_MAX_LOST
    elif len(sharp) == 2:
        a, b = sharp
        vs[a], vs[b] = compare(cells[a], cells[b]), compare(cells[b], cells[a])
        for k in (a, b):
            overlay[k] = (vs[k] is not None and vs[k][0] >= OVERLAY_MIN_ADDED and vs[k][1] <= OVERLAY_MAX_LOST
                          and vs[k][2] <= PAIR_MAX_DETAIL)
    clean = [k for k in range(n) if not overlay[k]]
    soft = _soft(cells, clean)
    sharpest = np.max(np.stack([cells[k] for k in clean]), axis=0) if clean else None
    out: dict[int, dict] = {}
    for k, (idx, _) in enumerate(group):
        d = None if sharpest is None or overlay[k] else compare(cells[k], sharpest)
        out[idx] = {"peers": n - 1, "added": None if vs[k] is None else round(vs[k][0], 4),
                    "lost": None if vs[k] is None else round(vs[k][1], 4),
                    "detail": None if d is None else round(d[2], 4),
                    "overlay": bool(overlay[k]), "soft": bool(soft[k] and not overlay[k])}
    return out


def measure_fidelity(ws, members_table: str, max_pixels: int) -> dict[str, int]:
    """Judge every member of the clusters of ``members_table`` (sample_id, cluster_id) with 2 to
    :data:`MAX_MEMBERS` members (:func:`judge`) and store the aligned ones in ``copy_fidelity``
    (sample_id, cluster_id, peers, added, lost, detail, overlay, soft), replacing what was there.
    Each member is decoded once (JPEG draft at ≈ :data:`SIDE` px); a member that no longer
    decodes, or is flat, is not judged. Returns counters: members_measured, overlay, soft,
    clusters_too_large (skipped: more than MAX_MEMBERS members)."""
    con = ws.con
    con.execute("DELETE FROM copy_fidelity")
    sizes = dict(con.execute(f"SELECT cluster_id, count(*) FROM {members_table} GROUP BY cluster_id "
                             "HAVING count(*) >= 2").fetchall())
    too_large = sum(1 for n in sizes.values() if n > MAX_MEMBERS)
    rows = con.execute(f"""SELECT m.cluster_id, m.sample_id, s.image_ref FROM {members_table} m
        JOIN samples s ON s.sample_id = m.sample_id JOIN images i ON i.sample_id = m.sample_id
        WHERE i.status = 'ok' AND m.cluster_id IN (SELECT cluster_id FROM {members_table} GROUP BY cluster_id
                                                   HAVING count(*) BETWEEN 2 AND {MAX_MEMBERS})
        ORDER BY m.cluster_id, m.sample_id""").fetchall()
    clusters: dict[int, list[tuple[int, str]]] = {}
    for cid, sid, ref in rows:
        clusters.setdefault(cid, []).append((sid, ref))
    out: list[tuple] = []
    for cid, members in clusters.items():
        lumas = []
        for _, ref in members:
            try:
                _, im = open_image(read_ref(ref), max_pixels=max_pixels, draft=SIDE)
            except OSError:  # gone or unreadable since the hash stage: not judged
                im = None
            lumas.append(None if im is None else common_luma(im))
        for k, r in sorted(judge(lumas).items()):
            out.append((members[k][0], cid, r["peers"], r["added"], r["lost"], r["detail"], r["overlay"], r["soft"]))
    if out:  # in the caller's transaction (the dedup stage's)
        con.executemany("INSERT INTO copy_fidelity VALUES (?, ?, ?, ?, ?, ?, ?, ?)", out)
    return {"members_measured": len(out), "overlay": sum(1 for r in out if r[6]),
            "soft": sum(1 for r in out if r[7]), "clusters_too_large": too_large}
