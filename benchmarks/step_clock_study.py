"""Issue 20's trained study on the step clock: ResNet-20 on the Fashion-MNIST subset of issue 13 (6,000 training
images, 2,000 held out as the validation split that chooses, 5,000 test images that choose nothing), 12 epochs,
`--epi-every auto` (24 steps between probes at 47 steps per epoch: the fallback at probe 12, step 288).

    python benchmarks/step_clock_study.py run [--budgets 0.3,0.5,0.2] [--seeds 0-4] [--jobs 2]
    python benchmarks/step_clock_study.py table [--budgets ...]     # the paired tables, from the finished runs

`run` is `epiprune compare --epi-every auto` per budget and seed: the seed's dense run (recording every probe,
shared by every budget), then the branched oracle grid (every probe before the fallback: probes 1-11) and EPI with
the paper's tau (a real branched run). Seeds are completed one at a time (dense runs of all seeds first), so an
interrupted study leaves whole seeds; finished runs are reused.

What is *not* trained but read off exactly (say so wherever it is reported):
- EPI with `--epi-threshold auto`: its prune step is replayed from the dense run's recorded probes
  (EarlyPruningPolicy.replay_probes, the decision step() takes: tests/test_step_branching.py); a branched run that
  prunes at that probe is the grid run of the same probe (the threshold changes nothing else in training). When it
  fires at a probe outside the grid (the fallback), that run is trained as a branch.
- The control "prune at the earliest probe the rule could fire" (probe 5, step 120) is the grid run `fixed-2.55`.
The table checks the identity it rests on: each seed's trained EPI-tau run against the grid run of its probe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from epiprune.cli import _int_list
from epiprune.costs.budget import Budget
from epiprune.evidence.compare import compare
from epiprune.evidence.runs import CompareConfig, finished_runs
from epiprune.models import make_model
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.policy.replay import RecordedProbe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "step-clock-study"
DATA_CANDIDATES = [Path("/usr/share/datasets/fashion-mnist"), ROOT.parent / "shared" / "data" / "fashion-mnist"]
TAU = 0.944


def config(budget: float, seeds: list[int], jobs: int, data_dir: str, out: Path, **overrides: object) -> CompareConfig:
    settings = dict(model="resnet20", data="fashion-mnist", data_dir=data_dir, train_subset=6000, val_subset=5000,
                    holdout=2000, data_seed=0, epochs=12, budget=f"flops:{budget}", seeds=seeds, jobs=jobs,
                    epi_every="auto", families=["dense", "fixed", "epi"], out=str(out))
    return CompareConfig(**{**settings, **overrides})


def budget_folder(budget: float) -> Path:
    return OUT / f"resnet20-flops{budget:g}"


def share_dense(budgets: list[float]) -> None:
    """One dense trajectory per seed serves every budget: the later budgets' runs/dense links to the first's."""
    first = budget_folder(budgets[0])
    for budget in budgets[1:]:
        runs = budget_folder(budget) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        if not (runs / "dense").exists():
            (runs / "dense").symlink_to(os.path.relpath(first / "runs" / "dense", runs))


def run(args: argparse.Namespace) -> None:
    seeds = _int_list(args.seeds, "seeds")
    budgets = [float(b) for b in args.budgets.split(",")]
    share_dense(budgets)
    log = lambda m: print(m, flush=True)  # noqa: E731
    start = time.time()
    compare(config(budgets[0], seeds, args.jobs, args.data_dir, budget_folder(budgets[0]), only=["dense"]), log=log)
    print(f"dense runs: {time.time() - start:.0f} s", flush=True)
    for budget in budgets:
        for seed in seeds:
            start = time.time()
            cfg = config(budget, [seed], args.jobs, args.data_dir, budget_folder(budget))
            names = [m.name for m in cfg.methods() if m.family != "dense"] + ["dense"]
            compare(config(budget, [seed], args.jobs, args.data_dir, budget_folder(budget), only=names), log=log)
            print(f"budget {budget:g} seed {seed}: {time.time() - start:.0f} s", flush=True)


def replayed_step(dense: Path, budget: float, threshold: float | str) -> tuple[int | None, str | None]:
    """(prune step, trigger) a policy with this threshold takes on a dense run's recorded probes."""
    summary = json.loads((dense / "summary.json").read_text())
    rows = [json.loads(line) for line in (dense / "scores.jsonl").read_text().splitlines() if line.strip()]
    probes = [RecordedProbe(r["step"], [np.asarray(s) for s in r["taylor"]], [np.asarray(s) for s in r["taylor_half"]])
              for r in rows if r.get("kind") == "probe"]
    config = summary["config"]
    policy = EarlyPruningPolicy(make_model(config["model"], 1, 10, {}, (28, 28)), torch.zeros(1, 1, 28, 28),
                                Budget("flops", budget), threshold=threshold, epi_every=summary["epi_every"],
                                steps_per_epoch=summary["steps_per_epoch"], max_dense_epochs=config["epochs"] / 2,
                                log=lambda _: None, progress=False)
    step = policy.replay_probes(probes, lambda _: None)
    return step, (policy.history[-1].decision if step is not None else None)


def table(args: argparse.Namespace) -> None:
    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        runs, _ = finished_runs(budget_folder(budget))
        by = {(r["method"], r["seed"]): r for r in runs}
        seeds = sorted({s for (m, s) in by if m == "dense"})
        for seed in seeds:
            dense = by.get(("dense", seed))
            grid = {r["prune_step"]: r for (m, s), r in by.items() if s == seed and m.startswith("fixed-")}
            if dense is None or not grid:
                continue
            oracle = max(grid.values(), key=lambda r: r["val_top1"])
            row = {"budget": budget, "seed": seed, "dense_test": dense["test_top1"], "oracle": oracle["method"],
                   "oracle_test": oracle["test_top1"], "oracle_cost": oracle["cost_ratio"],
                   "grid": {r["prune_step"]: r["test_top1"] for r in grid.values()}}
            epi = by.get(("epi-taylor", seed))
            if epi is not None:
                row.update(tau_step=epi["prune_step"], tau_trigger=epi["trigger"], tau_test=epi["test_top1"],
                           tau_cost=epi["cost_ratio"],
                           tau_same_as_grid=(grid.get(epi["prune_step"], {}).get("test_top1") == epi["test_top1"]))
            step, trigger = replayed_step(Path(dense["run_dir"]), budget, "auto")
            at = grid.get(step) or (epi if epi is not None and epi["prune_step"] == step else None)
            row.update(auto_step=step, auto_trigger=trigger, auto_test=None if at is None else at["test_top1"],
                       auto_cost=None if at is None else at["cost_ratio"])
            control = grid.get(120)
            row.update(control_test=None if control is None else control["test_top1"])
            rows.append(row)
    print(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("--budgets", default="0.3,0.5,0.2")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=next((str(p) for p in DATA_CANDIDATES if p.is_dir()), None))
    args = parser.parse_args()
    if args.data_dir is None:
        sys.exit("no Fashion-MNIST folder found (accepted: --data-dir with its IDX files)")
    {"run": run, "table": table}[args.action](args)


if __name__ == "__main__":
    main()
