"""The ingest stage (see :mod:`curate.stages.ingest.stage`)."""
from curate.stages.ingest.stage import inputs, run  # noqa: F401
