"""dedup: duplicate edges from every signal → ``dup_edges``; components → ``clusters``.

Signals and their edge ``distance`` column:

- ``sha256``    equal bytes of decodable images (status ``ok``: two broken files with the same
                bytes are not duplicates, each keeps its status); star edges to the group's
                smallest id; distance 0
- ``phash``     Hamming distance ≤ ``phash_max_distance`` bits (exact: multi-index hashing or
                faiss brute force, :func:`curate.stages.dedup.phash_search.phash_edges`); identical hashes get star
                edges to their group's smallest id (k − 1 edges for k copies, distance 0);
                distance = bits. Images under ``phash_min_side`` px on a side get no pHash
                edges (a 5×5 icon's DCT hash says little), nor do images whose information
                score ``phash_quality`` is under ``phash_min_quality`` (flat and near-flat
                images: their bits are rounding noise, :func:`curate.media.phash.information`).
- ``phash_mirror`` (``phash_mirror: true``, the default) the pHash of one image's horizontal
                mirror is within ``phash_max_distance`` of the other's pHash, while their own
                pHashes are not (a flipped copy); distance = the smaller of the two mirror
                distances, bits. Same search, same ``phash_min_side`` and ``phash_min_quality`` rules.
- ``embedding`` cosine ≥ ``embedding_min_cosine`` on L2-normalised vectors; identical vectors
                get star edges to their group's smallest id (distance 0) and are searched once;
                exact search (faiss inner product) below ``embedding_ivf_min_n`` distinct
                vectors, k-means partitions searched multi-probe above (recall measured and
                counted); distance = 1 − cosine. ``embedding_search: ivfpq`` (cluster scale,
                :func:`_embedding_edges_from_parts`): the same rules applied part by part, the
                vectors never loaded here, faiss IVF-PQ search in Ray tasks with
                ``dedup.engine: ray``
- ``caption``   equal normalised caption (NFC, lower-case, collapsed spaces; captions over
                ``curate.media.captions.KEY_CHARS`` characters compared by a hash of the whole
                lower-cased text: :data:`curate.media.captions.KEY_SQL`), if enabled; star
                edges; distance 0
- ``verified``  (``containment: true`` and ``verified_min_fraction`` set, the default) a containment
                whose region covers at least ``verified_min_fraction`` of the container's picture
                (its frame without flat padding): a copy of the whole picture, or of most of it,
                that the descriptor scored below ``embedding_min_cosine`` (rotated, in perspective,
                mirrored and cropped, in a frame, with text bars) but local features and a
                homography verified; distance 1 − score. A collage tile or a small crop stays a
                containment row and merges nothing
- ``containment`` (``containment_merges_clusters: true`` only) the container contains a verified copy of
                the other (:mod:`curate.stages.dedup.containment`); distance 1 − score. Whatever that
                setting, ``containment: true`` (the default) writes the directed ``containment`` rows
                (container, contained, inliers, inlier ratio, coverage, region, score) for embedding
                neighbours between ``containment_min_cosine`` and ``embedding_min_cosine``

Clusters are connected components (union of all signals). The keeper of each cluster is
chosen by :mod:`curate.stages.dedup.keeper` (flags are taken into account again at export). The stage
recomputes everything from the catalog, so re-running it is safe.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.config import RunConfig
from curate.media import captions
from curate.models.recipe import image_key
from curate.stages.dedup import ivfpq
from curate.stages.dedup.clusters import cluster_statistics, components
from curate.stages.dedup.containment import containment_rows
from curate.stages.dedup.fidelity import measure_fidelity
from curate.stages.dedup.keeper import ranked_sql
from curate.stages.dedup.surround import measure_surrounds
from curate.stages.dedup.phash_search import phash_edges
from curate.stages.dedup.rows import unit_rows
from curate.stages.dedup.sources import PartsSource, survey
from curate.stages.dedup.vector_search import embedding_edges
from curate.store.catalog import Workspace
from curate.store.embeddings import list_parts, load_all

_EDGE_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("signal", pa.string()), ("distance", pa.float64())])

#: samples whose vectors of key ``?`` may get embedding edges: still in the catalog (parts may hold pruned
#: ids), image decoded, at least ``embedding_min_side`` (``?``) px on each side — 16 px icons embed alike
#: (docs/BENCHMARKS.md, near-duplicate quality: 26 → 4 distinct pictures merged) — and an information score
#: ``phash_quality`` of at least ``embedding_min_quality`` (``?``): flat pictures of different colours embed
#: alike too (docs/BENCHMARKS.md, copy detection: 28 flat pairs merged without this rule)
ELIGIBLE_SQL = ("SELECT sample_id FROM embeddings WHERE model = ? AND status = 'ok' "
                "AND sample_id IN (SELECT sample_id FROM samples) "
                "AND sample_id NOT IN (SELECT sample_id FROM images WHERE status <> 'ok' "
                "OR least(width, height) < ? OR coalesce(phash_quality, 100) < ?)")


def eligible_params(key: str, dc) -> list:
    """The parameters of :data:`ELIGIBLE_SQL` for embedding key ``key`` under ``dc`` (a DedupConfig)."""
    return [key, dc.embedding_min_side, dc.embedding_min_quality]
UNIT_TOL = 1e-2  # K13: a stored row whose L2 norm is further than this from 1 (or not finite) is excluded


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    return None


def _add_edges(ws: Workspace, a: np.ndarray, b: np.ndarray, signal: str, dist: np.ndarray) -> int:
    if len(a) == 0:
        return 0
    t = pa.table(
        [pa.array(a, pa.int64()), pa.array(b, pa.int64()), pa.array([signal] * len(a), pa.string()),
         pa.array(np.asarray(dist, np.float64), pa.float64())],
        schema=_EDGE_SCHEMA,
    )
    ws.con.register("_edges", t)
    try:
        ws.con.execute("INSERT INTO dup_edges SELECT * FROM _edges")
    finally:
        ws.con.unregister("_edges")
    return len(a)


def _star_edges(ws: Workspace, signal: str, group_sql: str) -> int:
    """Edges from each member of a group to the group's smallest id; group_sql yields (sample_id, g)."""
    ws.con.execute(
        f"""INSERT INTO dup_edges
        SELECT m.first, x.sample_id, '{signal}', 0.0 FROM ({group_sql}) x
        JOIN (SELECT g, min(sample_id) AS first, count(*) AS n FROM ({group_sql}) GROUP BY g HAVING n > 1) m USING (g)
        WHERE x.sample_id <> m.first"""
    )
    return int(ws.scalar("SELECT count(*) FROM dup_edges WHERE signal = ?", [signal]))


