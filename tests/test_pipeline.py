"""End to end on the bundled real sample: the facts issue #2 asks for."""
from __future__ import annotations

import collections
import hashlib
import json

import pyarrow.parquet as pq
import pytest

from tests.conftest import SAMPLE

pytestmark = pytest.mark.slow


def _members(by_file, folder: str, file: str):
    key = f"{folder}/{file}"
    assert key in by_file, f"{key} not ingested"
    return by_file[key]


def test_accounting_every_row_kept_removed_or_rejected(sample_ws, sample_db):
    ws, result = sample_ws
    s = result["summary"]
    assert s["input_rows"] == s["kept"] + s["removed"] + s["rejected"]
    # 29 photos + 525 fondant + 74 near-dup + 12 tricky files + 11 clip-retrieval members + 1 nemo sample
    assert s["input_rows"] == 29 + 525 + 74 + 12 + 11 + 1
    n_dec = sample_db.execute("SELECT count(*), count(DISTINCT sample_id) FROM decisions").fetchall()[0]
    assert n_dec[0] == n_dec[1] == s["kept"] + s["removed"]
    # every removed row has at least one reason
    assert sample_db.execute("SELECT count(*) FROM decisions WHERE NOT keep AND len(reasons) = 0").fetchall()[0][0] == 0


def test_fondant_byte_identical_groups_one_cluster_one_keeper(by_file, expected, sample_db):
    groups = collections.defaultdict(list)
    for e in expected:
        if e["group"].startswith("fondant:"):
            groups[e["group"]].append(_members(by_file, e["source_folder"], e["file"])[0])
    assert sorted(len(g) for g in groups.values()) == [2, 3, 3, 3, 4, 7, 10, 17, 17]
    for g, rows in groups.items():
        cids = {r["cluster_id"] for r in rows}
        assert len(cids) == 1 and None not in cids, g
        cid = cids.pop()
        keepers = sample_db.execute(
            "SELECT count(*) FROM clusters WHERE cluster_id = ? AND is_keeper", [cid]
        ).fetchall()[0][0]
        assert keepers == 1
        # the final decision: exactly one distinct keeper id for the whole cluster
        assert len({r["keeper"] for r in rows}) == 1


def test_exact_copies_across_folders_and_shards_cluster(by_file, expected):
    for prefix in ("data-juicer-exact:", "clip-retrieval:"):
        groups = collections.defaultdict(set)
        for e in expected:
            if e["group"].startswith(prefix):
                for r in _members(by_file, e["source_folder"], e["file"]):
                    groups[e["group"]].add(r["cluster_id"])
        assert groups, prefix
        for g, cids in groups.items():
            assert len(cids) == 1 and None not in cids, (g, cids)


def test_clip_retrieval_repeats_are_separate_samples(sample_db):
    # same member name in two shards: identity is (shard, key), never merged
    n = sample_db.execute(
        "SELECT count(*) FROM samples s JOIN sources o USING (source_id) WHERE o.name = 'clip-retrieval' AND s.key = '123_456'"
    ).fetchall()[0][0]
    assert n == 2


@pytest.mark.parametrize(
    "group_files",
    [
        ["near-dup/imagededup/base_images/ukbench00120.jpg", "near-dup/imagededup/mixed_images/ukbench00120_resize.jpg",
         "near-dup/imagededup/ukbench00120_gray.jpg"],
        # resize_center_crop.jpg is not among them: see test_known_misses_at_the_defaults
        ["near-dup/img2dataset-resize/original.png"]
        + [f"near-dup/img2dataset-resize/{f}" for f in (
            "blurred.png", "resize_border.jpg", "resize_keep_ratio.jpg",
            "resize_keep_ratio_largest.jpg", "resize_no.jpg")],
        ["near-dup/pillow-variants/hopper.png"]
        + [f"near-dup/pillow-variants/hopper.{e}" for e in ("jpg", "webp", "bmp", "gif", "tif")]
        + ["near-dup/pillow-variants/hopper_gray.jpg", "near-dup/pillow-variants/hopper_resized.gif"]
        + [f"near-dup/pillow-variants/hopper_orientation_{k}.{e}" for k in range(2, 9) for e in ("jpg", "webp")],
    ],
    ids=["ukbench00120", "img2dataset-resize", "hopper"],
)
def test_resize_reencode_gray_orientation_variants_join_original(by_file, group_files):
    cids = {r["cluster_id"] for f in group_files for r in by_file[f]}
    assert len(cids) == 1 and None not in cids, {f: by_file[f][0]["cluster_id"] for f in group_files}


