"""Ingest normalisation: rows of a reader's table → canonical ``samples`` rows, in SQL.

A :class:`Plan` says how one unit's columns map onto the canonical columns
(:data:`curate.stages.ingest.schemas.CANONICAL`). The SELECT built from it casts every value to
its canonical type without rounding or dropping silently (a value that does not fit becomes
NULL with a per-row note), keeps unmapped columns in ``extra``, and numbers the rows; a narrow
second pass moves rows with neither a usable URL nor an image to ``rejects`` with their
original row (:func:`insert_from`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from curate.stages.ingest.schemas import CANONICAL, Mapping
from curate.store.catalog import ROW_BITS, Workspace
from curate.store.hosts import INVISIBLE_SQL_CLASS

# scheme://host then a path, query, fragment or the end; the host holds no whitespace (spaces later
# in a path are real: browsers encode them)
URL_RE = r"^[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#]+([/?#]|$)"
# a host (user info and port included) holding an invisible character (curate.store.hosts.INVISIBLE):
# ``bü\u200bcher.de`` looks like ``bücher.de`` but is not; group 1 is the first such character
INVISIBLE_HOST_RE = r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*?(" + INVISIBLE_SQL_CLASS + ")"
#: SQL (aliases ``s`` samples, ``i`` images): a one-note list ``size_mismatch(width,height): metadata
#: WxH, decoded WxH`` when the metadata's size is neither the decoded image's (EXIF-oriented) size
#: nor its stored size (swapped sides, a thumbnail, a resized download), else ``[]``. Readers of
#: ``samples.notes`` for the manifest add it: ingest cannot know it, the hash stage decodes.
SIZE_MISMATCH_SQL = (
    "(CASE WHEN i.status = 'ok' AND s.width IS NOT NULL AND s.height IS NOT NULL AND i.width IS NOT NULL "
    "AND NOT (s.width = i.width AND s.height = i.height) "
    "AND NOT (s.width = coalesce(i.raw_width, i.width) AND s.height = coalesce(i.raw_height, i.height)) "
    "THEN [printf('size_mismatch(width,height): metadata %dx%d, decoded %dx%d', s.width, s.height, i.width, i.height)] "
    "ELSE CAST([] AS VARCHAR[]) END)"
)


# ----------------------------------------------------------------------------------------------
# SQL mapping


def quote_name(name: str) -> str:
    """A column name as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_str(s: str) -> str:
    """A string as a SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


@dataclass
class Plan:
    """How one unit's rows become canonical columns."""

    mapping: Mapping
    columns: list[str]  # readable (non-bytes) columns of the rows, incl. internal __ columns
    row_expr: str = "b.__row"
    image_sql: str | None = None  # computed image_ref expression (overrides the mapping's)
    images_root: Path | str | None = None  # a path column is relative to this folder (or URI)
    types: dict[str, pa.DataType] = field(default_factory=dict)  # source column types, when known


def _trimmed(v: str) -> str:
    """SQL: ``v`` without leading and trailing spaces, NULL when nothing is left — as
    ``NULLIF(trim(v), '')``, but a value with no space at either end (nearly every URL) is passed
    through instead of copied: trimming every URL was a third of a 10M-row ingest."""
    return f"NULLIF(CASE WHEN starts_with({v}, ' ') OR ends_with({v}, ' ') THEN trim({v}) ELSE {v} END, '')"


