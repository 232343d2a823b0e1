"""A latency budget for transformers (costs.unit_kinds): one table per block over its kept units (attention heads,
MLP neurons), the model's own block cut by the surgery and called as the model calls it, at the training shape.

Everything but the last test is deterministic: synthetic tables, fake layer and step timers (as tests/
test_closed_loop.py and tests/test_latency_seam.py do for CNNs), or only whether a step runs. The last one is a
short real `epiprune train --model lm_tiny --budget latency:F` run at tiny shapes, which times for a few seconds."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import epiprune.costs.calibration as calibration  # noqa: E402
from epiprune import Budget, EarlyPruningPolicy  # noqa: E402
from epiprune.costs.latency_build import build_table  # noqa: E402
from epiprune.costs.latency_model import LatencyCostModel  # noqa: E402
from epiprune.costs.latency_table import LatencyTable, LatencyTableError, table_axes, table_key, timed_layers  # noqa: E402
from epiprune.costs.layer_kinds import kind_of  # noqa: E402
from epiprune.costs.timing import LatencySettings, prepare_step  # noqa: E402
from epiprune.costs.unit_kinds import HEADS, NEURONS, BlockCall, block_calls  # noqa: E402
from epiprune.errors import EpipruneError  # noqa: E402
from epiprune.policy import latency_loop  # noqa: E402
from epiprune.policy.subnetwork import select_subnetwork  # noqa: E402
from epiprune.surgery import TransformerGraph, find_blocks  # noqa: E402

from .helpers import assert_one_line_error, call_main  # noqa: E402
from .test_transformer_surgery import T, llama, pixels, tokens, vit, zero_dropped  # noqa: E402

SETTINGS = LatencySettings(batch_size=2, grid_points=64)  # every unit count of these tiny blocks is a grid point
CASES = {"llama-gqa": (lambda: llama(kv=2, bias=True), tokens, (T, 64)), "vit": (vit, pixels, (17, 64))}
FAKE_MS = {"heads": lambda u: 1.0 + 2.0 * u, "neurons": lambda n: 0.5 + 0.25 * n}  # a block's time at u units


def graph_of(case: str) -> TransformerGraph:
    build, data, _ = CASES[case]
    return TransformerGraph(build(), data()[:1])


def owned_parameters(group) -> int:
    """Every element of the block's cut layers that a unit owns: their weights and the biases of cut rows."""
    return sum(c.linear.weight.numel() + (c.linear.bias.numel() if c.dim == 0 and c.linear.bias is not None else 0)
               for c in group.cuts)


@pytest.mark.parametrize("case", CASES)
def test_each_block_is_one_timed_layer_over_its_units_and_identical_blocks_share_a_table(case):
    graph = graph_of(case)
    layers, volume = timed_layers(graph)
    assert [layer.name for layer in layers] == graph.names
    assert [layer.kind for layer in layers] == [g.kind for g in graph.groups] == ["heads", "neurons"] * 2
    for i, (layer, g) in enumerate(zip(layers, graph.groups, strict=True)):
        assert layer.single_axis and layer.out_group == i and layer.dense_out == g.size
        assert layer.input_shape == CASES[case][2]  # one sample's (tokens, hidden): a ViT's 16 patches and CLS
        assert table_axes(layer, SETTINGS.grid_points) == [list(range(1, g.size + 1))]
    assert len({layer.signature for layer in layers}) == 2  # both layers' attention blocks are alike, and MLPs
    assert f"@{'x'.join(map(str, CASES[case][2]))} grad1" in layers[0].signature
    # the tail's regressor: the parameters each group's units own (costs.unit_kinds says why)
    assert volume.tolist() == [owned_parameters(g) for g in graph.groups]


