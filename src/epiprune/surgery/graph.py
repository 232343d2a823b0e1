"""Channel groups: a thin layer over torch-pruning's DependencyGraph (the graph part of the surgery;
the cuts themselves and the optimizer-state remap are in cuts.py, and `epiprune.surgery` exports both).

torch-pruning traces the model and couples every layer whose channels must be removed together (a residual
add ties the convs that feed it; a depthwise conv ties its input to its output; a BN follows its conv). We own
what sits on top: naming groups stably (by the root layer's module name) so that a pruned architecture can be
stored as data; grouped convolutions (each of a convolution's groups keeps the same number of channels, which
torch-pruning cannot cut on the input side unless every group drops the same positions); refusing, at
construction and with the layer named, what cannot be pruned correctly (a channel shuffle); the channel
segments of every layer (from which costs/counting.py builds the exact FLOPs and parameter cost models); and
carrying the optimizer state of every surviving weight slice across the surgery (torch-pruning replaces parameters
and tells its users to rebuild the optimizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from epiprune.surgery.checks import one_less, self_check
from epiprune.surgery.cuts import (
    ParameterCut,
    SurgeryError,
    check_torch_pruning_version,
    is_grouped,
    prune_group,
    remap_optimizer_state,
)


@dataclass
class ChannelGroup:
    """Channels of several layers that are kept or removed together, identified by the root layer's name.

    taylor_targets: (module, local channel indices, group channel indices) for each layer whose output
    activation the group's channels define: the BNs of the group, or the root layer when there is none.
    bn_targets: the BNs among them (empty when the group has none).
    partition: None, or (size,) block ids 0..B-1 of equal block sizes: the channels belong to the groups of
    grouped convolutions, and every block must keep the same number of channels (kept = a multiple of B).
    """

    name: str
    root: nn.Module
    size: int
    taylor_targets: list[tuple[nn.Module, list[int], list[int]]] = field(default_factory=list)
    out_modules: list[nn.Module] = field(default_factory=list)
    in_modules: list[nn.Module] = field(default_factory=list)
    bn_targets: list[tuple[nn.Module, list[int], list[int]]] = field(default_factory=list)
    partition: np.ndarray | None = None

    @property
    def layers(self) -> int:
        """How many conv/linear layers produce these channels (a residual stage's group spans several): the
        group's weight in the per-layer EPI average."""
        return max(1, sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in self.out_modules))

    @property
    def blocks(self) -> int:
        """B: the number of equal blocks the kept channels are spread over (1: no constraint)."""
        return 1 if self.partition is None else int(self.partition.max()) + 1


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """Leaf modules whose output tensor is the model's output (the classifier): they must keep their width."""
    produced: dict[int, nn.Module] = {}
    handles = [m.register_forward_hook(lambda mod, _i, out: produced.__setitem__(id(out), mod))
               for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [produced[id(o)] for o in outs if id(o) in produced]




def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels \
        == module.out_channels


class _TraceWatcher(TorchFunctionMode):
    """Watches torch-pruning's tracing pass for channel shuffles: a view or reshape that splits the channel
    dimension (N, C, ...) into (N, g, C / g, ...), then a transpose or permute that reorders those two dimensions.
    Each is recorded with the autograd node of the shuffled tensor (torch-pruning's node for that op) and the last
    layer run before it (set by PrunableGraph's forward hooks), so that the refusal can name it."""

    def __init__(self) -> None:
        super().__init__()
        self.split: dict[int, torch.Tensor] = {}  # id -> tensor (kept alive) whose dims 1, 2 split the channels
        self.shuffles: list[tuple[object, str]] = []  # (grad_fn of the shuffled tensor, last layer before it)
        self.last_layer = "the input"

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        src = args[0] if args and torch.is_tensor(args[0]) else None
        if src is None or not torch.is_tensor(out):
            return out
        if name in ("view", "reshape", "unflatten") and out.ndim == src.ndim + 1 and src.ndim >= 2 \
                and out.shape[0] == src.shape[0] and out.shape[1] * out.shape[2] == src.shape[1] \
                and out.shape[1] > 1 and out.shape[2] > 1:
            self.split[id(out)] = out
        elif name in ("transpose", "swapaxes", "swapdims", "permute") and id(src) in self.split:
            kwargs = kwargs or {}
            if name == "permute":
                dims = kwargs.get("dims", args[1] if len(args) == 2 else args[1:])
                dims = [int(d) % src.ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
                moved = dims[1:3] != [1, 2]
            else:
                given = [*args[1:3], *(kwargs[k] for k in ("dim0", "dim1", "axis0", "axis1") if k in kwargs)]
                pair = {int(d) % src.ndim for d in given}
                moved = len(pair) == 2 and bool(pair & {1, 2})
            if moved:
                self.shuffles.append((out.grad_fn, self.last_layer))
        return out


class PrunableGraph:
    """Dependency graph of `model` and its channel groups (cost models: costs.counting).

    example_inputs: a tensor (1, C, H, W) shaped like one sample; FLOPs are per sample of that shape.
    ignored_layers: layers whose output channels must not be pruned; the layers producing the model output
    are always added. A model that cannot be pruned correctly is refused here (SurgeryError naming the layer and
    the layers to pass in ignored_layers to get it accepted).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor,
                 ignored_layers: Sequence[nn.Module] = ()) -> None:
        check_torch_pruning_version()
        if torch.is_tensor(example_inputs) and (example_inputs.dim() < 2 or example_inputs.shape[0] != 1):
            # torch-pruning's counter gives the total per sample but each layer's count per batch: with a batch,
            # the cost model's constant (total minus the layers) goes negative and every prediction is wrong
            raise SurgeryError(f"example_inputs of shape {tuple(example_inputs.shape)} is not one sample "
                               f"(accepted: a tensor shaped (1, C, H, W), e.g. batch[:1])")
        self.model = model
        self.example_inputs = example_inputs
        self.model_name = type(model).__name__
        names = {m: n for n, m in model.named_modules()}
        self._names = names
        was_training = model.training
        model.eval()
        watcher = _TraceWatcher()
        self._op_module: dict[object, nn.Module] = {}  # grad_fn of a leaf module's output -> the module

        def hook(mod: nn.Module, _inputs: tuple, out: object) -> None:
            if torch.is_tensor(out) and out.grad_fn is not None:
                self._op_module.setdefault(out.grad_fn, mod)
            watcher.last_layer = names.get(mod, "?")

        handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
        try:
            self.ignored = list(ignored_layers) + output_layers(model, example_inputs)
            with torch.enable_grad(), watcher:  # torch-pruning traces through autograd
                self.dg = tp.DependencyGraph().build_dependency(model, example_inputs, verbose=False)
            all_groups = list(self.dg.get_all_groups(ignored_layers=[], root_module_types=(nn.Conv2d, nn.Linear)))
        except Exception as e:  # torch-pruning raises many kinds; name the model, keep one line
            raise SurgeryError(f"torch-pruning could not trace {self.model_name}: {e}") from None
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        ignored = {id(m) for m in self.ignored}
        self._all_groups = all_groups
        raw_groups = []
        self._group_index: list[int] = []  # index into self.groups of each of all_groups, -1 if not prunable
        for group in all_groups:
            prunable = not any(id(item.dep.target.module) in ignored and self.dg.is_out_channel_pruning_fn(
                item.dep.handler) for item in group)
            self._group_index.append(len(raw_groups) if prunable else -1)
            if prunable:
                raw_groups.append(group)
        self._refuse_unsupported(raw_groups, watcher)
        self.groups = [self._describe(g, names) for g in raw_groups]
        if not self.groups:
            raise SurgeryError(f"{self.model_name} has no prunable channel groups (need Conv2d/Linear layers "
                               "whose output channels are not the model output)")
        order = list(names.values())
        ranks = [order.index(g.name) for g in self.groups]
        perm = sorted(range(len(self.groups)), key=lambda i: ranks[i])
        self.groups = [self.groups[i] for i in perm]
        new_pos = {old: new for new, old in enumerate(perm)}
        self._group_index = [new_pos[i] if i >= 0 else -1 for i in self._group_index]

    def _layer_hint(self, groups: Sequence[tp.Group]) -> str:
        roots = sorted({self._names.get(g[0].dep.target.module, "?") for g in groups})
        return "ignored_layers=[" + ", ".join(f"model.{r}" for r in roots) + "]"

    def _refuse_unsupported(self, raw_groups: list[tp.Group], watcher: _TraceWatcher) -> None:
        """Refuse, with the layer named, what the surgery would get wrong: channels that pass through a channel
        shuffle, a grouped convolution fed by several channel groups, and a convolution with groups ==
        out_channels != in_channels (torch-pruning would couple its inputs to its outputs)."""
        shuffles = {id(fn): layer for fn, layer in watcher.shuffles}
        ignored = {id(m) for m in self.ignored}
        for module in self.model.modules():
            if id(module) not in ignored and isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and \
                    module.groups == module.out_channels != module.in_channels:
                raise SurgeryError(f"convolution {self._names[module]!r} of {self.model_name} has groups = "
                                   f"out_channels = {module.out_channels} != in_channels = {module.in_channels} "
                                   "(accepted: depthwise with in = out channels, or groups < out_channels; or pass "
                                   f"ignored_layers=[model.{self._names[module]}])")
        hit: dict[str, list[tp.Group]] = {}
        for group in raw_groups:
            for item in group:
                node = self.dg.module2node.get(item.dep.target.module)
                if node is not None and id(node.grad_fn) in shuffles:
                    hit.setdefault(shuffles[id(node.grad_fn)], []).append(group)
                    break
        if hit:
            layer, groups = next(iter(hit.items()))
            every = [g for gs in hit.values() for g in gs]
            raise SurgeryError(f"channel shuffle after layer {layer!r} of {self.model_name}: pruning would mix the "
                               "channels of the convolution groups it interleaves (accepted: models without a "
                               f"channel shuffle in a pruned channel group; or pass {self._layer_hint(every)} to "
                               "keep the shuffled channels)")
        for group in raw_groups:
            self._partition(group)  # raises for grouped convolutions it cannot split evenly

    def _partition(self, group: tp.Group) -> np.ndarray | None:
        """Block ids of the group's channels, from every grouped convolution that cuts them (see ChannelGroup)."""
        size = len(group[0].idxs)
        labels: list[np.ndarray] = []
        seen: set[tuple[int, bool]] = set()
        for item in group:
            module = item.dep.target.module
            if not is_grouped(module):
                continue
            is_out = self.dg.is_out_channel_pruning_fn(item.dep.handler)
            if (id(module), is_out) in seen:
                continue
            seen.add((id(module), is_out))
            dim = module.out_channels if is_out else module.in_channels
            if len(item.idxs) != dim:
                feeding = [g for g in self._all_groups if any(it.dep.target.module is module and not
                                                              self.dg.is_out_channel_pruning_fn(it.dep.handler)
                                                              for it in g)]
                raise SurgeryError(f"grouped convolution {self._names[module]!r} (groups={module.groups}) of "
                                   f"{self.model_name} takes its {'output' if is_out else 'input'} channels from "
                                   "several channel groups (a concatenation), which cannot all keep the same "
                                   "number per convolution group (accepted: a grouped convolution fed by one "
                                   f"channel group; or pass {self._layer_hint(feeding)})")
            label = np.zeros(size, dtype=np.int64)
            label[np.asarray(item.root_idxs, dtype=np.int64)] = np.asarray(item.idxs, dtype=np.int64) // (
                dim // module.groups)
            labels.append(label)
        if not labels:
            return None
        combined = np.unique(np.stack(labels, axis=1), axis=0, return_inverse=True)[1].reshape(-1)
        counts = np.bincount(combined)
        if len(set(counts.tolist())) > 1:
            convs = sorted({self._names[it.dep.target.module] for it in group if is_grouped(it.dep.target.module)})
            raise SurgeryError(f"grouped convolutions {convs} of {self.model_name} split the same channels into "
                               "groups no equal split fits (accepted: groups counts that divide one another; or "
                               f"pass {self._layer_hint([group])})")
        return combined

    def _describe(self, group: tp.Group, names: dict[nn.Module, str]) -> ChannelGroup:
        root = group[0].dep.target.module
        cg = ChannelGroup(names[root], root, len(group[0].idxs), partition=self._partition(group))
        bn_targets, out_targets = [], []
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or isinstance(module, (nn.Sequential,)):
                continue
            is_out = self.dg.is_out_channel_pruning_fn(item.dep.handler)
            target = (module, list(item.idxs), list(item.root_idxs))
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                bn_targets.append(target)
                cg.out_modules.append(module)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                if is_out or is_depthwise(module):
                    cg.out_modules.append(module)
                    if is_out:
                        out_targets.append(target)
                else:
                    cg.in_modules.append(module)
            elif not list(module.children()):  # norms, activations, pooling: cost scales with the channel count
                cg.out_modules.append(module)
        cg.taylor_targets = bn_targets or out_targets
        cg.bn_targets = bn_targets
        return cg

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def widths(self) -> list[int]:
        return [g.size for g in self.groups]

    def partitions(self) -> list[np.ndarray | None]:
        """Per group: None, or the block id of each channel (kept channels must be spread evenly over blocks)."""
        return [None if g.partition is None else g.partition.copy() for g in self.groups]

    def count(self) -> tuple[int, int]:
        """(FLOPs, parameters) of the model as it is now, per sample, by torch-pruning's counter."""
        flops, params = tp.utils.count_ops_and_params(self.model, self.example_inputs)
        return int(flops), int(params)

    def module_groups(self) -> tuple[dict[nn.Module, int], dict[nn.Module, int]]:
        """({module: index of the group setting its output channels}, {module: group setting its input channels});
        a module fed by several groups (a concatenation) maps to one of them (see channel_segments for all)."""
        out_of: dict[nn.Module, int] = {}
        in_of: dict[nn.Module, int] = {}
        for gi, g in enumerate(self.groups):
            for m in g.out_modules:
                out_of[m] = gi
            for m in g.in_modules:
                in_of[m] = gi
        return out_of, in_of

    def channel_segments(self) -> tuple[dict[int, list[tuple[int, int]]], dict[int, list[tuple[int, int]]],
                                        dict[int, object]]:
        """Which groups set the channels of each module or unwrapped parameter, keyed by id():
        (out segments, in segments, {id: object}); a segment is (group index or -1 for channels no prunable
        group controls, channel count). Layers with one channel dimension (norms, depthwise convs, activations,
        pools, unwrapped parameters) have out segments only."""
        out_segs: dict[int, dict[tuple, tuple[int, int]]] = {}
        in_segs: dict[int, dict[tuple, tuple[int, int]]] = {}
        objects: dict[int, object] = {}
        for group, gi in zip(self._all_groups, self._group_index, strict=True):
            for item in group:
                target = item.dep.target.module
                node = self.dg.module2node.get(target)
                owner = target
                if not isinstance(target, nn.Parameter) and node is not None and \
                        target not in self._names and node.grad_fn in self._op_module:
                    owner = self._op_module[node.grad_fn]  # an activation / pool module behind an anonymous op
                if owner not in self._names and not isinstance(owner, nn.Parameter):
                    continue  # an op of no module (functional): torch-pruning counts no cost for it
                objects[id(owner)] = owner
                is_out = self.dg.is_out_channel_pruning_fn(item.dep.handler)
                single = not isinstance(owner, (nn.Conv2d, nn.Linear)) or is_depthwise(owner)
                table = out_segs if is_out or single else in_segs
                key = (gi, tuple(sorted(int(i) for i in item.idxs)))
                table.setdefault(id(owner), {})[key] = (gi, len(item.idxs))
        return ({k: list(v.values()) for k, v in out_segs.items()}, {k: list(v.values()) for k, v in in_segs.items()},
                objects)

    def one_less(self) -> list[np.ndarray]:
        """Keep lists that remove the least a prune can (see checks.one_less)."""
        return one_less(self)

    def self_check(self) -> None:
        """Prune a copy by one channel per group and run it; SurgeryError naming the layer if it fails (see
        checks.self_check)."""
        self_check(self)

    def prune(self, keep: Sequence[Sequence[int] | np.ndarray], optimizer: torch.optim.Optimizer | None = None
              ) -> None:
        """Physically remove channels. keep[g]: indices (or a boolean mask) of group g's channels to keep; a group
        whose channels feed or leave grouped convolutions must keep the same number in each block (partition).
        Every tensor that touches a removed channel shrinks; the optimizer's per-parameter state (momentum,
        Adam moments) is sliced to the survivors and re-attached to the new parameters."""
        check_torch_pruning_version()
        if len(keep) != len(self.groups):
            raise SurgeryError(f"{len(keep)} keep lists for {len(self.groups)} channel groups")
        plans = []
        for g, kept in zip(self.groups, keep, strict=True):
            kept_idx = np.flatnonzero(kept) if np.asarray(kept).dtype == bool else np.asarray(kept, dtype=np.int64)
            if len(kept_idx) == 0:
                raise SurgeryError(f"cannot remove every channel of {g.name} (keep at least one)")
            if kept_idx.min() < 0 or kept_idx.max() >= g.size:
                raise SurgeryError(f"keep index out of range for {g.name} (0..{g.size - 1})")
            if g.partition is not None:
                per_block = np.bincount(g.partition[np.unique(kept_idx)], minlength=g.blocks)
                if len(set(per_block.tolist())) > 1:
                    raise SurgeryError(f"{g.name} feeds or leaves grouped convolutions: each of its {g.blocks} "
                                       f"blocks must keep the same number of channels (kept {per_block.tolist()})")
            drop = sorted(set(range(g.size)) - {int(i) for i in kept_idx})
            plans.append((g, drop))
        cuts: list[ParameterCut] = []
        for g, drop in plans:
            if drop:
                pruner = self.dg.get_pruner_of_module(g.root)
                cuts += prune_group(self.dg, self.dg.get_pruning_group(g.root, pruner.prune_out_channels, drop))
        if optimizer is not None:
            remap_optimizer_state(optimizer, cuts)
        for g, drop in plans:
            if g.partition is not None:
                g.partition = np.delete(g.partition, drop)
            g.size -= len(drop)
            # taylor target indices are positions in the (now shorter) channel dimension: renumber
            g.taylor_targets = [(m, list(range(g.size)), list(range(g.size))) for m, _, _ in g.taylor_targets]
