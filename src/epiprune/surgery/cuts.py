"""The surgery's cuts: every parameter that torch-pruning (or, for a grouped convolution's inputs, we) replaces is
recorded as a ParameterCut, so that gradients and optimizer state of the surviving slices follow it
(remap_optimizer_state). PrunableGraph.prune (graph.py) applies them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.pruner.function import BasePruningFunc

from epiprune.errors import EpipruneError


class SurgeryError(EpipruneError):
    """The dependency graph cannot handle the model, or a pruning spec does not fit it."""


def is_grouped(module: nn.Module) -> bool:
    """A (non-transposed) convolution with 1 < groups that is not depthwise: its input and output channels are
    separate groups, each split into `groups` equal blocks (weight (C_out, C_in / groups, k, k))."""
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups > 1 \
        and not (module.groups == module.in_channels == module.out_channels)


@dataclass
class ParameterCut:
    """A parameter torch-pruning (or we) replaced: new = old.index_select(dim, keep) for a 1-D keep; a 2-D keep
    (C_out, k) is a grouped convolution's input cut, new[o, j] = old[o, keep[o, j]] (a gather on dim 1)."""

    old: torch.Tensor
    new: torch.Tensor
    keep: torch.Tensor
    dim: int

    def apply(self, value: torch.Tensor) -> torch.Tensor:
        """The same cut on a tensor shaped like `old` (the parameter's gradient or optimizer state)."""
        return cut_tensor(value, self.keep, self.dim)


def cut_tensor(value: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """value.index_select(dim, keep) for a 1-D keep; for a 2-D keep (rows, k), a gather along dim 1 row by row."""
    keep = keep.to(value.device)
    if keep.ndim == 1:
        return value.index_select(dim, keep)
    index = keep.reshape(*keep.shape, *([1] * (value.ndim - 2))).expand(*keep.shape, *value.shape[2:])
    return value.gather(1, index)


def _new_parameter(old: nn.Parameter, keep: torch.Tensor, dim: int) -> nn.Parameter:
    new = nn.Parameter(cut_tensor(old.data, keep, dim))
    if old.grad is not None:
        new.grad = cut_tensor(old.grad, keep, dim)
    if old.ndim == 4 and old.is_contiguous(memory_format=torch.channels_last) and not old.is_contiguous():
        new.data = new.data.contiguous(memory_format=torch.channels_last)
    return new


@contextlib.contextmanager
def record_parameter_cuts() -> Iterator[list[ParameterCut]]:
    """Record every parameter torch-pruning replaces: all its pruners go through
    BasePruningFunc._prune_parameter_and_grad(weight, keep_idxs, pruning_dim)."""
    cuts: list[ParameterCut] = []
    original = BasePruningFunc._prune_parameter_and_grad

    def recording(self: BasePruningFunc, weight: nn.Parameter, keep_idxs: Sequence[int], pruning_dim: int
                  ) -> nn.Parameter:
        new = original(self, weight, keep_idxs, pruning_dim)
        if weight.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
                and not weight.is_contiguous():
            new.data = new.data.contiguous(memory_format=torch.channels_last)
        cuts.append(ParameterCut(weight, new, torch.as_tensor(list(keep_idxs), dtype=torch.long), pruning_dim))
        return new

    BasePruningFunc._prune_parameter_and_grad = recording
    try:
        yield cuts
    finally:
        BasePruningFunc._prune_parameter_and_grad = original


def prune_grouped_conv_inputs(conv: nn.modules.conv._ConvNd, drop: Sequence[int]) -> ParameterCut:
    """Remove input channels `drop` of a grouped convolution: each of its groups must lose the same number, at
    any positions (torch-pruning's own cut assumes the same positions in every group). weight (C_out, C_in / G,
    *k) becomes (C_out, C_in / G - len(drop) / G, *k), each output channel keeping the inputs its group keeps."""
    groups, per_group = conv.groups, conv.in_channels // conv.groups
    dropped = {int(i) for i in drop}
    kept = [[j for j in range(per_group) if b * per_group + j not in dropped] for b in range(groups)]
    if len({len(k) for k in kept}) > 1 or not kept[0]:
        raise SurgeryError(f"grouped convolution with groups={groups}: every group must keep the same number of "
                           f"input channels, at least one (kept {[len(k) for k in kept]})")
    out_per_group = conv.out_channels // groups
    keep = torch.as_tensor([kept[o // out_per_group] for o in range(conv.out_channels)], dtype=torch.long)
    old = conv.weight
    conv.weight = _new_parameter(old, keep, 1)
    conv.in_channels = groups * len(kept[0])
    return ParameterCut(old, conv.weight, keep, 1)


@contextlib.contextmanager
def grouped_conv_inputs(dg: tp.DependencyGraph, cuts: list[ParameterCut]) -> Iterator[None]:
    """While active, torch-pruning's input-channel cuts of grouped convolutions in `dg` go to
    prune_grouped_conv_inputs (recorded in `cuts`); every other cut is torch-pruning's own."""
    original = Dependency.__call__

    def call(self: Dependency, idxs: list) -> object:
        module = self.target.module
        if is_grouped(module) and not dg.is_out_channel_pruning_fn(self.handler):
            plain = _helpers.to_plain_idxs(idxs) if idxs and isinstance(idxs[0], _helpers._HybridIndex) else idxs
            cuts.append(prune_grouped_conv_inputs(module, plain))
            return module
        return original(self, idxs)

    Dependency.__call__ = call
    try:
        yield
    finally:
        Dependency.__call__ = original


def remap_optimizer_state(optimizer: torch.optim.Optimizer, cuts: Sequence[ParameterCut]) -> None:
    """Point the optimizer at the new parameters and slice their state. A parameter cut twice (output then
    input channels) is followed through the chain back to the one the optimizer knows."""
    lineage: dict[int, tuple[torch.Tensor, list[ParameterCut], torch.Tensor]] = {}
    for cut in cuts:
        origin, steps, _ = lineage.pop(id(cut.old), (cut.old, [], None))
        lineage[id(cut.new)] = (origin, [*steps, cut], cut.new)
    by_origin = {id(origin): (steps, new) for origin, steps, new in lineage.values()}
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if id(p) not in by_origin:
                continue
            steps, new = by_origin[id(p)]
            group["params"][i] = new
            state = optimizer.state.pop(p, None)
            if not state:
                continue
            new_state = {}
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    for step in steps:
                        value = step.apply(value)
                new_state[key] = value
            optimizer.state[new] = new_state
