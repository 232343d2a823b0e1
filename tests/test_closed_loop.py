"""The latency budget's closed loop (costs.closed_loop, policy.latency_loop), with a fake timer: a "true" step time
that the synthetic table gets wrong (a constant overhead the table does not see), advancing a fake clock. The loop
must land the measured ratio in [F - 0.03, F], stop at its caps, and say in one line when the floor is too slow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from epiprune import Budget, EarlyPruningPolicy
from epiprune.costs.closed_loop import DEFAULT_LOOP, ClosedLoopSettings, closed_loop
from epiprune.costs.counting import counting_cost_models
from epiprune.costs.latency_model import LatencyCostModel
from epiprune.costs.latency_table import LatencyTable, table_axes, table_key, timed_layers
from epiprune.costs.timing import LatencySettings, paired_ratio
from epiprune.errors import EpipruneError
from epiprune.policy.subnetwork import floor_widths, normalise_per_group, select_subnetwork
from epiprune.surgery import PrunableGraph

SETTINGS = LatencySettings(batch_size=4, grid_points=2)  # wide axes interpolated linearly: fine steps
STAIRCASE = LatencySettings(batch_size=4, grid_points=6)  # grid points 8 apart: widths move in blocks of 8
EXAMPLE = torch.zeros(1, 1, 8, 8)


class WideNet(nn.Module):
    """conv(1->32)-BN-ReLU, conv(32->48)-BN-ReLU, linear(48->3): two channel groups wide enough for fine steps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 48, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(48)
        self.fc = nn.Linear(48, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def true_ms(model: nn.Module, overhead: float) -> float:
    """The fake device: `overhead` ms that no layer owns, plus work that follows the table's shape."""
    c1, c2 = model.conv1.out_channels, model.conv2.out_channels
    return overhead + 0.02 * c1 + 0.01 * c1 * c2 + 0.005 * c2


class FakeDevice:
    """runner(model) -> one step's fake milliseconds (times `speed`, which a test may change), advancing `now`."""

    def __init__(self, overhead: float = 4.0, speed: float = 1.0) -> None:
        self.overhead, self.speed, self.now, self.steps = overhead, speed, 0.0, 0

    def runner(self, model: nn.Module):
        def step() -> float:
            ms = self.speed * true_ms(model, self.overhead)
            self.now += ms / 1000
            self.steps += 1
            return ms
        return step

    def clock(self) -> float:
        return self.now


def synthetic_cost(graph: PrunableGraph, settings: LatencySettings = SETTINGS) -> LatencyCostModel:
    """A table of in x out channels per layer (ms) and no constant: deterministic, and blind to the overhead."""
    layers, volume = timed_layers(graph)
    entries = {}
    for layer in {layer.signature: layer for layer in layers}.values():
        axes = table_axes(layer, settings.grid_points)
        grids = np.meshgrid(*[np.asarray(a, dtype=float) for a in axes], indexing="ij")
        entries[layer.signature] = {"axes": axes, "ms": (0.01 * np.prod(grids, axis=0)).tolist()}
    table = LatencyTable(table_key(graph, layers, settings), entries,
                         {"constant_ms": 0.0, "layer_scale": 1.0, "tail_ms": 0.0})
    return LatencyCostModel(layers, table, graph.widths(), volume)


def make_setup(settings: LatencySettings = SETTINGS):
    torch.manual_seed(0)
    graph = PrunableGraph(WideNet(), EXAMPLE)
    cost = synthetic_cost(graph, settings)
    flops = counting_cost_models(graph)["flops"]
    scores = normalise_per_group([np.random.default_rng(1).random(n) + 0.1 for n in graph.widths()])
    floor = cost(floor_widths(graph.widths()))
    return graph, cost, flops, scores, floor


@pytest.fixture(scope="module")
def setup():
    return make_setup()


def run_loop(setup, fraction: float, device: FakeDevice, loop: ClosedLoopSettings = DEFAULT_LOOP):
    graph, cost, flops, scores, floor = setup

    def select_at(target: float) -> list[np.ndarray]:
        return select_subnetwork(scores, cost, target)
    return closed_loop(graph, cost, flops, fraction, select_at, select_at(fraction * cost.dense), floor,
                       device.runner, loop, clock=device.clock)


def measured(graph: PrunableGraph, masks, overhead: float) -> float:
    """The fake device's ratio of the sub-network `masks` keeps."""
    widths = [int(m.sum()) for m in masks]
    probe = WideNet()
    probe.conv1.out_channels, probe.conv2.out_channels = widths
    return true_ms(probe, overhead) / true_ms(graph.model, overhead)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_the_loop_corrects_the_tables_pick_into_the_band(setup, fraction):
    device = FakeDevice()
    result = run_loop(setup, fraction, device)
    first = result.iterations[0]
    assert first.measured_ratio > fraction  # the table, blind to the overhead, picked too slow a network
    assert result.status == "met", result.message
    assert fraction - 0.03 <= result.measured_ratio <= fraction
    assert result.measured_ratio == pytest.approx(measured(setup[0], result.masks, device.overhead))
    assert len(result.iterations) <= ClosedLoopSettings().max_iterations
    for it in result.iterations:  # every iteration recorded
        assert 0 < it.predicted_ratio <= 1 and 0 < it.flops_ratio <= 1 and it.seconds > 0
        assert it.spread == it.uncertainty == 0  # a steady fake device
    assert result.seconds == pytest.approx(device.now)
    record = result.record()
    assert record["status"] == "met" and len(record["iterations"]) == len(result.iterations)
    assert record["resolved"] is True and record["uncertainty"] == 0
    assert record["band"] == [pytest.approx(fraction - 0.03), fraction]


def test_the_loop_stops_at_its_iteration_cap(setup):
    result = run_loop(setup, 0.5, FakeDevice(), ClosedLoopSettings(max_iterations=1))
    assert result.status == "iteration cap" and len(result.iterations) == 1
    assert "stopped after 1 iterations" in result.message and "\n" not in result.message


def test_the_loop_stops_at_its_time_cap(setup):
    slow = FakeDevice(speed=1000.0)  # each step about 0.1 s of the fake clock: one iteration is over 1 s
    result = run_loop(setup, 0.5, slow, ClosedLoopSettings(max_seconds=1.0))
    assert result.status == "time cap" and len(result.iterations) == 1
    assert "the cap, 1 s" in result.message and "\n" not in result.message
    # the chosen network is the one measured: none is at or below F here, so the fastest
    assert result.chosen == 0


def test_a_pick_below_the_band_within_noise_wider_than_the_band_is_kept(setup):
    """A busy machine (uncertainty above half the band): a candidate measured below the band, but by less than its
    uncertainty, cannot be told apart from one in the band; it is within budget, so the loop keeps it (status
    'noise') instead of chasing the noise with more iterations."""
    graph, cost, flops, scores, floor = setup
    device = FakeDevice()

    def noisy(model):
        step = device.runner(model)
        dense_ms = true_ms(graph.model, device.overhead)
        ratios = iter([0.44, 0.50, 0.40, 0.46, 0.44, 0.38])  # warm-up, then pairs straddling 0.47 up to the fifth

        def candidate() -> float:
            step()
            return next(ratios) * dense_ms
        return step if model is graph.model else candidate

    def select_at(target: float) -> list[np.ndarray]:
        return select_subnetwork(scores, cost, target)
    result = closed_loop(graph, cost, flops, 0.5, select_at, select_at(0.5 * cost.dense), floor, noisy,
                         clock=device.clock)
    it = result.iterations[0]
    assert it.pairs == 5 and it.measured_ratio < 0.47 <= it.measured_ratio + it.uncertainty
    assert it.uncertainty > 0.015
    assert result.status == "noise" and len(result.iterations) == 1 and result.chosen == 0
    assert "below [0.47, 0.50] by less than the machine's noise" in result.message and "\n" not in result.message


def test_an_unreachable_budget_is_said_in_one_line(setup):
    device = FakeDevice(overhead=100.0)  # the floor still takes most of the dense step
    result = run_loop(setup, 0.3, device)
    assert result.status == "unreachable"
    assert result.message.startswith("latency budget 0.3 cannot be met as measured") and "\n" not in result.message
    widths = [int(m.sum()) for m in result.masks]
    assert widths == [1, 1]  # the floor, the fastest there is
    assert result.measured_ratio > 0.3


def test_a_band_between_two_adjacent_selections_stops_and_keeps_the_closest_from_below():
    result = run_loop(make_setup(STAIRCASE), 0.7, FakeDevice())
    assert result.status == "granularity" and "no selection between the measured ones" in result.message
    ratios = [it.measured_ratio for it in result.iterations]
    assert any(r > 0.7 for r in ratios) and any(r < 0.67 for r in ratios)  # one each side of the band
    assert result.measured_ratio == max(r for r in ratios if r <= 0.7)


def test_a_constant_change_of_speed_between_pairs_leaves_the_ratio_alone():
    device = FakeDevice()
    a, b = WideNet(), WideNet()
    b.conv1.out_channels = 16
    dense, cand = device.runner(a), device.runner(b)
    calls = {"n": 0}

    def loaded_dense() -> float:  # from the third pair on, the machine is 3x slower (another job started)
        calls["n"] += 1
        device.speed = 3.0 if calls["n"] > 2 else 1.0
        return dense()
    steady = paired_ratio(dense, cand, pairs=5)
    device.speed = 1.0
    loaded = paired_ratio(loaded_dense, cand, pairs=5)
    assert loaded.ratio == pytest.approx(steady.ratio) and loaded.dense_ms > steady.dense_ms


def test_bad_loop_settings_are_one_line_errors():
    for kwargs, needle in (({"tolerance": 0}, "tolerance"), ({"pairs": 0}, "pairs"), ({"min_pairs": 6}, "minimum"),
                           ({"max_iterations": 0}, "iterations"), ({"max_seconds": 0}, "time cap")):
        with pytest.raises(EpipruneError, match=needle):
            ClosedLoopSettings(**kwargs)


def policy_with_fake_device(tmp_path, closed: bool, device: FakeDevice) -> EarlyPruningPolicy:
    torch.manual_seed(0)
    model = WideNet()
    graph = PrunableGraph(model, EXAMPLE)
    cost = synthetic_cost(graph)
    path = tmp_path / "table.json"
    cost.table.save(path)
    policy = EarlyPruningPolicy(model, EXAMPLE, Budget(latency=0.5), latency=SETTINGS, latency_table=path,
                                prune_at=1, log=lambda _: None, latency_closed_loop=closed)
    if policy.latency_loop is not None:
        policy.latency_loop.runner = device.runner
    return policy


def train_and_prune(policy: EarlyPruningPolicy) -> None:
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(policy.model(x), y).backward()
    policy.step()
    assert policy.end_epoch()


def test_the_policy_prunes_what_the_loop_measured_and_the_switch_turns_it_off(tmp_path):
    device = FakeDevice()
    dense_ms = true_ms(WideNet(), device.overhead)
    closed = policy_with_fake_device(tmp_path, True, device)
    train_and_prune(closed)
    result = closed.latency_loop.result
    assert result is not None and result.status == "met"
    assert 0.47 <= true_ms(closed.model, device.overhead) / dense_ms <= 0.5
    assert closed.widths() == [int(m.sum()) for m in result.masks]

    device_open = FakeDevice()
    opened = policy_with_fake_device(tmp_path, False, device_open)
    assert opened.latency_loop is None and opened.config.latency_closed_loop is False
    train_and_prune(opened)
    assert device_open.steps == 0
    assert true_ms(opened.model, device.overhead) / dense_ms > 0.5  # the table's pick, uncorrected


def test_the_in_run_check_compares_ratios_measured_in_one_loop():
    """The machine gets 4x slower halfway through the check: the ratio (and the prediction's error) stay exact,
    while the milliseconds move."""
    from types import SimpleNamespace

    from epiprune.run.latency_check import measure_latency

    device = FakeDevice()
    dense, pruned = WideNet(), WideNet()
    pruned.conv1.out_channels = 16  # the fake device reads the widths from these attributes
    policy = SimpleNamespace(cost=SimpleNamespace(dense=10.0), predicted_latency_ms=lambda: 4.0,
                             latency_table_path="t.json")

    def runner(model):
        step = device.runner(model)

        def timed() -> float:
            device.speed = 4.0 if device.steps >= 12 else 1.0
            return step()
        return timed
    result = measure_latency(policy, pruned, dense, SETTINGS, (1, 8, 8), runner=runner)
    truth = true_ms(pruned, device.overhead) / true_ms(dense, device.overhead)
    assert result["measured_ratio"] == pytest.approx(truth) and result["measured_ratio_spread"] == pytest.approx(0)
    assert result["prediction_error"] == pytest.approx(0.4 / truth - 1)


def test_a_measurement_noisier_than_the_band_is_flagged(setup):
    rng = np.random.default_rng(0)
    device = FakeDevice()
    noisy = FakeDevice()

    def runner(model):
        step = device.runner(model)
        return lambda: step() * float(rng.lognormal(0.0, 0.3))  # each step 30% noise: a busy machine
    graph, cost, flops, scores, floor = setup

    def select_at(target: float) -> list[np.ndarray]:
        return select_subnetwork(scores, cost, target)
    result = closed_loop(graph, cost, flops, 0.5, select_at, select_at(0.5 * cost.dense), floor, runner,
                         clock=noisy.clock)
    assert not result.resolved and result.record()["resolved"] is False
    assert all(it.uncertainty > 0.03 for it in result.iterations)


def test_the_uncertainty_is_a_box_plots_notch():
    values = iter([1.0, 0.5, 1.0, 0.4, 1.0, 0.6, 1.0, 0.5, 1.0, 0.7])  # pair ratios 0.5, 0.4, 0.6, 0.5, 0.7
    timing = paired_ratio(lambda: next(values), lambda: next(values), pairs=5, warmup=0)
    assert timing.ratio == 0.5 and timing.spread == pytest.approx(0.3 / 0.5)
    assert timing.uncertainty == pytest.approx(1.58 * (0.6 - 0.5) / np.sqrt(5))


def test_the_loops_record_survives_a_checkpoint_loaded_weights_only(setup, tmp_path):
    """A run resumed after the prune reports its loop: the result goes through torch.save and
    torch.load(weights_only=True) (no numpy scalars) and comes back equal, masks included."""
    result = run_loop(setup, 0.5, FakeDevice())
    result.iterations[0].flops_ratio = np.float64(result.iterations[0].flops_ratio)  # as a numpy cost returns it
    result.seconds = np.float64(result.seconds)
    path = tmp_path / "state.pt"
    torch.save({"loop": result.state_dict()}, path)
    back = type(result).from_state_dict(torch.load(path, weights_only=True)["loop"])
    assert back.record() == result.record() and back.status == result.status
    assert all(np.array_equal(a, b) for a, b in zip(back.masks, result.masks, strict=True))


def test_a_policy_restored_after_the_prune_keeps_the_loops_record(tmp_path):
    """What `train --resume` does after the prune: the policy's state (through a weights_only load) restores the
    loop's record on a fresh policy, which has not run the loop itself."""
    pruned = policy_with_fake_device(tmp_path, True, FakeDevice())
    train_and_prune(pruned)
    torch.save({"policy": pruned.state_dict()}, tmp_path / "checkpoint.pt")
    fresh_device = FakeDevice()
    fresh = policy_with_fake_device(tmp_path, True, fresh_device)
    fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["policy"])
    assert fresh.widths() == pruned.widths() and fresh_device.steps == 0
    assert fresh.latency_loop.result is not None
    assert fresh.latency_loop.result.record() == pruned.latency_loop.result.record()


