"""The one exception type users see: a clear message, exit code 2, no traceback."""


class MinnowError(Exception):
    """A problem with the user's input or artefacts, worded for the user (name the file, key or line)."""
