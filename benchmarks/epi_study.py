"""Issue 13's study: ResNet-20 on full Fashion-MNIST at 30% and 50% FLOPs, five seeds on one fixed data subset,
a held-out validation split (2,000 training images) that chooses the oracle and a test split (5,000 test images)
that chooses nothing, every method paired with EPI per seed.

    python benchmarks/epi_study.py run [--budgets 0.3,0.5] [--seeds 0-4] [--jobs 2]
    python benchmarks/epi_study.py numerics [--seeds 0-4]     # the same dense runs with other numerics
    python benchmarks/epi_study.py collect                     # the committed data: scores and metrics
    python benchmarks/epi_study.py analyse                     # trigger robustness, from the committed data

`run` is `epiprune compare` per budget (branched grid, train-prune-fine-tune and EPI branch from each seed's dense
run, which both budgets share). `numerics` trains each seed's dense run again in channels-last memory format
(other convolution kernels: the same model and data, different rounding), recording the same scores. `analyse`
replays the recorded scores through trigger variants (per-layer / per-group EPI, tau +- 0.005, the peak
condition, smoothing, evaluation every K steps) and reads each prune epoch's accuracy off the branched grid of
the same seed and budget. Finished runs are reused: an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from epiprune.cli import _int_list
from epiprune.costs.budget import Budget
from epiprune.evidence.compare import compare
from epiprune.evidence.runs import CompareConfig, finished_runs
from epiprune.evidence.table import bootstrap_interval, oracle_runs, test_top1, write_comparison
from epiprune.files import atomic_write, atomic_write_text
from epiprune.models import build_model
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.run.trajectory import read_scores

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "epi-study"
DATA_CANDIDATES = [Path("/usr/share/datasets/fashion-mnist"), ROOT.parent / "shared" / "data" / "fashion-mnist"]
METHODS = ["dense", "init-magnitude", "tpf-ft3", *[f"fixed-{k}" for k in range(1, 7)], "earlybird",
           "earlybird-budget", "epi-taylor", "epi-magnitude"]
PROBE_EVERY = 12  # steps between Taylor probes of the dense runs (47 steps per epoch: about 4 per epoch)
TAU, DELTA = 0.944, 0.005  # the published Taylor threshold, and how far the study moves it


def config(budget: float, seeds: list[int], jobs: int, data_dir: str, out: Path, **overrides: object) -> CompareConfig:
    settings = dict(model="resnet20", data="fashion-mnist", data_dir=data_dir, train_subset=6000, val_subset=5000,
                    holdout=2000, data_seed=0, epochs=12, budget=f"flops:{budget}", seeds=seeds, jobs=jobs,
                    probe_every=PROBE_EVERY, only=METHODS, out=str(out))
    return CompareConfig(**{**settings, **overrides})


GRID = [f"fixed-{k}" for k in range(1, 7)]
# the order runs are made in: what the targets and the trigger study need first (the dense runs and the grid of
# both budgets, EPI), then the other baselines; an interrupted study continues where it stopped
STAGES = [(0.3, ["dense", *GRID, "epi-taylor", "epi-magnitude"]), (0.3, ["init-magnitude"]),
          (0.5, ["dense", *GRID[:5]]), (0.5, ["dense", *GRID]),
          (0.3, METHODS), (0.5, ["epi-taylor", "epi-magnitude"]), (0.5, METHODS)]


def run(args: argparse.Namespace) -> None:
    seeds = _int_list(args.seeds, "seeds")
    budgets = [float(b) for b in args.budgets.split(",")]
    first = OUT / f"resnet20-flops{budgets[0]:g}"
    for budget, methods in STAGES:
        if budget not in budgets:
            continue
        out = OUT / f"resnet20-flops{budget:g}"
        if out != first:  # one dense trajectory per seed serves every budget
            (out / "runs").mkdir(parents=True, exist_ok=True)
            link = out / "runs" / "dense"
            if not link.exists():
                link.symlink_to(os.path.relpath(first / "runs" / "dense", out / "runs"))
        start = time.time()
        compare(config(budget, seeds, args.jobs, args.data_dir, out, only=methods),
                log=lambda m: print(m, flush=True))
        print(f"budget {budget:g}, {len(methods)} methods: {time.time() - start:.0f} s", flush=True)


def numerics(args: argparse.Namespace) -> None:
    """Dense runs of the same seeds with channels-last convolutions (the study's numerics perturbation), stopped
    once the dense phase that a trigger can use (epoch 6, the fallback) is recorded."""
    cfg = config(0.3, _int_list(args.seeds, "seeds"), 1, args.data_dir, OUT / "numerics-channels-last",
                 only=["dense"], extra_args=["--channels-last"])
    dense = cfg.methods()[0]
    for seed in cfg.seeds:
        folder = OUT / "numerics-channels-last" / "runs" / "dense" / f"seed{seed}"
        if (folder / "metrics.jsonl").is_file() and len((folder / "metrics.jsonl").read_text().splitlines()) >= 6:
            print(f"skip seed {seed}: 6 epochs recorded", flush=True)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        cmd = ["train", "--resume", str(folder), "--no-progress"] if (folder / "checkpoint.pt").is_file() else \
            ["train", *cfg.common_args(), *dense.args, "--seed", str(seed), "--out", str(folder)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "epiprune", *cmd], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            print(f"seed {seed}: {line.rstrip()}", flush=True)
            if line.startswith("epoch   6/"):
                time.sleep(5)  # the checkpoint and scores.jsonl of epoch 6 are written before this line
                proc.terminate()
                break
        proc.wait()


TRAJECTORIES = OUT / "trajectories"


def collect(args: argparse.Namespace) -> None:
    """Copy what the analysis and the tables rest on into small committed files: each dense run's recorded Taylor
    scores (per epoch and per probe, gzipped) and every run's per-epoch metrics (one JSONL per budget)."""
    TRAJECTORIES.mkdir(parents=True, exist_ok=True)
    sources = {"dense": OUT / "resnet20-flops0.3" / "runs" / "dense",
               "dense-channels-last": OUT / "numerics-channels-last" / "runs" / "dense"}
    for name, folder in sources.items():
        for run in sorted(folder.glob("seed*")):
            if not (run / "scores.jsonl").is_file():
                continue
            epochs, probes = read_scores(run)
            rows = [{"kind": r["kind"], "epoch": r["epoch"], **({"step": r["step"]} if "step" in r else {}),
                     "taylor": r["taylor"]} for r in epochs + probes]
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            atomic_write(TRAJECTORIES / f"{name}-{run.name}.scores.jsonl.gz",
                         lambda tmp, data=data: tmp.write_bytes(gzip.compress(data, mtime=0)))
    for budget in (float(b) for b in args.budgets.split(",")):
        folder = OUT / f"resnet20-flops{budget:g}"
        runs, unfinished = finished_runs(folder)
        # compare.md / compare.json of every finished run (each stage of `run` wrote only its own methods)
        write_comparison(folder, runs, {"study": "benchmarks/epi_study.py", "budget": budget,
                                        "unfinished": unfinished}, log=lambda _: None)
        lines = [json.dumps({"method": r["method"], "seed": r["seed"], **row})
                 for r in runs for row in (json.loads(x) for x in
                                           (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines())]
        atomic_write_text(OUT / f"metrics-flops{budget:g}.jsonl", "".join(line + "\n" for line in lines))
    print(f"wrote {TRAJECTORIES} and {OUT}/metrics-flops*.jsonl")


def committed_scores(name: str, seed: int) -> tuple[list[dict], list[dict]] | None:
    """(epoch rows, probe rows) of a dense run's recorded Taylor scores, from the committed trajectories."""
    path = TRAJECTORIES / f"{name}-seed{seed}.scores.jsonl.gz"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    return [r for r in rows if r["kind"] == "epoch"], [r for r in rows if r["kind"] == "probe"]


def replay_epoch(graph_model: torch.nn.Module, example: torch.Tensor, budget: float, rows: list[list], *,
                 window: int, threshold: float, max_dense: int, epi_average: str = "layer", peak: int = 0,
                 smooth: int = 1, min_dense: int | None = None) -> tuple[int | None, str | None, list]:
    """(prune point, trigger, EPI per point) that a policy with these settings picks on recorded Taylor scores."""
    policy = EarlyPruningPolicy(copy.deepcopy(graph_model), example, Budget(flops=budget), window=window,
                                threshold=threshold,
                                max_dense_epochs=max_dense, min_dense_epochs=min_dense, epi_average=epi_average,
                                peak=peak, smooth=smooth, log=lambda _: None, progress=False)
    point = policy.replay([[np.asarray(s) for s in r] for r in rows], lambda _: None)
    return point, policy.trigger, [h.epi for h in policy.history]


VARIANTS = {  # name: (settings, evaluated on epochs or on probes)
    "per-layer, mean of 2 (default)": ({"smooth": 2}, "epoch"),
    "per-layer EPI >= tau": ({}, "epoch"),
    "per-group EPI >= tau (before issue 13)": ({"epi_average": "group"}, "epoch"),
    "per-layer, peak over 5": ({"peak": 5}, "epoch"),
    "per-layer, every 12 steps, r = 12 probes": ({"window": 12}, "probe"),
    "per-layer, every 12 steps, r = 3 probes": ({"window": 3}, "probe"),
}


def _moves(values: list[int]) -> str:
    return "-" if not values else f"{max(values)} / {statistics.fmean(values):.1f}"


def _point_summary(per_seed: list[dict]) -> dict:
    """How far each seed's prune point moves under the perturbations, and the accuracy at those points."""
    def moved(keys: tuple[str, ...]) -> list[int]:
        return [max(abs(p[k]["point"] - p["tau"]["point"]) for k in keys if k in p) for p in per_seed
                if any(k in p for k in keys)]

    top1 = [p["tau"]["top1"] for p in per_seed]
    return {"points": [p["tau"]["point"] for p in per_seed],
            "fallbacks": sum(p["tau"]["trigger"] == "fallback" for p in per_seed),
            "moves_tau": moved(("tau-", "tau+")), "moves_numerics": moved(("numerics",)),
            "top1": top1, "top1_mean": statistics.fmean(t for t in top1 if t is not None) if any(
                t is not None for t in top1) else None,
            "top1_worst_change": max((abs(p[k]["top1"] - p["tau"]["top1"]) for p in per_seed for k in p
                                      if p[k]["top1"] is not None and p["tau"]["top1"] is not None), default=None)}


def _replayed(variant: dict, seeds: list[int], made: dict) -> dict:
    """{seed: (prune epoch of the run made, prune epoch the variant's replay picks at tau)} for seeds with a run."""
    return {s: (made[s]["prune_epoch"], variant["per_seed"][i]["tau"]["point"]) for i, s in enumerate(seeds)
            if s in made}


def analyse(args: argparse.Namespace) -> None:
    model = build_model("resnet20", 1, 10)
    example = torch.zeros(1, 1, 28, 28)
    report: dict = {"meta": {"tau": TAU, "perturbations": f"tau {-DELTA:+g} / {DELTA:+g}; numerics: the dense run "
                             "trained again in channels-last memory format (other kernels, other rounding)",
                             "machine": platform.processor() or platform.machine(), "torch": torch.__version__},
                    "budgets": {}}
    lines = []
    for budget in (float(b) for b in args.budgets.split(",")):
        runs = json.loads((OUT / f"resnet20-flops{budget:g}" / "compare.json").read_text())["runs"]
        grid = {(r["seed"], r["prune_epoch"]): test_top1(r) for r in runs if r["family"] == "fixed"}
        seeds = sorted({r["seed"] for r in runs if r["method"] == "dense"})
        oracle = {r["seed"]: test_top1(r) for r in oracle_runs(runs)}
        epi_runs = {r["seed"]: r for r in runs if r["method"] == "epi-taylor"}
        unsmoothed_runs = {r["seed"]: r for r in runs if r["method"] == "epi-taylor-unsmoothed"}
        result: dict = {"variants": {}}
        lines += [f"\n### ResNet-20, {budget:.0%} FLOPs ({len(seeds)} seeds)\n",
                  "| trigger | unit | prune point at tau, per seed | moves under tau +-0.005 (max / mean) | moves "
                  "under other numerics (max / mean) | test top-1 at tau (%) | vs default, paired (points) | worst "
                  "top-1 change under a perturbation (points) |", "|---|---|---|---|---|---|---|---|"]
        default_top1: list | None = None
        for name, (settings, unit) in VARIANTS.items():
            per_seed = []
            for s in seeds:
                points = {}
                for label, source, tau in (("tau", "dense", TAU), ("tau-", "dense", TAU - DELTA),
                                           ("tau+", "dense", TAU + DELTA), ("numerics", "dense-channels-last", TAU)):
                    recorded = committed_scores(source, s)
                    if recorded is None:
                        continue
                    epochs, probes = recorded
                    rows = epochs if unit == "epoch" else probes
                    base = {"window": 3, "max_dense": 6, **settings}
                    if unit == "probe":  # the same fallback (epoch 6) and earliest point (r + 1 probes)
                        base["max_dense"] = sum(r["epoch"] <= 6 for r in probes)
                        base["min_dense"] = base["window"] + 1
                    point, trigger, epis = replay_epoch(model, example, budget, [r["taylor"] for r in rows],
                                                        threshold=tau, **base)
                    # a probe's accuracy is read at the end of the epoch it falls in (the grid has no finer points)
                    epoch = rows[point - 1]["epoch"] if point else None
                    points[label] = {"point": point, "trigger": trigger, "epoch": epoch,
                                     "fraction": None if point is None else (
                                         epoch / 12 if unit == "epoch" else rows[point - 1]["step"] / (47 * 12)),
                                     "top1": grid.get((s, epoch)), "epi": epis}
                per_seed.append(points)
            summary = _point_summary(per_seed)
            top1 = summary["top1"]
            if default_top1 is None:
                default_top1 = top1
            paired = [t - d for t, d in zip(top1, default_top1, strict=True) if t is not None and d is not None]
            summary["vs_default"] = statistics.fmean(paired) if paired else None
            result["variants"][name] = {**summary, "per_seed": per_seed}
            unit_name = "epoch" if unit == "epoch" else f"{PROBE_EVERY} steps"
            lines.append(f"| {name} | {unit_name} | {summary['points']} ({summary['fallbacks']} fallbacks) | "
                         f"{_moves(summary['moves_tau'])} | {_moves(summary['moves_numerics'])} | "
                         + ("-" if summary["top1_mean"] is None else f"{summary['top1_mean']:.2f}") + " | "
                         + ("-" if summary["vs_default"] is None else f"{summary['vs_default']:+.2f}") + " | "
                         + ("-" if summary["top1_worst_change"] is None else f"{summary['top1_worst_change']:.2f}")
                         + " |")
        # the EPI runs `compare` made must be the grid run of the epoch their rule replays to
        check = _replayed(result["variants"]["per-layer, mean of 2 (default)"], seeds, epi_runs)
        check_unsmoothed = _replayed(result["variants"]["per-layer EPI >= tau"], seeds, unsmoothed_runs)
        result["epi_run_epochs_match_replay"] = all(a == b for a, b in [*check.values(), *check_unsmoothed.values()])
        diffs = [test_top1(epi_runs[s]) - oracle[s] for s in seeds if s in epi_runs and s in oracle]
        if diffs:
            low, high = bootstrap_interval(diffs)
            result["epi_minus_oracle"] = {"diffs": diffs, "mean": statistics.fmean(diffs), "low": low, "high": high}
            lines.append(f"\nEPI-Taylor minus the branched oracle (each seed's grid epoch with the best validation "
                         f"accuracy), test top-1: {statistics.fmean(diffs):+.2f} points, 95% bootstrap interval "
                         f"[{low:+.2f}, {high:+.2f}], per seed {' '.join(f'{d:+.2f}' for d in diffs)}. The EPI runs' "
                         f"prune epochs {'match' if result['epi_run_epochs_match_replay'] else 'DO NOT match'} this "
                         f"replay: {check}" + (f"; the unsmoothed rule's runs (epi-taylor-unsmoothed): "
                                               f"{check_unsmoothed}" if check_unsmoothed else "") + ".")
        report["budgets"][f"flops{budget:g}"] = result
    text = "\n".join(lines) + "\n"
    atomic_write_text(OUT / "trigger_study.md", text)
    atomic_write_text(OUT / "trigger_study.json", json.dumps(report, indent=1, default=str))
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "numerics", "collect", "analyse"))
    parser.add_argument("--budgets", default="0.3,0.5")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=next((str(p) for p in DATA_CANDIDATES if p.is_dir()), None))
    args = parser.parse_args()
    if args.command in ("run", "numerics") and args.data_dir is None:
        raise SystemExit("error: full Fashion-MNIST not found (accepted: --data-dir with its IDX files)")
    {"run": run, "numerics": numerics, "collect": collect, "analyse": analyse}[args.command](args)


if __name__ == "__main__":
    main()
