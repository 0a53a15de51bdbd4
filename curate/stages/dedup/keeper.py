"""The keeper rule: which member of a duplicate cluster stays in the manifest.

Dedup semantics (docs/ARCHITECTURE.md states them in full): samples are nodes; an edge
joins two samples with equal sha256, pHash Hamming distance ≤ r, embedding cosine ≥ t, or
(optionally) equal normalised caption. Clusters are the connected components. Exactly
one member of each cluster is the keeper; all others are removed as ``duplicate``.

The keeper is the first member under an ordered list of criteria (config
``dedup.keeper_rule``), each a SQL sort key, always ending with the smallest sample_id,
so the choice never depends on iteration or batch order:

- ``image_ok``     image decoded (status 'ok') and its bytes match the metadata's sha256 (when
                   there is one) before undecodable, missing or mismatched images
- ``not_flagged``  no ``remove`` flag before flagged
- ``has_caption``  non-empty caption first
- ``no_overlay``   no text watermark, logo or stamp drawn over the picture: a member that
                   :func:`curate.stages.dedup.fidelity.judge` finds adding detail in some cells
                   and losing it in none, against its cluster's aligned members at a common scale
                   (``copy_fidelity.overlay``), ranks after
- ``sharp``        not blurred: a member three quarters of whose textured cells, at the common
                   scale, hold at most :data:`~curate.stages.dedup.fidelity.SOFT_MAX_UPPER` of the
                   detail of the sharpest aligned members without an overlay (``copy_fidelity.soft``,
                   :func:`curate.stages.dedup.fidelity.judge`; a blurred copy, or a small one blown
                   up) ranks after. Judged after overlays: a watermark adds edges, so "sharper" alone
                   would prefer the watermarked copy. Both compare only members of one framing
                   (aligned at the common scale), so they come first: a containment judgement
                   below (the original read as a crop, or as holding an addition) must not hand the
                   cluster to a blurred or watermarked copy (on a 120-original cut of the copy-detection
                   benchmark, with them after ``no_border``, blurred copies still ranked above their
                   original in 26 of 117 clusters, where the original lost on ``no_additions`` or
                   ``whole_picture`` first; placed first, in 4)
- ``no_additions`` no text bars, caption strip, screenshot frame or collage around the picture: a
                   member that contains another member of its cluster inside an *addition*
                   (surround judged ``'addition'``: flat drawn surroundings, or a seam at the pasted
                   picture's edge) ranks after (flat padding is ``no_border``'s, a text watermark
                   drawn *over* the picture ``no_overlay``'s). Before ``colour``: a collage of a gray
                   picture gains colour from its other tiles
- ``colour``       full colour before grayscale before 1-bit: a 1-bit original mode ranks 0, a
                   colourfulness (Hasler & Süsstrunk 2003, on the pHash's 32×32 colour pixels,
                   :func:`curate.media.phash.colourfulness`) under :data:`GRAY_COLOURFULNESS`
                   ranks 1 (gray pixels score 0; JPEG chroma noise on a gray picture 0–2), the
                   rest 2. A grayscale or black-and-white copy is never kept over the colour picture.
- ``whole_picture`` the whole picture before a crop of it: a member that a member of its own
                   cluster contains (a ``containment`` row covering under
                   :data:`~curate.stages.dedup.surround.FULL_FRACTION` of the container's picture)
                   with *more of the picture* around it (surround judged ``'picture'`` by
                   :func:`curate.stages.dedup.surround.measure_surrounds`) ranks after
- ``no_border``    no added border: a member whose uniform edge bands (letterbox, padding,
                   frame; :func:`curate.media.phash.border_fraction`, 0–1 of the area) exceed
                   the cluster's smallest by more than :data:`BORDER_MARGIN` ranks after the
                   others (the margin absorbs the 1/32-px quantisation; copies without an added
                   border tie and fall through to ``pixels``)
- ``compression``  no visible JPEG compression: a JPEG whose estimated quality
                   (:func:`curate.media.jpeg.jpeg_quality`, ``images.jpeg_quality``) is under
                   :data:`COMPRESSED_BELOW` and more than :data:`QUALITY_MARGIN` under the
                   cluster's best ranks after; other formats count as 100 (lossless or not measured)
- ``pixels``       more decoded pixels (metadata width×height when not decoded)
- ``aesthetic``    higher LAION aesthetic score (unknown last)
- ``similarity``   higher CLIP image–text similarity (unknown last)
- ``smallest_id``  smaller sample_id
"""
from __future__ import annotations

from curate.stages.dedup.surround import in_cluster_sql

# the metadata's sha256 (img2dataset --verify_hash, DataComp, fondant) disagrees with the bytes;
# over ``samples s LEFT JOIN images i``
SHA_MISMATCH = (
    "coalesce(regexp_matches(trim(s.sha256_meta), '^[0-9A-Fa-f]{64}$') AND i.sha256 IS NOT NULL "
    "AND lower(trim(s.sha256_meta)) <> i.sha256, false)"
)

#: colourfulness below this is a gray picture (gray pixels: 0; measured JPEG chroma noise on gray: ≤ 2)
GRAY_COLOURFULNESS = 4
#: border fraction above the cluster's smallest by more than this is an added border (1/32 of a
#: side on one edge is ≈ 0.031 of the area)
BORDER_MARGIN = 0.05
#: JPEG qualities within this of the cluster's best tie (estimates move by a few points between
#: encoders' tables)
QUALITY_MARGIN = 10
#: an estimated JPEG quality under this is visibly compressed (blocking, ringing: libjpeg's default
#: is 75, web images are mostly 75–95). Above it, a higher figure is no evidence of a better copy:
#: re-encoding a q75 original at q95 gives the copy the higher figure and no detail back (measured on
#: the copy-detection benchmark, whose copies are saved at q95: ranking by the figure alone kept a
#: blurred copy over its q75 original in 28 of 119 clusters)
COMPRESSED_BELOW = 60

