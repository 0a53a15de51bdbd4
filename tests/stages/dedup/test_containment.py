"""Partial copies, located (curate.stages.dedup.containment): crops, collage tiles and rotated,
rescaled copies of real photos are found with the right direction and region; different
photos and flat images are not; the dedup stage writes directed ``containment`` rows and merges
clusters through them only when asked."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from curate import api
from curate.config import RunConfig
from curate.stages.dedup.containment import Params, features, match, match_images, verify_pairs
from tests.conftest import SAMPLE
from tests.conftest import query as _q

PHOTOS = SAMPLE / "photos"


def _photo(name: str) -> Image.Image:
    return Image.open(PHOTOS / name).convert("RGB")


@pytest.fixture(scope="module")
def coffee():
    return _photo("skimage_coffee.png")  # 600 × 400


def _collage(inset: Image.Image, area: float = 0.4, pos: tuple[int, int] = (100, 120)):
    """A 1000 × 700 2×2 collage of other photos with ``inset`` pasted over it at ``area`` of
    the collage's area; returns (collage, true box of the inset)."""
    cw, ch = 1000, 700
    col = Image.new("RGB", (cw, ch))
    for k, name in enumerate(["skimage_astronaut.png", "sklearn_china.jpg", "skimage_chelsea.png", "skimage_rocket.jpg"]):
        col.paste(_photo(name).resize((cw // 2, ch // 2)), ((k % 2) * cw // 2, (k // 2) * ch // 2))
    s = math.sqrt(area * cw * ch / (inset.width * inset.height))
    small = inset.resize((round(inset.width * s), round(inset.height * s)), Image.LANCZOS)
    col.paste(small, pos)
    return col, (pos[0], pos[1], pos[0] + small.width, pos[1] + small.height)


def test_crop_is_found_inside_its_original_with_its_box(coffee):
    box = (150, 100, 450, 300)  # the middle half of each side
    crop = coffee.crop(box)
    m = match_images(coffee, crop)
    assert m is not None and m.container == 0  # the original contains the crop
    assert np.allclose(m.bbox, box, atol=3), m.bbox
    assert np.allclose(m.polygon, [[150, 100], [450, 100], [450, 300], [150, 300]], atol=3)
    assert m.inliers >= 50 and m.inlier_ratio > 0.8 and m.coverage > 0.99
    assert m.region()["contained_size"] == [300, 200] and m.region()["container_size"] == [600, 400]
    back = match_images(crop, coffee)  # the direction does not depend on the argument order
    assert back is not None and back.container == 1 and np.allclose(back.bbox, box, atol=3)


def test_original_pasted_into_a_collage_is_found_with_its_region(coffee):
    col, box = _collage(coffee, area=0.4)
    m = match_images(coffee, col)
    assert m is not None and m.container == 1, m
    assert np.allclose(m.bbox, box, atol=3), (m.bbox, box)
    assert m.coverage > 0.99 and 0.3 < m.container_fraction < 0.5


def test_rotated_and_rescaled_copy_is_found(coffee):
    w, h = coffee.size
    rot = coffee.rotate(10, expand=True, resample=Image.BICUBIC)
    small = rot.resize((round(rot.width * 0.8), round(rot.height * 0.8)), Image.LANCZOS)
    sx, sy = small.width / rot.width, small.height / rot.height
    m = match_images(coffee, small)
    assert m is not None and m.container == 1  # the rotated copy has black corners around the picture
    # where PIL's counter-clockwise rotation about the centre puts the original's corners
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    want = []
    for x, y in [(0, 0), (w, 0), (w, h), (0, h)]:
        dx, dy = x - w / 2, y - h / 2
        want.append([(c * dx + s * dy + rot.width / 2) * sx, (-s * dx + c * dy + rot.height / 2) * sy])
    assert np.allclose(m.polygon, want, atol=4), (m.polygon, want)
    assert m.inliers >= 50 and m.coverage > 0.95


@pytest.mark.parametrize("pair", [("skimage_coffee.png", "skimage_astronaut.png"),
                                  ("sklearn_china.jpg", "skimage_astronaut.png"),
                                  ("skimage_coffee.png", "sklearn_china.jpg"),
                                  ("skimage_chelsea.png", "skimage_rocket.jpg")])
def test_different_photos_give_no_match(pair):
    assert match_images(_photo(pair[0]), _photo(pair[1])) is None


def test_flat_and_tiny_images_give_no_match(coffee):
    flat = Image.new("RGB", (300, 200), (120, 130, 140))
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))).convert("RGB")
    tiny = Image.new("RGB", (1, 1), (0, 0, 0))
    for im in (flat, ramp, tiny):
        f = features(im)
        assert len(f.points) < 20 and f.desc.dtype == np.uint8
        assert match(f, f) is None and match_images(im, coffee) is None and match_images(coffee, im) is None


