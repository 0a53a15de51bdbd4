"""Ingest loading: one unit into the catalog, per format (inside the caller's transaction).

Plans the unit's columns (layout, image bytes columns referenced not copied, img2dataset
companion images joined by key), reads it with :mod:`curate.stages.ingest.readers` and inserts
it with :mod:`curate.stages.ingest.normalise`. Local parquet goes straight through DuckDB's
``read_parquet``; parquet named by URI, or refused by DuckDB for invalid UTF-8
(:class:`Utf8Fallback`), is read through pyarrow in batches with identical rows.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from curate.config import RunConfig
from curate.errors import InputError
from curate.media.refs import ref_prefix_sql
from curate.progress import info
from curate.stages.ingest.normalise import (
    Plan,
    insert_from,
    insert_table,
    mark_duplicate_keys,
    quote_name,
    quote_str,
    unregister,
)
from curate.stages.ingest.readers import (
    IDENTITY,
    arrow_batches,
    companion_refs,
    folder_table,
    is_bytes_type,
    local_copy,
    tsv_batches,
    tsv_layout,
    webdataset_table,
)
from curate.stages.ingest.schemas import Mapping, resolve
from curate.stages.ingest.units import RealPaths, Unit
from curate.store import fsio
from curate.store.catalog import Workspace

# preference among several image-bytes columns of one table
BYTES_COLUMN_ORDER = ["jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "images", "data", "bytes"]


class Utf8Fallback(Exception):
    """DuckDB refused the file for invalid UTF-8; re-read it through pyarrow."""


def _table_plan(unit: Unit, schema: pa.Schema, ws: Workspace, kind: str) -> tuple[Plan, list[str]]:
    """Mapping and image reference rules for a parquet / Arrow table."""
    names = list(schema.names)
    bytes_cols = [n for n in names if is_bytes_type(schema.field(n).type)]
    readable = [n for n in names if n not in bytes_cols]
    mapping = resolve(names, unit.source.schema_, str(unit.path))
    unit_notes: list[str] = []
    if unit.img2dataset and "sha256_meta" in mapping.columns:  # the original download's hash (readers.stored_sha256_field)
        mapping = Mapping(mapping.layout, {k: v for k, v in mapping.columns.items() if k != "sha256_meta"},
                          mapping.unmapped + [mapping.columns["sha256_meta"]])
    plan = Plan(mapping, readable)
    img_col = mapping.columns.get("image_ref")
    if bytes_cols:
        chosen = img_col if img_col in bytes_cols else sorted(
            bytes_cols, key=lambda c: (BYTES_COLUMN_ORDER.index(c) if c in BYTES_COLUMN_ORDER else 99, names.index(c))
        )[0]
        cols = {k: v for k, v in mapping.columns.items() if k != "image_ref"}
        cols["image_ref"] = chosen
        unmapped = [c for c in names if c not in cols.values()]
        plan.mapping = Mapping(mapping.layout, cols, unmapped)
        if isinstance(unit.path, str):  # a URI: curate.media.refs reads the row group back through curate.store.fsio
            pre, suf = f"{kind}:", f":{unit.uri}#{chosen}"
        else:
            pre, suf = ref_prefix_sql("parquet" if kind == "parquet" else "arrow", unit.path, chosen)
        plan.image_sql = f"({quote_str(pre)} || CAST(__ROW__ AS VARCHAR) || {quote_str(suf)})"
        others = [c for c in bytes_cols if c != chosen]
        unit_notes.append(f"images: bytes in column {chosen!r} (referenced, not copied)"
                          + (f"; other bytes columns not read: {others}" if others else ""))
    elif unit.img2dataset and unit.images is not None and "key" in mapping.columns:
        key = f"CAST(b.{quote_name(mapping.columns['key'])} AS VARCHAR)"
        plan.image_sql = (f"coalesce(r.__ref, 'missing:no image for key ' || coalesce({key}, 'NULL') || "
                          f"{quote_str(' in ' + fsio.name_of(unit.images))})")
        unit_notes.append(f"images: {fsio.name_of(unit.images)} matched by key")
    elif img_col is not None and unit.images is not None:
        plan.images_root = unit.images
    elif img_col is not None:
        unit_notes.append(f"column {img_col!r} names files but the source has no 'images' folder")
        plan.mapping = Mapping(mapping.layout, {k: v for k, v in mapping.columns.items() if k != "image_ref"},
                               mapping.unmapped + [img_col])
    elif unit.img2dataset:
        stem = fsio.name_of(unit.path).removesuffix(".parquet")
        why = f"missing_shard: neither {stem}.tar nor {stem}/ is beside {stem}.parquet (images gone?)"
        plan.image_sql = quote_str("missing:" + why)
        unit_notes.append(why)
        info(f"[ingest] warning: {unit.uri}: {why}; its rows have no image")
    if unit.img2dataset and "status" in names and plan.image_sql:  # a failed download says why (its error_message)
        err = "coalesce(': ' || CAST(b.error_message AS VARCHAR), '')" if "error_message" in names else "''"
        plan.image_sql = (f"(CASE WHEN b.status IS NOT NULL AND CAST(b.status AS VARCHAR) <> 'success' THEN "
                          f"'missing:img2dataset ' || CAST(b.status AS VARCHAR) || {err} ELSE {plan.image_sql} END)")
    return plan, unit_notes


def _companion_join(ws: Workspace, unit: Unit, plan: Plan, row_sql: str, follow_symlinks: str = "inside") -> str:
    """Finish ``plan.image_sql`` for rows numbered by ``row_sql``; for an img2dataset shard whose
    images are in a companion tar/folder, register its key → reference table as ``_refs`` (the
    caller unregisters it) and return the JOIN clause that brings it in ("" otherwise)."""
    if not plan.image_sql:
        return ""
    plan.image_sql = plan.image_sql.replace("__ROW__", row_sql)
    if "r.__ref" not in plan.image_sql:
        return ""
    ws.con.register("_refs", companion_refs(unit.images, ws, follow_symlinks))
    return f" LEFT JOIN _refs r ON r.__k = CAST(b.{quote_name(plan.mapping.columns['key'])} AS VARCHAR)"


def _parquet_plan(ws: Workspace, unit: Unit):
    """(ParquetFile, arrow schema, plan with column types, unit notes) of a parquet unit, by
    local path or by URI (through :mod:`curate.store.fsio`). Raises InputError: not readable."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fsio.open_input_file(unit.path) if isinstance(unit.path, str) else unit.path)
    except Exception as e:  # noqa: BLE001 - missing object, permissions, not parquet
        raise InputError(f"{unit.uri}: not a readable parquet file: {e}") from None
    schema = pf.schema_arrow
    plan, unit_notes = _table_plan(unit, schema, ws, "parquet")
    plan.types = {f.name: f.type for f in schema}
    info(f"[ingest] {unit.name}: {plan.mapping.describe()}")
    return pf, schema, plan, unit_notes


