"""The step clock: when the policy probes the dominant sub-network, counted in optimizer steps.

On the epoch clock the policy probes once per epoch (`end_epoch`). On the step clock it probes every `every`
optimizer steps from `step()`, with the Taylor importance of the probe's interval; times (the dense span, the
fallback, a fixed prune point) stay in epochs, fractional: step / steps_per_epoch.

The noise floor. Importance is estimated from a finite number of steps, so two sub-networks selected from the
same training moment differ by estimation noise alone. The clock keeps a snapshot of the accumulated importance
at the probe interval's half, so the policy can select one sub-network from each half and compare them: their
similarity is what EPI would read if the architecture did not move at all. The auto threshold is the running
mean of that similarity over the run's probes (issue 20's offline study: the per-probe value jumps by 0.01-0.015
between probes; its running mean does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from epiprune.errors import EpipruneError
from epiprune.policy.indicator import TriggerRule

AUTO = "auto"  # the threshold setting that asks for the noise-floor threshold


@dataclass
class StepClock:
    """every: optimizer steps between probes (>= 2: each probe needs two halves for its noise estimate);
    steps_per_epoch: optimizer steps of one epoch (converts steps to the rule's epochs)."""

    every: int
    steps_per_epoch: int
    step: int = 0  # optimizer steps seen by the policy
    half: list[np.ndarray] | None = None  # accumulated importance at the current interval's half
    noise: list[float] = field(default_factory=list)  # similarity of the two halves' sub-networks, per probe

    def __post_init__(self) -> None:
        for name, value, low in (("epi_every", self.every, 2), ("steps_per_epoch", self.steps_per_epoch, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise EpipruneError(f"{name} {value!r} is too small or not a whole number (accepted: an integer "
                                    f">= {low})")

    def tick(self) -> None:
        self.step += 1

    @property
    def at_half(self) -> bool:
        """The step that ends the first half of a probe interval (the snapshot is taken after it)."""
        return self.step % self.every == self.every // 2

    @property
    def at_probe(self) -> bool:
        return self.step % self.every == 0

    @property
    def epochs(self) -> float:
        """Training time so far in epochs (fractional)."""
        return self.step / self.steps_per_epoch

    @property
    def epoch(self) -> int:
        """The 1-based epoch the latest step belongs to."""
        return max(1, -(-self.step // self.steps_per_epoch))

    def threshold(self) -> float | None:
        """The auto threshold now: the running mean of the noise similarities seen so far (None before any)."""
        return float(np.mean(self.noise)) if self.noise else None

    def state_dict(self) -> dict:
        return {"every": self.every, "steps_per_epoch": self.steps_per_epoch, "step": self.step,
                "half": None if self.half is None else [np.asarray(h).tolist() for h in self.half],
                "noise": list(self.noise)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("every", "steps_per_epoch"):
            if state[key] != getattr(self, key):
                raise EpipruneError(f"policy state was made with {key} {state[key]}, this policy has "
                                    f"{getattr(self, key)} (accepted: the same step clock)")
        self.step, self.noise = state["step"], list(state["noise"])
        self.half = None if state["half"] is None else [np.asarray(h, dtype=np.float64) for h in state["half"]]


def cannot_fire_before_fallback(indicator: str, rule: TriggerRule, clock: StepClock | None, probes: int) -> str | None:
    """One line saying why `indicator` cannot fire before the rule's fallback, or None. probes: the probes it needs
    before its first decision (EPI: window + smoothing, the first window + 1 to be defined, then smooth values)."""
    if rule.prune_at is not None or rule.max_dense_epochs is None:
        return None
    earliest = float(probes) if clock is None else probes * clock.every / clock.steps_per_epoch
    if earliest <= rule.max_dense_epochs:
        return None
    unit = "epochs" if clock is None else f"probes of {clock.every} steps"
    when = "" if clock is None else f", until epoch {earliest:.2f}"
    return (f"{indicator} cannot fire before the fallback at epoch {rule.max_dense_epochs:g}: it needs {probes} "
            f"{unit} (window + smoothing){when}; the run will prune by fallback (accepted: --epi-every auto or a "
            "smaller --epi-window / --epi-smooth, or a later --max-dense-epochs)")
