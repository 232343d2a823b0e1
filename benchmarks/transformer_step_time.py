"""Issue 21's step-time target: does a transformer pruned to flops 0.5 train a step in <= 0.6x of the dense step?

For each pruned run folder given (e.g. the EPI and prune-at-init runs of a compare of lm_tiny or vit_tiny), load the
model it trained (io.serialization.load_pruned: the recorded heads and neurons cut) and the dense run of the same
compare and seed (OUT_OF_COMPARE/runs/dense/seed<k>), and time their training steps interleaved in one loop (dense,
pruned, dense, pruned, ...; costs.timing.paired_ratio: the median of the pair ratios and its ~95% half-width), at
the run's batch size and input shape (a language model's --seq-len tokens), with the step the latency tables time:
forward, cross-entropy, backward, an SGD step with momentum (the run's AdamW costs a little more per parameter, the
same for both). Ratios measured in one loop are what to compare on a shared machine.

    python benchmarks/transformer_step_time.py RUN [RUN ...] [--threads 1,2] [--pairs 15]
        [--out benchmarks/results/transformers/step_time.json]

RUN: a pruned run's folder (compare's runs/<method>/seed<k>). Prints a markdown table and writes OUT (every pair).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from epiprune.costs.timing import LatencySettings, device_name, paired_ratio, step_runner
from epiprune.files import atomic_write_text
from epiprune.io.serialization import load_pruned


def run_info(folder: Path) -> tuple[dict, tuple[int, ...], bool]:
    """(summary.json, one sample's input shape, whether the input is token ids) of a run folder."""
    summary = json.loads((folder / "summary.json").read_text())
    spec = json.loads((folder / "architecture.json").read_text())
    if spec.get("task") == "text":
        return summary, (int(spec["seq_len"]),), True
    return summary, (int(spec["in_channels"]), *(int(d) for d in spec["input_size"])), False


def measure(folder: Path, threads: int, pairs: int) -> dict:
    """The pruned run's step against its compare's dense run of the same seed, at `threads` torch threads."""
    summary, shape, tokens = run_info(folder)
    dense_folder = folder.parent.parent / "dense" / folder.name
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    settings = LatencySettings(batch_size=int(summary["config"]["batch_size"]))
    runner = step_runner(shape, settings, token_ids=tokens)
    pruned = load_pruned(folder, raw_inputs=False)
    dense = load_pruned(dense_folder, raw_inputs=False)
    params = [sum(p.numel() for p in m.parameters()) for m in (dense, pruned)]
    start = time.perf_counter()
    timing = paired_ratio(runner(dense), runner(pruned), pairs, warmup=2)
    return {"run": str(folder), "dense_run": str(dense_folder), "model": summary["config"]["model"],
            "method": folder.parent.name, "seed": folder.name, "threads": threads,
            "batch_size": settings.batch_size, "input_shape": list(shape), "flops_ratio": summary["flops_ratio"],
            "params_ratio": params[1] / params[0], "prune_step": summary.get("prune_step"),
            "trigger": summary.get("trigger"), "dense_ms": timing.dense_ms, "pruned_ms": timing.candidate_ms,
            "ratio": timing.ratio, "uncertainty": timing.uncertainty, "spread": timing.spread,
            "pairs": timing.pairs, "seconds": time.perf_counter() - start, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pruned run folders (compare's runs/<method>/seed<k>)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "transformers" / "step_time.json")
    args = parser.parse_args()
    missing = [str(r) for r in args.runs if not (r / "summary.json").is_file()]
    if missing:
        raise SystemExit(f"error: not a finished run folder: {', '.join(missing)} (accepted: compare's "
                         "runs/<method>/seed<k> with summary.json)")
    start = time.perf_counter()
    load_before = os.getloadavg()
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for folder in args.runs:
            rows.append(measure(folder, threads, args.pairs))
            r = rows[-1]
            print(f"{r['model']} {r['method']} {r['seed']} {threads}t: {r['ratio']:.3f} +- {r['uncertainty']:.3f}",
                  file=sys.stderr, flush=True)
    meta = {"device": device_name(torch.device("cpu")), "torch": torch.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(), "argv": sys.argv[1:],
            "seconds": time.perf_counter() - start, "load_before": load_before, "load_after": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("| model | run | seed | threads | FLOPs kept | params kept | dense step ms | pruned step ms | "
          "pruned / dense (+- ~95%) | <= 0.6x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['seed']} | {r['threads']} | {100 * r['flops_ratio']:.1f}% | "
              f"{100 * r['params_ratio']:.1f}% | {r['dense_ms']:.0f} | {r['pruned_ms']:.0f} | {r['ratio']:.3f} +- "
              f"{r['uncertainty']:.3f} | {'yes' if r['ratio'] <= 0.6 else 'no'} |")


if __name__ == "__main__":
    main()
