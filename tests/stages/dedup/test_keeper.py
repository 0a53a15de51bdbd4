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


def _meme(im: Image.Image, bar: float = 0.18) -> Image.Image:
    """``im`` with white text bars above and below (each ``bar`` of its height)."""
    from PIL import ImageDraw, ImageFont

    w, h = im.size
    b = round(h * bar)
    out = Image.new("RGB", (w, h + 2 * b), (255, 255, 255))
    out.paste(im, (0, b))
    d = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, round(b * 0.8)))
    d.text((w / 2, b / 2), "WHEN THE COFFEE IS", font=font, fill=(0, 0, 0), anchor="mm")
    d.text((w / 2, h + 1.5 * b), "JUST RIGHT AT 6AM", font=font, fill=(0, 0, 0), anchor="mm")
    return out


def _run_folder(tmp_path, rule: list[str] | None) -> tuple:
    """The pipeline on ``tmp_path/imgs`` (no rule packs; ``rule``: the keeper rule, None = the default).
    Returns (workspace, {sample_id: file name}, {cluster's file stem: its keeper's file name})."""
    dedup = {} if rule is None else {"keeper_rule": rule}
    cfg = RunConfig.model_validate({"sources": [{"name": "f", "images": "imgs"}], "flag": {"packs": []},
                                    "dedup": dedup})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run(ws, cfg)
    names = _names(ws)
    keepers = {}
    for sid, keeper in query(ws, "SELECT sample_id, keeper_sample_id FROM decisions WHERE keeper_sample_id IS NOT NULL"):
        keepers[names[sid].split("_")[0].split(".")[0]] = names[keeper]
    return ws, names, keepers


