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
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

from epiprune.cli import _int_list
from epiprune.evidence.compare import compare
from epiprune.evidence.runs import CompareConfig, finished_runs
from epiprune.evidence.table import bootstrap_interval
from epiprune.files import atomic_write, atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from step_clock_short_schedule import replay as replay_recorded  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "step-clock-study"
DATA_CANDIDATES = [Path("/usr/share/datasets/fashion-mnist"), ROOT.parent / "shared" / "data" / "fashion-mnist"]
TAU = 0.944
TRAJECTORIES = OUT / "trajectories"
CONTROL_STEP = 120  # the earliest probe the rule can fire at: probe (window 3 + smoothing 2) x 24 steps


def config(budget: float, seeds: list[int], jobs: int, data_dir: str, out: Path, **overrides: object) -> CompareConfig:
    settings = dict(model="resnet20", data="fashion-mnist", data_dir=data_dir, train_subset=6000, val_subset=5000,
                    holdout=2000, data_seed=0, epochs=12, budget=f"flops:{budget}", seeds=seeds, jobs=jobs,
                    epi_every="auto", families=["dense", "init", "fixed", "epi"], out=str(out))
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
            names = [m.name for m in cfg.methods() if m.family != "dense"
                     and m.name not in ("epi-magnitude", "init-random")] + ["dense"]
            compare(config(budget, [seed], args.jobs, args.data_dir, budget_folder(budget), only=names), log=log)
            print(f"budget {budget:g} seed {seed}: {time.time() - start:.0f} s", flush=True)


def replayed_step(seed: int, budget: float, threshold: float | str) -> tuple[int | None, str | None]:
    """(prune step, trigger) a policy with this threshold takes on the seed's dense run's recorded probes (the
    committed trajectory `collect` writes, in step_clock_short_schedule's committed-run format)."""
    row = replay_recorded(TRAJECTORIES / f"dense-seed{seed}", budget, threshold)
    return row["prune_step"], row["trigger"]


def collect(args: argparse.Namespace) -> None:
    """The committed data: every finished run's summary (runs.jsonl) and per-epoch metrics (metrics.jsonl), with
    its budget, method and seed; each dense run's summary and recorded probes (trajectories/, gzipped)."""
    TRAJECTORIES.mkdir(parents=True, exist_ok=True)
    summaries, metrics = [], []
    for budget in (float(b) for b in args.budgets.split(",")):
        runs, _ = finished_runs(budget_folder(budget))
        for r in runs:
            if r["method"] == "dense" and budget != float(args.budgets.split(",")[0]):
                continue  # one dense run per seed, shared by every budget
            tag = {"budget": None if r["method"] == "dense" else budget, "method": r["method"], "seed": r["seed"]}
            # the tag's budget (a number; None for the shared dense run) replaces the summary's budget text
            summaries.append({**{k: v for k, v in r.items() if k not in ("method", "seed", "run_dir")}, **tag})
            metrics += [{**tag, **json.loads(line)} for line in
                        (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines() if line.strip()]
            if r["method"] == "dense":
                folder = Path(r["run_dir"])
                atomic_write_text(TRAJECTORIES / f"dense-seed{r['seed']}.summary.json",
                                  (folder / "summary.json").read_text())
                data = gzip.compress((folder / "scores.jsonl").read_bytes(), mtime=0)
                atomic_write(TRAJECTORIES / f"dense-seed{r['seed']}.scores.jsonl.gz",
                             lambda tmp, data=data: tmp.write_bytes(data))
    atomic_write_text(OUT / "runs.jsonl", "".join(json.dumps(r) + "\n" for r in summaries))
    atomic_write_text(OUT / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in metrics))
    print(f"wrote {len(summaries)} runs to {OUT / 'runs.jsonl'}, their epochs to metrics.jsonl, {TRAJECTORIES}")


def committed_runs() -> list[dict]:
    return [json.loads(line) for line in (OUT / "runs.jsonl").read_text().splitlines() if line.strip()]


def top1(run: dict) -> float:
    """Test top-1 (%): the split that chooses nothing."""
    return 100 * run["final_test_top1"]


def seed_rows(budget: float) -> list[dict]:
    """Per seed of a budget's finished runs: the oracle (grid probe with the best validation top-1), EPI with tau
    (trained) and auto (replayed, read off the grid), the earliest-probe control (probe 5), their test top-1 and
    training cost (FLOPs of the run over the dense run's)."""
    runs = committed_runs()
    by = {(r["method"], r["seed"]): r for r in runs if r["budget"] in (None, budget)}
    rows = []
    for seed in sorted(s for (m, s) in by if m == "dense"):
        grid = {r["prune_step"]: r for (m, s), r in by.items() if s == seed and m.startswith("fixed-")}
        epi = by.get(("epi-taylor", seed))
        if len(grid) < 11 or epi is None:
            continue  # an unfinished seed: reported as missing, not as a partial oracle
        dense = by[("dense", seed)]
        oracle = max(grid.values(), key=lambda r: r["final_val_top1"])
        auto_step, auto_trigger = replayed_step(seed, budget, "auto")
        auto = grid.get(auto_step) or (epi if epi["prune_step"] == auto_step else None)
        twin = grid.get(epi["prune_step"])
        rows.append({
            "budget": budget, "seed": seed, "dense": top1(dense), "oracle_step": oracle["prune_step"],
            "oracle": top1(oracle), "oracle_cost": oracle["train_flops_ratio"],
            "tau_step": epi["prune_step"], "tau_trigger": epi["trigger"], "tau": top1(epi),
            "tau_cost": epi["train_flops_ratio"],
            "tau_equals_grid_run": None if twin is None else top1(twin) == top1(epi),
            "auto_step": auto_step, "auto_trigger": auto_trigger,
            "auto": None if auto is None else top1(auto),
            "auto_cost": None if auto is None else auto["train_flops_ratio"],
            "control_step": CONTROL_STEP, "control": top1(grid[CONTROL_STEP]),
            "control_cost": grid[CONTROL_STEP]["train_flops_ratio"],
            # prune at initialisation (trained in full, not branched): None until its run has finished
            **{name.replace("-", "_"): None if (name, seed) not in by else top1(by[(name, seed)])
               for name in ("init-magnitude", "init-taylor")},
            "grid": {step: round(top1(r), 2) for step, r in sorted(grid.items())},
            "grid_val": {step: round(100 * r["final_val_top1"], 2) for step, r in sorted(grid.items())}})
    return rows


