"""Hostile inputs (issue #17): every output says what really happened, and input can neither
leak nor inject. Formula cells in CSV outputs, deeply nested / huge JSON sidecars, Unicode and
invisible characters in hosts, claimant names that collide with each other or with curate's files."""
from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import api
from curate.config import RunConfig
from curate.errors import ConfigError
from tests.conftest import write_tar

ROOT = Path(__file__).resolve().parent.parent
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PAYLOADS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(A1:A9)", "-2+3+cmd|' /C calc'!A0",
            "\t=1+1 calc", "\r=1+1 calc"]


def _cfg(tmp_path, sources, **sections) -> RunConfig:
    cfg = RunConfig.model_validate({"sources": sources, **sections})
    cfg.base_dir = str(tmp_path)
    return cfg


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _q(ws, sql, params=None):
    con = duckdb.connect(str(Path(ws) / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------------------------
# CSV injection


@pytest.fixture(scope="module")
def formula_ws(tmp_path_factory):
    """Samples whose URL and caption are spreadsheet formulas: removed (undecodable image), matched
    by a claim, and rejected rows whose raw line is a formula."""
    tmp = tmp_path_factory.mktemp("formula")
    members = []
    for i, p in enumerate(PAYLOADS):
        members += [(f"{i:06d}.jpg", b"not an image"), (f"{i:06d}.json", json.dumps({"url": p}).encode()),
                    (f"{i:06d}.txt", f"{p} calc".encode())]
    write_tar(tmp / "f.tar", members)
    # malformed TSV lines (wrong field count) are rejected with the raw line
    (tmp / "m.tsv").write_text("url\tcaption\n" + "".join(f"https://ok.example/{i}.jpg\tfine\n" for i in range(8)) + "".join(
        f"{p.replace(chr(9), ' ')}\ta\tb\n" for p in PAYLOADS[:4]))
    (tmp / "claim.yaml").write_text("claimant: =cmd|' /C calc'!A0\nkeywords: [calc]\n")
    ws = tmp / "ws"
    cfg = _cfg(tmp, [{"name": "-2.3", "webdataset": "f.tar"}, {"name": "t", "metadata": "m.tsv"}],
               flag={"packs": [], "claims": [str(tmp / "claim.yaml")]})
    for stage in ("ingest", "flag", "export"):
        api.run_one(ws, stage, cfg)
    return ws


def test_no_csv_cell_curate_writes_starts_a_formula(formula_ws):
    out = formula_ws / "out"
    files = sorted(out.rglob("*.csv"))
    names = {f.relative_to(out).as_posix() for f in files}
    assert {"removals/all.csv", "rejects.csv"} <= names and len(names) == 3, names  # + the claimant's list
    seen = 0
    for f in files:
        for row in _cells(f):
            for cell in row:
                assert not cell.startswith(FORMULA_STARTS), (f.name, cell)
                seen += cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS)
    assert seen >= 3 * len(PAYLOADS)  # urls in all.csv and the claimant's list, source names, raw lines
    rows = {r["url"]: r for r in csv.DictReader(open(out / "removals" / "all.csv", newline="", encoding="utf-8"))}
    assert set(rows) == {"'" + p for p in PAYLOADS}
    assert {r["source"] for r in rows.values()} == {"'-2.3"}
    rej = [r["raw"] for r in csv.DictReader(open(out / "rejects.csv", newline="", encoding="utf-8"))]
    assert sorted(rej) == sorted("'" + p.replace("\t", " ") + "\ta\tb" for p in PAYLOADS[:4])


def test_json_outputs_keep_the_raw_values(formula_ws):
    out = formula_ws / "out"
    (js,) = [p for p in (out / "removals").glob("*.json")]
    doc = json.loads(js.read_text())
    assert doc["claim"]["claimant"] == "=cmd|' /C calc'!A0"
    assert sorted(m["url"] for m in doc["matches"]) == sorted(PAYLOADS)
    assert sorted(u for (u,) in _q(formula_ws, "SELECT url FROM samples WHERE url NOT LIKE 'https:%'")) == sorted(PAYLOADS)


def test_numbers_stay_numbers_and_strings_that_look_like_negative_numbers_are_neutralised(tmp_path):
    from curate.store.csvsafe import copy_csv, write_csv

    write_csv(tmp_path / "a.csv", ["n", "x", "s"], [[-5, -0.5, "-5"], [7, None, "=1"], [1, 2.0, "ok"]])
    assert _cells(tmp_path / "a.csv") == [["n", "x", "s"], ["-5", "-0.5", "'-5"], ["7", "", "'=1"], ["1", "2.0", "ok"]]
    con = duckdb.connect()
    copy_csv(con, "SELECT -5 AS n, -0.5::DOUBLE AS x, '-5' AS s, '@a' AS t, ['=x'] AS l, NULL::VARCHAR AS z",
             tmp_path / "b.csv")
    head, row = _cells(tmp_path / "b.csv")
    assert head == ["n", "x", "s", "t", "l", "z"] and row[:4] == ["-5", "-0.5", "'-5", "'@a"] and row[5] == ""
    assert row[4].startswith("[")  # a list is written as one text cell starting with [


def test_every_csv_writer_goes_through_the_shared_helper():
    """No module but curate.store.csvsafe writes CSV (csv.writer / DictWriter / COPY … FORMAT csv)."""
    offenders = []
    for p in sorted((ROOT / "curate").rglob("*.py")):
        if p.name == "csvsafe.py":
            continue
        src = p.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Attribute) and node.attr in ("writer", "DictWriter") and \
                    isinstance(node.value, ast.Name) and node.value.id == "csv":
                offenders.append(f"{p.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "format csv" in node.value.lower():
                offenders.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# ----------------------------------------------------------------------------------------------
# claimant names


def test_claimant_names_never_collide_with_each_other_or_with_curates_files(tmp_path):
    pq.write_table(pa.table({"URL": ["https://alpha.com/1.jpg", "https://beta.com/2.jpg", "https://gamma.com/3.jpg",
                                     "https://delta.com/4.jpg", "https://keep.com/5.jpg"],
                             "TEXT": ["a", "b", "c", "d", "e"]}), tmp_path / "m.parquet")
    claims = {"All": "alpha.com", "ACME": "beta.com", "acme": "gamma.com", "ACME!": "delta.com"}
    files = []
    for i, (name, dom) in enumerate(claims.items()):
        files.append(tmp_path / f"c{i}.yaml")
        files[-1].write_text(f"claimant: {json.dumps(name)}\ndomains: [{dom}]\n")
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet"}], flag={"packs": [], "claims": [str(f) for f in files]})
    for stage in ("ingest", "flag", "export"):
        api.run_one(ws, stage, cfg)
    rem = ws / "out" / "removals"
    allrows = list(csv.DictReader(open(rem / "all.csv", newline="", encoding="utf-8")))
    assert sorted(r["url"] for r in allrows) == sorted(f"https://{d}/{i}.jpg" for i, d in enumerate(claims.values(), 1))
    summary = json.loads((ws / "out" / "summary.json").read_text())["claimants"]
    assert set(summary) == set(claims)
    lists = [c["list"] for c in summary.values()]
    assert len(set(lists)) == 4 and "removals/all.csv" not in lists
    assert sorted(p.name for p in rem.iterdir()) == sorted(
        ["all.csv"] + [Path(x).name for x in lists] + [Path(x).with_suffix(".json").name for x in lists])
    for name, c in summary.items():
        doc = json.loads((ws / "out" / Path(c["list"]).with_suffix(".json")).read_text())
        assert doc["claim"]["claimant"] == name
        assert [m["url"] for m in doc["matches"]] == [f"https://{claims[name]}/{list(claims).index(name) + 1}.jpg"]
    # deterministic: the same claims in another order give the same file names
    from curate.stages.flag.claims import load_all

    a = {c.claimant: c.slug for c in load_all([str(f) for f in files], [])}
    b = {c.claimant: c.slug for c in load_all([str(f) for f in reversed(files)], [])}
    assert a == b and a["All"] != "all" and len(set(a.values())) == 4


def test_the_same_claimant_twice_is_still_an_error(tmp_path):
    from curate.stages.flag.claims import load_all

    for i in range(2):
        (tmp_path / f"c{i}.yaml").write_text("claimant: ACME\ndomains: [beta.com]\n")
    with pytest.raises(ConfigError, match="ACME"):
        load_all([str(tmp_path / "c0.yaml"), str(tmp_path / "c1.yaml")], [])


# ----------------------------------------------------------------------------------------------
# Unicode hosts


UNICODE_URLS = {
    "https://bücher.de/a.jpg": True,
    "https://cdn.BÜCHER.de/b.jpg": True,
    "https://bücher.de./c.jpg": True,
    "https://xn--bcher-kva.de/d.jpg": True,
    "https://ｂüｃｈｅｒ．ｄｅ/e.jpg": True,  # full-width letters and dot
    "https://XN--BCHER-KVA.DE:443/f.jpg": True,
    "https://buecher.de/g.jpg": False,
    "https://bücher.example/h.jpg": False,
}


def test_opt_outs_claims_and_rule_domains_match_unicode_hosts_in_every_spelling(tmp_path):
    pq.write_table(pa.table({"URL": list(UNICODE_URLS), "TEXT": [str(i) for i in range(len(UNICODE_URLS))]}),
                   tmp_path / "m.parquet")
    (tmp_path / "optout.txt").write_text("bücher.de\n")
    (tmp_path / "urls.yaml").write_text("claimant: Url Claimant\naction: tag\nurls: ['https://BÜCHER.de./a.jpg', "
                                        "'https://xn--bcher-kva.de/e.jpg']\n")
    (tmp_path / "pack.yaml").write_text("pack: p\ndescription: x\nrules:\n  - id: d\n    kind: domain_list\n"
                                        "    category: copyright\n    action: review\n    domains: ['XN--BCHER-KVA.DE.']\n")
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet"}],
               flag={"packs": [str(tmp_path / "pack.yaml")], "opt_out": [str(tmp_path / "optout.txt")],
                     "claims": [str(tmp_path / "urls.yaml")]})
    for stage in ("ingest", "flag", "export"):
        api.run_one(ws, stage, cfg)
    want = {u for u, hit in UNICODE_URLS.items() if hit}
    by_pack = {}
    for url, pack in _q(ws, "SELECT s.url, f.pack FROM flags f JOIN samples s USING (sample_id)"):
        by_pack.setdefault(pack, set()).add(url)
    assert by_pack["opt_out"] == want
    assert by_pack["p"] == want
    assert by_pack["claim"] == {"https://bücher.de/a.jpg", "https://ｂüｃｈｅｒ．ｄｅ/e.jpg"}
    kept = pq.read_table(ws / "out" / "manifest.parquet").column("url").to_pylist()
    assert sorted(kept) == sorted(u for u, hit in UNICODE_URLS.items() if not hit)


