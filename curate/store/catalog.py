"""The workspace and its DuckDB catalog: tables, runs, and stage bookkeeping.

Layout of a workspace (one per dataset)::

    catalog.duckdb      metadata, hashes, clusters, flags, runs
    config.json         the last run config (stage commands reuse it)
    embeddings/<model>/ part-00000.npy float16 (n, d) + part-00000.ids.npy int64 (n,)
    index/              faiss caches (always rebuildable)
    out/                manifest.parquet, removals/, summary.json, report/ (a symlink to the
                        current generation .out/<n>/, switched whole: curate.store.outdir)

``sample_id`` (BIGINT) is the only join key: ``source_id * 2**40 + source_row``, so it is
stable across re-runs and independent of processing order. It is unique by construction
(ingest writes each source_id once, in one transaction), so ``samples`` carries no index —
an index would cost LAION-scale ingest time and memory for lookups nobody makes.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb

from curate.errors import CurateError
from curate.store import fsio, hosts, outdir, runstate

ROW_BITS = 40  # sample_id = source_id << ROW_BITS | source_row

DDL = """
CREATE TABLE IF NOT EXISTS sources (
    source_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, uri VARCHAR NOT NULL UNIQUE,
    format VARCHAR NOT NULL, schema_name VARCHAR, n_rows BIGINT, n_samples BIGINT,
    n_rejected BIGINT, fingerprint VARCHAR, column_map JSON, notes JSON, columns JSON
);
CREATE TABLE IF NOT EXISTS samples (
    sample_id BIGINT NOT NULL, source_id INTEGER NOT NULL, source_row BIGINT NOT NULL,
    key VARCHAR, url VARCHAR, caption VARCHAR, width INTEGER, height INTEGER,
    image_ref VARCHAR, license VARCHAR, nsfw VARCHAR, similarity DOUBLE, punsafe DOUBLE,
    pwatermark DOUBLE, aesthetic DOUBLE, laion_hash BIGINT, sha256_meta VARCHAR,
    extra JSON, notes VARCHAR[]
);
CREATE TABLE IF NOT EXISTS rejects (
    source_id INTEGER NOT NULL, source_row BIGINT NOT NULL, reason VARCHAR NOT NULL, raw VARCHAR
);
CREATE TABLE IF NOT EXISTS images (
    sample_id BIGINT PRIMARY KEY, status VARCHAR NOT NULL, detail VARCHAR, n_bytes BIGINT,
    sha256 VARCHAR, phash UBIGINT, width INTEGER, height INTEGER, raw_width INTEGER,
    raw_height INTEGER, mode VARCHAR, format VARCHAR, orientation INTEGER, notes VARCHAR[],
    phash_mirror UBIGINT, phash_quality SMALLINT, colourfulness SMALLINT, border REAL, jpeg_quality SMALLINT,
    file_size BIGINT, file_mtime_ns BIGINT
);
CREATE TABLE IF NOT EXISTS embeddings (
    sample_id BIGINT NOT NULL, model VARCHAR NOT NULL, part INTEGER, status VARCHAR NOT NULL, sha256 VARCHAR,
    PRIMARY KEY (sample_id, model)
);
CREATE TABLE IF NOT EXISTS image_text (
    sample_id BIGINT NOT NULL, image_model VARCHAR NOT NULL, caption_model VARCHAR NOT NULL,
    similarity DOUBLE NOT NULL, PRIMARY KEY (sample_id, image_model, caption_model)
);
CREATE TABLE IF NOT EXISTS embedding_imports (
    model VARCHAR NOT NULL, uri VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL, n_rows BIGINT,
    imported BIGINT, unmatched BIGINT, part INTEGER
);
CREATE TABLE IF NOT EXISTS image_scores (
    sample_id BIGINT NOT NULL, classifier VARCHAR NOT NULL, label VARCHAR NOT NULL, score DOUBLE,
    detail VARCHAR, status VARCHAR NOT NULL, sha256 VARCHAR
);
CREATE TABLE IF NOT EXISTS dup_edges (
    a BIGINT NOT NULL, b BIGINT NOT NULL, signal VARCHAR NOT NULL, distance DOUBLE
);
CREATE TABLE IF NOT EXISTS cluster_stats (
    cluster_id BIGINT NOT NULL, cluster_size INTEGER NOT NULL, keeper_sample_id BIGINT,
    signals VARCHAR[], edges_sha256 BIGINT, edges_phash BIGINT, edges_embedding BIGINT,
    edges_caption BIGINT, max_phash_bits INTEGER, min_cosine DOUBLE, distinct_urls BIGINT,
    distinct_captions BIGINT, sources BIGINT, edges_phash_mirror BIGINT
);
CREATE TABLE IF NOT EXISTS caption_stats (
    sample_id BIGINT NOT NULL, caption_group BIGINT NOT NULL, caption_count INTEGER NOT NULL,
    caption_images INTEGER NOT NULL, template_group BIGINT NOT NULL, template_count INTEGER NOT NULL,
    template_variants INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    sample_id BIGINT NOT NULL, cluster_id BIGINT NOT NULL, cluster_size INTEGER NOT NULL,
    keeper_rank INTEGER NOT NULL, is_keeper BOOLEAN NOT NULL, keeper_reason VARCHAR,
    signals VARCHAR[]
);
CREATE TABLE IF NOT EXISTS flags (
    sample_id BIGINT NOT NULL, pack VARCHAR NOT NULL, rule_id VARCHAR NOT NULL,
    category VARCHAR NOT NULL, action VARCHAR NOT NULL, score DOUBLE, evidence VARCHAR,
    holder VARCHAR
);
-- flag: per-rule coverage (curate.stages.flag.coverage): samples checked, unknown and hit
CREATE TABLE IF NOT EXISTS rule_stats (
    pack VARCHAR NOT NULL, rule_id VARCHAR NOT NULL, category VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    reads VARCHAR, action VARCHAR NOT NULL, checked BIGINT NOT NULL, unknown BIGINT NOT NULL,
    unknown_action VARCHAR NOT NULL, hits BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS category_stats (
    category VARCHAR NOT NULL, unscored BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    claimant VARCHAR NOT NULL, slug VARCHAR NOT NULL, contact VARCHAR, category VARCHAR NOT NULL,
    action VARCHAR NOT NULL, kind VARCHAR, value VARCHAR
);
CREATE TABLE IF NOT EXISTS claim_matches (
    claimant VARCHAR NOT NULL, slug VARCHAR NOT NULL, category VARCHAR NOT NULL, action VARCHAR NOT NULL,
    sample_id BIGINT NOT NULL, signal VARCHAR NOT NULL, score DOUBLE, evidence VARCHAR NOT NULL,
    matched_reference VARCHAR, via_cluster BOOLEAN NOT NULL, seed_sample_id BIGINT
);
CREATE TABLE IF NOT EXISTS decisions (
    sample_id BIGINT NOT NULL, keep BOOLEAN NOT NULL, reasons VARCHAR[] NOT NULL,
    cluster_id BIGINT, keeper_sample_id BIGINT, review VARCHAR[], tags VARCHAR[]
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, stage VARCHAR NOT NULL, config JSON, digest VARCHAR,
    started TIMESTAMP, finished TIMESTAMP, status VARCHAR NOT NULL, counters JSON, error VARCHAR
);
-- memorization probes (curate.probes): select → generate / import → score
CREATE TABLE IF NOT EXISTS probes (
    probe_id BIGINT PRIMARY KEY, prompt VARCHAR NOT NULL, rank INTEGER, risk DOUBLE, reasons JSON,
    sample_ids BIGINT[] NOT NULL, representative_sample_id BIGINT, cluster_size INTEGER,
    caption_count INTEGER, pair_count INTEGER, template_count INTEGER, specificity DOUBLE,
    n_samples INTEGER, origin VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS generations (
    gen_id BIGINT PRIMARY KEY, gen_set VARCHAR NOT NULL, probe_id BIGINT NOT NULL, prompt VARCHAR NOT NULL,
    seed BIGINT, path VARCHAR NOT NULL, model VARCHAR, settings JSON, noise_magnitude DOUBLE,
    noise_per_step DOUBLE[], origin VARCHAR NOT NULL, width INTEGER, height INTEGER
);
CREATE TABLE IF NOT EXISTS gen_matches (
    gen_id BIGINT NOT NULL, model VARCHAR NOT NULL, rank INTEGER NOT NULL, sample_id BIGINT NOT NULL,
    similarity DOUBLE NOT NULL, tiled_l2 DOUBLE
);
CREATE TABLE IF NOT EXISTS gen_scores (
    gen_id BIGINT NOT NULL, model VARCHAR NOT NULL, status VARCHAR NOT NULL, top1_sample_id BIGINT,
    top1_similarity DOUBLE, top1_tiled_l2 DOUBLE, min_tiled_l2 DOUBLE, min_tiled_l2_sample_id BIGINT,
    verdict VARCHAR, evidence JSON
);
CREATE TABLE IF NOT EXISTS probe_verdicts (
    gen_set VARCHAR NOT NULL, probe_id BIGINT NOT NULL, model VARCHAR NOT NULL, verdict VARCHAR NOT NULL,
    n_generations INTEGER, n_replicated INTEGER, n_close INTEGER, max_similarity DOUBLE,
    min_tiled_l2 DOUBLE, noise_magnitude DOUBLE, evidence JSON
);
CREATE TABLE IF NOT EXISTS probe_stats (
    gen_set VARCHAR NOT NULL, model VARCHAR NOT NULL, descriptor JSON, stats JSON
);
-- dedup: "container_id contains a copy of contained_id" (curate.stages.dedup.containment)
CREATE TABLE IF NOT EXISTS containment (
    container_id BIGINT NOT NULL, contained_id BIGINT NOT NULL, inliers INTEGER, inlier_ratio DOUBLE,
    coverage DOUBLE, region JSON, score DOUBLE
);
-- dedup: each aligned cluster member against the others: an overlay drawn on it, or blur (curate.stages.dedup.fidelity)
CREATE TABLE IF NOT EXISTS copy_fidelity (
    sample_id BIGINT NOT NULL, cluster_id BIGINT NOT NULL, peers INTEGER NOT NULL, added DOUBLE, lost DOUBLE,
    detail DOUBLE, overlay BOOLEAN NOT NULL, soft BOOLEAN NOT NULL
);
"""

# Columns added after a catalog layout was in use: appended (as in DDL) to older catalogs
# when they are opened. The stage that fills a new column re-computes what older runs lack
# (hash: rows without ``phash_mirror`` are hashed again, see curate.stages.hash.stage).
# ``embeddings.sha256`` (the image bytes a vector was computed from) of rows embedded before it
# existed is the image's sha256 in the catalog when it is first opened by this version.
MIGRATIONS = """
ALTER TABLE images ADD COLUMN IF NOT EXISTS phash_mirror UBIGINT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS phash_quality SMALLINT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS colourfulness SMALLINT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS border REAL;
ALTER TABLE images ADD COLUMN IF NOT EXISTS jpeg_quality SMALLINT;
ALTER TABLE cluster_stats ADD COLUMN IF NOT EXISTS edges_phash_mirror BIGINT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS file_size BIGINT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS file_mtime_ns BIGINT;
ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS sha256 VARCHAR;
UPDATE embeddings SET sha256 = images.sha256 FROM images
    WHERE embeddings.sha256 IS NULL AND images.sample_id = embeddings.sample_id AND images.sha256 IS NOT NULL
    AND embeddings.model NOT LIKE 'text:%' AND embeddings.model NOT LIKE 'precomputed:%';
"""

STAGES = ("ingest", "hash", "embed", "dedup", "flag", "export", "report")

#: DuckDB storage format of a new catalog: readable by DuckDB ≥ 1.0 (CLI, notebooks), not only by the 2.x that writes it
STORAGE_VERSION = "v1.0.0"


class CatalogLocked(CurateError):
    """Another process holds the catalog for writing (a running ``curate`` command)."""


def sample_id(source_id: int, source_row: int) -> int:
    """Stable sample id: ``source_id * 2**40 + source_row`` (int64, ≥ 0)."""
    return (source_id << ROW_BITS) | source_row


class Workspace:
    """A workspace directory with its catalog connection (single writer).

    Args:
        root: workspace folder; created if missing.
        threads / memory_limit: DuckDB settings (None keeps DuckDB's defaults).

    Raises:
        CurateError: if the catalog is locked by another process or unreadable.
        NotWritableError: the workspace is read-only or not writable by this user.
        DiskFullError: no space left to open the catalog.
    """

    def __init__(self, root: str | Path, *, threads: int | None = None, memory_limit: str | None = None,
                 embeddings_root: str | Path | None = None):
        self.root = Path(root).resolve()
        self.embeddings_root = embeddings_root  # None: <root>/embeddings (RunConfig.embeddings_root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("embeddings", "index", "logs"):
                (self.root / sub).mkdir(exist_ok=True)
            fsio.check_writable(self.root)
        except OSError as e:
            raise (fsio.not_writable_error(e, self.root) or fsio.disk_full_error(e) or e) from None
        try:
            # a new catalog is written in DuckDB's v1.0.0 storage format, which DuckDB 1.0 and later (its CLI
            # too) open; DuckDB 2's default format opens in 2.x only. An existing catalog keeps its format.
            self.con = duckdb.connect(str(self.root / "catalog.duckdb"),
                                      config={"storage_compatibility_version": STORAGE_VERSION})
        except duckdb.Error as e:
            err = fsio.not_writable_error(e, self.root) or fsio.disk_full_error(e)
            if err is not None:
                raise err from None
            if "lock" in str(e).lower():
                raise CatalogLocked(f"cannot open catalog in {self.root}: another curate process is using this "
                                  f"workspace ({e}); wait for it to finish, or use another workspace") from None
            raise CurateError(f"cannot open catalog in {self.root}: {e}") from None
        try:
            # under the catalog's lock: out/ is a whole generation, staging of killed runs removed
            outdir.recover(self.root)
        except CurateError:  # e.g. out is a symlink made outside curate to a folder that holds files
            self.con.close()
            raise
        except OSError as e:
            self.con.close()
            raise (fsio.not_writable_error(e, self.root) or fsio.disk_full_error(e) or e) from None
        self.con.execute("SET enable_progress_bar = false")  # DuckDB's bar prints to stdout, which carries JSON
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit.replace(chr(39), '')}'")
        self.con.execute(DDL)
        self.con.execute(MIGRATIONS)
        hosts.register(self.con)  # curate_host(): IDNA-normalised hosts for every host comparison
        # status.json says a command holds the workspace from now until close() (curate.store.runstate)
        self.run_state: dict[str, Any] | None = {
            "running": True, "opened": runstate.now_iso(), "stage": None, "last_stage": None, "run_id": None,
            "started": None, "progress": None, "stages": self.status()}
        runstate.write(self.root, self.run_state)

    # -- paths -----------------------------------------------------------------------------
    @property
    def out(self) -> Path:
        return self.root / "out"

    def embeddings_dir(self, model: str) -> Path | str:
        """The folder of embedding key ``model``'s parts (:mod:`curate.store.embeddings`): a local Path
        (created if missing) under ``<root>/embeddings`` or the configured ``embed.parts_root``,
        or a URI string when that is object storage (``s3://…/<key>``; nothing to create)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
        base = self.root / "embeddings" if self.embeddings_root is None else self.embeddings_root
        d = fsio.join(base, safe)
        if isinstance(d, Path):
            d.mkdir(parents=True, exist_ok=True)
        return d

    @classmethod
    def read_only(cls, root: str | Path) -> "Workspace":
        """The workspace's catalog opened read-only, for reading while others read too (a
        notebook's read-only connection, another ``curate status``): no folder is made, no table
        created; only queries work.

        Raises:
            CatalogLocked: a process holds the catalog for writing (a run in progress).
            CurateError: there is no catalog, or it cannot be opened.
        """
        ws = cls.__new__(cls)
        ws.root, ws.embeddings_root = Path(root).resolve(), None
        path = ws.root / "catalog.duckdb"
        if not path.is_file():
            raise CurateError(f"{root} holds no curate catalog (run `curate --workspace {root} run CONFIG.yaml`)")
        try:
            ws.con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as e:
            if "lock" in str(e).lower():
                raise CatalogLocked(f"the catalog in {ws.root} is held by another process: {e}") from None
            raise CurateError(f"cannot open catalog in {ws.root}: {e}") from None
        ws.con.execute("SET enable_progress_bar = false")
        hosts.register(ws.con)
        return ws

    def close(self) -> None:
        """Close the catalog; status.json then says no command holds the workspace."""
        state = getattr(self, "run_state", None)
        if state is not None:
            try:
                stages = self.status()
            except Exception:  # noqa: BLE001 - a view: the catalog's own error is the one to report
                stages = state.get("stages")
            runstate.write(self.root, {**state, "running": False, "stage": None, "progress": None, "stages": stages})
            self.run_state = None
        self.con.close()

    # -- queries ---------------------------------------------------------------------------
    def q(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Run ``sql`` and return all rows."""
        return self.con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        rows = self.con.execute(sql, params or []).fetchall()  # fetchall: DuckDB 2 needs results consumed
        return rows[0][0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN … COMMIT, rolled back on any exception (so a killed batch leaves nothing)."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # -- runs ------------------------------------------------------------------------------
    def last_run(self, stage: str, status: str | None = "ok") -> dict | None:
        sql = "SELECT run_id, stage, config, digest, started, finished, status, counters, error FROM runs WHERE stage = ?"
        params: list[Any] = [stage]
        if status:
            sql += " AND status = ?"
            params.append(status)
        rows = self.q(sql + " ORDER BY run_id DESC LIMIT 1", params)
        if not rows:
            return None
        keys = ["run_id", "stage", "config", "digest", "started", "finished", "status", "counters", "error"]
        d = dict(zip(keys, rows[0]))
        for k in ("config", "counters"):
            d[k] = json.loads(d[k]) if d[k] else {}
        return d

    def start_run(self, stage: str, config: dict, digest: str) -> int:
        run_id = (self.scalar("SELECT max(run_id) FROM runs") or 0) + 1
        self.con.execute(
            "INSERT INTO runs (run_id, stage, config, digest, started, status) VALUES (?, ?, ?, ?, ?, 'running')",
            [run_id, stage, json.dumps(config, sort_keys=True), digest, _now()],
        )
        return run_id

    def finish_run(self, run_id: int, counters: dict, status: str = "ok", error: str | None = None) -> None:
        self.con.execute(
            "UPDATE runs SET finished = ?, status = ?, counters = ?, error = ? WHERE run_id = ?",
            [_now(), status, json.dumps(counters, sort_keys=True, default=_json_default), error, run_id],
        )

    def status(self) -> dict[str, Any]:
        """Per stage: last run's status, digest, times and counters (for ``curate status``)."""
        out: dict[str, Any] = {}
        for stage in STAGES:
            r = self.last_run(stage, status=None)
            if r is None:
                out[stage] = {"status": "never_run"}
                continue
            out[stage] = {
                "status": r["status"],
                "run_id": r["run_id"],
                "started": r["started"].isoformat() if r["started"] else None,
                "finished": r["finished"].isoformat() if r["finished"] else None,
                "counters": r["counters"],
            }
            if r["error"]:
                out[stage]["error"] = r["error"]
            ok = r if r["status"] == "ok" else self.last_run(stage)
            if ok is not None:  # what its readers were built on, and what it was built on (curate.stages.out_of_date)
                out[stage] |= {"ok_run_id": ok["run_id"], "result": result_digest(ok)}
                if "built_on" in ok["config"]:
                    out[stage]["built_on"] = ok["config"]["built_on"]
        return out


def result_digest(run: dict | None) -> Any:
    """What a stage's successful run means to its readers: the digest of what it wrote when it
    says so (``output_digest``: ingest's and hash's — a re-run that changed nothing, such as a
    touched file or a forced re-hash, leaves its readers up to date; one that changed something
    does not), else its run digest. None when there is no such run. JSON-shaped (a str or a
    1-list), as recorded in ``runs.config.built_on``."""
    if run is None:
        return None
    out = (run.get("counters") or {}).get("output_digest")
    return run["digest"] if not out else ["output", out]


def digest_of(*parts: Any) -> str:
    """sha256 hex of the canonical JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_fingerprint(path: Path) -> str:
    """Cheap change detector for an input file: size and mtime (ns)."""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)
