"""The report stage (see :mod:`curate.stages.report.stage`)."""
from curate.stages.report.stage import inputs, run  # noqa: F401
