"""Caption duplication and template captions, per sample (table ``caption_stats``).

Why: memorisation concentrates on duplicated training data, and for text-to-image models the
caption is half of it. Somepalli et al. (NeurIPS 2023, "Understanding and Mitigating Copying in
Diffusion Models", arXiv 2305.20086) show that duplicated captions raise replication even when the images
differ; Webster (2023, "A reproducible extraction of training images from diffusion models")
finds "template verbatims": captions that share a fixed template and differ in a few tokens,
whose generations copy the template's image layout. Both are counted here; nothing is removed
(``dedup.caption_exact`` turns equal captions into duplicate edges when wanted).

Definitions (SQL over ``samples`` in :func:`compute`):

- **normalised caption** = NFC, lower-case, whitespace runs collapsed, trimmed; NULL and blank
  captions have none.
- **caption group**: samples with the same normalised caption. ``caption_count`` = its size;
  ``caption_images`` = distinct images in it (by sha256 when hashed, else by URL) — one caption
  text over many different images is a *caption duplicate*, not an image duplicate.
- **template**: the caption with every digit run replaced by ``#`` and every capitalised word
  after the first replaced by ``@`` (names, places, brands), then normalised; e.g. "Photo of
  John Smith in 1999" and "Photo of Ann Lee in 2004" share ``photo of @ @ in #``.
  ``template_count`` = samples with the template; ``template_variants`` = distinct normalised
  captions among them (≥ 2 means captions that differ only in numbers or names).

- **long captions** (over :data:`KEY_CHARS` characters, e.g. a 100 MB caption): compared by an
  md5 of the whole caption lower-cased (no NFC, whitespace as is), never by their text, and
  each is its own template; so the statistics' memory and time are bounded by the number of
  captions, not by their length. ``long_captions`` counts them.

Groups are formed on :data:`KEY_SQL` (a 128-bit md5 of the normalised caption), never on the
text itself; the counters show at most :data:`SHOWN_CHARS` characters of a caption, with its
full length in ``caption_chars``.

Columns of ``caption_stats``: sample_id BIGINT, caption_group BIGINT (smallest sample_id of the
group), caption_count INTEGER ≥ 1, caption_images INTEGER ≥ 1, template_group BIGINT,
template_count INTEGER ≥ 1, template_variants INTEGER ≥ 1. Samples without a caption have no row.
"""
from __future__ import annotations

from typing import Any

NORM_SQL = "lower(trim(regexp_replace(nfc_normalize(caption), '\\s+', ' ', 'g')))"
#: ``caption`` without leading and trailing whitespace, as Python's ``str.strip()`` removes it
#: (DuckDB's ``trim`` strips spaces only: a scraped caption keeps its ``\r\n``)
STRIP_SQL = "regexp_replace(caption, '^[\\s\\x0b\\x1c-\\x1f\\x{85}\\p{Z}]+|[\\s\\x0b\\x1c-\\x1f\\x{85}\\p{Z}]+$', '', 'g')"
_FIRST = "regexp_extract(trim(nfc_normalize(caption)), '^\\S*')"
_REST = f"substr(trim(nfc_normalize(caption)), length({_FIRST}) + 1)"
TEMPLATE_SQL = (
    f"lower(trim(regexp_replace(regexp_replace({_FIRST}, '[0-9]+', '#', 'g') || "
    f"regexp_replace(regexp_replace({_REST}, '[0-9]+', '#', 'g'), '(^|[\\s(\\[\"/])\\p{{Lu}}[\\p{{L}}\\p{{N}}''’.-]*', '\\1@', 'g'), "
    "'\\s+', ' ', 'g')))"
)

