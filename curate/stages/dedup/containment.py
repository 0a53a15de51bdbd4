"""Partial copies, located: "sample A contains a copy of B", verified by local features.

A crop, an inset, a collage tile or a rotated and rescaled copy of a picture is usually below
the embedding edge's cosine (the whole-image vector sees a different picture) and far in pHash.
This module verifies candidate pairs geometrically and records a *directed* containment edge
with where the copy is:

1. **Features** (:func:`features`): the decoded image (:func:`curate.media.images.open_image`)
   in gray, shrunk so its long side is ≤ ``Params.max_side`` (640) px (area interpolation),
   SIFT keypoints and descriptors (OpenCV ``cv2.SIFT_create``, at most ``max_features``, the
   strongest), keypoints mapped back to the decoded image's pixels, descriptors kept as uint8
   (128 bytes each). A :class:`FeatureCache` keeps them per sample within a run (LRU).
2. **Match** (:func:`match`): the image with fewer keypoints is matched to the other (two
   nearest neighbours, Lowe's ratio test at ``ratio``, one match per target keypoint), then a
   homography is fitted by RANSAC (``cv2.findHomography``, reprojection threshold
   ``ransac_px`` in feature pixels). Kept when it has ≥ ``min_inliers`` inliers making
   ≥ ``min_inlier_ratio`` of the tentative matches.
3. **Direction**: the inliers' convex hull covers a fraction of each image; the image where it
   covers the *smaller* fraction is the **container** (a crop's inliers fill the crop but only
   part of the original). The homography is expressed contained → container.
4. **Sanity checks** on that homography: positive determinant (no reflection), the contained
   image's four corners projected in front of the camera with their projective weights within
   a factor ``max_perspective`` of each other, a convex quad, a linear scale within
   ``1/max_scale … max_scale``; then ``coverage`` — the fraction of the projected quad inside
   the container's frame, i.e. of the contained picture present in the container — must be
   ≥ ``min_coverage``, and ``support`` — the inliers' hull over the contained image's area —
   ≥ ``min_support`` (a shared logo or watermark matches on a small patch only).

The **region** is the contained image's corners projected into the container (a polygon in the
container's decoded pixels, corners at pixel edges: a crop box (x0, y0, x1, y1) comes back as
itself) and its bounding box clipped to the container's frame. ``score`` = inlier ratio ×
min(1, support / 0.5): how many tentative matches agree with the geometry, times how much of
the contained picture they span (full credit from half its area).

**Candidates** (:func:`curate.stages.dedup.vector_search.knn_pairs`): each sample's ``k`` nearest neighbours by stored
image embedding with cosine in [floor, edge threshold) — pairs at or above the threshold are
already one cluster by the embedding edge, a crop or a collage usually falls below it; pairs
the other signals already put in one cluster are verified as well (the row and its region are
evidence: a crop joined to its original through other copies still gets its row). Other stages verify explicit
pairs of image references with :func:`verify_pairs` (claims' reference images, probe
generations).

**Cost** (measured in one process on 2 CPU cores shared with other work; CPU seconds):
features ≈ 90 ms per real photo (decode of up to 2048 px included, SIFT at 640 px), ≈ 25 ms
on average over the bundled sample's 373 mostly small images; computed once per image per run
(cached). Matching + RANSAC ≈ 15 ms for two 1,000-keypoint images, 1.3 ms on average over the
sample's 1,715 verified pairs (images with few keypoints stop early). The sample's dedup stage
went from 0.2 s to 6.4 s wall, ≈ 11 s of CPU (458 images, 1,762 candidates, 30 containments). At k = 10
count ≈ 0.1 s of features plus ≤ 5 pairs per image: ≈ 0.15 s of CPU per image, ≈ 40 CPU-hours
per million, in this process (``dedup.containment: false`` turns it off). The kNN search is
the dedup search's faiss exact inner product (IVF from ``ivf_min_n`` vectors); under ``embedding_search: ivfpq``,
which never loads the vectors, containment is skipped.
"""
from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from curate.config import DedupConfig, RunConfig
from curate.media.images import DEFAULT_MAX_PIXELS, open_image, read_ref
from curate.media.trim import picture_box
from curate.stages.dedup.rows import unit_rows
from curate.stages.dedup.vector_search import knn_pairs
from curate.store.catalog import Workspace
from curate.store.embeddings import load_all


