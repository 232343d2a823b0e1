import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import epiprune
from epiprune import Budget, EarlyPruningPolicy, EpipruneError
from epiprune.costs.budget import BudgetError
from epiprune.models import build_model
from epiprune.policy.subnetwork import floor_widths

from .helpers import ConvBNNet
from .test_decision import PEAKED_0, PEAKED_1, ScriptedImportance
from .test_latency import TINY, synthetic_table, tiny_graph
from .zoo import GroupedNet, example_inputs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_policy_example_runs_and_prunes(tmp_path, capsys):
    text = README.read_text()
    block = re.search(r"<!-- example:policy -->\s*```python\n(.*?)```", text, re.S).group(1)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    policy = namespace["policy"]
    assert policy.pruned and policy.prune_epoch <= 3
    assert "pruned after epoch" in capsys.readouterr().out
    state = epiprune.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["policy"]["kept"] == policy.kept


def test_readme_step_clock_example_runs_and_prunes_inside_an_epoch(capsys):
    text = README.read_text()
    block = re.search(r"<!-- example:step-clock -->\s*```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    policy = namespace["policy"]
    assert policy.pruned and policy.clock is not None and policy.prune_step <= 12  # the fallback at 1.5 epochs
    assert policy.history[-1].threshold is not None  # the auto threshold was measured
    assert f"pruned at step {policy.prune_step}" in capsys.readouterr().out


def loop(model, policy, optimizer, epochs, amp=False, channels_last=False, scheduler=None):
    torch.manual_seed(0)
    batches = [(torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))) for _ in range(3)]
    pruned_at = None
    for epoch in range(epochs):
        for x, y in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            policy.step()
            optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
        if policy.end_epoch(optimizer):
            pruned_at = epoch + 1
    return pruned_at


@pytest.mark.parametrize("amp,channels_last", [(True, False), (False, True)])
def test_policy_with_autocast_channels_last_scheduler_and_clipping(amp, channels_last):
    model = build_model("resnet20", 1, 10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 16, 16), Budget("flops", 0.5), window=1,
                                max_dense_epochs=2)
    assert loop(model, policy, optimizer, 4, amp=amp, channels_last=channels_last, scheduler=scheduler) == 2
    assert policy.count()[0] <= 0.51 * policy.dense_flops
    if channels_last:
        assert model.layers[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert [r.epoch for r in policy.history] == [1, 2]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** 6)


def test_policy_state_round_trip_after_pruning():
    model = build_model("resnet20", 1, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 16, 16), Budget("params", 0.4), prune_at=1)
    loop(model, policy, optimizer, 2)
    fresh = build_model("resnet20", 1, 10)
    fresh_policy = EarlyPruningPolicy(fresh, torch.zeros(1, 1, 16, 16), Budget("params", 0.4), prune_at=1)
    fresh_policy.load_state_dict(policy.state_dict())
    fresh.load_state_dict(model.state_dict())
    assert fresh_policy.widths() == policy.widths() and fresh_policy.trigger == "fixed"
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))


def test_random_importance_resumes_the_same_sequence_of_rankings():
    def policy_of(model):
        return EarlyPruningPolicy(model, torch.zeros(1, 1, 16, 16), Budget("flops", 0.5), importance="random",
                                  indicator="none", seed=3)

    model = build_model("resnet20", 1, 10)
    original = policy_of(model)
    for _ in range(2):
        original.end_epoch()
    resumed = policy_of(build_model("resnet20", 1, 10))
    resumed.load_state_dict(original.state_dict())
    restarted = policy_of(build_model("resnet20", 1, 10))  # what resuming did before: the generator from scratch
    want = original.dominant_subnetwork()
    got = resumed.dominant_subnetwork()
    assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(want, restarted.dominant_subnetwork(), strict=True))


def test_policy_state_from_another_budget_is_rejected():
    model = build_model("resnet20", 1, 10)
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 16, 16), Budget("flops", 0.5))
    other = EarlyPruningPolicy(build_model("resnet20", 1, 10), torch.zeros(1, 1, 16, 16), Budget("flops", 0.3))
    with pytest.raises(EpipruneError, match="budget"):
        other.load_state_dict(policy.state_dict())


