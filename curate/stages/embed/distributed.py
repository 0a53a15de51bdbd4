"""The embed stage on a distributed engine (:mod:`curate.engine`): a worker that embeds one chunk
into its part, and the driver loop that commits each part's catalog rows."""
from __future__ import annotations

import math
import os
import time
from typing import Any, Iterator

import numpy as np

from curate.engine import get_engine
from curate.engine.units import unit_batches, units_sql
from curate.errors import ConfigError
from curate.models import load_image_model, resolve_image_model
from curate.models.feeder import ImageDataset, chunk_batches, collate, decode_workers, embed_batch
from curate.progress import bar
from curate.stages.embed.parts import commit_rows, write_chunk
from curate.store.embeddings import clean_temp, list_parts, read_store_meta, write_store_meta


class EmbedWorker:
    """Unit worker (a Ray actor on the ray engine): one chunk (unit) → its embedding part, written by the actor, and the chunk's
    catalog rows as one result row (``unit``, ``ids``, ``failed_ids``, ``failed_status``,
    ``n``, ``seconds``, ``data_wait_s``, ``model_s``, ``device``, ``precision``, ``dim``,
    ``description``, ``worker_pid``).

    The model loads once per actor (``num_gpus`` of a GPU when given; on CPU torch uses
    ``cpus`` threads). Each chunk is embedded in the batches the local engine uses
    (:func:`~curate.models.feeder.chunk_batches` from the chunk's start), decoded by ``num_workers``
    DataLoader processes (``auto``: :func:`~curate.models.feeder.decode_workers` of ``cpus``).

    Raises:
        RuntimeError: the preprocessing this node resolves differs from the driver's key (a
            different curate or model package on the cluster).
    """

    def __init__(self, model: str, device: str, preset: str, trim_border: bool, jpeg_draft: bool, precision: str,
                 key: str, folder, max_pixels: int, batch_size: int, num_workers, cpus: float):
        import torch


        self.spec = resolve_image_model(model, preset=preset, trim_border=trim_border, jpeg_draft=jpeg_draft)
        if self.spec.key != key:
            raise RuntimeError(f"this node resolves {model} to {self.spec.key}, the driver to {key}: "
                               "install the same curate and model packages on every node")
        self.model = load_image_model(model, device, preset=preset, trim_border=trim_border, jpeg_draft=jpeg_draft,
                                      precision=precision)
        if self.model.preprocess != self.spec.preprocess:
            raise RuntimeError(f"{model}: loaded preprocessing {self.model.preprocess} differs from {self.spec.preprocess}")
        threads = max(1, int(cpus))
        if self.model.device == "cpu":
            torch.set_num_threads(threads)
        self.workers = decode_workers(num_workers, self.model.device, cpus=threads)
        self.key, self.folder, self.max_pixels, self.batch_size = key, folder, max_pixels, batch_size
        self.pid = os.getpid()
        if read_store_meta(folder) is None:  # the same record the local engine writes
            write_store_meta(folder, {"key": key, "kind": "image", "dim": self.model.dim,
                                      "description": self.model.description, **self.spec.identity()})

    def _chunk(self, unit: int, ids: list[int], refs: list[str]) -> dict[str, Any]:
        from torch.utils.data import DataLoader

        t0 = time.perf_counter()
        items = list(zip(ids, refs))
        batches = chunk_batches(len(items), len(items), self.batch_size)
        w = self.workers
        loader = DataLoader(ImageDataset(items, self.spec.preprocess, self.max_pixels), batch_sampler=batches,
                            num_workers=w, collate_fn=collate, pin_memory=self.model.device == "cuda",
                            prefetch_factor=max(2, min(4, 256 // self.batch_size)) if w else None)
        ok_ids: list[int] = []
        vecs: list[np.ndarray] = []
        failed: list[tuple[int, str]] = []
        wait = model_s = 0.0
        it = iter(loader)
        for _ in batches:
            t1 = time.perf_counter()
            sids, x, bad = next(it)
            wait += time.perf_counter() - t1
            a, v, f, dt = embed_batch(self.model, sids, x, bad)
            ok_ids += a
            vecs += v
            failed += f
            model_s += dt
        del it
        arr, bad_sorted = write_chunk(self.folder, unit, self.key, self.model.dim, ok_ids, vecs, failed)
        return {"unit": unit, "ids": arr.tolist(), "failed_ids": [s for s, _ in bad_sorted],
                "failed_status": [st for _, st in bad_sorted], "n": len(items),
                "seconds": time.perf_counter() - t0, "data_wait_s": wait, "model_s": model_s,
                "device": self.model.device, "precision": self.model.precision, "dim": self.model.dim,
                "description": self.model.description, "worker_pid": self.pid}

    def __call__(self, batch):
        import pyarrow as pa

        out = [self._chunk(u, ids, refs) for u, ids, refs in zip(
            batch.column("unit").to_pylist(), batch.column("sample_id").to_pylist(), batch.column("image_ref").to_pylist())]
        return pa.Table.from_pylist(out, schema=embed_schema())


def embed_schema():
    import pyarrow as pa

    return pa.schema([("unit", pa.int64()), ("ids", pa.list_(pa.int64())), ("failed_ids", pa.list_(pa.int64())),
                      ("failed_status", pa.list_(pa.string())), ("n", pa.int64()), ("seconds", pa.float64()),
                      ("data_wait_s", pa.float64()), ("model_s", pa.float64()), ("device", pa.string()),
                      ("precision", pa.string()), ("dim", pa.int64()), ("description", pa.string()),
                      ("worker_pid", pa.int64())])


def embed_images(ws, cfg, spec, folder, todo_sql: str, params: list, counters: dict[str, Any]) -> None:
    """The embed stage's image part on Ray: the samples of ``todo_sql`` in chunks of
    ``part_rows`` (chunk *k* → part ``first + k``, ``first`` = the folder's next part number, as
    the local engine numbers them), embedded and written by :class:`EmbedWorker` actors; each
    chunk's ``embeddings`` rows are committed here, one transaction per part. Updates
    ``counters`` like the local engine (``embedded``, ``failed``, ``parts_written``, ``device``,
    ``precision``, ``dim``, ``model_description``, timings) plus ``ray`` (cluster, actors,
    units, worker processes).

    Raises:
        ConfigError: ``device: cuda`` with ``num_gpus: 0`` (the actors would see no GPU).
    """
    import pyarrow as pa

    ec = cfg.embed
    key = spec.key
    if ec.device == "cuda" and not ec.num_gpus:
        raise ConfigError("embed: device cuda with engine ray needs num_gpus > 0 (GPUs per actor, e.g. --num-gpus 1)")
    n = int(ws.scalar(f"SELECT count(*) FROM ({todo_sql})", params))
    counters.update(embedded=0, failed={}, parts_written=0)
    if not n:
        return
    first = (list_parts(folder) or [-1])[-1] + 1
    n_units = math.ceil(n / ec.part_rows)
    ctor = {"model": ec.model, "device": ec.device, "preset": ec.preprocess, "trim_border": ec.trim_border,
            "jpeg_draft": ec.jpeg_draft, "precision": ec.precision, "key": key, "folder": folder,
            "max_pixels": cfg.hash.max_pixels, "batch_size": ec.batch_size, "num_workers": ec.num_workers,
            "cpus": ec.actor_cpus}
    ray_stats: dict[str, Any] = {}
    agg = {"seconds": 0.0, "data_wait_s": 0.0, "model_s": 0.0}
    t_loop = time.perf_counter()
    batches = unit_batches(ws, units_sql(todo_sql, ec.part_rows, first), params)
    with bar(total=n, desc=f"embed {ec.model} (ray)", unit="img") as pb:
        for t in get_engine(ec.engine).run_units(ws, ec, "embed", batches, n_units, EmbedWorker, ctor, num_gpus=ec.num_gpus,
                           most_per_shard=8, stats=ray_stats):
            for j in range(t.num_rows):
                r = {k: t.column(k)[j].as_py() for k in t.column_names if k not in ("ids", "failed_ids")}
                num = int(r["unit"])
                ids = t.column("ids")[j].values.to_numpy(zero_copy_only=False)
                fids = t.column("failed_ids")[j].values.to_numpy(zero_copy_only=False)
                n_rows = len(ids) + len(fids)  # the same rows as the local engine's, built column-wise
                commit_rows(ws, pa.table({
                    "sample_id": pa.array(np.concatenate([ids, fids]).astype(np.int64)),
                    "model": pa.array(np.full(n_rows, key, dtype=object), pa.string()),
                    "part": pa.array(np.full(n_rows, num, np.int32)),
                    "status": pa.array(["ok"] * len(ids) + r["failed_status"], pa.string())}))
                counters["embedded"] += len(ids)
                counters["parts_written"] += 1
                for st in r["failed_status"]:
                    counters["failed"][st] = counters["failed"].get(st, 0) + 1
                for k in agg:
                    agg[k] += r[k]
                counters.update(device=r["device"], precision=r["precision"], dim=r["dim"],
                                model_description=r["description"])
                pb.update(r["n"])
    counters["temp_files_removed_after_run"] = clean_temp(folder)  # left by actors killed mid-write
    loop_s = time.perf_counter() - t_loop
    counters.update(seconds_embedding=round(loop_s, 3), images_per_s=round(n / max(loop_s, 1e-9), 2),
                    actor_seconds=round(agg["seconds"], 3), data_wait_s=round(agg["data_wait_s"], 3),
                    model_s=round(agg["model_s"], 3),
                    data_wait_fraction=round(agg["data_wait_s"] / max(agg["seconds"], 1e-9), 4),
                    ray=ray_stats)


