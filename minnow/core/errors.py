"""The exceptions users see: a clear message naming the file, key, line or path, and an exit code; no traceback."""


class MinnowError(Exception):
    """A problem with the user's input or artefacts, worded for the user (name the file, key or line). Exit 2."""

    exit_code = 2


class EnvironmentFault(MinnowError):
    """The machine, not the input: disk full, read-only or forbidden path, port in use, out of memory. Exit 3.

    The message says what happened and what to do about it.
    """

    exit_code = 3