#: captions longer than this (characters) are compared by a hash of the whole text, not normalised
KEY_CHARS = 4096
#: characters of a caption shown in counters (``top_captions``)
SHOWN_CHARS = 200
#: the caption's group key, UHUGEINT: md5 of :data:`NORM_SQL` (md5 of the lower-cased text for long captions)
KEY_SQL = f"(CASE WHEN length(caption) <= {KEY_CHARS} THEN md5_number({NORM_SQL}) ELSE md5_number(lower(caption)) END)"
#: the caption's template key, UHUGEINT (a long caption is its own template)
TEMPLATE_KEY_SQL = f"(CASE WHEN length(caption) <= {KEY_CHARS} THEN md5_number({TEMPLATE_SQL}) ELSE {KEY_SQL} END)"


def compute(ws) -> dict[str, Any]:
    """Rebuild ``caption_stats`` from ``samples`` (and ``images`` for image identity).

    Returns counters: captioned, caption_groups_repeated (groups of ≥ 2 samples),
    samples_with_repeated_caption, caption_groups_many_images (one caption over ≥ 2 different
    images), templates_with_variants (templates with ≥ 2 distinct captions),
    samples_in_template_groups, long_captions (compared by hash, see the module doc),
    top_captions (10 largest groups: caption (normalised, at most SHOWN_CHARS characters and
    '…' when cut), caption_chars (its full length), samples, images).
    """
    con = ws.con
    con.execute("DELETE FROM caption_stats")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _cap AS
        SELECT s.sample_id, {KEY_SQL.replace('caption', 's.caption')} AS norm,
               {TEMPLATE_KEY_SQL.replace('caption', 's.caption')} AS tmpl,
               md5_number(coalesce(i.sha256, s.url, CAST(s.sample_id AS VARCHAR))) AS img,
               {NORM_SQL.replace('caption', f'left(s.caption, {2 * SHOWN_CHARS})')} AS shown,
               length(s.caption) AS chars
        FROM samples s LEFT JOIN images i USING (sample_id)
        WHERE s.caption IS NOT NULL AND {STRIP_SQL.replace('caption', 's.caption')} <> ''"""
    )
    con.execute(
        """INSERT INTO caption_stats
        SELECT sample_id,
               min(sample_id) OVER (PARTITION BY norm), count(*) OVER (PARTITION BY norm),
               count(DISTINCT img) OVER (PARTITION BY norm),
               min(sample_id) OVER (PARTITION BY tmpl), count(*) OVER (PARTITION BY tmpl),
               count(DISTINCT norm) OVER (PARTITION BY tmpl)
        FROM _cap"""
    )
    top = ws.q(
        """SELECT arg_min(c.shown, c.sample_id), arg_min(c.chars, c.sample_id), count(*) AS n, count(DISTINCT c.img)
           FROM _cap c GROUP BY c.norm HAVING n > 1 ORDER BY n DESC, arg_min(c.shown, c.sample_id), min(c.sample_id)
           LIMIT 10"""
    )
    long = int(ws.scalar(f"SELECT count(*) FROM _cap WHERE chars > {KEY_CHARS}"))
    con.execute("DROP TABLE _cap")
    r = ws.q(
        """SELECT count(*),
                  count(DISTINCT caption_group) FILTER (caption_count > 1),
                  count(*) FILTER (caption_count > 1),
                  count(DISTINCT caption_group) FILTER (caption_images > 1),
                  count(DISTINCT template_group) FILTER (template_variants > 1),
                  count(*) FILTER (template_variants > 1)
           FROM caption_stats"""
    )[0]
    keys = ["captioned", "caption_groups_repeated", "samples_with_repeated_caption", "caption_groups_many_images",
            "templates_with_variants", "samples_in_template_groups"]
    out: dict[str, Any] = {k: int(v or 0) for k, v in zip(keys, r)}
    out["long_captions"] = long
    out["top_captions"] = [{"caption": c[:SHOWN_CHARS] + ("…" if len(c) > SHOWN_CHARS or k > 2 * SHOWN_CHARS else ""),
                            "caption_chars": int(k), "samples": int(n), "images": int(m)} for c, k, n, m in top]
    return out
