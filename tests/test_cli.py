"""CLI contract: help, schemas, errors as one message, flag --dry-run, report escaping."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from click.testing import CliRunner
from PIL import Image

from cli import main

from tests.conftest import ROOT


def test_help_does_not_import_heavy_libraries():
    code = "import sys, cli; cli.main(['--help'], standalone_mode=False); print(sorted(m for m in ('torch','faiss','open_clip','imagededup','duckdb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_python_dash_m_curate_works():
    r = subprocess.run([sys.executable, "-m", "curate", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "status" in r.stdout


def test_schemas_lists_layouts():
    r = CliRunner().invoke(main, ["schemas", "--json"])
    assert r.exit_code == 0
    lays = json.loads(r.output)
    assert {"laion400m", "laion2b_joined", "laion_aesthetics_v2", "img2dataset", "fondant_cc"} <= set(lays)


def test_missing_workspace_and_bad_config_are_one_clear_message(tmp_path):
    r = CliRunner().invoke(main, ["status"], env={"CURATE_WORKSPACE": ""})
    assert r.exit_code != 0 and "no workspace" in r.output
    bad = tmp_path / "c.yaml"
    bad.write_text("sources:\n  - name: x\n    metadata: m.parquet\n    colour: red\n")
    r = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "run", str(bad)])
    assert r.exit_code == 1 and "c.yaml:4: sources.0.colour → unknown key" in r.output
    assert "Traceback" not in r.output


def test_flag_dry_run_and_report_escapes_captions(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k, colour in enumerate([(200, 0, 0), (0, 0, 200)]):
        Image.new("RGB", (64, 64), colour).save(imgs / f"{k}.png")
    (imgs / "0.txt").write_text('<script>alert("x")</script> royalty free stock photo')
    (imgs / "1.png").write_bytes((imgs / "0.png").read_bytes())  # exact duplicate → a cluster in the report
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources:\n  - name: f\n    images: imgs\nembed:\n  num_workers: 0\n")
    ws = str(tmp_path / "ws")
    r = CliRunner().invoke(main, ["-q", "--workspace", ws, "run", str(cfg)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["kept"] == 1 and summary["reasons"] == {"duplicate": 1}
    r = CliRunner().invoke(main, ["--workspace", ws, "flag", "--dry-run"])
    counts = json.loads(r.output)
    assert counts["laion-safety/stock-photo-caption"]["samples"] == 1
    html = (tmp_path / "ws" / "out" / "report" / "index.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_ingest_schema_option_and_mapping_on_stderr(tmp_path):
    import shutil

    from tests.conftest import SHARED

    src = SHARED / "laion-meta" / "cc3m_Validation_GCC-1.1.0-Validation.tsv"
    if not src.is_file():
        pytest.skip("needs ../shared/data")
    lines = src.read_bytes().splitlines()[:5]
    (tmp_path / "v.tsv").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "c.yaml").write_text("sources:\n  - name: cc\n    metadata: v.tsv\n")
    env = {k: v for k, v in os.environ.items() if k != "CURATE_QUIET"}
    r = subprocess.run([sys.executable, "-m", "curate", "-w", str(tmp_path / "ws"), "ingest", "-c", str(tmp_path / "c.yaml"),
                        "--schema", "cc3m"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counters"]["samples"] == 5
    assert "layout cc3m: url→url, caption→caption" in r.stderr
    shutil.rmtree(tmp_path / "ws")
    r = subprocess.run([sys.executable, "-m", "curate", "-w", str(tmp_path / "ws"), "ingest", "-c", str(tmp_path / "c.yaml"),
                        "--schema", "cc12m"], capture_output=True, text=True, env=env)
    assert r.returncode == 0  # forced layout: the URL column holds captions, every row rejected with a reason
    assert json.loads(r.stdout)["counters"]["rejected_by_reason"] == {"invalid_url": 5}
