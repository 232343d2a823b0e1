"""Channel groups and physical pruning: a thin layer over torch-pruning's DependencyGraph.

torch-pruning traces the model and couples every layer whose channels must be removed together (a residual
add ties the convs that feed it; a depthwise conv ties its input to its output; a BN follows its conv). We own
three things on top: naming groups stably (by the root layer's module name) so that a pruned architecture can be
stored as data, a cost model of widths, and carrying the optimizer state of every surviving weight slice across
the surgery (torch-pruning replaces parameters and tells its users to rebuild the optimizer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

from .errors import EpipruneError
from .subnetwork import CostModel


class SurgeryError(EpipruneError):
    """The dependency graph cannot handle the model, or a pruning spec does not fit it."""


@dataclass
class ChannelGroup:
    """Channels of several layers that are kept or removed together, identified by the root layer's name.

    taylor_targets: (module, local channel indices, group channel indices) for each layer whose output
    activation the group's channels define: the BNs of the group, or the root layer when there is none.
    bn_targets: the BNs among them (empty when the group has none).
    """

    name: str
    root: nn.Module
    size: int
    taylor_targets: list[tuple[nn.Module, list[int], list[int]]] = field(default_factory=list)
    out_modules: list[nn.Module] = field(default_factory=list)
    in_modules: list[nn.Module] = field(default_factory=list)
    bn_targets: list[tuple[nn.Module, list[int], list[int]]] = field(default_factory=list)

    @property
    def layers(self) -> int:
        """How many conv/linear layers produce these channels (a residual stage's group spans several): the
        group's weight in the per-layer EPI average."""
        return max(1, sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in self.out_modules))


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


