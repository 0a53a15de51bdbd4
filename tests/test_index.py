"""faiss pHash and cosine search against brute force; components; keeper determinism."""
from __future__ import annotations

import numpy as np
import pytest

from curate.embstore import load_all, write_part
from curate.index import components, cosine_pairs, phash_pairs
from curate.stages.embed import normalise


def test_phash_pairs_identical_to_brute_force():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, 400).astype(np.uint64)
    # plant near-duplicates: flip up to 6 bits
    for k in range(0, 100, 2):
        flips = rng.choice(64, rng.integers(0, 7), replace=False)
        h[k + 1] = h[k] ^ np.uint64(sum(1 << int(f) for f in flips))
    i, j, d = phash_pairs(h, 6)
    brute = {(a, b, bin(int(h[a]) ^ int(h[b])).count("1")) for a in range(len(h)) for b in range(a + 1, len(h))
             if bin(int(h[a]) ^ int(h[b])).count("1") <= 6}
    assert set(zip(i.tolist(), j.tolist(), d.tolist())) == brute
    assert len(brute) >= 50


def test_phash_radius_is_inclusive():
    h = np.array([0, 0b111], dtype=np.uint64)
    assert len(phash_pairs(h, 3)[0]) == 1 and len(phash_pairs(h, 2)[0]) == 0


def test_cosine_pairs_need_normalised_vectors_k13():
    raw = np.array([[1, 0, 0, 0], [10, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 0, 0]], np.float32)
    with pytest.raises(ValueError, match="not L2-normalised"):
        cosine_pairs(raw, 0.9)
    v, ok = normalise(raw)
    assert ok.tolist() == [True, True, True, False]  # the zero vector is excluded
    i, j, s = cosine_pairs(v[ok], 0.6)
    got = {(int(a), int(b)): round(float(c), 4) for a, b, c in zip(i, j, s)}
    assert got == {(0, 1): 1.0, (0, 2): 0.6, (1, 2): 0.6}
    assert normalise(np.array([[np.nan, 1, 0, 0]], np.float32))[1].tolist() == [False]


def test_components_cluster_id_is_smallest_member_whatever_edge_order():
    a = np.array([30, 10, 50], np.int64)
    b = np.array([20, 20, 60], np.int64)
    n1, c1 = components(np.zeros(0, np.int64), a, b)
    n2, c2 = components(np.zeros(0, np.int64), a[::-1].copy(), b[::-1].copy())
    assert dict(zip(n1.tolist(), c1.tolist())) == dict(zip(n2.tolist(), c2.tolist())) == {
        10: 10, 20: 10, 30: 10, 50: 50, 60: 50}


def test_embedding_parts_join_on_ids_not_row_order(tmp_path):
    v, _ = normalise(np.eye(3, 4, dtype=np.float32))
    write_part(tmp_path, 0, np.array([7, 3], np.int64), v[:2])
    write_part(tmp_path, 1, np.array([5], np.int64), v[2:])
    ids, vecs = load_all(tmp_path)
    assert ids.tolist() == [3, 5, 7]
    assert vecs.flags.c_contiguous and vecs.dtype == np.float32
    assert vecs[0].argmax() == 1 and vecs[2].argmax() == 0
