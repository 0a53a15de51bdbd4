"""Faults (issue #17): a killed export, a full disk, a read-only workspace. Every output is the old
one or the new one, whole; a failed write is one clear line and leaves no temp file behind."""
from __future__ import annotations

import errno
import json
import hashlib
import os
import random
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from cli import main
from curate import api
from curate.config import RunConfig
from tests.conftest import ROOT, tiny_model

TEMP = re.compile(r"(\.tmp\d*|\.partial)$")
ENV = {**os.environ, "CURATE_QUIET": "1", "PYTHONPATH": str(ROOT)}


def _cfg(tmp: Path, claim: str, **sections) -> RunConfig:
    cfg = RunConfig.model_validate({"sources": [{"name": "m", "metadata": "m.tsv"}],
                                    "flag": {"packs": [], "claims": [str(tmp / claim)]}, **sections})
    cfg.base_dir = str(tmp)
    return cfg


def _digest(out: Path) -> dict[str, str]:
    """Every file under ``out`` (followed if it is a symlink): relative path → sha256 of its bytes."""
    root = out.resolve()
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(ws: Path) -> list[str]:
    """Temp files and staging folders anywhere in the workspace (what a killed or failed writer leaves)."""
    found = [p for p in ws.rglob("*") if TEMP.search(p.name)]
    gens = ws / ".out"
    if gens.is_dir():  # besides the current generation and the one before it, nothing may stay in .out/
        cur = (ws / "out").resolve()
        older = [int(p.name) for p in gens.iterdir() if p.name.isdigit() and cur.name.isdigit()
                 and int(p.name) < int(cur.name)]
        keep = {cur.name} | ({str(max(older))} if older else set())
        found += [p for p in gens.iterdir() if p.name not in keep]
    return sorted(str(p.relative_to(ws)) for p in found)


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """A workspace with an export (claimant "Alpha Photos") and a report, whose catalog has since been
    flagged for another claimant ("Beta Photos"): the next export writes different outputs.

    Returns (folder, workspace snapshot, digest of the old out/, digest of the new out/)."""
    tmp = tmp_path_factory.mktemp("faults")
    caption = ["alpha", "beta", "gamma", "gamma", "gamma", "gamma", "gamma", "gamma", "gamma", "gamma"]
    (tmp / "m.tsv").write_text("url\tcaption\n" + "".join(
        f"https://site{i % 97}.example/img/{i}.jpg\t{caption[i % 10]} photo number {i}\n" for i in range(8000)))
    (tmp / "a.yaml").write_text("claimant: Alpha Photos\nkeywords: [alpha]\n")
    (tmp / "b.yaml").write_text("claimant: Beta Photos\nkeywords: [beta]\n")
    ws = tmp / "ws"
    for stage in ("ingest", "flag", "export", "report"):
        api.run_one(ws, stage, _cfg(tmp, "a.yaml"))
    old = _digest(ws / "out")
    api.run_one(ws, "flag", _cfg(tmp, "b.yaml"))  # saved as the workspace config: export uses it
    snap = tmp / "snap"
    shutil.copytree(ws, snap, symlinks=True)
    done = tmp / "done"
    shutil.copytree(snap, done, symlinks=True)
    api.run_one(done, "export", api.workspace_config(done))
    new = _digest(done / "out")
    assert "removals/alpha-photos.json" in old and "removals/beta-photos.json" in new
    assert old["summary.json"] != new["summary.json"] and old["manifest.parquet"] != new["manifest.parquet"]
    return tmp, snap, old, new


_EXPORT = ("import sys; from curate import api; cfg = api.workspace_config(sys.argv[1]); print('ready', flush=True); "
           "api.run_one(sys.argv[1], 'export', cfg)")


def _export_proc(ws: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _EXPORT, str(ws)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, env=ENV)
    assert p.stdout.readline().strip() == "ready"
    return p


def _out_state(ws: Path) -> list:
    """Names and mtimes of what a writer of out/ touches (not the catalog or config.json)."""
    state = []
    for d in (ws, ws / ".out", ws / "out", ws / "out" / "removals"):
        try:
            state += sorted((e.path, e.stat(follow_symlinks=False).st_mtime_ns) for e in os.scandir(d)
                            if d != ws or e.name in ("out", ".out"))
        except OSError:
            state.append((str(d), None))
    return state


def _write_window(ws: Path) -> tuple[float, float]:
    """Seconds from 'ready' to the first change in out/ and to the end of an export in ``ws``."""
    p = _export_proc(ws)
    t0, before = time.perf_counter(), _out_state(ws)
    first = None
    while p.poll() is None:
        if first is None and _out_state(ws) != before:
            first = time.perf_counter() - t0
        time.sleep(0.002)
    assert p.returncode == 0
    end = time.perf_counter() - t0
    return (end if first is None else first), end


