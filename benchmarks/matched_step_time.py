"""Accuracy at matched step time (issue 23): a latency budget against the FLOPs-budget curve, paired by seed.

Reads the rows of one or more `benchmarks/default_budget.py` results (their run folders must still exist: made
with --runs), times every run's final network against the dense network of its model in one interleaved loop
(training step at the run's batch size, this process's threads; the median of PAIRS pair ratios), then per seed
reads the FLOPs budgets' curve (top-1 against measured step ratio, a least-squares line through that seed's FLOPs
points) at the step ratio the latency run measured, and reports top-1 (latency) minus top-1 (FLOPs curve) per seed,
its mean and a 95% bootstrap interval (as compare reports). A latency run whose ratio lies outside the seed's
FLOPs points is extrapolated: flagged per seed.

    python benchmarks/matched_step_time.py RESULT.json [RESULT.json ...] [--latency latency:0.5] [--pairs 9]
        [--out benchmarks/results/default-budget/matched_step_time.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from epiprune.costs.timing import LatencySettings, paired_ratio, step_runner
from epiprune.files import atomic_write_text
from epiprune.io.serialization import load_pruned, read_spec
from epiprune.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from default_budget import interval  # noqa: E402


def time_run(run_dir: Path, pairs: int) -> dict:
    """The run's final network's training step against its model's dense one: median pair ratio and spread."""
    spec, _ = read_spec(run_dir)
    config = json.loads((run_dir / "summary.json").read_text())["config"]
    torch.manual_seed(0)
    pruned = load_pruned(run_dir, raw_inputs=False)
    dense = build_model(spec["model"], spec["in_channels"], spec["num_classes"])
    shape = (spec["in_channels"], *spec["input_size"])
    runner = step_runner(shape, LatencySettings(batch_size=config["batch_size"]))
    timing = paired_ratio(runner(dense), runner(pruned), pairs)
    return {"ratio": timing.ratio, "uncertainty": timing.uncertainty, "dense_ms": timing.dense_ms,
            "final_ms": timing.candidate_ms}


def on_line(points: list[tuple[float, float]], x: float) -> tuple[float, bool]:
    """y at x on the least-squares line through `points` (the line through them when there are two); and whether x
    lies outside the points' range (extrapolated)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((a - mx) * (b - my) for a, b in points) / sum((a - mx) ** 2 for a in xs)
    return my + slope * (x - mx), not min(xs) <= x <= max(xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="default_budget.json files (their run folders must exist)")
    parser.add_argument("--latency", default="latency:0.5", help="the latency budget compared with the FLOPs curve")
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "default-budget" /
                                            "matched_step_time.json"))
    args = parser.parse_args()
    rows = [r for path in args.results for r in json.loads(Path(path).read_text())["rows"]]
    for r in rows:
        r.update(time_run(Path(r["run_dir"]), args.pairs))
        print(f"{r['budget']} seed {r['seed']}: step ratio {r['ratio']:.3f} +- {r['uncertainty']:.3f}, top-1 "
              f"{100 * r['final_val_top1']:.2f}%, FLOPs {r['flops_ratio']:.3f}", file=sys.stderr, flush=True)
    seeds = sorted({r["seed"] for r in rows if r["budget"] == args.latency})
    per_seed = []
    for seed in seeds:
        latency = next(r for r in rows if r["budget"] == args.latency and r["seed"] == seed)
        flops = sorted((r["ratio"], 100 * r["final_val_top1"]) for r in rows
                       if r["budget"].startswith("flops:") and r["seed"] == seed)
        if len(flops) < 2:
            raise SystemExit(f"seed {seed}: {len(flops)} FLOPs-budget run(s); a curve needs two")
        at, extrapolated = on_line(flops, latency["ratio"])
        per_seed.append({"seed": seed, "latency_ratio": latency["ratio"],
                         "latency_top1": 100 * latency["final_val_top1"], "flops_points": flops,
                         "flops_top1_at_ratio": at, "extrapolated": extrapolated,
                         "difference": 100 * latency["final_val_top1"] - at})
    mean, low, high = interval([p["difference"] for p in per_seed])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"meta": {"pairs": args.pairs, "threads": torch.get_num_threads(),
                                                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")},
                                       "rows": [{k: v for k, v in r.items() if k != "stdout_tail"} for r in rows],
                                       "per_seed": per_seed, "difference_mean_ci95": [mean, low, high]}, indent=1))
    print("| budget | seed | FLOPs kept | measured step ratio | top-1 (%) |")
    print("| --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (r["budget"], r["seed"])):
        print(f"| {r['budget']} | {r['seed']} | {100 * r['flops_ratio']:.1f}% | {r['ratio']:.3f} +- "
              f"{r['uncertainty']:.3f} | {100 * r['final_val_top1']:.2f} |")
    print()
    print(f"| seed | {args.latency} step ratio | its top-1 | FLOPs curve's top-1 there | difference (points) |")
    print("| --- | --- | --- | --- | --- |")
    for p in per_seed:
        flag = " (extrapolated)" if p["extrapolated"] else ""
        print(f"| {p['seed']} | {p['latency_ratio']:.3f} | {p['latency_top1']:.2f} | {p['flops_top1_at_ratio']:.2f}"
              f"{flag} | {p['difference']:+.2f} |")
    print(f"\nmean difference {mean:+.2f} points, 95% bootstrap interval [{low:+.2f}, {high:+.2f}] over "
          f"{len(per_seed)} seeds")


if __name__ == "__main__":
    main()
