"""The shared image loader on real tricky files and generated edge cases (K07–K11)."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from curate.media.images import decode, read_ref, tar_ref

from tests.conftest import SAMPLE


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


# -- every file in shared/data/tricky-images (docs/IMAGES.md is the golden table) -------------

from tests.conftest import SHARED  # noqa: E402

TRICKY = SHARED / "tricky-images"
_needs_shared = pytest.mark.skipif(not (TRICKY / "MANIFEST.csv").is_file(), reason="../shared/data not present")


def _tricky_files():
    if not (TRICKY / "MANIFEST.csv").is_file():
        return []
    from tests.regenerate_images_table import manifest

    return sorted(manifest().items())


@_needs_shared
def test_docs_table_lists_every_tricky_file():
    from tests.regenerate_images_table import DOC, manifest, parse

    assert set(parse(DOC.read_text(encoding="utf-8"))) == set(manifest())


@_needs_shared
@pytest.mark.parametrize("file,cats", _tricky_files(), ids=[f for f, _ in _tricky_files()])
def test_tricky_file_outcome_and_category_rules(file, cats):
    """The loader's outcome equals the file's row in docs/IMAGES.md, and the rule of each of
    the file's categories holds on the pixels (so the golden row cannot hide a wrong result)."""
    from PIL import Image

    from tests.regenerate_images_table import DOC, outcome, parse

    row = parse(DOC.read_text(encoding="utf-8"))[file]
    assert outcome(TRICKY / file) == row, f"{file}: re-run tests/regenerate_images_table.py and review the diff"
    data = (TRICKY / file).read_bytes()
    d = decode(data)
    if d.status != "ok":
        assert d.rgb is None and d.detail
        if "huge_header_or_zero_size" in cats:
            assert d.status in ("too_large", "zero_size", "not_an_image")
        if "truncated_or_corrupt" in cats:
            assert d.status in ("truncated", "not_an_image", "decode_error")
        return
    assert d.rgb.dtype == np.uint8 and d.rgb.ndim == 3 and d.rgb.shape == (d.height, d.width, 3)
    assert d.rgb.flags.c_contiguous
    im = Image.open(io.BytesIO(data))
    if d.orientation in (5, 6, 7, 8):
        assert (d.width, d.height) == (d.raw_height, d.raw_width)
    elif d.raw_width is not None:
        assert (d.width, d.height) == (d.raw_width, d.raw_height)
    if "exif_orientation" in cats and im.mode == "RGB" and d.orientation in range(2, 9):
        from PIL import ImageOps

        im.load()
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert np.array_equal(d.rgb, want)  # the same transpose Pillow documents for the tag
    if "sixteen_bit" in cats and im.mode.startswith("I"):
        assert "bit_depth=16" in d.notes
        raw = np.asarray(im).astype(np.int64)
        opaque = raw != im.info.get("transparency", -1)
        want = (raw * 255 + 32767) // 65535
        assert np.array_equal(d.rgb[..., 0][opaque], want[opaque])  # rescaled, never clipped
        assert (d.rgb[..., 0][~opaque] == 255).all()
    if im.mode in ("RGBA", "LA", "PA", "P", "L", "1", "RGB") and ("transparency" in im.info or "A" in im.mode):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if (alpha == 0).any():  # hidden colours never leak: fully transparent → the background
            assert (d.rgb[alpha == 0] == 255).all()
            assert "alpha_composited" in d.notes
    if "animated" in cats:
        assert any(n.startswith(f"frames={im.n_frames}") for n in d.notes)
        im.seek(0)
    if "grayscale_or_bilevel" in cats:
        assert (d.rgb[..., 0] == d.rgb[..., 1]).all() and (d.rgb[..., 1] == d.rgb[..., 2]).all()


@_needs_shared
def test_orientation_variants_upright_match_the_original():
    """K08 on real files: hopper_orientation_2..8 stored transformed + tag, upright after loading."""
    ref = decode((TRICKY.parent / "near-dup-groups" / "pillow-variants" / "hopper.png").read_bytes()).rgb.astype(int)
    for k in range(2, 9):
        d = decode((TRICKY / "pillow" / f"hopper_orientation_{k}.jpg").read_bytes())
        assert d.orientation == k and d.rgb.shape == ref.shape
        assert np.abs(d.rgb.astype(int) - ref).mean() < 8, k  # JPEG noise only (raw pixels differ by > 40)
    stored = np.asarray(Image.open(TRICKY / "pillow" / "hopper_orientation_6.jpg").convert("RGB")).astype(int)
    assert np.abs(stored - ref).mean() > 30


