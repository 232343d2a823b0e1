"""The closed loop of a latency budget: select from the table, measure the candidate, correct the selection.

The latency table predicts (open loop); a table built under another load, or whose calibration is off, picks a
sub-network that is much faster or slower than asked (issue 23: 19% and 29% of the FLOPs from two builds of one
table for latency:0.5). Here the candidate sub-network (a pruned copy of the model) is built and its step timed
against the dense model's, interleaved in one loop (dense, candidate, dense, candidate, ...; the median of the
pair ratios, so a load that comes and goes slows both sides of a pair alike; sequential: from `min_pairs` pairs on,
timing stops once the median's interval lies wholly inside or wholly outside the band, else it goes on up to `pairs`),
and the table's target is corrected until the measured ratio lies in [F - tolerance, F] of the budget F:

    first correction: next target = target * (F - tolerance / 2) / (measured ratio)

(the table's error at the candidate assumed to hold near it), then the secant through the two latest (target,
measured ratio) points, aiming at the band's middle; kept inside the bracket of the targets already measured too
slow and too fast (bisection when a step leaves it). The loop stops when the band is met; when the candidate is
below the band by less than the measurement's uncertainty, whose interval is wider than the band (a busy machine:
no other candidate could be told apart; within budget, it is kept); when the iteration or time cap is reached; when the
floor (the narrowest widths selection keeps) measures above F (unreachable); or when a new target selects a
sub-network already measured (the band falls between two adjacent selections). Without the band met it keeps the
measured candidate closest to F from below (else the fastest one).

Selection lives in the policy package, above costs: it is injected (`select_at(target_ms) -> keep masks`), as in
costs.calibration. So is the timing (`runner`), which tests replace by a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from epiprune.costs.calibration import pruned_copy
from epiprune.costs.model import Cost
from epiprune.costs.timing import PairedTiming, StepRunner, paired_ratio
from epiprune.errors import EpipruneError
from epiprune.surgery import PrunableGraph, TransformerGraph


@dataclass(frozen=True)
class ClosedLoopSettings:
    """Bounds of the loop. tolerance: the band is [F - tolerance, F] (fractions of the dense step). pairs: timed
    (dense, candidate) pairs per iteration at most; min_pairs: at least, after which timing stops as soon as the
    measured ratio's interval (median +- uncertainty) lies wholly inside the band or wholly outside it (more pairs
    would not change the iteration's decision; a steady machine needs min_pairs, a busy one up to pairs); warmup:
    untimed steps of each candidate (and of the dense model, once).
    max_iterations, max_seconds: the caps (seconds of wall time, the dense model's preparation included; an
    iteration is not started after the time cap, so a loop can end past it by up to one iteration)."""

    tolerance: float = 0.03
    pairs: int = 5
    min_pairs: int = 3
    warmup: int = 1
    max_iterations: int = 6
    max_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise EpipruneError(f"closed-loop tolerance {self.tolerance!r} is outside (0, 1)")
        for name, value, low in (("pairs", self.pairs, 1), ("warm-up", self.warmup, 0),
                                 ("iterations", self.max_iterations, 1), ("minimum pairs", self.min_pairs, 1)):
            if not isinstance(value, int) or value < low:
                raise EpipruneError(f"closed-loop {name} {value!r} is too small (accepted: an integer >= {low})")
        if self.min_pairs > self.pairs:
            raise EpipruneError(f"closed-loop minimum pairs {self.min_pairs} is above its pairs {self.pairs} "
                                "(accepted: min_pairs <= pairs)")
        if not self.max_seconds > 0:
            raise EpipruneError(f"closed-loop time cap {self.max_seconds!r} is not positive (accepted: seconds > 0)")


DEFAULT_LOOP = ClosedLoopSettings()


@dataclass
class Iteration:
    """One candidate: the table target it was selected at (ms), the table's prediction and the measured step as
    fractions of the dense step, its FLOPs as a fraction of the dense FLOPs, the medians (ms), the pair ratios'
    spread and the measured ratio's uncertainty (PairedTiming), seconds spent and how many pairs were timed."""

    target_ms: float
    predicted_ratio: float
    measured_ratio: float
    flops_ratio: float
    dense_ms: float
    candidate_ms: float
    spread: float
    seconds: float
    uncertainty: float = 0.0
    pairs: int = 0


