"""export: decisions → ``out/manifest.parquet``, ``out/removals/all.csv``, ``out/summary.json``.

Decision per sample (table ``decisions``), every ingested sample exactly once:

- ``image:<status>``   its image could not be used (missing, truncated, not_an_image, …)
- ``sha256_mismatch``  the metadata's sha256 is not the sha256 of the image bytes (the bytes
  are not the image the metadata describes, e.g. a changed URL; img2dataset's ``--verify_hash``)
- ``flag:<pack>/<rule>`` a rule with action ``remove`` hit it
- ``duplicate``        it is in a duplicate cluster and is not the cluster's keeper

A sample with no reason is kept. The keeper is re-chosen here with the current flags (the
``not_flagged`` criterion), so a flagged sample never keeps a cluster alive while an
unflagged copy exists. ``review`` and ``tag`` hits are columns of the manifest, not removals.
Rows rejected at ingest are counted as ``rejected``; ``input_rows == kept + removed + rejected``
is checked before anything is written. Rejected rows, with their reason and the original row,
go to ``out/rejects.csv``.

Atomic: the outputs are written into a staging folder that replaces ``out/`` whole
(:func:`curate.store.outdir.publish`); a killed or failed export leaves the previous export as
it was, and the next command removes the staging folder. A full disk ends the command with one
:class:`curate.errors.DiskFullError` and nothing half-written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curate.config import RunConfig
from curate.errors import CurateError
from curate.progress import info
from curate.stages.dedup.keeper import SHA_MISMATCH, ranked_sql
from curate.stages.export.webdataset import write_webdataset
from curate.stages.flag.claims import RESERVED_SLUGS, assign_slugs, match_counts
from curate.stages.flag.coverage import rule_summary
from curate.stages.ingest.normalise import SIZE_MISMATCH_SQL
from curate.stages.ingest.stage import caption_and_note_counts, notes_by_code, rejected_by_reason
from curate.store.catalog import Workspace
from curate.store.csvsafe import copy_csv
from curate.store.fsio import atomic_write_bytes, copy_query
from curate.store.outdir import publish

#: what an export owns in ``out/``: these names are replaced whole, ``webdataset/`` too in every format
#: (an earlier export's shards never sit beside a newer manifest: a ``--format manifest`` export
#: removes them, and its summary.json's ``export.stale_webdataset_removed`` says so); every other entry
#: of ``out/`` (``report/``, the probe files) is carried over unchanged (:func:`curate.store.outdir.publish`)
EXPORT_NAMES: tuple[str, ...] = ("manifest.parquet", "removals", "rejects.csv", "summary.json", "webdataset")

REMOVE_FLAGS = "(SELECT sample_id FROM flags WHERE action = 'remove')"
# how a flag is named in reasons / review / tags: rule-pack hits ``pack/rule``, claims and
# opt-out lists ``claim:<slug>`` / ``opt_out:<slug>`` (curate.stages.flag.claims)
FLAG_NAME = "CASE WHEN holder IS NULL THEN pack || '/' || rule_id ELSE pack || ':' || rule_id END"


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    return None


def compute_decisions(ws: Workspace, cfg: RunConfig) -> None:
    """Rebuild the ``decisions`` table from images, flags and clusters."""
    con = ws.con
    con.execute("DELETE FROM decisions")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _final AS
        SELECT r.sample_id, r.cluster_id, r.keeper_rank,
               min(CASE WHEN r.keeper_rank = 1 THEN r.sample_id END) OVER (PARTITION BY r.cluster_id) AS keeper
        FROM ({ranked_sql(cfg.dedup.keeper_rule, 'clusters', REMOVE_FLAGS)}) r"""
    )
    con.execute(
        """INSERT INTO decisions
        WITH fr AS (
            SELECT sample_id,
                   list(DISTINCT CASE WHEN holder IS NULL THEN 'flag:' ELSE '' END || name ORDER BY
                        CASE WHEN holder IS NULL THEN 'flag:' ELSE '' END || name) FILTER (action = 'remove') AS rm,
                   list(DISTINCT name ORDER BY name) FILTER (action = 'review') AS rv,
                   list(DISTINCT name ORDER BY name) FILTER (action = 'tag') AS tg
            FROM (SELECT *, """ + FLAG_NAME + """ AS name FROM flags) GROUP BY sample_id
        ), parts AS (
            SELECT s.sample_id,
                   list_concat(
                       CASE WHEN i.status IS NOT NULL AND i.status <> 'ok' THEN ['image:' || i.status] ELSE [] END,
                       CASE WHEN """ + SHA_MISMATCH + """ THEN ['sha256_mismatch'] ELSE [] END,
                       coalesce(fr.rm, []),
                       CASE WHEN f.keeper_rank > 1 THEN ['duplicate'] ELSE [] END
                   ) AS reasons,
                   f.cluster_id, f.keeper, coalesce(fr.rv, []) AS rv, coalesce(fr.tg, []) AS tg
            FROM samples s
            LEFT JOIN images i USING (sample_id)
            LEFT JOIN fr USING (sample_id)
            LEFT JOIN _final f USING (sample_id)
        )
        SELECT sample_id, len(reasons) = 0, reasons, cluster_id, keeper, rv, tg FROM parts"""
    )
    con.execute("DROP TABLE _final")