def test_grad_scale_unscales_taylor_scores():
    def scores(scale):
        torch.manual_seed(0)
        model = build_model("resnet20", 1, 10)
        policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 16, 16))
        x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
        (scale * torch.nn.functional.cross_entropy(model(x), y)).backward()
        policy.step(grad_scale=scale)
        return policy.importance.scores()

    for a, b in zip(scores(1.0), scores(1024.0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-12)


class HardCodedReshape(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4, 2)

    def forward(self, x):
        return self.fc(self.conv(x)[:, :, :2, :2].reshape(x.shape[0], 8 * 4))


def test_model_the_graph_cannot_handle_names_the_layer():
    with pytest.raises(EpipruneError, match=r"cannot handle layer 'conv'.*HardCodedReshape"):
        EarlyPruningPolicy(HardCodedReshape(), torch.zeros(1, 1, 8, 8))


def test_budget_that_cannot_be_met_fails_at_construction():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)  # 2 channels: keeping 1 is 50% of the conv
            self.fc = torch.nn.Linear(2, 10)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    with pytest.raises(EpipruneError, match="cannot be met"):
        EarlyPruningPolicy(Tiny(), torch.zeros(1, 3, 8, 8), Budget("flops", 0.1))


def test_channel_multiple_prunes_to_whole_blocks_under_the_budget():
    model = build_model("resnet20", 1, 10)
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 16, 16), Budget("flops", 0.5), prune_at=0,
                                channel_multiple=8)
    policy.prune_now()
    assert all(w % 8 == 0 for w in policy.widths()), policy.widths()
    assert policy.count()[0] <= 0.5 * policy.dense_flops


# The policy's contract beyond the decision: prune_now, its state round trip, its summary, its constructor and
# budget messages (mutation testing found these unchecked).


def policy_of(model: torch.nn.Module, **kwargs: object) -> EarlyPruningPolicy:
    return EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), **kwargs)


def momentum_step(model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return optimizer


def test_prune_now_prunes_once_carries_the_optimizer_and_names_its_trigger():
    model = ConvBNNet()
    optimizer = momentum_step(model)
    policy = policy_of(model)
    policy.prune_now(optimizer)
    assert policy.pruned and policy.trigger == "fixed" and policy.prune_epoch == 0
    assert optimizer.param_groups[0]["params"][0] is model.conv1.weight  # the optimizer follows the new tensors
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].shape == model.conv1.weight.shape
    with pytest.raises(EpipruneError, match=r"^the model is already pruned \(a policy prunes once\)$"):
        policy.prune_now()
    other = policy_of(ConvBNNet())
    other.prune_now(trigger="manual")
    assert other.trigger == "manual"


def test_step_accumulates_taylor_until_the_prune_and_not_after():
    model = ConvBNNet()
    policy, reference = policy_of(model), policy_of(model)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    policy.step()
    reference.step(grad_scale=1.0)
    assert policy.importance.steps == 1
    for a, b in zip(policy.importance.scores(), reference.importance.scores(), strict=True):
        assert np.array_equal(a, b) and a.any()  # unscaled by default
    policy.prune_now()
    policy.step()
    assert policy.importance.steps == 0  # a pruned model's gradients are not accumulated


def test_end_epoch_carries_the_optimizer_across_the_prune():
    model = ConvBNNet()
    optimizer = momentum_step(model)
    policy = policy_of(model, prune_at=1)
    assert policy.end_epoch(optimizer)
    assert optimizer.param_groups[0]["params"][0] is model.conv1.weight
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].shape == model.conv1.weight.shape


def test_data_parallel_ranks_are_asked_to_agree(monkeypatch):
    """In one process the collectives are no-ops; what the policy hands them is what ranks would compare."""
    from epiprune import distributed

    reduced, agreed = [], []
    monkeypatch.setattr(distributed, "all_reduce_mean_", lambda tensors: reduced.append(tensors))
    monkeypatch.setattr(distributed, "agree_with_rank0", lambda value, what: agreed.append((value, what)) or value)
    policy = policy_of(ConvBNNet(), prune_at=1)
    assert policy.end_epoch()
    assert len(reduced) == 1 and [len(t) for t in reduced[0]] == [4, 6]  # the Taylor totals of both groups
    assert [what for _, what in agreed] == ["dominant sub-network", "pruning decision"]
    assert agreed[0][0] == [policy.kept[name] for name in policy.group_names] and agreed[1][0] == "fixed"


