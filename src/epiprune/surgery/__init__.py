"""Structural surgery: the dependency graph and its channel groups (graph.py), and the cuts with the
optimizer-state remap (cuts.py). This module keeps `from epiprune.surgery import ...` working for both."""

from epiprune.surgery.cuts import (
    ParameterCut,
    cut_tensor,
    grouped_conv_inputs,
    prune_grouped_conv_inputs,
    record_parameter_cuts,
    remap_optimizer_state,
)
from epiprune.surgery.graph import ChannelGroup, PrunableGraph, SurgeryError, is_depthwise, is_grouped, output_layers

__all__ = ["ChannelGroup", "ParameterCut", "PrunableGraph", "SurgeryError", "cut_tensor", "grouped_conv_inputs",
           "is_depthwise", "is_grouped", "output_layers", "prune_grouped_conv_inputs", "record_parameter_cuts",
           "remap_optimizer_state"]
