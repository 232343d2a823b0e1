"""Structural surgery: the dependency graph and its channel groups (graph.py), and the cuts with the
optimizer-state remap (cuts.py). This module keeps `from epiprune.surgery import ...` working for both."""

from epiprune.surgery.cuts import (
    ParameterCut,
    check_torch_pruning_version,
    cut_tensor,
    prune_group,
    prune_grouped_conv_inputs,
    remap_optimizer_state,
)
from epiprune.surgery.graph import ChannelGroup, PrunableGraph, SurgeryError, is_depthwise, is_grouped, output_layers

__all__ = ["ChannelGroup", "ParameterCut", "PrunableGraph", "SurgeryError", "check_torch_pruning_version",
           "cut_tensor", "is_depthwise", "is_grouped", "output_layers", "prune_group", "prune_grouped_conv_inputs",
           "remap_optimizer_state"]
