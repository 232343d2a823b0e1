"""The reference training loop behind `epiprune train`: dense epochs, the policy's decision, pruned epochs.

Cost accounting: one training step costs about 3x the forward FLOPs per sample (forward + backward w.r.t.
activations and weights), so an epoch costs 3 x forward FLOPs x samples seen. Validation is not counted.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from epiprune import distributed
from epiprune.costs.budget import Budget
from epiprune.errors import DistributedError, EpipruneError
from epiprune.files import CHECKPOINT_FILE, atomic_write_text
from epiprune.io.preprocessing import from_loader_stats
from epiprune.io.serialization import architecture_spec, save_pruned
from epiprune.models import is_import_path
from epiprune.numerics import autocast, in_memory_format
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.run.checkpoint import load_checkpoint, save_checkpoint
from epiprune.run.config import TrainConfig
from epiprune.run.data import Dataset, TensorLoader, load_dataset
from epiprune.run.folder import RunFolder
from epiprune.run.latency_check import check_latency
from epiprune.run.network import build_network, resolve_device, to_input, trainable
from epiprune.run.plots import plot_epi
from epiprune.run.records import EpochRow, RunSummary
from epiprune.run.steps import (
    TRAIN_FLOPS_PER_FORWARD,
    add_bn_l1_gradient,
    cross_entropy,
    evaluate,
    lr_schedule,
    make_optimizer,
    prepare_output,
    prune_at_initialisation,
    seed_everything,
    split_data,
)
from epiprune.run.trajectory import KEPT_CHECKPOINTS, SCORES_FILE, ScoreRecorder, branch, keep_copy

PROGRESS_EVERY = 20  # steps between progress-bar loss updates (each one waits for the device)


class TrainingError(EpipruneError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass
class RunResult:
    summary: RunSummary
    metrics: list[EpochRow]
    model: nn.Module
    out: Path


def _saved_settings(saved: dict, out: str, log: Callable[[str], None]) -> dict:
    """The settings a checkpoint recorded, as this version's TrainConfig fields: a setting this version does not
    know is refused in one line (another version made the run); one the run did not record takes today's default,
    said in one line."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise EpipruneError(f"the run in {out} records settings this epiprune does not know: {', '.join(unknown)} "
                            "(accepted: resume it with the epiprune version that made it)")
    missing = [f for f in fields(TrainConfig) if f.name not in saved and f.name not in ("out", "progress")]
    if missing:
        defaults = ", ".join(f"{f.name}={getattr(TrainConfig(), f.name)!r}" for f in missing)
        log(f"note: the run in {out} records no {', '.join(f.name for f in missing)}: resumed with today's defaults "
            f"({defaults})")
    return saved


def train(cfg: TrainConfig, dataset: Dataset | None = None, log: Callable[[str], None] = print,
          resume: bool = False, force: bool = False, folder: RunFolder | None = None) -> RunResult:
    """Run the schedule described by cfg; write metrics.jsonl, summary.json, the model and epi.png into cfg.out,
    and a checkpoint after every epoch. resume=True continues from cfg.out's checkpoint (config from it).
    A cfg.out that already holds a run is refused unless resume or force (then the old run is replaced once the
    new one has its first checkpoint; see runfolder.RunFolder, which `folder` may pass in to be inspected).
    Under torchrun: DistributedDataParallel, data sharded per rank, only rank 0 writes files."""
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(Path(cfg.out) / CHECKPOINT_FILE)
        saved_model = checkpoint["extra"]["config"]["model"]
        if cfg.model != saved_model and (is_import_path(saved_model) or is_import_path(cfg.model)):
            # a saved file never makes epiprune import a module: the caller names the run's factory again
            raise EpipruneError(f"the run in {cfg.out} trains the network of {saved_model!r}, which epiprune does "
                                "not import from a saved file; name it again (accepted: --resume "
                                f"{cfg.out} --model {saved_model})" if is_import_path(saved_model) else
                                f"the run in {cfg.out} trains {saved_model!r}, not {cfg.model!r} (accepted: "
                                f"--resume {cfg.out} without --model)")
        cfg = TrainConfig(**{**_saved_settings(checkpoint["extra"]["config"], cfg.out, log), "out": cfg.out,
                             "progress": cfg.progress})
    # the backend follows the device actually trained on: nccl for GPU tensors, gloo for `--device cpu` on a GPU box
    device = resolve_device(cfg.device)
    distributed.init_from_environment(cfg.dist_timeout, backend="nccl" if device.type == "cuda" else "gloo")
    cfg.validate()  # before the output folder is touched
    if folder is None:
        folder = RunFolder(cfg.out, resume=resume, force=force)
    folder.active = distributed.is_main()
    try:
        with folder:
            return _train(cfg, dataset, log if distributed.is_main() else (lambda _: None), checkpoint, device,
                          folder.commit)
    except RuntimeError as e:
        # only a failed collective is reported as one: an out-of-memory error or a shape bug keeps its message
        if not distributed.is_distributed() or not distributed.is_collective_failure(e):
            raise
        raise DistributedError(f"rank {distributed.rank()}: a collective failed (another rank died, or it timed "
                               f"out after {cfg.dist_timeout:g}s): {str(e).splitlines()[0][:200]}") from None