def test_hosts_with_invisible_characters_are_invalid_urls_with_a_reason(tmp_path):
    urls = ["https://bü\u200bcher.de/a.jpg", "https://exa\u00admple.com/b.jpg", "https://example.com\u202e/c.jpg",
            "https://ex\u200dample.com/d.jpg", "https://example.com/e\u200b.jpg"]
    pq.write_table(pa.table({"URL": urls, "TEXT": ["a", "b", "c", "d", "e"]}), tmp_path / "m.parquet")
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet"}], flag={"packs": []})
    api.run_one(ws, "ingest", cfg)
    reasons = [r for (r,) in _q(ws, "SELECT reason FROM rejects ORDER BY source_row")]
    assert [r.split(":", 1)[0] for r in reasons] == ["invalid_url"] * 4
    for r, cp in zip(reasons, ["U+200B", "U+00AD", "U+202E", "U+200D"]):
        assert f"invisible character {cp} in the host" in r, r
    assert _q(ws, "SELECT url FROM samples") == [(urls[4],)]  # in the path it is only a byte of the path


def test_listed_domains_with_invisible_characters_are_refused(tmp_path):
    from curate.stages.flag.claims import load_all
    from curate.stages.flag.urls import normalise_domain

    assert normalise_domain("ｂüｃｈｅｒ．ｄｅ") == normalise_domain("BÜCHER.de.") == "xn--bcher-kva.de"
    with pytest.raises(ValueError, match="invisible character U\\+200B"):
        normalise_domain("bü\u200bcher.de")
    (tmp_path / "o.txt").write_text("ok.com\nexa\u00admple.com\n")
    with pytest.raises(ConfigError, match=r"o.txt:2: .*invisible character U\+00AD"):
        load_all([], [str(tmp_path / "o.txt")])


