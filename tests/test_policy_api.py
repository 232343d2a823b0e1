import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import epiprune
from epiprune import Budget, EarlyPruningPolicy, EpipruneError
from epiprune.models import build_model

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
