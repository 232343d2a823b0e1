"""Issue 13's study: ResNet-20 on full Fashion-MNIST at 30% and 50% FLOPs, five seeds on one fixed data subset,
a held-out validation split (2,000 training images) that chooses the oracle and a test split (5,000 test images)
that chooses nothing, every method paired with EPI per seed.

    python benchmarks/epi_study.py run [--budgets 0.3,0.5] [--seeds 0-4] [--jobs 2]
    python benchmarks/epi_study.py numerics [--seeds 0-4]     # the same dense runs with other numerics
    python benchmarks/epi_study.py analyse                     # trigger robustness, from the recorded runs

`run` is `epiprune compare` per budget (branched grid, train-prune-fine-tune and EPI branch from each seed's dense
run, which both budgets share). `numerics` trains each seed's dense run again in channels-last memory format
(other convolution kernels: the same model and data, different rounding), recording the same scores. `analyse`
replays the recorded scores through trigger variants (per-layer / per-group EPI, tau +- 0.005, the peak
condition, smoothing, evaluation every K steps) and reads each prune epoch's accuracy off the branched grid of
the same seed and budget. Finished runs are reused: an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from epiprune.cli import _int_list
from epiprune.compare import CompareConfig, bootstrap_interval, compare, finished_runs, test_top1
from epiprune.models import build_model
from epiprune.policy import EarlyPruningPolicy
from epiprune.serialization import atomic_write_text
from epiprune.subnetwork import Budget
from epiprune.trajectory import read_scores

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "epi-study"
DATA_CANDIDATES = [Path("/usr/share/datasets/fashion-mnist"), ROOT.parent / "shared" / "data" / "fashion-mnist"]
METHODS = ["dense", "init-magnitude", "tpf-ft3", *[f"fixed-{k}" for k in range(1, 7)], "earlybird",
           "earlybird-budget", "epi-taylor", "epi-magnitude"]
PROBE_EVERY = 12  # steps between Taylor probes of the dense runs (47 steps per epoch: about 4 per epoch)


def config(budget: float, seeds: list[int], jobs: int, data_dir: str, out: Path, **overrides: object) -> CompareConfig:
    settings = dict(model="resnet20", data="fashion-mnist", data_dir=data_dir, train_subset=6000, val_subset=5000,
                    holdout=2000, data_seed=0, epochs=12, budget=f"flops:{budget}", seeds=seeds, jobs=jobs,
                    probe_every=PROBE_EVERY, only=METHODS, out=str(out))
    return CompareConfig(**{**settings, **overrides})


def run(args: argparse.Namespace) -> None:
    seeds = _int_list(args.seeds, "seeds")
    first = None
    for budget in (float(b) for b in args.budgets.split(",")):
        out = OUT / f"resnet20-flops{budget:g}"
        if first is not None:  # one dense trajectory per seed serves every budget
            (out / "runs").mkdir(parents=True, exist_ok=True)
            link = out / "runs" / "dense"
            if not link.exists():
                link.symlink_to(os.path.relpath(first / "runs" / "dense", out / "runs"))
        start = time.time()
        # what the targets need first (the dense runs, the grid, EPI), then the other baselines
        for methods in (["dense", *[f"fixed-{k}" for k in range(1, 7)], "epi-taylor", "epi-magnitude"], METHODS):
            compare(config(budget, seeds, args.jobs, args.data_dir, out, only=methods),
                    log=lambda m: print(m, flush=True))
        print(f"budget {budget:g}: {time.time() - start:.0f} s", flush=True)
        first = first or out


def numerics(args: argparse.Namespace) -> None:
    """Dense runs of the same seeds with channels-last convolutions: the numerics perturbation of the study."""
    seeds = _int_list(args.seeds, "seeds")
    cfg = config(0.3, seeds, args.jobs, args.data_dir, OUT / "numerics-channels-last", only=["dense"],
                 extra_args=["--channels-last"])
    compare(cfg, log=lambda m: print(m, flush=True))


def replay_epoch(graph_model: torch.nn.Module, example: torch.Tensor, budget: float, rows: list[list], *,
                 window: int, threshold: float, max_dense: int, epi_average: str = "layer", peak: int = 0,
                 smooth: int = 1, min_dense: int | None = None) -> tuple[int | None, str | None, list]:
    """(prune point, trigger, EPI per point) that a policy with these settings picks on recorded Taylor scores."""
    policy = EarlyPruningPolicy(graph_model, example, Budget(flops=budget), window=window, threshold=threshold,
                                max_dense_epochs=max_dense, min_dense_epochs=min_dense, epi_average=epi_average,
                                peak=peak, smooth=smooth, log=lambda _: None, progress=False)
    point = policy.replay([[np.asarray(s) for s in r] for r in rows], lambda _: None)
    return point, policy.trigger, [h.epi for h in policy.history]


VARIANTS = {  # name: (settings, evaluated on epochs or on probes)
    "per-layer EPI (default)": ({}, "epoch"),
    "per-group EPI (before)": ({"epi_average": "group"}, "epoch"),
    "per-layer, peak over 5": ({"peak": 5}, "epoch"),
    "per-layer, mean of 2": ({"smooth": 2}, "epoch"),
    "per-layer, every 12 steps, r = 12 probes": ({"window": 12}, "probe"),
    "per-layer, every 12 steps, r = 3 probes": ({"window": 3}, "probe"),
}


def analyse(args: argparse.Namespace) -> None:
    model = build_model("resnet20", 1, 10)
    example = torch.zeros(1, 1, 28, 28)
    report: dict = {"variants": {}, "meta": {"tau": 0.944, "perturbations": "tau -0.005 / +0.005; numerics: "
                                             "channels-last dense runs"}}
    lines = []
    for budget in (float(b) for b in args.budgets.split(",")):
        folder = OUT / f"resnet20-flops{budget:g}"
        runs, _ = finished_runs(folder)
        grid = {(r["seed"], r["prune_epoch"]): test_top1(r) for r in runs if r["family"] == "fixed"}
        seeds = sorted({s for s, _ in grid})
        dense = {s: folder / "runs" / "dense" / f"seed{s}" for s in seeds}
        other = {s: OUT / "numerics-channels-last" / "runs" / "dense" / f"seed{s}" for s in seeds}
        lines += [f"\n### ResNet-20, {budget:.0%} FLOPs ({len(seeds)} seeds)\n",
                  "| trigger | prune point at tau (per seed) | moves under tau -0.005 / +0.005 | moves under other "
                  "numerics | test top-1 at tau (%) | top-1 change, worst over perturbations (points) |",
                  "|---|---|---|---|---|---|"]
        for name, (settings, unit) in VARIANTS.items():
            per_seed = []
            for s in seeds:
                base = {"window": 3, "max_dense": 6, **settings}
                if unit == "probe":
                    per_epoch = round(47 / PROBE_EVERY)
                    base["max_dense"] = 6 * per_epoch
                    base["min_dense"] = base["window"] + 1
                points = {}
                for label, path, tau in (("tau", dense[s], 0.944), ("tau-", dense[s], 0.939),
                                         ("tau+", dense[s], 0.949), ("numerics", other[s], 0.944)):
                    if not (path / "scores.jsonl").is_file():
                        continue
                    epochs, probes = read_scores(path)
                    rows = [r["taylor"] for r in (epochs if unit == "epoch" else probes)]
                    point, trigger, epis = replay_epoch(model, example, budget, rows, threshold=tau, **base)
                    # a probe point's accuracy: the grid run pruned at the end of the epoch the probe falls in
                    epoch = point if unit == "epoch" else (probes[point - 1]["epoch"] if point else None)
                    points[label] = {"point": point, "trigger": trigger, "epoch": epoch,
                                     "top1": grid.get((s, epoch)), "epi": epis}
                per_seed.append(points)
            at_tau = [p["tau"]["point"] for p in per_seed]
            moves = [max(abs(p[k]["point"] - p["tau"]["point"]) for k in ("tau-", "tau+")) for p in per_seed]
            moves_num = [abs(p["numerics"]["point"] - p["tau"]["point"]) for p in per_seed if "numerics" in p]
            top1 = [p["tau"]["top1"] for p in per_seed if p["tau"]["top1"] is not None]
            change = [max(abs(p[k]["top1"] - p["tau"]["top1"]) for k in p if p[k]["top1"] is not None)
                      for p in per_seed if p["tau"]["top1"] is not None]
            fallbacks = sum(p["tau"]["trigger"] == "fallback" for p in per_seed)
            unit_name = "epoch" if unit == "epoch" else f"probe ({PROBE_EVERY} steps)"
            lines.append(f"| {name} | {at_tau} {unit_name}s, {fallbacks} fallback(s) | max {max(moves)}, "
                         f"mean {statistics.fmean(moves):.1f} | "
                         + (f"max {max(moves_num)}, mean {statistics.fmean(moves_num):.1f}" if moves_num else "-")
                         + f" | {statistics.fmean(top1):.2f} | max {max(change):.2f} |")
            report["variants"].setdefault(f"flops{budget:g}", {})[name] = {"per_seed": per_seed}
        oracle = {s: max((v for (ss, _), v in grid.items() if ss == s)) for s in seeds}
        epi = [p["tau"]["top1"] for p in report["variants"][f"flops{budget:g}"]["per-layer EPI (default)"]["per_seed"]]
        diffs = [e - oracle[s] for e, s in zip(epi, seeds, strict=True) if e is not None]
        if diffs:
            low, high = bootstrap_interval(diffs)
            lines.append(f"\nper-layer EPI minus the best grid epoch (test top-1, chosen on test: an upper bound of "
                         f"the oracle): {statistics.fmean(diffs):+.2f} [{low:+.2f}, {high:+.2f}]")
    report["meta"].update(machine=platform.processor() or platform.machine(), torch=torch.__version__)
    text = "\n".join(lines) + "\n"
    atomic_write_text(OUT / "trigger_study.md", text)
    atomic_write_text(OUT / "trigger_study.json", json.dumps(report, indent=1, default=str))
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "numerics", "analyse"))
    parser.add_argument("--budgets", default="0.3,0.5")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=next((str(p) for p in DATA_CANDIDATES if p.is_dir()), None))
    args = parser.parse_args()
    if args.data_dir is None:
        raise SystemExit("error: full Fashion-MNIST not found (accepted: --data-dir with its IDX files)")
    {"run": run, "numerics": numerics, "analyse": analyse}[args.command](args)


if __name__ == "__main__":
    main()
