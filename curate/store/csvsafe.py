"""Every CSV curate writes, with formula cells neutralised (CSV injection, OWASP).

A spreadsheet (Excel, LibreOffice, Google Sheets) runs a cell that starts with ``=``, ``+``,
``-`` or ``@`` as a formula, and a leading tab or carriage return hides such a start; URLs,
captions, source names and raw lines come from the input, so a removal list opened in a
spreadsheet could run ``=HYPERLINK(…)`` or ``+cmd|' /C calc'!A0``. OWASP's rule: such a **text**
cell is written with a ``'`` in front (``'=HYPERLINK(…)``), which spreadsheets show as text;
the rest of the cell is unchanged and CSV quoting stays the writer's.

**Numbers stay numbers.** Only text cells are prefixed: a column that is numeric (SQL integer /
floating / decimal types; Python ``int`` / ``float``) is written as the number, so a score of
``-0.5`` stays ``-0.5`` — a spreadsheet reads it as a number, never as a formula. A text cell
that merely looks like a negative number (``"-5"``) is prefixed like any other text cell.
Lists are written by DuckDB as ``[a, b]`` and start with ``[``. JSON outputs keep raw values.

Use :func:`copy_csv` for a query (DuckDB ``COPY … (FORMAT csv)``, streamed) and
:func:`write_csv` for rows in Python; ``tests/test_hostile.py`` checks that no other module
writes CSV.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

from curate.store.fsio import atomic_write_bytes, copy_query

#: the first characters that make a spreadsheet read a cell as a formula (OWASP CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: DuckDB column types written as they are (numbers, booleans, dates): never text
_TEXT_TYPES = ("VARCHAR", "JSON")


def safe_cell(v: Any) -> Any:
    """A text value that starts like a formula, prefixed with ``'``; anything else unchanged."""
    if isinstance(v, str) and v.startswith(FORMULA_START):
        return "'" + v
    return v


def safe_sql(expr: str) -> str:
    """SQL: the VARCHAR expression ``expr`` with :func:`safe_cell` applied (NULL stays NULL)."""
    starts = ", ".join("'" + c + "'" if c.isprintable() else f"chr({ord(c)})" for c in FORMULA_START)
    return f"(CASE WHEN left({expr}, 1) IN ({starts}) THEN '''' || {expr} ELSE {expr} END)"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def copy_csv(con, sql: str, dest: Path) -> None:
    """Write the rows of ``sql`` to ``dest`` as CSV with a header (DuckDB ``COPY``, atomically:
    a temp file renamed into place), text columns neutralised (:func:`safe_cell`)."""
    cols = con.execute(f"DESCRIBE {sql}").fetchall()
    sel = ", ".join(
        (f"{safe_sql('CAST(_q.' + _quote(name) + ' AS VARCHAR)')} AS {_quote(name)}"
         if str(typ).upper() in _TEXT_TYPES else f"_q.{_quote(name)}")
        for name, typ, *_ in cols)
    copy_query(con, f"SELECT {sel} FROM ({sql}) _q", dest, "FORMAT csv, HEADER true")


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write ``rows`` under ``header`` as CSV (UTF-8, ``\\n`` line ends, atomically), every text
    cell neutralised (:func:`safe_cell`); None is an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([safe_cell(h) for h in header])
    w.writerows([safe_cell(v) for v in row] for row in rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
