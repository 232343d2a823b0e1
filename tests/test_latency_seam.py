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
