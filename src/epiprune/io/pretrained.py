"""A pruned Hugging Face model as a `save_pretrained` folder that the model's own class loads back with
`from_pretrained`, without epiprune.

DESIGN -- per-block widths in transformers 5.x. The configs of Llama-style models and ViT hold one
num_attention_heads, num_key_value_heads and intermediate_size for every layer, and every layer is built from them;
5.x has no per-layer lists for these models (Gemma3n's intermediate_size list is the only one, one model) and
removed `pruned_heads` / `prune_heads` (4.x applied config.pruned_heads at init; grep of 5.24 finds neither). So a
model whose blocks kept different widths cannot be described by its config. Routes, least bad first:
  1. (here) pad each block with zero units up to the widest block of its kind and write the widest widths into the
     config: from_pretrained loads it into the stock class, and its outputs equal the pruned model's (a zero unit
     contributes exactly nothing: zero o/down columns). The cost: the narrower blocks compute at the widest width
     after loading (epiprune's TransformerGraph can cut the zero units again: their importance is 0).
  2. every block keeps the same width (then 1 pads nothing and the config is exact).
  3. a custom modeling file in the folder (`auto_map`, trust_remote_code=True) that builds per-block widths from
     config.epiprune_widths: exact and compact, but asks users to run code from the folder. Not built.
describe_config (surgery/transformer.py) writes the per-block widths into config.epiprune_widths in every case.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from epiprune.surgery.transformer import UnitGroup, describe_config, find_blocks


def _pad(param: torch.Tensor, size: int, dim: int) -> nn.Parameter:
    shape = list(param.shape)
    shape[dim] = size
    padded = torch.zeros(shape, dtype=param.dtype, device=param.device)
    padded.narrow(dim, 0, param.shape[dim]).copy_(param.detach())
    return nn.Parameter(padded, requires_grad=param.requires_grad)


def pad_units(group: UnitGroup, size: int) -> None:
    """Grow `group` to `size` units by appending units whose weights and biases are all zero."""
    for cut in group.cuts:
        linear, width = cut.linear, size * cut.per_unit
        linear.weight = _pad(linear.weight, width, cut.dim)
        if cut.dim == 0:
            if linear.bias is not None:
                linear.bias = _pad(linear.bias, width, 0)
            linear.out_features = width
        else:
            linear.in_features = width
    group.size = size
    for attr, value in (("num_heads", size * group.rep), ("num_attention_heads", size * group.rep),
                        ("num_key_value_heads", size), ("num_kv_heads", size), ("intermediate_size", size)):
        if isinstance(getattr(group.block, attr, None), int) and (attr == "intermediate_size") == (
                group.kind == "neurons"):
            setattr(group.block, attr, value)


def save_pretrained(model: nn.Module, folder: str | Path, **kwargs: object) -> dict[str, dict[str, int]]:
    """model.save_pretrained(folder, **kwargs) of a copy whose blocks are padded to the widest of their kind (see
    the module note); returns the per-block widths of the pruned model (also in config.epiprune_widths). The model
    itself is not changed."""
    clone = copy.deepcopy(model)
    groups = find_blocks(clone)
    describe_config(clone, groups)
    widths = dict(clone.config.epiprune_widths)
    for kind in ("heads", "neurons"):
        of_kind = [g for g in groups if g.kind == kind]
        widest = max((g.size for g in of_kind), default=0)
        for g in of_kind:
            if g.size < widest:
                pad_units(g, widest)
    clone.save_pretrained(folder, **kwargs)
    return widths
