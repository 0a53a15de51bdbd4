"""``curate export --format webdataset``: the kept samples resharded into training-ready tar shards.

Layout (``out/webdataset/``)::

    000000.tar, 000001.tar, …   shards; each sample is three members, in this order:
        <key>.<jpg|png|webp>    the image
        <key>.json              its metadata (below)
        <key>.txt               its caption, UTF-8 (empty when the sample has none)
    index.json                  shards (name, count, bytes, sha256, first/last key), totals,
                                extensions, re-encodes, skipped samples per reason
    skipped.csv                 sample_id, reason, detail of kept samples that could not be written

Which samples: ``decisions.keep`` (so never a removed one), ordered by ``sample_id``. The key
is the sample id zero-padded to 19 digits (``int64`` fits; no dots, so webdataset's
key/extension split is unambiguous; the manifest's ``sample_id`` joins it back).

Image bytes are read through the project's one resolver (:func:`curate.media.images.read_ref`:
plain files, ``tar:`` members, ``parquet:``/``arrow:`` table cells) and checked against the
catalog's sha256 (what hash/dedup/flag saw):

- **JPEG, PNG, WebP** (told by the magic bytes, never by the file name): the original bytes,
  unchanged, with extension ``jpg``/``png``/``webp``. Their EXIF orientation is *not* applied
  to the bytes; ``exif_orientation`` and both sizes are in the JSON (apply
  ``PIL.ImageOps.exif_transpose`` when decoding if you need upright pixels).
- **anything else** (GIF, BMP, TIFF, ICO, …): re-encoded losslessly to PNG from the loader's
  pixels (:func:`curate.media.images.decode`: EXIF orientation applied, frame 0 of animations,
  transparency composited on white, 8-bit RGB) — exactly the pixels curate hashed and
  embedded. Many training decoders (DALI, ``torchvision.io.decode_image``, most diffusion
  training scripts' ``to_tuple("jpg;png;webp", "txt")``) take only those three formats.
  ``reencoded: true``, ``source_format`` and ``image_sha256`` (of the PNG) say so; ``sha256``
  stays the original bytes' hash (the catalog's).
- a kept sample that cannot be written (no image, file gone since hash, bytes whose sha256 is
  no longer the catalog's, a re-encode that fails) is **skipped**: counted per reason in
  ``index.json`` and the export counters, listed in ``skipped.csv``, never written as a
  broken member.

The caption member is always present so that ``to_tuple(…, "txt")`` never drops a sample: a
NULL caption is an empty ``.txt`` and ``"caption": null`` in the JSON (an empty caption is
``""`` in both), so the two stay distinguishable.

Shards: at most ``export.shard_size`` samples and, when ``export.shard_max_bytes`` is set, at
most that many bytes of tar file (a single sample larger than that gets a shard of its own).

Atomic and deterministic: the shards are written into ``webdataset/`` of the export's staging
folder (each shard as ``NNNNNN.tar.partial``, fsynced, renamed), which replaces ``out/`` whole
with the manifest it goes with (:func:`curate.store.outdir.publish`) — an interrupted export
leaves the previous complete export (or none), never a truncated shard under a shard's name,
and never old and new shards mixed. This needs free disk for a second copy while it runs. Tar headers carry mtime 0, uid/gid 0, user/group ``curate``, mode 0644,
and no timestamps are written anywhere, so re-running on the same catalog gives the same bytes.

The tar writing is webdataset's :class:`webdataset.TarWriter` (member naming, sorted member
order, header fields). Its :class:`~webdataset.ShardWriter` is not used: it opens the final
shard name directly (a crash leaves a truncated shard that looks complete; its ``opener`` hook
does not close what it opens), checks ``maxsize`` before a write on payload bytes only (so a
shard overshoots the limit by up to a sample plus headers), and prints to stdout, which
carries curate's JSON. Rotation, byte accounting and the temp-file + rename are here instead.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any, BinaryIO

from curate.config import RunConfig
from curate.media.images import decode, read_ref
from curate.progress import bar, info
from curate.store.catalog import Workspace
from curate.store.csvsafe import write_csv
from curate.store.fsio import atomic_write_bytes
from curate.store.outdir import publish

DIR_NAME = "webdataset"
INDEX_NAME = "index.json"
SKIPPED_NAME = "skipped.csv"
KEY_DIGITS = 19  # int64 sample ids
TAR_MTIME = 0
TAR_USER = "curate"
TAR_MODE = 0o644
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile.RECORDSIZE: the archive is padded to a multiple of this
_FETCH = 1024

# Kept byte for byte; every other format is re-encoded to PNG (see module doc).
_READY = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))

SAMPLES_SQL = """
SELECT s.sample_id, s.url, s.caption, s.image_ref, s.key, s.source_row, o.name, o.uri, s.license,
       s.nsfw, s.similarity, s.punsafe, s.pwatermark, s.aesthetic, s.extra, s.notes,
       i.sha256, i.n_bytes, coalesce(i.width, s.width), coalesce(i.height, s.height), i.raw_width,
       i.raw_height, i.mode, i.format, i.orientation, i.notes,
       d.cluster_id, c.cluster_size, d.review, d.tags
