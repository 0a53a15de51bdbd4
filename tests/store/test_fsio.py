"""Storage through pyarrow/fsspec filesystems (curate/fsio.py, issue #8): embedding parts, image
references and the Ray engine's work shards behave the same on an object store as in a local
folder. ``memory://`` (fsspec's in-memory filesystem, wrapped in a pyarrow PyFileSystem) stands
in for s3:// — no rename, no memory map, no network."""
from __future__ import annotations

import io
import tarfile
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.store import fsio
from curate.store.embeddings import (clean_temp, iter_parts, list_parts, load_all, lookup, read_part_meta, read_store_meta,
                             write_part, write_store_meta)
from curate.media.images import read_ref


def _uri() -> str:
    return f"memory://curate-test-{uuid.uuid4().hex[:8]}"


def _parts(folder) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((30, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = np.arange(30, dtype=np.int64)[::-1].copy()
    write_part(folder, 0, ids[:10], v[:10], meta={"failed": [[99, "truncated"]]})
    write_part(folder, 1, ids[10:], v[10:])
    write_store_meta(folder, {"key": "k", "dim": 8})
    return ids, v


def test_embedding_parts_on_an_object_store_read_like_local_ones(tmp_path):
    remote = _uri() + "/emb/key"
    ids, v = _parts(remote)
    _parts(tmp_path)
    assert list_parts(remote) == list_parts(tmp_path) == [0, 1]
    assert read_part_meta(remote, 0) == read_part_meta(tmp_path, 0) == {"failed": [[99, "truncated"]]}
    assert read_part_meta(remote, 1) is None and read_store_meta(remote) == {"key": "k", "dim": 8}
    for (na, ia, va), (nb, ib, vb) in zip(iter_parts(remote), iter_parts(tmp_path)):
        assert na == nb and np.array_equal(ia, ib) and np.array_equal(np.asarray(va), np.asarray(vb))
    ra, rb = load_all(remote), load_all(tmp_path)
    assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[1], rb[1]) and np.array_equal(ra[0], np.arange(30))
    found, got = lookup(remote, np.array([3, 29, 77]))
    assert found.tolist() == [True, True, False]
    assert np.allclose(got[0], v[list(ids).index(3)], atol=1e-3)
    # a stray temp file (a killed writer with a local mirror) is removed; complete parts are kept
    fsio.write_bytes(remote + "/part-00002.npy.tmp123", b"x")
    assert clean_temp(remote) == 1 and list_parts(remote) == [0, 1]
    assert fsio.read_bytes(remote + "/nothing-here") is None


def test_image_references_on_an_object_store(tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    png = buf.getvalue()
    root = _uri()
    fsio.write_bytes(root + "/imgs/a.png", png)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("000001.png")
        info.size = len(png)
        t.addfile(info, io.BytesIO(png))
    fsio.write_bytes(root + "/shards/000.tar", tar.getvalue())
    assert read_ref(root + "/imgs/a.png") == png
    assert read_ref(f"tar:512:{len(png)}:{root}/shards/000.tar#000001.png") == png  # a ranged read
    assert read_ref(root + "/imgs/missing.png") is None

    from curate.stages.hash.stage import hash_items

    (row,) = hash_items([(7, root + "/imgs/a.png")], 10**8)
    (local,) = hash_items([(7, str(_write(tmp_path / "a.png", png)))], 10**8)
    assert row == local and row[1] == "ok"


def _write(p, data):
    p.write_bytes(data)
    return p


def test_ray_work_shards_can_be_written_to_an_object_store():
    from curate.engine.ray_engine import units_per_shard, write_shards

    folder = _uri() + "/staging/hash"
    t = pa.table({"unit": pa.array(range(7), pa.int64()),
                  "sample_id": pa.array([[i] for i in range(7)], pa.list_(pa.int64())),
                  "image_ref": pa.array([[f"r{i}"] for i in range(7)], pa.list_(pa.string()))})
    units, shards = write_shards(folder, t.to_batches(max_chunksize=2), 3)
    assert (units, shards) == (7, 3)
    fs, path = fsio.arrow_fs(folder)
    names = fsio.listdir(folder)
    assert names == ["units-000000.parquet", "units-000001.parquet", "units-000002.parquet"]
    back = pa.concat_tables([pq.read_table(f"{path}/{n}", filesystem=fs) for n in names])
    assert back.equals(t)
    assert units_per_shard(10) == 1 and units_per_shard(488_000) == 64
    fsio.delete_dir(folder)
    assert fsio.listdir(folder) == []
