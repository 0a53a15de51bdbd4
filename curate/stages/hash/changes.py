"""Images whose file changed since they were hashed: found cheaply, checked, hashed again.

What is recorded: each ``images`` row keeps ``file_size`` (bytes) and ``file_mtime_ns`` (ns
since the epoch; NULL where the store keeps no modification time, e.g. fsspec's ``memory://``)
of the file its bytes were read from — the image file itself, the ``tar:`` shard, the
``parquet:`` / ``arrow:`` table (:func:`ref_file`) — taken *before* the bytes were read, so a
file rewritten while it was hashed is seen as changed next time. Both are NULL when there was
no file (status ``missing``) or the row was hashed before curate recorded them.

How a change is found, as make and rsync do: the current size and mtime of every such file
(:func:`load_current`, one ``stat`` per distinct file) against the recorded ones
(:data:`CHANGED_SQL`). A row is unchanged when its file is there with the recorded size and
mtime, or is still absent and the row says ``missing``. Every other row is *changed*:

- its file is there and the row has a sha256: the bytes are read again and hashed
  (:func:`forget_changed`); the same sha256 (a file touched, copied back, or a row recorded
  before these columns existed) only refreshes the recorded size and mtime, nothing is
  recomputed; another sha256 forgets the row, so the hash stage hashes it again;
- its file is gone (deleted), or came back / appeared after the row said ``missing``: the row
  is forgotten and hashed again (``missing`` in the first case, decoded in the second);
- its status is ``unreadable`` (the OS refused the file, e.g. its permissions): always changed,
  so it is tried again on every run (a file that cannot be read while it is re-checked is
  forgotten too, and the hash stage records it ``unreadable`` with the error).

The hash stage's input fingerprint is the digest of the current sizes and mtimes
(:func:`files_digest`), so a changed file makes ``curate run`` run the hash stage, and the
stage's new digest makes every stage after it run again (embed replaces the vectors of the
images whose sha256 changed). A change that keeps both size and mtime (a file rewritten and its
mtime set back) is not seen by this check: ``curate hash --force`` reads every file again.
"""
from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from typing import Any

from curate.media.images import read_ref
from curate.media.refs import parse_ref, ref_file_sql
from curate.store import fsio
from curate.store.catalog import Workspace


def ref_file(ref: str | None) -> str | None:
    """The file whose bytes an image reference reads (:func:`curate.media.images.read_ref`): the
    path or URI itself, the shard of a ``tar:`` reference, the table of a ``parquet:`` /
    ``arrow:`` one; None for ``missing:…`` or None. The same as
    :func:`curate.media.refs.ref_file_sql` in SQL."""
    return parse_ref(ref).file if ref else None


def stat_file(f: str) -> tuple[int, int | None] | None:
    """(size in bytes, mtime in ns or None) of a local path or a URI; None when there is no
    file there (absent, or a folder).

    Raises:
        OSError: the store refused (credentials, permissions); ValueError: unknown URI scheme.
    """
    if fsio.is_uri(f):
        st = fsio.stat(f)
        return None if st is None or st.is_dir else (int(st.size or 0), st.mtime_ns)
    try:
        s = os.stat(f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (s.st_size, s.st_mtime_ns) if stat_mod.S_ISREG(s.st_mode) else None


CURRENT_TABLE = "_hash_files"


def load_current(ws: Workspace) -> int:
    """Stat every file the samples' image references read, once each, into the temp table
    ``_hash_files`` (file, size, mtime_ns, present) of this connection. Returns how many files."""
    import pyarrow as pa

    files = [f for f, in ws.q(f"SELECT DISTINCT {ref_file_sql('image_ref')} AS f FROM samples "
                              "WHERE f IS NOT NULL ORDER BY f")]
    stats = [stat_file(f) for f in files]
    t = pa.table({
        "file": pa.array(files, pa.string()),
        "size": pa.array([s[0] if s else None for s in stats], pa.int64()),
        "mtime_ns": pa.array([s[1] if s else None for s in stats], pa.int64()),
        "present": pa.array([s is not None for s in stats], pa.bool_()),
    })
    ws.con.register("_hash_files_new", t)
    try:
        ws.con.execute(f"CREATE OR REPLACE TEMP TABLE {CURRENT_TABLE} AS SELECT * FROM _hash_files_new")
    finally:
        ws.con.unregister("_hash_files_new")
    return len(files)


def ensure_current(con) -> None:
    """An empty ``_hash_files`` when :func:`load_current` did not run on this connection (rows
    inserted then get no recorded size and mtime: checked by sha256 next time)."""
    con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {CURRENT_TABLE} "
                "(file VARCHAR, size BIGINT, mtime_ns BIGINT, present BOOLEAN)")


