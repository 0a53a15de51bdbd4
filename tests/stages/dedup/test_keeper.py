"""The keeper rule: the best copy of a cluster stays — colour before gray before 1-bit, no
added border, then more pixels."""
from __future__ import annotations

from PIL import Image, ImageOps

from curate import api
from curate.config import RunConfig
from tests.conftest import SAMPLE, query


def _names(ws) -> dict[int, str]:
    return dict(query(ws, "SELECT sample_id, regexp_extract(image_ref, '[^/]+$') FROM samples"))


def test_colour_original_is_kept_over_larger_gray_one_bit_and_bordered_copies(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    coffee = Image.open(SAMPLE / "photos" / "skimage_coffee.png").convert("RGB")  # 600×400
    coffee.save(d / "a_colour.png")
    coffee.resize((900, 600)).convert("L").save(d / "b_gray_bigger.png")
    coffee.resize((1200, 800)).convert("1").save(d / "c_one_bit_biggest.png")
    ImageOps.expand(coffee.resize((800, 533)), border=120, fill=(0, 0, 0)).save(d / "d_bordered_bigger.png")
    coffee.resize((900, 600)).convert("L").convert("RGB").save(d / "e_gray_as_rgb.jpg", quality=90)
    cfg = RunConfig.model_validate({"sources": [{"name": "f", "images": "imgs"}], "flag": {"packs": []}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run(ws, cfg)
    names = _names(ws)
    members = query(ws, "SELECT sample_id, cluster_id, is_keeper FROM clusters")
    assert len({c for _, c, _ in members}) == 1 and len(members) == 5, members  # one cluster of the five
    keeper = query(ws, "SELECT DISTINCT keeper_sample_id FROM decisions WHERE keeper_sample_id IS NOT NULL")
    assert [names[k] for k, in keeper] == ["a_colour.png"]
    img = {names[s]: (c, b) for s, c, b in query(ws, "SELECT sample_id, colourfulness, border FROM images")}
    assert img["a_colour.png"][0] >= 20 and img["b_gray_bigger.png"][0] == 0 and img["e_gray_as_rgb.jpg"][0] < 4
    assert img["d_bordered_bigger.png"][1] > 0.2 > img["a_colour.png"][1]


def test_without_the_colour_and_border_criteria_the_biggest_copy_wins(tmp_path):
    """The control: the old rule (pixels first) keeps the 1-bit copy — what the new criteria fix."""
    d = tmp_path / "imgs"
    d.mkdir()
    coffee = Image.open(SAMPLE / "photos" / "skimage_coffee.png").convert("RGB")
    coffee.save(d / "a_colour.png")
    coffee.resize((1200, 800)).convert("1").save(d / "c_one_bit_biggest.png")
    old = ["image_ok", "not_flagged", "has_caption", "pixels", "aesthetic", "similarity", "smallest_id"]
    cfg = RunConfig.model_validate({"sources": [{"name": "f", "images": "imgs"}], "flag": {"packs": []},
                                    "dedup": {"keeper_rule": old}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run(ws, cfg)
    keeper = query(ws, "SELECT DISTINCT keeper_sample_id FROM decisions WHERE keeper_sample_id IS NOT NULL")
    assert [_names(ws)[k] for k, in keeper] == ["c_one_bit_biggest.png"]


def test_sample_hopper_cluster_keeps_a_colour_copy(sample_ws):
    ws, _ = sample_ws
    rows = query(ws, """SELECT s.image_ref, i.mode, i.colourfulness FROM decisions d
                        JOIN samples s ON s.sample_id = d.keeper_sample_id JOIN images i ON i.sample_id = d.keeper_sample_id
                        WHERE d.sample_id IN (SELECT sample_id FROM samples WHERE image_ref LIKE '%hopper_bw_500%')""")
    assert len(rows) == 1
    ref, mode, colour = rows[0]
    assert "hopper" in ref and mode != "1" and colour >= 4, rows