FROM decisions d JOIN samples s USING (sample_id) JOIN sources o USING (source_id)
LEFT JOIN images i USING (sample_id) LEFT JOIN clusters c USING (sample_id)
WHERE d.keep ORDER BY s.sample_id
"""
_COLS = ("sample_id", "url", "caption", "image_ref", "source_key", "source_row", "source", "source_uri", "license",
         "nsfw", "similarity", "punsafe", "pwatermark", "aesthetic", "extra", "notes",
         "sha256", "n_bytes", "width", "height", "raw_width", "raw_height", "source_mode", "source_format",
         "exif_orientation", "image_notes", "cluster_id", "cluster_size", "review", "tags")


def key_of(sample_id: int) -> str:
    """The webdataset key of a sample: its id zero-padded to 19 digits (``int`` ≥ 0 → ``str``)."""
    return f"{int(sample_id):0{KEY_DIGITS}d}"


def ready_ext(data: bytes) -> str | None:
    """``'jpg'``, ``'png'`` or ``'webp'`` when the magic bytes say so, else None (re-encode)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _READY:
        if data.startswith(magic):
            return ext
    return None


def member_bytes(n: int) -> int:
    """Bytes a member of ``n`` data bytes takes in the tar: one 512-byte header + data padded to 512."""
    return _BLOCK + _BLOCK * math.ceil(n / _BLOCK)


def tar_file_bytes(members_total: int) -> int:
    """Size of a finished tar whose members take ``members_total`` bytes (end blocks, record padding)."""
    return _RECORD * math.ceil((members_total + 2 * _BLOCK) / _RECORD)


class _HashingFile:
    """Write-only file wrapper counting bytes and hashing them (sha256) on the way to disk."""

    def __init__(self, f: BinaryIO):
        self.f, self.size, self.h = f, 0, hashlib.sha256()

    def write(self, b) -> int:
        self.h.update(b)
        self.size += len(b)
        return self.f.write(b)


def _reencode_png(data: bytes, max_pixels: int) -> tuple[bytes | None, str]:
    from PIL import Image

    d = decode(data, max_pixels=max_pixels)
    if d.status != "ok" or d.rgb is None:
        return None, f"{d.status}: {d.detail}"
    buf = io.BytesIO()
    Image.fromarray(d.rgb, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), ""


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _metadata(row: dict[str, Any], key: str, ext: str, image_sha: str, reencoded: bool) -> bytes:
    meta = {k: _clean(row[k]) for k in _COLS if k not in ("image_ref", "extra")}
    try:
        meta["extra"] = json.loads(row["extra"]) if row["extra"] else None
    except ValueError:
        meta["extra"] = row["extra"]
    meta.update(key=key, image_ext=ext, image_sha256=image_sha, reencoded=reencoded)
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str).encode("utf-8")


class _Shards:
    """Shard rotation over webdataset's TarWriter, each shard written to ``.partial`` then renamed."""

    def __init__(self, folder: Path, max_count: int, max_bytes: int | None):
        self.folder, self.max_count, self.max_bytes = folder, max_count, max_bytes
        self.shards: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self._hf: _HashingFile | None = None
        self._writer = None
        self._count = self._members = 0
        self._first = self._last = ""

    def write(self, key: str, members: dict[str, bytes]) -> None:
        size = sum(member_bytes(len(v)) for v in members.values())
        if self._writer is not None and (
            self._count >= self.max_count
            or (self.max_bytes is not None and tar_file_bytes(self._members + size) > self.max_bytes)
        ):
            self._finish()
        if self._writer is None:
            self._open()
            self._first = key
        self._writer.write({"__key__": key, **members})
        self._count += 1
        self._members += size
        self._last = key

    def close(self) -> None:
        if self._writer is not None:
            self._finish()

    def _name(self) -> str:
        return f"{len(self.shards):06d}.tar"

    def _open(self) -> None:
        from webdataset import TarWriter

        self._file = open(self.folder / (self._name() + ".partial"), "wb")
        self._hf = _HashingFile(self._file)
        self._writer = TarWriter(self._hf, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, encoder=False,
                                 mtime=TAR_MTIME)
        self._count = self._members = 0

    def _finish(self) -> None:
        assert self._writer is not None and self._file is not None and self._hf is not None
        self._writer.close()  # end-of-archive blocks + record padding; leaves our file open
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self._name()
        if self._hf.size != tar_file_bytes(self._members):  # the byte limit relies on this accounting
            raise RuntimeError(f"{name}: wrote {self._hf.size} bytes, expected {tar_file_bytes(self._members)}")
        os.replace(self.folder / (name + ".partial"), self.folder / name)
        self.shards.append({"name": name, "count": self._count, "bytes": self._hf.size,
                            "sha256": self._hf.h.hexdigest(), "first_key": self._first, "last_key": self._last})
        self._writer = self._file = self._hf = None


