"""Errors the CLI reports in one line: bad input from the user (EpipruneError, exit code 2) and a failed collective
under torchrun (DistributedError, exit code 1)."""


class EpipruneError(ValueError):
    """Base class: the message names the bad value and what is accepted."""


class DistributedError(RuntimeError):
    """A collective failed: another rank died or the process group timed out (a runtime failure, exit 1)."""
