"""Early Pruning Indicator (Shen et al., CVPR 2022, eqs. 2-4) and the rule that turns it into a decision.

A width vector n = (n_1 .. n_L) lists the channels each layer keeps in a dominant sub-network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import EpipruneError

# Published thresholds (paper, section 4): tau for Taylor importance and for magnitude importance.
DEFAULT_THRESHOLDS = {"taylor": 0.944, "magnitude": 0.983, "random": 0.944}
DEFAULT_WINDOW = 3
# Early-Bird tickets (You et al., ICLR 2020): prune once the last r mask distances are all below epsilon = 0.1.
EARLYBIRD_EPSILON = 0.1
INDICATORS = ("epi", "earlybird", "none")


def default_threshold(indicator: str, importance: str) -> float:
    """The trigger threshold when none is given: 1 - epsilon for Early-Bird, else the paper's tau for the importance."""
    return 1.0 - EARLYBIRD_EPSILON if indicator == "earlybird" else DEFAULT_THRESHOLDS[importance]


def layer_distances(a: Sequence[int], b: Sequence[int]) -> np.ndarray:
    """d_l = |n_l(a) - n_l(b)| / (n_l(a) + n_l(b)), one value per layer, in [0, 1]."""
    na, nb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if na.shape != nb.shape:
        raise ValueError(f"width vectors differ in length: {na.shape} vs {nb.shape}")
    total = na + nb
    return np.divide(np.abs(na - nb), total, out=np.zeros_like(total), where=total > 0)


def structural_similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """Psi(N_a, N_b) = 1 - mean_l d_l(N_a, N_b); 1 for identical architectures."""
    return float(1.0 - layer_distances(a, b).mean())


def early_pruning_indicator(history: Sequence[Sequence[int]], window: int) -> float | None:
    """EPI_t = (1/r) sum_{j=1..r} Psi(N_t, N_{t-j}) for the last entry N_t of `history`; None until r
    earlier width vectors exist."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(history) < window + 1:
        return None
    current = history[-1]
    return float(np.mean([structural_similarity(current, history[-1 - j]) for j in range(1, window + 1)]))


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
    """Decide at the end of each dense epoch whether to prune now.

    threshold: tau; prune at the first epoch with EPI >= tau (and, with require_peak, EPI also the highest of
    the window so far). min_dense_epochs: never before this many dense epochs. max_dense_epochs: prune at this
    epoch anyway (trigger 'fallback') if EPI has not fired; None means no limit. prune_at: ignore EPI and prune
    after exactly this many dense epochs (trigger 'fixed').
    """

    window: int = DEFAULT_WINDOW
    threshold: float = DEFAULT_THRESHOLDS["taylor"]
    min_dense_epochs: int = 1
    max_dense_epochs: int | None = None
    prune_at: int | None = None
    require_peak: bool = False

    def __post_init__(self) -> None:
        if self.window < 1:
            raise EpipruneError(f"EPI window {self.window} must be >= 1")
        if not 0.0 < self.threshold <= 1.0:
            raise EpipruneError(f"EPI threshold {self.threshold} is outside (0, 1]")
        if self.min_dense_epochs < 0:
            raise EpipruneError(f"min dense epochs {self.min_dense_epochs} must be >= 0")
        if self.max_dense_epochs is not None and self.max_dense_epochs < max(1, self.min_dense_epochs):
            raise EpipruneError(f"max dense epochs {self.max_dense_epochs} must be >= min dense epochs "
                             f"{self.min_dense_epochs} and >= 1")
        if self.prune_at is not None and self.prune_at < 0:
            raise EpipruneError(f"prune-at epoch {self.prune_at} must be >= 0")

    def decide(self, epoch: int, epi_history: Sequence[float | None]) -> str | None:
        """epoch: dense epochs completed (1-based); epi_history: EPI after each of them (None where undefined).
        Returns 'fixed', 'epi' or 'fallback' to prune now, else None."""
        if self.prune_at is not None:
            return "fixed" if epoch >= self.prune_at else None
        epi = epi_history[-1] if epi_history else None
        if epoch >= self.min_dense_epochs and epi is not None and epi >= self.threshold:
            recent = [e for e in epi_history[-self.window - 1:] if e is not None]
            if not self.require_peak or epi >= max(recent):
                return "epi"
        if self.max_dense_epochs is not None and epoch >= self.max_dense_epochs:
            return "fallback"
        return None
