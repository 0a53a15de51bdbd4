"""ingest: layouts, casting without silent rounding, rejects with reasons, webdataset identity."""
from __future__ import annotations

import io
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import api
from curate.config import RunConfig
from curate.errors import InputError
from curate.stages.ingest.schemas import Layout, resolve

from tests.conftest import SHARED
from tests.conftest import write_tar


def _cfg(tmp_path, sources, **sections) -> RunConfig:
    cfg = RunConfig.model_validate({"sources": sources, **sections})
    cfg.base_dir = str(tmp_path)
    return cfg


def _ingest(tmp_path, sources):
    """Ingest, then export (which refuses to write unless input_rows == kept + removed + rejected)."""
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, sources)
    api.run_one(ws, "ingest", cfg)
    exp = api.run_one(ws, "export", cfg)["counters"]
    assert exp["input_rows"] == exp["kept"] + exp["removed"] + exp["rejected"]
    import duckdb

    return duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)


def test_laion2b_joined_layout_detected_and_nan_becomes_null(tmp_path):
    t = pa.table({
        "URL": ["https://a.example/1.jpg", "https://a.example/2.jpg", "https://a.example/3.jpg"],
        "TEXT": ["one", "two", None],
        "WIDTH": pa.array([256, 512, 64], pa.int32()),
        "HEIGHT": pa.array([256, 512, 64], pa.int32()),
        "similarity": [0.31, 0.29, 0.4],
        "hash": pa.array([1, 2, 3], pa.int64()),
        "punsafe": pa.array([float("nan"), 0.9, None], pa.float32()),
        "pwatermark": pa.array([0.1, 0.85, 0.2], pa.float32()),
    })
    pq.write_table(t, tmp_path / "part.parquet")
    con = _ingest(tmp_path, [{"name": "l", "metadata": "part.parquet"}])
    assert con.execute("SELECT schema_name FROM sources").fetchall() == [("laion2b_joined",)]
    rows = con.execute("SELECT punsafe, pwatermark, caption, notes FROM samples ORDER BY sample_id").fetchall()
    assert rows[0][0] is None and rows[0][3] == ["not_finite(punsafe): nan stored as NULL"]
    assert math.isclose(rows[1][0], 0.9, rel_tol=1e-6)
    assert rows[2][0] is None and rows[2][3] == []  # NULL stays NULL, no note
    assert rows[2][2] is None  # missing caption stays NULL (not '')


def test_width_that_does_not_fit_integer_is_null_with_note_never_rounded(tmp_path):
    for i, arr in enumerate([pa.array([256], pa.int64()), pa.array([256.5, None], pa.float64()), pa.array(["640"])]):
        n = len(arr)
        pq.write_table(pa.table({"URL": [f"https://x.example/{i}/{k}" for k in range(n)], "TEXT": ["c"] * n,
                                 "WIDTH": arr}), tmp_path / f"f{i}.parquet")
    con = _ingest(tmp_path, [{"name": "m", "metadata": "f*.parquet"}])
    got = dict(con.execute("SELECT url, width FROM samples").fetchall())
    assert got["https://x.example/0/0"] == 256
    assert got["https://x.example/1/0"] is None  # 256.5 never rounds
    assert got["https://x.example/2/0"] == 640
    note = con.execute("SELECT notes FROM samples WHERE url = 'https://x.example/1/0'").fetchall()[0][0]
    assert note == ["not_integer(width): 256.5 does not fit INTEGER; stored NULL"]


def test_case_colliding_columns_are_an_error_naming_both(tmp_path):
    t = pa.Table.from_arrays([pa.array(["https://a/1"]), pa.array(["https://a/2"])], names=["url", "URL"])
    with pytest.raises(InputError, match="'url' and 'URL' differ only in case"):
        resolve(t.column_names, "auto", "f.parquet")


def test_ambiguous_layout_names_candidates():
    lays = {
        "a": Layout(name="a", description="", required=["url"], columns={"url": ["u"]}),
        "b": Layout(name="b", description="", required=["url"], columns={"url": ["u"]}),
    }
    with pytest.raises(InputError, match=r"ambiguous layout, candidates \['a', 'b'\]"):
        resolve(["u"], "auto", "f.parquet", lays)