def test_exif_zero_denominator_rational_and_broken_xmp_keep_pixels_and_orientation():
    """K08: a RATIONAL tag with denominator 0, and a broken XMP packet, never kill the sample."""
    from PIL import TiffImagePlugin

    im = Image.new("RGB", (40, 20), (200, 10, 10))
    ex = Image.Exif()
    ex[0x0112] = 6
    ex[0x011A] = TiffImagePlugin.IFDRational(72, 0)  # XResolution 72/0
    ex[0x829A] = TiffImagePlugin.IFDRational(1, 0)  # ExposureTime 1/0
    d = decode(_bytes(im, "JPEG", exif=ex))
    assert d.status == "ok" and (d.width, d.height) == (20, 40) and d.rgb.shape == (40, 20, 3)
    xmp = b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta><rdf:RDF><rdf:Description tiff:Orientation="6" <<<'
    d = decode(_bytes(im, "JPEG", xmp=xmp))
    assert d.status == "ok" and d.orientation == 6 and (d.width, d.height) == (20, 40)
    d = decode(_bytes(im, "JPEG", xmp=b"\xff\xfe\x00 not xml tiff:Orientation=\"x\""))
    assert d.status == "ok" and d.orientation is None and (d.width, d.height) == (40, 20)


def test_unreadable_exif_block_noted_pixels_kept():
    """K08: an EXIF block cut short. Cut after the orientation entry: rotated, noted. Cut
    inside the IFD: orientation unreadable, unrotated pixels kept, noted. Never a failure."""
    im = Image.new("RGB", (40, 20), (10, 200, 30))
    ex = Image.Exif()
    ex[0x0112] = 6
    ex[0x010E] = "x" * 200  # ImageDescription: its bytes come after the IFD entries
    data = _bytes(im, "JPEG", exif=ex)
    i = data.index(b"Exif\x00\x00")
    seg_len = int.from_bytes(data[i - 2 : i], "big")

    def cut(n: int) -> bytes:  # shorten the APP1 segment by n bytes, keep the JPEG valid
        return data[: i - 2] + (seg_len - n).to_bytes(2, "big") + data[i : i - 2 + seg_len - n] + data[i - 2 + seg_len :]

    d = decode(cut(60))  # the description's bytes are gone
    assert d.status == "ok" and d.orientation == 6 and d.rgb.shape == (40, 20, 3)
    assert any(n.startswith("exif_error") for n in d.notes), d.notes
    d = decode(cut(215))  # the IFD itself is cut: no orientation can be read
    assert d.status == "ok" and d.orientation is None and d.rgb.shape == (20, 40, 3)
    assert any(n.startswith("exif_error: Corrupt EXIF") for n in d.notes), d.notes


