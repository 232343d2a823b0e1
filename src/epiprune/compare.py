"""`epiprune compare`: every pruning method of the paper's comparison as independent `epiprune train` runs on
one model, dataset, budget and schedule, then one table (markdown + JSON) and plots.

Each run is a subprocess writing its own folder (RUN_DIR/runs/<method>/seed<k>), so runs are resumable (a run
with a checkpoint but no summary continues), skippable (a finished run is not repeated unless --force) and can
go in parallel (--jobs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .data import load_dataset
from .errors import EpipruneError
from .models import is_import_path
from .report import plot_accuracy_vs_cost, plot_epi_curve, plot_grid, plot_width_heatmap
from .serialization import atomic_write_text
from .trainer import TrainConfig, build_network

FAMILIES = ("dense", "init", "tpf", "fixed", "earlybird", "epi")


@dataclass
class Method:
    """One training recipe: a name for the table and the extra `epiprune train` arguments that make it."""

    name: str
    family: str
    args: list[str]


@dataclass
class CompareConfig:
    model: str = "resnet20"  # a registry name or package.module:factory (see TrainConfig)
    model_kwargs: dict = field(default_factory=dict)
    ignore_layers: list[str] = field(default_factory=list)
    data: str = "builtin"
    data_dir: str | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.1
    warmup_epochs: float = 0.0
    budget: str = "flops:0.5"
    epi_window: int = 3
    grid: list[int] | None = None  # fixed prune epochs; default 1..max dense epochs
    finetune_epochs: int | None = None  # for train-prune-fine-tune; default epochs // 4
    seeds: list[int] = field(default_factory=lambda: [0])
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    jobs: int = 1
    out: str = "runs/compare"
    force: bool = False

    @property
    def max_dense(self) -> int:
        """The EPI runs' fallback epoch, the same default as `epiprune train`'s."""
        return TrainConfig(epochs=self.epochs, epi_window=self.epi_window).resolved_max_dense_epochs

    def validate(self) -> None:
        """Raise EpipruneError for settings that every run would reject (before any folder is made)."""
        if not str(self.out).strip() or (Path(self.out).exists() and not Path(self.out).is_dir()):
            raise EpipruneError(f"--out {self.out!r} is not a folder name (accepted: a new or existing folder)")
        if self.jobs < 1:
            raise EpipruneError(f"--jobs {self.jobs} is too small (accepted: an integer >= 1)")
        if not self.seeds:
            raise EpipruneError("--seeds names no seed (accepted: integers like 0,1,2 or 0-2)")
        if self.grid is not None and not self.grid:
            raise EpipruneError("--grid names no epoch (accepted: integers like 1,2,3 or 1-6)")
        if self.epochs < self.epi_window + 2:
            raise EpipruneError(f"--epochs {self.epochs} is too small for --epi-window {self.epi_window} (accepted: "
                                f">= {self.epi_window + 2}: EPI needs window + 1 dense epochs, then pruned training)")
        if self.finetune_epochs is not None and self.finetune_epochs < 1:
            raise EpipruneError(f"--finetune-epochs {self.finetune_epochs} is too small (accepted: an integer >= 1)")
        # the settings every run shares are checked the way `epiprune train` checks them
        train_cfg = TrainConfig(model=self.model, model_kwargs=self.model_kwargs, ignore_layers=self.ignore_layers,
                                data=self.data, data_dir=self.data_dir, train_subset=self.train_subset,
                                val_subset=self.val_subset, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                warmup_epochs=self.warmup_epochs, budget=self.budget, epi_window=self.epi_window)
        train_cfg.validate()
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise EpipruneError(f"data folder not found: {self.data_dir} (give an existing folder with --data-dir)")
        self.methods()
        if is_import_path(self.model) or self.ignore_layers:
            # the user's network is built once here, so that a factory that fails or a wrong output shape is one
            # error line before any run folder exists, not a failure of every run
            data = load_dataset(self.data, self.data_dir)
            build_network(train_cfg, data.in_channels, data.num_classes, data.image_size)

    def methods(self) -> list[Method]:
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise EpipruneError(f"unknown methods {sorted(unknown)} (accepted: {', '.join(FAMILIES)})")
        grid = self.grid or list(range(1, self.max_dense + 1))
        if any(not 1 <= k < self.epochs for k in grid):
            raise EpipruneError(f"--grid epochs {grid} must lie in 1..{self.epochs - 1} (accepted: prune epochs "
                                "before the last, e.g. 1-4)")
        finetune = self.finetune_epochs if self.finetune_epochs is not None else max(1, self.epochs // 4)
        recipes = {
            "dense": [Method("dense", "dense", ["--indicator", "none"])],
            "init": [Method(f"init-{imp}", "init", ["--prune-at", "0", "--importance", imp])
                     for imp in ("random", "magnitude", "taylor")],
            "tpf": [Method(f"tpf-ft{finetune}", "tpf", ["--prune-at", str(self.epochs),
                                                         "--finetune-epochs", str(finetune)])],
            "fixed": [Method(f"fixed-{k}", "fixed", ["--prune-at", str(k)]) for k in grid],
            "earlybird": [Method("earlybird", "earlybird", ["--indicator", "earlybird", "--importance", "magnitude"])],
            "epi": [Method("epi-taylor", "epi", ["--importance", "taylor"]),
                    Method("epi-magnitude", "epi", ["--importance", "magnitude"])],
        }
        return [m for fam in FAMILIES if fam in self.families for m in recipes[fam]]

    def common_args(self) -> list[str]:
        args = ["--model", self.model, "--data", self.data, "--epochs", str(self.epochs), "--batch-size",
                str(self.batch_size), "--lr", str(self.lr), "--budget", self.budget, "--epi-window",
                str(self.epi_window), "--max-dense-epochs", str(self.max_dense), "--no-progress"]
        if self.warmup_epochs:  # only when set, so runs made before the option existed keep their command line
            args += ["--warmup-epochs", str(self.warmup_epochs)]
        if self.model_kwargs:
            args += ["--model-kwargs", json.dumps(self.model_kwargs)]
        if self.ignore_layers:
            args += ["--ignore-layers", ",".join(self.ignore_layers)]
        for flag, value in (("--data-dir", self.data_dir), ("--train-subset", self.train_subset),
                            ("--val-subset", self.val_subset)):
            if value is not None:
                args += [flag, str(value)]
        return args


def _check_same_settings(cfg: CompareConfig, seed: int, made_with: dict, summary_path: Path) -> None:
    """Refuse to reuse a finished run made with other shared settings: its numbers would not be comparable."""
    expected = {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "ignore_layers": cfg.ignore_layers,
                "data": cfg.data, "train_subset": cfg.train_subset,
                "val_subset": cfg.val_subset, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
                "warmup_epochs": cfg.warmup_epochs, "budget": cfg.budget, "epi_window": cfg.epi_window, "seed": seed}
    # runs made before the option existed
    defaults = {"warmup_epochs": 0.0, "model_kwargs": {}, "ignore_layers": []}
    for key, value in expected.items():
        found = made_with.get(key, defaults.get(key))
        if found != value:
            raise EpipruneError(f"{summary_path} was made with {key}={found!r}, not {value!r} (accepted: the same "
                                "settings, another --out, or --force to rerun)")


def run_one(cfg: CompareConfig, method: Method, seed: int, log=print) -> dict:  # noqa: ANN001
    """Train one (method, seed) unless its summary exists; return its summary with method fields added."""
    folder = Path(cfg.out) / "runs" / method.name / f"seed{seed}"
    summary_path = folder / "summary.json"
    if summary_path.is_file() and not cfg.force:
        _check_same_settings(cfg, seed, json.loads(summary_path.read_text()).get("config", {}), summary_path)
        log(f"skip {method.name} seed {seed}: done ({summary_path})")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "checkpoint.pt").is_file() and not cfg.force:
            cmd = ["train", "--resume", str(folder), "--no-progress"]
            if is_import_path(cfg.model):  # a run never imports the factory its checkpoint names by itself
                cmd += ["--model", cfg.model]
            log(f"resume {method.name} seed {seed}")
        else:
            cmd = ["train", *cfg.common_args(), *method.args, "--seed", str(seed), "--out", str(folder)]
            if cfg.force:
                cmd.append("--force")  # replaces the finished run once the new one has its first checkpoint
            log(f"run {method.name} seed {seed}")
        # the cores split between parallel runs, unless the caller chose the threads per process
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // cfg.jobs))
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        with open(folder / "train.log", "w") as logfile:
            proc = subprocess.Popen([sys.executable, "-m", "epiprune", *cmd], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env, text=True)
            for line in proc.stdout:  # progress inside a run that takes minutes: its per-epoch lines
                logfile.write(line)
                logfile.flush()
                if line.startswith("epoch "):
                    log(f"  {method.name} seed {seed}: {line.strip()}")
            proc.wait()
        if proc.returncode != 0:
            tail = (folder / "train.log").read_text().strip().splitlines()[-1:]
            raise EpipruneError(f"run {method.name} seed {seed} failed: {tail[0] if tail else proc.returncode}")
    summary = json.loads(summary_path.read_text())
    return {**summary, "method": method.name, "family": method.family, "run_dir": str(folder)}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per method (mean and spread over seeds), plus the oracle: the best fixed prune epoch."""
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    dense = by_method.get("dense")
    dense_flops = _mean([r["train_flops_total"] for r in dense]) if dense else None
    dense_seconds = _mean([r["train_seconds"] for r in dense]) if dense else None
    rows = []
    for name, rs in by_method.items():
        top1 = [100 * r["final_val_top1"] for r in rs]
        cost = _mean([r["train_flops_total"] for r in rs])
        secs = _mean([r["train_seconds"] for r in rs])
        epochs = [r["prune_epoch"] for r in rs]
        rows.append({"method": name, "family": rs[0]["family"], "seeds": len(rs),
                     "prune_epoch": epochs[0] if len(set(epochs)) == 1 else epochs,
                     "top1_mean": _mean(top1), "top1_std": _spread(top1),
                     "flops": _mean([r["final_flops"] for r in rs]), "params": _mean([r["final_params"] for r in rs]),
                     "flops_ratio": _mean([r["flops_ratio"] for r in rs]),
                     "train_flops": cost, "train_seconds": secs,
                     "train_flops_vs_dense": cost / dense_flops if dense_flops else None,
                     "train_seconds_vs_dense": secs / dense_seconds if dense_seconds else None})
    grid = [r for r in rows if r["family"] == "fixed"]
    if grid:
        best = max(grid, key=lambda r: r["top1_mean"])
        scan_flops = sum(r["train_flops"] for r in grid)
        scan_seconds = sum(r["train_seconds"] for r in grid)
        rows.append({**best, "method": f"oracle ({best['method']})", "family": "oracle",
                     "train_flops": scan_flops, "train_seconds": scan_seconds,
                     "train_flops_vs_dense": scan_flops / dense_flops if dense_flops else None,
                     "train_seconds_vs_dense": scan_seconds / dense_seconds if dense_seconds else None,
                     "grid_size": len(grid)})
    return rows


