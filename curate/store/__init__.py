"""Storage layer: files and URIs (:mod:`~curate.store.fsio`), the DuckDB catalog
(:mod:`~curate.store.catalog`) and the embedding parts (:mod:`~curate.store.embeddings`)."""
