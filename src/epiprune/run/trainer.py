"""The reference training loop behind `epiprune train`: dense epochs, the policy's decision, pruned epochs.

Cost accounting: one training step costs about 3x the forward FLOPs per sample (forward + backward w.r.t.
activations and weights), so an epoch costs 3 x forward FLOPs x samples seen. Validation is not counted.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from epiprune import distributed
from epiprune.costs.budget import Budget
from epiprune.errors import DistributedError, EpipruneError
from epiprune.files import CHECKPOINT_FILE, atomic_write_text
from epiprune.models import check_model_task, is_import_path
from epiprune.numerics import autocast, in_memory_format
from epiprune.run.checkpoint import load_checkpoint
from epiprune.run.config import TrainConfig
from epiprune.run.data import Dataset, load_dataset
from epiprune.run.finish import RunResult, finish_run
from epiprune.run.folder import RunFolder
from epiprune.run.network import build_network, resolve_device, to_input, trainable
from epiprune.run.policy_setup import make_run_policy
from epiprune.run.records import EpochRow, probe_fields
from epiprune.run.state import RunState, save_epoch, save_step
from epiprune.run.steps import (
    TRAIN_FLOPS_PER_FORWARD,
    add_bn_l1_gradient,
    cross_entropy,
    describe_optimization,
    evaluate,
    lr_schedule,
    make_optimizer,
    prepare_output,
    prune_at_initialisation,
    seed_everything,
    split_data,
)
from epiprune.run.tasks import logits_of, task_of
from epiprune.run.trajectory import BranchPoint, ScoreRecorder, branch

PROGRESS_EVERY = 20  # steps between progress-bar loss updates (each one waits for the device)


class TrainingError(EpipruneError):
    """Training cannot go on (e.g. the loss became NaN)."""


def _saved_settings(saved: dict, out: str, log: Callable[[str], None]) -> dict:
    """The settings a checkpoint recorded, as this version's TrainConfig fields: a setting this version does not
    know is refused in one line (another version made the run); one the run did not record takes today's default,
    said in one line."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise EpipruneError(f"the run in {out} records settings this epiprune does not know: {', '.join(unknown)} "
                            "(accepted: resume it with the epiprune version that made it)")
    missing = [f.name for f in fields(TrainConfig) if f.name not in saved and f.name not in ("out", "progress")]
    if missing:
        # the default network's values: a network-dependent setting the run did not record (clip_grad_norm) is
        # one it ran without, as every network did before such settings existed (not a transformer's default)
        defaults = {name: getattr(TrainConfig(), name) for name in missing}
        log(f"note: the run in {out} records no {', '.join(missing)}: resumed with today's defaults "
            f"({', '.join(f'{k}={v!r}' for k, v in defaults.items())})")
        saved = {**saved, **defaults}
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


def _setup(cfg: TrainConfig, dataset: Dataset | None, log: Callable[[str], None], checkpoint: dict | None,
           device: torch.device) -> RunState:
    """Data, loaders, the network and its policy (a checkpoint's pruned shapes and weights re-applied), the
    optimizer and the LR schedule (prune at initialisation first, when the run does)."""
    cfg.validate()
    budget = Budget.parse(cfg.budget)
    main = distributed.is_main()
    out = prepare_output(cfg.out) if main else Path(cfg.out)
    seed_everything(cfg.seed)
    if dataset is None:
        dataset = load_dataset(cfg.data, cfg.data_dir, image_size=cfg.image_size, seq_len=cfg.seq_len)
    dataset, test_split = split_data(dataset, cfg)
    task = task_of(dataset)
    check_model_task(cfg.model, task.name, dataset.name)
    if dataset.num_classes < 2 and main:
        sys.stderr.write(f"warning: {dataset.name} has {dataset.num_classes} class: every prediction is right, so "
                         "its accuracy means nothing (accepted, but a classifier needs 2 or more classes)\n")
    rank, world = distributed.rank(), distributed.world_size()
    train_loader, val_loader, test_loader = task.loaders(dataset, cfg.batch_size, cfg.seed, rank, world, test_split)
    model, ignored = build_network(cfg, dataset.in_channels, dataset.num_classes, task.input_size(dataset), task.name)
    model = model.to(device)
    example = task.example(dataset, device)
    model = in_memory_format(model, cfg.channels_last)
    policy = make_run_policy(cfg, model, example, budget, out, checkpoint is not None, log, ignored,
                          len(train_loader))
    if checkpoint is not None:
        policy.load_state_dict(checkpoint["policy"])  # re-applies the surgery if the run had pruned
        model.load_state_dict(checkpoint["model"])
    run = RunState(cfg, device, log, main, out, budget, dataset, train_loader, val_loader, test_loader, model, policy)
    if checkpoint is None and cfg.prune_at == 0:
        run.train_flops_total = prune_at_initialisation(model, policy, train_loader, cfg.init_batches,
                                                        None if task.name == "image" else task)
    run.optimizer = make_optimizer(model, cfg)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_schedule(cfg, len(train_loader)))
    return run