@dataclass(frozen=True)
class Params:
    """Thresholds of :func:`match` (see the module doc).

    Attributes:
        max_side: images are shrunk so their long side is ≤ this (px) before SIFT.
        max_features: SIFT keypoints kept per image (the strongest).
        ratio: Lowe's ratio test (nearest / second-nearest descriptor distance).
        ransac_px: RANSAC reprojection threshold, in feature-image pixels.
        min_inliers: homography inliers needed (20: random pairs of photos give < 12).
        min_inlier_ratio: inliers / tentative matches needed.
        min_support: the inliers' convex hull over the contained image's area needed.
        min_coverage: the fraction of the contained picture inside the container's frame needed.
        max_scale: the contained image may appear at most this many times smaller or larger
            (linear) in the container.
        max_perspective: largest ratio between the projective weights of the projected corners.
        min_side: images whose long side is below this (px) are enlarged to it before SIFT
            (a 100 px thumbnail has too few keypoints at its own size).
        mirror: also match one image against the other's horizontal mirror (a flipped copy),
            when the direct match fails.
    """

    max_side: int = 640
    min_side: int = 320
    mirror: bool = True
    max_features: int = 1000
    ratio: float = 0.75
    ransac_px: float = 4.0
    min_inliers: int = 20
    min_inlier_ratio: float = 0.3
    min_support: float = 0.1
    min_coverage: float = 0.5
    max_scale: float = 8.0
    max_perspective: float = 2.0


@dataclass
class Features:
    """SIFT features of one image: ``points`` float32 (n, 2) in the decoded image's pixels,
    ``desc`` uint8 (n, 128), ``size`` the decoded (width, height), ``scale`` decoded pixels per
    feature pixel, ``content`` the picture without its flat padding (x0, y0, x1, y1) in decoded
    pixels (:func:`curate.media.trim.trim_uniform_border`, the descriptor's trim; the whole
    frame when nothing is trimmed)."""

    points: np.ndarray
    desc: np.ndarray
    size: tuple[int, int]
    scale: float
    content: tuple[float, float, float, float] | None = None

    def box(self) -> tuple[float, float, float, float]:
        return self.content or (0.0, 0.0, float(self.size[0]), float(self.size[1]))

    def mirrored(self) -> Features:
        """The features of this image's horizontal mirror, without running SIFT again: points
        x → w − 1 − x, descriptors with their 4 spatial rows reversed and their 8 orientation
        bins negated (the keypoint's frame is reflected across its orientation axis; measured
        against SIFT on the flipped image: mean absolute error 2.7 of a mean bin value 26)."""
        w = self.size[0]
        pts = self.points.copy()
        pts[:, 0] = w - 1 - pts[:, 0]
        d = self.desc.reshape(-1, 4, 4, 8)[:, ::-1][:, :, :, (-np.arange(8)) % 8]
        x0, y0, x1, y1 = self.box()
        return Features(pts, np.ascontiguousarray(d.reshape(-1, 128)), self.size, self.scale, (w - x1, y0, w - x0, y1))