def _tmp_dir(ws: Workspace) -> Path:
    """``<workspace>/tmp``: where IVF-PQ candidates wait between search and verification (the
    workspace's disk, sized for the data, rather than a small system /tmp)."""
    d = ws.root / "tmp"
    d.mkdir(exist_ok=True)
    return d


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    dc = cfg.dedup
    counters: dict[str, Any] = {"edges": {}}
    with ws.transaction() as con:
        con.execute("DELETE FROM dup_edges")
        con.execute("DELETE FROM clusters")
        if dc.sha256:
            counters["edges"]["sha256"] = _star_edges(
                ws, "sha256", "SELECT sample_id, sha256 AS g FROM images WHERE sha256 IS NOT NULL AND status = 'ok'"
            )
        if dc.caption_exact:
            counters["edges"]["caption"] = _star_edges(
                ws, "caption",
                f"SELECT sample_id, {captions.KEY_SQL} AS g FROM samples "  # a hash: huge captions stay cheap
                "WHERE caption IS NOT NULL AND trim(caption) <> ''",
            )
        if dc.phash_max_distance is not None:
            got = con.execute(
                "SELECT sample_id, phash, coalesce(phash_mirror, phash) AS mirror, phash_mirror IS NULL AS no_mirror "
                "FROM images WHERE status = 'ok' AND phash IS NOT NULL AND least(width, height) >= ? "
                "AND coalesce(phash_quality, 100) >= ? ORDER BY sample_id", [dc.phash_min_side, dc.phash_min_quality],
            ).fetchnumpy()
            ids = np.asarray(got["sample_id"], np.int64)
            hashes = np.asarray(got["phash"], np.uint64)
            search: dict[str, Any] = {}
            mirror = np.asarray(got["mirror"], np.uint64) if dc.phash_mirror else None
            i, j, d, mirrored = phash_edges(hashes, dc.phash_max_distance, mirror=mirror, method=dc.phash_search,
                                            stats=search)
            counters["phash_hashed"] = len(ids)
            counters["phash_low_information"] = int(con.execute(
                "SELECT count(*) FROM images WHERE status = 'ok' AND phash IS NOT NULL AND least(width, height) >= ? "
                "AND phash_quality < ?", [dc.phash_min_side, dc.phash_min_quality]).fetchall()[0][0])
            # method, distinct hashes, identical collapsed, MIH blocks/thresholds/candidates, mirror search
            counters["phash_search"] = search
            if dc.phash_mirror:  # catalogs hashed before mirror hashes existed are re-hashed by `curate hash`
                counters["phash_mirror_missing"] = int(np.asarray(got["no_mirror"], bool).sum())
            counters["edges"]["phash"] = _add_edges(ws, ids[i[~mirrored]], ids[j[~mirrored]], "phash", d[~mirrored])
            if dc.phash_mirror:
                counters["edges"]["phash_mirror"] = _add_edges(
                    ws, ids[i[mirrored]], ids[j[mirrored]], "phash_mirror", d[mirrored])
        if dc.embedding_min_cosine is not None:
            key = image_key(cfg)  # model + preprocessing identity: only vectors of the current config
            if dc.embedding_search == "ivfpq":  # cluster scale: parts streamed, never all loaded here
                _embedding_edges_from_parts(ws, cfg, key, counters)
            else:
                ok = {r[0] for r in ws.q(ELIGIBLE_SQL, eligible_params(key, dc))}
                ids, vecs = load_all(ws.embeddings_dir(key), only=ok, dtype=np.float16)
                if len(ids):  # K13: a row that is not finite and unit-length is excluded and counted
                    good = unit_rows(vecs, UNIT_TOL)
                    counters["embedding_vectors_excluded"] = int((~good).sum())
                    if not good.all():
                        ids, vecs = ids[good], vecs[good]
                counters["embedding_key"] = key
                counters["embedded_searched"] = len(ids)
                search = {}
                i, j, s = embedding_edges(
                    vecs, dc.embedding_min_cosine, method=dc.embedding_search, ivf_min_n=dc.embedding_ivf_min_n,
                    nlist=dc.embedding_nlist, nprobe=dc.embedding_nprobe, recall_sample=dc.embedding_recall_sample,
                    stats=search,
                )
                # method, rows / distinct / identical collapsed, IVF nlist, nprobe, recall (no timings: reruns compare equal)
                counters["embedding_search"] = {k: v for k, v in search.items() if not k.endswith("_seconds")}
                counters["edges"]["embedding"] = _add_edges(ws, ids[i], ids[j], "embedding",
                                                            1.0 - np.asarray(s, np.float64))
        con.execute("DELETE FROM containment")
        if dc.containment:
            _containment(ws, cfg, counters)
        edges = con.execute("SELECT a, b FROM dup_edges").fetchnumpy()  # one query: a[k] and b[k] stay paired
        ea, eb = np.asarray(edges["a"], np.int64), np.asarray(edges["b"], np.int64)
        nodes, cids = components(np.zeros(0, np.int64), ea, eb)
        t = pa.table({"sample_id": pa.array(nodes, pa.int64()), "cluster_id": pa.array(cids, pa.int64())})
        con.register("_members", t)
        try:
            con.execute("CREATE OR REPLACE TEMP TABLE _m AS SELECT * FROM _members")
        finally:
            con.unregister("_members")
        if dc.containment:  # what surrounds a copy inside its cluster: a crop's whole picture, or bars (keeper)
            counters["surrounds_measured"] = measure_surrounds(ws, "_m", cfg.hash.max_pixels)
        con.execute("DELETE FROM copy_fidelity")
        if {"no_overlay", "sharp"} & set(dc.keeper_rule):  # overlays and blur among aligned members (keeper)
            counters["fidelity"] = measure_fidelity(ws, "_m", cfg.hash.max_pixels)
        con.execute(
            f"""INSERT INTO clusters
            SELECT r.sample_id, r.cluster_id, count(*) OVER (PARTITION BY r.cluster_id), r.keeper_rank,
                   r.keeper_rank = 1, r.keeper_reason, NULL
            FROM ({ranked_sql(dc.keeper_rule, '_m', None)}) r"""
        )
        con.execute(
            """UPDATE clusters SET signals = x.sig FROM (
                 SELECT c.cluster_id, list_sort(list(DISTINCT e.signal)) AS sig
                 FROM dup_edges e JOIN clusters c ON c.sample_id = e.a GROUP BY c.cluster_id) x
               WHERE clusters.cluster_id = x.cluster_id"""
        )
        con.execute("DROP TABLE _m")
        if dc.containment and isinstance(counters.get("containment"), dict) and "found" in counters["containment"]:
            # containments whose two samples ended in one cluster (through any signal): the row is their evidence
            counters["containment"]["same_cluster"] = int(ws.scalar(
                "SELECT count(*) FROM containment t JOIN clusters x ON x.sample_id = t.container_id "
                "JOIN clusters y ON y.sample_id = t.contained_id WHERE x.cluster_id = y.cluster_id"))
        cluster_statistics(ws)
        counters["captions"] = captions.compute(ws)
    n_clusters, n_members, largest = ws.q(
        "SELECT count(DISTINCT cluster_id), count(*), coalesce(max(cluster_size), 0) FROM clusters"
    )[0]
    counters.update(
        clusters=int(n_clusters), samples_in_clusters=int(n_members), duplicates=int(n_members - n_clusters),
        largest_cluster=int(largest),
    )
    return counters


