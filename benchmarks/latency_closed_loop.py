"""The latency budget's closed loop (issue 23): does the pruned network measure within [F - 0.03, F] of the dense step?

For each model x thread count: build (or reuse) its latency table (timed as ratios, costs.layer_ratios), then for
each budget F prune a fresh model at initialisation (magnitude importance, `prune_now`) through EarlyPruningPolicy
with the closed loop on, which times the table's pick against the dense step and corrects it. Reports per row: the
loop's outcome, the measured step ratio after the loop, the FLOPs ratio kept, the table's prediction error before
correction (predicted / measured ratio of its own pick, minus 1), the loop's iterations and seconds, the table's
build noise and the load average before and after (this machine is shared: say what else ran). With
--check-pairs N, the pruned network is timed once more against a fresh dense one (N interleaved pairs) after the
loop: an independent check of the ratio the loop kept. An optimizer is built before the policy, as in a training
run (torch.optim's first use imports for seconds, which a loop at initialisation would otherwise count).

    python benchmarks/latency_closed_loop.py [--models resnet20,...] [--threads 1,2] [--budgets 0.3,0.5,0.7]
        [--batch-size 128] [--tables DIR] [--repeats 1] [--check-pairs 0]
        [--out benchmarks/results/latency-closed-loop]

Writes OUT/closed_loop.json (every iteration of every loop) and prints a markdown table.
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

from epiprune import Budget, EarlyPruningPolicy
from epiprune.costs.latency_table import LatencyTable
from epiprune.costs.timing import LatencySettings, device_name, paired_ratio, step_runner
from epiprune.errors import EpipruneError
from epiprune.files import atomic_write_text
from epiprune.models import build_model, channel_models

INPUT = (1, 28, 28)  # the built-in data


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_row(name: str, threads: int, fraction: float, settings: LatencySettings, table: Path,
            check_pairs: int = 0) -> dict:
    """Prune a fresh `name` to latency:fraction with the closed loop; the loop's record and the table's noise, and
    with check_pairs the pruned network's ratio measured again against a fresh dense one."""
    torch.manual_seed(0)
    model = build_model(name, INPUT[0], 10)
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # as the trainer has one before the prune
    before = load()
    policy = EarlyPruningPolicy(model, torch.zeros(1, *INPUT), Budget(latency=fraction), importance="magnitude",
                                latency=settings, latency_table=table, prune_at=0,
                                log=lambda m: print(m, file=sys.stderr), progress=False)
    policy.prune_now()
    result = policy.latency_loop.result
    first = result.iterations[0]
    stored = LatencyTable.load(table)
    check = None
    if check_pairs:
        runner = step_runner(INPUT, settings)
        check = paired_ratio(runner(build_model(name, INPUT[0], 10)), runner(policy.model), check_pairs)
    return {"pairs": [it.pairs for it in result.iterations],
            "check_ratio": None if check is None else check.ratio,
            "check_uncertainty": None if check is None else check.uncertainty,
            "model": name, "threads": threads, "budget": fraction, "status": result.status,
            "message": result.message, "measured_ratio": result.measured_ratio,
            "flops_ratio": result.iterations[result.chosen].flops_ratio,
            "uncertainty": result.iterations[result.chosen].uncertainty,
            "first_predicted_ratio": first.predicted_ratio, "first_measured_ratio": first.measured_ratio,
            "table_prediction_error": first.predicted_ratio / first.measured_ratio - 1.0,
            "iterations": len(result.iterations), "loop_seconds": result.seconds, "load_before": before,
            "load_after": load(), "table_build_seconds": stored.build_seconds, "table_noise": {
                k: v for k, v in stored.noise.items() if k != "layers"}, "record": result.record()}


def save(out: Path, rows: list[dict], args: argparse.Namespace, start: float) -> None:
    """OUT/closed_loop.json: the rows so far and what they were measured with."""
    meta = {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "python": platform.python_version(),
            "batch_size": args.batch_size, "seconds": time.perf_counter() - start, "argv": sys.argv[1:],
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "closed_loop.json", json.dumps({"meta": meta, "rows": rows}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(channel_models()), help="registry models (default: all CNNs)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--budgets", default="0.3,0.5,0.7")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tables", default=None, help="reuse tables in this folder (default: OUT/tables, built "
                        "afresh)")
    parser.add_argument("--repeats", type=int, default=1, help="loops per model, threads and budget")
    parser.add_argument("--check-pairs", type=int, default=0, help="after each loop, time the pruned network "
                        "against a fresh dense one in this many interleaved pairs (0: no check)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency-closed-loop"))
    args = parser.parse_args()
    out = Path(args.out)
    tables = Path(args.tables or out / "tables")
    settings = LatencySettings(batch_size=args.batch_size)
    rows = []
    start = time.perf_counter()
    for name in [m for m in args.models.split(",") if m]:
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            table = tables / f"{name}-{threads}t-b{args.batch_size}.json"
            if not args.tables:
                table.unlink(missing_ok=True)  # build afresh: its build time and noise are part of the result
            for fraction in [float(f) for f in args.budgets.split(",")] * args.repeats:
                try:
                    rows.append(run_row(name, threads, fraction, settings, table, args.check_pairs))
                except EpipruneError as e:  # a model the tables do not cover, a budget below the floor
                    print(f"{name} {threads}t latency:{fraction:g}: refused: {e}", file=sys.stderr)
                    rows.append({"model": name, "threads": threads, "budget": fraction, "refused": str(e)})
                    save(out, rows, args, start)
                    if not table.exists():  # the table itself was refused: the other budgets would rebuild it
                        break
                    continue
                r = rows[-1]
                save(out, rows, args, start)  # after every row: a benchmark stopped early keeps what it measured
                print(f"{name} {threads}t latency:{fraction:g}: {r['status']}, measured {r['measured_ratio']:.3f}, "
                      f"FLOPs {r['flops_ratio']:.3f}, table error {100 * r['table_prediction_error']:+.1f}%, "
                      f"{r['iterations']} it ({r['pairs']} pairs) in {r['loop_seconds']:.1f} s, check "
                      f"{r['check_ratio']}, load {r['load_before']} -> "
                      f"{r['load_after']}", file=sys.stderr)
    save(out, rows, args, start)
    print("| model | threads | budget F | outcome | measured ratio (+- ~95%) | in [F-0.03, F] | FLOPs kept | table "
          "error before | iterations | loop s | table noise (pairs / refs) | load avg before -> after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "refused" in r:
            print(f"| {r['model']} | {r['threads']} | {r['budget']:g} | refused: {r['refused']} |" + " |" * 8)
            continue
        met = r["budget"] - 0.03 <= r["measured_ratio"] <= r["budget"]
        noise = r["table_noise"]
        print(f"| {r['model']} | {r['threads']} | {r['budget']:g} | {r['status']} | {r['measured_ratio']:.3f} "
              f"+- {r['uncertainty']:.3f} | "
              f"{'yes' if met else 'no'} | {100 * r['flops_ratio']:.1f}% | {100 * r['table_prediction_error']:+.1f}% "
              f"| {r['iterations']} | {r['loop_seconds']:.1f} | {100 * noise.get('pair_ratio_spread', 0):.0f}% / "
              f"{100 * noise.get('reference_spread', 0):.0f}% | {r['load_before'][0]} -> {r['load_after'][0]} |")


if __name__ == "__main__":
    main()