LATENCY_TABLE_FILE = "latency_table.json"


def _make_policy(cfg: TrainConfig, model: nn.Module, example: torch.Tensor, budget: Budget, out: Path,
                 resuming: bool, log: Callable[[str], None], ignored: list[nn.Module]) -> EarlyPruningPolicy:
    """The run's policy. For a latency budget, rank 0 measures (or reuses) the table first and the other ranks
    then read the same file; the run folder keeps a copy, which a resumed run uses."""
    table = cfg.latency_table
    if budget.kind == "latency" and resuming and table is None and (out / LATENCY_TABLE_FILE).exists():
        table = str(out / LATENCY_TABLE_FILE)

    def make() -> EarlyPruningPolicy:
        return EarlyPruningPolicy.from_config(model, example, replace(cfg.policy_config(), latency_table=table),
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


@dataclass
class _Run:
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

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


def _setup(cfg: TrainConfig, dataset: Dataset | None, log: Callable[[str], None], checkpoint: dict | None,
           device: torch.device) -> _Run:
    """Data, loaders, the network and its policy (a checkpoint's pruned shapes and weights re-applied), the
    optimizer and the LR schedule (prune at initialisation first, when the run does)."""
    cfg.validate()
    budget = Budget.parse(cfg.budget)
    main = distributed.is_main()
    out = prepare_output(cfg.out) if main else Path(cfg.out)
    seed_everything(cfg.seed)
    if dataset is None:
        dataset = load_dataset(cfg.data, cfg.data_dir, image_size=cfg.image_size)
    dataset, test_split = split_data(dataset, cfg)
    if dataset.num_classes < 2 and main:
        sys.stderr.write(f"warning: {dataset.name} has {dataset.num_classes} class: every prediction is right, so "
                         "its accuracy means nothing (accepted, but a classifier needs 2 or more classes)\n")
    rank, world = distributed.rank(), distributed.world_size()
    train_loader = TensorLoader(dataset.train_images, dataset.train_labels, cfg.batch_size, train=True,
                                seed=cfg.seed, rank=rank, world=world)
    val_loader = TensorLoader(dataset.val_images, dataset.val_labels, 512, train=False, rank=rank, world=world)
    val_loader.normalise_like(train_loader)
    test_loader = None
    if test_split is not None:  # evaluated once, at the end: nothing is chosen on it
        test_loader = TensorLoader(*test_split, 512, train=False, rank=rank, world=world)
        test_loader.normalise_like(train_loader)
    h, w = dataset.image_size
    model, ignored = build_network(cfg, dataset.in_channels, dataset.num_classes, (h, w))
    model = model.to(device)
    example = torch.zeros(1, dataset.in_channels, h, w, device=device)
    model = in_memory_format(model, cfg.channels_last)
    policy = _make_policy(cfg, model, example, budget, out, checkpoint is not None, log, ignored)
    if checkpoint is not None:
        policy.load_state_dict(checkpoint["policy"])  # re-applies the surgery if the run had pruned
        model.load_state_dict(checkpoint["model"])
    run = _Run(cfg, device, log, main, out, budget, dataset, train_loader, val_loader, test_loader, model, policy)
    if checkpoint is None and cfg.prune_at == 0:
        run.train_flops_total = prune_at_initialisation(model, policy, train_loader, cfg.init_batches)
    run.optimizer = make_optimizer(model, cfg)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_schedule(cfg, len(train_loader)))
    return run


