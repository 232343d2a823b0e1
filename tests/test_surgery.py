import numpy as np
import pytest
import torch

from epiprune.costs.counting import _cost_model, _segments, counting_cost_models
from epiprune.models import build_model, channel_models
from epiprune.policy.subnetwork import normalise_per_group, select_subnetwork
from epiprune.surgery import PrunableGraph, SurgeryError

from .helpers import ConvBNNet, random_keep, zero_dropped_channels
from .zoo import ZOO, example_inputs

# the registry's channel (CNN) models; the transformers (heads and neurons) have tests/test_transformer_*.py
CNNS = sorted(channel_models())


@pytest.mark.parametrize("name", CNNS)
def test_zeroed_channels_give_same_outputs_after_surgery(name):
    in_ch = 1 if name != "vgg11_bn" else 3
    model = build_model(name, in_ch, 10).eval()
    example = torch.zeros(1, in_ch, 28, 28)
    graph = PrunableGraph(model, example)
    masks = random_keep(graph, 0.6, seed=1)
    # a LayerNorm over a group's channels (ConvNeXt) makes removing even an all-zero channel change its statistics:
    # such groups stay whole here (docs/MODELS.md)
    masks = [np.ones_like(k) if any(isinstance(m, torch.nn.LayerNorm) for m in g.out_modules) else k
             for g, k in zip(graph.groups, masks, strict=True)]
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    zero_dropped_channels(graph, masks)
    assert sum(int((~k).sum()) for k in masks) > 0
    x = torch.randn(4, in_ch, 28, 28)
    with torch.no_grad():
        before = model(x)
    params_before = sum(p.numel() for p in model.parameters())
    graph.prune(masks)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert graph.widths() == [int(m.sum()) for m in masks]
    assert sum(p.numel() for p in model.parameters()) < params_before
    # every BN really shrank to its group's width
    for g in graph.groups:
        for m in g.out_modules:
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.weight.shape[0] == m.running_mean.shape[0] == g.size


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("kind,fraction", [("flops", 0.5), ("params", 0.4), ("flops", 0.3)])
def test_pruned_cost_is_within_two_percent_of_budget(name, kind, fraction):
    model = build_model(name, 1, 10)
    graph = PrunableGraph(model, torch.zeros(1, 1, 28, 28))
    cost = counting_cost_models(graph)[kind]
    dense = graph.count()
    rng = np.random.default_rng(0)
    scores = normalise_per_group([rng.random(w) for w in graph.widths()])
    masks = select_subnetwork(scores, cost, fraction * cost.dense, partitions=graph.partitions())
    graph.prune(masks)
    after = graph.count()
    ratio = after[0] / dense[0] if kind == "flops" else after[1] / dense[1]
    assert fraction * 0.98 <= ratio <= fraction * 1.02, ratio


def test_momentum_of_surviving_weights_is_carried_and_training_continues():
    model = ConvBNNet()
    graph = PrunableGraph(model, torch.zeros(1, 1, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 3, (4,))).backward()
        opt.step()
        opt.zero_grad()
    old_conv2 = opt.state[model.conv2.weight]["momentum_buffer"].clone()
    old_bn1 = opt.state[model.bn1.weight]["momentum_buffer"].clone()
    keep0, keep1 = np.array([0, 2, 3]), np.array([1, 4])
    graph.prune([keep0, keep1], opt)
    assert model.conv2.weight.shape == (2, 3, 3, 3)
    new_conv2 = opt.state[model.conv2.weight]["momentum_buffer"]  # cut twice: out channels, then in channels
    torch.testing.assert_close(new_conv2, old_conv2[keep1][:, keep0])
    torch.testing.assert_close(opt.state[model.bn1.weight]["momentum_buffer"], old_bn1[keep0])
    live = {id(p) for p in model.parameters()}
    assert all(id(p) in live for g in opt.param_groups for p in g["params"])
    assert len(opt.state) == len(live)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 3, (4,)))
    loss.backward()
    opt.step()  # shapes of state and parameters agree


def test_adam_state_is_carried():
    model = ConvBNNet()
    graph = PrunableGraph(model, torch.zeros(1, 1, 8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 3, (4,))).backward()
    opt.step()
    exp_avg = opt.state[model.bn2.weight]["exp_avg"].clone()
    graph.prune([np.arange(4), np.array([0, 5])], opt)
    torch.testing.assert_close(opt.state[model.bn2.weight]["exp_avg"], exp_avg[[0, 5]])
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 3, (4,))).backward()
    opt.step()