@dataclass
class Match:
    """A verified containment: image ``container`` (0 = the first given, 1 = the second)
    contains a copy of the other.

    ``homography`` (3×3, contained decoded px → container decoded px), ``polygon`` (the
    contained image's corners (0,0), (w,0), (w,h), (0,h) projected into the container),
    ``bbox`` ([x0, y0, x1, y1], the polygon's bounding box clipped to the container's frame),
    ``inliers``, ``matches`` (tentative, after the ratio test), ``inlier_ratio``, ``coverage``
    (fraction of the contained picture inside the container's frame), ``support`` (inliers'
    hull / contained area), ``container_fraction`` (the region's area inside the container's
    picture box — its frame without flat padding — over that box's area: ≈ 1 for a full copy),
    ``score`` (module doc), ``sizes`` ((w, h) of container, contained), ``mirrored`` (the copy
    is the other's horizontal mirror; the polygon then lists the mirrored corners).
    """

    container: int
    homography: np.ndarray
    polygon: list[list[float]]
    bbox: list[float]
    inliers: int
    matches: int
    inlier_ratio: float
    coverage: float
    support: float
    container_fraction: float
    score: float
    sizes: tuple[tuple[int, int], tuple[int, int]]
    mirrored: bool = False

    def region(self) -> dict[str, Any]:
        """The ``containment.region`` JSON: polygon and bbox in the container's decoded pixels,
        with the sizes, homography and the measures that are not columns."""
        return {"polygon": self.polygon, "bbox": self.bbox, "container_size": list(self.sizes[0]),
                "contained_size": list(self.sizes[1]), "support": round(self.support, 4),
                "container_fraction": round(self.container_fraction, 4), "matches": self.matches,
                "mirrored": self.mirrored,
                "homography": [[round(float(v), 8) for v in row] for row in self.homography]}


def features(im, params: Params = Params(), size: tuple[int, int] | None = None) -> Features:
    """SIFT features of a decoded Pillow image (RGB or L). ``size``: the full decoded (width,
    height) when ``im`` was decoded smaller (JPEG draft), so points are in full-size pixels."""
    import cv2

    gray = np.asarray(im.convert("L"))
    h, w = gray.shape
    full = size or (w, h)
    content = _content_box(im, full)
    s = min(1.0, params.max_side / max(w, h, 1))
    if max(w, h) < params.min_side:
        s = params.min_side / max(w, h, 1)
    if s != 1.0:
        gray = cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))),
                          interpolation=cv2.INTER_AREA if s < 1.0 else cv2.INTER_CUBIC)
    fh, fw = gray.shape
    sx, sy = full[0] / fw, full[1] / fh
    kps, desc = cv2.SIFT_create(nfeatures=params.max_features).detectAndCompute(gray, None)
    if desc is None or not kps:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), full, max(sx, sy), content)
    pts = np.array([k.pt for k in kps], np.float32)
    pts = (pts + 0.5) * np.array([sx, sy], np.float32) - 0.5  # pixel centres, feature px → decoded px
    return Features(pts, np.clip(np.rint(desc), 0, 255).astype(np.uint8), full, max(sx, sy), content)


#: flat padding trimmed per edge for the content box, at most (fraction of the side): more than the
#: descriptor's 0.45, since a thumbnail pasted off-centre leaves over half of the canvas on one side
CONTENT_MAX_TRIM = 0.9


