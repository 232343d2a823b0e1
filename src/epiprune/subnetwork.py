"""Dominant sub-network: the channels that would be kept if the network were pruned now to a budget.

Widths are per channel group (one group = channels that are kept or removed together, see surgery.py).
The cost of a width vector comes from a CostModel: per-layer dense costs scaled by the fraction of input and
output channels kept, which is exact for convolutions, linear layers and batch norms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EpipruneError

BUDGET_KINDS = ("flops", "params")


class BudgetError(EpipruneError):
    """A budget that cannot be parsed or met; the message is one line for the user."""


@dataclass(frozen=True)
class Budget:
    """Fraction of the dense model's FLOPs or parameters to keep, in (0, 1)."""

    kind: str = "flops"
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise BudgetError(f"unknown budget kind {self.kind!r} (accepted: {', '.join(BUDGET_KINDS)})")
        if not 0.0 < float(self.fraction) < 1.0:
            raise BudgetError(f"budget fraction {self.fraction} is outside (0, 1) (e.g. flops:0.5 keeps half)")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse 'flops:0.5' or 'params:0.4'."""
        kind, sep, value = text.partition(":")
        try:
            fraction = float(value)
        except ValueError:
            fraction = float("nan")
        if not sep or fraction != fraction:
            raise BudgetError(f"bad budget {text!r} (accepted: flops:F or params:F with 0 < F < 1)")
        return cls(kind.strip(), fraction)

    def __str__(self) -> str:
        return f"{self.kind}:{self.fraction:g}"


@dataclass
class CostModel:
    """cost(widths) = constant + sum_m coef[m] * r(out_group[m]) * r(in_group[m]), with r(g) = widths[g] /
    dense_widths[g] and r(-1) = 1 (a dimension no group controls, e.g. image channels or class logits).
    Units: FLOPs (multiply-accumulates plus elementwise ops, per sample) or parameter counts."""

    dense_widths: np.ndarray  # (G,) int
    coef: np.ndarray  # (M,) float
    out_group: np.ndarray  # (M,) int, -1 for none
    in_group: np.ndarray  # (M,) int, -1 for none
    constant: float

    def __call__(self, widths: np.ndarray) -> float:
        ratio = np.append(np.asarray(widths, dtype=np.float64) / self.dense_widths, 1.0)  # index -1 -> 1.0
        return float(self.constant + np.sum(self.coef * ratio[self.out_group] * ratio[self.in_group]))

    @property
    def dense(self) -> float:
        return self(self.dense_widths)


def normalise_per_group(scores: list[np.ndarray]) -> list[np.ndarray]:
    """Divide each group's scores by their mean, so that groups of different scale rank together."""
    return [s / (float(np.mean(s)) + 1e-12) if s.size else s for s in scores]


def select_subnetwork(scores: list[np.ndarray], cost: CostModel, target: float,
                      min_channels: int = 1) -> list[np.ndarray]:
    """Keep the globally most important channels whose cost fits `target` (same units as `cost`).

    scores: one 1-D array per group (already normalised), lengths = cost.dense_widths.
    Returns one boolean keep-mask per group; every group keeps at least `min_channels` (its best ones).
    Channels are dropped in ascending score until the cost fits (binary search over the drop count, the
    cost being monotone in every width), then the dropped channels are offered back, best first, wherever
    they still fit, so the cost ends just under the target.
    """
    if len(scores) != len(cost.dense_widths):
        raise ValueError(f"{len(scores)} score vectors for {len(cost.dense_widths)} groups")
    group_of = np.concatenate([np.full(len(s), g) for g, s in enumerate(scores)])
    channel_of = np.concatenate([np.arange(len(s)) for s in scores])
    flat = np.concatenate(scores).astype(np.float64)
    protected = np.zeros(len(flat), dtype=bool)
    offset = 0
    for s in scores:
        keep_best = np.argsort(-s, kind="stable")[:min_channels]
        protected[offset + keep_best] = True
        offset += len(s)
    order = np.argsort(flat, kind="stable")
    droppable = order[~protected[order]]  # ascending importance
    dense = np.asarray(cost.dense_widths, dtype=np.int64)

    def widths_after(k: int) -> np.ndarray:
        return dense - np.bincount(group_of[droppable[:k]], minlength=len(dense))

    if cost(widths_after(len(droppable))) > target:
        floor = cost(widths_after(len(droppable))) / cost.dense
        raise BudgetError(f"budget cannot be met: keeping {min_channels} channel(s) per layer already costs "
                          f"{floor:.3f} of the dense model (accepted: a larger budget fraction)")
    lo, hi = 0, len(droppable)  # smallest k with cost(widths_after(k)) <= target
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(widths_after(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    keep = np.ones(len(flat), dtype=bool)
    keep[droppable[:lo]] = False
    widths = widths_after(lo)
    for idx in droppable[:lo][::-1]:  # best dropped channels first
        g = group_of[idx]
        widths[g] += 1
        if cost(widths) <= target:
            keep[idx] = True
        else:
            widths[g] -= 1
    masks, offset = [], 0
    for s in scores:
        mask = np.zeros(len(s), dtype=bool)
        mask[channel_of[offset:offset + len(s)][keep[offset:offset + len(s)]]] = True
        masks.append(mask)
        offset += len(s)
    return masks


def widths_of(masks: list[np.ndarray]) -> list[int]:
    """Kept channels per group."""
    return [int(m.sum()) for m in masks]
