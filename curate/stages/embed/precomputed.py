"""Import precomputed image embeddings: LAION-style ``img_emb_*.npy`` + ``metadata_*.parquet``
pairs (clip-retrieval's output layout) and DataComp ``.npz`` files beside their parquet.

Rows are joined to samples **by key, never by position across files produced separately**
(case K14): within one published pair the i-th vector belongs to the i-th metadata row (that
is the pair's contract), and the metadata row's key (``url`` by default, or the img2dataset /
DataComp ``key``/``uid``) is matched to the catalog column ``on`` (``url`` or ``key``).

Hard errors (:class:`~curate.errors.InputError`), nothing written for the pair:

- a vectors file with no metadata partner (numbers in the names differ), or a partner whose
  row count differs from the vectors';
- the key column missing, or NULL keys;
- one key with two different vectors in the same import;
- keys not found in the catalog, unless ``allow_unmatched`` (importing a superset, e.g. all of
  LAION's embeddings for an ingested subset) — then they are counted, never guessed.

Vectors are L2-normalised and stored as float16 parts like computed ones
(:mod:`curate.store.embeddings`); zero and NaN/inf vectors get status ``zero_vector`` /
``nonfinite_vector`` and are not stored (case K13). One pair is
one part and one transaction; a pair already imported (same fingerprint) is skipped, so an
interrupted import resumes without loss or duplication.
"""
from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

import numpy as np

from curate.config import PrecomputedEmbeddings, RunConfig
from curate.errors import InputError
from curate.models.feeder import normalise, vector_status
from curate.progress import bar, info
from curate.stages.embed.parts import insert_rows, reconcile
from curate.store.catalog import Workspace, file_fingerprint
from curate.store.embeddings import list_parts, write_part

_NUM = re.compile(r"(\d+)(?!.*\d)")


def _files(cfg: RunConfig, pattern: str) -> list[Path]:
    p = cfg.path(pattern)
    files = sorted(Path(x) for x in glob.glob(str(p))) if any(c in pattern for c in "*?[") else [p]
    return [f for f in files if f.is_file()]


def pairs(cfg: RunConfig, spec: PrecomputedEmbeddings) -> list[tuple[Path, Path | None]]:
    """(vectors file, metadata file or None for an npz carrying its keys) for every vectors
    file, paired by the number in the file name (``img_emb_0007.npy`` ↔ ``metadata_0007.parquet``)
    or, for ``.npz``, by the same stem beside it.

    Raises:
        InputError: no vectors file, or one without its metadata partner.
    """
    vecs = _files(cfg, spec.vectors)
    if not vecs:
        raise InputError(f"precomputed embeddings: {spec.vectors!r} matches no file")
    metas = _files(cfg, spec.metadata) if spec.metadata else []
    by_num: dict[int, Path] = {}
    for m in metas:
        hit = _NUM.search(m.stem)
        if hit:
            if int(hit.group(1)) in by_num:
                raise InputError(f"precomputed embeddings: {by_num[int(hit.group(1))]} and {m} carry the same number")
            by_num[int(hit.group(1))] = m
    out: list[tuple[Path, Path | None]] = []
    for v in vecs:
        if v.suffix == ".npz" and not spec.metadata:
            side = v.with_suffix(".parquet")
            out.append((v, side if side.is_file() else None))
            continue
        hit = _NUM.search(v.stem)
        partner = by_num.get(int(hit.group(1))) if hit else None
        if partner is None:
            raise InputError(
                f"precomputed embeddings: {v.name} has no metadata partner in {spec.metadata!r} "
                "(pairs are matched by the number in the file name, never by position)"
            )
        out.append((v, partner))
    return out


def _load(vec_path: Path, meta_path: Path | None, spec: PrecomputedEmbeddings) -> tuple[list[Any], np.ndarray]:
    """(keys, vectors (n, d) as stored, possibly memory-mapped)."""
    if vec_path.suffix == ".npz":
        z = np.load(vec_path, allow_pickle=False)
        name = spec.npz_array or next((k for k in ("l14_img", "b32_img", "img_emb", "embeddings") if k in z.files), None)
        if name is None or name not in z.files:
            raise InputError(f"{vec_path}: no array {spec.npz_array!r}; it holds {z.files}; set npz_array")
        vecs = z[name]
        if meta_path is None:
            if spec.key not in z.files:
                raise InputError(f"{vec_path}: no {spec.key!r} array and no parquet beside it to take keys from")
            return [str(k) for k in z[spec.key].tolist()], vecs
    else:
        vecs = np.load(vec_path, mmap_mode="r", allow_pickle=False)
    import pyarrow.parquet as pq

    assert meta_path is not None
    names = pq.read_schema(meta_path).names
    if spec.key not in names:
        raise InputError(f"{meta_path}: no key column {spec.key!r} (columns: {names}); set key")
    keys = pq.read_table(meta_path, columns=[spec.key]).column(0).to_pylist()
    return keys, vecs


