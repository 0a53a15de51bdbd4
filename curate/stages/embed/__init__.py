"""The embed stage (see :mod:`curate.stages.embed.stage`)."""
from curate.stages.embed.stage import inputs, run  # noqa: F401
