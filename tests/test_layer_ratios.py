"""Latency tables measured as ratios (costs.layer_ratios), with injected timers: a machine whose speed changes by a
constant factor between layers must give the same fitted ratios (and tables off by one common factor only), a
slowly drifting one nearly the same, and a very noisy one must be refused in one line."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from epiprune.costs.latency_build import build_table
from epiprune.costs.latency_table import (
    LatencyTable,
    LatencyTableError,
    TimedLayer,
    default_table_path,
    table_key,
    timed_layers,
)
from epiprune.costs.layer_ratios import MAX_PAIR_RATIO_SPREAD, check_noise, measure_layer_ratios, relative_spread
from epiprune.costs.timing import LatencySettings
from epiprune.errors import EpipruneError
from epiprune.policy.subnetwork import select_subnetwork
from epiprune.surgery import PrunableGraph

from .helpers import ConvBNNet

SETTINGS = LatencySettings(batch_size=4, repeats=3, warmup=1, grid_points=3)


def true_ms(layer: TimedLayer, c_in: int, c_out: int) -> float:
    """The fake device's time of one layer run: a launch cost plus work in the channels."""
    return 0.05 + 0.01 * c_in * c_out + (0.02 * c_out if layer.kind == "bn" else 0.0)


class FakeLayers:
    """runner(layer, c_in, c_out) -> one run's fake milliseconds times speed(signature, call number)."""

    def __init__(self, speed=lambda sig, n: 1.0) -> None:
        self.speed, self.calls, self.current = speed, 0, None

    def runner(self, layer: TimedLayer, c_in: int, c_out: int):
        def run() -> float:
            self.calls += 1
            return true_ms(layer, c_in, c_out) * self.speed(layer.signature, self.calls)
        return run


@pytest.fixture(scope="module")
def layers():
    torch.manual_seed(0)
    graph = PrunableGraph(ConvBNNet(), torch.zeros(1, 1, 8, 8))
    return graph, timed_layers(graph)[0]


def test_a_speed_that_changes_between_layers_gives_the_same_ratios(layers):
    _, timed = layers
    steady, steady_noise = measure_layer_ratios(timed, SETTINGS, FakeLayers().runner)
    order = list(steady)
    fake = FakeLayers()
    # while layer k is timed the machine is 1 + 2k times slower (a job started, another one more); the closing
    # loop over every layer's reference runs at 2x (the calls after all grid points)
    grid_calls = fake_grid_calls(timed)

    def speed(sig: str, n: int) -> float:
        return 2.0 if n > grid_calls else 1.0 + 2 * order.index(sig)
    fake.speed = speed
    loaded, noise = measure_layer_ratios(timed, SETTINGS, fake.runner)
    for sig in steady:
        assert np.allclose(loaded[sig]["ratio"], steady[sig]["ratio"])
        assert np.allclose(np.asarray(loaded[sig]["ms"]), 2.0 * np.asarray(steady[sig]["ms"]))  # one factor for all
    assert steady_noise["reference_spread"] == noise["reference_spread"] == 0  # steady within each layer
    assert steady_noise["pair_ratio_spread"] == noise["pair_ratio_spread"] == 0


def fake_grid_calls(timed) -> int:
    """Calls measure_layer_ratios makes before its closing loop over the references (counted on a steady run)."""
    probe = FakeLayers()
    measure_layer_ratios(timed, SETTINGS, probe.runner)
    return probe.calls - 5 * len({layer.signature for layer in timed})  # REFERENCE_ROUNDS per layer


def test_a_slow_drift_moves_the_ratios_by_little(layers):
    _, timed = layers
    steady, _ = measure_layer_ratios(timed, SETTINGS, FakeLayers().runner)
    drifting, _ = measure_layer_ratios(timed, SETTINGS, FakeLayers(lambda sig, n: 1.002 ** n).runner)  # +0.2%/run
    for sig in steady:
        assert np.allclose(drifting[sig]["ratio"], steady[sig]["ratio"], rtol=0.005)


def test_a_very_noisy_timer_is_refused_in_one_line(layers):
    graph, timed = layers
    rng = np.random.default_rng(0)
    noisy = FakeLayers(lambda sig, n: float(rng.lognormal(0.0, 0.8)))
    _, noise = measure_layer_ratios(timed, SETTINGS, noisy.runner)
    assert noise["pair_ratio_spread"] > MAX_PAIR_RATIO_SPREAD
    with pytest.raises(LatencyTableError, match=r"^the latency table's timings were too noisy to use: .* \(accepted: "
                       r"at most 50%") as e:
        check_noise(noise)
    assert "\n" not in str(e.value) and "or raise --latency-noise-limit (LatencySettings.noise_limit; now 0.5)" \
        in str(e.value)
    with pytest.raises(LatencyTableError, match="too noisy"):  # the build refuses before calibrating
        build_table(graph, SETTINGS, progress=False, log=lambda _: None, select=select_subnetwork,
                    runner=FakeLayers(lambda sig, n: float(rng.lognormal(0.0, 0.8))).runner)


