"""The latency cost model: interpolation, monotonicity, calibration, the table as a keyed artefact, and the
latency budget end to end. Timing targets live in benchmarks/latency.py, not here."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from epiprune import Budget, EarlyPruningPolicy
from epiprune.costs import latency_build
from epiprune.costs.calibration import fit_calibration
from epiprune.costs.latency_build import load_or_build, replacing_tables
from epiprune.costs.latency_model import LatencyCostModel, interpolate, monotone
from epiprune.costs.latency_table import LatencyTable, LatencyTableError, grid, table_axes, table_key, timed_layers
from epiprune.costs.timing import LatencySettings
from epiprune.errors import EpipruneError
from epiprune.policy.subnetwork import select_subnetwork
from epiprune.surgery import PrunableGraph

from .helpers import ConvBNNet, max_examples

TINY = LatencySettings(batch_size=16, repeats=2, warmup=1, grid_points=3)


def tiny_graph():
    torch.manual_seed(0)
    model = ConvBNNet()
    return model, PrunableGraph(model, torch.zeros(1, 1, 8, 8))


@pytest.fixture
def table_path(tmp_path):
    return tmp_path / "table.json"


def test_grid_is_every_channel_when_narrow_and_spans_wide_axes():
    assert grid(5, 12) == [1, 2, 3, 4, 5]
    assert grid(16, 4) == list(range(1, 17))  # narrow: every channel, whatever the point count
    assert grid(64, 12) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]  # wide: block edges (multiples of 8)
    wide = grid(1280, 12)
    assert wide[:3] == [1, 2, 4] and wide[-1] == 1280 and len(wide) <= 17 and wide == sorted(set(wide))
    assert all(c % 8 == 0 for c in wide[3:-1])


@settings(max_examples=max_examples(60), deadline=None)
@given(st.lists(st.floats(0.01, 10.0), min_size=20, max_size=20), st.integers(2, 5), st.integers(1, 4),
       st.floats(0.0, 30.0), st.floats(0.0, 30.0), st.floats(0.0, 3.0))
def test_interpolation_is_monotone_and_exact_on_the_grid(values, n_in, n_out, a, b, step):
    """A measured table made monotone is non-decreasing along each axis everywhere between grid points, equals
    the table at grid points, and stays positive (never zero for a point the grid lacks)."""
    axes = [sorted({1, *range(3, 3 * n_in, 3)})[:n_in], sorted({1, *range(4, 4 * n_out, 4)})[:n_out]]
    ms = monotone(np.asarray(values[: len(axes[0]) * len(axes[1])]).reshape(len(axes[0]), len(axes[1])))
    for i, x in enumerate(axes[0]):
        for j, y in enumerate(axes[1]):
            assert interpolate(axes, ms, [[x, y]])[0] == pytest.approx(ms[i, j])
    base = interpolate(axes, ms, [[a, b]])[0]
    assert interpolate(axes, ms, [[a + step, b]])[0] >= base - 1e-12
    assert interpolate(axes, ms, [[a, b + step]])[0] >= base - 1e-12
    assert base >= ms.min() * (1 - 1e-12) and ms.min() > 0


def test_monotone_repairs_a_noisy_measurement():
    noisy = np.array([[1.0, 3.0, 2.0], [0.5, 4.0, 5.0]])  # 3.0 and 1.0: slowed by noise
    fixed = monotone(noisy)
    assert (np.diff(fixed, axis=0) >= 0).all() and (np.diff(fixed, axis=1) >= 0).all()
    assert fixed.tolist() == [[0.5, 2.0, 2.0], [0.5, 4.0, 5.0]]  # the lower envelope: one outlier spreads nowhere


def test_calibration_recovers_known_coefficients_and_stays_non_negative():
    sums, volumes = [100.0, 40.0, 15.0], [1.0, 0.5, 0.25]
    measured = [5 + 0.7 * s + 20 * v for s, v in zip(sums, volumes, strict=True)]
    assert fit_calibration(sums, volumes, measured) == pytest.approx((5, 0.7, 20), rel=1e-6)
    # a fit that would need a negative constant keeps every coefficient >= 0 (the model must stay monotone)
    constant, scale, tail = fit_calibration(sums, volumes, [0.8 * s - 10 for s in sums])
    assert min(constant, scale, tail) >= 0 and scale > 0


@pytest.fixture(autouse=True)
def _tables_built_under_load_are_not_refused(monkeypatch):
    """These tests are about the tables, not the machine: a build timed while other jobs load the CPU must not be
    refused as too noisy here (the refusal has its own tests, tests/test_layer_ratios.py)."""
    monkeypatch.setattr(latency_build, "check_noise", lambda noise, limit: None)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("lat") / "table.json"
    _, graph = tiny_graph()
    with pytest.MonkeyPatch.context() as patch:  # as _tables_built_under_load_are_not_refused, for the module
        patch.setattr(latency_build, "check_noise", lambda noise, limit: None)
        cost, written = load_or_build(graph, TINY, path, progress=False, log=lambda _: None, select=select_subnetwork)
    return graph, cost, written


def test_table_covers_every_layer_and_predicts_the_dense_step(built):
    graph, cost, path = built
    layers, volume = timed_layers(graph)
    assert {layer.name for layer in layers} == {"conv1", "bn1", "conv2", "bn2", "fc"}
    assert volume.shape == (2,) and (volume > 0).all()
    table = LatencyTable.load(path)
    assert table.key["batch_size"] == 16 and table.key["target"] == "train" and table.key["model"] == "ConvBNNet"
    dense_measured = table.calibration["points"][0]["measured_ms"]
    assert cost.dense > 0 and cost.dense == pytest.approx(table.calibration["points"][0]["predicted_ms"])
    assert dense_measured > 0


@settings(max_examples=max_examples(40), deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 1))
def test_latency_cost_model_is_monotone_in_every_width(built, w0, w1, which):
    _, cost, _ = built
    widths = np.array([w0, w1])
    grown = widths.copy()
    grown[which] = min(grown[which] + 1, cost.dense_widths[which])
    assert cost(grown) >= cost(widths) > 0


def synthetic_table(graph, path):
    """A table for graph's model with the right key and made-up times (in x out channels per layer plus a 0.1 ms
    constant): deterministic, unlike a measured one."""
    layers, _ = timed_layers(graph)
    entries = {}
    for layer in {layer.signature: layer for layer in layers}.values():
        axes = table_axes(layer, TINY.grid_points)
        grids = np.meshgrid(*[np.asarray(a, dtype=float) for a in axes], indexing="ij")
        entries[layer.signature] = {"axes": axes, "ms": np.prod(grids, axis=0).tolist()}
    LatencyTable(table_key(graph, layers, TINY), entries,
                 {"constant_ms": 0.1, "layer_scale": 1.0, "tail_ms": 0.0}).save(path)
    return path


def test_selection_meets_a_latency_target_from_below(tmp_path):
    _, graph = tiny_graph()
    cost, _ = load_or_build(graph, TINY, synthetic_table(graph, tmp_path / "t.json"), progress=False,
                            log=lambda _: None, select=select_subnetwork)
    scores = [np.linspace(1, 2, g.size) for g in graph.groups]
    masks = select_subnetwork(scores, cost, 0.5 * cost.dense)
    kept = cost(np.array([m.sum() for m in masks]))
    assert kept <= 0.5 * cost.dense
    assert all(cost(np.array([m.sum() + (i == g) for i, m in enumerate(masks)])) > 0.5 * cost.dense
               for g in range(2) if masks[g].sum() < graph.groups[g].size)  # nothing more fits


def test_matching_key_is_reused_and_other_settings_rebuild_only_when_replacing(built, tmp_path):
    """Issue 23: a named table of other settings (or another model's) was rebuilt over the old file; now it is
    refused, untouched, unless replacing is asked for (replace=True or replacing_tables(), the CLI's --force)."""
    graph, _, path = built
    copy = tmp_path / "t.json"
    copy.write_bytes(path.read_bytes())
    before = copy.stat().st_mtime_ns
    messages = []
    load_or_build(graph, TINY, copy, progress=False, log=messages.append, select=select_subnetwork)
    assert copy.stat().st_mtime_ns == before and "reusing" in messages[0]
    messages.clear()
    other = LatencySettings(batch_size=2, repeats=1, warmup=1, grid_points=3)
    with pytest.raises(LatencyTableError, match=r"built for other settings \(batch_size\) .*--force"):
        load_or_build(graph, other, copy, progress=False, log=messages.append, select=select_subnetwork)
    assert copy.stat().st_mtime_ns == before and messages == []
    with replacing_tables(False), pytest.raises(LatencyTableError):
        load_or_build(graph, other, copy, progress=False, log=messages.append, select=select_subnetwork)
    with replacing_tables():
        cost, _ = load_or_build(graph, other, copy, progress=False, log=messages.append, select=select_subnetwork)
    assert "other settings (batch_size)" in messages[0]
    assert LatencyTable.load(copy).key["batch_size"] == 2 and isinstance(cost, LatencyCostModel)
    copy.write_bytes(path.read_bytes())
    messages.clear()
    load_or_build(graph, other, copy, progress=False, log=messages.append, select=select_subnetwork, replace=True)
    assert "other settings (batch_size)" in messages[0] and LatencyTable.load(copy).key["batch_size"] == 2


def test_a_stored_table_noisier_than_this_runs_limit_is_not_reused(built, tmp_path):
    """Issue 23: a table accepted once under a raised --latency-noise-limit was reused by every later run whatever
    its own limit. Now the stored spread is checked against this run's limit: a named table is refused untouched
    (unless replacing), a cached one rebuilt; a limit that admits it reuses it."""
    graph, _, path = built
    data = json.loads(path.read_text())
    data["noise"] = {**data.get("noise", {}), "pair_ratio_spread": 0.8, "reference_spread": 0.1}
    noisy = tmp_path / "noisy.json"
    noisy.write_text(json.dumps(data))
    before = noisy.read_bytes()
    strict = replace(TINY, noise_limit=0.5)
    with pytest.raises(LatencyTableError, match=r"spread 80%, above this run's --latency-noise-limit 0.5 .*--force"):
        load_or_build(graph, strict, noisy, progress=False, log=lambda _: None, select=select_subnetwork)
    assert noisy.read_bytes() == before
    messages = []
    load_or_build(graph, replace(TINY, noise_limit=0.9), noisy, progress=False, log=messages.append,
                  select=select_subnetwork)
    assert "reusing" in messages[0] and noisy.read_bytes() == before
    messages.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(latency_build, "check_noise", lambda noise, limit: None)
        load_or_build(graph, strict, noisy, progress=False, log=messages.append, select=select_subnetwork,
                      replace=True)
    assert "spread 80%" in messages[0] and "rebuilding" in messages[0]
    assert LatencyTable.load(noisy).noise["pair_ratio_spread"] != 0.8


def test_another_models_table_is_refused_by_name(built, tmp_path):
    graph, _, path = built
    data = json.loads(path.read_text())
    data["key"]["model"] = "VGG"
    copy = tmp_path / "vgg.json"
    copy.write_text(json.dumps(data))
    before = copy.read_bytes()
    with pytest.raises(LatencyTableError, match=f"latency table {copy} was built for model VGG \\(model\\)"):
        load_or_build(graph, TINY, copy, progress=False, log=lambda _: None, select=select_subnetwork)
    assert copy.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "empty", "foreign_device", "not_a_table"])
