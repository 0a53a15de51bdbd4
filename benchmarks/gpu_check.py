"""GPU throughput check: end-to-end images/s of curate's embedding path beside the model-only
ceiling, for open_clip ViT-B-32 and ViT-L-14 (random weights), the default model, and the ONNX
SSCD descriptors ``sscd_distilled`` and ``sscd`` (int8; ONNX Runtime's CUDA execution provider).

Self-contained: it writes its own JPEGs (real photos from ``examples/sample`` re-encoded at
LAION-like sizes, short side 256–512 px) into a temp folder and needs only torch,
torchvision, Pillow and numpy from the machine (open_clip / the packaged EfficientNet
weights are used when importable; otherwise timm builds the same architecture with random
weights — the FLOPs, and so the throughput, are the same — and the output says so).

Per model, at one batch size, with bf16 autocast on GPU (``--precision``):

- ``model_only``: uint8 batches already on the GPU → curate's forward (normalise on device,
  autocast, features back to the host). The ceiling.
- ``e2e_cpu_decode``: curate's feeder (``curate.models.feeder``: DataLoader worker processes
  reading files, the loader with JPEG draft mode, preprocessing to uint8 channels-last
  batches, pinned memory) → forward. What ``curate embed`` runs.
- ``e2e_gpu_decode``: threads read the files; ``torchvision.io.decode_jpeg(list,
  device='cuda')`` decodes a whole batch on the GPU; resize (antialiased bicubic) and centre
  crop on the GPU → forward. The next batch's bytes are read while the GPU works.
- ``decode_only`` rates of both paths (no model), to show which side limits.

Usage::

    benchmarks/gpu_check.sh                      # on a GPU machine (< 8 minutes)
    python benchmarks/gpu_check.py --smoke       # tiny, runs on CPU: checks that it works

Writes ``gpu_check.json`` to ``$OUT`` (or ``--out``) and prints it; progress on stderr.
Exit status 2 with a message when no GPU is visible (unless ``--smoke``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = "open_clip:ViT-B-32/none,open_clip:ViT-L-14/none,efficientnet_lite0,sscd_distilled,sscd"
#: the ONNX descriptors (ONNX Runtime, CUDA execution provider on a GPU) run at SSCD's 320×320 preset:
#: one input size, so batches stay whole (uint8 in; the GPU-decode path, which hands over float, does not apply)
ONNX_PRESET = {"sscd_distilled": "sscd_320", "sscd": "sscd_320"}
TARGET = {"open_clip:ViT-B-32/none": 5000.0}  # img/s end to end on an H200 (issue #4)
TIMM_TWIN = {"ViT-B-32": "vit_base_patch32_clip_224", "ViT-L-14": "vit_large_patch14_clip_224"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


# -- images ----------------------------------------------------------------------------------

def _seed_photos() -> list[Path]:
    exts = {".jpg", ".jpeg", ".png"}
    seeds = [p for sub in ("photos", "near-dup/pillow-variants", "near-dup/img2dataset-resize", "near-dup/imagededup")
             for p in sorted((ROOT / "examples" / "sample" / sub).rglob("*")) if p.suffix.lower() in exts]
    return seeds


def _make_one(args) -> int:
    seed_path, out, side, aspect, quality, flip = args
    from PIL import Image, ImageOps

    with Image.open(seed_path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = (side, round(side * aspect)) if aspect >= 1 else (round(side / aspect), side)
    im = im.resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    Path(out).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def make_jpegs(folder: Path, n: int, sides: tuple[int, ...], workers: int) -> list[Path]:
    """n JPEGs from the sample's real photos, short side from ``sides``, aspect 0.75–1.33."""
    import multiprocessing as mp

    seeds = [p for p in _seed_photos() if _opens(p)]
    if not seeds:
        raise SystemExit("gpu_check: no seed photos under examples/sample")
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(seeds[i % len(seeds)]), str(folder / f"{i:06d}.jpg"), int(rng.choice(sides)),
             float(rng.uniform(0.75, 1.33)), int(rng.choice([80, 90, 95])), bool(i // len(seeds) % 2)) for i in range(n)]
    with mp.get_context("fork").Pool(max(1, workers)) as pool:
        total = sum(pool.imap_unordered(_make_one, jobs, chunksize=16))
    log(f"wrote {n} JPEGs ({total / n / 1024:.0f} KiB mean) to {folder}")
    return [Path(j[1]) for j in jobs]


def _opens(p: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.load()
            return min(im.size) >= 64
    except Exception:  # noqa: BLE001
        return False


# -- models ----------------------------------------------------------------------------------

def load(name: str, device: str, precision: str):
    """curate's registry model, or the same architecture from timm when open_clip / the packaged
    weights are missing (random weights either way in this check)."""
    from curate.models import IMAGENET_MEAN, IMAGENET_STD, ImageEmbedder, Preprocess, load_image_model
    from curate.models.base import wrap_forward as _wrap

    try:
        return load_image_model(name, device, precision=precision, preset=ONNX_PRESET.get(name, "model")), "curate registry"
    except Exception as e:  # noqa: BLE001 - fall back to an equivalent timm build
        why = f"{type(e).__name__}: {e}"
    import timm

    if name.startswith("open_clip:"):
        arch = name.split(":", 1)[1].split("/")[0]
        model = timm.create_model(TIMM_TWIN[arch], pretrained=False, num_classes=0)
        pre = Preprocess(224, 224, CLIP_MEAN, CLIP_STD)
        cl = False
    else:
        model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
        pre = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)
        cl = True
    from curate.models import resolve_precision

    prec = resolve_precision(precision, device)
    emb = ImageEmbedder(name, int(model.num_features), pre, _wrap(model, device, pre, prec, channels_last=cl),
                        device, f"timm twin of {name}", prec)
    return emb, f"timm architecture twin ({why[:160]})"


# -- measurements ----------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def model_only(model, batch: int, seconds: float, device: str) -> dict:
    import torch

    side = model.preprocess.crop or model.preprocess.resize
    x = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8, device=device).permute(0, 3, 1, 2)
    for _ in range(3):
        model.forward(x)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        model.forward(x)
        n += batch
        if time.perf_counter() - t0 >= seconds and n >= 3 * batch:
            break
    _sync(device)
    dt = time.perf_counter() - t0
    return {"img_s": round(n / dt, 1), "images": n, "seconds": round(dt, 3)}


