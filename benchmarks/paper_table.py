"""Reproduce docs/RESULTS.md's comparison table: `epiprune compare` on full Fashion-MNIST with ResNet-20 and
ResNet-56 at 50% and 30% FLOPs, on a schedule that fits a 2-core CPU (a training subset, few epochs: stated in
the output). Prints a combined table and the targets of issue 3, and writes JSON + markdown.

    python benchmarks/paper_table.py [--configs resnet20@0.5,resnet20@0.3,resnet56@0.5,resnet56@0.3]
                                     [--data-dir DIR] [--train-subset 6000] [--val-subset 5000] [--epochs 12]
                                     [--seeds 0] [--jobs 2] [--out benchmarks/results/paper]
Finished runs are reused, so an interrupted benchmark continues where it stopped.

    python benchmarks/paper_table.py --from-json     # trains nothing
rebuilds every committed paper_table_*.{json,md} in --out from the runs recorded in each configuration's
compare.json, with today's table code (e.g. the per-seed oracle, which replaced the best-mean-epoch oracle these
files were first written with); each file's meta (what was run, on what) is kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from epiprune.evidence.compare import compare
from epiprune.evidence.runs import CompareConfig
from epiprune.evidence.table import aggregate, markdown_table
from epiprune.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = [Path("/usr/share/datasets/fashion-mnist"), ROOT.parent / "shared" / "data" / "fashion-mnist"]


def targets(rows: list[dict]) -> dict:
    """Issue 3's targets, evaluated on one configuration's rows."""
    by = {r["method"]: r for r in rows}
    epi, oracle = by.get("epi-taylor"), next((r for r in rows if r["family"] == "oracle"), None)
    inits = [r for r in rows if r["family"] == "init"]
    result = {}
    if epi and oracle:
        result["epi_minus_oracle_top1"] = epi["top1_mean"] - oracle["top1_mean"]
        result["epi_epoch"], result["oracle_epoch"] = epi["prune_epoch"], oracle["prune_epoch"]
        result["oracle_cost_vs_epi"] = oracle["train_flops"] / epi["train_flops"]
    if epi and inits:
        result["epi_minus_best_init_top1"] = epi["top1_mean"] - max(r["top1_mean"] for r in inits)
    if epi and epi.get("train_flops_vs_dense") is not None:
        result["epi_cost_vs_dense"] = epi["train_flops_vs_dense"]
    return result


def section(spec: str, rows: list[dict], t: dict) -> str:
    model, fraction = spec.split("@")
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()}
    return f"### {model}, {float(fraction):.0%} FLOPs\n\n{markdown_table(rows)}\ntargets: {json.dumps(rounded)}\n"


def rebuild_from_json(out: Path) -> None:
    """Every paper_table_*.json in `out`, its rows and targets recomputed from each configuration's compare.json."""
    for path in sorted(out.glob("paper_table*.json")):
        data = json.loads(path.read_text())
        suffix = "-warmup1" if "warmup" in path.stem else ""
        sections = []
        for result in data["results"]:
            model, fraction = result["config"].split("@")
            runs = json.loads((out / f"{model}-flops{fraction}{suffix}" / "compare.json").read_text())["runs"]
            result["rows"] = aggregate(runs)
            result["targets"] = targets(result["rows"])
            sections.append(section(result["config"], result["rows"], result["targets"]))
        data["meta"]["rebuilt"] = "rows and targets recomputed from compare.json by --from-json (per-seed oracle)"
        atomic_write_text(path, json.dumps(data, indent=1, default=str))
        atomic_write_text(path.with_suffix(".md"), "\n".join(sections))
        print(f"rebuilt {path.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="resnet20@0.5,resnet20@0.3,resnet56@0.5,resnet56@0.3")
    parser.add_argument("--data-dir", default=next((str(p) for p in DATA_CANDIDATES if p.is_dir()), None))
    parser.add_argument("--train-subset", type=int, default=6000)
    parser.add_argument("--val-subset", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--warmup-epochs", type=float, default=0.0,
                        help="linear LR warm-up of every run; results go to <model>-flops<f>-warmup<w>/")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--methods", default="dense,init,tpf,fixed,earlybird,epi")
    parser.add_argument("--grid", default=None, help="fixed prune epochs, e.g. 2,4,6 (default: 1..epochs/2)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "paper"))
    parser.add_argument("--from-json", action="store_true", help="rebuild the committed tables (no training)")
    args = parser.parse_args()
    if args.from_json:
        rebuild_from_json(Path(args.out))
        return
    if args.data_dir is None:
        raise SystemExit("error: full Fashion-MNIST not found (accepted: --data-dir with its IDX files)")
    results, sections = [], []
    suffix = f"-warmup{args.warmup_epochs:g}" if args.warmup_epochs else ""
    for spec in args.configs.split(","):
        model, fraction = spec.split("@")
        cfg = CompareConfig(model=model, data="fashion-mnist", data_dir=args.data_dir, train_subset=args.train_subset,
                            val_subset=args.val_subset, epochs=args.epochs, budget=f"flops:{fraction}",
                            warmup_epochs=args.warmup_epochs,
                            seeds=[int(s) for s in args.seeds.split(",")], jobs=args.jobs,
                            families=args.methods.split(","),
                            grid=[int(g) for g in args.grid.split(",")] if args.grid else None,
                            out=str(Path(args.out) / f"{model}-flops{fraction}{suffix}"))
        start = time.time()
        rows = compare(cfg, log=lambda msg: print(msg, flush=True))
        t = targets(rows)
        results.append({"config": spec, "rows": rows, "targets": t, "wall_seconds": time.time() - start})
        sections.append(section(spec, rows, t))
    meta = {"machine": platform.machine(), "processor": platform.processor(), "cores": torch.get_num_threads(),
            "torch": torch.__version__, "data": "fashion-mnist (full test set subset for validation)",
            "train_subset": args.train_subset, "val_subset": args.val_subset, "epochs": args.epochs,
            "seeds": args.seeds, "command": "python benchmarks/paper_table.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "data_dir"))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "paper_table" if args.configs == parser.get_default("configs") else "paper_table_" + "_".join(
        c.replace("@", "-") for c in args.configs.split(","))
    name += suffix.replace("-", "_")
    atomic_write_text(out / f"{name}.json", json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    text = "\n".join(sections)
    atomic_write_text(out / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
