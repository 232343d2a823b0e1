"""Structural surgery: the dependency graph and its channel groups (graph.py), and the cuts with the
optimizer-state remap (cuts.py). This module keeps `from epiprune.surgery import ...` working for both."""

from collections.abc import Sequence

import torch
from torch import nn

from epiprune.surgery.cuts import (
    ParameterCut,
    check_torch_pruning_version,
    cut_tensor,
    prune_group,
    prune_grouped_conv_inputs,
    remap_optimizer_state,
)
from epiprune.surgery.graph import ChannelGroup, PrunableGraph, SurgeryError, is_depthwise, is_grouped, output_layers
from epiprune.surgery.transformer import TransformerGraph, UnitGroup, find_blocks, refuse_uncut_attention


def make_graph(model: nn.Module, example_inputs: torch.Tensor, ignored_layers: Sequence[nn.Module] = ()
               ) -> PrunableGraph | TransformerGraph:
    """The prunable units of `model`: attention heads and MLP neurons (TransformerGraph) for a Hugging Face style
    transformer (surgery/transformer.py says why they are not traced), channel groups over torch-pruning otherwise.
    A transformer here: a model with a config (`config.to_dict`, as every PreTrainedModel has) and at least one
    attention block; a CNN whose blocks merely name two linear layers fc1 and fc2 (ConvNeXt) keeps its channels.
    A Hugging Face model with an attention module of another layout (BERT, GPT-2, T5) is refused in one line
    (SurgeryError naming the module; see surgery/transformer.py); one without attention (an HF ResNet) gets channels."""
    config = getattr(model, "config", None)
    if callable(getattr(config, "to_dict", None)):
        groups = find_blocks(model, ignored_layers)
        refuse_uncut_attention(model, groups, ignored_layers)
        if any(g.kind == "heads" for g in groups):
            return TransformerGraph(model, example_inputs, ignored_layers)
    return PrunableGraph(model, example_inputs, ignored_layers)

__all__ = ["ChannelGroup", "ParameterCut", "PrunableGraph", "SurgeryError", "TransformerGraph", "UnitGroup",
           "check_torch_pruning_version", "cut_tensor", "find_blocks", "is_depthwise", "is_grouped", "make_graph",
           "output_layers", "prune_group", "prune_grouped_conv_inputs", "remap_optimizer_state"]
