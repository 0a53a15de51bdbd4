"""Feeding a model: decode in worker processes, batch, run, check the vectors.

Light on purpose (numpy, Pillow, torch only; no catalog), so the embed stage and
``benchmarks/gpu_check.py`` run the same data path.

- :class:`ImageDataset` — map-style dataset: (sample_id, image_ref) → uint8 (H, W, 3) tensor
  through :func:`curate.media.images.open_image` (JPEG draft mode at the model's input size) and
  :meth:`curate.models.Preprocess.pixels_hwc`, or the decode status when it fails;
- :func:`collate` — a list of samples → uint8 (n, 3, H, W) channels-last batch (a permuted
  view, no copy), failures listed apart;
- :func:`chunk_batches` — batches that never straddle a work chunk (resumable parts);
- :func:`forward` — features for a batch, also for differently sized tensors;
- :func:`embed_batch` — a collated batch → vectors and per-sample failures (both engines);
- :func:`normalise`, :func:`vector_status` — L2 normalisation and the K13 checks.
"""
from __future__ import annotations

import os
import time

import numpy as np

from curate.media.images import open_image, read_ref

MIN_NORM = 1e-6


def decode_workers(setting: int | str, device: str, cpus: int | None = None) -> int:
    """Decoding worker processes for ``embed.num_workers`` (an int is used as given).

    ``"auto"``: on CPU the model's intra-op threads already use every core and decoding
    costs about a tenth of the model's CPU time per image (docs/BENCHMARKS.md, issue #4),
    so one worker per 8 CPUs (at least 1) keeps the model fed with the least contention;
    on GPU decoding is the bottleneck, so CPUs − 1 (at least 1).

    Args:
        setting: ``"auto"`` or an int ≥ 0.
        device: resolved device, ``"cpu"`` or ``"cuda"``.
        cpus: CPU count (default: the CPUs this process may run on).
    """
    if setting != "auto":
        return int(setting)
    n = cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return max(1, n - 1) if device == "cuda" else max(1, n // 8)


# -- vectors ---------------------------------------------------------------------------------

def normalise(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise rows of float (n, d); return (normalised float32 (n, d), ok mask (n,) bool).

    Rows with a non-finite value or norm < 1e-6 are marked not ok and left as zeros (K13).
    """
    v = np.asarray(vecs, dtype=np.float32)
    finite = np.isfinite(v).all(axis=1)
    v = np.where(finite[:, None], v, 0.0)
    n = np.linalg.norm(v, axis=1)
    ok = finite & (n >= MIN_NORM)
    out = np.zeros_like(v)
    out[ok] = v[ok] / n[ok, None]
    return out, ok


def vector_status(vecs: np.ndarray) -> list[str]:
    """Per row of float (n, d): 'ok', 'nonfinite_vector' (NaN/inf) or 'zero_vector' (norm < 1e-6)."""
    v = np.asarray(vecs, dtype=np.float32)
    finite = np.isfinite(v).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], v, 0.0), axis=1)
    return ["ok" if f and n >= MIN_NORM else ("nonfinite_vector" if not f else "zero_vector")
            for f, n in zip(finite.tolist(), norms.tolist())]


# -- data ------------------------------------------------------------------------------------

class ImageDataset:
    """Map-style dataset: index → (sample_id, uint8 tensor (H, W, 3) or None, status)."""

    def __init__(self, items: list[tuple[int, str]], preprocess, max_pixels: int):
        self.items, self.preprocess, self.max_pixels = items, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        sid, ref = self.items[i]
        d, im = open_image(read_ref(ref), max_pixels=self.max_pixels, draft=self.preprocess.draft)
        if im is None:
            return sid, None, d.status
        try:
            return sid, torch.from_numpy(self.preprocess.pixels_hwc(im)), "ok"
        except Exception as e:  # noqa: BLE001 - a bad sample never stops the run
            return sid, None, f"preprocess_error: {type(e).__name__}"


def collate(batch):
    """→ (ok sample ids, uint8 (n, 3, H, W) channels-last tensor — or a list of (3, H, W)
    tensors when sizes differ (presets without a crop) — or None, [(sample id, status)] of
    the failures). Input tensors are (H, W, 3)."""
    import torch

    ok = [(s, t) for s, t, st in batch if t is not None]
    bad = [(s, st) for s, t, st in batch if t is None]
    if not ok:
        return [], None, bad
    ts = [t for _, t in ok]
    if len({tuple(t.shape) for t in ts}) == 1:
        x = torch.stack(ts).permute(0, 3, 1, 2)  # (n, 3, H, W) view with channels-last strides
    else:
        x = [t.permute(2, 0, 1) for t in ts]
    return [s for s, _ in ok], x, bad


def chunk_batches(n: int, part_rows: int, batch_size: int) -> list[list[int]]:
    """Index batches over n items such that no batch straddles a chunk of ``part_rows``."""
    out = []
    for c0 in range(0, n, part_rows):
        c1 = min(n, c0 + part_rows)
        out += [list(range(b, min(c1, b + batch_size))) for b in range(c0, c1, batch_size)]
    return out


def embed_batch(model, sids: list[int], x, bad: list[tuple[int, str]]):
    """One collated batch (:func:`collate`'s output) through the model and the K13 checks.

    Returns:
        (ids with a vector, their L2-normalised float32 (d,) vectors, [(sample id, status)] of
        the rows without one — vector failures (``zero_vector``, ``nonfinite_vector``) then the
        decode failures ``bad`` —, seconds spent in the model). The local and the Ray engine
        both embed through this function.
    """
    ids: list[int] = []
    vecs: list[np.ndarray] = []
    failed: list[tuple[int, str]] = []
    dt = 0.0
    if x is not None:
        t0 = time.perf_counter()
        feats = forward(model, x)
        dt = time.perf_counter() - t0
        unit, _ = normalise(feats)
        for sid, v, st in zip(sids, unit, vector_status(feats)):
            if st == "ok":
                ids.append(sid)
                vecs.append(v)
            else:
                failed.append((sid, st))
    failed.extend(bad)
    return ids, vecs, failed, dt


def forward(model, x) -> np.ndarray:
    """Model features for a stacked batch, or for a list of differently sized tensors (grouped
    by shape, order kept)."""
    if not isinstance(x, list):
        return model.forward(x)
    import torch

    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(x):
        groups.setdefault(tuple(t.shape), []).append(i)
    out: np.ndarray | None = None
    for idx in groups.values():
        y = model.forward(torch.stack([x[i] for i in idx]))
        if out is None:
            out = np.zeros((len(x), y.shape[1]), np.float32)
        out[idx] = y
    return out