def _ingest_parquet(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int) -> tuple[Mapping, int, int, list[str], list[str]]:
    import duckdb

    if isinstance(unit.path, str):
        return ingest_parquet_batches(ws, cfg, unit, source_id)
    _, schema, plan, unit_notes = _parquet_plan(ws, unit)
    join = _companion_join(ws, unit, plan, "file_row_number", cfg.ingest.follow_symlinks)
    try:
        plan.row_expr = "b.file_row_number"
        proj = ", ".join(quote_name(c) for c in plan.columns)
        src = f"(SELECT {proj}, file_row_number FROM read_parquet({quote_str(str(unit.path.resolve()))}, file_row_number = true)) b"
        try:
            n_ok, n_rej = insert_from(ws, plan, source_id, src + join)
        except duckdb.InvalidInputException as e:
            if "UTF8" not in str(e) and "encoding" not in str(e):
                raise InputError(f"{unit.path}: {e}") from None
            raise Utf8Fallback() from None
        return plan.mapping, n_ok, n_rej, unit_notes, list(schema.names)
    finally:
        if join:
            unregister(ws.con, "_refs")


def ingest_parquet_batches(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    """A parquet file read through pyarrow in record batches of ``ingest.batch_rows``, with the
    plan, column types, row numbers (``__row`` = the file row number) and reject pass of
    :func:`_ingest_parquet`, so the catalog rows equal DuckDB's (tested), and invalid UTF-8
    repaired per row with a note. Used for a file named by URI (``s3://…``, through
    :mod:`curate.store.fsio`; DuckDB's httpfs is not used) and for a local file DuckDB refuses for
    its encoding."""
    pf, schema, plan, unit_notes = _parquet_plan(ws, unit)
    join = _companion_join(ws, unit, plan, "b.__row", cfg.ingest.follow_symlinks)
    n_ok = n_rej = 0
    repaired = False
    try:
        for t in arrow_batches(pf.iter_batches(batch_size=cfg.ingest.batch_rows, columns=plan.columns)):
            repaired = repaired or "__fix_notes" in t.column_names
            plan.columns = t.column_names
            a, b = insert_table(ws, t, plan, source_id, join)
            n_ok, n_rej = n_ok + a, n_rej + b
    except (OSError, pa.ArrowException) as e:  # an object that cannot be read to its end
        raise InputError(f"{unit.uri}: not a readable parquet file: {e}") from None
    finally:
        if join:
            unregister(ws.con, "_refs")
    if repaired:  # as the local path notes it when DuckDB refuses the file
        unit_notes.append("invalid UTF-8 repaired per row (read through pyarrow)")
    _finish_unit(ws, cfg, unit, source_id)  # also here: the stage calls this for its UTF-8 fallback
    return plan.mapping, n_ok, n_rej, unit_notes, list(schema.names)


def _ingest_hf_arrow(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    """One Arrow stream file of a ``save_to_disk`` folder (memory-mapped; bytes not read)."""
    src = pa.memory_map(str(unit.path), "r")
    try:
        reader = pa.ipc.open_stream(src)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(src)
    schema = reader.schema
    plan, unit_notes = _table_plan(unit, schema, ws, "arrow")
    plan.types = {f.name: f.type for f in schema}
    _companion_join(ws, unit, plan, "b.__row")  # an Arrow file has no companion images: only the row refs
    info(f"[ingest] {unit.path.name}: {plan.mapping.describe()}")
    batches = reader if isinstance(reader, pa.ipc.RecordBatchStreamReader) else (
        reader.get_batch(i) for i in range(reader.num_record_batches))
    keep = plan.columns
    n_ok = n_rej = 0
    for t in arrow_batches(rb.select(keep) for rb in batches):
        plan.columns = t.column_names
        a, b = insert_table(ws, t, plan, source_id)
        n_ok, n_rej = n_ok + a, n_rej + b
    return plan.mapping, n_ok, n_rej, unit_notes, list(schema.names)


def _ingest_tsv(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    names, mapping = tsv_layout(unit.path, unit.source.schema_)
    info(f"[ingest] {unit.name}: {mapping.describe()}" + (" (headerless)" if names else ""))
    plan = Plan(mapping, [])
    n_ok = n_rej = 0
    for t in tsv_batches(unit.path, names, cfg.ingest.batch_rows):
        plan.columns = t.column_names
        a, b = insert_table(ws, t, plan, source_id)
        n_ok, n_rej = n_ok + a, n_rej + b
    return mapping, n_ok, n_rej, [], names or []


def ingest_unit(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    """Ingest one unit (inside the caller's transaction). Returns (mapping, n_samples,
    n_rejected, unit notes, file columns)."""
    if isinstance(unit.path, str) or isinstance(unit.images, str):
        try:
            res = _ingest_unit_local_or_uri(ws, cfg, unit, source_id)
        except (OSError, pa.ArrowException) as e:  # an object store refused a read mid-file
            raise InputError(f"{unit.uri}: cannot read: {e}") from None
    else:
        res = _ingest_unit_local_or_uri(ws, cfg, unit, source_id)
    _finish_unit(ws, cfg, unit, source_id)
    return res


def _finish_unit(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int) -> None:
    """The passes over a whole unit's inserted rows (idempotent): keys repeated inside the unit,
    and the image paths of a metadata unit's local ``images`` folder."""
    mark_duplicate_keys(ws, source_id, unit.img2dataset and unit.images is not None)
    if unit.fmt in ("parquet", "tsv", "hf_arrow") and unit.images is not None and not unit.img2dataset \
            and not isinstance(unit.images, str):
        check_image_paths(ws, source_id, unit.images, cfg.ingest.follow_symlinks)


def check_image_paths(ws: Workspace, source_id: int, images: Path, follow_symlinks: str) -> int:
    """The image files a metadata unit names relative to its ``images`` folder, checked like a
    folder's files (:class:`curate.stages.ingest.units.RealPaths`): a path that leaves the folder
    (``../``, or a symbolic link under ``follow_symlinks``) is never read — its reference becomes
    ``missing:<why>`` (the sample is removed as ``image:missing`` with that detail) and the row
    gets a note ``<why code>(image_ref): …``; an allowed link is stored resolved (what
    :func:`curate.media.images.read_ref` expects). Returns the number of refused paths."""
    prefix = str(images.resolve()).rstrip("/") + "/"
    cur = ws.con.execute("SELECT source_row, image_ref FROM samples WHERE source_id = ? AND starts_with(image_ref, ?)",
                         [source_id, prefix])
    paths = RealPaths(images, follow_symlinks)
    fixed, refused = [], []
    while batch := cur.fetchmany(65536):  # streamed: only the paths to change are kept
        for row, ref in batch:
            real, why = paths.check(ref[len(prefix):])
            if why is not None:
                code, _, detail = why.partition(": ")
                refused.append((row, f"missing:{why}", f"{code}(image_ref): {detail}; not read"))
            elif real != ref:
                fixed.append((row, real))
    changes = [(row, ref, None) for row, ref in fixed] + refused
    if changes:
        rows, refs, notes = zip(*changes)
        ws.con.register("_paths", pa.table({"source_row": pa.array(rows, pa.int64()), "ref": pa.array(refs, pa.string()),
                                            "note": pa.array(notes, pa.string())}))
        try:
            ws.con.execute(
                "UPDATE samples SET image_ref = p.ref, notes = CASE WHEN p.note IS NULL THEN samples.notes ELSE "
                "list_append(samples.notes, p.note) END FROM _paths p WHERE samples.source_id = ? AND "
                "samples.source_row = p.source_row", [source_id])
        finally:
            unregister(ws.con, "_paths")
    return len(refused)


def _ingest_unit_local_or_uri(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int):
    if unit.fmt == "parquet":
        return _ingest_parquet(ws, cfg, unit, source_id)
    if unit.fmt == "tsv":
        return _ingest_tsv(ws, cfg, unit, source_id)
    if unit.fmt == "hf_arrow":
        return _ingest_hf_arrow(ws, cfg, unit, source_id)
    unit_notes: list[str] = []
    if unit.fmt == "webdataset":
        with local_copy(ws, unit.path) as local:
            table, unit_notes = webdataset_table(local, unit.path if isinstance(unit.path, str) else None)
        mapping = Mapping("webdataset", IDENTITY.columns, [])
    else:
        table = folder_table(unit.path, ws, cfg.ingest.follow_symlinks)
        mapping = Mapping("folder", IDENTITY.columns, [])
    n_ok, n_rej = insert_table(ws, table, Plan(mapping, table.column_names), source_id)
    return mapping, n_ok, n_rej, unit_notes, []
