"""The golden run: what a user sees must not change when the code is rearranged (issue 22).

Runs `epiprune train` (the default network and data, seed 0, 4 epochs) and `epiprune compare` with two methods,
then reduces their metrics to the numbers a user reads (wall-clock times left out: they are not deterministic) and
either writes them (`--write`) or checks them against the committed file, bit for bit (floats compared as written
in the runs' JSON files).

    python scripts/golden_run.py            # check: exit 0 if identical, 1 naming the first difference
    python scripts/golden_run.py --write    # record (only on purpose: when a change is meant to alter results)

About 3 minutes on a 2-core CPU. CPU only (the golden numbers are CPU numerics, torch 2.13.0).
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
TIMING_KEYS = {"config", "device", "table"}  # and every key with "seconds" in it
TRAIN = ["train", "--epochs", "4", "--epi-window", "2", "--seed", "0", "--no-progress"]
COMPARE = ["compare", "--methods", "dense,epi", "--epochs", "4", "--epi-window", "1", "--seeds", "0",
           "--train-subset", "512", "--val-subset", "256"]


def _epiprune(args: list[str]) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
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
            "compare": {"table": _without_timing(table.get("rows", table)),
                        "runs": {str(r.relative_to(work / "compare")): _run_record(r, work) for r in runs}}}


def first_difference(a: object, b: object, where: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{where or '/'}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}/{key}: only in {'golden' if key in a else 'this run'}"
            found = first_difference(a[key], b[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{where}: golden {a!r}, this run {b!r}"


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
    difference = first_difference(json.loads(GOLDEN.read_text()), record)
    print("golden run: identical" if difference is None else f"golden run differs: {difference}")
    return 0 if difference is None else 1


if __name__ == "__main__":
    sys.exit(main())