CRITERIA: dict[str, str] = {
    "image_ok": f"CAST(coalesce(i.status = 'ok', false) AND NOT {SHA_MISMATCH} AS INTEGER) DESC",
    "not_flagged": "CAST(f.sample_id IS NULL AS INTEGER) DESC",
    "has_caption": "CAST(coalesce(trim(s.caption) <> '', false) AS INTEGER) DESC",
    "colour": (f"CASE WHEN i.mode = '1' THEN 0 WHEN coalesce(i.colourfulness, 0) < {GRAY_COLOURFULNESS} THEN 1 "
               "ELSE 2 END DESC"),
    "no_border": f"CAST(coalesce(i.border, 0) <= b.border_min + {BORDER_MARGIN} AS INTEGER) DESC",
    "whole_picture": "CAST(kc.sample_id IS NULL AS INTEGER) DESC",
    "no_additions": "CAST(ka.sample_id IS NULL AS INTEGER) DESC",
    "no_overlay": "CAST(NOT coalesce(q.overlay, false) AS INTEGER) DESC",
    "sharp": "CAST(NOT coalesce(q.soft, false) AS INTEGER) DESC",
    "compression": (f"CAST(NOT (coalesce(i.jpeg_quality, 100) < {COMPRESSED_BELOW} "
                    f"AND coalesce(i.jpeg_quality, 100) < b.quality_max - {QUALITY_MARGIN}) AS INTEGER) DESC"),
    "pixels": "coalesce(CAST(i.width AS BIGINT) * i.height, CAST(s.width AS BIGINT) * s.height, 0) DESC",
    "aesthetic": "coalesce(s.aesthetic, -1e308) DESC",
    "similarity": "coalesce(s.similarity, -1e308) DESC",
    "smallest_id": "s.sample_id ASC",
}


def _inside_sql(members_table: str, side: str, surround: str) -> str:
    """The distinct ``side`` ids (``container_id`` or ``contained_id``) of the containment rows inside
    one cluster (:func:`curate.stages.dedup.surround.in_cluster_sql`) whose surround was judged
    ``surround`` ('picture' | 'addition', :func:`~curate.stages.dedup.surround.measure_surrounds`;
    rows never judged match neither)."""
    return f"""SELECT DISTINCT x.{side} AS sample_id FROM ({in_cluster_sql(members_table)}) x
        WHERE json_extract_string(x.region, '$.surround') = '{surround}'"""


def _value(expr: str) -> str:
    return expr.rsplit(" ", 1)[0]


def ranked_sql(rule: list[str], members_table: str, removal_flags: str | None) -> str:
    """SQL ranking every member of ``members_table`` (sample_id, cluster_id) in its cluster.

    Returns a query with columns sample_id, cluster_id, keeper_rank (1 = keeper) and
    keeper_reason (for rank 1: the first criterion on which it beats the runner-up).
    ``removal_flags`` is a table/subquery of sample_ids with a remove flag, or None. ``no_overlay``
    and ``sharp`` read ``copy_fidelity`` (:func:`curate.stages.dedup.fidelity.measure_fidelity`,
    run by the dedup stage on the same members); a member without a row there is neither.
    """
    flags = removal_flags or "(SELECT CAST(NULL AS BIGINT) AS sample_id WHERE false)"
    order = ", ".join(CRITERIA[c] for c in rule)
    vals = ", ".join(f"{_value(CRITERIA[c])} AS c{k}" for k, c in enumerate(rule))
    reason_cases = " ".join(
        f"WHEN r1.c{k} IS DISTINCT FROM r2.c{k} THEN '{c}'" for k, c in enumerate(rule)
    )
    return f"""
    WITH m AS (
        SELECT c.sample_id, c.cluster_id, {vals},
               row_number() OVER (PARTITION BY c.cluster_id ORDER BY {order}) AS keeper_rank
        FROM {members_table} c
        JOIN samples s ON s.sample_id = c.sample_id
        LEFT JOIN images i ON i.sample_id = c.sample_id
        LEFT JOIN (SELECT DISTINCT sample_id FROM {flags}) f ON f.sample_id = c.sample_id
        LEFT JOIN (SELECT c2.cluster_id, min(coalesce(i2.border, 0)) AS border_min,
                          max(coalesce(i2.jpeg_quality, 100)) AS quality_max FROM {members_table} c2
                   LEFT JOIN images i2 ON i2.sample_id = c2.sample_id GROUP BY c2.cluster_id) b
               ON b.cluster_id = c.cluster_id
        LEFT JOIN ({_inside_sql(members_table, "contained_id", "picture")}) kc ON kc.sample_id = c.sample_id
        LEFT JOIN ({_inside_sql(members_table, "container_id", "addition")}) ka ON ka.sample_id = c.sample_id
        LEFT JOIN copy_fidelity q ON q.sample_id = c.sample_id AND q.cluster_id = c.cluster_id
    )
    SELECT m.sample_id, m.cluster_id, m.keeper_rank,
           CASE WHEN m.keeper_rank = 1 THEN (
               SELECT CASE {reason_cases} ELSE 'smallest_id' END
               FROM m r1 JOIN m r2 ON r2.cluster_id = r1.cluster_id AND r2.keeper_rank = 2
               WHERE r1.sample_id = m.sample_id) END AS keeper_reason
    FROM m
    """
