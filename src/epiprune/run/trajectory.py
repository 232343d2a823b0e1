"""Recorded dense trajectories, and pruned runs branched from them.

A dense run made with `--record-scores` writes scores.jsonl: for every dense epoch, the scores its policy ranked
(its importance) and the weight-based ones (magnitude, bn) read at the epoch's end; with `--probe-every K` also
the Taylor scores of every window of K steps (for studying a finer trigger). With `--keep-checkpoints` it keeps
checkpoints/epoch<k>.pt. A run made with `--branch-from` replays the recorded scores through its own policy (its
budget, EPI settings and importance, if recorded), and at the epoch its policy prunes, it loads that epoch's
checkpoint, prunes and trains on: the same computation as training it from scratch (tests/test_branching.py
checks this bit for bit), without training the shared dense epochs again. `compare` uses this for the oracle's
grid of prune epochs, train-prune-fine-tune and the EPI runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from epiprune.errors import EpipruneError
from epiprune.files import atomic_write, atomic_write_text
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.policy.importance import BatchNormScaleImportance, MagnitudeImportance
from epiprune.run.checkpoint import load_checkpoint
from epiprune.run.options import recorded_setting

SCORES_FILE = "scores.jsonl"
KEPT_CHECKPOINTS = "checkpoints"
# the settings that shape a dense trajectory: a branch must share every one of them with its source
TRAJECTORY_SETTINGS = ("model", "model_kwargs", "data", "data_dir", "image_size", "train_subset", "val_subset",
                       "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "seed", "data_seed",
                       "holdout", "channels_last", "amp", "compile", "bn_l1", "device")


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
        """Call after policy.step(): every probe_every steps, record the Taylor scores of the last window."""
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

    def weight_scores(self) -> dict[str, list[np.ndarray]]:
        """Weight-based scores of the model now (call at the epoch's end, before the policy may prune)."""
        return {"magnitude": MagnitudeImportance(self.policy.graph).scores(),
                "bn": BatchNormScaleImportance(self.policy.graph).scores()}

    def end_epoch(self, epoch: int, weight_scores: dict[str, list[np.ndarray]]) -> None:
        """Record the scores the policy ranked this epoch (after policy.end_epoch) beside `weight_scores`."""
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


def branch(source: str | Path, config: dict, policy: EarlyPruningPolicy, model: torch.nn.Module,
           optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
           train_loader: object, log: object = print) -> tuple[list[dict], float, float]:
    """Replay `source`'s recorded scores through `policy` until it prunes, load the kept checkpoint of that epoch
    into model, optimizer, scheduler, loader and torch RNG, and prune. Returns (metrics of the epochs so far with
    this policy's EPI and widths, training FLOPs so far, seconds so far)."""
    source = Path(source)
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
        checkpoint = load_checkpoint(path)
        _check_same_trajectory(checkpoint["extra"]["config"], config, path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        loader_rng, torch_rng = checkpoint["extra"]["rng"][0]
        train_loader.set_rng_state(loader_rng)
        torch.set_rng_state(torch_rng)
        state.update(checkpoint["extra"])
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
    return metrics, state["train_flops_total"], state["seconds"]
