"""compare's oracle grid on the step clock (issue 20): fixed prune points in fractional epochs, each at a probe.

On the epoch clock the grid is whole epochs (1 .. the fallback epoch). On the step clock (`--epi-every N|auto`) a
run prunes at a probe step, so the grid's points are probes: of the N probes at or before the fallback (half the
schedule), n = min(GRID_POINTS, N) are taken, the k-th (k = 1..n) at probe ceil(N (k/n)^2), moved one probe later
where that would repeat the one before. Quadratic spacing: the first probe and the last one before the fallback are
always in it, and the points are densest early, where the oracle of issue 13's study found the best prune epochs
(1-2 of 12). Each point is the probe's time in epochs rounded down to 2 decimals (more where probes are closer
than 0.01 epochs), f, so that `--prune-at f` prunes at exactly that probe (the first probe at or after f): its
method name is `fixed-<f>`, e.g. fixed-2.66 for the probe at step 128 of 48-step epochs.
"""

from __future__ import annotations

import math
import re

from epiprune.errors import EpipruneError

GRID_POINTS = 12  # at most this many prune points on the step clock's default grid
_FIXED_NAME = re.compile(r"fixed-(\d+(\.\d+)?)")


def probes_before(epochs: float, every: int, steps_per_epoch: int) -> int:
    """How many probes (every `every` steps) fall at or before `epochs` epochs (the rule's comparison: step /
    steps_per_epoch >= epochs fires)."""
    count = int(epochs * steps_per_epoch) // every + 1
    while count > 0 and count * every / steps_per_epoch > epochs:
        count -= 1
    return count


def first_probe_at(epochs: float, every: int, steps_per_epoch: int) -> int:
    """The step of the first probe at or after `epochs` epochs: where --prune-at or the fallback fires."""
    count = max(1, probes_before(epochs, every, steps_per_epoch))
    return count * every if count * every / steps_per_epoch >= epochs else (count + 1) * every


def point_of(step: int, every: int, steps_per_epoch: int) -> float | int:
    """The probe at `step` as a prune point f (epochs): its time step / steps_per_epoch rounded down to 2 decimals
    (more where probes are closer than that), so that the first probe at or after f is `step`; an int when whole."""
    here, before = step / steps_per_epoch, (step - every) / steps_per_epoch
    if here.is_integer():
        return int(here)
    for digits in range(2, 12):
        f = math.floor(here * 10**digits) / 10**digits
        if before < f <= here:
            return f
    return here


def probe_grid(every: int, steps_per_epoch: int, max_dense: float, points: int = GRID_POINTS) -> list[float | int]:
    """The step clock's default grid (see the module's note): prune points in epochs, ascending, one per probe."""
    total = max(1, probes_before(max_dense, every, steps_per_epoch))
    n = min(points, total)
    picked: list[int] = []
    for k in range(1, n + 1):
        target = math.ceil(total * k * k / (n * n))
        picked.append(max(target, picked[-1] + 1) if picked else max(1, target))
    return [point_of(i * every, every, steps_per_epoch) for i in picked]


def point_text(value: float) -> str:
    """A prune point as a method name writes it: 3 for a whole epoch, 2.66 for a fraction."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def fixed_point(method: str) -> float | None:
    """The prune point a fixed-<point> method name says (fixed-3: 3.0, fixed-2.66: 2.66), None if it is no such
    name."""
    match = _FIXED_NAME.fullmatch(method)
    return float(match.group(1)) if match else None


def epoch_list(text: str) -> list[float | int]:
    """--grid: comma-separated prune points in epochs, whole ones as ints and ranges lo-hi of whole ones (1-6), or
    fractions (step clock: 0.5,1.25), each once and > 0."""
    accepted = "accepted: epochs > 0 like 1,2,5 or 1-6, fractions like 0.5,1.25 on the step clock, each once"
    values: list[float | int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            if sep:
                values += range(int(lo), int(hi) + 1) if int(hi) >= int(lo) else [-1]
            else:
                number = float(part)
                values.append(int(number) if number.is_integer() else number)
        except ValueError:
            raise EpipruneError(f"bad --grid {text!r} ({accepted})") from None
    if any(not (v > 0 and math.isfinite(v)) for v in values) or len(set(values)) != len(values):
        raise EpipruneError(f"bad --grid {text!r} ({accepted})")
    return values
