"""The latency layer kinds of transformer units: an attention block timed at a number of key/value groups ('heads'),
an MLP timed at a number of hidden neurons ('neurons'), each a whole block called as the model calls it.

DESIGN -- why a whole block per table, timed as the model runs it (issue 21, item 2). A CNN's table times each conv,
linear and norm on its own at (in, out) channels, because a channel group changes the shape of several layers, each
with its own input size. A transformer unit never leaves its block (surgery/transformer.py): a head's q/k/v rows,
its attention products and its o_proj columns, or a neuron's gate/up rows, activation and down column, all move
with one number, the block's kept units, while the block's input and output keep the hidden width. So one table
per block, with one axis (kept units), holds everything the units change inside it: the four projections, rotary
embeddings, the scaled-dot-product attention kernel (whose cost is quadratic in tokens and not a linear layer's),
the SwiGLU/GELU elementwise work, and the reshapes between them. Timing the projections as separate linear layers
and the attention kernel as another would need a model of how they compose; timing the real block at fewer units
needs none, and it is what selection changes.

What is timed: a deep copy of the model's own block (LlamaAttention, ViTMLP, ...) cut to u units by the same
surgery that prunes the model (surgery.transformer.cut_units, so the timed module is exactly what a pruned model
runs), called with the keyword arguments the model's forward pass gave it (rotary position embeddings, attention
mask, ...: captured once by a pre-hook on the example input, kept at its batch of one as the model itself builds them;
a key/value cache left out, since training builds none worth timing), on a random hidden-state batch
(batch, tokens, hidden) at the training shape (LatencySettings.batch_size x the example's tokens: the sequence
length, or a ViT's patches and CLS token). Forward and backward as costs.latency_table.prepare_layer times every
layer. Blocks of one signature (kind, block class, hidden width, head_dim, query heads per key/value group, bias,
activation, units, tokens) share one table: the four identical blocks of lm_tiny are timed once.

The rest is the CNN machinery unchanged: the grid over units (costs.latency_table.grid: every count for narrow
axes, so each head count; about grid_points steps of neurons), the ratio timing against the dense block with the
noise refusal (costs.layer_ratios), the monotone envelope and interpolation (costs.latency_model), the calibration
on whole-model steps (costs.calibration: constant + layer_scale x blocks + tail x V; the steps feed token ids to a
language model), the cache key (costs.latency_table.table_key) and the closed loop at the prune. V, the tail's
regressor, is for units the kept fraction of the units' parameters (costs.latency_table.unit_timed_layers): what
shrinks with the units outside the timed blocks is the optimizer's elementwise update and the gradients' zeroing;
a CNN's V is activation volume, since its ReLUs, adds and pools are outside every timed layer, and here the
blocks' own activations are inside them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from epiprune.costs.layer_kinds import LayerKind, register
from epiprune.errors import EpipruneError
from epiprune.surgery.transformer import TransformerGraph, UnitGroup, cut_units, find_blocks, first_inputs

CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")  # left out of a timed block's call


def _is_cache(name: str, value: object) -> bool:
    return name in CACHE_ARGUMENTS or type(value).__name__.endswith("Cache")


class BlockCall(nn.Module):
    """A transformer block (attention or MLP) called as the model calls it: forward(x) runs the block on hidden
    states x (batch, tokens, hidden) with the positional and keyword arguments captured from the model's forward
    pass (`slot`: where x goes, an index into args or a keyword), and returns its output tensor (batch, tokens,
    hidden) (a tuple's first element). kind: 'heads' or 'neurons'; units: the block's kept units now."""

    def __init__(self, kind: str, block: nn.Module, args: tuple, kwargs: dict, slot: int | str) -> None:
        super().__init__()
        self.kind, self.block, self.args, self.kwargs, self.slot = kind, block, args, kwargs, slot

    @property
    def group(self) -> UnitGroup:
        """The block's unit group, found as surgery finds it (the block is the root of its own search)."""
        return next(g for g in find_blocks(self.block) if g.kind == self.kind and g.block is self.block)

    @property
    def units(self) -> int:
        return self.group.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args, kwargs = self.args, self.kwargs
        if isinstance(self.slot, str):
            kwargs = {**kwargs, self.slot: x}
        else:
            args = (*args[: self.slot], x, *args[self.slot + 1:])
        out = self.block(*args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def at_width(self, units: int) -> BlockCall:
        """A copy of the block cut to its first `units` units (surgery.transformer.cut_units), called the same way;
        this call and its block are untouched."""
        clone = copy.deepcopy(self.block)
        group = next(g for g in find_blocks(clone) if g.kind == self.kind and g.block is clone)
        if not 1 <= units <= group.size:
            raise EpipruneError(f"a {self.kind} block of {group.size} units cannot be timed at {units} (accepted: "
                                f"1 to {group.size})")
        if units < group.size:
            cut_units(group, np.arange(units))
        return BlockCall(self.kind, clone, self.args, self.kwargs, self.slot)

    def detail(self) -> str:
        """What sets the block's time besides its units and tokens, as written in its table signature."""
        group = self.group
        hidden = group.cuts[0].linear.in_features
        bias = int(any(c.linear.bias is not None for c in group.cuts))
        others = sorted({type(m).__name__ for m in self.block.children() if not isinstance(m, nn.Linear)})
        shape = f"d{group.head_dim} rep{group.rep}" if self.kind == "heads" else f"proj{len(group.cuts)}"
        kernel = getattr(getattr(self.block, "config", None), "_attn_implementation", None)  # sdpa, eager, ...
        extra = others + ([f"attn-{kernel}"] if self.kind == "heads" and isinstance(kernel, str) else [])
        return f"{type(self.block).__name__} hidden{hidden} {shape} b{bias}" + (f" {'+'.join(extra)}" if extra else "")


def tokens_first(sample: tuple[int, ...], _c_in: int, batch: int) -> tuple[int, ...]:
    """A block's batch: (batch, tokens, hidden) whatever its units (its input keeps the hidden width)."""
    return (batch, *sample)


def _unit_kind(name: str) -> LayerKind:
    return LayerKind(name, matches=lambda m: isinstance(m, BlockCall) and m.kind == name,
                     channels=lambda m: (m.units, m.units), builder=lambda m: lambda _c_in, c_out: m.at_width(c_out),
                     detail=lambda m: m.detail(), single_axis=True, activation_volume=False, batch_shape=tokens_first)


# registered after the channel kinds; they match only a BlockCall, which no CNN holds
HEADS = register(_unit_kind("heads"))
NEURONS = register(_unit_kind("neurons"))


def block_calls(graph: TransformerGraph) -> list[tuple[BlockCall, tuple[int, ...]]]:
    """Per unit group of `graph`, in its order: the group's block as the model calls it (BlockCall, arguments
    captured by one eval-mode forward pass of graph.example_inputs; the model's state and mode restored) and one
    sample's hidden-state shape (tokens, hidden). A block that does not run on its own at batch 2 is refused in one
    line naming it."""
    seen = first_inputs(graph.model, graph.example_inputs, [g.block for g in graph.groups])
    calls = []
    for i, g in enumerate(graph.groups):
        args, kwargs = seen[i]
        slot: int | str = 0 if args else "hidden_states" if "hidden_states" in kwargs else \
            next(k for k, v in kwargs.items() if torch.is_tensor(v))
        hidden = args[0] if slot == 0 else kwargs[slot]
        kwargs = {k: None if _is_cache(k, v) else v for k, v in kwargs.items()}
        call = BlockCall(g.kind, g.block, tuple(args), kwargs, slot)
        _check_runs(call, g.name, tuple(hidden.shape[1:]))
        calls.append((call, tuple(hidden.shape[1:])))
    return calls


def _check_runs(call: BlockCall, name: str, sample: Sequence[int]) -> None:
    """EpipruneError (one line naming the block) unless `call` runs on a batch of 2 and keeps its input's shape."""
    x = torch.zeros(2, *sample, device=_device_of(call.block))
    try:
        with torch.no_grad():
            out = call(x)
        ok = torch.is_tensor(out) and tuple(out.shape) == tuple(x.shape)
        problem = "" if ok else f"it returned {tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}"
    except Exception as e:  # any failure of the block called alone: name it, keep one line
        problem = (str(e).splitlines() or [type(e).__name__])[0][:160]
    if problem:
        raise EpipruneError(f"latency tables cannot time {call.kind} block {name!r} ({type(call.block).__name__}) "
                            f"on its own: {problem} (accepted: blocks that map hidden states (batch, tokens, hidden) "
                            "to the same shape; use a flops or params budget)")


def _device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
