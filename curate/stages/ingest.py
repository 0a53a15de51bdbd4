"""ingest: metadata parquet, image folders and webdataset shards → ``sources``, ``samples``, ``rejects``.

Every input row ends as exactly one ``samples`` row or one ``rejects`` row with a reason.
One source file is ingested in one transaction, so a run killed mid-file leaves no partial
file behind and the re-run ingests it whole; files already ingested with the same
fingerprint are skipped, so adding a file to a set ingests only that file.

Canonical columns and their types come from :mod:`curate.schemas`. Casting never rounds or
drops silently: a value that does not fit its target type becomes NULL with a per-row note
(e.g. ``width: '256.5' does not fit INTEGER``); NaN/±inf scores become NULL with a note
(DuckDB sorts NaN above every number, so a threshold rule would otherwise treat it as
"unsafe", case K15).

Reject reasons: ``no_url_or_image`` (nothing identifies the sample), ``invalid_url``
(a URL that is not ``scheme://…`` and no image either — e.g. LAION's NSFW/similarity values
shifted into URL/TEXT).
"""
from __future__ import annotations

import glob
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from curate.catalog import ROW_BITS, Workspace, digest_of, file_fingerprint
from curate.config import RunConfig, SourceConfig
from curate.errors import InputError
from curate.images import tar_ref
from curate.progress import bar, info
from curate.schemas import CANONICAL, Mapping, resolve

IMAGE_EXTS = {
    ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ico", ".ppm", ".pgm", ".pbm",
    ".pnm", ".psd", ".avif", ".heic", ".jp2", ".j2k", ".mpo", ".svg", ".jfif", ".tga", ".dib",
}
URL_RE = r"^[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#]+"  # scheme://host…; spaces later in a path are real (browsers encode them)


# ----------------------------------------------------------------------------------------------
# input discovery


def _expand(cfg: RunConfig, pattern: str) -> list[Path]:
    p = cfg.path(pattern)
    if any(ch in pattern for ch in "*?["):
        files = sorted(Path(x) for x in glob.glob(str(p), recursive=True))
    else:
        files = [p]
    return files


def _unit_list(ws: Workspace, cfg: RunConfig) -> list[tuple[SourceConfig, str, Path]]:
    """(source, format, path) for every input unit, in config order then path order."""
    units: list[tuple[SourceConfig, str, Path]] = []
    for src in cfg.sources:
        if src.metadata:
            files = _expand(cfg, src.metadata)
            if not files or not all(f.is_file() for f in files):
                raise InputError(f"source {src.name!r}: metadata {src.metadata!r} matches no file")
            units += [(src, "parquet", f) for f in files]
        elif src.webdataset:
            files = _expand(cfg, src.webdataset)
            if not files or not all(f.is_file() for f in files):
                raise InputError(f"source {src.name!r}: webdataset {src.webdataset!r} matches no tar file")
            units += [(src, "webdataset", f) for f in files]
        else:
            d = cfg.path(src.images or "")
            if not d.is_dir():
                raise InputError(f"source {src.name!r}: images folder {d} does not exist")
            units.append((src, "folder", d))
    for _, _, path in units:
        if ws.root == path or ws.root in path.parents:
            raise InputError(f"input {path} lies inside the workspace {ws.root}; curate never reads its own outputs")
    return units


def _folder_files(root: Path, skip: Path | None = None) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dp = Path(dirpath)
        if skip is not None and (dp == skip or skip in dp.parents):
            dirnames[:] = []
            continue
        dirnames.sort()
        for fn in sorted(filenames):
            if Path(fn).suffix.lower() in IMAGE_EXTS:
                out.append(dp / fn)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _fingerprint(fmt: str, path: Path, ws: Workspace) -> str:
    if fmt != "folder":
        return file_fingerprint(path)
    return digest_of([(p.relative_to(path).as_posix(), file_fingerprint(p)) for p in _folder_files(path, ws.root)])


def inputs(ws: Workspace, cfg: RunConfig) -> list[Any]:
    """Fingerprints of all input units (the ingest digest depends on them)."""
    units = _unit_list(ws, cfg)
    return [(s.name, s.schema_, s.images, fmt, str(p), _fingerprint(fmt, p, ws)) for s, fmt, p in units]


# ----------------------------------------------------------------------------------------------
# row producers: each yields pyarrow tables with a __row column (0-based row in the unit)