@pytest.mark.skipif(not (SHARED / "laion-meta").is_dir(), reason="needs ../shared/data")
def test_real_column_shifted_row_is_rejected_with_reason(tmp_path):
    src = SHARED / "laion-meta" / "img2dataset_test_10000.parquet"
    con = _ingest(tmp_path, [{"name": "i2d", "metadata": str(src)}])
    rej = con.execute("SELECT reason, raw FROM rejects").fetchall()
    assert len(rej) == 1
    assert rej[0][0] == "invalid_url: UNLIKELY" and "0.32893747091293335" in rej[0][1]
    n = con.execute("SELECT count(*) FROM samples").fetchall()[0][0]
    assert n == 9999  # every other row survives
    assert con.execute("SELECT n_rows, n_samples, n_rejected FROM sources").fetchall() == [(10000, 9999, 1)]
    import csv

    with open(tmp_path / "ws" / "out" / "rejects.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert [(r["source_row"], r["reason"]) for r in out] == [(str(out[0]["source_row"]), "invalid_url: UNLIKELY")]
    assert "0.32893747091293335" in out[0]["raw"] and out[0]["source"] == "i2d"


def test_webdataset_repeated_member_noted_and_cross_shard_keys_not_merged(tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "JPEG")
    jpg = buf.getvalue()
    (tmp_path / "wds").mkdir()
    write_tar(tmp_path / "wds" / "a.tar", [("000001.jpg", jpg), ("000001.txt", b"a red square"), ("000001.jpg", jpg)])
    write_tar(tmp_path / "wds" / "b.tar", [("000001.jpg", jpg), ("000002.txt", b"caption without image")])
    ws = tmp_path / "ws"
    res = api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": "wds/*.tar"}]))
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT o.uri, s.key, s.caption FROM samples s JOIN sources o USING (source_id) ORDER BY sample_id").fetchall()
    assert [(r[0].rsplit("/", 1)[1], r[1], r[2]) for r in rows] == [("a.tar", "000001", "a red square"), ("b.tar", "000001", None)]
    notes = con.execute("SELECT s.notes FROM samples s JOIN sources o USING (source_id) WHERE o.uri LIKE '%a.tar'").fetchall()
    assert notes == [(["repeated_member(jpg): '000001.jpg' appears again; kept the first"],)]
    assert res["counters"]["notes_by_code"] == {"repeated_member(jpg)": 1}
    assert con.execute("SELECT reason FROM rejects").fetchall() == [("no_url_or_image",)]
    assert res["counters"]["webdataset_keys_in_several_shards"] == 1


def test_webdataset_and_folder_sidecar_json_fields_are_kept_in_extra(tmp_path):
    import json as _json

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, "JPEG")
    meta = {"url": "https://img.example.org/1.jpg", "caption": "green", "sha256": None, "key": "000001",
            "status": "success", "original_width": 640, "similarity": 0.31, "NSFW": "UNLIKELY"}
    (tmp_path / "wds").mkdir()
    write_tar(tmp_path / "wds" / "a.tar", [("000001.jpg", buf.getvalue()), ("000001.json", _json.dumps(meta).encode())])
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.jpg").write_bytes(buf.getvalue())
    (tmp_path / "folder" / "x.json").write_text(_json.dumps({**meta, "url": "https://img.example.org/x.jpg"}))
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": "wds/*.tar"}, {"name": "f", "images": "folder"}]))
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT url, caption, extra FROM samples ORDER BY sample_id").fetchall()
    con.close()
    assert [r[:2] for r in rows] == [("https://img.example.org/1.jpg", "green"), ("https://img.example.org/x.jpg", "green")]
    for r in rows:
        assert _json.loads(r[2]) == {"status": "success", "original_width": 640, "similarity": 0.31, "NSFW": "UNLIKELY"}


def test_changed_input_file_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"URL": ["https://a/1"], "TEXT": ["x"]}), tmp_path / "m.parquet")
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet"}])
    api.run_one(ws, "ingest", cfg)
    pq.write_table(pa.table({"URL": ["https://a/1", "https://a/2"], "TEXT": ["x", "y"]}), tmp_path / "m.parquet")
    with pytest.raises(InputError, match="changed since it was ingested"):
        api.run_one(ws, "ingest", cfg)


def test_workspace_inside_an_input_folder_is_refused(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(InputError, match="inside the workspace|curate never reads its own outputs"):
        api.run_one(tmp_path / "imgs", "ingest", _cfg(tmp_path, [{"name": "f", "images": "imgs"}]))


@pytest.mark.parametrize(
    "columns, layout",
    [
        (["SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "LICENSE", "NSFW", "similarity"], "laion400m"),
        (["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark"], "laion2b_joined"),
        (["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "punsafe", "pwatermark", "AESTHETIC_SCORE", "hash"],
         "laion_aesthetics_v2"),
        (["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark", "aesthetic"],
         "laion_aesthetics_v2"),
        (["url", "caption", "key", "status", "error_message", "width", "height", "original_width",
          "original_height", "exif", "sha256"], "img2dataset"),
        (["id", "alt+text", "url", "license+type", "license+location", "webpage+url", "surt+url", "top+level+domain"],
         "fondant_cc"),
    ],
)
def test_published_layouts_are_detected(columns, layout):
    m = resolve(columns, "auto", "f.parquet")
    assert m.layout == layout
    assert m.columns["url"] in ("URL", "url") and "caption" in m.columns


@pytest.mark.skipif(not (SHARED / "laion-meta").is_dir(), reason="needs ../shared/data")
def test_real_fondant_file_maps_caption_and_license():
    import pyarrow.parquet as pq

    names = pq.ParquetFile(SHARED / "laion-meta" / "fondant_cc25m_1000.parquet").schema_arrow.names
    m = resolve(names, "auto", "fondant")
    assert m.layout == "fondant_cc" and m.columns["caption"] == "alt+text" and m.columns["license"] == "license+type"


def test_invalid_utf8_caption_replaced_with_note_and_file_survives_k05(tmp_path):
    text = pa.array([b"caf\xe9", b"ok"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"URL": ["https://a.example/1", "https://a.example/2"], "TEXT": text}), tmp_path / "u.parquet")
    con = _ingest(tmp_path, [{"name": "u", "metadata": "u.parquet"}])
    rows = con.execute("SELECT caption, notes FROM samples ORDER BY sample_id").fetchall()
    assert rows == [("caf\ufffd", ["invalid_utf8(TEXT): replaced with U+FFFD"]), ("ok", [])]


def test_null_typed_caption_column_and_partial_columns_are_reported_k03_k04(tmp_path):
    pq.write_table(pa.table({"URL": ["https://a.example/1"], "TEXT": pa.array([None], pa.null())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"URL": ["https://a.example/2"], "TEXT": [""], "CATEGORY": ["x"], "blip2_caption1": ["y"]}),
                   tmp_path / "b.parquet")
    ws = tmp_path / "ws"
    res = api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "m", "metadata": "*.parquet"}]))
    c = res["counters"]
    assert c["captions_missing"] == 1 and c["captions_empty"] == 1  # NULL stays distinct from ''
    assert c["columns_only_in_some_files"] == {"m": ["CATEGORY", "blip2_caption1"]}


def test_k02_cast_whatever_the_file_order(tmp_path):
    """The same three files read in reverse order give the same values and notes."""
    arrays = [pa.array([256], pa.int64()), pa.array([256.5, None], pa.float64()), pa.array(["640"])]
    got = []
    for order in (range(3), reversed(range(3))):
        d = tmp_path / f"o{len(got)}"
        d.mkdir()
        for rank, i in enumerate(order):
            arr = arrays[i]
            pq.write_table(pa.table({"URL": [f"https://x.example/{i}/{k}" for k in range(len(arr))],
                                     "TEXT": ["c"] * len(arr), "WIDTH": arr}), d / f"f{rank}.parquet")
        con = _ingest(d, [{"name": "m", "metadata": "f*.parquet"}])
        got.append(sorted(con.execute("SELECT url, width, notes FROM samples").fetchall()))
    assert got[0] == got[1]
    assert ("https://x.example/1/0", None, ["not_integer(width): 256.5 does not fit INTEGER; stored NULL"]) in got[0]


def test_k15_nan_scores_in_three_files_become_null_and_are_counted(tmp_path):
    for i, vals in enumerate([[float("nan"), float("nan")], [None, 0.3], [0.1, 0.99]]):
        pq.write_table(pa.table({"URL": [f"https://k15.example/{i}/{k}" for k in range(2)], "TEXT": ["t", "t"],
                                 "WIDTH": [64, 64], "HEIGHT": [64, 64], "similarity": [0.3, 0.3],
                                 "hash": pa.array([1, 2], pa.int64()), "punsafe": pa.array(vals, pa.float32()),
                                 "pwatermark": pa.array([0.1, 0.1], pa.float32())}), tmp_path / f"p{i}.parquet")
    ws = tmp_path / "ws"
    res = api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "k", "metadata": "p*.parquet"}]))
    assert res["counters"]["notes_by_code"] == {"not_finite(punsafe)": 2}
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FILTER (punsafe IS NULL), count(*) FILTER (punsafe >= 0.5), "
                       "count(*) FILTER (isnan(punsafe)) FROM samples").fetchall() == [(3, 1, 0)]


def _laion_files(folder, n_files, rows):
    """``n_files`` LAION-400M-style parquet files of real URLs/captions (made unique per row)."""
    src = pq.read_table(SHARED / "laion-meta" / "img2dataset_test_10000.parquet")
    urls, caps = src.column("URL").to_pylist(), src.column("TEXT").to_pylist()
    folder.mkdir(exist_ok=True)
    for f in range(n_files):
        idx = [(f * rows + k) % len(urls) for k in range(rows)]
        pq.write_table(pa.table({
            "SAMPLE_ID": pa.array(range(f * rows, (f + 1) * rows), pa.int64()),
            "URL": [f"{urls[i]}?f={f}&r={k}" for k, i in enumerate(idx)], "TEXT": [caps[i] for i in idx],
            "WIDTH": pa.array([512] * rows, pa.int32()), "HEIGHT": pa.array([384] * rows, pa.int32()),
            "similarity": [0.3] * rows,
        }), folder / f"part-{f:05d}.parquet")


CHECKSUM = ("SELECT (SELECT count(*) FROM samples), (SELECT sum(hash(s)) FROM samples s), "
            "(SELECT count(*) FROM rejects), (SELECT sum(hash(r)) FROM rejects r), "
            "(SELECT list(source_id || ':' || uri || ':' || n_rows ORDER BY source_id) FROM sources)")


@pytest.mark.skipif(not (SHARED / "laion-meta").is_dir(), reason="needs ../shared/data")
def test_ingest_killed_with_sigkill_and_rerun_equals_uninterrupted(tmp_path):
    import duckdb
    import os
    import signal
    import subprocess
    import sys
    import yaml

    _laion_files(tmp_path / "meta", 8, 40_000)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"sources": [{"name": "l", "metadata": "meta/*.parquet"}]}))
    env = {k: v for k, v in os.environ.items() if k != "CURATE_QUIET"}
    cmd = [sys.executable, "-m", "curate", "--workspace", str(tmp_path / "killed"), "ingest", "--config",
           str(tmp_path / "c.yaml")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    seen = 0
    for line in proc.stderr:
        if line.startswith("[ingest] part-"):
            seen += 1
            if seen == 4:  # inside the 4th file's transaction
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    con = duckdb.connect(str(tmp_path / "killed" / "catalog.duckdb"))
    partial = con.execute("SELECT count(*), (SELECT count(*) FROM samples) + (SELECT count(*) FROM rejects) "
                          "FROM sources").fetchall()[0]
    con.close()
    assert 0 < partial[0] < 8 and partial[1] == partial[0] * 40_000  # whole files only
    subprocess.run(cmd, check=True, env={**env, "CURATE_QUIET": "1"}, stdout=subprocess.DEVNULL)
    api.run_one(tmp_path / "clean", "ingest", api.workspace_config(tmp_path / "clean", str(tmp_path / "c.yaml")))
    sums = []
    for name in ("killed", "clean"):
        con = duckdb.connect(str(tmp_path / name / "catalog.duckdb"), read_only=True)
        sums.append(con.execute(CHECKSUM).fetchall()[0])
        con.close()
    assert sums[0] == sums[1] and sums[0][0] + sums[0][2] == 320_000


@pytest.mark.skipif(not (SHARED / "laion-meta").is_dir(), reason="needs ../shared/data")
def test_adding_a_file_ingests_only_that_file_and_workspace_outputs_never_inputs(tmp_path):
    data = tmp_path / "data"
    _laion_files(data, 2, 1000)
    ws = data / "ws"  # the workspace lives inside the folder the glob covers
    cfg = _cfg(tmp_path, [{"name": "l", "metadata": "data/**/*.parquet"}])
    api.run_one(ws, "ingest", cfg)
    api.run_one(ws, "export", cfg)  # writes ws/out/manifest.parquet, matched by the glob
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    before = con.execute("SELECT sample_id, url FROM samples ORDER BY sample_id").fetchall()
    con.close()
    _laion_files(tmp_path / "more", 3, 1000)
    (tmp_path / "more" / "part-00002.parquet").rename(data / "part-00002.parquet")
    c = api.run_one(ws, "ingest", cfg)["counters"]
    assert (c["units"], c["units_skipped"], c["samples"]) == (1, 2, 1000)
    assert c["inputs_inside_workspace_skipped"] >= 1 and c["total_samples"] == 3000
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    after = con.execute("SELECT sample_id, url FROM samples ORDER BY sample_id").fetchall()
    assert after[:2000] == before  # earlier samples keep their ids
    assert not con.execute("SELECT * FROM sources WHERE uri LIKE '%/ws/%'").fetchall()


def test_integer_columns_that_overflow_get_notes_not_wraparound(tmp_path):
    pq.write_table(pa.table({
        "URL": ["https://a.example/1", "https://a.example/2"], "TEXT": ["a", "b"],
        "WIDTH": pa.array([640, 3_000_000_000], pa.int64()), "HEIGHT": pa.array([480, 7], pa.uint16()),
        "similarity": [0.3, 0.3], "hash": pa.array([5, 2**63 + 1], pa.uint64()),
        "punsafe": pa.array([0.1, 0.2], pa.float64()), "pwatermark": pa.array([1, 0], pa.int32()),
    }), tmp_path / "o.parquet")
    con = _ingest(tmp_path, [{"name": "o", "metadata": "o.parquet"}])
    rows = con.execute("SELECT width, height, laion_hash, pwatermark, notes FROM samples ORDER BY sample_id").fetchall()
    assert rows[0] == (640, 480, 5, 1.0, [])
    assert rows[1][:4] == (None, 7, None, 0.0)
    assert rows[1][4] == ["not_integer(width): 3000000000 does not fit INTEGER; stored NULL",
                          "not_bigint(laion_hash): 9223372036854775809 does not fit BIGINT; stored NULL"]


def test_source_removed_from_config_leaves_the_catalog_and_manifest(tmp_path):
    for name in ("a", "b"):
        pq.write_table(pa.table({"URL": [f"https://{name}.example/1", f"https://{name}.example/2"], "TEXT": ["x", "y"]}),
                       tmp_path / f"{name}.parquet")
    ws = tmp_path / "ws"
    both = _cfg(tmp_path, [{"name": "a", "metadata": "a.parquet"}, {"name": "b", "metadata": "b.parquet"}])
    api.run_one(ws, "ingest", both)
    only_b = _cfg(tmp_path, [{"name": "b", "metadata": "b.parquet"}])
    c = api.run_one(ws, "ingest", only_b)["counters"]
    assert len(c["units_removed"]) == 1 and c["units_removed"][0].endswith("a.parquet")
    exp = api.run_one(ws, "export", only_b)["counters"]
    assert (exp["input_rows"], exp["kept"]) == (2, 2)
    urls = pq.read_table(ws / "out" / "manifest.parquet").column("url").to_pylist()
    assert urls == ["https://b.example/1", "https://b.example/2"]


def test_bad_files_stop_the_run_or_are_skipped_with_their_reason(tmp_path):
    (tmp_path / "m").mkdir()
    pq.write_table(pa.table({"URL": ["https://ok.example/1"], "TEXT": ["fine"]}), tmp_path / "m" / "a.parquet")
    (tmp_path / "m" / "b.parquet").write_bytes(b"")
    with pytest.raises(InputError, match="b.parquet: not a readable parquet file"):
        api.run_one(tmp_path / "ws1", "ingest", _cfg(tmp_path, [{"name": "m", "metadata": "m/*.parquet"}]))
    cfg = _cfg(tmp_path, [{"name": "m", "metadata": "m/*.parquet"}], ingest={"on_bad_file": "skip"})
    c = api.run_one(tmp_path / "ws2", "ingest", cfg)["counters"]
    assert c["samples"] == 1 and len(c["bad_files"]) == 1
    import duckdb

    con = duckdb.connect(str(tmp_path / "ws2" / "catalog.duckdb"), read_only=True)
    notes = con.execute("SELECT notes FROM sources WHERE uri LIKE '%b.parquet'").fetchall()[0][0]
    con.close()
    assert "bad_file:" in notes and "not a readable parquet file" in notes
    pq.write_table(pa.table({"URL": ["https://ok.example/2"], "TEXT": ["fixed"]}), tmp_path / "m" / "b.parquet")
    c = api.run_one(tmp_path / "ws2", "ingest", cfg)["counters"]  # the fixed file is retried, not "changed"
    assert c["units"] == 1 and c["total_samples"] == 2


def test_truncated_shard_keeps_members_before_the_cut_and_text_sidecars_are_checked(tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, "PNG")
    members = [("k1.png", buf.getvalue()), ("k1.txt", b"\xef\xbb\xbfbom caption"), ("k2.png", buf.getvalue()),
               ("k2.txt", b"caf\xe9 latin1"), ("k3.png", buf.getvalue() * 40)]
    write_tar(tmp_path / "full.tar", members)
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:6000])  # inside k3.png's data
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": "cut.tar"}]))
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT key, caption, notes FROM samples ORDER BY sample_id").fetchall()
    assert rows[0] == ("k1", "bom caption", [])
    assert rows[1] == ("k2", "caf\ufffd latin1", ["invalid_utf8(txt): replaced with U+FFFD"])
    unit_notes = con.execute("SELECT notes FROM sources").fetchall()[0][0]
    assert "truncated_shard: unexpected end of data" in unit_notes
    (tmp_path / "cut2.tar").write_bytes(data[:1240])  # inside the second header
    api.run_one(tmp_path / "ws2", "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": "cut2.tar"}]))
    con = duckdb.connect(str(tmp_path / "ws2" / "catalog.duckdb"), read_only=True)
    assert "no end-of-archive marker after byte 1024" in con.execute("SELECT notes FROM sources").fetchall()[0][0]


