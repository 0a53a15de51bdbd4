"""The hash stage (see :mod:`curate.stages.hash.stage`)."""
from curate.stages.hash.stage import inputs, run  # noqa: F401
