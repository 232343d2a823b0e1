"""torch.distributed helpers: the few collectives epiprune needs, all no-ops in a single process.

Launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); the backend is nccl when
training on GPUs and gloo on CPUs (`--device cpu` on a GPU machine too). Every collective is bounded by the process
group's timeout, so a rank that dies makes the others fail with an error instead of hanging for ever.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from epiprune.errors import EpipruneError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_environment(timeout_seconds: float, backend: str) -> bool:
    """Join the process group that torchrun describes in the environment; False when not launched that way.
    backend: "nccl" for GPU tensors, "gloo" for CPU tensors (the caller knows which device it trains on)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    global _created_here
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds))
        _created_here = True
    return True


_created_here = False


def shutdown() -> None:
    """Destroy the process group if init_from_environment created it (a caller's own group is left alone).
    A rank that exits with its group alive can be aborted (SIGABRT) by gloo's threads when its peer's connection
    closes first: seen once in CI under load, at the end of a run that had finished its work."""
    global _created_here
    if _created_here and dist.is_initialized():
        dist.destroy_process_group()
    _created_here = False


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average tensors across ranks in place."""
    if not is_distributed():
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world_size())


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum Python numbers across ranks (e.g. loss sums and sample counts)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def agree_with_rank0(value: object, what: str) -> object:
    """Broadcast rank 0's value and check that this rank computed the same; a mismatch is an error."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    if box[0] != value:
        raise EpipruneError(f"rank {rank()} computed a different {what} than rank 0 (ranks must agree)")
    return box[0]


def gather_to_all(value: object) -> list[object]:
    """Every rank's value, in rank order (one-element list in a single process)."""
    if not is_distributed():
        return [value]
    values: list[object] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


# words of the errors that torch.distributed's backends raise when a peer is gone or the group timed out
_COLLECTIVE_WORDS = ("gloo", "nccl", "processgroup", "process group", "connection closed", "connection reset",
                     "connection refused", "broken pipe", "timed out", "timeout", "peer")


def is_collective_failure(error: BaseException) -> bool:
    """Whether an exception raised under torchrun is a failed collective (another rank died, the process group
    timed out), not an error of this rank's own work: a CUDA out-of-memory error or a shape bug keeps its message."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    if "out of memory" in text:
        return False
    return any(word in text for word in _COLLECTIVE_WORDS)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