def _content_box(im, full: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The picture inside flat padding (:func:`curate.media.trim.picture_box`, up to
    :data:`CONTENT_MAX_TRIM` of a side per edge), in full decoded pixels (None: nothing to trim)."""
    box = picture_box(im, max_fraction=CONTENT_MAX_TRIM)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    fx, fy = full[0] / im.width, full[1] / im.height
    return (x0 * fx, y0 * fy, x1 * fx, y1 * fy)


def _hull_area(pts: np.ndarray) -> float:
    import cv2

    if len(pts) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(pts.astype(np.float32))))


def _tentative(q: Features, t: Features, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches q → t as index arrays, one per target keypoint (the closest)."""
    import cv2

    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(q.desc.astype(np.float32), t.desc.astype(np.float32), k=2)
    best: dict[int, tuple[float, int]] = {}
    for pair in knn:
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
            m = pair[0]
            if m.trainIdx not in best or m.distance < best[m.trainIdx][0]:
                best[m.trainIdx] = (m.distance, m.queryIdx)
    ti = np.array(sorted(best), np.int64)
    qi = np.array([best[i][1] for i in ti], np.int64)
    return qi, ti


def _checked(H: np.ndarray, contained: tuple[float, float, float, float], container: tuple[int, int],
             content: tuple[float, float, float, float], p: Params, reflection: bool = False):
    """(polygon float (4, 2), coverage, area inside the container's content box) of a sane
    homography, else None. ``contained``: the contained picture's box (x0, y0, x1, y1) in its
    pixels; ``content``: the container's picture box; ``reflection``: the copy is mirrored, so
    the determinant must be negative (positive otherwise)."""
    import cv2

    if not np.all(np.isfinite(H)) or abs(H[2, 2]) < 1e-12:
        return None
    H = H / H[2, 2]
    det = np.linalg.det(H[:2, :2])
    if det == 0 or (det < 0) != reflection:  # an unexpected reflection, or a collapse to a line
        return None
    x0, y0, x1, y1 = contained
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]], np.float64)
    proj = corners @ H.T
    z = proj[:, 2]
    if np.any(z <= 0) or z.max() / z.min() > p.max_perspective:
        return None
    quad = proj[:, :2] / z[:, None]
    if not cv2.isContourConvex(quad.astype(np.float32).reshape(-1, 1, 2)):
        return None
    area = abs(float(cv2.contourArea(quad.astype(np.float32))))
    lin = math.sqrt(area / max((x1 - x0) * (y1 - y0), 1))
    if not (1.0 / p.max_scale <= lin <= p.max_scale):
        return None
    cw, ch = container
    frame = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
    inside, _ = cv2.intersectConvexConvex(quad.astype(np.float32), frame)
    bx0, by0, bx1, by1 = content
    box = np.array([[bx0, by0], [bx1, by0], [bx1, by1], [bx0, by1]], np.float32)
    in_content, _ = cv2.intersectConvexConvex(quad.astype(np.float32), box)
    return quad, min(1.0, float(inside) / area), float(in_content)


def _reflect(w: int) -> np.ndarray:
    """The homography of a horizontal mirror of an image ``w`` px wide (its own inverse)."""
    return np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def match(fa: Features, fb: Features, params: Params = Params()) -> Match | None:
    """Verify that one of two images contains a copy of the other — or of its mirror image
    (``params.mirror``, tried when the direct match fails); None if not (too few keypoints,
    matches or inliers, or a homography that fails the checks of the module doc)."""
    m = _match(fa, fb, params, False)
    if m is None and params.mirror and min(len(fa.points), len(fb.points)) >= params.min_inliers:
        m = _match(fa, fb.mirrored(), params, True, fb)
    return m