def test_verify_pairs_reads_references(tmp_path, coffee):
    coffee.crop((100, 50, 400, 350)).save(tmp_path / "crop.png")
    got = verify_pairs([(str(PHOTOS / "skimage_coffee.png"), str(tmp_path / "crop.png")),
                        (str(PHOTOS / "skimage_coffee.png"), str(PHOTOS / "skimage_astronaut.png")),
                        (str(tmp_path / "missing.png"), str(tmp_path / "crop.png"))])
    assert got[0] is not None and got[0].container == 0 and np.allclose(got[0].bbox, (100, 50, 400, 350), atol=3)
    assert got[1] is None and got[2] is None


# -- the dedup stage ---------------------------------------------------------------------------

def _five_photos(d):
    """Copy five distinct sample photos into a new folder ``d``; returns the coffee photo."""
    d.mkdir()
    for f in ["skimage_coffee.png", "skimage_astronaut.png", "sklearn_china.jpg", "skimage_chelsea.png",
              "skimage_rocket.jpg"]:
        shutil.copy(PHOTOS / f, d / f)
    return _photo("skimage_coffee.png")


@pytest.fixture(scope="module")
def folder_ws(tmp_path_factory):
    """Five distinct photos, a crop of the coffee photo, and a collage (four of the photos as
    tiles, the astronaut pasted over them at 40% area); ingested, hashed and embedded. Every
    neighbour is a candidate (``containment_min_cosine: -1``)."""
    tmp = tmp_path_factory.mktemp("containment")
    d = tmp / "imgs"
    coffee = _five_photos(d)
    coffee.crop((150, 100, 450, 300)).save(d / "coffee_crop.png")
    col, box = _collage(_photo("skimage_astronaut.png"), area=0.4, pos=(420, 150))
    col.save(d / "collage.png")
    cfg = RunConfig.model_validate({"sources": [{"name": "p", "images": str(d)}],
                                    "dedup": {"embedding_min_cosine": 0.97, "containment_min_cosine": -1.0},
                                    "flag": {"packs": ["quality"]}})
    cfg.base_dir = str(tmp)
    ws = tmp / "ws"
    api.run(ws, cfg, stages=["ingest", "hash", "embed"])
    return ws, cfg, box


def _name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _rows(ws) -> dict[tuple[str, str], tuple]:
    got = _q(ws, "SELECT a.image_ref, b.image_ref, c.inliers, c.inlier_ratio, c.coverage, c.region, c.score "
                 "FROM containment c JOIN samples a ON a.sample_id = c.container_id "
                 "JOIN samples b ON b.sample_id = c.contained_id")
    return {(_name(a), _name(b)): rest for a, b, *rest in got}


def _cluster_of(ws) -> dict[str, int]:
    return {_name(r): c for r, c in _q(ws, "SELECT s.image_ref, c.cluster_id FROM clusters c JOIN samples s "
                                           "USING (sample_id)")}


def test_stage_writes_containment_rows_without_merging_clusters(folder_ws):
    ws, cfg, box = folder_ws
    c = api.run_one(ws, "dedup", cfg, force=True)["counters"]
    rows = _rows(ws)
    assert ("skimage_coffee.png", "coffee_crop.png") in rows
    assert ("collage.png", "skimage_astronaut.png") in rows
    assert {a for a, _ in rows} <= {"skimage_coffee.png", "collage.png"}, rows  # distinct photos never match
    inliers, _ratio, coverage, region, score = rows[("collage.png", "skimage_astronaut.png")]
    region = json.loads(region)
    assert np.allclose(region["bbox"], box, atol=3) and len(region["polygon"]) == 4
    assert inliers >= 20 and 0 < score <= 1 and coverage > 0.95
    crop = json.loads(rows[("skimage_coffee.png", "coffee_crop.png")][3])
    assert np.allclose(crop["bbox"], (150, 100, 450, 300), atol=3)
    cc = c["containment"]
    assert cc["found"] == len(rows) and cc["verified"] <= cc["candidates"] and cc["candidates"] >= len(rows)
    assert cc["seconds"] >= 0 and "containment" not in c["edges"]
    in_one = sum(1 for a, b in rows if _cluster_of(ws).get(a) is not None and _cluster_of(ws).get(a) == _cluster_of(ws).get(b))
    assert cc["same_cluster"] == in_one < len(rows)
    # by default a containment joins no cluster: neither pair shares one
    cl = _cluster_of(ws)
    assert cl.get("coffee_crop.png") is None or cl.get("coffee_crop.png") != cl.get("skimage_coffee.png")
    assert cl.get("collage.png") is None or cl.get("collage.png") != cl.get("skimage_astronaut.png")
    assert not _q(ws, "SELECT * FROM dup_edges WHERE signal = 'containment'")