def test_a_raised_noise_limit_keeps_a_noisy_build_with_the_same_key(layers):
    """LatencySettings.noise_limit (the user's --latency-noise-limit) reaches the build's check, and the table it
    keeps has the key of the default limit's: the limit decides whether a build is kept, not what it times."""
    graph, timed = layers
    rng = np.random.default_rng(0)
    _, noise = measure_layer_ratios(timed, SETTINGS, FakeLayers(lambda sig, n: float(rng.lognormal(0.0, 0.8))).runner)
    check_noise(noise, limit=noise["pair_ratio_spread"])  # at the limit: kept
    with pytest.raises(LatencyTableError, match=r"\(accepted: at most 10%; .* now 0\.1\)"):
        check_noise(noise, limit=0.1)
    loose = replace(SETTINGS, noise_limit=100.0)
    table = build_table(graph, loose, progress=False, log=lambda _: None, select=select_subnetwork,
                        runner=FakeLayers(lambda sig, n: float(rng.lognormal(0.0, 0.8))).runner)
    assert table.noise["pair_ratio_spread"] > MAX_PAIR_RATIO_SPREAD
    assert table.key == table_key(graph, timed, SETTINGS)
    assert default_table_path(table_key(graph, timed, loose)) == default_table_path(table_key(graph, timed, SETTINGS))


@pytest.mark.parametrize("bad,shown", [(0, "0"), (-0.5, "-0.5"), (float("nan"), "nan"), (float("inf"), "inf"),
                                       ("0.5", "'0.5'"), (True, "True"), (None, "None")])
def test_a_bad_noise_limit_is_refused_in_one_line(bad, shown):
    with pytest.raises(EpipruneError, match=rf"^latency noise limit {re.escape(shown)} is not a number > 0 "
                       r"\(accepted: .*e\.g\. 0\.5 = 50%, the default; higher accepts a table built under load\)$"):
        LatencySettings(noise_limit=bad)


def test_a_steady_fake_build_records_its_noise_and_ratios(layers, tmp_path):
    graph, _ = layers
    table = build_table(graph, SETTINGS, progress=False, log=lambda _: None, select=select_subnetwork,
                        runner=FakeLayers().runner)
    assert table.noise["reference_spread"] == table.noise["pair_ratio_spread"] == 0 and table.noise["rounds"] == 5
    for entry in table.layers.values():  # the dense point is the reference: ratio 1
        assert np.asarray(entry["ratio"]).flat[-1] == 1.0
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").noise == table.noise


def test_relative_spread():
    assert relative_spread([1.0]) == 0 and relative_spread([2.0, 2.0, 2.0]) == 0
    assert relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)


def test_relative_spread_of_two_timings_is_their_interquartile_range_over_the_median():
    assert relative_spread([1.0, 3.0]) == pytest.approx(1.0 / 2.0)  # percentiles 1.5, 2, 2.5


class RecordingBar:
    """tqdm's stand-in: its description, total and, after each update, how far it is."""

    made: list[RecordingBar] = []

    def __init__(self, total: int, desc: str, **_: object) -> None:
        self.total, self.desc, self.n, self.seen = total, desc, 0, []
        RecordingBar.made.append(self)

    def __enter__(self) -> RecordingBar:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n
        self.seen.append(self.n)


def test_the_builds_progress_counts_the_calibrations_whole_model_steps(layers, monkeypatch):
    """Issue 23: one bar over layer points and calibration sat near 100% with an ETA of 0 while the calibration's
    whole-model steps (seconds each) ran. Now the calibration has its own bar, one update per step it times."""
    import epiprune.costs.calibration as calibration
    import epiprune.costs.latency_build as latency_build

    steps = []

    # whole-model steps, not timed: each counted with the bar's position
    def fake_steps(shape, settings, token_ids=False):
        def prepare(model):
            width = sum(p.numel() for p in model.parameters())

            def step() -> float:
                steps.append(RecordingBar.made[-1].n)
                return 1.0 + 1e-3 * width
            return step
        return prepare

    RecordingBar.made = []
    monkeypatch.setattr(latency_build, "tqdm", RecordingBar)
    monkeypatch.setattr(calibration, "step_runner", fake_steps)
    graph, _ = layers
    build_table(graph, SETTINGS, progress=True, log=lambda _: None, select=select_subnetwork,
                runner=FakeLayers().runner)
    points, calibrating = RecordingBar.made
    assert "layers" in points.desc and points.n == points.total > 0
    assert "calibration" in calibrating.desc
    assert calibrating.total == len(steps) == calibration.calibration_steps() and calibrating.n == calibrating.total
    assert steps == list(range(len(steps)))  # the bar moved before every next step: its position is honest


