"""What surrounds a copy inside its container: more of the picture, or something added.

When a ``containment`` row joins two members of one cluster, the container holds something the
contained sample does not. Two very different things look alike geometrically:

- **a crop** — the contained sample is part of a larger picture; the container is the whole
  picture, which a trainer wants to keep (keeper criterion ``whole_picture``);
- **an addition** — meme text bars, a screenshot's browser or phone chrome, a caption strip, the
  other tiles of a collage around the pasted picture; the contained sample is the clean picture,
  which a trainer wants to keep (keeper criterion ``no_additions``).

Two measures on the container *outside* the copy's region (:func:`measure_surrounds`):

1. :func:`surround_flatness` — additions are drawn: the share of the surround's pixels in its
   :data:`TOP_COLOURS` most frequent colours (each channel quantised to :data:`LEVELS` levels).
   On 155 verified copies of 40 real photographs: meme bars and browser/phone chrome 0.93–1.0;
   the photograph around a crop to 70 % (or a mirrored crop to 80 %) 0.2–1.0, over 0.9 in about
   one in five — pictures on a plain studio background, where crop and whole picture show the
   same content.
2. :func:`seam_jump` — a pasted picture ends at a seam: the luma jump across the region's
   boundary against the picture's own change over the same distance. A crop's surround
   continues the picture (jump ≈ own change); a collage gutter, a bar or a frame does not.

A surround is an addition when flat or behind a seam (:func:`is_addition`). On the same copies:
every meme and frame, 3 in 4 collage tiles (a picture whose edges match the gutter shows no
seam), and 1 in 5 crops (the flat-background ones) read as additions. The keeper's figures on the
whole copy-detection benchmark are in docs/BENCHMARKS.md ("Keeper"). Flat padding (letterbox,
plain borders) is outside the measured area: ``no_border`` ranks it, and ``container_fraction``
counts without it.
"""
from __future__ import annotations

import json
import math

import numpy as np

from curate.media.images import open_image, read_ref
from curate.media.trim import picture_box
from curate.stages.dedup.containment import CONTENT_MAX_TRIM

#: quantisation per channel before counting colours (8 levels: 512 colours)
LEVELS = 8
#: the colours an addition is mostly drawn in (background, text, one accent)
TOP_COLOURS = 3
#: surround flatness at or above this is an addition (text bars, chrome), below it more picture
ADDED_MIN_FLATNESS = 0.9
#: a containment region covering at least this share of the container's picture is the whole
#: picture (neither a crop nor an addition: nothing around it to judge)
FULL_FRACTION = 0.9
#: seam probes this far (px, at the measured scale) either side of the region boundary
SEAM_STEP = 3.0
#: a seam is a jump over this many luma levels (0–255) …
SEAM_MIN_JUMP = 20.0
#: … and over this multiple of the picture's own change over the same distance
SEAM_RATIO = 2.0
#: the container is measured at this long side (px)
MAX_SIDE = 512
#: a surround smaller than this share of the container's picture is not judged (None)
MIN_SURROUND = 0.03


def surround_flatness(im, polygon: list[list[float]], content_box=None) -> float | None:
    """Share (0–1) of the container's pixels outside the copy's region that are one of the
    :data:`TOP_COLOURS` most frequent colours (each channel quantised to :data:`LEVELS` levels).

    Args:
        im: the container, a decoded Pillow image (any mode; measured in RGB at ≤ :data:`MAX_SIDE` px).
        polygon: the contained picture's corners in the container's decoded pixels
            (``containment.region["polygon"]``), ``[[x, y], …]``.
        content_box: (x0, y0, x1, y1) in decoded pixels — the container's picture without flat
            padding (:func:`curate.media.trim.picture_box`) — or None for the whole frame.

    Returns:
        the flatness, or None when the surround inside the content box is under
        :data:`MIN_SURROUND` of it (nothing to judge).
    """
    from PIL import Image, ImageDraw

    w, h = im.size
    s = min(1.0, MAX_SIDE / max(w, h, 1))
    sw, sh = max(1, round(w * s)), max(1, round(h * s))
    rgb = np.asarray(im.convert("RGB").resize((sw, sh), Image.BOX))
    mask = Image.new("L", (sw, sh), 0)
    x0, y0, x1, y1 = content_box or (0, 0, w, h)
    ImageDraw.Draw(mask).rectangle((x0 * s, y0 * s, x1 * s - 1, y1 * s - 1), fill=255)
    ImageDraw.Draw(mask).polygon([(float(x) * s, float(y) * s) for x, y in polygon], fill=0)
    outside = np.asarray(mask) > 0
    inside_box = max(1.0, (x1 - x0) * (y1 - y0) * s * s)
    if outside.sum() < MIN_SURROUND * inside_box:
        return None
    q = (rgb[outside] // (256 // LEVELS)).astype(np.int32)
    codes = (q[:, 0] * LEVELS + q[:, 1]) * LEVELS + q[:, 2]
    counts = np.bincount(codes, minlength=LEVELS ** 3)
    top = np.sort(counts)[::-1][:TOP_COLOURS].sum()
    return float(top / max(1, len(codes)))


def seam_jump(im, polygon: list[list[float]], content_box=None, step: float = SEAM_STEP) -> tuple[float, float] | None:
    """How abruptly the picture ends at the copy's region boundary.

    Along every side of ``polygon`` (64 points per side, sides on the container's frame or its
    flat padding skipped), the luma (0–255) is read ``step`` px outside and inside the boundary
    and ``step`` px further in. Returns (median |outside − inside| — the *jump* across the seam,
    median |inside − further inside| — the picture's own change over the same distance), or None
    with fewer than 16 points. A crop's surround continues the picture (jump ≈ the picture's own
    change); a pasted picture meets a gutter, a bar or another picture (jump ≫ its own change).

    Args: as :func:`surround_flatness` (``im`` at the polygon's pixel scale).
    """
    g = np.asarray(im.convert("L"), np.float32)
    h, w = g.shape
    x0, y0, x1, y1 = content_box or (0, 0, w, h)
    p = np.asarray(polygon, np.float64)
    area2 = float(np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]))
    t = np.linspace(0.05, 0.95, 64)[:, None]
    jumps, own = [], []
    for k in range(len(p)):
        a, b = p[k], p[(k + 1) % len(p)]
        v = b - a
        length = float(np.hypot(*v))
        if length < 8:
            continue
        n = np.array([v[1], -v[0]]) / length * (1.0 if area2 >= 0 else -1.0)  # outward normal
        pts = a + t * v
        probes = [pts + step * n, pts - step * n, pts - 2 * step * n]  # outside, inside, further inside
        inside = np.ones(len(pts), bool)
        for q in probes:
            inside &= (q[:, 0] >= x0 + 1) & (q[:, 0] < x1 - 1) & (q[:, 1] >= y0 + 1) & (q[:, 1] < y1 - 1)
        if not inside.any():
            continue
        o, i1, i2 = (g[q[inside, 1].astype(int), q[inside, 0].astype(int)] for q in probes)
        jumps.append(np.abs(o - i1))
        own.append(np.abs(i1 - i2))
    if not jumps or sum(len(j) for j in jumps) < 16:
        return None
    return float(np.median(np.concatenate(jumps))), float(np.median(np.concatenate(own)))


