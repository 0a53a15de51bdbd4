"""The report with probe results, opened in headless Chromium (Debian's ``chromium`` package; install
with ``make test-deps``): hostile captions, prompts and URLs run nothing, the page requests nothing
from the network, and screenshots are kept in build/test-artefacts/."""
from __future__ import annotations

import http.server
import json
import re
import shutil
import threading

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from tests.conftest import ROOT, SAMPLE
from tests.headless import Browser, chromium_path

ARTEFACTS = ROOT / "build" / "test-artefacts"

pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason="needs headless Chromium: Debian's chromium package is not installed (`make test-deps` runs "
           "`apt-get install -y chromium`)")


class Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        Recorder.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Recorder.hits = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def payload(port: int, tag: str) -> str:
    """Markup that, if it reached the page unescaped, would run script and fetch from our server."""
    return (f'<script>document.title="pwned-{tag}-script"</script>'
            f'<img src=x onerror="document.title=\'pwned-{tag}-onerror\'">'
            f'<img src="http://127.0.0.1:{port}/{tag}.png"><link rel="stylesheet" href="http://127.0.0.1:{port}/{tag}.css">')


def cli(*args: str) -> dict:
    r = CliRunner().invoke(main, ["-q", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def page_requests(result: dict, own: str) -> list[str]:
    """Requests the page issued, other than its own file and inline data: images."""
    return [u for u in result["requests"] if u != own and not u.startswith("data:")]


def test_report_opens_in_chromium_runs_nothing_requests_nothing(sample_ws, tmp_path, server):
    from tests.conftest import copy_ws
    from tests.tiny_diffusion import tiny_pipeline

    import torch

    ws = copy_ws(sample_ws, tmp_path)
    port = server
    cap = "Wikimedia Foundation " + payload(port, "caption")
    bad_url = f'http://127.0.0.1:{port}/u"><img src=x onerror="document.title=\'pwned-url\'">'
    con = duckdb.connect(str(ws / "catalog.duckdb"))
    ids = [r[0] for r in con.execute("SELECT sample_id FROM samples WHERE caption = 'Wikimedia Foundation' "
                                     "ORDER BY sample_id").fetchall()]
    assert len(ids) == 17
    con.execute("UPDATE samples SET caption = ? WHERE sample_id IN (SELECT unnest(?::BIGINT[]))", [cap, ids])
    con.execute("UPDATE samples SET url = ? WHERE sample_id = ?", [bad_url, ids[0]])
    ref = con.execute("SELECT image_ref FROM samples WHERE sample_id = ?", [ids[0]]).fetchone()[0]
    con.close()

    cli("-w", str(ws), "probe", "select", "--top-k", "8")  # the 17 payload-captioned pairs rank 7th
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: OpenMP threads would only spin on a busy machine
    try:
        tiny_pipeline(tmp_path / "tiny")
        gen = cli("-w", str(ws), "probe", "generate", "--model", str(tmp_path / "tiny"), "--seeds", "2",
                  "--steps", "3", "--limit", "3", "--device", "cpu")
    finally:
        torch.set_num_threads(threads)
    assert gen["generated"] == 6
    # imported generations: a copy of the payload-captioned training image, with the payload as prompt
    gens = tmp_path / "gens"
    gens.mkdir()
    shutil.copyfile(ref, gens / "copy.jpg")
    Image.open(SAMPLE / "photos" / "skimage_coffee.png").convert("RGB").save(gens / "other.png")
    prompt = "copied " + payload(port, "prompt")
    (gens / "prompts.jsonl").write_text(json.dumps({"file": "copy.jpg", "prompt": prompt, "seed": 7}) + "\n"
                                        + json.dumps({"file": "other.png", "prompt": "a cup"}) + "\n")
    cli("-w", str(ws), "probe", "import", str(gens), "--prompts", str(gens / "prompts.jsonl"), "--name", "elsewhere")
    score = cli("-w", str(ws), "probe", "score")
    assert set(score["sets"]) == {"elsewhere", "tiny"}
    rep = cli("-w", str(ws), "report")
    assert rep["skipped"] is False

    html_path = ws / "out" / "report" / "index.html"
    html = html_path.read_text()
    data = json.loads((ws / "out" / "report" / "report.json").read_text())
    probes = data["probes"]
    assert probes["present"] and {s["set"] for s in probes["sets"]} == {"elsewhere", "tiny"}
    assert any(p["prompt"] == cap for p in probes["selected"])  # the raw text is in the data…
    assert "<script>" not in html and 'onerror="' not in html  # …and only escaped in the page
    assert "&lt;script&gt;document.title=&#34;pwned-caption-script&#34;&lt;/script&gt;" in html
    assert html.count("data:image/png;base64,") >= 3  # histograms per set + risk plot, inline
    assert not re.search(r'src="(?!data:)', html)  # nothing to fetch: every src is a data: URI…
    assert not re.search(r'<(?!a )[^>]*\bhref=', html)  # …and only links (<a>, followed on a click) have an href
    elsewhere = next(s for s in probes["sets"] if s["set"] == "elsewhere")
    row = next(r for r in elsewhere["grid"] if r["prompt"] == prompt)
    assert row["sample_id"] in ids and row["verdict"] == "replicated" and row["train_caption"] == cap

    # controls: the same markup unescaped does run and fetch in this browser (so the checks below can fail),
    # and the report's Content-Security-Policy would block it and log the violation
    raw = tmp_path / "control.html"
    raw.write_text(f"<html><head><title>control</title></head><body>{payload(port, 'control')}</body></html>")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', html).group(0)
    csp_page = tmp_path / "control-csp.html"
    csp_page.write_text(f"<html><head>{csp}<title>control</title></head><body>{payload(port, 'csp')}</body></html>")
    browser = Browser(str(tmp_path / "profile"))
    try:
        c = browser.open(raw.as_uri())
        assert c["title"].startswith("pwned-control") and "/control.png" in Recorder.hits
        assert f"http://127.0.0.1:{port}/control.png" in page_requests(c, raw.as_uri())
        c = browser.open(csp_page.as_uri())
        assert c["title"] == "control" and "/csp.png" not in Recorder.hits
        assert any("Content Security Policy" in e.get("text", "") for e in c["log"])
        Recorder.hits.clear()

        r = browser.open(html_path.as_uri())
        assert r["title"] == "curate report"
        extra = page_requests(r, html_path.as_uri())
        assert extra == [], extra[:5]
        assert Recorder.hits == []
        assert not [e["text"][:200] for e in r["log"] if e.get("level") in ("error", "warning")]
        assert browser.eval("document.querySelectorAll('script').length") == 0
        assert browser.eval("[...document.querySelectorAll('*')].filter(e => [...e.attributes]"
                            ".some(a => a.name.toLowerCase().startsWith('on'))).length") == 0
        assert browser.eval("[...document.images].filter(i => !i.src.startsWith('data:')).length") == 0
        assert browser.eval("document.images.length") > 20
        assert browser.eval("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length") == \
            browser.eval("document.images.length")  # every inline image decodes
        text = browser.eval("document.body.innerText")
        assert 'document.title="pwned-caption-script"' in text and "pwned-prompt-onerror" in text  # shown as text
        # screenshots: the top of the report and the probe section
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        top = tmp_path / "probe-report-top.png"  # (the audit test saves report-<section>.png)
        browser.screenshot(str(top), 0, 1600)
        y = browser.eval("document.getElementById('probes').getBoundingClientRect().top + window.scrollY")
        section = tmp_path / "probe-report-probes.png"
        browser.screenshot(str(section), y, 6000)
    finally:
        browser.close()
    for shot in (top, section):
        with Image.open(shot) as im:
            assert im.width == 1280 and im.height > 1000
            assert len(np.unique(np.asarray(im.convert("L").resize((64, 64))))) > 20  # not blank
        shutil.copyfile(shot, ARTEFACTS / shot.name)


def test_report_without_probes_says_so(sample_ws, tmp_path):
    from tests.conftest import copy_ws

    ws = copy_ws(sample_ws, tmp_path)
    cli("-w", str(ws), "report", "--force")
    html = (ws / "out" / "report" / "index.html").read_text()
    assert "No probes yet" in html
    assert json.loads((ws / "out" / "report" / "report.json").read_text())["probes"] == {"present": False}
