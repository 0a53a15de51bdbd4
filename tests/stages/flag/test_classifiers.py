"""Image classifiers feeding rule packs (curate/classifiers.py): NudeNet and RapidOCR on real
photos from the bundled sample (examples/sample/photos, provenance in its PROVENANCE.md), a
stock-agency watermark drawn on one of them with Pillow, scores stored in ``image_scores``,
resumable batches, settings keys, unknown handling and dry-run."""
from __future__ import annotations

import pytest

from curate import api
from curate.stages.flag import classifiers
from curate.config import RunConfig
from curate.errors import ConfigError
from curate.stages.flag.rules import load_pack, pack_path
from tests.conftest import SAMPLE
from tests.conftest import query as _q

PHOTOS = SAMPLE / "photos"

PACK = """\
pack: t
description: classifier rules on a few real photos
rules:
  - id: cand
    kind: caption_words
    category: watermark
    action: tag
    words: [stock photo]
  - id: ocr
    kind: ocr_text
    category: watermark
    action: remove
    only_if_hit: [cand]
    words: [shutterstock, dreamstime]
  - id: ocr-strict
    kind: ocr_text
    category: watermark
    action: review
    only_if_hit: [cand]
    words: [shutterstock, dreamstime]
    unknown: flag
  - id: nude
    kind: classifier_score
    category: nsfw
    action: remove
    classifier: nudenet
    op: '>='
    value: 0.6
    unknown: pass
  - id: nude-unknown
    kind: classifier_score
    category: nsfw
    action: review
    classifier: nudenet
    op: '>='
    value: 0.6
    unknown: flag
  - id: face
    kind: classifier_score
    category: quality
    action: tag
    classifier: nudenet
    label: FACE_FEMALE
    op: '>='
    value: 0.5
    unknown: pass
"""


def strip_watermark(im, text="shutterstock.com · 1000007919"):
    """A stock preview's watermark: a dark bar along the bottom with the agency and an id."""
    from PIL import Image, ImageDraw, ImageFont

    im = im.convert("RGBA")
    w, h = im.size
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    bar = max(18, round(h * 0.07))
    d.rectangle([0, h - bar, w, h], fill=(20, 20, 20, 210))
    d.text((round(w * 0.03), h - bar / 2), text, font=ImageFont.load_default(size=round(bar * 0.55)),
           fill=(255, 255, 255, 255), anchor="lm")
    return Image.alpha_composite(im, layer).convert("RGB")


