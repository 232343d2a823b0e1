"""The latency closed loop under torchrun (gloo, CPU, 2 ranks): each rank's fake device times the candidates
differently (rank 1 sees a larger overhead the table misses), as real ranks' timings differ; the ranks must prune
the same sub-network, rank 0's, and only rank 0 times and reports. Launched by tests/test_distributed.py; each rank
writes what it pruned, its loop's record, how many steps its device timed and the lines it logged."""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from test_closed_loop import FakeDevice, policy_with_fake_device, train_and_prune


def main(out: Path, overheads: list[float]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    folder = out / f"rank{rank}"
    folder.mkdir()
    device = FakeDevice(overhead=overheads[rank])  # ms the table does not see
    policy = policy_with_fake_device(folder, True, device)  # the same seed, model and table on every rank
    lines: list[str] = []
    policy.latency_loop.log = lines.append
    train_and_prune(policy)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "widths": policy.widths(), "record": policy.latency_loop.result.record(), "steps": device.steps,
        "lines": lines}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), [float(x) for x in sys.argv[2:]])
