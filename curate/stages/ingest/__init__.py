"""The ingest stage: metadata and image references in: every input row becomes a sample or a reject.

The stage's modules, in pipeline order:

- :mod:`~curate.stages.ingest.schemas`: the known metadata layouts and column matching;
- :mod:`~curate.stages.ingest.units`: what each source expands into (files, shards, folders)
  and their fingerprints;
- :mod:`~curate.stages.ingest.readers`: each format (parquet/Arrow batches, TSV, webdataset
  shards, image folders, img2dataset companions) read into tables of rows;
- :mod:`~curate.stages.ingest.normalise`: rows → canonical ``samples`` columns (casts, notes,
  rejects), in SQL;
- :mod:`~curate.stages.ingest.load`: one unit into the catalog, per format;
- :mod:`~curate.stages.ingest.stage`: the entry points (``run``, ``inputs``): which units to
  ingest, skip or remove, and the stage's counters.

``READS`` and ``WRITES`` name the catalog tables it reads and writes: the stage runner derives
the stage's upstream from them (:func:`curate.stages.upstream`).
"""
from curate.stages.ingest.stage import inputs, run  # noqa: F401

READS: tuple[str, ...] = ()
WRITES: tuple[str, ...] = ('sources', 'samples', 'rejects')