def e2e_cpu(model, files: list[Path], batch: int, workers: int, device: str, run_model: bool = True) -> dict:
    from torch.utils.data import DataLoader

    from curate.models.feeder import ImageDataset, chunk_batches, collate, forward

    items = [(i, str(f)) for i, f in enumerate(files)]
    loader = DataLoader(ImageDataset(items, model.preprocess, 89_478_485),
                        batch_sampler=chunk_batches(len(items), 1 << 30, batch), num_workers=workers,
                        collate_fn=collate, pin_memory=device == "cuda",
                        prefetch_factor=max(2, min(4, 256 // batch)) if workers else None)
    n = failed = 0
    wait = 0.0
    t0 = time.perf_counter()
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            sids, x, bad = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t
        failed += len(bad)
        if x is not None and run_model:
            forward(model, x)
        n += len(sids)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"img_s": round(n / dt, 1), "images": n, "failed": failed, "seconds": round(dt, 3),
            "data_wait_fraction": round(wait / dt, 4), "workers": workers}


class _Reader:
    """Reads the files of batch i+1 in threads while batch i is on the GPU."""

    def __init__(self, files: list[Path], batch: int, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.batches = [files[i : i + batch] for i in range(0, len(files), batch)]
        self.pool = ThreadPoolExecutor(max(1, threads))
        self.next = self._submit(0)

    def _submit(self, k: int):
        if k >= len(self.batches):
            return None
        return [self.pool.submit(Path.read_bytes, f) for f in self.batches[k]]

    def __iter__(self):
        import torch

        for k in range(len(self.batches)):
            futs, self.next = self.next, self._submit(k + 1)
            yield [torch.frombuffer(bytearray(f.result()), dtype=torch.uint8) for f in futs]
        self.pool.shutdown()


def gpu_preprocess(imgs, pre, device: str):
    """Decoded uint8 (3, h, w) tensors → uint8 (n, 3, S, S): short side to ``pre.resize``
    (antialiased bicubic, as Pillow's), centre crop ``pre.crop`` — on the device."""
    import torch
    import torch.nn.functional as F

    side = pre.crop or pre.resize
    out = torch.empty((len(imgs), 3, side, side), dtype=torch.uint8, device=device)
    for i, im in enumerate(imgs):
        h, w = im.shape[1:]
        s = pre.resize / min(h, w)
        nh, nw = max(side, round(h * s)), max(side, round(w * s))
        r = F.interpolate(im[None].float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - side) // 2, (nw - side) // 2
        out[i] = r[0, :, top : top + side, left : left + side].round_().clamp_(0, 255).to(torch.uint8)
    return out


def e2e_gpu(model, files: list[Path], batch: int, threads: int, device: str, run_model: bool = True) -> dict:
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg

    n, t0 = 0, time.perf_counter()
    for datas in _Reader(files, batch, threads):
        imgs = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        x = gpu_preprocess(imgs, model.preprocess, device)
        if run_model:
            model.forward(x)
        n += len(datas)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"img_s": round(n / dt, 1), "images": n, "seconds": round(dt, 3), "reader_threads": threads,
            "torchvision": torchvision.__version__}


def _guard(fn, *a, **k) -> dict:
    try:
        return fn(*a, **k)
    except Exception as e:  # noqa: BLE001 - one failing measurement must not hide the others
        log(f"{fn.__name__} failed: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=4)}


# -- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run that also works on CPU (checks the script)")
    ap.add_argument("--models", default=None, help=f"comma-separated registry names (default {DEFAULT_MODELS})")
    ap.add_argument("--n-images", type=int, default=None, help="JPEGs to generate (default 12288; smoke 48)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 512 on GPU (256 for ViT-L-14); smoke 8")
    ap.add_argument("--seconds", type=float, default=None, help="model-only timing per model (default 8; smoke 1)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 2)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json (default $OUT)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not importable here", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False). This check "
              "needs a GPU; run with --smoke to exercise the script on CPU.", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    cpus = os.cpu_count() or 1
    smoke = a.smoke
    models = (a.models or ("efficientnet_lite0,open_clip:ViT-B-32/none" if smoke else DEFAULT_MODELS)).split(",")
    n_images = a.n_images or (48 if smoke else 12288)
    seconds = a.seconds or (1.0 if smoke else 8.0)
    workers = a.workers if a.workers is not None else (min(2, cpus) if smoke else max(1, cpus - 2))
    out_dir = a.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res: dict = {
        "mode": "smoke" if smoke else "full", "device": device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpus": cpus, "host": platform.node(),
        "python": platform.python_version(), "torch": torch.__version__, "n_images": n_images,
        "workers": workers, "models": {},
    }
    try:
        import torchvision

        res["torchvision"] = torchvision.__version__
    except ImportError:
        res["torchvision"] = None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        files = make_jpegs(Path(tmp) / "jpg", n_images, (96, 128, 160) if smoke else (256, 320, 384, 448, 512), cpus)
        for name in models:
            batch = a.batch_size or (8 if smoke else (256 if "L-14" in name else 512))
            log(f"{name}: loading (batch {batch})")
            t = time.perf_counter()
            model, source = load(name, device, a.precision)
            entry: dict = {"batch_size": batch, "precision": model.precision, "dim": model.dim, "source": source,
                           "load_seconds": round(time.perf_counter() - t, 2), "preprocess": model.preprocess.identity()}
            entry["model_only"] = _guard(model_only, model, batch, seconds, device)
            log(f"{name}: model only {entry['model_only'].get('img_s')} img/s")
            entry["decode_only_cpu"] = _guard(e2e_cpu, model, files, batch, workers, device, run_model=False)
            entry["e2e_cpu_decode"] = _guard(e2e_cpu, model, files, batch, workers, device)
            log(f"{name}: end to end, CPU decode {entry['e2e_cpu_decode'].get('img_s')} img/s")
            entry["decode_only_gpu"] = _guard(e2e_gpu, model, files, batch, max(4, workers), device, run_model=False)
            entry["e2e_gpu_decode"] = _guard(e2e_gpu, model, files, batch, max(4, workers), device)
            log(f"{name}: end to end, GPU decode {entry['e2e_gpu_decode'].get('img_s')} img/s")
            best = max((entry[k].get("img_s") or 0.0, k) for k in ("e2e_cpu_decode", "e2e_gpu_decode"))
            ceiling = entry["model_only"].get("img_s") or 0.0
            entry["best_e2e"] = {"img_s": best[0], "path": best[1],
                                 "fraction_of_model_only": round(best[0] / ceiling, 3) if ceiling else None}
            if name in TARGET and not smoke:
                entry["target_img_s"] = TARGET[name]
                entry["target_met"] = best[0] >= TARGET[name]
            res["models"][name] = entry
            del model
            if cuda:
                torch.cuda.empty_cache()
    res["seconds_total"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(res, indent=2, sort_keys=True)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "gpu_check.json").write_text(text + "\n")
        log(f"wrote {out_dir / 'gpu_check.json'}")
    print(text)
    for name, e in res["models"].items():
        log(f"{name:28s} model-only {e['model_only'].get('img_s')!s:>9}  e2e cpu-decode "
            f"{e['e2e_cpu_decode'].get('img_s')!s:>9}  e2e gpu-decode {e['e2e_gpu_decode'].get('img_s')!s:>9} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
