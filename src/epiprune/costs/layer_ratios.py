"""Layer tables measured as ratios, so that a load on the machine does not bend them (issue 23).

Each layer size is timed interleaved with a reference size of the same layer (its dense size): reference, point,
reference, point, ... and the point's entry is the median of the pair ratios point / reference. A load that slows
both alike (a steady background job, or one that starts between two points) cancels in the ratio. The references
of all layers are then timed together, round robin, in one loop (their medians): that loop fixes the layers'
relative weights under a single load, and each table is ratio x its reference's milliseconds. The old way, each
point's median milliseconds on its own, let a job that ran while one layer was timed make that layer look slow.

How noisy the build was is recorded: the spread of the repeated reference timings of each layer (the
interquartile range over the median, 0 = every timing equal: how much the load moved while the layer was timed),
and the spread of the pair ratios of each point (what is left after the ratio: the noise in what is fitted). A
build whose median pair-ratio spread exceeds its settings' noise_limit (default MAX_PAIR_RATIO_SPREAD, in
costs.timing with the measurement behind it; the user's --latency-noise-limit) is refused in one line (the reference
spread is recorded, not used: the ratios cancel most of it).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from epiprune.costs.latency_table import LatencyTableError, TimedLayer, prepare_layer, table_axes
from epiprune.costs.timing import MAX_PAIR_RATIO_SPREAD, LatencySettings, time_once

# runner(layer, c_in, c_out) -> a function that runs that layer once and returns its milliseconds
LayerRunner = Callable[[TimedLayer, int, int], Callable[[], float]]

REFERENCE_ROUNDS = 5  # rounds of the loop over every layer's reference


def layer_runner(settings: LatencySettings, device: torch.device) -> LayerRunner:
    """The real runner: one call = one timed run of the layer (costs.latency_table.prepare_layer)."""

    def prepare(layer: TimedLayer, c_in: int, c_out: int) -> Callable[[], float]:
        run = prepare_layer(layer, c_in, c_out, settings, device)
        return lambda: time_once(run, device)
    return prepare


def relative_spread(times: Sequence[float]) -> float:
    """Interquartile range over median of repeated timings (0 when there are fewer than two)."""
    if len(times) < 2:
        return 0.0
    q1, med, q3 = np.percentile(np.asarray(times, dtype=np.float64), [25, 50, 75])
    return float((q3 - q1) / med) if med > 0 else 0.0


def _points(layer: TimedLayer, axes: list[list[int]]) -> list[tuple[int, int]]:
    """(c_in, c_out) of every grid point, in the table's order (one-axis layers: c_in == c_out)."""
    if layer.single_axis:
        return [(c, c) for c in axes[0]]
    return [(a, b) for a in axes[0] for b in axes[1]]


def measure_layer_ratios(layers: Sequence[TimedLayer], settings: LatencySettings, runner: LayerRunner,
                         bar: tqdm | None = None) -> tuple[dict[str, dict], dict]:
    """({signature: {"axes", "ms", "ratio"}}, noise) for every distinct layer signature: "ratio" the grid's
    median pair ratios to the dense size (1 at the dense point), "ms" those ratios times the reference's
    milliseconds from the common loop (nested lists on the grid, milliseconds). noise: {"reference_spread": median
    over layers of the references' relative spread, "reference_spread_max", "layers": per signature, "rounds":
    REFERENCE_ROUNDS, "pair_ratio_spread": median over points of the pair ratios' relative spread}."""
    unique = {layer.signature: layer for layer in layers}
    references: dict[str, Callable[[], float]] = {}
    ratios: dict[str, list[float]] = {}
    spreads: dict[str, float] = {}
    pair_spreads: list[float] = []
    for sig, layer in unique.items():
        axes = table_axes(layer, settings.grid_points)
        points = _points(layer, axes)
        dense_point = points[-1]  # the largest count on every axis: the layer's dense size
        reference = references[sig] = runner(layer, *dense_point)
        for _ in range(settings.warmup):
            reference()
        reference_times: list[float] = []
        values = []
        for point in points:
            run = reference if point == dense_point else runner(layer, *point)
            for _ in range(settings.warmup if run is not reference else 0):
                run()
            pairs = []
            for _ in range(settings.repeats):
                a = reference()
                b = run()
                reference_times.append(a)
                pairs.append(b / a)
            values.append(1.0 if point == dense_point else statistics.median(pairs))
            pair_spreads.append(relative_spread(pairs))
            if bar is not None:
                bar.update()
        ratios[sig] = values
        spreads[sig] = relative_spread(reference_times)
    rounds: dict[str, list[float]] = {sig: [] for sig in unique}
    for _ in range(REFERENCE_ROUNDS):  # every layer's reference in one loop: their weights under one load
        for sig, reference in references.items():
            rounds[sig].append(reference())
    entries = {}
    for sig, layer in unique.items():
        axes = table_axes(layer, settings.grid_points)
        shape = [len(a) for a in axes]
        ratio = np.asarray(ratios[sig], dtype=np.float64)
        entries[sig] = {"axes": axes, "ms": (ratio * statistics.median(rounds[sig])).reshape(shape).tolist(),
                        "ratio": ratio.reshape(shape).tolist()}
    noise = {"reference_spread": float(np.median(list(spreads.values()))),
             "reference_spread_max": float(max(spreads.values())), "layers": spreads, "rounds": REFERENCE_ROUNDS,
             "pair_ratio_spread": float(np.median(pair_spreads)),
             "reference_rounds_spread": float(np.median([relative_spread(r) for r in rounds.values()]))}
    return entries, noise


def check_noise(noise: dict, limit: float = MAX_PAIR_RATIO_SPREAD) -> None:
    """Refuse (LatencyTableError, one line) a build whose pair ratios spread more than `limit` (a fraction: 0.5 =
    an interquartile range of half the median; LatencySettings.noise_limit, the user's --latency-noise-limit)."""
    spread = noise["pair_ratio_spread"]
    if spread > limit:
        raise LatencyTableError(f"the latency table's timings were too noisy to use: a layer size's ratios to its "
                                f"reference spread {100 * spread:.0f}% (interquartile range over median, median over "
                                f"sizes; the references themselves {100 * noise['reference_spread']:.0f}%) (accepted: "
                                f"at most {100 * limit:.3g}%; other processes are competing for the CPU: build it "
                                "again with fewer threads, e.g. OMP_NUM_THREADS=1, or when the machine is quieter, "
                                f"or raise --latency-noise-limit (LatencySettings.noise_limit; now {limit:g}) to "
                                "accept a table built under load: the closed loop at the prune still corrects the "
                                "pick against measured steps)")
