"""curate.media.lanczos: Pillow's LANCZOS resize (and luma) bit for bit, on every path it can take."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curate.media import lanczos

from tests.conftest import SAMPLE


def _image(rng, w: int, h: int, mode: str, smooth: bool) -> Image.Image:
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if smooth:  # photo-like gradients as well as noise: rounding ties land differently
        a = np.clip(np.cumsum(a.astype(np.int32) - 127, axis=1) // 3 + 128, 0, 255).astype(np.uint8)
    return Image.fromarray(a).convert(mode)


def _pillow(im: Image.Image, size) -> np.ndarray:
    return np.asarray(im.resize(size, Image.LANCZOS))


def test_random_sizes_both_pass_orders_and_skipped_passes_match_pillow():
    rng = np.random.default_rng(7)
    shapes = [(int(w), int(h)) for w, h in rng.integers(1, 360, (120, 2))]
    shapes += [(1, 1), (32, 32), (32, 200), (200, 32), (31, 33), (33, 31), (5, 2000), (2000, 5)]
    shapes += [(w, 2 * w - 31 + d) for w in (40, 97, 150) for d in (-1, 0, 1)]  # Pillow 13's order boundary
    order = lanczos.pass_order()
    vertical_first = 0
    for i, (w, h) in enumerate(shapes):
        for mode in ("RGB", "L"):
            im = _image(rng, w, h, mode, smooth=bool(i % 2))
            for size in ((32, 32), (17, 45), (64, 20)):
                got = lanczos.resize(im, size)
                assert got.dtype == np.uint8 and got.shape == _pillow(im, size).shape
                assert np.array_equal(got, _pillow(im, size)), (w, h, mode, size)
            vertical_first += lanczos._RULES[order](w, h, (32, 32))
    assert order in ("pillow13", "horizontal_first")
    if order == "pillow13":
        assert vertical_first >= 10  # both orders were exercised


def test_gray_equals_resize_then_convert_L():
    rng = np.random.default_rng(3)
    for w, h in ((640, 480), (123, 77), (32, 90), (700, 32), (20, 20)):
        im = _image(rng, w, h, "RGB", smooth=True)
        want = np.asarray(im.resize((32, 32), Image.LANCZOS).convert("L"))
        assert np.array_equal(lanczos.resize_gray(im), want)
        g = im.convert("L")
        assert np.array_equal(lanczos.resize_gray(g), np.asarray(g.resize((32, 32), Image.LANCZOS)))


def test_every_sample_image_matches_pillow():
    files = sorted(p for p in (SAMPLE / "photos").glob("*") if p.is_file())
    files += sorted(p for p in (SAMPLE / "near-dup").rglob("*") if p.is_file())
    checked = 0
    for p in files:
        try:
            im = Image.open(p)
            im.load()
        except Exception:  # noqa: BLE001 - the loader's own tests cover unreadable files
            continue
        im = im.convert("RGB") if im.mode != "RGB" else im
        assert np.array_equal(lanczos.resize(im), _pillow(im, (32, 32))), p.name
        checked += 1
    assert checked >= 100


def test_coefficients_are_pillows_fixed_point_taps():
    # Independent oracle: Pillow resamples mode 'I' with the same double coefficients and
    # rounds ``pixel · k`` half away from zero; an impulse of 2²² therefore returns exactly
    # the 22-bit fixed-point tap (multiplying by a power of two is exact).
    for w in (7, 33, 100, 641):
        bounds, kk = lanczos.coefficients(w, 32)
        assert kk.shape[1] % lanczos.LANE == 0
        for x in range(0, w, max(1, w // 9)):
            a = np.zeros((1, w), np.int32)
            a[0, x] = 1 << 22
            col = np.asarray(Image.fromarray(a, mode="I").resize((32, 1), Image.LANCZOS))[0]
            for j in range(32):
                lo, n = bounds[j]
                want = kk[j, x - lo] if lo <= x < lo + n else 0
                assert col[j] == want, (w, x, j)
        assert np.abs(kk.sum(axis=1) - (1 << 22)).max() <= kk.shape[1]  # each output's taps sum to 1


def test_pillows_int32_sums_cannot_overflow():
    # the kernels sum in int64 / int32 and Pillow in int32: equal only while no sum overflows
    worst = 0.0
    for n in list(range(1, 2000, 7)) + [4096, 10_000]:
        for out in (32, 17, 64):
            _, kk = lanczos.coefficients(n, out)
            worst = max(worst, float(np.clip(kk, 0, None).sum(axis=1).max()))
    assert 255 * worst < 2**31 - 1
    assert 1.2 * 2**22 < worst < 1.3 * 2**22  # the bound the module docstring states


def test_split_images_are_copied_and_still_exact(monkeypatch):
    # an image Pillow keeps in several memory blocks cannot be read in place: numpy copy path
    rng = np.random.default_rng(1)
    im = _image(rng, 900, 700, "RGB", smooth=True)
    before = Image.core.get_block_size()
    try:
        Image.core.set_block_size(1 << 20)  # 1 MiB blocks: this image is split
        split = im.copy()
        rows, bpp, _ = lanczos._pixels(split)
        assert bpp == 3
        assert np.array_equal(lanczos.resize(split), _pillow(split, (32, 32)))
    finally:
        Image.core.set_block_size(before)
    rows, bpp, _ = lanczos._pixels(im)
    assert bpp == 4  # one block: read in place as RGBX


def test_unknown_pillow_order_falls_back_to_pillow(monkeypatch):
    rng = np.random.default_rng(2)
    monkeypatch.setattr(lanczos, "_order", [None])
    im = _image(rng, 90, 300, "RGB", smooth=True)
    assert np.array_equal(lanczos.resize(im), _pillow(im, (32, 32)))
    assert np.array_equal(lanczos.resize_gray(im), np.asarray(im.resize((32, 32), Image.LANCZOS).convert("L")))


def test_pass_order_rejects_a_wrong_rule(monkeypatch):
    monkeypatch.setattr(lanczos, "_order", [])
    monkeypatch.setattr(lanczos, "_RULES", {"always_vertical": lambda w, h, size: True})
    assert lanczos.pass_order() is None


def test_bad_input_raises():
    with pytest.raises(ValueError, match="'RGB' or 'L'"):
        lanczos.resize(Image.new("RGBA", (10, 10)))
    with pytest.raises(ValueError, match=">= 1x1"):
        lanczos.resize(Image.new("RGB", (10, 10)), (0, 5))
    with pytest.raises(ValueError, match=">= 1"):
        lanczos.coefficients(0, 32)
