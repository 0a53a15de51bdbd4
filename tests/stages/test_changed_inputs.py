"""Inputs that change after they were ingested or hashed (issue #17, item 5).

An image replaced, deleted, restored or added after a run is noticed on the next run (size and
mtime of the file recorded at hash time, the sha256 when those differ), re-hashed, and every
reader of it recomputed; ``curate status`` says how many images changed; ``hash --force`` reads
every file again. A metadata file rewritten with other rows is still refused, with what to do.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import api
from curate.config import RunConfig
from curate.errors import InputError

from tests.conftest import query, write_tar


def _cfg(tmp_path: Path, sources, **sections) -> RunConfig:
    cfg = RunConfig.model_validate({"sources": sources, "hash": {"workers": 0}, **sections})
    cfg.base_dir = str(tmp_path)
    return cfg


def _png(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small noise picture (each seed a different one); returns its bytes."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _later(path: Path, seconds: int = 5) -> None:
    """Move the file's mtime forward (a coarse-mtime filesystem must still see the change)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _images(ws: Path) -> dict[str, tuple[int, str, str | None]]:
    """key or image file name → (sample_id, image status, sha256)."""
    rows = query(ws, "SELECT s.sample_id, s.key, s.image_ref, i.status, i.sha256 FROM samples s "
                     "LEFT JOIN images i USING (sample_id) ORDER BY s.sample_id")
    return {(k or Path(ref).name): (sid, st, sha) for sid, k, ref, st, sha in rows}


def _metadata_source(tmp_path: Path, names: list[str]) -> dict:
    pq.write_table(pa.table({"url": [f"https://img.example/{n}" for n in names], "caption": names,
                             "file": names}), tmp_path / "meta.parquet")
    return {"name": "m", "metadata": "meta.parquet", "images": "imgs", "schema": "auto"}


def _by_stage(res) -> dict:
    return {r["stage"]: r for r in res["stages"]}


def test_replaced_image_is_rehashed_and_status_counts_it(tmp_path):
    """(a) An image file replaced after hashing: `status` reports it, the next run re-hashes it
    (new sha256), and a file only touched (same bytes) is re-checked but not re-hashed."""
    a = _png(tmp_path / "imgs" / "a.png", 1)
    _png(tmp_path / "imgs" / "b.png", 2)
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [_metadata_source(tmp_path, ["a.png", "b.png"])])
    api.run(ws, cfg, stages=["ingest", "hash"])
    assert _images(ws)["a.png"][2] == _sha(a)
    assert "changed_images" not in api.status(ws)["hash"]

    new = _png(tmp_path / "imgs" / "a.png", 3)
    _later(tmp_path / "imgs" / "a.png")
    st = api.status(ws)
    assert st["hash"]["changed_images"] == 1
    assert st["hash"].get("out_of_date") and st["embed"]["status"] == "never_run"
    by = _by_stage(api.run(ws, cfg, stages=["ingest", "hash"]))
    assert by["ingest"]["skipped"] and not by["hash"]["skipped"]
    assert by["hash"]["counters"]["rehashed_changed"] == 1
    got = _images(ws)
    assert got["a.png"][1:] == ("ok", _sha(new)) and got["b.png"][1] == "ok"
    assert "changed_images" not in api.status(ws)["hash"]
    assert _by_stage(api.run(ws, cfg, stages=["ingest", "hash"]))["hash"]["skipped"]

    _later(tmp_path / "imgs" / "b.png")  # touched: same bytes, newer mtime
    assert api.status(ws)["hash"]["changed_images"] == 1
    c = _by_stage(api.run(ws, cfg, stages=["ingest", "hash"]))["hash"]["counters"]
    assert (c["rehashed_changed"], c["rechecked_unchanged"], c["hashed"]) == (0, 1, 0)
    assert "changed_images" not in api.status(ws)["hash"]


