"""Replaying recorded importance through a policy: the decisions it would have taken along a dense trajectory.

A pruned run branched from a recorded dense run (`epiprune train --branch-from`) asks its own policy where it would
have pruned, from the scores the dense run recorded, instead of training the shared dense span again. On the epoch
clock a probe is an epoch's end; on the step clock a probe is a step, and its record holds the Taylor scores of the
probe interval and of its first half (the noise floor's two halves), so the policy decides exactly as step() did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from epiprune.errors import EpipruneError

if TYPE_CHECKING:
    from epiprune.policy.early_pruning import EarlyPruningPolicy


@dataclass
class RecordedProbe:
    """One probe of a recorded dense run on the step clock."""

    step: int  # optimizer steps at the probe
    scores: list[np.ndarray]  # the importance of the probe interval, one array per group
    half: list[np.ndarray] | None  # the importance of the interval's first half (None: no gradient importance)


def replay_epochs(policy: EarlyPruningPolicy, recorded: Sequence[Sequence[np.ndarray]],
                  before_prune: Callable[[int], torch.optim.Optimizer | None]) -> int | None:
    """EarlyPruningPolicy.replay on the epoch clock (see there)."""
    if policy.clock is not None:
        raise EpipruneError("replay decides on the epoch clock (accepted: a policy with epi_every=0, or "
                            "replay_probes on the step clock)")
    for scores in recorded:
        policy.epoch += 1
        decision, masks = policy._observe(scores)
        if decision is not None:
            policy._prune(masks, before_prune(policy.epoch), decision)
            return policy.epoch
    return None


def replay_probes(policy: EarlyPruningPolicy, probes: Sequence[RecordedProbe],
                  before_prune: Callable[[int], None]) -> int | None:
    """EarlyPruningPolicy.replay_probes on the step clock (see there)."""
    clock = policy.clock
    if clock is None:
        raise EpipruneError("replay_probes decides on the step clock (accepted: a policy with epi_every >= 2, or "
                            "replay on the epoch clock)")
    if policy.pruned or policy.history or clock.step:
        raise EpipruneError("replay_probes starts from a fresh policy (accepted: a policy that has seen no step)")
    for k, probe in enumerate(probes, 1):
        if probe.step != k * clock.every:
            raise EpipruneError(f"recorded probe {k} is at step {probe.step}, this policy probes every {clock.every} "
                                f"steps (accepted: probes recorded with the same --epi-every)")
        clock.step = probe.step
        clock.half = None if probe.half is None else [np.asarray(h, dtype=np.float64) for h in probe.half]
        decision, masks = policy._observe([np.asarray(s, dtype=np.float64) for s in probe.scores])
        if decision is not None:
            clock.step = probe.step - 1  # the probe step itself is trained again: step() ticks to it and prunes
            policy._pending = (masks, decision)
            before_prune(probe.step)
            return probe.step
    return None