def input_producers(model: nn.Module, example_inputs: torch.Tensor) -> dict[nn.Module, nn.Module]:
    """{leaf module: leaf module that produced its first input}, in forward order."""
    produced: dict[int, nn.Module] = {}
    producers: dict[nn.Module, nn.Module] = {}
    alive: list[torch.Tensor] = []  # keep tensors alive so that their ids stay unique during the pass

    def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if inputs and torch.is_tensor(inputs[0]) and id(inputs[0]) in produced:
            producers[mod] = produced[id(inputs[0])]
        if torch.is_tensor(out):
            produced[id(out)] = mod
            alive.append(out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return producers


def _same_modules(original: nn.Module, clone: nn.Module, modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The clone's counterparts of `modules` of the original (matched by module name)."""
    wanted = {n for n, m in original.named_modules() if any(m is x for x in modules)}
    return [m for n, m in clone.named_modules() if n in wanted]


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels \
        == module.out_channels


class PrunableGraph:
    """Dependency graph of `model`, its channel groups and their cost model.

    example_inputs: a tensor (1, C, H, W) shaped like one sample; FLOPs are per sample of that shape.
    ignored_layers: layers whose output channels must not be pruned; the layers producing the model output
    are always added.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor,
                 ignored_layers: Sequence[nn.Module] = ()) -> None:
        self.model = model
        self.example_inputs = example_inputs
        was_training = model.training
        model.eval()
        try:
            self.ignored = list(ignored_layers) + output_layers(model, example_inputs)
            with torch.enable_grad():  # torch-pruning traces through autograd
                self.dg = tp.DependencyGraph().build_dependency(model, example_inputs, verbose=False)
            raw_groups = list(self.dg.get_all_groups(ignored_layers=self.ignored,
                                                     root_module_types=(nn.Conv2d, nn.Linear)))
        except Exception as e:  # torch-pruning raises many kinds; name the model, keep one line
            raise SurgeryError(f"torch-pruning could not trace {type(model).__name__}: {e}") from None
        finally:
            model.train(was_training)
        names = {m: n for n, m in model.named_modules()}
        self.groups = [self._describe(g, names) for g in raw_groups]
        if not self.groups:
            raise SurgeryError(f"{type(model).__name__} has no prunable channel groups (need Conv2d/Linear layers "
                               "whose output channels are not the model output)")
        self.groups.sort(key=lambda g: list(names.values()).index(g.name))

    def _describe(self, group: tp.Group, names: dict[nn.Module, str]) -> ChannelGroup:
        root = group[0].dep.target.module
        cg = ChannelGroup(names[root], root, len(group[0].idxs))
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
            elif not list(module.children()):  # activations, pooling: cost scales with the channel count
                cg.out_modules.append(module)
        cg.taylor_targets = bn_targets or out_targets
        cg.bn_targets = bn_targets
        return cg

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def widths(self) -> list[int]:
        return [g.size for g in self.groups]

    def count(self) -> tuple[int, int]:
        """(FLOPs, parameters) of the model as it is now, per sample, by torch-pruning's counter."""
        flops, params = tp.utils.count_ops_and_params(self.model, self.example_inputs)
        return int(flops), int(params)

    def module_groups(self) -> tuple[dict[nn.Module, int], dict[nn.Module, int]]:
        """({module: index of the group setting its output channels}, {module: group setting its input channels})."""
        out_of: dict[nn.Module, int] = {}
        in_of: dict[nn.Module, int] = {}
        for gi, g in enumerate(self.groups):
            for m in g.out_modules:
                out_of[m] = gi
            for m in g.in_modules:
                in_of[m] = gi
        return out_of, in_of

    def cost_models(self) -> dict[str, CostModel]:
        """Cost models {'flops': ..., 'params': ...} over this graph's group widths (see CostModel)."""
        flops, params, layer_flops, layer_params = tp.utils.count_ops_and_params(
            self.model, self.example_inputs, layer_wise=True)
        out_of, in_of = self.module_groups()
        # activation modules are traced as anonymous ops, so they are in no group: give each the group of
        # the layer that produced its input (in forward order, so chains of such modules resolve)
        for m, producer in input_producers(self.model, self.example_inputs).items():
            if m not in out_of and m not in in_of and producer in out_of:
                out_of[m] = out_of[producer]
        result = {}
        for kind, total, per_layer in (("flops", flops, layer_flops), ("params", params, layer_params)):
            coef, outs, ins = [], [], []
            for m in set(out_of) | set(in_of):
                value = float(per_layer.get(m) or 0.0)
                if value == 0.0:
                    continue
                coef.append(value)
                outs.append(out_of.get(m, -1))
                # everything but dense convs and linear layers has one channel dimension: scale by it once
                single = not isinstance(m, (nn.Conv2d, nn.Linear)) or is_depthwise(m)
                ins.append(-1 if single and m in out_of else in_of.get(m, -1))
            result[kind] = CostModel(np.asarray(self.widths(), dtype=np.int64), np.asarray(coef),
                                     np.asarray(outs, dtype=np.int64), np.asarray(ins, dtype=np.int64),
                                     float(total) - float(np.sum(coef)))
        return result

    def self_check(self) -> None:
        """Prune a copy of the model by one channel per group and run it: a model whose coupling torch-pruning
        misreads fails here, at set-up, with the layer named, instead of after hours of training."""
        import copy

        clone = copy.deepcopy(self.model).eval()
        graph = PrunableGraph(clone, self.example_inputs, [m for m in _same_modules(self.model, clone, self.ignored)])
        graph.prune([np.arange(max(1, g.size - 1)) for g in graph.groups])
        entered: list[str] = []
        names = {m: n for n, m in clone.named_modules()}
        handles = [m.register_forward_pre_hook(lambda mod, _i: entered.append(names[mod]))
                   for m in clone.modules() if not list(m.children())]
        try:
            with torch.no_grad():
                clone(self.example_inputs)
        except Exception as e:  # whatever broke, report the layer and torch's reason in one line
            layer = entered[-1] if entered else "?"
            raise SurgeryError(f"the dependency graph cannot handle layer {layer!r} of {type(self.model).__name__}: "
                               f"after removing channels it fails with: {str(e).splitlines()[0][:200]} "
                               "(accepted: layers torch-pruning couples, or pass it in ignored_layers)") from None
        finally:
            for h in handles:
                h.remove()

    def prune(self, keep: Sequence[Sequence[int] | np.ndarray], optimizer: torch.optim.Optimizer | None = None
              ) -> None:
        """Physically remove channels. keep[g]: indices (or a boolean mask) of group g's channels to keep.
        Every tensor that touches a removed channel shrinks; the optimizer's per-parameter state (momentum,
        Adam moments) is sliced to the survivors and re-attached to the new parameters."""
        if len(keep) != len(self.groups):
            raise SurgeryError(f"{len(keep)} keep lists for {len(self.groups)} channel groups")
        plans = []
        for g, kept in zip(self.groups, keep, strict=True):
            kept_idx = np.flatnonzero(kept) if np.asarray(kept).dtype == bool else np.asarray(kept, dtype=np.int64)
            if len(kept_idx) == 0:
                raise SurgeryError(f"cannot remove every channel of {g.name} (keep at least one)")
            if kept_idx.min() < 0 or kept_idx.max() >= g.size:
                raise SurgeryError(f"keep index out of range for {g.name} (0..{g.size - 1})")
            drop = sorted(set(range(g.size)) - {int(i) for i in kept_idx})
            plans.append((g, drop))
        with record_parameter_cuts() as cuts:
            for g, drop in plans:
                if drop:
                    pruner = self.dg.get_pruner_of_module(g.root)
                    self.dg.get_pruning_group(g.root, pruner.prune_out_channels, drop).prune()
        if optimizer is not None:
            remap_optimizer_state(optimizer, cuts)
        for g, drop in plans:
            g.size -= len(drop)
            # taylor target indices are positions in the (now shorter) channel dimension: renumber
            g.taylor_targets = [(m, list(range(g.size)), list(range(g.size))) for m, _, _ in g.taylor_targets]


@dataclass
class ParameterCut:
    old: torch.Tensor
    new: torch.Tensor
    keep: list[int]
    dim: int


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
        cuts.append(ParameterCut(weight, new, list(keep_idxs), pruning_dim))
        return new

    BasePruningFunc._prune_parameter_and_grad = recording
    try:
        yield cuts
    finally:
        BasePruningFunc._prune_parameter_and_grad = original


def remap_optimizer_state(optimizer: torch.optim.Optimizer, cuts: Sequence[ParameterCut]) -> None:
    """Point the optimizer at the new parameters and slice their state. A parameter cut twice (output then
    input channels) is followed through the chain back to the one the optimizer knows."""
    lineage: dict[int, tuple[torch.Tensor, list[tuple[list[int], int]], torch.Tensor]] = {}
    for cut in cuts:
        origin, steps, _ = lineage.pop(id(cut.old), (cut.old, [], None))
        lineage[id(cut.new)] = (origin, [*steps, (cut.keep, cut.dim)], cut.new)
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
                    for keep, dim in steps:
                        value = value.index_select(dim, torch.as_tensor(keep, device=value.device))
                new_state[key] = value
            optimizer.state[new] = new_state
