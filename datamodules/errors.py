"""The one error type the data layer raises for bad input.

The CLI turns it into a one-line message and exit code 2, so every message must name the
file, id, key or value at fault.
"""


class DataError(ValueError):
    """Bad or missing input data (a file, an id, a split)."""


class StorageError(DataError):
    """The disk is full or a folder is not writable: a whole job stops on it (one line).

    A subclass of DataError so the CLI prints it as one line with exit code 2; batch jobs
    that record a bad input file and go on must let this one through.
    """
