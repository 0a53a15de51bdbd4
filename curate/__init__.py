"""curate: prepare and audit image–text training sets for text-to-image diffusion models.

The pipeline (see docs/ARCHITECTURE.md)::

    ingest -> hash -> embed -> dedup -> flag -> export -> report

Every stage reads and writes one DuckDB catalog in a workspace directory, is idempotent
(re-running it with the same configuration and inputs does nothing) and resumable.

Heavy libraries (torch, faiss, open_clip, sentence-transformers) are imported lazily inside the
stages that need them, so ``import curate`` and ``curate --help`` stay fast.
"""

__version__ = "0.1.0"

from curate.errors import CurateError  # noqa: F401  (re-export)