@pytest.mark.parametrize("case", CASES)
def test_a_block_timed_at_fewer_units_is_the_models_block_cut_by_the_surgery(case):
    """What a table point times is the model's block with the other units removed, called with the model's own
    arguments (rotary embeddings for Llama): it computes what the dense block computes with those units zeroed."""
    graph = graph_of(case)
    for i, ((call, sample), g) in enumerate(zip(block_calls(graph), graph.groups, strict=True)):
        units = max(1, g.size - 1)
        cut = call.at_width(units)
        assert kind_of(cut) is {"heads": HEADS, "neurons": NEURONS}[g.kind] and cut.units == units
        assert call.units == g.size  # the model's block is untouched
        masked = find_blocks(copy.deepcopy(graph.model))
        zero_dropped(SimpleNamespace(groups=masked),
                     [np.arange(units) if j == i else np.arange(h.size) for j, h in enumerate(masked)])
        x = torch.randn(3, *sample, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = BlockCall(g.kind, masked[i].block, call.args, call.kwargs, call.slot)(x)
            torch.testing.assert_close(cut(x), expected, rtol=0, atol=1e-5)
            assert not torch.allclose(call(x), expected, atol=1e-3)  # the dropped unit did contribute


def synthetic_cost(graph: TransformerGraph, constant: float, scale: float, tail: float) -> LatencyCostModel:
    """The latency cost model of a table of FAKE_MS (no timing) with the given calibration."""
    layers, volume = timed_layers(graph)
    entries = {layer.signature: {"axes": table_axes(layer, SETTINGS.grid_points),
                                 "ms": [FAKE_MS[layer.kind](u) for u in table_axes(layer, SETTINGS.grid_points)[0]]}
               for layer in layers}
    table = LatencyTable(table_key(graph, layers, SETTINGS), entries,
                         {"constant_ms": constant, "layer_scale": scale, "tail_ms": tail})
    return LatencyCostModel(layers, table, graph.widths(), volume)


def test_a_synthetic_unit_table_predicts_the_hand_total_of_blocks_and_tail():
    graph = graph_of("llama-gqa")
    cost = synthetic_cost(graph, constant=0.5, scale=2.0, tail=4.0)
    params = [owned_parameters(g) for g in graph.groups]
    for widths in ([2, 48, 2, 48], [1, 7, 2, 30], [1, 1, 1, 1]):
        blocks = sum(FAKE_MS[g.kind](w) for g, w in zip(graph.groups, widths, strict=True))
        kept = sum(p * w / g.size for p, w, g in zip(params, widths, graph.groups, strict=True)) / sum(params)
        assert cost(np.asarray(widths)) == pytest.approx(0.5 + 2.0 * blocks + 4.0 * kept, rel=1e-12)


def fake_step_ms(model: torch.nn.Module) -> float:
    """A whole training step that is 3 ms plus 1.5 x its blocks' FAKE_MS at their widths (read off the model)."""
    return 3.0 + 1.5 * sum(FAKE_MS[g.kind](g.size) for g in find_blocks(model))


def fake_step_runner(seen: list):
    def runner(input_shape, settings, token_ids=False):
        seen.append(token_ids)
        return lambda model: lambda: fake_step_ms(model)
    return runner


def test_a_unit_table_is_timed_as_ratios_and_fitted_on_whole_steps_with_a_fake_timer(monkeypatch):
    graph = graph_of("llama-gqa")
    seen: list = []
    monkeypatch.setattr(calibration, "step_runner", fake_step_runner(seen))
    table = build_table(graph, SETTINGS, progress=False, log=lambda _m: None, select=select_subnetwork,
                        runner=lambda layer, c_in, c_out: lambda: FAKE_MS[layer.kind](c_out))
    assert seen == [True]  # a language model's steps are fed token ids
    heads, neurons = table.layers.values()
    assert heads["ratio"] == [FAKE_MS["heads"](1) / FAKE_MS["heads"](2), 1.0]
    assert neurons["ms"] == pytest.approx([FAKE_MS["neurons"](n) for n in range(1, 49)], rel=1e-12)
    assert table.noise["pair_ratio_spread"] == 0.0
    cost = LatencyCostModel(*timed_layers(graph)[:1], table, graph.widths(), timed_layers(graph)[1])
    assert (table.calibration["constant_ms"], table.calibration["layer_scale"]) == pytest.approx((3.0, 1.5))
    for point in table.calibration["points"]:  # the five calibration networks: dense, uniform, selected
        probe = calibration.pruned_copy(graph, [np.arange(w) for w in point["widths"]])
        assert cost(point["widths"]) == pytest.approx(fake_step_ms(probe), rel=1e-9)


def test_a_noisy_unit_table_build_is_refused_in_one_line(monkeypatch):
    graph = graph_of("vit")
    monkeypatch.setattr(calibration, "step_runner", fake_step_runner([]))
    rng = np.random.default_rng(0)
    with pytest.raises(LatencyTableError, match="too noisy to use") as error:
        build_table(graph, SETTINGS, progress=False, log=lambda _m: None, select=select_subnetwork,
                    runner=lambda layer, c_in, c_out: lambda: FAKE_MS[layer.kind](c_out) * rng.lognormal(0, 1))
    assert "\n" not in str(error.value)


def test_a_language_models_step_is_timed_on_token_ids():
    model = llama(kv=2)
    before = [p.detach().clone() for p in model.parameters()]
    run = prepare_step(model, (T,), LatencySettings(batch_size=2), token_ids=True)
    run()
    run()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # a copy is stepped
    with pytest.raises(RuntimeError):  # pixels are no token ids: why the flag exists
        prepare_step(model, (T,), LatencySettings(batch_size=2))()


def test_a_latency_budget_prunes_a_transformer_through_the_closed_loop(tmp_path, monkeypatch):
    """A table that misses a constant 20 ms of the true step (the fake device's): the policy's closed loop measures
    the table's pick and corrects it into [F - 0.03, F], on the device's step, not the table's."""
    model = llama(kv=2)
    example = tokens()[:1]
    graph = TransformerGraph(copy.deepcopy(model), example)
    synthetic_cost(graph, 0.0, 1.5, 0.0).table.save(tmp_path / "table.json")
    seen: list = []

    def device(input_shape, settings, token_ids=False):
        seen.append(token_ids)
        return lambda m: lambda: 20.0 + fake_step_ms(m)
    monkeypatch.setattr(latency_loop, "step_runner", device)
    lines: list[str] = []
    policy = EarlyPruningPolicy(model, example, Budget(latency=0.5), latency=SETTINGS,
                                latency_table=tmp_path / "table.json", log=lines.append, progress=False)
    assert isinstance(policy.cost, LatencyCostModel) and seen == [True]
    dense_ms = 20.0 + fake_step_ms(model)
    policy.prune_now()
    result = policy.latency_loop.result
    assert result.status == "met", result.message
    measured = (20.0 + fake_step_ms(model)) / dense_ms
    assert 0.47 <= measured <= 0.5 and measured == pytest.approx(result.measured_ratio)
    assert result.iterations[0].measured_ratio > 0.5  # the table's own pick was too slow on this device
    assert any(line.startswith("latency closed loop: met") for line in lines)
    assert policy.widths() != policy.dense_widths


def test_lm_tiny_trains_under_a_latency_budget_from_the_command_line(tmp_path, monkeypatch, capsys):
    """The real thing at tiny shapes: `latency-table` times lm_tiny's blocks at the run's batch and sequence length
    into the cache file train looks for, the run reuses it, prunes to the budget through the closed loop and records
    the table's prediction against the measured step. (The noise limit is raised: this is about the path, and the
    test machine is busy.)"""
    monkeypatch.setenv("EPIPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    built = call_main(["latency-table", "--model", "lm_tiny", "--seq-len", "32", "--batch", "8",
                       "--latency-noise-limit", "5", "--no-progress"], capsys)
    assert built.returncode == 0 and "dense train step at batch 8" in built.stdout, built.stderr
    argv = ["train", "--model", "lm_tiny", "--data", "text", "--epochs", "1", "--budget", "latency:0.7",
            "--train-subset", "64", "--val-subset", "8", "--batch-size", "8", "--seq-len", "32",
            "--epi-every", "2", "--prune-at", "0.25", "--latency-noise-limit", "5", "--no-progress",
            "--out", str(tmp_path / "run")]
    result = call_main(argv, capsys)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    loop = summary["latency_closed_loop"]
    assert loop["status"] in ("met", "noise", "granularity", "iteration cap", "time cap"), loop
    assert loop["iterations"][loop["chosen"]]["measured_ratio"] <= 0.7 + 0.1  # within budget, up to the noise
    assert summary["latency"]["measured_ratio"] < 1.0
    assert "latency table: reusing" in result.stdout and "building" not in result.stdout
    assert "latency closed loop:" in result.stdout and "% predicted by the table" in result.stdout
    table = json.loads(next((tmp_path / "cache" / "latency").glob("*.json")).read_text())
    assert table["key"]["model"] == "LlamaForCausalLM" and table["key"]["input_size"] == [32]
    assert sorted(s.split()[0] for s in table["layers"]) == ["heads", "neurons"]


