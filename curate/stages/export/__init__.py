"""The export stage: decisions, the manifest, removal lists, summary and shards.

The entry points are in :mod:`curate.stages.export.stage`. ``READS`` and ``WRITES`` name the
catalog tables it reads and writes: the stage runner derives the stage's upstream from them
(:func:`curate.stages.upstream`).
"""
from curate.stages.export.stage import inputs, run  # noqa: F401

READS: tuple[str, ...] = ('sources', 'samples', 'rejects', 'images', 'clusters', 'cluster_stats', 'caption_stats', 'dup_edges', 'flags', 'claims', 'claim_matches', 'rule_stats', 'category_stats')
WRITES: tuple[str, ...] = ('decisions',)
