"""Errors a user can act on: the CLI prints them as one line and exits with code 2."""


class NightjarError(Exception):
    """A problem with the user's input, files or configuration (not a bug)."""

    exit_code = 2


class ConfigError(NightjarError):
    """The configuration file or an override is invalid."""


class ModelFileError(NightjarError):
    """A model file is missing, unreadable or not a usable GGUF."""
