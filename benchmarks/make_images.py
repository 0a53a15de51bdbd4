"""Build the benchmark image folder from the real images in ``../shared/data``.

Every real image under ``images-captioned/`` and ``near-dup-groups/`` that Pillow opens is
copied as-is; each one whose short side is at least 160 px is also re-encoded as JPEG at
short sides 160/256/384/512/768 (never upscaled) and qualities 60/75/92, plus a PNG and a WebP
copy at 256 px. The result (about 2,200 files, one flat folder) is a LAION-like mix of
sizes and formats built only from real photographs, logos and icons.

Usage::

    python benchmarks/make_images.py OUT_DIR [--limit N]

Prints one JSON line to stdout: {"folder", "files", "bytes", "by_format"}.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from collections import Counter
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SIDES = (160, 256, 384, 512, 768)
QUALITIES = (60, 75, 92)


def real_images() -> list[Path]:
    """Real image files under shared/data (tricky-images excluded), sorted by path."""
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    out = []
    for sub in ("images-captioned", "near-dup-groups"):
        out += [p for p in (SHARED / sub).rglob("*") if p.suffix.lower() in exts and p.is_file()]
    return sorted(out)


def build(folder: Path, limit: int | None = None) -> dict:
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    n, nbytes, fmts = 0, 0, Counter()

    def put(name: str, data: bytes, fmt: str) -> None:
        nonlocal n, nbytes
        (folder / name).write_bytes(data)
        n += 1
        nbytes += len(data)
        fmts[fmt] += 1

    for src in real_images():
        if limit is not None and n >= limit:
            break
        try:
            with Image.open(src) as im:
                im.load()
                base = ImageOps.exif_transpose(im).convert("RGB")
        except Exception:  # noqa: BLE001 - unreadable real files are simply not benchmark inputs
            continue
        tag = hashlib.sha1(str(src.relative_to(SHARED)).encode()).hexdigest()[:10]
        raw = src.read_bytes()
        put(f"{tag}_orig{src.suffix.lower()}", raw, src.suffix.lower().lstrip("."))
        w, h = base.size
        if min(w, h) < 160:
            continue
        for side in SIDES:
            if side > min(w, h):
                break
            s = side / min(w, h)
            im = base.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
            for q in QUALITIES:
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=q)
                put(f"{tag}_{side}_q{q}.jpg", buf.getvalue(), "jpg")
            if side == 256:
                for fmt, ext in (("PNG", "png"), ("WEBP", "webp")):
                    buf = io.BytesIO()
                    im.save(buf, fmt)
                    put(f"{tag}_{side}.{ext}", buf.getvalue(), ext)
    return {"folder": str(folder), "files": n, "bytes": nbytes, "by_format": dict(sorted(fmts.items()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--limit", type=int, default=None, help="stop after about N files")
    a = ap.parse_args(argv)
    print(json.dumps(build(a.out, a.limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
