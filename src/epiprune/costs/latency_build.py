"""Building and reusing latency tables: time every layer on its grid, calibrate against whole-model steps
(costs.calibration), write the table; or reuse the stored table whose key matches.

`load_or_build` reuses a file whose key matches, rebuilds one whose key differs, and refuses a corrupt file or one
measured on another device; a file the caller named whose key differs is rebuilt only when replacing is asked for
(`replace=True`, or inside `replacing_tables()`, which the command line's --force sets), else refused. Both
functions take `select` (keyword-only, required), the sub-network selection the calibration networks are picked
with (policy.subnetwork.select_subnetwork): injected, because costs sits below policy in the import layering (see
costs.calibration).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from tqdm import tqdm

from epiprune.costs.calibration import (
    Select,
    calibration_steps,
    fit_calibration,
    measure_calibration,
)
from epiprune.costs.latency_model import LatencyCostModel
from epiprune.costs.latency_table import (
    LatencyTable,
    LatencyTableError,
    TimedLayer,
    default_table_path,
    table_axes,
    table_key,
    timed_layers,
)
from epiprune.costs.layer_ratios import LayerRunner, check_noise, layer_runner, measure_layer_ratios
from epiprune.costs.timing import LatencySettings
from epiprune.surgery import PrunableGraph, TransformerGraph


def _tail_volume(graph: PrunableGraph | TransformerGraph) -> str:
    """What the tail term's V(w) is the kept fraction of (costs.latency_model; a transformer's: costs.unit_kinds)."""
    return "the units' parameters" if isinstance(graph, TransformerGraph) else "activation volume"


def _grid_points(layers: Sequence[TimedLayer], settings: LatencySettings) -> int:
    """How many (layer signature, channel counts) points _measure_layers times."""
    unique = {layer.signature: layer for layer in layers}.values()
    return sum(math.prod(len(a) for a in table_axes(layer, settings.grid_points)) for layer in unique)


def build_table(graph: PrunableGraph | TransformerGraph, settings: LatencySettings, progress: bool = True,
                log: Callable[[str], None] = print, *, select: Select, runner: LayerRunner | None = None
                ) -> LatencyTable:
    """Time every layer of graph.model on its grid as ratios to its dense size (costs.layer_ratios; a build noisier
    than settings.noise_limit is refused, LatencyTableError) and calibrate against whole-model steps (see
    costs.latency_model), the uneven calibration networks picked by `select`. Runs on the device of
    graph.example_inputs, with the current torch thread count. runner: how a layer is timed (tests inject one)."""
    start = time.perf_counter()
    layers, volume = timed_layers(graph)
    total = _grid_points(layers, settings)
    # two bars: hundreds of fast layer points, then a few dozen whole-model steps of seconds each (one bar over
    # both sat near 100% with an ETA of 0 through the calibration)
    with tqdm(total=total, desc="latency table: layers", unit="point", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        entries, noise = measure_layer_ratios(layers, settings,
                                              runner or layer_runner(settings, graph.example_inputs.device), bar)
    check_noise(noise, settings.noise_limit)
    table = LatencyTable(table_key(graph, layers, settings), entries,
                         {"constant_ms": 0.0, "layer_scale": 1.0, "tail_ms": 0.0}, noise=noise)
    raw = LatencyCostModel(layers, table, graph.widths(), volume)
    with tqdm(total=calibration_steps(), desc="latency table: calibration", unit="step", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        points = measure_calibration(graph, raw, settings, select, bar)
    constant, scale, tail = fit_calibration([p["layer_sum_ms"] for p in points], [p["volume"] for p in points],
                                            [p["measured_ms"] for p in points])
    table.calibration = {"constant_ms": constant, "layer_scale": scale, "tail_ms": tail, "points": points}
    table.build_seconds = time.perf_counter() - start
    calibrated = LatencyCostModel(layers, table, graph.widths(), volume)
    for p in points:
        p["predicted_ms"] = calibrated(p["widths"])
    dense = points[0]
    log(f"latency table: {len(entries)} layer shapes, {total} points, built in {table.build_seconds:.0f} s "
        f"(noise: pair ratios spread {100 * noise['pair_ratio_spread']:.0f}%, references "
        f"{100 * noise['reference_spread']:.0f}%); "
        f"dense step {dense['measured_ms']:.1f} ms; calibration: constant {constant:.1f} ms + {scale:.2f} x layers "
        f"+ {tail:.1f} ms x {_tail_volume(graph)}; " + ", ".join(
            f"{p['network']}: {p['measured_ms']:.1f} ms measured / {p['predicted_ms']:.1f} predicted"
            for p in points))
    return table


_REPLACING = ContextVar("epiprune_replacing_latency_tables", default=False)


@contextmanager
def replacing_tables(enabled: bool = True) -> Iterator[None]:
    """Within this block, load_or_build rebuilds a named table file of other settings over the old one (the
    command line's --force; a run's policy calls load_or_build itself)."""
    token = _REPLACING.set(enabled)
    try:
        yield
    finally:
        _REPLACING.reset(token)


def _noisier_than(table: LatencyTable, limit: float) -> str | None:
    """Why a stored table's build is noisier than `limit` allows (its recorded pair-ratio spread, a fraction), or
    None (tables from before the spread was recorded pass: their builds had no limit to record)."""
    spread = table.noise.get("pair_ratio_spread")
    if spread is None or float(spread) <= limit:
        return None
    return (f"was built with timings spread {100 * float(spread):.0f}%, above this run's --latency-noise-limit "
            f"{limit:g} ({100 * limit:.3g}%)")


def load_or_build(graph: PrunableGraph | TransformerGraph, settings: LatencySettings, path: str | Path | None = None,
                  progress: bool = True, log: Callable[[str], None] = print, *, select: Select,
                  replace: bool | None = None) -> tuple[LatencyCostModel, Path]:
    """The latency cost model of graph's model: the table at `path` (default: the cache path of its key) when
    its key matches; rebuilt (and written there) when the file is missing or its key differs in anything but the
    device. A corrupt file, or one measured on another device, is refused (LatencyTableError), never overwritten;
    so is a file at a given `path` whose key differs (another model's table, or other settings), unless `replace`
    (None: as `replacing_tables` says). select: the sub-network selection a rebuild calibrates with (see
    build_table)."""
    layers, volume = timed_layers(graph)
    key = table_key(graph, layers, settings)
    named = path is not None
    path = Path(path) if path is not None else default_table_path(key)
    if path.exists():
        table = LatencyTable.load(path)
        replacing = _REPLACING.get() if replace is None else replace
        changed = sorted(k for k in key if table.key.get(k) != key[k])
        if not changed:
            # a table accepted once under a higher --latency-noise-limit: this run's limit decides whether it is used
            too_noisy = _noisier_than(table, settings.noise_limit)
            if too_noisy is None:
                log(f"latency table: reusing {path}")
                return LatencyCostModel(layers, table, graph.widths(), volume), path
            if named and not replacing:
                raise LatencyTableError(f"latency table {path} {too_noisy} (accepted: --force to rebuild it there, "
                                        "another path, or a --latency-noise-limit that admits it)")
            log(f"latency table {path} {too_noisy}: rebuilding")
        else:
            if table.key.get("device") != key["device"] or table.key.get("device_type") != key["device_type"]:
                raise LatencyTableError(f"latency table {path} was measured on {table.key.get('device')!r}, this run "
                                        f"is on {key['device']!r} (accepted: a table measured on this device; pass "
                                        "another --latency-table path to build one)")
            if named and not replacing:
                what = (f"model {table.key.get('model')}" if table.key.get("model") != key["model"]
                        else "other settings")
                raise LatencyTableError(f"latency table {path} was built for {what} ({', '.join(changed)}) and would "
                                        "be rebuilt over (accepted: --force to rebuild it there, or another path)")
            log(f"latency table {path} was built for other settings ({', '.join(changed)}): rebuilding")
    else:
        log(f"latency table: building {path} (once per model, device and settings)")
    # the table's random inputs must not move the run's RNG
    with torch.random.fork_rng(devices=[graph.example_inputs.device] if graph.example_inputs.is_cuda else []):
        table = build_table(graph, settings, progress, log, select=select)
    table.save(path)
    return LatencyCostModel(layers, table, graph.widths(), volume), path
