"""Ingest keeps the meaning of what it reads (issue #17): img2dataset's own semantics (its
``sha256`` is the original download's, its ``status`` says why a row has no image, a shard
whose images are gone), duplicate keys, list captions, metadata sizes that disagree with the
decoded image, formats curate cannot decode. Every row ends kept, removed or rejected with
its reason."""
from __future__ import annotations

import csv
import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import api
from curate.config import RunConfig
from curate.media.images import decode
from tests.conftest import query, write_tar

FAST = {"dedup": {"sha256": False, "phash_max_distance": None, "embedding_min_cosine": None, "containment": False},
        "flag": {"packs": []}}


def _cfg(tmp_path, sources, **sections) -> RunConfig:
    cfg = RunConfig.model_validate({"sources": sources, **FAST, **sections})
    cfg.base_dir = str(tmp_path)
    return cfg


def _img(i: int, fmt: str = "JPEG", size=(24, 16)) -> bytes:
    """A small picture of its own (stripes at a per-index angle and colour)."""
    import numpy as np
    from PIL import Image

    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    a = ((xx * (i + 1) + yy * (3 * i + 2)) % 11 < 5).astype(np.uint8)
    rgb = np.stack([a * (40 + 17 * i % 200), (1 - a) * (90 + 29 * i % 160), a * 255], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, fmt)
    return buf.getvalue()


def _i2d_meta(key: str, status: str = "success", err: str | None = None, *, orig: bytes | None, w=24, h=16):
    """One img2dataset metadata row: ``sha256`` of the ORIGINAL download (img2dataset's
    ``compute_hash``), not of the re-encoded file it stores."""
    ok = status == "success"
    return {"url": f"https://img.example/{key}.jpg", "caption": f"picture {key}", "key": key, "status": status,
            "error_message": err, "width": w if ok else None, "height": h if ok else None,
            "original_width": 640 if ok else None, "original_height": 480 if ok else None, "exif": None,
            "sha256": hashlib.sha256(orig).hexdigest() if ok and orig is not None else None}