def _restore(run: _Run, checkpoint: dict | None) -> None:
    """Where the epochs start: a checkpoint's optimizer, schedule, random state and metrics (--resume), the dense
    run's epochs replayed (--branch-from), or nothing (a new run). Then the module the loop trains."""
    cfg, main, world = run.cfg, run.main, distributed.world_size()
    if checkpoint is not None:
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.scheduler.load_state_dict(checkpoint["scheduler"])
        extra = checkpoint["extra"]
        if len(extra["rng"]) != world:
            raise EpipruneError(f"checkpoint was written by {len(extra['rng'])} rank(s), this run has {world} "
                                f"(accepted: resume with the same number of processes)")
        loader_rng, torch_rng = extra["rng"][distributed.rank()]
        run.train_loader.set_rng_state(loader_rng)
        torch.set_rng_state(torch_rng)
        run.metrics, run.train_flops_total, run.train_seconds = extra["metrics"], extra["train_flops_total"], \
            extra["seconds"]
        run.first_epoch = len(run.metrics) + 1
        if main:
            atomic_write_text(run.metrics_path, "".join(json.dumps(m) + "\n" for m in run.metrics))
        run.log(f"resumed {run.out} after epoch {len(run.metrics)}" + (" (pruned)" if run.policy.pruned else ""))
    else:
        if main:
            run.metrics_path.unlink(missing_ok=True)
        d, policy = run.dataset, run.policy
        h, w = d.image_size
        run.log(f"epiprune: {cfg.model} on {d.name} ({len(d.train_labels)} train / {len(d.val_labels)} val, "
                f"{d.in_channels}x{h}x{w}), budget {run.budget}, importance {cfg.importance}, {cfg.total_epochs} "
                f"epochs, dense {policy.dense_flops / 1e6:.2f} MFLOPs {policy.dense_params / 1e6:.3f} M params, "
                f"{run.device.type}" + (f", {world} ranks" if world > 1 else ""))
    run.recorder = ScoreRecorder(run.policy, cfg.probe_every) if cfg.record_scores else None
    if checkpoint is not None and run.recorder is not None:
        run.recorder.load_state_dict(checkpoint["extra"].get("scores", {}))
    if checkpoint is None and cfg.branch_from is not None:
        run.metrics, run.train_flops_total, run.train_seconds = branch(
            cfg.branch_from, asdict(cfg), run.policy, run.model, run.optimizer, run.scheduler, run.train_loader,
            run.log)
        run.first_epoch = len(run.metrics) + 1
        if main:
            atomic_write_text(run.metrics_path, "".join(json.dumps(m) + "\n" for m in run.metrics))
    run.flops, run.params = run.policy.count()
    run.net = trainable(run.model, run.device, cfg.compile)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=cfg.amp == "fp16")  # fp16 gradients need scaling
    if checkpoint is not None and checkpoint["extra"].get("scaler"):
        run.scaler.load_state_dict(checkpoint["extra"]["scaler"])


