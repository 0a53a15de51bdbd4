"""The flag stage's image classifiers on the Ray engine (see :mod:`curate.engine.ray_engine`)."""
from __future__ import annotations

import os
from typing import Any, Iterator

from curate.engine import get_engine
from curate.engine.units import table_rows
from curate.stages.flag.classifiers import ScoreRow, load_classifier, local_batches


class ClassifyWorker:
    """Ray actor: unit rows → one result row per stored ``image_scores`` row (``unit``,
    ``sample_id``, ``sha256``, ``label``, ``score``, ``detail``, ``status``, ``worker_pid``),
    through :func:`curate.stages.flag.classifiers.local_batches` on the unit's samples.

    Raises:
        RuntimeError: this node's classifier key differs from the driver's (other package version).
    """

    def __init__(self, spec, key: str, max_pixels: int):
        if spec.key != key:
            raise RuntimeError(f"this node's {spec.name} key is {spec.key}, the driver's {key}: install the same "
                               "package versions on every node")
        load_classifier(spec.name)
        self.spec, self.max_pixels, self.pid = spec, max_pixels, os.getpid()

    def __call__(self, batch):
        import pyarrow as pa

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
    """:func:`curate.stages.flag.classifiers.local_batches` on a :class:`ClassifyWorker` pool: the same
    batches of ``n`` candidates of ``todo`` ((sample_id, image_ref, …) in order), yielded in
    order as lists of (sample_id, sha256, rows) that :func:`curate.stages.flag.classifiers.ensure_scores` stores.

    ``sec`` is the stage's :class:`curate.config.EngineConfig`; bound to it (``lambda ws, spec, todo,
    n, max_pixels: classify_batches(ws, sec, spec, todo, n, max_pixels)``) this is the ``batches``
    argument of ``ensure_scores`` (:data:`curate.stages.flag.classifiers.Batches`)."""
    import pyarrow as pa

    units = [(k // n, [x[0] for x in todo[k:k + n]], [x[1] for x in todo[k:k + n]]) for k in range(0, len(todo), n)]
    table = pa.table({"unit": pa.array([u[0] for u in units], pa.int64()),
                      "sample_id": pa.array([u[1] for u in units], pa.list_(pa.int64())),
                      "image_ref": pa.array([u[2] for u in units], pa.list_(pa.string()))})
    current: int | None = None
    batch: list[tuple] = []
    for t in get_engine(sec.engine).run_units(ws, sec, f"flag-{spec.name}", [table], len(units), ClassifyWorker,
                       {"spec": spec, "key": spec.key, "max_pixels": max_pixels}, stats=stats):
        for unit, sid, sha, label, score, detail, status in table_rows(
                t, ["unit", "sample_id", "sha256", "label", "score", "detail", "status"]):
            if unit != current:
                if batch:
                    yield batch
                current, batch = unit, []
            if not batch or batch[-1][0] != sid:
                batch.append((sid, sha, []))
            batch[-1][2].append(ScoreRow(label, score, detail, status))
    if batch:
        yield batch
