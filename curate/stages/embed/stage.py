"""embed: image (and caption) embeddings → ``embeddings/<key>/part-*.npy`` + ``embeddings`` rows.

**Key.** Vectors are stored under a key = model name + ``@`` + 12 hex digits of the
preprocessing identity (:attr:`curate.models.ModelSpec.key`; captions:
``text:<model>@…``). Changing the model *or* anything that changes the pixels the model
sees (border trimming, JPEG draft decoding, the resolved preset (model, full, SSCD presets), the model's input size/mean/std,
curate's preprocessing version) gives a new key, so old vectors are never mixed with new
ones; switching back finds the old ones again. ``embeddings.model`` holds the key.

**Work plan.** The samples to embed (image status 'ok', no ``embeddings`` row for the key),
in ``sample_id`` order, are cut into chunks of ``part_rows``; chunk *k* becomes part
``first + k``: its vectors (ids + float16 rows) and, in ``part-NNNNN.meta.json``, the
samples that got no vector and why. Batches never straddle a chunk, so a chunk's vectors
depend only on its samples (never on where a run started). Each chunk's catalog rows are
committed in one transaction after its files are renamed into place.

**Resume.** A run killed at any point (SIGKILL included) leaves complete parts (atomic
renames) and at most temp files. The next run removes temp files, records parts the catalog
does not know yet (ids → 'ok', meta → failures), forgets catalog rows whose part files are
gone, and embeds only the remaining samples — from the start of the interrupted chunk, with
the same chunk boundaries and part numbers, so it writes the same parts, byte for byte, as
an uninterrupted run, and recomputes nothing that was finished.

**Throughput.** ``num_workers`` DataLoader processes (``auto``: :func:`curate.models.feeder.decode_workers`)
start before the model loads, so the first batches are decoded while it loads; they read and decode (:mod:`curate.media.images`,
JPEG draft mode at the model's input size) and preprocess to uint8 (3, H, W) tensors; the
main process moves each batch to the device (pinned memory on GPU), normalises it there
and runs the model (bf16/fp16 autocast on GPU), while 2–4 batches per worker are
prefetched. Counters report the time spent waiting for data (``data_wait_s``) against the
model's time.

**Changed images.** Each ``embeddings`` row of an image key keeps the sha256 of the image it
was computed from (``images.sha256`` when it was committed). When the hash stage re-hashed a
sample with other bytes (its file replaced, deleted or restored), the next run takes its vector
out of its part (the part is written again without it, under a new number) and embeds it again
(:func:`curate.stages.embed.parts.forget_stale_vectors`); every other vector is kept, bit for bit.

**Engines.** ``embed.engine: ray`` (:mod:`curate.engine.ray_engine`) embeds the same chunks
in a Ray actor pool (GPU actors with ``num_gpus``): each actor runs the chunk's batches through
the same feeder and model code, writes the chunk's part itself (same number, same bytes) and
returns its rows, which this process commits one part per transaction. Resume works the same
way (reconcile above). Caption embeddings always run in this process.

**K13.** Raw features are L2-normalised in float32; rows with a NaN/inf value get status
``nonfinite_vector`` and rows with norm < 1e-6 ``zero_vector``; neither is stored, so every
stored row has unit norm and a cosine threshold means what it says.

**Captions** (``caption_model``): the same chunked, resumable scheme over every sample with
its caption (``no_caption`` when NULL or blank). With an open_clip caption model equal to
the image model, table ``image_text`` gets ``similarity`` = cosine(image vector, caption
vector) of the stored (float16) vectors per sample, like LAION's CLIP ``similarity`` column.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from curate.config import RunConfig
from curate.engine import get_engine
from curate.models import load_text_model, resolve_device, text_identity
from curate.models.feeder import (  # noqa: F401
    MIN_NORM,
    ImageDataset,
    chunk_batches,
    collate,
    decode_workers,
    embed_batch,
    forward,
    normalise,
    vector_status,
)
from curate.models.recipe import caption_key, image_key, image_spec, load_model  # noqa: F401
from curate.progress import bar
from curate.stages.embed import distributed
from curate.stages.embed import precomputed as embimport
from curate.stages.embed.parts import commit_rows, forget_stale_vectors, next_part, reconcile, write_chunk
from curate.stages.embed.precomputed import pairs
from curate.store.catalog import Workspace, file_fingerprint
from curate.store.embeddings import (
    clean_temp,
    list_parts,
    lookup,
    read_part_ids,
    read_part_meta,
    read_store_meta,
    write_part,
    write_store_meta,
)

# -- stage -----------------------------------------------------------------------------------

def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    cm = cfg.embed.caption_model
    caption = text_identity(cm) if cm else None
    if cfg.embed.model.startswith("precomputed:"):  # imported files: re-run when one is added or changes
        return {"image": [(str(v), file_fingerprint(v), str(m) if m else None) for spec in cfg.embed.precomputed
                          for v, m in pairs(cfg, spec)], "caption": caption}
    return {"image": image_spec(cfg).identity(), "caption": caption}


def embed_images(ws: Workspace, cfg: RunConfig, spec=None, counters: dict[str, Any] | None = None,
                 model_box: dict | None = None) -> dict[str, Any]:
    """Embed every sample whose image hashed ``ok`` and that has no ``embeddings`` row for the
    key of ``spec`` yet — the image half of the embed stage, also used by ``curate probe score``
    to embed the training images with an SSCD descriptor.

    Resumable and idempotent (module doc, *Work plan* and *Resume*): the catalog is first
    reconciled with the parts on disk, then the remaining samples, in ``sample_id`` order, are
    cut into chunks of ``cfg.embed.part_rows``; chunk *k* becomes part ``first + k`` of
    ``ws.embeddings_dir(spec.key)``: ``part-NNNNN.ids.npy`` int64 (n,) sample ids and
    ``part-NNNNN.npy`` float16 (n, d) rows, L2-normalised in float32 before rounding (norm
    1 ± 1e-3, every value in [−1, 1]), plus ``part-NNNNN.meta.json`` with the chunk's samples
    that got no vector. Each part's ``embeddings`` rows (status ``ok``, ``zero_vector``,
    ``nonfinite_vector`` or the decode status) are committed in one transaction after its files
    are in place. With ``cfg.embed.engine == "ray"`` the chunks are embedded by a Ray actor pool
    (:func:`curate.stages.embed.distributed.embed_images`): same parts, same rows.

    Args:
        ws: the open workspace (its catalog is written).
        cfg: the run config; ``cfg.embed`` gives model, device, precision, batch size, decoding
            workers, ``part_rows`` and the engine; ``cfg.hash.max_pixels`` the decode limit.
        spec: the resolved :class:`curate.models.ModelSpec` whose ``key`` the vectors are
            stored under and whose preprocessing the loader applies; None = :func:`image_spec`
            of ``cfg`` (the spec must resolve to the model ``cfg.embed`` loads).
        counters: dict updated in place (and returned); None = a new one.
        model_box: dict that receives the loaded model under ``"image"`` (reused by the caption
            half for an open_clip text tower); None = not kept.

    Returns:
        ``counters``: ``recovered_rows``, ``forgotten_parts``, ``temp_files_removed`` (the
        reconciliation), ``embedded`` (vectors written), ``failed`` ({status: samples}),
        ``parts_written``; when there was work, the local engine adds ``num_workers``,
        ``device``, ``precision``, ``dim``, ``model_description``, ``seconds_embedding``,
        ``images_per_s``, ``data_wait_s``, ``model_s``, ``data_wait_fraction`` (and their
        ``…_after_first_batch`` steady-state variants), the Ray engine its own timings and
        ``ray`` (cluster, actors, units, worker processes).

    Raises:
        ConfigError: the model cannot be loaded (unknown name, missing package or weights file,
            no GPU for ``device: cuda``; with Ray, ``device: cuda`` without ``num_gpus``).
        RuntimeError: the loaded model's preprocessing differs from ``spec``'s.
    """
    from torch.utils.data import DataLoader

    spec = image_spec(cfg) if spec is None else spec
    counters = {} if counters is None else counters
    model_box = {} if model_box is None else model_box
    ec = cfg.embed
    key = spec.key
    folder = ws.embeddings_dir(key)
    counters.update(reconcile(ws, key, folder))
    counters.update(forget_stale_vectors(ws, key, folder))  # images re-hashed with other bytes: embedded again
    todo_sql = ("SELECT s.sample_id, s.image_ref FROM samples s JOIN images i USING (sample_id) "
                "WHERE i.status = 'ok' AND s.image_ref IS NOT NULL "
                "AND s.sample_id NOT IN (SELECT sample_id FROM embeddings WHERE model = ?) ORDER BY s.sample_id")
    if get_engine(ec.engine).distributed:  # the same chunks, parts and rows, embedded by the engine's workers
        distributed.embed_images(ws, cfg, spec, folder, todo_sql, [key], counters)
        return counters
    todo = ws.q(todo_sql, [key])
    counters.update(embedded=0, failed={}, parts_written=0)
    if not todo:
        return counters
    # The loader needs only the preprocessing (resolved without weights), so its workers start
    # and decode the first batches while the model loads: the model never waits at start-up.
    batches = chunk_batches(len(todo), ec.part_rows, ec.batch_size)
    device = resolve_device(ec.device)
    workers = decode_workers(ec.num_workers, device)
    counters["num_workers"] = workers
    loader = DataLoader(
        ImageDataset(todo, spec.preprocess, cfg.hash.max_pixels), batch_sampler=batches,
        num_workers=workers, collate_fn=collate, pin_memory=device == "cuda",
        # batches in flight: 4 per worker for small batches, 2 for GPU-sized ones (shared memory)
        prefetch_factor=max(2, min(4, 256 // ec.batch_size)) if workers else None,
    )
    it = iter(loader)
    try:
        model = load_model(cfg)
    except BaseException:
        del it  # shuts the workers down
        raise
    if model.preprocess != spec.preprocess:  # the loader decoded for the resolved spec
        raise RuntimeError(f"{ec.model}: loaded preprocessing {model.preprocess} differs from {spec.preprocess}")
    model_box["image"] = model
    counters.update(device=model.device, precision=model.precision, dim=model.dim, model_description=model.description)
    if read_store_meta(folder) is None:
        write_store_meta(folder, {"key": key, "kind": "image", "dim": model.dim, "description": model.description,
                                  **spec.identity()})
    first = next_part(folder)
    chunk_ids: list[int] = []
    chunk_vecs: list[np.ndarray] = []
    chunk_failed: list[tuple[int, str]] = []
    wait = model_s = 0.0
    t_loop = time.perf_counter()
    with bar(total=len(todo), desc=f"embed {ec.model}", unit="img") as pb:
        for b, idx in enumerate(batches):
            t0 = time.perf_counter()
            sids, x, bad = next(it)
            wait += time.perf_counter() - t0
            ok_ids, ok_vecs, failed, dt = embed_batch(model, sids, x, bad)
            model_s += dt
            chunk_ids += ok_ids
            chunk_vecs += ok_vecs
            chunk_failed += failed
            pb.update(len(idx))
            if b == 0:  # worker start-up and the model's first-call set-up end here
                t_first, wait_first = time.perf_counter(), wait
            chunk = idx[0] // ec.part_rows
            if b + 1 == len(batches) or batches[b + 1][0] // ec.part_rows != chunk:
                num = first + chunk
                ids, failed = write_chunk(folder, num, key, model.dim, chunk_ids, chunk_vecs, chunk_failed)
                commit_rows(ws, [(int(i), key, num, "ok") for i in ids] + [(s, key, num, st) for s, st in failed])
                counters["embedded"] += len(ids)
                counters["parts_written"] += 1
                for _, st in failed:
                    counters["failed"][st] = counters["failed"].get(st, 0) + 1
                chunk_ids, chunk_vecs, chunk_failed = [], [], []
    t_end = time.perf_counter()
    loop_s = t_end - t_loop
    counters.update(seconds_embedding=round(loop_s, 3), images_per_s=round(len(todo) / max(loop_s, 1e-9), 2),
                    data_wait_s=round(wait, 3), model_s=round(model_s, 3),
                    data_wait_fraction=round(wait / max(loop_s, 1e-9), 4))
    if len(batches) > 1:  # steady state: after the first batch (start-up is paid once per run)
        rest = len(todo) - len(batches[0])
        counters.update(images_per_s_after_first_batch=round(rest / max(t_end - t_first, 1e-9), 2),
                        data_wait_fraction_after_first_batch=round((wait - wait_first) / max(t_end - t_first, 1e-9), 4))
    return counters


def _embed_captions(ws: Workspace, cfg: RunConfig, key: str, counters: dict[str, Any], model_box: dict) -> None:
    ec = cfg.embed
    folder = ws.embeddings_dir(key)
    counters.update(reconcile(ws, key, folder))
    todo = ws.q(
        "SELECT sample_id, caption FROM samples WHERE sample_id NOT IN "
        "(SELECT sample_id FROM embeddings WHERE model = ?) ORDER BY sample_id", [key])
    counters.update(embedded=0, no_caption=0, failed={}, parts_written=0)
    if not todo:
        return
    img = model_box.get("image")
    same_clip = ec.caption_model == ec.model and ec.model.startswith("open_clip:")
    if same_clip and img is not None and img.text is not None:
        model = img.text
    else:
        model = load_text_model(ec.caption_model, ec.device, ec.precision)
    counters.update(device=model.device, dim=model.dim, model_description=model.description)
    if read_store_meta(folder) is None:
        write_store_meta(folder, {"key": key, "kind": "caption", "dim": model.dim, "description": model.description,
                                  "identity": model.identity})
    img_key = image_key(cfg)
    img_folder = ws.embeddings_dir(img_key) if same_clip else None
    first = next_part(folder)
    batches = chunk_batches(len(todo), ec.part_rows, ec.caption_batch_size)
    chunk_ids: list[int] = []
    chunk_vecs: list[np.ndarray] = []
    chunk_failed: list[tuple[int, str]] = []
    t_loop = time.perf_counter()
    with bar(total=len(todo), desc=f"captions {ec.caption_model}", unit="cap") as pb:
        for b, idx in enumerate(batches):
            items = [todo[i] for i in idx]
            texts = [(sid, cap) for sid, cap in items if cap is not None and cap.strip()]
            chunk_failed += [(sid, "no_caption") for sid, cap in items if cap is None or not cap.strip()]
            if texts:
                feats = model.encode([c for _, c in texts])
                vecs, _ = normalise(feats)
                for (sid, _), v, st in zip(texts, vecs, vector_status(feats)):
                    if st == "ok":
                        chunk_ids.append(sid)
                        chunk_vecs.append(v)
                    else:
                        chunk_failed.append((sid, st))
            pb.update(len(idx))
            chunk = idx[0] // ec.part_rows
            if b + 1 == len(batches) or batches[b + 1][0] // ec.part_rows != chunk:
                num = first + chunk
                ids = np.asarray(chunk_ids, np.int64)
                v = np.stack(chunk_vecs) if chunk_vecs else np.zeros((0, model.dim), np.float32)
                sims: list[float | None] = [None] * len(ids)
                if img_folder is not None and len(ids):
                    found, iv = lookup(img_folder, ids)
                    tv = v.astype(np.float16).astype(np.float32)  # the stored vectors
                    s = (iv * tv).sum(axis=1)
                    sims = [float(x) if f else None for x, f in zip(s.tolist(), found.tolist())]
                failed = sorted(chunk_failed)
                meta = {"key": key, "failed": [list(f) for f in failed]}
                if img_folder is not None:
                    meta["similarity"] = [img_key, sims]
                write_part(folder, num, ids, v, meta=meta)
                commit_rows(ws, [(int(i), key, num, "ok") for i in ids] + [(s_, key, num, st) for s_, st in failed],
                             [(int(i), img_key, key, sm) for i, sm in zip(ids.tolist(), sims) if sm is not None])
                counters["embedded"] += len(ids)
                counters["parts_written"] += 1
                for _, st in failed:
                    if st == "no_caption":
                        counters["no_caption"] += 1
                    else:
                        counters["failed"][st] = counters["failed"].get(st, 0) + 1
                chunk_ids, chunk_vecs, chunk_failed = [], [], []
    loop_s = time.perf_counter() - t_loop
    counters.update(seconds_embedding=round(loop_s, 3), captions_per_s=round(len(todo) / max(loop_s, 1e-9), 2))


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    ec = cfg.embed
    model_box: dict = {}
    if ec.model.startswith("precomputed:"):  # vectors made elsewhere, joined by key (K14)
        counters = embimport.run(ws, cfg)
    else:
        spec = image_spec(cfg)
        key = spec.key
        counters = {"model": ec.model, "key": key}
        embed_images(ws, cfg, spec, counters, model_box)
        counters["total_embedded"] = int(ws.scalar(
            "SELECT count(*) FROM embeddings WHERE model = ? AND status = 'ok'", [key]))
        counters["parts"] = len(list_parts(ws.embeddings_dir(key)))
    ck = caption_key(cfg)
    if ck:
        cap: dict[str, Any] = {"model": ec.caption_model, "key": ck}
        _embed_captions(ws, cfg, ck, cap, model_box)
        cap["total_embedded"] = int(ws.scalar(
            "SELECT count(*) FROM embeddings WHERE model = ? AND status = 'ok'", [ck]))
        sim = ws.q("SELECT count(*), avg(similarity) FROM image_text WHERE caption_model = ? AND image_model = ?",
                   [ck, image_key(cfg)])[0]
        if sim[0]:
            cap.update(with_similarity=int(sim[0]), mean_similarity=round(float(sim[1]), 4))
        counters["captions"] = cap
    return counters