def test_horizontal_flip_joins_its_original_through_the_mirror_phash(by_file, sample_db):
    flip = by_file["near-dup/imagededup/mixed_images/ukbench00120_hflip.jpg"][0]
    base = by_file["near-dup/imagededup/base_images/ukbench00120.jpg"][0]
    assert flip["cluster_id"] is not None and flip["cluster_id"] == base["cluster_id"]
    (signals,) = sample_db.execute("SELECT signals FROM cluster_stats WHERE cluster_id = ?", [flip["cluster_id"]]).fetchall()[0]
    assert "phash_mirror" in signals


def test_former_misses_join_through_verified_local_features(by_file, sample_db):
    """The two copies the old defaults missed (pHash and a whole-image ImageNet embedding):
    img2dataset's resize_mode=center_crop (a crop, pHash 12 bits; the SSCD-family descriptor
    joins it) and ukbench00120's 90° rotation (a ``verified`` edge: SIFT + RANSAC covering
    most of the picture, curate.stages.dedup.containment)."""
    for copy, orig, signal in (
            ("near-dup/img2dataset-resize/resize_center_crop.jpg", "near-dup/img2dataset-resize/original.png", "embedding"),
            ("near-dup/imagededup/mixed_images/ukbench00120_rotation.jpg",
             "near-dup/imagededup/base_images/ukbench00120.jpg", "verified")):
        c, o = by_file[copy][0], by_file[orig][0]
        assert c["cluster_id"] is not None and c["cluster_id"] == o["cluster_id"], copy
        (signals,) = sample_db.execute("SELECT signals FROM cluster_stats WHERE cluster_id = ?", [c["cluster_id"]]).fetchall()[0]
        assert signal in signals, (copy, signals)


def test_small_badges_join_only_when_they_show_the_same_picture(by_file):
    """88 × 31 badges: two byte groups of the "Powered by MediaWiki" badge (one picture, encoded
    twice) join through the pHash (from 24 px); "CC BY" and "CC BY-SA" (different pictures,
    cosine 0.94 with sscd_distilled) stay apart — embedding edges start at 32 px."""
    def cluster(name):
        (row,) = by_file[f"fondant-cc25m/images/{name}"][:1]
        return row["cluster_id"]

    assert cluster("0_57.jpg") is not None and cluster("0_57.jpg") == cluster("0_260.jpg")  # MediaWiki
    assert cluster("0_46.jpg") != cluster("0_55.jpg")  # CC BY, CC BY-SA


def test_no_cluster_mixes_two_scikit_image_photos(by_file):
    clusters = collections.defaultdict(set)
    for f, rows in by_file.items():
        if f.startswith("photos/skimage_"):
            for r in rows:
                if r["cluster_id"] is not None:
                    clusters[r["cluster_id"]].add(f)
    assert all(len(v) == 1 for v in clusters.values()), clusters


def test_corrupt_and_truncated_images_removed_with_reason(by_file):
    cases = {
        "tricky/truncated_jpeg.jpg": "truncated",
        "tricky/truncated_image.png": "truncated",
        "tricky/corrupt_ukbench09268.jpg": "not_an_image",
        "near-dup/imagededup/mixed_images/ukbench09268_corrupt.jpg": "not_an_image",
        "tricky/decompression_bomb.gif": "too_large",
    }
    for f, status in cases.items():
        (r,) = by_file[f]
        assert r["status"] == status, f
        assert not r["keep"] and f"image:{status}" in r["reasons"], r
    # the run went on: the good tricky files are decoded
    for f in ("tricky/pil_sample_cmyk.jpg", "tricky/hopper_orientation_6.jpg", "tricky/chi.gif", "tricky/i_trns.png"):
        assert by_file[f][0]["status"] == "ok", f


