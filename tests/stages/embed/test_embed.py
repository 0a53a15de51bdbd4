"""The embed stage: resume after SIGKILL (byte-identical parts, nothing finished recomputed),
K13 vectors, preprocessing identity in the key, SSCD presets, caption embeddings.

A small TorchScript model stands in for SSCD (``sscd:<path>``), so these tests run the real
registry, DataLoader and store code without downloading weights.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from curate import api
from curate.config import RunConfig
from curate.errors import ConfigError
from curate.store.embeddings import iter_parts, list_parts, read_part_meta

from tests.conftest import ROOT, SAMPLE, store_with_parts
from tests.conftest import tiny_model

WHITE_MEAN, BLACK_MEAN = 2.3, -1.9  # ImageNet-normalised mean of pure white ≈ 2.44, pure black ≈ −1.99




def _images(folder: Path, n: int, extremes: bool = False) -> None:
    """n small real-photo crops (JPEG and PNG) + optionally an all-white and an all-black image."""
    folder.mkdir(parents=True, exist_ok=True)
    srcs = [Image.open(p).convert("RGB") for p in sorted((SAMPLE / "photos").glob("*.png"))[:6]]
    rng = np.random.default_rng(1)
    for i in range(n):
        src = srcs[i % len(srcs)]
        w, h = src.size
        s = int(rng.integers(48, min(w, h) // 2))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        crop = src.crop((x, y, x + s, y + int(s * rng.uniform(0.6, 1.4)) if y + s * 1.4 < h else y + s)).resize((80, 64))
        crop.save(folder / f"img{i:03d}.{'jpg' if i % 3 else 'png'}")
    if extremes:
        Image.new("RGB", (64, 64), (255, 255, 255)).save(folder / "white.png")
        Image.new("RGB", (64, 64), (0, 0, 0)).save(folder / "black.png")


def _config(tmp: Path, model: Path, **embed) -> Path:
    e = {"model": f"sscd:{model}", "preprocess": "sscd_320", "device": "cpu", "batch_size": 3, "part_rows": 8,
         "num_workers": 1, **embed}
    cfg = {"sources": [{"name": "imgs", "images": "imgs"}], "hash": {"workers": 0}, "embed": e}
    p = tmp / f"curate-{abs(hash(json.dumps(e, sort_keys=True)))}.json"
    p.write_text(json.dumps(cfg))
    return p


def _cfg(path: Path) -> RunConfig:
    cfg = RunConfig.model_validate(json.loads(path.read_text()))
    cfg.base_dir = str(path.parent)
    return cfg


_DRIVER = ("import json, sys; from curate import api; from curate.config import RunConfig; "
           "from pathlib import Path; p = Path(sys.argv[2]); c = RunConfig.model_validate(json.loads(p.read_text())); "
           "c.base_dir = str(p.parent); r = api.run_one(sys.argv[1], 'embed', c); print(json.dumps(r['counters']))")


def _embed_proc(ws: Path, cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "CURATE_QUIET": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", _DRIVER, str(ws), str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _dir(ws: Path, key: str) -> Path:
    """The folder of an embedding key (Workspace.embeddings_dir's naming)."""
    return ws / "embeddings" / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def _store(ws: Path) -> Path:
    (d,) = [p for p in (ws / "embeddings").iterdir() if p.is_dir()]
    return d


def _statuses(ws: Path) -> dict[int, str]:
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        return dict(con.execute("SELECT sample_id, status FROM embeddings").fetchall())
    finally:
        con.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.torchscript.pt")


@pytest.mark.slow
def test_embed_killed_with_sigkill_resumes_to_identical_parts(tmp_path, tiny):
    _images(tmp_path / "imgs", 118, extremes=True)
    cfg = _config(tmp_path, tiny)
    for ws in (tmp_path / "a", tmp_path / "b"):
        api.run(ws, _cfg(cfg), stages=["ingest", "hash"])

    # A: uninterrupted
    pa = _embed_proc(tmp_path / "a", cfg)
    out, err = pa.communicate(timeout=300)
    assert pa.returncode == 0, err
    full = json.loads(out)
    assert full["embedded"] == 118 and full["failed"] == {"nonfinite_vector": 1, "zero_vector": 1}
    n_parts = full["parts"]
    assert n_parts == 15  # 120 samples in chunks of 8

    # B: killed with SIGKILL once at least two parts are on disk, then re-run
    pb = _embed_proc(tmp_path / "b", cfg)
    folder_b = store_with_parts(pb, tmp_path / "b", 2, poll=0.005)
    assert pb.poll() is None, "the embed finished before it could be killed"
    pb.send_signal(signal.SIGKILL)
    pb.wait(timeout=30)
    done_at_kill = list_parts(folder_b)
    assert 2 <= len(done_at_kill) < n_parts
    snap = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder_b.iterdir() if p.name.startswith("part-")
            and int(p.name[5:10]) in done_at_kill}
    rows_done = sum(len(ids) + len(read_part_meta(folder_b, n)["failed"])
                    for n, ids, _ in iter_parts(folder_b) if n in done_at_kill)

    pr = _embed_proc(tmp_path / "b", cfg)
    out, err = pr.communicate(timeout=300)
    assert pr.returncode == 0, err
    resumed = json.loads(out)

    # same files, byte for byte
    fa, fb = _store(tmp_path / "a"), _store(tmp_path / "b")
    names = sorted(p.name for p in fa.iterdir())
    assert names == sorted(p.name for p in fb.iterdir())
    assert all((fa / n).read_bytes() == (fb / n).read_bytes() for n in names), names
    # the parts finished before the kill were not rewritten, and only the rest was computed
    assert snap == {n: ((fb / n).stat().st_ino, (fb / n).stat().st_mtime_ns) for n in snap}
    recomputed = resumed["embedded"] + sum(resumed["failed"].values())
    assert recomputed == 120 - rows_done
    assert resumed["parts_written"] == n_parts - len(done_at_kill)
    assert _statuses(tmp_path / "a") == _statuses(tmp_path / "b")