def _train_steps(run: _Run, epoch: int) -> tuple[float, int, int]:
    """The epoch's optimizer steps (the policy sees every one): (summed loss, correct, samples) over all ranks."""
    cfg, device, policy, optimizer, scaler = run.cfg, run.device, run.policy, run.optimizer, run.scaler
    run.net.train()
    # running sums stay on the device: no host synchronisation per step, so on a GPU the next step's
    # kernels are queued while this one runs; they are read once at the end of the epoch
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    correct_total = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    show = cfg.progress and run.main
    bar = tqdm(run.train_loader, desc=f"epoch {epoch}/{cfg.total_epochs}", leave=False, unit="batch",
               disable=not show, dynamic_ncols=True)
    for step, (x, y) in enumerate(bar):
        x, y = to_input(x, device, cfg.channels_last), y.to(device, non_blocking=True)
        with autocast(device, cfg.amp):
            logits = run.net(x)
            loss = cross_entropy(logits, y)
        scaler.scale(loss).backward()
        policy.step(scaler.get_scale() if scaler.is_enabled() else 1.0)
        if cfg.bn_l1 and not policy.pruned:
            add_bn_l1_gradient(run.model, cfg.bn_l1 * (scaler.get_scale() if scaler.is_enabled() else 1.0))
        if run.recorder is not None:
            run.recorder.after_step(epoch)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        loss_total += loss.detach() * len(y)
        correct_total += (logits.argmax(1) == y).sum()
        seen += len(y)
        if show and step % PROGRESS_EVERY == 0:
            bar.set_postfix(loss=f"{loss_total.item() / seen:.3f}")
    loss_sum, correct, seen = distributed.all_reduce_sum([loss_total.item(), correct_total.item(), seen], device)
    # checked per epoch, before anything of this epoch is saved: the checkpoint on disk is the last good one
    if not math.isfinite(loss_sum):
        raise TrainingError(f"loss became {loss_sum / seen} in epoch {epoch}; stopped, the last good checkpoint "
                            f"is in {run.out} (accepted: a smaller --lr)")
    return loss_sum, correct, seen


def _train_epoch(run: _Run, epoch: int, on_checkpoint: Callable[[], None]) -> EpochRow:
    """One epoch: the steps, validation, the policy's decision (it may prune), the checkpoint, the metrics row."""
    cfg, device, policy, optimizer = run.cfg, run.device, run.policy, run.optimizer
    t0 = time.perf_counter()
    loss_sum, correct, seen = _train_steps(run, epoch)
    run.train_flops_total += TRAIN_FLOPS_PER_FORWARD * run.flops * seen
    _, val_top1 = evaluate(run.net, run.val_loader, device, cfg.channels_last, cfg.amp)
    recorder = run.recorder
    weight_scores = recorder.weight_scores() if recorder is not None and not policy.pruned else None
    pruned_now = policy.end_epoch(optimizer)
    if weight_scores is not None:
        recorder.end_epoch(epoch, weight_scores)
    if pruned_now:
        run.flops, run.params = policy.count()
        run.net = trainable(run.model, device, cfg.compile)  # new tensors: new DDP buckets, a new compiled graph
    record = policy.history[-1] if policy.history and policy.history[-1].epoch == epoch else None
    epoch_seconds = time.perf_counter() - t0
    run.train_seconds += epoch_seconds
    row = EpochRow(epoch=epoch, train_loss=loss_sum / seen, train_top1=correct / seen, val_top1=val_top1,
                   epi=None if record is None else record.epi,
                   epi_layer=None if record is None else record.epi_layer,
                   epi_group=None if record is None else record.epi_group,
                   widths=record.widths if record is not None else policy.widths(),
                   pruned=policy.pruned, pruned_this_epoch=pruned_now,
                   flops=run.flops, params=run.params, lr=optimizer.param_groups[0]["lr"],
                   epoch_seconds=epoch_seconds, train_flops_cumulative=run.train_flops_total)
    if run.test_loader is not None and epoch == cfg.total_epochs:
        row["test_top1"] = evaluate(run.net, run.test_loader, device, cfg.channels_last, cfg.amp)[1]
    run.metrics.append(row)
    _save_epoch(run, epoch, row, on_checkpoint)
    epi_text = "  -  " if row["epi"] is None else f"{row['epi']:.3f}"
    mark = f"  << pruned ({policy.trigger})" if pruned_now else ""
    run.log(f"epoch {epoch:3d}/{cfg.total_epochs}  loss {row['train_loss']:.4f}  val top-1 {100 * val_top1:5.2f}%  "
            f"EPI {epi_text}  FLOPs {run.flops / 1e6:7.2f}M  {epoch_seconds:5.1f}s{mark}")
    return row


