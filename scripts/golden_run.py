"""The golden run: what a user sees must not change when the code is rearranged (issue 22).

Runs `epiprune train` (the default network and data, seed 0, 4 epochs) and `epiprune compare` with two methods,
then reduces their metrics to the numbers a user reads (wall-clock times left out: they are not deterministic) and
either writes them (`--write`) or checks them against the committed file, bit for bit (floats compared as written
in the runs' JSON files).

    python scripts/golden_run.py            # check: exit 0 if identical, 1 naming the first difference
    python scripts/golden_run.py --write    # record (only on purpose: when a change is meant to alter results)

About 3 minutes on a 2-core CPU. CPU only (the golden numbers are CPU numerics, torch 2.13.0, with THREADS intra-op
threads: the runs are started with OMP_NUM_THREADS=THREADS whatever the caller set, since one thread gives other
sums in the last bits; the fixture was recorded on a 2-core machine at torch's default, 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden_run.json"
# left out: wall-clock keys (every key with "seconds" in it), the run's own config (its --out is a temporary
# folder), the device, and the latency table's path
TIMING_KEYS = {"config", "device", "table"}
THREADS = 2  # torch's intra-op threads when the fixture was recorded
TRAIN = ["train", "--epochs", "4", "--epi-window", "2", "--seed", "0", "--no-progress"]
COMPARE = ["compare", "--methods", "dense,epi", "--epochs", "4", "--epi-window", "1", "--seeds", "0",
           "--train-subset", "512", "--val-subset", "256"]


def _epiprune(args: list[str]) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(THREADS)}
    subprocess.run([sys.executable, "-m", "epiprune", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def _without_timing(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING_KEYS and "seconds" not in k}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _run_record(folder: Path, work: Path) -> dict:
    """A run's metrics and summary without wall-clock keys; paths inside the temporary folder start with <work>."""
    def read(name: str) -> str:
        return (folder / name).read_text().replace(str(work), "<work>")

    metrics = [json.loads(line) for line in read("metrics.jsonl").splitlines()]
    return {"metrics": _without_timing(metrics), "summary": _without_timing(json.loads(read("summary.json")))}


def golden_record(work: Path) -> dict:
    """Run both commands in `work` and return the deterministic part of what they wrote."""
    _epiprune([*TRAIN, "--out", str(work / "train")])
    _epiprune([*COMPARE, "--out", str(work / "compare")])
    table = json.loads((work / "compare" / "compare.json").read_text())
    runs = sorted(p.parent for p in (work / "compare").glob("runs/*/seed*/summary.json"))
    return {"train": _run_record(work / "train", work),
            "compare": {"rows": _without_timing(table["rows"]), "paired": _without_timing(table["paired"]),
                        "runs": {str(r.relative_to(work / "compare")): _run_record(r, work) for r in runs}}}


def differences(a: object, b: object, where: str = "", limit: int = 10) -> list[str]:
    """Where `a` (golden) and `b` (this run) differ, up to `limit` places, as 'path: golden ..., this run ...'."""
    found: list[str] = []

    def walk(x: object, y: object, at: str) -> None:
        if len(found) >= limit:
            return
        if type(x) is not type(y):
            found.append(f"{at or '/'}: golden {x!r}, this run {y!r}")
        elif isinstance(x, dict):
            for key in sorted(set(x) | set(y)):
                if key not in x or key not in y:
                    found.append(f"{at}/{key}: only in {'golden' if key in x else 'this run'}")
                else:
                    walk(x[key], y[key], f"{at}/{key}")
        elif isinstance(x, list):
            if len(x) != len(y):
                found.append(f"{at}: {len(x)} vs {len(y)} entries")
            else:
                for i, (u, v) in enumerate(zip(x, y, strict=True)):
                    walk(u, v, f"{at}[{i}]")
        elif x != y:
            found.append(f"{at}: golden {x!r}, this run {y!r}")

    walk(a, b, where)
    return found[:limit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the golden file instead of checking it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        record = golden_record(Path(tmp))
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")
        return 0
    found = differences(json.loads(GOLDEN.read_text()), record)
    print("golden run: identical" if not found else "golden run differs:\n  " + "\n  ".join(found))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
