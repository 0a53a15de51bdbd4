"""The dedup stage's pHash signals on real photos: mirror-aware pHash edges (signal
``phash_mirror``) with their evidence and cluster statistics, star edges for identical hashes,
switching signals off through ``api.with_overrides`` and the CLI, and catalogs hashed before
mirror hashes existed being brought up to date."""
from __future__ import annotations

import csv
import json
import shutil

import duckdb
import pytest
from PIL import Image, ImageOps

from tests.conftest import SAMPLE
from tests.conftest import query as _q
from curate import api
from curate.config import RunConfig
from curate.errors import ConfigError

PHOTOS = ["skimage_astronaut.png", "skimage_coffee.png", "skimage_chelsea.png", "matplotlib_grace_hopper.jpg",
          "datajuicer_cat.jpg"]


@pytest.fixture()
def photo_ws(tmp_path):
    """A folder of 5 distinct real photos, a mirror copy of the coffee photo (JPEG), and 4
    byte-identical copies of the cat photo; hashed; embedding edges and containment off (the
    hash signals alone; the verified local-feature match of a mirror copy is tested in
    test_containment)."""
    d = tmp_path / "imgs"
    d.mkdir()
    for f in PHOTOS:
        shutil.copy(SAMPLE / "photos" / f, d / f)
    ImageOps.mirror(Image.open(SAMPLE / "photos" / "skimage_coffee.png").convert("RGB")).save(d / "coffee_flip.jpg", quality=90)
    for k in range(4):
        shutil.copy(SAMPLE / "photos" / "datajuicer_cat.jpg", d / f"cat_copy{k}.jpg")
    cfg = RunConfig.model_validate({"sources": [{"name": "p", "images": str(d)}],
                                    "dedup": {"embedding_min_cosine": None, "containment": False},
                                    "flag": {"packs": ["quality"]}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run(ws, cfg, stages=["ingest", "hash"])
    return ws, cfg




def _clusters_by_name(ws) -> dict[str, set[str]]:
    rows = _q(ws, "SELECT c.cluster_id, s.image_ref FROM clusters c JOIN samples s USING (sample_id)")
    out: dict = {}
    for cid, ref in rows:
        out.setdefault(cid, set()).add(ref.rsplit("/", 1)[-1])
    return {min(v): v for v in out.values()}


def test_mirror_copy_joins_its_original_through_phash_mirror(photo_ws):
    ws, cfg = photo_ws
    c = next(r for r in api.run(ws, cfg, stages=["dedup", "flag", "export"])["stages"] if r["stage"] == "dedup")["counters"]
    groups = _clusters_by_name(ws)
    assert {"coffee_flip.jpg", "skimage_coffee.png"} in groups.values()
    assert {"datajuicer_cat.jpg"} | {f"cat_copy{k}.jpg" for k in range(4)} in groups.values()
    assert len(groups) == 2  # no distinct photos merged
    # the mirror copy is joined by one phash_mirror edge; identical hashes by 4 star edges, not 10 pairs
    assert c["edges"]["phash_mirror"] == 1 and c["edges"]["phash"] == 4 and c["edges"]["sha256"] == 4
    assert c["phash_search"]["identical_collapsed"] == 4 and c["phash_search"]["mirror_edges"] == 1
    (bits,) = _q(ws, "SELECT distance FROM dup_edges WHERE signal = 'phash_mirror'")[0]
    assert 0 <= bits <= 10  # JPEG re-encoding moves a few bits
    stats = _q(ws, "SELECT signals, edges_phash, edges_phash_mirror, max_phash_bits FROM cluster_stats "
                   "WHERE edges_phash_mirror > 0")
    assert stats == [(["phash_mirror"], 0, 1, int(bits))]
    with open(ws / "out" / "removals" / "all.csv", newline="") as f:
        ev = {r["image_ref"].rsplit("/", 1)[-1]: r["evidence"] for r in csv.DictReader(f)}
    flip = ev.get("coffee_flip.jpg") or ev["skimage_coffee.png"]
    assert "signals: phash_mirror" in flip, flip
    summary = json.loads((ws / "out" / "summary.json").read_text())
    assert summary["clusters"]["edges_by_signal"]["phash_mirror"] == 1
    assert summary["clusters"]["by_signals"].get("phash_mirror") == 1


def test_signals_switched_off_through_overrides_and_cli(photo_ws):
    from click.testing import CliRunner

    from cli import main

    ws, cfg = photo_ws
    off = api.with_overrides(cfg, "dedup", {"phash_mirror": False})
    assert off.dedup.phash_mirror is False and cfg.dedup.phash_mirror is True  # a copy; cfg untouched
    c = api.run_one(ws, "dedup", off)["counters"]
    assert "phash_mirror" not in c["edges"] and "coffee_flip.jpg" not in set().union(*_clusters_by_name(ws).values())
    # None switches a signal off (it used to be dropped as "not given")
    none = api.with_overrides(cfg, "dedup", {"phash_max_distance": None})
    assert none.dedup.phash_max_distance is None and none.dedup.sha256 is True
    c = api.run_one(ws, "dedup", none)["counters"]
    assert set(c["edges"]) == {"sha256"} and "phash_search" not in c
    assert api.with_overrides(cfg, "dedup", {}) is cfg
    with pytest.raises(ConfigError, match="dedup.phash_min_side"):
        api.with_overrides(cfg, "dedup", {"phash_min_side": None})  # not nullable
    with pytest.raises(ConfigError, match="phash_radius"):
        api.with_overrides(cfg, "dedup", {"phash_radius": 3})
    # the CLI (the workspace's last config: pHash off): unset options leave it alone, `off`
    # switches a signal off, a value switches it on
    run = lambda *a: CliRunner().invoke(main, ["--workspace", str(ws), "dedup", "--force", *a])  # noqa: E731
    r = run("--no-phash-mirror", "--phash-max-distance", "10")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.output)["counters"]["edges"]) == {"sha256", "phash"}
    r = run("--phash-mirror", "--phash-max-distance", "off")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.output)["counters"]["edges"]) == {"sha256"}
    r = run("--phash-max-distance", "8")  # mirror stays as last given (on)
    assert r.exit_code == 0 and json.loads(r.output)["counters"]["edges"]["phash_mirror"] == 1
    assert api.workspace_config(ws).dedup.phash_max_distance == 8
    r = run("--phash-max-distance", "eight")
    assert r.exit_code != 0 and "eight" in r.output


