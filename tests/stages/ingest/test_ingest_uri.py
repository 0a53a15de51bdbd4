"""ingest from URIs (issue #8): sources on object storage (``s3://…``) read through pyarrow /
fsspec filesystems (curate/fsio.py). ``memory://`` (fsspec's in-memory filesystem) stands in for
s3:// — it has no mtime, so resumability runs on the content-hash fingerprint. The same file read
by local path and by URI must give the same catalog rows (the path / URI columns aside)."""
from __future__ import annotations

import glob as _glob
import gzip
import io
import json
import shutil
import tarfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import api
from curate.store import fsio
from curate.config import RunConfig
from curate.errors import InputError

from tests.conftest import SAMPLE, query


def _cfg(tmp_path, sources, **sections) -> RunConfig:
    cfg = RunConfig.model_validate({"sources": sources, **sections})
    cfg.base_dir = str(tmp_path)
    return cfg


def _bucket() -> str:
    return f"memory://curate-ingest-{uuid.uuid4().hex[:8]}"


def _upload(local: Path, uri: str) -> str:
    """Copy a file, or every file under a folder, to ``uri``."""
    if local.is_dir():
        for p in sorted(local.rglob("*")):
            if p.is_file():
                fsio.write_bytes(f"{uri}/{p.relative_to(local).as_posix()}", p.read_bytes())
    else:
        fsio.write_bytes(uri, local.read_bytes())
    return uri


def _catalog(ws, prefixes: dict[str, str]) -> dict[str, list]:
    """samples, rejects and sources (without uri / fingerprint) with each ``prefixes`` key
    replaced by its value (the local folder or the bucket, in image references)."""
    def norm(v):
        if isinstance(v, str):
            for a, b in prefixes.items():
                v = v.replace(a, b)
        return v

    out = {}
    for name, sql in (("samples", "SELECT * FROM samples ORDER BY sample_id"),
                      ("rejects", "SELECT * FROM rejects ORDER BY source_id, source_row"),
                      ("sources", "SELECT * EXCLUDE (uri, fingerprint) FROM sources ORDER BY source_id")):
        out[name] = [tuple(norm(v) for v in r) for r in query(ws, sql)]
    return out


def _tricky_parquet(path: Path) -> None:
    """Rows that exercise every per-row rule: NaN, integer overflow, a shifted row (invalid URL),
    no URL, invalid UTF-8, a host with a space, negative size."""
    n = 23
    urls = [f"https://t.example/{i}.jpg" for i in range(n)]
    urls[3], urls[5], urls[8] = "UNLIKELY", None, "https://bad host/x.jpg"
    text = [f"caption {i}".encode() for i in range(n)]
    text[4], text[11] = b"caf\xe9", b"\xff\xfe broken"
    pq.write_table(pa.table({
        "URL": urls, "TEXT": pa.array(text, pa.binary()).view(pa.string()),
        "WIDTH": pa.array([640] * 6 + [3_000_000_000] + [-5] + [64] * (n - 8), pa.int64()),
        "HEIGHT": pa.array([480] * n, pa.int32()), "similarity": [0.3] * n,
        "hash": pa.array(list(range(n - 1)) + [2**63 + 1], pa.uint64()),
        "punsafe": pa.array([float("nan"), 0.9] + [0.1] * (n - 2), pa.float32()),
        "pwatermark": pa.array([0.1] * n, pa.float32()),
    }), path, row_group_size=6)


