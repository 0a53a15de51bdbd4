"""Per-rule coverage (issue #18): a check that could not run never looks like a clean result.

For every rule of every pack: samples checked (the rule could read what it reads), samples
with an unknown value and what the rule did with them, and hits — zero-hit rules included —
in the catalog (``rule_stats``), ``summary.json`` (``rules``, ``unscored``), the report and
``curate status``. Every expected number here is recomputed from ``samples`` / ``flags``.
"""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import api
from curate.config import RunConfig
from curate.stages.flag.rules import load_pack, pack_path
from tests.conftest import query

STRICT = ("pack: strict\ndescription: unknown punsafe goes to review\nrules:\n  - id: punsafe-unknown\n"
          "    kind: metadata_threshold\n    category: nsfw\n    action: review\n    column: punsafe\n"
          "    op: '>'\n    value: 0.5\n    unknown: flag\n")
# a classifier rule limited to the samples a caption rule hits (only_if_hit: its scope is those
# candidates), and a retrieval rule (it can check the samples with an image vector)
CLASSIFY = ("pack: classify\ndescription: x\nrules:\n  - id: animals\n    kind: caption_words\n"
            "    category: sensitive\n    action: tag\n    words: [cat, house]\n  - id: nude-animals\n"
            "    kind: classifier_score\n    category: nsfw\n    action: remove\n    classifier: nudenet\n"
            "    op: '>='\n    value: 0.75\n    unknown: pass\n    only_if_hit: [animals]\n"
            "  - id: our-picture\n    kind: retrieval\n    category: copyright\n    action: review\n"
            "    reference_images: [refs]\n    min_cosine: 0.99\n")


@pytest.fixture(scope="module")
def covered(tmp_path_factory):
    """A laion2B-joined source with punsafe (one unsafe, one NULL), a fondant-like source without
    punsafe and a plain image folder (no metadata at all): flagged with laion-safety, quality, a
    pack that sends unknown punsafe to review and :data:`CLASSIFY`; exported and reported."""
    tmp = tmp_path_factory.mktemp("coverage")
    pq.write_table(pa.table({
        "URL": ["https://a.example.org/0.jpg", "https://a.example.org/1.jpg", "https://a.example.org/2.jpg",
                "https://a.example.org/3.jpg"],
        "TEXT": ["a red bicycle", "a cat", "mail me: a.b@example.com", "a dog"],
        "punsafe": pa.array([0.93, None, 0.1, 0.2], pa.float32()),
        "pwatermark": pa.array([0.1, 0.2, None, 0.3], pa.float32()),
        "WIDTH": [640, 640, 20, 512], "HEIGHT": [480, 480, 20, 512],
    }), tmp / "laion.parquet")
    pq.write_table(pa.table({"url": ["https://b.example.net/x.jpg", "https://b.example.net/y.jpg"],
                             "caption": ["a house", None]}), tmp / "fondant.parquet")
    (tmp / "folder").mkdir()
    for k, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (48, 40), colour).save(tmp / "folder" / f"{k}.png")
    (tmp / "refs").mkdir()
    (tmp / "refs" / "ours.png").write_bytes((tmp / "folder" / "0.png").read_bytes())
    (tmp / "strict.yaml").write_text(STRICT)
    (tmp / "classify.yaml").write_text(CLASSIFY)
    packs = ["laion-safety", "quality", str(tmp / "strict.yaml"), str(tmp / "classify.yaml")]
    cfg = RunConfig.model_validate({
        "sources": [{"name": "laion", "metadata": "laion.parquet"}, {"name": "fondant", "metadata": "fondant.parquet"},
                    {"name": "folder", "images": "folder"}],
        "flag": {"packs": packs}})
    cfg.base_dir = str(tmp)
    ws = tmp / "ws"
    api.run_one(ws, "report", cfg)
    summary = json.loads((ws / "out" / "summary.json").read_text())
    html = (ws / "out" / "report" / "index.html").read_text()
    rules = [(p.pack, r) for p in (load_pack(pack_path(x, tmp)) for x in packs) for r in p.rules]
    return ws, summary, html, rules


def _rule(summary, pack, rule_id):
    found = [r for r in summary["rules"] if (r["pack"], r["rule_id"]) == (pack, rule_id)]
    assert len(found) == 1, (pack, rule_id, summary.get("rules"))
    return found[0]


