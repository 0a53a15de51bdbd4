"""The engine registry: names, the worker contract, and the config's check of engine names."""
from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from curate.config import RunConfig
from curate.engine import ENGINES, get_engine
from curate.engine.units import table_rows
from curate.errors import ConfigError


class Doubler:
    """A unit worker: ``__init__(**ctor)``, ``__call__(table of unit rows) -> table``."""

    def __init__(self, factor: int):
        self.factor = factor

    def __call__(self, t):
        return pa.table({"unit": t.column("unit"), "n": [len(x) * self.factor for x in t.column("sample_id").to_pylist()]})


def test_registry_names_and_unknown_engine():
    assert set(ENGINES) == {"local", "ray"}
    assert not get_engine("local").distributed and get_engine("ray").distributed
    with pytest.raises(ConfigError, match="unknown engine 'dask'; known: local, ray"):
        get_engine("dask")
    with pytest.raises(ValidationError, match="unknown engine 'dask'"):
        RunConfig.model_validate({"sources": [{"name": "f", "images": "x"}], "hash": {"engine": "dask"}})


def test_local_engine_runs_a_stage_worker_over_unit_rows_in_order():
    units = pa.table({"unit": pa.array([0, 1, 2], pa.int64()),
                      "sample_id": pa.array([[1, 2], [3], [4, 5, 6]], pa.list_(pa.int64()))})
    batches = [units.to_batches(max_chunksize=2)[0], pa.table({"unit": pa.array([], pa.int64()),
               "sample_id": pa.array([], pa.list_(pa.int64()))}), units.slice(2)]
    stats: dict = {}
    out = list(get_engine("local").run_units(None, None, "test", batches, 3, Doubler, {"factor": 10}, stats=stats))
    rows = [r for t in out for r in table_rows(t, ["unit", "n"])]
    assert rows == [(0, 20), (1, 10), (2, 30)]
    assert stats["units"] == 3 and stats["actors"] == 1
