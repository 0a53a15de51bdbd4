"""The report stage: the self-contained HTML report.

The entry points are in :mod:`curate.stages.report.stage`. ``READS`` and ``WRITES`` name the
catalog tables it reads and writes: the stage runner derives the stage's upstream from them
(:func:`curate.stages.upstream`).
"""
from curate.stages.report.stage import inputs, run  # noqa: F401

READS: tuple[str, ...] = ('samples', 'images', 'clusters', 'containment', 'flags', 'decisions', 'rule_stats', 'category_stats',
                          'cluster_stats', 'caption_stats', 'dup_edges', 'claim_matches')
WRITES: tuple[str, ...] = ()