def _parquet_batches(path: Path, batch_rows: int) -> tuple[list[str], Iterator[pa.Table]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not a readable parquet file: {e}") from None
    names = list(pf.schema_arrow.names)

    def gen() -> Iterator[pa.Table]:
        offset = 0
        for rb in pf.iter_batches(batch_size=batch_rows):
            t = _repair_utf8(pa.Table.from_batches([rb]))
            t = t.append_column("__row", pa.array(range(offset, offset + t.num_rows), pa.int64()))
            offset += t.num_rows
            yield t

    return names, gen()


def _repair_utf8(t: pa.Table) -> pa.Table:
    """Replace invalid UTF-8 in string columns with U+FFFD, row by row, with a per-row note
    (column ``__fix_notes``); every other row of the file survives (case K05)."""
    notes: list[list[str]] | None = None
    for k, name in enumerate(t.column_names):
        col = t.column(k)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = col.cast(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary()).to_pylist()
        fixed = []
        for i, b in enumerate(raw):
            if b is None:
                fixed.append(None)
                continue
            try:
                fixed.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                fixed.append(b.decode("utf-8", errors="replace"))
                notes = notes if notes is not None else [[] for _ in range(t.num_rows)]
                notes[i].append(f"{name}: invalid UTF-8 replaced with U+FFFD")
        t = t.set_column(k, name, pa.array(fixed, pa.string()))
    if notes is not None:
        t = t.append_column("__fix_notes", pa.array(notes, pa.list_(pa.string())))
    return t


def _folder_table(root: Path, ws: Workspace) -> pa.Table:
    rows: dict[str, list[Any]] = {"key": [], "caption": [], "url": [], "image_ref": [], "__row": []}
    for i, p in enumerate(_folder_files(root, ws.root)):
        side = p.with_suffix(".txt")
        caption = side.read_text(encoding="utf-8", errors="replace").strip() if side.is_file() else None
        url = None
        js = p.with_suffix(".json")
        if js.is_file():
            try:
                meta = json.loads(js.read_text(encoding="utf-8", errors="replace"))
                url = meta.get("url") if isinstance(meta, dict) else None
                caption = caption if caption is not None else (meta.get("caption") if isinstance(meta, dict) else None)
            except ValueError:
                pass
        rows["key"].append(p.relative_to(root).as_posix())
        rows["caption"].append(caption)
        rows["url"].append(url)
        rows["image_ref"].append(str(p.resolve()))
        rows["__row"].append(i)
    return pa.table(rows, schema=_WDS_SCHEMA)


_WDS_SCHEMA = pa.schema(
    [("key", pa.string()), ("caption", pa.string()), ("url", pa.string()), ("image_ref", pa.string()), ("__row", pa.int64())]
)


def _webdataset_table(shard: Path) -> tuple[pa.Table, list[str]]:
    """One row per key (webdataset convention: key = member path up to the first dot of its
    basename). Repeated members within a key are noted; the first one is used."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    notes: list[str] = []
    try:
        with tarfile.open(shard, "r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                d, _, base = m.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                key = f"{d}/{stem}" if d else stem
                g = groups.setdefault(key, {})
                ext = ext.lower()
                if ext in g:
                    notes.append(f"repeated member {m.name!r} (kept the first)")
                    continue
                g[ext] = m
            rows: dict[str, list[Any]] = {"key": [], "caption": [], "url": [], "image_ref": [], "__row": []}
            for i, (key, g) in enumerate(groups.items()):
                caption = url = None
                if "json" in g:
                    try:
                        meta = json.loads(tf.extractfile(g["json"]).read().decode("utf-8", "replace"))
                        if isinstance(meta, dict):
                            caption = meta.get("caption")
                            url = meta.get("url")
                    except ValueError:
                        notes.append(f"{key}.json is not valid JSON")
                if "txt" in g:
                    caption = tf.extractfile(g["txt"]).read().decode("utf-8", "replace").strip()
                img = next((m for e, m in g.items() if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
                rows["key"].append(key)
                rows["caption"].append(None if caption is None else str(caption))
                rows["url"].append(None if url is None else str(url))
                rows["image_ref"].append(tar_ref(shard, img.name, img.offset_data, img.size) if img else None)
                rows["__row"].append(i)
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"{shard}: not a readable tar shard: {e}") from None
    return pa.table(rows, schema=_WDS_SCHEMA), notes


# ----------------------------------------------------------------------------------------------
# SQL mapping


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _select_sql(mapping: Mapping, columns: list[str], source_id: int, images_root: Path | None) -> str:
    """SELECT turning a registered ``batch`` into canonical columns + notes + reject reason."""
    exprs: dict[str, str] = {}
    notes: list[str] = []
    for canon, typ in CANONICAL.items():
        src = mapping.columns.get(canon)
        if src is None:
            exprs[canon] = f"CAST(NULL AS {typ})"
            continue
        col = _q(src)
        if typ == "VARCHAR":
            e = f"NULLIF(trim(CAST({col} AS VARCHAR)), '')" if canon in ("url", "image_ref") else f"CAST({col} AS VARCHAR)"
        elif typ == "DOUBLE":
            d = f"TRY_CAST({col} AS DOUBLE)"
            e = f"(CASE WHEN isfinite({d}) THEN {d} END)"
            notes.append(
                f"CASE WHEN {col} IS NOT NULL AND {e} IS NULL THEN "
                f"'{canon}: ' || CAST({col} AS VARCHAR) || ' is not a finite number; stored NULL' END"
            )
        elif typ == "INTEGER":
            d = f"TRY_CAST({col} AS DOUBLE)"
            e = f"(CASE WHEN {d} = floor({d}) AND abs({d}) < 2147483648 THEN CAST({d} AS INTEGER) END)"
            notes.append(
                f"CASE WHEN {col} IS NOT NULL AND {e} IS NULL THEN "
                f"'{canon}: ' || CAST({col} AS VARCHAR) || ' does not fit INTEGER; stored NULL' END"
            )
        else:  # BIGINT
            e = f"TRY_CAST({col} AS BIGINT)"
            notes.append(
                f"CASE WHEN {col} IS NOT NULL AND {e} IS NULL THEN "
                f"'{canon}: ' || CAST({col} AS VARCHAR) || ' does not fit BIGINT; stored NULL' END"
            )
        exprs[canon] = e
    if images_root is not None and "image_ref" in mapping.columns:
        root = str(images_root.resolve()).rstrip("/") + "/"
        exprs["image_ref"] = f"(CASE WHEN {exprs['image_ref']} IS NOT NULL THEN {_lit(root)} || {exprs['image_ref']} END)"
    extra_cols = [c for c in mapping.unmapped if c not in ("__row", "__fix_notes") and not c.startswith("__index_level_")]
    extra = (
        "json_object(" + ", ".join(f"{_lit(c)}, {_q(c)}" for c in extra_cols) + ")" if extra_cols else "CAST(NULL AS JSON)"
    )
    url = exprs["url"]
    reason = (
        f"CASE WHEN {url} IS NULL AND {exprs['image_ref']} IS NULL THEN 'no_url_or_image' "
        f"WHEN {url} IS NOT NULL AND NOT regexp_matches({url}, {_lit(URL_RE)}) AND {exprs['image_ref']} IS NULL "
        f"THEN 'invalid_url: ' || left({url}, 80) END"
    )
    url_note = (
        f"CASE WHEN {url} IS NOT NULL AND NOT regexp_matches({url}, {_lit(URL_RE)}) THEN 'url: not a URL: ' || left({url}, 80) END"
    )
    notes_sql = "list_filter([" + ", ".join([*notes, url_note]) + "], lambda x: x IS NOT NULL)"
    if "__fix_notes" in columns:
        notes_sql = f"list_concat(coalesce(__fix_notes, []), {notes_sql})"
    base = source_id << ROW_BITS
    cols = ", ".join(f"{exprs[c]} AS {c}" for c in CANONICAL)
    return (
        f"SELECT {base} + __row AS sample_id, {source_id} AS source_id, __row AS source_row, {cols}, "
        f"{extra} AS extra, {notes_sql} AS notes, {reason} AS reject_reason, to_json(b) AS raw FROM batch b"
    )


def _insert(ws: Workspace, table: pa.Table, mapping: Mapping, source_id: int, images_root: Path | None) -> tuple[int, int]:
    con = ws.con
    con.register("batch", table)
    try:
        sel = _select_sql(mapping, table.column_names, source_id, images_root)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _mapped AS {sel}")
        cols = "sample_id, source_id, source_row, " + ", ".join(CANONICAL) + ", extra, notes"
        con.execute(
            f"INSERT INTO samples ({cols}) SELECT {cols} FROM _mapped WHERE reject_reason IS NULL"
        )
        con.execute(
            "INSERT INTO rejects SELECT source_id, source_row, reject_reason, CAST(raw AS VARCHAR) "
            "FROM _mapped WHERE reject_reason IS NOT NULL"
        )
        n_ok, n_rej = con.execute(
            "SELECT count(*) FILTER (reject_reason IS NULL), count(*) FILTER (reject_reason IS NOT NULL) FROM _mapped"
        ).fetchall()[0]
        con.execute("DROP TABLE _mapped")
    finally:
        _unregister(con, "batch")
    return int(n_ok), int(n_rej)


def _unregister(con, name: str) -> None:
    """Unregister a view even when the transaction is aborted (the rollback follows)."""
    import duckdb

    try:
        con.unregister(name)
    except duckdb.Error:
        pass


_IDENTITY = Mapping("internal", {"key": "key", "caption": "caption", "url": "url", "image_ref": "image_ref"}, [])


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    """Ingest every input unit not yet ingested. Returns counters.

    Raises:
        InputError: an input that cannot be used at all (unreadable file, unknown layout,
            case-colliding columns, a changed file that was already ingested).
    """
    counters: dict[str, Any] = {"units": 0, "units_skipped": 0, "rows": 0, "samples": 0, "rejected": 0, "layouts": {}}
    units = _unit_list(ws, cfg)
    for src, fmt, path in bar(units, desc="ingest", unit="file"):
        uri = str(path.resolve())
        fp = _fingerprint(fmt, path, ws)
        row = ws.q("SELECT source_id, fingerprint FROM sources WHERE uri = ?", [uri])
        if row:
            if row[0][1] != fp:
                raise InputError(
                    f"{uri} changed since it was ingested (source_id {row[0][0]}); start a new workspace "
                    "or restore the file — curate does not silently re-number samples"
                )
            counters["units_skipped"] += 1
            continue
        with ws.transaction():
            source_id = (ws.scalar("SELECT max(source_id) FROM sources") or 0) + 1
            unit_notes: list[str] = []
            n_ok = n_rej = 0
            if fmt == "parquet":
                names, batches = _parquet_batches(path, cfg.ingest.batch_rows)
                mapping = resolve(names, src.schema_, str(path))
                images_root = cfg.path(src.images) if src.images else None
                if "image_ref" in mapping.columns and images_root is None:
                    unit_notes.append(f"column {mapping.columns['image_ref']!r} names files but the source has no 'images' folder")
                    mapping = Mapping(mapping.layout, {k: v for k, v in mapping.columns.items() if k != "image_ref"},
                                      mapping.unmapped + [mapping.columns["image_ref"]])
                info(f"[ingest] {path.name}: {mapping.describe()}")
                for t in batches:
                    a, b = _insert(ws, t, mapping, source_id, images_root)
                    n_ok, n_rej = n_ok + a, n_rej + b
            elif fmt == "webdataset":
                table, unit_notes = _webdataset_table(path)
                mapping = Mapping("webdataset", _IDENTITY.columns, [])
                n_ok, n_rej = _insert(ws, table, mapping, source_id, None)
            else:
                table = _folder_table(path, ws)
                mapping = Mapping("folder", _IDENTITY.columns, [])
                n_ok, n_rej = _insert(ws, table, mapping, source_id, None)
            file_columns = names if fmt == "parquet" else []
            ws.con.execute(
                "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [source_id, src.name, uri, fmt, mapping.layout, n_ok + n_rej, n_ok, n_rej, fp,
                 json.dumps(mapping.columns), json.dumps(unit_notes), json.dumps(file_columns)],
            )
        counters["units"] += 1
        counters["rows"] += n_ok + n_rej
        counters["samples"] += n_ok
        counters["rejected"] += n_rej
        counters["layouts"][mapping.layout] = counters["layouts"].get(mapping.layout, 0) + 1
    # cross-shard key reuse (K06): reported, never merged
    reuse = ws.scalar(
        "SELECT count(*) FROM (SELECT s.key FROM samples s JOIN sources o USING (source_id) "
        "WHERE o.format = 'webdataset' GROUP BY o.name, s.key HAVING count(DISTINCT s.source_id) > 1)"
    )
    counters["webdataset_keys_in_several_shards"] = int(reuse or 0)
    # columns that only some files of a source have (case K04): unioned by name, NULL elsewhere
    partial: dict[str, list[str]] = {}
    for name, in ws.q("SELECT DISTINCT name FROM sources WHERE format = 'parquet' ORDER BY name"):
        cols = [set(json.loads(c)) for c, in ws.q("SELECT columns FROM sources WHERE name = ?", [name])]
        some = sorted(set().union(*cols) - set.intersection(*cols)) if len(cols) > 1 else []
        if some:
            partial[name] = some
    counters["columns_only_in_some_files"] = partial
    counters["total_samples"] = int(ws.scalar("SELECT count(*) FROM samples"))
    counters["total_rejected"] = int(ws.scalar("SELECT count(*) FROM rejects"))
    counters.update(caption_and_note_counts(ws))
    return counters


def caption_and_note_counts(ws: Workspace) -> dict[str, int]:
    """Samples with a NULL caption, an empty/blank caption, and at least one ingest note."""
    missing, empty, noted = ws.q(
        "SELECT count(*) FILTER (caption IS NULL), count(*) FILTER (caption IS NOT NULL AND trim(caption) = ''), "
        "count(*) FILTER (len(notes) > 0) FROM samples"
    )[0]
    return {"captions_missing": int(missing), "captions_empty": int(empty), "rows_with_notes": int(noted)}
