"""The seam between latency tables and the latency cost model, without timing anything: a LatencyCostModel built
from a synthetic LatencyTable (known milliseconds per layer kind) must predict exactly the total worked out by hand
from the model's layers, for every layer kind (conv, depthwise conv, batch norm, linear), dense and after a cut.

Every model channel count here is at most NARROW (16), so every width is a grid point and the table is read
without interpolation; the made-up times are integers, increasing in every channel count (monotone() leaves them
as they are), so the sums are exact in float64 and the test compares with ==.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from epiprune.costs.latency_model import LatencyCostModel
from epiprune.costs.latency_table import LatencyTable, table_axes, table_key, timed_layers
from epiprune.costs.timing import LatencySettings
from epiprune.surgery import PrunableGraph

# milliseconds of one layer at (c_in, c_out) channels, per kind (one-axis kinds: c_in == c_out)
MS = {"conv": lambda c_in, c_out: 3 * c_in * c_out, "dwconv": lambda _c_in, c: 5 * c,
      "bn": lambda _c_in, c: 7 * c, "linear": lambda c_in, c_out: 11 * c_in * c_out}
CONSTANT_MS, LAYER_SCALE = 0.25, 2.0
SETTINGS = LatencySettings(batch_size=4, grid_points=3)


class EveryKindNet(nn.Module):
    """conv-BN, depthwise conv-BN, pointwise conv-BN, then two linear layers: channel groups dw (8 channels,
    shared by conv1, bn1, dw, bn2; named after its root layer), pw (12) and fc1 (6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 12, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(12)
        self.fc1 = nn.Linear(12, 6)
        self.fc2 = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.bn3(self.pw(x)))
        return self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))


def expected_layers(a: int, b: int, c: int) -> dict[str, tuple[str, float]]:
    """{layer: (kind, milliseconds)} worked out by hand at group widths dw = a, pw = b, fc1 = c."""
    return {"conv1": ("conv", MS["conv"](1, a)), "bn1": ("bn", MS["bn"](a, a)), "dw": ("dwconv", MS["dwconv"](a, a)),
            "bn2": ("bn", MS["bn"](a, a)), "pw": ("conv", MS["conv"](a, b)), "bn3": ("bn", MS["bn"](b, b)),
            "fc1": ("linear", MS["linear"](b, c)), "fc2": ("linear", MS["linear"](c, 10))}


def synthetic_cost_model(graph: PrunableGraph) -> LatencyCostModel:
    """The latency cost model of graph's model from a table of the made-up times MS (no timing)."""
    layers, volume = timed_layers(graph)
    entries = {}
    for layer in {layer.signature: layer for layer in layers}.values():
        axes = table_axes(layer, SETTINGS.grid_points)
        points = [(x, x) for x in axes[0]] if layer.single_axis else [(x, y) for x in axes[0] for y in axes[1]]
        ms = np.asarray([MS[layer.kind](x, y) for x, y in points], dtype=np.float64)
        entries[layer.signature] = {"axes": axes, "ms": ms.reshape([len(ax) for ax in axes]).tolist()}
    table = LatencyTable(table_key(graph, layers, SETTINGS), entries,
                         {"constant_ms": CONSTANT_MS, "layer_scale": LAYER_SCALE, "tail_ms": 0.0})
    return LatencyCostModel(layers, table, graph.widths(), volume)


@pytest.fixture(scope="module")
def dense_graph() -> PrunableGraph:
    torch.manual_seed(0)
    return PrunableGraph(EveryKindNet(), torch.zeros(1, 1, 8, 8))


def test_the_model_has_every_layer_kind_on_the_expected_groups(dense_graph):
    assert dense_graph.names == ["dw", "pw", "fc1"] and dense_graph.widths() == [8, 12, 6]
    layers, _ = timed_layers(dense_graph)
    assert {layer.name: layer.kind for layer in layers} == {n: k for n, (k, _) in expected_layers(8, 12, 6).items()}


@pytest.mark.parametrize("widths", [(8, 12, 6), (5, 7, 3), (1, 1, 1), (8, 3, 6)])
def test_synthetic_table_predicts_the_hand_total_for_every_kind(dense_graph, widths):
    """Each layer's milliseconds and the total (constant + layer_scale * sum) equal the hand calculation."""
    cost = synthetic_cost_model(dense_graph)
    expected = expected_layers(*widths)
    per_layer = dict(zip([layer.name for layer in cost.layers], cost.layer_ms(widths).tolist(), strict=True))
    assert per_layer == {name: ms for name, (_, ms) in expected.items()}
    for kind in MS:  # every kind contributes, and contributes what it should
        assert sum(ms for name, ms in per_layer.items() if expected[name][0] == kind) == \
            sum(ms for k, ms in expected.values() if k == kind) > 0
    assert cost(widths) == CONSTANT_MS + LAYER_SCALE * sum(ms for _, ms in expected.values())
    if widths == (8, 12, 6):
        assert cost.dense == cost(widths)


