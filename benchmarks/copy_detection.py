"""Copy-detection benchmark (issue #16): curate vs fastdup vs imagededup on the copies papers test.

Builds a labelled set from the real images in ``--data`` (default ``../shared/data``; never
needed by the test suite) and runs every system on the same folder in one run:

1. **Originals and distractors**: :func:`dedup_quality.collect_items` (distinct real images;
   originals have a short side ≥ 64 px, smaller ones are distractors: negatives without copies).
2. **Copies** (seeded; Pillow, OpenCV, numpy): one per original per transform of
   :data:`TRANSFORMS`, the parameter level cycling over the originals. Every copy is a JPEG
   (quality 95 unless the transform is the quality), at most 4096 px on the long side.
   "Full-image" copies show the whole picture (every transform but :data:`PARTIAL`);
   "partial" ones show part of it (crop to 50 %) or put it inside other content (collage,
   small copy on a plain border, screenshot-like frame).
3. **Flat images** (:func:`flat_images`): 20 solid, near-solid, gradient and "no longer
   available" placeholder images, none a copy of another: negatives that hash alike.
4. **Systems**: curate through :mod:`curate.api` (a plain-folder source, ``flag.packs: []``;
   ``ingest → hash → embed → dedup`` per ``--curate-config``, one workspace each, then only
   ``dedup`` again for the threshold sweeps); fastdup (``fastdup.create(work_dir, input_dir).run()``
   with its defaults, in its own interpreter ``--fastdup-python``: fastdup pins numpy < 2,
   Pillow 10.3.0 and scikit-learn 1.5.0, which curate's environment cannot take); imagededup
   ``PHash().find_duplicates(image_dir, max_distance_threshold=10)``.
5. **Scoring** (:func:`score`): clusters are the connected components of each system's pairs
   (edges); a positive pair is two files of one original. Overall: every pair of every file.
   Full-image / partial: the files without copies plus that group's copies (components of the
   edges among those files). Per transform: originals + distractors + flats + that transform's
   copies, the recall of original–copy pairs and the precision of the pairs that involve a copy
   (:func:`dedup_quality.copy_scores`). Flat merges: pairs of flat images in one cluster.
   images/s: files / wall seconds of the whole system on the folder. Containment rows (curate,
   ``dedup.containment`` on, the default): :func:`containment_scores` — a row is right when both
   files show one picture or one is a collage with the other's picture in a cell
   (``Truth.inside``, recorded when the collage is built).

Usage::

    python benchmarks/copy_detection.py [--data DIR] [--limit N] [--curate-config [NAME=]JSON ...]
        [--fastdup-python PY] [--no-fastdup] [--no-imagededup] [--no-sweep] [--work DIR] [--write-docs]

stdout: the headline figures as JSON; progress on stderr. Writes ``--out``/copy_detection.json
(default benchmarks/results) and with ``--write-docs`` the section "## Copy detection (issue #16)"
of docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import dedup_quality as dq

DATA = ROOT.parent / "shared" / "data"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Copy detection (issue #16)"
SEED = 16
MAX_SIDE = 4096

log = dq.log


# --------------------------------------------------------------------------------------------
# transforms: fn(im: RGB PIL image, rng: random.Random, others: Others) -> PIL image

Others = Callable[[int], list]  # k -> k other pictures (RGB), never the one being copied


@dataclass(frozen=True)
class Level:
    name: str
    fn: Callable
    quality: int = 95  # JPEG quality of the saved copy


def _wrap(f):
    """A dedup_quality transform (im, rng) as one of ours (im, rng, others)."""
    return lambda im, rng, others: f(im, rng)


def _resize(scale: float):
    return _wrap(dq._resize(scale))


def _crop(frac: float):
    return _wrap(dq._crop(frac))


def _rotate(deg: float):
    """Rotation by ±deg (sign seeded) about the centre, ``expand=False``: the canvas keeps its
    size, corners are cut off and the uncovered corners are black."""
    return _wrap(dq._rotate(deg))


def _letterbox(aspect: float):
    """Black bars to the aspect ``aspect`` (w/h); when the picture is already within 10 % of it,
    to the other side's (1/aspect, or 4:3 for a square target)."""
    def f(im, rng, others):
        from PIL import Image

        w, h = im.size
        a = aspect
        if abs(math.log((w / h) / a)) < 0.1:
            a = 1 / a if abs(a - 1) > 0.1 else 4 / 3
        if w / h > a:
            W, H = w, max(h + 2, round(w / a))
        else:
            W, H = max(w + 2, round(h * a)), h
        out = Image.new("RGB", (W, H), (0, 0, 0))
        out.paste(im, ((W - w) // 2, (H - h) // 2))
        return dq._clamp(out, MAX_SIDE)
    return f


def _jitter(b: float, c: float, s: float):
    return _wrap(dq._enhance(brightness=b, contrast=c, saturation=s))


def _gray(im, rng, others):
    return im.convert("L")


def _watermark_tiled(im, rng, others):
    """A repeated diagonal text watermark over the whole image (alpha 0.35)."""
    from PIL import Image, ImageDraw

    w, h = im.size
    text = rng.choice(["© stockphoto", "SAMPLE", "PREVIEW", "© images.example"])
    px = max(6, int(min(w, h) * 0.08))
    font = dq._font(px)
    tile = Image.new("RGBA", (w * 2, h * 2), (0, 0, 0, 0))
    d = ImageDraw.Draw(tile)
    step_x = max(8, int(d.textlength(text, font=font) * 1.4))
    step_y = max(8, px * 3)
    for y in range(0, 2 * h, step_y):
        for x in range(-(y // 2) % step_x - step_x, 2 * w, step_x):
            d.text((x, y), text, font=font, fill=(255, 255, 255, 90), stroke_width=max(1, px // 14),
                   stroke_fill=(0, 0, 0, 90))
    tile = tile.rotate(30, resample=Image.BICUBIC).crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
    return Image.alpha_composite(im.convert("RGBA"), tile).convert("RGB")


def _blur(frac: float):
    """Gaussian blur, radius ``frac`` × the short side (at least 1 px)."""
    def f(im, rng, others):
        from PIL import ImageFilter

        return im.filter(ImageFilter.GaussianBlur(radius=max(1.0, frac * min(im.size))))
    return f


def _perspective(frac: float):
    """Each corner moved by a seeded random offset of 0.5–1 × ``frac`` of the side, in a random
    direction (inwards or outwards), through ``cv2.warpPerspective`` (black outside)."""
    def f(im, rng, others):
        import cv2
        from PIL import Image

        a = np.asarray(im)
        h, w = a.shape[:2]
        src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
        dst = src.copy()
        for k in range(4):
            ang = rng.uniform(0, 2 * math.pi)
            r = rng.uniform(0.5, 1.0) * frac
            dst[k, 0] += r * w * math.cos(ang)
            dst[k, 1] += r * h * math.sin(ang)
        m = cv2.getPerspectiveTransform(src, dst)
        out = cv2.warpPerspective(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                  borderValue=(0, 0, 0))
        return Image.fromarray(out)
    return f


_MEME = ["WHEN YOU SEE IT", "ME EVERY MONDAY", "NOBODY:", "THIS IS FINE", "ONE DOES NOT SIMPLY",
         "AND THEN I SAID", "MOOD", "WAIT FOR IT", "TOP TEXT", "BOTTOM TEXT", "SO TRUE", "NAILED IT"]


def _fit_font(draw, text: str, px: int, width: float):
    font = dq._font(px)
    tw = draw.textlength(text, font=font)
    if tw > width:
        font = dq._font(max(6, int(px * width / tw)))
    return font


def _meme(bar: float):
    """White bars above and below (each ``bar`` × the height) with black text in them."""
    def f(im, rng, others):
        from PIL import Image, ImageDraw

        w, h = im.size
        b = max(8, round(h * bar))
        out = Image.new("RGB", (w, h + 2 * b), (255, 255, 255))
        out.paste(im, (0, b))
        d = ImageDraw.Draw(out)
        for y, text in ((b / 2, rng.choice(_MEME)), (h + 1.5 * b, rng.choice(_MEME))):
            font = _fit_font(d, text, int(b * 0.6), 0.92 * w)
            d.text((w / 2, y), text, font=font, fill=(0, 0, 0), anchor="mm")
        return dq._clamp(out, MAX_SIDE)
    return f


COLLAGE_AREA = 0.40


def _collage(grid: int):
    """The picture over 40 % of the canvas (a corner block of sqrt(0.4) of each side, corner
    seeded), the rest a grid of OTHER originals/distractors: ``grid`` 2 → a 2×2 collage (3
    others), 3 → a 3×3 collage whose corner 2×2 block is the picture (5 others). The picture
    keeps its size; the others are squashed into their cells; 2 px white gutters."""
    def f(im, rng, others):
        from PIL import Image, ImageOps

        w, h = im.size
        s = math.sqrt(COLLAGE_AREA)
        W, H = round(w / s), round(h / s)
        if grid == 2:
            xs, ys, mine = [0, w, W], [0, h, H], {(0, 0)}
        else:  # 3×3: columns and rows 0-1 are the picture's block
            xs, ys, mine = [0, w // 2, w, W], [0, h // 2, h, H], {(0, 0), (0, 1), (1, 0), (1, 1)}
        out = Image.new("RGB", (W, H), (255, 255, 255))
        rest = [(i, j) for i in range(len(xs) - 1) for j in range(len(ys) - 1) if (i, j) not in mine]
        for (i, j), o in zip(rest, others(len(rest))):
            cw, ch = xs[i + 1] - xs[i] - 2, ys[j + 1] - ys[j] - 2
            if cw > 0 and ch > 0:
                out.paste(o.resize((cw, ch), Image.BICUBIC), (xs[i] + 2, ys[j] + 2))
        # the picture's corner (seeded): flip the layout of the others, then paste the picture there
        flip_x, flip_y = rng.random() < 0.5, rng.random() < 0.5
        if flip_x:
            out = ImageOps.mirror(out)
        if flip_y:
            out = ImageOps.flip(out)
        out.paste(im, (W - w if flip_x else 0, H - h if flip_y else 0))
        return dq._clamp(out, MAX_SIDE)
    return f


def _small_in_border(frac: float):
    """A thumbnail at ``frac`` of the canvas area on a plain background (colour seeded), at a
    seeded position; the canvas has the picture's own size."""
    def f(im, rng, others):
        from PIL import Image

        w, h = im.size
        s = math.sqrt(frac)
        tw, th = max(1, round(w * s)), max(1, round(h * s))
        colour = rng.choice([(255, 255, 255), (0, 0, 0), (240, 240, 240), (30, 30, 30),
                             tuple(rng.randint(0, 255) for _ in range(3))])
        out = Image.new("RGB", (w, h), colour)
        out.paste(im.resize((tw, th), Image.LANCZOS), (rng.randint(0, w - tw), rng.randint(0, h - th)))
        return out
    return f


def _frame(kind: str):
    """A screenshot-like frame around the picture. ``browser``: a title bar with three window
    buttons and a tab, an address bar with a URL, side margins and a status line; ``phone``: a
    status bar (time, battery), an app bar with a title, the picture, caption lines and a
    bottom navigation bar. The picture keeps its size."""
    def f(im, rng, others):
        from PIL import Image, ImageDraw

        w, h = im.size
        u = max(6, round(max(w, h) * 0.035))  # chrome unit
        font = dq._font(max(6, round(u * 0.7)))
        if kind == "browser":
            m = u
            top = 3 * u
            W, H = w + 2 * m, h + top + m + u
            out = Image.new("RGB", (W, H), (246, 246, 246))
            d = ImageDraw.Draw(out)
            d.rectangle((0, 0, W, int(1.4 * u)), fill=(222, 222, 226))
            for k, c in enumerate(((237, 106, 94), (245, 191, 79), (98, 197, 84))):
                cx = u * (0.7 + 0.9 * k)
                d.ellipse((cx - u * 0.3, 0.7 * u - u * 0.3, cx + u * 0.3, 0.7 * u + u * 0.3), fill=c)
            d.rectangle((int(3.4 * u), int(0.3 * u), int(3.4 * u + min(W * 0.4, 12 * u)), int(1.4 * u)), fill=(246, 246, 246))
            d.text((3.8 * u, 0.85 * u), rng.choice(["Home", "Gallery", "News", "Photos"]), font=font, fill=(40, 40, 40), anchor="lm")
            d.rounded_rectangle((int(1.5 * u), int(1.65 * u), W - int(1.5 * u), int(2.65 * u)), radius=max(1, u // 2), fill=(255, 255, 255),
                                outline=(200, 200, 200))
            url = f"https://www.{rng.choice(['example', 'photos', 'news', 'blog'])}.com/{rng.randint(1000, 99999)}"
            d.text((2 * u, 2.15 * u), url, font=font, fill=(90, 90, 90), anchor="lm")
            out.paste(im, (m, top))
            d.text((m, h + top + 0.9 * u), "Done", font=font, fill=(120, 120, 120), anchor="lm")
        else:
            m = u
            top = 4 * u
            bottom = 5 * u
            W, H = w + 2 * m, h + top + bottom
            out = Image.new("RGB", (W, H), (255, 255, 255))
            d = ImageDraw.Draw(out)
            d.rectangle((0, 0, W, int(1.3 * u)), fill=(20, 20, 20))
            d.text((u, 0.65 * u), f"{rng.randint(7, 23)}:{rng.randint(10, 59)}", font=font, fill=(255, 255, 255), anchor="lm")
            d.rectangle((W - 2.4 * u, 0.4 * u, W - 0.8 * u, 0.9 * u), outline=(255, 255, 255), fill=(255, 255, 255))
            d.rectangle((0, int(1.3 * u), W, int(3.3 * u)), fill=(59, 89, 152))
            d.text((u, 2.3 * u), rng.choice(["Photos", "Feed", "Chat", "Gallery"]), font=font, fill=(255, 255, 255), anchor="lm")
            out.paste(im, (m, top))
            y = top + h + 0.6 * u
            for k in range(2):  # caption lines as grey bars
                d.rectangle((m, y + k * 0.9 * u, m + (W - 2 * m) * (0.9 - 0.3 * k), y + k * 0.9 * u + 0.5 * u), fill=(200, 200, 200))
            d.rectangle((0, H - 1.6 * u, W, H), fill=(245, 245, 245))
            for k in range(4):
                cx = W * (k + 0.5) / 4
                d.ellipse((cx - 0.35 * u, H - 1.15 * u, cx + 0.35 * u, H - 0.45 * u), fill=(110, 110, 110))
        return dq._clamp(out, MAX_SIDE)
    return f


def _mirror_crop(frac: float):
    """Horizontal flip, then a crop to ``frac`` of each side at a seeded position."""
    crop = dq._crop(frac)

    def f(im, rng, others):
        from PIL import ImageOps

        return crop(ImageOps.mirror(im), rng)
    return f


TRANSFORMS: dict[str, list[Level]] = {
    "resize": [Level("x0.5", _resize(0.5)), Level("x0.25", _resize(0.25))],
    "jpeg": [Level("q30", lambda im, r, o: im, 30)],
    "crop70": [Level("70%", _crop(0.70))],
    "crop50": [Level("50%", _crop(0.50))],
    "hflip": [Level("mirror", _wrap(dq._hflip))],
    "rotate": [Level("10deg", _rotate(10))],
    "letterbox": [Level("1:1", _letterbox(1.0)), Level("16:9", _letterbox(16 / 9)), Level("9:16", _letterbox(9 / 16))],
    "colour": [Level("b0.7c1.3s1.5", _jitter(0.7, 1.3, 1.5)), Level("b1.3c0.7s0.5", _jitter(1.3, 0.7, 0.5)),
               Level("b1.15c1.2s0.3", _jitter(1.15, 1.2, 0.3))],
    "grayscale": [Level("L", _gray)],
    "watermark": [Level("centre", _wrap(dq._watermark)), Level("tiled", _watermark_tiled)],
    "blur": [Level("r1%", _blur(0.01)), Level("r2%", _blur(0.02))],
    "perspective": [Level("4%", _perspective(0.04)), Level("8%", _perspective(0.08)), Level("12%", _perspective(0.12))],
    "meme": [Level("bars15%", _meme(0.15)), Level("bars20%", _meme(0.20))],
    "collage": [Level("2x2", _collage(2)), Level("3x3", _collage(3))],
    "small_in_border": [Level("25%", _small_in_border(0.25)), Level("33%", _small_in_border(0.33)),
                        Level("40%", _small_in_border(0.40))],
    "frame": [Level("browser", _frame("browser")), Level("phone", _frame("phone"))],
    "mirror_crop": [Level("flip+80%", _mirror_crop(0.80))],
}
PARTIAL = ("crop50", "collage", "small_in_border", "frame")
FULL = tuple(t for t in TRANSFORMS if t not in PARTIAL)


# --------------------------------------------------------------------------------------------
# flat images: negatives that are not copies of each other


def _text_centre(im, text: str, colour, rel: float = 0.06):
    from PIL import ImageDraw

    d = ImageDraw.Draw(im)
    w, h = im.size
    font = _fit_font(d, text, max(6, int(h * rel)), 0.8 * w)
    d.text((w / 2, h / 2), text, font=font, fill=colour, anchor="mm")
    return im


def flat_images(seed: int = SEED) -> list[tuple[str, bytes]]:
    """20 (file name, bytes) flat or near-flat images, each a different picture: 6 solid
    colours of different hues, 3 solid + JPEG noise, 3 solid + ±2 pixel noise, 4 soft
    gradients, 4 "photo no longer available"-style placeholders (small text on flat grey)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out: list[tuple[str, bytes]] = []

    def png(im) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()

    sizes = [(640, 480), (500, 500), (320, 240), (800, 600), (300, 400), (1024, 768)]
    solids = [(220, 30, 30), (30, 160, 40), (30, 60, 200), (240, 220, 40), (128, 128, 128), (250, 250, 250)]
    for k, c in enumerate(solids):
        out.append((f"flat{k:02d}_solid.png", png(Image.new("RGB", sizes[k % len(sizes)], c))))
    for k, c in enumerate([(200, 120, 40), (60, 200, 200), (20, 20, 20)]):  # JPEG block noise
        a = np.clip(np.full((360, 480, 3), c, np.float32) + rng.normal(0, 3, (360, 480, 3)), 0, 255).astype(np.uint8)
        out.append((f"flat{6 + k:02d}_solid_jpeg.jpg", dq._jpeg(Image.fromarray(a), 20)))
    for k, c in enumerate([(170, 40, 160), (240, 240, 235), (90, 110, 70)]):  # ±2 pixel noise
        a = np.clip(np.full((400, 400, 3), c, np.int16) + rng.integers(-2, 3, (400, 400, 3)), 0, 255).astype(np.uint8)
        out.append((f"flat{9 + k:02d}_solid_noise.png", png(Image.fromarray(a))))
    grads = [((240, 240, 255), (200, 210, 240), "v"), ((255, 230, 200), (250, 200, 150), "h"),
             ((40, 40, 40), (90, 90, 90), "v"), ((200, 255, 200), (150, 220, 170), "d")]
    for k, (c0, c1, kind) in enumerate(grads):
        h, w = 480, 640
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        t = y / (h - 1) if kind == "v" else x / (w - 1) if kind == "h" else (x / (w - 1) + y / (h - 1)) / 2
        a = (np.array(c0, np.float32) * (1 - t[..., None]) + np.array(c1, np.float32) * t[..., None]).round().astype(np.uint8)
        out.append((f"flat{12 + k:02d}_gradient.png", png(Image.fromarray(a))))
    texts = [("This photo is no longer available", (204, 204, 204), (120, 120, 120), (500, 375)),
             ("Image not found", (238, 238, 238), (150, 150, 150), (640, 480)),
             ("404", (250, 250, 250), (180, 180, 180), (400, 300)),
             ("Photo unavailable", (60, 60, 60), (160, 160, 160), (480, 360))]
    for k, (text, bg, fg, size) in enumerate(texts):
        im = _text_centre(Image.new("RGB", size, bg), text, fg)
        if k == 0:  # the camera-icon-like box of the classic placeholder
            d = ImageDraw.Draw(im)
            w, h = size
            d.rectangle((w / 2 - 20, h / 2 - 60, w / 2 + 20, h / 2 - 30), outline=fg, width=2)
        data = dq._jpeg(im, 85) if k % 2 else png(im)
        out.append((f"flat{16 + k:02d}_placeholder.{'jpg' if k % 2 else 'png'}", data))
    return out


# --------------------------------------------------------------------------------------------
# the labelled set


def _thumb(im, side: int = 512):
    if max(im.size) <= side:
        return im
    s = side / max(im.size)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))))


def build_set(folder: Path, items: list, transforms: dict[str, list[Level]] | None = None,
              flats: list[tuple[str, bytes]] | None = None, seed: int = SEED) -> list:
    """Write originals, distractors, copies and flat images into ``folder`` (flat). Deterministic.

    ``items``: :class:`dedup_quality.Item` (``label``, ``data``, ``ext``, ``role``). Returns one
    :class:`dedup_quality.Truth` per file (role original | distractor | copy | flat), in a
    fixed order; the group of a copy is its original's."""
    transforms = TRANSFORMS if transforms is None else transforms
    flats = flat_images(seed) if flats is None else flats
    folder.mkdir(parents=True, exist_ok=True)
    pics = {}  # group -> small RGB version, for collages

    def pic(g: int):
        if g not in pics:
            pics[g] = _thumb(dq.to_rgb(items[g].data))
        return pics[g]

    truth: list = []
    n_orig = 0
    for g, it in enumerate(items):
        stem = f"g{g:04d}"
        if it.role == "distractor":
            name = f"{stem}_dist{it.ext}"
            (folder / name).write_bytes(it.data)
            truth.append(dq.Truth(name, g, "distractor", source=it.label))
            continue
        name = f"{stem}_0orig{it.ext}"
        (folder / name).write_bytes(it.data)
        truth.append(dq.Truth(name, g, "original", source=it.label))
        base = dq._clamp(dq.to_rgb(it.data), MAX_SIDE)
        for j, (tname, levels) in enumerate(transforms.items()):
            lv = levels[(n_orig + j) % len(levels)]
            rng = random.Random(f"{seed}:{it.label}:{tname}:{lv.name}")
            pool = [k for k in range(len(items)) if k != g]

            used: list[int] = []

            def others(k: int, rng=rng, pool=pool, used=used) -> list:
                used.extend(rng.sample(pool, min(k, len(pool))))
                return [pic(x) for x in used[-k:]]

            safe = "".join(c if c.isalnum() or c in ".-" else "" for c in lv.name)
            cname = f"{stem}_{tname}_{safe}.jpg"
            (folder / cname).write_bytes(dq._jpeg(lv.fn(base, rng, others), lv.quality))
            truth.append(dq.Truth(cname, g, "copy", tname, lv.name, it.label, tuple(used)))
        n_orig += 1
    for k, (name, data) in enumerate(flats):
        (folder / name).write_bytes(data)
        truth.append(dq.Truth(name, len(items) + k, "flat", source=f"flat:{name}"))
    return truth


# --------------------------------------------------------------------------------------------
# scoring


def _edges(n: int, a, b) -> dq.Graph:
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return dq.Graph(n, a, b, np.array(["pair"] * len(a)), np.zeros(len(a)))


def flat_merges(truth: list, label: np.ndarray) -> dict:
    """Pairs of flat images in one cluster, and flat images in any cluster of ≥ 2 files."""
    flat = np.array([t.role == "flat" for t in truth])
    lab = np.asarray(label)
    fl = lab[flat]
    _, counts = np.unique(fl, return_counts=True)
    size = np.bincount(lab[lab >= 0]) if (lab >= 0).any() else np.zeros(0, int)
    return {"flat_flat_pairs": dq._pairs(counts),
            "flat_in_cluster": int(sum(size[x] > 1 for x in fl if x >= 0))}


def score(g: dq.Graph, truth: list, ignore=()) -> dict:
    """Every figure of one prediction (pairs = ``g``'s edges; clusters = their components).

    - ``all``: every pair of every file (:func:`dedup_quality.pair_scores`);
    - ``full`` / ``partial``: the files without copies plus the copies of that group's
      transforms, clusters recomputed on those files;
    - ``transforms``: per transform T, the files without copies plus T's copies;
      ``recall`` = found original–copy pairs / copies; ``precision`` of the pairs that
      involve one of T's copies, a pair across two pictures already merged without any copy
      not counted again (:func:`dedup_quality.copy_scores`);
    - ``flat``: :func:`flat_merges` over all files.
    """
    ignore = list(ignore)
    n = len(truth)
    group = np.array([t.group for t in truth], np.int64)
    base = np.array([t.role != "copy" for t in truth])
    tr = np.array([t.transform or "" for t in truth])
    lab_all = dq.components(n, g.a, g.b)
    out = {"all": dq.pair_scores(group, lab_all, ignore)}
    for name, names in (("full", FULL), ("partial", PARTIAL)):
        nodes = base | np.isin(tr, names)
        out[name] = dq.pair_scores(group, dq.components(n, g.a, g.b, nodes), ignore)
    # groups related among the files without copies (merged there, or an ambiguous pair)
    node_of = {int(group[k]): int(k) for k in np.flatnonzero(base)}
    va = np.array([node_of[x] for x, y in ignore if x in node_of and y in node_of], np.int64)
    vb = np.array([node_of[y] for x, y in ignore if x in node_of and y in node_of], np.int64)
    lab0 = dq.components(n, np.r_[g.a, va], np.r_[g.b, vb], base)
    related = np.array([lab0[node_of[int(x)]] for x in group], np.int64)
    per: dict = {}
    for name in dict.fromkeys(t.transform for t in truth if t.transform):
        focus = tr == name
        lab = dq.components(n, g.a, g.b, base | focus)
        s = dq.copy_scores(group, lab, focus, related)
        per[name] = {"recall": s["recall"], "precision": s["precision"], "copies": int(focus.sum()),
                     "found": s["tp"], "false_pairs": s["fp"], "group": "partial" if name in PARTIAL else "full"}
    out["transforms"] = per
    out["flat"] = flat_merges(truth, lab_all)
    sizes = np.bincount(lab_all)
    out["largest_cluster"] = int(sizes.max()) if len(sizes) else 0
    return out


CONTAINMENT_TRANSFORMS = ("crop50", "collage", "frame", "small_in_border", "crop70", "mirror_crop")


def containment_scores(rows: list[tuple[int, int, dict]], truth: list, ignore=()) -> dict:
    """Directed containment rows (container node, contained node, region JSON) against the truth.

    A row is right when both files show one picture (or an ambiguous pair of pictures), or when
    one is a collage and the other shows a picture pasted into it (``Truth.inside``). Per
    transform of :data:`CONTAINMENT_TRANSFORMS`: ``recall`` = copies with a row to their
    original; ``direction`` = of those, the share whose container is the right one (the
    original for a crop, the copy for a collage, a frame or a small copy in a border);
    ``with_region`` = the share whose row has a polygon and a bbox.
    """
    group = [t.group for t in truth]
    amb = {(x, y) for x, y in ignore} | {(y, x) for x, y in ignore}

    def right(x: int, y: int) -> bool:
        gx, gy = group[x], group[y]
        return gx == gy or (gx, gy) in amb or gy in truth[x].inside or gx in truth[y].inside

    good = sum(right(x, y) for x, y, _ in rows)
    by_pair = {}
    for x, y, reg in rows:
        by_pair[(min(x, y), max(x, y))] = (x, reg)
    orig = {t.group: k for k, t in enumerate(truth) if t.role == "original"}
    per = {}
    for name in CONTAINMENT_TRANSFORMS:
        copies = [k for k, t in enumerate(truth) if t.transform == name]
        if not copies:
            continue
        hits = [(k, by_pair.get((min(k, orig[group[k]]), max(k, orig[group[k]])))) for k in copies]
        found = [(k, h) for k, h in hits if h is not None]
        copy_contains = name not in ("crop50", "crop70", "mirror_crop")
        direction = sum((h[0] == k) == copy_contains for k, h in found)
        region = sum(bool(h[1].get("polygon")) and bool(h[1].get("bbox")) for _, h in found)
        per[name] = {"copies": len(copies), "recall": round(len(found) / len(copies), 4),
                     "direction": round(direction / len(found), 4) if found else None,
                     "with_region": round(region / len(found), 4) if found else None}
    partial = [k for k, t in enumerate(truth) if t.transform in ("crop50", "collage", "frame")]
    hit = sum((min(k, orig[group[k]]), max(k, orig[group[k]])) in by_pair for k in partial)
    return {"rows": len(rows), "precision": round(good / len(rows), 4) if rows else None,
            "partial_recall": round(hit / len(partial), 4) if partial else None, "transforms": per}


def brief(s: dict) -> dict:
    """The headline figures of one :func:`score` result."""
    r = lambda x: round(x, 4)
    return {"precision": r(s["all"]["precision"]), "recall": r(s["all"]["recall"]), "f1": r(s["all"]["f1"]),
            "full_precision": r(s["full"]["precision"]), "full_recall": r(s["full"]["recall"]),
            "partial_precision": r(s["partial"]["precision"]), "partial_recall": r(s["partial"]["recall"]),
            "flat_flat_pairs": s["flat"]["flat_flat_pairs"], "largest_cluster": s["largest_cluster"],
            **({"containment_precision": s["containment"]["precision"],
                "containment_partial_recall": s["containment"]["partial_recall"]} if "containment" in s else {})}


# --------------------------------------------------------------------------------------------
# systems


def parse_curate_config(text: str) -> tuple[str | None, dict]:
    """``[NAME=]JSON`` → (name or None, {section: {field: value}})."""
    name = None
    if not text.lstrip().startswith("{") and "=" in text:
        name, text = text.split("=", 1)
    conf = json.loads(text)
    if not isinstance(conf, dict) or not all(isinstance(v, dict) for v in conf.values()):
        raise SystemExit(f"--curate-config wants {{section: {{field: value}}}}, got {text!r}")
    return name, conf


def curate_config(folder: Path, overrides: dict, num_workers: int = 2):
    """The default config, one plain-folder source, no rule packs, then ``overrides``."""
    from curate import api

    cfg = api.with_overrides(dq.bench_config(folder, num_workers), "flag", {"packs": []})
    cfg = api.with_overrides(cfg, "dedup", {"containment": True})  # the shipped default (dedup_quality turns it off)
    for section, vals in overrides.items():
        cfg = api.with_overrides(cfg, section, vals)
    return cfg


def default_name(cfg) -> str:
    return f"curate:{cfg.embed.model}@cos{cfg.dedup.embedding_min_cosine}/ph{cfg.dedup.phash_max_distance}"


def run_curate(work: Path, folder: Path, truth: list, overrides: dict, name: str | None, ignore, sweep: bool,
               num_workers: int, cosine_sweep: list[float], phash_sweep: list[int]) -> dict:
    """One curate config end to end in its own workspace, then its threshold sweeps."""
    index = {t.file: k for k, t in enumerate(truth)}
    cfg = curate_config(folder, overrides, num_workers)
    name = name or default_name(cfg)
    ws = work / ("ws_" + "".join(c if c.isalnum() else "_" for c in name))
    if ws.exists():
        shutil.rmtree(ws)
    log(f"{name}: ingest → hash → embed → dedup on {len(truth)} files")
    t0 = time.perf_counter()
    stages = dq.prepare(ws, cfg)
    t1 = time.perf_counter()
    g, counters = dq.run_dedup(ws, cfg, index)
    wall = time.perf_counter() - t0
    contained = read_containment(ws, index)
    stages["dedup"] = {"seconds": round(time.perf_counter() - t1, 2), "counters": counters}
    res = {"system": "curate", "name": name, "overrides": overrides,
           "config": {"embed": cfg.embed.model_dump(mode="json", include={"model", "preprocess", "trim_border"}),
                      "dedup": cfg.dedup.model_dump(mode="json", include={
                          "sha256", "phash_max_distance", "phash_min_side", "phash_min_quality", "phash_mirror",
                          "embedding_min_cosine", "embedding_min_side", "containment",
                          "containment_merges_clusters"})},
           "seconds": round(wall, 2), "images_per_s": round(len(truth) / wall, 2), "stages": stages,
           "scores": score(g, truth, ignore)}
    if getattr(cfg.dedup, "containment", False):
        res["scores"]["containment"] = containment_scores(contained, truth, ignore)
    res["scores"]["keeper"] = keeper_scores(ws, truth, cfg.dedup.keeper_rule)
    log(f"  {name}: {wall:.0f} s, {brief(res['scores'])}")
    if sweep and getattr(cfg.dedup, "containment", False):
        log("  sweeps skipped: containment is on (each dedup run verifies features again)")
    elif sweep:
        res["sweeps"] = curate_sweeps(ws, cfg, truth, index, ignore, cosine_sweep, phash_sweep)
    return res


#: the keeper rule before issue #16's trainer criteria (colour and border only, then pixels): the control
OLD_KEEPER_RULE = ["image_ok", "not_flagged", "has_caption", "colour", "no_border", "pixels", "aesthetic",
                   "similarity", "smallest_id"]


def keeper_scores(ws: Path, truth: list, rule: list[str], control: list[str] = OLD_KEEPER_RULE) -> dict:
    """Which copy each cluster keeps, under the run's keeper rule and under ``control`` (ranked
    read-only over the same clusters). Counted over clusters holding one original and only
    copies of it: ``original_kept`` (share), and per transform the clusters that kept that copy
    instead of the original (a mirror or a colour change is as good a picture; a crop, a meme, a
    frame, a JPEG at q30 or a thumbnail is not)."""
    import duckdb

    from curate.stages.dedup.keeper import ranked_sql

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        key = dict(con.execute("SELECT sample_id, key FROM samples").fetchall())
        members = con.execute("SELECT sample_id, cluster_id FROM clusters").fetchall()
        ranked = {name: dict(con.execute(
            f"SELECT cluster_id, sample_id FROM ({ranked_sql(r, 'clusters', None)}) WHERE keeper_rank = 1").fetchall())
            for name, r in (("rule", rule), ("control", control))}
    finally:
        con.close()
    by_file = {t.file: t for t in truth}
    groups: dict[int, list] = {}
    for sid, cid in members:
        groups.setdefault(cid, []).append(by_file.get(key[sid]))
    out: dict[str, Any] = {}
    for name, keepers in ranked.items():
        n = kept = 0
        won: dict[str, int] = {}
        for cid, ts in groups.items():
            if None in ts or len({t.group for t in ts}) != 1 or sum(t.role == "original" for t in ts) != 1 \
                    or any(t.role not in ("original", "copy") for t in ts):
                continue
            n += 1
            k = by_file[key[keepers[cid]]]
            if k.role == "original":
                kept += 1
            else:
                won[k.transform] = won.get(k.transform, 0) + 1
        out[name] = {"clusters": n, "original_kept": round(kept / max(n, 1), 4),
                     "copy_kept": dict(sorted(won.items(), key=lambda kv: -kv[1]))}
    out["rule"]["keeper_rule"], out["control"]["keeper_rule"] = list(rule), list(control)
    return out


def keeper_lines(name: str, k: dict) -> str:
    """The keeper paragraph of the docs section: :func:`keeper_scores` under the run's rule and
    the control, in one run."""
    def won(d: dict) -> str:
        return ", ".join(f"{t} {n}" for t, n in d["copy_kept"].items()) or "none"
    return (f"{name}: keeper (which copy stays; over the {k['rule']['clusters']} clusters holding one original "
            f"and only its copies): the original is kept in {k['rule']['original_kept']:.1%} of them with the "
            f"default `keeper_rule` ({' > '.join(k['rule']['keeper_rule'])}); clusters keeping a copy instead, by "
            f"transform: {won(k['rule'])}. Control, the same clusters ranked by the rule before the trainer "
            f"criteria ({' > '.join(k['control']['keeper_rule'])}): {k['control']['original_kept']:.1%}; "
            f"{won(k['control'])}.")


def read_containment(ws: Path, index: dict[str, int]) -> list[tuple[int, int, dict]]:
    """The workspace's containment rows as (container node, contained node, region JSON)."""
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        key = dict(con.execute("SELECT sample_id, key FROM samples").fetchall())
        rows = con.execute("SELECT container_id, contained_id, region FROM containment").fetchall()
    finally:
        con.close()
    return [(index[key[a]], index[key[b]], json.loads(r)) for a, b, r in rows]


def curate_sweeps(ws: Path, cfg, truth: list, index: dict, ignore, cosine_sweep: list[float],
                  phash_sweep: list[int]) -> dict:
    """``dedup`` alone at each threshold, one signal at a time (sha256 on): the embedding
    cosine from strict to loose and pHash bits from strict to loose; a sweep stops once the
    largest cluster holds over a quarter of the files (every looser point would be worse and
    dedup's cluster bookkeeping grows with the square of it)."""
    from curate import api

    out: dict = {"embedding_min_cosine": [], "phash_max_distance": []}
    cap = len(truth) // 4
    runs = [("embedding_min_cosine", sorted(cosine_sweep, reverse=True), lambda v: {"embedding_min_cosine": v, "phash_max_distance": None}),
            ("phash_max_distance", sorted(phash_sweep), lambda v: {"phash_max_distance": v, "embedding_min_cosine": None})]
    for key, values, over in runs:
        if key == "embedding_min_cosine" and cfg.dedup.embedding_min_cosine is None:
            continue
        for v in values:
            t0 = time.perf_counter()
            o = over(v)
            if getattr(cfg.dedup, "containment", False) and not getattr(cfg.dedup, "containment_merges_clusters", False):
                o["containment"] = False  # no dup_edges from it: the same pairs, minus its cost
            g, _ = dq.run_dedup(ws, api.with_overrides(cfg, "dedup", o), index)
            s = score(g, truth, ignore)
            point = {key: v, **brief(s), "transform_recall": {k: x["recall"] for k, x in s["transforms"].items()},
                     "seconds": round(time.perf_counter() - t0, 2)}
            out[key].append(point)
            log(f"    {key}={v}: P {point['precision']} R {point['recall']} F1 {point['f1']} "
                f"(full R {point['full_recall']}, flat pairs {point['flat_flat_pairs']}, largest {point['largest_cluster']})")
            if s["largest_cluster"] > cap:
                break
    for key in list(out):
        if out[key]:
            out["best_f1_" + key] = max(out[key], key=lambda p: (p["f1"], p[key]))
    return out


FASTDUP_SCRIPT = r"""
import json, os, sys, time
os.environ.setdefault("SENTRY_OPT_OUT", "1")
t0 = time.perf_counter()
import fastdup
input_dir, work_dir, out = sys.argv[1:4]
os.chdir(work_dir)
fd = fastdup.create(work_dir=work_dir, input_dir=input_dir)
fd.run(verbose=False)
t1 = time.perf_counter()
sim = fd.similarity()
cc = fd.connected_components()[0]
base = lambda p: os.path.basename(str(p))
res = {"version": fastdup.__version__, "seconds_in_process": t1 - t0,
       "threshold": fd.config["fastdup_kwargs"]["threshold"],
       "nearest_neighbors_k": fd.config["fastdup_kwargs"]["nearest_neighbors_k"],
       "ccthreshold": fd.config["fastdup_kwargs"]["turi_param"]["ccthreshold"],
       "model_path": os.path.basename(fd.config.get("model_path", "")), "d": fd.config.get("d"),
       "pairs": [] if sim is None or len(sim) == 0 else
                [[base(a), base(b), float(d)] for a, b, d in zip(sim["filename_from"], sim["filename_to"], sim["distance"])],
       "components": [] if cc is None or len(cc) == 0 else
                     [[base(f), int(c)] for f, c in zip(cc["filename"], cc["component_id"])]}
try:
    bad = fd.invalid_instances()
    res["invalid"] = [] if bad is None else sorted(base(f) for f in bad["filename"])
except Exception as e:
    res["invalid"] = repr(e)
json.dump(res, open(out, "w"))
"""


def find_fastdup_python(given: str | None) -> tuple[str | None, str]:
    """The interpreter that runs fastdup, or None and why not."""
    cands = [given] if given else [sys.executable, os.environ.get("CURATE_FASTDUP_PYTHON")]
    why = []
    for py in filter(None, cands):
        try:
            r = subprocess.run([py, "-c", "import fastdup"], check=False, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            why.append(f"{py}: {e}")
            continue
        if r.returncode == 0:
            return py, ""
        why.append(f"{py}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return None, ("fastdup is not importable (" + "; ".join(why) + "). It pins numpy<2, Pillow==10.3.0 and "
                  "scikit-learn==1.5.0, so it goes in a virtualenv of its own: python -m venv V && V/bin/pip install "
                  "fastdup, then --fastdup-python V/bin/python")


def run_fastdup(py: str, folder: Path, work: Path, truth: list, ignore) -> dict:
    """fastdup with its defaults; clusters = components of its similarity pairs at its connected
    components threshold (checked against its own connected_components output)."""
    index = {t.file: k for k, t in enumerate(truth)}
    wd = work / "fastdup"
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    script = work / "run_fastdup.py"
    script.write_text(FASTDUP_SCRIPT)
    out = work / "fastdup.json"
    log(f"fastdup: create(work_dir, input_dir).run() on {len(truth)} files")
    t0 = time.perf_counter()
    r = subprocess.run([py, str(script), str(folder), str(wd), str(out)], check=False, capture_output=True, text=True,
                       env={**os.environ, "SENTRY_OPT_OUT": "1"})
    wall = time.perf_counter() - t0
    if r.returncode != 0 or not out.is_file():
        return {"system": "fastdup", "error": f"exit {r.returncode}: {r.stderr[-2000:]}"}
    raw = json.loads(out.read_text())
    n = len(truth)
    pairs = [(index[a], index[b], d) for a, b, d in raw["pairs"] if a in index and b in index]
    cc = float(raw["ccthreshold"])
    graphs = {}
    for thr in sorted({cc, float(raw["threshold"]), 0.92, 0.94, 0.98}):
        sel = [(a, b) for a, b, d in pairs if d >= thr]
        graphs[thr] = _edges(n, [p[0] for p in sel], [p[1] for p in sel])
    own = np.full(n, -1, np.int64)
    for f, c in raw["components"]:
        if f in index:
            own[index[f]] = c
    single = own < 0
    own[single] = own.max(initial=0) + 1 + np.arange(single.sum())
    mine = dq.components(n, graphs[cc].a, graphs[cc].b)
    res = {"system": "fastdup", "name": f"fastdup {raw['version']}", "version": raw["version"],
           "config": {"threshold": raw["threshold"], "nearest_neighbors_k": raw["nearest_neighbors_k"],
                      "ccthreshold": cc, "model": raw["model_path"], "dim": raw["d"]},
           "seconds": round(wall, 2), "seconds_in_process": round(raw["seconds_in_process"], 2),
           "images_per_s": round(n / wall, 2),
           "invalid": raw.get("invalid"),
           "components_match_own_connected_components": bool(dq._same_partition(mine, own)),
           "scores": score(graphs[cc], truth, ignore),
           "own_connected_components_scores": dq.pair_scores(np.array([t.group for t in truth]), own, ignore),
           "similarity_sweep": {str(t): brief(score(g, truth, ignore)) for t, g in graphs.items()}}
    log(f"  fastdup: {wall:.0f} s, {brief(res['scores'])}")
    return res


def run_imagededup(folder: Path, truth: list, ignore, workers: int = 2) -> dict:
    import logging

    from imagededup.methods import PHash

    index = {t.file: k for k, t in enumerate(truth)}
    log(f"imagededup: PHash().find_duplicates(max_distance_threshold=10) on {len(truth)} files")
    logging.disable(logging.INFO)
    try:
        t0 = time.perf_counter()
        found = PHash(verbose=False).find_duplicates(image_dir=folder, max_distance_threshold=10,
                                                     num_enc_workers=workers, num_dist_workers=workers)
        wall = time.perf_counter() - t0
    finally:
        logging.disable(logging.NOTSET)
    pairs = {(min(index[k], index[v]), max(index[k], index[v])) for k, vs in found.items() for v in vs}
    g = _edges(len(truth), [p[0] for p in pairs], [p[1] for p in pairs])
    res = {"system": "imagededup", "name": "imagededup PHash (10 bits)",
           "config": {"max_distance_threshold": 10}, "seconds": round(wall, 2),
           "images_per_s": round(len(truth) / wall, 2), "scores": score(g, truth, ignore)}
    log(f"  imagededup: {wall:.0f} s, {brief(res['scores'])}")
    return res


# --------------------------------------------------------------------------------------------
# report


def headline(res: dict) -> dict:
    out = {}
    for s in res["systems"]:
        if "error" in s or "skipped" in s:
            out[s.get("name", s["system"])] = s.get("error") or s.get("skipped")
            continue
        out[s["name"]] = {**brief(s["scores"]), "images_per_s": s["images_per_s"]}
    return out


def _r(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def render_docs(res: dict) -> str:
    ok = [s for s in res["systems"] if "scores" in s]
    ds = res["dataset"]
    lines = [SECTION, "",
             (f"`{res['command']}` — {ds['files']} files: {ds['originals']} real originals "
             f"(short side ≥ 64 px, from the `--data` folder via `dedup_quality.collect_items`), one copy each per "
             f"transform ({len(TRANSFORMS)} transforms, {ds['copies']} copies), {ds['distractors']} distractors "
             f"(smaller real images, no copies) and {ds['flat']} flat images (solid colours, solid + JPEG or pixel "
             f"noise, gradients, \"no longer available\" placeholders; none a copy of another). "
             f"Machine: {res['machine']['cpus']} CPUs, shared with other work (speeds are indicative). "
             f"Total {res['seconds_total']:.0f} s."), "",
             ("Clusters are the connected components of each system's pairs; a positive pair is two files of one "
             "original. *All*: every pair of every file. *Full-image*: the files without copies plus the copies of "
             f"{', '.join(FULL)}. *Partial*: the same plus the copies of {', '.join(PARTIAL)}. "
             "*Flat pairs*: pairs of flat images in one cluster (must be 0). images/s: files / wall time of the "
             "whole system on the folder (curate: ingest + hash + embed + dedup in a fresh workspace). "
             "curate runs with its shipped dedup defaults unless a config says otherwise: with `containment` on, "
             "verified containments covering ≥ `verified_min_fraction` of the container's picture are duplicate "
             "edges (signal `verified`) and the partial ones stay containment rows, scored in the table after "
             "the next. Overall P counts every wrong pair of every file: one false merge of two "
             "originals costs up to 18 × 18 pairs, so it is far below the per-transform precisions, which leave out "
             "merges already made without any copy."), "",
             "| system | P | R | F1 | full-image P | full-image R | partial R | flat pairs | largest cluster | images/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in ok:
        b = brief(s["scores"])
        lines.append(f"| {s['name']} | {_r(b['precision'])} | {_r(b['recall'])} | {_r(b['f1'])} | "
                     f"{_r(b['full_precision'])} | {_r(b['full_recall'])} | {_r(b['partial_recall'])} | "
                     f"{b['flat_flat_pairs']} | {b['largest_cluster']} | {s['images_per_s']:.1f} |")
    for s in res["systems"]:
        if "scores" not in s:
            lines.append(f"\n{s.get('name', s['system'])}: not measured — {s.get('error') or s.get('skipped')}")
    for s in ok:
        c = s["scores"].get("containment")
        if not c:
            continue
        lines += ["", (f"{s['name']}: containment rows (directed, with the region; curate.stages.dedup.containment): "
                  f"{c['rows']} rows, precision {_r(c['precision'])} (a row is right when both files show one "
                  "picture, or one is a collage with the other's picture in a cell); recall of crop to 50 %, "
                  f"collage and frame together {_r(c['partial_recall'])}. Per transform: a row between the copy "
                  "and its original / the container is the right one / the row has its polygon and bbox:"), "",
                  "| transform | copies | recall | right direction | with region |", "|---|---|---|---|---|"]
        for t, x in c["transforms"].items():
            lines.append(f"| {t} | {x['copies']} | {_r(x['recall'])} | {_r(x['direction'])} | {_r(x['with_region'])} |")
    for s in ok:
        k = s["scores"].get("keeper")
        if not k:
            continue
        lines += ["", keeper_lines(s["name"], k)]
    lines += ["", ("Recall of original–copy pairs per transform (each transform scored with only its own copies "
              "present; precision of the pairs involving those copies in brackets):"), "",
              "| transform | level(s) | group | " + " | ".join(s["name"] for s in ok) + " |",
              "|---|---|---|" + "---|" * len(ok)]
    for t, levels in TRANSFORMS.items():
        cells = []
        for s in ok:
            x = s["scores"]["transforms"].get(t)
            cells.append("–" if x is None else f"{x['recall']:.3f} ({x['precision']:.2f})")
        lines.append(f"| {t} | {', '.join(lv.name for lv in levels)} | {'partial' if t in PARTIAL else 'full'} | "
                     + " | ".join(cells) + " |")
    for s in ok:
        if s["system"] == "fastdup":
            c = s["config"]
            lines += ["", f"fastdup {s['version']} ran with its defaults: model `{c['model']}` ({c['dim']}-d), "
                      f"{c['nearest_neighbors_k']} nearest neighbours per image, similarity pairs kept at ≥ "
                      f"{c['threshold']}, connected components at ≥ {c['ccthreshold']} (the threshold scored "
                      f"above; our components of its pairs match its own `connected_components()`: "
                      f"{s['components_match_own_connected_components']}). It ran in its own virtualenv: it pins "
                      "numpy < 2, Pillow 10.3.0 and scikit-learn 1.5.0. Its pairs at other cosine thresholds "
                      "(still only 2 neighbours per image): " + "; ".join(
                          f"{t}: P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f}, flat pairs {v['flat_flat_pairs']}"
                          for t, v in s["similarity_sweep"].items())]
    for s in ok:
        sw = s.get("sweeps")
        if not sw:
            continue
        lines += ["", f"{s['name']}: threshold sweep (`dedup` re-run alone per point, sha256 on, one other signal):", "",
                  "| signal | threshold | P | R | F1 | full-image R | partial R | flat pairs |", "|---|---|---|---|---|---|---|---|"]
        for key in ("embedding_min_cosine", "phash_max_distance"):
            for p in sw.get(key, []):
                lines.append(f"| {key} | {p[key]} | {_r(p['precision'])} | {_r(p['recall'])} | {_r(p['f1'])} | "
                             f"{_r(p['full_recall'])} | {_r(p['partial_recall'])} | {p['flat_flat_pairs']} |")
    lines += ["", "Transforms: " + "; ".join(f"**{t}** ({', '.join(lv.name for lv in lv_)})" for t, lv_ in TRANSFORMS.items())
              + ". rotate: ±10° about the centre with `expand=False` (same canvas, corners cut, black fill). "
              "crop: a random position. perspective: each corner moved 0.5–1× the level's fraction of the side in a "
              "random direction (`cv2.warpPerspective`, black outside). collage: the picture keeps its size over 40 % "
              "of the canvas (a corner block), other originals/distractors fill the other cells of a 2×2 or 3×3 grid. "
              "small_in_border: a thumbnail at 25/33/40 % of the area on a plain colour. frame: browser (title bar, "
              "tab, address bar, status line) or phone (status bar, app bar, caption lines, navigation bar) chrome "
              "around the picture at its own size. Levels cycle over the originals; seeds are fixed. "
              "Results: `benchmarks/results/copy_detection.json`.", ""]
    return "\n".join(lines)


def write_docs(res: dict, path: Path = DOCS) -> None:
    """Replace (or append) this benchmark's section of docs/BENCHMARKS.md, nothing else."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    new = render_docs(res)
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + new + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + new
    path.write_text(text)


# --------------------------------------------------------------------------------------------


COSINE_SWEEP = [0.97, 0.95, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5]
PHASH_SWEEP = [0, 4, 6, 8, 10, 12, 14, 16]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for copy_detection.json")
    ap.add_argument("--work", type=Path, default=None, help="build the set and workspaces here and keep them")
    ap.add_argument("--limit", type=int, default=None, help="about N originals (quick runs)")
    ap.add_argument("--curate-config", action="append", default=None, metavar="[NAME=]JSON",
                    help="curate config overrides {section: {field: value}}; repeatable (default: the default config)")
    ap.add_argument("--no-sweep", action="store_true", help="no threshold sweeps")
    ap.add_argument("--cosine-sweep", type=lambda s: [float(x) for x in s.split(",")], default=COSINE_SWEEP)
    ap.add_argument("--phash-sweep", type=lambda s: [int(x) for x in s.split(",")], default=PHASH_SWEEP)
    ap.add_argument("--fastdup-python", default=None, help="interpreter with fastdup installed (default: this one, "
                    "else $CURATE_FASTDUP_PYTHON)")
    ap.add_argument("--no-fastdup", action="store_true")
    ap.add_argument("--no-imagededup", action="store_true")
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--write-docs", action="store_true", help=f"write the section '{SECTION}' of docs/BENCHMARKS.md")
    ap.add_argument("--docs-only", action="store_true", help="only rewrite that section from --out/copy_detection.json")
    a = ap.parse_args(argv)
    if a.docs_only:
        write_docs(json.loads((a.out / "copy_detection.json").read_text()))
        return 0
    if not (a.data / "images-captioned").is_dir():
        raise SystemExit(f"{a.data} does not hold the shared data (images-captioned/); pass --data")
    t_start = time.perf_counter()
    with dq.bench_workspace(a.work, "copy_detection_") as work:
        items, notes = dq.collect_items(a.data, limit=a.limit)
        folder = work / "images"
        if folder.exists():
            shutil.rmtree(folder)
        t0 = time.perf_counter()
        truth = build_set(folder, items)
        ignore = dq.ignore_groups(truth)
        ds = {"files": len(truth), "originals": sum(t.role == "original" for t in truth),
              "copies": sum(t.role == "copy" for t in truth), "distractors": sum(t.role == "distractor" for t in truth),
              "flat": sum(t.role == "flat" for t in truth), "build_seconds": round(time.perf_counter() - t0, 1),
              "notes": dq._jsonable(notes), "ambiguous_pairs_not_scored": len(ignore)}
        log(f"set: {ds['files']} files ({ds['originals']} originals, {ds['copies']} copies, {ds['distractors']} "
            f"distractors, {ds['flat']} flat) in {ds['build_seconds']} s")
        systems = []
        for text in a.curate_config or ["{}"]:
            name, over = parse_curate_config(text)
            try:
                systems.append(run_curate(work, folder, truth, over, name, ignore, not a.no_sweep, a.num_workers,
                                          a.cosine_sweep, a.phash_sweep))
            except Exception as e:  # noqa: BLE001  (a config that cannot run is reported, the others go on)
                log(f"  curate config {text!r} failed: {e!r}")
                systems.append({"system": "curate", "name": name or text, "error": repr(e)})
        if not a.no_fastdup:
            py, why = find_fastdup_python(a.fastdup_python)
            if py is None:
                log(f"fastdup skipped: {why}")
                systems.append({"system": "fastdup", "name": "fastdup", "skipped": why})
            else:
                systems.append(run_fastdup(py, folder, work, truth, ignore))
        if not a.no_imagededup:
            systems.append(run_imagededup(folder, truth, ignore, a.num_workers))
    res = {"dataset": ds, "partial_transforms": list(PARTIAL), "full_transforms": list(FULL),
           "transforms": {t: [lv.name for lv in lvs] for t, lvs in TRANSFORMS.items()},
           "systems": systems, "seconds_total": round(time.perf_counter() - t_start, 1),
           "machine": dq.machine(),
           "command": "python benchmarks/copy_detection.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "truth": {"columns": ["file", "group", "role", "transform", "level", "source", "inside"],
                     "rows": [[t.file, t.group, t.role, t.transform, t.level, t.source, list(t.inside)]
                              for t in truth]}}
    res["headline"] = headline(res)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "copy_detection.json").write_text(json.dumps(res, separators=(",", ":"), default=str) + "\n")
    if a.write_docs:
        write_docs(res)
    print(json.dumps(res["headline"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