def test_deleted_folder_image_is_missing_then_comes_back_and_added_files_are_ingested(tmp_path):
    """(b) A file deleted from a plain folder source: no error; its sample's image is `missing`
    on the next run and comes back when the file is restored; a file added to the folder
    becomes a new sample; the other samples keep their ids."""
    imgs = tmp_path / "imgs"
    data = {n: _png(imgs / n, i) for i, n in enumerate(["a.png", "b.png", "c.png"])}
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "f", "images": "imgs"}])
    api.run(ws, cfg, stages=["ingest", "hash"])
    before = _images(ws)

    (imgs / "b.png").unlink()
    res = _by_stage(api.run(ws, cfg, stages=["ingest", "hash"]))
    assert not res["hash"]["skipped"]
    got = _images(ws)
    assert got["b.png"][:2] == (before["b.png"][0], "missing")
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in before.items()}  # ids unchanged

    (imgs / "b.png").write_bytes(data["b.png"])
    api.run(ws, cfg, stages=["ingest", "hash"])
    assert _images(ws) == before

    _png(imgs / "aa.png", 9)  # sorts between a.png and b.png: still no renumbering
    c = _by_stage(api.run(ws, cfg, stages=["ingest", "hash"]))["ingest"]["counters"]
    assert c["samples"] == 1 and c["total_samples"] == 4
    got = _images(ws)
    assert {k: got[k] for k in before} == before
    assert got["aa.png"][1] == "ok" and got["aa.png"][0] > max(v[0] for v in before.values())


def test_missing_at_first_run_is_hashed_once_restored_and_force_rereads_files(tmp_path):
    """(c) An image missing at the first run and restored later is hashed by the next run;
    `hash --force` really reads every file again (even one changed with its size and mtime
    kept, which the cheap check cannot see)."""
    _png(tmp_path / "imgs" / "a.png", 1)
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [_metadata_source(tmp_path, ["a.png", "b.png"])])
    api.run(ws, cfg, stages=["ingest", "hash"])
    assert _images(ws)["b.png"][1] == "missing"
    b = _png(tmp_path / "imgs" / "b.png", 2)
    assert api.status(ws)["hash"]["changed_images"] == 1
    api.run(ws, cfg, stages=["ingest", "hash"])
    assert _images(ws)["b.png"][1:] == ("ok", _sha(b))

    p = tmp_path / "imgs" / "a.png"
    st = p.stat()
    other = _png(tmp_path / "scratch.png", 7)  # same size (same picture size, noise does not compress)
    assert len(other) == st.st_size
    p.write_bytes(other)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _by_stage(api.run(ws, cfg, stages=["ingest", "hash"]))["hash"]["skipped"]
    res = api.run_one(ws, "hash", cfg, force=True)
    assert not res["skipped"] and res["counters"]["hashed"] == 2
    assert _images(ws)["a.png"][2] == _sha(other)


def test_rewritten_metadata_is_refused_with_what_to_do_but_an_identical_rewrite_is_not(tmp_path):
    """A metadata file rewritten with other rows is still an error, saying what to do; the same
    rows written again (a copy, a touch) are accepted and the samples keep their ids."""
    pq.write_table(pa.table({"URL": ["https://a.example/1", "https://a.example/2"], "TEXT": ["x", "y"]}),
                   tmp_path / "m.parquet")
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet"}])
    api.run_one(ws, "ingest", cfg)
    ids = query(ws, "SELECT sample_id, url FROM samples ORDER BY 1")
    pq.write_table(pa.table({"URL": ["https://a.example/1", "https://a.example/2"], "TEXT": ["x", "y"]}),
                   tmp_path / "m.parquet")
    _later(tmp_path / "m.parquet")
    res = api.run_one(ws, "ingest", cfg)
    assert not res["skipped"] and res["counters"]["units_unchanged_rows"] == 1
    assert query(ws, "SELECT sample_id, url FROM samples ORDER BY 1") == ids
    assert api.run_one(ws, "ingest", cfg)["skipped"]

    pq.write_table(pa.table({"URL": ["https://a.example/1", "https://a.example/3", "https://a.example/4"],
                             "TEXT": ["x", "z", "w"]}), tmp_path / "m.parquet")
    _later(tmp_path / "m.parquet", 10)
    with pytest.raises(InputError, match=r"changed since it was ingested.*1 row differs.*1 row added"
                                         r".*restore the file.*new name"):
        api.run_one(ws, "ingest", cfg)
    assert query(ws, "SELECT sample_id, url FROM samples ORDER BY 1") == ids  # nothing half-done


