"""Embedding parts on disk: ``part-NNNNN.npy`` float16 (n, d) L2-normalised rows and
``part-NNNNN.ids.npy`` int64 (n,) sample ids, in the layout of LAION's ``img_emb_*.npy``.

Parts are written atomically (temp name + rename, ids first, vectors last), so a part
whose vector file exists is complete. Readers join on the ids, never on row position.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from curate.catalog import atomic_write_bytes

_PART = re.compile(r"^part-(\d{5,})\.npy$")


def list_parts(folder: Path) -> list[int]:
    """Numbers of the complete parts in ``folder``, ascending."""
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


def write_part(folder: Path, num: int, ids: np.ndarray, vecs: np.ndarray) -> None:
    """Write one part atomically.

    Args:
        ids: int64 (n,) sample ids.
        vecs: float (n, d), already L2-normalised; stored as float16.

    Raises:
        ValueError: shapes disagree.
    """
    if ids.shape[0] != vecs.shape[0]:
        raise ValueError(f"ids ({ids.shape[0]}) and vectors ({vecs.shape[0]}) differ in length")
    atomic_write_bytes(folder / f"part-{num:05d}.ids.npy", _npy_bytes(ids.astype(np.int64)))
    atomic_write_bytes(folder / f"part-{num:05d}.npy", _npy_bytes(np.ascontiguousarray(vecs, dtype=np.float16)))


def read_part_ids(folder: Path, num: int) -> np.ndarray:
    return np.load(folder / f"part-{num:05d}.ids.npy")


def iter_parts(folder: Path, mmap: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (part number, ids int64 (n,), vectors float16 (n, d)) for every complete part."""
    for num in list_parts(folder):
        ids = np.load(folder / f"part-{num:05d}.ids.npy")
        vecs = np.load(folder / f"part-{num:05d}.npy", mmap_mode="r" if mmap else None)
        if vecs.shape[0] != ids.shape[0]:
            raise ValueError(f"{folder}/part-{num:05d}: {vecs.shape[0]} vectors but {ids.shape[0]} ids")
        yield num, ids, vecs


def load_all(folder: Path, only: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All vectors as C-contiguous float32 (n, d) with their int64 ids, sorted by id.

    Duplicate ids across parts keep the first part's row.
    """
    all_ids, all_vecs = [], []
    for _, ids, vecs in iter_parts(folder):
        all_ids.append(ids)
        all_vecs.append(np.asarray(vecs, dtype=np.float32))
    if not all_ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = np.concatenate(all_ids)
    vecs = np.concatenate(all_vecs)
    uniq, first = np.unique(ids, return_index=True)
    ids, vecs = uniq, vecs[first]
    if only is not None:
        keep = np.isin(ids, np.fromiter(only, np.int64, len(only)))
        ids, vecs = ids[keep], vecs[keep]
    return ids, np.ascontiguousarray(vecs, dtype=np.float32)
