"""FLOPs budget vs latency budget, measured in one run on this device (issue: prune to measured time).

For each model: build its latency table (timed), then train it twice on the same schedule and data, once with
--budget flops:F and once with --budget latency:F (EPI decides when, as `epiprune train` does by default), and
time the training step (forward + backward + SGD step at the run's batch size) of the dense model and of both
pruned models, interleaved, with the function the tables are calibrated with. Reports, per model and budget:
measured step time relative to dense, the latency table's prediction error for the pruned network (also for the
FLOPs-budget network, which the table never saw), the final top-1, FLOPs kept, and the table's build time.
A second part times the dense step of each model under the training paths a table must match
(--channels-last, --amp bf16/fp16, --compile).

    python benchmarks/latency.py [--models resnet20,resnet56,vgg11_bn,mobilenetv2_small] [--epochs 8]
        [--train-subset 5000] [--fraction 0.5] [--device cpu] [--out benchmarks/results/latency]

Writes OUT/latency.json (every number, per-epoch metrics of every run included), OUT/top1_vs_step_time.png,
OUT/paths.json (the training paths' dense step times), and prints markdown tables. `--models ""` skips the
budget runs, `--paths ""` the training paths. Ratios measured in one run are what to compare: this machine is
shared and noisy.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from epiprune.costs.latency_build import load_or_build
from epiprune.costs.timing import LatencySettings, device_name, median_ms, time_model_step
from epiprune.files import atomic_write_text
from epiprune.io.serialization import load_pruned
from epiprune.models import build_model
from epiprune.policy.subnetwork import select_subnetwork
from epiprune.run.config import TrainConfig
from epiprune.run.network import resolve_device
from epiprune.run.trainer import train
from epiprune.surgery import PrunableGraph

INPUT = (1, 28, 28)  # the built-in data


def step_times(models: dict[str, torch.nn.Module], settings: LatencySettings, rounds: int) -> dict[str, float]:
    """Median train-step milliseconds of each model, measured round-robin (`rounds` x 10 steps each)."""
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(time_model_step(model, INPUT, settings))
    return {name: statistics.median(values) for name, values in samples.items()}


def run_model(name: str, args: argparse.Namespace, device: torch.device, out: Path) -> dict:
    settings = LatencySettings(batch_size=args.batch_size)
    model = build_model(name, 1, 10).to(device)
    graph = PrunableGraph(model, torch.zeros(1, *INPUT, device=device))
    table_path = Path(args.tables or out / "tables") / f"{name}.json"
    if not args.tables:
        table_path.unlink(missing_ok=True)  # measure the build time afresh
    start = time.perf_counter()
    cost, _ = load_or_build(graph, settings, table_path, progress=False, log=lambda m: print(m, file=sys.stderr),
                            select=select_subnetwork)
    build_seconds = time.perf_counter() - start
    runs, final_models = {}, {"dense": build_model(name, 1, 10).to(device)}
    kinds = args.kinds.split(",")
    for kind in kinds:
        budget = f"{kind}:{args.fraction:g}"
        cfg = TrainConfig(model=name, epochs=args.epochs, train_subset=args.train_subset, batch_size=args.batch_size,
                          budget=budget, seed=args.seed, device=device.type, out=str(out / "runs" / f"{name}-{kind}"),
                          progress=False, latency_table=str(table_path))
        started = time.perf_counter()
        result = train(cfg, log=lambda m: print(m, file=sys.stderr))
        runs[kind] = {"summary": result.summary, "metrics": result.metrics, "wall_s": time.perf_counter() - started}
        final_models[kind] = load_pruned(result.out, raw_inputs=False).to(device)  # the bare network, like dense
    measured = step_times(final_models, settings, args.rounds)
    rows = []
    for kind in kinds:
        s = runs[kind]["summary"]
        widths = np.asarray(s["final_widths"])
        predicted = cost(widths)
        rows.append({"model": name, "budget": s["budget"], "prune_epoch": s["prune_epoch"], "trigger": s["trigger"],
                     "final_top1": s["final_val_top1"], "flops_ratio": s["flops_ratio"],
                     "params_ratio": s["params_ratio"], "dense_step_ms": measured["dense"],
                     "pruned_step_ms": measured[kind], "step_ratio": measured[kind] / measured["dense"],
                     "predicted_step_ms": predicted, "predicted_dense_ms": cost.dense,
                     "predicted_ratio": predicted / cost.dense, "prediction_error": predicted / measured[kind] - 1.0,
                     # the same against this run's dense timing: a machine slowed by other work since the table
                     # was built moves both measurements alike and cancels here
                     "ratio_error": (predicted / cost.dense) / (measured[kind] / measured["dense"]) - 1.0,
                     "train_seconds": s["train_seconds"], "train_flops_ratio": s["train_flops_ratio"],
                     "in_run_latency_check": s.get("latency"), "table_build_s": build_seconds,
                     "metrics": runs[kind]["metrics"], "final_widths": s["final_widths"]})
    return {"model": name, "table_build_s": build_seconds, "table": str(table_path), "rows": rows}


def time_paths(name: str, device: torch.device, batch_size: int, paths: list[str], rounds: int) -> dict[str, float]:
    """Dense train-step milliseconds of `name` under each training path (eager fp32 NCHW is the baseline): the
    eager paths round-robin over `rounds` rounds, fastest round kept; compile timed after its first (compiling)
    step, whose seconds are reported too."""
    torch.manual_seed(0)
    model = build_model(name, 1, 10).to(device)
    eager = [p for p in paths if p != "compile"]
    samples: dict[str, list[float]] = {p: [] for p in eager}
    for _ in range(rounds):
        for path in eager:
            settings = LatencySettings(batch_size=batch_size, channels_last=path == "channels_last",
                                       amp={"bf16": "bf16", "fp16": "fp16"}.get(path, "none"))
            samples[path].append(time_model_step(model, INPUT, settings))
    result = {path: min(values) for path, values in samples.items()}
    if "compile" in paths:
        compiled = torch.compile(copy.deepcopy(model))
        x = torch.randn(batch_size, *INPUT, device=device)
        y = torch.randint(0, 10, (batch_size,), device=device)
        optimizer = torch.optim.SGD(compiled.parameters(), lr=1e-6, momentum=0.9)

        def step() -> None:
            torch.nn.functional.cross_entropy(compiled(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        started = time.perf_counter()
        step()  # compiles
        result["compile_first_step_s"] = time.perf_counter() - started
        result["compile"] = median_ms(step, device, 3, 10)
    return result


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = dict(zip(sorted({r["model"] for r in rows}), plt.rcParams["axes.prop_cycle"].by_key()["color"],
                       strict=False))
    for r in rows:
        marker = "o" if r["budget"].startswith("flops") else "s"
        ax.scatter(r["step_ratio"], 100 * r["final_top1"], color=colours[r["model"]], marker=marker, s=50)
    for model, colour in colours.items():
        flops = sorted((r for r in rows if r["model"] == model and r["budget"].startswith("flops")),
                       key=lambda r: r["step_ratio"])  # the FLOPs budget's accuracy-vs-time curve of this model
        ax.plot([r["step_ratio"] for r in flops], [100 * r["final_top1"] for r in flops], color=colour, lw=0.8,
                label=model)
        for r in rows:
            if r["model"] == model:
                ax.annotate(r["budget"].split(":")[1], (r["step_ratio"], 100 * r["final_top1"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
    ax.scatter([], [], marker="o", color="grey", label="flops budget")
    ax.scatter([], [], marker="s", color="grey", label="latency budget")
    ax.set_xlabel("measured training step time / dense (same run)")
    ax.set_ylabel("final validation top-1 (%)")
    ax.set_title("FLOPs budget (line) vs latency budget (squares), labelled by fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56,vgg11_bn,mobilenetv2_small")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--fraction", type=float, default=0.5, help="budget fraction for both kinds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the final models")
    parser.add_argument("--kinds", default="flops,latency", help="budget kinds to train, each at --fraction")
    parser.add_argument("--tables", default=None, help="reuse the tables in this folder (default: build afresh)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paths", default="eager,channels_last,bf16,fp16,compile",
                        help="training paths to time (dense step); empty to skip")
    parser.add_argument("--path-models", default="resnet20", help="models whose training paths are timed")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency"))
    parser.add_argument("--replot", default=None, metavar="JSON,...",
                        help="only redraw OUT/top1_vs_step_time.png from the rows of these latency.json files")
    args = parser.parse_args()
    if args.replot:
        rows = [r for path in args.replot.split(",") for res in json.loads(Path(path).read_text())["results"]
                for r in res["rows"]]
        plot(rows, Path(args.out) / "top1_vs_step_time.png")
        return
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    meta = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "epochs": args.epochs,
            "train_subset": args.train_subset, "batch_size": args.batch_size, "fraction": args.fraction,
            "seed": args.seed, "rounds": args.rounds}
    if models:
        results = [run_model(name, args, device, out) for name in models]
        rows = [r for res in results for r in res["rows"]]
        print("| model | budget | prune epoch | top-1 (%) | FLOPs kept | step time / dense (measured) "
              "| predicted / dense | error of the ratio | error in ms | dense step (ms) | table build (s) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['budget']} | {r['prune_epoch']} ({r['trigger']}) "
                  f"| {100 * r['final_top1']:.2f} | {100 * r['flops_ratio']:.1f}% | {r['step_ratio']:.2f}x "
                  f"| {r['predicted_ratio']:.2f}x | {100 * r['ratio_error']:+.1f}% "
                  f"| {100 * r['prediction_error']:+.1f}% | {r['dense_step_ms']:.1f} "
                  f"| {r['table_build_s']:.0f} |")
        atomic_write_text(out / "latency.json", json.dumps({"meta": meta, "results": results}, indent=1))
        plot(rows, out / "top1_vs_step_time.png")
        print(f"wrote {out / 'latency.json'} and {out / 'top1_vs_step_time.png'}", file=sys.stderr)
    paths = [p for p in args.paths.split(",") if p]
    path_models = [m for m in args.path_models.split(",") if m]
    if paths and path_models:
        path_rows = {name: time_paths(name, device, args.batch_size, paths, args.rounds) for name in path_models}
        print("\n| model | " + " | ".join(f"{p} (ms)" for p in paths) + " |")
        print("|---" * (len(paths) + 1) + "|")
        for name, times in path_rows.items():
            print(f"| {name} | " + " | ".join(f"{times[p]:.1f}" if p in times else "-" for p in paths) + " |")
        atomic_write_text(out / "paths.json", json.dumps({"meta": meta, "paths": path_rows}, indent=1))
        print(f"wrote {out / 'paths.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
