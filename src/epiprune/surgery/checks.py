"""The surgery's self-check: prune a copy of the model by one channel per group and run it, so that a model whose
coupling torch-pruning misreads is refused at set-up with the layer named, not after hours of training."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from epiprune.surgery.cuts import SurgeryError

if TYPE_CHECKING:
    from epiprune.surgery.graph import PrunableGraph


def _same_modules(original: nn.Module, clone: nn.Module, modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The clone's counterparts of `modules` of the original (matched by module name)."""
    wanted = {n for n, m in original.named_modules() if any(m is x for x in modules)}
    return [m for n, m in clone.named_modules() if n in wanted]


def one_less(graph: PrunableGraph) -> list[np.ndarray]:
    """Keep lists that remove the least a prune can: one channel per group (one per block of a group whose
    channels are spread over the blocks of grouped convolutions); a group that cannot lose one keeps all."""
    keep = []
    for g in graph.groups:
        if g.partition is None:
            keep.append(np.arange(max(1, g.size - 1)))
            continue
        mask = np.ones(g.size, dtype=bool)
        if g.size > g.blocks:
            for b in range(g.blocks):
                mask[np.flatnonzero(g.partition == b)[-1]] = False
        keep.append(np.flatnonzero(mask))
    return keep

def _pruned_copy_fails(graph: PrunableGraph, only: int | None = None) -> tuple[str, str] | None:
    """Prune a copy by one_less() (only group `only`, if given) and run it: (layer, error) if it fails."""
    clone = copy.deepcopy(graph.model).eval()
    copied = type(graph)(clone, graph.example_inputs, [m for m in _same_modules(graph.model, clone, graph.ignored)])
    keep = one_less(copied)
    if only is not None:
        keep = [k if i == only else np.arange(g.size) for i, (k, g) in enumerate(zip(keep, copied.groups,
                                                                                     strict=True))]
    entered: list[str] = []
    names = {m: n for n, m in clone.named_modules()}
    handles = [m.register_forward_pre_hook(lambda mod, _i: entered.append(names[mod]))
               for m in clone.modules() if not list(m.children())]
    try:
        copied.prune(keep)
        with torch.no_grad():
            clone(graph.example_inputs)
    except Exception as e:  # whatever broke, report the layer and torch's reason in one line
        return (entered[-1] if entered else "?"), (str(e).splitlines() or [type(e).__name__])[0][:200]
    finally:
        for h in handles:
            h.remove()
    return None

def self_check(graph: PrunableGraph) -> None:
    """Prune a copy of the model by one channel per group and run it: a model whose coupling torch-pruning
    misreads fails here, at set-up, with the layer named, instead of after hours of training. The message
    names the root layer of every group that fails on its own: passing those in ignored_layers is accepted."""
    failure = _pruned_copy_fails(graph)
    if failure is None:
        return
    layer, reason = failure
    bad = [g.name for i, g in enumerate(graph.groups) if _pruned_copy_fails(graph, i) is not None]
    advice = ("pass ignored_layers=[" + ", ".join(f"model.{n}" for n in bad) + "]") if bad else \
        "pass the layers that feed it in ignored_layers"
    raise SurgeryError(f"the dependency graph cannot handle layer {layer!r} of {graph.model_name}: after "
                       f"removing channels it fails with: {reason} (accepted: layers torch-pruning couples; or "
                       f"{advice})")

