"""The benchmark scripts run: the GPU check's CPU smoke mode, its refusal without a GPU, and
the image-set builder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SHARED

BENCH = ROOT / "benchmarks"


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "CURATE_QUIET": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["efficientnet_lite0", "sscd_distilled"])
def test_gpu_check_smoke_runs_every_path_on_cpu(tmp_path, model):
    r = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--models", model,
                        "--n-images", "16", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res == json.loads(r.stdout)
    e = res["models"][model]
    for k in ("model_only", "decode_only_cpu", "e2e_cpu_decode", "decode_only_gpu", "e2e_gpu_decode"):
        assert "error" not in e[k], (k, e[k])
        assert e[k]["img_s"] > 0
    assert e["e2e_cpu_decode"]["images"] == e["e2e_gpu_decode"]["images"] == 16
    assert e["source"] == "curate registry" and e["best_e2e"]["path"] in ("e2e_cpu_decode", "e2e_gpu_decode")


@pytest.mark.slow
def test_gpu_check_without_gpu_exits_2_with_a_clear_message():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], capture_output=True, text=True, timeout=120,
                       env=_env())
    assert r.returncode == 2 and "needs a GPU" in r.stderr and "--smoke" in r.stderr
    r = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 2 and "needs a GPU" in r.stderr


@pytest.mark.skipif(not (SHARED / "PROVENANCE.md").is_file(), reason="../shared/data not present")
def test_make_images_builds_real_variants(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "make_images.py"), str(tmp_path / "imgs"), "--limit", "30"],
                       capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    files = list((tmp_path / "imgs").iterdir())
    assert info["files"] == len(files) >= 30
    assert any("_q" in f.name for f in files) and any(f.name.endswith("_orig.jpg") for f in files)
