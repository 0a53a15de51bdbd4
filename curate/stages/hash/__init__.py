"""The hash stage: sha256, decode status and pHash of every sample's image.

The entry points are in :mod:`curate.stages.hash.stage`. ``READS`` and ``WRITES`` name the
catalog tables it reads and writes: the stage runner derives the stage's upstream from them
(:func:`curate.stages.upstream`).
"""
from curate.stages.hash.stage import inputs, run  # noqa: F401

READS: tuple[str, ...] = ('samples',)
WRITES: tuple[str, ...] = ('images',)