def markdown_table(rows: list[dict]) -> str:
    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    lines = ["| method | prune epoch | top-1 (%) | FLOPs (M) | params (M) | train cost (TFLOPs) | vs dense "
             "| wall-clock (s) | vs dense |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {r['top1_std']:.2f}" if r["seeds"] > 1 else ""
        epoch = "-" if r["prune_epoch"] is None else r["prune_epoch"]
        lines.append(f"| {r['method']} | {epoch} | {r['top1_mean']:.2f}{spread} | {r['flops'] / 1e6:.2f} "
                     f"| {r['params'] / 1e6:.3f} | {r['train_flops'] / 1e12:.2f} | {ratio(r['train_flops_vs_dense'])} "
                     f"| {r['train_seconds']:.0f} | {ratio(r['train_seconds_vs_dense'])} |")
    return "\n".join(lines) + "\n"


def _metrics(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def compare(cfg: CompareConfig, log=print) -> list[dict]:  # noqa: ANN001
    """Run (or reuse) every method x seed, then write compare.md, compare.json and the plots into cfg.out."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(m, s) for m in cfg.methods() for s in cfg.seeds]
    runs = []
    if cfg.budget.startswith("latency") and cfg.jobs > 1 and tasks:
        # the first run measures the latency table; the others must reuse it, not race to measure their own
        runs.append(run_one(cfg, *tasks.pop(0), log))
    with ThreadPoolExecutor(max_workers=max(1, cfg.jobs)) as pool:
        runs += list(pool.map(lambda t: run_one(cfg, t[0], t[1], log), tasks))
    return write_comparison(out, runs, cfg.__dict__, log)


def family_of(method: str) -> str | None:
    """The family of a method folder's name as `compare` writes it (dense, init-random, fixed-3, epi-taylor, ...)."""
    if method.startswith("fixed-"):
        return "fixed" if method[len("fixed-"):].isdigit() else None
    for prefix, family in (("init-", "init"), ("tpf-", "tpf"), ("epi-", "epi")):
        if method.startswith(prefix):
            return family
    return method if method in ("dense", "earlybird") else None


def finished_runs(out: Path) -> tuple[list[dict], list[str]]:
    """Summaries of the finished runs under out/runs/<method>/seed<k>/ (with method, family and run_dir added),
    and a description of each run folder that has no summary yet (running, interrupted or failed)."""
    runs, unfinished = [], []
    for folder in sorted(p for p in (out / "runs").glob("*/seed*") if p.is_dir()):
        method, family = folder.parent.name, family_of(folder.parent.name)
        if family is None:
            continue
        summary = folder / "summary.json"
        try:
            made = json.loads(summary.read_text()) if summary.is_file() else None
        except ValueError:  # a damaged summary: the run is listed as unfinished, not a traceback
            made = None
        if isinstance(made, dict):
            runs.append({**made, "method": method, "family": family, "run_dir": str(folder)})
        else:
            metrics = folder / "metrics.jsonl"
            done = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
            unfinished.append(f"{method} {folder.name} (epochs done: {done})")
    # the order `compare` uses: families as in FAMILIES, methods as their recipes list them, then seeds
    grid = sorted({r["prune_epoch"] for r in runs if r["family"] == "fixed"})
    names = [m.name for m in CompareConfig(epochs=max(grid, default=1) + 1, grid=grid or None).methods()]
    runs.sort(key=lambda r: (FAMILIES.index(r["family"]), names.index(r["method"]) if r["method"] in names else 0,
                             r["seed"]))
    return runs, unfinished


def write_comparison(out: Path, runs: list[dict], config: dict, log=print) -> list[dict]:  # noqa: ANN001
    """Aggregate finished runs into compare.md, compare.json and the four plots in `out`; return the rows."""
    rows = aggregate(runs)
    table = markdown_table(rows)
    atomic_write_text(out / "compare.md", table)
    atomic_write_text(out / "compare.json", json.dumps({"config": config, "rows": rows, "runs": runs},
                                                       indent=1, default=str))
    plot_accuracy_vs_cost([r for r in rows if r["family"] != "oracle"], out / "accuracy_vs_cost.png")
    epi_runs = [r for r in runs if r["method"] == "epi-taylor"]
    epi_epoch = epi_runs[0]["prune_epoch"] if epi_runs else None
    grid = sorted((r["prune_epoch"], r["top1_mean"], r["top1_std"]) for r in rows if r["family"] == "fixed")
    if grid:
        plot_grid(grid, [r["prune_epoch"] for r in epi_runs], out / "accuracy_vs_prune_epoch.png")
    dense_runs = [r for r in runs if r["method"] == "dense"]
    if dense_runs:
        dense_metrics = _metrics(dense_runs[0]["run_dir"])
        threshold = epi_runs[0]["epi_threshold"] if epi_runs else dense_runs[0]["epi_threshold"]
        plot_epi_curve(dense_metrics, threshold, epi_epoch, out / "epi_curve.png")
        plot_width_heatmap(dense_metrics, dense_runs[0]["dense_widths"], out / "widths_heatmap.png")
    log(table)
    return rows
