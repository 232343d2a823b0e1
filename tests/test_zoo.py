"""Every block of tests/zoo.py: pruned correctly (policy, an epoch with a prune, zero-channel equivalence, carried
SGD / AdamW state, checkpoint round trip, ONNX export; the exact cost model is tested in test_surgery.py) or
refused at construction with the layer named and advice that works; the budget holds for every accepted model;
docs/MODELS.md matches."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from epiprune.costs.budget import Budget
from epiprune.costs.counting import counting_cost_models
from epiprune.errors import EpipruneError
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.policy.subnetwork import normalise_per_group, select_subnetwork
from epiprune.run.checkpoint import load_checkpoint, save_checkpoint
from epiprune.surgery import PrunableGraph, SurgeryError

from .helpers import random_keep
from .zoo import CLASSES, IN_CHANNELS, SIZE, ZOO, ConcatNet, GroupedNet, ShuffleNet, example_inputs, models_table

PRUNED = sorted(name for name, e in ZOO.items() if e.expect == "pruned")
REFUSED = sorted(name for name, e in ZOO.items() if e.expect == "refused")


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ZOO[name].build()


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN_CHANNELS, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, policy: EarlyPruningPolicy | None = None
                ) -> None:
    model.train()
    for i in range(steps):
        x, y = batch(seed=i)
        nn.functional.cross_entropy(model(x), y).backward()
        if policy is not None:
            policy.step()
        opt.step()
        opt.zero_grad()


def normalises_channels(group) -> bool:
    """A LayerNorm / GroupNorm over the group's channels: removing even an all-zero channel changes its mean and
    variance, so zero-channel equivalence cannot hold there (pruning is still correct: shapes and training)."""
    return any(isinstance(m, (nn.LayerNorm, nn.GroupNorm)) for m in group.out_modules)


@torch.no_grad()
def zero_dropped(graph: PrunableGraph, masks: list[np.ndarray]) -> None:
    """Make each dropped channel output exactly 0 wherever its group defines it: conv / linear rows and biases,
    BN / LayerNorm scales and shifts, and unwrapped per-channel parameters (layer scales)."""
    for gi, (g, keep) in enumerate(zip(graph.groups, masks, strict=True)):
        drop = torch.as_tensor(np.flatnonzero(~keep))
        if len(drop) == 0:
            continue
        for m in g.out_modules:
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                m.weight[drop] = 0
                if m.bias is not None:
                    m.bias[drop] = 0
        out_segs, _, objects = graph.channel_segments()
        for key, segs in out_segs.items():
            p = objects[key]
            if isinstance(p, nn.Parameter) and any(s == gi for s, _ in segs):
                p[drop] = 0


@pytest.mark.parametrize("name", PRUNED)
@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_policy_builds_and_an_epoch_with_a_prune_runs(name, importance):
    model = build(name)
    policy = EarlyPruningPolicy(model, example_inputs(), Budget(flops=0.5), prune_at=1, log=lambda _: None,
                                progress=False, importance=importance)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dense_flops = policy.count()[0]
    train_steps(model, opt, 2, policy)
    assert policy.end_epoch(opt)
    flops, _ = policy.count()
    assert flops <= 0.5 * dense_flops
    train_steps(model, opt, 2, policy)  # the smaller model trains on, with the carried optimizer
    with torch.no_grad():
        assert model.eval()(batch()[0]).shape == (8, CLASSES)


@pytest.mark.parametrize("name", PRUNED)
def test_pruning_zeroed_channels_leaves_outputs_unchanged(name):
    model = build(name).eval()
    graph = PrunableGraph(model, example_inputs())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    masks = random_keep(graph, 0.5, seed=3)
    masks = [np.ones_like(k) if normalises_channels(g) else k for g, k in zip(graph.groups, masks, strict=True)]
    assert sum(int((~k).sum()) for k in masks) > 0
    zero_dropped(graph, masks)
    x = batch()[0]
    with torch.no_grad():
        before = model(x)
    graph.prune(masks)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert graph.widths() == [int(k.sum()) for k in masks]


@pytest.mark.parametrize("name", PRUNED)
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_optimizer_state_of_surviving_slices_is_carried(name, opt_kind):
    """Each state tensor is set to a known function of its parameter before the surgery (momentum = 3 w; Adam's
    moments 2 w and w^2): after it, every state must be that function of the new parameter, i.e. sliced (or, for
    grouped convs' inputs, gathered) exactly as the parameter was."""
    model = build(name)
    graph = PrunableGraph(model, example_inputs())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if opt_kind == "sgd" else \
        torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, opt, 2)
    funcs = {"momentum_buffer": lambda w: 3 * w, "exp_avg": lambda w: 2 * w, "exp_avg_sq": lambda w: w * w}
    with torch.no_grad():
        for p, state in opt.state.items():
            for key, f in funcs.items():
                if key in state:
                    state[key].copy_(f(p))
    graph.prune(random_keep(graph, 0.5, seed=4), opt)
    live = list(model.parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in live}
    assert len(opt.state) == len(live)
    for p in live:
        for key, f in funcs.items():
            if key in opt.state[p]:
                torch.testing.assert_close(opt.state[p][key], f(p.detach()), rtol=0, atol=0)
    train_steps(model, opt, 1)  # state and parameter shapes agree