def test_k13_zero_and_nonfinite_vectors_rejected_with_reason(tmp_path, tiny):
    _images(tmp_path / "imgs", 6, extremes=True)
    cfg = _cfg(_config(tmp_path, tiny, num_workers=0))
    ws = tmp_path / "ws"
    api.run(ws, cfg, stages=["ingest", "hash"])
    c = api.run_one(ws, "embed", cfg)["counters"]
    assert c["embedded"] == 6 and c["failed"] == {"nonfinite_vector": 1, "zero_vector": 1}
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    by_file = dict(con.execute(
        "SELECT split_part(s.image_ref, '/', -1), e.status FROM samples s JOIN embeddings e USING (sample_id)").fetchall())
    con.close()
    assert by_file["white.png"] == "zero_vector" and by_file["black.png"] == "nonfinite_vector"
    folder = _store(ws)
    for _, ids, vecs in iter_parts(folder):  # nothing but unit-length finite rows is stored
        v = np.asarray(vecs, np.float32)
        assert np.isfinite(v).all() and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-3)
    meta = read_part_meta(folder, 0)
    assert sorted(st for _, st in meta["failed"]) == ["nonfinite_vector", "zero_vector"]
    d = api.run_one(ws, "dedup", api.with_overrides(cfg, "dedup", {"embedding_min_quality": 0}))["counters"]
    assert d["embedded_searched"] == 6  # every stored vector (the flat ones too, with the information gate off)


def test_preprocessing_change_embeds_again_under_a_new_key(tmp_path, tiny):
    _images(tmp_path / "imgs", 10)
    ws = tmp_path / "ws"
    c1 = _cfg(_config(tmp_path, tiny, num_workers=0))
    api.run(ws, c1, stages=["ingest", "hash"])
    r1 = api.run_one(ws, "embed", c1)["counters"]
    assert r1["embedded"] == 10
    c2 = _cfg(_config(tmp_path, tiny, num_workers=0, trim_border=False))
    r2 = api.run_one(ws, "embed", c2)
    assert not r2["skipped"] and r2["counters"]["key"] != r1["key"]
    assert r2["counters"]["embedded"] == 10  # nothing reused from the old preprocessing
    assert api.run_one(ws, "dedup", c2)["counters"]["embedding_key"] == r2["counters"]["key"]
    c3 = _cfg(_config(tmp_path, tiny, num_workers=0, preprocess="dcr_224"))
    r3 = api.run_one(ws, "embed", c3)["counters"]
    assert r3["key"] not in (r1["key"], r2["counters"]["key"]) and r3["embedded"] == 10
    back = api.run_one(ws, "embed", c1)["counters"]  # the first preprocessing again: all still there
    assert back["key"] == r1["key"] and back["embedded"] == 0 and back["total_embedded"] == 10
    # batch size and workers are speed settings, not part of the key
    assert api.run_one(ws, "embed", _cfg(_config(tmp_path, tiny, num_workers=1, batch_size=3)))["counters"]["embedded"] == 0