def test_after_a_cut_the_dense_table_predicts_the_cut_network(dense_graph):
    """Cut a copy of the model to (5, 7, 3) channels: the table of the dense model, read at the cut network's
    widths, gives the hand total of the cut network's layers (their channel counts after surgery)."""
    cost = synthetic_cost_model(dense_graph)
    model = copy.deepcopy(dense_graph.model)
    graph = PrunableGraph(model, torch.zeros(1, 1, 8, 8))
    graph.prune([np.array([0, 2, 3, 5, 7]), np.arange(7), np.array([1, 4, 5])])
    assert graph.widths() == [5, 7, 3]
    a, b, c = model.conv1.out_channels, model.pw.out_channels, model.fc1.out_features
    assert (model.dw.in_channels, model.bn2.num_features, model.pw.in_channels, model.bn3.num_features,
            model.fc1.in_features, model.fc2.in_features) == (a, a, a, b, b, c)
    assert cost(graph.widths()) == CONSTANT_MS + LAYER_SCALE * sum(ms for _, ms in expected_layers(a, b, c).values())


def test_a_registered_layer_kind_is_found_after_the_built_in_ones_and_a_name_registers_once(monkeypatch):
    from epiprune.costs import layer_kinds
    from epiprune.errors import EpipruneError

    monkeypatch.setattr(layer_kinds.LAYER_KINDS, "_entries", dict(layer_kinds.LAYER_KINDS._entries))  # undone after
    prelu = layer_kinds.LayerKind("prelu", matches=lambda m: isinstance(m, nn.PReLU),
                                  channels=lambda m: (m.num_parameters, m.num_parameters),
                                  builder=lambda m: (lambda _c_in, c: nn.PReLU(c)), detail=lambda m: "",
                                  single_axis=True, activation_volume=True)
    assert layer_kinds.kind_of(nn.PReLU(4)) is None
    assert layer_kinds.register(prelu) is prelu
    assert layer_kinds.LAYER_KINDS.get("prelu") is prelu and layer_kinds.LAYER_KINDS.names()[-1] == "prelu"
    assert layer_kinds.kind_of(nn.PReLU(4)) is prelu and layer_kinds.kind_of(nn.Conv2d(2, 2, 1)).name == "conv"
    with pytest.raises(EpipruneError, match="latency layer kind 'prelu' is registered already"):
        layer_kinds.register(prelu)


def _with_table(cost: LatencyCostModel, layers: dict, calibration: dict) -> LatencyCostModel:
    """A cost model of the same layers over another table (entries and calibration replaced)."""
    table = LatencyTable(cost.table.key, layers, calibration)
    return LatencyCostModel(cost.layers, table, cost.dense_widths.tolist(), cost.volume)


def test_a_table_without_some_of_the_models_layers_is_refused_naming_the_first(dense_graph):
    from epiprune.costs.latency_table import LatencyTableError

    cost = synthetic_cost_model(dense_graph)
    bn = {layer.signature for layer in cost.layers if layer.kind == "bn"}  # bn1 and bn2 share one, bn3 another
    assert len(bn) == 2
    layers = {sig: entry for sig, entry in cost.table.layers.items() if sig not in bn}
    first = next(layer.name for layer in cost.layers if layer.signature in bn)
    with pytest.raises(LatencyTableError) as error:
        _with_table(cost, layers, cost.table.calibration)
    assert str(error.value) == f"latency table lacks layer {first!r} (accepted: a table built for this model; " \
                               "rebuild it)"


def test_a_table_without_a_layer_scale_weighs_the_layers_once_and_ignores_entries_of_other_layers(dense_graph):
    """layer_scale is optional in a table's calibration (1.0); an entry no layer of the model uses (listed first
    here) is skipped without stopping the other entries from being read."""
    cost = synthetic_cost_model(dense_graph)
    unused = {"unused-signature": {"axes": [[1, 2]], "ms": [1.0, 2.0]}}
    plain = _with_table(cost, {**unused, **cost.table.layers}, {"constant_ms": CONSTANT_MS, "tail_ms": 0.0})
    widths = (5, 7, 3)
    assert plain(widths) == CONSTANT_MS + sum(ms for _, ms in expected_layers(*widths).values())