def test_sample_parquet_by_uri_equals_local_path(tmp_path):
    """The bundled sample's parquet files (LAION-400M + file column, fondant-cc25m) and a file of
    tricky rows: by local path (DuckDB) and from memory:// (pyarrow, batches of 5 rows) the
    catalog rows are the same — values, source_row, notes, rejects, unit notes and columns."""
    _tricky_parquet(tmp_path / "tricky.parquet")
    b = _bucket()
    _upload(SAMPLE / "photos" / "metadata.parquet", f"{b}/photos/metadata.parquet")
    _upload(SAMPLE / "fondant-cc25m" / "metadata.parquet", f"{b}/fondant/part-0.parquet")
    _upload(tmp_path / "tricky.parquet", f"{b}/tricky/t.parquet")
    photos = str(SAMPLE / "photos")
    local = [{"name": "photos", "metadata": str(SAMPLE / "photos" / "metadata.parquet"), "images": photos},
             {"name": "fondant", "metadata": str(SAMPLE / "fondant-cc25m" / "metadata.parquet")},
             {"name": "tricky", "metadata": "tricky.parquet"}]
    remote = [{"name": "photos", "metadata": f"{b}/photos/metadata.parquet", "images": photos},
              {"name": "fondant", "metadata": f"{b}/fondant/*.parquet"},
              {"name": "tricky", "metadata": f"{b}/tricky/t.parquet"}]
    c1 = api.run_one(tmp_path / "ws1", "ingest", _cfg(tmp_path, local))["counters"]
    c2 = api.run_one(tmp_path / "ws2", "ingest", _cfg(tmp_path, remote, ingest={"batch_rows": 5}))["counters"]
    assert c1["samples"] == c2["samples"] > 500 and c1["rejected"] == c2["rejected"] >= 2
    for k in ("notes_by_code", "rejected_by_reason", "layouts", "rows_with_notes", "captions_missing"):
        assert c1[k] == c2[k], k
    a, r = _catalog(tmp_path / "ws1", {}), _catalog(tmp_path / "ws2", {})
    assert a == r
    notes = dict(query(tmp_path / "ws2", "SELECT name, notes FROM sources"))
    assert "invalid UTF-8 repaired per row" in notes["tricky"] and "invalid UTF-8" not in notes["fondant"]
    uris = [u for u, in query(tmp_path / "ws2", "SELECT uri FROM sources ORDER BY source_id")]
    assert uris == [f"{b}/photos/metadata.parquet", f"{b}/fondant/part-0.parquet", f"{b}/tricky/t.parquet"]
    # image references of the photos source point at the local images folder in both
    assert query(tmp_path / "ws2", "SELECT count(*) FROM samples WHERE image_ref LIKE '" + photos + "/%'")[0][0] > 0


def test_webdataset_shards_by_uri_equal_local_and_hash_reads_members_through_fsio(tmp_path):
    """The sample's clip-retrieval shards from memory://: same samples as by local path (image
    references name the shard URI), and the hash stage reads the members with ranged reads
    through curate.store.fsio: the same statuses, sha256 and pHash."""
    b = _bucket()
    src = SAMPLE / "webdataset" / "clip-retrieval"
    _upload(src, f"{b}/shards")
    cfg1 = _cfg(tmp_path, [{"name": "w", "webdataset": str(src / "*.tar")}])
    cfg2 = _cfg(tmp_path, [{"name": "w", "webdataset": f"{b}/shards/image*.tar"}])
    for ws, cfg in ((tmp_path / "ws1", cfg1), (tmp_path / "ws2", cfg2)):
        api.run_one(ws, "ingest", cfg)
        api.run_one(ws, "hash", cfg)
    a = _catalog(tmp_path / "ws1", {str(src.resolve()): "<shards>"})
    r = _catalog(tmp_path / "ws2", {f"{b}/shards": "<shards>"})
    assert a == r and len(a["samples"]) >= 4
    refs = [x for x, in query(tmp_path / "ws2", "SELECT image_ref FROM samples ORDER BY sample_id")]
    assert all(x.startswith("tar:") and f":{b}/shards/image" in x for x in refs)
    img = "SELECT * EXCLUDE (file_size, file_mtime_ns) FROM images ORDER BY sample_id"  # memory:// keeps no mtime
    i1, i2 = query(tmp_path / "ws1", img), query(tmp_path / "ws2", img)
    assert i1 == i2 and {x[1] for x in i2} == {"ok"}
    assert not list(Path(tmp_path / "ws2").glob(".ingest-tmp-*"))  # the local copies are gone


