"""The one error type the data layer raises for bad input.

The CLI turns it into a one-line message and exit code 2, so every message must name the
file, id, key or value at fault.
"""


class DataError(ValueError):
    """Bad or missing input data (a file, an id, a split)."""
