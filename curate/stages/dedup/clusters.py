"""The duplicate clusters: connected components of the duplicate edges, and the per-cluster
statistics (``cluster_stats``) of what joined each cluster.
"""
from __future__ import annotations

import numpy as np

from curate.media import captions
from curate.store.catalog import Workspace


def components(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph with edges (a[k], b[k]) over node ids.

    Args:
        ids: int64 (n,) all node ids appearing in a or b (any order).
        a, b: int64 (m,) edge endpoints (ids, not indices).

    Returns:
        (node ids int64 (n',), cluster id int64 (n',)) for nodes in components of size ≥ 2;
        the cluster id is the smallest member id, so it does not depend on edge order.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([a, b])) if len(a) else np.zeros(0, np.int64)
    if nodes.size == 0:
        return nodes, nodes
    ai, bi = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    g = coo_matrix((np.ones(len(ai), np.int8), (ai, bi)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(g, directed=False)
    # smallest member id per label: nodes are sorted, so the first occurrence is the minimum
    first = np.full(labels.max() + 1, -1, np.int64)
    order = np.arange(len(nodes))[::-1]
    first[labels[order]] = nodes[order]
    return nodes, first[labels]


def cluster_statistics(ws: Workspace) -> None:
    """Rebuild ``cluster_stats``: one row per cluster with what joined it.

    Columns: cluster_id, cluster_size, keeper_sample_id, signals VARCHAR[] (sorted),
    edges_sha256 / edges_phash / edges_phash_mirror / edges_embedding / edges_caption (edge
    counts), max_phash_bits (largest Hamming distance of a ``phash`` or ``phash_mirror`` edge,
    bits 0–64, NULL without one), min_cosine (smallest cosine of an embedding edge, NULL
    without one), distinct_urls, distinct_captions (normalised), sources (distinct source names).
    """
    ws.con.execute("DELETE FROM cluster_stats")
    ws.con.execute(
        f"""INSERT INTO cluster_stats (cluster_id, cluster_size, keeper_sample_id, signals, edges_sha256,
            edges_phash, edges_embedding, edges_caption, max_phash_bits, min_cosine, distinct_urls,
            distinct_captions, sources, edges_phash_mirror)
        WITH e AS (
            SELECT c.cluster_id,
                   count(*) FILTER (e.signal = 'sha256') AS n_sha, count(*) FILTER (e.signal = 'phash') AS n_ph,
                   count(*) FILTER (e.signal = 'embedding') AS n_emb, count(*) FILTER (e.signal = 'caption') AS n_cap,
                   count(*) FILTER (e.signal = 'phash_mirror') AS n_phm,
                   max(e.distance) FILTER (e.signal IN ('phash', 'phash_mirror')) AS max_bits,
                   1 - max(e.distance) FILTER (e.signal = 'embedding') AS min_cos,
                   list_sort(list(DISTINCT e.signal)) AS signals
            FROM dup_edges e JOIN clusters c ON c.sample_id = e.a GROUP BY c.cluster_id
        ), m AS (
            SELECT c.cluster_id, any_value(c.cluster_size) AS size,
                   min(c.sample_id) FILTER (c.is_keeper) AS keeper,
                   count(DISTINCT s.url) AS urls,
                   count(DISTINCT {captions.KEY_SQL.replace('caption', 's.caption')}) AS caps,
                   count(DISTINCT o.name) AS sources
            FROM clusters c JOIN samples s USING (sample_id) JOIN sources o USING (source_id)
            GROUP BY c.cluster_id
        )
        SELECT m.cluster_id, m.size, m.keeper, e.signals, e.n_sha, e.n_ph, e.n_emb, e.n_cap,
               CAST(e.max_bits AS INTEGER), e.min_cos, m.urls, m.caps, m.sources, e.n_phm
        FROM m JOIN e USING (cluster_id)"""
    )