# ----------------------------------------------------------------------------------------------
# JSON sidecars


def test_deeply_nested_or_huge_json_sidecars_are_row_notes_never_a_crash(tmp_path):
    from curate.stages.ingest.readers import MAX_SIDECAR_BYTES

    deep = b"[" * 100_000 + b"]" * 100_000
    deep_obj = json.dumps({"url": "https://x.example/2.jpg", "a": json.loads("[" * 200 + "]" * 200)}).encode()
    huge = json.dumps({"url": "https://x.example/3.jpg", "pad": "x" * MAX_SIDECAR_BYTES}).encode()
    png = _png()
    (tmp_path / "w").mkdir()
    write_tar(tmp_path / "w" / "s.tar", [("k1.png", png), ("k1.txt", b"first"), ("k1.json", deep),
                                    ("k2.png", png), ("k2.txt", b"second"), ("k2.json", deep_obj),
                                    ("k3.png", png), ("k3.txt", b"third"), ("k3.json", huge)])
    (tmp_path / "f").mkdir()
    for k, side in (("k1", deep), ("k2", deep_obj), ("k3", huge)):
        (tmp_path / "f" / f"{k}.png").write_bytes(png)
        (tmp_path / "f" / f"{k}.txt").write_text(f"caption {k}")
        (tmp_path / "f" / f"{k}.json").write_bytes(side)
    for on_bad in ("error", "skip"):
        ws = tmp_path / f"ws-{on_bad}"
        cfg = _cfg(tmp_path, [{"name": "w", "webdataset": "w/*.tar"}, {"name": "f", "images": "f"}],
                   ingest={"on_bad_file": on_bad})
        c = api.run_one(ws, "ingest", cfg)["counters"]
        assert not c.get("bad_files")
        rows = _q(ws, "SELECT key, caption, url, image_ref IS NOT NULL, notes FROM samples ORDER BY sample_id")
        assert [r[:4] for r in rows] == [("k1", "first", None, True), ("k2", "second", None, True),
                                         ("k3", "third", None, True), ("k1.png", "caption k1", None, True),
                                         ("k2.png", "caption k2", None, True), ("k3.png", "caption k3", None, True)]
        notes = [r[4] for r in rows]
        for n in notes[0::3] + notes[1::3]:
            assert len(n) == 1 and n[0].startswith("bad_json(") and "nested deeper than" in n[0], n
        for n in notes[2::3]:
            assert len(n) == 1 and n[0].startswith("sidecar_too_large(") and str(MAX_SIDECAR_BYTES) in n[0], n


