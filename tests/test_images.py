"""The shared image loader on real tricky files and generated edge cases (K07–K11)."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from curate.images import decode, read_ref, tar_ref

from conftest import SAMPLE


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_real_tricky_files_get_the_expected_status():
    with open(SAMPLE / "EXPECTED.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source_folder"] == "tricky"]
    assert len(rows) == 12
    for r in rows:
        d = decode((SAMPLE / "tricky" / r["file"]).read_bytes())
        assert d.status == r["expect"], (r["file"], d.status, d.detail)
        if d.status == "ok":
            assert d.rgb.dtype == np.uint8 and d.rgb.ndim == 3 and d.rgb.shape[2] == 3


def test_exif_orientation_applied_and_both_sizes_recorded():
    im = Image.new("RGB", (40, 20), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    d = decode(_bytes(im, "JPEG", exif=exif))
    assert d.status == "ok" and (d.raw_width, d.raw_height) == (40, 20) and (d.width, d.height) == (20, 40)
    assert d.rgb.shape == (40, 20, 3) and d.orientation == 6


def test_sixteen_bit_pngs_rescaled_not_clipped():
    a = decode(_bytes(Image.fromarray(np.full((4, 4), 40000, np.uint16)), "PNG"))
    b = decode(_bytes(Image.fromarray(np.full((4, 4), 50000, np.uint16)), "PNG"))
    assert a.status == b.status == "ok"
    assert int(a.rgb[0, 0, 0]) == round(40000 / 65535 * 255) and int(b.rgb[0, 0, 0]) == round(50000 / 65535 * 255)
    assert "bit_depth=16" in a.notes


def test_cmyk_normalised_to_rgb_with_mode_recorded():
    d = decode(_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert d.status == "ok" and d.mode == "CMYK" and d.rgb.shape == (16, 16, 3)
    assert d.rgb[..., 0].mean() > 200 and d.rgb[..., 1].mean() < 60  # red, not garbage


def test_transparent_pixels_composited_on_fixed_background():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    d = decode(_bytes(im, "PNG"))
    assert d.rgb[0, 0].tolist() == [255, 255, 255]


def test_truncated_jpeg_is_truncated_not_a_crash():
    data = _bytes(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    d = decode(data[: int(len(data) * 0.6)])
    assert d.status == "truncated"


def test_header_above_pixel_limit_is_too_large_without_decoding():
    data = _bytes(Image.new("L", (2000, 1000)), "PNG")
    d = decode(data, max_pixels=1_000_000)
    assert d.status == "too_large" and d.rgb is None and (d.width, d.height) == (2000, 1000)


def test_missing_and_empty_and_not_an_image():
    assert decode(None).status == "missing"
    assert decode(b"").status == "zero_size"
    assert decode(b"hello, not an image").status == "not_an_image"


def test_tar_reference_reads_member_bytes(tmp_path):
    import tarfile

    payload = b"\x89PNG fake"
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        ti = tarfile.TarInfo("k/0.png")
        ti.size = len(payload)
        tf.addfile(ti, io.BytesIO(payload))
    with tarfile.open(tmp_path / "s.tar") as tf:
        m = tf.getmember("k/0.png")
        ref = tar_ref(tmp_path / "s.tar", m.name, m.offset_data, m.size)
    assert read_ref(ref) == payload
    assert read_ref(str(tmp_path / "nope.jpg")) is None