def _containment(ws: Workspace, cfg: RunConfig, counters: dict[str, Any]) -> None:
    """Containment rows (:mod:`curate.stages.dedup.containment`) from the neighbours of the current
    image key's vectors, after every other edge (pairs already joined by one are not verified);
    with ``containment_merges_clusters`` also ``dup_edges`` rows (container, contained,
    'containment', 1 − score). Skipped under ``embedding_search: ivfpq``, which never loads the vectors."""
    dc = cfg.dedup
    if dc.embedding_search == "ivfpq":
        counters["containment"] = {"skipped": "embedding_search ivfpq: vectors are not loaded"}
        return
    key = image_key(cfg)
    rows, got = containment_rows(ws, cfg, key, ELIGIBLE_SQL, eligible_params(key, dc), UNIT_TOL)
    counters["containment"] = got
    if rows:
        ws.con.executemany("INSERT INTO containment VALUES (?, ?, ?, ?, ?, ?, ?)", [r.catalog_row for r in rows])
    if dc.containment_merges_clusters:
        counters["edges"]["containment"] = _add_edges(
            ws, np.array([r.container_id for r in rows], np.int64), np.array([r.contained_id for r in rows], np.int64),
            "containment", np.array([1.0 - r.score for r in rows], np.float64))
    elif dc.verified_min_fraction is not None:  # whole-picture copies only: a crop to 70 %, not a collage tile
        whole = [r for r in rows if r.container_fraction >= dc.verified_min_fraction]
        counters["edges"]["verified"] = _add_edges(
            ws, np.array([r.container_id for r in whole], np.int64), np.array([r.contained_id for r in whole], np.int64),
            "verified", np.array([1.0 - r.score for r in whole], np.float64))


