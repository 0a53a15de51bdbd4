"""Embedding throughput on CPU: the embed stage end to end vs the bare model on pre-decoded tensors.

One invocation, same images, same model, same batch size:

1. ``model only`` (ceiling): every image decoded and preprocessed beforehand into memory as
   normalised float32 batches; time ``model.forward`` over them (the model's own work only).
2. ``end to end``: ``curate embed`` (the stage: DataLoader workers reading files, the loader
   with JPEG draft decoding, preprocessing, uint8 batches, normalisation, forward, L2
   normalisation, float16 parts written atomically, catalog rows committed) on a workspace
   where ingest and hash already ran. Its loop time excludes model loading; the wall time
   including loading, and the steady-state rate after the first batch (worker start-up and
   the model's first-call set-up, paid once per run, excluded like the ceiling's warm-up),
   are reported too.
3. ``model only`` again (the machine may drift; the ceiling is the mean of 1 and 3).

Usage::

    python benchmarks/bench_embed.py [--images DIR] [--n 512] [--batch-size 32] [--workers auto]
        [--model NAME] [--preprocess PRESET]

stdout: one JSON object; progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _model_only(model, batches) -> float:
    from curate.models.feeder import forward

    t = time.perf_counter()
    for x in batches:
        forward(model, x)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, help="folder of images (default: build with make_images.py)")
    ap.add_argument("--n", type=int, default=512, help="images to embed")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v),
                    help="embed.num_workers (auto: curate.models.feeder.decode_workers)")
    ap.add_argument("--model", default=None, help="registry name (default: the shipped embed.model)")
    ap.add_argument("--preprocess", default="auto", help="embed.preprocess (auto: the model's default)")
    a = ap.parse_args(argv)
    os.environ.setdefault("CURATE_QUIET", "1")
    import torch

    from curate import api
    from curate.config import RunConfig
    from curate.media.images import open_image
    from curate.config import EmbedConfig
    from curate.models import load_image_model
    from curate.models.feeder import collate, forward

    a.model = a.model or EmbedConfig().model

    tmp = tempfile.TemporaryDirectory(prefix="bench-embed-")
    root = Path(tmp.name)
    if a.images is None:
        from make_images import build

        a.images = root / "all"
        build(a.images)
    files = sorted(p for p in a.images.iterdir() if p.is_file())
    step = max(1, len(files) // a.n)
    chosen = files[::step][: a.n]
    sub = root / "imgs"
    sub.mkdir()
    for p in chosen:
        (sub / p.name).symlink_to(p.resolve())
    cfg = RunConfig.model_validate({
        "sources": [{"name": "bench", "images": str(sub)}],
        "hash": {"workers": min(2, os.cpu_count() or 1)},
        "embed": {"model": a.model, "device": "cpu", "batch_size": a.batch_size, "num_workers": a.workers,
                  "preprocess": a.preprocess},
    })
    cfg.base_dir = str(root)
    ws = root / "ws"
    api.run(ws, cfg, stages=["ingest", "hash"])

    model = load_image_model(a.model, "cpu", preset=a.preprocess)
    pre = model.preprocess
    tensors = []
    for p in chosen:
        d, im = open_image(p.read_bytes(), draft=pre.draft)
        if im is not None:
            tensors.append(torch.from_numpy(pre.pixels_hwc(im)))  # uint8 (H, W, 3), as the feeder's workers give them
    # batches as the feeder collates them: one stacked tensor, or a list of sizes (presets without a crop)
    batches = [collate([(k, t, "ok") for k, t in enumerate(tensors[i : i + a.batch_size])])[1]
               for i in range(0, len(tensors), a.batch_size)]
    forward(model, batches[0])  # warm-up (allocations, oneDNN primitive cache)
    print(f"{len(tensors)} images, batch {a.batch_size}, torch threads {torch.get_num_threads()}", file=sys.stderr)
    t1 = _model_only(model, batches)
    print(f"model only: {len(tensors) / t1:.1f} img/s", file=sys.stderr)
    t0 = time.perf_counter()
    res = api.run_one(ws, "embed", cfg)
    wall = time.perf_counter() - t0
    c = res["counters"]
    print(f"end to end: {c['images_per_s']} img/s (loop), wall {wall:.1f}s", file=sys.stderr)
    t3 = _model_only(model, batches)
    print(f"model only again: {len(tensors) / t3:.1f} img/s", file=sys.stderr)
    ceiling = len(tensors) / ((t1 + t3) / 2)
    out = {
        "model": a.model, "preprocess": model.preset if hasattr(model, "preset") else a.preprocess, "images": len(tensors), "batch_size": a.batch_size, "num_workers": c.get("num_workers", a.workers),
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "model_only_img_s": round(ceiling, 2),
        "model_only_runs_img_s": [round(len(tensors) / t1, 2), round(len(tensors) / t3, 2)],
        "end_to_end_img_s": c["images_per_s"],
        "end_to_end_after_first_batch_img_s": c.get("images_per_s_after_first_batch"),
        "ratio_after_first_batch_vs_model_only": round((c.get("images_per_s_after_first_batch") or 0) / ceiling, 3),
        "data_wait_fraction_after_first_batch": c.get("data_wait_fraction_after_first_batch"),
        "end_to_end_incl_model_load_img_s": round(c["embedded"] / wall, 2),
        "ratio_end_to_end_vs_model_only": round(c["images_per_s"] / ceiling, 3),
        "data_wait_fraction": c["data_wait_fraction"], "data_wait_s": c["data_wait_s"], "model_s": c["model_s"],
        "embedded": c["embedded"], "failed": c["failed"],
    }
    print(json.dumps(out, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
