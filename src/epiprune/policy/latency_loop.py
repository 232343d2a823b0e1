"""The closed loop of a latency budget as the policy runs it at the prune (costs.closed_loop does the work).

EarlyPruningPolicy holds one LatencyLoop when its budget is a latency budget and `latency_closed_loop` is on; just
before the surgery it hands over the table's selection and gets back the masks the loop measured. The loop runs on
rank 0 only (timings differ between processes), every rank prunes and records rank 0's result, and rank 0 alone
prints its line. It forks the RNG: the timed
steps' random batches must not move the run's random stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from epiprune import distributed
from epiprune.costs.calibration import takes_token_ids
from epiprune.costs.closed_loop import (
    DEFAULT_LOOP,
    ClosedLoopResult,
    ClosedLoopSettings,
    closed_loop,
)
from epiprune.costs.counting import counting_cost_models
from epiprune.costs.model import Cost
from epiprune.costs.timing import LatencySettings, StepRunner, step_runner
from epiprune.policy.subnetwork import floor_widths
from epiprune.surgery import PrunableGraph, TransformerGraph


class LatencyLoop:
    """Measure-and-correct for one policy. graph / cost: the policy's (cost in table milliseconds); fraction: the
    budget F; min_channels, channel_multiple: the selection's floor; settings: what a step is (the table's
    LatencySettings); runner: how a model's step is timed (default: costs.closed_loop.step_runner). After
    correct(), `result` holds the loop's record (None before)."""

    def __init__(self, graph: PrunableGraph | TransformerGraph, cost: Cost, fraction: float, min_channels: int,
                 channel_multiple: int, settings: LatencySettings, log: Callable[[str], None] = print,
                 loop: ClosedLoopSettings = DEFAULT_LOOP, runner: StepRunner | None = None) -> None:
        self.graph, self.cost, self.fraction, self.log, self.loop = graph, cost, fraction, log, loop
        self.flops = counting_cost_models(graph)["flops"]
        self.floor_ms = cost(floor_widths(cost.dense_widths, min_channels, channel_multiple,
                                          [g.blocks for g in graph.groups]))
        self.runner = runner or step_runner(tuple(graph.example_inputs.shape[1:]), settings, takes_token_ids(graph))
        self.result: ClosedLoopResult | None = None

    def correct(self, masks: Sequence[np.ndarray], select_at: Callable[[float], list[np.ndarray]]
                ) -> list[np.ndarray]:
        """The keep masks to prune: `masks` (the table's selection at the budget) corrected by measurement;
        select_at(target_ms) selects at another table target from the same scores. Rank 0 logs one line."""
        result = None
        if distributed.is_main():
            device = self.graph.example_inputs.device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                result = closed_loop(self.graph, self.cost, self.flops, self.fraction, select_at, list(masks),
                                     self.floor_ms, self.runner, self.loop)
        self.result = distributed.gather_to_all(result)[0]  # type: ignore[assignment]
        assert self.result is not None
        r, first = self.result, self.result.iterations[0]
        if not distributed.is_main():  # one loop, reported once (every rank keeps the record)
            return [np.asarray(m, dtype=bool) for m in r.masks]
        self.log(f"latency closed loop: {r.status}, {len(r.iterations)} iteration(s) in {r.seconds:.1f} s: "
                 f"measured {r.measured_ratio:.3f} of the dense step (budget {self.fraction:g}, table's first "
                 f"pick measured {first.measured_ratio:.3f}, predicted {first.predicted_ratio:.3f}); "
                 f"FLOPs {r.iterations[r.chosen].flops_ratio:.3f}" + ("" if r.status == "met" else f"; {r.message}")
                 + ("" if r.resolved else f"; measurement uncertainty +-{r.iterations[r.chosen].uncertainty:.3f} is "
                    f"wider than the band ({r.tolerance:g}): the machine is busy"))
        return [np.asarray(m, dtype=bool) for m in r.masks]

    def state_dict(self) -> dict | None:
        """The loop's record for a checkpoint (None before the prune); weights_only-safe types."""
        return None if self.result is None else self.result.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        """Restore what state_dict() saved: a run resumed after the prune still has its loop's record."""
        self.result = None if state is None else ClosedLoopResult.from_state_dict(state)
