"""Rule packs: closed schema with file:line errors, and evaluation semantics."""
from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import api
from curate.config import RunConfig
from curate.errors import ConfigError
from curate.stages.flag.rules import load_pack, pack_path
from curate.resources import shipped_dir


def test_shipped_packs_validate():
    names = sorted(p.stem for p in shipped_dir("rules").glob("*.yaml"))
    assert {"laion-safety", "quality"} <= set(names)
    for n in names:
        assert load_pack(pack_path(n)).rules


def test_unknown_key_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "pack: bad\ndescription: x\nrules:\n  - id: r1\n    kind: caption_words\n    category: quality\n"
        "    action: remove\n    words: [a]\n    colour: red\n"
    )
    with pytest.raises(ConfigError, match=r"bad.yaml:9: rules.0.caption_words.colour → unknown key"):
        load_pack(p)


def test_threshold_rule_must_say_how_unknown_is_treated(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(
        "pack: t\ndescription: x\nrules:\n  - id: r\n    kind: metadata_threshold\n    category: nsfw\n"
        "    action: remove\n    column: punsafe\n    op: '>'\n    value: 0.5\n"
    )
    with pytest.raises(ConfigError, match=r"unknown → Field required"):
        load_pack(p)


def test_invalid_regex_is_reported_at_load(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        "pack: r\ndescription: x\nrules:\n  - id: r\n    kind: caption_regex\n    category: quality\n"
        "    action: tag\n    patterns: ['(unclosed']\n"
    )
    with pytest.raises(ConfigError, match=r"r.yaml:4: rule r: invalid regular expression"):
        load_pack(p)


@pytest.fixture()
def flagged(tmp_path):
    """Ingest + flag a small laion2B-joined file with three punsafe shards (case K15)."""
    urls = [f"https://img.example.org/{k}.jpg" for k in range(6)]
    urls[4] = "https://cdn.shutterstock.com/x/4.jpg"
    urls[5] = "https://notshutterstock.com/5.jpg"
    captions = ["Café at night – Stock Photo", "stockphoto of a cat", "mail me: a.b@example.com",
                "call 555-123-4567 now", "plain", "plain"]
    punsafe = [[float("nan"), float("nan")], [None, 0.3], [0.1, 0.99]]
    for k, vals in enumerate(punsafe):
        sl = slice(2 * k, 2 * k + 2)
        pq.write_table(pa.table({
            "URL": urls[sl], "TEXT": captions[sl],
            "punsafe": pa.array(vals, pa.float32()), "pwatermark": pa.array([0.9, 0.1], pa.float32()),
        }), tmp_path / f"p{k}.parquet")
    pack = tmp_path / "unknown-flag.yaml"
    pack.write_text(
        "pack: strict\ndescription: unknown punsafe goes to review\nrules:\n  - id: punsafe-unknown\n"
        "    kind: metadata_threshold\n    category: nsfw\n    action: review\n    column: punsafe\n"
        "    op: '>'\n    value: 0.5\n    unknown: flag\n"
    )
    cfg = RunConfig.model_validate({"sources": [{"name": "p", "metadata": "p*.parquet"}],
                                    "flag": {"packs": ["laion-safety", str(pack)]}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", cfg)
    api.run_one(ws, "flag", cfg)
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT s.url, f.rule_id, f.evidence FROM flags f JOIN samples s USING (sample_id)").fetchall()
    con.close()
    return {(u, r): e for u, r, e in rows}


def test_nan_punsafe_is_unknown_not_unsafe(flagged):
    nsfw = {u for (u, r) in flagged if r == "nsfw-punsafe"}
    assert nsfw == {"https://notshutterstock.com/5.jpg"}  # only 0.99; NaN rows are not "unsafe"
    unknown = {u for (u, r) in flagged if r == "punsafe-unknown"}
    # the strict pack flags the 3 unknown scores (2 NaN, 1 null) plus the real 0.99
    assert unknown == {"https://img.example.org/0.jpg", "https://img.example.org/1.jpg",
                       "https://img.example.org/2.jpg", "https://notshutterstock.com/5.jpg"}


def test_watermark_threshold(flagged):
    wm = {u for (u, r) in flagged if r == "watermark-pwatermark"}
    assert wm == {"https://img.example.org/0.jpg", "https://img.example.org/2.jpg", "https://cdn.shutterstock.com/x/4.jpg"}


def test_domain_matches_subdomains_only(flagged):
    dom = {u for (u, r) in flagged if r == "stock-agency-domain"}
    assert dom == {"https://cdn.shutterstock.com/x/4.jpg"}
    assert "under shutterstock.com" in flagged[("https://cdn.shutterstock.com/x/4.jpg", "stock-agency-domain")]


def test_caption_words_case_insensitive_at_word_boundaries(flagged):
    hits = {u for (u, r) in flagged if r == "stock-photo-caption"}
    assert hits == {"https://img.example.org/0.jpg"}  # "Stock Photo", not "stockphoto"
    assert ("https://img.example.org/2.jpg", "pii-email-in-caption") in flagged
    assert ("https://img.example.org/3.jpg", "pii-phone-in-caption") in flagged


def test_bad_pack_errors_give_file_line_and_the_fix(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("pack: bad\ndescription: x\nrules:\n  - id: r1\n    kind: metadata_threshold\n    category: nsfw\n"
                 "    action: remove\n    column: punsafe\n    op: '>'\n    value: high\n    unknown: pass\n"
                 "    unknwon: flag\n")
    with pytest.raises(ConfigError) as e:
        load_pack(p)
    msg = str(e.value)
    assert "bad.yaml:10: rules.0.metadata_threshold.value → Input should be a valid number" in msg  # wrong type
    assert "bad.yaml:12: rules.0.metadata_threshold.unknwon → unknown key" in msg
    assert "did you mean 'unknown'?" in msg and "allowed here: action, category, column" in msg
    p.write_text("pack: bad\ndescription: x\nrules:\n  - id: r1\n    kind: domain_list\n    category: copyright\n"
                 "    action: remove\n    domains: [shutterstock.com, co.uk]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:8: .*'co.uk' is a public suffix.*list the site's own domain"):
        load_pack(p)


def test_listed_domains_match_by_registrable_domain(tmp_path):
    pq.write_table(pa.table({"URL": ["https://cdn.example.co.uk/a.jpg", "https://example.co.uk/b.jpg",
                                     "https://other.co.uk/c.jpg", "https://notexample.co.uk/d.jpg"],
                             "TEXT": ["a", "b", "c", "d"]}), tmp_path / "m.parquet")
    pack = tmp_path / "d.yaml"
    pack.write_text("pack: d\ndescription: x\nrules:\n  - id: ex\n    kind: domain_list\n    category: copyright\n"
                    "    action: remove\n    domains: [www.Example.co.uk]\n")
    cfg = RunConfig.model_validate({"sources": [{"name": "m", "metadata": "m.parquet"}], "flag": {"packs": [str(pack)]}})
    cfg.base_dir = str(tmp_path)
    ws = tmp_path / "ws"
    api.run_one(ws, "ingest", cfg)
    api.run_one(ws, "flag", cfg)
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    hits = dict(con.execute("SELECT s.url, f.evidence FROM flags f JOIN samples s USING (sample_id)").fetchall())
    con.close()
    assert set(hits) == {"https://cdn.example.co.uk/a.jpg", "https://example.co.uk/b.jpg"}
    assert hits["https://cdn.example.co.uk/a.jpg"] == "host cdn.example.co.uk is under example.co.uk"
