"""The report's long tables: the first rows on the page, every row in a CSV beside it.

No table is cut silently. Each table here is a dict ``{rows, shown, total, csv}``: ``rows`` (at
most a fixed number, the most important first), ``total`` (all rows the table has in the
catalog) and ``csv`` (the file under ``out/report/`` that holds all ``total`` rows, written by
:func:`write_csvs` in the same publish as ``index.html``); the page says "shown of total" and
links the file. CSVs go through :mod:`curate.store.csvsafe` (formula cells neutralised).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from curate.store.catalog import Workspace
from curate.store.csvsafe import copy_csv

#: flag rows shown per rule (all in flags.csv)
FLAG_ROWS_PER_RULE = 20
#: rows of the cluster table (one per cluster; all members in clusters.csv)
CLUSTER_ROWS = 500
#: containment rows shown with thumbnails (all in containment.csv)
CONTAINMENT_ROWS = 48
#: unusable images listed (all in unusable_images.csv)
BAD_IMAGE_ROWS = 200
#: repeated captions listed (all in repeated_captions.csv)
CAPTION_GROUPS = 20
#: sources listed (all in summary.json)
SOURCE_ROWS = 100

_SEVERITY = "CASE action WHEN 'remove' THEN 0 WHEN 'review' THEN 1 ELSE 2 END"

#: every flag row: removals first, then the rules with most hits
FLAGS_SQL = f"""
SELECT f.pack || '/' || f.rule_id AS rule, f.action, f.category, f.sample_id, f.score, f.evidence,
       d.keep AS kept, array_to_string(d.reasons, ';') AS reasons, s.url, s.caption, s.image_ref
FROM (SELECT *, {_SEVERITY} AS severity, count(*) OVER (PARTITION BY pack, rule_id) AS n,
             row_number() OVER (PARTITION BY pack, rule_id ORDER BY sample_id) AS k FROM flags) f
JOIN samples s USING (sample_id) JOIN decisions d USING (sample_id)
{{where}}
ORDER BY f.severity, f.n DESC, f.pack, f.rule_id, f.sample_id
"""

#: every member of every duplicate cluster, largest clusters first, the keeper first in each
CLUSTER_MEMBERS_SQL = """
SELECT c.cluster_id, c.cluster_size, array_to_string(cs.signals, ';') AS cluster_signals, c.sample_id,
       d.keeper_sample_id, c.sample_id = d.keeper_sample_id AS is_keeper, c.keeper_rank, c.keeper_reason,
       d.keep AS kept, array_to_string(d.reasons, ';') AS reasons, s.url, s.caption, s.image_ref
FROM clusters c JOIN decisions d USING (sample_id) JOIN samples s USING (sample_id)
LEFT JOIN cluster_stats cs ON cs.cluster_id = c.cluster_id
ORDER BY c.cluster_size DESC, c.cluster_id, (c.sample_id = d.keeper_sample_id) DESC, c.keeper_rank, c.sample_id
"""

CONTAINMENT_SQL = """
SELECT container_id, contained_id, score, inliers, inlier_ratio, coverage,
       json_extract(region, '$.bbox')::VARCHAR AS region_bbox,
       CAST(json_extract(region, '$.container_fraction') AS DOUBLE) AS container_fraction,
       coalesce(CAST(json_extract(region, '$.mirrored') AS BOOLEAN), false) AS mirrored
FROM containment ORDER BY score DESC, container_id, contained_id
"""

BAD_IMAGES_SQL = """
SELECT i.sample_id, i.status, i.detail, s.url, s.image_ref
FROM images i JOIN samples s USING (sample_id) WHERE i.status <> 'ok'
ORDER BY i.status, i.sample_id
"""

CAPTION_GROUPS_SQL = """
SELECT c.caption_group, any_value(c.caption_count) AS samples, any_value(c.caption_images) AS images,
       any_value(c.template_variants) AS template_variants,
       (SELECT s.caption FROM samples s WHERE s.sample_id = c.caption_group) AS caption
