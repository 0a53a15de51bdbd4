"""The dedup stage: duplicate edges, clusters and one keeper per cluster.

The entry points are in :mod:`curate.stages.dedup.stage`. ``READS`` and ``WRITES`` name the
catalog tables it reads and writes: the stage runner derives the stage's upstream from them
(:func:`curate.stages.upstream`).
"""
from curate.stages.dedup.stage import inputs, run  # noqa: F401

READS: tuple[str, ...] = ('sources', 'samples', 'images', 'embeddings', 'image_text')
WRITES: tuple[str, ...] = ('dup_edges', 'clusters', 'cluster_stats', 'caption_stats', 'containment',
                           'copy_fidelity')