@pytest.mark.slow  # ≈ 35 s: 11 interpreters start, on 2 cores
def test_a_killed_export_leaves_out_old_or_new_whole_and_the_next_run_cleans_up(two_exports):
    """SIGKILL at random points of `export` over an earlier export, 10 times: every time out/ is either
    the old export or the new one, whole (report/ of the earlier `curate report` carried over)."""
    tmp, snap, old, new = two_exports
    assert {k: v for k, v in old.items() if k.startswith("report/")} == \
        {k: v for k, v in new.items() if k.startswith("report/")}  # report/ survives an export
    # when, after the interpreter is up, an export starts and stops writing in out/: the kills fall there
    ws = tmp / "calibrate"
    shutil.copytree(snap, ws, symlinks=True)
    first, end = _write_window(ws)
    shutil.rmtree(ws)
    rng = random.Random(17)
    seen, stale = [], 0
    lo, hi = first * 0.9, end  # the kill window; it narrows onto the writing as kills land (load moves it)
    for i in range(10):
        ws = tmp / f"killed{i}"
        shutil.copytree(snap, ws, symlinks=True)
        p = _export_proc(ws)
        at = rng.uniform(lo, hi)
        time.sleep(at)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        d = _digest(ws / "out")
        assert d in (old, new), (i, sorted(set(d.items()) ^ set(old.items()) ^ set(new.items())))
        seen.append("old" if d == old else "new")
        left = bool(_leftovers(ws))
        stale += left
        if d == new:  # killed after the switch: aim earlier
            hi = max(lo, at)
        elif not left:  # killed before anything was written: aim later (past the calibrated end if need be)
            lo, hi = at, max(hi, at * 1.3)
        # the next run removes the killed run's staging and writes the new export
        api.run_one(ws, "export", api.workspace_config(ws), force=True)
        assert _digest(ws / "out") == new and _leftovers(ws) == []
        shutil.rmtree(ws)
    assert "old" in seen and stale  # some kills landed mid-write, and left a staging folder for the next run


def test_an_older_plain_out_folder_is_taken_over_whole(two_exports, tmp_path):
    """A workspace from before out/ was a symlink (a plain folder) keeps its files through the next export."""
    _, snap, old, new = two_exports
    ws = tmp_path / "ws"
    shutil.copytree(snap, ws, symlinks=False)  # out/ becomes a plain folder
    shutil.rmtree(ws / ".out", ignore_errors=True)
    assert not (ws / "out").is_symlink() and _digest(ws / "out") == old
    (ws / "out" / "probes.parquet").write_bytes(b"probe outputs")  # written by `curate probe select`
    (ws / "out" / "summary.json.tmp4242").write_bytes(b"half")  # a killed writer's temp file
    api.run_one(ws, "export", api.workspace_config(ws))
    assert _digest(ws / "out") == {**new, "probes.parquet": hashlib.sha256(b"probe outputs").hexdigest()}
    assert _leftovers(ws) == []


def test_the_next_command_removes_what_a_killed_writer_left(two_exports, tmp_path):
    """A staging folder, an old generation, a half-switched link and temp files (all left by kills) are
    removed when the next command opens the workspace; out/ then holds whole generations only (here
    the new export: `curate report` first runs export, out of date since flag ran)."""
    _, snap, old, new = two_exports
    ws = tmp_path / "ws"
    shutil.copytree(snap, ws, symlinks=True)
    cur = (ws / "out").resolve()
    shutil.copytree(cur, ws / ".out" / "98.tmp")  # a killed export's staging
    shutil.copytree(cur, ws / ".out" / "97")  # the previous generation of an export killed after its switch
    os.symlink(".out/97", ws / ".out" / "link.tmp4242")
    (cur / "probes.parquet.tmp4242").write_bytes(b"half")  # a single-file writer killed in out/
    (ws / "config.json.tmp4242").write_bytes(b"{")
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "report"])
    assert r.exit_code == 0, r.output
    assert _leftovers(ws) == [] and (ws / "out").resolve().name in {p.name for p in (ws / ".out").iterdir()}
    assert "97" not in {p.name for p in (ws / ".out").iterdir()}
    assert {k: v for k, v in _digest(ws / "out").items() if not k.startswith("report/")} == \
        {k: v for k, v in new.items() if not k.startswith("report/")}


# ----------------------------------------------------------------------------------------------
# a full disk


