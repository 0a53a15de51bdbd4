"""Hash hygiene: flat images give no hash edges, broken files are never "duplicates"."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw

from curate import api
from curate.config import RunConfig
from tests.conftest import SAMPLE, query


def _folder(d):
    d.mkdir(parents=True)
    for name, c in {"red": (220, 20, 20), "blue": (20, 20, 220), "white": (255, 255, 255), "black": (0, 0, 0),
                    "grey": (128, 128, 128)}.items():
        Image.new("RGB", (320, 240), c).save(d / f"flat_{name}.png")
    rng = np.random.default_rng(1)
    noisy = np.clip(np.full((240, 320, 3), 90, np.int16) + rng.integers(-5, 6, (240, 320, 3)), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(d / "flat_noisy.png")
    ph = Image.new("RGB", (400, 300), (235, 235, 235))
    ImageDraw.Draw(ph).text((110, 140), "This photo is no longer available", fill=(140, 140, 140))
    ph.save(d / "placeholder.jpg", quality=90)
    photo = (SAMPLE / "photos" / "skimage_coffee.png").read_bytes()
    (d / "coffee.png").write_bytes(photo)
    Image.open(d / "coffee.png").convert("RGB").resize((300, 200)).save(d / "coffee_small.jpg", quality=85)
    jpeg = (SAMPLE / "photos" / "sklearn_china.jpg").read_bytes()
    (d / "truncated_a.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (d / "truncated_b.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (d / "empty_a.jpg").write_bytes(b"")
    (d / "empty_b.jpg").write_bytes(b"")
    html = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>"
    (d / "error_a.jpg").write_bytes(html)
    (d / "error_b.jpg").write_bytes(html)


def test_flat_images_never_merge_and_broken_files_are_never_duplicates(tmp_path):
    _folder(tmp_path / "imgs")
    cfg = RunConfig.model_validate({"sources": [{"name": "f", "images": "imgs"}], "flag": {"packs": []}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run(ws, cfg)
    name = dict(query(ws, "SELECT sample_id, regexp_extract(image_ref, '[^/]+$') FROM samples"))
    clusters: dict[int, set[str]] = {}
    for sid, cid in query(ws, "SELECT sample_id, cluster_id FROM clusters"):
        clusters.setdefault(cid, set()).add(name[sid])
    assert list(clusters.values()) == [{"coffee.png", "coffee_small.jpg"}]  # the real copy still joins
    quality = dict(query(ws, "SELECT regexp_extract(s.image_ref, '[^/]+$'), i.phash_quality FROM images i "
                             "JOIN samples s USING (sample_id) WHERE i.status = 'ok'"))
    assert all(quality[f] < 25 for f in quality if f.startswith(("flat_", "placeholder"))), quality
    assert quality["coffee.png"] == 100
    status = dict(query(ws, "SELECT regexp_extract(s.image_ref, '[^/]+$'), i.status FROM images i JOIN samples s USING (sample_id)"))
    broken = [f for f in status if f.startswith(("truncated", "empty", "error"))]
    assert len(broken) == 6 and all(status[f] != "ok" for f in broken)
    edges = query(ws, "SELECT signal, count(*) FROM dup_edges GROUP BY ALL")
    assert dict(edges).get("sha256", 0) == 0  # equal bytes of broken files are no edge
    reasons = {name[sid]: r for sid, r in query(ws, "SELECT sample_id, reasons FROM decisions")}
    for f in broken:
        assert "duplicate" not in reasons[f] and reasons[f], (f, reasons[f])  # removed for its own status
    summary = json.loads((ws / "out" / "summary.json").read_text())
    assert summary["input_rows"] == summary["kept"] + summary["removed"] + summary["rejected"] == 15
    dedup = [r for r in query(ws, "SELECT counters FROM runs WHERE stage = 'dedup' AND status = 'ok'")][-1][0]
    assert json.loads(dedup)["phash_low_information"] == 7


def test_flat_images_get_no_embedding_edges_even_at_a_loose_cosine(tmp_path):
    """Descriptors of flat pictures of different colours are alike (SSCD: cosine ≈ 0.9), so the
    information score gates embedding edges as it gates pHash edges; with the gate off they merge."""
    _folder(tmp_path / "imgs")

    def flat_clusters(quality: int) -> list[set[str]]:
        cfg = RunConfig.model_validate({
            "sources": [{"name": "f", "images": "imgs"}], "flag": {"packs": []}, "embed": {"model": "sscd_distilled"},
            "dedup": {"phash_max_distance": None, "embedding_min_cosine": 0.5, "embedding_min_quality": quality,
                      "containment": False}})
        cfg.base_dir = str(tmp_path)
        ws = tmp_path / f"ws{quality}"
        api.run(ws, cfg)
        name = dict(query(ws, "SELECT sample_id, regexp_extract(image_ref, '[^/]+$') FROM samples"))
        clusters: dict[int, set[str]] = {}
        for sid, cid in query(ws, "SELECT sample_id, cluster_id FROM clusters"):
            clusters.setdefault(cid, set()).add(name[sid])
        return [c for c in clusters.values() if any(f.startswith(("flat_", "placeholder")) for f in c)]

    assert flat_clusters(25) == []
    assert flat_clusters(0), "the gate is what keeps flat images apart"


def test_phash_is_taken_on_the_border_trimmed_picture(tmp_path):
    """A thumbnail pasted on a plain background hashes like the same downscale without it
    (14–34 bits apart when the pHash was taken on the untrimmed image: issue #16)."""
    from curate.stages.hash.compute import hash_items, images_schema

    photo = Image.open(SAMPLE / "photos" / "skimage_coffee.png").convert("RGB")
    thumb = photo.resize((160, 107), Image.LANCZOS)
    canvas = Image.new("RGB", (400, 400), (245, 245, 245))
    canvas.paste(thumb, (120, 146))
    thumb.save(tmp_path / "thumb.png")
    canvas.save(tmp_path / "canvas.png")
    rows = hash_items([(0, str(tmp_path / "thumb.png")), (1, str(tmp_path / "canvas.png"))], max_pixels=10**8)
    thumb_h, canvas_h = (int(r[5]) for r in rows)
    assert bin(thumb_h ^ canvas_h).count("1") <= 2
    border = images_schema().names.index("border")
    assert rows[1][border] > 0.3  # the border measure still sees the padding (keeper: no_border)