@pytest.mark.parametrize("name", PRUNED)
def test_checkpoint_after_the_prune_round_trips(name, tmp_path):
    model = build(name)
    policy = EarlyPruningPolicy(model, example_inputs(), Budget(params=0.5), prune_at=1, log=lambda _: None,
                                progress=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, opt, 2, policy)
    assert policy.end_epoch(opt)
    train_steps(model, opt, 1, policy)
    save_checkpoint(tmp_path / "ckpt.pt", model, opt, policy=policy)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    fresh = build(name, seed=1)
    fresh_policy = EarlyPruningPolicy(fresh, example_inputs(), Budget(params=0.5), prune_at=1, log=lambda _: None,
                                      progress=False)
    fresh_policy.load_state_dict(state["policy"])
    fresh.load_state_dict(state["model"])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(state["optimizer"])
    x = batch(seed=9)[0]
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
    assert fresh_policy.widths() == policy.widths()
    train_steps(fresh, fresh_opt, 1)


@pytest.mark.parametrize("name", PRUNED)
def test_onnx_export_of_the_pruned_model_agrees_with_onnxruntime(name, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import logging
    import warnings

    model = build(name).eval()
    graph = PrunableGraph(model, example_inputs())
    graph.prune(random_keep(graph, 0.5, seed=6))
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(2, IN_CHANNELS, SIZE, SIZE),), dynamo=True,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: "batch"},), verbose=False)
    program.save(str(tmp_path / "m.onnx"), external_data=False)
    x = batch(5, seed=7)[0]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)


def advised_layers(message: str, model: nn.Module) -> list[nn.Module]:
    """The layers a refusal says to pass in ignored_layers ('ignored_layers=[model.a, model.b.c]')."""
    found = re.search(r"ignored_layers=\[([^\]]*)\]", message)
    assert found, message
    return [model.get_submodule(n.strip().removeprefix("model.")) for n in found.group(1).split(",")]