def _full_after(monkeypatch, n_ok: int, calls: list) -> None:
    """fsync of an output file fails with ENOSPC after ``n_ok`` successful ones (the file already
    holds the bytes written so far, as on a disk that fills up); the workspace's config.json and
    status.json are not counted."""
    real = os.fsync

    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if stat.S_ISREG(os.fstat(fd).st_mode) and not re.search(r"(config|status)\.json[^/]*$", name):
            calls.append(fd)
            if len(calls) > n_ok:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _one_line(r) -> str:
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, (r.exit_code, r.output, r.exception)
    return lines[0]


@pytest.mark.parametrize("stage,n_ok", [("export", 1), ("report", 1)])
def test_disk_full_during_export_or_report_is_one_line_and_leaves_out_as_it_was(two_exports, tmp_path, monkeypatch,
                                                                               stage, n_ok):
    _, snap, old, _ = two_exports
    ws = tmp_path / "ws"
    shutil.copytree(snap, ws, symlinks=True)
    calls: list = []
    _full_after(monkeypatch, n_ok, calls)
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), stage, "--force"])
    line = _one_line(r)
    assert len(calls) == n_ok + 1  # it failed partway, after some files were complete
    assert line.startswith("Error: no space left on device while writing ") and "free space" in line, line
    assert re.search(r"needs about [\d.]+ [kMG]B", line), line
    assert _digest(ws / "out") == old and _leftovers(ws) == []
    monkeypatch.undo()
    assert CliRunner().invoke(main, ["-q", "-w", str(ws), stage]).exit_code == 0  # once there is room, it runs


def test_disk_full_during_embed_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.new("RGB", (40 + i, 30), (40 * i, 255 - 40 * i, 90)).save(tmp_path / "imgs" / f"{i}.png")
    model = tiny_model(tmp_path / "tiny.pt")
    cfg = RunConfig.model_validate({"sources": [{"name": "imgs", "images": "imgs"}], "hash": {"workers": 0},
                                    "embed": {"model": f"sscd:{model}", "device": "cpu", "batch_size": 2,
                                              "part_rows": 2, "num_workers": 0}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run_one(ws, "hash", cfg)
    calls: list = []
    _full_after(monkeypatch, 4, calls)  # store.json and the first part, then the disk is full
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "embed"])
    line = _one_line(r)
    assert re.match(r"Error: no space left on device while writing .*part-\d{5}\.\S+ \(needs about [\d.]+ [kMG]B", line), line
    assert _leftovers(ws) == []
    monkeypatch.undo()
    res = api.run_one(ws, "embed", cfg)["counters"]  # resumes: the finished part is kept
    assert res["embedded"] + res["recovered_rows"] == 6 - 2 and _leftovers(ws) == []