def _restore(run: RunState, checkpoint: dict | None) -> None:
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
        run.partial = extra["partial"][distributed.rank()] if extra.get("partial") else None
        if extra.get("branch_point"):  # a step-clock branch: the FLOPs and seconds of the source at the branch step
            shared = extra["branch_point"]
            run.branch_point = BranchPoint([], 0.0, 0.0, None, shared["shared_flops"], shared["shared_seconds"])
        if main:
            atomic_write_text(run.metrics_path, "".join(json.dumps(m) + "\n" for m in run.metrics))
        where = f"step {run.partial['step']} of epoch {run.first_epoch}" if run.partial else \
            f"epoch {len(run.metrics)}"
        run.log(f"resumed {run.out} after {where}" + (" (pruned)" if run.policy.pruned else ""))
    else:
        if main:
            run.metrics_path.unlink(missing_ok=True)
        d, policy = run.dataset, run.policy
        run.log(f"epiprune: {cfg.model} on {d.name} ({task_of(d).describe(d)}), budget {run.budget}, "
                f"importance {cfg.importance}, {cfg.total_epochs} "
                f"epochs, dense {policy.dense_flops / 1e6:.2f} MFLOPs {policy.dense_params / 1e6:.3f} M params, "
                f"{run.device.type}" + (f", {world} ranks" if world > 1 else ""))
        run.log(describe_optimization(cfg))
        clock = policy.clock
        run.log("EPI probes " + ("once per epoch" if clock is None else
                                 f"every {clock.every} steps ({clock.every / clock.steps_per_epoch:.2f} epochs)") +
                ", threshold " + ("auto (the run's noise floor)" if policy.auto_threshold else
                                  f"{policy.rule.threshold:g}"))
        late = policy.epi_cannot_fire_before_fallback()
        if late and main:
            sys.stderr.write(f"warning: {late}\n")
    run.recorder = ScoreRecorder(run.policy, cfg.probe_every) if cfg.record_scores else None
    if checkpoint is not None and run.recorder is not None:
        run.recorder.load_state_dict(checkpoint["extra"].get("scores", {}))
    if checkpoint is None and cfg.branch_from is not None:
        point = branch(cfg.branch_from, asdict(cfg), run.policy, run.model, run.optimizer, run.scheduler,
                       run.train_loader, run.log)
        run.metrics, run.train_flops_total, run.train_seconds = point.metrics, point.train_flops, point.seconds
        run.partial, run.branch_point = point.partial, point
        run.first_epoch = len(run.metrics) + 1
        if main:
            atomic_write_text(run.metrics_path, "".join(json.dumps(m) + "\n" for m in run.metrics))
    _take_model(run)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=cfg.amp == "fp16")  # fp16 gradients need scaling
    if checkpoint is not None and checkpoint["extra"].get("scaler"):
        run.scaler.load_state_dict(checkpoint["extra"]["scaler"])


def _take_model(run: RunState) -> None:
    """The model's size and the module the loop trains, from the model as it is now: at the start and after a
    prune (new tensors: new DDP buckets, a new compiled graph)."""
    run.flops, run.params = run.policy.count()
    run.net = trainable(run.model, run.device, run.cfg.compile)