def test_containment_merges_clusters_when_asked_and_can_be_switched_off(folder_ws):
    ws, cfg, _ = folder_ws
    merge = api.with_overrides(cfg, "dedup", {"containment_merges_clusters": True})
    c = api.run_one(ws, "dedup", merge)["counters"]
    n = len(_rows(ws))
    assert c["edges"]["containment"] == n == c["containment"]["found"]
    assert c["containment"]["same_cluster"] == n  # every containment row's two samples now share a cluster
    cl = _cluster_of(ws)
    assert cl["coffee_crop.png"] == cl["skimage_coffee.png"] and cl["collage.png"] == cl["skimage_astronaut.png"]
    # the reason it is off by default: the collage also contains its tiles, chaining distinct photos
    chained = {k for k, v in cl.items() if v == cl["collage.png"]}
    assert len(chained) >= 3 and "skimage_coffee.png" not in chained, chained
    (sig,) = _q(ws, "SELECT signals FROM cluster_stats WHERE cluster_id = ?", [cl["skimage_coffee.png"]])[0]
    assert "containment" in sig
    off = api.with_overrides(cfg, "dedup", {"containment": False})
    c = api.run_one(ws, "dedup", off)["counters"]
    assert "containment" not in c and not _q(ws, "SELECT * FROM containment")


def test_knn_pairs_keep_the_cosine_band_and_ivf_finds_the_exact_pairs():
    from curate.stages.dedup.vector_search import knn_pairs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i, j, c = knn_pairs(x, 5, 0.5, 0.9)
    assert len(i) > 1000 and np.all(i < j) and np.all((c >= 0.5) & (c < 0.9))
    assert np.allclose(c, np.einsum("ij,ij->i", x[i], x[j]), atol=1e-5)
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)  # each pair once
    vi, vj, _ = knn_pairs(x, 5, 0.5, 0.9, ivf_min_n=1000, nprobe=10_000)  # every list probed: exact
    assert np.array_equal(vi, i) and np.array_equal(vj, j)


def test_mirrored_crop_is_found_with_its_box(coffee):
    """A flipped copy matches through the mirrored descriptors (no second SIFT run)."""
    from PIL import ImageOps

    box = (60, 40, 540, 360)  # 80 % of each side
    flipped = ImageOps.mirror(coffee.crop(box))
    m = match_images(coffee, flipped)
    assert m is not None and m.mirrored and m.container == 0
    assert np.allclose(m.bbox, box, atol=4), m.bbox
    assert m.region()["mirrored"] is True and 0.6 < m.container_fraction < 0.7
    assert match_images(coffee, flipped, Params(mirror=False)) is None


def test_thumbnail_on_a_plain_background_covers_the_whole_picture(coffee):
    """container_fraction is measured inside the container's picture without its flat padding,
    so a thumbnail pasted on a plain canvas is a whole-picture copy (→ a ``verified`` edge)."""
    canvas = Image.new("RGB", (900, 900), (250, 250, 250))
    canvas.paste(coffee.resize((300, 200)), (400, 500))
    m = match_images(canvas, coffee)
    assert m is not None and m.container == 0
    assert np.allclose(m.bbox, (400, 500, 700, 700), atol=4)
    assert m.container_fraction > 0.95


def test_whole_picture_copies_join_clusters_and_partial_ones_do_not(tmp_path):
    """Signal ``verified``: a crop to 70 % of each side and a rotated copy join their original's
    cluster; a crop to 50 % and a collage tile stay containment rows."""
    d = tmp_path / "imgs"
    coffee = _five_photos(d)
    coffee.crop((0, 0, 420, 280)).save(d / "coffee_crop70.png")  # top left; the 50 % crop is at the bottom right
    coffee.crop((300, 200, 600, 400)).save(d / "coffee_crop50.png")
    coffee.rotate(10, resample=Image.BICUBIC).save(d / "coffee_rot10.jpg", quality=90)
    _collage(_photo("skimage_astronaut.png"), area=0.4, pos=(420, 150))[0].save(d / "collage.png")
    cfg = RunConfig.model_validate({"sources": [{"name": "p", "images": str(d)}], "flag": {"packs": []},
                                    "dedup": {"embedding_min_cosine": 0.99, "phash_max_distance": None}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run(ws, cfg, stages=["ingest", "hash", "embed", "dedup"])
    cl = _cluster_of(ws)
    assert cl["coffee_crop70.png"] == cl["coffee_rot10.jpg"] == cl["skimage_coffee.png"]
    assert cl.get("coffee_crop50.png") != cl["skimage_coffee.png"]
    assert cl.get("collage.png") is None or cl.get("collage.png") != cl.get("skimage_astronaut.png")
    rows = _rows(ws)
    assert ("skimage_coffee.png", "coffee_crop50.png") in rows and ("collage.png", "skimage_astronaut.png") in rows
    sig = {s for (s,) in _q(ws, "SELECT DISTINCT signal FROM dup_edges")}
    assert sig == {"verified"}, sig
    off = api.with_overrides(cfg, "dedup", {"verified_min_fraction": None})
    api.run_one(ws, "dedup", off)
    assert not _q(ws, "SELECT * FROM dup_edges")
