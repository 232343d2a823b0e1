"""Cost models: what sub-network selection needs of a cost (the `Cost` protocol) and the linear per-layer model of
FLOPs and parameters (`CostModel`, built by costs.counting). The latency model is costs.latency_model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Cost(Protocol):
    """What sub-network selection needs of a cost model: cost(widths) monotone in every width, the dense widths
    (G,) and the dense model's cost (any unit: FLOPs, parameters, milliseconds)."""

    dense_widths: np.ndarray

    def __call__(self, widths: np.ndarray) -> float: ...

    @property
    def dense(self) -> float: ...


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
