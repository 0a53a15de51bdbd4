"""Claims and opt-out lists on the bundled sample: every matching sample, extended to its
duplicate cluster (via_cluster), with evidence, in per-claimant removal lists."""
from __future__ import annotations

import csv
import json
import shutil

import duckdb
import pytest

from curate import api
from curate.stages.flag.claims import load_all, load_claim
from curate.errors import ConfigError
from curate.stages.flag.urls import canonical_url_sql, normalise_domain
from curate.store.hosts import register as register_host_udf

from tests.conftest import SAMPLE, sample_file_of
from tests.conftest import query as _q

UKBENCH = SAMPLE / "near-dup" / "imagededup" / "base_images" / "ukbench00120.jpg"
UKBENCH_COPIES = {"near-dup/imagededup/base_images/ukbench00120.jpg",
                  "near-dup/imagededup/mixed_images/ukbench00120_hflip.jpg",
                  "near-dup/imagededup/mixed_images/ukbench00120_resize.jpg",
                  "near-dup/imagededup/ukbench00120_gray.jpg",
                  "near-dup/imagededup/mixed_images/ukbench00120_rotation.jpg"}  # by containment




@pytest.fixture(scope="module")
def claimed(sample_ws, tmp_path_factory):
    """The sample workspace (copied) after flag + export with three claims and an opt-out list."""
    src, _ = sample_ws
    tmp = tmp_path_factory.mktemp("claims")
    ws = tmp / "ws"
    shutil.copytree(src, ws)
    (tmp / "refs").mkdir()
    shutil.copy(UKBENCH, tmp / "refs" / "our-photo-0042.jpg")  # the claimant's own file name
    (tmp / "agency.yaml").write_text("claimant: UKBench Photo Agency\ncontact: rights@agency.example\n"
                                     "reference_images: [refs]\n")
    (tmp / "cc.csv").write_text("field,value\nclaimant,Creative Commons\ncontact,legal@cc.example\n"
                                "domain,https://i.creativecommons.org/\n")
    (tmp / "do-not-train.txt").write_text("# registry export\nconkerwiki.com\n")
    cfg = api.workspace_config(ws, SAMPLE / "curate.yaml")
    cfg = api.with_overrides(cfg, "flag", {"claims": [str(tmp / "agency.yaml"), str(tmp / "cc.csv")],
                                           "opt_out": [str(tmp / "do-not-train.txt")]})
    dry = None
    from curate.stages.flag.claims import run_claims
    from curate.stages.flag.stage import load_claims

    w = api.open_workspace(ws, cfg)
    try:
        before = w.q("SELECT * FROM claim_matches ORDER BY ALL")  # the demo config's own claims
        dry = run_claims(w, cfg, load_claims(cfg), dry_run=True)["claimants"]
        assert w.q("SELECT * FROM claim_matches ORDER BY ALL") == before  # dry run wrote nothing
    finally:
        w.close()
    flag = api.run_one(ws, "flag", cfg)["counters"]
    api.run_one(ws, "export", cfg)
    return ws, flag, dry


def _matches(ws, slug):
    return _q(ws, "SELECT s.image_ref, s.url, m.signal, m.via_cluster, m.evidence, m.seed_sample_id, m.sample_id "
                  "FROM claim_matches m JOIN samples s USING (sample_id) WHERE m.slug = ?", [slug])


def test_reference_image_claim_gets_the_original_and_its_near_duplicate_copies(claimed):
    ws, counters, _ = claimed
    rows = _matches(ws, "ukbench-photo-agency")
    files = {sample_file_of(r[0]) for r in rows}
    assert UKBENCH_COPIES <= files
    assert all("ukbench00120" in f for f in files)  # nothing else
    direct = {sample_file_of(r[0]): r for r in rows if r[2] == "sha256"}
    assert set(direct) == {"near-dup/imagededup/base_images/ukbench00120.jpg"}  # byte-identical original
    flip = [r for r in rows if sample_file_of(r[0]).endswith("_hflip.jpg") and r[2] == "phash"]
    assert flip and "mirror image" in flip[0][4]
    rot = [r for r in rows if sample_file_of(r[0]).endswith("_rotation.jpg") and r[2] == "containment"]
    assert rot and "region [" in rot[0][4] and "inliers" in rot[0][4], rows
    assert counters["claimants"]["UKBench Photo Agency"]["samples"] == len(files)
    removed = _q(ws, "SELECT s.image_ref FROM decisions d JOIN samples s USING (sample_id) "
                     "WHERE list_contains(d.reasons, 'claim:ukbench-photo-agency')")
    assert {sample_file_of(r[0]) for r in removed} == files


