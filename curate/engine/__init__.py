"""Execution engines for the per-sample stages (hash, embed, the image classifiers of flag).

An engine runs *work units* (:mod:`curate.engine.units`) through a worker class that a stage
hands it (``__init__(**ctor)``, ``__call__(pyarrow.Table of unit rows) -> pyarrow.Table``);
it never imports a stage. Engines are chosen by name (config ``engine``, CLI ``--engine``)
from :data:`ENGINES`:

- ``local``: this machine. Stages keep their own in-process paths (worker processes, the
  DataLoader) for speed; :meth:`LocalEngine.run_units` runs a stage's unit worker in this
  process, the same contract as a distributed engine.
- ``ray``: :mod:`curate.engine.ray_engine` (Ray Data over parquet work shards, actor pools).

Both compute every item with the same functions and the same batches, so they give the same
catalog rows and embedding parts. A new engine is one class with ``name``, ``distributed``,
``connect(sec)`` and ``run_units(...)``, and one entry in :data:`ENGINES`. See
docs/SCALE_OUT.md.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Protocol

from curate.engine.ray_engine import RayEngine
from curate.errors import ConfigError


class Engine(Protocol):
    name: str
    distributed: bool  # True: the stage sends its work units to run_units; False: its own in-process path

    def connect(self, sec) -> dict[str, Any]:
        """Resources the engine can use: ``{'nodes', 'cpus', 'gpus'}``."""

    def run_units(self, ws, sec, stage: str, batches: Iterable, n_units: int, worker: type, ctor: dict[str, Any],
                  **kw: Any) -> Iterator[Any]:
        """Run ``worker(**ctor)`` over the unit rows of ``batches``; yield its result tables in unit order."""


class LocalEngine:
    """The ``local`` engine: this machine. ``run_units`` calls one worker in this process."""

    name = "local"
    distributed = False

    def connect(self, sec) -> dict[str, Any]:
        return {"nodes": 1, "cpus": float(os.cpu_count() or 1), "gpus": 0.0}

    def run_units(self, ws, sec, stage: str, batches: Iterable, n_units: int, worker: type, ctor: dict[str, Any],
                  **kw: Any) -> Iterator[Any]:
        stats = kw.get("stats")
        if stats is not None:
            stats.update(self.connect(sec), actors=1, units=n_units)
        import pyarrow as pa

        w = worker(**ctor)
        for b in batches:
            if b.num_rows:
                yield w(b if isinstance(b, pa.Table) else pa.Table.from_batches([b]))


#: engine name -> engine; config ``engine`` accepts exactly these names
ENGINES: dict[str, Engine] = {e.name: e for e in (LocalEngine(), RayEngine())}


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``.

    Raises:
        ConfigError: no engine of that name (the message lists the known ones).
    """
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}") from None
