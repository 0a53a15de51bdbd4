"""ingest: metadata tables, image folders, webdataset shards, img2dataset outputs and HF
datasets → ``sources``, ``samples``, ``rejects``.

Every input row ends as exactly one ``samples`` row or one ``rejects`` row with a reason.

Units and resumability: an input is split into *units* (one metadata file, one shard, one
folder). One unit is ingested in one transaction, so a run killed mid-unit (even SIGKILL)
leaves nothing of it and the re-run ingests it whole; units already ingested with the same
fingerprint are skipped, so adding a file to a set ingests only that file. A unit that
changed after it was ingested is brought up to date when its rows keep their meaning (an image
folder: files added become new samples, deleted files keep theirs; any other unit: the same
rows, new image references) and is an error otherwise, saying what to do
(:mod:`curate.stages.ingest.changes`): sample ids never silently change meaning.
Paths inside the workspace are never inputs: a glob skips them, a named path is an error.

Reading: parquet goes straight through DuckDB's ``read_parquet`` (streamed, never whole in
Python memory); a file DuckDB refuses for invalid UTF-8 is re-read through pyarrow in batches
with the bad values repaired per row (case K05). Columns holding image bytes are never read
by ingest — samples get a reference (:mod:`curate.media.refs`). TSV (CC3M/CC12M) is read in
batches of lines; a line with the wrong number of fields is rejected (``malformed_row``).

Inputs by URI (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, or any fsspec protocol;
:mod:`curate.store.fsio`): metadata parquet / TSV (and a metadata source's ``images`` folder), webdataset
shards, img2dataset output folders and image folders; not ``hf_dataset`` (its Arrow files are
memory-mapped), which is an error naming these. Globs are expanded by listing the store
(:func:`curate.store.fsio.glob`, ``glob.glob``'s rules, sorted). Parquet is read through the pyarrow
filesystem in batches of ``ingest.batch_rows`` (DuckDB's httpfs is not used), with the same plan,
types, row numbers, notes and rejects as the local DuckDB path, so the rows are identical; a
shard (or img2dataset companion tar) is streamed once into a temp file under the workspace and
parsed like a local one, its ``tar:`` references naming the URI (ranged reads later). A URI
unit's fingerprint is its size and the store's mtime, or, where the store keeps none (fsspec's
``memory://``), its size and a sha256 of its bytes (:func:`curate.store.fsio.fingerprint`).

Casting never rounds or drops silently: a value that does not fit its canonical type becomes
NULL with a per-row note; NaN/±inf scores become NULL with a note (DuckDB sorts NaN above
every number, so a threshold rule would otherwise treat it as "unsafe", case K15).

Per-row notes are ``<code>(<column>): <detail>``; codes: ``not_integer``, ``not_bigint``,
``not_finite``, ``invalid_utf8``, ``not_a_url``, ``repeated_member``, ``bad_json`` (a sidecar
JSON that is invalid or nested deeper than 64 levels: not used), ``sidecar_too_large`` (a
sidecar over 1 MiB: not read), ``caption_list`` / ``list_value`` (a list of alternatives: the first
non-empty one kept), ``duplicate_key`` (a key an earlier row of the unit has; the row is kept),
``symlink_outside_source`` / ``symlink_not_followed`` / ``path_outside_source`` (a sidecar or a
relative image path not read, ``ingest.follow_symlinks``). A sidecar never fails the unit
(:mod:`curate.stages.ingest.readers`).

Reject reasons: ``no_url_or_image`` (nothing identifies the sample), ``invalid_url`` (a URL
that is not ``scheme://host…``, or whose host holds an invisible character —
``invalid_url: invisible character U+200B in the host: …``, :mod:`curate.store.hosts` — and no
image either — e.g. LAION's NSFW/similarity values shifted into URL/TEXT), ``malformed_row``
(a TSV line with the wrong number of fields), ``symlink_outside_source`` / ``symlink_not_followed``
(an image file of a folder that is a link leaving its folder, or any link under
``ingest.follow_symlinks: never``; never read).
"""
from __future__ import annotations

