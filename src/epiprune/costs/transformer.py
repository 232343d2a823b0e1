"""FLOPs and parameter cost models of a TransformerGraph (attention heads and MLP neurons), exact at the graph's
sample size: every unit of a block costs the same, so cost(widths) = constant + sum_g per_unit[g] * widths[g], a
CostModel with no input group (in_group -1). The FLOPs convention is torch.utils.flop_counter's (2 x
multiply-accumulates of matrix products; see TransformerGraph.count): per sample and block of T tokens (T_k keys),

  heads (one key/value group, rep query heads of head_dim d, hidden H):
      q: 2 T H rep d, k and v: 2 T H d each, o: 2 T rep d H_out, scores QK^T and values AV: 2 x 2 T T_k d rep
  neurons: 2 T H per input projection (gate and up, or fc1) + 2 T H_out for the output one (down, fc2)

and parameters per unit: each cut row with its bias, each cut column. What no unit controls (embeddings,
norms, the LM head, output biases) is the constant: the dense count minus the units' share.
"""

from __future__ import annotations

import numpy as np

from epiprune.costs.model import CostModel
from epiprune.surgery.transformer import TransformerGraph, UnitGroup


def unit_params(group: UnitGroup) -> int:
    """Parameters one unit of `group` owns: its rows (and their biases) and its columns."""
    total = 0
    for cut in group.cuts:
        linear = cut.linear
        if cut.dim == 0:
            total += cut.per_unit * (linear.in_features + (linear.bias is not None))
        else:
            total += cut.per_unit * linear.out_features
    return total


def unit_flops(group: UnitGroup, tokens: int, keys: int | None = None) -> int:
    """FLOPs one unit of `group` costs per sample at `tokens` tokens (`keys` keys; default: self-attention)."""
    keys = tokens if keys is None else keys
    total = 0
    for cut in group.cuts:
        other = cut.linear.in_features if cut.dim == 0 else cut.linear.out_features
        total += 2 * tokens * other * cut.per_unit
    if group.kind == "heads":
        total += 2 * 2 * tokens * keys * group.head_dim * group.rep
    return total


def _model(graph: TransformerGraph, per_unit: list[int], dense: int) -> CostModel:
    widths = np.asarray(graph.widths(), dtype=np.int64)
    coef = np.asarray(per_unit, dtype=np.float64) * widths
    return CostModel(dense_widths=widths, coef=coef, out_group=np.arange(len(widths)),
                     in_group=np.full(len(widths), -1), constant=float(dense - coef.sum()))


def transformer_cost_models(graph: TransformerGraph) -> dict[str, CostModel]:
    """{'flops': ..., 'params': ...} over the graph's unit widths, for the model as it is now."""
    flops, params = graph.count()
    return {"flops": _model(graph, [unit_flops(g, graph.tokens[g.name]) for g in graph.groups], flops),
            "params": _model(graph, [unit_params(g) for g in graph.groups], params)}