def _limited(limit: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_a_real_file_size_limit_during_export_is_one_line_and_leaves_out_as_it_was(two_exports, tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE → EFBIG), wherever it happens: catalog, manifest or list."""
    _, snap, old, new = two_exports
    ws = tmp_path / "ws"
    shutil.copytree(snap, ws, symlinks=True)
    r = subprocess.run([sys.executable, "-m", "curate", "-q", "-w", str(ws), "export"], capture_output=True,
                       text=True, env=ENV, preexec_fn=_limited(200_000), timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: the file-size limit was reached while writing "), lines[0]
    assert _digest(ws / "out") == old and _leftovers(ws) == []
    r = subprocess.run([sys.executable, "-m", "curate", "-q", "-w", str(ws), "export"], capture_output=True,
                       text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _digest(ws / "out") == new and _leftovers(ws) == []


# ----------------------------------------------------------------------------------------------
# a read-only workspace


@pytest.fixture(scope="module")
def small_ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ro")
    (tmp / "m.tsv").write_text("url\tcaption\n" + "".join(f"https://a.example/{i}.jpg\tc {i}\n" for i in range(20)))
    (tmp / "a.yaml").write_text("claimant: A\nkeywords: [zzz]\n")
    ws = tmp / "ws"
    api.run_one(ws, "export", _cfg(tmp, "a.yaml"))
    return ws


def test_a_read_only_filesystem_says_the_workspace_is_not_writable(small_ws, tmp_path, monkeypatch):
    """DuckDB refuses to open the catalog for writing (a read-only mount): not a lock message."""
    ws = tmp_path / "ws"
    shutil.copytree(small_ws, ws, symlinks=True)
    real = duckdb.connect

    def connect(path, *a, **k):
        if str(path).endswith("catalog.duckdb") and not k.get("read_only"):
            raise duckdb.IOException(f'IO Error: Cannot open file "{path}": Read-only file system')
        return real(path, *a, **k)

    monkeypatch.setattr(duckdb, "connect", connect)
    line = _one_line(CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--force"]))
    assert "not writable" in line and "read-only file system" in line and str(ws) in line, line
    assert "another curate" not in line


def _chmod_tree(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            m = p.stat().st_mode
            p.chmod(m | stat.S_IWUSR if writable else m & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_a_read_only_workspace_folder_says_it_is_not_writable(small_ws, tmp_path):
    """The real thing: chmod a-w. As root (which ignores permissions), the command runs without
    CAP_DAC_OVERRIDE through setpriv, so the kernel applies the permission bits."""
    ws = tmp_path / "ws"
    shutil.copytree(small_ws, ws, symlinks=True)
    cmd = [sys.executable, "-m", "curate", "-q", "-w", str(ws), "export", "--force"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    before = _digest(ws / "out")
    _chmod_tree(ws, writable=False)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    finally:
        _chmod_tree(ws, writable=True)
    if os.geteuid() == 0 and "Operation not permitted" in r.stderr and "setpriv" in r.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {r.stderr.strip()}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "not writable" in lines[0] and str(ws) in lines[0] and "another curate" not in lines[0], lines[0]
    assert _digest(ws / "out") == before


# ----------------------------------------------------------------------------------------------
# review of the atomic out/ (issue #17 item 4)


def _ws_copy(small_ws: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(small_ws, ws, symlinks=True)
    return ws


def test_a_manifest_export_removes_the_shards_of_an_earlier_webdataset_export(small_ws, tmp_path):
    """Shards written for an earlier manifest never sit beside a newer manifest: every export owns
    webdataset/, and summary.json says an earlier export's shards were removed."""
    ws = _ws_copy(small_ws, tmp_path)
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--format", "webdataset", "--force"])
    assert r.exit_code == 0, r.output
    assert (ws / "out" / "webdataset" / "index.json").is_file()
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--format", "manifest", "--force"])
    assert r.exit_code == 0, r.output
    assert not (ws / "out" / "webdataset").exists()
    s = json.loads((ws / "out" / "summary.json").read_text())
    assert s["export"] == {"format": "manifest", "stale_webdataset_removed": True}, s.get("export")
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--format", "manifest", "--force"])
    assert json.loads((ws / "out" / "summary.json").read_text())["export"]["stale_webdataset_removed"] is False


def _user_out(ws: Path, target: Path) -> None:
    cur = (ws / "out").resolve()
    (ws / "out").unlink()
    shutil.rmtree(ws / ".out")
    target.parent.mkdir(parents=True, exist_ok=True)
    if cur.is_dir() and not target.exists():
        shutil.copytree(cur, target)
    target.mkdir(exist_ok=True)
    os.symlink(target, ws / "out")


def test_out_symlinked_by_the_user_to_a_folder_with_files_is_refused_and_left_alone(small_ws, tmp_path):
    """`ln -s /bigdisk/run1-out ws/out` over a folder that holds files: curate neither moves nor deletes
    them; a command that writes stops with one line saying what to do; `curate status` still reads."""
    ws, elsewhere = tmp_path / "ws", tmp_path / "disk" / "run1-out"
    shutil.copytree(small_ws, ws, symlinks=True)
    _user_out(ws, elsewhere)
    (elsewhere / "mine.txt").write_text("keep me")
    before = _digest(elsewhere)
    line = _one_line(CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--force"]))
    assert "symlink" in line and str(elsewhere) in line and "made outside curate" in line, line
    assert os.readlink(ws / "out") == str(elsewhere) and _digest(elsewhere) == before
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == ["run1-out"]
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "status", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["export"]["status"] == "ok", r.output
    assert os.readlink(ws / "out") == str(elsewhere) and _digest(elsewhere) == before


def test_out_symlinked_by_the_user_to_an_empty_folder_keeps_the_outputs_there(small_ws, tmp_path):
    """An empty target folder becomes the store of out's generations: the outputs stay on that disk."""
    ws, elsewhere = tmp_path / "ws", tmp_path / "disk" / "run1-out"
    shutil.copytree(small_ws, ws, symlinks=True)
    (ws / "out").unlink()
    shutil.rmtree(ws / ".out")
    elsewhere.mkdir(parents=True)
    (elsewhere.parent / "unrelated.txt").write_text("keep me")
    os.symlink(elsewhere, ws / "out")
    for _ in range(3):
        r = CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--force"])
        assert r.exit_code == 0, r.output
    assert (ws / "out").resolve().parent == elsewhere and (ws / "out" / "manifest.parquet").is_file()
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == ["run1-out", "unrelated.txt"]
    assert not (ws / ".out").exists() or not any((ws / ".out").iterdir())
    assert len([p for p in elsewhere.iterdir() if p.name.isdigit()]) == 2  # current + previous


def test_a_reader_that_resolved_out_once_keeps_its_files_through_the_next_publish(small_ws, tmp_path):
    """The previous generation stays until the next publish; older ones are removed."""
    ws = _ws_copy(small_ws, tmp_path)
    first = Path(os.path.realpath(ws / "out"))
    files = sorted(p for p in first.rglob("*") if p.is_file())
    assert files
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--force"])
    assert r.exit_code == 0, r.output
    assert Path(os.path.realpath(ws / "out")) != first and all(p.is_file() for p in files)
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "status"])  # opening the workspace keeps it too
    assert r.exit_code == 0 and all(p.is_file() for p in files)
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--force"])
    assert r.exit_code == 0 and not first.exists()
    assert len([p for p in (ws / ".out").iterdir()]) == 2 and _leftovers(ws) == []


