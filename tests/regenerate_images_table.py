"""Regenerate the table of loader outcomes for every file in ../shared/data/tricky-images.

Writes the rows between the ``tricky-table`` markers of docs/IMAGES.md. The table is a
golden file: ``tests/test_images.py`` decodes every tricky file and fails when an outcome
differs from its row, so a change of loader behaviour shows up as a reviewed diff here.

Usage::

    python tests/regenerate_images_table.py
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRICKY = ROOT.parent / "shared" / "data" / "tricky-images"
DOC = ROOT / "docs" / "IMAGES.md"
START, END = "<!-- tricky-table:start -->", "<!-- tricky-table:end -->"
HEADER = ("| file | category | status | stored mode | stored size → oriented size | EXIF orientation | notes; detail |\n"
          "|---|---|---|---|---|---|---|\n")


def manifest() -> dict[str, list[str]]:
    """file (relative to tricky-images) → its MANIFEST categories, in MANIFEST order."""
    cats: dict[str, list[str]] = {}
    with open(TRICKY / "MANIFEST.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            cats.setdefault(r["file"], []).append(r["category"])
    return cats


def outcome(path: Path) -> dict[str, str]:
    """The loader's outcome for one file, as the table's cell strings."""
    from curate.media.images import decode

    d = decode(path.read_bytes())
    size = "—" if d.raw_width is None else f"{d.raw_width}×{d.raw_height} → {d.width}×{d.height}"
    parts = list(d.notes)
    if d.detail:
        parts.append(d.detail[:90])
    cell = "; ".join(parts) or "—"
    return {"status": d.status, "mode": d.mode or "—", "size": size,
            "orientation": "—" if d.orientation is None else str(d.orientation),
            "notes": cell.replace("|", "\\|").replace("\n", " ")}


def rows() -> str:
    out = []
    for file, cats in manifest().items():
        o = outcome(TRICKY / file)
        out.append(f"| `{file}` | {', '.join(dict.fromkeys(cats))} | {o['status']} | {o['mode']} | {o['size']} | "
                   f"{o['orientation']} | {o['notes']} |\n")
    return HEADER + "".join(out)


def parse(text: str) -> dict[str, dict[str, str]]:
    """The table in docs/IMAGES.md → file → cells (used by the tests)."""
    body = text.split(START, 1)[1].split(END, 1)[0]
    out = {}
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        file = cells[0].strip("`")
        out[file] = {"status": cells[2], "mode": cells[3], "size": cells[4], "orientation": cells[5],
                     "notes": cells[6]}
    return out


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{DOC} has no {START} … {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + START + "\n" + rows() + END + tail, encoding="utf-8")
    print(f"wrote {len(manifest())} rows to {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
