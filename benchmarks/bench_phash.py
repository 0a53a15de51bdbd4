"""pHash throughput and agreement: curate's batch pHash vs ``imagededup.methods.PHash``.

Both run on the same files in one invocation, with the same number of worker processes,
after one read of every file (so both read from the page cache):

- ``imagededup``: ``PHash().encode_images(image_dir, num_enc_workers=W)``;
- ``curate hash``: the hash stage's worker function (:func:`curate.stages.hash.stage.hash_items`:
  read, sha256, the loader, 32×32 gray, one vectorised DCT per run of samples) over a
  ``multiprocessing`` pool of W processes with the stage's worker initialiser and task size
  (:func:`curate.stages.hash.stage.run_size`, 64 samples at the defaults) — what ``curate hash``
  does, minus the catalog insert; the resize kernels are compiled (or loaded from numba's
  cache) once in the parent before the pool forks, as the stage does, and that one-time
  cost is reported separately (``curate_warm_s``);
- ``curate pHash only``: the same without sha256 and row building;
- optionally (``--draft S``) the same with JPEG draft decoding to ≥ S px, which is faster but
  no longer bit-identical (reported for information; the hash stage never uses it);
- optionally (``--serial``) one-process timings of imagededup, curate, Pillow's 32×32
  LANCZOS alone, and the *floor* any bit-identical pHash must pay — Pillow's full decode —
  which bounds the speed-up an identical hash can have over imagededup.

Every file whose hash differs is listed with the loader's reason (EXIF orientation applied,
transparency composited, 16-bit rescaled, CMYK via ICC, imagededup could not read it);
a difference with no such reason counts as ``unexplained``.

Usage::

    python benchmarks/bench_phash.py [--images DIR] [--workers 2] [--draft 128] [--serial]

Without ``--images`` the set is built by ``benchmarks/make_images.py`` in a temp folder.
stdout: one JSON object; progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUN = 64  # samples per worker task (one DCT batch): curate.stages.hash.stage.run_size at the defaults, set in main()


def _phash_only(files: list[str], draft: int | None = None) -> list[tuple[str, int | None, str]]:
    from curate.media.images import open_image
    from curate.media.phash import gray32, phash_batch

    out, grays, idx = [], [], []
    for f in files:
        with open(f, "rb") as fh:
            d, im = open_image(fh.read(), draft=draft)
        out.append([f, None, d.status])
        if im is not None:
            grays.append(gray32(im))
            idx.append(len(out) - 1)
    if grays:
        for k, h in zip(idx, phash_batch(np.stack(grays)).tolist()):
            out[k][1] = int(h)
    return [tuple(r) for r in out]


def _phash_draft(files):
    return _phash_only(files, draft=_DRAFT)


_DRAFT = None


def _stage_rows(items: list[tuple[int, str]]):
    from curate.stages.hash.stage import hash_items

    return hash_items(items, max_pixels=89_478_485)


def _pool_map(fn, files: list, workers: int):
    from curate.stages.hash.stage import worker_init

    runs = [files[i : i + RUN] for i in range(0, len(files), RUN)]
    t = time.perf_counter()
    with mp.get_context("fork").Pool(workers, initializer=worker_init) as pool:  # as `curate hash`
        res = [r for part in pool.imap(fn, runs) for r in part]
    return res, time.perf_counter() - t


def _imagededup(folder: Path, workers: int):
    import logging

    from imagededup.methods import PHash

    logging.getLogger("imagededup").setLevel(logging.WARNING)
    t = time.perf_counter()
    h = PHash(verbose=False).encode_images(image_dir=str(folder), num_enc_workers=workers)
    return h, time.perf_counter() - t


def _decode_floor(files: list[str]) -> list[int]:
    """The part of the work no bit-identical pHash can skip: Pillow's full decode (RGB as
    imagededup converts). Pillow's own 32×32 LANCZOS is timed separately (``_pillow_resize``)."""
    from PIL import Image

    out = []
    for f in files:
        with Image.open(f) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            out.append(rgb.size[0])
    return out


def _pillow_resize(files: list[str]) -> float:
    """Seconds Pillow's 32×32 LANCZOS + ``convert('L')`` takes on these files' RGB images."""
    from PIL import Image

    spent = 0.0
    for f in files:
        with Image.open(f) as im:
            rgb = im.convert("RGB")
            t = time.perf_counter()
            rgb.resize((32, 32), Image.LANCZOS).convert("L")
            spent += time.perf_counter() - t
    return spent


def _serial(files: list[str]) -> dict:
    """One process, no pool: imagededup's encode_image, Pillow's decode alone, curate."""
    from imagededup.methods import PHash

    ph = PHash(verbose=False)
    t = time.perf_counter()
    for f in files:
        ph.encode_image(image_file=f)
    t_ided = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, len(files), RUN):
        _decode_floor(files[i : i + RUN])
    t_floor = time.perf_counter() - t
    t_resize = _pillow_resize(files)
    t = time.perf_counter()
    for i in range(0, len(files), RUN):
        _phash_only(files[i : i + RUN])
    t_ours = time.perf_counter() - t
    return {"imagededup_s": round(t_ided, 3), "pillow_decode_only_s": round(t_floor, 3),
            "pillow_lanczos_32_s": round(t_resize, 3), "curate_phash_only_s": round(t_ours, 3),
            "ratio_curate_vs_imagededup": round(t_ided / t_ours, 3),
            "decode_fraction_of_imagededup": round(t_floor / t_ided, 3),
            "max_speedup_if_identical": round(t_ided / t_floor, 3)}


