"""Recorded dense trajectories, and pruned runs branched from them.

A dense run made with `--record-scores` writes scores.jsonl: for every dense epoch, the scores its policy ranked
(its importance) and the weight-based ones (magnitude, bn) read at the epoch's end; with `--probe-every K` also
the Taylor scores of every window of K steps (for studying a finer trigger). With `--keep-checkpoints` it keeps
checkpoints/epoch<k>.pt. A run made with `--branch-from` replays the recorded scores through its own policy (its
budget, EPI settings and importance, if recorded), and at the epoch its policy prunes, it loads that epoch's
checkpoint, prunes and trains on: the same computation as training it from scratch (tests/test_branching.py
checks this bit for bit), without training the shared dense epochs again. `compare` uses this for the oracle's
grid of prune epochs, train-prune-fine-tune and the EPI runs.

On the step clock (--epi-every N) scores.jsonl holds a probe row per probe instead: the policy's importance of the
probe interval, of its first half (`<importance>_half`, what the noise floor compares) and the weight-based scores
at the probe step; --keep-checkpoints keeps, for every probe step s in the kept epochs, checkpoints/step<s-1>.pt
(the run after s - 1 steps, mid-epoch ones with the epoch's sums and data position). A branch replays the probes
(EarlyPruningPolicy.replay_probes), loads step<s-1>.pt of the probe where it prunes, trains step s again and
prunes there (branch_at_probe).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from epiprune import distributed
from epiprune.errors import EpipruneError
from epiprune.files import atomic_write, atomic_write_text
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.policy.importance import BatchNormScaleImportance, MagnitudeImportance
from epiprune.policy.replay import RecordedProbe
from epiprune.run.checkpoint import load_checkpoint
from epiprune.run.options import recorded_setting
from epiprune.run.records import probe_fields
from epiprune.run.steps import TRAIN_FLOPS_PER_FORWARD

SCORES_FILE = "scores.jsonl"
KEPT_CHECKPOINTS = "checkpoints"
# the settings that shape a dense trajectory: a branch must share every one of them with its source
TRAJECTORY_SETTINGS = ("model", "model_kwargs", "data", "data_dir", "image_size", "seq_len", "train_subset",
                       "val_subset", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                       "warmup_epochs", "clip_grad_norm", "seed", "data_seed", "holdout", "channels_last", "amp",
                       "compile", "bn_l1", "device")


class ScoreRecorder:
    """Collects the importance of every dense epoch (and of every `probe_every` steps) of one run."""

    def __init__(self, policy: EarlyPruningPolicy, probe_every: int = 0) -> None:
        self.policy, self.probe_every = policy, probe_every
        self.epochs: list[dict] = []
        self.probes: list[dict] = []
        self.global_step = 0
        self._snapshot: list[np.ndarray] | None = None  # accumulated Taylor totals at the last probe
        self._carry: list[np.ndarray] | None = None  # the window's part from before an epoch boundary

    @property
    def probing(self) -> bool:
        return bool(self.probe_every) and self.policy.importance_kind == "taylor" and not self.policy.pruned

    def after_step(self, epoch: int) -> None:
        """Call after policy.step(): every probe_every steps, record the Taylor scores of the last window; on the
        step clock, after each of the policy's probes, its scores (of the interval and of its first half)."""
        clock = self.policy.clock
        if clock is not None:
            self._record_probe(epoch)
            return
        if not self.probing:
            return
        self.global_step += 1
        if self.global_step % self.probe_every:
            return
        totals = self.policy.importance.scores()
        window = [t - s for t, s in zip(totals, self._snapshot, strict=True)] if self._snapshot else totals
        if self._carry is not None:
            window = [w + c for w, c in zip(window, self._carry, strict=True)]
        self._snapshot, self._carry = totals, None
        self.probes.append({"epoch": epoch, "step": self.global_step, "taylor": [w.tolist() for w in window]})

    def _record_probe(self, epoch: int) -> None:
        """A probe row: the policy's importance of the probe interval (and `<importance>_half`, its first half's,
        what the noise floor compares), and the weight-based scores at the probe step (magnitude, bn)."""
        policy, clock = self.policy, self.policy.clock
        if policy.pruned or not clock.at_probe or not policy.history or policy.history[-1].step != clock.step:
            return
        kind, as_lists = policy.importance_kind, (lambda v: [np.asarray(x).tolist() for x in v])
        row = {"epoch": epoch, "step": clock.step, **{k: as_lists(v) for k, v in self.weight_scores().items()},
               kind: as_lists(policy.last_scores)}
        if policy.last_half is not None:
            row[f"{kind}_half"] = as_lists(policy.last_half)
        self.probes.append(row)

    def weight_scores(self) -> dict[str, list[np.ndarray]]:
        """Weight-based scores of the model now (call at the epoch's end, before the policy may prune)."""
        return {"magnitude": MagnitudeImportance(self.policy.graph).scores(),
                "bn": BatchNormScaleImportance(self.policy.graph).scores()}

    def end_epoch(self, epoch: int, weight_scores: dict[str, list[np.ndarray]]) -> None:
        """Record the scores the policy ranked this epoch (after policy.end_epoch) beside `weight_scores`. On the
        step clock the probes are recorded instead (after_step)."""
        if self.policy.clock is not None:
            return
        scores = {**weight_scores, self.policy.importance_kind: self.policy.last_scores}
        self.epochs.append({"epoch": epoch, **{k: [np.asarray(s).tolist() for s in v] for k, v in scores.items()}})
        if self.probing and self.policy.last_scores is not None:  # the accumulators start again from zero
            totals = self.policy.last_scores
            part = [t - s for t, s in zip(totals, self._snapshot, strict=True)] if self._snapshot else totals
            self._carry = part if self._carry is None else [p + c for p, c in zip(part, self._carry, strict=True)]
            self._snapshot = None

    def state_dict(self) -> dict:
        def as_lists(v: list[np.ndarray] | None) -> list | None:
            return None if v is None else [np.asarray(x).tolist() for x in v]

        return {"epochs": self.epochs, "probes": self.probes, "global_step": self.global_step,
                "snapshot": as_lists(self._snapshot), "carry": as_lists(self._carry)}

    def load_state_dict(self, state: dict) -> None:
        def as_arrays(v: list | None) -> list[np.ndarray] | None:
            return None if v is None else [np.asarray(x, dtype=np.float64) for x in v]

        self.epochs, self.probes = list(state.get("epochs", [])), list(state.get("probes", []))
        self.global_step = state.get("global_step", 0)
        self._snapshot, self._carry = as_arrays(state.get("snapshot")), as_arrays(state.get("carry"))

    def write(self, path: Path) -> None:
        lines = [json.dumps({"kind": "epoch", **row}) for row in self.epochs]
        lines += [json.dumps({"kind": "probe", **row}) for row in self.probes]
        atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_scores(folder: str | Path) -> tuple[list[dict], list[dict]]:
    """(epoch rows, probe rows) of a run's scores.jsonl; each score entry is a list (one per group) of lists."""
    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        raise EpipruneError(f"{folder} has no {SCORES_FILE} (accepted: a dense run made with --record-scores)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "epoch"], [r for r in rows if r.get("kind") == "probe"]


def keep_copy(checkpoint: Path, target: Path) -> None:
    """Keep a copy of this epoch's checkpoint (written atomically: a branch never reads half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: shutil.copyfile(checkpoint, tmp))


def _check_same_trajectory(source: dict, mine: dict, path: Path) -> None:
    for key in TRAJECTORY_SETTINGS:
        theirs, ours = recorded_setting(source, key), recorded_setting(mine, key)
        if theirs != ours:
            raise EpipruneError(f"--branch-from {path} was trained with {key}={theirs!r}, this run has "
                                f"{ours!r} (accepted: the same {key} as the dense run)")


@dataclass
class BranchPoint:
    """Where a branched run takes over from its dense source: the finished epochs' metrics (with this run's EPI),
    the training FLOPs and seconds of those epochs; on the step clock also the unfinished epoch (`partial`, as a
    resumed run continues it) and the FLOPs and seconds the source had spent at the branch point."""

    metrics: list[dict]
    train_flops: float
    seconds: float
    partial: dict | None = None
    shared_flops: float | None = None
    shared_seconds: float | None = None


def step_checkpoint(steps: int) -> str:
    """The kept checkpoint of a run after `steps` optimizer steps (step clock: the state a probe at steps + 1
    starts from)."""
    return f"step{steps}.pt"


def keeps_before_probe(keep: list[int] | None, policy: EarlyPruningPolicy, here: bool) -> bool:
    """Whether a dense step-clock run keeps a checkpoint now (`here`: the caller's place for it): the next step is
    a probe and falls in an epoch of --keep-checkpoints, so that a branch pruning at that probe can start here."""
    clock = policy.clock
    if not (here and keep and clock is not None) or policy.pruned or (clock.step + 1) % clock.every:
        return False
    return -(-(clock.step + 1) // clock.steps_per_epoch) in keep


def _load_run_state(checkpoint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, train_loader: object) -> None:
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    ranks = checkpoint["extra"]["rng"]
    if len(ranks) != distributed.world_size():
        raise EpipruneError(f"the kept checkpoint was written by {len(ranks)} rank(s), this run has "
                            f"{distributed.world_size()} (accepted: branch with the same number of processes)")
    loader_rng, torch_rng = ranks[distributed.rank()]
    train_loader.set_rng_state(loader_rng)
    torch.set_rng_state(torch_rng)


def recorded_probes(source: Path, policy: EarlyPruningPolicy) -> list[RecordedProbe]:
    """The step-clock probes recorded in `source`'s scores.jsonl, in the form policy.replay_probes takes."""
    _, rows = read_scores(source)
    kind = policy.importance_kind
    half = f"{kind}_half" if policy.importance.needs_gradients else None
    if not rows or any(kind not in row or (half and half not in row) for row in rows):
        raise EpipruneError(f"{source / SCORES_FILE} records no step-clock probes with {kind!r} scores (accepted: a "
                            "dense run made on the step clock with --record-scores, with this run's importance or "
                            "a weight-based one)")
    def as_arrays(values: list) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.float64) for x in values]

    return [RecordedProbe(row["step"], as_arrays(row[kind]), as_arrays(row[half]) if half else None)
            for row in rows]


