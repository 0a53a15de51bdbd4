"""``probe select``'s risk features and weights (issue #18): the shipped weights are the ones the
memorized-prompt benchmark measured, and each repetition of a sample counts in one feature only."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLE, SHARED, query

RESULT = ROOT / "benchmarks" / "results" / "memorized_ranking.json"
DUPLICATION = {"image_duplicates", "caption_duplicates", "pair_duplicates"}


def test_shipped_weights_are_the_measured_ones():
    from curate.config import ProbeWeights, RunConfig

    res = json.loads(RESULT.read_text())
    assert ProbeWeights().model_dump() == res["chosen_weights"]
    assert RunConfig.model_validate({"sources": [{"name": "x", "images": "x"}]}).probe.weights.model_dump() == res["chosen_weights"]
    # the measured figure is the test half's, from the same weights
    assert res["test"]["measured (shipped)"]["weights"] == res["chosen_weights"]


def test_benchmark_metrics_handle_ties():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from memorized_ranking import auc, p_at_k

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = rng.random(200) < 0.3
    pos, neg = s[y], s[~y]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert math.isclose(auc(s, y), brute, rel_tol=1e-12)
    # P@k with the k-th score tied: positives above + the tied group's share of the remaining slots
    s2, y2 = np.array([3, 2, 2, 2, 2, 1.0]), np.array([1, 1, 0, 0, 0, 1], bool)
    assert math.isclose(p_at_k(s2, y2, 3), (1 + 2 * 0.25) / 3)


@pytest.fixture(scope="module")
def dup_ws(tmp_path_factory):
    """A folder of real photos: one image+caption pair ×3 (horse), one image ×4 with a caption
    that one other image also has (astronaut, coffee), one image ×2 under two captions (cat),
    one lone sample (camera); after curate's ingest → dedup."""
    from curate import api
    from curate.config import RunConfig

    root = tmp_path_factory.mktemp("dups")
    src = root / "photos"
    src.mkdir()
    files = [("horse", "skimage_horse.png", "silhouette of a horse galloping", 3),
             ("astro", "skimage_astronaut.png", "astronaut portrait with the flag", 4),
             ("coffee", "skimage_coffee.png", "astronaut portrait with the flag", 1),
             ("cat0", "skimage_chelsea.png", "a tabby cat looking sideways", 1),
             ("cat1", "skimage_chelsea.png", "ginger cat on a wooden floor", 1),
             ("camera", "skimage_camera.png", "man with an old film camera", 1)]
    for stem, name, caption, n in files:
        for i in range(n):
            shutil.copy(SAMPLE / "photos" / name, src / f"{stem}_{i}.png")
            (src / f"{stem}_{i}.txt").write_text(caption)
    ws = root / "ws"
    api.run_one(ws, "dedup", RunConfig.model_validate({"sources": [{"name": "photos", "images": str(src)}]}))
    api.probe(ws, "select", overrides={"weights": dict.fromkeys(["image_duplicates", "caption_duplicates",
                                                                 "pair_duplicates", "template", "specificity"], 1.0),
                                       "top_k": 100})
    rows = query(ws, "SELECT prompt, risk, reasons, cluster_size, caption_count, pair_count FROM probes")
    return {r[0]: {"risk": r[1], "reasons": {x["reason"]: x for x in json.loads(r[2])}, "cluster_size": r[3],
                   "caption_count": r[4], "pair_count": r[5]} for r in rows}


def _dup_features(p: dict) -> dict[str, float]:
    return {k: round(v["feature"], 6) for k, v in p["reasons"].items() if k in DUPLICATION}


def test_a_pair_repeated_n_times_counts_log2_n_once(dup_ws):
    horse = dup_ws["silhouette of a horse galloping"]
    assert (horse["cluster_size"], horse["caption_count"], horse["pair_count"]) == (3, 3, 3)
    assert _dup_features(horse) == {"pair_duplicates": round(math.log2(3), 6)}
    spec = horse["reasons"]["specificity"]["contribution"]
    assert math.isclose(horse["risk"], math.log2(3) + spec, abs_tol=1e-5)


def test_image_and_caption_repetitions_beyond_the_pair_count_separately(dup_ws):
    # astronaut ×4 with caption X, and X once more on another image: 4 pair copies, 1 caption-only
    x = dup_ws["astronaut portrait with the flag"]
    assert (x["cluster_size"], x["caption_count"], x["pair_count"]) == (4, 5, 4)
    assert _dup_features(x) == {"pair_duplicates": 2.0, "caption_duplicates": 1.0}  # log2 4; log2(1 + 5 - 4)
    # one image under two captions: an image repetition only
    for cap in ("a tabby cat looking sideways", "ginger cat on a wooden floor"):
        assert _dup_features(dup_ws[cap]) == {"image_duplicates": 1.0}  # log2(1 + 2 - 1)
    assert _dup_features(dup_ws["man with an old film camera"]) == {}


@pytest.mark.slow
def test_benchmark_script_runs_on_a_small_subset(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CURATE_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memorized_ranking.py"),
                        "--data", str(SHARED / "laion-meta"), "--out", str(tmp_path),
                        "--limit-background", "300", "--limit-memorized", "80"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "memorized_ranking.json").read_text())
    assert res["split"]["memorized_train"] + res["split"]["memorized_test"] == 80
    for name, m in res["test"].items():
        assert 0 <= m["auc"] <= 1 and set(m["p_at_k"]) == {"50", "100", "500"}, name
    # image features cannot move the ranking without images: their ablations change nothing
    t = res["test"]
    assert t["measured without image_duplicates"]["auc"] == t["measured (shipped)"]["auc"]
    assert t["measured without pair_duplicates"]["auc"] == t["measured (shipped)"]["auc"]