def test_state_round_trip_keeps_masks_kept_channels_and_the_decision():
    policy = policy_of(ConvBNNet(), window=1, indicator="earlybird-budget", max_dense_epochs=20)
    policy.importance = ScriptedImportance([PEAKED_0, PEAKED_1, PEAKED_1])
    for _ in range(3):
        policy.end_epoch()
    assert policy.trigger == "earlybird"
    state = policy.state_dict()
    resumed = policy_of(ConvBNNet(), window=1, indicator="earlybird-budget", max_dense_epochs=20)
    resumed.load_state_dict(state)
    assert resumed.pruned and resumed.kept == policy.kept and resumed.widths() == policy.widths()
    assert (resumed.epoch, resumed.prune_epoch, resumed.trigger) == (3, 3, "earlybird")
    assert len(resumed.masks) == 3 and all(np.array_equal(a, b) for a, b in zip(resumed.masks, policy.masks,
                                                                                strict=True))
    assert resumed.history == policy.history
    resumed.load_state_dict(state)  # loading the same pruned state again is fine
    older = policy_of(ConvBNNet(), window=1, indicator="earlybird-budget", max_dense_epochs=20)
    older.load_state_dict({k: v for k, v in state.items() if k != "masks"})  # checkpoints from before Early-Bird
    assert older.masks == [] and older.pruned
    unpruned = policy_of(ConvBNNet(), window=1, indicator="earlybird-budget", max_dense_epochs=20)
    unpruned.load_state_dict(state)
    unpruned.kept = {name: [0] for name in unpruned.group_names}  # as if pruned otherwise
    with pytest.raises(EpipruneError, match=r"^policy state was pruned differently from this \(already pruned\) "
                                            r"model$"):
        unpruned.load_state_dict(state)


def test_state_from_another_policy_names_what_differs():
    state = policy_of(ConvBNNet()).state_dict()
    other = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget("flops", 0.3))
    with pytest.raises(EpipruneError, match=r"^policy state does not match: budget 'flops:0.5' vs 'flops:0.3'$"):
        other.load_state_dict(state)


def test_summary_describes_the_run():
    policy = policy_of(ConvBNNet(), window=1, threshold=0.95, max_dense_epochs=20, smooth=1)
    policy.importance = ScriptedImportance([PEAKED_0])
    policy.end_epoch()
    policy.end_epoch()
    summary = policy.summary()
    assert summary == {"budget": "flops:0.5", "importance": "taylor", "indicator": "epi", "window": 1,
                       "epi_average": "layer", "peak": 0, "smooth": 1, "threshold": 0.95, "prune_epoch": 2,
                       "trigger": "epi", "epi_every": 0, "prune_step": None,
                       "history": [{"epoch": 1, "epi": None, "widths": [1, 6], "decision": None, "earlybird": None,
                                    "epi_layer": None, "epi_group": None, "step": None, "noise": None,
                                    "threshold": 0.95, "compared": None, "compared_with": 0.95},
                                   {"epoch": 2, "epi": 1.0, "widths": [1, 6], "decision": "epi",
                                    "earlybird": 1.0, "epi_layer": 1.0, "epi_group": 1.0, "step": None,
                                    "noise": None, "threshold": 0.95, "compared": 1.0, "compared_with": 0.95}]}


def test_predicted_latency_of_given_widths(tmp_path):
    model, graph = tiny_graph()
    path = synthetic_table(graph, tmp_path / "t.json")
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8), Budget(latency=0.5), latency=TINY,
                                latency_table=path, log=lambda _: None)
    assert policy.predicted_latency_ms([2, 3]) == pytest.approx(policy.cost(np.array([2, 3])))
    assert policy.predicted_latency_ms([2, 3]) < policy.predicted_latency_ms()
    assert policy_of(ConvBNNet()).predicted_latency_ms() is None


@pytest.mark.parametrize("text", ["flops:abc", "flops:0.5:1", "flops", "flops:nan"])
def test_bad_budget_text_is_named(text):
    with pytest.raises(EpipruneError, match=r"^bad budget .* \(accepted: flops:F, params:F or latency:F"):
        Budget.parse(text)