import json
import shutil
from typing import Any

from curate.config import RunConfig
from curate.errors import InputError
from curate.progress import bar, info
from curate.stages.ingest.changes import update_unit
from curate.stages.ingest.load import Utf8Fallback, ingest_parquet_batches, ingest_unit
from curate.stages.ingest.readers import TMP_PREFIX
from curate.stages.ingest.units import Unit, fingerprint, unit_list
from curate.store.catalog import Workspace, digest_of


def inputs(ws: Workspace, cfg: RunConfig) -> list[Any]:
    """Fingerprints of all input units (the ingest digest depends on them)."""
    units, _ = unit_list(ws, cfg)
    return [(u.source.name, u.source.schema_, u.source.images, u.fmt, u.uri, fingerprint(u, ws)) for u in units]


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    """Ingest every input unit not yet ingested. Returns counters.

    Raises:
        InputError: an input that cannot be used at all (unreadable file, unknown layout,
            case-colliding columns, a file whose rows changed after it was ingested:
            :func:`curate.stages.ingest.changes.update_unit`).
    """
    counters: dict[str, Any] = {"units": 0, "units_skipped": 0, "rows": 0, "samples": 0, "rejected": 0, "layouts": {}}
    units, skipped = unit_list(ws, cfg)
    counters["inputs_inside_workspace_skipped"] = len(skipped)
    for d in ws.root.glob(TMP_PREFIX + "*"):  # only one ingest runs at a time (the catalog has one writer)
        shutil.rmtree(d, ignore_errors=True)
    # rows carry their own source_row, so their physical order in the table does not matter:
    # let DuckDB insert from both threads without keeping file order (~5% at 10M rows)
    counters["units_removed"] = _prune(ws, units)
    ws.con.execute("SET preserve_insertion_order = false")
    try:
        _ingest_units(ws, cfg, units, counters)
    finally:
        ws.con.execute("RESET preserve_insertion_order")
    _totals(ws, counters)
    counters["output_digest"] = output_digest(ws)
    return counters


def output_digest(ws: Workspace) -> str:
    """A digest of what ingest wrote for the stages after it: every ``sources`` column but the
    fingerprint (a touched or re-packed file whose rows are the same keeps its digest), the sample
    ids with their image references (the only column an accepted changed unit may change:
    :mod:`curate.stages.ingest.changes`), and the rejects. The runner gives it to the readers
    (:func:`curate.store.catalog.result_digest`), so a re-ingest that changed nothing leaves them
    up to date. Order-independent (XOR of DuckDB row hashes) plus counts."""
    src = ws.q("SELECT source_id, name, uri, format, schema_name, n_rows, n_samples, n_rejected, "
               "CAST(column_map AS VARCHAR), CAST(notes AS VARCHAR), CAST(columns AS VARCHAR) FROM sources ORDER BY source_id")
    n, x = ws.q("SELECT count(*), bit_xor(hash(sample_id, image_ref)) FROM samples")[0]
    r, y = ws.q("SELECT count(*), bit_xor(hash(source_id, source_row, reason)) FROM rejects")[0]
    return digest_of(src, int(n), int(x or 0), int(r), int(y or 0))[:16]