def test_lab_and_cmyk_become_rgb_with_mode_recorded():
    """K09: LAB (mid-gray L=128, a=b=0 stored as 128) and CMYK with no ink (white)."""
    d = decode(_bytes(Image.new("LAB", (8, 8), (128, 128, 128)), "TIFF"))
    assert d.status == "ok" and d.mode == "LAB" and np.ptp(d.rgb[0, 0].astype(int)) <= 2 and 100 < d.rgb[0, 0, 0] < 140
    d = decode(_bytes(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG"))
    assert d.status == "ok" and d.mode == "CMYK" and (d.rgb >= 250).all()


def test_sixteen_bit_values_stay_distinct():
    """K10: 40000 and 50000 must not both become 255 (Pillow's convert clips them)."""
    a = decode(_bytes(Image.fromarray(np.full((4, 4), 40000, np.uint16)), "PNG")).rgb[0, 0, 0]
    b = decode(_bytes(Image.fromarray(np.full((4, 4), 50000, np.uint16)), "PNG")).rgb[0, 0, 0]
    assert int(a) == 156 and int(b) == 195
    clipped = np.asarray(Image.open(io.BytesIO(_bytes(Image.fromarray(np.full((4, 4), 40000, np.uint16)), "PNG"))).convert("RGB"))
    assert clipped[0, 0, 0] == 255  # what the loader exists to avoid


def _png_claiming(w: int, h: int) -> bytes:
    """A valid PNG (8-bit gray) of w×h zero pixels; the zlib stream is tiny for zeros."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (w + 1)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_huge_headers_are_too_large_fast_and_memory_bounded(tmp_path):
    """K11: a PNG of 20000×10000 (a few hundred KB) and a JPEG whose SOF claims 65000×65000
    are refused from the header, in a fresh process whose peak memory stays small."""
    import subprocess
    import sys

    png = _png_claiming(20000, 10000)
    assert len(png) < 1_000_000
    jpg = bytearray(_bytes(Image.new("RGB", (64, 48), (1, 2, 3)), "JPEG"))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") + (65000).to_bytes(2, "big")
    (tmp_path / "big.png").write_bytes(png)
    (tmp_path / "big.jpg").write_bytes(bytes(jpg))
    code = (
        "import resource, sys, time; from curate.media.images import decode\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.time(); out = []\n"
        "for f in sys.argv[1:]:\n"
        "    d = decode(open(f, 'rb').read()); out.append(d.status)\n"
        "    d = decode(open(f, 'rb').read(), max_pixels=100_000_000); out.append(d.status)\n"
        "print(out, time.time() - t, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.png"), str(tmp_path / "big.jpg")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    statuses, secs, mb = r.stdout.rsplit(" ", 2)
    # both refused from the header by the default and by a larger (but still exceeded) max_pixels
    assert statuses == "['too_large', 'too_large', 'too_large', 'too_large']"
    assert float(secs) < 5 and int(mb) < 100, r.stdout


def test_truncated_webp_and_gif_are_truncated():
    src = Image.effect_noise((96, 64), 60).convert("RGB")
    for fmt in ("WEBP", "GIF", "PNG", "JPEG"):
        data = _bytes(src, fmt)
        d = decode(data[: int(len(data) * 0.6)])
        assert d.status == "truncated", (fmt, d.status, d.detail)


def test_truncated_jpeg_in_a_shard_next_to_a_valid_one_never_hangs(tmp_path):
    """K07: ingest + hash a webdataset shard holding a JPEG cut to 60% and a valid one, in a
    separate process with a timeout; the bad one is 'truncated', the good one 'ok'."""
    import multiprocessing as mp
    import tarfile

    good = _bytes(Image.effect_noise((120, 80), 40).convert("RGB"), "JPEG")
    bad = _bytes(Image.effect_noise((120, 80), 80).convert("RGB"), "JPEG")
    with tarfile.open(tmp_path / "00000.tar", "w") as tf:
        for name, payload in (("000000.jpg", bad[: int(len(bad) * 0.6)]), ("000000.txt", b"cut"),
                              ("000001.jpg", good), ("000001.txt", b"fine")):
            ti = tarfile.TarInfo(name)
            ti.size = len(payload)
            tf.addfile(ti, io.BytesIO(payload))
    (tmp_path / "c.yaml").write_text("sources:\n  - name: s\n    webdataset: 00000.tar\nhash:\n  workers: 0\n")
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def work():
        import duckdb

        from curate import api

        api.run(tmp_path / "ws", tmp_path / "c.yaml", stages=["ingest", "hash"])
        con = duckdb.connect(str(tmp_path / "ws" / "catalog.duckdb"), read_only=True)
        q.put(con.execute("SELECT s.key, i.status FROM samples s JOIN images i USING (sample_id) ORDER BY 1").fetchall())

    p = ctx.Process(target=work)
    p.start()
    p.join(timeout=60)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "ingest + hash did not finish within 60 s"
    assert q.get(timeout=5) == [("000000", "truncated"), ("000001", "ok")]


def test_max_pixels_above_pillows_bomb_limit_is_honoured_and_limit_restored():
    data = _png_claiming(15000, 15000)[:4096]  # 225M px (above Pillow's 2 × 89.5M bomb limit), pixels cut off
    assert decode(data).status == "too_large"
    before = Image.MAX_IMAGE_PIXELS
    d = decode(data, max_pixels=300_000_000)
    assert d.status == "truncated"  # allowed by the caller: decoding went on until the data ran out
    assert Image.MAX_IMAGE_PIXELS == before


def test_jpeg_cut_inside_its_header_is_truncated():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    assert decode(buf.getvalue()[:200]).status == "truncated"


def test_changing_max_pixels_rehashes_the_images_it_affects(tmp_path):
    from curate import api
    from curate.config import RunConfig

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (300, 200), (9, 9, 9)).save(tmp_path / "imgs" / "big.png")
    Image.new("RGB", (20, 10), (9, 9, 9)).save(tmp_path / "imgs" / "small.png")

    def status(max_pixels):
        cfg = RunConfig.model_validate({"sources": [{"name": "f", "images": "imgs"}], "hash": {"max_pixels": max_pixels}})
        cfg.base_dir = str(tmp_path)
        api.run_one(tmp_path / "ws", "ingest", cfg)
        api.run_one(tmp_path / "ws", "hash", cfg)
        ws = api.open_workspace(tmp_path / "ws", cfg)
        try:
            return dict(ws.q("SELECT s.key, i.status FROM images i JOIN samples s USING (sample_id)"))
        finally:
            ws.close()

    assert status(1_000_000) == {"big.png": "ok", "small.png": "ok"}
    assert status(1000) == {"big.png": "too_large", "small.png": "ok"}
    assert status(1_000_000) == {"big.png": "ok", "small.png": "ok"}


def test_16_bit_rgb_png_is_rescaled_by_high_byte_and_noted():
    import struct
    import zlib

    from curate.media.images import decode

    w, h = 4, 2
    arr = (np.arange(w * h * 3).reshape(h, w, 3) * 4000).astype(">u2")
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    d = decode(png)
    assert d.status == "ok" and any(n.startswith("bit_depth=16") for n in d.notes)
    assert (d.rgb == (arr >> 8).astype(np.uint8)).all()  # rescaled, never clipped at 255


def test_a_decompression_bomb_names_curates_own_pixel_limit():
    """Pillow refuses a header above twice its MAX_IMAGE_PIXELS at open time with its own limit in
    the message; the detail says which curate setting applies (hash.max_pixels)."""
    import struct
    import zlib

    w = h = 20_000  # 4·10⁸ pixels > 2 × Pillow's 89,478,485
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    d = decode(png, max_pixels=1_000_000)
    assert d.status == "too_large" and "max_pixels 1000000" in d.detail and "20000x20000" in d.detail, d.detail