def test_catalog_rows_lost_after_part_written_are_recovered_not_recomputed(tmp_path, tiny):
    _images(tmp_path / "imgs", 20)
    ws = tmp_path / "ws"
    cfg = _cfg(_config(tmp_path, tiny, num_workers=0))
    api.run(ws, cfg, stages=["ingest", "hash"])
    first = api.run_one(ws, "embed", cfg)["counters"]
    folder = _store(ws)
    last = list_parts(folder)[-1]
    before = (folder / f"part-{last:05d}.npy").read_bytes()
    # the window between renaming a part into place and committing its rows; plus a temp file
    con = duckdb.connect(str(ws / "catalog.duckdb"))
    con.execute("DELETE FROM embeddings WHERE part = ?", [last])
    con.close()
    (folder / "part-99999.npy.tmp12345").write_bytes(b"half a part")
    again = api.run_one(ws, "embed", cfg, force=True)["counters"]
    assert again["embedded"] == 0 and again["recovered_rows"] == 20 - 8 * last
    assert again["temp_files_removed"] == 1 and not list(folder.glob("*.tmp*"))
    assert (folder / f"part-{last:05d}.npy").read_bytes() == before
    assert again["total_embedded"] == first["total_embedded"] == 20
    # a part whose files are gone is forgotten and embedded again
    for p in folder.glob(f"part-{last:05d}*"):
        p.unlink()
    redo = api.run_one(ws, "embed", cfg, force=True)["counters"]
    assert redo["forgotten_parts"] == 1 and redo["embedded"] == 20 - 8 * last
    assert (folder / f"part-{last:05d}.npy").read_bytes() == before


def test_sscd_presets_shapes_and_variable_size_batches(tmp_path, tiny):
    import torch

    from curate.models import load_image_model, resolve_image_model
    from curate.models.feeder import collate as _collate, forward as _forward

    a = Image.new("RGB", (200, 100), (200, 30, 30))
    b = Image.new("RGB", (90, 180), (30, 30, 200))
    p288 = resolve_image_model(f"sscd:{tiny}").preprocess  # default preset
    assert p288.pixels(a).shape == (3, 288, 576) and p288.pixels(b).shape == (3, 576, 288)
    assert resolve_image_model(f"sscd:{tiny}", preset="sscd_320").preprocess.pixels(a).shape == (3, 320, 320)
    dcr = resolve_image_model(f"sscd:{tiny}", preset="dcr_224").preprocess
    assert dcr.pixels(a).shape == (3, 224, 224) and dcr.mean == (0.5, 0.5, 0.5)
    m = load_image_model(f"sscd:{tiny}", "cpu")
    assert m.dim == 16 and m.spec.preset == "sscd_288"
    batch = [(1, torch.from_numpy(p288.pixels_hwc(a)), "ok"), (2, torch.from_numpy(p288.pixels_hwc(b)), "ok"),
             (3, torch.from_numpy(p288.pixels_hwc(a.transpose(Image.FLIP_LEFT_RIGHT))), "ok"), (4, None, "truncated")]
    sids, x, bad = _collate(batch)
    assert sids == [1, 2, 3] and isinstance(x, list) and bad == [(4, "truncated")]
    got = _forward(m, x)
    one = np.concatenate([m.forward(t[None]) for t in x])
    assert np.allclose(got, one, atol=1e-5)
    with pytest.raises(Exception, match="preset"):
        resolve_image_model("efficientnet_lite0", preset="sscd_320")


