"""The pieces of the reference loop that know no run state: data splits, the optimizer and its per-step learning
rate, one evaluation, the BN sparsity term, pruning at initialisation.

Cost accounting: one training step costs about 3x the forward FLOPs per sample (forward + backward w.r.t.
activations and weights), so an epoch costs 3 x forward FLOPs x samples seen. Validation is not counted."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from epiprune import distributed
from epiprune.errors import EpipruneError
from epiprune.models import is_transformer
from epiprune.numerics import autocast
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.run.config import TrainConfig
from epiprune.run.data import Dataset, TensorLoader
from epiprune.run.network import to_input
from epiprune.run.tasks import TASKS, ImageTask, logits_of
from epiprune.run.text import TextDataset

TRAIN_FLOPS_PER_FORWARD = 3


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_data(dataset: Dataset | TextDataset,
               cfg: TrainConfig) -> tuple[Dataset | TextDataset, tuple[np.ndarray, ...] | None]:
    """The run's train and validation splits, and the test split when --holdout makes one (None otherwise): (images,
    labels), or text's (windows,). Subsets are drawn with --data-seed (default: --seed), so that seeds can share one
    data subset. With --holdout, the validation split is that many training images (text: windows, run/text.py) and
    --val-subset sizes the test split."""
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    if not cfg.holdout:
        return dataset.subset(cfg.train_subset, cfg.val_subset, seed=data_seed), None
    dataset, test_split = dataset.hold_out(cfg.holdout, seed=data_seed)
    return dataset.subset(cfg.train_subset, None, seed=data_seed), _subset_split(test_split, cfg.val_subset, data_seed)


def _subset_split(split: tuple[np.ndarray, ...], n: int | None, seed: int) -> tuple[np.ndarray, ...]:
    """At most n samples of a split (arrays of one length: images and labels, or windows), drawn as the datasets'
    subset() draws a validation split (kept in order; None keeps all)."""
    if n is None or n >= len(split[0]):
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split[0]))[:n])
    return tuple(a[idx] for a in split)


@torch.no_grad()
def add_bn_l1_gradient(model: nn.Module, strength: float) -> None:
    """Network slimming's sparsity term: add strength * sign(gamma) to every BN scale's gradient (the gradient of
    strength * sum |gamma|), as Early-Bird does while it searches."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None \
                and module.weight.grad is not None:
            module.weight.grad.add_(torch.sign(module.weight), alpha=strength)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (default) or AdamW (what ConvNeXt-style networks, LayerNorm and no BN, need: they
    do not learn under SGD at any lr tried, see docs/RESULTS.md); weight decay on conv/linear weights only (not on
    norm scales, layer scales or biases)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def describe_optimization(cfg: TrainConfig) -> str:
    """One line of the optimizer settings a run uses (a transformer's defaults among them: run/defaults.py)."""
    clipping = f"gradient norm clipped at {cfg.clip_grad_norm:g}" if cfg.clip_grad_norm else "no clipping"
    return (f"optimizer {cfg.optimizer}, lr {cfg.lr:g} cosine per step after {cfg.warmup_epochs:g} warm-up epochs, "
            f"weight decay {cfg.weight_decay:g}, {clipping}"
            + (" (a transformer's defaults where not given)" if is_transformer(cfg.model) else ""))


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier per step: cosine from 1 to 0 over the main schedule, times a linear ramp from
    1/warm-up-steps to 1 over the first `warmup_epochs` (deep ResNets blow up at lr 0.1 from initialisation);
    for train-prune-fine-tune, a second cosine from 0.1 to 0 over the fine-tuning epochs."""
    main_steps = cfg.epochs * steps_per_epoch
    tune_steps = max(1, cfg.finetune_epochs * steps_per_epoch)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < main_steps:
            ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
            return ramp * 0.5 * (1 + math.cos(math.pi * step / main_steps))
        return 0.05 * (1 + math.cos(math.pi * min(step - main_steps, tune_steps) / tune_steps))

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, loader: TensorLoader, device: torch.device, channels_last: bool = False,
             amp: str = "none", task: ImageTask | None = None) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy in [0, 1]) over the loader, summed over data-parallel ranks; per image,
    or per byte for the text task (run/tasks.py)."""
    task = TASKS.get("image") if task is None else task
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = to_input(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = logits_of(model(x)).float()
        loss_sum += task.loss(logits, y, reduction="sum").item()
        correct += int(task.correct(logits, y))
        count += task.units(y)
    loss_sum, correct, count = distributed.all_reduce_sum([loss_sum, correct, count], device)
    return loss_sum / max(count, 1), correct / max(count, 1)


def prune_at_initialisation(model: nn.Module, policy: EarlyPruningPolicy, loader: TensorLoader,
                            batches: int, task: ImageTask | None = None) -> float:
    """Prune before the first step. Taylor importance is accumulated over `batches` mini-batches of gradients
    at initialisation (SNIP-style, no weight update); magnitude and random need no data.
    Returns the training FLOPs spent on those batches."""
    flops = 0.0
    if policy.importance.needs_gradients:
        model.train()
        dense_flops = policy.dense_flops
        device = next(model.parameters()).device
        for i, (x, y) in enumerate(loader):
            if i >= batches:
                break
            y = y.to(device)
            logits = logits_of(model(x.to(device)))  # a Hugging Face output: its .logits
            (cross_entropy(logits, y) if task is None else task.loss(logits, y)).backward()
            policy.importance.step()  # not policy.step(): on the step clock these batches are no training steps
            model.zero_grad(set_to_none=True)
            flops += TRAIN_FLOPS_PER_FORWARD * dense_flops * len(y) * distributed.world_size()
    policy.prune_now(trigger="fixed")
    return flops


def prepare_output(out: str) -> Path:
    """Create the output folder and check that it is writable, before any training time is spent."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise EpipruneError(f"output folder {out} is not writable ({e.strerror})") from None
    return path