def test_a_latency_budget_for_a_transformer_builds_under_the_same_noise_limit(tmp_path, monkeypatch, capsys):
    """The noise refusal of the CNN tables holds for lm_tiny's: a build as noisy as a busy machine's is refused."""
    import epiprune.costs.latency_build as latency_build

    measure = latency_build.measure_layer_ratios
    monkeypatch.setattr(latency_build, "measure_layer_ratios",
                        lambda *a, **k: (measure(*a, **k)[0], {"pair_ratio_spread": 0.9, "reference_spread": 0.2}))
    monkeypatch.setenv("EPIPRUNE_CACHE", str(tmp_path / "cache"))
    argv = ["train", "--model", "lm_tiny", "--data", "text", "--epochs", "1", "--budget", "latency:0.5",
            "--train-subset", "16", "--val-subset", "8", "--batch-size", "2", "--seq-len", "8", "--epi-every", "2",
            "--no-progress",
            "--out", str(tmp_path / "run")]
    assert_one_line_error(call_main(argv, capsys), "too noisy to use", "spread 90%")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))


def test_bad_block_for_a_table_is_refused_in_one_line():
    call, _ = block_calls(graph_of("vit"))[1]
    with pytest.raises(EpipruneError, match=r"cannot be timed at 49 \(accepted: 1 to 48\)"):
        call.at_width(49)
