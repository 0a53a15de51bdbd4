"""The flag stage: rule packs, image classifiers, claims and opt-outs.

The entry points are in :mod:`curate.stages.flag.stage`. ``READS`` and ``WRITES`` name the
catalog tables it reads and writes: the stage runner derives the stage's upstream from them
(:func:`curate.stages.upstream`).
"""
from curate.stages.flag.stage import inputs, run  # noqa: F401

READS: tuple[str, ...] = ('samples', 'images', 'embeddings', 'clusters', 'dup_edges')
WRITES: tuple[str, ...] = ('flags', 'claims', 'claim_matches', 'image_scores', 'rule_stats', 'category_stats')
