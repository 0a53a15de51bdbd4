"""The export stage (see :mod:`curate.stages.export.stage`)."""
from curate.stages.export.stage import inputs, run  # noqa: F401