# ----------------------------------------------------------------------------------------------
# Symbolic links and paths leaving an input folder (ingest.follow_symlinks)

SECRET = "SECRET-0xC0FFEE"
FAST = {"dedup": {"sha256": False, "phash_max_distance": None, "embedding_min_cosine": None, "containment": False},
        "flag": {"packs": []}}


def _picture(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12 + i, 9), (30 * i % 256, 200, 90)).save(buf, "PNG")
    return buf.getvalue()


def _outside(tmp_path) -> Path:
    """Files outside every input folder: a secret text and a secret picture."""
    o = tmp_path / "elsewhere"
    o.mkdir()
    (o / "secret.txt").write_text(SECRET)
    (o / "secret.png").write_bytes(_picture(9) + SECRET.encode())
    return o


def _linked_folder(tmp_path) -> Path:
    o = _outside(tmp_path)
    img = tmp_path / "img"
    img.mkdir()
    (img / "leak.png").write_bytes(_picture(1))
    (img / "leak.txt").symlink_to(o / "secret.txt")  # a caption sidecar leading out
    (img / "x.png").symlink_to(o / "secret.png")  # an image leading out
    (img / "real.png").write_bytes(_picture(2))
    (img / "alias.png").symlink_to("real.png")  # a link that stays inside
    return img


def _every_output_text(ws: Path) -> str:
    out = [p.read_bytes().decode("utf-8", "replace") for p in (ws / "out").rglob("*") if p.is_file()]
    out += [repr(_q(ws, "SELECT * FROM samples")), repr(_q(ws, "SELECT * FROM rejects"))]
    return "\n".join(out)


