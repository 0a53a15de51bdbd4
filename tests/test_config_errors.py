"""Configuration errors and run visibility (issue #17): a misspelt name fails before any stage
runs, paths resolve where the user expects, non-UTF-8 lists give a clear error, `curate status`
works while a run holds the catalog, and hostile sizes (a 1 MB caption, a 40 MB row group of
image bytes) stay bounded in memory and output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli import main
from curate import api
from curate.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _meta(folder: Path, captions: list[str] | None = None) -> Path:
    """A metadata-only parquet (url, caption) and a config over it in ``folder``; returns the config."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = captions or ["a cat", "a dog", "royalty free stock photo", "a red car"]
    pq.write_table(pa.table({"url": [f"http://site{i}.org/{i}.jpg" for i in range(len(captions))],
                             "caption": captions}), folder / "m.parquet")
    cfg = folder / "c.yaml"
    cfg.write_text("sources:\n  - name: m\n    metadata: m.parquet\n")
    return cfg


def _with(cfg: Path, extra: str) -> Path:
    cfg.write_text(cfg.read_text() + textwrap.dedent(extra))
    return cfg


# ----------------------------------------------------------------------------------------------
# 11. every name and file of the config is checked before the first stage runs


BAD = {
    "pack name": ("flag:\n  packs: [laion-safty]\n", ["laion-safty", "laion-safety"]),
    "pack file": ("flag:\n  packs: [rules/mine.yaml]\n", ["mine.yaml", "not found"]),
    "claim file": ("flag:\n  claims: [claims/agency.yml]\n", ["agency.yml", "not found"]),
    "opt-out list": ("flag:\n  opt_out: [do-not-trian.txt]\n", ["do-not-trian.txt", "do-not-train.txt"]),
    "embed model": ("embed:\n  model: sscd_distiled\n", ["sscd_distiled", "sscd_distilled"]),
    "caption model": ("embed:\n  caption_model: all-MiniLM-L6\n", ["all-MiniLM-L6", "all-MiniLM-L6-v2"]),
    "model weights": ("embed:\n  model: sscd:missing/sscd_disc_mixup.pt\n", ["sscd_disc_mixup.pt", "not found"]),
    "classifier": ("flag:\n  packs: [nsfw.yaml]\n", ["nudenett", "nudenet"]),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_bad_name_fails_before_any_stage_runs(tmp_path, what):
    cfg = _meta(tmp_path / "cfg")
    (tmp_path / "cfg" / "do-not-train.txt").write_text("example.com\n")
    (tmp_path / "cfg" / "nsfw.yaml").write_text(
        "pack: nsfw\ndescription: test\nrules:\n  - id: nude\n    kind: classifier_score\n    classifier: nudenett\n"
        "    label: FEMALE_BREAST_EXPOSED\n    op: '>'\n    value: 0.5\n    unknown: pass\n    category: nsfw\n    action: remove\n")
    yaml_extra, words = BAD[what]
    _with(cfg, yaml_extra)
    ws = tmp_path / "ws"
    with pytest.raises(ConfigError) as e:
        api.run(ws, cfg)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert not (ws / "catalog.duckdb").exists(), "a stage ran before the config was checked"
    r = CliRunner().invoke(main, ["-q", "--workspace", str(ws), "run", str(cfg)])
    assert r.exit_code != 0 and words[0] in r.output and "Traceback" not in r.output
    assert not (ws / "catalog.duckdb").exists()


def test_bad_name_in_stage_command_runs_nothing(tmp_path):
    """A stage command (here `hash`, whose never-run upstream ingest would run first) checks the
    whole config before anything runs, so a typo in the flag section never costs an ingest."""
    cfg = _with(_meta(tmp_path / "cfg"), "flag:\n  packs: [qualty]\n")
    ws = tmp_path / "ws"
    r = CliRunner().invoke(main, ["-q", "--workspace", str(ws), "hash", "--config", str(cfg)])
    assert r.exit_code != 0 and "'qualty'" in r.output and "quality" in r.output, r.output
    assert not (ws / "catalog.duckdb").exists()


# ----------------------------------------------------------------------------------------------
# 12. command-line paths resolve against the working directory, config paths against the config


def test_cli_paths_resolve_against_working_directory(tmp_path, monkeypatch):
    cfg = _meta(tmp_path / "project" / "configs")
    here = tmp_path / "elsewhere"
    (here / "claims").mkdir(parents=True)
    (here / "claims" / "agency.yaml").write_text("claimant: Agency\ndomains: [site1.org]\n")
    (here / "do-not-train.txt").write_text("site2.org\n")
    (here / "mine.yaml").write_text("pack: mine\ndescription: test\nrules:\n  - id: cats\n    kind: caption_words\n    words: [cat]\n"
                                    "    category: quality\n    action: review\n")
    monkeypatch.chdir(here)
    ws = tmp_path / "ws"
    r = CliRunner().invoke(main, ["-q", "--workspace", str(ws), "flag", "--config", str(cfg), "--claims", "claims/",
                                  "--opt-out", "do-not-train.txt", "--pack", "mine.yaml"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["counters"]["hits_per_rule"] == {"mine/cats": 1}
    assert {k: v["samples"] for k, v in out["counters"]["claimants"].items()} == {"Agency": 1, "do-not-train": 1}
    saved = json.loads((ws / "config.json").read_text())["flag"]  # stored absolute: later stage commands agree
    assert saved["claims"] == [str(here / "claims")] and saved["opt_out"] == [str(here / "do-not-train.txt")]
    assert saved["packs"] == [str(here / "mine.yaml")]


def test_config_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    cfg = _with(_meta(tmp_path / "project"), "flag:\n  packs: [quality]\n  opt_out: [lists/no.txt]\n")
    (tmp_path / "project" / "lists").mkdir()
    (tmp_path / "project" / "lists" / "no.txt").write_text("site0.org\n")
    monkeypatch.chdir(tmp_path)
    res = api.run(tmp_path / "ws", cfg)
    assert res["summary"]["reasons"]["opt_out:no"] == 1


def test_cli_list_options_replace_the_configured_lists(tmp_path):
    cfg = _with(_meta(tmp_path / "cfg"), "flag:\n  packs: [laion-safety, quality]\n")
    ws = tmp_path / "ws"
    r = CliRunner().invoke(main, ["-q", "--workspace", str(ws), "flag", "--config", str(cfg), "--dry-run",
                                  "--pack", "quality"])
    assert r.exit_code == 0, r.output
    assert {k.split("/")[0] for k in json.loads(r.output)} == {"quality"}


@pytest.mark.parametrize("kind", ["opt_out", "claim_yaml", "claim_csv", "url_list", "config"])
def test_non_utf8_list_is_a_clear_error(tmp_path, kind):
    folder = tmp_path / "cfg"
    cfg = _meta(folder)
    latin1 = "example.com\nbücher.example\n".encode("latin-1")
    bad = {"opt_out": "no.txt", "claim_yaml": "c.yaml2", "claim_csv": "c.csv", "url_list": "urls.txt",
           "config": None}[kind]
    if kind == "opt_out":
        (folder / "no.txt").write_bytes(latin1)
        _with(cfg, "flag:\n  opt_out: [no.txt]\n")
    elif kind == "claim_yaml":
        bad = "agency.yaml"
        (folder / bad).write_bytes("claimant: Agency\nkeywords: [Bücher]\n".encode("latin-1"))
        _with(cfg, f"flag:\n  claims: [{bad}]\n")
    elif kind == "claim_csv":
        (folder / bad).write_bytes("field,value\nclaimant,Bücher\n".encode("latin-1"))
        _with(cfg, f"flag:\n  claims: [{bad}]\n")
    elif kind == "url_list":
        (folder / bad).write_bytes(b"http://example.com/a.jpg\nhttp://b\xfccher.example/x.jpg\n")
        (folder / "agency.yaml").write_text("claimant: Agency\nurl_lists: [urls.txt]\n")
        _with(cfg, "flag:\n  claims: [agency.yaml]\n")
    else:
        bad = "c.yaml"
        cfg.write_bytes(cfg.read_bytes() + b"# caf\xe9\n")
    ws = tmp_path / "ws"
    r = CliRunner().invoke(main, ["-q", "--workspace", str(ws), "run", str(cfg)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "UnicodeDecodeError" not in r.output
    line = 4 if kind == "config" else 2
    assert bad in r.output and "UTF-8" in r.output and f"line {line}" in r.output and "byte offset" in r.output, r.output
    assert not (ws / "catalog.duckdb").exists()


# ----------------------------------------------------------------------------------------------
# 14. status during a run; the catalog's storage version


def _holder(ws: Path, code: str) -> subprocess.Popen:
    """A Python process running ``code`` with ``ws`` bound; it prints 'ready' once it holds the catalog."""
    prog = f"import sys, time\nfrom pathlib import Path\nws = Path({str(ws)!r})\n" + textwrap.dedent(code)
    p = subprocess.Popen([sys.executable, "-c", prog], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "CURATE_QUIET": "1"})
    line = p.stdout.readline()
    assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def test_status_while_a_run_holds_the_catalog(tmp_path):
    cfg = _meta(tmp_path / "cfg")
    ws = tmp_path / "ws"
    api.run(ws, cfg)
    release = tmp_path / "release"
    p = _holder(ws, f"""
        from curate import api
        from curate.progress import bar
        from curate.stages import record_run
        w = api.open_workspace(ws)
        def work():
            with bar(total=10, desc="hash", unit="img") as pb:
                pb.update(3)
                print("ready", flush=True)
                while not Path({str(release)!r}).exists():
                    time.sleep(0.05)
            return {{"hashed": 3}}
        record_run(w, "hash", {{}}, "d", work)
        w.close()
    """)
    try:
        st = api.status(ws)
        assert st["ingest"]["status"] == "ok"
        run = st["hash"]
        assert run["status"] == "running" and run["run"]["pid"] == p.pid, run
        assert run["run"]["progress"]["done"] == 3 and run["run"]["progress"]["total"] == 10
        r = CliRunner().invoke(main, ["--workspace", str(ws), "status"])
        assert r.exit_code == 0, r.output
        assert f"pid {p.pid}" in r.output and "hash" in r.output and "3/10" in r.output
    finally:
        release.touch()
        p.wait(timeout=60)
    assert p.returncode == 0, p.stderr.read()
    st = api.status(ws)
    assert st["hash"]["status"] == "ok" and st["hash"]["counters"] == {"hashed": 3} and "run" not in st["hash"]


def test_status_while_a_notebook_holds_a_read_only_connection(tmp_path):
    ws = tmp_path / "ws"
    api.run(ws, _meta(tmp_path / "cfg"))
    p = _holder(ws, """
        import duckdb
        con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
        print("ready", flush=True)
        sys.stdin.read()
    """)
    try:
        r = CliRunner().invoke(main, ["--workspace", str(ws), "status", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["report"]["status"] == "ok"
    finally:
        p.kill()
        p.wait()


def test_catalog_is_readable_by_duckdb_1_0(tmp_path):
    """The catalog is written in DuckDB's v1.0.0 storage format, which DuckDB 1.0 and later (the
    CLI included) open; the format DuckDB 2 writes by default is readable by 2.x only."""
    ws = tmp_path / "ws"
    api.run(ws, _meta(tmp_path / "cfg"))
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        tags = con.execute("SELECT tags FROM duckdb_databases() WHERE NOT internal AND database_name = 'catalog'"
                           ).fetchall()
    finally:
        con.close()
    assert tags == [({"storage_version": "v1.0.0+"},)]


def test_duckdb_is_pinned_to_the_tested_range():
    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]
            ["dependencies"]]
    spec = next(r.specifier for r in reqs if r.name == "duckdb")
    assert any(s.operator in ("<", "<=", "~=", "==") for s in spec), f"duckdb unbounded above: {spec}"
    assert duckdb.__version__ in spec


# ----------------------------------------------------------------------------------------------
# Also (i): a huge caption is bounded in the report and in caption statistics


def test_megabyte_caption_is_clipped_in_the_report(tmp_path):
    big = "stock photo " + "x" * (1 << 20)
    cfg = _with(_meta(tmp_path / "cfg", [big, big, "a dog"]),
                "dedup:\n  caption_exact: true\nflag:\n  packs: [mine.yaml]\n")
    (tmp_path / "cfg" / "mine.yaml").write_text(
        "pack: mine\ndescription: test\nrules:\n  - id: stock\n    kind: caption_words\n    words: [stock]\n"
        "    category: quality\n    action: review\n")
    ws = tmp_path / "ws"
    api.run(ws, cfg)
    html = (ws / "out" / "report" / "index.html").read_bytes()
    assert len(html) < 200_000, len(html)
    assert "(+1,048," in html.decode()  # the clipped caption says how much is left out
    data = json.loads((ws / "out" / "report" / "report.json").read_text())
    assert len(json.dumps(data)) < 200_000


def test_caption_statistics_hold_no_huge_caption(tmp_path):
    big = "Photo " + "y" * (3 << 20)
    other = big[:-1] + "z"  # equal to `big` except in the last character
    cfg = _with(_meta(tmp_path / "cfg", [big, big.upper(), other, "a dog"]), "dedup:\n  caption_exact: true\n")
    ws = tmp_path / "ws"
    res = api.run(ws, cfg)
    dedup = next(s for s in res["stages"] if s["stage"] == "dedup")["counters"]
    assert len(json.dumps(dedup)) < 20_000
    cap = dedup["captions"]
    assert cap["samples_with_repeated_caption"] == 2 and cap["caption_groups_repeated"] == 1  # big == BIG, not other
    assert cap["long_captions"] == 3
    assert len(cap["top_captions"][0]["caption"]) < 1000 and cap["top_captions"][0]["caption_chars"] == len(big)
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT max(length(counters)) FROM runs").fetchone()[0] < 20_000
        edges = con.execute("SELECT count(*) FROM dup_edges WHERE signal = 'caption'").fetchone()[0]
    finally:
        con.close()
    assert edges == 1  # big ~ BIG only
    summary = json.loads((ws / "out" / "summary.json").read_text())
    assert len(json.dumps(summary)) < 50_000


# ----------------------------------------------------------------------------------------------
# Also (ii): image bytes inside parquet are read a batch at a time

_PEAK = """
import sys, pyarrow as pa
from curate.media.refs import read_table_ref, table_ref
path, n = sys.argv[1], int(sys.argv[2])
total = 0
for i in range(n):
    total += len(read_table_ref(table_ref("parquet", path, "jpg", i)))
print(total, pa.default_memory_pool().max_memory())
"""


@pytest.mark.parametrize("layout", ["pyarrow_defaults", "small_pages"])
def test_parquet_image_bytes_read_in_bounded_memory(tmp_path, layout):
    """40 images of 1 MiB in one row group. Files written with pyarrow's defaults (img2dataset's
    writer) hold every value in one dictionary page, which the reader must hold whole: peak
    ≤ 2.5× the row group's image bytes. With small data pages only a few rows are held at a time."""
    n, size = 40, 1 << 20
    t = pa.table({"url": [f"u{i}" for i in range(n)], "jpg": [os.urandom(size) for _ in range(n)]})
    path = tmp_path / "images.parquet"
    if layout == "pyarrow_defaults":
        pq.write_table(t, path, row_group_size=n)
        bound = 2.5 * n * size
    else:
        pq.write_table(t, path, row_group_size=n, use_dictionary=False, write_batch_size=1, data_page_size=1 << 20)
        bound = 0.5 * n * size
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(n)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    total, peak = int(out[0]), int(out[1])
    assert total == n * size
    assert peak <= bound, f"arrow memory peak {peak / 2**20:.0f} MiB > {bound / 2**20:.0f} MiB"
