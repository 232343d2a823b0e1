"""The run's EarlyPruningPolicy, built from its TrainConfig; a latency budget's table measured once (rank 0) and kept
in the run folder for a resumed run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from epiprune import distributed
from epiprune.costs.budget import Budget
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.run.config import TrainConfig

LATENCY_TABLE_FILE = "latency_table.json"


def make_run_policy(cfg: TrainConfig, model: nn.Module, example: torch.Tensor, budget: Budget, out: Path,
                 resuming: bool, log: Callable[[str], None], ignored: list[nn.Module],
                 steps_per_epoch: int | None = None) -> EarlyPruningPolicy:
    """The run's policy (steps_per_epoch: the loader's batches, for the step clock). For a latency budget, rank 0
    measures (or reuses) the table first and the other ranks then read the same file; the run folder keeps a copy,
    which a resumed run uses."""
    table = cfg.latency_table
    if budget.kind == "latency" and resuming and table is None and (out / LATENCY_TABLE_FILE).exists():
        table = str(out / LATENCY_TABLE_FILE)

    def make() -> EarlyPruningPolicy:
        return EarlyPruningPolicy.from_config(model, example, replace(cfg.policy_config(steps_per_epoch),
                                                                      latency_table=table),
                                              ignored_layers=ignored, log=log, progress=cfg.progress)

    if budget.kind != "latency":
        return make()
    if not distributed.is_main():
        distributed.barrier()  # rank 0 is building the table
    policy = make()
    if distributed.is_main():
        distributed.barrier()
        copy = out / LATENCY_TABLE_FILE
        if policy.latency_table_path is not None and policy.latency_table_path.resolve() != copy.resolve():
            shutil.copyfile(policy.latency_table_path, copy)
    return policy