def test_unknown_punsafe_is_counted_not_passed_silently(covered):
    ws, summary, _, _ = covered
    n = query(ws, "SELECT count(*) FILTER (punsafe IS NOT NULL), count(*) FILTER (punsafe IS NULL) FROM samples")[0]
    assert n == (3, 5)  # 0.93, 0.1, 0.2; one NULL + 2 fondant rows + 2 folder images
    hits = query(ws, "SELECT count(DISTINCT sample_id) FROM flags WHERE pack = 'laion-safety' "
                     "AND rule_id = 'nsfw-punsafe'")[0][0]
    r = _rule(summary, "laion-safety", "nsfw-punsafe")
    assert (r["checked"], r["unknown"], r["hits"]) == (n[0], n[1], hits) == (3, 5, 1)
    assert r["action"] == "remove" and r["unknown_action"] == "passed"
    # the same rule with unknown: flag sends the 5 unknown samples to review: they are among its hits
    s = _rule(summary, "strict", "punsafe-unknown")
    assert (s["checked"], s["unknown"], s["hits"], s["unknown_action"]) == (3, 5, 6, "reviewed")


def test_every_rule_is_listed_with_counts_from_the_catalog(covered):
    ws, summary, _, rules = covered
    assert [(r["pack"], r["rule_id"]) for r in summary["rules"]] == sorted((p, r.id) for p, r in rules)
    hits = dict(((p, r), n) for p, r, n in query(
        ws, "SELECT pack, rule_id, count(DISTINCT sample_id) FROM flags WHERE holder IS NULL GROUP BY ALL"))
    total = query(ws, "SELECT count(*) FROM samples")[0][0]
    for r in summary["rules"]:
        assert r["hits"] == hits.get((r["pack"], r["rule_id"]), 0), r
        if r["rule_id"] != "nude-animals":
            assert r["checked"] + r["unknown"] == total, r  # every sample is in the scope of these rules
        assert set(r) >= {"pack", "rule_id", "action", "checked", "unknown", "unknown_action", "hits"}
    zero = [r for r in summary["rules"] if r["hits"] == 0]
    assert {(r["pack"], r["rule_id"]) for r in zero} >= {("laion-safety", "stock-agency-domain"),
                                                          ("laion-safety", "nsfw-tag"), ("quality", "extreme-aspect")}
    # what each kind reads, recomputed: caption, size, the nsfw tag column
    cap = query(ws, "SELECT count(*) FILTER (caption IS NULL) FROM samples")[0][0]
    assert _rule(summary, "laion-safety", "pii-email-in-caption")["unknown"] == cap == 3  # fondant None + 2 images
    assert _rule(summary, "laion-safety", "pii-email-in-caption")["hits"] == 1
    size = query(ws, "SELECT count(*) FILTER (coalesce(i.width, s.width) IS NULL OR coalesce(i.height, s.height) "
                     "IS NULL) FROM samples s LEFT JOIN images i USING (sample_id)")[0][0]
    tiny = _rule(summary, "quality", "tiny-image")
    assert (tiny["unknown"], tiny["hits"]) == (size, 1) and size == 2  # the fondant rows have no size
    assert _rule(summary, "laion-safety", "nsfw-tag")["unknown"] == total  # no source has the NSFW tag column


def test_classifier_rule_without_scores_counts_its_candidates_as_unknown(covered):
    ws, summary, _, _ = covered
    # its candidates are the animals rule's hits; none has a decodable image, so none was classified
    cands = query(ws, "SELECT count(DISTINCT sample_id) FROM flags WHERE rule_id = 'animals'")[0][0]
    scored = query(ws, "SELECT count(*) FROM image_scores")[0][0]
    r = _rule(summary, "classify", "nude-animals")
    assert (r["checked"], r["unknown"], r["hits"], r["unknown_action"]) == (scored, cands, 0, "passed") == (0, 2, 0, "passed")


def test_retrieval_rule_checks_the_samples_with_image_vectors(covered):
    ws, summary, _, _ = covered
    vectors = query(ws, "SELECT count(DISTINCT sample_id) FROM embeddings WHERE status = 'ok' AND model NOT LIKE 'text:%'")
    total = query(ws, "SELECT count(*) FROM samples")[0][0]
    r = _rule(summary, "classify", "our-picture")
    assert (r["checked"], r["unknown"], r["hits"]) == (vectors[0][0], total - vectors[0][0], 1) == (2, 6, 1)
    assert r["reads"] == "image embedding"