def test_rewritten_webdataset_shard_with_the_same_samples_refreshes_references(tmp_path):
    """A shard rewritten with the same samples but one image replaced (so member offsets may
    move) is accepted: the references point at the new members and the image is re-hashed."""
    a, b = _png(tmp_path / "x" / "a.png", 1), _png(tmp_path / "x" / "b.png", 2)
    shard = tmp_path / "s.tar"
    write_tar(shard, [("k1.png", a), ("k1.txt", b"one"), ("k2.png", b), ("k2.txt", b"two")])
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "w", "webdataset": "s.tar"}])
    api.run(ws, cfg, stages=["ingest", "hash"])
    before = _images(ws)
    big = _png(tmp_path / "x" / "big.png", 3, size=(90, 70))
    write_tar(shard, [("k1.png", big), ("k1.txt", b"one"), ("k2.png", b), ("k2.txt", b"two")])
    _later(shard)
    api.run(ws, cfg, stages=["ingest", "hash"])
    got = _images(ws)
    assert got["k1"] == (before["k1"][0], "ok", _sha(big))
    assert got["k2"] == before["k2"]


@pytest.mark.slow
def test_replaced_image_is_embedded_again_and_the_manifest_shows_its_new_hash(tmp_path):
    """Downstream of a re-hashed image: embed replaces its vector (the stale one leaves the
    parts, every other vector is kept), dedup/flag/export recompute, and the manifest carries
    the new sha256; a file deleted from a folder source is removed as `image:missing`."""
    from tests.conftest import tiny_model

    model = tiny_model(tmp_path / "tiny.pt")
    imgs = tmp_path / "imgs"
    for i, n in enumerate(["a.png", "b.png", "c.png", "d.png"]):
        _png(imgs / n, i, size=(64, 64))
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "f", "images": "imgs"}],
               embed={"model": f"sscd:{model}", "preprocess": "sscd_320", "device": "cpu", "batch_size": 2,
                      "part_rows": 2, "num_workers": 0})
    api.run(ws, cfg)
    from curate.store.embeddings import iter_parts

    def vectors() -> dict[int, np.ndarray]:
        (folder,) = [p for p in (ws / "embeddings").iterdir() if p.is_dir()]
        out: dict[int, np.ndarray] = {}
        for _, ids, vecs in iter_parts(folder, mmap=False):
            for i, v in zip(ids.tolist(), np.asarray(vecs)):
                assert i not in out, f"sample {i} stored twice"
                out[i] = v
        return out

    v0 = vectors()
    new = _png(imgs / "a.png", 11, size=(64, 64))
    _later(imgs / "a.png")
    (imgs / "c.png").unlink()
    res = _by_stage(api.run(ws, cfg))
    assert res["embed"]["counters"]["embedded"] == 1
    v1 = vectors()
    ids = _images(ws)
    a_id, c_id = ids["a.png"][0], ids["c.png"][0]
    assert set(v1) == set(v0) - {c_id}
    assert not np.array_equal(v1[a_id], v0[a_id])
    assert all(np.array_equal(v1[i], v0[i]) for i in v1 if i != a_id)
    man = pq.read_table(ws / "out" / "manifest.parquet").to_pylist()
    sha = {r["sample_id"]: r.get("sha256") for r in man}
    assert sha[a_id] == _sha(new) and c_id not in sha
    assert query(ws, "SELECT reasons FROM decisions WHERE sample_id = ?", [c_id])[0][0] == ["image:missing"]


def test_folder_on_object_storage_deleted_restored_and_added_files(tmp_path):
    """The same for an image folder named by URI (a store without mtimes: fsspec's memory://)."""
    import uuid

    from curate.store import fsio

    root = f"memory://curate-changes-{uuid.uuid4().hex[:8]}/imgs"
    data = {n: _png(tmp_path / "src" / n, i) for i, n in enumerate(["a.png", "b.png"])}
    for n, d in data.items():
        fsio.write_bytes(f"{root}/{n}", d)
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "f", "images": root}])
    api.run(ws, cfg, stages=["ingest", "hash"])
    before = _images(ws)
    fsio.delete(f"{root}/b.png")
    assert api.status(ws)["hash"]["changed_images"] == 1
    api.run(ws, cfg, stages=["ingest", "hash"])
    assert _images(ws)["b.png"][:2] == (before["b.png"][0], "missing")
    fsio.write_bytes(f"{root}/b.png", data["b.png"])
    fsio.write_bytes(f"{root}/0.png", _png(tmp_path / "src" / "0.png", 5))
    api.run(ws, cfg, stages=["ingest", "hash"])
    got = _images(ws)
    assert {k: got[k] for k in before} == before and got["0.png"][1] == "ok"


