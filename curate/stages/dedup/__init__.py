"""The dedup stage (see :mod:`curate.stages.dedup.stage`)."""
from curate.stages.dedup.stage import inputs, run  # noqa: F401
