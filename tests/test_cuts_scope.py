"""The surgery leaves torch-pruning as it found it (issue 22, item 4): no attribute of a torch-pruning class or of its
shared pruners is replaced, not even during a prune, so two threads pruning two models at once each get their own
cuts and optimizer remap; and an untested torch-pruning is refused in one line when a graph is built or pruned."""

from __future__ import annotations

import copy
import sys
import threading

import pytest
import torch
import torch_pruning as tp
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.pruner import function
from torch_pruning.pruner.function import BasePruningFunc

from epiprune.models import build_model
from epiprune.surgery import PrunableGraph, SurgeryError, cuts

ROUNDS = 4  # prunes per model in the thread test: more chances for the two threads' prunes to overlap

# torch-pruning's classes the surgery goes through, and its module-level (shared) pruners
TP_CLASSES = (BasePruningFunc, Dependency, tp.Group, tp.DependencyGraph,
              *{type(p) for p in function.PrunerBox.values()})


def _snapshot() -> dict[object, dict[str, object]]:
    """Every attribute of torch-pruning's classes and of its shared pruner objects, by identity."""
    state: dict[object, dict[str, object]] = {cls: dict(vars(cls)) for cls in TP_CLASSES}
    state.update({id(p): dict(vars(p)) for p in function.PrunerBox.values()})
    return state


def _changed(before: dict[object, dict[str, object]]) -> list[str]:
    after = _snapshot()
    return [f"{getattr(k, '__name__', k)}.{name}" for k in before for name in before[k].keys() | after[k].keys()
            if before[k].get(name) is not after[k].get(name) and name != "pruning_dim"]


def _trained(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor]:
    """A registry model after one SGD step with momentum, so that every parameter has a momentum buffer."""
    torch.manual_seed(0)
    model = build_model(name)
    x = torch.randn(4, 3, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).logsumexp(1).mean().backward()
    opt.step()
    return model, opt, x


def test_prune_replaces_no_attribute_of_torch_pruning(monkeypatch):
    """resnext20_4x8d: grouped convolutions (our input cut) and plain ones (torch-pruning's cuts, recorded). The
    classes are checked in the middle of the prune too (at each grouped-conv input cut), not only after it."""
    model, opt, x = _trained("resnext20_4x8d")
    graph = PrunableGraph(model, x[:1])
    before = _snapshot()
    seen_during: list[list[str]] = []
    real_cut = cuts.prune_grouped_conv_inputs

    def watching(conv, drop):  # noqa: ANN001, ANN202
        seen_during.append(_changed(before))
        return real_cut(conv, drop)

    monkeypatch.setattr(cuts, "prune_grouped_conv_inputs", watching)
    graph.prune(graph.one_less(), opt)
    assert seen_during and all(not c for c in seen_during), seen_during[:1]
    assert _changed(before) == []
    assert BasePruningFunc.__dict__["_prune_parameter_and_grad"] is before[BasePruningFunc]["_prune_parameter_and_grad"]
    assert Dependency.__dict__["__call__"] is before[Dependency]["__call__"]


def _expected(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, PrunableGraph, dict]:
    """The model, optimizer and graph to prune in a thread, and what a prune of a copy alone gives."""
    model, opt, x = _trained(name)
    ref_model, ref_opt = copy.deepcopy((model, opt))
    ref_graph = PrunableGraph(ref_model, x[:1])
    for _ in range(ROUNDS):
        ref_graph.prune(ref_graph.one_less(), ref_opt)
    params = [p for g in ref_opt.param_groups for p in g["params"]]
    expected = {"weights": ref_model.state_dict(), "momentum": [ref_opt.state[p]["momentum_buffer"] for p in params]}
    return model, opt, PrunableGraph(model, x[:1]), expected


def _check(model: torch.nn.Module, opt: torch.optim.Optimizer, expected: dict) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.parameters()}, "optimizer not pointed at the new params"
    weights = model.state_dict()
    assert weights.keys() == expected["weights"].keys()
    assert all(torch.equal(weights[k], expected["weights"][k]) for k in weights)
    momentum = [opt.state[p]["momentum_buffer"] for p in params]
    assert [m.shape for m in momentum] == [m.shape for m in expected["momentum"]]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected["momentum"], strict=True))


def test_two_threads_pruning_two_models_get_their_own_cuts():
    """resnext20_4x8d (grouped convs) and mobilenetv2_small (depthwise convs) pruned ROUNDS times each, at the same time
    in two threads (thread switches forced every microsecond): each optimizer gets exactly the remap that pruning
    its model alone gives, and torch-pruning is left as it was."""
    jobs = [_expected("resnext20_4x8d"), _expected("mobilenetv2_small")]
    before = _snapshot()
    start, errors = threading.Barrier(len(jobs)), []

    def prune(graph: PrunableGraph, opt: torch.optim.Optimizer) -> None:
        try:
            start.wait()
            for _ in range(ROUNDS):
                graph.prune(graph.one_less(), opt)
        except Exception as e:  # reported in the main thread
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=prune, args=(graph, opt)) for _, opt, graph, _ in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    for model, opt, _, expected in jobs:
        _check(model, opt, expected)
    assert _changed(before) == []


@pytest.mark.parametrize("version", ["1.7.0", "1.6.0", "2.0.1", "unknown"])
def test_untested_torch_pruning_is_refused_in_one_line(monkeypatch, version):
    model, opt, x = _trained("resnet20")
    graph = PrunableGraph(model, x[:1])
    widths = graph.widths()
    monkeypatch.setattr(cuts, "TORCH_PRUNING_VERSION", version)
    for attempt in (lambda: PrunableGraph(model, x[:1]), lambda: graph.prune(graph.one_less(), opt)):
        with pytest.raises(SurgeryError) as exc:
            attempt()
        message = str(exc.value)
        assert message == (f"torch-pruning {version} is not tested with epiprune's surgery "
                           f"(accepted: {cuts.TESTED_TORCH_PRUNING_TEXT})")
        assert "\n" not in message
    assert graph.widths() == widths and model.conv1.weight.shape[0] == widths[0]  # refused before any cut


@pytest.mark.parametrize("version", ["1.6.1", "1.6.2", "1.6.10rc1"])
def test_tested_torch_pruning_versions_are_accepted(monkeypatch, version):
    monkeypatch.setattr(cuts, "TORCH_PRUNING_VERSION", version)
    cuts.check_torch_pruning_version()