def _copy_query(ws: Workspace, sql: str, dest: Path, fmt: str) -> None:
    if fmt == "csv":  # formula cells neutralised (curate.store.csvsafe)
        copy_csv(ws.con, sql, dest)
        return
    copy_query(ws.con, sql, dest, "FORMAT parquet, COMPRESSION zstd")


MANIFEST_SQL = """
SELECT s.sample_id, s.url, s.caption,
       coalesce(i.width, s.width) AS width, coalesce(i.height, s.height) AS height,
       o.name AS source, o.uri AS source_uri, s.source_row, s.key, s.image_ref, s.license,
       i.sha256, d.cluster_id, c.cluster_size, d.review, d.tags,
       list_concat(s.notes, """ + SIZE_MISMATCH_SQL + """) AS notes
FROM decisions d JOIN samples s USING (sample_id) JOIN sources o USING (source_id)
LEFT JOIN images i USING (sample_id) LEFT JOIN clusters c USING (sample_id)
WHERE d.keep ORDER BY s.sample_id
"""

REMOVALS_SQL = """
SELECT d.sample_id, s.url, array_to_string(d.reasons, ';') AS reasons, d.cluster_id,
       d.keeper_sample_id,
       concat_ws(' | ',
           (SELECT string_agg(f.name || ': ' || f.evidence, ' | ' ORDER BY f.name)
              FROM (SELECT *, """ + FLAG_NAME + """ AS name FROM flags) f
              WHERE f.sample_id = d.sample_id AND f.action = 'remove'),
           CASE WHEN list_contains(d.reasons, 'sha256_mismatch') THEN
               'sha256 in metadata ' || lower(trim(s.sha256_meta)) || ' but bytes hash to ' || i.sha256 END,
           CASE WHEN list_contains(d.reasons, 'duplicate') THEN
               'duplicate of ' || d.keeper_sample_id || ' in cluster of ' || c.cluster_size || ' (signals: '
               || array_to_string(c.signals, ',') || ')' END) AS evidence,
       i.status AS image_status, i.detail AS image_detail, o.name AS source, s.image_ref,
       (SELECT string_agg(DISTINCT m.slug, ';' ORDER BY m.slug) FROM claim_matches m
         WHERE m.sample_id = d.sample_id AND m.action = 'remove') AS claims,
       (SELECT bool_and(m.via_cluster) FROM claim_matches m
         WHERE m.sample_id = d.sample_id AND m.action = 'remove') AS claim_via_cluster_only,
       (SELECT string_agg(DISTINCT m.matched_reference, ';') FROM claim_matches m
         WHERE m.sample_id = d.sample_id AND m.action = 'remove') AS matched_reference
FROM decisions d JOIN samples s USING (sample_id) JOIN sources o USING (source_id)
LEFT JOIN images i USING (sample_id) LEFT JOIN clusters c USING (sample_id)
WHERE NOT d.keep ORDER BY d.sample_id
"""


REJECTS_SQL = """
SELECT o.name AS source, o.uri AS source_uri, r.source_row, r.reason, r.raw
FROM rejects r JOIN sources o USING (source_id) ORDER BY r.source_id, r.source_row
"""


CLAIMANT_SQL = """
SELECT s.url, m.sample_id, CASE m.category WHEN 'opt_out' THEN 'opt_out:' ELSE 'claim:' END || m.slug AS claim, m.signal, m.score, m.evidence, m.matched_reference,
       m.via_cluster, m.seed_sample_id AS matched_via_sample_id, m.action, NOT d.keep AS removed, d.cluster_id,
       array_to_string(d.reasons, ';') AS reasons, s.image_ref
FROM claim_matches m JOIN samples s USING (sample_id) JOIN decisions d USING (sample_id)
WHERE m.slug = ? ORDER BY m.via_cluster, m.sample_id, m.signal, m.evidence
"""


def claimant_counts(ws: Workspace, slug: str) -> dict[str, Any]:
    """One claimant's matched samples (:func:`curate.stages.flag.claims.match_counts`) and how many of them
    the decisions remove."""
    removed = ws.scalar("SELECT count(DISTINCT m.sample_id) FROM claim_matches m JOIN decisions d USING (sample_id) "
                        "WHERE m.slug = ? AND NOT d.keep", [slug])
    return {**match_counts(ws.con, slug), "removed": int(removed)}


