"""Agreement between copy-detection descriptors on pairs (issue #16, probe scoring).

Somepalli et al. (CVPR 2023) call a generation a replication when its SSCD similarity to a
training image exceeds 0.5. curate can score with the int8 ``sscd`` (``sscd_disc_mixup``
quantised) or the distilled ``sscd_distilled`` student: a threshold calibrated on one is not
the other's. This measures, on real image pairs, which threshold of each other descriptor gives
the same decisions as ``sscd`` > 0.5, and how often they agree.

Pairs: every real image of ``images-captioned/`` (short side ≥ 64 px, byte-deduplicated) with
seeded copies (resize, JPEG q30, centre crop 70 % and 50 %, flip, rotation 10°, colour
jitter, grayscale, text overlay, padding, blur) — the positives — and random pairs of
different images — the negatives (``--negatives`` per image). Each descriptor embeds every
image once with preset ``--preset`` (default ``sscd_288``: short side 288, no crop, SSCD's
README).

Usage::

    python benchmarks/descriptor_agreement.py [--shared ../shared/data] [--preset sscd_288]
        [--reference sscd] [--others sscd_distilled] [--limit N] [--out benchmarks/results]

Writes ``descriptor_agreement.json``; prints it; progress on stderr.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.media.images import open_image  # noqa: E402
from curate.models import load_image_model  # noqa: E402


def log(msg: str) -> None:
    print(f"[agreement] {msg}", file=sys.stderr, flush=True)


def originals(shared: Path, limit: int | None) -> list[Image.Image]:
    seen, out = set(), []
    for p in sorted((shared / "images-captioned").rglob("*")):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp"):
            continue
        data = p.read_bytes()
        h = hashlib.sha256(data).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        im = open_image(data)[1]
        if im is None or min(im.size) < 64:
            continue
        out.append(im.convert("RGB"))
        if limit and len(out) >= limit:
            break
    return out


def _jpeg(im: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(im: Image.Image, f: float) -> Image.Image:
    w, h = im.size
    cw, ch = int(w * f), int(h * f)
    return im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def _text(im: Image.Image) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.rectangle((0, int(h * 0.82), w, h), fill=(0, 0, 0))
    d.text((8, int(h * 0.85)), "SALE 50% OFF www.example.com", fill=(255, 255, 255))
    return im


TRANSFORMS = {
    "resize": lambda im: im.resize((max(32, im.width // 2), max(32, im.height // 2))),
    "jpeg30": lambda im: _jpeg(im, 30),
    "crop70": lambda im: _crop(im, 0.7),
    "crop50": lambda im: _crop(im, 0.5),
    "flip": ImageOps.mirror,
    "rotate10": lambda im: im.rotate(10, resample=Image.BICUBIC),
    "jitter": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.3)).enhance(0.6),
    "gray": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "text": _text,
    "pad": lambda im: ImageOps.expand(im, border=max(4, im.width // 8), fill=(255, 255, 255)),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(max(1, im.width // 150))),
}


def embed(name: str, preset: str, images: list[Image.Image]) -> tuple[np.ndarray, float]:
    m = load_image_model(name, "cpu", preset=preset)
    t0 = time.perf_counter()
    vecs = []
    for im in images:  # one at a time: sscd_288 keeps the aspect, so sizes differ
        v = m.forward(np.stack([m.preprocess.pixels(im)]))[0]
        vecs.append(v / np.linalg.norm(v))
    return np.stack(vecs).astype(np.float32), time.perf_counter() - t0


def best_threshold(ref_decision: np.ndarray, sims: np.ndarray) -> dict:
    """The threshold t of ``sims`` whose decisions (sims > t) agree most with ``ref_decision``."""
    cands = np.unique(np.round(sims, 3))
    agree = [(float(np.mean((sims > t) == ref_decision)), float(t)) for t in cands]
    a, t = max(agree, key=lambda x: (x[0], -abs(x[1] - 0.5)))
    dec = sims > t
    return {"threshold": round(t, 3), "agreement": round(a, 4),
            "agreement_at_0_5": round(float(np.mean((sims > 0.5) == ref_decision)), 4),
            "reference_yes_other_no": int(np.sum(ref_decision & ~dec)),
            "reference_no_other_yes": int(np.sum(~ref_decision & dec))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--preset", default="sscd_288")
    ap.add_argument("--reference", default="sscd")
    ap.add_argument("--others", default="sscd_distilled")
    ap.add_argument("--negatives", type=int, default=8, help="random negative pairs per original")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    rng = random.Random(0)
    origs = originals(Path(a.shared), a.limit)
    log(f"{len(origs)} originals, {len(TRANSFORMS)} transforms")
    images = list(origs)
    pairs: list[tuple[int, int, str]] = []
    for i, im in enumerate(origs):
        for tname, fn in TRANSFORMS.items():
            images.append(fn(im))
            pairs.append((i, len(images) - 1, tname))
        for _ in range(a.negatives):
            j = rng.randrange(len(origs) - 1)
            pairs.append((i, j + (j >= i), "different"))
    left = np.array([p[0] for p in pairs])
    right = np.array([p[1] for p in pairs])
    kind = np.array([p[2] for p in pairs])
    sims, seconds = {}, {}
    for name in [a.reference, *a.others.split(",")]:
        v, dt = embed(name, a.preset, images)
        sims[name] = np.einsum("ij,ij->i", v[left], v[right])
        seconds[name] = round(dt, 2)
        log(f"{name}: {len(images)} images in {dt:.1f}s")
    ref = sims[a.reference] > 0.5
    res = {"preset": a.preset, "reference": f"{a.reference} > 0.5", "originals": len(origs), "pairs": len(pairs),
           "positives": int(np.sum(kind != "different")), "negatives": int(np.sum(kind == "different")),
           "embed_seconds": seconds, "reference_rate_by_kind": {}, "others": {}}
    for k in [*TRANSFORMS, "different"]:
        res["reference_rate_by_kind"][k] = round(float(np.mean(ref[kind == k])), 3)
    for name in a.others.split(","):
        s = sims[name]
        out = best_threshold(ref, s)
        out["pearson_r"] = round(float(np.corrcoef(s, sims[a.reference])[0, 1]), 4)
        t = out["threshold"]
        out["rate_by_kind"] = {k: round(float(np.mean(s[kind == k] > t)), 3) for k in [*TRANSFORMS, "different"]}
        res["others"][name] = out
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "descriptor_agreement.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
