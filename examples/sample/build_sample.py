#!/usr/bin/env python3
"""Regenerate the bundled real sample in examples/sample/ from shared/data.

Usage (from the repository root)::

    python examples/sample/build_sample.py [--shared ../shared/data]

The default ``--shared`` is ``<repo>/../shared/data``.  Needs only the
standard library, pyarrow and Pillow.

What it does
------------
It deletes and recreates exactly these generated paths inside
examples/sample/ and nothing else (PROVENANCE.md, curate.yaml and this script
are never touched)::

    fondant-cc25m/  photos/  near-dup/  webdataset/  tricky/  EXPECTED.csv

Every image, tar and index file is copied byte-for-byte (``shutil.copy2``;
the copies are then made owner-writable, because the shared files are
read-only, which would otherwise stop the next run from deleting them).
Files written by this script: ``photos/metadata.parquet``,
``tricky/MANIFEST.csv`` and ``EXPECTED.csv``.

EXPECTED.csv
------------
Columns ``source_folder,file,group,relation,expect``.  ``source_folder`` is
relative to examples/sample/ (e.g. ``near-dup/imagededup``); ``file`` is
relative to that folder.  For members of a WebDataset tar, ``file`` is
``<shard>.tar/<member>`` (e.g. ``image1.tar/123_456.jpg``).

Rows and the rules used for ``expect``:

* near-dup groups (from each folder's ``groups.csv``; for cleanvision-issues
  from ``expected_issues.csv``, its exact-duplicate and near-duplicate pairs
  only).  Group id = ``<folder name>:<group>``.  ``expect = same_cluster``
  (all same_cluster rows of one group belong together; different group ids
  are listed separately, singletons included), except:

  - ``imagededup/mixed_images/ukbench09268_corrupt.jpg`` -> ``not_an_image``
    (Pillow cannot identify it).
  - pillow-variants: ``expect = either`` (strongly transformed, not required
    to cluster with its reference) when the mean absolute pixel difference
    in groups.csv is > 30, or when the file is one of the strong transforms
    listed in ``PILLOW_STRONG`` (45 degree rotation with black corners, 1-bit
    dithered 500 px copy, emboss filter).  Judgement calls: ``hopper_gray``
    (diff 20.31, colour removed only) and ``hopper_resized.gif`` (plain 64 px
    downscale, empty diff only because the size differs) stay
    ``same_cluster``: grayscale and resize are the standard near-duplicate
    transforms, and a 64-bit DCT pHash puts both within 2 bits of hopper.png.
    Every other variant (re-encodes, EXIF-orientation copies, 16-bit-qtable
    JPEG, diff <= 11) is ``same_cluster``.

* fondant-cc25m: every member of a byte-identical group (sha256 of the image
  file; 9 groups, 66 images).  Group ``fondant:<sha256[:12]>``, relation
  ``byte-identical``, expect ``same_cluster``.

* webdataset/clip-retrieval: every tar member whose bytes occur in more than
  one shard.  Group ``clip-retrieval:<member name>``, relation
  ``byte-identical``, expect ``same_cluster``.

  ``same_cluster`` only says that rows sharing a group id must end up in one
  cluster.  Nothing is claimed about rows of *different* groups: some are
  near-duplicates of each other (fondant groups 9f1bab509cc6 and
  14ef2e806e40 are the same "Powered by MediaWiki" badge, mean abs diff 1.5;
  photos/datajuicer_img{1,2,3} are byte-identical to data-juicer-exact;
  clip-retrieval 389_535.jpg is pixel-identical to img2dataset-resize's
  original.png; tricky/hopper_orientation_6.jpg and
  tricky/corrupt_ukbench09268.jpg are byte copies of near-dup files).

* tricky/: one row per chosen file, group empty, relation = MANIFEST
  category (``;``-joined if listed under several).  ``expect`` is read from
  what Pillow 13.0.0 observed (MANIFEST columns pillow13_open /
  pillow13_load / pillow13_warning), mapped as:

  - no error in open or load                      -> ``ok``
    (a warning alone, e.g. "Corrupt EXIF data", stays ``ok``)
  - ``DecompressionBombError``                    -> ``too_large``
  - ``OSError`` whose text contains "truncated"   -> ``truncated``
  - ``UnidentifiedImageError``                    -> ``not_an_image``
  - an error reporting a zero/negative size       -> ``zero_size``
  - anything else                                 -> the script stops.

  Exception: Pillow 13 reports ``zero_width.gif`` (header width 0) as
  ``UnidentifiedImageError``; curate's loader reads the GIF/PNG/BMP header's
  declared size itself and reports a zero side as ``zero_size`` (its MANIFEST
  category is huge_header_or_zero_size), so its expect is ``zero_size``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SAMPLE_DIR = Path(__file__).resolve().parent
REPO_ROOT = SAMPLE_DIR.parents[1]
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "data"

GENERATED_DIRS = ["fondant-cc25m", "photos", "near-dup", "webdataset", "tricky"]
GENERATED_FILES = ["EXPECTED.csv"]
PROTECTED = {"PROVENANCE.md", "curate.yaml", "build_sample.py"}

# --- photos/ ---------------------------------------------------------------
SKIMAGE_URL = "https://github.com/scikit-image/scikit-image/raw/v0.25.2/skimage/data/{}"
SKLEARN_URL = "https://github.com/scikit-learn/scikit-learn/raw/1.7.2/sklearn/datasets/images/{}"
MPL_URL = ("https://github.com/matplotlib/matplotlib/raw/v3.11.2/lib/matplotlib/"
           "mpl-data/sample_data/{}")
DJ_URL = ("https://github.com/modelscope/data-juicer/raw/"
          "c07c2d793cd85f7d5151ddc560fe92a0b6a0ba4b/tests/ops/data/{}")

# sklearn/README.txt gives only licence and attribution, no description, so
# these are short factual captions (from looking at the images).
SKLEARN_CAPTIONS = {
    "china.jpg": "Photo of a Chinese temple.",
    "flower.jpg": "Photo of a flower.",
}
DJ_FILES = ["cat.jpg", "blip.jpg", "img1.png", "img2.jpg", "img3.jpg",
            "img_pair_1.jpg", "img_pair_2.jpg"]

# --- near-dup/ -------------------------------------------------------------
NEAR_DUP_WHOLE = ["img2dataset-resize", "data-juicer-exact", "pillow-variants",
                  "cleanvision-issues"]
IMAGEDEDUP_KEEP = ["base_images", "mixed_images", "formats_images",
                   "ukbench00120_gray.jpg", "groups.csv"]
PILLOW_STRONG = {
    "hopper_45.png": "rotated 45 degrees (182x182, black corners)",
    "hopper_bw_500.png": "1-bit dithered, upscaled to 500x500",
    "hopper_emboss.bmp": "emboss filter",
}
PILLOW_DIFF_EITHER = 30.0

# --- tricky/ ---------------------------------------------------------------
# MANIFEST 'file' -> name used in tricky/
TRICKY = {
    "pillow/truncated_jpeg.jpg": "truncated_jpeg.jpg",
    "pillow/truncated_image.png": "truncated_image.png",
    "pillow/broken.png": "broken.png",
    "imagededup/ukbench09268_corrupt.jpg": "corrupt_ukbench09268.jpg",
    "pillow/pil_sample_cmyk.jpg": "pil_sample_cmyk.jpg",
    "pillow/i_trns.png": "i_trns.png",
    "pillow/hopper_orientation_6.jpg": "hopper_orientation_6.jpg",
    "pillow/hopper_bad_exif.jpg": "hopper_bad_exif.jpg",
    "pillow/p_trns_single.png": "p_trns_single.png",
    "pillow/chi.gif": "chi.gif",
    "pillow/decompression_bomb.gif": "decompression_bomb.gif",
    "pillow/zero_width.gif": "zero_width.gif",
}


# ---------------------------------------------------------------------------
def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    os.chmod(dst, stat.S_IMODE(os.stat(dst).st_mode) | stat.S_IWUSR)


def copy_tree(src: Path, dst: Path, skip: set[str] = frozenset()) -> int:
    n = 0
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if rel.parts[0] in skip or not p.is_file():
            continue
        copy(p, dst / rel)
        n += 1
    return n


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _force_rmtree(path: Path) -> None:
    def onerror(func, p, _exc):
        os.chmod(p, stat.S_IRWXU)
        parent = os.path.dirname(p)
        os.chmod(parent, stat.S_IRWXU)
        func(p)
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=onerror)
    else:
        shutil.rmtree(path, onerror=onerror)


def clean() -> None:
    for name in GENERATED_DIRS + GENERATED_FILES:
        assert name not in PROTECTED
        p = SAMPLE_DIR / name
        if p.is_dir():
            _force_rmtree(p)
        elif p.exists():
            p.unlink()


# ---------------------------------------------------------------------------
def build_fondant(shared: Path, expected: list) -> None:
    src = shared / "images-captioned" / "fondant-cc25m"
    dst = SAMPLE_DIR / "fondant-cc25m"
    copy(src / "metadata.parquet", dst / "metadata.parquet")
    groups = defaultdict(list)
    for p in sorted((src / "images").iterdir()):
        copy(p, dst / "images" / p.name)
        groups[sha256(p.read_bytes())].append(f"images/{p.name}")
    dup = {h: fs for h, fs in groups.items() if len(fs) > 1}
    for h, fs in sorted(dup.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        for f in fs:
            expected.append(("fondant-cc25m", f, f"fondant:{h[:12]}",
                             "byte-identical", "same_cluster"))
    sizes = sorted((len(v) for v in dup.values()), reverse=True)
    print(f"fondant-cc25m: {sum(len(v) for v in groups.values())} images, "
          f"{len(dup)} byte-identical groups {sizes}")


def _short_licence(note: str) -> str:
    low = note.lower()
    if "cc0" in low:
        return "CC0"
    if "public domain" in low:
        return "public domain"
    if "no known copyright" in low:
        return "no known copyright restrictions"
    if "bsd-3-clause" in low:
        return "BSD-3-Clause (scikit-image)"
    raise ValueError(f"unmapped skimage licence note: {note!r}")


def build_photos(shared: Path) -> None:
    src = shared / "images-captioned"
    dst = SAMPLE_DIR / "photos"
    rows = []  # (file, URL, TEXT, LICENSE, src path)

    with open(src / "skimage" / "captions.csv", newline="", encoding="utf-8") as fh:
        caps = {r["file"]: r for r in csv.DictReader(fh)}
    on_disk = sorted(p.name for p in (src / "skimage").iterdir()
                     if p.suffix.lower() in (".png", ".jpg"))
    assert sorted(caps) == on_disk and len(on_disk) == 19, (sorted(caps), on_disk)
    for name in on_disk:
        r = caps[name]
        rows.append((f"skimage_{name}", SKIMAGE_URL.format(name), r["caption"],
                     _short_licence(r["license_note"]), src / "skimage" / name))

    for name, cap in SKLEARN_CAPTIONS.items():
        rows.append((f"sklearn_{name}", SKLEARN_URL.format(name), cap,
                     "CC-BY-2.0", src / "sklearn" / name))

    rows.append(("matplotlib_grace_hopper.jpg", MPL_URL.format("grace_hopper.jpg"),
                 "Portrait of Grace Hopper.", "public domain",
                 src / "matplotlib" / "grace_hopper.jpg"))

    dj_caps = {}
    with open(src / "data-juicer" / "captions.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                dj_caps[d["file"]] = d["caption"]
    for name in DJ_FILES:
        rows.append((f"datajuicer_{name}", DJ_URL.format(name), dj_caps[name],
                     "Apache-2.0 (repo)", src / "data-juicer" / name))

    rows.sort(key=lambda r: r[0])
    cols = {k: [] for k in ("SAMPLE_ID", "URL", "TEXT", "WIDTH", "HEIGHT",
                            "LICENSE", "file")}
    for i, (fname, url, text, lic, path) in enumerate(rows, start=1):
        copy(path, dst / fname)
        with Image.open(dst / fname) as im:
            w, h = im.size  # raw stored size, no EXIF transpose
        for k, v in zip(cols, (i, url, text, w, h, lic, fname)):
            cols[k].append(v)
    schema = pa.schema([("SAMPLE_ID", pa.int64()), ("URL", pa.string()),
                        ("TEXT", pa.string()), ("WIDTH", pa.int32()),
                        ("HEIGHT", pa.int32()), ("LICENSE", pa.string()),
                        ("file", pa.string())])
    pq.write_table(pa.table(cols, schema=schema), dst / "metadata.parquet")
    print(f"photos: {len(rows)} images + metadata.parquet")


def _pillow_relation(r: dict, is_ref: bool) -> str:
    f = r["file"]
    diff = r["mean_abs_diff_vs_group_ref_after_exif_transpose"]
    desc = f"{r['mode']} {r['width']}x{r['height']}"
    if is_ref:
        return f"group reference ({desc})"
    if f in PILLOW_STRONG:
        return PILLOW_STRONG[f] + (f"; mean abs diff {diff}" if diff else "")
    if r["exif_orientation"] not in ("", "1") and "orientation" in f:
        return (f"pixels stored transformed + EXIF orientation "
                f"{r['exif_orientation']}; mean abs diff after exif_transpose {diff}")
    if not diff:
        return f"variant, different size ({desc})"
    return f"variant ({desc}); mean abs diff {diff}"


def build_near_dup(shared: Path, expected: list) -> None:
    src = shared / "near-dup-groups"
    dst = SAMPLE_DIR / "near-dup"

    # imagededup: keep listed items, skip evaluation_files/
    n = 0
    for item in IMAGEDEDUP_KEEP:
        s = src / "imagededup" / item
        if s.is_dir():
            n += copy_tree(s, dst / "imagededup" / item)
        else:
            copy(s, dst / "imagededup" / item)
            n += 1
    print(f"near-dup/imagededup: {n} files")
    for name in NEAR_DUP_WHOLE:
        n = copy_tree(src / name, dst / name)
        print(f"near-dup/{name}: {n} files")

    for name in ["imagededup", "img2dataset-resize", "data-juicer-exact"]:
        with open(dst / name / "groups.csv", newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                assert (dst / name / r["file"]).is_file(), r
                expect = "same_cluster"
                if name == "imagededup" and r["file"].endswith("ukbench09268_corrupt.jpg"):
                    expect = "not_an_image"
                expected.append((f"near-dup/{name}", r["file"], f"{name}:{r['group']}",
                                 r["relation"], expect))

    seen_groups = set()
    with open(dst / "pillow-variants" / "groups.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            assert (dst / "pillow-variants" / r["file"]).is_file(), r
            is_ref = r["group"] not in seen_groups
            seen_groups.add(r["group"])
            diff = r["mean_abs_diff_vs_group_ref_after_exif_transpose"]
            strong = r["file"] in PILLOW_STRONG or (diff and float(diff) > PILLOW_DIFF_EITHER)
            expected.append(("near-dup/pillow-variants", r["file"],
                             f"pillow-variants:{r['group']}",
                             _pillow_relation(r, is_ref),
                             "either" if strong else "same_cluster"))

    # cleanvision: only the duplicate pairs become groups
    with open(dst / "cleanvision-issues" / "expected_issues.csv", newline="",
              encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            issue = r["annotation_by_us_from_visual_inspection"]
            if issue in ("exact_duplicate", "near_duplicate"):
                expected.append(("near-dup/cleanvision-issues", r["file"],
                                 f"cleanvision-issues:{issue}", r["note"],
                                 "same_cluster"))


def build_webdataset(shared: Path, expected: list) -> None:
    src = shared / "images-captioned" / "webdataset-shards"
    dst = SAMPLE_DIR / "webdataset"
    by_hash = defaultdict(list)
    for i in range(1, 5):
        tar = f"image{i}.tar"
        copy(src / "clip-retrieval" / tar, dst / "clip-retrieval" / tar)
        with tarfile.open(dst / "clip-retrieval" / tar) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    by_hash[sha256(tf.extractfile(m).read())].append((tar, m.name))
    for name in ("00000.tar", "00000.idx"):
        copy(src / "nemo-curator" / name, dst / "nemo-curator" / name)
    n_rep = 0
    for _h, members in sorted(by_hash.items(), key=lambda kv: kv[1]):
        if len({t for t, _ in members}) < 2:
            continue
        names = {m for _, m in members}
        assert len(names) == 1, members  # repeats keep their member name
        name = names.pop()
        for tar, m in members:
            expected.append(("webdataset/clip-retrieval", f"{tar}/{m}",
                             f"clip-retrieval:{name}", "byte-identical",
                             "same_cluster"))
        n_rep += 1
    print(f"webdataset: 4 clip-retrieval shards ({len(by_hash)} distinct images, "
          f"{n_rep} repeated across shards) + nemo-curator 00000.tar/.idx")


# headers declaring a zero side, which Pillow 13 reports as UnidentifiedImageError (see above)
ZERO_SIDE_HEADERS = {"pillow/zero_width.gif"}


def _tricky_expect(row: dict) -> str:
    op, ld = row["pillow13_open"].strip(), row["pillow13_load"].strip()
    err = op or ("" if ld == "ok" else ld)
    if not err:
        return "ok"
    if err.startswith("DecompressionBombError"):
        return "too_large"
    if err.startswith("OSError") and "truncated" in err.lower():
        return "truncated"
    if err.startswith("UnidentifiedImageError"):
        return "zero_size" if row["file"] in ZERO_SIDE_HEADERS else "not_an_image"
    if "zero" in err.lower() or "negative" in err.lower():
        return "zero_size"
    raise ValueError(f"no expect rule for {row['file']}: {err!r}")


def build_tricky(shared: Path, expected: list) -> None:
    src = shared / "tricky-images"
    dst = SAMPLE_DIR / "tricky"
    with open(src / "MANIFEST.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames)
        chosen = [r for r in reader if r["file"] in TRICKY]
    missing = set(TRICKY) - {r["file"] for r in chosen}
    assert not missing, missing
    for srcname, name in TRICKY.items():
        copy(src / srcname, dst / name)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["sample_file"] + fields, lineterminator="\n")
    w.writeheader()
    for r in chosen:
        w.writerow({"sample_file": TRICKY[r["file"]], **r})
    (dst / "MANIFEST.csv").write_text(buf.getvalue(), encoding="utf-8")

    cats, exp = defaultdict(list), {}
    for r in chosen:
        cats[r["file"]].append(r["category"])
        e = _tricky_expect(r)
        assert exp.setdefault(r["file"], e) == e, r
    for srcname, name in TRICKY.items():
        expected.append(("tricky", name, "", ";".join(cats[srcname]), exp[srcname]))
        print(f"tricky/{name}: {exp[srcname]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                    help="path to shared/data (default: %(default)s)")
    args = ap.parse_args(argv)
    shared = args.shared.resolve()
    if not (shared / "PROVENANCE.md").is_file():
        ap.error(f"{shared} does not look like shared/data (no PROVENANCE.md)")

    clean()
    expected: list = []
    build_fondant(shared, expected)
    build_photos(shared)
    build_near_dup(shared, expected)
    build_webdataset(shared, expected)
    build_tricky(shared, expected)

    with open(SAMPLE_DIR / "EXPECTED.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["source_folder", "file", "group", "relation", "expect"])
        w.writerows(expected)
    print(f"EXPECTED.csv: {len(expected)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
