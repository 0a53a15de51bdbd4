"""Every published layout and image source ingests: real rows from ../shared/data where a real
file exists, generated files with the published column names and types where none does.

Each test ends with ``export``, which refuses to write unless
``input_rows == kept + removed + rejected``.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import api
from curate.config import RunConfig
from curate.errors import InputError

from curate.stages.ingest.schemas import resolve
from tests.conftest import SHARED, query

META = SHARED / "laion-meta"
pytestmark = pytest.mark.skipif(not META.is_dir(), reason="needs ../shared/data")


#: these tests check what ingest makes of each layout; export runs every stage it needs (hash,
#: embed, dedup, flag), so near-duplicate signals and rule packs are off unless a test sets them
QUIET_DOWNSTREAM = {"flag": {"packs": []}, "dedup": {"phash_max_distance": None, "embedding_min_cosine": None}}


def _cfg(tmp_path, sources, **sections) -> RunConfig:
    cfg = RunConfig.model_validate({"sources": sources, **QUIET_DOWNSTREAM, **sections})
    cfg.base_dir = str(tmp_path)
    return cfg


def _run(tmp_path, sources, stages=("ingest", "export")):
    """Run ``stages``; return (ingest counters, export counters, read-only connection)."""
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, sources)
    out = {st: api.run_one(ws, st, cfg)["counters"] for st in stages}
    return out["ingest"], out.get("export"), duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)


def _real_rows(n: int) -> tuple[list[str], list[str]]:
    """URLs and captions of real LAION-style rows (img2dataset's test_10000.parquet)."""
    t = pq.read_table(META / "img2dataset_test_10000.parquet").slice(0, n)
    return t.column("URL").to_pylist(), t.column("TEXT").to_pylist()


# --------------------------------------------------------------------------- headerless TSV


def test_real_cc3m_tsv_every_row_ingested_with_caption_and_url(tmp_path):
    src = META / "cc3m_Validation_GCC-1.1.0-Validation.tsv"
    ing, exp, con = _run(tmp_path, [{"name": "cc3m", "metadata": str(src)}])
    assert ing["layouts"] == {"cc3m": 1}
    assert exp["input_rows"] == 15833 and exp["rejected"] == 0 and exp["kept"] == 15833
    first = con.execute("SELECT caption, url FROM samples ORDER BY sample_id LIMIT 1").fetchall()[0]
    assert first == ("author : a life in photography -- in pictures",
                     "https://i.pinimg.com/736x/66/01/6c/66016c3ba27c0e04f39e2bd81a934e3e--anita-ekberg-bob-hope.jpg")


def test_cc12m_column_order_detected_from_content_and_bad_lines_rejected(tmp_path):
    lines = (META / "cc3m_Validation_GCC-1.1.0-Validation.tsv").read_bytes().splitlines()[:40]
    swapped = [b"\t".join(reversed(ln.split(b"\t"))) for ln in lines]  # CC12M: url<TAB>caption
    swapped[5] = b"https://only.example/a.jpg\tone caption\textra field"
    swapped[7] = swapped[7] + b" caf\xe9"
    (tmp_path / "cc12m.tsv").write_bytes(b"\n".join(swapped) + b"\n")
    ing, exp, con = _run(tmp_path, [{"name": "cc12m", "metadata": "cc12m.tsv"}])
    assert ing["layouts"] == {"cc12m": 1}
    assert (exp["input_rows"], exp["kept"], exp["rejected"]) == (40, 39, 1)
    assert ing["rejected_by_reason"] == {"malformed_row": 1} and ing["notes_by_code"] == {"invalid_utf8(line)": 1}
    rej = con.execute("SELECT source_row, reason, raw FROM rejects").fetchall()
    assert rej == [(5, "malformed_row: 3 tab-separated fields, expected 2",
                    "https://only.example/a.jpg\tone caption\textra field")]
    cap, url, notes = con.execute("SELECT caption, url, notes FROM samples WHERE source_row = 0").fetchall()[0]
    assert (cap, url) == tuple(lines[0].decode().split("\t")) and notes == []
    note = con.execute("SELECT notes FROM samples WHERE source_row = 7").fetchall()[0][0]
    assert note == ["invalid_utf8(line): replaced with U+FFFD"]


def test_headerless_tsv_with_no_matching_layout_names_the_known_ones(tmp_path):
    (tmp_path / "x.tsv").write_text("a\tb\thttps://a.example/1.jpg\nc\td\thttps://a.example/2.jpg\n")
    with pytest.raises(InputError, match=r"no headerless layout has 3 fields with the URL in field 3; known: .*cc3m"):
        _run(tmp_path, [{"name": "x", "metadata": "x.tsv"}])


# --------------------------------------------------------------------------- parquet layouts


def test_coyo700m_published_columns_and_types(tmp_path):
    urls, caps = _real_rows(20)
    n = len(urls)
    f32 = pa.float32()
    t = pa.table({
        "id": pa.array(range(4_294_967_296, 4_294_967_296 + n), pa.int64()),
        "url": urls, "text": caps,
        "width": pa.array([640] * n, pa.int32()), "height": pa.array([480] * n, pa.int32()),
        "image_phash": ["d5c2a7b8e1f0c3a9"] * n,
        "text_length": pa.array([len(c) for c in caps], pa.int32()),
        "word_count": pa.array([len(c.split()) for c in caps], pa.int32()),
        "num_tokens_bert": pa.array([7] * n, pa.int32()), "num_tokens_gpt": pa.array([7] * n, pa.int32()),
        "num_faces": pa.array([0] * n, pa.int32()),
        "clip_similarity_vitb32": pa.array([0.31] * n, f32), "clip_similarity_vitl14": pa.array([0.27] * n, f32),
        "nsfw_score_opennsfw2": pa.array([0.01] * (n - 1) + [float("nan")], f32),
        "nsfw_score_gantman": pa.array([0.02] * n, f32),
        "watermark_score": pa.array([0.9] + [0.1] * (n - 1), f32),
        "aesthetic_score_laion_v2": pa.array([5.5] * n, f32),
    })
    pq.write_table(t, tmp_path / "coyo.parquet")
    ing, exp, con = _run(tmp_path, [{"name": "coyo", "metadata": "coyo.parquet"}])
    assert ing["layouts"] == {"coyo700m": 1} and exp["input_rows"] == n
    key, sim, punsafe, pwm, aes, extra = con.execute(
        "SELECT key, similarity, punsafe, pwatermark, aesthetic, extra FROM samples ORDER BY sample_id LIMIT 1").fetchall()[0]
    assert key == "4294967296" and round(sim, 4) == 0.31 and round(pwm, 4) == 0.9 and aes == 5.5
    assert json.loads(extra)["image_phash"] == "d5c2a7b8e1f0c3a9"
    assert ing["notes_by_code"] == {"not_finite(punsafe)": 1}


def test_datacomp_published_columns_and_types(tmp_path):
    urls, caps = _real_rows(10)
    n = len(urls)
    t = pa.table({
        "uid": [hashlib.md5(u.encode()).hexdigest() for u in urls],
        "url": urls, "text": caps,
        "original_width": pa.array([800] * n, pa.int64()), "original_height": pa.array([600] * n, pa.int64()),
        "clip_b32_similarity_score": pa.array([0.3] * n, pa.float32()),
        "clip_l14_similarity_score": pa.array([0.28] * n, pa.float32()),
        "face_bboxes": pa.array([[[0.1, 0.2, 0.3, 0.4]]] + [[]] * (n - 1), pa.list_(pa.list_(pa.float64()))),
        "sha256": [hashlib.sha256(u.encode()).hexdigest() for u in urls],
    })
    pq.write_table(t, tmp_path / "00000000.parquet")
    ing, exp, con = _run(tmp_path, [{"name": "dc", "metadata": "*.parquet"}])
    assert ing["layouts"] == {"datacomp": 1} and exp["kept"] == n
    key, w, h, sha, extra = con.execute(
        "SELECT key, width, height, sha256_meta, extra FROM samples ORDER BY sample_id LIMIT 1").fetchall()[0]
    assert key == hashlib.md5(urls[0].encode()).hexdigest() and (w, h) == (800, 600)
    assert sha == hashlib.sha256(urls[0].encode()).hexdigest()
    assert json.loads(extra)["face_bboxes"] == [[0.1, 0.2, 0.3, 0.4]]


def test_laion400m_and_aesthetics_float_sizes(tmp_path):
    urls, caps = _real_rows(6)
    pq.write_table(pa.table({
        "SAMPLE_ID": pa.array(range(6), pa.int64()), "URL": urls, "TEXT": caps,
        "HEIGHT": pa.array([300] * 6, pa.int32()), "WIDTH": pa.array([400] * 6, pa.int32()),
        "LICENSE": ["?"] * 6, "NSFW": ["UNLIKELY"] * 5 + ["NSFW"], "similarity": [0.33] * 6,
    }), tmp_path / "a.parquet")
    pq.write_table(pa.table({
        "URL": urls, "TEXT": caps, "WIDTH": [400.0] * 5 + [400.5], "HEIGHT": [300.0] * 6,
        "similarity": [0.3] * 6, "hash": pa.array(range(6), pa.int64()), "punsafe": pa.array([0.1] * 6, pa.float32()),
        "pwatermark": pa.array([0.2] * 6, pa.float32()), "aesthetic": pa.array([6.5] * 6, pa.float32()),
    }), tmp_path / "b.parquet")
    ing, exp, con = _run(tmp_path, [{"name": "a", "metadata": "a.parquet"}, {"name": "b", "metadata": "b.parquet"}])
    assert ing["layouts"] == {"laion400m": 1, "laion_aesthetics_v2": 1} and exp["input_rows"] == 12
    rows = con.execute("SELECT o.name, s.width, s.nsfw, s.aesthetic FROM samples s JOIN sources o USING (source_id) "
                       "WHERE s.source_row = 5 ORDER BY o.name").fetchall()
    assert rows == [("a", 400, "NSFW", None), ("b", None, None, 6.5)]  # 400.5 never rounds
    assert ing["notes_by_code"] == {"not_integer(width)": 1}


def test_real_fondant_files_both_column_spellings(tmp_path):
    ing, exp, con = _run(tmp_path, [
        {"name": "cc25m", "metadata": str(META / "fondant_cc25m_1000.parquet")},
        {"name": "cc", "metadata": str(META / "fondant_commoncrawl_url_dedup_test_100.parquet")},
    ])
    assert ing["layouts"] == {"fondant_cc": 2}
    assert (exp["input_rows"], exp["rejected"]) == (1100, 0)
    lic = dict(con.execute("SELECT license, count(*) FROM samples WHERE source_id = 1 GROUP BY 1").fetchall())
    assert lic["by"] == 347 and lic["by-nc-nd"] == 242  # counts in PROVENANCE.md
    assert ing["captions_empty"] + ing["captions_missing"] >= 453


def test_real_laion_style_file_metadata_only_every_stage_runs(tmp_path):
    """Metadata without images: hash/embed have nothing to do, dedup/flag/export still work."""
    ing, exp, con = _run(tmp_path, [{"name": "t", "metadata": str(META / "img2dataset_test_10000.parquet")}],
                         stages=("ingest", "hash", "embed", "dedup", "flag", "export"))
    assert ing["layouts"] == {"laion400m": 1}
    assert exp["input_rows"] == 10000 and exp["rejected"] == 1  # the column-shifted row
    assert exp["kept"] + exp["removed"] == 9999
    assert con.execute("SELECT count(*) FROM images").fetchall()[0][0] == 0


# --------------------------------------------------------------------------- images inside tables


def _hf_image_paths():
    d = SHARED / "images-captioned" / "skimage"
    return [d / "astronaut.png", d / "coffee.png", d / "chelsea.png"]


def test_hf_datasets_save_to_disk_and_parquet_image_column(tmp_path):
    import datasets

    # save_to_disk keeps the image paths (no bytes): curate reads a cell's path only inside the
    # dataset's own folder (tests/test_hostile.py), so the images live there
    (tmp_path / "hf" / "images").mkdir(parents=True)
    paths = [shutil.copy(p, tmp_path / "hf" / "images" / p.name) for p in _hf_image_paths()]
    paths = [Path(p) for p in paths]
    ds = datasets.Dataset.from_dict({"image": [str(p) for p in paths], "text": ["astronaut", "coffee", "cat"]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    ing, exp, con = _run(tmp_path, [{"name": "disk", "hf_dataset": "hf"}, {"name": "pq", "metadata": "hf.parquet"}],
                         stages=("ingest", "hash", "export"))
    # the two sources hold the same three images: export runs dedup, which keeps one of each
    assert ing["layouts"] == {"image_text": 2} and exp["input_rows"] == 6
    assert exp["kept"] == 3 and exp["reasons"] == {"duplicate": 3}
    want = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    got = con.execute("SELECT o.name, s.caption, s.image_ref, i.sha256, i.status FROM samples s JOIN sources o USING "
                      "(source_id) JOIN images i USING (sample_id) ORDER BY sample_id").fetchall()
    assert [g[3] for g in got] == want + want and {g[4] for g in got} == {"ok"}
    assert got[0][2].startswith("arrow:0:") and got[3][2].startswith("parquet:0:")
    assert [g[1] for g in got[:3]] == ["astronaut", "coffee", "cat"]


def test_real_data_juicer_list_of_bytes_column(tmp_path):
    src = SHARED / "images-captioned" / "data-juicer" / "demo-dataset-images-bytes.parquet"
    ing, exp, con = _run(tmp_path, [{"name": "dj", "metadata": str(src)}], stages=("ingest", "hash", "export"))
    assert ing["layouts"] == {"image_text": 1} and exp["kept"] == 3
    rows = con.execute("SELECT i.status, i.width > 0, s.caption FROM samples s JOIN images i USING (sample_id) "
                       "ORDER BY sample_id").fetchall()
    assert [r[:2] for r in rows] == [("ok", True)] * 3 and rows[1][2] == "<__dj__image> A bus."
    # the path column travels in extra; the bytes are never copied into the catalog
    assert "image_bytes" not in con.execute("SELECT extra FROM samples LIMIT 1").fetchall()[0][0]


# --------------------------------------------------------------------------- img2dataset outputs


def _img2dataset_output(root, fmt):
    """An img2dataset output folder (shard 00000) built from the real sample_image.parquet:
    both its rows (row 1 carries another sha256, as a re-encoded download does) + one failed download."""
    src = pq.read_table(META / "img2dataset_sample_image.parquet").to_pylist()
    png = (SHARED / "near-dup-groups" / "img2dataset-resize" / "original.png").read_bytes()
    rows = []
    for i, r in enumerate(src):
        rows.append({"url": r["url"], "caption": r["txt"], "key": f"{i:09d}", "status": "success",
                     "error_message": None, "width": 256, "height": 256, "sha256": r["sha256hash"]})
    rows.append({"url": "https://gone.example/x.png", "caption": "gone", "key": f"{2:09d}",
                 "status": "failed_to_download", "error_message": "HTTP Error 404: Not Found",
                 "width": None, "height": None, "sha256": None})
    root.mkdir()
    meta = pa.Table.from_pylist(rows)
    if fmt == "parquet":
        meta = meta.append_column("png", pa.array([png, png, None], pa.binary()))
    pq.write_table(meta, root / "00000.parquet")
    if fmt == "files":
        (root / "00000").mkdir()
        for r in rows[:2]:
            (root / "00000" / f"{r['key']}.png").write_bytes(png)
            (root / "00000" / f"{r['key']}.txt").write_text(r["caption"])
    elif fmt == "webdataset":
        with tarfile.open(root / "00000.tar", "w") as tf:
            for r in rows[:2]:
                for ext, data in (("png", png), ("txt", r["caption"].encode()), ("json", json.dumps(r).encode())):
                    ti = tarfile.TarInfo(f"{r['key']}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    (root / "00000_stats.json").write_text("{}")


@pytest.mark.parametrize("fmt", ["files", "webdataset", "parquet"])
def test_img2dataset_output_formats_and_sha256_kept_as_the_original_downloads(tmp_path, fmt):
    _img2dataset_output(tmp_path / "out", fmt)
    ing, exp, con = _run(tmp_path, [{"name": "i2d", "img2dataset": "out"}], stages=("ingest", "hash", "export"))
    assert ing["layouts"] == {"img2dataset": 1}
    assert (exp["input_rows"], exp["kept"], exp["removed"]) == (3, 1, 2)
    # img2dataset's sha256 is the hash of the original download (it re-encodes by default): kept in
    # extra, never compared with the stored file. Rows 0 and 1 carry the same bytes: row 1 is an
    # exact duplicate of row 0 (dedup ran)
    assert exp["reasons"] == {"image:missing": 1, "duplicate": 1}
    d = dict(con.execute("SELECT s.source_row, d.reasons FROM decisions d JOIN samples s USING (sample_id)").fetchall())
    assert d == {0: [], 1: ["duplicate"], 2: ["image:missing"]}
    sha = con.execute("SELECT sha256_meta, json_extract_string(extra, '$.sha256') FROM samples WHERE source_row = 1")
    assert sha.fetchall() == [(None, "08dc1f9bc6a55a04882a2cc3ac792fec7030362ddd62990c74b708fe1606ef47")]
    ref = con.execute("SELECT image_ref FROM samples WHERE source_row = 2").fetchall()[0][0]
    assert ref == "missing:img2dataset failed_to_download: HTTP Error 404: Not Found"
    ws = tmp_path / "ws"
    rem = (ws / "out" / "removals" / "all.csv").read_text()
    assert "sha256 in metadata" not in rem and "img2dataset failed_to_download: HTTP Error 404: Not Found" in rem


def test_sha256_verification_on_plain_metadata_with_files(tmp_path):
    """The real sample_image.parquet (img2dataset input with sha256hash) plus the downloaded file."""
    t = pq.read_table(META / "img2dataset_sample_image.parquet")
    t = t.append_column("file", pa.array(["original.png", "original.png"]))
    pq.write_table(t, tmp_path / "m.parquet")
    (tmp_path / "imgs").mkdir()
    shutil.copy(SHARED / "near-dup-groups" / "img2dataset-resize" / "original.png", tmp_path / "imgs")
    ing, exp, _ = _run(tmp_path, [{"name": "m", "metadata": "m.parquet", "images": "imgs"}],
                       stages=("ingest", "hash", "export"))
    assert ing["layouts"] == {"url_caption": 1}
    # both rows name the same file: one is also an exact duplicate of the other (dedup ran)
    assert exp["reasons"] == {"sha256_mismatch": 1, "duplicate": 1} and exp["kept"] == 1


def test_a_known_score_column_beside_another_layout_is_mapped_not_left_in_extra(tmp_path):
    """laion400m's columns plus `punsafe` (no `pwatermark`, so not laion2b_joined): the score
    went into `extra` and every NSFW rule saw an unknown value."""
    pq.write_table(pa.table({"URL": ["https://a.example/1.jpg", "https://a.example/2.jpg"], "TEXT": ["a", "b"],
                             "punsafe": pa.array([0.9, 0.1], pa.float32()), "WIDTH": [10, 20], "HEIGHT": [10, 20],
                             "odd": [1, 2]}), tmp_path / "m.parquet")
    m = resolve(["URL", "TEXT", "punsafe", "WIDTH", "HEIGHT", "odd"], "auto", "m.parquet")
    assert m.layout == "laion400m" and m.columns["punsafe"] == "punsafe" and m.unmapped == ["odd"]
    cfg = RunConfig.model_validate({"sources": [{"name": "m", "metadata": str(tmp_path / "m.parquet")}]})
    api.run_one(tmp_path / "ws", "ingest", cfg)
    assert query(tmp_path / "ws", "SELECT punsafe, extra FROM samples ORDER BY sample_id") == \
        [(pytest.approx(0.9), '{"odd":1}'), (pytest.approx(0.1), '{"odd":2}')]
