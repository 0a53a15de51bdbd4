"""Batch pHash: the same 64 bits imagededup computes, from the loader's pixels without flat padding."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curate.media.images import decode, open_image
from curate.media.phash import gray32, hamming, phash_batch, phash_images, phash_with_mirror, to_hex
from curate.media.trim import some_edge_flat, trim_uniform_border
from curate.stages.hash.stage import hash_items, images_schema

from tests.conftest import SAMPLE


def _ordinary_files():
    """Real sample images with nothing the loader treats differently from imagededup
    (no EXIF orientation, no transparency, no 16-bit, no CMYK, format imagededup reads)."""
    out = []
    for p in sorted((SAMPLE / "photos").glob("*")) + sorted((SAMPLE / "near-dup").rglob("*")):
        if not p.is_file() or p.suffix.lower() not in (".jpg", ".png", ".webp", ".bmp", ".gif", ".tif"):
            continue
        try:
            im = Image.open(p)
            if im.format not in ("JPEG", "PNG", "BMP", "MPO", "PPM", "TIFF", "GIF", "WEBP"):
                continue
            if im.getexif().get(0x0112, 1) != 1 or "transparency" in im.info or im.mode not in ("RGB", "L", "P") \
                    or im.size[0] * im.size[1] > 4_000_000:  # keep the test fast
                continue
        except Exception:  # noqa: BLE001 - unreadable files are not "ordinary"
            continue
        out.append(p)
    return out


def _picture(p):
    """The decoded image without its flat padding (the hash stage's trim, curate.media.trim),
    and whether anything was trimmed."""
    im = open_image(p.read_bytes())[1]
    rgb = im.convert("RGB")
    if not some_edge_flat(rgb):
        return im, False
    a = np.asarray(rgb)
    t = trim_uniform_border(a)
    if t.shape == a.shape:
        return im, False
    small = Image.fromarray(np.ascontiguousarray(t))
    return (small if im.mode == "RGB" else small.convert("L")), True


def test_identical_to_imagededup_on_ordinary_real_images(tmp_path):
    """imagededup's pHash bit for bit — of the picture without flat padding (a padded file is
    given to imagededup trimmed, as a lossless PNG)."""
    from imagededup.methods import PHash

    files = _ordinary_files()
    assert len(files) >= 60
    ref = PHash(verbose=False)
    theirs = []
    trimmed = 0
    for k, p in enumerate(files):
        pic, cut = _picture(p)
        if cut:
            trimmed += 1
            p = tmp_path / f"trimmed{k}.png"
            pic.save(p)
        theirs.append(ref.encode_image(image_file=str(p)))
    assert 0 < trimmed < len(files) // 4  # the sample has padded files, most are not
    rows = hash_items([(i, str(p)) for i, p in enumerate(files)], max_pixels=89_478_485)
    ours = [to_hex(r[5]) for r in rows]
    assert [r[1] for r in rows] == ["ok"] * len(files)
    assert ours == theirs


def test_batch_equals_one_at_a_time_and_gray_shortcut_is_exact():
    files = _ordinary_files()[:24]
    ims = [open_image(p.read_bytes())[1] for p in files]
    batch = phash_images(ims)
    single = np.array([phash_images([im])[0] for im in ims], np.uint64)
    assert np.array_equal(batch, single)
    grays = [im for im in ims if im.mode == "L"]
    assert grays, "no gray image among the samples"
    for im in grays:  # resizing L directly == resizing its RGB expansion, then luma
        assert np.array_equal(gray32(im), gray32(im.convert("RGB")))


def test_differs_from_imagededup_only_where_the_loader_is_more_correct():
    from imagededup.methods import PHash

    ref = PHash(verbose=False)
    upright = SAMPLE / "near-dup" / "pillow-variants" / "hopper.jpg"
    turned = SAMPLE / "tricky" / "hopper_orientation_6.jpg"  # stored rotated + EXIF tag 6
    ours_up = phash_images([open_image(upright.read_bytes())[1]])[0]
    ours_turned = phash_images([open_image(turned.read_bytes())[1]])[0]
    theirs_turned = int(ref.encode_image(image_file=str(turned)), 16)
    assert hamming(ours_up, ours_turned) <= 6  # orientation applied: the same picture
    assert hamming(ours_up, theirs_turned) > 20  # imagededup hashes the sideways pixels

    # transparency hiding a pattern: curate hashes what is visible (white), imagededup the hidden pattern
    rng = np.random.default_rng(0)
    rgba = np.dstack([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.zeros((64, 64), np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    ours = phash_images([open_image(buf.getvalue())[1]])[0]
    white = phash_images([Image.new("RGB", (64, 64), (255, 255, 255))])[0]
    theirs = int(ref.encode_image(image_array=np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGBA").convert("RGB"))), 16)
    assert ours == white and theirs != white


def test_hash_layout_msb_first_and_shape_errors():
    g = np.zeros((1, 32, 32), np.uint8)
    g[0, :, :16] = 255  # left half bright: the first row of coefficients carries the signal
    h = int(phash_batch(g)[0])
    bits = format(h, "064b")
    assert bits[0] == "1"  # DC term ≥ median: top-left bit is the most significant
    assert to_hex(h) == f"{h:016x}" and len(to_hex(h)) == 16
    with pytest.raises(ValueError, match="32, 32"):
        phash_batch(np.zeros((2, 8, 8), np.uint8))
    assert phash_batch(np.zeros((0, 32, 32), np.uint8)).shape == (0,)


def test_hash_rows_for_failures_have_no_hash_and_keep_sha():
    rows = hash_items([(1, "/nonexistent/x.jpg"), (2, str(SAMPLE / "tricky" / "truncated_jpeg.jpg")),
                       (3, str(SAMPLE / "photos" / "skimage_coffee.png"))], max_pixels=89_478_485)
    (s1, st1, *_), (s2, st2, _, nb2, sha2, ph2, *_), (s3, st3, _, _, _, ph3, *_) = rows
    assert (st1, st2, st3) == ("missing", "truncated", "ok")
    assert ph2 is None and sha2 and nb2 > 0 and isinstance(ph3, int)
    assert decode((SAMPLE / "photos" / "skimage_coffee.png").read_bytes()).status == "ok"


def test_mirror_hash_is_the_phash_of_the_mirror_image():
    """The hash stage's mirror hash (gray array flipped before the DCT) equals the pHash of the
    mirrored picture, bit for bit: on real images (odd sizes, gray and colour) and on random
    images of random sizes, including ones narrower than 32 px (upscaled)."""
    from PIL import ImageOps

    files = _ordinary_files()
    rows = hash_items([(i, str(p)) for i, p in enumerate(files)], max_pixels=89_478_485)
    ims = [_picture(p)[0] for p in files]
    mirrored = phash_images([ImageOps.mirror(im) for im in ims])
    names = images_schema().names  # the images row, by column name
    assert [r[names.index("phash_mirror")] for r in rows] == mirrored.tolist()
    rng = np.random.default_rng(3)
    for _ in range(40):
        w, h = int(rng.integers(5, 1500)), int(rng.integers(5, 400))
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        g = gray32(im)[None]
        hh, mm = phash_with_mirror(g)
        assert hh[0] == phash_batch(g)[0] and mm[0] == phash_images([ImageOps.mirror(im)])[0], (w, h)
    # a mirror copy is far from the original's hash but identical to its mirror hash
    coffee = open_image((SAMPLE / "photos" / "skimage_coffee.png").read_bytes())[1]
    h0, m0 = phash_with_mirror(gray32(coffee)[None])
    h1, m1 = phash_with_mirror(gray32(ImageOps.mirror(coffee))[None])
    assert hamming(h0[0], h1[0]) > 16 and h1[0] == m0[0] and m1[0] == h0[0]
    with pytest.raises(ValueError, match="32, 32"):
        phash_with_mirror(np.zeros((2, 32, 31), np.uint8))


# -- information score (hash hygiene) -----------------------------------------------------------

def _flat_and_near_flat() -> dict[str, Image.Image]:
    """20 flat or near-flat pictures: single colours, the same with JPEG q30 or ±6 levels of
    noise, placeholders with a little text, a soft gradient."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    out: dict[str, Image.Image] = {}
    for c in [(255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 128, 128), (10, 200, 30)]:
        im = Image.new("RGB", (300, 200), c)
        out[f"solid{c}"] = im
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=30)
        out[f"jpeg30{c}"] = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        noisy = np.clip(np.asarray(im, np.int16) + rng.integers(-6, 7, (200, 300, 3)), 0, 255).astype(np.uint8)
        out[f"noise{c}"] = Image.fromarray(noisy)
    ph = Image.new("RGB", (400, 300), (230, 230, 230))
    ImageDraw.Draw(ph).text((120, 140), "photo no longer available", fill=(120, 120, 120))
    out["placeholder"] = ph
    out["soft_gradient"] = Image.fromarray(np.tile(np.linspace(100, 140, 200)[:, None], (1, 300)).astype(np.uint8)).convert("RGB")
    return out