def test_uri_inputs_resume_add_one_file_and_detect_changes(tmp_path):
    """memory:// gives no mtime: the fingerprint is size + sha256 of the bytes. A re-run ingests
    nothing; a new file (parquet or shard) is the only one ingested; a changed file is an error."""
    b = _bucket()

    def part(i, n=3):
        buf = io.BytesIO()
        pq.write_table(pa.table({"URL": [f"https://r.example/{i}/{k}" for k in range(n)], "TEXT": ["t"] * n}), buf)
        fsio.write_bytes(f"{b}/meta/part-{i:05d}.parquet", buf.getvalue())

    def shard(i):
        t = io.BytesIO()
        with tarfile.open(fileobj=t, mode="w") as tf:
            for name, data in ((f"{i}.txt", b"cap"), (f"{i}.json", json.dumps({"url": f"https://s.example/{i}"}).encode())):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        fsio.write_bytes(f"{b}/wds/{i:05d}.tar", t.getvalue())

    part(0), part(1), shard(0)
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "m", "metadata": f"{b}/meta/part-*.parquet"},
                          {"name": "w", "webdataset": f"{b}/wds/*.tar"}])
    c = api.run_one(ws, "ingest", cfg)["counters"]
    assert (c["units"], c["samples"]) == (3, 7)
    fps = [f for f, in query(ws, "SELECT fingerprint FROM sources ORDER BY source_id")]
    assert all(f.split(":")[1] == "sha256" for f in fps)
    before = query(ws, "SELECT sample_id, url FROM samples ORDER BY sample_id")
    assert api.run_one(ws, "ingest", cfg)["skipped"]  # same listing, same fingerprints: the stage is up to date
    c = api.run_one(ws, "ingest", cfg, force=True)["counters"]  # run anyway: every unit is skipped
    assert (c["units"], c["units_skipped"]) == (0, 3)
    part(2), shard(1)
    c = api.run_one(ws, "ingest", cfg)["counters"]
    assert (c["units"], c["units_skipped"], c["samples"], c["total_samples"]) == (2, 3, 4, 11)
    assert query(ws, "SELECT sample_id, url FROM samples ORDER BY sample_id")[:7] == before
    part(1, n=4)  # rewritten with other content
    with pytest.raises(InputError, match="changed since it was ingested"):
        api.run_one(ws, "ingest", cfg)


def test_missing_unreadable_and_unsupported_uris_are_clear_errors(tmp_path):
    b = _bucket()
    with pytest.raises(InputError, match="does not exist"):
        api.run_one(tmp_path / "w1", "ingest", _cfg(tmp_path, [{"name": "m", "metadata": f"{b}/none.parquet"}]))
    with pytest.raises(InputError, match="matches no file"):
        api.run_one(tmp_path / "w2", "ingest", _cfg(tmp_path, [{"name": "w", "webdataset": f"{b}/none/*.tar"}]))
    with pytest.raises(InputError, match="cannot list .*nosuchscheme"):
        api.run_one(tmp_path / "w3", "ingest", _cfg(tmp_path, [{"name": "m", "metadata": "nosuchscheme://x/a.parquet"}]))
    with pytest.raises(InputError, match=r"hf_dataset source cannot be read from a URI.*URIs work for metadata"):
        api.run_one(tmp_path / "w4", "ingest", _cfg(tmp_path, [{"name": "h", "hf_dataset": f"{b}/hf"}]))
    # an object that is not parquet / not a tar: the run stops, or (on_bad_file: skip) records it and goes on
    ok = io.BytesIO()
    pq.write_table(pa.table({"URL": ["https://ok.example/1"], "TEXT": ["fine"]}), ok)
    fsio.write_bytes(f"{b}/m/a.parquet", ok.getvalue())
    fsio.write_bytes(f"{b}/m/b.parquet", b"not parquet at all")
    fsio.write_bytes(f"{b}/t/a.tar", b"not a tar")
    srcs = [{"name": "m", "metadata": f"{b}/m/*.parquet"}, {"name": "t", "webdataset": f"{b}/t/*.tar"}]
    with pytest.raises(InputError, match=f"{b}/m/b.parquet: not a readable parquet file"):
        api.run_one(tmp_path / "w6", "ingest", _cfg(tmp_path, srcs))
    c = api.run_one(tmp_path / "w7", "ingest", _cfg(tmp_path, srcs, ingest={"on_bad_file": "skip"}))["counters"]
    assert c["samples"] == 1 and c["bad_files"] == [f"{b}/m/b.parquet", f"{b}/t/a.tar"]
    notes = dict(query(tmp_path / "w7", "SELECT uri, notes FROM sources"))
    assert "not a readable parquet file" in notes[f"{b}/m/b.parquet"]
    assert f"{b}/t/a.tar: not a readable tar shard" in notes[f"{b}/t/a.tar"]


