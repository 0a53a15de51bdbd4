"""The report's probe section: data for ``report.html.j2`` and for ``report.json``.

:func:`context` returns ``(html, data)``: ``html`` adds thumbnails and figures (base64) for the
page; ``data`` is the same content without images, for ``report.json``. Captions, prompts and
paths are plain strings here; the template escapes them (Jinja2 autoescape). The page shows the
first :data:`MAX_PROBES_SHOWN` selected probes and :data:`MAX_GRID` generations per set and says
"N of M"; ``report.json`` holds them all.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from curate.config import RunConfig
from curate.probes import plots
from curate.probes.stats import SOMEPALLI_PRESET, describe_transform
from curate.store.catalog import Workspace

MAX_PROBES_SHOWN = 30  # selected probes listed
MAX_GRID = 48  # generation | nearest training image rows per set


def _reasons_short(reasons_json: str | None) -> list[dict]:
    rs = json.loads(reasons_json) if reasons_json else []
    return [{"reason": r["reason"], "value": r["value"], "weight": r["weight"], "contribution": round(r["contribution"], 3)}
            for r in rs]


def context(ws: Workspace, cfg: RunConfig, thumbnail: Callable[[str | None, int, int], tuple[str | None, str]]
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(page context, report.json data) of the probe section; both empty dicts' ``present`` False
    when no probe command has run."""
    px, maxpix = cfg.report.thumb_px, cfg.hash.max_pixels
    n_probes = int(ws.scalar("SELECT count(*) FROM probes") or 0)
    n_gens = int(ws.scalar("SELECT count(*) FROM generations") or 0)
    if not n_probes and not n_gens:
        return {"present": False}, {"present": False}
    worst = {int(p): v for p, v in ws.q(
        """SELECT probe_id, CASE min(CASE verdict WHEN 'replicated' THEN 0 WHEN 'close' THEN 1 ELSE 2 END)
                  WHEN 0 THEN 'replicated' WHEN 1 THEN 'close' ELSE 'novel' END FROM probe_verdicts GROUP BY probe_id""")}
    sel = ws.q("""SELECT p.probe_id, p.rank, p.prompt, p.risk, p.reasons, p.cluster_size, p.caption_count, p.pair_count,
                         p.template_count, p.specificity, p.n_samples, len(p.sample_ids), p.representative_sample_id,
                         s.image_ref
                  FROM probes p LEFT JOIN samples s ON s.sample_id = p.representative_sample_id
                  WHERE p.origin = 'select' ORDER BY p.rank""")
    selected, selected_data = [], []
    for i, (pid, rank, prompt, risk, reasons, cs, cc, pc_, tc, spec, ns, nref, rep, ref) in enumerate(sel):
        d = {"probe_id": int(pid), "rank": rank, "prompt": prompt, "risk": round(float(risk), 4),
             "reasons": _reasons_short(reasons), "cluster_size": cs, "caption_count": cc, "pair_count": pc_,
             "template_count": tc, "specificity": round(float(spec), 3), "n_samples": ns, "references": nref,
             "representative_sample_id": rep, "verdict": worst.get(int(pid))}
        selected_data.append(d)  # report.json: every selected probe; the page: the first MAX_PROBES_SHOWN
        if i < MAX_PROBES_SHOWN:
            thumb, status = thumbnail(ref, px, maxpix)
            selected.append(d | {"thumb": thumb, "status": status})
    risk_plot = None
    if sel:
        risk_plot = plots.risk_vs_cluster([r[5] for r in sel], [r[3] for r in sel], [r[6] for r in sel],
                                          [worst.get(int(r[0])) for r in sel])
    sets_html, sets_data = [], []
    for gen_set, key, desc, stats in ws.q("SELECT gen_set, model, descriptor, stats FROM probe_stats ORDER BY gen_set"):
        desc, stats = json.loads(desc), json.loads(stats)
        th = stats["thresholds"]
        numbers = {k: stats.get(k) for k in ("n", "fraction_above", "threshold", "mean", "p75", "p90", "p95",
                                             "fraction_replicated", "fraction_extracted_l2", "fraction_l2_unconfirmed",
                                             "low_information", "failed", "bin_edges")}
        if "transform" not in desc and isinstance(desc.get("preprocess"), dict):  # scored by an older curate
            desc = desc | {"transform": describe_transform(desc.get("preset", "?"), desc["preprocess"]),
                           "somepalli_transform": desc.get("preset") == SOMEPALLI_PRESET}
        bg = stats.get("background") or {}
        lines = {"replicated": th["replicated_similarity"], "close": th["close_similarity"],
                 "dataset similarity (p95)": stats.get("p95")}
        if desc.get("kind") == "sscd":
            lines["Somepalli 0.5"] = 0.5
        hist_plot = plots.similarity_histogram(stats["hist"], bg.get("hist"), lines,
                                               f"{gen_set}: top-1 similarity, {desc['name']} ({desc['preset']})")
        prompts = [{"probe_id": int(p), "prompt": pr, "verdict": v, "n_generations": n, "n_replicated": nr,
                    "n_close": nc, "max_similarity": ms, "min_tiled_l2": ml, "noise_magnitude": nm,
                    # Wen et al.'s one-step, one-generation detector; Carlini et al.'s consistency
                    "noise_first_step": json.loads(ev).get("noise_first_step"),
                    "noise_first_step_seed": json.loads(ev).get("noise_first_step_seed"),
                    "largest_clique": json.loads(ev).get("largest_clique"), "clique_min": json.loads(ev).get("clique_min"),
                    "evidence": json.loads(ev)}
                   for p, pr, v, n, nr, nc, ms, ml, nm, ev in ws.q(
                       """SELECT v.probe_id, coalesce(p.prompt, (SELECT any_value(g.prompt) FROM generations g
                                 WHERE g.probe_id = v.probe_id)), v.verdict, v.n_generations, v.n_replicated, v.n_close,
                                 v.max_similarity, v.min_tiled_l2, v.noise_magnitude, v.evidence
                          FROM probe_verdicts v LEFT JOIN probes p USING (probe_id) WHERE v.gen_set = ?
                          ORDER BY CASE v.verdict WHEN 'replicated' THEN 0 WHEN 'close' THEN 1 ELSE 2 END,
                                   v.max_similarity DESC, v.probe_id""", [gen_set])]
        first = [p["noise_first_step"] for p in prompts if p["noise_first_step"] is not None]
        wen = {"prompts_measured": len(first), "definition": (
            "Wen et al. ICLR 2024: d(p) = mean over steps of ||eps(x_t, e_prompt) - eps(x_t, e_empty)||_2 over the whole "
            "latent, averaged over the prompt's generations; first step = the same norm at the first denoising step of "
            "one generation (the lowest seed's), the paper's cheap detector")}
        noise_plot = None
        noisy = [p for p in prompts if p["noise_magnitude"] is not None]
        if noisy:
            noise_plot = plots.noise_vs_similarity([p["noise_magnitude"] for p in noisy],
                                                   [p["max_similarity"] for p in noisy], [p["verdict"] for p in noisy],
                                                   f"{gen_set}: memorization signal vs outcome, per prompt")
        grid_rows = ws.q(
            """SELECT g.gen_id, g.prompt, g.seed, g.path, sc.top1_sample_id, sc.top1_similarity, sc.top1_tiled_l2,
                      sc.min_tiled_l2, sc.verdict, sc.evidence, s.image_ref, s.caption, s.url, g.noise_magnitude
               FROM gen_scores sc JOIN generations g USING (gen_id) LEFT JOIN samples s ON s.sample_id = sc.top1_sample_id
               WHERE g.gen_set = ? AND sc.status = 'ok'
               ORDER BY CASE sc.verdict WHEN 'replicated' THEN 0 WHEN 'close' THEN 1 ELSE 2 END,
                        sc.top1_similarity DESC, g.gen_id""", [gen_set])
        grid, grid_data = [], []
        for gid, prompt, seed, path, sid, sim, tl2, mtl2, v, ev, ref, cap, url, nm in grid_rows:
            d = {"gen_id": int(gid), "prompt": prompt, "seed": seed, "path": path, "sample_id": sid,
                 "similarity": sim, "tiled_l2": tl2, "min_tiled_l2": mtl2, "verdict": v,
                 "criteria": json.loads(ev).get("criteria", []), "in_references": json.loads(ev).get("top1_in_references"),
                 "train_caption": cap, "train_url": url, "noise_magnitude": nm}
            grid_data.append(d)  # report.json: every scored generation; the page: the first MAX_GRID
            if len(grid) < MAX_GRID:
                gthumb, gst = thumbnail(path, px, maxpix)
                tthumb, tst = thumbnail(ref, px, maxpix)
                grid.append(d | {"gen_thumb": gthumb, "gen_status": gst, "train_thumb": tthumb, "train_status": tst})
        data = {"set": gen_set, "key": key, "descriptor": desc, "stats": numbers, "thresholds": th, "wen": wen,
                "background": {k: bg.get(k) for k in ("n", "mean", "p50", "p95")}, "verdicts": stats.get("verdicts"),
                "prompt_verdicts": stats.get("prompt_verdicts"), "prompts": prompts, "grid": grid_data,
                "grid_total": len(grid_data)}
        sets_data.append(data)
        sets_html.append(data | {"grid": grid, "hist_plot": hist_plot, "noise_plot": noise_plot})
    unscored = ws.q("""SELECT gen_set, count(*) FROM generations g WHERE gen_id NOT IN (SELECT gen_id FROM gen_scores)
                       GROUP BY gen_set ORDER BY gen_set""")
    base = {"present": True, "probes": n_probes, "generations": n_gens, "unscored": {s: int(n) for s, n in unscored},
            "selected_total": len(sel),
            "weights": cfg.probe.weights.model_dump()}
    html = base | {"selected": selected, "sets": sets_html, "risk_plot": risk_plot}
    data = base | {"selected": selected_data, "sets": sets_data}
    return html, data