def test_img2dataset_companion_image_deleted_and_restored(tmp_path):
    """An img2dataset shard whose companion folder lost an image (its parquet unchanged): no
    error, the sample's image is `missing`, and it comes back with the file."""
    root = tmp_path / "out"
    keys = ["000000000", "000000001"]
    root.mkdir()
    pq.write_table(pa.table({"url": [f"https://img.example/{k}.png" for k in keys], "caption": ["a", "b"],
                             "key": keys, "status": ["success", "success"], "error_message": [None, None]}),
                   root / "00000.parquet")
    data = {k: _png(root / "00000" / f"{k}.png", i) for i, k in enumerate(keys)}
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "i2d", "img2dataset": "out"}])
    api.run(ws, cfg, stages=["ingest", "hash"])
    before = _images(ws)
    assert [v[1] for v in before.values()] == ["ok", "ok"]
    (root / "00000" / f"{keys[1]}.png").unlink()
    api.run(ws, cfg, stages=["ingest", "hash"])
    got = _images(ws)
    assert got[keys[0]] == before[keys[0]] and got[keys[1]][:2] == (before[keys[1]][0], "missing")
    (root / "00000" / f"{keys[1]}.png").write_bytes(data[keys[1]])
    api.run(ws, cfg, stages=["ingest", "hash"])
    assert _images(ws) == before


def test_files_added_to_a_changed_folder_are_checked_under_the_configured_follow_symlinks(tmp_path):
    """A file added to an ingested folder goes through the same ``ingest.follow_symlinks`` check as
    at first ingest: under ``never`` a link added later is a reject, not a sample."""
    imgs = tmp_path / "imgs"
    _png(imgs / "a.png", 1)
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "f", "images": "imgs"}], ingest={"follow_symlinks": "never"})
    api.run(ws, cfg, stages=["ingest"])
    (imgs / "alias.png").symlink_to("a.png")
    _png(imgs / "b.png", 2)
    api.run(ws, cfg, stages=["ingest"])
    assert sorted(k for k, in query(ws, "SELECT key FROM samples")) == ["a.png", "b.png"]
    rej = query(ws, "SELECT json_extract_string(raw, '$.file'), reason FROM rejects")
    assert len(rej) == 1 and rej[0][0] == "alias.png" and rej[0][1].startswith("symlink_not_followed: "), rej


def test_a_folder_file_rejected_at_first_ingest_is_not_inserted_again_when_the_folder_changes(tmp_path):
    """A folder file rejected at first ingest (a link leading out) has no sample; each later change
    of the folder must not reject (or ingest) it again under a new row number."""
    imgs = tmp_path / "imgs"
    _png(imgs / "a.png", 1)
    _png(tmp_path / "elsewhere" / "secret.png", 9)
    (imgs / "x.png").symlink_to(tmp_path / "elsewhere" / "secret.png")
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "f", "images": "imgs"}])
    api.run(ws, cfg, stages=["ingest"])
    first = query(ws, "SELECT source_row, reason FROM rejects")
    assert len(first) == 1
    for i, name in enumerate(["b.png", "c.png"]):
        _png(imgs / name, 2 + i)
        api.run(ws, cfg, stages=["ingest"])
        assert query(ws, "SELECT source_row, reason FROM rejects") == first
        assert query(ws, "SELECT n_rows, n_samples, n_rejected FROM sources") == [(3 + i, 2 + i, 1)]