def _prune(ws: Workspace, units: list[Unit]) -> list[str]:
    """Remove from the catalog every ingested unit the config no longer names (a source taken
    out of the config, a file gone from a glob): the catalog mirrors the config, so its
    samples leave the manifest. Returns the removed URIs."""
    want = {u.uri for u in units}
    gone = [(sid, uri) for sid, uri in ws.q("SELECT source_id, uri FROM sources ORDER BY source_id") if uri not in want]
    if not gone:
        return []
    ids = [sid for sid, _ in gone]
    with ws.transaction() as con:
        for table in ("images", "embeddings", "caption_stats", "flags", "decisions", "clusters"):
            con.execute(f"DELETE FROM {table} WHERE sample_id IN (SELECT sample_id FROM samples "
                        "WHERE source_id IN (SELECT unnest(?)))", [ids])
        con.execute("DELETE FROM dup_edges")  # rebuilt by dedup
        for table in ("samples", "rejects", "sources"):
            con.execute(f"DELETE FROM {table} WHERE source_id IN (SELECT unnest(?))", [ids])
    for _, uri in gone:
        info(f"[ingest] {uri} is no longer an input: its samples were removed from the catalog")
    return [uri for _, uri in gone]


def _bad_file(ws: Workspace, unit: Unit, fp: str, err: Exception) -> None:
    """Record an unreadable unit (``on_bad_file: skip``): a source with 0 rows and the error."""
    source_id = (ws.scalar("SELECT max(source_id) FROM sources") or 0) + 1
    ws.con.execute(
        "INSERT INTO sources VALUES (?, ?, ?, ?, NULL, 0, 0, 0, ?, '{}', ?, '[]')",
        [source_id, unit.source.name, unit.uri, unit.fmt, fp, json.dumps([f"bad_file: {err}"])],
    )
    info(f"[ingest] skipped {unit.uri}: {err}")


def _ingest_units(ws: Workspace, cfg: RunConfig, units: list[Unit], counters: dict[str, Any]) -> None:
    counters["bad_files"] = []
    for unit in bar(units, desc="ingest", unit="file"):
        uri = unit.uri
        fp = fingerprint(unit, ws)
        row = ws.q("SELECT source_id, fingerprint, notes FROM sources WHERE uri = ?", [uri])
        if row and row[0][1] != fp and "bad_file: " in (row[0][2] or ""):
            ws.con.execute("DELETE FROM sources WHERE source_id = ?", [row[0][0]])  # a skipped file, now changed: retry
            row = []
        if row:
            if row[0][1] != fp:  # changed since ingested: kept up to date when its rows keep their meaning, else an error
                done = update_unit(ws, cfg, unit, row[0][0], fp)
                _count_update(counters, uri, done)
                continue
            counters["units_skipped"] += 1
            continue
        source_id = (ws.scalar("SELECT max(source_id) FROM sources") or 0) + 1
        try:
            try:
                with ws.transaction():
                    res = ingest_unit(ws, cfg, unit, source_id)
                    _record_source(ws, unit, source_id, fp, res)
            except Utf8Fallback:
                with ws.transaction():
                    res = ingest_parquet_batches(ws, cfg, unit, source_id)
                    _record_source(ws, unit, source_id, fp, res)
        except InputError as e:
            if cfg.ingest.on_bad_file != "skip":
                raise
            _bad_file(ws, unit, fp, e)
            counters["bad_files"].append(uri)
            continue
        mapping, n_ok, n_rej, _, _ = res
        counters["units"] += 1
        counters["rows"] += n_ok + n_rej
        counters["samples"] += n_ok
        counters["rejected"] += n_rej
        counters["layouts"][mapping.layout] = counters["layouts"].get(mapping.layout, 0) + 1


def _count_update(counters: dict[str, Any], uri: str, done: dict[str, Any]) -> None:
    """Counters of a changed unit brought up to date (:func:`curate.stages.ingest.changes.update_unit`)."""
    if done["kind"] == "folder":
        counters["folders_updated"] = counters.get("folders_updated", 0) + 1
        counters["samples"] += done["added"]
        counters["rejected"] += done["rejected"]
        counters["rows"] += done["added"] + done["rejected"]
        counters["folder_files_gone"] = counters.get("folder_files_gone", 0) + done["gone"]
        if done["added"] or done["gone"]:
            info(f"[ingest] {uri}: {done['added']} new image file(s) ingested, {done['gone']} gone "
                 "(their samples stay; the hash stage marks them missing until the files are back)")
    else:
        counters["units_unchanged_rows"] = counters.get("units_unchanged_rows", 0) + 1
        info(f"[ingest] {uri} changed on disk but holds the same rows: kept "
             f"({done['refs_updated']} image reference(s) updated)")
    counters["image_refs_updated"] = counters.get("image_refs_updated", 0) + done["refs_updated"]