def test_symlinks_leaving_an_image_folder_are_never_read(tmp_path):
    _linked_folder(tmp_path)
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "f", "images": "img"}], **FAST)
    api.run_one(ws, "export", cfg)
    assert SECRET not in _every_output_text(ws)
    rej = {r[0]: r[1] for r in _q(ws, "SELECT json_extract_string(raw, '$.file'), reason FROM rejects")}
    assert set(rej) == {"x.png"} and rej["x.png"].startswith("symlink_outside_source: x.png → ")
    rows = {r[0]: r[1:] for r in _q(ws, "SELECT key, caption, notes, image_ref FROM samples")}
    assert rows["leak.png"][0] is None
    assert rows["leak.png"][1] == [f"symlink_outside_source(txt): leak.txt → {tmp_path.resolve()}/elsewhere/secret.txt; "
                                   "not read"]
    assert rows["alias.png"][2] == str((tmp_path / "img" / "real.png").resolve())  # inside: followed, stored resolved
    c = json.loads((ws / "out" / "summary.json").read_text())
    c = c.get("counts", c)
    assert c["input_rows"] == 4 == c["kept"] + c["removed"] + c["rejected"] and c["rejected"] == 1


def test_follow_symlinks_never_and_always(tmp_path):
    _linked_folder(tmp_path)
    for policy, rejected in (("never", {"x.png", "alias.png"}), ("always", set())):
        ws = tmp_path / f"ws-{policy}"
        api.run_one(ws, "ingest", _cfg(tmp_path, [{"name": "f", "images": "img"}], ingest={"follow_symlinks": policy}))
        rej = {r[0]: r[1] for r in _q(ws, "SELECT json_extract_string(raw, '$.file'), reason FROM rejects")}
        assert set(rej) == rejected
        assert all(v.startswith("symlink_not_followed: ") for v in rej.values())


def test_metadata_file_paths_leaving_the_images_folder_are_never_read(tmp_path):
    o = _outside(tmp_path)
    img = tmp_path / "img"
    img.mkdir()
    (img / "ok.png").write_bytes(_picture(3))
    (img / "out.png").symlink_to(o / "secret.png")
    pq.write_table(pa.table({"url": [f"https://a.example/{i}.png" for i in range(4)], "caption": list("abcd"),
                             "file": ["ok.png", "../elsewhere/secret.png", "out.png", "/../elsewhere/secret.png"]}),
                   tmp_path / "m.parquet")
    ws = tmp_path / "ws"
    api.run_one(ws, "export", _cfg(tmp_path, [{"name": "m", "metadata": "m.parquet", "images": "img"}], **FAST))
    rows = _q(ws, "SELECT s.source_row, i.status, i.detail, i.n_bytes, s.notes FROM samples s "
                  "JOIN images i USING (sample_id) ORDER BY s.source_row")
    assert rows[0][1] == "ok"
    for r in rows[1:]:
        assert r[1] == "missing" and r[3] is None, r
        assert r[2].startswith(("path_outside_source: ", "symlink_outside_source: ")), r
        assert r[4] and r[4][0].startswith(("path_outside_source(image_ref)", "symlink_outside_source(image_ref)")), r


def test_a_file_swapped_for_a_symlink_after_ingest_is_not_read(tmp_path):
    o = _outside(tmp_path)
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.png").write_bytes(_picture(4))
    (img / "b.png").write_bytes(_picture(5))
    ws = tmp_path / "ws"
    cfg = _cfg(tmp_path, [{"name": "f", "images": "img"}])
    api.run_one(ws, "ingest", cfg)
    (img / "a.png").unlink()
    (img / "a.png").symlink_to(o / "secret.png")
    from curate.stages import run_stage

    w = api.open_workspace(ws, cfg)
    try:  # the hash stage on the rows ingest recorded (`curate hash` would first ingest the changed folder again)
        run_stage(w, cfg, "hash")
    finally:
        w.close()
    rows = dict((k, r) for k, *r in _q(ws, "SELECT s.key, i.status, i.detail, i.n_bytes FROM samples s "
                                           "JOIN images i USING (sample_id)"))
    assert rows["b.png"][0] == "ok"
    assert rows["a.png"][0] == "missing" and rows["a.png"][2] is None and rows["a.png"][1].startswith("symlink: ")
    # `curate hash`: ingest is out of date (the folder changed) and runs first; the sample keeps its reference
    # (its id is its file), and the image is still `missing` for the link, never read and never a silent NULL
    res = api.run_one(ws, "hash", cfg)
    assert [r["stage"] for r in res["upstream"]] == ["ingest"]
    again = dict((k, r) for k, *r in _q(ws, "SELECT s.key, i.status, i.detail, s.image_ref IS NOT NULL FROM samples s "
                                            "JOIN images i USING (sample_id)"))
    assert again["a.png"][0] == "missing" and again["a.png"][1].startswith("symlink: ") and again["a.png"][2]