def _apply_gradients(run: RunState, epoch: int) -> None:
    """The rest of an optimizer step once the policy has read its gradients: Early-Bird's BN L1 term, the score
    recorder, gradient clipping, the (scaled) optimizer step and the per-step LR schedule."""
    cfg, scaler = run.cfg, run.scaler
    if cfg.bn_l1 and not run.policy.pruned:
        add_bn_l1_gradient(run.model, cfg.bn_l1 * (scaler.get_scale() if scaler.is_enabled() else 1.0))
    if run.recorder is not None:
        run.recorder.after_step(epoch)
    if cfg.clip_grad_norm:  # after the policy and the recorder read the gradients; on the true ones under fp16
        scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad_norm)
    scaler.step(run.optimizer)
    scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()


def _train_steps(run: RunState, epoch: int, on_checkpoint: Callable[[], None]) -> tuple[float, int, int, float, bool]:
    """The epoch's optimizer steps (the policy sees every one; on the step clock it may prune at one, and the run
    then checkpoints that step): (summed loss, correct, samples, summed forward FLOPs x samples, pruned in this
    epoch), over all ranks. A run resumed inside this epoch starts after its saved step, with its sums."""
    cfg, device, policy, scaler = run.cfg, run.device, run.policy, run.scaler
    task = task_of(run.dataset)
    run.net.train()
    partial, run.partial = run.partial, None
    # running sums stay on the device: no host synchronisation per step, so on a GPU the next step's
    # kernels are queued while this one runs; they are read once at the end of the epoch
    loss_total = torch.tensor(partial["loss"] if partial else 0.0, dtype=torch.float64, device=device)
    correct_total = torch.tensor(partial["correct"] if partial else 0, dtype=torch.int64, device=device)
    seen = partial["seen"] if partial else 0
    flop_samples = partial["flop_samples"] if partial else 0.0  # forward FLOPs x samples (the model shrinks)
    pruned_here = bool(partial and partial["pruned_here"])
    start = partial["step"] if partial else 0
    if partial:
        run.train_loader.order_generator.set_state(partial["order_rng"])  # the epoch's order is drawn again
    order_rng = run.train_loader.order_generator.get_state()
    t0 = time.perf_counter() - (partial["seconds"] if partial else 0.0)
    show = cfg.progress and run.main
    bar = tqdm(run.train_loader.batches(start), desc=f"epoch {epoch}/{cfg.total_epochs}", leave=False,
               unit="batch", disable=not show, dynamic_ncols=True, initial=start, total=len(run.train_loader))
    for step, (x, y) in enumerate(bar, start):
        x, y = to_input(x, device, cfg.channels_last), y.to(device, non_blocking=True)
        with autocast(device, cfg.amp):
            logits = logits_of(run.net(x))
            loss = cross_entropy(logits, y) if task.name == "image" else task.loss(logits, y)
        scaler.scale(loss).backward()
        flop_samples += run.flops * len(y)
        pruned_now = policy.step(scaler.get_scale() if scaler.is_enabled() else 1.0, run.optimizer)
        if pruned_now:  # the step clock pruned: gradients were cut with the weights, this step updates the kept ones
            _take_model(run)
            pruned_here = True
        _apply_gradients(run, epoch)
        loss_total += loss.detach() * len(y)
        correct_total += task.correct(logits, y)
        seen += len(y)
        # checkpointed at the prune step (a run killed now resumes inside this epoch) and where a branch starts
        save_step(run, on_checkpoint, pruned_now, step + 1 == len(run.train_loader), lambda: {  # called at once
            "epoch": epoch, "step": step + 1, "loss": loss_total.item(), "correct": int(correct_total.item()),  # noqa: B023
            "seen": seen, "flop_samples": flop_samples, "pruned_here": pruned_here, "order_rng": order_rng,  # noqa: B023
            "seconds": time.perf_counter() - t0})
        if pruned_now:
            run.log(f"pruned at step {policy.prune_step} ({policy.prune_step / len(run.train_loader):.2f} epochs, "
                    f"{policy.trigger}); FLOPs {run.flops / 1e6:.2f}M; checkpoint saved")
        if show and step % PROGRESS_EVERY == 0:
            bar.set_postfix(loss=f"{loss_total.item() / seen:.3f}")
    loss_sum, correct, seen, flop_samples = distributed.all_reduce_sum(
        [loss_total.item(), correct_total.item(), seen, flop_samples], device)
    # checked per epoch, before anything of this epoch is saved: the checkpoint on disk is the last good one
    if not math.isfinite(loss_sum):
        raise TrainingError(f"loss became {loss_sum / seen} in epoch {epoch}; stopped, the last good checkpoint "
                            f"is in {run.out} (accepted: a smaller --lr)")
    return loss_sum, int(correct), int(seen), flop_samples, pruned_here