def _reason(f: str) -> str | None:
    """Why curate's hash of file f legitimately differs from imagededup's (None: no reason)."""
    from curate.media.images import decode

    with open(f, "rb") as fh:
        d = decode(fh.read())
    if d.status != "ok":
        return f"curate status {d.status}"
    why = []
    if d.orientation in range(2, 9):
        why.append(f"EXIF orientation {d.orientation} applied")
    if "alpha_composited" in d.notes:
        why.append("transparent pixels composited on white")
    if "bit_depth=16" in d.notes:
        why.append("16-bit rescaled (imagededup clips)")
    if "icc_cmyk_to_srgb" in d.notes:
        why.append("CMYK converted through its ICC profile")
    return "; ".join(why) or None


def main(argv: list[str] | None = None) -> int:
    global _DRAFT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, help="folder of images (default: build with make_images.py)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--draft", type=int, default=None, help="also time JPEG draft decoding to >= this many px")
    ap.add_argument("--serial", action="store_true",
                    help="also time one process: imagededup, curate, Pillow's resize, and the decode floor")
    a = ap.parse_args(argv)
    global RUN
    from curate.config import HashConfig
    from curate.stages.hash.stage import run_size

    RUN = run_size(HashConfig().batch_size, a.workers)  # the task size `curate hash` uses
    tmp = None
    if a.images is None:
        from make_images import build

        tmp = tempfile.TemporaryDirectory(prefix="bench-phash-")
        a.images = Path(tmp.name) / "images"
        print(f"building images in {a.images}", file=sys.stderr)
        build(a.images)
    files = sorted(str(p) for p in a.images.iterdir() if p.is_file() and not p.name.startswith("."))
    for f in files:  # page cache: every contender reads from memory
        Path(f).read_bytes()
    import imagededup  # noqa: F401  (import cost outside the timings)
    import scipy.fftpack  # noqa: F401

    print(f"{len(files)} files, {a.workers} workers", file=sys.stderr)
    t = time.perf_counter()
    from curate.media import lanczos

    order = lanczos.warm()  # once per run, before the pool forks (as `curate hash` does)
    t_warm = time.perf_counter() - t
    ours_only, t_only = _pool_map(_phash_only, files, a.workers)
    print(f"curate pHash only: {t_only:.2f}s", file=sys.stderr)
    theirs, t_ided = _imagededup(a.images, a.workers)
    print(f"imagededup: {t_ided:.2f}s", file=sys.stderr)
    rows, t_stage = _pool_map(_stage_rows, list(enumerate(files)), a.workers)
    print(f"curate hash stage work: {t_stage:.2f}s", file=sys.stderr)

    by_name = {Path(f).name: h for f, h, _ in ours_only}
    stage_by_name = {Path(files[r[0]]).name: r[5] for r in rows}
    assert by_name == stage_by_name, "hash stage and pHash-only disagree"
    identical, differ = 0, []
    for name in sorted(set(by_name) | set(theirs)):
        ours = by_name.get(name)
        ref = theirs.get(name)
        if ours is not None and ref is not None and ours == int(ref, 16):
            identical += 1
            continue
        why = _reason(str(a.images / name))
        if ref is None:
            why = "imagededup returned no hash" + (f"; {why}" if why else "")
        bits = bin(ours ^ int(ref, 16)).count("1") if ours is not None and ref is not None else None
        differ.append({"file": name, "hamming_bits": bits, "reason": why or "UNEXPLAINED"})
    n = len(files)
    res = {
        "files": n, "workers": a.workers, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "imagededup_s": round(t_ided, 3), "imagededup_img_s": round(n / t_ided, 1),
        "curate_hash_stage_s": round(t_stage, 3), "curate_hash_stage_img_s": round(n / t_stage, 1),
        "curate_phash_only_s": round(t_only, 3), "curate_phash_only_img_s": round(n / t_only, 1),
        "ratio_hash_stage_vs_imagededup": round(t_ided / t_stage, 3),
        "ratio_phash_only_vs_imagededup": round(t_ided / t_only, 3),
        "curate_warm_s": round(t_warm, 3), "lanczos_pass_order": order,
        "ratio_phash_only_with_warm_vs_imagededup": round(t_ided / (t_only + t_warm), 3),
        "identical_hashes": identical, "differing": len(differ),
        "unexplained": sum(d["reason"] == "UNEXPLAINED" for d in differ), "differences": differ,
    }
    if a.serial:
        print("serial timings (one process)", file=sys.stderr)
        res["serial_one_process"] = _serial(files)
    if a.draft:
        _DRAFT = a.draft
        drafted, t_draft = _pool_map(_phash_draft, files, a.workers)
        dist = [bin(h ^ by_name[Path(f).name]).count("1") for f, h, _ in drafted
                if h is not None and by_name.get(Path(f).name) is not None]
        res["draft"] = {
            "min_side_px": a.draft, "seconds": round(t_draft, 3), "img_s": round(n / t_draft, 1),
            "ratio_vs_imagededup": round(t_ided / t_draft, 3),
            "same_as_full_decode": int(sum(x == 0 for x in dist)), "compared": len(dist),
            "bits_differing_max": int(max(dist) if dist else 0),
            "bits_differing_mean": round(float(np.mean(dist)) if dist else 0.0, 3),
        }
    print(json.dumps(res, indent=2))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