def _load_kept(path: Path, config: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, train_loader: object) -> dict:
    """Load a kept checkpoint of the source run (checked to be of the same trajectory) into the run's objects;
    its `extra` (metrics, training FLOPs and seconds so far, the unfinished epoch)."""
    checkpoint = load_checkpoint(path)
    _check_same_trajectory(checkpoint["extra"]["config"], config, path)
    _load_run_state(checkpoint, model, optimizer, scheduler, train_loader)
    return checkpoint["extra"]


def branch_at_probe(source: Path, config: dict, policy: EarlyPruningPolicy, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    train_loader: object, log: object = print) -> BranchPoint:
    """The step clock's branch: replay `source`'s recorded probes through `policy` until it fires at a probe step
    s, load the kept checkpoint of the source after s - 1 steps (checkpoints/step<s-1>.pt: weights, optimizer,
    schedule, random state, and the unfinished epoch's sums and data position); the run then trains step s again
    and the policy prunes there (replay_probes), inside that epoch, as the run from scratch did."""
    probes = recorded_probes(source, policy)
    state: dict = {}

    def load(step: int) -> None:
        path = source / KEPT_CHECKPOINTS / step_checkpoint(step - 1)
        if not path.is_file():
            epoch = -(-step // policy.clock.steps_per_epoch)
            raise EpipruneError(f"--branch-from {source} kept no checkpoint before step {step}, where this run "
                                f"prunes (accepted: a dense run made with --keep-checkpoints including epoch {epoch})")
        state.update(_load_kept(path, config, model, optimizer, scheduler, train_loader))

    prune_step = policy.replay_probes(probes, load)
    if prune_step is None:
        raise EpipruneError(f"this run's policy does not prune within the {len(probes)} probes recorded in {source} "
                            "(accepted: --max-dense-epochs within them)")
    partial = state["partial"][distributed.rank()] if state.get("partial") else None
    metrics = [dict(row) for row in state["metrics"]]
    for row in metrics:
        row.pop("test_top1", None)  # the source's own last epoch was evaluated on the test split: this one is not
        probes_here = [r for r in policy.history if r.epoch == row["epoch"]]
        row.update(probe_fields(probes_here, policy.dense_widths, True, None))
    flops, seconds = state["train_flops_total"], state["seconds"]
    if partial is not None:
        flops, seconds = flops + TRAIN_FLOPS_PER_FORWARD * partial["flop_samples"], seconds + partial["seconds"]
    log(f"branched from {source} after step {prune_step - 1}; this run prunes at step {prune_step} "
        f"({policy.history[-1].decision})")
    return BranchPoint(metrics, state["train_flops_total"], state["seconds"], partial, flops, seconds)


def branch(source: str | Path, config: dict, policy: EarlyPruningPolicy, model: torch.nn.Module,
           optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
           train_loader: object, log: object = print) -> BranchPoint:
    """Replay `source`'s recorded scores through `policy` until it prunes, load the kept checkpoint of that epoch
    into model, optimizer, scheduler, loader and torch RNG, and prune (on the step clock: branch_at_probe).
    Returns the metrics of the epochs so far with this policy's EPI and widths, training FLOPs and seconds so far."""
    source = Path(source)
    if policy.clock is not None:
        return branch_at_probe(source, config, policy, model, optimizer, scheduler, train_loader, log)
    epochs, _ = read_scores(source)
    kind = policy.importance_kind
    if not epochs or any(kind not in row for row in epochs):
        recorded = [k for k in (epochs[0] if epochs else {}) if k not in ("kind", "epoch")]
        raise EpipruneError(f"{source / SCORES_FILE} records no {kind!r} scores (accepted: an importance it "
                            f"records: {', '.join(recorded) or 'none'})")
    state: dict = {}

    def load(epoch: int) -> torch.optim.Optimizer:
        path = source / KEPT_CHECKPOINTS / f"epoch{epoch}.pt"
        if not path.is_file():
            raise EpipruneError(f"--branch-from {source} kept no checkpoint of epoch {epoch}, where this run prunes "
                                f"(accepted: a dense run made with --keep-checkpoints including {epoch})")
        state.update(_load_kept(path, config, model, optimizer, scheduler, train_loader))
        return optimizer

    prune_epoch = policy.replay([[np.asarray(s, dtype=np.float64) for s in row[kind]] for row in epochs], load)
    if prune_epoch is None:
        raise EpipruneError(f"this run's policy does not prune within the {len(epochs)} dense epochs recorded in "
                            f"{source} (accepted: --prune-at or --max-dense-epochs within them)")
    metrics = [dict(row) for row in state["metrics"][:prune_epoch]]
    for row in metrics:
        row.pop("test_top1", None)  # the source's own last epoch was evaluated on the test split: this one is not
    for row, record in zip(metrics, policy.history, strict=True):
        row.update(epi=record.epi, epi_layer=record.epi_layer, epi_group=record.epi_group, widths=record.widths,
                   epi_compared=record.compared, threshold=record.compared_with)
    flops, params = policy.count()
    metrics[-1].update(pruned=True, pruned_this_epoch=True, flops=flops, params=params)
    log(f"branched from {source} at epoch {prune_epoch} ({policy.trigger})")
    return BranchPoint(metrics, state["train_flops_total"], state["seconds"])
