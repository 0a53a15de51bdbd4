"""`curate run PATH…`: each input detected as a source, the config written into the workspace,
and the same outputs as a YAML config listing the same inputs with default settings."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cli import main
from curate import api
from curate.errors import InputError
from curate.stages.ingest.detect import detect_sources
from tests.conftest import SAMPLE, query, write_tar


def _jpeg(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path, "JPEG")


def _kinds(srcs):
    return [(s.name, s.kind, s.metadata or s.webdataset or s.img2dataset or s.hf_dataset or s.images, s.images)
            for s in srcs]


def test_each_layout_is_detected(tmp_path):
    i2d = tmp_path / "i2d"
    (i2d / "00000").mkdir(parents=True)
    (i2d / "00000.parquet").write_bytes(b"")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "state.json").write_text("{}")
    (hf / "dataset_info.json").write_text("{}")
    folder = tmp_path / "pics"
    _jpeg(folder / "a" / "x.jpg")
    (folder / "a" / "x.txt").write_text("a caption sidecar, not metadata")
    layout = tmp_path / "laion"
    _jpeg(layout / "img" / "0.jpg")
    (layout / "part.parquet").write_bytes(b"")
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        write_tar(shards / f"{k:05d}.tar", [("k.jpg", b"")])
    (tmp_path / "meta.tsv.gz").write_bytes(b"")
    got = _kinds(detect_sources(["i2d", "hf", "pics", "laion", "shards/{00000..00002}.tar", "shards",
                                 "meta.tsv.gz", "shards/*.tar"], tmp_path))
    assert got == [
        ("i2d", "img2dataset", str(i2d), None),
        ("hf", "hf_dataset", str(hf), None),
        ("pics", "folder", str(folder), str(folder)),
        ("laion", "metadata", str(layout / "*.parquet"), str(layout)),
        ("shards", "webdataset", str(shards / "{00000..00002}.tar"), None),
        ("shards-2", "webdataset", str(shards / "**" / "*.tar"), None),
        ("meta", "metadata", str(tmp_path / "meta.tsv.gz"), str(tmp_path)),  # image files below its folder
        ("shards-3", "webdataset", str(shards / "*.tar"), None),
    ]
    assert _kinds(detect_sources(["s3://bucket/laion/{00000..00009}.parquet"]))[0][:3] == \
        ("laion", "metadata", "s3://bucket/laion/{00000..00009}.parquet")


@pytest.mark.parametrize("arg, message", [
    ("missing", r"input 'missing' does not exist"),
    ("shards/*.parquet", r"matches no file"),
    ("shards/{00000..00004}.tar", r"matches no file|names .* which does not exist"),  # 3 of 5 exist: expanded per name
    ("pics/a/x.jpg", r"is one image file; pass the folder"),
    ("pics/a/*.jpg", r"names image files; pass the folder"),
    ("run.yaml", r"looks like a config file: pass it alone"),
    ("empty", r"holds no image files, metadata files"),
    ("mixed/*", r"several kinds"),
    ("notes.docx", r"cannot tell what it is"),
])
def test_what_curate_cannot_read_says_what_to_pass(tmp_path, arg, message):
    (tmp_path / "shards").mkdir()
    for k in range(3):
        write_tar(tmp_path / "shards" / f"{k:05d}.tar", [("k.jpg", b"")])
    _jpeg(tmp_path / "pics" / "a" / "x.jpg")
    (tmp_path / "run.yaml").write_text("sources: []\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "mixed").mkdir()
    write_tar(tmp_path / "mixed" / "a.tar", [("k.jpg", b"")])
    (tmp_path / "mixed" / "b.parquet").write_bytes(b"")
    (tmp_path / "notes.docx").write_bytes(b"")
    if arg == "shards/{00000..00004}.tar":  # a brace pattern names its files: all must exist for the shards it lists
        srcs = detect_sources([arg], tmp_path)  # some exist: the ingest stage refuses the missing ones by name
        assert srcs[0].kind == "webdataset"
        return
    with pytest.raises(InputError, match=message):
        detect_sources([arg], tmp_path)


SAMPLE_INPUTS = ["photos", "fondant-cc25m", "near-dup", "tricky", "webdataset/clip-retrieval/*.tar",
                 "webdataset/nemo-curator"]


def _outputs(ws):
    out = ws / "out"
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "removals").iterdir())}
    for name in ("manifest.parquet", "summary.json"):
        files[name] = (out / name).read_bytes()
    return files


@pytest.mark.slow
def test_run_with_paths_equals_a_yaml_listing_the_same_inputs(tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(SAMPLE, work / "sample", ignore=shutil.ignore_patterns("claims", "*.yaml"))
    monkeypatch.chdir(work / "sample")
    res = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "--quiet", "run", *SAMPLE_INPUTS])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["input_rows"] > 0 and summary["input_rows"] == summary["kept"] + summary["removed"] + summary["rejected"]
    written = tmp_path / "ws" / "curate.yaml"
    assert written.read_text().startswith(api.INPUTS_HEADER)
    # the YAML a user would write for the same inputs, everything else at its default
    by_hand = tmp_path / "by_hand.yaml"
    root = work / "sample"
    by_hand.write_text(yaml.safe_dump({"sources": [
        {"name": "photos", "metadata": f"{root}/photos/metadata.parquet", "images": f"{root}/photos"},
        {"name": "fondant-cc25m", "metadata": f"{root}/fondant-cc25m/metadata.parquet", "images": f"{root}/fondant-cc25m"},
        {"name": "near-dup", "images": f"{root}/near-dup"},
        {"name": "tricky", "images": f"{root}/tricky"},
        {"name": "clip-retrieval", "webdataset": f"{root}/webdataset/clip-retrieval/*.tar"},
        {"name": "nemo-curator", "webdataset": f"{root}/webdataset/nemo-curator/*.tar"},
    ]}))
    monkeypatch.chdir(tmp_path)
    res2 = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws2"), "--quiet", "run", str(by_hand)])
    assert res2.exit_code == 0, res2.output
    assert _outputs(tmp_path / "ws") == _outputs(tmp_path / "ws2")
    a = api.load_config(written).model_dump(exclude={"sources"})
    assert a == api.load_config(by_hand).model_dump(exclude={"sources"})  # the defaults, spelled out
    # the written config repeats the run: every stage up to date
    again = api.run(tmp_path / "ws", written)
    assert all(r["skipped"] for r in again["stages"])
    assert query(tmp_path / "ws", "SELECT count(*) FROM samples")[0][0] == summary["input_rows"]


def test_a_metadata_file_given_alone_finds_the_images_its_file_column_names(tmp_path):
    """fondant's metadata.parquet names `images/<id>.jpg` relative to its folder: given alone it
    was ingested metadata-only (every image ignored, no duplicates found)."""
    shutil.copytree(SAMPLE / "fondant-cc25m", tmp_path / "fondant")
    (src,) = detect_sources([str(tmp_path / "fondant" / "metadata.parquet")])
    assert (src.kind, src.images) == ("metadata", str(tmp_path / "fondant"))
    res = api.run_inputs(tmp_path / "ws", [str(tmp_path / "fondant" / "metadata.parquet")])
    assert query(tmp_path / "ws", "SELECT count(*) FROM images WHERE status = 'ok'")[0][0] > 500
    assert res["summary"]["removed"] > 0


def test_an_edited_config_is_never_overwritten_by_the_next_run_with_paths(tmp_path):
    _jpeg(tmp_path / "pics" / "x.jpg")
    ws = tmp_path / "ws"
    api.write_inputs_config(ws, api.config_for_inputs([str(tmp_path / "pics")]))
    api.write_inputs_config(ws, api.config_for_inputs([str(tmp_path / "pics")]))  # the same: fine
    edited = (ws / "curate.yaml").read_text().replace("phash_max_distance: 4", "phash_max_distance: 6")
    (ws / "curate.yaml").write_text(edited)
    with pytest.raises(api.CurateError, match="differs from the config these inputs give"):
        api.write_inputs_config(ws, api.config_for_inputs([str(tmp_path / "pics")]))
    assert (ws / "curate.yaml").read_text() == edited


def test_a_users_own_curate_yaml_in_the_workspace_is_never_overwritten(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "curate.yaml").write_text("sources: [{name: mine, images: /data}]\n")
    _jpeg(tmp_path / "pics" / "x.jpg")
    with pytest.raises(api.CurateError, match="was not written by curate"):
        api.run_inputs(ws, [str(tmp_path / "pics")])
    assert (ws / "curate.yaml").read_text().startswith("sources: [{name: mine")
