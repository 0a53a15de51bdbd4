"""The hash stage on a distributed engine (:mod:`curate.engine`): a worker that hashes one unit
of samples, and the driver loop that hands the units to the engine."""
from __future__ import annotations

import math
import os
from typing import Any, Iterator

from curate.engine import get_engine
from curate.engine.units import unit_batches, units_sql
from curate.media import lanczos
from curate.stages.hash.compute import hash_items, images_schema, rows_table, worker_init


class HashWorker:
    """Unit worker (a Ray actor on the ray engine): unit rows → ``images`` rows through :func:`curate.stages.hash.stage.hash_items`
    (one call per unit = one local-engine run), as an arrow table of
    :func:`curate.stages.hash.stage.images_schema` plus ``worker_pid``."""

    def __init__(self, max_pixels: int):
        worker_init()  # as the local pool's workers: glibc keeps freed image memory
        lanczos.warm()  # compile (or load) the resize kernels once per actor
        self.max_pixels = max_pixels
        self.pid = os.getpid()

    def __call__(self, batch):
        import pyarrow as pa

        rows: list[tuple] = []
        for ids, refs in zip(batch.column("sample_id").to_pylist(), batch.column("image_ref").to_pylist()):
            rows += hash_items(list(zip(ids, refs)), self.max_pixels)
        t = rows_table(rows)
        return t.append_column("worker_pid", pa.array([self.pid] * t.num_rows, pa.int64()))


def hash_runs(ws, sec, todo_sql: str, sub: int, stats: dict[str, Any] | None = None) -> Iterator[Any]:
    """The hash stage's rows for ``todo_sql`` (sample_id, image_ref ordered by sample_id),
    computed by a :class:`HashWorker` pool in runs of ``sub`` samples; yields arrow tables of
    :func:`~curate.stages.hash.stage.images_schema` (the rows :func:`~curate.stages.hash.stage.hash_items`
    returns, exactly) in sample order.

    Args:
        sec: the ``hash`` config section (engine keys, ``max_pixels``, ``batch_size``).
    """
    n = int(ws.scalar(f"SELECT count(*) FROM ({todo_sql})"))
    n_units = math.ceil(n / sub)
    names = images_schema().names
    for t in get_engine(sec.engine).run_units(ws, sec, "hash", unit_batches(ws, units_sql(todo_sql, sub)), n_units, HashWorker,
                       {"max_pixels": sec.max_pixels}, stats=stats):
        yield t.select(names)


