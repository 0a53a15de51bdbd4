"""Where the pHash time goes, per image format, on the pHash benchmark's files.

In one process, for every file read beforehand from memory: Pillow's decode (``Image.open``
+ ``load``, RGBA → RGB as imagededup converts), Pillow's 32×32 LANCZOS resize +
``convert('L')`` (imagededup's), and the same pixels from :func:`curate.media.lanczos.resize_gray`
(checked identical). Also, on the JPEGs: Pillow's decode against
``torchvision.io.decode_jpeg`` (libjpeg-turbo through torch, CPU), whose pixels are checked
to be identical — a faster JPEG decoder is the only decode saving that keeps the hashes.

Usage::

    python benchmarks/phash_floor.py --images DIR     # DIR from benchmarks/make_images.py

stdout: one JSON object (seconds per format and stage, megapixels, ns per pixel, the
torchvision / Pillow ratio and how many decodes were pixel-identical).
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="folder of images (benchmarks/make_images.py)")
    a = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from curate.media import lanczos

    torch.set_num_threads(1)
    lanczos.warm()
    data = [(p, p.read_bytes()) for p in sorted(Path(a.images).iterdir()) if p.is_file()]
    dec, rs, ours, px, n = (collections.Counter() for _ in range(5))
    same_gray = 0
    jpegs = []
    for _, b in data:
        t0 = time.perf_counter()
        im = Image.open(io.BytesIO(b))
        fmt = im.format
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGBA").convert("RGB")
        t1 = time.perf_counter()
        want = im.resize((32, 32), Image.LANCZOS).convert("L")
        t2 = time.perf_counter()
        got = lanczos.resize_gray(im)
        t3 = time.perf_counter()
        same_gray += bool(np.array_equal(np.asarray(want), got))
        dec[fmt] += t1 - t0
        rs[fmt] += t2 - t1
        ours[fmt] += t3 - t2
        px[fmt] += im.size[0] * im.size[1]
        n[fmt] += 1
        if fmt == "JPEG":
            jpegs.append(b)
    per = {f: {"files": n[f], "megapixels": round(px[f] / 1e6, 1), "decode_s": round(dec[f], 3),
               "resize_s": round(rs[f], 3), "resize_ns_per_px": round(rs[f] / max(px[f], 1) * 1e9, 2),
               "curate_resize_s": round(ours[f], 3),
               "curate_resize_ns_per_px": round(ours[f] / max(px[f], 1) * 1e9, 2)}
           for f in sorted(n)}
    t0 = time.perf_counter()
    for b in jpegs:
        Image.open(io.BytesIO(b)).load()
    t_pil = time.perf_counter() - t0
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    t0 = time.perf_counter()
    for x in tensors:
        decode_jpeg(x)
    t_tv = time.perf_counter() - t0
    same = sum(
        bool(np.array_equal(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
                            decode_jpeg(x, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()))
        for b, x in zip(jpegs, tensors))
    print(json.dumps({
        "files": len(data), "by_format": per,
        "decode_s": round(sum(dec.values()), 3), "resize_s": round(sum(rs.values()), 3),
        "curate_resize_s": round(sum(ours.values()), 3), "curate_gray_identical": same_gray,
        "jpeg_decode": {"files": len(jpegs), "pillow_s": round(t_pil, 3), "torchvision_s": round(t_tv, 3),
                        "torchvision_over_pillow_speed": round(t_pil / max(t_tv, 1e-9), 3),
                        "pixel_identical": same},
    }, indent=2))


if __name__ == "__main__":
    main()