@dataclass
class ClosedLoopResult:
    """The loop's outcome. masks: the chosen keep-mask per group. status: 'met' (measured ratio in the band),
    'noise' (below the band by less than its uncertainty, +- which spans more than the band), 'unreachable' (the floor
    measures above F), 'granularity' (no selection between two measured ones), 'iteration cap' or 'time cap'.
    message: one line saying so. chosen: index of the chosen iteration."""

    masks: list[np.ndarray]
    budget: float
    tolerance: float
    status: str
    message: str
    chosen: int
    iterations: list[Iteration] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def measured_ratio(self) -> float:
        return self.iterations[self.chosen].measured_ratio

    @property
    def resolved(self) -> bool:
        """Whether the chosen measurement's uncertainty is within the band's width (else the band is finer than
        what the pairs resolve: a loaded machine)."""
        return self.iterations[self.chosen].uncertainty <= self.tolerance

    def state_dict(self) -> dict:
        """Everything, as types a checkpoint loads with torch.load(weights_only=True): numbers as Python floats and
        ints, masks as bool tensors (a run resumed after the prune still reports its loop)."""
        return {"masks": [torch.as_tensor(np.asarray(m, dtype=bool)) for m in self.masks],
                "budget": float(self.budget), "tolerance": float(self.tolerance), "status": str(self.status),
                "message": str(self.message), "chosen": int(self.chosen), "seconds": float(self.seconds),
                "iterations": [{k: int(v) if k == "pairs" else float(v) for k, v in asdict(it).items()}
                               for it in self.iterations]}

    @classmethod
    def from_state_dict(cls, state: dict) -> ClosedLoopResult:
        """The result state_dict() described."""
        return cls([m.numpy().astype(bool) for m in state["masks"]], state["budget"], state["tolerance"],
                   state["status"], state["message"], state["chosen"],
                   [Iteration(**it) for it in state["iterations"]], state["seconds"])

    def record(self) -> dict:
        """Plain data for summary.json (masks left out: the run's widths say what was kept)."""
        return {"budget": self.budget, "band": [self.budget - self.tolerance, self.budget], "status": self.status,
                "message": self.message, "chosen": self.chosen, "measured_ratio": self.measured_ratio,
                "uncertainty": self.iterations[self.chosen].uncertainty, "resolved": self.resolved,
                "predicted_ratio_first": self.iterations[0].predicted_ratio,
                "measured_ratio_first": self.iterations[0].measured_ratio, "seconds": self.seconds,
                "iterations": [asdict(it) for it in self.iterations]}


def _key(masks: Sequence[np.ndarray]) -> tuple:
    return tuple(np.flatnonzero(m).tobytes() for m in masks)


def _next_target(points: Sequence[tuple[float, float]], aim: float, low: float | None, high: float | None,
                 floor_ms: float, dense_ms: float) -> float:
    """The next table target (ms) from the measured (table ms, measured ratio) points of the selections so far,
    latest last: with one
    point the rescaling target * aim / measured (the table's error taken to hold near it); with more, the secant
    through the two latest points of different targets (a measured ratio is about linear in the target near the
    band: a constant overhead the table misses makes a rescaling creep, a line does not). Bisection of the
    bracket (low: a target measured too fast, high: one measured too slow) when that step leaves it; always
    within [floor_ms, dense_ms]."""
    t1, m1 = points[-1]
    target = t1 * aim / m1
    earlier = [(t, m) for t, m in points[:-1] if t != t1 and m != m1]
    if earlier:
        t0, m0 = earlier[-1]
        target = t1 + (aim - m1) * (t1 - t0) / (m1 - m0)
    lo = floor_ms if low is None else low
    hi = dense_ms if high is None else high
    if not lo < target < hi and low is not None and high is not None:
        target = 0.5 * (lo + hi)
    return min(max(target, lo), hi)