def write_webdataset(ws: Workspace, cfg: RunConfig, out: Path | None = None) -> dict[str, Any]:
    """Write ``webdataset/`` from the current ``decisions`` (call after they are computed).

    Args:
        ws: the workspace; ``decisions`` must be filled (export computes them first).
        cfg: ``cfg.export.shard_size`` (samples per shard, ≥ 1), ``cfg.export.shard_max_bytes``
            (bytes per shard file, or None for no limit), ``cfg.hash.max_pixels`` (re-encode decode cap).
        out: the export's staging folder (:func:`curate.store.outdir.publish`), which holds the
            manifest the shards go with; None: a staging folder of its own, published over
            ``out/`` with only ``webdataset/`` replaced.

    Returns:
        counters: ``samples``, ``shards``, ``bytes`` (ints; bytes = sum of shard file sizes),
        ``extensions`` ({ext: samples}), ``reencoded`` ({source format: samples}),
        ``skipped`` ({reason: samples}; reasons ``no_image``, ``missing``, ``sha256_changed``,
        ``unreadable``, ``reencode_failed``). The same numbers are in ``out/webdataset/index.json``.

    Raises:
        OSError: the output folder cannot be written (the previous export is left in place).
        curate.errors.DiskFullError: the disk filled (the previous export is left in place).
    """
    if out is None:
        with publish(ws.root, (DIR_NAME,)) as staging:
            return write_webdataset(ws, cfg, staging)
    final = out / DIR_NAME
    final.mkdir()
    ec = cfg.export
    shards = _Shards(final, ec.shard_size, ec.shard_max_bytes)
    exts: dict[str, int] = {}
    reenc: dict[str, int] = {}
    skipped: list[tuple[int, str, str]] = []
    total = int(ws.scalar("SELECT count(*) FROM decisions WHERE keep"))
    cur = ws.con.execute(SAMPLES_SQL)
    with bar(total=total, desc="[export] webdataset", unit="sample") as pb:
        while rows := cur.fetchmany(_FETCH):
            for r in rows:
                row = dict(zip(_COLS, r))
                pb.update(1)
                sid = row["sample_id"]
                if not row["image_ref"] or not row["sha256"]:
                    skipped.append((sid, "no_image", "no image reference or no hashed image"))
                    continue
                try:
                    data = read_ref(row["image_ref"])
                except (OSError, ValueError) as e:
                    skipped.append((sid, "unreadable", f"{type(e).__name__}: {e}"))
                    continue
                if data is None:
                    skipped.append((sid, "missing", "the image is gone since hash"))
                    continue
                sha = hashlib.sha256(data).hexdigest()
                if sha != row["sha256"]:
                    skipped.append((sid, "sha256_changed", f"bytes hash to {sha}, catalog has {row['sha256']}"))
                    continue
                ext = ready_ext(data)
                reencoded = ext is None
                if reencoded:
                    data, why = _reencode_png(data, cfg.hash.max_pixels)
                    if data is None:
                        skipped.append((sid, "reencode_failed", why))
                        continue
                    ext, sha = "png", hashlib.sha256(data).hexdigest()
                    fmt = row["source_format"] or "unknown"
                    reenc[fmt] = reenc.get(fmt, 0) + 1
                key = key_of(sid)
                caption = row["caption"] or ""
                shards.write(key, {ext: data, "json": _metadata(row, key, ext, sha, reencoded),
                                   "txt": caption.encode("utf-8")})
                exts[ext] = exts.get(ext, 0) + 1
    shards.close()

    by_reason: dict[str, int] = {}
    for _, reason, _ in skipped:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    write_csv(final / SKIPPED_NAME, ["sample_id", "reason", "detail"], skipped)  # formula cells neutralised
    n = sum(s["count"] for s in shards.shards)
    counters = {
        "samples": n,
        "shards": len(shards.shards),
        "bytes": sum(s["bytes"] for s in shards.shards),
        "extensions": dict(sorted(exts.items())),
        "reencoded": dict(sorted(reenc.items())),
        "skipped": dict(sorted(by_reason.items())),
    }
    manifest = out / "manifest.parquet"  # the one published with the shards
    if not manifest.is_file():  # shards written alone: they go with the current manifest
        manifest = ws.out / "manifest.parquet"
    index = {
        "format": "webdataset",
        "version": 1,
        **counters,
        "kept": total,
        "shard_size": ec.shard_size,
        "shard_max_bytes": ec.shard_max_bytes,
        "pattern": (f"{{000000..{len(shards.shards) - 1:06d}}}.tar" if shards.shards else None),
        "members": ["<key>.<jpg|png|webp>", "<key>.json", "<key>.txt"],
        "key": f"sample_id zero-padded to {KEY_DIGITS} digits",
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None,
    }
    index["n_shards"] = index.pop("shards")
    index["shards"] = shards.shards
    atomic_write_bytes(final / INDEX_NAME, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    if skipped:
        info(f"[export] webdataset: {len(skipped)} kept samples not written ({counters['skipped']}); "
             f"see {ws.out / DIR_NAME / SKIPPED_NAME}")
    return counters
