"""Early Pruning Indicator (Shen et al., CVPR 2022, eqs. 2-4) and the rule that turns it into a decision.

A width vector n = (n_1 .. n_L) lists the channels each layer keeps in a dominant sub-network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from epiprune.errors import EpipruneError
from epiprune.policy.bounds import check_at_least, check_threshold
from epiprune.policy.importance import IMPORTANCES, TAYLOR_TAU, Importance
from epiprune.registry import Registry

DEFAULT_WINDOW = 3
# Early-Bird tickets (You et al., ICLR 2020): prune once the last 5 distances between successive channel masks
# (BN |gamma|, a fixed channel ratio) are all below epsilon = 0.1. 'earlybird-budget' is this project's earlier
# variant: masks of the budget's dominant sub-network under the run's importance, over the EPI window, <= epsilon.
EARLYBIRD_EPSILON = 0.1
EARLYBIRD_QUEUE = 5


@dataclass(frozen=True)
class Indicator:
    """When to prune, as data the policy reads: which recorded similarity the trigger rule compares with the
    threshold, how, and what the trigger is called when it fires. Register a new one in INDICATORS (or pass an
    instance to EarlyPruningPolicy).

    signal: 'epi' (EPI of the dominant sub-networks' widths) or 'earlybird' (1 - the largest recent distance
    between successive channel masks). prunes: False tracks the signals and never prunes (the dense reference).
    strict: '>' instead of '>=' (Early-Bird's distance < epsilon). smoothed: the rule's moving mean applies.
    bn_masks: masks of BN |gamma| over a queue of --earlybird-queue distances (Early-Bird as published) instead of
    the budget's sub-network over the EPI window. threshold: fixed default threshold; None: the importance's own.
    trigger: the name a decision of this indicator records ('fixed' and 'fallback' are the rule's own)."""

    name: str
    signal: str = "epi"
    prunes: bool = True
    strict: bool = False
    smoothed: bool = True
    bn_masks: bool = False
    threshold: float | None = None
    trigger: str = "epi"

    def __post_init__(self) -> None:
        if self.signal not in ("epi", "earlybird"):
            raise EpipruneError(f"indicator {self.name!r}: unknown signal {self.signal!r} (accepted: epi, earlybird)")

    def default_threshold(self, importance: Importance | type) -> float:
        """The threshold when none is given: the indicator's own, else the importance's (the paper's tau)."""
        return self.threshold if self.threshold is not None else float(importance.default_threshold)


INDICATORS: Registry[Indicator] = Registry("indicator")
for _indicator in (Indicator("epi"),
                   Indicator("earlybird", signal="earlybird", strict=True, smoothed=False, bn_masks=True,
                             threshold=1.0 - EARLYBIRD_EPSILON, trigger="earlybird"),
                   Indicator("earlybird-budget", signal="earlybird", smoothed=False, threshold=1.0 - EARLYBIRD_EPSILON,
                             trigger="earlybird"),
                   Indicator("none", prunes=False)):
    INDICATORS.register(_indicator.name, _indicator)


def default_threshold(indicator: str, importance: str) -> float:
    """The trigger threshold when none is given, by registered names: 1 - epsilon for Early-Bird, else the paper's
    tau for the importance."""
    return INDICATORS.get(indicator).default_threshold(IMPORTANCES.get(importance))


def layer_distances(a: Sequence[int], b: Sequence[int]) -> np.ndarray:
    """d_l = |n_l(a) - n_l(b)| / (n_l(a) + n_l(b)), one value per layer, in [0, 1]."""
    na, nb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if na.shape != nb.shape:
        raise ValueError(f"width vectors differ in length: {na.shape} vs {nb.shape}")
    # widths are channel counts >= 0: a total of 0 means both are 0 (distance 0), any other total is >= 1
    return np.abs(na - nb) / np.maximum(na + nb, 1.0)


def structural_similarity(a: Sequence[int], b: Sequence[int], weights: Sequence[float] | None = None) -> float:
    """Psi(N_a, N_b) = 1 - mean_l d_l(N_a, N_b); 1 for identical architectures. `weights` (one per entry of the
    width vectors, e.g. the number of layers a channel group spans) turn the mean into a weighted mean."""
    d = layer_distances(a, b)
    if weights is None:
        return float(1.0 - d.mean())
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != d.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {d.shape[0]} non-negative numbers, not all 0")
    return float(1.0 - (w * d).sum() / w.sum())


def early_pruning_indicator(history: Sequence[Sequence[int]], window: int,
                            weights: Sequence[float] | None = None) -> float | None:
    """EPI_t = (1/r) sum_{j=1..r} Psi(N_t, N_{t-j}) for the last entry N_t of `history`; None until r
    earlier width vectors exist. `weights`: see structural_similarity (None: every entry counts once)."""
    check_at_least("window", window)
    if len(history) < window + 1:
        return None
    current = history[-1]
    return float(np.mean([structural_similarity(current, history[-1 - j], weights) for j in range(1, window + 1)]))


def mask_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised Hamming distance between two channel keep-masks (concatenated over groups), in [0, 1]."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in length: {a.shape} vs {b.shape}")
    return float(np.mean(a != b)) if a.size else 0.0


def earlybird_stability(masks: Sequence[np.ndarray], window: int) -> float | None:
    """1 - max of the last r distances between successive masks (Early-Bird's FIFO test as a similarity, so that
    'stable' means 'at least 1 - epsilon', like EPI). None until r distances exist."""
    if len(masks) < window + 1:
        return None
    return 1.0 - max(mask_distance(masks[-1 - j], masks[-2 - j]) for j in range(window))


@dataclass
class TriggerRule:
    """Decide at each probe (the end of a dense epoch on the epoch clock, every N steps on the step clock) whether
    to prune now. Times are in epochs: whole on the epoch clock, fractional (steps / steps per epoch) on the step
    clock.

    threshold: tau; prune at the first probe with EPI >= tau (and, with require_peak, EPI also the highest of
    the window so far); None: the threshold is given per probe (decide's `thresholds`, the auto threshold).
    peak: also require EPI_t > EPI_{t-j} for j = 1..peak (the paper's peak condition, where those are defined).
    smooth: compare the mean of the last `smooth` EPI values with tau (with per-probe thresholds: with the mean of
    the last `smooth` thresholds) instead of EPI_t alone. strict: '>' instead of '>=' (Early-Bird's distance <
    epsilon). min_dense_epochs: never before this time. max_dense_epochs: prune at this time anyway (trigger
    'fallback') if EPI has not fired; None means no limit. prune_at: ignore EPI and prune at the first probe at or
    after this time (trigger 'fixed').
    """

    window: int = DEFAULT_WINDOW
    threshold: float | None = TAYLOR_TAU
    min_dense_epochs: float = 1
    max_dense_epochs: float | None = None
    prune_at: float | None = None
    require_peak: bool = False
    peak: int = 0
    smooth: int = 1
    strict: bool = False

    def __post_init__(self) -> None:
        for setting in ("window", "min_dense_epochs", "prune_at", "peak", "smooth"):
            check_at_least(setting, getattr(self, setting))
        check_threshold(self.threshold)
        if self.max_dense_epochs is not None and (self.max_dense_epochs < self.min_dense_epochs
                                                  or self.max_dense_epochs <= 0):
            raise EpipruneError(f"max dense epochs {self.max_dense_epochs:g} must be >= min dense epochs "
                                f"{self.min_dense_epochs:g} and > 0")

    def decide(self, epoch: float, epi_history: Sequence[float | None],
               thresholds: Sequence[float | None] | None = None) -> str | None:
        """epoch: dense epochs completed (fractional on the step clock); epi_history: EPI at each probe so far
        (None where undefined); thresholds: the threshold of each probe (needed when the rule has none of its own;
        None entries: not yet known). Returns 'fixed', 'epi' or 'fallback' to prune now, else None."""
        if self.prune_at is not None:
            return "fixed" if epoch >= self.prune_at else None
        epi, tau = self.compared(epi_history, thresholds)
        if epoch >= self.min_dense_epochs and epi is not None and tau is not None and (
                epi > tau if self.strict else epi >= tau):
            recent = [e for e in epi_history[-self.window - 1:] if e is not None]
            earlier = [e for e in epi_history[-self.peak - 1:-1] if e is not None] if self.peak else []
            if (not self.require_peak or epi_history[-1] >= max(recent)) and all(epi_history[-1] > e for e in earlier):
                return "epi"
        if self.max_dense_epochs is not None and epoch >= self.max_dense_epochs:
            return "fallback"
        return None

    def compared(self, epi_history: Sequence[float | None],
                 thresholds: Sequence[float | None] | None = None) -> tuple[float | None, float | None]:
        """(the value the rule compares, the threshold it compares it with) after the last probe of epi_history:
        both smoothed alike; None where not yet defined."""
        tau = self.threshold if self.threshold is not None else self._smoothed(thresholds or [])
        return self._smoothed(epi_history), tau

    def _smoothed(self, values: Sequence[float | None]) -> float | None:
        """The mean of the last `smooth` values; None while one of them is undefined."""
        last = values[-self.smooth:]
        if len(last) < self.smooth or not last or None in last:
            return None
        return float(np.mean(last))