def _i2d_shard(folder, rows: list[dict], images: dict[str, bytes], stem: str = "00000", tar: bool = True) -> None:
    """An img2dataset output shard as img2dataset's webdataset writer makes it: ``NNNNN.tar``
    (jpg + txt + json of the successful rows only), ``NNNNN.parquet`` (every row) and
    ``NNNNN_stats.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
        ("error_message", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
        ("original_width", pa.int64()), ("original_height", pa.int64()), ("exif", pa.string()),
        ("sha256", pa.string())])), folder / f"{stem}.parquet")
    if tar:
        members = []
        for r in rows:
            if r["key"] in images:
                members += [(f"{r['key']}.jpg", images[r["key"]]), (f"{r['key']}.txt", r["caption"].encode()),
                            (f"{r['key']}.json", json.dumps(r).encode())]
        write_tar(folder / f"{stem}.tar", members)
    n_ok = sum(r["status"] == "success" for r in rows)
    (folder / f"{stem}_stats.json").write_text(json.dumps(
        {"count": len(rows), "successes": n_ok, "failed_to_download": len(rows) - n_ok, "failed_to_resize": 0,
         "status_dict": {"success": n_ok}}))


def _rows_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def i2d_ws(tmp_path_factory):
    """img2dataset outputs made with img2dataset's defaults (every stored JPEG re-encoded, so no
    stored file has the ``sha256`` of its row), a failed download, a corrupted member, a
    duplicated key, a shard whose tar is gone, and the same shard read as a webdataset."""
    tmp = tmp_path_factory.mktemp("i2d")
    images, rows = {}, []
    for i in range(6):
        key = f"00000{i:04d}"
        original = _img(i, "PNG", (64, 48))  # what was downloaded
        images[key] = _img(i)  # what img2dataset stored: resized and re-encoded as JPEG
        rows.append(_i2d_meta(key, orig=original))
    images["000000005"] = images["000000005"][: len(images["000000005"]) // 2]  # a corrupted member
    rows.append(_i2d_meta("000000006", "failed_to_download", "HTTP Error 404: Not Found", orig=None))
    rows.append(_i2d_meta("000000000", orig=b"another download"))  # a key the shard already has
    _i2d_shard(tmp / "out", rows, images)
    gone = [_i2d_meta(f"00000{i:04d}", orig=_img(i + 40, "PNG")) for i in range(3)]
    _i2d_shard(tmp / "gone", gone, {}, tar=False)
    ws = tmp / "ws"
    cfg = _cfg(tmp, [{"name": "i2d", "img2dataset": "out"}, {"name": "gone", "img2dataset": "gone"},
                     {"name": "wds", "webdataset": "out/00000.tar"}])
    api.run_one(ws, "export", cfg)
    return ws


def test_img2dataset_sha256_is_the_original_downloads_hash_not_an_integrity_check(i2d_ws):
    reasons = {r["reasons"] for r in _rows_csv(i2d_ws / "out" / "removals" / "all.csv")}
    assert not any("sha256_mismatch" in r for r in reasons)
    kept = pq.read_table(i2d_ws / "out" / "manifest.parquet").to_pylist()
    # five decodable downloads in the img2dataset unit, the same five read as a webdataset
    assert sorted(r["key"] for r in kept) == sorted([f"00000{i:04d}" for i in range(5)] * 2)
    # img2dataset's hash is kept as metadata (the original download), never compared
    extra = query(i2d_ws, "SELECT sha256_meta, json_extract_string(extra, '$.sha256') FROM samples s "
                          "JOIN sources o USING (source_id) WHERE o.name IN ('i2d', 'wds') AND s.key = '000000001'")
    assert extra and all(m is None and len(x) == 64 for m, x in extra)


def test_img2dataset_failed_and_corrupted_rows_are_removed_with_their_reason(i2d_ws):
    rem = {(r["source"], r["reasons"], r["image_detail"]) for r in _rows_csv(i2d_ws / "out" / "removals" / "all.csv")}
    i2d = {x for x in rem if x[0] == "i2d"}
    assert ("i2d", "image:missing", "img2dataset failed_to_download: HTTP Error 404: Not Found") in i2d
    assert any(r == "image:truncated" or r == "image:decode_error" for _, r, _ in i2d)


def test_duplicate_key_in_an_img2dataset_shard_gets_no_image_of_its_own(i2d_ws):
    rows = query(i2d_ws, "SELECT s.source_row, s.notes, s.image_ref, i.detail FROM samples s JOIN sources o "
                         "USING (source_id) LEFT JOIN images i USING (sample_id) WHERE o.name = 'i2d' AND s.key = "
                         "'000000000' ORDER BY s.source_row")
    assert [r[0] for r in rows] == [0, 7]
    assert rows[0][1] == [] and not rows[0][2].startswith("missing:")
    assert rows[1][1] == ["duplicate_key(key): '000000000' also at source row 0"]
    assert rows[1][2].startswith("missing:") and "duplicate key" in rows[1][3]


def test_img2dataset_shard_without_its_tar_gives_every_row_a_reason(i2d_ws):
    rows = query(i2d_ws, "SELECT i.status, i.detail FROM samples s JOIN sources o USING (source_id) "
                         "JOIN images i USING (sample_id) WHERE o.name = 'gone'")
    assert len(rows) == 3
    assert all(st == "missing" and d.startswith("missing_shard: ") and "00000.tar" in d for st, d in rows)
    notes = query(i2d_ws, "SELECT notes FROM sources WHERE name = 'gone'")[0][0]
    assert "missing_shard" in notes


def test_every_row_ends_kept_removed_or_rejected(i2d_ws):
    summary = json.loads((i2d_ws / "out" / "summary.json").read_text())
    c = summary.get("counts", summary)
    n_rows = query(i2d_ws, "SELECT sum(n_rows) FROM sources")[0][0]
    assert n_rows == 8 + 3 + 6
    assert c["input_rows"] == n_rows == c["kept"] + c["removed"] + c["rejected"]


def test_duplicate_keys_in_a_metadata_file_are_kept_with_a_note(tmp_path):
    pq.write_table(pa.table({"url": [f"https://a.example/{i}.jpg" for i in range(4)],
                             "caption": ["a", "b", "c", "d"], "key": ["k1", "k2", "k1", "k1"]}), tmp_path / "m.parquet")
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet", "schema": "url_caption"}]))
    rows = query(ws, "SELECT source_row, key, notes FROM samples ORDER BY source_row")
    assert [(r[0], r[1]) for r in rows] == [(0, "k1"), (1, "k2"), (2, "k1"), (3, "k1")]
    assert [r[2] for r in rows] == [[], [], ["duplicate_key(key): 'k1' also at source row 0"],
                                    ["duplicate_key(key): 'k1' also at source row 0"]]


def test_list_captions_keep_the_first_non_empty_one_with_a_note(tmp_path):
    caps = pa.array([["a cat", "on a mat"], [], None, ["", " ", "second"], ["only"]], pa.list_(pa.string()))
    pq.write_table(pa.table({"url": [f"https://a.example/{i}.jpg" for i in range(5)], "caption": caps}),
                   tmp_path / "m.parquet")
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet"}]))
    rows = query(ws, "SELECT caption, notes FROM samples ORDER BY source_row")
    assert rows == [("a cat", ["caption_list(caption): 2 captions; kept the first non-empty"]),
                    ("", []), (None, []),
                    ("second", ["caption_list(caption): 3 captions; kept the first non-empty"]),
                    ("only", [])]


def test_list_caption_in_a_webdataset_json_sidecar(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.jpg", _img(1)), ("a.json", json.dumps({"caption": ["x", "y"]}).encode()),
                                   ("b.jpg", _img(2)), ("b.json", json.dumps({"caption": []}).encode())])
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": "s.tar"}]))
    rows = query(ws, "SELECT caption, notes FROM samples ORDER BY source_row")
    assert rows == [("x", ["caption_list(caption): 2 captions; kept the first non-empty"]), ("", [])]


def test_metadata_size_that_disagrees_with_the_decoded_image_is_noted(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(_img(i, size=(24, 16)))
    pq.write_table(pa.table({"url": [f"https://a.example/{i}.jpg" for i in range(3)], "caption": ["a", "b", "c"],
                             "width": [24, 16, 240], "height": [16, 24, 160], "file": [f"{i}.jpg" for i in range(3)]}),
                   tmp_path / "m.parquet")
    ws = tmp_path / "ws"
    api.run_one(ws, "export", _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet", "images": "img"}]))
    kept = {r["source_row"]: r["notes"] for r in pq.read_table(ws / "out" / "manifest.parquet").to_pylist()}
    assert kept[0] == []
    assert kept[1] == ["size_mismatch(width,height): metadata 16x24, decoded 24x16"]
    assert kept[2] == ["size_mismatch(width,height): metadata 240x160, decoded 24x16"]


def test_svg_heic_and_avif_are_unsupported_formats_not_not_an_image():
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>'
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert (decode(svg).status, decode(svg).detail.split(":")[0]) == ("unsupported_format", "unsupported_format(svg)")
    assert decode(b"  <svg width='1'/>").status == "unsupported_format"
    assert decode(heic).status == "unsupported_format" and decode(heic).format == "HEIC"
    assert decode(b"<html><body>404</body></html>").status == "not_an_image"


def test_svg_and_heic_files_in_a_folder_are_removed_as_unsupported_format(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    (tmp_path / "img" / "b.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    (tmp_path / "img" / "c.jpg").write_bytes(_img(3))
    ws = tmp_path / "ws"
    api.run_one(ws, "export", _cfg(tmp_path, [{"name": "f", "images": "img"}]))
    rem = {r["image_ref"].rsplit("/", 1)[-1]: (r["reasons"], r["image_detail"])
           for r in _rows_csv(ws / "out" / "removals" / "all.csv")}
    assert rem["a.svg"][0] == "image:unsupported_format" and rem["a.svg"][1].startswith("unsupported_format(svg)")
    assert rem["b.heic"][0] == "image:unsupported_format" and rem["b.heic"][1].startswith("unsupported_format(heic)")
