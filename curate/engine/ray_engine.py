"""The Ray engine: hash, embed and the flag classifiers on a Ray cluster, through Ray Data.

**Plan** (the same for the three stages). The driver — the ``curate`` process, the catalog's
only writer — cuts the work into *units* exactly as the local engine does (hash: runs of
``sub`` samples; embed: chunks of ``part_rows`` samples, chunk *k* → part ``first + k``;
classifiers: batches of 64 / 16 samples), streams them out of DuckDB into parquet *work
shards* (one row per unit: ``unit``, ``sample_id`` list, ``image_ref`` list) under
``ray_staging`` (a path or an ``s3://``/``gs://``… URI every node can read, through
:mod:`curate.store.fsio`), and runs::

    ray.data.read_parquet(shards)  →  map_batches(<Worker>, actor pool, num_cpus, num_gpus)

with ``preserve_order``, so results come back in unit order. The workers call the local
engine's own functions on each unit — :func:`curate.stages.hash.stage.hash_items`, the feeder
(:class:`~curate.models.feeder.ImageDataset`, :func:`~curate.models.feeder.collate`,
:func:`~curate.models.feeder.chunk_batches`, :func:`~curate.models.feeder.embed_batch`) with
:func:`curate.stages.embed.stage.write_chunk`, :func:`curate.stages.flag.classifiers.local_batches` — so a unit
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
import warnings
from typing import Any, Iterable, Iterator

import numpy as np

from curate.store import fsio

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


class RayEngine:
    """The ``ray`` engine (:func:`run_units` on a Ray cluster through Ray Data)."""

    name = "ray"
    distributed = True

    def connect(self, sec) -> dict[str, Any]:
        return connect(sec)

    def run_units(self, ws, sec, stage: str, batches: Iterable, n_units: int, worker: type, ctor: dict[str, Any],
                  **kw: Any) -> Iterator[Any]:
        return run_units(ws, sec, stage, batches, n_units, worker, ctor, **kw)