def test_domain_claim_gets_every_sample_of_the_domain_plus_copies_under_other_urls(claimed):
    ws, _, _ = claimed
    on_domain = {r[0] for r in _q(ws, "SELECT sample_id FROM samples WHERE url LIKE '%://i.creativecommons.org/%'")}
    assert len(on_domain) >= 5
    rows = _matches(ws, "creative-commons")
    direct = {r[6] for r in rows if not r[3]}
    via = [r for r in rows if r[3]]
    assert direct == on_domain
    # the clusters of the direct matches, taken whole: every other member arrives via_cluster
    members = {r[0] for r in _q(ws, "SELECT sample_id FROM clusters WHERE cluster_id IN (SELECT cluster_id FROM clusters "
                                    f"WHERE sample_id IN ({','.join(map(str, on_domain))}))")}
    assert {r[6] for r in via} == members - on_domain
    other_hosts = [r for r in via if "creativecommons.org" not in (r[1] or "")]
    assert len(other_hosts) >= 3  # the same badge served by other sites
    for r in via:
        assert r[5] in on_domain and f"copy of sample {r[5]}" in r[4] and "duplicate cluster" in r[4]


def test_opt_out_list_propagates_to_duplicates(claimed):
    ws, _, _ = claimed
    rows = _matches(ws, "do-not-train")
    hosts = {r[1].split("/")[2] for r in rows if not r[3]}
    assert hosts and all(h == "conkerwiki.com" or h.endswith(".conkerwiki.com") for h in hosts), hosts
    assert any(r[3] and "conkerwiki.com" not in r[1] for r in rows)  # a copy on another site
    reasons = _q(ws, "SELECT count(*) FROM decisions WHERE list_contains(reasons, 'opt_out:do-not-train')")[0][0]
    assert reasons == len({r[6] for r in rows})


def test_per_claimant_removal_lists_and_summary(claimed):
    ws, _, dry = claimed
    rem = ws / "out" / "removals"
    assert {p.name for p in rem.iterdir()} == {"all.csv", "ukbench-photo-agency.csv", "ukbench-photo-agency.json",
                                               "creative-commons.csv", "creative-commons.json",
                                               "do-not-train.csv", "do-not-train.json"}
    rows = list(csv.DictReader((rem / "creative-commons.csv").open()))
    need = {"url", "sample_id", "claim", "signal", "score", "evidence", "matched_reference", "via_cluster"}
    assert need <= set(rows[0])
    assert all(r["claim"] == "claim:creative-commons" and r["evidence"] for r in rows)
    doc = json.loads((rem / "creative-commons.json").read_text())
    assert doc["claim"]["contact"] == "legal@cc.example" and doc["claim"]["entries"] == {"domain": ["creativecommons.org"]}
    assert doc["counts"]["samples"] == len({r["sample_id"] for r in rows})
    assert doc["counts"]["via_cluster"] == len({r["sample_id"] for r in rows if r["via_cluster"] == "true"}) > 0
    agency = list(csv.DictReader((rem / "ukbench-photo-agency.csv").open()))
    assert {r["matched_reference"].rsplit("/", 1)[-1] for r in agency if r["signal"] != "cluster"} == {"our-photo-0042.jpg"}
    summary = json.loads((ws / "out" / "summary.json").read_text())
    for name, c in summary["claimants"].items():
        assert dry[name]["samples"] == c["samples"]  # --dry-run counted the same
    manifest = {r[0] for r in duckdb.sql(f"SELECT sample_id FROM '{ws / 'out' / 'manifest.parquet'}'").fetchall()}
    claimed_ids = {int(r["sample_id"]) for r in rows}
    assert not manifest & claimed_ids


def test_every_removal_names_a_rule_or_claim_with_evidence(claimed):
    ws, _, _ = claimed
    rows = list(csv.DictReader((ws / "out" / "removals" / "all.csv").open()))
    assert rows
    for r in rows:
        reasons = r["reasons"].split(";")
        assert reasons and all(reasons), r
        for why in reasons:
            if why.startswith("flag:"):
                assert why[5:] + ": " in r["evidence"], (why, r["evidence"])
            elif why.startswith(("claim:", "opt_out:")):
                assert why + ": " in r["evidence"], (why, r["evidence"])
            elif why == "duplicate":
                assert "duplicate of " in r["evidence"]
            elif why == "sha256_mismatch":
                assert "bytes hash to" in r["evidence"]
            else:
                assert why.startswith("image:") and r["image_status"] == why[6:]