def _select_sql(plan: Plan, source_id: int, from_sql: str) -> str:
    """SELECT turning the rows of ``from_sql`` (alias ``b``) into ``samples`` columns.

    Cheap per row: casts, and a notes list built only for rows that need one. URL checks
    and rejects are a second, narrow pass over the inserted rows (:func:`_reject_pass`)."""
    mapping, columns = plan.mapping, plan.columns
    exprs: dict[str, str] = {}
    notes: list[tuple[str, str]] = []  # (condition, note text)
    for canon, typ in CANONICAL.items():
        src = mapping.columns.get(canon)
        if src is None or (canon == "image_ref" and plan.image_sql is not None):
            exprs[canon] = f"CAST(NULL AS {typ})"
            continue
        col = "b." + quote_name(src)
        t = plan.types.get(src)
        is_str = t is not None and (pa.types.is_string(t) or pa.types.is_large_string(t))
        if typ == "VARCHAR" and t is not None and (pa.types.is_list(t) or pa.types.is_large_list(t)):
            # a list of alternatives (e.g. several captions per image): the first non-empty one,
            # '' for an empty list, a note when there were several (never the list's text)
            first = f"list_filter({col}, lambda x: x IS NOT NULL AND trim(CAST(x AS VARCHAR)) <> '')[1]"
            v = f"(CASE WHEN {col} IS NOT NULL THEN coalesce(CAST({first} AS VARCHAR), '') END)"
            e = _trimmed(v) if canon in ("url", "image_ref") else v
            code, what = ("caption_list", "captions") if canon == "caption" else ("list_value", "values")
            notes.append((f"len({col}) > 1",
                          f"'{code}({canon}): ' || len({col}) || ' {what}; kept the first non-empty'"))
        elif typ == "VARCHAR":
            v = col if is_str else f"CAST({col} AS VARCHAR)"
            e = _trimmed(v) if canon in ("url", "image_ref") else v
        elif t is not None and pa.types.is_integer(t) and _fits(t, typ):
            e = f"CAST({col} AS {typ})"  # exact: every value of the source type fits (no note possible)
        elif t is not None and pa.types.is_integer(t):
            e = f"TRY_CAST({col} AS {typ})"
            code = "not_integer" if typ == "INTEGER" else "not_bigint"
            notes.append((f"{col} IS NOT NULL AND {e} IS NULL",
                          f"'{code}({canon}): ' || CAST({col} AS VARCHAR) || ' does not fit {typ}; stored NULL'"))
        elif t is not None and pa.types.is_floating(t) and typ == "DOUBLE":
            e = f"(CASE WHEN isfinite({col}) THEN CAST({col} AS DOUBLE) END)"
            notes.append((f"NOT isfinite({col})",
                          f"'not_finite({canon}): ' || CAST({col} AS VARCHAR) || ' stored as NULL'"))
        elif typ == "DOUBLE":
            d = f"TRY_CAST({col} AS DOUBLE)"
            e = f"(CASE WHEN isfinite({d}) THEN {d} END)"
            notes.append((f"{col} IS NOT NULL AND {e} IS NULL",
                          f"'not_finite({canon}): ' || CAST({col} AS VARCHAR) || ' stored as NULL'"))
        elif typ == "INTEGER":
            d = f"TRY_CAST({col} AS DOUBLE)"
            e = f"(CASE WHEN {d} = floor({d}) AND abs({d}) < 2147483648 THEN CAST({d} AS INTEGER) END)"
            notes.append((f"{col} IS NOT NULL AND {e} IS NULL",
                          f"'not_integer({canon}): ' || CAST({col} AS VARCHAR) || ' does not fit INTEGER; stored NULL'"))
        else:  # BIGINT
            e = f"TRY_CAST({col} AS BIGINT)"
            notes.append((f"{col} IS NOT NULL AND {e} IS NULL",
                          f"'not_bigint({canon}): ' || CAST({col} AS VARCHAR) || ' does not fit BIGINT; stored NULL'"))
        exprs[canon] = e
    for canon in ("width", "height"):  # a size is never negative
        if mapping.columns.get(canon) is not None:
            col = "b." + quote_name(mapping.columns[canon])
            notes.append((f"{exprs[canon]} < 0", f"'negative({canon}): ' || CAST({col} AS VARCHAR) || ' stored as NULL'"))
            exprs[canon] = f"(CASE WHEN {exprs[canon]} >= 0 THEN {exprs[canon]} END)"
    if plan.image_sql is not None:
        exprs["image_ref"] = plan.image_sql
    elif plan.images_root is not None and "image_ref" in mapping.columns:
        r = plan.images_root
        root = (r if isinstance(r, str) else str(r.resolve())).rstrip("/") + "/"
        exprs["image_ref"] = f"(CASE WHEN {exprs['image_ref']} IS NOT NULL THEN {quote_str(root)} || {exprs['image_ref']} END)"
    used = set(mapping.columns.values())
    extra_cols = [c for c in columns if c not in used and not c.startswith("__") and c != "file_row_number"]
    extra = (
        "json_object(" + ", ".join(f"{quote_str(c)}, b.{quote_name(c)}" for c in extra_cols) + ")" if extra_cols else "CAST(NULL AS JSON)"
    )
    if "__extra_json" in columns:  # webdataset / folder sidecar JSON: its unmapped fields
        extra = "json(b.__extra_json)"
    if notes:
        listed = "list_filter([" + ", ".join(f"CASE WHEN {c} THEN {t} END" for c, t in notes) + "], lambda x: x IS NOT NULL)"
        notes_sql = f"(CASE WHEN {' OR '.join(f'({c})' for c, _ in notes)} THEN {listed} ELSE CAST([] AS VARCHAR[]) END)"
    else:
        notes_sql = "CAST([] AS VARCHAR[])"
    if "__fix_notes" in columns:
        notes_sql = f"list_concat(coalesce(b.__fix_notes, []), {notes_sql})"
    base = source_id << ROW_BITS
    cols = ", ".join(f"{exprs[c]} AS {c}" for c in CANONICAL)
    where = " WHERE b.__reject IS NULL" if "__reject" in columns else ""
    return (
        f"SELECT {base} + {plan.row_expr} AS sample_id, {source_id} AS source_id, {plan.row_expr} AS source_row, "
        f"{cols}, {extra} AS extra, {notes_sql} AS notes FROM {from_sql}{where}"
    )