@pytest.mark.parametrize("name", REFUSED)
def test_refused_blocks_name_the_layer_and_the_advice_gets_the_model_accepted(name):
    model = build(name)
    with pytest.raises(SurgeryError) as err:
        EarlyPruningPolicy(model, example_inputs(), Budget(flops=0.5), prune_at=1, log=lambda _: None,
                           progress=False)
    message = str(err.value)
    assert "\n" not in message and ZOO[name].refusal in message
    assert re.search(r"layer '[\w.]+'", message), message
    policy = EarlyPruningPolicy(model, example_inputs(), Budget(flops=0.5), prune_at=1, progress=False,
                                ignored_layers=advised_layers(message, model), log=lambda _: None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_steps(model, opt, 1, policy)
    assert policy.end_epoch(opt)
    train_steps(model, opt, 1, policy)


class ConcatIntoGrouped(nn.Module):
    """Two branches concatenated into a grouped conv: its groups would need to be balanced across two groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(IN_CHANNELS, 4, 3, padding=1)
        self.b = nn.Conv2d(IN_CHANNELS, 4, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.grouped(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.fc(x.mean(dim=(2, 3)))


def test_grouped_conv_fed_by_a_concatenation_is_refused_and_the_advice_works():
    model = ConcatIntoGrouped()
    with pytest.raises(SurgeryError, match="grouped convolution 'grouped'") as err:
        PrunableGraph(model, example_inputs())
    graph = PrunableGraph(model, example_inputs(), advised_layers(str(err.value), model))
    graph.self_check()
    assert graph.names == ["grouped"]


def test_grouped_conv_keeps_the_same_count_per_group_chosen_by_importance_within_each():
    """GroupedNet's 'reduce' group (8 channels) feeds a conv with groups=4: blocks {0,1}, {2,3}, {4,5}, {6,7}.
    Block 0 holds the two best channels, so the four best overall ([0, 1, 4, 7]) are not one per block: selection
    must keep the best of each block ([0, 3, 4, 7]: positions 0, 1, 0, 1 within the blocks), and the surgery must
    give every output channel the input its own group kept."""
    model = GroupedNet().eval()
    graph = PrunableGraph(model, example_inputs())
    names = graph.names
    g = names.index("reduce")
    assert graph.groups[g].partition.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert graph.groups[names.index("grouped")].blocks == 4  # outputs of groups=4, inputs of groups=2: 4 blocks
    scores = [np.ones(w) for w in graph.widths()]
    scores[g] = np.array([9.0, 8.5, 1.0, 2.0, 7.0, 1.0, 1.0, 3.0])
    cost = counting_cost_models(graph)["flops"]
    dense = graph.widths()
    # a budget tight enough to cut 'reduce' to 4 channels: at most its floor plus a bit of everything else
    floor = cost(np.array([4 if i == g else w for i, w in enumerate(dense)]))
    masks = select_subnetwork(normalise_per_group(scores), cost, floor, partitions=graph.partitions())
    for mask, group in zip(masks, graph.groups, strict=True):
        counts = np.bincount(group.partition[mask], minlength=group.blocks) if group.partition is not None else [0]
        assert len(set(np.asarray(counts).tolist())) == 1, (group.name, counts)
    assert np.flatnonzero(masks[g]).tolist() == [0, 3, 4, 7]
    old = model.grouped.weight.detach().clone()
    keep_out = np.flatnonzero(masks[names.index("grouped")])
    graph.prune(masks)
    # 'grouped' has 2 inputs per group; group b kept input [0, 1, 0, 1][b]: a gather, not one slice
    per_out = model.grouped.out_channels // 4
    for o_new, o_old in enumerate(keep_out):
        torch.testing.assert_close(model.grouped.weight[o_new, 0], old[o_old, [0, 1, 0, 1][o_new // per_out]])
    assert model.grouped.in_channels == 4 and model.grouped.weight.shape[1] == 1


def test_a_grouped_conv_in_ignored_layers_keeps_its_outputs_and_its_inputs_are_still_pruned_evenly():
    """The issue's second symptom: with the grouped conv ignored, the layer feeding it was still pruned unevenly
    and the same refusal repeated. Now the model is accepted and the feeding group keeps its partition."""
    model = GroupedNet()
    policy = EarlyPruningPolicy(model, example_inputs(), Budget(flops=0.6), prune_at=1, log=lambda _: None,
                                progress=False, ignored_layers=[model.grouped])
    assert "grouped" not in policy.group_names and policy.graph.groups[policy.group_names.index("reduce")].blocks == 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, opt, 1, policy)
    assert policy.end_epoch(opt)
    assert model.grouped.out_channels == 16 and model.grouped.in_channels % 4 == 0


def test_a_keep_list_that_unbalances_a_grouped_conv_is_refused():
    graph = PrunableGraph(GroupedNet(), example_inputs())
    keep = [np.arange(g.size) for g in graph.groups]
    keep[graph.names.index("reduce")] = np.array([0, 1, 2, 4, 6])  # block 0 keeps 2, the others 1
    with pytest.raises(EpipruneError, match="same number of channels"):
        graph.prune(keep)


def test_concat_into_a_projection_meets_the_flops_budget():
    """The issue's case: two branches concatenated into a 1x1 projection. With one input group per layer the cost
    model scaled the projection by one branch's fraction (a flops:0.5 prune landed at 0.514). Scores that cut one
    branch hard and keep the other make that error as large as it gets."""
    for first, second in (("branch1", "branch3"), ("branch3", "branch1")):
        model = ConcatNet()
        graph = PrunableGraph(model, example_inputs())
        cost = counting_cost_models(graph)["flops"]
        dense = graph.count()[0]
        rng = np.random.default_rng(0)
        scores = [rng.random(w) + 1 for w in graph.widths()]
        scores[graph.names.index(first)] *= 1e-3
        scores[graph.names.index(second)] *= 1e3
        masks = select_subnetwork(scores, cost, 0.5 * cost.dense)
        graph.prune(masks)
        assert 0.48 <= graph.count()[0] / dense <= 0.5, (first, graph.widths())


@pytest.mark.parametrize("name", PRUNED)
@settings(max_examples=8, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["flops", "params"]), fraction=st.floats(0.2, 0.95), seed=st.integers(0, 2**16),
       multiple=st.sampled_from([1, 1, 2]))
def test_the_budget_holds_after_surgery_for_every_zoo_model(name, kind, fraction, seed, multiple):
    model = build(name)
    graph = PrunableGraph(model, example_inputs())
    cost = counting_cost_models(graph)[kind]
    dense = graph.count()[0 if kind == "flops" else 1]
    rng = np.random.default_rng(seed)
    scores = normalise_per_group([rng.random(w) for w in graph.widths()])
    try:
        masks = select_subnetwork(scores, cost, fraction * cost.dense, channel_multiple=multiple,
                                  partitions=graph.partitions())
    except EpipruneError:
        return  # a budget below what keeping one channel (block) per group costs: refused, not violated
    graph.prune(masks)
    after = graph.count()[0 if kind == "flops" else 1]
    assert after <= fraction * dense * (1 + 1e-9), (after / dense, fraction)


def test_models_doc_matches_the_zoo():
    """docs/MODELS.md's block table is what the zoo does now (regenerate with `python -m tests.zoo`)."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "MODELS.md").read_text()
    table = models_table()
    assert table in doc, "docs/MODELS.md is out of date: run `python -m tests.zoo` and commit the result"
    for name, entry in ZOO.items():
        assert f"| {name} |" in table and entry.expect in table


def test_zoo_models_are_tiny_and_shaped_as_documented():
    for entry in ZOO.values():
        model = entry.build()
        with torch.no_grad():
            assert model(torch.zeros(2, IN_CHANNELS, SIZE, SIZE)).shape == (2, CLASSES)
        assert sum(p.numel() for p in model.parameters()) < 5000
    assert isinstance(copy.deepcopy(ShuffleNet()), nn.Module)


def test_latency_budget_refuses_a_layer_fed_by_a_concatenation():
    """Latency tables time each layer as a function of one input group: a concatenation is refused by name."""
    from epiprune.costs.latency_table import timed_layers

    with pytest.raises(EpipruneError, match="layer 'project'.*several channel groups"):
        timed_layers(PrunableGraph(ConcatNet(), example_inputs()))
    with pytest.raises(EpipruneError, match="grouped convolution 'grouped'"):
        timed_layers(PrunableGraph(GroupedNet(), example_inputs()))


class FixedReshape(nn.Module):
    """A reshape to fixed sizes after 'b': removing any of b's channels breaks it; 'a' prunes fine."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(IN_CHANNELS, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.adaptive_avg_pool2d(self.b(torch.relu(self.a(x))), 2).reshape(len(x), 2, 16)
        return self.fc(y.flatten(1))


def test_self_check_names_the_layers_whose_ignoring_gets_the_model_accepted():
    model = FixedReshape()
    with pytest.raises(SurgeryError, match="cannot handle layer") as err:
        EarlyPruningPolicy(model, example_inputs(), Budget(flops=0.7), prune_at=1, log=lambda _: None,
                           progress=False)
    assert "\n" not in str(err.value)
    advised = advised_layers(str(err.value), model)
    assert advised == [model.b]
    policy = EarlyPruningPolicy(model, example_inputs(), Budget(flops=0.7), prune_at=1, log=lambda _: None,
                                progress=False, ignored_layers=advised)
    assert policy.group_names == ["a"]