def is_addition(flatness: float | None, seam: tuple[float, float] | None) -> bool | None:
    """The surround is an addition (bars, chrome, a collage around a pasted picture) rather than
    more of the same picture: flat (≥ :data:`ADDED_MIN_FLATNESS`) or behind a seam (jump over
    :data:`SEAM_MIN_JUMP` and over :data:`SEAM_RATIO` × the picture's own change). None when
    neither was measured."""
    if flatness is None and seam is None:
        return None
    if flatness is not None and flatness >= ADDED_MIN_FLATNESS:
        return True
    return seam is not None and seam[0] > SEAM_MIN_JUMP and seam[0] > SEAM_RATIO * seam[1]


def in_cluster_sql(members_table: str) -> str:
    """SQL of the ``containment`` rows (all columns) whose two samples share a cluster of
    ``members_table`` (sample_id, cluster_id) and whose region covers under :data:`FULL_FRACTION`
    of the container's picture: the rows whose surround is judged, and that the keeper reads."""
    return f"""SELECT x.* FROM containment x
        JOIN {members_table} ca ON ca.sample_id = x.container_id
        JOIN {members_table} cb ON cb.sample_id = x.contained_id AND cb.cluster_id = ca.cluster_id
        WHERE CAST(json_extract(x.region, '$.container_fraction') AS DOUBLE) < {FULL_FRACTION}"""


def measure_surrounds(ws, members_table: str, max_pixels: int) -> int:
    """Judge what surrounds the copy in every ``containment`` row whose two samples share a cluster
    of ``members_table`` (sample_id, cluster_id) and whose region covers under
    :data:`FULL_FRACTION` of the container's picture; rows already judged are kept. Stores in the
    row's ``region``: ``surround`` — ``'addition'`` (:func:`is_addition`: bars, chrome, a collage
    around a pasted picture) or ``'picture'`` (the contained sample is a crop of the container) —
    with ``surround_flatness`` and ``seam`` [jump, own change]. Each container is decoded once (JPEG draft at ≈ :data:`MAX_SIDE`
    px). Returns how many rows were judged; a container that no longer decodes, or a surround
    with nothing to measure, is left unjudged."""
    rows = ws.q(f"""SELECT x.container_id, x.contained_id, x.region, s.image_ref, i.width, i.height
        FROM ({in_cluster_sql(members_table)}) x
        JOIN samples s ON s.sample_id = x.container_id JOIN images i ON i.sample_id = x.container_id
        WHERE json_extract_string(x.region, '$.surround') IS NULL
        ORDER BY x.container_id, x.contained_id""")
    updates: list[tuple[str, int, int]] = []
    decoded: tuple[int, object, tuple] | None = None
    for cont, inner, region_json, ref, w, h in rows:
        region = json.loads(region_json)
        if decoded is None or decoded[0] != cont:
            draft = max(1, math.ceil(MAX_SIDE * min(w, h) / max(w, h))) if w and h else None
            d, im = open_image(read_ref(ref), max_pixels=max_pixels, draft=draft)
            decoded = (cont, im, (d.width, d.height))
        _, im, full = decoded
        if im is None or not full[0] or not full[1]:
            continue
        fx, fy = im.width / full[0], im.height / full[1]
        polygon = [[x * fx, y * fy] for x, y in region["polygon"]]
        box = picture_box(im, max_fraction=CONTENT_MAX_TRIM)
        flat, seam = surround_flatness(im, polygon, box), seam_jump(im, polygon, box)
        added = is_addition(flat, seam)
        if added is None:  # nothing around the copy to judge
            continue
        region.update(surround="addition" if added else "picture",
                      surround_flatness=None if flat is None else round(flat, 4),
                      seam=None if seam is None else [round(seam[0], 2), round(seam[1], 2)])
        updates.append((json.dumps(region), cont, inner))
    if updates:  # in the caller's transaction (the dedup stage's)
        ws.con.executemany("UPDATE containment SET region = ? WHERE container_id = ? AND contained_id = ?", updates)
    return len(updates)