def test_a_layers_signature_text_is_pinned_because_stored_tables_are_matched_by_it(dense_graph):
    """costs.latency_table: signatures are what stored tables are matched by; they must not change."""
    layers, _ = timed_layers(dense_graph)
    signatures = {layer.name: layer.signature for layer in layers}
    assert signatures["conv1"] == "conv k3x3 s1x1 p1x1 d1x1 b0 in1 out8/g @8x8 grad0"
    assert signatures["dw"] == "dwconv k3x3 s1x1 p1x1 d1x1 b0 in8 out8/g @8x8 grad1"
    assert signatures["pw"] == "conv k1x1 s1x1 p0x0 d1x1 b0 in8/g out12/g @8x8 grad1"
    assert signatures["fc2"] == "linear b1 in6/g out10 @- grad1"
    assert signatures["bn1"] == "bn BatchNorm2d in8 out8/g @8x8 grad1"
    odd = nn.Conv2d(3, 4, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=True)
    from epiprune.costs.layer_kinds import kind_of

    assert kind_of(odd).detail(odd) == "k3x1 s2x1 p1x0 d1x2 b1"


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=True),
                                  nn.Conv2d(6, 6, 5, stride=2, padding=2, groups=6, bias=False)])
def test_a_layer_kind_builds_the_timed_layer_as_the_model_has_it_at_other_widths(conv):
    from epiprune.costs.layer_kinds import kind_of

    built = kind_of(conv).builder(conv)(5, 5) if conv.groups > 1 else kind_of(conv).builder(conv)(3, 7)
    assert type(built) is nn.Conv2d
    for attribute in ("kernel_size", "stride", "padding", "dilation", "padding_mode"):
        assert getattr(built, attribute) == getattr(conv, attribute)
    assert (built.bias is None) == (conv.bias is None)
    assert built.groups == (5 if conv.groups > 1 else 1)
    assert (built.in_channels, built.out_channels) == ((5, 5) if conv.groups > 1 else (3, 7))


def test_a_grouped_convolution_is_refused_in_one_line_naming_it():
    from epiprune.costs.layer_kinds import kind_of

    grouped = nn.Conv2d(8, 8, 3, groups=2)
    assert kind_of(grouped).refuse(grouped, "block.conv") == (
        "latency tables do not cover grouped convolution 'block.conv' (groups=2) yet (accepted: dense or depthwise "
        "convolutions; use a flops or params budget)")
    assert kind_of(nn.Conv2d(8, 8, 3)).refuse(nn.Conv2d(8, 8, 3), "c") is None


def test_the_tail_term_scales_with_the_kept_fraction_of_the_activation_volume(dense_graph):
    """cost = constant + layer_scale * layers + tail * V(widths), V the kept fraction of the activation volume
    (each group's volume times its kept width over its dense width, over the total); V = 1 without volume."""
    cost = synthetic_cost_model(dense_graph)
    tail = 3.0
    with_tail = _with_table(cost, cost.table.layers, {**cost.table.calibration, "tail_ms": tail})
    widths = (5, 7, 3)
    volume = cost.volume
    assert volume.sum() > 0 and np.count_nonzero(volume) >= 2
    fraction = float(np.sum(volume * np.array(widths) / np.array([8, 12, 6])) / volume.sum())
    assert 0 < fraction < 1
    assert with_tail.volume_fraction(widths) == pytest.approx(fraction, rel=1e-12)
    assert with_tail(widths) == pytest.approx(cost(widths) + tail * fraction, rel=1e-12)
    assert with_tail.volume_fraction((8, 12, 6)) == pytest.approx(1.0, rel=1e-12)
    no_volume = LatencyCostModel(cost.layers, with_tail.table, [8, 12, 6], np.zeros_like(volume))
    assert no_volume.volume_fraction(widths) == 1.0


def test_a_table_is_read_clamped_to_its_grid():
    """Points outside a table's axes read the nearest edge (interpolation never extrapolates)."""
    from epiprune.costs.latency_model import interpolate

    axes = [[1.0, 40.0, 80.0]]
    ms = np.array([1.0, 4.0, 8.0])
    assert interpolate(axes, ms, np.array([[0.0], [100.0], [40.0]])).tolist() == [1.0, 8.0, 4.0]
