"""Issue 20's 6-epoch target, measured on recorded runs: does EPI on the step clock fire (not the fallback) in a
6-epoch schedule, at flops 0.5, 0.3 and 0.2, with tau 0.944 and with the auto threshold?

Input: dense 6-epoch runs on the step clock that recorded every probe (`--indicator none --epi-every 12
--record-scores`, the settings of benchmarks/epi_study.py with --epochs 6; 47 steps per epoch, so 12 is what
`--epi-every auto` gives this schedule). Each run's recorded probes (interval and first-half Taylor scores) are
replayed through a fresh policy per budget and threshold (EarlyPruningPolicy.replay_probes: the decision step()
would have taken). Trains nothing; says when the rule fires, not how accurate a prune there is.

    python benchmarks/step_clock_short_schedule.py                  # the committed runs (results/step-clock/dense6)
    python benchmarks/step_clock_short_schedule.py RUN_DIR [RUN_DIR ...] [--out JSON]

The committed runs (seeds 5-9, made 2026-11-30 with OMP_NUM_THREADS=1 beside the test suite) keep each run's
summary.json and its scores.jsonl gzipped, as `seed<k>.summary.json` and `seed<k>.scores.jsonl.gz`.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import torch

from epiprune.costs.budget import Budget
from epiprune.files import atomic_write_text
from epiprune.models import make_model
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.policy.replay import RecordedProbe

COMMITTED = Path(__file__).parent / "results" / "step-clock" / "dense6"


def recorded(run: Path) -> tuple[dict, list[dict]]:
    """(summary, probe rows) of a run folder, or of a committed run named by its prefix (results/.../seed5)."""
    if run.is_dir():
        summary_path, scores_path = run / "summary.json", run / "scores.jsonl"
        lines = scores_path.read_text().splitlines()
    else:
        summary_path = run.with_name(run.name + ".summary.json")
        with gzip.open(run.with_name(run.name + ".scores.jsonl.gz"), "rt") as f:
            lines = f.read().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return json.loads(summary_path.read_text()), [r for r in rows if r.get("kind") == "probe"]

BUDGETS = (0.5, 0.3, 0.2)
THRESHOLDS = (0.944, "auto")


def replay(folder: Path, budget: float, threshold: float | str) -> dict:
    summary, rows = recorded(folder)
    config = summary["config"]
    every, steps_per_epoch = summary["epi_every"], summary["steps_per_epoch"]
    probes = [RecordedProbe(r["step"], [np.asarray(s) for s in r["taylor"]],
                            [np.asarray(s) for s in r["taylor_half"]]) for r in rows]
    model = make_model(config["model"], 1, 10, {}, (28, 28))
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 28, 28), Budget("flops", budget), threshold=threshold,
                                epi_every=every, steps_per_epoch=steps_per_epoch,
                                max_dense_epochs=config["epochs"] / 2, log=lambda _: None, progress=False)
    step = policy.replay_probes(probes, lambda _: None)
    earliest = (policy.rule.window + policy.rule.smooth) * every
    return {"run": folder.name, "seed": config["seed"], "budget": budget, "threshold": threshold, "prune_step": step,
            "prune_epochs": None if step is None else round(step / steps_per_epoch, 2),
            "trigger": policy.history[-1].decision if step is not None else None, "earliest_step": earliest,
            "noise_mean": float(np.mean([r.noise for r in policy.history if r.noise is not None]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path,
                        default=[COMMITTED / f"seed{seed}" for seed in range(5, 10)])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "step-clock" / "short_schedule.json")
    args = parser.parse_args()
    rows = [replay(run, b, t) for b in BUDGETS for t in THRESHOLDS for run in args.runs]
    print("| budget | threshold | prune step per seed (epochs) | fired by EPI | at the earliest probe |")
    print("|---|---|---|---|---|")
    for b in BUDGETS:
        for t in THRESHOLDS:
            mine = [r for r in rows if r["budget"] == b and r["threshold"] == t]
            steps = ", ".join(f"{r['prune_step']} ({r['prune_epochs']})" for r in mine)
            fired = sum(r["trigger"] == "epi" for r in mine)
            earliest = sum(r["prune_step"] == r["earliest_step"] for r in mine)
            print(f"| flops {b} | {t} | {steps} | {fired}/{len(mine)} | {earliest}/{len(mine)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