def list_stem(slug: str, claimant: str) -> str:
    """The file name (without suffix) of a claimant's lists in ``out/removals/``: its slug, unique
    among the claimants and never ``all`` (:func:`curate.stages.flag.claims.assign_slugs`); a
    catalog flagged by an older curate may still hold a reserved slug, which gets the suffix here."""
    return assign_slugs([claimant])[claimant] if slug in RESERVED_SLUGS else slug


def claimant_summary(ws: Workspace) -> dict[str, Any]:
    """Per claimant (name → slug, category, action, contact, ``list`` (its CSV under ``out/``) and
    :func:`claimant_counts`)."""
    return {c: {"slug": sl, "category": cat, "action": a, "contact": ct, "list": f"removals/{list_stem(sl, c)}.csv",
                **claimant_counts(ws, sl)}
            for sl, c, cat, a, ct in ws.q("SELECT DISTINCT slug, claimant, category, action, contact FROM claims "
                                          "ORDER BY slug")}


def write_claimant_lists(ws: Workspace, folder: Path, claimants: dict[str, Any]) -> None:
    """Per claimant: ``<slug>.csv`` and ``<slug>.json`` in ``folder`` (:func:`list_stem`) — one row per matched
    sample × signal (url, sample_id, claim, signal, score, evidence, matched_reference,
    via_cluster, matched_via_sample_id, action, removed, cluster_id, reasons, image_ref); the
    JSON adds the claim itself and its counts (``claimants``: :func:`claimant_summary`)."""
    for claimant, c in claimants.items():
        slug = c["slug"]
        ws.con.execute(f"CREATE OR REPLACE TEMP TABLE _claimant_rows AS {CLAIMANT_SQL}", [slug])
        dest = folder / Path(c["list"]).name
        _copy_query(ws, "SELECT * FROM _claimant_rows", dest, "csv")
        cur = ws.con.execute("SELECT * FROM _claimant_rows")
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        ws.con.execute("DROP TABLE _claimant_rows")
        entries = {}
        for kind, value in ws.q("SELECT kind, value FROM claims WHERE slug = ? AND kind IS NOT NULL "
                                "ORDER BY kind, value", [slug]):
            entries.setdefault(kind, []).append(value)
        claim = {"claimant": claimant, "slug": slug, "contact": c["contact"], "category": c["category"],
                 "action": c["action"], "entries": entries}
        counts = {k: c[k] for k in ("samples", "direct", "via_cluster", "removed", "by_signal")}
        doc = {"claim": claim, "counts": counts, "matches": rows}
        atomic_write_bytes(dest.with_suffix(".json"), (json.dumps(doc, indent=2, default=str) + "\n").encode())