def _save_epoch(run: _Run, epoch: int, row: EpochRow, on_checkpoint: Callable[[], None]) -> None:
    """Rank 0 writes the epoch's checkpoint (the data order and random state of every rank in it), the kept copy,
    the recorded scores, then the metrics row; every rank takes part in gathering the random states."""
    cfg, recorder = run.cfg, run.recorder
    rng = distributed.gather_to_all((run.train_loader.rng_state(), torch.get_rng_state()))  # per rank
    if not run.main:
        return
    out = run.out
    # checkpoint first: a crash between the two writes leaves a checkpoint that resume trusts
    save_checkpoint(out / CHECKPOINT_FILE, run.model, run.optimizer, run.scheduler, run.policy, config=asdict(cfg),
                    metrics=run.metrics, train_flops_total=run.train_flops_total, seconds=run.train_seconds,
                    rng=rng, scaler=run.scaler.state_dict(), scores=recorder.state_dict() if recorder else {})
    if epoch in (cfg.keep_checkpoints or []):
        keep_copy(out / CHECKPOINT_FILE, out / KEPT_CHECKPOINTS / f"epoch{epoch}.pt")
    if recorder is not None:
        recorder.write(out / SCORES_FILE)
    on_checkpoint()
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _finish(run: _Run) -> RunResult:
    """The summary (training cost against dense training of the same data budget), the latency check, the saved
    model, summary.json and epi.png."""
    cfg, policy, metrics, dataset, flops, params = run.cfg, run.policy, run.metrics, run.dataset, run.flops, run.params
    train_loader, h, w = run.train_loader, *dataset.image_size
    # the reference: the same data budget (epochs of the main schedule) spent on the dense model
    samples_per_epoch = len(train_loader) * cfg.batch_size if train_loader.drop_last else len(train_loader.labels)
    dense_train_flops = TRAIN_FLOPS_PER_FORWARD * policy.dense_flops * samples_per_epoch * cfg.epochs
    summary = RunSummary(
        model=cfg.model, data=dataset.name, budget=str(run.budget), importance=cfg.importance,
        indicator=cfg.indicator, epochs=cfg.total_epochs, finetune_epochs=cfg.finetune_epochs,
        seed=cfg.seed, epi_window=cfg.epi_window, world_size=distributed.world_size(), device=run.device.type,
        epi_threshold=policy.rule.threshold, prune_epoch=policy.prune_epoch, trigger=policy.trigger,
        final_val_top1=metrics[-1]["val_top1"], best_val_top1=max(m["val_top1"] for m in metrics),
        dense_flops=policy.dense_flops, final_flops=flops, flops_ratio=flops / policy.dense_flops,
        dense_params=policy.dense_params, final_params=params, params_ratio=params / policy.dense_params,
        dense_widths=policy.dense_widths, final_widths=policy.widths(),
        train_flops_total=run.train_flops_total, train_flops_dense_equivalent=dense_train_flops,
        train_flops_ratio=run.train_flops_total / dense_train_flops, train_seconds=run.train_seconds,
        epi_layer_weights=policy.layer_weights, config=asdict(cfg),
    )
    if run.test_loader is not None:
        summary["final_test_top1"] = metrics[-1]["test_top1"]
    if cfg.branch_from is not None and policy.prune_epoch:  # what this run trained itself, after the branch point
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
        prep = from_loader_stats(train_loader.mean, train_loader.std, (h, w), dataset.labels)
        spec = architecture_spec(cfg.model, dataset.in_channels, dataset.num_classes, (h, w), policy.kept,
                                 preprocessing=prep.to_dict(), model_kwargs=cfg.model_kwargs,
                                 ignore_layers=cfg.ignore_layers)
        save_pruned(run.model, spec, run.out)
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=1))
        plot_epi(metrics, run.out / "epi.png", policy.rule.threshold, policy.prune_epoch, policy.trigger)
    distributed.barrier()
    return RunResult(summary, metrics, run.model, run.out)


def _train(cfg: TrainConfig, dataset: Dataset | None, log: Callable[[str], None], checkpoint: dict | None,
           device: torch.device, on_checkpoint: Callable[[], None] = lambda: None) -> RunResult:
    run = _setup(cfg, dataset, log, checkpoint, device)
    _restore(run, checkpoint)
    for epoch in range(run.first_epoch, cfg.total_epochs + 1):
        _train_epoch(run, epoch, on_checkpoint)
    return _finish(run)
