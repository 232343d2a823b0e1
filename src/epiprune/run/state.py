"""The state of a training run between its phases (RunState), and how it is checkpointed: at every epoch's end and,
on the step clock, at a prune inside an epoch (with every rank's sums and position in that epoch)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from epiprune import distributed
from epiprune.costs.budget import Budget
from epiprune.files import CHECKPOINT_FILE
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.run.checkpoint import save_checkpoint
from epiprune.run.config import TrainConfig
from epiprune.run.data import Dataset, TensorLoader
from epiprune.run.records import EpochRow
from epiprune.run.trajectory import (
    KEPT_CHECKPOINTS,
    SCORES_FILE,
    BranchPoint,
    ScoreRecorder,
    keep_copy,
    keeps_before_probe,
    step_checkpoint,
)


@dataclass
class RunState:
    """The state of a run between its phases (setup, restore, epochs, finish)."""

    cfg: TrainConfig
    device: torch.device
    log: Callable[[str], None]
    main: bool
    out: Path
    budget: Budget
    dataset: Dataset
    train_loader: TensorLoader
    val_loader: TensorLoader
    test_loader: TensorLoader | None
    model: nn.Module
    policy: EarlyPruningPolicy
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    metrics: list[EpochRow] = field(default_factory=list)
    train_flops_total: float = 0.0
    train_seconds: float = 0.0
    first_epoch: int = 1
    recorder: ScoreRecorder | None = None
    flops: float = 0.0
    params: float = 0.0
    net: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    partial: dict | None = None  # a checkpoint's unfinished epoch (step clock: saved at a prune inside an epoch)
    branch_point: BranchPoint | None = None  # --branch-from: where this run took over from the dense one

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


def save_run_checkpoint(run: RunState, on_checkpoint: Callable[[], None], partial: dict | None = None) -> bool:
    """Rank 0 writes the checkpoint (the data order and random state of every rank in it; `partial`: this rank's
    sums and position in an unfinished epoch, gathered per rank); every rank takes part in the gathering. True on
    rank 0."""
    rng = distributed.gather_to_all((run.train_loader.rng_state(), torch.get_rng_state()))  # per rank
    if partial is not None:
        partial = distributed.gather_to_all(partial)
    if not run.main:
        return False
    recorder, point = run.recorder, run.branch_point
    # a step-clock branch point (inside an epoch) is not in the metrics: kept, so a resumed branch still knows it
    branched = {} if point is None or point.shared_flops is None else {
        "branch_point": {"shared_flops": point.shared_flops, "shared_seconds": point.shared_seconds}}
    save_checkpoint(run.out / CHECKPOINT_FILE, run.model, run.optimizer, run.scheduler, run.policy,
                    config=asdict(run.cfg), metrics=run.metrics, train_flops_total=run.train_flops_total,
                    seconds=run.train_seconds, rng=rng, scaler=run.scaler.state_dict(),
                    scores=recorder.state_dict() if recorder else {}, partial=partial, **branched)
    on_checkpoint()
    return True


def save_step(run: RunState, on_checkpoint: Callable[[], None], pruned_now: bool, last_of_epoch: bool,
              partial: Callable[[], dict]) -> None:
    """The checkpoint of a step inside an epoch (`partial()`: its sums and position): at the step clock's prune,
    and, in a dense run keeping checkpoints on the step clock, before each probe step of the kept epochs (kept as
    checkpoints/step<n>.pt, where a branch pruning at step n + 1 starts; an epoch's last step: save_epoch)."""
    keep = keeps_before_probe(run.cfg.keep_checkpoints, run.policy, not last_of_epoch)
    if (pruned_now or keep) and save_run_checkpoint(run, on_checkpoint, partial()) and keep:
        keep_copy(run.out / CHECKPOINT_FILE, run.out / KEPT_CHECKPOINTS / step_checkpoint(run.policy.clock.step))


def save_epoch(run: RunState, epoch: int, row: EpochRow, on_checkpoint: Callable[[], None]) -> None:
    """The epoch's checkpoint, the kept copy, the recorded scores, then the metrics row (rank 0 writes)."""
    cfg, recorder = run.cfg, run.recorder
    # checkpoint first: a crash between the two writes leaves a checkpoint that resume trusts
    if not save_run_checkpoint(run, on_checkpoint):
        return
    out = run.out
    if epoch in (cfg.keep_checkpoints or []):
        keep_copy(out / CHECKPOINT_FILE, out / KEPT_CHECKPOINTS / f"epoch{epoch}.pt")
    if keeps_before_probe(cfg.keep_checkpoints, run.policy, True):  # the step clock's next probe opens an epoch
        keep_copy(out / CHECKPOINT_FILE, out / KEPT_CHECKPOINTS / step_checkpoint(run.policy.clock.step))
    if recorder is not None:
        recorder.write(out / SCORES_FILE)
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")