def closed_loop(graph: PrunableGraph | TransformerGraph, cost: Cost, flops: Cost, fraction: float,
                select_at: Callable[[float], list[np.ndarray]], first: list[np.ndarray], floor_ms: float,
                runner: StepRunner, settings: ClosedLoopSettings = DEFAULT_LOOP,
                clock: Callable[[], float] = time.perf_counter) -> ClosedLoopResult:
    """Correct the table's selection for latency budget `fraction` (F) until graph.model's candidate measures
    within [F - tolerance, F] of the dense step (see the module's docstring).

    cost: the latency cost model (ms) the selection uses; flops: the FLOPs cost model (recorded per iteration).
    select_at(target_ms): keep masks (one boolean array per group) of the selection at that table target.
    first: the table's selection at F (what the open loop would prune); floor_ms: the table cost of the narrowest
    widths selection can return (targets below it are refused by selection). runner, clock: timing (injected by
    tests). graph.model itself is neither pruned nor trained: candidates are pruned copies."""
    if not 0 < fraction <= 1:
        raise EpipruneError(f"latency budget {fraction!r} is outside (0, 1]")
    start = clock()
    tol = settings.tolerance
    aim = fraction - tol / 2
    dense_run = runner(graph.model)
    for _ in range(settings.warmup):  # once: the dense model stays warm between iterations
        dense_run()
    low = high = None  # table targets measured too fast (below the band) / too slow (above F)
    target, masks = fraction * cost.dense, first
    iterations: list[Iteration] = []
    candidates: list[list[np.ndarray]] = []  # the masks of each iteration
    seen: dict[tuple, int] = {}
    status, message = "", ""
    while True:
        iterations.append(_measure(graph, masks, target, cost, flops, dense_run, runner, settings, fraction, clock))
        candidates.append(masks)
        seen[_key(masks)] = len(iterations) - 1
        it = iterations[-1]
        predicted_ms = it.predicted_ratio * cost.dense
        verdict = _verdict(it, fraction, settings, predicted_ms <= floor_ms * (1 + 1e-9), len(iterations),
                           clock() - start)
        if verdict is not None:
            status, message = verdict
            break
        if it.measured_ratio > fraction:  # the bracket, in the table's milliseconds of the measured selections
            high = predicted_ms if high is None else min(high, predicted_ms)
        else:
            low = predicted_ms if low is None else max(low, predicted_ms)
        target = _next_target([(it.predicted_ratio * cost.dense, it.measured_ratio) for it in iterations], aim,
                              low, high, floor_ms, cost.dense)
        masks = select_at(target)
        if _key(masks) in seen:  # a small correction: step past the selection it repeats, once
            again = iterations[seen[_key(masks)]]
            again_ms = again.predicted_ratio * cost.dense
            if again.measured_ratio > fraction:
                target = max(floor_ms, again_ms * (1 - 1e-9))  # selection then drops at least one block
            else:
                target = 0.5 * (again_ms + (cost.dense if high is None else high))
            masks = select_at(target)
        if _key(masks) in seen:
            status, message = "granularity", f"no selection between the measured ones meets [{fraction - tol:.2f}, " \
                f"{fraction:.2f}] (the next target selects iteration {seen[_key(masks)] + 1}'s sub-network again)"
            break
    chosen = _choose(iterations, fraction) if status not in ("met", "noise") else len(iterations) - 1
    return ClosedLoopResult(candidates[chosen], fraction, tol, status, message, chosen, iterations, clock() - start)


