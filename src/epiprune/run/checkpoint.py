"""Training checkpoints: model + optimizer + scheduler + policy (+ loop state) in one file, written atomically
and read back with torch.load(weights_only=True), so a checkpoint can never run code when loaded.

A checkpoint taken after the prune event holds smaller tensors; `EarlyPruningPolicy.load_state_dict` re-applies
the recorded surgery to a freshly built dense model first, so that the saved weights fit again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from epiprune.errors import EpipruneError
from epiprune.files import atomic_write

FORMAT = "epiprune-checkpoint/1"


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: object | None = None, policy: object | None = None, **extra: object) -> None:
    """Write one checkpoint file atomically (temp file, then rename): the previous one stays intact until the
    new one is complete. `extra` values must be plain data (numbers, strings, lists, dicts, tensors)."""
    state = {"format": FORMAT, "model": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "policy": policy.state_dict() if policy is not None else None, "extra": extra}
    atomic_write(Path(path), lambda p: torch.save(state, p))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint saved by save_checkpoint; a missing, truncated or foreign file is an EpipruneError."""
    path = Path(path)
    if not path.is_file():
        raise EpipruneError(f"no checkpoint at {path} (expected a file written by epiprune)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError, zipfile errors
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]  # a 0-byte file's error has no text
        raise EpipruneError(f"corrupt or unsafe checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("epiprune-checkpoint/"):
        raise EpipruneError(f"{path} is not an epiprune checkpoint (format {FORMAT})")
    if state["format"] != FORMAT:
        raise EpipruneError(f"{path} is an epiprune checkpoint of format {state['format']}, which this version does "
                            f"not read (accepted: format {FORMAT}; resume it with the epiprune that wrote it)")
    return state
