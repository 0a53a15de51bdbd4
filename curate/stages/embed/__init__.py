"""The embed stage: image (and caption) embeddings of every decodable image, as parts beside the catalog.

The entry points are in :mod:`curate.stages.embed.stage`. ``READS`` and ``WRITES`` name the
catalog tables it reads and writes: the stage runner derives the stage's upstream from them
(:func:`curate.stages.upstream`).
"""
from curate.stages.embed.stage import inputs, run  # noqa: F401

READS: tuple[str, ...] = ('samples', 'images')
WRITES: tuple[str, ...] = ('embeddings', 'image_text', 'embedding_imports')
