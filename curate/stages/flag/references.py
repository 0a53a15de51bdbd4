"""Samples that show a reference image (a claimant's work, a retrieval rule's example): by
identical bytes, mirror-aware pHash, embedding cosine, and — for a crop, a rotated or framed
copy, a collage tile — by local features and a homography (signal ``containment``,
:mod:`curate.stages.dedup.containment`), with the region as evidence."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from curate.media.images import open_image
from curate.media.phash import gray32, phash_with_mirror
from curate.models.feeder import ImageDataset, collate, forward, normalise
from curate.models.recipe import image_key, image_spec, load_model
from curate.stages.dedup.containment import FeatureCache, match, params_of, ref_features
from curate.store.embeddings import float32_batches, iter_parts


def reference_features(paths: list[Path], cfg, need_embedding: bool) -> dict[str, Any]:
    """sha256, pHash, mirror pHash and (optionally) the image embedding of reference images.

    Decoded by the one image loader (:mod:`curate.media.images`) exactly as the hash and embed stages
    decode catalog images, so a reference identical to a sample gets the same hash and vector.

    Returns:
        dict with ``files`` (list[str]), ``sha256`` (list[str]), ``ok`` (bool (n,)),
        ``status`` (list[str]), ``phash`` / ``mirror`` (uint64 (n,), 0 where not ok),
        ``vectors`` (float32 (n, d) L2-normalised, or None), ``key`` (embedding key or None).
    """
    files = [str(p) for p in paths]
    shas, status, grays, ok = [], [], [], []
    for p in paths:
        data = p.read_bytes()
        shas.append(hashlib.sha256(data).hexdigest())
        d, im = open_image(data, max_pixels=cfg.hash.max_pixels)
        status.append(d.status)
        ok.append(im is not None)
        grays.append(gray32(im) if im is not None else np.zeros((32, 32), np.uint8))
    g = np.stack(grays) if grays else np.zeros((0, 32, 32), np.uint8)
    h, m = phash_with_mirror(g) if len(g) else (np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    okv = np.asarray(ok, bool)
    out = {"files": files, "sha256": shas, "ok": okv, "status": status,
           "phash": np.where(okv, h, 0).astype(np.uint64), "mirror": np.where(okv, m, 0).astype(np.uint64),
           "vectors": None, "key": None}
    if need_embedding and okv.any() and not cfg.embed.model.startswith("precomputed:"):
        from torch.utils.data import DataLoader

        spec = image_spec(cfg)
        model = load_model(cfg)
        items = [(i, f) for i, f in enumerate(files) if okv[i]]
        vecs = np.zeros((len(files), model.dim), np.float32)
        loader = DataLoader(ImageDataset(items, spec.preprocess, cfg.hash.max_pixels), batch_size=16,
                            num_workers=0, collate_fn=collate)
        for sids, x, _bad in loader:
            if x is not None:
                v, good = normalise(forward(model, x))
                for sid, row, g_ in zip(sids, v, good):
                    if g_:
                        vecs[sid] = row
        out["vectors"], out["key"] = vecs, spec.key
    return out


def vectors_above(folder: Path, queries: np.ndarray, min_cosine: float):
    """Yield (sample_id, query column, cosine) for every stored vector of ``folder`` whose cosine
    with a query is ≥ ``min_cosine``; ``queries`` is float32 (d, q), L2-normalised columns.
    Parts are read memory-mapped and multiplied in blocks of 65,536 rows (float32)."""
    for _, ids, vecs in iter_parts(folder):
        for start, block in float32_batches(vecs):
            sims = block @ queries
            for r, c in zip(*np.nonzero(sims >= min_cosine)):
                yield int(ids[start + r]), int(c), float(sims[r, c])


def reference_matches(ws, cfg, refs: list[Path], phash_max: int | None, min_cosine: float | None,
                      counters: dict) -> list[tuple]:
    """Samples matching reference images by sha256, mirror-aware pHash, embedding cosine and,
    with ``dedup.containment`` on, containment (:func:`containment_matches`).

    Args:
        refs: image files.
        phash_max: Hamming radius in bits (0–64), None = no pHash signal.
        min_cosine: cosine threshold in (0, 1], None = no embedding signal (and no containment).
        counters: filled with per-reference decode status and hit counts.

    Returns:
        rows (sample_id, signal, score, evidence, matched_reference path).
    """
    key = image_key(cfg)
    have_vectors = min_cosine is not None and bool(ws.scalar(
        "SELECT count(*) FROM embeddings WHERE model = ? AND status = 'ok'", [key]))
    feats = reference_features(refs, cfg, need_embedding=have_vectors)
    if min_cosine is not None and not have_vectors:
        counters["embedding"] = f"no image embeddings under {key} in the catalog (run embed): signal skipped"
    rows: list[tuple] = []
    for i, f in enumerate(feats["files"]):
        name = Path(f).name
        counters[name] = {"status": feats["status"][i]}
        rows += [(sid, "sha256", 1.0, f"image bytes identical to reference {name} (sha256 {feats['sha256'][i][:16]}…)", f)
                 for (sid,) in ws.q("SELECT sample_id FROM images WHERE sha256 = ?", [feats["sha256"][i]])]
        if not feats["ok"][i]:
            continue
        if phash_max is not None:
            h, m = int(feats["phash"][i]), int(feats["mirror"][i])
            for sid, d, dm in ws.q(
                "SELECT sample_id, bit_count(xor(phash, ?::UBIGINT)), "
                "least(bit_count(xor(phash_mirror, ?::UBIGINT)), bit_count(xor(phash, ?::UBIGINT))) "
                "FROM images WHERE phash IS NOT NULL AND (bit_count(xor(phash, ?::UBIGINT)) <= ? "
                "OR bit_count(xor(phash_mirror, ?::UBIGINT)) <= ? OR bit_count(xor(phash, ?::UBIGINT)) <= ?)",
                [h, h, m, h, phash_max, h, phash_max, m, phash_max]):
                best = min(d, dm if dm is not None else 64)
                how = "" if d <= best else " (mirror image)"
                rows.append((sid, "phash", float(best), f"pHash {best} bits from reference {name}{how} ≤ {phash_max}", f))
    if have_vectors and feats["vectors"] is not None:
        ok = np.flatnonzero(feats["ok"])
        R = np.ascontiguousarray(feats["vectors"][ok].T)
        contain = cfg.dedup.containment
        floor = min(min_cosine, cfg.dedup.containment_min_cosine) if contain else min_cosine
        near: dict[int, list[tuple[float, int]]] = {}  # one pass over the parts for both signals
        for sid, c, sim in vectors_above(ws.embeddings_dir(feats["key"]), R, floor):
            if sim >= min_cosine:
                f = feats["files"][ok[c]]
                rows.append((sid, "embedding", round(sim, 4), f"cosine {sim:.3f} to reference {Path(f).name} ≥ {min_cosine}", f))
            if contain and sim >= cfg.dedup.containment_min_cosine:
                near.setdefault(int(ok[c]), []).append((sim, sid))
        if contain:
            rows += containment_matches(ws, cfg, feats, near, rows)
    for _sid, sig, _s, _e, f in rows:
        c = counters.setdefault(Path(f).name, {})
        c[sig] = c.get(sig, 0) + 1
    return rows


def containment_matches(ws, cfg, feats: dict[str, Any], near: dict[int, list[tuple[float, int]]],
                        found: list[tuple]) -> list[tuple]:
    """Samples that contain a copy of a reference image, or that a reference contains (a crop of
    it), verified by SIFT + RANSAC (:func:`curate.stages.dedup.containment.match`) — what the
    whole-image signals miss: crops, rotations, perspective, frames, collage tiles.

    Candidates per reference: the ``dedup.containment_neighbours`` × 5 samples of highest
    cosine ≥ ``dedup.containment_min_cosine`` to it (``near``: reference index in ``feats`` →
    [(cosine, sample id)], from :func:`reference_matches`' one pass over the embedding parts),
    minus those the other signals already matched to that reference. Cost: one SIFT run per
    reference and per candidate sample (≈ 0.1 s of CPU each) and one match per pair (≈ 2 ms).

    Returns:
        rows (sample_id, 'containment', inliers, evidence, reference path); the evidence names
        the direction, the region (bbox in the container's decoded pixels), inliers and coverage.
    """
    dc = cfg.dedup
    k = dc.containment_neighbours * 5
    done = {(sid, f) for sid, _sig, _s, _e, f in found}
    cand_ids = sorted({sid for v in near.values() for _, sid in v})
    info = {int(r[0]): (r[1], int(r[2]), int(r[3])) for r in ws.q(
        "SELECT s.sample_id, s.image_ref, i.width, i.height FROM samples s JOIN images i USING (sample_id) "
        "WHERE i.status = 'ok' AND s.image_ref IS NOT NULL AND s.sample_id IN (SELECT unnest(?::BIGINT[]))",
        [cand_ids])} if cand_ids else {}
    p = params_of(dc)
    cache = FeatureCache(max_items=1024)
    rows: list[tuple] = []
    for c, cands in near.items():
        f = feats["files"][c]
        fr = ref_features(f, p, max_pixels=cfg.hash.max_pixels)
        if fr is None:
            continue
        for _sim, sid in sorted(cands, reverse=True)[:k]:
            if (sid, f) in done or sid not in info:
                continue
            ref, w, h = info[sid]
            fs = cache.get(sid, lambda r=ref, w=w, h=h: ref_features(r, p, max_pixels=cfg.hash.max_pixels, size=(w, h)))
            m = None if fs is None else match(fs, fr, p)
            if m is None:
                continue
            how = "contains a copy of" if m.container == 0 else "is a part of"
            mirror = " (mirror image)" if m.mirrored else ""
            rows.append((sid, "containment", float(m.inliers),
                         f"{how} reference {Path(f).name}{mirror}: region {json.dumps(m.bbox)} in the "
                         f"{'sample' if m.container == 0 else 'reference'}, {m.inliers} inliers, "
                         f"coverage {m.coverage:.2f}", f))
    return rows