def test_negative_sizes_and_hosts_with_spaces(tmp_path):
    pq.write_table(pa.table({"URL": ["https://exa mple.com/a b.jpg", "https://example.com/a b.jpg", "ftp://files.example/x"],
                             "TEXT": ["a", "b", "c"], "WIDTH": ["-5", " 12 ", "1e3"]}), tmp_path / "n.parquet")
    con = _ingest(tmp_path, [{"name": "n", "metadata": "n.parquet"}])
    assert con.execute("SELECT reason FROM rejects").fetchall() == [("invalid_url: https://exa mple.com/a b.jpg",)]
    rows = con.execute("SELECT url, width, notes FROM samples ORDER BY sample_id").fetchall()
    assert rows == [("https://example.com/a b.jpg", 12, []), ("ftp://files.example/x", 1000, [])]
    pq.write_table(pa.table({"URL": ["https://e.example/1"], "TEXT": ["a"], "WIDTH": pa.array([-5], pa.int32())}),
                   tmp_path / "neg.parquet")
    con = _ingest(tmp_path / "x" if (tmp_path / "x").mkdir() or True else None, [{"name": "n", "metadata": str(tmp_path / "neg.parquet")}])
    assert con.execute("SELECT width, notes FROM samples").fetchall() == [(None, ["negative(width): -5 stored as NULL"])]
