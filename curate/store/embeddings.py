"""Embedding parts on disk: ``part-NNNNN.npy`` float16 (n, d) L2-normalised rows and
``part-NNNNN.ids.npy`` int64 (n,) sample ids, in the layout of LAION's ``img_emb_*.npy``.

Each part may have a ``part-NNNNN.meta.json`` (written first) that records the samples of
the part's work chunk that have *no* vector, with their reason (``zero_vector``,
``nonfinite_vector``, a decode status, ``no_caption``), so a part on disk tells everything
its chunk produced. Parts are written atomically (temp name + rename; meta, then ids, then
vectors), so a part whose vector file exists is complete; a killed writer leaves at most a
``*.tmp<pid>`` file, removed by :func:`clean_temp`. Readers join on the ids, never on row
position. A folder's ``store.json`` records what the vectors are (model, preprocessing).

A folder is a local path or a URI (``s3://bucket/prefix/<key>``, …; :mod:`curate.store.fsio`):
Ray actors on any node write parts through the same functions. On object storage a part's
files are single PUTs (all-or-nothing), vectors are read whole instead of memory-mapped.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from curate.store import fsio


_PART = re.compile(r"^part-(\d{5,})\.npy$")


def list_parts(folder: Path | str) -> list[int]:
    """Numbers of the complete parts in ``folder`` (a path or URI), ascending."""
    if fsio.is_uri(folder):
        names = set(fsio.listdir(folder))
        return sorted(int(m.group(1)) for m in map(_PART.match, names)
                      if m and f"part-{m.group(1)}.ids.npy" in names)
    folder = Path(fsio.local_path(folder))
    nums = []
    for p in folder.glob("part-*.npy"):
        m = _PART.match(p.name)
        if m and (folder / f"part-{m.group(1)}.ids.npy").is_file():
            nums.append(int(m.group(1)))
    return sorted(nums)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _put(folder: Path | str, name: str, data: bytes) -> None:
    if fsio.is_uri(folder):
        fsio.write_bytes(fsio.join(folder, name), data)  # one PUT: all or nothing
    else:
        fsio.atomic_write_bytes(Path(fsio.local_path(folder)) / name, data)


def _get(folder: Path | str, name: str) -> bytes | None:
    return fsio.read_bytes(fsio.join(folder, name))


def write_part(folder: Path | str, num: int, ids: np.ndarray, vecs: np.ndarray, meta: dict | None = None) -> None:
    """Write one part atomically (meta, then ids, then vectors; each temp + rename, or one PUT
    per file on object storage), so a part whose vector file exists is complete.

    Args:
        ids: int64 (n,) sample ids.
        vecs: float (n, d), L2-normalised (checked: every row's norm within 1e-3 of 1, finite);
            stored as float16. n may be 0.
        meta: JSON-able dict stored as ``part-NNNNN.meta.json`` (e.g. the chunk's failures).

    Raises:
        ValueError: shapes disagree, or a row is not finite / not unit length (K13).
    """
    if ids.shape[0] != vecs.shape[0]:
        raise ValueError(f"ids ({ids.shape[0]}) and vectors ({vecs.shape[0]}) differ in length")
    v = np.asarray(vecs)
    if v.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, d), got shape {v.shape}")
    if len(v):
        norms = np.linalg.norm(v.astype(np.float32), axis=1)
        bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > 1e-3)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{int(bad.sum())} vectors are not finite and L2-normalised (row {k}: norm {norms[k]})")
    if meta is not None:
        _put(folder, f"part-{num:05d}.meta.json", (json.dumps(meta, sort_keys=True) + "\n").encode())
    _put(folder, f"part-{num:05d}.ids.npy", _npy_bytes(ids.astype(np.int64)))
    _put(folder, f"part-{num:05d}.npy", _npy_bytes(np.ascontiguousarray(v, dtype=np.float16)))


def read_part_meta(folder: Path | str, num: int) -> dict | None:
    """The part's ``meta.json`` as a dict, or None when it has none."""
    data = _get(folder, f"part-{num:05d}.meta.json")
    return json.loads(data) if data is not None else None


def part_files(folder: Path | str, num: int) -> list[Path | str]:
    """The files of part ``num`` that exist (vectors, ids, meta)."""
    names = (f"part-{num:05d}.npy", f"part-{num:05d}.ids.npy", f"part-{num:05d}.meta.json")
    return [fsio.join(folder, n) for n in names if fsio.exists(fsio.join(folder, n))]


_TMP = re.compile(r"\.tmp\d+$")


def clean_temp(folder: Path | str) -> int:
    """Remove temp files a killed writer left behind (``*.tmp<pid>``); returns how many."""
    n = 0
    if fsio.is_uri(folder):  # object-store writes leave no temp files, but a local mirror may
        for name in fsio.listdir(folder):
            if _TMP.search(name):
                fsio.delete(fsio.join(folder, name))
                n += 1
        return n
    folder = Path(fsio.local_path(folder))
    for p in folder.glob("*.tmp*"):
        if _TMP.search(p.name) and p.is_file():
            p.unlink()
            n += 1
    return n


def write_store_meta(folder: Path | str, meta: dict) -> None:
    """Record what the folder's vectors are (``store.json``: model, dim, preprocessing, ...)."""
    _put(folder, "store.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def read_store_meta(folder: Path | str) -> dict | None:
    data = _get(folder, "store.json")
    return json.loads(data) if data is not None else None


def load_npy(folder: Path | str, name: str, mmap: bool = False) -> np.ndarray:
    """The array in file ``name`` of ``folder`` (a local path or a URI), without pickles:
    memory-mapped read-only when local and ``mmap``, else read whole (a URI is always read
    whole). Every read of a part's files goes through here.

    Raises:
        FileNotFoundError: no such file.
    """
    if fsio.is_uri(folder):
        data = _get(folder, name)
        if data is None:
            raise FileNotFoundError(fsio.join(folder, name))
        return np.load(io.BytesIO(data), allow_pickle=False)
    return np.load(Path(fsio.local_path(folder)) / name, mmap_mode="r" if mmap else None)


def read_part_ids(folder: Path | str, num: int) -> np.ndarray:
    """int64 (n,) sample ids of part ``num``."""
    return load_npy(folder, f"part-{num:05d}.ids.npy")


def iter_parts(folder: Path | str, mmap: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (part number, ids int64 (n,), vectors float16 (n, d)) for every complete part
    (memory-mapped when local and ``mmap``)."""
    for num in list_parts(folder):
        ids = load_npy(folder, f"part-{num:05d}.ids.npy")
        vecs = load_npy(folder, f"part-{num:05d}.npy", mmap=mmap)
        if vecs.shape[0] != ids.shape[0]:
            raise ValueError(f"{folder}/part-{num:05d}: {vecs.shape[0]} vectors but {ids.shape[0]} ids")
        yield num, ids, vecs


def load_all(folder: Path, only: set[int] | None = None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """All vectors as C-contiguous ``dtype`` (n, d) (float32 by default) with their int64 ids,
    sorted by id.

    Duplicate ids across parts keep the first part's row. ``only`` keeps those ids. Memory:
    one (n, d) array of ``dtype`` (pass ``np.float16`` to halve it and convert in batches
    with :func:`float32_batches`).
    """
    all_ids, all_vecs = [], []
    for _, ids, vecs in iter_parts(folder):
        if only is not None:
            keep = np.isin(ids, np.fromiter(only, np.int64, len(only)))
            ids, vecs = ids[keep], vecs[keep]
        all_ids.append(ids)
        all_vecs.append(np.asarray(vecs, dtype=dtype))
    if not all_ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), dtype)
    ids = np.concatenate(all_ids)
    vecs = np.concatenate(all_vecs)
    uniq, first = np.unique(ids, return_index=True)
    ids, vecs = uniq, vecs[first]
    return ids, np.ascontiguousarray(vecs, dtype=dtype)


def float32_batches(vecs: np.ndarray, batch_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start row, C-contiguous float32 (m ≤ batch_rows, d) copy) over ``vecs`` — what
    faiss is handed, so a float16 matrix is never converted whole."""
    for start in range(0, len(vecs), batch_rows):
        yield start, np.ascontiguousarray(vecs[start : start + batch_rows], dtype=np.float32)


def lookup(folder: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of the given sample ids: (found bool (n,), float32 (n, d); rows not found are 0).

    Reads each part's ids and only the matching rows of its (memory-mapped) vectors.
    """
    want = np.asarray(ids, np.int64)
    found = np.zeros(len(want), bool)
    if len(want) == 0:
        return found, np.zeros((0, 0), np.float32)
    out: np.ndarray | None = None
    order = np.argsort(want, kind="stable")
    sw = want[order]
    for _, pids, vecs in iter_parts(folder):
        if out is None:
            out = np.zeros((len(want), vecs.shape[1]), np.float32)
        pos = np.searchsorted(sw, pids)
        hit = (pos < len(sw)) & (sw[np.minimum(pos, len(sw) - 1)] == pids)
        if not hit.any():
            continue
        rows = order[pos[hit]]
        new = ~found[rows]
        out[rows[new]] = np.asarray(vecs[np.flatnonzero(hit)[new]], dtype=np.float32)
        found[rows[new]] = True
    if out is None:
        out = np.zeros((len(want), 0), np.float32)
    return found, out