def test_catalog_hashed_before_mirror_hashes_is_rehashed(photo_ws):
    """An older catalog: no phash_mirror column, a hash run of the previous stage version. Opening
    it adds the column; the next run re-hashes the rows without a mirror hash (same hashes
    back), and dedup finds the mirror copy."""
    ws, cfg = photo_ws
    before = _q(ws, "SELECT sample_id, phash, phash_mirror FROM images ORDER BY sample_id")
    con = duckdb.connect(str(ws / "catalog.duckdb"))
    con.execute("ALTER TABLE images DROP COLUMN phash_mirror")
    con.execute("ALTER TABLE cluster_stats DROP COLUMN edges_phash_mirror")
    con.execute("UPDATE runs SET digest = 'hash stage v1' WHERE stage = 'hash'")
    con.close()
    res = [r for r in api.run(ws, cfg, stages=["hash", "dedup"])["stages"] if r["stage"] in ("hash", "dedup")]
    assert not res[0]["skipped"] and res[0]["counters"]["rehashed_for_mirror_phash"] == len(before) == 10
    assert _q(ws, "SELECT sample_id, phash, phash_mirror FROM images ORDER BY sample_id") == before
    assert res[1]["counters"]["edges"]["phash_mirror"] == 1 and res[1]["counters"]["phash_mirror_missing"] == 0
    # up to date now: nothing re-hashed for a mirror hash (--force reads and hashes every image again)
    again = api.run_one(ws, "hash", cfg, force=True)["counters"]
    assert again["rehashed_for_mirror_phash"] == 0 and again["hashed"] == again["rehashed_forced"] == 10