def test_bad_keep_lists_are_rejected():
    from epiprune.errors import EpipruneError

    graph = PrunableGraph(ConvBNNet(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(EpipruneError, match="every channel"):
        graph.prune([np.zeros(4, dtype=bool), np.ones(6, dtype=bool)])
    with pytest.raises(EpipruneError, match="out of range"):
        graph.prune([np.array([0, 9]), np.arange(6)])
    with pytest.raises(EpipruneError):
        graph.prune([np.arange(4)])


def sequential_net() -> torch.nn.Module:
    """A classifier fed by modules (pool, flatten), not by a functional op: they inherit the group of their input."""
    nn = torch.nn
    # biases too: a bias costs out-channels x positions, scaled by the output group only
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 30))


@pytest.mark.parametrize("name", ["convbn", "sequential", "vgg11_bn", "mobilenetv2_small", "resnet20"])
def test_cost_models_predict_the_pruned_count_exactly(name):
    if name in ("convbn", "sequential"):
        model = ConvBNNet() if name == "convbn" else sequential_net()
    else:
        model = build_model(name, 3 if name == "vgg11_bn" else 1, 10)
    example = torch.zeros(1, 3 if name == "vgg11_bn" else 1, *((8, 8) if name == "convbn" else (28, 28)))
    # exact: biases scale with output channels only, activation modules with the group of their anonymous op
    costs, dense, _ = check_cost_models_against_the_counter(PrunableGraph(model, example), 0.5, seed=2)
    assert (costs["flops"].dense, costs["params"].dense) == dense


def check_cost_models_against_the_counter(graph: PrunableGraph, fraction: float, seed: int):
    """Assert that the graph's cost models give torch-pruning's count of FLOPs and parameters for the dense model
    and, after surgery, for a random sub-network keeping about `fraction` per group. Returns (cost models, dense
    (FLOPs, params) as counted, kept widths)."""
    costs = counting_cost_models(graph)
    dense_flops, dense_params = graph.count()
    assert costs["flops"].dense == pytest.approx(dense_flops) and costs["params"].dense == pytest.approx(dense_params)
    masks = random_keep(graph, fraction, seed=seed)
    widths = np.array([int(m.sum()) for m in masks])
    graph.prune(masks)
    flops, params = graph.count()
    assert costs["flops"](widths) == pytest.approx(flops, abs=1e-6)
    assert costs["params"](widths) == pytest.approx(params, abs=1e-6)
    return costs, (dense_flops, dense_params), widths


@pytest.mark.parametrize("name", sorted(name for name, e in ZOO.items() if e.expect == "pruned"))
def test_cost_model_equals_the_counter_after_surgery_for_every_zoo_block(name):
    """Grouped and depthwise convs, concatenations, layer scales, SE and LayerNorm blocks (tests/zoo.py): the
    predicted FLOPs and parameters of a random sub-network are torch-pruning's count of the pruned copy. (Here,
    not in test_zoo.py, so that mutation testing runs it against the cost model.)"""
    torch.manual_seed(0)
    check_cost_models_against_the_counter(PrunableGraph(ZOO[name].build(), example_inputs()), 0.4, seed=5)


class _BlockOwnedScale(torch.nn.Module):
    """timm's ConvNeXt block keeps its layer scale `gamma` on the block itself (a container with children), and a
    scalar parameter of the block scales the residual: both are costed as the container's own parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = torch.nn.LayerNorm(channels)
        self.fc1 = torch.nn.Linear(channels, 2 * channels)
        self.fc2 = torch.nn.Linear(2 * channels, channels)
        self.gamma = torch.nn.Parameter(torch.full((channels,), 0.5))
        self.alpha = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(y))))
        return x + self.alpha * y.permute(0, 3, 1, 2)


def test_cost_model_counts_parameters_a_container_owns():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 2, stride=2), _BlockOwnedScale(8), _BlockOwnedScale(8),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    costs, _, widths = check_cost_models_against_the_counter(PrunableGraph(model, torch.randn(1, 1, 16, 16)), 0.5,
                                                             seed=3)
    assert (widths < costs["params"].dense_widths).any()  # some channels were cut


class _ScaleHolder(torch.nn.Module):
    """A leaf module that only holds a per-channel scale; its parent applies it, so no op of the leaf itself sets
    its channels: the parameter's own segments must scale it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.full((channels, 1, 1), 0.5))


