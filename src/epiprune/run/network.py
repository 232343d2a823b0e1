"""The run's network and where it runs: built from the config (registry or user factory), placed on this rank's device,
wrapped for data parallelism and compiled (again after the prune)."""

from __future__ import annotations

import os

import torch
from torch import nn

from epiprune import distributed
from epiprune.errors import EpipruneError
from epiprune.models import make_model
from epiprune.models.user import resolve_layers
from epiprune.numerics import in_memory_format
from epiprune.run.config import TrainConfig


def build_network(cfg: TrainConfig, in_channels: int, num_classes: int, input_size: tuple[int, int] | None,
                  task: str | None = None) -> tuple[nn.Module, list[nn.Module]]:
    """(cfg's dense network for images (in_channels, H, W) or byte ids and num_classes, its modules named in
    cfg.ignore_layers). task: the data's, "image" or "text" (run/tasks.py); a user network must take it and map
    (N, in_channels, H, W) to (N, num_classes) logits, or (N, T) byte ids to (N, T, num_classes) (make_model)."""
    model = make_model(cfg.model, in_channels, num_classes, cfg.model_kwargs, input_size, task)
    return model, resolve_layers(model, cfg.ignore_layers, cfg.model)


def resolve_device(name: str) -> torch.device:
    """'auto': this rank's GPU when CUDA is available, else the CPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise EpipruneError(f"unknown device {name!r} (accepted: auto, cpu, cuda)")
    if name == "cuda" and not torch.cuda.is_available():
        raise EpipruneError("device 'cuda' requested but CUDA is not available (accepted: auto, cpu)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= visible:
        raise EpipruneError(f"local rank {local_rank} needs GPU {local_rank} but {visible} are visible (accepted: "
                            f"at most {visible} processes per node, or --device cpu)")
    return torch.device("cuda", local_rank)


def wrap_data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the model's current parameters when running under torchrun (called again
    after pruning: the old wrapper's gradient buckets refer to tensors that no longer exist)."""
    if not distributed.is_distributed():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def trainable(model: nn.Module, device: torch.device, compile_model: bool) -> nn.Module:
    """The module the loop calls: DDP under torchrun, then torch.compile if asked (rebuilt after pruning)."""
    net = wrap_data_parallel(model, device)
    return torch.compile(net) if compile_model else net


def to_input(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on the device, in the run's memory format."""
    return in_memory_format(x.to(device, non_blocking=True), channels_last)
