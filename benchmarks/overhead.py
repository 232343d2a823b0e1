"""Overhead of epiprune's bookkeeping, and the speed-up that pruning buys, measured in one run.

For each model, on the built-in data shape (1x28x28, batch 128, SGD):
  * epoch time of dense training without the policy vs. with policy.step() every step and policy.end_epoch()
    (importance, dominant sub-network, EPI) at the end of the epoch (pruning disabled), interleaved repeats;
    the overhead is also split into its per-step part and the end-of-epoch milliseconds;
  * train-step time (forward + backward + SGD step) of the dense model vs. the same model pruned to
    --flops-budget (0.5) of its FLOPs by the policy's Taylor-ranked dominant sub-network, interleaved repeats.
Prints a table and writes JSON (default benchmarks/results/overhead.json). Ratios are what to compare: this
machine is shared and noisy, so absolute seconds vary between runs.

    python benchmarks/overhead.py [--models resnet20,resnet56] [--steps 40] [--repeats 3] [--device cuda]
    python benchmarks/overhead.py --epi-every 12     # the step clock: a probe (with its noise floor) every 12 steps

On a GPU every timer is read after torch.cuda.synchronize(), so the times are of the work, not of its launch.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from epiprune import Budget, EarlyPruningPolicy
from epiprune.files import atomic_write_text
from epiprune.models import build_model
from epiprune.run.data import TensorLoader, load_builtin
from epiprune.run.network import resolve_device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def run_epoch(model: torch.nn.Module, batches: list, policy: EarlyPruningPolicy | None) -> tuple[float, float]:
    """Seconds for one pass over `batches` plus the policy's end-of-epoch work when a policy is given, and the
    seconds of that end-of-epoch work alone (0 without a policy)."""
    optimizer = make_optimizer(model)
    model.train()
    device = next(model.parameters()).device
    synchronize(device)
    start = time.perf_counter()
    for x, y in batches:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if policy is not None:
            policy.step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    steps_done = time.perf_counter()
    if policy is not None:
        policy.end_epoch(optimizer)
    synchronize(device)
    end = time.perf_counter()
    return end - start, end - steps_done


def step_times(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    optimizer = make_optimizer(model)
    model.train()
    times = []
    for _ in range(steps):
        synchronize(x.device)
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(x.device)
        times.append(time.perf_counter() - start)
    return times


def bench_model(name: str, batches: list, steps: int, repeats: int, channel_multiple: int = 1,
                flops_budget: float = 0.5, epi_every: int = 0) -> dict:
    device = batches[0][0].device
    example = torch.zeros(1, *batches[0][0].shape[1:], device=device)
    torch.manual_seed(0)
    plain = build_model(name, 1, 10).to(device)
    torch.manual_seed(0)
    tracked = build_model(name, 1, 10).to(device)
    # prune_at far away: the policy does all its per-epoch work but never prunes during this measurement
    clock = {} if not epi_every else {"epi_every": epi_every, "steps_per_epoch": len(batches), "threshold": "auto"}
    policy = EarlyPruningPolicy(tracked, example, Budget("flops", 0.5), importance="taylor", prune_at=10**6, **clock)
    run_epoch(plain, batches[:3], None)  # warm-up
    run_epoch(tracked, batches[:3], policy)
    dense_epoch, policy_epoch, end_of_epoch = [], [], []
    for _ in range(repeats):
        dense_epoch.append(run_epoch(plain, batches, None)[0])
        total, closing = run_epoch(tracked, batches, policy)
        policy_epoch.append(total)
        end_of_epoch.append(closing)

    pruned = build_model(name, 1, 10).to(device)
    prune_policy = EarlyPruningPolicy(pruned, example, Budget("flops", flops_budget), importance="taylor", prune_at=1,
                                      channel_multiple=channel_multiple)
    run_epoch(pruned, batches[:5], prune_policy)  # accumulates Taylor scores, then prunes at the epoch's end
    assert prune_policy.pruned
    dense = build_model(name, 1, 10).to(device)
    x, y = batches[0]
    step_times(dense, x, y, 3)
    step_times(pruned, x, y, 3)
    dense_step, pruned_step = [], []
    for _ in range(repeats):
        dense_step += step_times(dense, x, y, steps // repeats)
        pruned_step += step_times(pruned, x, y, steps // repeats)
    flops, params = prune_policy.count()
    med = statistics.median
    return {
        "model": name, "batches_per_epoch": len(batches), "batch_size": len(y), "epi_every": epi_every,
        "probes_per_epoch": len(batches) // epi_every if epi_every else 1,
        "dense_epoch_s": med(dense_epoch), "policy_epoch_s": med(policy_epoch),
        "policy_overhead": med(policy_epoch) / med(dense_epoch) - 1.0,
        # the same split in two: policy.step() at every step, and end_epoch() (ranking, sub-network, EPI) once
        "end_of_epoch_s": med(end_of_epoch),
        "step_overhead": (med(policy_epoch) - med(end_of_epoch)) / med(dense_epoch) - 1.0,
        "dense_step_s": med(dense_step), "pruned_step_s": med(pruned_step),
        "pruned_speedup": med(dense_step) / med(pruned_step),
        "pruned_flops_ratio": flops / prune_policy.dense_flops,
        "pruned_params_ratio": params / prune_policy.dense_params,
        "pruned_widths": prune_policy.widths(), "dense_widths": prune_policy.dense_widths,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56,vgg11_bn,mobilenetv2_small")
    parser.add_argument("--batches", type=int, default=40, help="batches per measured epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="measured train steps per model and variant")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channel-multiple", type=int, default=1, help="kept channels per layer: multiple of this")
    parser.add_argument("--flops-budget", type=float, default=0.5, help="FLOPs fraction of the pruned model")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epi-every", type=int, default=0, help="0: probe at the epoch's end; N: the step clock, a "
                        "probe every N steps with the auto threshold's two extra selections")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.json"))
    args = parser.parse_args()
    data = load_builtin()
    loader = TensorLoader(data.train_images, data.train_labels, args.batch_size, train=True, seed=0)
    device = resolve_device(args.device)
    batches = [(x.to(device), y.to(device)) for _, (x, y) in zip(range(args.batches), loader, strict=False)]
    rows = []
    for name in args.models.split(","):
        rows.append(bench_model(name.strip(), batches, args.steps, args.repeats, args.channel_multiple,
                                args.flops_budget, args.epi_every))
        r = rows[-1]
        print(f"{r['model']:>18}: policy overhead {100 * r['policy_overhead']:+.1f}%  "
              f"pruned speed-up {r['pruned_speedup']:.2f}x", file=sys.stderr)
    header = ("| model | dense epoch (s) | with policy (s) | overhead | of it per step | end of epoch (ms) "
              "| dense step (ms) | pruned step (ms) | speed-up | pruned FLOPs |\n" + "|---" * 10 + "|")
    lines = [header] + [
        f"| {r['model']} | {r['dense_epoch_s']:.2f} | {r['policy_epoch_s']:.2f} | {100 * r['policy_overhead']:+.1f}% "
        f"| {100 * r['step_overhead']:+.1f}% | {1000 * r['end_of_epoch_s']:.0f} "
        f"| {1000 * r['dense_step_s']:.1f} | {1000 * r['pruned_step_s']:.1f} | {r['pruned_speedup']:.2f}x "
        f"| {100 * r['pruned_flops_ratio']:.1f}% |" for r in rows]
    print("\n".join(lines))
    meta = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "flops_budget": args.flops_budget, "batches": args.batches, "batch_size": args.batch_size,
            "steps": args.steps, "repeats": args.repeats, "channel_multiple": args.channel_multiple,
            "epi_every": args.epi_every}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