def files_digest(ws: Workspace) -> str:
    """sha256 hex of every (file, size, mtime) in ``_hash_files`` (:func:`load_current` first)."""
    h = hashlib.sha256()
    cur = ws.con.execute(f"SELECT file, size, mtime_ns FROM {CURRENT_TABLE} ORDER BY file")
    while True:
        rows = cur.fetchmany(65536)
        if not rows:
            break
        for r in rows:
            h.update(repr(r).encode())
    return h.hexdigest()


#: rows whose file differs from when they were hashed (module doc), after :func:`load_current`:
#: sample_id, image_ref, sha256, present (the file is there now), size, mtime_ns (now)
CHANGED_SQL = f"""
SELECT i.sample_id, s.image_ref, i.sha256, coalesce(f.present, false) AS present, f.size, f.mtime_ns
FROM {{images}} i JOIN samples s USING (sample_id) LEFT JOIN {CURRENT_TABLE} f ON f.file = {ref_file_sql('s.image_ref')}
WHERE NOT (
    (coalesce(f.present, false) AND i.file_size IS NOT DISTINCT FROM f.size
     AND i.file_mtime_ns IS NOT DISTINCT FROM f.mtime_ns AND i.file_size IS NOT NULL AND i.status <> 'unreadable')
    OR (NOT coalesce(f.present, false) AND i.file_size IS NULL AND i.status = 'missing')
)
ORDER BY i.sample_id
"""


def count_changed(ws: Workspace) -> int:
    """How many ``images`` rows' files differ (size, mtime, presence) from when they were
    hashed, or were never recorded (a catalog hashed by an older curate, also when opened
    read-only without its new columns: checked by sha256 on the next hash run). The cheap check
    only; :func:`forget_changed` reads the bytes."""
    load_current(ws)
    cols = {c for c, in ws.q("SELECT column_name FROM information_schema.columns WHERE table_name = 'images' "
                             "AND table_schema = 'main'")}
    images = "images" if set(FILE_COLUMNS) <= cols else \
        "(SELECT *, NULL::BIGINT AS file_size, NULL::BIGINT AS file_mtime_ns FROM images)"
    return int(ws.scalar(f"SELECT count(*) FROM ({CHANGED_SQL.format(images=images)})"))


def forget_changed(ws: Workspace) -> dict[str, Any]:
    """Forget the ``images`` rows whose file really changed (module doc), so the hash stage
    hashes them again; refresh the recorded size and mtime of those whose bytes did not change.
    :func:`load_current` must have run on this connection.

    Returns:
        ``rehashed_changed`` (rows forgotten: other bytes, file gone, or file back),
        ``rechecked_unchanged`` (rows whose file's size or mtime changed but not its sha256).
    """
    import pyarrow as pa

    forget: list[int] = []
    same: list[tuple[int, int, int | None]] = []
    cur = ws.con.execute(CHANGED_SQL.format(images="images"))
    rows = cur.fetchall()
    for sid, ref, sha, present, size, mtime in rows:
        if present and sha is not None:
            try:
                data = read_ref(ref)
            except OSError:  # unreadable now: forgotten, the hash stage records why
                data = None
            if data is not None and hashlib.sha256(data).hexdigest() == sha:
                same.append((sid, size, mtime))
                continue
        forget.append(sid)
    with ws.transaction() as con:
        if forget:
            con.execute("DELETE FROM images WHERE sample_id IN (SELECT unnest(?))", [forget])
        if same:
            t = pa.table({"sample_id": pa.array([s[0] for s in same], pa.int64()),
                          "size": pa.array([s[1] for s in same], pa.int64()),
                          "mtime_ns": pa.array([s[2] for s in same], pa.int64())})
            con.register("_hash_same", t)
            try:
                con.execute("UPDATE images SET file_size = t.size, file_mtime_ns = t.mtime_ns FROM _hash_same t "
                            "WHERE images.sample_id = t.sample_id")
            finally:
                con.unregister("_hash_same")
    return {"rehashed_changed": len(forget), "rechecked_unchanged": len(same)}


#: columns of ``images`` that record where the bytes came from, not what they are
FILE_COLUMNS = ("file_size", "file_mtime_ns")


def content_digest(ws: Workspace) -> str:
    """A digest of what the ``images`` table holds for the stages after hash (every column but
    :data:`FILE_COLUMNS`): the hash stage's ``output_digest`` counter, which the runner adds to
    the digests of the stages that read ``images`` (:func:`curate.stages.stage_digest`), so a
    forced re-hash that changed something makes them run again. Order-independent (XOR of
    DuckDB row hashes) plus the row count."""
    cols = [c for c, in ws.q("SELECT column_name FROM information_schema.columns WHERE table_name = 'images' "
                             "AND table_schema = 'main' ORDER BY ordinal_position") if c not in FILE_COLUMNS]
    n, x = ws.q(f"SELECT count(*), bit_xor(hash({', '.join(cols)})) FROM images")[0]
    return f"{int(n)}:{int(x or 0):016x}"