class _HeldScaleBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.scale = _ScaleHolder(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale.gamma


def test_cost_model_scales_a_parameter_its_leaf_module_only_holds():
    torch.manual_seed(0)
    model = torch.nn.Sequential(_HeldScaleBlock(), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10))
    costs, _, widths = check_cost_models_against_the_counter(PrunableGraph(model, torch.randn(1, 1, 12, 12)), 0.5,
                                                             seed=3)
    assert (widths < costs["params"].dense_widths).any()


def test_segments_complete_a_layer_or_fix_it_when_groups_cover_more_than_it_has():
    """Channels no group sets are one fixed segment (-1); groups covering more channels than the layer has (a module
    reached twice) make the whole layer fixed rather than count it twice. Unreachable through torch-pruning's
    groups today (they cover every output channel once), so checked here directly."""
    table = {7: [(0, 2)], 8: [(0, 5)], 9: [(0, 4), (1, 4)]}
    assert _segments(7, table, 5) == [(0, 2), (-1, 3)]
    assert _segments(8, table, 5) == [(0, 5)]
    assert _segments(9, table, 5) == [(-1, 5)]
    assert _segments(9, table, None) == [(0, 4), (1, 4)]
    assert _segments(6, table, 3) == [(-1, 3)]


def test_a_term_that_costs_exactly_one_still_scales_with_its_group():
    """Only terms of zero cost are skipped: a one-parameter term of a 2-channel group halves with the group."""
    cost = _cost_model([2], [(1.0, [(0, 2)], [])], total=1.0)
    assert cost(np.array([1])) == pytest.approx(0.5)
    assert cost(np.array([2])) == pytest.approx(1.0)


class _StandardisedConv(torch.nn.Conv2d):
    """A Conv2d subclass (weight standardisation, as in BiT/NFNet): torch-pruning prunes it like a conv, but its
    counter matches layers by exact type and counts it no FLOPs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _SubclassedLinear(torch.nn.Linear):
    """A Linear subclass: pruned like a linear layer, counted no FLOPs (its weight and bias still count)."""


class _ChannelScale(torch.nn.Module):
    """A leaf module with a per-channel parameter: no children, no FLOPs counted, C parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class _OddLayers(torch.nn.Module):
    """Layers the zoo does not have: a norm on the image (cost, but no group), subclassed conv and linear layers
    the counter gives no FLOPs, a per-channel scale module, a bias-less hidden linear layer between two pruned
    groups, and a norm on the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.image_norm = torch.nn.BatchNorm2d(3)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = _StandardisedConv(8, 12, 3, padding=1, bias=False)
        self.scale = _ChannelScale(12)
        self.conv3 = torch.nn.Conv2d(12, 16, 3, padding=1, bias=False)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.hidden = torch.nn.Linear(16, 24, bias=False)
        self.hidden2 = _SubclassedLinear(24, 20)
        self.fc = torch.nn.Linear(20, 10)
        self.logit_norm = torch.nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(self.image_norm(x)))
        y = torch.relu(self.conv3(self.scale(torch.relu(self.conv2(y)))))
        y = torch.relu(self.hidden2(torch.relu(self.hidden(self.pool(y).flatten(1)))))
        return self.logit_norm(self.fc(y))


@pytest.mark.parametrize("seed", [1, 2])
def test_cost_model_equals_the_counter_for_layers_it_counts_no_flops_or_no_group_for(seed):
    """Each odd layer is costed as torch-pruning's counter counts it: zero FLOPs for the subclassed layers (so
    their weight and bias terms must be zero, not a default), a bias-less linear layer with no bias term, and the
    image and logit norms as constants (not scaled with some group's width)."""
    torch.manual_seed(0)
    graph = PrunableGraph(_OddLayers().eval(), torch.randn(1, 3, 8, 8))
    assert [g.size for g in graph.groups] == [8, 12, 16, 24, 20]  # every pruned group is in play
    costs, _, widths = check_cost_models_against_the_counter(graph, 0.5, seed=seed)
    assert (widths < costs["flops"].dense_widths).all()


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 8, 8)])
def test_example_inputs_that_are_not_one_sample_are_refused(shape):
    """A batch as example_inputs made a cost model whose constant is negative (the counter's total is per sample,
    its per-layer counts per batch): every prediction after a cut was wrong. Refused in one line instead."""
    with pytest.raises(SurgeryError, match=r"^example_inputs of shape \(" + ", ".join(map(str, shape))
                       + r"\) is not one sample \(accepted: a tensor shaped \(1, C, H, W\), e\.g\. batch\[:1\]\)$"):
        PrunableGraph(_OddLayers().eval(), torch.randn(*shape))
