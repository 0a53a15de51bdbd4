"""Errors raised by curate. The CLI turns each into one clear message and exit code 1."""


class CurateError(Exception):
    """A user-facing error: the message says what is wrong and what to do next."""


class ConfigError(CurateError):
    """A configuration, rule pack or schema file is invalid (message names file and line)."""


class InputError(CurateError):
    """An input file cannot be used as a whole (per-row problems become rejects instead)."""


class DiskFullError(CurateError):
    """A write failed because the disk (or the user's quota, or the file-size limit) is full;
    nothing half-written is left behind, and the message says where and how much is needed."""


class NotWritableError(CurateError):
    """The workspace (or a folder curate must write) is read-only or not writable by this user."""
