"""Error classes. A :class:`QuantrieveError` is a problem the user can fix (a bad option, file,
config key or dataset): the command line prints its message as one line. Any other exception is
a bug and keeps its traceback."""

from __future__ import annotations


class QuantrieveError(Exception):
    """A problem with the user's input or files; the message says what and how to fix it."""


class OutputError(QuantrieveError):
    """An output path that cannot be written without losing something already there."""


class QuantrieveWarning(UserWarning):
    """Something the user should know about their data or run (shown by the command line)."""
