"""The Ray engine: hash, embed and the flag classifiers on a Ray cluster, through Ray Data.

**Plan** (the same for the three stages). The driver — the ``curate`` process, the catalog's
only writer — cuts the work into *units* exactly as the local engine does (hash: runs of
``sub`` samples; embed: chunks of ``part_rows`` samples, chunk *k* → part ``first + k``;
classifiers: batches of 64 / 16 samples), streams them out of DuckDB into parquet *work
shards* (one row per unit: ``unit``, ``sample_id`` list, ``image_ref`` list) under
``ray_staging`` (a path or an ``s3://``/``gs://``… URI every node can read, through
:mod:`curate.fsio`), and runs::

    ray.data.read_parquet(shards)  →  map_batches(<Worker>, actor pool, num_cpus, num_gpus)

with ``preserve_order``, so results come back in unit order. The workers call the local
engine's own functions on each unit — :func:`curate.stages.hash.hash_items`, the feeder
(:class:`~curate.feeder.ImageDataset`, :func:`~curate.feeder.collate`,
:func:`~curate.feeder.chunk_batches`, :func:`~curate.feeder.embed_batch`) with
:func:`curate.stages.embed.write_chunk`, :func:`curate.classifiers.local_batches` — so a unit
gives the same result on either engine by construction. Embedding actors write their part
files themselves (to ``embed.parts_root``: an ``s3://``… URI or a filesystem every node
mounts; by default the workspace's ``embeddings/`` folder, fine on one node); everything else returns to the driver, which commits it exactly as the
local engine does (hash: every ``batch_size`` rows; embed: one transaction per part;
classifiers: one per batch).

**Failures.** Ray Data's actor pools restart a dead actor and retry its unit
(``max_restarts=-1``, ``max_task_retries=-1``): a SIGKILLed worker costs the unit it was
working on, nothing else, and no unit's result reaches the driver twice. A unit is pure (its
result depends only on its samples), so a retried unit gives the same rows; a retried embed
unit rewrites the same part atomically (temp files of a killed writer are removed at the end
of the run). If the driver itself dies, the next run resumes like the local engine: hash and
the classifiers from the samples without rows, embed from its parts on disk (parts written but
not committed are recorded, not recomputed).

**Why V1 parquet reading and a fixed pool.** Ray Data's newer parquet path starts a listing
task that always reserves a CPU; an actor pool that fills a small cluster then waits for it
forever. The work shards are read with ``use_datasource_v2 = False`` and ``num_cpus=0`` read
tasks (they only read a few KB of references per unit), one block per shard.

Ray is started with ``include_dashboard=False`` (no dashboard modules; Ray still runs its small
API server), usage statistics off (``RAY_USAGE_STATS_ENABLED=0``) and nothing is downloaded:
workers import the ``curate`` installed on each node (docs/SCALE_OUT.md).
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Iterable, Iterator

import numpy as np

from curate import fsio


# ----------------------------------------------------------------------------------------------
# cluster and Ray Data set-up


def connect(sec) -> dict[str, Any]:
    """Join the Ray cluster of ``sec`` (an :class:`curate.config.EngineConfig`), or start one on
    this machine; once per process (an already initialised Ray is used as it is).

    ``ray_address`` None: ``$RAY_ADDRESS`` if set, else a new local instance with
    ``ray_num_cpus`` CPUs (all when None). Returns the cluster's resources: ``{'nodes', 'cpus',
    'gpus'}``.

    Raises:
        ConnectionError: (from Ray) the address cannot be reached.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if sec.ray_address is None and not os.environ.get("RAY_ADDRESS"):
            kw["num_cpus"] = sec.ray_num_cpus
        ray.init(address=sec.ray_address, **kw)
    res = ray.cluster_resources()
    return {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "cpus": float(res.get("CPU", 0)),
            "gpus": float(res.get("GPU", 0))}


def _data_context() -> None:
    import warnings

    import ray.data

    # Ray Data's own context copy touches its deprecated fields (use_polars, …): not ours to fix
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.context")

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # e.g. "progress bars disabled" is not news
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # results in unit order: commits mirror the local engine
    ctx.enable_progress_bars = False  # curate draws its own bar on stderr; stdout carries JSON only
    ctx.use_datasource_v2 = False  # see module doc: V2's listing task always takes a CPU
    ctx.print_on_execution_start = False


