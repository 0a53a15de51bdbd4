"""embed: image embeddings → ``embeddings/<model>/part-*.npy`` (+ ``embeddings`` table rows).

Images are decoded by :mod:`curate.images` in DataLoader worker processes (JPEG draft mode
at the model's input size) while the model runs in the main process. Features are
L2-normalised and stored as float16. Vectors with a non-finite value or a norm below 1e-6
are not stored; their sample gets status ``bad_vector`` (case K13) so cosine thresholds
later mean what they say.

Resumable: parts are atomic; at start, parts on disk that the catalog does not know yet
(a run killed between writing a part and recording it) are recorded, not recomputed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from curate.catalog import Workspace
from curate.config import RunConfig
from curate.embstore import list_parts, read_part_ids, write_part
from curate.progress import bar

MIN_NORM = 1e-6


class _Dataset:
    """Map-style dataset: index → (sample_id, tensor or None, status)."""

    def __init__(self, items: list[tuple[int, str]], preprocess, max_pixels: int):
        self.items, self.preprocess, self.max_pixels = items, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from curate.images import decode, read_ref

        sid, ref = self.items[i]
        d = decode(read_ref(ref), max_pixels=self.max_pixels, draft=self.preprocess.resize)
        if d.status != "ok":
            return sid, None, d.status
        try:
            return sid, self.preprocess(d.rgb), "ok"
        except Exception as e:  # noqa: BLE001
            return sid, None, f"preprocess_error: {type(e).__name__}"


def _collate(batch):
    import torch

    ok = [(s, t) for s, t, st in batch if t is not None]
    bad = [(s, st) for s, t, st in batch if t is None]
    x = torch.stack([t for _, t in ok]) if ok else None
    return [s for s, _ in ok], x, bad


def normalise(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise rows of float (n, d); return (normalised float32, ok mask (n,) bool).

    Rows with non-finite values or norm < 1e-6 are marked not ok (left as zeros).
    """
    v = np.asarray(vecs, dtype=np.float32)
    finite = np.isfinite(v).all(axis=1)
    v = np.where(finite[:, None], v, 0.0)
    n = np.linalg.norm(v, axis=1)
    ok = finite & (n >= MIN_NORM)
    out = np.zeros_like(v)
    out[ok] = v[ok] / n[ok, None]
    return out, ok


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    if cfg.embed.model.startswith("precomputed:"):  # imported files: re-run when one is added or changes
        from curate.catalog import file_fingerprint
        from curate.embimport import pairs

        return [(str(v), file_fingerprint(v), str(m) if m else None) for spec in cfg.embed.precomputed
                for v, m in pairs(cfg, spec)]
    return None


def _reconcile(ws: Workspace, model: str, folder) -> int:
    known = {r[0] for r in ws.q("SELECT DISTINCT part FROM embeddings WHERE model = ? AND part IS NOT NULL", [model])}
    added = 0
    for num in list_parts(folder):
        if num in known:
            continue
        ids = read_part_ids(folder, num)
        with ws.transaction() as con:
            con.executemany(
                "INSERT INTO embeddings VALUES (?, ?, ?, 'ok') ON CONFLICT DO NOTHING",
                [(int(i), model, num) for i in ids],
            )
        added += len(ids)
    return added


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from curate.models import load_image_model

    ec = cfg.embed
    if ec.model.startswith("precomputed:"):  # vectors made elsewhere, joined by key (K14)
        from curate import embimport

        return embimport.run(ws, cfg)
    folder = ws.embeddings_dir(ec.model)
    recovered = _reconcile(ws, ec.model, folder)
    todo = ws.q(
        "SELECT s.sample_id, s.image_ref FROM samples s JOIN images i USING (sample_id) "
        "WHERE i.status = 'ok' AND s.sample_id NOT IN (SELECT sample_id FROM embeddings WHERE model = ?) "
        "ORDER BY s.sample_id",
        [ec.model],
    )
    counters: dict[str, Any] = {"model": ec.model, "recovered_from_parts": recovered, "embedded": 0, "bad_vector": 0, "failed": 0}
    if todo:
        model = load_image_model(ec.model, ec.device)
        counters.update(device=model.device, dim=model.dim, model_description=model.description)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        loader = DataLoader(
            _Dataset(todo, model.preprocess, cfg.hash.max_pixels), batch_size=ec.batch_size,
            num_workers=ec.num_workers, collate_fn=_collate, pin_memory=model.device == "cuda",
            persistent_workers=False, prefetch_factor=4 if ec.num_workers else None,
        )
        next_part = (list_parts(folder) or [-1])[-1] + 1
        buf_ids: list[int] = []
        buf_vecs: list[np.ndarray] = []
        status_rows: list[tuple] = []

        def flush(final: bool = False) -> None:
            nonlocal next_part, buf_ids, buf_vecs, status_rows
            if buf_ids and (final or len(buf_ids) >= ec.part_rows):
                ids = np.asarray(buf_ids, np.int64)
                vecs = np.concatenate(buf_vecs)
                write_part(folder, next_part, ids, vecs)
                with ws.transaction() as con:
                    con.executemany("INSERT INTO embeddings VALUES (?, ?, ?, 'ok')", [(int(i), ec.model, next_part) for i in ids])
                counters["embedded"] += len(ids)
                next_part += 1
                buf_ids, buf_vecs = [], []
            if status_rows and (final or len(status_rows) >= 1024):
                with ws.transaction() as con:
                    con.executemany("INSERT INTO embeddings VALUES (?, ?, NULL, ?)", status_rows)
                status_rows = []

        with bar(total=len(todo), desc=f"embed {ec.model}", unit="img") as pb:
            for sids, x, bad in loader:
                if x is not None:
                    feats, ok = normalise(model.forward(x))
                    for sid, f, good in zip(sids, feats, ok):
                        if good:
                            buf_ids.append(sid)
                            buf_vecs.append(f[None].astype(np.float16))
                        else:
                            status_rows.append((sid, ec.model, "bad_vector"))
                            counters["bad_vector"] += 1
                for sid, st in bad:
                    status_rows.append((sid, ec.model, st))
                    counters["failed"] += 1
                pb.update(len(sids) + len(bad))
                flush()
        flush(final=True)
    counters["total_embedded"] = int(ws.scalar("SELECT count(*) FROM embeddings WHERE model = ? AND status = 'ok'", [ec.model]))
    counters["parts"] = len(list_parts(folder))
    return counters