def _embedding_edges_from_parts(ws: Workspace, cfg: RunConfig, key: str, counters: dict[str, Any]) -> None:
    """``embedding_search: ivfpq``: the embedding edges of key ``key`` from its parts, which are
    read part by part and never loaded here as a whole (docs/SCALE_OUT.md, *Dedup*); the same
    edges, counters and order as the in-memory path would give with :mod:`curate.stages.dedup.ivfpq`.

    1. :func:`curate.stages.dedup.sources.survey`: each part read once — in this process, or one Ray task per
       part with ``dedup.engine: ray`` — giving its ids, the K13 check (finite, unit norm) and a
       128-bit content key per row (25 bytes per row back, no vectors), streamed into a DuckDB
       temp table.
    2. In DuckDB (spills to disk; no per-row arrays in Python but the edges): the rows searched are those
       of :data:`ELIGIBLE_SQL`, first stored copy of each id (as :func:`curate.store.embeddings.load_all`),
       unit rows (the others counted in ``embedding_vectors_excluded``); identical vectors (equal
       content key) get star edges to their group's smallest id, distance 0, and only that
       representative is searched.
    3. :class:`curate.stages.dedup.sources.PartsSource` over the parts with a keep mask per part (one bit per
       stored row: the representatives) and its id-range directory; :func:`curate.stages.dedup.ivfpq.pairs`
       trains, fills, searches and verifies, with Ray tasks under ``dedup.engine: ray``.
    """
    dc = cfg.dedup
    con = ws.con
    folder = ws.embeddings_dir(key)
    parts = list_parts(folder)
    con.execute("CREATE OR REPLACE TEMP TABLE _ev (part INTEGER, r INTEGER, sample_id BIGINT, unit BOOLEAN, "
                "k1 UBIGINT, k2 UBIGINT)")
    rows_of: dict[int, int] = {}
    for p, ids, unit, keys in survey(folder, parts, dc.engine, dc, tol=UNIT_TOL):
        rows_of[p] = len(ids)
        t = pa.table({"part": pa.array(np.full(len(ids), p, np.int32)),
                      "r": pa.array(np.arange(len(ids), dtype=np.int32)), "sample_id": pa.array(ids, pa.int64()),
                      "unit": pa.array(unit, pa.bool_()), "k1": pa.array(keys[:, 0], pa.uint64()),
                      "k2": pa.array(keys[:, 1], pa.uint64())})
        con.register("_ev_part", t)
        try:
            con.execute("INSERT INTO _ev SELECT * FROM _ev_part")
        finally:
            con.unregister("_ev_part")
    con.execute(  # eligible samples, first stored copy of each id (part order, then row order)
        f"""CREATE OR REPLACE TEMP TABLE _ev_first AS SELECT part, r, sample_id, unit, k1, k2 FROM (
              SELECT *, row_number() OVER (PARTITION BY sample_id ORDER BY part, r) AS copy FROM _ev
              WHERE sample_id IN ({ELIGIBLE_SQL})) WHERE copy = 1""", eligible_params(key, dc))
    n_eligible, n_bad = con.execute("SELECT count(*), count(*) FILTER (NOT unit) FROM _ev_first").fetchone()
    if n_eligible:
        counters["embedding_vectors_excluded"] = int(n_bad)
    con.execute("CREATE OR REPLACE TEMP TABLE _ev_rows AS SELECT part, r, sample_id, "
                "min(sample_id) OVER (PARTITION BY k1, k2) AS rep FROM _ev_first WHERE unit")
    n, n_rep = (int(x) for x in con.execute("SELECT count(*), count(*) FILTER (sample_id = rep) FROM _ev_rows")
                .fetchone())
    counters["embedding_key"] = key
    counters["embedded_searched"] = n
    search: dict[str, Any] = {"rows": n, "unique": n_rep, "identical_collapsed": n - n_rep}
    a = b = np.zeros(0, np.int64)
    cos = np.zeros(0, np.float32)
    if n == 0:
        search["method"] = "none"
    elif n_rep < 2:
        search["method"] = "exact"
    else:
        directory = con.execute("SELECT count(*) AS n, min(sample_id) AS lo, max(sample_id) AS hi FROM _ev_rows "
                                "WHERE sample_id = rep GROUP BY part ORDER BY part").fetchnumpy()
        keep: dict[int, np.ndarray] = {}  # per part: one bit per stored row, set for the representatives
        cur: int | None = None
        mask = np.zeros(0, bool)
        reader = con.sql("SELECT part, r FROM _ev_rows WHERE sample_id = rep ORDER BY part, r").to_arrow_reader(1 << 20)
        for batch in reader:  # streamed in part order: one part's bool mask at a time, then packed
            bp, br = batch.column(0).to_numpy(), batch.column(1).to_numpy()
            cuts = np.flatnonzero(np.diff(bp)) + 1
            for seg_p, seg_r in zip(np.split(bp, cuts), np.split(br, cuts)):
                if int(seg_p[0]) != cur:
                    if cur is not None:
                        keep[cur] = np.packbits(mask, bitorder="little")
                    cur = int(seg_p[0])
                    mask = np.zeros(rows_of[cur], bool)
                mask[seg_r] = True
        if cur is not None:
            keep[cur] = np.packbits(mask, bitorder="little")
        source = PartsSource(folder, keep=keep, directory=np.stack(
            [np.asarray(directory[c], np.int64) for c in ("n", "lo", "hi")], 1))
        res = ivfpq.pairs(source, float(dc.embedding_min_cosine),
                          ivfpq.Params(nlist=dc.embedding_nlist, nprobe=dc.embedding_nprobe, seed=0),
                          engine=dc.engine, sec=dc, recall_sample=dc.embedding_recall_sample,
                          spill_dir=_tmp_dir(ws))
        search.update(method="ivfpq", **{k: v for k, v in res.stats.items() if k not in ("rows", "engine")})
        a, b, cos = res.a, res.b, res.cosine
    star = con.execute("SELECT rep, sample_id FROM _ev_rows WHERE sample_id <> rep").fetchnumpy()
    i = np.concatenate([a, np.asarray(star["rep"], np.int64)])
    j = np.concatenate([b, np.asarray(star["sample_id"], np.int64)])
    c = np.concatenate([np.asarray(cos, np.float32), np.ones(len(star["rep"]), np.float32)])
    order = np.lexsort((j, i))  # the in-memory path's order: by (a, b)
    for name in ("_ev", "_ev_first", "_ev_rows"):
        con.execute(f"DROP TABLE {name}")
    # method, rows / distinct / identical collapsed, nlist, m, nprobe, margin, recall (no timings, no engine:
    # reruns and engines compare equal)
    counters["embedding_search"] = {k: v for k, v in search.items() if not k.endswith("_seconds")}
    counters["edges"]["embedding"] = _add_edges(ws, i[order], j[order], "embedding", 1.0 - c[order].astype(np.float64))