def pool_size(sec, res: dict[str, Any], n_units: int, num_gpus: float = 0.0) -> int:
    """Actors in the pool: ``sec.actors``, else as many as the cluster's CPUs (``actor_cpus``
    each) and GPUs (``num_gpus`` each) allow; never more than there are units, at least 1."""
    if sec.actors:
        n = sec.actors
    else:
        n = int(res["cpus"] // sec.actor_cpus) if sec.actor_cpus else 1
        if num_gpus:
            n = min(n, int(res["gpus"] // num_gpus))
    return max(1, min(n, n_units))


def staging_folder(ws, sec, stage: str):
    """Where this stage's work shards go: ``<ray_staging>/<stage>`` or
    ``<workspace>/tmp/ray/<stage>`` (a path or URI)."""
    root = sec.ray_staging if sec.ray_staging else ws.root / "tmp" / "ray"
    return fsio.join(root, stage)


def write_shards(folder, batches: Iterable, units_per_shard: int) -> tuple[int, int]:
    """Write unit rows (arrow record batches or tables, in unit order) as parquet shards
    ``units-NNNNNN.parquet`` of ``units_per_shard`` rows into ``folder`` (emptied first).

    Returns:
        (units written, shards written).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fsio.delete_dir(folder)
    fsio.makedirs(folder)
    fs, base = fsio.arrow_fs(folder)
    pending: list[Any] = []
    n_pending = units = shards = 0

    def flush(final: bool) -> None:
        nonlocal pending, n_pending, units, shards
        if not pending:
            return
        t = pa.concat_tables([b if isinstance(b, pa.Table) else pa.Table.from_batches([b]) for b in pending])
        start = 0
        while t.num_rows - start >= units_per_shard or (final and start < t.num_rows):
            piece = t.slice(start, units_per_shard)
            pq.write_table(piece, f"{base}/units-{shards:06d}.parquet", filesystem=fs)
            shards += 1
            units += piece.num_rows
            start += piece.num_rows
        rest = t.slice(start)
        pending, n_pending = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

    for b in batches:
        if b.num_rows:
            pending.append(b)
            n_pending += b.num_rows
            if n_pending >= units_per_shard:
                flush(False)
    flush(True)
    return units, shards


def units_per_shard(n_units: int, most: int = 64) -> int:
    """Units per parquet shard: 1 for small runs (every unit its own block, so every actor gets
    work), growing to ``most`` so a LAION-size run has thousands of shards, not millions."""
    return max(1, min(most, n_units // 512))


def run_units(ws, sec, stage: str, batches: Iterable, n_units: int, worker: type, ctor: dict[str, Any], *,
              num_gpus: float = 0.0, most_per_shard: int = 64,
              stats: dict[str, Any] | None = None) -> Iterator[Any]:
    """Run ``worker`` (a callable class: ``__init__(**ctor)``, ``__call__(pyarrow.Table of unit
    rows) -> pyarrow.Table``) over the units in an actor pool, one shard (block) per call; yield
    its result tables in unit order. ``stats`` gets ``{'nodes', 'cpus', 'gpus', 'actors', 'units', 'shards',
    'worker_pids'}`` (``worker_pids``: distinct processes that returned results — more than
    ``actors`` when an actor died and was restarted).

    The work shards are removed when the run ends (also on error).
    """
    import ray.data

    stats = stats if stats is not None else {}
    res = connect(sec)
    folder = staging_folder(ws, sec, stage)
    per_shard = units_per_shard(n_units, most_per_shard)
    try:
        units, shards = write_shards(folder, batches, per_shard)
        actors = pool_size(sec, res, units, num_gpus)
        stats.update(res, actors=actors, units=units, shards=shards, worker_pids=0)
        if not units:
            return
        _data_context()
        fs, path = fsio.arrow_fs(folder)
        ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=0, override_num_blocks=shards)
        ds = ds.map_batches(
            worker, fn_constructor_kwargs=ctor, batch_size=per_shard, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=sec.actor_cpus,
            num_gpus=num_gpus if num_gpus else None,
        )
        pids: set[int] = set()
        for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if "worker_pid" in t.column_names:
                pids.update(t.column("worker_pid").to_pylist())
                stats["worker_pids"] = len(pids)
            yield t
    finally:
        fsio.delete_dir(folder)


def _units_sql(todo_sql: str, size: int, first: int = 0) -> str:
    """Unit rows (``unit``, ``sample_id`` list, ``image_ref`` list) of ``size`` consecutive
    samples of ``todo_sql`` (sample_id, image_ref …, ordered by sample_id); unit ids from
    ``first``."""
    return (
        f"SELECT CAST({int(first)} + rn // {int(size)} AS BIGINT) AS unit, list(sample_id ORDER BY sample_id) AS sample_id, "
        f"list(image_ref ORDER BY sample_id) AS image_ref FROM (SELECT sample_id, image_ref, "
        f"row_number() OVER (ORDER BY sample_id) - 1 AS rn FROM ({todo_sql}) _t) _u GROUP BY 1 ORDER BY 1"
    )


def _unit_batches(ws, sql: str, params: list | None = None, rows: int = 1024):
    """The rows of ``sql`` as arrow record batches, streamed out of DuckDB."""
    reader = ws.con.sql(sql, params=params or None).to_arrow_reader(rows)
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _table_rows(t, names: list[str]) -> list[tuple]:
    cols = [t.column(n).to_pylist() for n in names]
    return list(zip(*cols))


# ----------------------------------------------------------------------------------------------
# hash


class HashWorker:
    """Ray actor: unit rows → ``images`` rows through :func:`curate.stages.hash.hash_items`
    (one call per unit = one local-engine run), as an arrow table of
    :func:`curate.stages.hash.images_schema` plus ``worker_pid``."""

    def __init__(self, max_pixels: int):
        from curate import lanczos
        from curate.stages.hash import worker_init

        worker_init()  # as the local pool's workers: glibc keeps freed image memory
        lanczos.warm()  # compile (or load) the resize kernels once per actor
        self.max_pixels = max_pixels
        self.pid = os.getpid()

    def __call__(self, batch):
        import pyarrow as pa

        from curate.stages.hash import hash_items, rows_table

        rows: list[tuple] = []
        for ids, refs in zip(batch.column("sample_id").to_pylist(), batch.column("image_ref").to_pylist()):
            rows += hash_items(list(zip(ids, refs)), self.max_pixels)
        t = rows_table(rows)
        return t.append_column("worker_pid", pa.array([self.pid] * t.num_rows, pa.int64()))


def hash_runs(ws, sec, todo_sql: str, sub: int, stats: dict[str, Any] | None = None) -> Iterator[Any]:
    """The hash stage's rows for ``todo_sql`` (sample_id, image_ref ordered by sample_id),
    computed by a :class:`HashWorker` pool in runs of ``sub`` samples; yields arrow tables of
    :func:`~curate.stages.hash.images_schema` (the rows :func:`~curate.stages.hash.hash_items`
    returns, exactly) in sample order.

    Args:
        sec: the ``hash`` config section (engine keys, ``max_pixels``, ``batch_size``).
    """
    from curate.stages.hash import images_schema

    n = int(ws.scalar(f"SELECT count(*) FROM ({todo_sql})"))
    n_units = math.ceil(n / sub)
    names = images_schema().names
    for t in run_units(ws, sec, "hash", _unit_batches(ws, _units_sql(todo_sql, sub)), n_units, HashWorker,
                       {"max_pixels": sec.max_pixels}, stats=stats):
        yield t.select(names)


# ----------------------------------------------------------------------------------------------
# embed


class EmbedWorker:
    """Ray actor: one chunk (unit) → its embedding part, written by the actor, and the chunk's
    catalog rows as one result row (``unit``, ``ids``, ``failed_ids``, ``failed_status``,
    ``n``, ``seconds``, ``data_wait_s``, ``model_s``, ``device``, ``precision``, ``dim``,
    ``description``, ``worker_pid``).

    The model loads once per actor (``num_gpus`` of a GPU when given; on CPU torch uses
    ``cpus`` threads). Each chunk is embedded in the batches the local engine uses
    (:func:`~curate.feeder.chunk_batches` from the chunk's start), decoded by ``num_workers``
    DataLoader processes (``auto``: :func:`~curate.feeder.decode_workers` of ``cpus``).

    Raises:
        RuntimeError: the preprocessing this node resolves differs from the driver's key (a
            different curate or model package on the cluster).
    """

    def __init__(self, model: str, device: str, preset: str, trim_border: bool, jpeg_draft: bool, precision: str,
                 key: str, folder, max_pixels: int, batch_size: int, num_workers, cpus: float):
        import torch

        from curate.embstore import read_store_meta, write_store_meta
        from curate.feeder import decode_workers
        from curate.models import load_image_model, resolve_image_model

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

        from curate.feeder import ImageDataset, chunk_batches, collate, embed_batch
        from curate.stages.embed import write_chunk

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
        return pa.Table.from_pylist(out, schema=_embed_schema())


def _embed_schema():
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

    from curate.embstore import clean_temp, list_parts
    from curate.errors import ConfigError
    from curate.progress import bar
    from curate.stages.embed import _insert_rows

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
    batches = _unit_batches(ws, _units_sql(todo_sql, ec.part_rows, first), params)
    with bar(total=n, desc=f"embed {ec.model} (ray)", unit="img") as pb:
        for t in run_units(ws, ec, "embed", batches, n_units, EmbedWorker, ctor, num_gpus=ec.num_gpus,
                           most_per_shard=8, stats=ray_stats):
            for j in range(t.num_rows):
                r = {k: t.column(k)[j].as_py() for k in t.column_names if k not in ("ids", "failed_ids")}
                num = int(r["unit"])
                ids = t.column("ids")[j].values.to_numpy(zero_copy_only=False)
                fids = t.column("failed_ids")[j].values.to_numpy(zero_copy_only=False)
                n_rows = len(ids) + len(fids)  # the same rows as the local engine's, built column-wise
                _insert_rows(ws, pa.table({
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


# ----------------------------------------------------------------------------------------------
# flag classifiers


class ClassifyWorker:
    """Ray actor: unit rows → one result row per stored ``image_scores`` row (``unit``,
    ``sample_id``, ``sha256``, ``label``, ``score``, ``detail``, ``status``, ``worker_pid``),
    through :func:`curate.classifiers.local_batches` on the unit's samples.

    Raises:
        RuntimeError: this node's classifier key differs from the driver's (other package version).
    """

    def __init__(self, spec, key: str, max_pixels: int):
        from curate.classifiers import _model

        if spec.key != key:
            raise RuntimeError(f"this node's {spec.name} key is {spec.key}, the driver's {key}: install the same "
                               "package versions on every node")
        _model(spec.name)
        self.spec, self.max_pixels, self.pid = spec, max_pixels, os.getpid()

    def __call__(self, batch):
        import pyarrow as pa

        from curate.classifiers import local_batches

        cols: dict[str, list] = {k: [] for k in ("unit", "sample_id", "sha256", "label", "score", "detail", "status")}
        for unit, ids, refs in zip(batch.column("unit").to_pylist(), batch.column("sample_id").to_pylist(),
                                   batch.column("image_ref").to_pylist()):
            todo = list(zip(ids, refs))
            for part in local_batches(self.spec, todo, len(todo), self.max_pixels):
                for sid, sha, rows in part:
                    for r in rows:
                        for k, v in (("unit", unit), ("sample_id", sid), ("sha256", sha), ("label", r.label),
                                     ("score", r.score), ("detail", r.detail), ("status", r.status)):
                            cols[k].append(v)
        s = pa.string()
        schema = pa.schema([("unit", pa.int64()), ("sample_id", pa.int64()), ("sha256", s), ("label", s),
                            ("score", pa.float64()), ("detail", s), ("status", s)])
        t = pa.table([pa.array(cols[f.name], f.type) for f in schema], schema=schema)
        return t.append_column("worker_pid", pa.array([self.pid] * t.num_rows, pa.int64()))


def classify_batches(ws, sec, spec, todo: list[tuple], n: int, max_pixels: int,
                     stats: dict[str, Any] | None = None) -> Iterator[list[tuple]]:
    """:func:`curate.classifiers.local_batches` on a :class:`ClassifyWorker` pool: the same
    batches of ``n`` candidates of ``todo`` ((sample_id, image_ref, …) in order), yielded in
    order as lists of (sample_id, sha256, rows) for :func:`curate.classifiers._insert`."""
    import pyarrow as pa

    from curate.classifiers import _Row

    units = [(k // n, [x[0] for x in todo[k:k + n]], [x[1] for x in todo[k:k + n]]) for k in range(0, len(todo), n)]
    table = pa.table({"unit": pa.array([u[0] for u in units], pa.int64()),
                      "sample_id": pa.array([u[1] for u in units], pa.list_(pa.int64())),
                      "image_ref": pa.array([u[2] for u in units], pa.list_(pa.string()))})
    current: int | None = None
    batch: list[tuple] = []
    for t in run_units(ws, sec, f"flag-{spec.name}", [table], len(units), ClassifyWorker,
                       {"spec": spec, "key": spec.key, "max_pixels": max_pixels}, stats=stats):
        for unit, sid, sha, label, score, detail, status in _table_rows(
                t, ["unit", "sample_id", "sha256", "label", "score", "detail", "status"]):
            if unit != current:
                if batch:
                    yield batch
                current, batch = unit, []
            if not batch or batch[-1][0] != sid:
                batch.append((sid, sha, []))
            batch[-1][2].append(_Row(label, score, detail, status))
    if batch:
        yield batch