def _trainer_cases(tmp_path, rule: list[str] | None) -> tuple[dict[str, str], dict]:
    """Three clusters where more pixels is the wrong copy: a meme of the coffee photo (text bars
    added), an enlarged crop to 70 % of the rocket photo, and the astronaut re-saved as a
    larger JPEG at quality 30. Returns ({cluster's original: its keeper}, images rows by name)."""
    d = tmp_path / "imgs"
    d.mkdir()
    coffee = Image.open(SAMPLE / "photos" / "skimage_coffee.png").convert("RGB")  # 600×400
    coffee.save(d / "coffee.png")
    _meme(coffee).save(d / "coffee_meme.png")  # 600×544: more pixels
    rocket = Image.open(SAMPLE / "photos" / "skimage_rocket.jpg").convert("RGB")  # 640×427
    rocket.save(d / "rocket.jpg", quality=95)
    w, h = rocket.size
    crop = rocket.crop((round(w * 0.15), round(h * 0.1), round(w * 0.85), round(h * 0.8)))
    crop.resize((crop.width * 3 // 2, crop.height * 3 // 2), Image.LANCZOS).save(d / "rocket_crop70.jpg", quality=95)
    astronaut = Image.open(SAMPLE / "photos" / "skimage_astronaut.png").convert("RGB")  # 512×512
    astronaut.save(d / "astronaut.jpg", quality=92)
    astronaut.resize((600, 600), Image.LANCZOS).save(d / "astronaut_q30.jpg", quality=30)
    ws, names, keepers = _run_folder(tmp_path, rule)
    rows = {names[r[0]]: r[1:] for r in query(ws, "SELECT sample_id, jpeg_quality, format FROM images")}
    return keepers, rows


def test_the_clean_whole_least_compressed_picture_is_kept_over_bigger_copies(tmp_path):
    keepers, images = _trainer_cases(tmp_path, None)
    assert keepers == {"coffee": "coffee.png", "rocket": "rocket.jpg", "astronaut": "astronaut.jpg"}, keepers
    assert images["astronaut_q30.jpg"][0] == 30 and images["astronaut.jpg"][0] == 92
    assert images["coffee.png"][0] is None  # not a JPEG: not measured
    ws = tmp_path / "ws"
    judged = {r[0]: r[1:] for r in query(ws, """SELECT regexp_extract(s.image_ref, '[^/]+$'),
                                    json_extract_string(x.region, '$.surround'),
                                    CAST(json_extract(x.region, '$.surround_flatness') AS DOUBLE)
                             FROM containment x JOIN samples s ON s.sample_id = x.container_id
                             WHERE json_extract_string(x.region, '$.surround') IS NOT NULL""")}
    assert judged["coffee_meme.png"][0] == "addition" and judged["rocket.jpg"][0] == "picture", judged
    assert judged["coffee_meme.png"][1] >= 0.9 > judged["rocket.jpg"][1], judged  # bars vs. more photograph
    reasons = dict(query(ws, "SELECT regexp_extract(s.image_ref, '[^/]+$'), c.keeper_reason FROM clusters c "
                             "JOIN samples s USING (sample_id) WHERE c.is_keeper"))
    assert reasons == {"coffee.png": "no_additions", "rocket.jpg": "whole_picture", "astronaut.jpg": "compression"}


def test_with_pixels_first_the_meme_the_crop_and_the_q30_copy_are_kept(tmp_path):
    """The control: the rule before these criteria keeps each cluster's biggest copy."""
    old = ["image_ok", "not_flagged", "has_caption", "colour", "no_border", "pixels", "aesthetic", "similarity",
           "smallest_id"]
    keepers, _ = _trainer_cases(tmp_path, old)
    assert keepers == {"coffee": "coffee_meme.png", "rocket": "rocket_crop70.jpg",
                       "astronaut": "astronaut_q30.jpg"}, keepers


def _watermark(im: Image.Image, text: str = "© stockphoto") -> Image.Image:
    """``im`` with a semi-transparent white text watermark (black outline) across its middle."""
    from PIL import ImageDraw, ImageFont

    w, h = im.size
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    font = ImageFont.load_default(size=max(10, round(min(w, h) * 0.16)))
    ImageDraw.Draw(layer).text((w / 2, h / 2), text, font=font, anchor="mm", fill=(255, 255, 255, 110),
                               stroke_width=max(1, round(min(w, h) * 0.01)), stroke_fill=(0, 0, 0, 110))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


def _blurred(im: Image.Image, frac: float = 0.012) -> Image.Image:
    from PIL import ImageFilter

    return im.filter(ImageFilter.GaussianBlur(radius=frac * min(im.size)))


def test_fidelity_finds_the_watermark_before_judging_sharpness():
    """A watermark adds edges: by total detail the watermarked copy is the sharpest, so a blur test
    alone would call the clean picture soft. Judged cell by cell, overlay first: the watermark is
    an overlay, the blurred copy soft, the clean picture neither — as a pair and in a cluster."""
    from curate.stages.dedup.fidelity import cell_detail, common_luma, judge

    for name in ("skimage_chelsea.png", "skimage_astronaut.png", "sklearn_china.jpg"):
        clean = Image.open(SAMPLE / "photos" / name).convert("RGB")
        big = clean.resize((clean.width * 5 // 4, clean.height * 5 // 4), Image.LANCZOS)
        lumas = [common_luma(im) for im in (clean, _watermark(big), _blurred(big))]
        assert cell_detail(lumas[1]).sum() > cell_detail(lumas[0]).sum() > cell_detail(lumas[2]).sum(), name
        three, pair = judge(lumas), judge(lumas[:2])
        assert [(three[k]["overlay"], three[k]["soft"]) for k in range(3)] == [(False, False), (True, False),
                                                                               (False, True)], (name, three)
        assert [(pair[k]["overlay"], pair[k]["soft"]) for k in range(2)] == [(False, False), (True, False)], pair
        blur_pair = judge([lumas[0], lumas[2]])  # a sharp picture gains detail over a blurred one everywhere
        assert [(blur_pair[k]["overlay"], blur_pair[k]["soft"]) for k in range(2)] == [(False, False), (False, True)]
    coffee = Image.open(SAMPLE / "photos" / "skimage_coffee.png").convert("RGB")
    copies = judge([common_luma(im) for im in (coffee, coffee.resize((900, 600)), coffee.convert("L"),
                                               ImageOps.mirror(coffee))])
    assert not any(r["overlay"] or r["soft"] for r in copies.values()) and len(copies) == 4, copies


def _clean_cases(tmp_path, rule: list[str] | None) -> tuple[dict[str, str], dict[str, str], dict]:
    """Two clusters where the biggest copy is drawn over or blurred: the cat photo with a
    watermarked copy and a blurred copy, both larger; the astronaut with a larger watermarked
    copy only (a pair). Returns ({cluster: keeper file}, {keeper file: keeper_reason},
    {file: (overlay, soft)} from ``copy_fidelity``)."""
    d = tmp_path / "imgs"
    d.mkdir()
    cat = Image.open(SAMPLE / "photos" / "skimage_chelsea.png").convert("RGB")  # 451×300
    cat.save(d / "cat.png")
    big = cat.resize((564, 375), Image.LANCZOS)
    _watermark(big).save(d / "cat_wm.jpg", quality=95)
    _blurred(cat.resize((676, 450), Image.LANCZOS)).save(d / "cat_blur.jpg", quality=95)
    astronaut = Image.open(SAMPLE / "photos" / "skimage_astronaut.png").convert("RGB")  # 512×512
    astronaut.save(d / "astronaut.png")
    _watermark(astronaut.resize((640, 640), Image.LANCZOS), "PREVIEW").save(d / "astronaut_wm.jpg", quality=95)
    ws, names, keepers = _run_folder(tmp_path, rule)
    reasons = {names[s]: r for s, r in query(ws, "SELECT sample_id, keeper_reason FROM clusters WHERE is_keeper")}
    fidelity = {names[s]: (o, b) for s, o, b in query(ws, "SELECT sample_id, overlay, soft FROM copy_fidelity")}
    return keepers, reasons, fidelity


def test_the_clean_sharp_picture_is_kept_over_bigger_watermarked_and_blurred_copies(tmp_path):
    keepers, reasons, fidelity = _clean_cases(tmp_path, None)
    assert keepers == {"cat": "cat.png", "astronaut": "astronaut.png"}, keepers
    assert fidelity == {"cat.png": (False, False), "cat_wm.jpg": (True, False), "cat_blur.jpg": (False, True),
                        "astronaut.png": (False, False), "astronaut_wm.jpg": (True, False)}, fidelity
    assert reasons == {"cat.png": "sharp", "astronaut.png": "no_overlay"}, reasons  # runner-up: the blurred cat


def test_without_the_overlay_and_sharpness_criteria_the_biggest_copy_wins(tmp_path):
    """The control: the rule before these criteria keeps the watermarked or the blurred copy."""
    old = ["image_ok", "not_flagged", "has_caption", "no_additions", "colour", "whole_picture", "no_border",
           "compression", "pixels", "aesthetic", "similarity", "smallest_id"]
    keepers, _, fidelity = _clean_cases(tmp_path, old)
    assert keepers == {"cat": "cat_blur.jpg", "astronaut": "astronaut_wm.jpg"}, keepers
    assert fidelity == {}  # not measured when the rule does not ask for it
