"""Errors that mean bad input from the user. The CLI prints their one-line message and exits with code 2."""


class EpipruneError(ValueError):
    """Base class: the message names the bad value and what is accepted."""