def test_unscored_counts_samples_no_rule_of_the_category_could_check(covered):
    ws, summary, _, _ = covered
    # nsfw rules read punsafe and the nsfw tag: a sample with neither was never checked for nsfw
    n = query(ws, "SELECT count(*) FROM samples WHERE punsafe IS NULL AND nsfw IS NULL")[0][0]
    assert summary["unscored"]["nsfw"] == n == 5
    assert summary["unscored"]["quality"] == 2
    # copyright rules read the URL; the retrieval rule also checked the two images without one
    assert summary["unscored"]["copyright"] == 0


def test_rule_stats_survive_in_the_catalog(covered):
    ws, summary, _, _ = covered
    rows = query(ws, "SELECT pack, rule_id, action, checked, unknown, unknown_action, hits FROM rule_stats "
                     "ORDER BY pack, rule_id")
    keys = ("pack", "rule_id", "action", "checked", "unknown", "unknown_action", "hits")
    assert [dict(zip(keys, r)) for r in rows] == [{k: r[k] for k in keys} for r in summary["rules"]]


class _Rows(HTMLParser):
    """Cells of ``<table id="rule-coverage">``: data-rule → {class: text}."""

    def __init__(self):
        super().__init__()
        self.in_table, self.row, self.cell, self.rows = False, None, None, {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "rule-coverage":
            self.in_table = True
        elif self.in_table and tag == "tr" and "data-rule" in a:
            self.row = self.rows.setdefault(a["data-rule"], {})
        elif self.row is not None and tag == "td" and a.get("class"):
            self.cell = a["class"].split()[0]
            self.row[self.cell] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_table = False
        elif tag == "td":
            self.cell = None
        elif tag == "tr":
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.row[self.cell] += data


def test_report_rules_table_equals_summary(covered):
    _, summary, html, rules = covered
    assert re.search(r'<section id="rules">\s*<h2[^>]*>', html)
    p = _Rows()
    p.feed(html)
    assert len(p.rows) == len(rules)
    for r in summary["rules"]:
        row = p.rows[f"{r['pack']}/{r['rule_id']}"]
        assert {k: row[k].strip() for k in ("checked", "unknown", "hits")} == \
            {k: str(r[k]) for k in ("checked", "unknown", "hits")}, row
        assert r["unknown_action"] in row["unknown-action"]


def test_status_shows_nested_flag_counters(covered):
    from click.testing import CliRunner

    from cli import main

    ws, summary, _, _ = covered
    r = CliRunner().invoke(main, ["--workspace", str(ws), "status"])
    assert r.exit_code == 0, r.output
    flag_row = next(line for line in r.output.splitlines() if line.startswith("flag "))
    assert re.search(r"flag\s+ok\s+\S", flag_row), flag_row  # not an empty row
    assert "packs: laion-safety, quality, strict, classify" in flag_row
    assert "hits_per_rule: " in flag_row
    nsfw = _rule(summary, "laion-safety", "nsfw-punsafe")
    assert (f"laion-safety/nsfw-punsafe: checked {nsfw['checked']}, unknown {nsfw['unknown']} (passed), "
            f"hits {nsfw['hits']}") in r.output


def test_dry_run_reports_the_same_coverage(covered):
    from curate.stages.flag.stage import hit_counts

    ws, summary, _, rules = covered
    packs = [load_pack(pack_path(n)) for n in ("laion-safety", "quality")]
    w = api.open_workspace(ws)
    try:
        counts = hit_counts(w, packs)
    finally:
        w.close()
    for r in summary["rules"]:
        if r["pack"] in ("laion-safety", "quality"):
            c = counts[f"{r['pack']}/{r['rule_id']}"]
            assert (c["checked"], c["unknown"], c["unknown_action"]) == (r["checked"], r["unknown"], r["unknown_action"])


def test_flags_without_coverage_rows_are_an_error_not_an_empty_list(covered, tmp_path):
    import shutil

    from curate.errors import CurateError
    from curate.stages.export.stage import summary

    src, _, _, _ = covered
    ws = tmp_path / "ws"
    shutil.copytree(src, ws, symlinks=True)
    w = api.open_workspace(ws)
    try:
        w.con.execute("DELETE FROM rule_stats")  # as in a catalog flagged before rule_stats existed
        with pytest.raises(CurateError, match=r"without coverage counts .* run `curate flag --force`"):
            summary(w)
    finally:
        w.close()