def test_a_steady_machine_times_the_fewest_pairs_and_a_noisy_one_up_to_the_most(setup):
    """The loop's cost (issue 23: 29-41 s per loop on ResNet-20 under load): timing stops at min_pairs once the
    ratio's interval is wholly inside or outside the band; with the interval across an edge it goes on to pairs."""
    steady = FakeDevice()
    result = run_loop(setup, 0.5, steady)
    assert result.status == "met" and all(it.pairs == 3 for it in result.iterations)
    # steps: the dense warm-up, then per iteration the candidate's warm-up and 3 pairs
    assert steady.steps == 1 + len(result.iterations) * (1 + 2 * 3)
    fixed = FakeDevice()
    again = run_loop(setup, 0.5, fixed, ClosedLoopSettings(min_pairs=5))
    # the same decisions from 5 pairs each (min_pairs = pairs: the loop before it was sequential), at more steps
    assert [it.measured_ratio for it in again.iterations] == [it.measured_ratio for it in result.iterations]
    assert fixed.steps > steady.steps

    ratios = iter([0.49, 0.44, 0.52, 0.47, 0.48])  # the interval straddles 0.47 until the fifth pair
    timing = paired_ratio(lambda: 1.0, lambda: next(ratios), pairs=5, warmup=0, min_pairs=3,
                          settled=lambda t: t.ratio - t.uncertainty >= 0.47 or t.ratio + t.uncertainty < 0.47)
    assert timing.pairs == 5
    ratios = iter([0.30, 0.31, 0.29, 0.9, 0.9])  # clearly below a band at 0.47-0.5 after three
    timing = paired_ratio(lambda: 1.0, lambda: next(ratios), pairs=5, warmup=0, min_pairs=3,
                          settled=lambda t: t.ratio + t.uncertainty < 0.47)
    assert timing.pairs == 3 and timing.ratio == pytest.approx(0.30)


@pytest.mark.parametrize("given", [True, False])
def test_the_policys_loop_times_its_latency_settings_and_logs_through_its_log(tmp_path, monkeypatch, given):
    """The closed loop inside the policy times a step as the policy's latency settings say (the defaults when none
    are given) and says its one line through the policy's log."""
    from epiprune.policy import latency_loop

    device, seen, lines = FakeDevice(), [], []

    def fake_step_runner(shape, settings, token_ids=False):
        seen.append(settings)
        return device.runner
    monkeypatch.setattr(latency_loop, "step_runner", fake_step_runner)
    torch.manual_seed(0)
    model = WideNet()
    path = tmp_path / "table.json"
    settings = SETTINGS if given else LatencySettings()
    synthetic_cost(PrunableGraph(model, EXAMPLE), settings).table.save(path)
    policy = EarlyPruningPolicy(model, EXAMPLE, Budget(latency=0.5), latency=SETTINGS if given else None,
                                latency_table=path, prune_at=1, log=lines.append)
    assert seen == [settings]
    train_and_prune(policy)
    assert [line for line in lines if line.startswith("latency closed loop: ")]
