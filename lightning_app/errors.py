"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from datamodules.errors import DataError


class ConfigError(ValueError):
    """A bad experiment name, config key, type or value."""


USER_ERRORS = (ConfigError, DataError)