def test_corrupt_or_foreign_table_is_refused_and_left_alone(built, tmp_path, damage):
    graph, _, path = built
    text = path.read_text()
    bad = tmp_path / "bad.json"
    if damage == "truncate":
        bad.write_text(text[: len(text) // 2])
    elif damage == "empty":
        bad.write_text("")
    elif damage == "foreign_device":
        data = json.loads(text)
        data["key"]["device"] = "NVIDIA H200"
        data["key"]["device_type"] = "cuda"
        bad.write_text(json.dumps(data))
    else:
        bad.write_text(json.dumps({"hello": 1}))
    before = bad.read_bytes()
    with pytest.raises(LatencyTableError, match=str(bad)):
        load_or_build(graph, TINY, bad, progress=False, log=lambda _: None, select=select_subnetwork)
    assert bad.read_bytes() == before


def test_policy_api_takes_a_latency_budget_and_reports_predictions(tmp_path):
    model, graph = tiny_graph()
    path = synthetic_table(graph, tmp_path / "t.json")
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8), Budget(latency=0.5), latency=TINY,
                                latency_table=path, prune_at=1, log=lambda _: None, latency_closed_loop=False)
    dense_ms = policy.predicted_latency_ms()
    assert dense_ms == pytest.approx(policy.cost.dense) and policy.latency_table_path == path
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    policy.step()
    assert policy.end_epoch()
    assert policy.predicted_latency_ms() <= 0.5 * dense_ms
    assert (model.conv1.out_channels, model.conv2.out_channels) == tuple(policy.widths()) != (4, 6)


