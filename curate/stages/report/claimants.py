"""The report's per-claimant sections: what a rights-holder (or an opt-out list's owner) checks.

For each claimant (:mod:`curate.stages.flag.claims`): every sample matched directly, as a
thumbnail beside the reference image it matched (for image signals), with each signal, its
score (in the signal's own unit: pHash bits, cosine, inliers, 1.0 for domain / URL / keyword /
sha256) and evidence; a containment match has its region outlined in red on the image that
contains the copy (the sample or the reference). The copies found through duplicate clusters
(signal ``cluster``) are grouped under the directly matched sample they copy
(``seed_sample_id``). At most :data:`CLAIM_SAMPLES` direct samples and :data:`COPIES_PER_SAMPLE`
copies each are shown, with "shown of total" and the claimant's full list
(``out/removals/<slug>.csv``) linked.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from curate.stages.report.thumbs import bbox_polygon
from curate.store.catalog import Workspace

#: directly matched samples shown per claimant (all in out/removals/<slug>.csv)
CLAIM_SAMPLES = 60
#: via-cluster copies shown under one matched sample
COPIES_PER_SAMPLE = 12

#: a containment match's evidence: ``region [x0, y0, x1, y1] in the sample|reference``
#: (:func:`curate.stages.flag.references.containment_matches`)
REGION_RE = re.compile(r"region (\[[-0-9., e]+\]) in the (sample|reference)")

ThumbRegions = Callable[[str | None, list], tuple[str | None, str]]


def regions_of(evidence: str) -> tuple[str | None, list]:
    """(``'sample'`` or ``'reference'`` or None, [polygon]) of a containment evidence text:
    which image holds the copy and the region's corners in that image's pixels."""
    m = REGION_RE.search(evidence or "")
    if not m:
        return None, []
    return m.group(2), [bbox_polygon(json.loads(m.group(1)))]


#: the shown direct matches of one claimant: most distinct signals first (several agreeing), then sample id
_SHOWN_SQL = """SELECT sample_id FROM claim_matches WHERE slug = ? AND NOT via_cluster GROUP BY sample_id
                ORDER BY count(DISTINCT signal) DESC, sample_id LIMIT ?"""


def _rows(ws: Workspace, sql: str, params: list) -> list[dict[str, Any]]:
    cur = ws.con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def claimant_section(ws: Workspace, name: str, c: dict[str, Any], thumb: ThumbRegions,
                     mini: Callable[[str | None], tuple[str | None, str]]) -> dict[str, Any]:
    """One claimant's section: ``name``, its summary ``c`` (:func:`curate.stages.export.stage.claimant_summary`),
    ``csv`` (its list ``c['list']`` relative to ``out/report/``), ``samples`` (the first
    :data:`CLAIM_SAMPLES` direct matches: thumbnail, references, signals, decision, ``copies``),
    ``shown`` / ``total`` direct samples. Reads only the shown samples' rows (a claim on a
    domain may match millions)."""
    direct: dict[int, dict[str, Any]] = {}
    for r in _rows(ws, f"""SELECT m.sample_id, m.signal, m.score, m.evidence, m.matched_reference, d.keep, d.reasons,
                                  s.url, s.caption, s.image_ref
                           FROM claim_matches m JOIN samples s USING (sample_id) JOIN decisions d USING (sample_id)
                           WHERE m.slug = ? AND NOT m.via_cluster AND m.sample_id IN ({_SHOWN_SQL})
                           ORDER BY m.signal, m.evidence""", [c["slug"], c["slug"], CLAIM_SAMPLES]):
        e = direct.setdefault(r["sample_id"], {"sample_id": r["sample_id"], "kept": r["keep"], "reasons": r["reasons"],
                                                "url": r["url"], "caption": r["caption"], "image_ref": r["image_ref"],
                                                "signals": [], "references": {}, "regions": []})
        e["signals"].append({"signal": r["signal"], "score": r["score"], "evidence": r["evidence"]})
        where, polys = regions_of(r["evidence"]) if r["signal"] == "containment" else (None, [])
        if where == "sample":
            e["regions"] += polys
        ref = r["matched_reference"]
        if ref:
            e["references"].setdefault(ref, [])
            if where == "reference":
                e["references"][ref] += polys
    shown = sorted(direct.values(), key=lambda e: (-len({s["signal"] for s in e["signals"]}), e["sample_id"]))
    copies: dict[int, list[dict[str, Any]]] = {}
    totals: dict[int, int] = {}
    for r in _rows(ws, f"""SELECT * FROM (
                               SELECT m.seed_sample_id, m.sample_id, m.evidence, d.keep, d.reasons, s.image_ref,
                                      row_number() OVER (PARTITION BY m.seed_sample_id ORDER BY m.sample_id) AS k,
                                      count(*) OVER (PARTITION BY m.seed_sample_id) AS n
                               FROM claim_matches m JOIN samples s USING (sample_id) JOIN decisions d USING (sample_id)
                               WHERE m.slug = ? AND m.via_cluster AND m.seed_sample_id IN ({_SHOWN_SQL}))
                           WHERE k <= ? ORDER BY seed_sample_id, k""",
                   [c["slug"], c["slug"], CLAIM_SAMPLES, COPIES_PER_SAMPLE]):
        copies.setdefault(r["seed_sample_id"], []).append(r)
        totals[r["seed_sample_id"]] = int(r["n"])
    for e in shown:
        e["thumb"], e["status"] = thumb(e["image_ref"], e["regions"])
        e["refs"] = [{"path": p, "name": Path(p).name, "thumb": thumb(p, polys)[0]} for p, polys in e["references"].items()]
        e["copies_total"] = totals.get(e["sample_id"], 0)
        e["copies"] = []
        for r in copies.get(e["sample_id"], []):
            t, st = mini(r["image_ref"])
            e["copies"].append({"sample_id": r["sample_id"], "kept": r["keep"], "reasons": r["reasons"],
                                "evidence": r["evidence"], "edge": r["evidence"].rsplit(": ", 1)[-1], "thumb": t,
                                "status": st})
    total = ws.scalar("SELECT count(DISTINCT sample_id) FROM claim_matches WHERE slug = ? AND NOT via_cluster", [c["slug"]])
    return {"name": name, **c, "csv": "../" + c["list"], "samples": shown, "shown": len(shown), "total": int(total)}


def claimant_sections(ws: Workspace, claimants: dict[str, Any], thumb: ThumbRegions,
                      mini: Callable[[str | None], tuple[str | None, str]]) -> list[dict[str, Any]]:
    """:func:`claimant_section` of every claimant of ``claimants`` (summary.json's ``claimants``),
    the claimants with most matched samples first."""
    order = sorted(claimants.items(), key=lambda kv: (-kv[1]["samples"], kv[0]))
    return [claimant_section(ws, n, c, thumb, mini) for n, c in order]