def paired(rows: list[dict], a: str, b: str) -> dict:
    diffs = [r[a] - r[b] for r in rows if r[a] is not None and r[b] is not None]
    low, high = bootstrap_interval(diffs)
    return {"mean": statistics.fmean(diffs) if diffs else None, "low": low, "high": high, "seeds": len(diffs)}


def replay(args: argparse.Namespace) -> None:
    """When the rule fires on each seed's trained dense run (its recorded probes), per budget and threshold: the
    prune step, and how many seeds fired at the earliest probe the rule allows (no training: the decision only)."""
    seeds = sorted(int(p.name.split("seed")[1].split(".")[0]) for p in TRAJECTORIES.glob("dense-seed*.summary.json"))
    result = []
    print("| budget | threshold | prune step per seed (seeds " + ", ".join(map(str, seeds)) + ") | fired by EPI | "
          f"at the earliest probe (step {CONTROL_STEP}) |\n|---|---|---|---|---|")
    for budget in (float(b) for b in args.budgets.split(",")):
        for threshold in (TAU, "auto"):
            picks = [replayed_step(seed, budget, threshold) for seed in seeds]
            result.append({"budget": budget, "threshold": threshold, "seeds": seeds,
                           "steps": [p[0] for p in picks], "triggers": [p[1] for p in picks]})
            print(f"| flops {budget:g} | {threshold} | {', '.join(str(p[0]) for p in picks)} | "
                  f"{sum(p[1] == 'epi' for p in picks)}/{len(picks)} | "
                  f"{sum(p[0] == CONTROL_STEP for p in picks)}/{len(picks)} |")
    atomic_write_text(OUT / "replay.json", json.dumps(result, indent=1))


def table(args: argparse.Namespace) -> None:
    report = {}
    for budget in (float(b) for b in args.budgets.split(",")):
        rows = seed_rows(budget)
        if not rows:
            print(f"flops {budget:g}: no finished seed")
            continue
        report[f"{budget:g}"] = {"seeds": rows, "paired": {
            f"{a} - {b}": paired(rows, a, b) for a, b in
            (("tau", "oracle"), ("auto", "oracle"), ("tau", "control"), ("auto", "control"), ("oracle", "control"),
             ("tau", "dense"), ("tau", "init_magnitude"), ("auto", "init_magnitude"), ("tau", "init_taylor"),
             ("auto", "init_taylor"))}}
        print(f"\n### flops {budget:g}: {len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)})\n")
        print("| seed | oracle probe (step) | oracle | EPI tau step (trigger) | EPI tau | EPI auto step (trigger) | "
              "EPI auto | control (step 120) | init magnitude / taylor | cost oracle / tau / auto / control |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['seed']} | {r['oracle_step']} | {r['oracle']:.2f} | {r['tau_step']} ({r['tau_trigger']}) | "
                  f"{r['tau']:.2f} | {r['auto_step']} ({r['auto_trigger']}) | "
                  f"{'-' if r['auto'] is None else format(r['auto'], '.2f')} | {r['control']:.2f} | "
                  + " / ".join("-" if r[k] is None else format(r[k], ".2f") for k in ("init_magnitude", "init_taylor"))
                  + " | "
                  f"{r['oracle_cost']:.3f} / {r['tau_cost']:.3f} / "
                  f"{'-' if r['auto_cost'] is None else format(r['auto_cost'], '.3f')} / {r['control_cost']:.3f} |")
        same = [r["tau_equals_grid_run"] for r in rows if r["tau_equals_grid_run"] is not None]
        print(f"\nEPI tau's trained run equals the grid run of its probe (test top-1): {sum(same)}/{len(same)} seeds")
        print("\n| paired difference (test top-1 points) | mean | 95% bootstrap interval | seeds |\n|---|---|---|---|")
        for name, p in report[f"{budget:g}"]["paired"].items():
            if p["mean"] is not None:
                print(f"| {name} | {p['mean']:+.2f} | [{p['low']:+.2f}, {p['high']:+.2f}] | {p['seeds']} |")
    atomic_write_text(OUT / "study.json", json.dumps(report, indent=1))
    print(f"\nwrote {OUT / 'study.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "collect", "replay", "table"])
    parser.add_argument("--budgets", default="0.3,0.5,0.2")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=next((str(p) for p in DATA_CANDIDATES if p.is_dir()), None))
    args = parser.parse_args()
    if args.data_dir is None:
        sys.exit("no Fashion-MNIST folder found (accepted: --data-dir with its IDX files)")
    {"run": run, "collect": collect, "replay": replay, "table": table}[args.action](args)


if __name__ == "__main__":
    main()
