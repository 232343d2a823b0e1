"""Latency cost model: the time of a width vector, predicted from per-layer tables measured on the device.

HALP-style (Shen et al., NeurIPS 2022): every conv (dense or depthwise), linear and batch-norm layer (the registered
kinds of costs.layer_kinds) is timed on its own, at its input size, on a grid of channel counts (every channel for
narrow layers, about `grid_points` steps for wide ones; costs.latency_table); a layer's time at any width is read
from its table (the next grid point up on axes that resolve the kernels' channel blocks, linear interpolation on
coarser ones: see latency_table.BLOCK). A table is made monotone (its lower envelope along each channel axis), so
the predicted cost of a width vector,

    latency(w) = constant + layer_scale * sum over layers T_layer(in channels, out channels) + tail * V(w),

is monotone in every width, as sub-network selection requires. V(w) in [0, 1] is the fraction of the dense
model's activation volume (elements per sample of the groups' outputs) that w keeps: the memory-bound tail that
no single layer owns (ReLUs, residual adds, pooling, the optimizer's elementwise work). The three coefficients
(>= 0) are measured, not guessed (costs.calibration): the whole model's step is timed dense, pruned uniformly to
60% and 30% of every group, and at two uneven sub-networks of the kind selection picks, and a non-negative
least-squares fit maps the layer sum onto those five timings. layer_scale is there because a layer timed alone is
not a layer inside a network (on a 2-core CPU the isolated layers of a ResNet-20 summed to 1.5x its measured step:
caches, allocator and thread wake-ups differ). What is timed, and how: costs.timing; building and reusing tables:
costs.latency_build.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from epiprune.costs.latency_table import BLOCK, LatencyTable, LatencyTableError, TimedLayer


def monotone(ms: np.ndarray) -> np.ndarray:
    """A measured table made non-decreasing in every channel count: each entry becomes the minimum over the entries
    at or above it on each axis. Noise on a timing only ever adds time, so the lower envelope is the estimate
    (a running maximum would spread one slow outlier to every wider point)."""
    for axis in range(ms.ndim):
        ms = np.flip(np.minimum.accumulate(np.flip(ms, axis), axis=axis), axis)
    return ms


def _bracket(axis: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each x: the grid indices (lo, hi) around it and its weight t on hi (x clamped to the axis' range).
    On a block-resolving axis (gaps <= BLOCK) t is 0 or 1: the next grid point at or above x."""
    if len(axis) == 1:
        zero = np.zeros(len(x), dtype=np.int64)
        return zero, zero, np.zeros(len(x))
    x = np.clip(x, axis[0], axis[-1])
    hi = np.clip(np.searchsorted(axis, x), 1, len(axis) - 1)
    if np.max(np.diff(axis)) <= BLOCK:
        return hi - 1, hi, (x > axis[hi - 1]).astype(np.float64)
    return hi - 1, hi, (x - axis[hi - 1]) / (axis[hi] - axis[hi - 1])


def interpolate(axes: Sequence[Sequence[float]], ms: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Read a table on a grid (axes ascending) at `points` (K, number of axes) channel counts, clamped to the
    grid's range: per axis the next grid point at or above (block-resolving axes, see BLOCK) or linear
    interpolation (wider gaps), combined bilinearly for two axes. Returns (K,) values."""
    table = np.asarray(ms, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64).reshape(-1, len(axes))
    brackets = [_bracket(np.asarray(ax, dtype=np.float64), points[:, d]) for d, ax in enumerate(axes)]
    if len(axes) == 1:
        lo, hi, t = brackets[0]
        return (1 - t) * table[lo] + t * table[hi]
    (lo0, hi0, t0), (lo1, hi1, t1) = brackets
    return ((1 - t0) * ((1 - t1) * table[lo0, lo1] + t1 * table[lo0, hi1])
            + t0 * ((1 - t1) * table[hi0, lo1] + t1 * table[hi0, hi1]))


class LatencyCostModel:
    """cost(widths) in milliseconds: constant + layer_scale * (sum of the layers' interpolated table values)
    + tail * V(widths), all three coefficients >= 0.
    The same interface as costs.model.CostModel (the Cost protocol: callable on a width vector, `dense`,
    `dense_widths`)."""

    def __init__(self, layers: Sequence[TimedLayer], table: LatencyTable, dense_widths: Sequence[int],
                 volume: np.ndarray) -> None:
        missing = [layer.name for layer in layers if layer.signature not in table.layers]
        if missing:
            raise LatencyTableError(f"latency table lacks layer {missing[0]!r} (accepted: a table built for this "
                                    "model; rebuild it)")
        self.layers = list(layers)
        self.table = table
        self.dense_widths = np.asarray(dense_widths, dtype=np.int64)
        self.volume = np.asarray(volume, dtype=np.float64)
        self.constant = float(table.calibration["constant_ms"])
        self.layer_scale = float(table.calibration.get("layer_scale", 1.0))
        self.tail = float(table.calibration["tail_ms"])
        # layers of one signature share a table: evaluate them together. A layer's channel count on an axis is
        # scale * w[group], with w extended by a 1 at index -1 so that a fixed dimension reads scale = its size
        self._batches = []
        for sig, entry in table.layers.items():
            members = [layer for layer in self.layers if layer.signature == sig]
            if not members:
                continue
            axes = [np.asarray(a, dtype=np.float64) for a in entry["axes"]]
            dims = [(np.asarray([m.out_group for m in members]),
                     np.asarray([m.dense_out / m.out_size if m.out_group >= 0 else m.dense_out for m in members]))]
            if not members[0].single_axis:
                dims.insert(0, (np.asarray([m.in_group for m in members]),
                                np.asarray([m.dense_in / m.in_size if m.in_group >= 0 else m.dense_in
                                            for m in members])))
            self._batches.append((axes, monotone(np.asarray(entry["ms"], dtype=np.float64)), dims,
                                  [self.layers.index(m) for m in members]))

    def layer_ms(self, widths: Sequence[float]) -> np.ndarray:
        """Each layer's predicted milliseconds at `widths` (in self.layers' order, before layer_scale)."""
        extended = np.append(np.asarray(widths, dtype=np.float64), 1.0)
        result = np.zeros(len(self.layers))
        for axes, ms, dims, positions in self._batches:
            points = np.column_stack([scale * extended[groups] for groups, scale in dims])
            result[positions] = interpolate(axes, ms, points)
        return result

    def volume_fraction(self, widths: Sequence[float]) -> float:
        """V(widths): the kept fraction of the dense activation volume."""
        total = float(self.volume.sum())
        if total == 0:
            return 1.0
        return float(np.sum(self.volume * np.asarray(widths, dtype=np.float64) / self.dense_widths) / total)

    def __call__(self, widths: Sequence[float]) -> float:
        return (self.constant + self.layer_scale * float(np.sum(self.layer_ms(widths)))
                + self.tail * self.volume_fraction(widths))

    @property
    def dense(self) -> float:
        return self(self.dense_widths)