def test_outputs_contract(sample_ws):
    ws, result = sample_ws
    out = ws / "out"
    man = pq.read_table(out / "manifest.parquet")
    for col in ("sample_id", "url", "caption", "width", "height", "source", "image_ref"):
        assert col in man.column_names
    assert man.num_rows == result["summary"]["kept"]
    ids = man.column("sample_id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    import csv

    with open(out / "removals" / "all.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0])[:5] == ["sample_id", "url", "reasons", "cluster_id", "keeper_sample_id"]
    assert len(rows) == result["summary"]["removed"]
    dup = [r for r in rows if r["reasons"] == "duplicate"]
    assert dup and all(r["keeper_sample_id"] and r["keeper_sample_id"] != r["sample_id"] for r in dup)
    s = json.loads((out / "summary.json").read_text())
    for k in ("input_rows", "kept", "removed", "rejected", "clusters", "reasons"):
        assert k in s
    html = (out / "report" / "index.html").read_text()
    assert "data:image/jpeg;base64," in html and "http-equiv=\"Content-Security-Policy\"" in html
    assert "<script" not in html.lower()
    # partial copies, located: the report lists the containment rows with their regions and thumbnails
    rep = json.loads((out / "report" / "report.json").read_text())
    assert rep["containment"] and all(len(r["bbox"]) == 4 and r["inliers"] >= 20 for r in rep["containment"])
    assert "Partial copies (containment)" in html and f"<b>{rep['containment'][0]['a']}</b>" in html


def test_manifest_readable_by_hf_datasets(sample_ws):
    import datasets

    ws, result = sample_ws
    ds = datasets.load_dataset("parquet", data_files=str(ws / "out" / "manifest.parquet"), split="train",
                               cache_dir=str(ws / "hf-cache"))
    assert ds.num_rows == result["summary"]["kept"]
    assert {"url", "caption"} <= set(ds.column_names)


def test_second_run_reexecutes_nothing_and_outputs_identical(sample_ws):
    from curate import api

    ws, _ = sample_ws
    files = sorted(p for p in (ws / "out").rglob("*") if p.is_file())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    res = api.run(ws, SAMPLE / "curate.yaml")
    assert all(st["skipped"] for st in res["stages"]), [st["stage"] for st in res["stages"] if not st["skipped"]]
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert before == after
    assert mtimes == {p: p.stat().st_mtime_ns for p in files}


def test_status_json_lists_every_stage(sample_ws):
    from click.testing import CliRunner

    from cli import main

    ws, _ = sample_ws
    r = CliRunner().invoke(main, ["--workspace", str(ws), "status", "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert set(st) == {"ingest", "hash", "embed", "dedup", "flag", "export", "report"}
    assert all(v["status"] == "ok" for v in st.values())
    assert st["ingest"]["counters"]["total_samples"] == 652
    assert st["dedup"]["counters"]["clusters"] >= 9


def test_cluster_and_caption_statistics_in_catalog_and_summary(sample_ws, sample_db):
    ws, result = sample_ws
    s = result["summary"]
    n = sample_db.execute("SELECT count(*), sum(cluster_size) FROM cluster_stats").fetchall()[0]
    assert n[0] == s["clusters"]["count"] and n[1] == s["clusters"]["samples_in_clusters"]
    top = s["clusters"]["top"][0]
    assert top["size"] == s["clusters"]["largest"] and top["keeper_sample_id"] is not None
    # the byte-identical fondant groups are joined by sha256 at least
    assert sum(v for k, v in s["clusters"]["by_signals"].items() if "sha256" in k) >= 9
    c = s["captions"]
    assert c["captioned"] > 300 and c["repeated_captions"] >= 1 and c["largest_caption_group"] >= 2


def test_dedup_after_shuffling_storage_order_gives_identical_clusters_and_keepers(sample_ws, tmp_path):
    """Physical order of hashes and embedding rows (batch order) must not change any decision."""
    import shutil

    import duckdb
    import numpy as np

    from curate import api
    from curate.store.embeddings import list_parts

    ws, _ = sample_ws
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    con = duckdb.connect(str(copy / "catalog.duckdb"))
    before = con.execute("SELECT sample_id, cluster_id, is_keeper FROM clusters ORDER BY sample_id").fetchall()
    for table in ("images", "embeddings"):
        con.execute(f"CREATE TABLE _t AS SELECT * FROM {table} ORDER BY hash(sample_id * 7919)")
        con.execute(f"DELETE FROM {table}")
        con.execute(f"INSERT INTO {table} SELECT * FROM _t")
        con.execute("DROP TABLE _t")
    con.close()
    rng = np.random.default_rng(1)
    for folder in (copy / "embeddings").iterdir():
        for num in list_parts(folder):
            ids_p, vec_p = folder / f"part-{num:05d}.ids.npy", folder / f"part-{num:05d}.npy"
            ids, vecs = np.load(ids_p), np.load(vec_p)
            perm = rng.permutation(len(ids))
            np.save(ids_p, ids[perm])
            np.save(vec_p, vecs[perm])
    api.run_one(copy, "dedup", api.workspace_config(copy, None), force=True)
    con = duckdb.connect(str(copy / "catalog.duckdb"), read_only=True)
    after = con.execute("SELECT sample_id, cluster_id, is_keeper FROM clusters ORDER BY sample_id").fetchall()
    assert after == before and len(before) > 100