def test_bad_claim_files_fail_with_file_line_and_fix(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("claimant: X\ndomains: [example.com]\nreference_imgs: [a.jpg]\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: reference_imgs → unknown key"):
        load_claim(p)
    p.write_text("claimant: X\ndomains: [co.uk]\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: domains → .*public suffix.*example.co.uk"):
        load_claim(p)
    p.write_text("claimant: X\n")
    with pytest.raises(ConfigError, match=r"needs at least one of domains, urls"):
        load_claim(p)
    c = tmp_path / "c.csv"
    c.write_text("field,value\nclaimant,X\nwebsite,example.com\n")
    with pytest.raises(ConfigError, match=r"c.csv:3: unknown field 'website'"):
        load_claim(c)
    o = tmp_path / "o.txt"
    o.write_text("example.com\nnot a domain\n")
    with pytest.raises(ConfigError, match=r"o.txt:2: 'not a domain' is not a domain name"):
        load_all([], [str(o)])
    (tmp_path / "d1.yaml").write_text("claimant: Same Name\nkeywords: [a]\n")
    (tmp_path / "d2.csv").write_text("field,value\nclaimant,same name\nkeyword,b\n")
    slugs = sorted(c.slug for c in load_all([str(tmp_path / "d1.yaml"), str(tmp_path / "d2.csv")], []))
    assert len(set(slugs)) == 2 and all(s.startswith("same-name-") for s in slugs)  # never one file for both
    (tmp_path / "d3.csv").write_text("field,value\nclaimant,Same Name\nkeyword,b\n")
    with pytest.raises(ConfigError, match=r"two claims of the same claimant 'Same Name'"):
        load_all([str(tmp_path / "d1.yaml"), str(tmp_path / "d3.csv")], [])
    r = tmp_path / "r.yaml"
    r.write_text("claimant: R\nreference_images: [missing.jpg]\n")
    with pytest.raises(ConfigError, match=r"reference image .*missing.jpg not found"):
        load_claim(r).reference_files()


def test_registrable_domains_and_canonical_urls():
    assert normalise_domain("www.Example.co.uk.") == "example.co.uk"
    assert normalise_domain("https://cdn.example.co.uk/x.jpg") == "example.co.uk"
    assert normalise_domain("alice.github.io") == "alice.github.io"  # PSL private section: a registrant
    assert normalise_domain("bücher.de") == "xn--bcher-kva.de"
    for bad in ("co.uk", "github.io", "localhost"):
        with pytest.raises(ValueError):
            normalise_domain(bad)
    con = duckdb.connect()
    register_host_udf(con)  # curate_host(): the catalog connection has it (curate.store.hosts)
    canon = {u: con.execute(f"SELECT {canonical_url_sql('u')} FROM (SELECT ?::VARCHAR AS u)", [u]).fetchone()[0]
             for u in ["HTTP://Example.COM:80/a/B?x=1#top", "https://user@example.com.:443", "https://example.com/",
                       "https://example.com:8443/p", "example.com/a", "https://BÜCHER.de./a.jpg"]}
    assert canon == {"HTTP://Example.COM:80/a/B?x=1#top": "http://example.com/a/B?x=1",
                     "https://BÜCHER.de./a.jpg": "https://xn--bcher-kva.de/a.jpg",
                     "https://user@example.com.:443": "https://example.com/",
                     "https://example.com/": "https://example.com/",
                     "https://example.com:8443/p": "https://example.com:8443/p",
                     "example.com/a": None}


def test_url_list_and_keyword_claims(tmp_path, sample_ws):
    src, _ = sample_ws
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    url, caption = _q(ws, "SELECT url, caption FROM samples WHERE url LIKE 'https://%' AND caption LIKE '% %' "
                          "AND sample_id NOT IN (SELECT sample_id FROM clusters) ORDER BY sample_id LIMIT 1")[0]
    word = max(caption.split(), key=len).strip(".,;:!?()\"'")
    variant = url.replace("https://", "HTTPS://", 1) + "#frag"
    (tmp_path / "urls.txt").write_text(f"# from the claimant\n{variant}\n")
    (tmp_path / "k.yaml").write_text(f"claimant: K\naction: review\nurl_lists: [urls.txt]\nkeywords: ['{word.upper()}']\n")
    cfg = api.with_overrides(api.workspace_config(ws, SAMPLE / "curate.yaml"), "flag",
                             {"claims": [str(tmp_path / "k.yaml")]})
    api.run_one(ws, "flag", cfg)
    api.run_one(ws, "export", cfg)
    rows = _q(ws, "SELECT s.url, m.signal, m.evidence FROM claim_matches m JOIN samples s USING (sample_id)")
    assert (url, "url") in {(u, s) for u, s, _ in rows}
    kw = [e for u, s, e in rows if s == "keyword" and u == url]
    assert kw and word.lower() in kw[0].lower()
    review = _q(ws, "SELECT d.keep, d.review FROM decisions d JOIN samples s USING (sample_id) WHERE s.url = ?", [url])
    assert review[0][0] is True and "claim:k" in review[0][1]  # action review: kept, listed in the review column


def test_retrieval_rule_in_a_pack_finds_copies_of_its_reference_images(tmp_path, sample_ws):
    src, _ = sample_ws
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    (tmp_path / "pack" / "refs").mkdir(parents=True)
    shutil.copy(UKBENCH, tmp_path / "pack" / "refs" / "character.jpg")
    pack = tmp_path / "pack" / "characters.yaml"
    pack.write_text("pack: characters\ndescription: x\nrules:\n  - id: our-character\n    kind: retrieval\n"
                    "    category: copyright\n    action: review\n    reference_images: [refs]\n"
                    "    min_cosine: 0.92\n    phash_max_distance: 10\n")
    cfg = api.with_overrides(api.workspace_config(ws, SAMPLE / "curate.yaml"), "flag", {"packs": [str(pack)]})
    api.run_one(ws, "flag", cfg)
    rows = _q(ws, "SELECT s.image_ref, f.evidence FROM flags f JOIN samples s USING (sample_id) "
                  "WHERE f.rule_id = 'our-character'")
    assert UKBENCH_COPIES <= {sample_file_of(r[0]) for r in rows}
    assert all("character.jpg" in e for _, e in rows)
    pack.write_text(pack.read_text().replace("reference_images: [refs]", "text: [a photo of a mouse]"))
    cfg = api.with_overrides(api.workspace_config(ws, SAMPLE / "curate.yaml"), "flag", {"packs": [str(pack)]})
    with pytest.raises(ConfigError, match="text concepts need an image model with a text tower"):
        api.run_one(ws, "flag", cfg)
    pack.write_text(pack.read_text().replace("    text: [a photo of a mouse]\n", ""))
    with pytest.raises(ConfigError, match=r"characters.yaml:4: .*needs reference_images or text"):
        api.run_one(ws, "flag", cfg)


def test_report_lists_each_claimant(claimed):
    ws, _, _ = claimed
    cfg = api.workspace_config(ws)
    api.run_one(ws, "report", cfg)
    html = (ws / "out" / "report" / "index.html").read_text()
    section = html.split("<h2>Claims and opt-out lists</h2>", 1)[1].split("<h2>", 1)[0]
    for name, slug in [("UKBench Photo Agency", "ukbench-photo-agency"), ("Creative Commons", "creative-commons"),
                       ("do-not-train", "do-not-train")]:
        assert name in section and f"removals/{slug}.csv" in section
    assert "legal@cc.example" in section


def test_cli_flag_claims_dry_run_prints_counts_and_writes_nothing(tmp_path, sample_ws):
    from click.testing import CliRunner

    from cli import main

    src, _ = sample_ws
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    (tmp_path / "cc.csv").write_text("field,value\nclaimant,Creative Commons\ndomain,creativecommons.org\n")
    before = _q(ws, "SELECT * FROM flags ORDER BY ALL")
    matches = _q(ws, "SELECT * FROM claim_matches ORDER BY ALL")
    r = CliRunner().invoke(main, ["--quiet", "--workspace", str(ws), "flag", "--claims", str(tmp_path / "cc.csv"),
                                  "--dry-run"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    cc = out["claims"]["Creative Commons"]
    n_host = _q(ws, "SELECT count(*) FROM samples WHERE url LIKE '%://i.creativecommons.org/%'")[0][0]
    assert cc["direct"] == n_host and cc["via_cluster"] > 0 and cc["samples"] == cc["direct"] + cc["via_cluster"]
    assert "laion-safety/nsfw-punsafe" in out  # the packs' per-rule counts are there too
    assert _q(ws, "SELECT * FROM flags ORDER BY ALL") == before
    assert _q(ws, "SELECT * FROM claim_matches ORDER BY ALL") == matches
