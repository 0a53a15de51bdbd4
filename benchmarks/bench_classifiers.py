"""Speed and accuracy of the rule-pack classifiers (curate/classifiers.py) on real photos.

- **OCR** (RapidOCR 1.4.4): real photos from ``../shared/data`` (or ``examples/sample``),
  each clean and with stock-agency watermarks drawn on it with Pillow's bundled font in four
  styles (``strip``: a dark bar along the bottom with "shutterstock.com · <id>" in white;
  ``center``: "shutterstock" in half-transparent white across the middle; ``corner``:
  "© Dreamstime.com" small in a corner; ``tiled``: "alamy" repeated at 30° in translucent
  white). For each ``max_side`` (and for RapidOCR's own defaults, which upscale every image to
  a 736 px short side): seconds per image, watermark recall (the ``ocr_text`` rule of the
  shipped stock-watermark pack hits the watermarked copy) and false hits on the clean photos.
  Pixels go through curate's loader and downscaler exactly as in the flag stage.
- **NudeNet** (3.4.2): milliseconds per image on the same clean photos, and their detections.

Usage::

    python benchmarks/bench_classifiers.py [--photos N] [--sides 0,1024,640,480,320] [--out FILE]

``0`` in ``--sides`` means RapidOCR's defaults on the full-size image. stdout: one JSON object.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def photos(n: int) -> list[Path]:
    """Real photos (no text in them), short side ≥ 300 px, in a fixed order."""
    base = SHARED if SHARED.is_dir() else ROOT / "examples" / "sample"
    names = ["images-captioned/skimage/astronaut.png", "images-captioned/skimage/chelsea.png",
             "images-captioned/skimage/coffee.png", "images-captioned/skimage/rocket.jpg",
             "images-captioned/sklearn/china.jpg", "images-captioned/sklearn/flower.jpg",
             "images-captioned/matplotlib/grace_hopper.jpg", "images-captioned/data-juicer/cat.jpg",
             "images-captioned/data-juicer/img2.jpg", "images-captioned/data-juicer/img3.jpg",
             "images-captioned/data-juicer/blip.jpg", "images-captioned/skimage/horse.png"]
    names += sorted(str(p.relative_to(base)) for p in (base / "near-dup-groups/imagededup/base_images").glob("*.jpg"))
    out = [base / p for p in names if (base / p).is_file()]
    return out[:n]


def watermark(rgb, style: str, seed: int = 0):
    """Draw one stock-agency watermark style on an RGB PIL image (returns a new image)."""
    from PIL import Image, ImageDraw, ImageFont

    im = rgb.convert("RGBA")
    w, h = im.size
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    if style == "strip":
        bar = max(18, round(h * 0.07))
        d.rectangle([0, h - bar, w, h], fill=(20, 20, 20, 210))
        f = ImageFont.load_default(size=max(11, round(bar * 0.55)))
        d.text((round(w * 0.03), h - bar / 2), f"shutterstock.com · {1_000_000_000 + 7919 * (seed + 1)}",
               font=f, fill=(255, 255, 255, 255), anchor="lm")
    elif style == "center":
        f = ImageFont.load_default(size=max(16, round(w * 0.11)))
        d.text((w / 2, h / 2), "shutterstock", font=f, fill=(255, 255, 255, 128), anchor="mm",
               stroke_width=max(1, round(w * 0.003)), stroke_fill=(80, 80, 80, 90))
    elif style == "corner":
        f = ImageFont.load_default(size=max(11, round(h * 0.04)))
        d.text((w - round(w * 0.02), h - round(h * 0.02)), "© Dreamstime.com", font=f, fill=(255, 255, 255, 220),
               anchor="rd", stroke_width=1, stroke_fill=(0, 0, 0, 160))
    elif style == "tiled":
        f = ImageFont.load_default(size=max(14, round(w * 0.06)))
        tile = Image.new("RGBA", (round(w * 0.4), round(w * 0.12)), (0, 0, 0, 0))
        ImageDraw.Draw(tile).text((tile.size[0] / 2, tile.size[1] / 2), "alamy", font=f,
                                  fill=(255, 255, 255, 110), anchor="mm")
        tile = tile.rotate(30, expand=True, resample=Image.Resampling.BICUBIC)
        for y in range(-tile.size[1] // 2, h, tile.size[1]):
            for x in range(-tile.size[0] // 2, w, tile.size[0]):
                layer.alpha_composite(tile, (max(0, x), max(0, y)))
    else:
        raise ValueError(style)
    return Image.alpha_composite(im, layer).convert("RGB")


STYLES = ("strip", "center", "corner", "tiled")


def jpeg(im) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", quality=90)
    return b.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=12)
    ap.add_argument("--sides", default="0,1024,640,480,320")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from curate.stages.flag import classifiers as C
    from curate.media.images import open_image
    from curate.stages.flag.rules import load_pack, pack_path

    rule = next(r for r in load_pack(pack_path("stock-watermark")).rules if r.kind == "ocr_text")
    pats = [p for p in C.ocr_patterns(rule) if p]
    import duckdb

    con = duckdb.connect()

    def hit(text: str) -> bool:  # the rule's own RE2 patterns, evaluated by DuckDB as the flag stage does
        return any(con.execute("SELECT regexp_matches(nfc_normalize(?), ?)", [text, p]).fetchone()[0] for p in pats)

    files = photos(args.photos)
    cases = []  # (name, style or 'clean', jpeg bytes)
    for k, f in enumerate(files):
        _, im = open_image(f.read_bytes())
        im = im.convert("RGB")
        cases.append((f.name, "clean", jpeg(im)))
        for s in STYLES:
            cases.append((f.name, s, jpeg(watermark(im, s, seed=k))))
    print(f"{len(files)} photos, {len(cases)} images", file=sys.stderr)

    from rapidocr_onnxruntime import RapidOCR

    ocr_results = []
    for side in [int(x) for x in args.sides.split(",")]:
        eng = RapidOCR() if side == 0 else C._ocr_engine(side, 0.5)
        eng(np.zeros((64, 64, 3), np.uint8))  # warm-up
        per_style = {s: [0, 0] for s in ("clean",) + STYLES}
        secs = 0.0
        misses = []
        for name, style, data in cases:
            t0 = time.perf_counter()
            _, im = open_image(data, draft=side or None)
            im = im.convert("RGB")
            if side and max(im.size) > side:
                s = side / max(im.size)
                im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.LANCZOS)
            res, _ = eng(np.ascontiguousarray(np.asarray(im)[..., ::-1]))
            secs += time.perf_counter() - t0
            text = "\n".join(t for _, t, c in (res or []) if c >= 0.5)
            per_style[style][0] += hit(text)
            per_style[style][1] += 1
            if style != "clean" and not hit(text):
                misses.append(f"{name}:{style}: {text[:60]!r}")
        row = {"max_side": side or "rapidocr default (short side ≥ 736)", "s_per_image": round(secs / len(cases), 3),
               "recall": {s: f"{a}/{n}" for s, (a, n) in per_style.items() if s != "clean"},
               "recall_all": round(sum(per_style[s][0] for s in STYLES) / sum(per_style[s][1] for s in STYLES), 3),
               "false_hits_clean": f"{per_style['clean'][0]}/{per_style['clean'][1]}", "misses": misses}
        print(json.dumps({k: v for k, v in row.items() if k != "misses"}), file=sys.stderr)
        ocr_results.append(row)

    det = C.load_classifier("nudenet")
    clean = [data for _, s, data in cases if s == "clean"]
    det.detect(np.zeros((320, 320, 3), np.uint8))
    t0 = time.perf_counter()
    dets = {}
    for (name, s, data) in [c for c in cases if c[1] == "clean"]:
        res, im = open_image(data, draft=C.NUDENET_RESOLUTION)
        rows = C.classify_nudenet(res, im.convert("RGB"))
        dets[name] = {r.label: r.score for r in rows}
    nude_ms = (time.perf_counter() - t0) / len(clean) * 1000

    import importlib.metadata as md

    out = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "onnxruntime": md.version("onnxruntime"), "rapidocr-onnxruntime": md.version("rapidocr-onnxruntime"),
                    "nudenet": md.version("nudenet"), "opencv": md.version("opencv-python-headless")},
        "photos": [f.name for f in files], "ocr": ocr_results,
        "nudenet": {"ms_per_image": round(nude_ms, 1), "scores_on_clean_photos": dets},
    }
    s = json.dumps(out, indent=1, ensure_ascii=False)
    print(s)
    if args.out:
        Path(args.out).write_text(s + "\n")


if __name__ == "__main__":
    main()