def _match(fa: Features, fb: Features, params: Params, mirrored: bool, fb_real: Features | None = None) -> Match | None:
    """:func:`match` of ``fa`` against ``fb`` (the mirror of ``fb_real`` when ``mirrored``)."""
    import cv2

    p = params
    if min(len(fa.points), len(fb.points)) < p.min_inliers:
        return None
    swap = len(fa.points) > len(fb.points)  # query the image with fewer keypoints
    q, t = (fb, fa) if swap else (fa, fb)
    qi, ti = _tentative(q, t, p.ratio)
    if len(qi) < p.min_inliers:
        return None
    src, dst = q.points[qi], t.points[ti]
    H, mask = cv2.findHomography(src, dst, cv2.RANSAC, p.ransac_px * t.scale, maxIters=2000, confidence=0.995)
    if H is None or mask is None:
        return None
    inl = mask.ravel().astype(bool)
    n_in = int(inl.sum())
    if n_in < p.min_inliers or n_in / len(qi) < p.min_inlier_ratio:
        return None
    frac_q = _hull_area(src[inl]) / max(q.size[0] * q.size[1], 1)
    frac_t = _hull_area(dst[inl]) / max(t.size[0] * t.size[1], 1)
    if frac_t <= frac_q:  # t is the container: H maps q (contained) → t
        container, contained, support = t, q, frac_q
        Hc = H
    else:
        container, contained, support = q, t, frac_t
        try:
            Hc = np.linalg.inv(H)
        except np.linalg.LinAlgError:
            return None
    if support < p.min_support:
        return None
    if mirrored:  # back to fb's own pixels: fb's points were mirrored
        M = _reflect(fb.size[0])
        Hc = M @ Hc if container is fb else Hc @ M
        container = fb_real if container is fb else container
        contained = fb_real if contained is fb else contained
    got = _checked(Hc, contained.box(), container.size, container.box(), p, reflection=mirrored)
    if got is None:
        return None
    quad, coverage, in_content = got
    if coverage < p.min_coverage:
        return None
    cw, ch = container.size
    x0, y0 = np.clip(quad.min(0), 0, [cw, ch])
    x1, y1 = np.clip(quad.max(0), 0, [cw, ch])
    bx0, by0, bx1, by1 = container.box()
    ratio = n_in / len(qi)
    first_is_container = container is fa if fa is not fb else True
    return Match(
        container=0 if first_is_container else 1, homography=Hc / Hc[2, 2],
        polygon=[[round(float(x), 1), round(float(y), 1)] for x, y in quad],
        bbox=[round(float(v), 1) for v in (x0, y0, x1, y1)], inliers=n_in, matches=len(qi),
        inlier_ratio=ratio, coverage=coverage, support=support,
        container_fraction=min(1.0, in_content / max((bx1 - bx0) * (by1 - by0), 1)),
        score=ratio * min(1.0, support / 0.5), sizes=(container.size, contained.size), mirrored=mirrored,
    )


def match_images(im_a, im_b, params: Params = Params()) -> Match | None:
    """:func:`match` of two decoded Pillow images (e.g. ``open_image(read_ref(ref))[1]``)."""
    return match(features(im_a, params), features(im_b, params), params)


class FeatureCache:
    """Features per key (sample id or image reference) within a run, least recently used
    evicted beyond ``max_items`` (≈ 130 kB each at 1,000 keypoints). A key whose image does
    not decode caches None."""

    def __init__(self, max_items: int = 4096):
        self.max_items = max_items
        self.items: OrderedDict[Any, Features | None] = OrderedDict()
        self.computed = 0

    def get(self, key: Any, load: Callable[[], Features | None]) -> Features | None:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        f = load()
        self.computed += 1
        self.items[key] = f
        if len(self.items) > self.max_items:
            self.items.popitem(last=False)
        return f


def ref_features(ref: str, params: Params = Params(), *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 size: tuple[int, int] | None = None) -> Features | None:
    """Features of the image behind reference ``ref``, None if it does not decode. With its
    decoded ``size`` known (the ``images`` table), a JPEG is decoded in draft mode at the
    smallest scale that still gives ``params.max_side`` px on the long side."""
    draft = None
    if size and min(size) > 0:
        draft = max(1, math.ceil(params.max_side * min(size) / max(size)))
    d, im = open_image(read_ref(ref), max_pixels=max_pixels, draft=draft)
    if im is None:
        return None
    return features(im, params, size=(d.width, d.height) if d.width and d.height else None)


def verify_pairs(pairs: Iterable[tuple[str, str]], params: Params = Params(), *, cache: FeatureCache | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Match | None]:
    """Verify explicit pairs of image references (claims' reference images against samples,
    probe generations against training images): one :class:`Match` (``container`` 0 = the
    pair's first reference) or None per pair, in order. Features are cached by reference."""
    cache = cache if cache is not None else FeatureCache()
    out: list[Match | None] = []
    for ra, rb in pairs:
        fa = cache.get(ra, lambda r=ra: ref_features(r, params, max_pixels=max_pixels))
        fb = cache.get(rb, lambda r=rb: ref_features(r, params, max_pixels=max_pixels))
        out.append(None if fa is None or fb is None else match(fa, fb, params))
    return out


