"""Brace patterns in input paths (img2dataset, clip-retrieval and curate's own index.json write
them): ``shards/{00000..00099}.tar`` (numeric ranges, zero padding kept) and ``{a,b}.parquet``
(comma lists), expanded before globbing, for local paths and URIs alike."""
from __future__ import annotations

import io
import tarfile
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import api
from curate.config import RunConfig
from curate.errors import InputError
from curate.store import fsio
from curate.store.braces import expand_braces

from tests.conftest import query


def _cfg(tmp_path, sources) -> RunConfig:
    cfg = RunConfig.model_validate({"sources": sources})
    cfg.base_dir = str(tmp_path)
    return cfg


def _shard(i: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in ((f"k{i}.txt", f"caption {i}".encode()),
                           (f"k{i}.json", f'{{"url": "https://s.example/{i}.jpg"}}'.encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_expand_braces():
    assert expand_braces("shards/{00000..00002}.tar") == ["shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]
    assert expand_braces("{a,b}.parquet") == ["a.parquet", "b.parquet"]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]
    assert expand_braces("{08..11}") == ["08", "09", "10", "11"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("{0..6..3}") == ["0", "3", "6"]
    assert expand_braces("{-1..1}") == ["-1", "0", "1"]
    assert expand_braces("x/{a,b{1..2}}/{c,d}") == ["x/a/c", "x/a/d", "x/b1/c", "x/b1/d", "x/b2/c", "x/b2/d"]
    assert expand_braces("s3://b/{x,y}/*.tar") == ["s3://b/x/*.tar", "s3://b/y/*.tar"]
    for literal in ("plain.tar", "{a}.tar", "x{}.tar", "{a..b}.tar", "a{b", "a}b", "{1..}"):
        assert expand_braces(literal) == [literal]
    with pytest.raises(ValueError, match=r"\{0\.\.9999999\}.*more than 100000"):
        expand_braces("{0..9999999}.tar")


def test_local_brace_patterns_in_every_source_kind(tmp_path):
    (tmp_path / "shards").mkdir()
    for i in range(4):
        (tmp_path / "shards" / f"{i:05d}.tar").write_bytes(_shard(i))
    for name in ("a", "b", "c"):
        pq.write_table(pa.table({"URL": [f"https://{name}.example/1.jpg"], "TEXT": [name]}), tmp_path / f"{name}.parquet")
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "w", "webdataset": "shards/{00001..00003}.tar"},
                          {"name": "m", "metadata": "{c,a}.parquet"}])
    c = api.run_one(ws, "ingest", cfg)["counters"]
    assert c["units"] == 5
    rows = query(ws, "SELECT o.name, o.uri, s.caption FROM samples s JOIN sources o USING (source_id) ORDER BY sample_id")
    assert [(n, u.rsplit("/", 1)[1], cap) for n, u, cap in rows] == [
        ("w", "00001.tar", "caption 1"), ("w", "00002.tar", "caption 2"), ("w", "00003.tar", "caption 3"),
        ("m", "a.parquet", "a"), ("m", "c.parquet", "c")]  # file order, whatever order the list names them in


def test_brace_pattern_naming_a_missing_file_or_matching_nothing_is_an_error_naming_it(tmp_path):
    (tmp_path / "shards").mkdir()
    for i in (0, 1, 3):
        (tmp_path / "shards" / f"{i:05d}.tar").write_bytes(_shard(i))
    with pytest.raises(InputError, match=r"shards/\{00000\.\.00003\}\.tar.*00002\.tar"):
        api.run_one(tmp_path / "ws1", "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": "shards/{00000..00003}.tar"}]))
    with pytest.raises(InputError, match=r"\{x,y\}/\*\.tar.* matches no"):
        api.run_one(tmp_path / "ws2", "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": "{x,y}/*.tar"}]))
    with pytest.raises(InputError, match=r"more than 100000"):
        api.run_one(tmp_path / "ws3", "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": "s/{0..99999999}.tar"}]))


def test_uri_brace_patterns(tmp_path):
    bucket = f"memory://curate-braces-{uuid.uuid4().hex[:8]}"
    for i in range(3):
        fsio.write_bytes(f"{bucket}/shards/{i:05d}.tar", _shard(i))
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "w", "webdataset": bucket + "/shards/{00000..00001}.tar"},
                          {"name": "v", "webdataset": bucket + "/{shards,none}/0000[2].tar"}])
    c = api.run_one(ws, "ingest", cfg)["counters"]
    assert c["units"] == 3
    assert [u for (u,) in query(ws, "SELECT uri FROM sources ORDER BY source_id")] == [
        f"{bucket}/shards/{i:05d}.tar" for i in range(3)]
    with pytest.raises(InputError, match=r"\{00000\.\.00003\}.*00003\.tar"):
        api.run_one(tmp_path / "ws2", "ingest",
                    _cfg(tmp_path, [{"name": "w", "webdataset": bucket + "/shards/{00000..00003}.tar"}]))
