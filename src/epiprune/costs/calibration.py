"""Calibration of the latency tables: the sub-networks whose whole-model steps are timed, and the non-negative fit
of constant + layer_scale * (layer sum) + tail * V(w) onto those timings (see costs.latency_model).

Two of the calibration networks are the kind sub-network selection picks, so this module needs a selection
function. Selection lives in the policy package, above costs in the import layering (policy -> costs), so it is
injected: callers pass `select` (the policy and the CLI pass policy.subnetwork.select_subnetwork) instead of
costs importing policy.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn
from tqdm import tqdm

from epiprune.costs.latency_model import LatencyCostModel
from epiprune.costs.model import Cost
from epiprune.costs.timing import LatencySettings, PairedTiming, paired_ratio, step_runner
from epiprune.surgery import PrunableGraph, TransformerGraph

# select(scores, cost, target) -> keep masks: scores one (size,) array per group, target in the units of cost; the
# channels selection keeps (policy.subnetwork.select_subnetwork)
Select = Callable[[list[np.ndarray], Cost, float], list[np.ndarray]]

CALIBRATION_NETWORKS = 5  # see calibration_networks
CALIBRATION_PAIRS = 5  # timed (dense, network) pairs per calibration network
CALIBRATION_WARMUP = 2


def calibration_steps(networks: int = CALIBRATION_NETWORKS) -> int:
    """How many whole-model steps measure_calibration runs (the dense model's warm-up, then per other network its
    warm-up and CALIBRATION_PAIRS (dense, network) pairs): its progress bar's total, one update per step."""
    return CALIBRATION_WARMUP + (networks - 1) * (CALIBRATION_WARMUP + 2 * CALIBRATION_PAIRS)


def pruned_copy(graph: PrunableGraph | TransformerGraph, keep: Sequence[np.ndarray]) -> nn.Module:
    """A copy of graph's model with group g cut to the channels (or units) keep[g] (the original is untouched): the
    copy's graph is made as graph was (the same class, example and ignored layers)."""
    clone = copy.deepcopy(graph.model)
    names = {n for n, m in graph.model.named_modules() if any(m is x for x in graph.ignored)}
    cut = type(graph)(clone, graph.example_inputs, [m for n, m in clone.named_modules() if n in names])
    cut.prune(keep)
    return clone


def takes_token_ids(graph: PrunableGraph | TransformerGraph) -> bool:
    """Whether graph's model reads token ids (an integer example: a language model), so that a timed step feeds it
    tokens, not pixels (costs.timing.prepare_step)."""
    return not graph.example_inputs.is_floating_point()


def calibration_networks(graph: PrunableGraph | TransformerGraph, raw: LatencyCostModel, select: Select
                         ) -> list[tuple[str, list[np.ndarray]]]:
    """The sub-networks whose measured steps calibrate the tables: dense, every group cut uniformly to 60% and
    30% (off the block edges), and two that `select` would pick under a latency target of 60% and 35% of the raw
    tables' dense time, for seeded random channel scores with random per-group scales (uneven widths, as
    importance-driven pruning produces them). Returns (name, kept channel indices per group) pairs."""
    sizes = graph.widths()
    networks = [(f"uniform {f:g}", [np.arange(max(1, math.ceil(f * n))) for n in sizes]) for f in (1.0, 0.6, 0.3)]
    rng = np.random.default_rng(0)
    floor = raw(np.ones(len(sizes)))  # a tiny network may not get down to 35%: stop at one channel per group
    for fraction in (0.6, 0.35):
        scores = [rng.random(n) * rng.uniform(0.2, 5.0) for n in sizes]
        masks = select(scores, raw, max(fraction * raw.dense, floor))
        networks.append((f"selected {fraction:g}", [np.flatnonzero(m) for m in masks]))
    return networks


def measure_calibration(graph: PrunableGraph | TransformerGraph, raw: LatencyCostModel, settings: LatencySettings,
                        select: Select, bar: tqdm) -> list[dict]:
    """Time the calibration networks' steps against the dense model's, interleaved (dense, network, dense, ...;
    CALIBRATION_PAIRS pairs after CALIBRATION_WARMUP untimed steps of each), and return one point per network: its
    widths, measured_ms (the median pair ratio times the dense model's median step, milliseconds), ratio, the
    raw tables' layer_sum_ms and volume V. A load that slows both sides of a pair cancels in the ratio; timed
    apart, a network measured while another job ran looked slower than the dense model (issue 23). `bar` moves by
    one per whole-model step (calibration_steps() in all)."""
    shape = tuple(graph.example_inputs.shape[1:])
    networks = [(name, keep, pruned_copy(graph, keep)) for name, keep in calibration_networks(graph, raw, select)]
    timed = step_runner(shape, settings, takes_token_ids(graph))

    def runner(model: nn.Module) -> Callable[[], float]:  # each whole-model step moves the bar by one
        run = timed(model)

        def step() -> float:
            ms = run()
            bar.update()
            return ms
        return step

    dense = runner(networks[0][2])
    for _ in range(CALIBRATION_WARMUP):
        dense()
    timings: list[PairedTiming | None] = [None]
    for _, _, model in networks[1:]:
        candidate = runner(model)
        for _ in range(CALIBRATION_WARMUP):
            candidate()
        timings.append(paired_ratio(dense, candidate, CALIBRATION_PAIRS, warmup=0))
    dense_ms = statistics.median(t.dense_ms for t in timings if t is not None)
    points = []
    for (name, keep, _), timing in zip(networks, timings, strict=True):
        widths = [len(k) for k in keep]
        ratio = 1.0 if timing is None else timing.ratio
        points.append({"network": name, "widths": widths, "measured_ms": ratio * dense_ms, "ratio": ratio,
                       "layer_sum_ms": raw(widths), "volume": raw.volume_fraction(widths)})
    return points


def fit_calibration(layer_sums: Sequence[float], volumes: Sequence[float], measured: Sequence[float]
                    ) -> tuple[float, float, float]:
    """(constant, layer_scale, tail) >= 0 minimising the squared error of constant + layer_scale * S + tail * V
    against the measured whole-model times (least squares over every subset of the three terms; the best fit
    whose coefficients are all non-negative wins, so the model stays monotone)."""
    design = np.column_stack([np.ones(len(measured)), layer_sums, volumes])
    target = np.asarray(measured, dtype=np.float64)
    best, best_error = (max(0.0, float(np.mean(target))), 0.0, 0.0), float("inf")
    for subset in ((0, 1, 2), (1, 2), (0, 1), (0, 2), (1,), (2,), (0,)):
        coef, *_ = np.linalg.lstsq(design[:, subset], target, rcond=None)
        if np.any(coef < 0):
            continue
        full = np.zeros(3)
        full[list(subset)] = coef
        error = float(np.sum((design @ full - target) ** 2))
        if error < best_error - 1e-9:
            best, best_error = (float(full[0]), float(full[1]), float(full[2])), error
    return best
