"""The flag stage (see :mod:`curate.stages.flag.stage`)."""
from curate.stages.flag.stage import inputs, run  # noqa: F401
