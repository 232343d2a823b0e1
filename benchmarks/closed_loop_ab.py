"""One latency closed loop in this process, for before/after comparisons of the loop's code (issue 23's cost).

Prunes a fresh ResNet-20 at initialisation to latency:F through EarlyPruningPolicy with the table at TABLE (an
optimizer built first, as a training run has one before its prune), then times the kept network against a fresh
dense one in CHECK interleaved pairs (an independent check; 0: none) and prints one JSON line. Run it alternately
with each version's source first on PYTHONPATH, in the same minutes, so both see the same load:

    for v in OLD_SRC NEW_SRC; do
        OMP_NUM_THREADS=1 PYTHONPATH=$v python benchmarks/closed_loop_ab.py 0.5 TABLE 7 $v
    done

Rows of 2026-11-30: benchmarks/results/latency-closed-loop/cost_under_load.json (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from epiprune import Budget, EarlyPruningPolicy
from epiprune.costs.timing import LatencySettings, paired_ratio, step_runner
from epiprune.models import build_model

INPUT = (1, 28, 28)


def main(fraction: float, table: str, check_pairs: int, tag: str) -> dict:
    """The loop's outcome, seconds, pairs per iteration and the independent check (ratios of the dense step)."""
    torch.manual_seed(0)
    model = build_model("resnet20", INPUT[0], 10)
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # torch.optim's first use imports for seconds
    settings = LatencySettings(batch_size=128)
    load = os.getloadavg()[0]
    policy = EarlyPruningPolicy(model, torch.zeros(1, *INPUT), Budget(latency=fraction), importance="magnitude",
                                latency=settings, latency_table=table, prune_at=0, log=lambda _: None,
                                progress=False)
    start = time.perf_counter()
    policy.prune_now()
    prune_s = time.perf_counter() - start
    r = policy.latency_loop.result
    runner = step_runner(INPUT, settings)
    check = paired_ratio(runner(build_model("resnet20", INPUT[0], 10)), runner(policy.model), check_pairs) \
        if check_pairs else None
    return {"tag": tag, "F": fraction, "status": r.status, "iterations": len(r.iterations),
            "loop_s": round(r.seconds, 1), "prune_s": round(prune_s, 1), "measured": round(r.measured_ratio, 3),
            "pairs": [getattr(it, "pairs", 5) for it in r.iterations],  # older loops: always 5
            "first_measured": round(r.iterations[0].measured_ratio, 3),
            "flops": round(r.iterations[r.chosen].flops_ratio, 3),
            "check_ratio": None if check is None else round(check.ratio, 3),
            "check_unc": None if check is None else round(check.uncertainty, 3),
            "dense_ms": round(r.iterations[0].dense_ms), "load": [round(load, 2), round(os.getloadavg()[0], 2)]}


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4])), flush=True)
