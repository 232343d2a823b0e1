"""Training numerics shared by the trainer and the latency tables: the autocast dtypes, the autocast context and the
channels-last memory format. A base module: it imports torch only, nothing of epiprune."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass ('bf16', 'fp16'), or nothing ('none')."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def in_memory_format(obj: torch.Tensor | nn.Module, channels_last: bool) -> torch.Tensor | nn.Module:
    """A module, or a 4-D tensor (N, C, H, W), in channels-last memory format when asked (anything else as it is)."""
    if not channels_last or (torch.is_tensor(obj) and obj.ndim != 4):
        return obj
    return obj.to(memory_format=torch.channels_last)
