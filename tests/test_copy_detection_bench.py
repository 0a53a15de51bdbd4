"""The copy-detection benchmark (benchmarks/copy_detection.py): its copies on tiny synthetic
images, its flat negatives, and its scoring on a hand-made graph. No shared data needed."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("copy_detection", ROOT / "benchmarks" / "copy_detection.py")
cd = importlib.util.module_from_spec(_spec)
sys.modules["copy_detection"] = cd  # dataclasses look their module up while the file executes
_spec.loader.exec_module(cd)
dq = cd.dq


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _items() -> list:
    rng = np.random.default_rng(0)
    out = []
    for k, (h, w) in enumerate([(72, 96), (90, 64), (80, 80)]):
        y, x = np.mgrid[0:h, 0:w]
        a = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 3 + 40 * k) % 256], -1).astype(np.uint8)
        a[h // 4: h // 2, w // 3: w // 2] = rng.integers(0, 256, 3, dtype=np.uint8)  # a block to find
        out.append(dq.Item(f"synthetic/{k}.png", _png(a), ".png", "original", (w, h)))
    a = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out.append(dq.Item("synthetic/small.png", _png(a), ".png", "distractor", (30, 20)))
    return out


def test_copies_of_tiny_images(tmp_path):
    from PIL import Image

    items = _items()
    flats = cd.flat_images()
    truth = cd.build_set(tmp_path / "a", items, flats=flats)
    n_t = len(cd.TRANSFORMS)
    assert len(truth) == 3 * (1 + n_t) + 1 + 20
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(t.file for t in truth)
    copies = [t for t in truth if t.role == "copy"]
    assert {t.transform for t in copies} == set(cd.TRANSFORMS) and len(copies) == 3 * n_t
    assert set(cd.FULL) | set(cd.PARTIAL) == set(cd.TRANSFORMS) and not set(cd.FULL) & set(cd.PARTIAL)
    # levels cycle over the originals
    for name, levels in cd.TRANSFORMS.items():
        used = [t.level for t in copies if t.transform == name]
        assert len(set(used)) == min(3, len(levels))
    size = {t.group: it.size for t, it in zip([t for t in truth if t.role == "original"], items[:3])}
    for t in copies:
        im = Image.open(tmp_path / "a" / t.file)
        im.load()
        w, h = size[t.group]
        if t.transform in ("hflip", "rotate", "jpeg", "colour", "blur", "perspective", "small_in_border", "watermark"):
            assert im.size == (w, h), t.file
        if t.transform == "grayscale":
            assert im.mode == "L"
        if t.transform == "collage":  # the picture covers 40 % of the canvas
            assert im.width * im.height * 0.4 == pytest.approx(w * h, rel=0.05)
        if t.transform in ("meme", "frame", "letterbox"):
            assert im.width >= w and im.height >= h and im.size != (w, h)
    # the collage holds the picture, unchanged, in one corner
    orig = {t.group: np.asarray(Image.open(tmp_path / "a" / t.file).convert("RGB"), np.float32)
            for t in truth if t.role == "original"}
    for t in (t for t in copies if t.transform == "collage"):
        c = np.asarray(Image.open(tmp_path / "a" / t.file).convert("RGB"), np.float32)
        o = orig[t.group]
        h, w = o.shape[:2]
        H, W = c.shape[:2]
        diffs = [np.abs(c[y:y + h, x:x + w] - o).mean() for y in (0, H - h) for x in (0, W - w)]
        assert min(diffs) < 8, (t.file, diffs)
    # deterministic
    again = cd.build_set(tmp_path / "b", items, flats=flats)
    assert [t.file for t in again] == [t.file for t in truth]
    for t in truth:
        assert (tmp_path / "a" / t.file).read_bytes() == (tmp_path / "b" / t.file).read_bytes(), t.file


def test_flat_images_are_distinct_negatives():
    from PIL import Image

    flats = cd.flat_images()
    assert len(flats) == 20
    assert len({hashlib.sha256(d).hexdigest() for _, d in flats}) == 20
    assert len({n for n, _ in flats}) == 20
    for name, data in flats:
        a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
        assert min(a.shape[:2]) >= 64, name
        assert a.reshape(-1, 3).std(0).max() < 30, name  # flat or near-flat, per channel


def _truth() -> list:
    T = dq.Truth
    return [T("o0", 0, "original"), T("c0r", 0, "copy", "resize"), T("c0c", 0, "copy", "crop50"),
            T("o1", 1, "original"), T("c1r", 1, "copy", "resize"), T("c1c", 1, "copy", "crop50"),
            T("d", 2, "distractor"), T("fA", 3, "flat"), T("fB", 4, "flat")]


def test_scoring_on_a_hand_made_graph():
    truth = _truth()
    # edges: o0–c0r, o1–c1r (right), c1c–o0 (a crop joined to the wrong original), fA–fB (flats merged)
    g = cd._edges(len(truth), [0, 3, 5, 7], [1, 4, 0, 8])
    s = cd.score(g, truth)
    # clusters {o0, c0r, c1c} {o1, c1r} {fA, fB}: 5 predicted pairs, 2 right; 6 positive pairs
    assert (s["all"]["predicted"], s["all"]["tp"], s["all"]["positives"]) == (5, 2, 6)
    assert s["all"]["precision"] == pytest.approx(0.4) and s["all"]["recall"] == pytest.approx(1 / 3, abs=1e-4)
    # full-image group (resize copies only): {o0, c0r} {o1, c1r} {fA, fB}
    assert (s["full"]["tp"], s["full"]["predicted"], s["full"]["positives"]) == (2, 3, 2)
    assert s["full"]["recall"] == 1.0
    # partial group (crop50 copies only): {o0, c1c} {fA, fB}: nothing right
    assert (s["partial"]["tp"], s["partial"]["predicted"], s["partial"]["positives"]) == (0, 2, 2)
    assert s["transforms"]["resize"]["recall"] == 1.0 and s["transforms"]["resize"]["precision"] == 1.0
    assert s["transforms"]["crop50"]["recall"] == 0.0 and s["transforms"]["crop50"]["false_pairs"] == 1
    assert s["transforms"]["crop50"]["group"] == "partial"
    assert s["flat"] == {"flat_flat_pairs": 1, "flat_in_cluster": 2}
    assert s["largest_cluster"] == 3
    # nothing joined: no predicted pair, recall 0, no flat merge
    s = cd.score(cd._edges(len(truth), [], []), truth)
    assert s["all"]["predicted"] == 0 and s["all"]["recall"] == 0.0 and s["flat"]["flat_flat_pairs"] == 0
    b = cd.brief(cd.score(g, truth))
    assert b["flat_flat_pairs"] == 1 and b["full_recall"] == 1.0 and b["partial_recall"] == 0.0


def test_curate_config_overrides():
    name, conf = cd.parse_curate_config('sscd=' + '{"embed": {"model": "sscd_distilled"}, "dedup": {"embedding_min_cosine": 0.7}}')
    assert name == "sscd" and conf["dedup"]["embedding_min_cosine"] == 0.7
    assert cd.parse_curate_config("{}") == (None, {})
    with pytest.raises(SystemExit):
        cd.parse_curate_config('{"dedup": 3}')


def test_containment_scores_count_collage_cells_as_right_and_check_the_direction():
    T = dq.Truth
    truth = [T("g0_orig.png", 0, "original"), T("g0_collage.jpg", 0, "copy", "collage", "2x2", inside=(1,)),
             T("g1_orig.png", 1, "original"), T("g0_crop50.jpg", 0, "copy", "crop50", "50%"),
             T("g2_orig.png", 2, "original")]
    reg = {"polygon": [[0, 0]] * 4, "bbox": [0, 0, 1, 1]}
    rows = [(1, 0, reg),   # the collage contains its picture: right, right direction
            (1, 2, reg),   # … and the other picture in one of its cells: right
            (3, 0, {}),    # the crop contains its original: right pair, wrong direction, no region
            (2, 4, reg)]   # two different pictures: wrong
    s = cd.containment_scores(rows, truth)
    assert s["rows"] == 4 and s["precision"] == 0.75 and s["partial_recall"] == 1.0
    assert s["transforms"]["collage"] == {"copies": 1, "recall": 1.0, "direction": 1.0, "with_region": 1.0}
    assert s["transforms"]["crop50"] == {"copies": 1, "recall": 1.0, "direction": 0.0, "with_region": 0.0}
    assert cd.containment_scores(rows, truth, ignore=[(1, 2)])["precision"] == 1.0  # an ambiguous pair of pictures