def test_default_table_path_follows_the_cache_variable(built, tmp_path, monkeypatch):
    graph, _, path = built
    monkeypatch.setenv("EPIPRUNE_CACHE", str(tmp_path / "cache"))
    from epiprune.costs.latency_table import default_table_path

    layers, _ = timed_layers(graph)
    target = default_table_path(table_key(graph, layers, TINY))
    assert str(target).startswith(str(tmp_path / "cache" / "latency")) and target.name.startswith("convbnnet-")


def test_budget_keyword_forms():
    assert Budget(latency=0.5) == Budget("latency", 0.5) == Budget.parse("latency:0.5")
    assert Budget(flops=0.5) == Budget("flops", 0.5) and Budget(params=0.4).kind == "params"
    assert str(Budget(latency=0.25)) == "latency:0.25"
    with pytest.raises(EpipruneError, match="give one budget"):
        Budget(flops=0.5, latency=0.5)
    with pytest.raises(EpipruneError, match="outside"):
        Budget(latency=1.5)


def test_settings_refuse_bad_values():
    with pytest.raises(EpipruneError, match="latency target 'gpu'"):
        LatencySettings(target="gpu")
    with pytest.raises(EpipruneError, match="amp dtype 'int8'"):
        LatencySettings(amp="int8")
    with pytest.raises(EpipruneError, match="latency batch 0"):
        LatencySettings(batch_size=0)



