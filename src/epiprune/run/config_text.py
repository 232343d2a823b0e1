"""Setting values as text and as JSON: option text parsed into a field's value (`--epi-threshold`, `--seeds`-like
integer lists) and a JSON value checked against a field's type annotation (`train --config FILE`)."""

from __future__ import annotations

import types
import typing
from typing import Any

from epiprune.costs.timing import check_noise_limit
from epiprune.errors import EpipruneError
from epiprune.policy.clock import AUTO

NOISE_LIMIT_OPTION = "--latency-noise-limit"


def parse_threshold(text: str) -> float | str:
    """--epi-threshold: a number, or 'auto'."""
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise EpipruneError(f"--epi-threshold {text!r} is not a number (accepted: a threshold in (0, 1], or "
                            "auto)") from None


def parse_noise_limit(text: str) -> float:
    """--latency-noise-limit: a number > 0 (a fraction, the largest spread of a table build's timings), else one
    EpipruneError line naming the text and what is accepted."""
    try:
        value: object = float(text)
    except ValueError:
        value = text
    return check_noise_limit(value, NOISE_LIMIT_OPTION)


def parse_epochs(text: str) -> int | float:
    """--prune-at: a number of epochs, a whole one as an int (fractions: the step clock)."""
    try:
        number = float(text)
    except ValueError:
        raise EpipruneError(f"--prune-at {text!r} is not a number of epochs (accepted: e.g. 2, or 1.5 on the step "
                            "clock)") from None
    return int(number) if number.is_integer() else number


def int_list(text: str, what: str) -> list[int]:
    """Parse `--seeds` / `--grid` / `--keep-checkpoints` text: comma-separated integers >= 0 and ranges lo-hi
    (lo <= hi), each once."""
    values: list[int] = []
    accepted = "accepted: integers >= 0 like 1,2,5 or 1-6, each once"
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise EpipruneError(f"bad --{what} {text!r} ({accepted})") from None
        if last < first:
            raise EpipruneError(f"bad --{what} {text!r}: {part} is an empty range ({accepted})")
        values += range(first, last + 1)
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise EpipruneError(f"bad --{what} {text!r} ({accepted})")
    return values


def base_types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """(the plain types a field's annotation allows, whether None is allowed)."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    plain = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    return plain, type(None) in args


def fits(value: Any, annotation: Any) -> bool:
    plain, optional = base_types(annotation)
    if value is None:
        return optional
    if isinstance(value, bool):
        return bool in plain
    if float in plain and isinstance(value, int):
        return True
    if list in plain and isinstance(value, list):
        members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
        item = typing.get_args(next(a for a in members if typing.get_origin(a) is list))
        return all(isinstance(v, item[0]) and not isinstance(v, bool) for v in value) if item else True
    return isinstance(value, plain)
