"""Execution engines for the per-sample stages (hash, embed, the image classifiers of flag).

``local`` is the stages' own code (worker processes on this machine); ``ray`` is
:mod:`curate.engine.ray_engine` (Ray Data over parquet work shards, actor pools). A stage
picks one with its ``engine`` key (:class:`curate.config.EngineConfig`, CLI ``--engine``);
both compute every item with the same functions and the same batches, so they give the same
catalog rows and embedding parts. See docs/SCALE_OUT.md.
"""