def _train_epoch(run: RunState, epoch: int, on_checkpoint: Callable[[], None]) -> EpochRow:
    """One epoch: the steps, validation, the policy's decision (it may prune), the checkpoint, the metrics row."""
    cfg, device, policy, optimizer = run.cfg, run.device, run.policy, run.optimizer
    t0 = time.perf_counter() - (run.partial["seconds"] if run.partial else 0.0)
    loss_sum, correct, seen, flop_samples, pruned_in_steps = _train_steps(run, epoch, on_checkpoint)
    run.train_flops_total += TRAIN_FLOPS_PER_FORWARD * flop_samples
    task = task_of(run.dataset)
    val_loss, val_top1 = evaluate(run.net, run.val_loader, device, cfg.channels_last, cfg.amp, task)
    recorder = run.recorder
    weight_scores = recorder.weight_scores() if recorder is not None and not policy.pruned else None
    pruned_now = policy.end_epoch(optimizer)
    if weight_scores is not None:
        recorder.end_epoch(epoch, weight_scores)
    if pruned_now:
        _take_model(run)
    pruned_now = pruned_now or pruned_in_steps
    probes = [r for r in policy.history if r.epoch == epoch]
    epoch_seconds = time.perf_counter() - t0
    run.train_seconds += epoch_seconds
    fields = probe_fields(probes, policy.widths(), policy.clock is not None, policy.prune_step if pruned_now else None)
    row = EpochRow(epoch=epoch, train_loss=loss_sum / seen,
                   train_top1=correct / (seen * task.units_per_sample(run.dataset)), val_top1=val_top1,
                   epi=fields.pop("epi"), epi_layer=fields.pop("epi_layer"), epi_group=fields.pop("epi_group"),
                   widths=fields.pop("widths"), pruned=policy.pruned, pruned_this_epoch=pruned_now,
                   flops=run.flops, params=run.params, lr=optimizer.param_groups[0]["lr"],
                   epoch_seconds=epoch_seconds, train_flops_cumulative=run.train_flops_total,
                   epi_compared=fields.pop("epi_compared"), threshold=fields.pop("threshold"), **fields)
    row.update(task.row_metrics(loss_sum / seen, val_loss))  # text: bits per byte and perplexity; image: none
    if run.test_loader is not None and epoch == cfg.total_epochs:
        row.update(task.test_metrics(*evaluate(run.net, run.test_loader, device, cfg.channels_last, cfg.amp, task)))
    run.metrics.append(row)
    save_epoch(run, epoch, row, on_checkpoint)
    compared = row["epi_compared"]
    epi_text = "  -  " if compared is None else f"{compared:.3f}"
    if compared is not None and row["threshold"] is not None:
        epi_text += f" vs {row['threshold']:.3f}"
    mark = f"  << pruned ({policy.trigger}" + (f", step {policy.prune_step}" if policy.prune_step else "") + ")" \
        if pruned_now else ""
    run.log(f"epoch {epoch:3d}/{cfg.total_epochs}  loss {row['train_loss']:.4f}  "
            f"{task.describe_epoch(val_loss, val_top1)}  "
            f"EPI {epi_text}  FLOPs {run.flops / 1e6:7.2f}M  {epoch_seconds:5.1f}s{mark}")
    return row


def _train(cfg: TrainConfig, dataset: Dataset | None, log: Callable[[str], None], checkpoint: dict | None,
           device: torch.device, on_checkpoint: Callable[[], None] = lambda: None) -> RunResult:
    run = _setup(cfg, dataset, log, checkpoint, device)
    _restore(run, checkpoint)
    for epoch in range(run.first_epoch, cfg.total_epochs + 1):
        _train_epoch(run, epoch, on_checkpoint)
    return finish_run(run)