def params_of(dc: DedupConfig) -> Params:
    """:class:`Params` with the thresholds set in a :class:`curate.config.DedupConfig`."""
    return Params(min_inliers=dc.containment_min_inliers)


class ContainmentRow(NamedTuple):
    """One verified containment found by :func:`containment_rows`: ``catalog_row`` is its
    ``containment`` table row; ``container_fraction`` (:class:`Match`) decides whether it is a
    whole-picture copy (the stage's ``verified`` edges) without reading the region JSON back."""

    container_id: int
    contained_id: int
    inliers: int
    inlier_ratio: float
    coverage: float
    region: str
    score: float
    container_fraction: float

    @property
    def catalog_row(self) -> tuple:
        """(container_id, contained_id, inliers, inlier_ratio, coverage, region JSON, score)."""
        return tuple(self)[:7]


def containment_rows(ws: Workspace, cfg: RunConfig, key: str, eligible_sql: str, eligible_params: list,
                     tol: float) -> tuple[list[ContainmentRow], dict[str, Any]]:
    """The dedup stage's containment rows: candidates from the embeddings of key ``key``
    (samples of ``eligible_sql`` under ``eligible_params`` with a decoded image), every candidate
    verified, those already joined by other signals too (the row is evidence).

    Returns (rows sorted by (container_id, contained_id), counters: candidates, verified, found,
    features (images whose features were computed), seconds).
    """
    dc = cfg.dedup
    t0 = time.perf_counter()
    counters: dict[str, Any] = {"candidates": 0, "verified": 0, "found": 0, "features": 0}
    info = {int(r[0]): (r[1], int(r[2]), int(r[3])) for r in ws.q(
        f"SELECT s.sample_id, s.image_ref, i.width, i.height FROM samples s JOIN images i USING (sample_id) "
        f"WHERE i.status = 'ok' AND s.image_ref IS NOT NULL AND s.sample_id IN ({eligible_sql})",
        eligible_params)}
    ids, vecs = load_all(ws.embeddings_dir(key), only=set(info), dtype=np.float16) if info else (
        np.zeros(0, np.int64), np.zeros((0, 0), np.float16))
    if len(ids):
        good = unit_rows(vecs, tol)
        ids, vecs = ids[good], vecs[good]
    i, j, _ = knn_pairs(vecs, dc.containment_neighbours, dc.containment_min_cosine, dc.embedding_min_cosine,
                              ivf_min_n=dc.embedding_ivf_min_n, nprobe=dc.embedding_nprobe)
    a, b = ids[i], ids[j]
    counters["candidates"] = len(a)
    todo = sorted(zip(a.tolist(), b.tolist()))
    p = params_of(dc)
    cache = FeatureCache()
    max_pixels = cfg.hash.max_pixels
    rows: list[tuple] = []
    for sa, sb in todo:
        fa, fb = (cache.get(s, lambda s=s: ref_features(info[s][0], p, max_pixels=max_pixels,
                                                        size=(info[s][1], info[s][2]))) for s in (sa, sb))
        if fa is None or fb is None:
            continue
        counters["verified"] += 1
        m = match(fa, fb, p)
        if m is not None:
            cont, inner = (sa, sb) if m.container == 0 else (sb, sa)
            rows.append(ContainmentRow(int(cont), int(inner), m.inliers, round(m.inlier_ratio, 6), round(m.coverage, 6),
                                       json.dumps(m.region()), round(m.score, 6), round(m.container_fraction, 4)))
    rows.sort(key=lambda r: (r[0], r[1]))
    counters["found"] = len(rows)
    counters["features"] = cache.computed
    counters["seconds"] = round(time.perf_counter() - t0, 3)
    return rows, counters
