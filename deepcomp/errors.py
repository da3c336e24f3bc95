"""The one exception type deepcomp raises for bad input."""


class DeepCompError(Exception):
    """Bad input: a missing or corrupt file, an unknown architecture, a bad option.

    The CLI catches it once and prints its message on one line.
    """