FROM caption_stats c WHERE c.caption_count > 1
GROUP BY c.caption_group ORDER BY samples DESC, images DESC, c.caption_group
"""

#: CSV file (beside index.html) → the query of all its rows
CSVS: dict[str, str] = {
    "flags.csv": FLAGS_SQL.format(where=""),
    "clusters.csv": CLUSTER_MEMBERS_SQL,
    "containment.csv": CONTAINMENT_SQL,
    "unusable_images.csv": BAD_IMAGES_SQL,
    "repeated_captions.csv": CAPTION_GROUPS_SQL,
}


def write_csvs(ws: Workspace, folder: Path) -> list[str]:
    """Write every file of :data:`CSVS` into ``folder`` (formula cells neutralised); returns their names."""
    for name, sql in CSVS.items():
        copy_csv(ws.con, sql, folder / name)
    return list(CSVS)


def _table(rows: list[dict], total: int, csv: str | None) -> dict[str, Any]:
    return {"rows": rows, "shown": len(rows), "total": int(total), "csv": csv}


def _dicts(ws: Workspace, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cur = ws.con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


Thumb = Callable[[str | None], tuple[str | None, str]]


def flagged(ws: Workspace, thumb: Thumb) -> list[dict[str, Any]]:
    """Per rule that hit (removals first, then most hits): ``{rule, action, table}``, the table's
    rows the rule's first :data:`FLAG_ROWS_PER_RULE` samples (by sample_id) with a ``thumb``."""
    rows = _dicts(ws, FLAGS_SQL.format(where="WHERE f.k <= ?"), [FLAG_ROWS_PER_RULE])
    totals = dict(ws.q("SELECT pack || '/' || rule_id, count(*) FROM flags GROUP BY ALL"))
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        r["thumb"], r["status"] = thumb(r["image_ref"])
        g = out.setdefault(r["rule"], {"rule": r["rule"], "action": r["action"], "rows": []})
        g["rows"].append(r)
    return [{"rule": k, "action": g["action"], "table": _table(g["rows"], totals[k], "flags.csv")}
            for k, g in out.items()]


def cluster_table(ws: Workspace) -> dict[str, Any]:
    """One row per duplicate cluster, largest first: size, signals, the keeper and whether it is
    kept, how many members are kept and removed, and the cluster's edge statistics."""
    rows = _dicts(ws, """
        SELECT c.cluster_id, any_value(c.cluster_size) AS size, any_value(cs.signals) AS signals,
               any_value(d.keeper_sample_id) AS keeper, count(*) FILTER (d.keep) AS kept,
               count(*) FILTER (NOT d.keep) AS removed,
               coalesce(bool_or(d.keep AND d.sample_id = d.keeper_sample_id), false) AS keeper_kept,
               any_value(cs.max_phash_bits) AS max_phash_bits, any_value(cs.min_cosine) AS min_cosine,
               any_value(cs.distinct_urls) AS distinct_urls, any_value(cs.distinct_captions) AS distinct_captions,
               any_value(cs.sources) AS sources
        FROM clusters c JOIN decisions d USING (sample_id) LEFT JOIN cluster_stats cs ON cs.cluster_id = c.cluster_id
        GROUP BY c.cluster_id ORDER BY size DESC, c.cluster_id LIMIT ?""", [CLUSTER_ROWS])
    total = ws.scalar("SELECT count(DISTINCT cluster_id) FROM clusters")
    return _table(rows, total, "clusters.csv")


def containment(ws: Workspace, thumb_regions: Callable[[str | None, list], tuple[str | None, str]]) -> dict[str, Any]:
    """The highest-scoring :data:`CONTAINMENT_ROWS` containment rows: A (the container, with the
    region outlined on its thumbnail) and B (the contained copy)."""
    rows = []
    for a, b, inliers, coverage, region in ws.q(
            "SELECT container_id, contained_id, inliers, coverage, region FROM containment "
            "ORDER BY score DESC, container_id, contained_id LIMIT ?", [CONTAINMENT_ROWS]):
        reg = json.loads(region)
        refs = dict(ws.q("SELECT sample_id, image_ref FROM samples WHERE sample_id IN (?, ?)", [a, b]))
        poly = reg.get("polygon") or None
        rows.append(dict(a=a, b=b, inliers=inliers, coverage=coverage, bbox=reg["bbox"],
                         fraction=reg.get("container_fraction", 0.0), mirrored=bool(reg.get("mirrored")),
                         a_thumb=thumb_regions(refs.get(a), [poly] if poly else [])[0],
                         b_thumb=thumb_regions(refs.get(b), [])[0]))
    return _table(rows, ws.scalar("SELECT count(*) FROM containment"), "containment.csv")


def bad_images(ws: Workspace) -> dict[str, Any]:
    """The first :data:`BAD_IMAGE_ROWS` samples whose image could not be used, by status."""
    rows = _dicts(ws, BAD_IMAGES_SQL + " LIMIT ?", [BAD_IMAGE_ROWS])
    return _table(rows, ws.scalar("SELECT count(*) FROM images WHERE status <> 'ok'"), "unusable_images.csv")


def caption_groups(ws: Workspace) -> dict[str, Any]:
    """The :data:`CAPTION_GROUPS` largest groups of samples sharing a normalised caption
    (:mod:`curate.media.captions`): samples, distinct images, template variants, the caption."""
    rows = _dicts(ws, CAPTION_GROUPS_SQL + " LIMIT ?", [CAPTION_GROUPS])
    total = ws.scalar("SELECT count(DISTINCT caption_group) FROM caption_stats WHERE caption_count > 1")
    return _table(rows, total, "repeated_captions.csv")


def sources(summary: dict[str, Any]) -> dict[str, Any]:
    """The first :data:`SOURCE_ROWS` sources of ``summary`` (all of them are in summary.json)."""
    return _table(summary["sources"][:SOURCE_ROWS], len(summary["sources"]), "../summary.json")