def test_claim_paths_outside_the_claim_folder_are_config_errors(tmp_path):
    from curate.stages.flag.claims import load_all

    o = _outside(tmp_path)
    d = tmp_path / "claims"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "ok.png").write_bytes(_picture(6))
    (d / "refs" / "link.png").symlink_to(o / "secret.png")
    (d / "urls.txt").symlink_to(o / "secret.txt")
    cases = {"up.yaml": "reference_images: [../elsewhere/secret.png]",
             "abs.yaml": f"reference_images: [{o / 'secret.png'}]",
             "list.yaml": "url_lists: [../elsewhere/secret.txt]",
             "linked-list.yaml": "url_lists: [urls.txt]"}
    for name, body in cases.items():
        (d / name).write_text(f"claimant: C {name}\n{body}\n")
        with pytest.raises(ConfigError, match=r"outside the claim file's folder"):
            load_all([str(d / name)], [])
    (d / "folder.yaml").write_text("claimant: F\nreference_images: [refs]\n")
    [claim] = load_all([str(d / "folder.yaml")], [])
    with pytest.raises(ConfigError, match=r"link.png .*outside the claim file's folder"):
        claim.reference_files()
    (d / "refs" / "link.png").unlink()
    assert [p.name for p in claim.reference_files()] == ["ok.png"]


def test_struct_image_paths_in_a_table_never_leave_its_folder(tmp_path):
    """A Hugging Face ``Image`` cell (``struct<bytes, path>``) with no bytes names a file by path:
    only a regular file inside the table's own folder is read (a relative path, or an absolute
    one inside it); an absolute path, ``..``, a link or a URI leading out, and a FIFO are refused
    with a reason, never read, never a crash."""
    import os

    o = _outside(tmp_path)
    d = tmp_path / "tbl"
    (d / "pics").mkdir(parents=True)
    (d / "pics" / "ok.png").write_bytes(_picture(7))
    (d / "pics" / "out.png").symlink_to(o / "secret.png")
    (d / "pics" / "in.png").symlink_to("ok.png")  # a link that stays inside the folder
    os.mkfifo(d / "pics" / "pipe.png")
    paths = ["pics/ok.png", str(d / "pics" / "ok.png"), str(o / "secret.png"), "../elsewhere/secret.png",
             "pics/../../elsewhere/secret.png", "pics/out.png", "pics/pipe.png", (o / "secret.png").as_uri(),
             "pics/in.png", "pics"]
    t = pa.table({"image": pa.array([{"bytes": None, "path": p} for p in paths],
                                    pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                  "text": [f"c{i}" for i in range(len(paths))]})
    pq.write_table(t, d / "hf.parquet")
    ws = tmp_path / "ws"
    api.run_one(ws, "export", _cfg(tmp_path, [{"name": "hf", "metadata": "tbl/hf.parquet"}], **FAST))
    assert SECRET not in _every_output_text(ws)
    rows = _q(ws, "SELECT s.source_row, i.status, i.detail, i.n_bytes FROM samples s JOIN images i USING (sample_id) "
                  "ORDER BY s.source_row")
    assert [r[1] for r in rows] == ["ok", "ok"] + ["missing"] * 6 + ["ok", "missing"], rows
    for r in rows[2:8]:
        assert r[3] is None and "not read" in r[2] and "image_path_" in r[2], r
    assert "not_a_regular_file" in rows[6][2] and "not_a_regular_file" in rows[9][2], rows
