"""The hash stage's per-sample work, shared by both engines: one run of (sample_id,
image_ref) pairs → ``images`` rows (:func:`hash_items`), the rows' arrow schema, and the
worker-process set-up. Pure: a run's rows depend only on its samples and ``max_pixels``."""
from __future__ import annotations

import ctypes
import hashlib

import numpy as np

from curate.media.images import missing_reason, open_image, read_ref
from curate.media.jpeg import jpeg_quality
from curate.media.phash import border_fraction, colourfulness, gray32_rgb, information, phash_with_mirror
from curate.media.trim import picture_box


def hash_items(items: list[tuple[int, str]], max_pixels: int) -> list[tuple]:
    """(sample_id, image_ref) pairs → ``images`` rows, pHashes computed as one batch, each on
    the picture without flat padding (:func:`trimmed_gray32`; colourfulness and border on the
    whole image).

    Returns:
        one tuple per item in the ``images`` column order (see ``_SCHEMA``: …, ``phash`` uint64
        at index 5, …, ``phash_mirror`` uint64, ``phash_quality`` int16 0–100
        (:func:`curate.media.phash.information`), ``colourfulness`` int16 ≥ 0
        (:func:`~curate.media.phash.colourfulness`), ``border`` float32 0–1
        (:func:`~curate.media.phash.border_fraction`), ``jpeg_quality`` int16 1–100 (estimated
        libjpeg quality, :func:`curate.media.jpeg.jpeg_quality`; None when not a JPEG); all None
        without a decoded image); never
        raises for a bad image (its status says why).
    """
    rows: list[list] = []
    grays: list[np.ndarray] = []
    with_gray: list[int] = []
    for sid, ref in items:
        try:
            data = read_ref(ref)
        except OSError as e:  # the file is there but the OS refuses it (permissions, I/O error)
            data, unreadable = None, f"{type(e).__name__}: {e}"
        else:
            unreadable = None
        d, im = open_image(data, max_pixels=max_pixels)
        if unreadable is not None:  # read again on the next run (curate.stages.hash.changes)
            d.status, d.detail = "unreadable", unreadable
        elif data is None:  # why: a failed download, a shard gone, a refused symlink, … (missing: references)
            d.detail = missing_reason(ref)
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        if im is not None:
            try:
                gray, rgb = gray32_rgb(im)
                colour, border = colourfulness(rgb), border_fraction(gray if rgb is None else rgb)
                grays.append(trimmed_gray32(im, gray))
                with_gray.append(len(rows))
            except Exception as e:  # noqa: BLE001 - never lose the row over its hash
                d.notes.append(f"phash_failed: {type(e).__name__}: {e}")
                colour = border = None
        else:
            colour = border = None
        rows.append([sid, d.status, d.detail, None if data is None else len(data), sha, None, d.width, d.height,
                     d.raw_width, d.raw_height, d.mode, d.format, d.orientation, d.notes, None, None, colour, border,
                     jpeg_quality(data) if im is not None else None])
    if grays:
        g = np.stack(grays)
        hashes, mirrors = phash_with_mirror(g)
        for k, h, m, q in zip(with_gray, hashes.tolist(), mirrors.tolist(), information(g).tolist()):
            rows[k][5] = int(h)
            rows[k][14] = int(m)
            rows[k][15] = int(q)
    return [tuple(r) for r in rows]


def trimmed_gray32(im, gray: np.ndarray) -> np.ndarray:
    """The 32×32 luma the pHash is taken on: of the picture without its flat padding
    (:func:`curate.media.trim.trim_uniform_border`, the same trim as the descriptor's), so a
    thumbnail pasted on a plain background or a letterboxed copy hashes like its original
    (14–34 bits apart untrimmed, 0–2 trimmed: issue #16). ``gray``: the untrimmed image's
    32×32 luma, returned as it is when no edge is flat (most images: 4 lines read)."""
    box = picture_box(im)
    return gray if box is None else gray32_rgb(im.crop(box))[0]


def hash_one(item: tuple[int, str], max_pixels: int) -> tuple:
    """(sample_id, image_ref) → one ``images`` row (see :func:`hash_items`)."""
    return hash_items([item], max_pixels)[0]


def work(args):
    items, max_pixels = args
    return hash_items(items, max_pixels)


MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (bytes)
TRIM_THRESHOLD = 128 << 20  # free heap kept before glibc gives it back (bytes): 4 heap-served images


def worker_init() -> None:
    """Initialiser of the hash worker processes: let glibc reuse freed memory.

    Every decoded image is a fresh buffer of up to width × height × 4 bytes. By default glibc
    maps each big one anew and unmaps it when freed, so every image pays a page fault per
    4 KiB page (≈ 12 % of the hash stage's CPU time, most of it in the kernel, measured with
    ``benchmarks/bench_phash.py``). Raising ``M_MMAP_THRESHOLD`` to :data:`MMAP_THRESHOLD` and
    ``M_TRIM_THRESHOLD`` to :data:`TRIM_THRESHOLD` serves images up to 8 MP from the heap and
    keeps it mapped between images. Only these worker processes are changed; a C library
    without ``mallopt`` (musl, macOS) is left as it is.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD


def run_size(batch_size: int, workers: int) -> int:
    """Samples per worker task: a committed batch split so that every worker has two tasks in
    flight, 8–64 samples (each task's pHashes are one vectorised DCT)."""
    return max(8, min(64, batch_size // max(1, 2 * (workers or 1))))


_SCHEMA = None


def images_schema():
    """The arrow schema of :func:`hash_items`' rows (the ``images`` columns, in that order)."""
    import pyarrow as pa

    global _SCHEMA
    if _SCHEMA is None:
        i32, s = pa.int32(), pa.string()
        _SCHEMA = pa.schema([
            ("sample_id", pa.int64()), ("status", s), ("detail", s), ("n_bytes", pa.int64()), ("sha256", s),
            ("phash", pa.uint64()), ("width", i32), ("height", i32), ("raw_width", i32), ("raw_height", i32),
            ("mode", s), ("format", s), ("orientation", i32), ("notes", pa.list_(s)), ("phash_mirror", pa.uint64()),
            ("phash_quality", pa.int16()), ("colourfulness", pa.int16()), ("border", pa.float32()),
            ("jpeg_quality", pa.int16()),
        ])
    return _SCHEMA


def rows_table(rows: list[tuple]):
    """:func:`hash_items` rows → an arrow table of :func:`images_schema` (exact round trip)."""
    import pyarrow as pa

    schema = images_schema()
    cols = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table([pa.array(list(c), type=f.type) for c, f in zip(cols, schema)], schema=schema)
