"""When would EPI have fired on a compare's dense transformer runs, with tau and with `--epi-threshold auto`?

Replays each dense run's recorded probes (the committed `trajectories/dense-seed<k>.scores.jsonl.gz` that
benchmarks/collect_compare.py writes, and the run's summary in `runs.jsonl`) through a fresh EarlyPruningPolicy of
the same model, budget and clock (EarlyPruningPolicy.replay_probes: the decision step() would have taken). Trains
nothing: it says when the rule fires, not how good a prune there is (the compare's grid says that for its points).

    python benchmarks/transformer_replay.py FOLDER [--thresholds 0.944,auto] [--out FOLDER/replay.json]
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
from epiprune.models import build_model
from epiprune.policy.early_pruning import EarlyPruningPolicy
from epiprune.policy.replay import RecordedProbe


def replay(summary: dict, scores: Path, threshold: float | str) -> dict:
    """The prune step and trigger a policy with `threshold` takes on one dense run's recorded probes."""
    config = summary["config"]
    with gzip.open(scores, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    probes = [RecordedProbe(r["step"], [np.asarray(s) for s in r["taylor"]], [np.asarray(s) for s in r["taylor_half"]])
              for r in rows if r.get("kind") == "probe"]
    torch.manual_seed(0)
    if config["data"] == "text":
        model, example = build_model(config["model"], 1, 256), torch.zeros(1, config["seq_len"], dtype=torch.long)
    else:
        model, example = build_model(config["model"], 1, 10, (28, 28)), torch.zeros(1, 1, 28, 28)
    kind, fraction = config["budget"].split(":")
    policy = EarlyPruningPolicy(model, example, Budget(kind, float(fraction)), threshold=threshold,
                                epi_every=summary["epi_every"], steps_per_epoch=summary["steps_per_epoch"],
                                max_dense_epochs=config["epochs"] / 2, log=lambda _: None, progress=False)
    step = policy.replay_probes(probes, lambda _: None)
    return {"seed": config["seed"], "threshold": threshold, "prune_step": step,
            "prune_epochs": None if step is None else round(step / summary["steps_per_epoch"], 3),
            "trigger": policy.history[-1].decision if step is not None else None,
            "noise_mean": float(np.mean([r.noise for r in policy.history if r.noise is not None]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--thresholds", default="0.944,auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dense = [json.loads(line) for line in (args.folder / "runs.jsonl").read_text().splitlines()
             if line.strip() and json.loads(line)["method"] == "dense"]
    thresholds = [t if t == "auto" else float(t) for t in args.thresholds.split(",")]
    rows = [replay(s, args.folder / "trajectories" / f"dense-seed{s['seed']}.scores.jsonl.gz", t)
            for t in thresholds for s in sorted(dense, key=lambda s: s["seed"])]
    print("| threshold | prune step (epochs) per seed | fired by EPI |\n|---|---|---|")
    for t in thresholds:
        mine = [r for r in rows if r["threshold"] == t]
        steps = ", ".join(f"{r['prune_step']} ({r['prune_epochs']}, {r['trigger']})" for r in mine)
        print(f"| {t} | {steps} | {sum(r['trigger'] == 'epi' for r in mine)}/{len(mine)} |")
    atomic_write_text(args.out or args.folder / "replay.json", json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
