"""report: a self-contained HTML report → ``out/report/index.html``.

Thumbnails are inline JPEG data URIs made by the shared loader; a Content-Security-Policy
forbids every network fetch; all captions, URLs and evidence are HTML-escaped by Jinja2's
autoescaping. The page holds no timestamps, so the same catalog gives the same bytes.
``report/`` (index.html + report.json) replaces the previous one whole
(:func:`curate.store.outdir.publish`); the rest of ``out/`` is carried over unchanged.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from curate.config import RunConfig
from curate.media.images import open_image, read_ref
from curate.probes.report import context as probe_context
from curate.stages.export.stage import summary
from curate.store.catalog import Workspace
from curate.store.fsio import atomic_write_bytes
from curate.store.outdir import publish


def inputs(ws: Workspace, cfg: RunConfig) -> Any:
    # probe commands run outside the stage chain: a newer probe run makes the report out of date
    return ws.q("SELECT stage, max(run_id) FROM runs WHERE stage LIKE 'probe-%' AND status = 'ok' GROUP BY stage ORDER BY stage")


def thumbnail(image_ref: str | None, px: int, max_pixels: int) -> tuple[str | None, str]:
    """(base64 JPEG thumbnail or None, image status) for an image reference."""
    from PIL import Image

    if not image_ref:
        return None, "no image"
    d, im = open_image(read_ref(image_ref), max_pixels=max_pixels, draft=px)
    if im is None:
        return None, d.status
    im.thumbnail((px, px), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii"), "ok"


def build_context(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    rc = cfg.report
    s = summary(ws)
    clusters = []
    top = ws.q(
        "SELECT cluster_id, any_value(cluster_size), any_value(signals) FROM clusters GROUP BY cluster_id "
        "ORDER BY any_value(cluster_size) DESC, cluster_id LIMIT ?", [rc.max_clusters],
    )
    for cid, size, signals in top:
        rows = ws.q(
            """SELECT c.sample_id, s.caption, s.url, s.key, s.image_ref, d.keeper_sample_id = c.sample_id,
                      c.keeper_reason, d.reasons
               FROM clusters c JOIN samples s USING (sample_id) JOIN decisions d USING (sample_id)
               WHERE c.cluster_id = ? ORDER BY (d.keeper_sample_id = c.sample_id) DESC, c.keeper_rank LIMIT ?""",
            [cid, rc.thumbs_per_cluster],
        )
        members = []
        for sid, cap, url, key, ref, is_keeper, reason, reasons in rows:
            thumb, status = thumbnail(ref, rc.thumb_px, cfg.hash.max_pixels)
            members.append(dict(sample_id=sid, caption=cap, url=url, key=key, thumb=thumb, status=status,
                                keeper=bool(is_keeper), keeper_reason=reason, reasons=reasons))
        clusters.append(dict(cluster_id=cid, size=size, signals=signals or [], members=members,
                             more=max(0, size - len(members))))
    flagged = [
        dict(sample_id=a, rule=f"{b}/{c}", action=d, evidence=e, caption=f, url=g)
        for a, b, c, d, e, f, g in ws.q(
            "SELECT f.sample_id, f.pack, f.rule_id, f.action, f.evidence, s.caption, s.url FROM flags f "
            "JOIN samples s USING (sample_id) ORDER BY f.pack, f.rule_id, f.sample_id LIMIT 200"
        )
    ]
    bad = [
        dict(sample_id=a, status=b, detail=c, ref=d)
        for a, b, c, d in ws.q(
            "SELECT i.sample_id, i.status, i.detail, s.image_ref FROM images i JOIN samples s USING (sample_id) "
            "WHERE i.status <> 'ok' ORDER BY i.sample_id LIMIT 500"
        )
    ]
    containment = []
    for a, b, inliers, coverage, region in ws.q(
            "SELECT container_id, contained_id, inliers, coverage, region FROM containment "
            "ORDER BY score DESC, container_id, contained_id LIMIT ?", [rc.max_clusters]):
        reg = json.loads(region)
        refs = dict(ws.q("SELECT sample_id, image_ref FROM samples WHERE sample_id IN (?, ?)", [a, b]))
        containment.append(dict(a=a, b=b, inliers=inliers, coverage=coverage, bbox=reg["bbox"],
                                fraction=reg.get("container_fraction", 0.0), mirrored=bool(reg.get("mirrored")),
                                a_thumb=thumbnail(refs.get(a), rc.thumb_px, cfg.hash.max_pixels)[0],
                                b_thumb=thumbnail(refs.get(b), rc.thumb_px, cfg.hash.max_pixels)[0]))
    probes, probes_data = probe_context(ws, cfg, thumbnail)  # memorization probes (curate.probes), if any ran
    return dict(s=s, clusters=clusters, flagged=flagged, bad_images=bad, workspace=str(ws.root), thumb_px=rc.thumb_px,
                probes=probes, probes_data=probes_data, containment=containment,
                containment_total=int(ws.scalar("SELECT count(*) FROM containment")),
                verified_min_fraction=cfg.dedup.verified_min_fraction)


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
    data = clip_all({**ctx["s"], "probes": ctx["probes_data"],
                     "containment": [{k: v for k, v in r.items() if not k.endswith("_thumb")} for r in ctx["containment"]]})
    # index.html and report.json replace the old report/ together (curate.store.outdir), never one alone
    with publish(ws.root, ("report",)) as out:
        d = out / "report"
        d.mkdir()
        atomic_write_bytes(d / "index.html", html)
        atomic_write_bytes(d / "report.json", (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())
    return {"clusters_shown": len(ctx["clusters"]), "bytes": len(html)}