def test_full_preset_sees_the_whole_picture_and_is_the_default_for_efficientnet(tiny):
    """``full`` squashes the whole image to the model's input (no centre crop): a wide banner's
    ends stay in view. ``auto`` (the config default) is ``full`` for efficientnet_lite0 and the
    model's own preprocessing elsewhere; each preprocessing has its own embedding key."""
    from curate.config import EmbedConfig
    from curate.models import resolve_image_model

    banner = np.full((100, 400, 3), 230, np.int16)
    banner[:, :60] = (220, 20, 20)  # red left end, blue right end, white middle; noisy (no flat border to trim)
    banner[:, -60:] = (20, 20, 220)
    banner = np.clip(banner + np.random.default_rng(0).integers(-20, 21, banner.shape), 0, 255).astype(np.uint8)
    own = resolve_image_model("efficientnet_lite0", preset="model")
    full = resolve_image_model("efficientnet_lite0", preset="full")
    auto = resolve_image_model("efficientnet_lite0", preset=EmbedConfig().preprocess)
    assert EmbedConfig().preprocess == "auto" and auto.key == full.key != own.key and auto.preset == "full"
    x_own, x_full = own.preprocess.pixels(banner), full.preprocess.pixels(banner)
    assert x_own.shape == x_full.shape == (3, 224, 224)
    assert (x_own >= 190).all()  # the centre crop of the banner is blank white
    left, right = x_full[:, :, :20].reshape(3, -1).mean(1), x_full[:, :, -20:].reshape(3, -1).mean(1)
    assert left[0] > 180 > 60 > left[2] and right[2] > 180 > 60 > right[0]
    clip_own = resolve_image_model("open_clip:ViT-B-32/none", preset="auto")
    clip_full = resolve_image_model("open_clip:ViT-B-32/none", preset="full")
    assert clip_own.preprocess.crop == 224 and clip_full.preprocess.crop is None
    assert clip_full.preprocess.pixels(banner).shape == (3, 224, 224) and clip_full.key != clip_own.key
    assert clip_full.preprocess.mean == clip_own.preprocess.mean  # only the crop changes
    assert resolve_image_model(f"sscd:{tiny}", preset="auto").preset == "sscd_288"
    with pytest.raises(ConfigError, match="'full' is for efficientnet_lite0 and open_clip"):
        resolve_image_model(f"sscd:{tiny}", preset="full")


@pytest.mark.slow
def test_caption_embeddings_offline_minilm(tmp_path, tiny):
    _images(tmp_path / "imgs", 4)
    caps = {"img000": "a photo of a cat sitting on a sofa", "img001": "a picture of a cat on a couch",
            "img002": "a red sports car on a race track"}
    for stem, c in caps.items():
        (tmp_path / "imgs" / f"{stem}.txt").write_text(c)
    ws = tmp_path / "ws"
    cfg = _cfg(_config(tmp_path, tiny, num_workers=0, caption_model="all-MiniLM-L6-v2"))
    api.run(ws, cfg, stages=["ingest", "hash"])
    c = api.run_one(ws, "embed", cfg)["counters"]["captions"]
    assert c["key"].startswith("text:all-MiniLM-L6-v2@") and c["embedded"] == 3 and c["no_caption"] == 1
    assert c["dim"] == 384
    folder = _dir(ws, c["key"])
    (_, ids, vecs), = list(iter_parts(folder))
    v = np.asarray(vecs, np.float32)
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-3)
    s = v @ v.T
    assert s[0, 1] > 0.6 and s[0, 1] > s[0, 2] + 0.3  # the two cat captions, not the car
    again = api.run_one(ws, "embed", cfg, force=True)["counters"]["captions"]
    assert again["embedded"] == 0 and again["total_embedded"] == 3


