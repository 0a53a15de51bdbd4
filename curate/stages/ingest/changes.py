"""A unit whose fingerprint changed since it was ingested: what may go on, and what may not.

A sample's id is ``source_id · 2⁴⁰ + source_row``, so a unit may change only in ways that keep
every ingested row's meaning. :func:`update_unit` decides, inside the caller's transaction:

- **An image folder** (``images:`` source, local or URI): its samples are its image files,
  identified by their path in the folder (``samples.key``), not by position. A file added
  becomes a new sample, numbered after the folder's last row (the others keep their ids, even
  when the new name sorts before theirs); a file deleted keeps its sample, whose image the
  hash stage then finds ``missing`` (removed by export with reason ``image:missing``) and
  hashes again once the file is back; a file replaced keeps its sample and is re-hashed (see
  :mod:`curate.stages.hash.changes`). Sidecars (``.txt`` / ``.json``) of existing samples are
  not read again. A file rejected at first ingest (e.g. a link leading out of the folder) keeps
  its reject row and is not read again either (never a second row for the same file). Files
  added are checked under ``ingest.follow_symlinks`` like the first ingest's.
- **Any other unit** (metadata parquet / TSV, webdataset shard, img2dataset shard with its
  images, Arrow file): it is read again into scratch rows and compared with the ingested ones,
  row by row, on every column but the image reference. The same rows (a file copied back,
  touched, re-written with the same content, an img2dataset shard whose images were added,
  removed or re-packed) are accepted: the image references are updated (so the hash stage
  reads the new bytes), the fingerprint is recorded, and nothing else changes. Other rows
  (rows added, removed or different) are refused with an :class:`~curate.errors.InputError`
  that says how many differ and what to do; the transaction is rolled back, so the catalog is
  as before.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from curate.config import RunConfig
from curate.errors import InputError
from curate.stages.ingest.load import Utf8Fallback, ingest_parquet_batches, ingest_unit
from curate.stages.ingest.normalise import Plan, insert_table
from curate.stages.ingest.readers import IDENTITY, folder_table
from curate.stages.ingest.schemas import Mapping
from curate.stages.ingest.units import Unit
from curate.store.catalog import Workspace

#: ``samples`` columns that do not describe the row itself
_NOT_COMPARED = ("sample_id", "source_id", "image_ref")


def update_unit(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int, fp: str) -> dict[str, Any]:
    """Bring the ingested unit ``source_id`` up to date with its changed file (module doc), in
    one transaction, and record its new fingerprint ``fp``.

    Returns:
        {'kind': 'folder', 'added': new samples, 'gone': samples whose file is gone,
        'refs_updated': n} or {'kind': 'same_rows', 'refs_updated': n}.

    Raises:
        InputError: the unit's rows changed (rows added, removed or different), saying how
            many and what to do; or the unit cannot be read.
    """
    if unit.fmt == "folder":
        with ws.transaction():
            return _update_folder(ws, cfg, unit, source_id, fp)
    try:
        with ws.transaction():
            return _same_rows(ws, cfg, unit, source_id, fp, ingest_unit)
    except Utf8Fallback:
        with ws.transaction():
            return _same_rows(ws, cfg, unit, source_id, fp, ingest_parquet_batches)


def _update_folder(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int, fp: str) -> dict[str, Any]:
    table = folder_table(unit.path, ws, cfg.ingest.follow_symlinks)
    have = dict(ws.q("SELECT key, source_row FROM samples WHERE source_id = ?", [source_id]))
    rejected = {k for k, in ws.q("SELECT coalesce(json_extract_string(raw, '$.key'), json_extract_string(raw, "
                                 "'$.file')) FROM rejects WHERE source_id = ?", [source_id]) if k is not None}
    keys = table.column("key").to_pylist()
    new = pa.array([k not in have and k not in rejected for k in keys])
    last = ws.scalar("SELECT max(r) FROM (SELECT max(source_row) AS r FROM samples WHERE source_id = ? "
                     "UNION ALL SELECT max(source_row) FROM rejects WHERE source_id = ?)", [source_id, source_id])
    added = table.filter(new)
    first = -1 if last is None else int(last)
    added = added.set_column(added.schema.get_field_index("__row"), "__row",
                             pa.array(range(first + 1, first + 1 + added.num_rows), pa.int64()))
    n_ok = n_rej = 0
    if added.num_rows:
        n_ok, n_rej = insert_table(ws, added, Plan(Mapping("folder", IDENTITY.columns, []), added.column_names), source_id)
    kept = table.filter(pa.array([k in have for k in keys])).select(["key", "image_ref"])
    ws.con.register("_folder_refs", kept)
    try:
        refs = ws.con.execute(
            # a file that may no longer be read (swapped for a link out of the folder) keeps its reference: the
            # hash stage's read-time check then records its image `missing` with the reason (never a silent NULL)
            "UPDATE samples SET image_ref = r.image_ref FROM _folder_refs r WHERE samples.source_id = ? "
            "AND samples.key = r.key AND r.image_ref IS NOT NULL AND samples.image_ref IS DISTINCT FROM r.image_ref",
            [source_id]).fetchall()[0][0]
    finally:
        ws.con.unregister("_folder_refs")
    ws.con.execute("UPDATE sources SET fingerprint = ?, n_rows = n_rows + ?, n_samples = n_samples + ?, "
                   "n_rejected = n_rejected + ? WHERE source_id = ?", [fp, n_ok + n_rej, n_ok, n_rej, source_id])
    gone = len(set(have) - set(keys))
    return {"kind": "folder", "added": n_ok, "rejected": n_rej, "gone": gone, "refs_updated": int(refs)}


def _rows(n: int, what: str) -> str:
    return f"{n} row {what}" if n == 1 else f"{n} rows {what}"


def _same_rows(ws: Workspace, cfg: RunConfig, unit: Unit, source_id: int, fp: str, read) -> dict[str, Any]:
    scratch = int(ws.scalar("SELECT max(source_id) FROM sources")) + 1
    read(ws, cfg, unit, scratch)
    cols = [c for c, in ws.q("SELECT column_name FROM information_schema.columns WHERE table_name = 'samples' "
                             "AND table_schema = 'main' ORDER BY ordinal_position") if c not in _NOT_COMPARED]
    diff = {"added": 0, "removed": 0, "differ": 0, "first": None}
    for table, compared in (("samples", cols), ("rejects", ["source_row", "reason", "raw"])):
        row = ", ".join(f"{c}" for c in compared if c != "source_row")
        added, removed, differ, first = ws.q(
            f"WITH a AS (SELECT source_row, ROW({row}) AS v FROM {table} WHERE source_id = ?), "
            f"b AS (SELECT source_row, ROW({row}) AS v FROM {table} WHERE source_id = ?) "
            "SELECT count(*) FILTER (a.source_row IS NULL), count(*) FILTER (b.source_row IS NULL), "
            "count(*) FILTER (a.source_row IS NOT NULL AND b.source_row IS NOT NULL AND a.v IS DISTINCT FROM b.v), "
            "min(coalesce(a.source_row, b.source_row)) FILTER (a.source_row IS NULL OR b.source_row IS NULL "
            "OR a.v IS DISTINCT FROM b.v) "
            "FROM a FULL OUTER JOIN b ON a.source_row = b.source_row", [source_id, scratch])[0]
        diff["added"] += int(added)
        diff["removed"] += int(removed)
        diff["differ"] += int(differ)
        if first is not None:
            diff["first"] = first if diff["first"] is None else min(diff["first"], first)
    if diff["added"] or diff["removed"] or diff["differ"]:
        parts = [_rows(diff["differ"], "differs" if diff["differ"] == 1 else "differ"),
                 _rows(diff["added"], "added"), _rows(diff["removed"], "removed")]
        raise InputError(
            f"{unit.uri} changed since it was ingested (source_id {source_id}): {', '.join(parts)} "
            f"(first at row {diff['first']}). A sample's id is its row, so curate never re-numbers or re-reads "
            "ingested rows silently. To go on: restore the file; or save the new file under a new name and name "
            "that in the config (the old file's samples leave the catalog on the next run and the new file's rows "
            "become new samples); or start a new workspace"
        )
    refs = ws.con.execute(
        "UPDATE samples SET image_ref = b.image_ref FROM (SELECT source_row, image_ref FROM samples "
        "WHERE source_id = ?) b WHERE samples.source_id = ? AND samples.source_row = b.source_row "
        "AND samples.image_ref IS DISTINCT FROM b.image_ref", [scratch, source_id]).fetchall()[0][0]
    for table in ("samples", "rejects"):
        ws.con.execute(f"DELETE FROM {table} WHERE source_id = ?", [scratch])
    ws.con.execute("UPDATE sources SET fingerprint = ? WHERE source_id = ?", [fp, source_id])
    return {"kind": "same_rows", "refs_updated": int(refs)}
