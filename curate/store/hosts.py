"""Host names compared the way a browser resolves them: IDNA / UTS #46, and invisible characters.

``bücher.de``, ``BÜCHER.de``, ``bücher.de.``, ``ｂüｃｈｅｒ．ｄｅ`` (full-width) and
``xn--bcher-kva.de`` are one host. :func:`normalise_host` maps each to the same ASCII form
(UTS #46 mapping, non-transitional — ``ß`` stays ``ß`` as browsers do since 2017 — then
Punycode per label, lower case, no trailing dot), so every host comparison (opt-out lists,
claim domains and URLs, rule-pack domain lists, against sample URLs) normalises **both sides**
with this one function. Labels that are not valid IDNA (``my_host``) keep their mapped, lower-case
form: they still compare equal to themselves.

In SQL the same function is the scalar function ``curate_host(VARCHAR)``, registered on every
catalog connection (:func:`register`); :func:`host_key_sql` calls it only for hosts that are not
plain ASCII (for ASCII, lower case without the trailing dot *is* the UTS #46 form), so matching
millions of ordinary URLs never leaves DuckDB. Sample URLs are stored as ingested (the manifest
keeps what the source said); the normalised host is computed where hosts are compared.

**Invisible characters** (zero-width space / joiners, soft hyphen, word joiner, BOM, bidi
controls, variation selectors, Hangul fillers — :data:`INVISIBLE`) make two hosts look alike
that are not: ingest rejects a URL whose host holds one (``invalid_url: invisible character
U+200B in the host: …``), a listed domain with one is refused, and for matching they are dropped
(an opt-out of ``bücher.de`` still removes ``bü\u200bcher.de``).
"""
from __future__ import annotations

import re

#: invisible code points (inclusive ranges): soft hyphen, combining grapheme joiner, Arabic letter
#: mark, Hangul fillers, Khmer inherent vowels, Mongolian selectors / vowel separator, zero-width
#: space / non-joiner / joiner, LRM / RLM, bidi embeddings and overrides, word joiner and invisible
#: operators, bidi isolates, deprecated format characters, variation selectors, BOM
INVISIBLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0),
)
_INVISIBLE_RE = re.compile("[" + "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in INVISIBLE) + "]")
#: RE2 character class of :data:`INVISIBLE` (DuckDB's regexp functions)
INVISIBLE_SQL_CLASS = "[" + "".join(f"\\x{{{a:04X}}}-\\x{{{b:04X}}}" for a, b in INVISIBLE) + "]"
UDF_NAME = "curate_host"


def invisible_char(s: str) -> str | None:
    """The first invisible character of ``s`` as ``U+XXXX``, None when there is none."""
    m = _INVISIBLE_RE.search(s)
    return None if m is None else f"U+{ord(m.group()):04X}"


def normalise_host(host: str) -> str:
    """A host name → its comparable ASCII form (module doc): ``cdn.BÜCHER.de.`` →
    ``cdn.xn--bcher-kva.de``. Invisible characters are dropped; never raises."""
    h = _INVISIBLE_RE.sub("", host)
    if h.isascii():
        return h.lower().rstrip(".")
    import idna

    try:
        h = idna.uts46_remap(h, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError):  # a code point UTS #46 disallows
        h = h.lower()
    labels = []
    for label in h.rstrip(".").split("."):
        if label.isascii():
            labels.append(label.lower())
            continue
        try:
            labels.append(idna.alabel(label).decode("ascii"))
        except (idna.IDNAError, UnicodeError, ValueError):
            labels.append(label)  # not valid IDNA: kept, mapped, so it still equals itself
    return ".".join(labels)


def register(con) -> None:
    """Register ``curate_host(VARCHAR) → VARCHAR`` (:func:`normalise_host`) on a DuckDB connection."""
    import duckdb

    try:
        con.create_function(UDF_NAME, normalise_host, ["VARCHAR"], "VARCHAR", side_effects=False)
    except duckdb.Error as e:  # already registered on this connection
        if "already" not in str(e).lower():
            raise


def host_key_sql(host: str) -> str:
    """SQL: the normalised form of the host expression ``host`` (:func:`normalise_host`); ASCII
    hosts in SQL, others through ``curate_host`` (the connection must have :func:`register`)."""
    return f"(CASE WHEN strlen({host}) = length({host}) THEN rtrim(lower({host}), '.') ELSE {UDF_NAME}({host}) END)"