class CountingLayers(FakeLayers):
    """FakeLayers that also counts, per (signature, c_in, c_out), how many runners it built and how often each ran."""

    def __init__(self, speed=lambda sig, n: 1.0) -> None:
        super().__init__(speed)
        self.built: dict[tuple, int] = {}
        self.runs: dict[tuple, int] = {}

    def runner(self, layer: TimedLayer, c_in: int, c_out: int):
        key = (layer.signature, c_in, c_out)
        self.built[key] = self.built.get(key, 0) + 1
        inner = super().runner(layer, c_in, c_out)

        def run() -> float:
            self.runs[key] = self.runs.get(key, 0) + 1
            return inner()
        return run


def test_each_grid_point_is_built_once_warmed_up_and_timed_in_pairs_with_the_dense_size(layers):
    """The dense point reuses the reference (built once, no second warm-up); every other point gets its own runner,
    SETTINGS.warmup untimed runs, then SETTINGS.repeats pairs; the reference runs warm-up + one per pair (two in
    the dense point's pairs) + the closing rounds. A machine drifting by 1% per run makes the dense point's own
    pairs differ from 1, yet its ratio is 1 by definition; the other ratios are the fake's time over the dense
    time, near the drift."""
    from epiprune.costs.latency_table import table_axes
    from epiprune.costs.layer_ratios import REFERENCE_ROUNDS, _points

    _, timed = layers
    fake = CountingLayers(lambda sig, n: 1.01 ** n)
    entries, noise = measure_layer_ratios(timed, SETTINGS, fake.runner)
    for layer in {layer.signature: layer for layer in timed}.values():
        axes = table_axes(layer, SETTINGS.grid_points)
        points = _points(layer, axes)
        dense = points[-1]
        assert all(fake.built[(layer.signature, *p)] == 1 for p in points)
        assert all(fake.runs[(layer.signature, *p)] == SETTINGS.warmup + SETTINGS.repeats for p in points[:-1])
        assert fake.runs[(layer.signature, *dense)] == \
            SETTINGS.warmup + SETTINGS.repeats * (len(points) + 1) + REFERENCE_ROUNDS  # both sides of the dense pairs
        ratio = np.asarray(entries[layer.signature]["ratio"])
        assert ratio.shape == tuple(len(a) for a in axes) and ratio.flat[-1] == 1.0
        expected = np.asarray([true_ms(layer, *p) / true_ms(layer, *dense) for p in points]).reshape(ratio.shape)
        assert np.allclose(ratio, expected, rtol=0.03) and not np.allclose(ratio, 1.0)
    assert set(noise) == {"reference_spread", "reference_spread_max", "layers", "rounds", "pair_ratio_spread",
                          "reference_rounds_spread"}
    assert noise["rounds"] == REFERENCE_ROUNDS and set(noise["layers"]) == {layer.signature for layer in timed}
    assert 0 < noise["reference_spread"] < noise["reference_spread_max"] == max(noise["layers"].values())
    assert noise["reference_spread"] == np.median(list(noise["layers"].values()))
    assert 0 < noise["reference_rounds_spread"]


def test_the_relative_spread_of_zero_times_is_zero_not_a_division_by_zero():
    assert relative_spread([0.0, 0.0, 0.0]) == 0.0
    assert relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)


def test_the_noise_refusal_reads_whole_with_its_numbers():
    """The one line a user gets, word for word, with the spreads and the limit put in as percentages."""
    noise = {"pair_ratio_spread": 0.634, "reference_spread": 0.93}
    with pytest.raises(LatencyTableError) as e:
        check_noise(noise, limit=0.5)
    assert str(e.value) == (
        "the latency table's timings were too noisy to use: a layer size's ratios to its reference spread 63% "
        "(interquartile range over median, median over sizes; the references themselves 93%) (accepted: at most 50%; "
        "other processes are competing for the CPU: build it again with fewer threads, e.g. OMP_NUM_THREADS=1, or "
        "when the machine is quieter, or raise --latency-noise-limit (LatencySettings.noise_limit; now 0.5) to accept "
        "a table built under load: the closed loop at the prune still corrects the pick against measured steps)")
    check_noise(noise, limit=0.634)  # at the limit: kept
