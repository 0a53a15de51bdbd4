"""report: a self-contained HTML audit report → ``out/report/index.html``.

The page's sections are :data:`SECTIONS` (each a ``<section id>`` with an ``<h2>``, listed in
the table of contents). Thumbnails are inline JPEG data URIs made by the shared loader
(:mod:`curate.stages.report.thumbs`), figures inline PNGs (:mod:`curate.stages.report.plots`);
a Content-Security-Policy forbids every network fetch; all captions, URLs and evidence are
HTML-escaped by Jinja2's autoescaping. A long table shows its first rows and "N of M", and a CSV
beside the page holds every row (:mod:`curate.stages.report.tables`); each claimant has its own
section (:mod:`curate.stages.report.claimants`). The page holds no timestamps, so the same
catalog gives the same bytes. ``report/`` (index.html, report.json, the CSVs) replaces the
previous one whole (:func:`curate.store.outdir.publish`); the rest of ``out/`` is carried over
unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from curate.config import RunConfig
from curate.probes.report import context as probe_context
from curate.stages.export.stage import summary
from curate.stages.report import plots, tables
from curate.stages.report.claimants import claimant_sections
from curate.stages.report.thumbs import thumbnail
from curate.store.catalog import Workspace
from curate.store.fsio import atomic_write_bytes
from curate.store.outdir import publish


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    # probe commands run outside the stage chain: a newer probe run makes the report out of date
    return ws.q("SELECT stage, max(run_id) FROM runs WHERE stage LIKE 'probe-%' AND status = 'ok' GROUP BY stage ORDER BY stage")


#: side of the small thumbnails (flag rows, via-cluster copies), pixels
MINI_PX = 64

#: the report's sections in page order: (id of its ``<section>``, title) — the table of contents
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"), ("reasons", "Removal reasons"), ("sources", "Sources"), ("plots", "Overview plots"),
    ("captions", "Captions"), ("clusters", "Duplicate clusters"), ("containment", "Partial copies (containment)"),
    ("claims", "Claims and opt-out lists"), ("rules", "Rules: checked, unknown, hits"),
    ("flagged", "Flagged samples"), ("probes", "Memorization probes"), ("images", "Images that could not be used"),
)


def cluster_grids(ws: Workspace, cfg: RunConfig, thumb: Callable[[str | None], tuple[str | None, str]]
                  ) -> list[dict[str, Any]]:
    """The ``report.max_clusters`` largest duplicate clusters, each with its first
    ``report.thumbs_per_cluster`` members as cards: the keeper first (``keeper``; with
    ``keeper_removed`` when the keeper itself is removed for its own reasons, so the cluster
    keeps no copy), then by keeper rank; ``shown`` of ``size`` members."""
    rc = cfg.report
    out = []
    for cid, size, signals in ws.q(
            "SELECT cluster_id, any_value(cluster_size), any_value(signals) FROM clusters GROUP BY cluster_id "
            "ORDER BY any_value(cluster_size) DESC, cluster_id LIMIT ?", [rc.max_clusters]):
        rows = ws.q(
            """SELECT c.sample_id, s.caption, s.url, s.key, s.image_ref, d.keeper_sample_id = c.sample_id,
                      c.keeper_reason, d.reasons, d.keep
               FROM clusters c JOIN samples s USING (sample_id) JOIN decisions d USING (sample_id)
               WHERE c.cluster_id = ? ORDER BY (d.keeper_sample_id = c.sample_id) DESC, c.keeper_rank, c.sample_id
               LIMIT ?""", [cid, rc.thumbs_per_cluster])
        members = []
        for sid, cap, url, key, ref, is_keeper, reason, reasons, keep in rows:
            t, status = thumb(ref)
            members.append(dict(sample_id=sid, caption=cap, url=url, key=key, thumb=t, status=status,
                                keeper=bool(is_keeper), keeper_removed=bool(is_keeper) and not keep, kept=bool(keep),
                                keeper_reason=reason, reasons=reasons))
        kept = int(ws.scalar("SELECT count(*) FROM clusters c JOIN decisions d USING (sample_id) "
                             "WHERE c.cluster_id = ? AND d.keep", [cid]))
        out.append(dict(cluster_id=cid, size=size, signals=signals or [], members=members, shown=len(members),
                        kept=kept, more=max(0, size - len(members))))
    return out


def build_context(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    """Everything the template shows (thumbnails and figures as base64)."""
    rc = cfg.report
    s = summary(ws)
    px, maxpix = rc.thumb_px, cfg.hash.max_pixels

    def thumb(ref: str | None, regions: list | tuple = ()) -> tuple[str | None, str]:
        return thumbnail(ref, px, maxpix, regions)

    def mini(ref: str | None) -> tuple[str | None, str]:
        return thumbnail(ref, MINI_PX, maxpix)

    clusters = cluster_grids(ws, cfg, thumb)
    probes, probes_data = probe_context(ws, cfg, thumbnail)  # memorization probes (curate.probes), if any ran
    return dict(
        s=s, sections=SECTIONS, workspace=str(ws.root), thumb_px=px, mini_px=MINI_PX,
        reasons=sorted(s["reasons"].items(), key=lambda kv: (-kv[1], kv[0])),
        rejected_reasons=sorted(s["rejected_reasons"].items(), key=lambda kv: (-kv[1], kv[0])),
        sources=tables.sources(s), plots=plots.figures(ws, s, cfg.dedup.phash_max_distance,
                                                       cfg.dedup.embedding_min_cosine),
        captions=tables.caption_groups(ws), clusters=clusters,
        clusters_total=int(s["clusters"]["count"]), cluster_table=tables.cluster_table(ws),
        containment=tables.containment(ws, thumb), verified_min_fraction=cfg.dedup.verified_min_fraction,
        claimants=claimant_sections(ws, s["claimants"], thumb, mini), flagged=tables.flagged(ws, mini),
        bad_images=tables.bad_images(ws), probes=probes, probes_data=probes_data,
    )


def shown_counts(ctx: dict[str, Any]) -> dict[str, Any]:
    """Per table of the page: ``{shown, total, csv}`` (what the page says as "shown of total")."""
    def n(t: dict[str, Any]) -> dict[str, Any]:
        return {k: t[k] for k in ("shown", "total", "csv")}

    out = {"sources": n(ctx["sources"]), "repeated_captions": n(ctx["captions"]),
           "cluster_table": n(ctx["cluster_table"]), "containment": n(ctx["containment"]),
           "unusable_images": n(ctx["bad_images"]),
           "cluster_grids": {"shown": len(ctx["clusters"]), "total": ctx["clusters_total"], "csv": "clusters.csv"}}
    out.update({f"flags:{g['rule']}": n(g["table"]) for g in ctx["flagged"]})
    out.update({f"claimant:{c['slug']}": {"shown": c["shown"], "total": c["total"], "csv": c["csv"]}
                for c in ctx["claimants"]})
    return out


#: characters of one caption, prompt, URL or evidence text shown in the report (the catalog keeps them whole)
MAX_TEXT_CHARS = 500


def clip(text: Any, n: int = MAX_TEXT_CHARS) -> str:
    """``text`` as shown in the report: at most ``n`` characters, then ``… (+M chars)`` saying how
    many are left out (None → ''). A 1 MB caption stays a card, not 1 MB of HTML."""
    if text is None:
        return ""
    text = str(text)
    return text if len(text) <= n else f"{text[:n]}… (+{len(text) - n:,} chars)"


def clip_all(obj: Any) -> Any:
    """``obj`` (JSON-like) with every string :func:`clip`-ped: what ``report.json`` holds."""
    if isinstance(obj, str):
        return clip(obj)
    if isinstance(obj, dict):
        return {k: clip_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clip_all(v) for v in obj]
    return obj


def render(ctx: dict[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["clip"] = clip
    return env.get_template("report.html.j2").render(**ctx)


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    ctx = build_context(ws, cfg)
    html = render(ctx).encode("utf-8")
    claimants = [{k: v for k, v in c.items() if k != "samples"}
                 | {"samples": [{k: v for k, v in e.items() if k in ("sample_id", "kept", "reasons", "signals",
                                                                      "references", "copies_total")}
                                for e in c["samples"]]} for c in ctx["claimants"]]
    data = clip_all({**ctx["s"], "probes": ctx["probes_data"], "shown": shown_counts(ctx), "claimant_matches": claimants,
                     "containment": [{k: v for k, v in r.items() if not k.endswith("_thumb")}
                                     for r in ctx["containment"]["rows"]]})
    # index.html, report.json and the tables' CSVs replace the old report/ together (curate.store.outdir)
    with publish(ws.root, ("report",)) as out:
        d = out / "report"
        d.mkdir()
        csvs = tables.write_csvs(ws, d)
        atomic_write_bytes(d / "index.html", html)
        atomic_write_bytes(d / "report.json", (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())
    return {"clusters_shown": len(ctx["clusters"]), "bytes": len(html), "csv_files": len(csvs)}