def _totals(ws: Workspace, counters: dict[str, Any]) -> None:
    """Catalog-wide counters (every unit ingested so far, not only this run's)."""
    # cross-shard key reuse (K06): reported, never merged
    wds = [r[0] for r in ws.q("SELECT source_id FROM sources WHERE format = 'webdataset'")]
    reuse = ws.scalar(
        "SELECT count(*) FROM (SELECT s.key FROM samples s JOIN sources o USING (source_id) "
        "WHERE s.source_id IN (SELECT unnest(?)) GROUP BY o.name, s.key HAVING count(DISTINCT s.source_id) > 1)",
        [wds],
    ) if wds else 0
    counters["webdataset_keys_in_several_shards"] = int(reuse or 0)
    # columns that only some files of a source have (case K04): unioned by name, NULL elsewhere
    partial: dict[str, list[str]] = {}
    for name, in ws.q("SELECT DISTINCT name FROM sources WHERE format IN ('parquet', 'hf_arrow') ORDER BY name"):
        cols = [set(json.loads(c)) for c, in ws.q("SELECT columns FROM sources WHERE name = ?", [name])]
        some = sorted(set().union(*cols) - set.intersection(*cols)) if len(cols) > 1 else []
        if some:
            partial[name] = some
    counters["columns_only_in_some_files"] = partial
    counters["total_samples"] = int(ws.scalar("SELECT count(*) FROM samples"))
    counters["total_rejected"] = int(ws.scalar("SELECT count(*) FROM rejects"))
    counters.update(caption_and_note_counts(ws))
    counters["rejected_by_reason"] = rejected_by_reason(ws)
    counters["notes_by_code"] = notes_by_code(ws)


def _record_source(ws: Workspace, unit: Unit, source_id: int, fp: str, res) -> None:
    mapping, n_ok, n_rej, unit_notes, file_columns = res
    ws.con.execute(
        "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [source_id, unit.source.name, unit.uri, unit.fmt, mapping.layout, n_ok + n_rej, n_ok, n_rej, fp,
         json.dumps(mapping.columns), json.dumps(unit_notes), json.dumps(file_columns)],
    )


def caption_and_note_counts(ws: Workspace) -> dict[str, int]:
    """Samples with a NULL caption, an empty/blank caption, and at least one ingest note."""
    missing, empty, noted = ws.q(
        # blank = only spaces: it starts with one (trimming every caption cost a second per million rows)
        "SELECT count(*) FILTER (caption IS NULL), "
        "count(*) FILTER (caption = '' OR (starts_with(caption, ' ') AND trim(caption) = '')), "
        "count(*) FILTER (len(notes) > 0) FROM samples"
    )[0]
    return {"captions_missing": int(missing), "captions_empty": int(empty), "rows_with_notes": int(noted)}


def rejected_by_reason(ws: Workspace) -> dict[str, int]:
    """Rejected rows per reason code (the text before the first ':')."""
    return {k: int(v) for k, v in ws.q(
        "SELECT split_part(reason, ':', 1) AS k, count(*) FROM rejects GROUP BY k ORDER BY k")}


def notes_by_code(ws: Workspace) -> dict[str, int]:
    """Per-row ingest notes per ``code(column)`` (see the module doc for the codes)."""
    return {k: int(v) for k, v in ws.q(
        "SELECT split_part(n, ':', 1) AS k, count(*) FROM (SELECT unnest(notes) AS n FROM samples "
        "WHERE len(notes) > 0) GROUP BY k ORDER BY k")}