def run(ws: Workspace, cfg: RunConfig) -> dict[str, Any]:
    """Import every configured pair not yet imported into ``embeddings/<embed.model>/``.

    Returns counters: pairs, pairs_skipped, rows, imported, unmatched, bad_vector (zero or
    non-finite),
    samples_sharing_a_key (catalog samples with the same url/key get the same vector).
    """
    model = cfg.embed.model
    folder = ws.embeddings_dir(model)
    reconcile(ws, model, folder)  # parts of a run killed before its transaction (the same rule as embed)
    c = {"model": model, "pairs": 0, "pairs_skipped": 0, "rows": 0, "imported": 0, "unmatched": 0,
         "bad_vector": 0, "samples_sharing_a_key": 0, "already_embedded": 0, "dim": None}
    specs = cfg.embed.precomputed
    if not specs:
        raise InputError(f"embed.model is {model!r} but embed.precomputed lists no files to import")
    work = [(spec, v, m) for spec in specs for v, m in pairs(cfg, spec)]
    for spec, vpath, mpath in bar(work, desc="import embeddings", unit="file"):
        fp = file_fingerprint(vpath) + (f"+{file_fingerprint(mpath)}" if mpath else "")
        uri = str(vpath.resolve())
        if ws.q("SELECT 1 FROM embedding_imports WHERE model = ? AND uri = ? AND fingerprint = ?", [model, uri, fp]):
            c["pairs_skipped"] += 1
            continue
        keys, vecs = _load(vpath, mpath, spec)
        if vecs.ndim != 2:
            raise InputError(f"{vpath}: vectors must be 2-D (n, d), got shape {vecs.shape}")
        if len(keys) != vecs.shape[0]:
            raise InputError(
                f"{vpath.name} holds {vecs.shape[0]} vectors but {mpath.name if mpath else 'its keys'} has "
                f"{len(keys)} rows: not a pair produced together (K14: never joined by position)"
            )
        if c["dim"] is not None and vecs.shape[1] != c["dim"]:
            raise InputError(f"{vpath.name}: dimension {vecs.shape[1]} differs from earlier files ({c['dim']})")
        c["dim"] = int(vecs.shape[1])
        if any(k is None for k in keys):
            raise InputError(f"{mpath or vpath}: NULL values in key column {spec.key!r}")
        import pyarrow as pa

        kt = pa.table({"row": pa.array(range(len(keys)), pa.int64()), "k": pa.array([str(k) for k in keys], pa.string())})
        ws.con.register("_emb_keys", kt)
        try:
            matched = ws.q(
                f"SELECT k.row, s.sample_id FROM _emb_keys k JOIN samples s ON s.{spec.on} = k.k ORDER BY s.sample_id, k.row"
            )
            unmatched = ws.q(
                f"SELECT count(*), min(k.k) FROM _emb_keys k ANTI JOIN samples s ON s.{spec.on} = k.k"
            )[0]
        finally:
            ws.con.unregister("_emb_keys")
        if unmatched[0] and not spec.allow_unmatched:
            raise InputError(
                f"{vpath.name}: {unmatched[0]} of {len(keys)} keys ({spec.key!r}) match no sample's {spec.on} "
                f"(e.g. {unmatched[1]!r}); wrong key column or pair? set allow_unmatched: true to import a superset"
            )
        rows = np.fromiter((r for r, _ in matched), np.int64, len(matched))
        sids = np.fromiter((s for _, s in matched), np.int64, len(matched))
        # one key, two rows: the vectors must agree; each sample takes its key's first row
        first_row: dict[int, int] = {}
        keep = np.ones(len(sids), bool)
        for j, (r, s) in enumerate(zip(rows.tolist(), sids.tolist())):
            if s in first_row:
                if not np.array_equal(np.asarray(vecs[first_row[s]]), np.asarray(vecs[r])):
                    raise InputError(f"{vpath.name}: key {keys[r]!r} appears at rows {first_row[s]} and {r} "
                                     "with different vectors")
                keep[j] = False
            else:
                first_row[s] = r
        rows, sids = rows[keep], sids[keep]
        done = {r[0] for r in ws.q(
            "SELECT sample_id FROM embeddings WHERE model = ? AND sample_id IN (SELECT unnest(?))", [model, sids.tolist()])}
        if done:
            fresh = np.array([s not in done for s in sids.tolist()], bool)
            c["already_embedded"] += int((~fresh).sum())
            rows, sids = rows[fresh], sids[fresh]
        c["samples_sharing_a_key"] += int(len(sids) - len(set(rows.tolist())))
        order = np.argsort(rows, kind="stable")  # read the memory map front to back
        normed, ok = normalise(np.asarray(vecs[rows[order]], dtype=np.float32))
        good_sids, good_vecs = sids[order][ok], normed[ok]
        bad_sids = sids[order][~ok]
        bad_status = vector_status(np.asarray(vecs[rows[order][~ok]], dtype=np.float32)) if len(bad_sids) else []
        part = (list_parts(folder) or [-1])[-1] + 1
        if len(good_sids):
            srt = np.argsort(good_sids, kind="stable")
            write_part(folder, part, good_sids[srt], good_vecs[srt])
        with ws.transaction() as con:
            insert_rows(con, [(int(s), model, part, "ok") for s in good_sids]
                        + [(int(s), model, None, st) for s, st in zip(bad_sids, bad_status)])
            con.execute("INSERT INTO embedding_imports VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [model, uri, fp, len(keys), int(len(good_sids)), int(unmatched[0]), part if len(good_sids) else None])
        c["pairs"] += 1
        c["rows"] += len(keys)
        c["imported"] += int(len(good_sids))
        c["bad_vector"] += int(len(bad_sids))
        c["unmatched"] += int(unmatched[0])
        info(f"[embed] imported {len(good_sids)} vectors from {vpath.name} (+{mpath.name if mpath else 'npz keys'})")
    c["total_embedded"] = int(ws.scalar("SELECT count(*) FROM embeddings WHERE model = ? AND status = 'ok'", [model]))
    c["parts"] = len(list_parts(folder))
    return c
