"""Costs: what a budget is and what a width vector costs. Import layering: policy -> costs -> surgery -> models.

budget.py          Budget, BudgetError, BUDGET_KINDS: the fraction of the dense cost to keep
model.py           the Cost protocol (what selection needs) and CostModel (linear per-layer FLOPs / parameters)
counting.py        counting_cost_models(graph): the exact FLOPs and parameter CostModels of a PrunableGraph
timing.py          LatencySettings, median_ms, prepare_step, time_model_step, paired_ratio: timing on the device
layer_kinds.py     the registry of layer kinds latency tables time (conv, depthwise conv, linear, batch norm)
unit_kinds.py      the transformer kinds in it: an attention block over kept heads, an MLP over kept neurons
latency_table.py   timed layers, channel grids, the table as a keyed JSON artefact
layer_ratios.py    a table's layers timed as ratios to their dense size (load cancels), the build's noise and its limit
latency_model.py   LatencyCostModel: a width vector's milliseconds from the tables (the method: its docstring)
calibration.py     the calibration networks and the fit of the latency model onto whole-model steps
latency_build.py   build_table, load_or_build: time and calibrate a table, or reuse a stored one
closed_loop.py     a latency budget's closed loop: time the table's pick against the dense step, correct the target

Only the light names are exported here; import the latency modules by their paths.
"""

from epiprune.costs.budget import BUDGET_KINDS, Budget, BudgetError
from epiprune.costs.model import Cost, CostModel

__all__ = ["BUDGET_KINDS", "Budget", "BudgetError", "Cost", "CostModel"]
