"""The dedup stage's cluster-scale embedding search (``dedup.embedding_search: ivfpq``, issue #8):
the vectors are read from the embedding parts one part at a time (never loaded whole on the
driver), the rows searched are exactly the in-memory path's (eligible samples, first stored copy
of an id, unit rows, one representative per group of identical vectors), and the edges and
clusters equal the exact search's — with the parts split, overlapping, holding bad rows,
repeated ids and identical vectors, in this process and in Ray tasks. The index holds location
labels (part, stored row), so candidates are shuffled by part and each part's vectors are read a
fixed number of times per run (4: training sample, fill, query scan, verification), never per
block of candidates, and keep masks do not shift rows."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from curate import api
from curate.stages.dedup import ivfpq, shuffle
from curate.stages.dedup.sources import ArraySource, PartsSource, survey_part
from tests.conftest import query


EDGES = "SELECT a, b, signal, distance FROM dup_edges ORDER BY a, b, signal"
CLUSTERS = "SELECT sample_id, cluster_id, cluster_size, keeper_rank, is_keeper FROM clusters ORDER BY sample_id"
SAME = ("embedding_vectors_excluded", "embedding_key", "embedded_searched", "edges")


def _copy(sample_ws, dest: Path) -> Path:
    local, _ = sample_ws
    dest.mkdir()
    for name in ("catalog.duckdb", "config.json"):
        shutil.copy(local / name, dest / name)
    shutil.copytree(local / "embeddings", dest / "embeddings")
    return dest


def _store(ws: Path) -> Path:
    (d,) = [p for p in (ws / "embeddings").iterdir() if p.is_dir()]
    return d


def _dedup(ws: Path, search: str, monkeypatch=None, **dedup) -> dict:
    """dedup with ``search``; containment off on both paths (ivfpq never loads the vectors, so it
    skips containment: the searches are compared on the signals they share)."""
    cfg = api.with_overrides(api.workspace_config(ws), "dedup",
                             {"embedding_search": search, "containment": False, **dedup})
    if monkeypatch is not None:  # the cluster-scale path must never load every vector on the driver
        from curate.stages.dedup import stage as stage

        def refuse(*a, **k):
            raise AssertionError("load_all called on the ivfpq path")

        monkeypatch.setattr(stage, "load_all", refuse)
    return api.run_one(ws, "dedup", cfg, force=True)["counters"]


def _same_result(ws_a: Path, ws_b: Path) -> None:
    """Same edges (ids, signal; distances within float32 rounding of the cosine) and clusters."""
    ea, eb = query(ws_a, EDGES), query(ws_b, EDGES)
    assert [e[:3] for e in ea] == [e[:3] for e in eb]
    assert max(abs(x[3] - y[3]) for x, y in zip(ea, eb)) < 1e-6
    assert query(ws_a, CLUSTERS) == query(ws_b, CLUSTERS)


def _split(ws: Path) -> dict:
    """Rewrite the sample's single part as six parts whose id ranges overlap (rows k::5) plus an
    empty part and a part repeating three ids with other vectors (the first copy counts), and
    plant two bad rows (norm 2, NaN) and an identical pair of vectors across parts, on eligible
    samples. Written with np.save: write_part would refuse the bad rows."""
    from curate.stages.dedup.stage import ELIGIBLE_SQL
    from curate.models.recipe import image_key

    folder = _store(ws)
    ids, vecs = np.load(folder / "part-00000.ids.npy"), np.load(folder / "part-00000.npy")
    for f in folder.glob("part-*"):
        f.unlink()
    key = image_key(api.workspace_config(ws))
    ok = np.array(sorted(r[0] for r in query(ws, ELIGIBLE_SQL, [key, 32, 25])), np.int64)
    elig = np.flatnonzero(np.isin(ids, ok))
    parts = [(ids[k::5].copy(), vecs[k::5].copy()) for k in range(5)]
    # rows of eligible samples in parts 1, 2, 3, 4
    pick = {k: [r for r in range(len(parts[k][0])) if parts[k][0][r] in set(ok.tolist())] for k in range(1, 5)}
    parts[1][1][pick[1][0]] *= 2  # norm 2: excluded, counted
    parts[2][1][pick[2][3]] = np.nan  # not finite: excluded, counted
    parts[3][1][pick[3][5]] = parts[4][1][pick[4][7]]  # identical vectors in two parts
    parts.append((np.zeros(0, np.int64), np.zeros((0, vecs.shape[1]), np.float16)))  # an empty part
    again = ids[elig[[2, 40, 90]]]  # ids stored a second time with another sample's vector: ignored
    parts.append((again, vecs[elig[[100, 101, 102]]]))
    for k, (i, v) in enumerate(parts):
        np.save(folder / f"part-{k:05d}.ids.npy", i.astype(np.int64))
        np.save(folder / f"part-{k:05d}.npy", v.astype(np.float16))
    return {"bad_ids": [int(parts[1][0][pick[1][0]]), int(parts[2][0][pick[2][3]])],
            "identical": sorted([int(parts[3][0][pick[3][5]]), int(parts[4][0][pick[4][7]])])}


def test_ivfpq_stage_on_split_parts_gives_the_exact_edges(sample_ws, tmp_path, monkeypatch):
    """Seven parts with overlapping id ranges, an empty part, repeated ids, two bad rows and a
    planted identical pair: ``ivfpq`` (parts path, load_all forbidden) equals ``exact`` (vectors
    loaded) — edges, clusters, the searched / excluded / collapsed counts — and identical vectors
    get their star edge at distance 0."""
    a = _copy(sample_ws, tmp_path / "exact")
    planted = _split(a)
    b = tmp_path / "ivfpq"
    shutil.copytree(a, b)
    ex = _dedup(a, "exact")
    pq = _dedup(b, "ivfpq", monkeypatch)
    assert ex["embedding_search"]["method"] == "exact" and pq["embedding_search"]["method"] == "ivfpq"
    for k in SAME:
        assert pq[k] == ex[k], k
    for k in ("rows", "unique", "identical_collapsed"):
        assert pq["embedding_search"][k] == ex["embedding_search"][k], k
    assert pq["embedding_vectors_excluded"] == 2
    assert pq["embedding_search"]["identical_collapsed"] >= 30 and pq["embedding_search"]["recall"] == 1.0
    _same_result(a, b)
    rep = {y: x for x, y in query(b, "SELECT a, b FROM dup_edges WHERE signal = 'embedding' AND distance = 0")}
    x, y = planted["identical"]  # one group: the larger id's star edge goes to the group's smallest id
    assert y in rep and rep.get(x, x) == rep[y] and rep[y] <= x
    bad = ", ".join(map(str, planted["bad_ids"]))
    assert query(b, f"SELECT count(*) FROM dup_edges WHERE signal = 'embedding' AND (a IN ({bad}) OR b IN ({bad}))") \
        == [(0,)]
    # a rerun stores the same counters (no timings, no engine) and the same edges
    again = _dedup(b, "ivfpq", monkeypatch)
    assert again == pq


def test_duplicate_vectors_are_collapsed_before_the_search(tmp_path, monkeypatch):
    """Exact duplicate vectors spread over parts: one representative per group is searched
    (identical_collapsed), each copy gets a star edge to the group's smallest id, and the
    representatives' pairs are the exact search's."""
    from curate.store.embeddings import write_part
    from tests.conftest import exact, planted

    ids, vecs = planted(3000, d=16, seed=4)
    rng = np.random.default_rng(5)
    src = rng.integers(0, 3000, 300)
    dup_ids = 10**6 + np.arange(300, dtype=np.int64)
    all_ids = np.concatenate([ids, dup_ids])
    all_vecs = np.concatenate([vecs, vecs[src]])
    order = rng.permutation(len(all_ids))
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, s in enumerate(range(0, len(order), 800)):
        write_part(folder, k, all_ids[order[s:s + 800]], all_vecs[order[s:s + 800]])
    keep, star_a, star_b = _collapse(folder)
    src_ids = ids[src]
    groups: dict[int, list[int]] = {}
    for i_, d_ in zip(src_ids.tolist(), dup_ids.tolist()):
        groups.setdefault(i_, [i_]).append(d_)
    expect = sorted((min(g), x) for g in groups.values() for x in g if x != min(g))
    assert sorted(zip(star_a.tolist(), star_b.tolist())) == expect
    source = PartsSource(folder, keep=keep)
    assert source.count() == 3000 and sorted(
        np.concatenate([source.load(p)[0] for p in source.shards()]).tolist()) == sorted(ids.tolist())
    res = ivfpq.pairs(source, 0.93, ivfpq.Params(nlist=32, nprobe=32), recall_sample=0)
    got, exact = set(zip(res.a.tolist(), res.b.tolist())), exact(ids, vecs, 0.93)
    assert got <= exact and len(got) >= 0.99 * len(exact) > 100


def _collapse(folder):
    """The stage's rule on bare parts: the smallest id of each content-key group is kept."""
    from curate.store.embeddings import list_parts

    rows = [(p, *survey_part(folder, p)) for p in list_parts(folder)]
    ids = np.concatenate([r[1] for r in rows])
    keys = np.concatenate([r[3] for r in rows])
    _, grp = np.unique(keys, axis=0, return_inverse=True)
    grp = grp.ravel()
    rep = np.full(grp.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(rep, grp, ids)
    is_rep = rep[grp] == ids
    keep, s = {}, 0
    for p, pids, _, _ in rows:
        keep[p] = is_rep[s:s + len(pids)]
        s += len(pids)
    return keep, rep[grp][~is_rep], ids[~is_rep]


def _write_interleaved(folder, ids, vecs, n_parts, seed=0):
    """``n_parts`` parts of a random permutation of the rows: interleaved id ranges."""
    from curate.store.embeddings import write_part

    order = np.random.default_rng(seed).permutation(len(ids))
    folder.mkdir()
    for k, rows in enumerate(np.array_split(order, n_parts)):
        write_part(folder, k, ids[rows], vecs[rows])
    return folder


@pytest.mark.parametrize("verify_tasks", [1024, 3])
def test_search_reads_each_part_a_fixed_number_of_times(tmp_path, monkeypatch, verify_tasks):
    """A whole pairs() run over a PartsSource (recall not measured) reads each part's vector
    file exactly 4 times — the training sample, the fill, the query scan, the verification of
    the candidates pointing into it — and its id file as often, whatever the number of parts and
    of candidates (4 and 12 parts here; one verification task per part, or groups of parts);
    ``lookup`` is never called; pairs and cosines equal the in-memory source's."""
    from curate.store import embeddings as embstore
    from tests.conftest import planted

    monkeypatch.setattr(shuffle, "VERIFY_TASKS", verify_tasks)
    ids, vecs = planted(6000, d=16, seed=2)
    p = ivfpq.Params(nlist=32, nprobe=8)
    order = np.random.default_rng(0).permutation(len(ids))  # the parts' rows, in stored order
    mem = ivfpq.pairs(ArraySource(ids[order], vecs[order]), 0.93, p, recall_sample=0)
    real_load = embstore.load_npy
    for n_parts in (4, 12):
        source = PartsSource(_write_interleaved(tmp_path / f"p{n_parts}", ids, vecs, n_parts))
        assert source.dim == 16 and source.count() == len(ids)  # the header and id-range directory: before
        reads: dict[str, int] = {}

        def load(folder, name, mmap=False):
            reads[name] = reads.get(name, 0) + 1
            return real_load(folder, name, mmap)

        def lookup(self, want):
            raise AssertionError("lookup called by the search")

        monkeypatch.setattr(embstore, "load_npy", load)
        monkeypatch.setattr(PartsSource, "lookup", lookup)
        res = ivfpq.pairs(source, 0.93, p, recall_sample=0)
        monkeypatch.setattr(embstore, "load_npy", real_load)
        want = {f"part-{k:05d}{x}": 4 for k in range(n_parts) for x in (".npy", ".ids.npy")}
        assert reads == want
        assert res.stats["candidates"] == mem.stats["candidates"] > 100 * len(ids)  # spread over every part
        assert np.array_equal(res.a, mem.a) and np.array_equal(res.b, mem.b)
        assert np.array_equal(res.cosine, mem.cosine)


def test_location_labels_survive_keep_masks(tmp_path):
    """Labels are (part, stored row): a part whose first rows are masked out (and rows dropped
    elsewhere) verifies the right ids — the masked rows, copies of kept rows' vectors, never
    appear, and the pairs and cosines equal the in-memory source over the kept rows. ``lookup``
    (used by the recall measurement) finds kept rows only."""
    from curate.store import embeddings as embstore
    from tests.conftest import exact, planted

    ids, vecs = planted(6000, d=16, seed=3)
    vecs = vecs.copy()
    folder = _write_interleaved(tmp_path / "parts", ids, vecs, 5, seed=1)
    # part 1: its first 40 rows masked out and overwritten with copies of kept rows of part 3
    p1_ids, p1_vecs = embstore.read_part_ids(folder, 1), np.load(folder / "part-00001.npy")
    p3_vecs = np.load(folder / "part-00003.npy")
    p1_vecs[:40] = p3_vecs[:40]
    np.save(folder / "part-00001.npy", p1_vecs)
    keep = {p: np.ones(len(embstore.read_part_ids(folder, p)), bool) for p in embstore.list_parts(folder)}
    keep[1][:40] = False
    keep[4][::3] = False
    dropped = set(p1_ids[:40].tolist()) | set(embstore.read_part_ids(folder, 4)[::3].tolist())
    source = PartsSource(folder, keep=keep)
    kept_ids = np.concatenate([source.load(p)[0] for p in source.shards()])
    kept_vecs = np.concatenate([np.load(folder / f"part-{p:05d}.npy")[keep[p]] for p in source.shards()])
    assert source.count() == len(ids) - len(dropped) == len(kept_ids)
    assert not set(kept_ids.tolist()) & dropped
    _, _, rows = source.load_rows(1)
    assert rows[0] == 40 and len(rows) == len(p1_ids) - 40
    p = ivfpq.Params(nlist=32, nprobe=32)
    res = ivfpq.pairs(source, 0.93, p, recall_sample=500)
    mem = ivfpq.pairs(ArraySource(kept_ids, kept_vecs), 0.93, p, recall_sample=0)
    got = set(zip(res.a.tolist(), res.b.tolist()))
    assert not {x for e in got for x in e} & dropped
    exact = {(min(x, y), max(x, y)) for x, y in exact(kept_ids, kept_vecs, 0.93)}  # ids not in row order
    assert got <= exact and len(got) > 100 and res.stats["recall"] >= 0.95
    assert np.array_equal(res.a, mem.a) and np.array_equal(res.b, mem.b)
    assert np.array_equal(res.cosine, mem.cosine)
    # lookup: kept rows only, read as stored
    kept = np.sort(kept_ids)
    pos = {int(x): i for i, x in enumerate(kept_ids)}
    assert np.array_equal(source.lookup(kept), kept_vecs[[pos[x] for x in kept.tolist()]].astype(np.float32))
    with pytest.raises(KeyError):
        source.lookup(p1_ids[:1])  # masked out


def test_ivfpq_stage_in_ray_tasks_gives_the_local_edges(sample_ws, tmp_path, monkeypatch, ray_address):
    """``dedup.engine: ray``: the parts surveyed, filled and searched in Ray tasks on a 2-CPU
    cluster give the in-process run's edges (distances included), clusters and counters."""
    a = _copy(sample_ws, tmp_path / "local")
    _split(a)
    b = tmp_path / "ray"
    shutil.copytree(a, b)
    loc = _dedup(a, "ivfpq", monkeypatch)
    ray = _dedup(b, "ivfpq", monkeypatch, engine="ray", ray_address=ray_address)
    assert ray == loc and ray["embedding_search"]["method"] == "ivfpq"
    assert query(a, EDGES) == query(b, EDGES) and query(a, CLUSTERS) == query(b, CLUSTERS)
