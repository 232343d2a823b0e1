import numpy as np
import torch

from epiprune.policy.importance import MagnitudeImportance, TaylorAccumulator
from epiprune.surgery import PrunableGraph

from .helpers import ConvBNNet


def explicit_taylor(model, x, y):
    """|sum over batch and positions of activation * gradient| at each BN output, by hooks."""
    saved = {}

    def keep(name):
        def hook(_m, _i, out):
            out.retain_grad()
            saved[name] = out
        return hook

    h1 = model.bn1.register_forward_hook(keep("bn1"))
    h2 = model.bn2.register_forward_hook(keep("bn2"))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    h1.remove()
    h2.remove()
    return [(saved[n] * saved[n].grad).sum(dim=(0, 2, 3)).abs().double().detach() for n in ("bn1", "bn2")]


def test_taylor_from_gradients_equals_activation_times_gradient():
    model = ConvBNNet()
    graph = PrunableGraph(model, torch.zeros(1, 1, 8, 8))
    acc = TaylorAccumulator(graph)
    expected = [torch.zeros(4, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)]
    for step in range(3):
        x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
        model.zero_grad()
        for e, v in zip(expected, explicit_taylor(model, x, y), strict=True):
            e += v
        acc.step()
        assert acc.steps == step + 1
    for got, want in zip(acc.scores(), expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-9)
    acc.reset()
    assert all((s == 0).all() for s in acc.scores()) and acc.steps == 0


def test_taylor_sums_all_coupled_bns_of_a_residual_group():
    from epiprune.models import build_model

    model = build_model("resnet20", 1, 10)
    graph = PrunableGraph(model, torch.zeros(1, 1, 16, 16))
    stem = graph.groups[0]
    # stage-1 residual group: stem BN + the second BN of the three blocks
    assert stem.name == "conv1" and len(stem.taylor_targets) == 4


def test_magnitude_is_group_l2_norm():
    model = ConvBNNet()
    graph = PrunableGraph(model, torch.zeros(1, 1, 8, 8))
    scores = MagnitudeImportance(graph).scores()
    assert [len(s) for s in scores] == [4, 6]
    with torch.no_grad():
        model.conv2.weight[2] *= 10
    assert int(np.argmax(MagnitudeImportance(graph).scores()[1])) == 2