@pytest.mark.slow
def test_open_clip_image_and_text_towers_store_similarity(tmp_path):
    _images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "img000.txt").write_text("a photo")
    (tmp_path / "imgs" / "img001.txt").write_text("a drawing of a house")
    ws = tmp_path / "ws"
    name = "open_clip:ViT-B-32/none"
    p = tmp_path / "oc.json"
    p.write_text(json.dumps({"sources": [{"name": "imgs", "images": "imgs"}], "hash": {"workers": 0},
                             "embed": {"model": name, "caption_model": name, "device": "cpu", "num_workers": 0}}))
    cfg = _cfg(p)
    api.run(ws, cfg, stages=["ingest", "hash"])
    c = api.run_one(ws, "embed", cfg)["counters"]
    assert c["embedded"] == 3 and c["dim"] == 512
    assert c["captions"]["embedded"] == 2 and c["captions"]["with_similarity"] == 2
    from curate.store.embeddings import lookup

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT sample_id, similarity FROM image_text ORDER BY 1").fetchall()
    con.close()
    ids = np.array([r[0] for r in rows], np.int64)
    _, iv = lookup(_dir(ws, c["key"]), ids)
    _, tv = lookup(_dir(ws, c["captions"]["key"]), ids)
    assert np.allclose([r[1] for r in rows], (iv * tv).sum(axis=1), atol=1e-6)
    assert all(-1 <= r[1] <= 1 for r in rows)


def _trim_reference(rgb: np.ndarray, tol: int = 10, max_fraction: float = 0.45) -> np.ndarray:
    """The plain definition: per edge, the leading rows/columns whose every pixel is within
    ``tol`` of the top-left pixel; an edge run longer than ``max_fraction`` of the side is
    not trimmed; nothing is trimmed if the runs would cover the image."""
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return rgb
    flat = np.abs(rgb.astype(np.int16) - rgb[0, 0].astype(np.int16)).max(axis=2) <= tol
    rows, cols = flat.all(axis=1), flat.all(axis=0)

    def run(mask, lim):
        n = int(np.argmin(mask)) if not mask.all() else len(mask)
        return n if n <= lim else 0

    t, b = run(rows, int(h * max_fraction)), run(rows[::-1], int(h * max_fraction))
    left, r = run(cols, int(w * max_fraction)), run(cols[::-1], int(w * max_fraction))
    if t + b >= h or left + r >= w:
        return rgb
    return rgb[t : h - b, left : w - r]


def test_trim_uniform_border_equals_the_plain_definition():
    from curate.models import Preprocess, trim_uniform_border

    rng = np.random.default_rng(3)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SAMPLE / "photos").glob("*.png"))[:4]]
    cases = []
    for k in range(120):
        a = photos[k % len(photos)][: int(rng.integers(8, 200)), : int(rng.integers(8, 200))]
        h, w = a.shape[:2]
        col = rng.integers(0, 256, 3).astype(np.uint8)
        t, b = (int(x) for x in rng.integers(0, max(1, h), 2))
        l, r = (int(x) for x in rng.integers(0, max(1, w), 2))
        out = np.empty((h + t + b, w + l + r, 3), np.uint8)
        out[:] = col
        out[t : t + h, l : l + w] = a
        if k % 3 == 0:  # one pixel off by a little or a lot inside the border
            y, x = int(rng.integers(0, out.shape[0])), int(rng.integers(0, out.shape[1]))
            out[y, x] = (out[y, x].astype(int) + rng.integers(-14, 15, 3)).clip(0, 255)
        cases += [out, a]
    cases.append(np.full((40, 30, 3), 7, np.uint8))
    trimmed = 0
    for c in cases:
        got, want = trim_uniform_border(c), _trim_reference(c)
        assert got.shape == want.shape and np.array_equal(got, want)
        trimmed += got.shape != c.shape
    assert trimmed > 40  # the cases do exercise trimming
    pre = Preprocess(64, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    untrimmed = Preprocess(64, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), trim_border=False)
    for c in cases:  # the edge-line pre-check never skips a trim the definition would make
        want = untrimmed.pixels_hwc(Image.fromarray(np.ascontiguousarray(_trim_reference(c))))
        assert np.array_equal(pre.pixels_hwc(Image.fromarray(c)), want)


def test_decode_workers_auto_leaves_cpu_cores_to_the_model():
    from curate.models.feeder import decode_workers

    assert decode_workers("auto", "cpu", cpus=2) == 1      # this machine: one decoder beside the model's threads
    assert decode_workers("auto", "cpu", cpus=32) == 4
    assert decode_workers("auto", "cuda", cpus=16) == 15   # GPU: decoding is the bottleneck
    assert decode_workers("auto", "cuda", cpus=1) == 1
    assert decode_workers(0, "cuda", cpus=16) == 0         # an explicit count is used as given