def test_fine_axis_reads_the_next_grid_point_up_and_coarse_axis_interpolates():
    """Kernels pad channels to blocks: 9..16 channels cost what 16 cost. Gaps wider than a block: linear."""
    fine = interpolate([[1, 8, 16]], np.array([1.0, 2.0, 4.0]), [[9], [16], [8], [2], [0], [30]])
    assert fine.tolist() == [4.0, 4.0, 2.0, 2.0, 1.0, 4.0]
    coarse = interpolate([[1, 21, 41]], np.array([1.0, 2.0, 4.0]), [[11], [31], [21], [0], [99]])
    assert coarse.tolist() == [1.5, 3.0, 2.0, 1.0, 4.0]


def test_an_inference_table_times_forward_passes_only(tmp_path):
    model, graph = tiny_graph()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = LatencySettings(target="infer", batch_size=1, repeats=2, warmup=1, grid_points=3)
    cost, path = load_or_build(graph, settings, tmp_path / "infer.json", progress=False, log=lambda _: None,
                               select=select_subnetwork)
    table = LatencyTable.load(path)
    assert table.key["target"] == "infer" and table.key["batch_size"] == 1 and cost.dense > 0
    assert [p["network"] for p in table.calibration["points"]][:3] == ["uniform 1", "uniform 0.6", "uniform 0.3"]
    assert model.training  # timing ran on copies; the caller's model, BN statistics included, is as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
