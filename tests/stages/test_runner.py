"""The stage runner: upstream derived from what each stage reads, refusals, staleness."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager

import pytest

from curate import api
from curate.errors import CurateError
from curate.stages import check_upstream, out_of_date, stage_module, tables, upstream
from curate.store.catalog import STAGES
from tests.conftest import SAMPLE, query


def test_upstream_is_derived_from_the_tables_each_stage_reads():
    assert upstream("ingest") == ()
    assert upstream("hash") == ("ingest",)
    assert "hash" in upstream("embed")  # embed reads hash's `images` (the bug this derivation fixes)
    assert {"hash", "embed"} <= set(upstream("dedup"))
    assert "dedup" in upstream("flag") and "flag" in upstream("export") and "export" in upstream("report")
    writers: dict[str, str] = {}
    for s in STAGES:
        reads, writes = tables(s)
        for t in writes:
            assert t not in writers, f"{t} is written by both {writers[t]} and {s}"
            writers[t] = s
        for t in reads:
            assert t in writers or t in writes, f"{s} reads {t}, which no earlier stage writes"
        assert callable(stage_module(s).run) and callable(stage_module(s).inputs)


def test_out_of_date_follows_the_derived_upstream():
    # runs recorded before `built_on` existed: by run order
    st = {s: {"status": "ok", "run_id": i + 1, "ok_run_id": i + 1} for i, s in enumerate(STAGES)}
    assert out_of_date(st) == {}
    st["hash"]["run_id"] = st["hash"]["ok_run_id"] = 99  # hash ran again after everything else
    stale = out_of_date(st)
    assert "embed" in stale and "dedup" in stale and "report" in stale and "ingest" not in stale
    assert stale["embed"] == "hash ran after embed" and stale["dedup"] in ("hash ran after dedup", "embed is out of date")
    # with `built_on`: by what each was built on, whatever the run order
    st = {s: {"status": "ok", "run_id": i + 1, "ok_run_id": i + 1, "result": f"d-{s}",
              "built_on": {u: f"d-{u}" for u in upstream(s)}} for i, s in enumerate(STAGES)}
    st["hash"]["run_id"] = st["hash"]["ok_run_id"] = 99  # re-ran, same result
    assert out_of_date(st) == {}
    st["hash"]["result"] = ["d-hash", "new output"]
    stale = out_of_date(st)
    assert stale["embed"] == "hash changed since embed ran" and "ingest" not in stale and "report" in stale


@contextmanager
def duckdb_workspace(root):
    ws = api.open_workspace(root)
    try:
        yield ws
    finally:
        ws.close()


def _outputs(ws):
    out = ws / "out"
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "removals").iterdir())}
    files["manifest.parquet"] = (out / "manifest.parquet").read_bytes()
    files["summary.json"] = (out / "summary.json").read_bytes()
    edges = query(ws, "SELECT a, b, signal FROM dup_edges ORDER BY ALL")
    clusters = query(ws, "SELECT sample_id, cluster_id, is_keeper FROM clusters ORDER BY ALL")
    return files, edges, clusters


@pytest.mark.slow
def test_embed_before_hash_runs_hash_first_and_the_run_after_it_matches_a_plain_run(sample_ws, tmp_path):
    """Issue: `curate embed` on an ingested-only workspace embedded 0 images, was recorded `ok`,
    and the next `curate run` skipped embed — dedup lost every embedding edge."""
    plain, _ = sample_ws
    ws = tmp_path / "ws"
    cfg = api.workspace_config(ws, SAMPLE / "curate.yaml")
    api.run_one(ws, "ingest", cfg)
    res = api.run_one(ws, "embed", cfg)
    assert [r["stage"] for r in res["upstream"]] == ["hash"]  # the missing upstream ran first
    assert res["counters"]["embedded"] == query(ws, "SELECT count(*) FROM images WHERE status = 'ok'")[0][0] > 0
    with duckdb_workspace(ws) as w:  # a stage computed on a never-run upstream is refused
        w.con.execute("DELETE FROM runs WHERE stage = 'hash'")
        with pytest.raises(CurateError, match=r"embed needs hash, which has not run.*`curate hash`"):
            check_upstream(w, "embed")
    api.run(ws, SAMPLE / "curate.yaml")
    got, want = _outputs(ws), _outputs(plain)
    assert got[1] == want[1] and got[2] == want[2]
    assert sum(1 for e in got[1] if e[2] == "embedding") > 0
    assert got[0].keys() == want[0].keys()
    for name in got[0]:
        if name == "summary.json":  # same except where the workspace differs: nothing
            assert json.loads(got[0][name]) == json.loads(want[0][name])
        else:
            assert got[0][name] == want[0][name], name


@pytest.mark.slow
def test_raising_hash_max_pixels_re_embeds_the_images_whose_hash_changed(sample_ws, tmp_path):
    plain, _ = sample_ws
    sizes = sorted(r[0] for r in query(plain, "SELECT CAST(raw_width AS BIGINT) * raw_height FROM images WHERE status = 'ok'"))
    low = sizes[-3] - 1  # the three largest decodable images are too large under this limit
    ws = tmp_path / "ws"
    cfg = api.workspace_config(ws, SAMPLE / "curate.yaml")
    small = api.with_overrides(cfg, "hash", {"max_pixels": low})
    api.run(ws, small, stages=["ingest", "hash", "embed"])
    assert query(ws, "SELECT count(*) FROM images WHERE status = 'too_large'")[0][0] >= 3
    key = query(plain, "SELECT DISTINCT model FROM embeddings WHERE model NOT LIKE 'text:%'")[0][0]
    before = query(ws, "SELECT count(*) FROM embeddings WHERE model = ? AND status = 'ok'", [key])[0][0]
    res = api.run(ws, cfg, stages=["ingest", "hash", "embed"])
    by = {r["stage"]: r for r in res["stages"]}
    assert by["hash"]["counters"]["rehashed_for_new_max_pixels"] >= 3
    assert not by["embed"]["skipped"]  # its upstream (hash) changed
    assert by["embed"]["counters"]["embedded"] >= 3
    # every decodable image has its vector, exactly as in a plain run
    missing = query(ws, f"SELECT count(*) FROM images i ANTI JOIN (SELECT sample_id FROM embeddings WHERE model = '{key}') e "
                        "USING (sample_id) WHERE i.status = 'ok'")[0][0]
    assert missing == 0
    after = query(ws, "SELECT sample_id FROM embeddings WHERE model = ? AND status = 'ok' ORDER BY 1", [key])
    assert len(after) > before
    assert after == query(plain, "SELECT sample_id FROM embeddings WHERE model = ? AND status = 'ok' ORDER BY 1", [key])


def test_status_marks_readers_of_a_rerun_stage_out_of_date(sample_ws, tmp_path):
    src, _ = sample_ws
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    cfg = api.workspace_config(ws)
    api.run_one(ws, "hash", cfg, force=True)  # every file read again, the same hashes: nothing downstream is stale
    st = api.status(ws)
    assert not any(st[s].get("out_of_date") for s in STAGES)
    assert api.run_one(ws, "embed", cfg)["skipped"]  # the runner agrees
    loose = api.with_overrides(cfg, "dedup", {"phash_mirror": not cfg.dedup.phash_mirror})
    api.run(ws, loose, stages=["dedup"])
    st = api.status(ws)
    assert "out_of_date" not in st["dedup"]
    for s in ("flag", "export", "report"):
        assert st[s].get("out_of_date"), s
    assert st["flag"]["out_of_date_because"] == "dedup changed since flag ran"
    assert st["export"]["out_of_date_because"] in ("dedup changed since export ran", "flag is out of date")
    assert not {"result", "built_on", "ok_run_id"} & set(st["flag"])  # bookkeeping stays inside


def test_a_stage_is_never_built_on_a_stale_upstream(sample_ws, tmp_path):
    """Issue: `curate dedup` (new settings) then `curate export` exported the flags computed on the
    old clusters, while `curate status` called flag out of date and `curate export` said up to date.
    Now one rule: export runs flag first; building on a stale stage directly is refused."""
    src, _ = sample_ws
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    cfg = api.workspace_config(ws)
    loose = api.with_overrides(cfg, "dedup", {"phash_mirror": not cfg.dedup.phash_mirror})
    api.run_one(ws, "dedup", loose)
    with duckdb_workspace(ws) as w:
        with pytest.raises(CurateError, match=r"export needs flag, which is out of date \(dedup changed since flag ran\)"):
            check_upstream(w, "export")
    res = api.run_one(ws, "export", loose)
    assert [r["stage"] for r in res["upstream"]] == ["flag"] and not res["skipped"]
    st = api.status(ws)
    assert not any(st[s].get("out_of_date") for s in ("ingest", "hash", "embed", "dedup", "flag", "export"))
    assert st["report"].get("out_of_date")
    plain = tmp_path / "plain"
    shutil.copytree(src, plain)
    api.run(plain, loose, stages=["export"])  # the same through run(): dedup and flag first
    assert _outputs(ws)[0] == _outputs(plain)[0]


def test_the_end_of_stage_line_says_nested_counters_are_entries_not_counts():
    """`[flag] done …: hits_per_rule: 16` read as 16 hits (a new user's trial): nested counters
    show how many entries they hold, named as such."""
    from curate.stages import _short

    line = _short({"flagged": 700, "hits_per_rule": {f"r{k}": 40 for k in range(16)}, "claimants": ["a"]})
    assert line == "flagged=700, hits_per_rule: 16 entries, claimants: 1 entry"