def test_a_table_replaced_between_two_runs_in_one_process_is_read_again(tmp_path):
    """Open parquet / Arrow readers are cached per process; a table replaced (same rows, other
    image bytes) between two ``api.run`` calls of one process (a notebook) is read from the new
    file, so its images are re-hashed with the new bytes."""
    def write(seed: int) -> list[bytes]:
        data = [_png(tmp_path / "tmp.png", seed + i) for i in range(3)]
        t = pa.table({"image": pa.array([{"bytes": b, "path": None} for b in data],
                                        pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "text": ["a", "b", "c"]})
        pq.write_table(t, tmp_path / "hf.parquet")
        return data

    old = write(1)
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "hf", "metadata": "hf.parquet"}])
    api.run(ws, cfg, stages=["ingest", "hash"])
    def shas():
        return [sha for sha, in query(ws, "SELECT i.sha256 FROM samples s JOIN images i USING (sample_id) "
                                          "ORDER BY s.source_row")]

    assert shas() == [_sha(b) for b in old]
    new = write(10)
    _later(tmp_path / "hf.parquet")
    api.run(ws, cfg, stages=["ingest", "hash"])
    assert shas() == [_sha(b) for b in new]


def test_an_image_file_that_cannot_be_read_is_unreadable_with_its_reason_then_read_once_it_can(tmp_path, monkeypatch):
    """A file the OS refuses to open (permissions; simulated, as tests run as root) never stops the
    hash stage, at first hashing or when re-checking a changed file: its image status is
    ``unreadable`` with the error, and it is read again on the next run."""
    imgs = tmp_path / "imgs"
    a = _png(imgs / "a.png", 1)
    _png(imgs / "b.png", 2)
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "f", "images": "imgs"}])
    real_open = os.open
    refused = set()

    def guarded(path, *args, **kw):
        if Path(os.fsdecode(path)).name in refused:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", guarded)
    refused.add("b.png")
    api.run(ws, cfg, stages=["ingest", "hash"])
    rows = dict((k, r) for k, *r in query(ws, "SELECT s.key, i.status, i.detail FROM samples s "
                                              "JOIN images i USING (sample_id)"))
    assert rows["a.png"][0] == "ok"
    assert rows["b.png"][0] == "unreadable" and "Permission denied" in rows["b.png"][1], rows

    new = _png(imgs / "a.png", 5)  # changed, and now refused while it is re-checked
    _later(imgs / "a.png")
    refused.add("a.png")
    api.run(ws, cfg, stages=["ingest", "hash"])
    assert _images(ws)["a.png"][1] == "unreadable"

    refused.clear()
    api.run(ws, cfg, stages=["ingest", "hash"])
    got = _images(ws)
    assert got["a.png"][1:] == ("ok", _sha(new)) and got["b.png"][1] == "ok"
    assert a != new


def test_a_touched_file_with_the_same_bytes_re_runs_nothing_after_ingest(tmp_path):
    """A new user's trial: `touch` on one image made ingest run (its fingerprint changed) and with it
    every later stage, for byte-identical outputs. Ingest now gives its readers a digest of what it
    wrote (as hash does), so they stay up to date."""
    import os

    from curate import api
    from curate.config import RunConfig
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for k, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        im = Image.new("RGB", (64, 48), c)
        im.putpixel((k, k), (255, 255, 255))
        im.save(d / f"{k}.png")
    cfg = RunConfig.model_validate({"sources": [{"name": "f", "images": "imgs"}], "flag": {"packs": []}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run(ws, cfg)
    st = os.stat(d / "1.png")
    os.utime(d / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    res = {r["stage"]: r for r in api.run(ws, cfg)["stages"]}
    assert not res["ingest"]["skipped"] and not res["hash"]["skipped"]  # both look: the folder and the file changed
    assert res["hash"]["counters"]["rechecked_unchanged"] == 1
    assert all(res[s]["skipped"] for s in ("embed", "dedup", "flag", "export", "report")), \
        {s: r["skipped"] for s, r in res.items()}
    assert not any(v.get("out_of_date") for v in api.status(ws).values())
    (d / "3.png").write_bytes((d / "0.png").read_bytes())  # a real change: a new sample
    res = {r["stage"]: r for r in api.run(ws, cfg)["stages"]}
    assert not any(res[s]["skipped"] for s in ("hash", "embed", "dedup", "export"))