def _png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, "PNG")
    return buf.getvalue()


def test_tsv_folder_and_img2dataset_by_uri_equal_local(tmp_path):
    """A gzipped headerless CC3M-style TSV, a plain image folder with sidecars and an img2dataset
    output (webdataset and files formats): from memory:// the same rows as from local paths."""
    d = tmp_path / "data"
    d.mkdir()
    lines = ["a red square\thttps://c.example/1.jpg", "bad line without tab", "", "a cat\thttps://c.example/2.jpg"]
    (d / "cc3m.tsv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (d / "folder" / "sub").mkdir(parents=True)
    (d / "folder" / "a.png").write_bytes(_png((200, 0, 0)))
    (d / "folder" / "a.txt").write_bytes(b"caf\xe9 caption")
    (d / "folder" / "sub" / "b.x.png").write_bytes(_png((0, 200, 0)))
    (d / "folder" / "sub" / "b.x.json").write_text(json.dumps({"url": "https://f.example/b", "status": "success"}))
    (d / "folder" / "notes.md").write_text("not an image")
    for fmt in ("webdataset", "files"):
        root = d / f"i2d-{fmt}"
        root.mkdir()
        rows = [{"url": f"https://i.example/{k}", "caption": f"c{k}", "key": f"{k:09d}",
                 "status": "success" if k < 2 else "failed_to_download"} for k in range(3)]
        pq.write_table(pa.Table.from_pylist(rows), root / "00000.parquet")
        if fmt == "files":
            (root / "00000").mkdir()
            for k in range(2):
                (root / "00000" / f"{k:09d}.png").write_bytes(_png((k * 90, 10, 10)))
        else:
            with tarfile.open(root / "00000.tar", "w") as tf:
                for k in range(2):
                    data = _png((k * 90, 10, 10))
                    ti = tarfile.TarInfo(f"{k:09d}.png")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    b = _bucket()
    _upload(d, b)

    def sources(base):
        return [{"name": "tsv", "metadata": f"{base}/*.tsv.gz"}, {"name": "f", "images": f"{base}/folder"},
                {"name": "iw", "img2dataset": f"{base}/i2d-webdataset"}, {"name": "if", "img2dataset": f"{base}/i2d-files"}]

    c1 = api.run_one(tmp_path / "ws1", "ingest", _cfg(tmp_path, sources(str(d))))["counters"]
    c2 = api.run_one(tmp_path / "ws2", "ingest", _cfg(tmp_path, sources(b)))["counters"]
    assert c1["units"] == c2["units"] == 4 and c1["rejected"] == c2["rejected"] == 1
    a, r = _catalog(tmp_path / "ws1", {str(d): "<root>"}), _catalog(tmp_path / "ws2", {b: "<root>"})
    assert a == r
    got = {(k, c) for k, c in query(tmp_path / "ws2", "SELECT key, caption FROM samples")}
    assert {("a.png", "caf\ufffd caption"), ("sub/b.x.png", None)} <= got
    statuses = {ref.split(":")[0] if ref.startswith(("tar:", "missing:")) else "file"
                for ref, in query(tmp_path / "ws2", "SELECT image_ref FROM samples WHERE image_ref IS NOT NULL")}
    assert statuses == {"tar", "missing", "file"}
    assert api.run_one(tmp_path / "ws2", "ingest", _cfg(tmp_path, sources(b)))["skipped"]


def test_glob_over_a_uri_follows_glob_glob(tmp_path):
    tree = ["a.tar", "b.tar", ".hidden.tar", "x.parquet", "s/c.tar", "s/t/d.tar", "s/.h/e.tar", "s2/f.tar"]
    for name in tree:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    b = _upload(tmp_path, _bucket())
    for pat in ("*.tar", "**/*.tar", "*/*.tar", "s*/*.tar", "[ab].tar", "s/**", "?.parquet", "a.tar", "none/*.tar"):
        local = sorted(Path(p).relative_to(tmp_path).as_posix() for p in _glob.glob(str(tmp_path / pat), recursive=True)
                       if Path(p).is_file())
        remote = sorted(s.uri[len(b) + 1:] for s in fsio.glob(f"{b}/{pat}"))
        assert remote == local, pat
    assert [s.uri for s in fsio.glob(f"{b}/*.tar")] == [f"{b}/a.tar", f"{b}/b.tar"]  # sorted, deterministic
    st = fsio.stat(f"{b}/a.tar")
    assert fsio.fingerprint(st) == "1:sha256:" + __import__("hashlib").sha256(b"x").hexdigest()
    shutil.rmtree(tmp_path / "s")


def test_whole_bundled_sample_from_uris_ingests_and_hashes_like_local(tmp_path):
    """Every source of examples/sample/curate.yaml (parquet + images folder, plain folders with the
    tricky files, webdataset shards) named by memory:// URI: the same samples and the same image
    statuses, sha256 and pHashes as from local paths."""
    import yaml

    b = _bucket()
    _upload(SAMPLE, b)
    raw = yaml.safe_load((SAMPLE / "curate.yaml").read_text())
    raw = {"sources": raw["sources"], "hash": {"workers": 0}}
    remote = [{k: (f"{b}/{v}" if k in ("metadata", "images", "webdataset") else v) for k, v in s.items()}
              for s in raw["sources"]]
    for ws, srcs in ((tmp_path / "ws1", raw["sources"]), (tmp_path / "ws2", remote)):
        cfg = _cfg(SAMPLE, srcs, hash=raw["hash"])
        api.run_one(ws, "ingest", cfg)
        api.run_one(ws, "hash", cfg)
    a = _catalog(tmp_path / "ws1", {str(SAMPLE.resolve()): "<root>"})
    r = _catalog(tmp_path / "ws2", {b: "<root>"})
    assert a == r and len(a["samples"]) > 600
    img = "SELECT * EXCLUDE (file_size, file_mtime_ns) FROM images ORDER BY sample_id"  # memory:// keeps no mtime
    i1, i2 = query(tmp_path / "ws1", img), query(tmp_path / "ws2", img)
    assert i1 == i2 and {x[1] for x in i1} >= {"ok", "truncated", "not_an_image", "zero_size"}


def test_image_bytes_inside_a_parquet_on_object_storage_are_hashed_like_local(tmp_path):
    """img2dataset's parquet output format (image bytes in a ``jpg`` column) on a ``memory://``
    bucket: the references name the URI and the hash stage reads the row groups back through
    curate.store.fsio — same statuses and pHashes as the same file on a local path."""
    photos = sorted((SAMPLE / "photos").glob("*.png"))[:3]
    t = pa.table({"url": [f"https://i.example/{i}" for i in range(len(photos) + 1)],
                  "caption": [f"photo {i}" for i in range(len(photos) + 1)],
                  "jpg": pa.array([p.read_bytes() for p in photos] + [b"not an image"], pa.binary())})
    local = tmp_path / "bytes" / "0.parquet"
    local.parent.mkdir()
    pq.write_table(t, local, row_group_size=2)
    b = _bucket()
    _upload(local, f"{b}/bytes/0.parquet")
    got = {}
    for name, path in (("local", str(local)), ("uri", f"{b}/bytes/*.parquet")):
        ws = tmp_path / f"ws-{name}"
        api.run(ws, _cfg(tmp_path, [{"name": "m", "metadata": path}], hash={"workers": 0}), stages=["ingest", "hash"])
        got[name] = query(ws, "SELECT s.url, i.status, i.phash FROM samples s JOIN images i USING (sample_id) "
                              "ORDER BY s.url")
    assert got["uri"] == got["local"]
    assert [r[1] for r in got["uri"]] == ["ok", "ok", "ok", "not_an_image"]


def test_file_uris_are_local_paths(tmp_path):
    """``file:///abs/path`` names the same local file as ``/abs/path``: the same samples."""
    meta = SAMPLE / "fondant-cc25m" / "metadata.parquet"
    got = []
    for name, path in (("plain", str(meta)), ("uri", meta.resolve().as_uri())):
        ws = tmp_path / name
        api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "f", "metadata": path}]))
        got.append(query(ws, "SELECT url, caption FROM samples ORDER BY sample_id"))
    assert got[0] == got[1] and len(got[0]) > 10