def test_opening_the_workspace_leaves_another_process_s_write_probe_alone(small_ws, tmp_path):
    """check_writable's probe of a process that runs now (before it takes the lock) is not a stale temp file."""
    ws = _ws_copy(small_ws, tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        probe = ws / f".write-probe.tmp{other.pid}"
        probe.write_bytes(b"")
        api.open_workspace(ws).close()
        assert probe.exists()
        probe.unlink()
    finally:
        other.kill()
        other.wait()
    from curate.store import fsio
    real = os.unlink

    def unlink(p, *a, **k):  # another process's cleanup removed the probe first
        real(p, *a, **k)
        if ".write-probe.tmp" in str(p):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(p))

    os.unlink = unlink
    try:
        fsio.check_writable(ws)
    finally:
        os.unlink = real


def test_user_files_with_temp_like_names_in_out_survive_opens_and_exports(small_ws, tmp_path):
    """Only the temp names curate's own writers use are skipped or cleaned: a user's `notes.tmp`,
    `upload.partial` or `run.tmp2` in out/ stays through an open and an export."""
    ws = _ws_copy(small_ws, tmp_path)
    mine = {"notes.tmp": b"n", "upload.partial": b"u", "run.tmp2": b"r", "mine/sub.partial": b"s"}
    for name, data in mine.items():
        (ws / "out" / name).parent.mkdir(exist_ok=True)
        (ws / "out" / name).write_bytes(data)
    api.open_workspace(ws).close()
    r = CliRunner().invoke(main, ["-q", "-w", str(ws), "export", "--force"])
    assert r.exit_code == 0, r.output
    assert {n: (ws / "out" / n).read_bytes() for n in mine if (ws / "out" / n).is_file()} == mine


def test_status_between_two_stages_of_a_running_command_says_it_is_running(tmp_path):
    """status.json says ``running`` from the moment a command opens the workspace until it closes it:
    between two stages (the lock still held) `curate status` reports the run, not "no curate run"."""
    from tests.test_config_errors import _holder, _meta

    ws = tmp_path / "ws"
    api.run(ws, _meta(tmp_path / "cfg"))
    release = tmp_path / "release"
    p = _holder(ws, f"""
        from curate import api
        from curate.stages import record_run
        w = api.open_workspace(ws)
        record_run(w, "hash", {{}}, "d", lambda: {{"hashed": 0}})
        print("ready", flush=True)
        while not Path({str(release)!r}).exists():
            time.sleep(0.05)
        w.close()
        print("closed", flush=True)
        sys.stdin.read()
    """)
    try:
        st = json.loads((ws / "status.json").read_text())
        assert st["running"] is True and st["stage"] is None and st["pid"] == p.pid, st
        r = CliRunner().invoke(main, ["--workspace", str(ws), "status", "--json"])
        assert r.exit_code == 0, r.output
        runs = [(k, v["run"]) for k, v in json.loads(r.output).items() if v.get("run")]
        assert [(k, v["pid"], v["stage"]) for k, v in runs] == [("hash", p.pid, None)], runs
        r = CliRunner().invoke(main, ["--workspace", str(ws), "status"])
        assert r.exit_code == 0 and f"pid {p.pid}" in r.output and "between stages" in r.output, r.output
        release.touch()
        assert p.stdout.readline().strip() == "closed"
        assert json.loads((ws / "status.json").read_text())["running"] is False
    finally:
        release.touch()
        p.kill()
        p.wait()
