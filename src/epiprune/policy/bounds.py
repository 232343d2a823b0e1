"""The one place each of the policy's settings is range-checked. Callers name a setting their own way (the command
line by its flag, the library by its keyword's meaning), the bound and the message are the same:
`<name> <value> is too small (accepted: an integer >= <bound>[; note])`.

Used by TrainConfig.validate (before any folder or data is touched), TriggerRule, the policy and the EPI formula.
"""

from __future__ import annotations

from epiprune.errors import EpipruneError

LOWER_BOUNDS = {"window": 1, "peak": 0, "smooth": 1, "earlybird_queue": 1, "min_dense_epochs": 0, "prune_at": 0,
                "channel_multiple": 1, "min_channels": 1}
NOTES = {"peak": "; 0 turns it off", "smooth": "; 1 is none"}
# how the library's messages name each setting (the command line passes its flag instead)
NAMES = {"window": "EPI window", "peak": "EPI peak", "smooth": "EPI smoothing", "earlybird_queue": "Early-Bird queue",
         "min_dense_epochs": "min dense epochs", "prune_at": "prune-at epoch", "channel_multiple": "channel multiple",
         "min_channels": "min channels"}
EPI_AVERAGES = ("layer", "group")  # over layers (the paper: a group of k layers counts k times) or over groups


def check_at_least(setting: str, value: int | None, name: str | None = None) -> None:
    """Refuse an integer setting below its bound (None: not set, accepted)."""
    low = LOWER_BOUNDS[setting]
    if value is not None and value < low:
        shown = f"{value:g}" if isinstance(value, float) else value  # --min-dense-epochs -1 parses as -1.0
        raise EpipruneError(f"{name or NAMES[setting]} {shown} is too small (accepted: an integer >= {low}"
                            f"{NOTES.get(setting, '')})")


def check_threshold(value: float | None, name: str = "EPI threshold") -> None:
    """Refuse a threshold outside (0, 1] (None: the default, accepted)."""
    if value is not None and not 0 < value <= 1:
        raise EpipruneError(f"{name} {value} is outside (0, 1]")


def check_epi_average(value: str) -> None:
    if value not in EPI_AVERAGES:
        raise EpipruneError(f"unknown EPI average {value!r} (accepted: {', '.join(EPI_AVERAGES)})")