def _folder(root):
    """wm.jpg (china + watermark), clean.jpg (china), astronaut.png, broken.jpg (truncated)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    china = (PHOTOS / "sklearn_china.jpg").read_bytes()
    with Image.open(PHOTOS / "sklearn_china.jpg") as im:
        strip_watermark(im).save(root / "wm.jpg", quality=90)
    (root / "clean.jpg").write_bytes(china)
    (root / "astronaut.png").write_bytes((PHOTOS / "skimage_astronaut.png").read_bytes())
    (root / "broken.jpg").write_bytes(china[: len(china) // 3])
    for stem in ("wm", "clean", "broken"):
        (root / f"{stem}.txt").write_text("Summer Palace, Beijing - Stock Photo")
    (root / "astronaut.txt").write_text("Portrait of astronaut Eileen Collins")
    return root


def _cfg(tmp, pack_text=PACK):
    pack = tmp / "t.yaml"
    pack.write_text(pack_text)
    cfg = RunConfig.model_validate({"sources": [{"name": "f", "images": "imgs"}], "flag": {"packs": [str(pack)]}})
    cfg.base_dir = str(tmp)
    return cfg






def ingested(tmp):
    _folder(tmp / "imgs")
    cfg = _cfg(tmp)
    ws = tmp / "ws"
    api.run_one(ws, "ingest", cfg)
    api.run_one(ws, "hash", cfg)
    return ws, cfg


def _file_of(ws):
    return dict(_q(ws, "SELECT sample_id, regexp_extract(image_ref, '[^/]+$') FROM samples"))


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls")
    ws, cfg = ingested(tmp)
    res = api.run_one(ws, "flag", cfg)
    files = _file_of(ws)
    flags = {(files[s], r): (score, ev) for s, r, score, ev in _q(ws, "SELECT sample_id, rule_id, score, evidence FROM flags")}
    return ws, cfg, res, files, flags


def test_scores_are_stored_per_classifier_key(flagged):
    ws, _, res, files, _ = flagged
    rows = _q(ws, "SELECT sample_id, classifier, label, score, detail, status FROM image_scores")
    by = {(files[s], c.split("@")[0], lb): (sc, d, st) for s, c, lb, sc, d, st in rows}
    # nudenet ran on every decodable image; the truncated one never reaches a classifier
    assert {f for f, c, lb in by if c == "nudenet" and lb == "nsfw"} == {"wm.jpg", "clean.jpg", "astronaut.png"}
    # OCR ran only on the candidates (caption says "Stock Photo") that decoded
    assert {f for f, c, lb in by if c == "rapidocr"} == {"wm.jpg", "clean.jpg"}
    score, text, status = by[("wm.jpg", "rapidocr", "text")]
    assert status == "ok" and "shutterstock" in text.lower() and 0.5 <= score <= 1.0
    assert by[("clean.jpg", "rapidocr", "text")][1] == ""  # the clean photo has no text
    assert by[("astronaut.png", "nudenet", "nsfw")][0] == 0.0
    assert by[("astronaut.png", "nudenet", "FACE_FEMALE")][0] >= 0.5  # a real detection, stored per class
    counters = res["counters"]["classifiers"]
    assert {c["classifier"]: c["classified"] for c in counters.values()} == {"nudenet": 3, "rapidocr": 2}
    keys = {k.split("@")[0]: k for k in counters}
    assert {c for _, c, *_ in rows} == set(keys.values())


def test_ocr_rule_hits_the_watermark_with_evidence(flagged):
    _, _, _, _, flags = flagged
    assert {f for f, r in flags if r == "ocr"} == {"wm.jpg"}
    score, ev = flags[("wm.jpg", "ocr")]
    assert ev.startswith('OCR text "shutterstock" (conf 0.') and 0.5 <= score <= 1.0, ev


def test_unknown_follows_the_rule(flagged):
    _, _, _, _, flags = flagged
    # candidates without a score: the truncated image; pass → not a hit, flag → a hit that says why
    assert {f for f, r in flags if r == "ocr-strict"} == {"wm.jpg", "broken.jpg"}
    assert flags[("broken.jpg", "ocr-strict")][1].startswith("OCR text unknown (image truncated")
    assert flags[("broken.jpg", "ocr-strict")][0] is None
    assert {f for f, r in flags if r == "nude"} == set()
    assert {f for f, r in flags if r == "nude-unknown"} == {"broken.jpg"}
    assert "nudenet nsfw unknown (image truncated" in flags[("broken.jpg", "nude-unknown")][1]


def test_class_label_rule_evidence(flagged):
    _, _, _, _, flags = flagged
    assert {f for f, r in flags if r == "face"} == {"astronaut.png"}
    score, ev = flags[("astronaut.png", "face")]
    assert ev == f"nudenet FACE_FEMALE {score:.2f} ≥ 0.5"


def test_second_run_reuses_scores(flagged):
    ws, cfg, _, _, _ = flagged
    res = api.run_one(ws, "flag", cfg, force=True)
    assert all(c["classified"] == 0 for c in res["counters"]["classifiers"].values())


def test_resume_after_a_killed_run_recomputes_nothing_finished(tmp_path, monkeypatch):
    ws_root, cfg = ingested(tmp_path)
    pack = load_pack(pack_path(cfg.flag.packs[0]))
    nude = [r for r in pack.rules if r.kind == "classifier_score"]
    real = classifiers._classify
    calls = []

    def dying(spec, ref, max_pixels):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # like a SIGINT in the middle of batch 3
        calls.append(ref)
        return real(spec, ref, max_pixels)

    monkeypatch.setattr(classifiers, "_classify", dying)
    ws = api.open_workspace(ws_root, cfg)
    try:
        packs = [pack.model_copy(update={"rules": nude})]
        with pytest.raises(KeyboardInterrupt):
            classifiers.ensure_scores(ws, packs, batch_size={"nudenet": 1})
        done = ws.q("SELECT DISTINCT sample_id FROM image_scores")
        assert len(done) == 2  # two committed batches survive
        monkeypatch.setattr(classifiers, "_classify", lambda *a: calls.append(a[1]) or real(*a))
        calls.clear()
        out = classifiers.ensure_scores(ws, packs, batch_size={"nudenet": 1})
        assert len(calls) == 1 and next(iter(out.values()))["classified"] == 1  # only the unfinished image
        assert ws.scalar("SELECT count(DISTINCT sample_id) FROM image_scores") == 3
        # a row whose bytes are no longer the sample's image is classified again
        sid = done[0][0]
        ws.con.execute("UPDATE image_scores SET sha256 = 'stale' WHERE sample_id = ?", [sid])
        calls.clear()
        classifiers.ensure_scores(ws, packs)
        assert len(calls) == 1
    finally:
        ws.close()


def test_changing_ocr_settings_recomputes_under_a_new_key(tmp_path):
    ws_root, cfg = ingested(tmp_path)
    pack = load_pack(pack_path(cfg.flag.packs[0]))
    ocr = next(r for r in pack.rules if r.id == "ocr")
    small = ocr.model_copy(update={"max_side": 320})
    small._candidates = ocr._candidates
    assert classifiers.spec_of(small).key != classifiers.spec_of(ocr).key
    ws = api.open_workspace(ws_root, cfg)
    try:
        a = classifiers.ensure_scores(ws, [pack.model_copy(update={"rules": [ocr]})])
        b = classifiers.ensure_scores(ws, [pack.model_copy(update={"rules": [small]})])
        assert [c["classified"] for c in a.values()] == [2] and [c["classified"] for c in b.values()] == [2]
        assert ws.scalar("SELECT count(DISTINCT classifier) FROM image_scores") == 2
        c = classifiers.ensure_scores(ws, [pack.model_copy(update={"rules": [ocr]})])
        assert [v["classified"] for v in c.values()] == [0]
    finally:
        ws.close()


def test_dry_run_computes_and_writes_nothing(tmp_path):
    from curate.stages.flag.stage import hit_counts, load_packs

    ws_root, cfg = ingested(tmp_path)
    ws = api.open_workspace(ws_root, cfg)
    try:
        counts = hit_counts(ws, load_packs(cfg))
        assert ws.scalar("SELECT count(*) FROM image_scores") == 0
        assert ws.scalar("SELECT count(*) FROM flags") == 0
    finally:
        ws.close()
    assert counts["t/ocr"]["unscored"] == 2 and counts["t/ocr"]["hits"] == 0
    assert counts["t/nude"]["unscored"] == 3
    assert counts["t/nude-unknown"]["samples"] == 4  # with no stored scores every sample is unknown
    assert "unscored" not in counts["t/cand"]


def test_shipped_packs_load_and_name_their_sources():
    for name in ("nsfw", "stock-watermark"):
        pack = load_pack(pack_path(name))
        assert pack.sources
        kinds = {r.kind for r in pack.rules}
        assert kinds & {"classifier_score", "ocr_text"}
    sw = load_pack(pack_path("stock-watermark"))
    ocr = next(r for r in sw.rules if r.kind == "ocr_text")
    assert ocr.only_if_hit and [r.id for r in ocr._candidates] == ocr.only_if_hit


@pytest.mark.parametrize("body, message", [
    ("    only_if_hit: [nope]\n", r"only_if_hit names 'nope', which is not another rule of this pack"),
    ("    only_if_hit: [n]\n", r"only_if_hit names 'n', a classifier_score rule"),
    ("    patterns: ['(unclosed']\n", r"t.yaml:\d+: rule o: invalid regular expression"),
])
def test_bad_classifier_rules_fail_at_load(tmp_path, body, message):
    p = tmp_path / "t.yaml"
    p.write_text(
        "pack: t\ndescription: x\nrules:\n  - id: n\n    kind: classifier_score\n    category: nsfw\n"
        "    action: remove\n    classifier: nudenet\n    op: '>'\n    value: 0.5\n    unknown: pass\n"
        "  - id: o\n    kind: ocr_text\n    category: watermark\n    action: review\n    words: [x]\n" + body
    )
    with pytest.raises(ConfigError, match=message):
        load_pack(p)


def test_classifier_score_needs_unknown_and_a_known_label(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("pack: t\ndescription: x\nrules:\n  - id: n\n    kind: classifier_score\n    category: nsfw\n"
                 "    action: remove\n    classifier: nudenet\n    label: NAKED\n    op: '>'\n    value: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_pack(p)
    assert "unknown → Field required" in str(e.value) and "not a nudenet label" in str(e.value)


@pytest.mark.slow
def test_nsfw_pack_on_the_bundled_sample(tmp_path):
    """645 real decodable web images, none nude: NudeNet's three known false detections (a 48 px
    avatar, the CC BY icon, a speaker's hand) stay below the pack's removal threshold."""
    cfg = api.with_overrides(api.workspace_config(tmp_path / "ws", SAMPLE / "curate.yaml"), "flag",
                             {"packs": ["nsfw", "stock-watermark"]})
    for stage in ("ingest", "hash", "flag"):
        res = api.run_one(tmp_path / "ws", stage, cfg)
    counters = res["counters"]
    assert counters["hits_per_rule"]["nsfw/nudenet-exposed"] == 0
    assert counters["hits_per_rule"]["nsfw/nudenet-exposed-review"] <= 3
    n = {c["classifier"]: c for c in counters["classifiers"].values()}
    assert n["nudenet"]["classified"] == n["nudenet"]["candidates_to_do"] > 600 and n["nudenet"]["failed"] == 0
    assert n["rapidocr"]["candidates_to_do"] == 0  # no stock URLs, captions or pwatermark: nothing to OCR
    stored = _q(tmp_path / "ws", "SELECT count(*) FROM image_scores WHERE label = 'nsfw' AND status = 'ok'")[0][0]
    assert stored == n["nudenet"]["classified"]


@pytest.mark.slow
def test_bench_classifiers_smoke(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_classifiers.py"), "--photos", "1",
                        "--sides", "640", "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "CURATE_QUIET": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ocr"][0]["max_side"] == 640 and res["ocr"][0]["s_per_image"] > 0
    assert res["ocr"][0]["recall"]["strip"] == "1/1" and res["ocr"][0]["false_hits_clean"] == "0/1"
    assert res["nudenet"]["ms_per_image"] > 0