def test_constructor_defaults_and_refusals(monkeypatch):
    from epiprune.policy import early_pruning as policy_module
    from epiprune.policy.indicator import TriggerRule

    model = ConvBNNet()
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8))
    assert policy.budget == Budget("flops", 0.5) and policy.target == 0.5 * policy.cost.dense
    assert policy.model is model and policy.dense_widths == [4, 6] and policy.latency_table_path is None
    assert policy.group_names == ["conv1", "conv2"]
    assert policy_of(ConvBNNet(), ignored_layers=[model.conv1]).group_names == ["conv1", "conv2"]  # another model's
    other = ConvBNNet()
    assert policy_of(other, ignored_layers=[other.conv1]).group_names == ["conv2"]
    assert policy.rule == TriggerRule(window=3, threshold=0.944, min_dense_epochs=4, max_dense_epochs=None, smooth=2,
                                      prune_at=None, require_peak=False)
    assert (policy.min_channels, policy.channel_multiple, policy.indicator, policy.importance_kind) == \
        (1, 1, "epi", "taylor")
    assert (policy.epoch, policy.prune_epoch, policy.trigger, policy.kept, policy.history, policy.masks) == \
        (0, None, None, None, [], [])
    fixed = policy_of(ConvBNNet(), prune_at=2, max_dense_epochs=5)
    assert (fixed.rule.min_dense_epochs, fixed.rule.max_dense_epochs, fixed.rule.prune_at) == (0, None, 2)
    assert policy_of(ConvBNNet(), importance="random").importance.seed == 0
    assert policy_of(ConvBNNet(), importance="random", seed=3).importance.seed == 3
    assert policy_of(ConvBNNet(), require_peak=True).rule.require_peak
    assert policy_of(ConvBNNet(), indicator="earlybird").rule.threshold == pytest.approx(0.9)
    assert policy_of(ConvBNNet(), importance="magnitude").rule.threshold == 0.983
    with pytest.raises(EpipruneError,
                       match=r"^unknown importance 'psychic' \(accepted: taylor, magnitude, bn, random\)$"):
        policy_of(ConvBNNet(), importance="psychic")
    with pytest.raises(EpipruneError,
                       match=r"^unknown indicator 'tea' \(accepted: epi, earlybird, earlybird-budget, none\)$"):
        policy_of(ConvBNNet(), indicator="tea")
    calls = []

    def fake_load_or_build(graph: object, settings: object, path: object, progress: bool, log: object, *,
                           select: object) -> None:
        calls.append((settings, path, progress, log, select))
        raise EpipruneError("stop here")

    monkeypatch.setattr(policy_module, "load_or_build", fake_load_or_build)
    with pytest.raises(EpipruneError, match="stop here"):
        EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget(latency=0.5))
    from epiprune.costs.timing import LatencySettings
    from epiprune.policy.subnetwork import select_subnetwork

    assert calls == [(LatencySettings(), None, True, print, select_subnetwork)]


def test_budget_constructor_messages():
    with pytest.raises(EpipruneError, match=r"^give one budget, e\.g\. Budget\(flops=0\.5\) or Budget\('flops', 0\.5\) "
                                            r"\(got kind='flops', fraction=None, params=0\.5\)$"):
        Budget("flops", params=0.5)
    with pytest.raises(EpipruneError, match=r"got kind=None, fraction=0\.5, flops=0\.5, params=0\.4\)$"):
        Budget(fraction=0.5, flops=0.5, params=0.4)
    with pytest.raises(EpipruneError, match=r"^unknown budget kind 'watts' \(accepted: flops, params, latency\)$"):
        Budget("watts", 0.5)
    with pytest.raises(EpipruneError, match=r"^budget fraction 'half' is not a number \(accepted: 0 < F < 1\)$"):
        Budget("flops", "half")
    with pytest.raises(EpipruneError, match=r"^budget fraction 1\.0 is outside \(0, 1\)"):
        Budget("flops", 1.0)  # the whole model is no budget
    assert Budget() == Budget("flops", 0.5)


def test_policy_refuses_an_unknown_epi_average_and_an_empty_earlybird_queue_by_name():
    with pytest.raises(EpipruneError, match=r"^unknown EPI average 'median' \(accepted: layer, group\)$"):
        policy_of(ConvBNNet(), epi_average="median")
    with pytest.raises(EpipruneError, match=r"^Early-Bird queue 0 is too small \(accepted: an integer >= 1\)$"):
        policy_of(ConvBNNet(), earlybird_queue=0)
    assert policy_of(ConvBNNet(), indicator="earlybird", earlybird_queue=1).earlybird_queue == 1


def test_policy_selects_and_checks_its_budget_block_by_block_on_grouped_convs():
    """The policy hands the graph's partitions to every selection (equal counts in each block of a grouped conv)
    and the block counts to its construction-time budget check (a budget only the block floor misses is refused
    up front, not after the first epoch)."""
    policy = EarlyPruningPolicy(GroupedNet(), example_inputs(), Budget("flops", 0.5), log=lambda _: None,
                                progress=False)
    groups = policy.graph.groups
    assert any(g.partition is not None for g in groups)
    rng = np.random.default_rng(0)
    for _ in range(5):
        for mask, g in zip(policy.select([rng.random(g.size) for g in groups]), groups, strict=True):
            if g.partition is not None:
                assert len(set(np.bincount(g.partition[mask], minlength=g.blocks).tolist())) == 1, g.name
    cost, dense = policy.cost, policy.cost.dense_widths
    plain, blocked = cost(floor_widths(dense)), cost(floor_widths(dense, blocks=[g.blocks for g in groups]))
    assert plain < blocked
    with pytest.raises(BudgetError, match="grouped convolutions keep the same number"):
        EarlyPruningPolicy(GroupedNet(), example_inputs(), Budget("flops", (plain + blocked) / 2 / cost.dense),
                           log=lambda _: None, progress=False)
