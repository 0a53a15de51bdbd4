"""Work units, the shape every engine runs: rows of (``unit``, ``sample_id`` list,
``image_ref`` list) cut from a catalog query, streamed as arrow record batches."""
from __future__ import annotations


def units_sql(todo_sql: str, size: int, first: int = 0) -> str:
    """Unit rows (``unit``, ``sample_id`` list, ``image_ref`` list) of ``size`` consecutive
    samples of ``todo_sql`` (sample_id, image_ref …, ordered by sample_id); unit ids from
    ``first``."""
    return (
        f"SELECT CAST({int(first)} + rn // {int(size)} AS BIGINT) AS unit, list(sample_id ORDER BY sample_id) AS sample_id, "
        f"list(image_ref ORDER BY sample_id) AS image_ref FROM (SELECT sample_id, image_ref, "
        f"row_number() OVER (ORDER BY sample_id) - 1 AS rn FROM ({todo_sql}) _t) _u GROUP BY 1 ORDER BY 1"
    )


def unit_batches(ws, sql: str, params: list | None = None, rows: int = 1024):
    """The rows of ``sql`` as arrow record batches, streamed out of DuckDB."""
    reader = ws.con.sql(sql, params=params or None).to_arrow_reader(rows)
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def table_rows(t, names: list[str]) -> list[tuple]:
    cols = [t.column(n).to_pylist() for n in names]
    return list(zip(*cols))
