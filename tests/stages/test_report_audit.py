"""The audit report of the bundled sample, opened in headless Chromium at 1400 px (issue #18).

The numbers the page shows are read back from the rendered page and compared with
``summary.json``, the catalog and the CSVs beside the page: totals, removal reasons, clusters,
every "shown of total", the per-rule table, the claimants' matched samples and their copies.
No table may be cut without saying so, no element may run past the page, and a screenshot of
every section goes to build/test-artefacts/ (``report-<section>.png``).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, query
from tests.headless import Browser, chromium_path

ARTEFACTS = ROOT / "build" / "test-artefacts"
WIDTH = 1400

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    chromium_path() is None,
    reason="needs headless Chromium: Debian's chromium package is not installed (`make test-deps` runs "
           "`apt-get install -y chromium`)")]


@pytest.fixture(scope="module")
def page(sample_ws, tmp_path_factory):
    """(browser showing the sample's report at 1400 px, summary.json, report folder, workspace)."""
    ws, _ = sample_ws
    rep = (ws / "out").resolve() / "report"
    summary = json.loads((rep.parent / "summary.json").read_text())
    browser = Browser(str(tmp_path_factory.mktemp("profile")))
    try:
        r = browser.open((rep / "index.html").as_uri(), width=WIDTH, height=1000)
        assert r["title"] == "curate report"
        yield browser, summary, rep, ws
    finally:
        browser.close()


def js(browser, expr: str):
    """The value of the JavaScript expression ``expr`` on the page (through JSON)."""
    return json.loads(browser.eval(f"JSON.stringify({expr})"))


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_numbers_equal_summary_json(page):
    browser, s, _, _ = page
    shown = js(browser, "[...document.querySelectorAll('[data-key]')].map(e => [e.dataset.key, e.innerText.trim()])")
    keys = {k for k, _ in shown}
    assert {"input_rows", "kept", "removed", "rejected", "clusters.count", "clusters.largest",
            "clusters.samples_in_clusters", "captions.repeated_captions", "captions.largest_caption_group"} <= keys
    for key, text in shown:
        v = s
        for part in key.split("."):
            v = v[part]
        assert text == str(v), key
    # removal reasons: every reason of summary.json, with its count, the largest first
    reasons = js(browser, "[...document.querySelectorAll('#reasons-table tr[data-reason]')]"
                          ".map(e => [e.dataset.reason, +e.cells[1].innerText])")
    assert dict(reasons) == s["reasons"]
    assert [n for _, n in reasons] == sorted(s["reasons"].values(), reverse=True)
    assert reasons[0] == ["flag:quality/tiny-image", 187]


def test_every_count_says_how_many_of_all_and_the_csv_holds_all(page):
    browser, s, rep, ws = page
    counts = js(browser, "[...document.querySelectorAll('.count')].map(e => [e.closest('section, .claimant').id, "
                         "+e.dataset.shown, +e.dataset.total, e.innerText, e.querySelector('a') && "
                         "e.querySelector('a').getAttribute('href')])")
    assert len(counts) >= 8
    for where, shown, total, text, href in counts:
        assert 0 <= shown <= total, where
        assert (f"{shown} of {total}" in text) if shown < total else (f"All {total}" in text), (where, text)
        assert href and (rep / href).is_file(), (where, href)
    by = {}
    for where, shown, total, _, href in counts:
        by.setdefault(where, []).append((shown, total, href))
    n_containment = query(ws, "SELECT count(*) FROM containment")[0][0]
    bad = sum(n for k, n in s["images"].items() if k != "ok")
    assert (by["containment"][0][1], by["images"][0][1]) == (n_containment, bad)
    assert [t for _, t, _ in by["clusters"]] == [s["clusters"]["count"]] * 2  # the grids and the table
    assert by["captions"][0][1] == s["captions"]["repeated_captions"]
    assert by["sources"][0][1] == len(s["sources"])
    # the CSVs beside the page hold every row the counts speak of
    assert len(csv_rows(rep / "containment.csv")) == n_containment
    assert len(csv_rows(rep / "unusable_images.csv")) == bad
    assert len(csv_rows(rep / "clusters.csv")) == s["clusters"]["samples_in_clusters"]
    assert len(csv_rows(rep / "repeated_captions.csv")) == s["captions"]["repeated_captions"]
    flags = csv_rows(rep / "flags.csv")
    assert len(flags) == sum(v["samples"] for v in s["flags"].values())
    # the flag table: one group per rule that hit, removals and the largest first; the tiny-image
    # removals are there (the old table showed 200 tag rows and none of them)
    groups = js(browser, "[...document.querySelectorAll('#flagged-table tr.group')].map(e => [e.dataset.rule, "
                         "+e.dataset.shown, +e.dataset.total, e.innerText])")
    assert {g[0]: g[2] for g in groups} == {k: v["samples"] for k, v in s["flags"].items()}
    assert groups[0][:3] == ["quality/tiny-image", 20, 187] and "20 of 187" in groups[0][3]
    actions = [s["flags"][g[0]]["action"] for g in groups]
    assert actions == sorted(actions, key=["remove", "review", "tag"].index)
    rows = js(browser, "[...document.querySelectorAll('#flagged-table tr')].filter(e => !e.classList.contains('group')"
                       " && e.cells[0].tagName == 'TD').length")
    assert rows == sum(g[1] for g in groups)
    for rule, shown, total, _ in groups:
        assert sum(r["rule"] == rule for r in flags) == total


def test_clusters_keepers_and_the_cluster_table(page):
    browser, s, _, ws = page
    table = js(browser, "[...document.querySelectorAll('#cluster-table tr[data-cluster]')].map(e => [e.dataset.cluster, "
                        "+e.cells[1].innerText])")
    sizes = dict(query(ws, "SELECT cluster_id, any_value(cluster_size) FROM clusters GROUP BY ALL"))
    assert len(table) == s["clusters"]["count"] == len(sizes)
    assert {int(c): n for c, n in table} == sizes
    assert sum(n for _, n in table) == s["clusters"]["samples_in_clusters"]
    grids = js(browser, "[...document.querySelectorAll('#clusters h3[data-size]')].map(e => [e.id, +e.dataset.size, "
                        "+e.dataset.shown, [...e.nextElementSibling.querySelectorAll('.card[data-sample]')]"
                        ".map(c => [+c.dataset.sample, c.className])])")
    assert grids and len(grids) == min(s["clusters"]["count"], 24)
    keep = {sid: (k, keeper) for sid, k, keeper in query(ws, "SELECT sample_id, keep, keeper_sample_id FROM decisions")}
    removed_keepers = 0
    for _, size, shown, cards in grids:
        assert len(cards) == shown == min(size, 8)
        first, cls = cards[0]
        assert keep[first][1] == first  # the keeper comes first
        if keep[first][0]:
            assert cls.split() == ["card", "keeper"]
        else:  # a keeper removed for its own reasons is never shown as the green keeper card
            assert cls.split() == ["card", "removed-keeper"]
            removed_keepers += 1
        assert all("keeper" not in c for _, c in cards[1:])
    assert removed_keepers >= 1  # the sample has clusters whose keeper is itself removed (tiny images)


def test_rules_table_equals_summary_json(page):
    """Contract with the per-rule coverage table: ``<table id="rule-coverage">``, one ``<tr data-rule>``
    per rule, integer cells ``td.checked``, ``td.unknown``, ``td.hits``."""
    browser, s, _, _ = page
    assert "rules" in s, "summary.json has no per-rule list"
    cells = js(browser, "Object.fromEntries([...document.querySelectorAll('table#rule-coverage tr[data-rule]')].map(e => "
                        "[e.dataset.rule, ['checked', 'unknown', 'hits'].map(k => e.querySelector('td.' + k).innerText.trim())]))")
    assert set(cells) == {f"{r['pack']}/{r['rule_id']}" for r in s["rules"]}
    for r in s["rules"]:
        assert cells[f"{r['pack']}/{r['rule_id']}"] == [str(r["checked"]), str(r["unknown"]), str(r["hits"])]


def _red_pixels(data_uri_b64: str) -> int:
    with Image.open(io.BytesIO(base64.b64decode(data_uri_b64))) as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    return int(((a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum())


def test_each_claimant_shows_every_match_beside_its_reference(page):
    from curate.config import HashConfig, ReportConfig
    from curate.stages.report.thumbs import thumbnail

    browser, s, rep, ws = page
    outlined = 0
    for name, c in s["claimants"].items():
        direct = {r[0] for r in query(ws, "SELECT DISTINCT sample_id FROM claim_matches WHERE slug = ? AND NOT via_cluster",
                                      [c["slug"]])}
        sec = js(browser, f"(() => {{ const d = document.getElementById('claim-{c['slug']}'); return d && {{"
                          "h3: d.querySelector('h3').innerText, href: d.querySelector('.count a').getAttribute('href'), "
                          "matches: [...d.querySelectorAll('.match')].map(m => [+m.dataset.sample, "
                          "[...m.querySelectorAll('img')].map(i => [i.alt, i.src.split(',')[1]]), "
                          "[...m.querySelectorAll('.what tr')].slice(1).map(t => t.cells[0].innerText), "
                          "[...m.querySelectorAll('[data-copy]')].map(k => +k.dataset.copy)])}})()")
        assert sec and name in sec["h3"]
        assert (rep / sec["href"]).resolve() == (rep.parent / c["list"]).resolve()
        assert {m[0] for m in sec["matches"]} == direct and len(direct) == c["direct"]
        for sid, imgs, signals, copies in sec["matches"]:
            want = sorted(r[0] for r in query(ws, "SELECT signal FROM claim_matches WHERE slug = ? AND sample_id = ? "
                                                  "AND NOT via_cluster", [c["slug"], sid]))
            assert sorted(signals) == want
            refs = [r[0] for r in query(ws, "SELECT DISTINCT matched_reference FROM claim_matches WHERE slug = ? AND "
                                            "sample_id = ? AND matched_reference IS NOT NULL", [c["slug"], sid])]
            alts = [a for a, _ in imgs]
            assert alts[0] == f"sample {sid}"
            assert sorted(a for a in alts if a.startswith("reference ")) == sorted(f"reference {r.rsplit('/', 1)[-1]}"
                                                                                  for r in refs)
            ref = query(ws, "SELECT image_ref FROM samples WHERE sample_id = ?", [sid])[0][0]
            plain = thumbnail(ref, ReportConfig().thumb_px, HashConfig().max_pixels)[0]
            if "containment" in signals:  # the region is outlined in red on the image holding the copy
                assert _red_pixels(imgs[0][1]) > _red_pixels(plain) + 50
                outlined += 1
            else:
                assert imgs[0][1] == plain
            # the copies found through its duplicate cluster are grouped under it
            vias = {r[0] for r in query(ws, "SELECT sample_id FROM claim_matches WHERE slug = ? AND via_cluster AND "
                                            "seed_sample_id = ?", [c["slug"], sid])}
            assert set(copies) == vias
        assert sum(len(m[3]) for m in sec["matches"]) == c["via_cluster"]
    assert outlined >= 1  # the sample's UKBench claim has a containment match


def test_contents_sections_plots_and_page_width(page):
    browser, _, _, _ = page
    toc = js(browser, "[...document.querySelectorAll('#toc > ol > li > a')].map(a => a.getAttribute('href').slice(1))")
    sections = js(browser, "[...document.querySelectorAll('body > section[id]')].map(e => [e.id, "
                           "!!e.querySelector(':scope > h2')])")
    assert all(has_h2 for _, has_h2 in sections), sections
    # every heading opens a section of the contents (the probe part is the probe section's own)
    assert js(browser, "[...document.querySelectorAll('h2')].filter(h => !h.closest('section[id]') && "
                       "h.id != 'probes').map(h => h.innerText)") == []
    assert {i for i, _ in sections} - {"probes"} <= set(toc)
    for i in toc:
        assert js(browser, f"!!document.getElementById('{i}')"), i
    assert {"summary", "reasons", "captions", "clusters", "containment", "claims", "rules", "flagged", "probes",
            "images", "plots"} <= set(toc)
    # four figures, inline, decoded
    plots = js(browser, "[...document.querySelectorAll('#plots img')].map(i => [i.closest('figure').id, "
                        "i.src.startsWith('data:image/png;base64,'), i.naturalWidth])")
    assert {p[0] for p in plots} == {"plot-clusters", "plot-captions", "plot-similarity", "plot-resolutions"}
    assert all(ok and w > 300 for _, ok, w in plots)
    # nothing runs past a 1400 px page (long URLs and paths wrap)
    assert js(browser, "document.documentElement.scrollWidth") <= WIDTH
    wide = js(browser, f"[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > {WIDTH})"
                       ".map(e => e.tagName + '.' + e.className).slice(0, 5)")
    assert wide == []
    # captions are bounded on the page (the manifest and the CSVs keep them whole)
    caps = js(browser, "[...document.querySelectorAll('.cap')].map(e => e.innerText.length)")
    assert caps and max(caps) <= 200 + len("… (+1,000,000 chars)")


def test_screenshots_of_every_section(page):
    browser, _, _, _ = page
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    boxes = js(browser, "[...document.querySelectorAll('body > section[id], #probes')].map(e => { const r = "
                        "e.getBoundingClientRect(); return [e.id, r.top + window.scrollY, r.height, e.tagName]; })")
    assert len(boxes) >= 11
    boxes.sort(key=lambda b: b[1])
    for k, (sid, y, h, tag) in enumerate(boxes):
        if tag != "SECTION":  # a heading that opens a part of the page: down to the next section
            h = (boxes[k + 1][1] if k + 1 < len(boxes) else js(browser, "document.documentElement.scrollHeight")) - y
        shot = ARTEFACTS / f"report-{sid}.png"
        tmp = shot.with_suffix(".tmp.png")
        browser.screenshot(str(tmp), y, min(h, 16000), width=WIDTH)
        with Image.open(tmp) as im:
            assert im.width == WIDTH and im.height >= min(h, 16000) - 1
            assert len(np.unique(np.asarray(im.convert("L").resize((64, 64))))) > 5  # not blank
        shutil.move(tmp, shot)
