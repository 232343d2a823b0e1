"""FLOPs and parameter cost models of a PrunableGraph: per-layer dense counts (torch-pruning's counter) scaled by
the fraction of each layer's input and output channels its groups keep (a CostModel per kind).

Exact for the layers the counter counts: a conv's or linear layer's weight costs out x in channels (each summed over
the groups that set them: a layer fed by a concatenation is costed per input group), its bias out channels only;
norms, depthwise convs, activations, pools and unwrapped parameters scale with their one channel dimension. What no
group controls is a constant. (Moved here from PrunableGraph.cost_models in issue 22: the surgery package knows
nothing of costs.)
"""

from __future__ import annotations

import math

import numpy as np
import torch_pruning as tp
from torch import nn

from epiprune.costs.model import CostModel
from epiprune.costs.transformer import transformer_cost_models
from epiprune.surgery import PrunableGraph, TransformerGraph, is_depthwise

Segments = list[tuple[int, int]]  # (group index or -1 for channels no prunable group controls, channel count)
Term = tuple[float, Segments, Segments]  # (dense cost, output segments, input segments or [] for out-only)


def _segments(key: int, table: dict[int, Segments], total: int | None) -> Segments:
    """The segments of object id `key` in `table`; with `total` (the layer's channel count), completed by a fixed
    segment (-1) for channels no group covers, or one fixed segment when the groups cover more than `total` (a module
    used twice, or channels reached twice: not a plain layer)."""
    segs = list(table.get(key, []))
    covered = sum(n for _, n in segs)
    if total is None:
        return segs
    if covered > total:
        return [(-1, total)]
    return segs + ([(-1, total - covered)] if total > covered else [])


def _weight_layer_terms(module: nn.Conv2d | nn.Linear, value: float, outs: Segments, ins: Segments
                        ) -> tuple[list[Term], list[Term]]:
    """(FLOPs terms, parameter terms) of a dense conv or linear layer whose counted FLOPs per sample are `value`:
    the weight scales with out x in channels, the bias with out channels only."""
    n_out = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    n_in = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
    if isinstance(module, nn.Conv2d):
        per_position = math.prod(module.kernel_size) * n_in * n_out // module.groups
        bias_share = n_out if module.bias is not None else 0
        positions = value / (per_position + bias_share)  # a conv keeps at least one channel: > 0
        weight_flops, bias_flops = per_position * positions, bias_share * positions
    else:
        bias_flops = float(n_out) if module.bias is not None else 0.0
        weight_flops = value - bias_flops if value else 0.0
        bias_flops = bias_flops if value else 0.0
    params: list[Term] = [(float(module.weight.numel()), outs, ins)]
    if module.bias is not None:
        params.append((float(module.bias.numel()), outs, []))
    return [(weight_flops, outs, ins), (bias_flops, outs, [])], params


def _terms(graph: PrunableGraph, layer_flops: dict[nn.Module, float]) -> dict[str, list[Term]]:
    """Every module's (and unwrapped parameter's) dense FLOPs and parameter count with the channel segments that
    scale it: {'flops': [...], 'params': [...]}."""
    out_segs, in_segs, _ = graph.channel_segments()
    terms: dict[str, list[Term]] = {"flops": [], "params": []}
    for module in graph.model.modules():
        if list(module.children()):
            for p in module.parameters(recurse=False):  # a container's own: unwrapped (layer scales) or constant
                terms["params"].append((float(p.numel()), _segments(id(p), out_segs, None) or [(-1, 1)], []))
            continue
        key = id(module)
        value = float(layer_flops.get(module) or 0.0)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not is_depthwise(module):
            n_out = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            n_in = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
            flops, params = _weight_layer_terms(module, value, _segments(key, out_segs, n_out),
                                                _segments(key, in_segs, n_in))
            terms["flops"] += flops
            terms["params"] += params
            continue
        segs = _segments(key, out_segs, None)
        terms["flops"].append((value, segs or [(-1, 1)], []))
        for p in module.parameters(recurse=False):
            psegs = _segments(id(p), out_segs, None) or segs
            terms["params"].append((float(p.numel()), psegs or [(-1, 1)], []))
    return terms


def _cost_model(widths: list[int], terms: list[Term], total: float) -> CostModel:
    """A CostModel whose per-layer coefficients split each term's cost over its (output, input) segment pairs in
    proportion to their channels; the constant is what the terms leave of the counted `total`."""
    coef, outs_idx, ins_idx = [], [], []
    for value, outs, ins in terms:
        if value == 0.0:
            continue
        n_out = sum(n for _, n in outs)
        n_in = sum(n for _, n in ins) if ins else 1
        for go, no in outs:
            for gi, ni in ins or [(-1, 1)]:
                coef.append(value * no / n_out * ni / n_in)
                outs_idx.append(go)
                ins_idx.append(gi)
    return CostModel(np.asarray(widths, dtype=np.int64), np.asarray(coef, dtype=np.float64),
                     np.asarray(outs_idx, dtype=np.int64), np.asarray(ins_idx, dtype=np.int64),
                     float(total) - float(np.sum(coef)))


def counting_cost_models(graph: PrunableGraph | TransformerGraph) -> dict[str, CostModel]:
    """Cost models {'flops': ..., 'params': ...} over graph's group widths (FLOPs per sample of
    graph.example_inputs' shape; parameter counts), exact for the layers torch-pruning's counter counts. A
    TransformerGraph (heads and neurons) gets costs.transformer's models instead."""
    if isinstance(graph, TransformerGraph):
        return transformer_cost_models(graph)
    flops, params, layer_flops, _ = tp.utils.count_ops_and_params(graph.model, graph.example_inputs, layer_wise=True)
    terms = _terms(graph, layer_flops)
    return {kind: _cost_model(graph.widths(), terms[kind], total) for kind, total in (("flops", flops),
                                                                                     ("params", params))}