def test_missing_weights_after_workers_started_is_a_clear_error_and_leaves_no_workers(tmp_path, tiny, monkeypatch):
    """The weights vanish after the up-front check (api.check_config, which names a missing file
    before any stage): the embed stage's own error, with its decode workers shut down."""
    import multiprocessing

    _images(tmp_path / "imgs", 6)
    ws = tmp_path / "ws"
    api.run(ws, _cfg(_config(tmp_path, tiny, num_workers=2)), stages=["ingest", "hash"])
    cfg = _cfg(_config(tmp_path, tmp_path / "no-such-model.pt", num_workers=2))
    with pytest.raises(ConfigError, match="no-such-model.pt"):
        api.check_config(cfg)  # what a run meets first
    monkeypatch.setattr(api, "check_config", lambda cfg: None)  # deleted after the check
    with pytest.raises(ConfigError, match="no-such-model.pt"):
        api.run_one(ws, "embed", cfg)
    assert multiprocessing.active_children() == []
    assert _statuses(ws) == {}


def test_parts_on_object_storage_give_the_same_parts_and_clusters(tmp_path, tiny):
    """``embed.parts_root`` as a URI (``memory://`` stands in for s3://): the parts land there,
    byte-identical to a local run's, nothing under the workspace, and dedup reads them back."""
    import uuid

    from curate.store import fsio

    _images(tmp_path / "imgs", 12)
    uri = f"memory://curate-parts-{uuid.uuid4().hex[:8]}/emb"
    local, remote = tmp_path / "ws-local", tmp_path / "ws-remote"
    c_local = _cfg(_config(tmp_path, tiny, num_workers=0))
    c_remote = _cfg(_config(tmp_path, tiny, num_workers=0, parts_root=uri))
    got = {}
    for ws, cfg in ((local, c_local), (remote, c_remote)):
        api.run(ws, cfg, stages=["ingest", "hash"])
        got[ws] = (api.run_one(ws, "embed", cfg)["counters"], api.run_one(ws, "dedup", cfg)["counters"])
    (e_local, d_local), (e_remote, d_remote) = got[local], got[remote]
    assert e_remote["embedded"] == e_local["embedded"] == 12 and e_remote["key"] == e_local["key"]
    assert not any((remote / "embeddings").iterdir())  # nothing written beside the catalog
    folder = fsio.join(uri, _dir(Path("."), e_local["key"]).name)
    names = fsio.listdir(folder)
    assert names == sorted(p.name for p in _store(local).iterdir())
    for n in names:
        if n.endswith(".npy"):
            assert fsio.read_bytes(fsio.join(folder, n)) == (_store(local) / n).read_bytes(), n
    informative = duckdb.connect(str(local / "catalog.duckdb"), read_only=True).execute(
        "SELECT count(*) FROM images WHERE status = 'ok' AND phash_quality >= 25").fetchone()[0]
    assert d_remote["embedded_searched"] == d_local["embedded_searched"] == informative >= 10  # flat ones: no edges
    assert d_remote["edges"] == d_local["edges"] and d_remote["clusters"] == d_local["clusters"]
    # a re-run finds every part on the object store and recomputes nothing
    again = api.run_one(remote, "embed", c_remote, force=True)["counters"]
    assert again["embedded"] == 0 and again["total_embedded"] == 12


def test_relative_parts_root_is_relative_to_the_config_file(tmp_path, tiny):
    _images(tmp_path / "imgs", 4)
    cfg = _cfg(_config(tmp_path, tiny, num_workers=0, parts_root="shared-parts"))
    assert cfg.embeddings_root() == (tmp_path / "shared-parts").resolve()
    ws = tmp_path / "ws"
    api.run(ws, cfg, stages=["ingest", "hash"])
    key = api.run_one(ws, "embed", cfg)["counters"]["key"]
    assert list_parts(tmp_path / "shared-parts" / _dir(Path("."), key).name) == [0]