def _measure(graph: PrunableGraph | TransformerGraph, masks: list[np.ndarray], target: float, cost: Cost, flops: Cost,
             dense_run: Callable[[], float], runner: StepRunner, settings: ClosedLoopSettings, fraction: float,
             clock: Callable[[], float]) -> Iteration:
    """One iteration's measurement: the candidate `masks` keep (selected at table target `target`, ms), built,
    warmed up and timed against the (warm) dense step, sequentially (see ClosedLoopSettings)."""
    began = clock()
    widths = np.asarray([int(m.sum()) for m in masks])
    candidate = pruned_copy(graph, [np.flatnonzero(m) for m in masks])  # alive until timed, as before the split
    candidate_run = runner(candidate)
    for _ in range(settings.warmup):
        candidate_run()
    low = fraction - settings.tolerance
    timing = paired_ratio(dense_run, candidate_run, settings.pairs, warmup=0, min_pairs=settings.min_pairs,
                          settled=lambda t: _settled(t, low, fraction))
    return Iteration(target, cost(widths) / cost.dense, timing.ratio, flops(widths) / flops.dense, timing.dense_ms,
                     timing.candidate_ms, timing.spread, clock() - began, timing.uncertainty, timing.pairs)


def _verdict(it: Iteration, fraction: float, settings: ClosedLoopSettings, at_floor: bool, done: int,
             elapsed: float) -> tuple[str, str] | None:
    """(status, one-line message) when the loop stops after iteration `it` (the `done`-th, `elapsed` seconds into
    the loop), else None: met; noise (below the band by less than the measurement's uncertainty u, with 2u wider
    than the band: no further candidate could be told apart from this one, and it is within budget);
    unreachable (the floor measures above F); the iteration cap; the time cap (checked before an iteration
    starts: a loop can end past it by one iteration; a cap that also refused an iteration that would end past it
    missed the band in 4 of 4 loops measured under load, 3 of them over budget: the iteration it refuses is the
    one that corrects the table's pick)."""
    tol, measured = settings.tolerance, it.measured_ratio
    band = f"[{fraction - tol:.2f}, {fraction:.2f}]"
    if fraction - tol <= measured <= fraction:
        return "met", f"measured {measured:.3f} of the dense step, in {band}"
    if measured < fraction - tol <= measured + it.uncertainty and it.uncertainty > tol / 2:
        return "noise", f"measured {measured:.3f} +- {it.uncertainty:.3f} of the dense step, below {band} by less " \
            "than the machine's noise (wider than the band): kept, within budget"
    if measured > fraction and at_floor:
        return "unreachable", f"latency budget {fraction:g} cannot be met as measured: the narrowest sub-network " \
            f"selection keeps (its floor of channels per layer) takes {measured:.3f} of the dense step"
    if done >= settings.max_iterations:
        return "iteration cap", f"stopped after {done} iterations (the cap) without meeting {band}"
    if elapsed >= settings.max_seconds:
        return "time cap", f"stopped after {elapsed:.1f} s (the cap, {settings.max_seconds:g} s) without meeting {band}"
    return None


def _settled(timing: PairedTiming, low: float, high: float) -> bool:
    """Whether the measured ratio's interval (median +- uncertainty) lies wholly inside [low, high] (met) or wholly
    outside it (to be corrected either way): more pairs would not change the decision."""
    below, above = timing.ratio - timing.uncertainty, timing.ratio + timing.uncertainty
    return below > high or above < low or (low <= below and above <= high)


def _choose(iterations: Sequence[Iteration], fraction: float) -> int:
    """The measured candidate closest to F from below; none below F: the fastest."""
    below = [i for i, it in enumerate(iterations) if it.measured_ratio <= fraction]
    if below:
        return max(below, key=lambda i: iterations[i].measured_ratio)
    return min(range(len(iterations)), key=lambda i: iterations[i].measured_ratio)