def _fits(t: pa.DataType, typ: str) -> bool:
    """Every value of arrow integer type ``t`` is representable in DuckDB type ``typ``."""
    if typ == "DOUBLE":
        return True
    signed = pa.types.is_signed_integer(t)
    limit = 32 if typ == "INTEGER" else 64
    return t.bit_width < limit or (signed and t.bit_width == limit)


def _raw_sql(columns: list[str]) -> str:
    """The original row as JSON text (kept in ``rejects.raw``)."""
    raw_cols = [c for c in columns if not c.startswith("__") and c != "file_row_number"]
    return ("CAST(json_object(" + ", ".join(f"{quote_str(c)}, b.{quote_name(c)}" for c in raw_cols) + ") AS VARCHAR)") if raw_cols else "'{}'"


_SAMPLE_COLS = "sample_id, source_id, source_row, " + ", ".join(CANONICAL) + ", extra, notes"


def insert_from(ws: Workspace, plan: Plan, source_id: int, from_sql: str, rows: tuple[int, int] | None = None) -> tuple[int, int]:
    """Insert the rows of ``from_sql`` into samples, then move the rows without a usable URL or
    image to rejects (with the original row from ``from_sql``). Returns (samples, rejects).

    ``rows``: the (first, last) source_row this call inserts (None: the whole unit)."""
    con = ws.con
    n_all = con.execute(f"INSERT INTO samples ({_SAMPLE_COLS}) {_select_sql(plan, source_id, from_sql)}").fetchall()[0][0]
    n_pre = 0
    if "__reject" in plan.columns:  # rows the reader already refused (e.g. malformed TSV lines)
        n_pre = con.execute(
            f"INSERT INTO rejects SELECT {source_id}, {plan.row_expr}, b.__reject, b.__raw FROM {from_sql} "
            "WHERE b.__reject IS NOT NULL"
        ).fetchall()[0][0]
    n_rej = _reject_pass(ws, plan, source_id, from_sql, rows)
    return int(n_all) - n_rej, n_rej + int(n_pre)


# the common case of URL_RE without the regex engine: no whitespace at all, http(s)://, a host character
_FAST_URL = (
    "(strpos(url, ' ') = 0 AND strpos(url, chr(9)) = 0 AND strpos(url, chr(10)) = 0 AND strpos(url, chr(13)) = 0 "
    "AND ((starts_with(url, 'https://') AND substr(url, 9, 1) NOT IN ('', '/', '?', '#')) "
    "OR (starts_with(url, 'http://') AND substr(url, 8, 1) NOT IN ('', '/', '?', '#'))))"
)


