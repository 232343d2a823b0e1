"""Which default budget saves more wall time at equal accuracy (issue 23): the default `epiprune train` end to end.

Runs `python -m epiprune train --budget B --seed S` as a new user does (the built-in data, every other setting at
its default, the machine's default threads), one process at a time, for each seed and budget. The order of the
budgets alternates from seed to seed, so a drift of the machine's speed falls on both. A latency run gets an empty
$EPIPRUNE_CACHE, so every seed pays for its table's build as a user's first run does; the build's seconds are
reported apart (a later run of the same model reuses the table).

    python benchmarks/default_budget.py [--seeds 0,1,2] [--budgets flops:0.5,latency:0.5]
        [--out benchmarks/results/default-budget] [--runs DIR] [-- extra train args]

Per run: the process's wall seconds, train seconds (epochs only), the table's build seconds, the last epoch's
top-1, FLOPs kept, the prune epoch and trigger, the dense and pruned epochs' seconds (median over the epochs of
each phase) and the in-run latency check's measured ratio (latency runs). Per seed the paired differences of the
second budget minus the first (top-1 in points), and their mean with a 95% bootstrap interval (as compare
reports). Writes OUT/default_budget.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from epiprune.evidence.table import bootstrap_interval
from epiprune.files import atomic_write_text


def one_run(budget: str, seed: int, out: Path, extra: list[str]) -> dict:
    """One default training run in a child process; what its summary and metrics say, and its wall seconds."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="epiprune-cache-") as cache:
        env["EPIPRUNE_CACHE"] = cache
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "epiprune", "train", "--budget", budget, "--seed", str(seed),
                               "--no-progress", "--out", str(out), *extra], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{budget} seed {seed} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        tables = list(Path(cache).rglob("*.json"))
        build = json.loads(tables[0].read_text()).get("build_seconds") if tables else None
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    prune_epoch = summary["prune_epoch"] or 0
    dense = [m["epoch_seconds"] for m in metrics if m["epoch"] <= prune_epoch]
    pruned = [m["epoch_seconds"] for m in metrics if m["epoch"] > prune_epoch]
    check = summary.get("latency") or {}
    loop = summary.get("latency_closed_loop") or {}
    return {"budget": budget, "seed": seed, "wall_seconds": wall, "train_seconds": summary["train_seconds"],
            "table_build_seconds": build, "final_val_top1": summary["final_val_top1"],
            "flops_ratio": summary["flops_ratio"], "prune_epoch": summary["prune_epoch"],
            "trigger": summary["trigger"], "dense_epoch_seconds": statistics.median(dense) if dense else None,
            "pruned_epoch_seconds": statistics.median(pruned) if pruned else None,
            "in_run_measured_ratio": check.get("measured_ratio"), "loop_status": loop.get("status"),
            "loop_measured_ratio": loop.get("measured_ratio"), "loop_seconds": loop.get("seconds"),
            "run_dir": str(out), "load_before": load_before, "load_after": os.getloadavg()[0],
            "stdout_tail": proc.stdout[-1500:]}


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% interval of paired differences, the bootstrap interval compare reports
    (evidence.table.bootstrap_interval); NaN bounds for one value: no interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    return (mean, *bootstrap_interval(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="flops:0.5,latency:0.5",
                        help="one or two budgets (two: the second minus the first, paired by seed)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "default-budget"))
    parser.add_argument("--runs", default=None, help="write the run folders here (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="after --: extra arguments for every train run")
    args = parser.parse_args()
    budgets = args.budgets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    runs_dir = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="epiprune-default-budget-"))
    rows = []
    start = time.perf_counter()
    for i, seed in enumerate(seeds):
        for budget in budgets if i % 2 == 0 else budgets[::-1]:
            row = one_run(budget, seed, runs_dir / f"{budget.replace(':', '')}-s{seed}", args.extra)
            rows.append(row)
            print(f"{budget} seed {seed}: wall {row['wall_seconds']:.0f} s, top-1 {100 * row['final_val_top1']:.2f}%, "
                  f"FLOPs {row['flops_ratio']:.3f}, prune {row['prune_epoch']} ({row['trigger']}), epochs "
                  f"{row['dense_epoch_seconds']:.1f} -> {row['pruned_epoch_seconds']:.1f} s, load "
                  f"{row['load_before']:.2f} -> {row['load_after']:.2f}", file=sys.stderr, flush=True)
    by = {(r["budget"], r["seed"]): r for r in rows}
    paired = {}
    compared = (("wall_seconds", 1.0), ("train_seconds", 1.0), ("final_val_top1", 100.0)) if len(budgets) > 1 else ()
    for key, scale in compared:
        diffs = [scale * (by[(budgets[1], s)][key] - by[(budgets[0], s)][key]) for s in seeds]
        paired[key] = {"per_seed": diffs, "mean_ci95": interval(diffs)}
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "extra": args.extra,
            "seconds": time.perf_counter() - start, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "default_budget.json", json.dumps({"meta": meta, "rows": rows, "paired": paired},
                                                              indent=1))
    print("| budget | seed | wall s | table build s | train s | dense / pruned epoch s | top-1 (%) | FLOPs kept | "
          "prune epoch | measured step ratio (in-run check) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (r["budget"], r["seed"])):
        build = "-" if r["table_build_seconds"] is None else f"{r['table_build_seconds']:.0f}"
        ratio = "-" if r["in_run_measured_ratio"] is None else f"{r['in_run_measured_ratio']:.3f}"
        print(f"| {r['budget']} | {r['seed']} | {r['wall_seconds']:.0f} | {build} | {r['train_seconds']:.0f} | "
              f"{r['dense_epoch_seconds']:.1f} / {r['pruned_epoch_seconds']:.1f} | {100 * r['final_val_top1']:.2f} | "
              f"{100 * r['flops_ratio']:.1f}% | {r['prune_epoch']} ({r['trigger']}) | {ratio} |")
    if not paired:
        return
    print()
    print(f"| {budgets[1]} minus {budgets[0]}, paired by seed | per seed | mean [95% bootstrap interval] |")
    print("| --- | --- | --- |")
    for key, p in paired.items():
        mean, low, high = p["mean_ci95"]
        print(f"| {key} | {', '.join(f'{d:+.2f}' for d in p['per_seed'])} | {mean:+.2f} [{low:+.2f}, {high:+.2f}] |")


if __name__ == "__main__":
    main()
