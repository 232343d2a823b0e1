"""The end of a run: its summary (training cost against dense training of the same data budget), the latency
check, the saved model with its architecture spec, summary.json and epi.png."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from epiprune import distributed
from epiprune.files import atomic_write_text
from epiprune.io.preprocessing import from_loader_stats
from epiprune.io.serialization import architecture_spec, save_pruned
from epiprune.run.config import TrainConfig
from epiprune.run.data import Dataset, TensorLoader
from epiprune.run.latency_check import check_latency
from epiprune.run.plots import plot_epi
from epiprune.run.records import EpochRow, RunSummary
from epiprune.run.state import RunState
from epiprune.run.steps import TRAIN_FLOPS_PER_FORWARD
from epiprune.run.tasks import task_of


@dataclass
class RunResult:
    summary: RunSummary
    metrics: list[EpochRow]
    model: nn.Module
    out: Path


def finish_run(run: RunState) -> RunResult:
    """The summary (training cost against dense training of the same data budget), the latency check, the saved
    model, summary.json and epi.png."""
    cfg, policy, metrics, dataset, flops, params = run.cfg, run.policy, run.metrics, run.dataset, run.flops, run.params
    train_loader, task = run.train_loader, task_of(dataset)
    # the reference: the same data budget (epochs of the main schedule) spent on the dense model
    samples_per_epoch = len(train_loader) * cfg.batch_size if train_loader.drop_last else len(train_loader.labels)
    dense_train_flops = TRAIN_FLOPS_PER_FORWARD * policy.dense_flops * samples_per_epoch * cfg.epochs
    summary = RunSummary(
        model=cfg.model, data=dataset.name, budget=str(run.budget), importance=cfg.importance,
        indicator=cfg.indicator, epochs=cfg.total_epochs, finetune_epochs=cfg.finetune_epochs,
        seed=cfg.seed, epi_window=cfg.epi_window, world_size=distributed.world_size(), device=run.device.type,
        epi_threshold="auto" if policy.auto_threshold else policy.rule.threshold, prune_epoch=policy.prune_epoch,
        prune_step=policy.prune_step, epi_every=0 if policy.clock is None else policy.clock.every,
        steps_per_epoch=len(train_loader), trigger=policy.trigger,
        final_val_top1=metrics[-1]["val_top1"], best_val_top1=max(m["val_top1"] for m in metrics),
        dense_flops=policy.dense_flops, final_flops=flops, flops_ratio=flops / policy.dense_flops,
        dense_params=policy.dense_params, final_params=params, params_ratio=params / policy.dense_params,
        dense_widths=policy.dense_widths, final_widths=policy.widths(),
        train_flops_total=run.train_flops_total, train_flops_dense_equivalent=dense_train_flops,
        train_flops_ratio=run.train_flops_total / dense_train_flops, train_seconds=run.train_seconds,
        epi_layer_weights=policy.layer_weights, config=asdict(cfg),
    )
    summary.update(task.summary_metrics(metrics))  # text: bits per byte and perplexity; image: none
    if run.test_loader is not None:
        summary.update(task.test_summary(metrics[-1]))
    if cfg.branch_from is not None and policy.prune_epoch:  # what this run trained itself, after the branch point
        point = run.branch_point
        if point is not None and point.shared_flops is not None:  # step clock: a branch point inside an epoch
            summary.update(branched_from=cfg.branch_from, branch_train_flops=run.train_flops_total - point.shared_flops,
                           branch_seconds=run.train_seconds - point.shared_seconds)
        else:
            shared = metrics[policy.prune_epoch - 1]
            summary.update(branched_from=cfg.branch_from,
                           branch_train_flops=run.train_flops_total - shared["train_flops_cumulative"],
                           branch_seconds=sum(m["epoch_seconds"] for m in metrics[policy.prune_epoch:]))
    if run.main and run.budget.kind == "latency":
        summary["latency"] = check_latency(cfg, policy, run.model, dataset, run.device, run.log)
        loop = policy.latency_loop.result if policy.latency_loop is not None else None
        if cfg.latency_closed_loop:
            summary["latency_closed_loop"] = None if loop is None else {
                **loop.record(), "share_of_run": loop.seconds / max(run.train_seconds, 1e-9)}
    if run.main:
        spec = model_spec(cfg, dataset, train_loader, policy.kept)
        save_pruned(run.model, spec, run.out)
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=1))
        plot_epi(metrics, run.out / "epi.png", policy.rule.threshold, policy.prune_epoch, policy.trigger,
                 None if policy.clock is None else policy.clock.steps_per_epoch, policy.prune_step)
    distributed.barrier()
    return RunResult(summary, metrics, run.model, run.out)


def model_spec(cfg: TrainConfig, dataset: Dataset, train_loader: TensorLoader, kept: dict | None) -> dict:
    """The saved model's architecture spec: image input size and preprocessing, or (text) the sequence length."""
    if task_of(dataset).name == "text":
        spec = architecture_spec(cfg.model, dataset.in_channels, dataset.num_classes, (1, dataset.seq_len), kept,
                                 model_kwargs=cfg.model_kwargs, ignore_layers=cfg.ignore_layers)
        return {**spec, "seq_len": dataset.seq_len, "task": "text"}
    h, w = dataset.image_size
    prep = from_loader_stats(train_loader.mean, train_loader.std, (h, w), dataset.labels)
    return architecture_spec(cfg.model, dataset.in_channels, dataset.num_classes, (h, w), kept,
                             preprocessing=prep.to_dict(), model_kwargs=cfg.model_kwargs,
                             ignore_layers=cfg.ignore_layers)
