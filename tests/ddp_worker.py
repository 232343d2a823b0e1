"""A user's own DDP loop with the policy API; launched by tests/test_distributed.py under torchrun (gloo, CPU).
Each rank saves its final weights and widths so that the test can check that the ranks agree exactly."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel as DDP

import epiprune


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial model on every rank (DDP would broadcast rank 0's anyway)
    model = epiprune.build_model("resnet20", in_channels=1, num_classes=10)
    policy = epiprune.EarlyPruningPolicy(model, torch.zeros(1, 1, 16, 16), epiprune.Budget("flops", 0.5),
                                         window=1, max_dense_epochs=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    net = DDP(model)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data shard
    batches = [(torch.randn(8, 1, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(3)]
    for _epoch in range(4):
        for x, y in batches:
            torch.nn.functional.cross_entropy(net(x), y).backward()
            policy.step()
            optimizer.step()
            optimizer.zero_grad()
        if policy.end_epoch(optimizer):
            net = DDP(model)  # rebuild the wrapper over the smaller parameters
    # parameters only: BN running statistics are per rank between DDP's buffer broadcasts (at each forward)
    state = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"widths": policy.widths(), "prune_epoch": policy.prune_epoch,
                                                      "world": world}))
    dist.barrier()  # both ranks reach teardown together: one exiting early aborted the other (gloo)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
