"""Hosts, registrable domains and canonical URLs, shared by rule packs and claims.

**Registrable domain** (eTLD+1): the public suffix plus one label, from the Public Suffix
List (https://publicsuffix.org/list/), private section included (so ``alice.github.io`` and
``bob.github.io`` are different registrants). The PSL snapshot shipped inside ``tldextract``
is used; nothing is fetched.

A listed domain (rule pack ``domain_list``, claim ``domains``, opt-out list) is reduced to its
registrable domain: listing ``www.example.co.uk`` or ``example.co.uk`` claims every host under
``example.co.uk`` (``cdn.example.co.uk``, ``img.cdn.example.co.uk``). A public suffix on its own
(``co.uk``, ``github.io``) is refused — it would claim every registrant under it.

**Hosts** are compared in their IDNA / UTS #46 form on both sides (:mod:`curate.store.hosts`):
``bücher.de``, ``BÜCHER.de.``, full-width ``ｂüｃｈｅｒ．ｄｅ`` and ``xn--bcher-kva.de`` are one host,
in listed domains, listed URLs and sample URLs alike; a listed domain holding an invisible
character (zero-width space, soft hyphen, bidi control, …) is refused.

**Canonical URL** (for URL lists): scheme and host normalised (host as above), user info, a trailing dot on
the host and the default port (``:80`` for http, ``:443`` for https) dropped, an empty path
written ``/`` (RFC 3986 §6.2.3), the fragment dropped; path and query are kept as they are (they are case-sensitive on most servers). The same SQL
expression canonicalises both sides of a comparison.
"""
from __future__ import annotations

import functools
import re

from curate.store.hosts import host_key_sql, invisible_char, normalise_host

_LABELS = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)+")


@functools.lru_cache(maxsize=1)
def _extractor():
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


def registrable_domain(host: str) -> str | None:
    """eTLD+1 of a host name (``cdn.example.co.uk`` → ``example.co.uk``), lower case.

    Returns None for IP addresses, single labels (``localhost``) and bare public suffixes.
    """
    r = _extractor()(host.strip().lower().rstrip("."))
    return r.top_domain_under_public_suffix or None


def normalise_domain(entry: str) -> str:
    """A listed domain → the registrable domain it stands for.

    Accepts ``example.co.uk``, ``www.example.co.uk``, ``EXAMPLE.co.uk.``, an IDN
    (``bücher.de`` → ``xn--bcher-kva.de``), or a URL whose host is taken (``https://x.com/a``).

    Raises:
        ValueError: not a domain name, or a public suffix on its own (``co.uk``), with the fix.
    """
    d = entry.strip()
    if "://" in d:
        d = d.split("://", 1)[1]
    d = d.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
    bad = invisible_char(d)
    if bad:
        raise ValueError(f"{entry!r} holds the invisible character {bad} (it would hide a different host); "
                         "retype the domain")
    d = normalise_host(d)
    if not _LABELS.fullmatch(d):
        raise ValueError(f"{entry!r} is not a domain name (write e.g. example.co.uk: no spaces, at least two labels)")
    reg = registrable_domain(d)
    if reg is None:
        raise ValueError(f"{entry!r} is a public suffix (publicsuffix.org), not a registrable domain: it would "
                         f"match every site under it; list the site's own domain, e.g. example.{d}")
    return reg


def raw_host_sql(url: str) -> str:
    """SQL expression: the host of the URL column ``url`` as written (no user info, no port)."""
    return f"regexp_extract({url}, '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/:?#]+)', 1)"


def domain_hits_sql(domains: list[str]) -> str:
    """SQL: ``SELECT sample_id, host, domain`` for every sample whose URL host is one of
    ``domains`` (already normalised by :func:`normalise_domain`) or a subdomain of it — one row
    per (sample, matching domain); ``host`` is the normalised host
    (:func:`curate.store.hosts.host_key_sql`). Used by rule packs' ``domain_list`` and by claims."""
    doms = ", ".join("('" + d.replace("'", "''") + "')" for d in domains)
    return (f"SELECT h.sample_id, h.host, d.domain FROM (SELECT sample_id, {host_key_sql('r.raw')} AS host FROM "
            f"(SELECT sample_id, {raw_host_sql('url')} AS raw FROM samples WHERE url IS NOT NULL) r) h "
            f"JOIN (VALUES {doms}) d(domain) ON h.host = d.domain OR suffix(h.host, '.' || d.domain)")


_URL_PARTS = r"(?s)^([A-Za-z][A-Za-z0-9+.-]*)://(?:[^@/?#]*@)?([^/?#:]*?)\.?(:[0-9]*)?([/?#].*)?$"


def canonical_url_sql(url: str) -> str:
    """SQL expression: canonical form of the URL column ``url`` (see module doc); NULL when
    it is not ``scheme://host…``."""
    x = f"regexp_extract({url}, '{_URL_PARTS}', ['scheme', 'host', 'port', 'rest'])"
    return (
        f"CASE WHEN regexp_matches({url}, '{_URL_PARTS}') AND {x}.host <> '' THEN "
        f"lower({x}.scheme) || '://' || {host_key_sql(x + '.host')} || "
        f"CASE WHEN ({x}.port = ':80' AND lower({x}.scheme) = 'http') OR ({x}.port = ':443' AND lower({x}.scheme) = 'https') "
        f"OR {x}.port = ':' THEN '' ELSE {x}.port END || "
        f"CASE WHEN starts_with({x}.rest, '/') THEN '' ELSE '/' END || regexp_replace({x}.rest, '#.*$', '', 's') END"
    )
