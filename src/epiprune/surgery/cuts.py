"""The surgery's cuts: every parameter that torch-pruning (or, for a grouped convolution's inputs, we) replaces is
recorded as a ParameterCut, so that gradients and optimizer state of the surviving slices follow it
(remap_optimizer_state). PrunableGraph.prune (graph.py) applies them through prune_group.

DESIGN -- how the cuts are seen without patching torch-pruning (issue 22, item 4). Nothing here assigns to an
attribute of a torch-pruning class or module, so a prune changes nothing another thread (or another graph) sees.
prune_group replaces `group.prune()`: it walks the group's items itself and runs each item's own handler, but
bound to a per-call copy of that handler's pruner whose `_prune_parameter_and_grad` (the one method through which
every torch-pruning pruner replaces a parameter) records the cut; the input cut of a grouped convolution goes to
prune_grouped_conv_inputs instead of torch-pruning's handler (which drops the same positions in every group).

Why not torch-pruning's extension point, per-graph pruners (build_dependency(customized_pruners={type: pruner}))?
It was tried (1.6.1) and changes what the graph is:
  * torch-pruning's importance criteria, which epiprune's MagnitudeImportance uses, pick a group's layers by the
    identity of the module-level pruners' bound methods (`dep.handler in [function.prune_conv_out_channels, ...]`):
    with our own pruner objects every layer is skipped and GroupMagnitudeImportance returns None;
  * pruners are looked up by exact class (`module.__class__`), so one pruner serves every nn.Conv2d, but a depthwise
    convolution couples its input to its output only through its own pruner (prune_in_channels is
    prune_out_channels): with a custom Conv2d pruner the coupling through a depthwise conv is lost (its group stops
    there), and subclasses of a registered type are missed;
  * get_pruning_group hard-codes the module-level `function.prune_depthwise_conv_out_channels` for a depthwise root,
    so a per-graph depthwise pruner is bypassed there anyway.
The graph is therefore built with torch-pruning's own pruners, and the recording happens per prune call as above.
No process-wide patch (and so no lock) is needed; what this still relies on -- Group.prune's steps (replayed by
prune_group, with torch-pruning's one-item Group doing the nn.Parameter bookkeeping), Dependency's fields, and
`_prune_parameter_and_grad` as the one place parameters are replaced -- are internals, so check_torch_pruning_version
refuses an untested torch-pruning when a graph is built or pruned (not at import).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.pruner.function import BasePruningFunc

from epiprune.errors import EpipruneError


class SurgeryError(EpipruneError):
    """The dependency graph cannot handle the model, or a pruning spec does not fit it."""


# torch-pruning releases this module was tested with: [first, end) on (major, minor, patch); pyproject pins the same
TESTED_TORCH_PRUNING = ((1, 6, 1), (1, 7, 0))
TESTED_TORCH_PRUNING_TEXT = "1.6.x from 1.6.1"


def _installed_torch_pruning() -> str:
    """The installed distribution's version (torch_pruning.__version__ of 1.6.1 still says 1.6.0)."""
    try:
        return metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        return str(getattr(tp, "__version__", "unknown"))


TORCH_PRUNING_VERSION = _installed_torch_pruning()


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


def check_torch_pruning_version() -> None:
    """Refuse (one line) a torch-pruning this module was not tested with: prune_group replays Group.prune and reads
    Dependency's fields, which are internals that may change in any release. Called when a graph is built or pruned."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", TORCH_PRUNING_VERSION)
    release = tuple(int(x) for x in match.groups()) if match else ()
    if not (TESTED_TORCH_PRUNING[0] <= release < TESTED_TORCH_PRUNING[1]):
        raise SurgeryError(f"torch-pruning {TORCH_PRUNING_VERSION} is not tested with epiprune's surgery "
                           f"(accepted: {TESTED_TORCH_PRUNING_TEXT})")


def _recording_pruner(pruner: BasePruningFunc, cuts: list[ParameterCut]) -> BasePruningFunc:
    """A copy of torch-pruning's (shared, module-level) `pruner` whose _prune_parameter_and_grad(weight, keep_idxs,
    dim) -- the one place every pruner replaces a parameter -- also appends the cut to `cuts`. Only this copy is
    changed: the pruner, its class and every other graph are left as they are."""
    twin = type(pruner).__new__(type(pruner))  # not copy.copy: that caches __slotnames__ on the class
    twin.__dict__.update(vars(pruner))
    replace = type(pruner)._prune_parameter_and_grad.__get__(twin)

    def recording(weight: nn.Parameter, keep_idxs: Sequence[int], pruning_dim: int) -> nn.Parameter:
        new = replace(weight, keep_idxs, pruning_dim)
        if weight.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
                and not weight.is_contiguous():
            new.data = new.data.contiguous(memory_format=torch.channels_last)
        cuts.append(ParameterCut(weight, new, torch.as_tensor(list(keep_idxs), dtype=torch.long), pruning_dim))
        return new

    twin._prune_parameter_and_grad = recording
    return twin


def _recording_dependency(dep: Dependency, cuts: list[ParameterCut]) -> Dependency:
    """`dep` with its handler (a bound method of a shared pruner) bound to a recording copy of that pruner instead.
    Handlers of torch-pruning's placeholder pruners (concat, split, reshape, element-wise ops) replace no
    parameter and are kept."""
    pruner = getattr(dep.handler, "__self__", None)
    if not isinstance(pruner, BasePruningFunc):
        return dep
    handler = dep.handler.__func__.__get__(_recording_pruner(pruner, cuts))
    return Dependency(dep.trigger, handler, dep.source, dep.target)


def _prune_item(dg: tp.DependencyGraph, dep: Dependency, idxs: list, cuts: list[ParameterCut]) -> None:
    """One item of a pruning group: an input-channel cut of a grouped convolution goes to prune_grouped_conv_inputs,
    anything else to torch-pruning's own handler on a recording pruner, run as a one-item Group so that
    torch-pruning does its own bookkeeping when it replaces an unwrapped nn.Parameter."""
    module = dep.target.module
    if is_grouped(module) and not dg.is_out_channel_pruning_fn(dep.handler):
        plain = _helpers.to_plain_idxs(idxs) if idxs and isinstance(idxs[0], _helpers._HybridIndex) else idxs
        cuts.append(prune_grouped_conv_inputs(module, plain))
        return
    step = tp.Group()
    step.add_dep(_recording_dependency(dep, cuts), idxs)
    step._DG = dg
    step.prune(record_history=False)


def prune_group(dg: tp.DependencyGraph, group: tp.Group) -> list[ParameterCut]:
    """group.prune() for a group of `dg` (each item's handler on its layer, in the group's order, then the entry in
    dg's pruning history), returning every parameter replaced, in order, as a ParameterCut."""
    cuts: list[ParameterCut] = []
    for dep, idxs in group.items:
        _prune_item(dg, dep, idxs, cuts)
    root, root_idxs = group[0]
    dg.pruning_history().append([dg._module2name[root.target.module], dg.is_out_channel_pruning_fn(root.trigger),
                                 root_idxs])
    return cuts


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