def _reject_pass(ws: Workspace, plan: Plan, source_id: int, from_sql: str, rows: tuple[int, int] | None) -> int:
    """One narrow scan (url, image_ref) of the rows just inserted: a row with neither a usable
    URL nor an image is moved to rejects (``no_url_or_image`` / ``invalid_url``); a bad URL
    beside an image is kept with a ``not_a_url`` note. A host with an invisible character is a
    bad URL (``invalid_url: invisible character U+200B in the host: …``)."""
    con = ws.con
    where = f"source_id = {source_id}" + (f" AND source_row BETWEEN {rows[0]} AND {rows[1]}" if rows else "")
    invisible = f"(strlen(url) <> length(url) AND regexp_matches(url, {quote_str(INVISIBLE_HOST_RE)}))"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _bad AS SELECT source_row, url, image_ref IS NULL AS reject, "
        f"CASE WHEN url IS NOT NULL AND {invisible} THEN printf('invisible character U+%04X in the host: ', "
        f"unicode(regexp_extract(url, {quote_str(INVISIBLE_HOST_RE)}, 1))) ELSE '' END AS why FROM samples "
        f"WHERE {where} AND ((url IS NULL AND image_ref IS NULL) OR (url IS NOT NULL AND ((NOT {_FAST_URL} "
        f"AND NOT regexp_matches(url, {quote_str(URL_RE)})) OR {invisible})))"
    )
    try:
        n_bad, n_rej = con.execute("SELECT count(*), count(*) FILTER (reject) FROM _bad").fetchall()[0]
        if not n_bad:
            return 0
        con.execute(
            f"UPDATE samples SET notes = list_append(notes, 'not_a_url(url): ' || _bad.why || left(_bad.url, 80)) FROM _bad "
            f"WHERE samples.source_id = {source_id} AND samples.source_row = _bad.source_row AND NOT _bad.reject"
        )
        if n_rej:
            con.execute(
                f"INSERT INTO rejects SELECT {source_id}, x.source_row, CASE WHEN x.url IS NULL THEN 'no_url_or_image' "
                f"ELSE 'invalid_url: ' || x.why || left(x.url, 80) END, r.raw FROM _bad x LEFT JOIN "
                f"(SELECT {plan.row_expr} AS source_row, {_raw_sql(plan.columns)} AS raw FROM {from_sql} "
                f"WHERE {plan.row_expr} IN (SELECT source_row FROM _bad WHERE reject)) r USING (source_row) "
                f"WHERE x.reject ORDER BY x.source_row"
            )
            con.execute(
                f"DELETE FROM samples WHERE source_id = {source_id} AND source_row IN (SELECT source_row FROM _bad WHERE reject)"
            )
        return int(n_rej)
    finally:
        con.execute("DROP TABLE IF EXISTS _bad")


def mark_duplicate_keys(ws: Workspace, source_id: int, images_by_key: bool) -> int:
    """Rows of one unit whose ``key`` an earlier row of the unit already has. Each is kept (its own
    sample id) with a note ``duplicate_key(key): '<key>' also at source row <n>``. With
    ``images_by_key`` (an img2dataset shard, whose images are matched to rows by key) such a row
    does not share the earlier row's image: its reference becomes ``missing:duplicate key …``
    (a failed download keeps its own reason). Idempotent. Returns the number of such rows."""
    con = ws.con
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _dup AS SELECT s.source_row, s.key, k.first FROM samples s JOIN "
        "(SELECT key, min(source_row) AS first FROM samples WHERE source_id = ? AND key IS NOT NULL "
        "GROUP BY key HAVING count(*) > 1) k USING (key) WHERE s.source_id = ? AND s.source_row > k.first",
        [source_id, source_id],
    )
    try:
        n = int(con.execute("SELECT count(*) FROM _dup").fetchall()[0][0])
        if not n:
            return 0
        con.execute(
            "UPDATE samples SET notes = list_append(notes, 'duplicate_key(key): ''' || _dup.key || ''' also at "
            "source row ' || _dup.first) FROM _dup WHERE samples.source_id = ? AND samples.source_row = "
            "_dup.source_row AND len(list_filter(samples.notes, lambda x: starts_with(x, 'duplicate_key(key)'))) = 0",
            [source_id])
        if images_by_key:
            con.execute(
                "UPDATE samples SET image_ref = 'missing:duplicate key ''' || _dup.key || ''' in the metadata: the "
                "image of that key goes to source row ' || _dup.first FROM _dup WHERE samples.source_id = ? AND "
                "samples.source_row = _dup.source_row AND NOT starts_with(coalesce(samples.image_ref, ''), 'missing:')",
                [source_id])
        return n
    finally:
        con.execute("DROP TABLE IF EXISTS _dup")


def insert_table(ws: Workspace, table: pa.Table, plan: Plan, source_id: int, join: str = "") -> tuple[int, int]:
    """:func:`insert_from` for a reader's table (registered as ``batch``; ``join``: a JOIN clause
    after it). Returns (samples, rejects)."""
    ws.con.register("batch", table)
    try:
        rows = table.column("__row")
        span = (pa.compute.min(rows).as_py(), pa.compute.max(rows).as_py()) if table.num_rows else (0, -1)
        return insert_from(ws, plan, source_id, f"batch b{join}", span)
    finally:
        unregister(ws.con, "batch")


def unregister(con, name: str) -> None:
    """Unregister a view even when the transaction is aborted (the rollback follows)."""
    import duckdb

    try:
        con.unregister(name)
    except duckdb.Error:
        pass