def test_information_score_is_zero_for_flat_images_and_full_for_real_photos():
    from curate.media.phash import information

    flat = _flat_and_near_flat()
    assert len(flat) == 20
    q = information(np.stack([gray32(im) for im in flat.values()]))
    assert q.dtype == np.int16 and q.shape == (20,)
    scores = dict(zip(flat, q.tolist()))
    assert all(v == 0 for k, v in scores.items() if k.startswith(("solid", "jpeg30"))), scores
    assert all(0 < v < 25 for k, v in scores.items() if k.startswith("noise")), scores  # 7–11
    assert 0 < scores["placeholder"] < 25 and 0 < scores["soft_gradient"] < 25, scores
    # every real photo of the sample has full detail
    photos = sorted((SAMPLE / "photos").iterdir())
    grays = [gray32(open_image(p.read_bytes())[1]) for p in photos if p.suffix in (".png", ".jpg")]
    assert len(grays) >= 5 and information(np.stack(grays)).min() >= 76
    with pytest.raises(ValueError):
        information(np.zeros((2, 16, 16), np.uint8))


def test_flat_images_hash_alike_which_is_why_they_get_no_phash_edges():
    flat = _flat_and_near_flat()
    solid = [im for k, im in flat.items() if k.startswith("solid")]
    assert len({int(h) for h in phash_images(solid)}) == 1  # six colours, one pHash
