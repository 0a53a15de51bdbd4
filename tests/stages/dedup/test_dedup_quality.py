"""The near-duplicate quality benchmark (benchmarks/dedup_quality.py): its scoring on hand-made
examples, its deterministic copies, and a small version of it run through the real pipeline."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, SHARED

_spec = importlib.util.spec_from_file_location("dedup_quality", ROOT / "benchmarks" / "dedup_quality.py")
dq = importlib.util.module_from_spec(_spec)
sys.modules["dedup_quality"] = dq  # dataclasses look their module up while the file executes
_spec.loader.exec_module(dq)

needs_shared = pytest.mark.skipif(not (SHARED / "PROVENANCE.md").is_file(), reason="../shared/data not present")


def test_pair_scores_on_a_hand_made_example():
    # truth: A = {0, 1, 2}, B = {3, 4}, C = {5}  → positives (0,1) (0,2) (1,2) (3,4)
    # clusters {0, 1}, {2, 3}, {4}, {5}        → predicted (0,1) (2,3): one right, one wrong
    s = dq.pair_scores([0, 0, 0, 1, 1, 2], [7, 7, 8, 8, 9, 10])
    assert (s["tp"], s["fp"], s["fn"], s["positives"], s["predicted"]) == (1, 1, 3, 4, 2)
    assert s["precision"] == 0.5 and s["recall"] == 0.25 and s["f1"] == pytest.approx(1 / 3, abs=1e-5)
    # everything in one cluster: recall 1, precision 4 / 15
    s = dq.pair_scores([0, 0, 0, 1, 1, 2], [1] * 6)
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(4 / 15, abs=1e-5)
    # an ignored group pair counts neither way: merging B with C is not a false positive
    s = dq.pair_scores([0, 0, 1, 1, 2], [0, 0, 1, 1, 1], ignore=[(1, 2)])
    assert (s["tp"], s["predicted"], s["precision"], s["recall"]) == (2, 2, 1.0, 1.0)
    # label −1 = outside the evaluated set
    s = dq.pair_scores([0, 0, 1, 1], [0, -1, 0, 0])
    assert (s["positives"], s["predicted"], s["tp"]) == (1, 3, 1)  # nodes 0, 2, 3 only
    # nothing predicted: precision 1 by convention, recall 0, F1 0
    s = dq.pair_scores([0, 0], [0, 1])
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 0.0, 0.0)


def test_edge_scores_count_direct_pairs_once():
    group = np.array([0, 0, 0, 1])
    nodes = np.ones(4, bool)
    # edges 0-1 twice (two signals) and 1-3; the cluster {0, 1, 3} is not what edge level counts
    a, b = np.array([0, 1, 1]), np.array([1, 0, 3])
    s = dq.edge_scores(group, a, b, nodes)
    assert (s["tp"], s["predicted"], s["positives"]) == (1, 2, 3)


def test_copy_scores_count_pairs_with_a_copy_and_leave_base_merges_to_the_base_set():
    # groups 0, 1, 2 with originals 0, 2, 4 and copies 1 (of group 0) and 3 (of group 1)
    group = np.array([0, 0, 1, 1, 2])
    copy = np.array([False, True, False, True, False])
    label = np.array([5, 5, 5, 6, 7])  # clusters {0, 1, 2}, {3}, {4}
    # pairs with a copy: (0,1) right, (1,2) wrong; (0,2) has no copy; positives (0,1) and (2,3)
    s = dq.copy_scores(group, label, copy, related=group)
    assert (s["tp"], s["fp"], s["positives"], s["excluded"]) == (1, 1, 2, 0)
    assert s["precision"] == 0.5 and s["recall"] == 0.5
    # originals 0 and 2 already merged without copies: (1,2) is the base set's error, not the copy's
    s = dq.copy_scores(group, label, copy, related=np.array([0, 0, 0, 0, 2]))
    assert (s["tp"], s["fp"], s["excluded"], s["precision"]) == (1, 0, 1, 1.0)
    # a bridging copy: copy 1 joins originals 0 and 4 into one cluster → (1,4) is false
    s = dq.copy_scores(group, np.array([5, 5, 6, 7, 5]), copy, related=group)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    e = dq.copy_edge_scores(group, np.array([0, 1]), np.array([1, 4]), np.ones(5, bool), copy, group)
    assert (e["tp"], e["fp"], e["positives"]) == (1, 1, 2)


def test_sha_star_edges_are_rebuilt_for_a_sub_dataset():
    # byte-identical set {0, 2, 3} stored as a star around 0; without node 0, 2 and 3 stay joined
    g = dq.Graph(4, np.array([0, 0]), np.array([2, 3]), np.array(["sha256", "sha256"]), np.zeros(2))
    nodes = np.array([False, True, True, True])
    a, b = dq.sha_equivalent_edges(g, nodes)
    lab = dq.components(4, a, b, nodes)
    assert lab[0] == -1 and lab[2] == lab[3] != lab[1]


@needs_shared
def test_copies_are_deterministic_and_labelled(tmp_path):
    data = (SHARED / "images-captioned" / "skimage" / "coffee.png").read_bytes()
    it = dq.Item("images-captioned/skimage/coffee.png", data, ".png", "original", (600, 400))
    t1 = dq.build_set(tmp_path / "a", [it], all_levels=True)
    t2 = dq.build_set(tmp_path / "b", [it], all_levels=True)
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}  # noqa: E731
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert len(t1) == 1 + sum(len(v) for v in dq.TRANSFORMS.values()) and [t.file for t in t1] == [t.file for t in t2]
    assert t1[0].role == "original" and all(t.role == "copy" and t.group == 0 for t in t1[1:])
    assert sorted(p.name for p in (tmp_path / "a").iterdir())[0] == t1[0].file  # the original sorts first
    assert (tmp_path / "a" / "g0000_exact_bytes.png").read_bytes() == data


def _item(rel: str, role: str = "original") -> "dq.Item":
    from PIL import Image

    p = SHARED / rel
    with Image.open(p) as im:
        size = im.size
    return dq.Item(rel, p.read_bytes(), p.suffix.lower(), role, size)


@needs_shared
@pytest.mark.slow
def test_small_benchmark_through_the_pipeline(tmp_path):
    items = [_item(f"images-captioned/skimage/{n}") for n in ("astronaut.png", "coffee.png", "chelsea.png", "camera.png")]
    items += [_item("images-captioned/sklearn/china.jpg"), _item("images-captioned/sklearn/flower.jpg")]
    # two different 88×31 badges: visually similar negatives without copies
    items += [_item("images-captioned/fondant-cc25m/images/0_260.jpg", "distractor"),
              _item("images-captioned/fondant-cc25m/images/0_57.jpg", "distractor")]
    transforms = {k: dq.TRANSFORMS[k] for k in ("exact", "resize", "jpeg", "grayscale", "hflip")}
    res = dq.run_benchmark(tmp_path, items=items, transforms=transforms, phash_sweep=[0, 10],
                           cosine_sweep=[0.85, 0.98], baseline=False, num_workers=0)
    json.dumps(res)  # the results file is plain JSON
    assert res["dataset"]["originals"] == 6 and res["dataset"]["copies"] == 6 * 5
    comb = res["signals"]["combined"]["scores"]
    # resized, low-quality JPEG, grayscale and exact copies are all found by the default config
    for t in ("exact", "resize", "jpeg", "grayscale"):
        assert comb[t]["cluster"]["recall"] == 1.0, (t, comb[t])
        assert comb[t]["cluster"]["precision"] == 1.0, (t, comb[t])
    # no two distinct originals are merged (the two badges may be: they are tiny and alike)
    orig_groups = {r[1] for r in res["truth"]["rows"] if r[2] == "original"}
    assert comb["base"]["cluster"]["fp"] <= 1
    assert all(len(set(m["pictures"]) - {"0_260.jpg", "0_57.jpg"}) == 0 for m in res["false_merges_default"]["base"])
    assert len(orig_groups) == 6
    # the pipeline's own clusters table agrees with the components of its dup_edges
    assert comb["all"]["cluster_table"] == comb["all"]["cluster"]
    # sha256 alone finds exact copies and nothing else; pHash finds every mirror image through its
    # mirror hash (a mirror image's own pHash is far from the original's), and misses them without it
    sha = res["signals"]["sha256"]["scores"]
    assert sha["exact"]["cluster"]["recall"] == 1.0 and sha["resize"]["cluster"]["recall"] == 0.0
    assert res["signals"]["phash"]["scores"]["hflip"]["cluster"]["recall"] == 1.0
    assert res["copy_diagnostics"]["hflip/mirror"]["phash_bits_median"] > 16
    assert res["copy_diagnostics"]["hflip/mirror"]["phash_mirror_aware_bits_median"] <= 4
    abl = res["experiments"]
    assert abl["no_phash_mirror"]["counters"]["edges"].get("phash_mirror", 0) == 0
    assert abl["default"]["counters"]["edges"]["phash_mirror"] >= 6  # one per mirror copy at least
    assert abl["no_phash_mirror"]["at_default_cosine"]["hflip"]["cluster"]["recall"] <= comb["hflip"]["cluster"]["recall"] == 1.0
    assert all(v["same_clusters_as_real_run"] for v in abl.values()), {k: v["same_clusters_as_real_run"] for k, v in abl.items()}
    # sweeps ran through dedup re-runs; the offline grid reproduces the real default run
    assert [p["phash_max_distance"] for p in res["sweeps"]["phash"]] == [0, 10]
    assert res["grid_check"]["default_point_same_clusters_as_real_run"]
    assert len(res["truth"]["rows"]) == res["dataset"]["files"]
    # the docs section renders from these results
    md = dq.render_docs(res)
    assert md.startswith(dq.SECTION) and "| resize |" in md