def summary(ws: Workspace) -> dict[str, Any]:
    """The numbers a user checks first (also written to out/summary.json).

    ``rules``: one entry per rule of the flag run's packs, zero-hit rules included, sorted by
    pack and rule id — ``{pack, rule_id, category, kind, reads, action, checked, unknown,
    unknown_action, hits}`` (samples; :mod:`curate.stages.flag.coverage`); ``unscored``:
    rule category → samples no rule of it could check (``nsfw``: no punsafe, NSFW tag or
    classifier score).

    Raises:
        CurateError: flags without coverage counts (:func:`curate.stages.flag.coverage.rule_summary`).
    """
    rules, unscored = rule_summary(ws)
    input_rows = int(ws.scalar("SELECT coalesce(sum(n_rows), 0) FROM sources"))
    kept = int(ws.scalar("SELECT count(*) FROM decisions WHERE keep"))
    removed = int(ws.scalar("SELECT count(*) FROM decisions WHERE NOT keep"))
    rejected = int(ws.scalar("SELECT count(*) FROM rejects"))
    reasons = dict(
        ws.q(
            "SELECT r, count(*) FROM (SELECT unnest(reasons) AS r FROM decisions) GROUP BY r ORDER BY r"
        )
    )
    rej = rejected_by_reason(ws)
    sizes = dict(ws.q(
        "SELECT cluster_size, count(*) FROM (SELECT DISTINCT cluster_id, cluster_size FROM clusters) "
        "GROUP BY cluster_size ORDER BY cluster_size"
    ))
    cl = ws.q("SELECT count(DISTINCT cluster_id), count(*), coalesce(max(cluster_size), 0) FROM clusters")[0]
    edges = dict(ws.q("SELECT signal, count(*) FROM dup_edges GROUP BY signal ORDER BY signal"))
    return {
        "input_rows": input_rows,
        "kept": kept,
        "removed": removed,
        "rejected": rejected,
        "reasons": reasons,
        "rejected_reasons": rej,
        "clusters": {
            "count": int(cl[0]),
            "samples_in_clusters": int(cl[1]),
            "duplicates_removed": int(reasons.get("duplicate", 0)),
            "largest": int(cl[2]),
            "size_histogram": {str(k): int(v) for k, v in sizes.items()},
            "edges_by_signal": {k: int(v) for k, v in edges.items()},
            "by_signals": {k: int(v) for k, v in ws.q(
                "SELECT array_to_string(signals, '+') AS k, count(*) FROM cluster_stats GROUP BY k ORDER BY k")},
            "top": [
                {"cluster_id": int(c), "size": int(n), "keeper_sample_id": int(k), "signals": list(sig or []),
                 "max_phash_bits": b, "min_cosine": None if m is None else round(float(m), 4),
                 "distinct_urls": int(u), "distinct_captions": int(cp), "sources": int(so)}
                for c, n, k, sig, b, m, u, cp, so in ws.q(
                    "SELECT cluster_id, cluster_size, keeper_sample_id, signals, max_phash_bits, min_cosine, "
                    "distinct_urls, distinct_captions, sources FROM cluster_stats "
                    "ORDER BY cluster_size DESC, cluster_id LIMIT 10")
            ],
        },
        "captions": caption_summary(ws),
        "claimants": claimant_summary(ws),
        "ingest": {
            **caption_and_note_counts(ws),
            "notes": notes_by_code(ws),
        },
        "images": dict(ws.q("SELECT status, count(*) FROM images GROUP BY status ORDER BY status")),
        "flags": {
            f"{p}/{r}": {"action": a, "samples": int(n)}
            for p, r, a, n in ws.q(
                "SELECT pack, rule_id, action, count(DISTINCT sample_id) FROM flags GROUP BY ALL ORDER BY pack, rule_id"
            )
        },
        "rules": rules,
        "unscored": unscored,
        "sources": [
            {"name": n, "uri": u, "format": f, "schema": s, "rows": int(r), "samples": int(k), "rejected": int(j),
             "notes": json.loads(nt) if nt else []}
            for n, u, f, s, r, k, j, nt in ws.q(
                "SELECT name, uri, format, schema_name, n_rows, n_samples, n_rejected, notes FROM sources ORDER BY source_id"
            )
        ],
    }


def caption_summary(ws: Workspace) -> dict[str, Any]:
    """Caption duplication from ``caption_stats`` (see curate.media.captions)."""
    r = ws.q(
        """SELECT count(*), count(*) FILTER (caption_count > 1), count(DISTINCT caption_group) FILTER (caption_count > 1),
                  count(DISTINCT caption_group) FILTER (caption_images > 1), count(*) FILTER (template_variants > 1),
                  count(DISTINCT template_group) FILTER (template_variants > 1), coalesce(max(caption_count), 0)
           FROM caption_stats"""
    )[0]
    keys = ["captioned", "samples_with_repeated_caption", "repeated_captions", "captions_over_several_images",
            "samples_in_template_groups", "templates_with_variants", "largest_caption_group"]
    return {k: int(v or 0) for k, v in zip(keys, r)}


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    with ws.transaction():
        compute_decisions(ws, cfg)
    s = summary(ws)
    if s["input_rows"] != s["kept"] + s["removed"] + s["rejected"]:
        raise CurateError(
            f"accounting mismatch: input_rows {s['input_rows']} != kept {s['kept']} + removed {s['removed']} "
            f"+ rejected {s['rejected']} — please report this as a bug"
        )
    counters = {k: s[k] for k in ("input_rows", "kept", "removed", "rejected")} | {"reasons": s["reasons"]}
    # every output is written into a staging folder and out/ switches to it whole (curate.store.outdir):
    # a reader sees this export or the previous one, never a mix, even if this process is killed
    wds = cfg.export.format == "webdataset"
    s["export"] = {"format": cfg.export.format, "stale_webdataset_removed": not wds and (ws.out / "webdataset").exists()}
    if s["export"]["stale_webdataset_removed"]:
        info("[export] removed out/webdataset/ of an earlier export: its shards went with an earlier manifest "
             "(export with --format webdataset to write them for this one)")
    with publish(ws.root, EXPORT_NAMES) as out:
        rem = out / "removals"
        rem.mkdir()
        _copy_query(ws, MANIFEST_SQL, out / "manifest.parquet", "parquet")
        _copy_query(ws, REMOVALS_SQL, rem / "all.csv", "csv")
        _copy_query(ws, REJECTS_SQL, out / "rejects.csv", "csv")
        write_claimant_lists(ws, rem, s["claimants"])
        atomic_write_bytes(out / "summary.json", (json.dumps(s, indent=2, sort_keys=True) + "\n").encode())
        if wds:  # shards of the kept samples (curate.stages.export.webdataset)
            counters["webdataset"] = write_webdataset(ws, cfg, out)
    return counters
