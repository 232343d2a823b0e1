"""`epiprune compare`: every pruning method of the paper's comparison as independent `epiprune train` runs on
one model, dataset, budget and schedule, then one table (markdown + JSON) and plots.

Each run is a subprocess writing its own folder (RUN_DIR/runs/<method>/seed<k>), so runs are resumable (a run
with a checkpoint but no summary continues), skippable (a finished run is not repeated unless --force) and can
go in parallel (--jobs).

Branching (the default): the dense run of each seed records its importance per epoch and keeps its checkpoints
at the grid's epochs; every run that shares its dense epochs (the fixed-epoch grid, train-prune-fine-tune, the
EPI runs, Early-Bird's budget variant) starts from it with `train --branch-from`, bit-identical to training from
scratch. The oracle's cost is reported both ways: the branched grid (one dense trajectory plus each branch's own
epochs) and the grid trained from scratch.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from epiprune.errors import EpipruneError
from epiprune.evidence.plots import plot_accuracy_vs_cost, plot_epi_curve, plot_grid, plot_width_heatmap
from epiprune.io.serialization import atomic_write_text
from epiprune.models import is_import_path
from epiprune.run.config import TrainConfig, parse_options, read_config_file, recorded_setting
from epiprune.run.data import load_dataset
from epiprune.run.records import CompareRun, EpochRow, RunSummary
from epiprune.run.trainer import build_network

FAMILIES = ("dense", "plain", "init", "tpf", "fixed", "earlybird", "epi")
DENSE = "{dense}"  # in a method's overrides: the folder of the same seed's dense run
CONFIG_FILE = "config.json"  # in a run folder: its TrainConfig, which `epiprune train --config` runs
BOOTSTRAP_DRAWS = 10_000


@dataclass
class Method:
    """One training recipe: a name for the table, its family, and the TrainConfig fields that make it (on top of
    the settings every run of the comparison shares)."""

    name: str
    family: str
    overrides: dict[str, Any]

    @property
    def branches(self) -> bool:
        return self.overrides.get("branch_from") == DENSE


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
    holdout: int = 0  # training images held out for validation; the dataset's validation split becomes the test
    data_seed: int | None = None  # one data subset for every seed (None: each seed draws its own)
    branch: bool = True  # grid, tpf and EPI runs branch from the seed's dense run
    probe_every: int = 0  # the dense run also records Taylor scores every N steps (trigger studies)
    only: list[str] | None = None  # run only these method names (e.g. one prune-at-init variant)
    extra_args: list[str] = field(default_factory=list)  # more `epiprune train` options for every run

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
        train_cfg = TrainConfig(**self.shared_settings())
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
        branch = {"branch_from": DENSE} if self.branch and "dense" in self.families else {}
        record = {"record_scores": True, "keep_checkpoints": self.kept_epochs(grid)}
        if self.probe_every:
            record["probe_every"] = self.probe_every
        recipes = {
            "dense": [Method("dense", "dense", {"indicator": "none", **(record if branch else {})})],
            "plain": [Method("dense-plain", "plain", {"indicator": "none", "importance": "magnitude"})],
            "init": [Method(f"init-{imp}", "init", {"prune_at": 0, "importance": imp})
                     for imp in ("random", "magnitude", "taylor")],
            "tpf": [Method(f"tpf-ft{finetune}", "tpf", {"prune_at": self.epochs, "finetune_epochs": finetune,
                                                         **branch})],
            "fixed": [Method(f"fixed-{k}", "fixed", {"prune_at": k, **branch}) for k in grid],
            "earlybird": [Method("earlybird", "earlybird", {"indicator": "earlybird", "importance": "bn",
                                                            "bn_l1": 1e-4}),
                          Method("earlybird-budget", "earlybird", {"indicator": "earlybird-budget",
                                                                   "importance": "magnitude", **branch})],
            "epi": [Method("epi-taylor", "epi", {"importance": "taylor", **branch}),
                    Method("epi-magnitude", "epi", {"importance": "magnitude", **branch})],
        }
        methods = [m for fam in FAMILIES if fam in self.families for m in recipes[fam]]
        return [m for m in methods if self.only is None or m.name in self.only]

    def kept_epochs(self, grid: list[int]) -> list[int]:
        """Epochs whose checkpoints the dense run keeps: every epoch a branch may prune at."""
        return sorted({*range(1, self.max_dense + 1), *grid, self.epochs})

    def shared_settings(self) -> dict[str, Any]:
        """The TrainConfig fields every run of the comparison shares (its extra_args included)."""
        values: dict[str, Any] = dict(
            model=self.model, model_kwargs=self.model_kwargs, ignore_layers=self.ignore_layers, data=self.data,
            data_dir=self.data_dir, train_subset=self.train_subset, val_subset=self.val_subset, epochs=self.epochs,
            batch_size=self.batch_size, lr=self.lr, warmup_epochs=self.warmup_epochs, budget=self.budget,
            epi_window=self.epi_window, max_dense_epochs=self.max_dense, holdout=self.holdout,
            data_seed=self.data_seed, progress=False)
        return {**values, **parse_options(self.extra_args)}

    def run_config(self, method: Method, seed: int) -> TrainConfig:
        """The TrainConfig of one (method, seed) run: the shared settings, the method's overrides (its {dense}
        placeholder is the folder of the same seed's dense run), the seed and the run's folder."""
        overrides = {k: self.run_dir("dense", seed) if v == DENSE else v for k, v in method.overrides.items()}
        return TrainConfig(**{**self.shared_settings(), **overrides, "seed": seed,
                              "out": self.run_dir(method.name, seed)})

    def run_dir(self, method: str, seed: int) -> str:
        return str(Path(self.out) / "runs" / method / f"seed{seed}")


def settings_mismatch(cfg: CompareConfig, method: str, seed: int, made_with: dict) -> str | None:
    """How a run's recorded settings differ from what this comparison runs with ("key=found, not expected"), or
    None when its numbers are comparable. One dense trajectory serves every budget, so dense runs skip the budget."""
    expected = {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "ignore_layers": cfg.ignore_layers,
                "data": cfg.data, "train_subset": cfg.train_subset,
                "val_subset": cfg.val_subset, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
                "warmup_epochs": cfg.warmup_epochs, "budget": cfg.budget, "epi_window": cfg.epi_window, "seed": seed,
                "holdout": cfg.holdout, "data_seed": cfg.data_seed}
    if method == "dense":
        expected.pop("budget")
    for key, value in expected.items():
        found = recorded_setting(made_with, key)
        if found != value:
            return f"{key}={found!r}, not {value!r}"
    return None


def _check_same_settings(cfg: CompareConfig, method: Method, seed: int, made_with: dict, summary_path: Path) -> None:
    """Refuse to reuse a finished run made with other shared settings: its numbers would not be comparable."""
    mismatch = settings_mismatch(cfg, method.name, seed, made_with)
    if mismatch is not None:
        raise EpipruneError(f"{summary_path} was made with {mismatch} (accepted: the same settings, another --out, "
                            "or --force to rerun)")


def run_one(cfg: CompareConfig, method: Method, seed: int, log: Callable[[str], None] = print) -> CompareRun:
    """Train one (method, seed) unless its summary exists; return its summary with method fields added."""
    folder = Path(cfg.run_dir(method.name, seed))
    summary_path = folder / "summary.json"
    if summary_path.is_file() and not cfg.force:
        _check_same_settings(cfg, method, seed, json.loads(summary_path.read_text()).get("config", {}), summary_path)
        log(f"skip {method.name} seed {seed}: done ({summary_path})")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "checkpoint.pt").is_file() and not cfg.force:
            cmd = ["train", "--resume", str(folder), "--no-progress"]
            if is_import_path(cfg.model):  # a run never imports the factory its checkpoint names by itself
                cmd += ["--model", cfg.model]
            log(f"resume {method.name} seed {seed}")
        else:
            config_path = folder / CONFIG_FILE
            cfg.run_config(method, seed).write(config_path)
            cmd = ["train", "--config", str(config_path)]
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
    summary: RunSummary = json.loads(summary_path.read_text())
    return CompareRun(**{**summary, "method": method.name, "family": method.family, "run_dir": str(folder)})


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def test_top1(run: dict) -> float:
    """The reported accuracy (%): the test split when the run held out a validation split, else validation."""
    return 100 * run.get("final_test_top1", run["final_val_top1"])


def bootstrap_interval(values: list[float], draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `values` (resampling them with replacement)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def oracle_runs(runs: list[dict]) -> list[dict]:
    """Per seed, the fixed-epoch run with the best final validation accuracy (the grid search a user would do;
    with a held-out validation split, its test accuracy was not used to choose)."""
    best: dict[int, dict] = {}
    for r in runs:
        if r["family"] != "fixed":
            continue
        if r["seed"] not in best or r["final_val_top1"] > best[r["seed"]]["final_val_top1"]:
            best[r["seed"]] = r
    return [best[seed] for seed in sorted(best)]


def _row(name: str, family: str, rs: list[dict], dense_flops: float | None, dense_seconds: float | None) -> dict:
    top1 = [test_top1(r) for r in rs]
    cost = _mean([r["train_flops_total"] for r in rs])
    secs = _mean([r["train_seconds"] for r in rs])
    epochs = [r["prune_epoch"] for r in rs]
    fallbacks = sum(r.get("trigger") == "fallback" for r in rs)
    return {"method": name, "family": family, "seeds": len(rs),
            "prune_epoch": epochs[0] if len(set(epochs)) == 1 else epochs, "fallbacks": fallbacks,
            "top1_mean": _mean(top1), "top1_std": _spread(top1),
            "val_top1_mean": _mean([100 * r["final_val_top1"] for r in rs]),
            "flops": _mean([r["final_flops"] for r in rs]), "params": _mean([r["final_params"] for r in rs]),
            "flops_ratio": _mean([r["flops_ratio"] for r in rs]),
            "train_flops": cost, "train_seconds": secs,
            "train_flops_vs_dense": cost / dense_flops if dense_flops else None,
            "train_seconds_vs_dense": secs / dense_seconds if dense_seconds else None}


def _grid_scan_cost(runs: list[dict]) -> tuple[float, float]:
    """(from scratch, branched) training FLOPs of the whole grid, mean over seeds: from scratch, every fixed-k run
    trains its dense epochs itself; branched, the dense trajectory is trained once (to the last grid epoch) and
    each branch adds its own pruned epochs."""
    scratch, branched = [], []
    for seed in sorted({r["seed"] for r in runs if r["family"] == "fixed"}):
        grid = [r for r in runs if r["family"] == "fixed" and r["seed"] == seed]
        scratch.append(sum(r["train_flops_total"] for r in grid))
        last = max(grid, key=lambda r: r["prune_epoch"])
        shared = last["train_flops_total"] - last.get("branch_train_flops", last["train_flops_total"])
        branched.append(shared + sum(r.get("branch_train_flops", r["train_flops_total"]) for r in grid)
                        if all("branch_train_flops" in r for r in grid) else scratch[-1])
    return _mean(scratch), _mean(branched)


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per method (mean and spread over seeds), plus the oracle: per seed, the fixed prune epoch with the
    best validation accuracy, reported on the test split, costed as the branched grid and as the grid from
    scratch."""
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    dense = by_method.get("dense")
    dense_flops = _mean([r["train_flops_total"] for r in dense]) if dense else None
    dense_seconds = _mean([r["train_seconds"] for r in dense]) if dense else None
    rows = [_row(name, rs[0]["family"], rs, dense_flops, dense_seconds) for name, rs in by_method.items()]
    chosen = oracle_runs(runs)
    if chosen:
        grid_size = len({r["method"] for r in runs if r["family"] == "fixed"})
        scratch, branched = _grid_scan_cost(runs)
        base = _row("oracle", "oracle", chosen, dense_flops, dense_seconds)
        epochs = sorted({r["prune_epoch"] for r in chosen})
        label = f"fixed-{epochs[0]}" if len(epochs) == 1 else "best per seed"
        for name, cost in ((f"oracle ({label}), branched grid", branched),
                           (f"oracle ({label}), grid from scratch", scratch)):
            rows.append({**base, "method": name, "train_flops": cost, "grid_size": grid_size,
                         "train_flops_vs_dense": cost / dense_flops if dense_flops else None,
                         "train_seconds": None, "train_seconds_vs_dense": None})
    return rows


def paired_differences(runs: list[dict], reference: str = "epi-taylor") -> list[dict]:
    """Per method, the per-seed differences of reported top-1 (method minus `reference`, points), their mean and
    95% bootstrap interval; the oracle is each seed's best grid run. Only seeds both have are paired."""
    ref = {r["seed"]: test_top1(r) for r in runs if r["method"] == reference}
    methods: dict[str, dict[int, float]] = {}
    for r in runs:
        if r["method"] != reference:
            methods.setdefault(r["method"], {})[r["seed"]] = test_top1(r)
    methods["oracle"] = {r["seed"]: test_top1(r) for r in oracle_runs(runs)}
    result = []
    for name, by_seed in methods.items():
        diffs = [by_seed[s] - ref[s] for s in sorted(by_seed) if s in ref]
        if diffs:
            low, high = bootstrap_interval(diffs)
            result.append({"method": name, "vs": reference, "seeds": len(diffs), "diffs": diffs,
                           "mean": _mean(diffs), "low": low, "high": high})
    return result


def paired_table(pairs: list[dict]) -> str:
    lines = ["| method | seeds | mean difference vs " + (pairs[0]["vs"] if pairs else "reference") +
             " (points) | 95% bootstrap interval | per seed |", "|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['method']} | {p['seeds']} | {p['mean']:+.2f} | [{p['low']:+.2f}, {p['high']:+.2f}] "
                     f"| {' '.join(f'{d:+.2f}' for d in p['diffs'])} |")
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict]) -> str:
    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    lines = ["| method | prune epoch | top-1 (%) | FLOPs (M) | params (M) | train cost (TFLOPs) | vs dense "
             "| wall-clock (s) | vs dense |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {r['top1_std']:.2f}" if r["seeds"] > 1 else ""
        epoch = "-" if r["prune_epoch"] is None else r["prune_epoch"]
        if r.get("fallbacks"):
            epoch = f"{epoch} ({r['fallbacks']} fallback{'s' if r['fallbacks'] > 1 else ''})"
        seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['method']} | {epoch} | {r['top1_mean']:.2f}{spread} | {r['flops'] / 1e6:.2f} "
                     f"| {r['params'] / 1e6:.3f} | {r['train_flops'] / 1e12:.2f} | {ratio(r['train_flops_vs_dense'])} "
                     f"| {seconds} | {ratio(r['train_seconds_vs_dense'])} |")
    return "\n".join(lines) + "\n"


def _metrics(run_dir: str) -> list[EpochRow]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def compare(cfg: CompareConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Run (or reuse) every method x seed, then write compare.md, compare.json and the plots into cfg.out."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(m, s) for m in cfg.methods() for s in cfg.seeds]
    runs = []
    if cfg.budget.startswith("latency") and cfg.jobs > 1 and tasks:
        # the first run measures the latency table; the others must reuse it, not race to measure their own
        runs.append(run_one(cfg, *tasks.pop(0), log))
    # branches need their seed's dense run: dense runs go first (seeds in parallel), then everything else
    stages = [[t for t in tasks if t[0].family == "dense"], [t for t in tasks if t[0].family != "dense"]]
    with ThreadPoolExecutor(max_workers=max(1, cfg.jobs)) as pool:
        for stage in stages:
            runs += list(pool.map(lambda t: run_one(cfg, t[0], t[1], log), stage))
    return write_comparison(out, _with_other_runs(cfg, out, runs, log), cfg.__dict__, log)


def _with_other_runs(cfg: CompareConfig, out: Path, runs: list[CompareRun],
                     log: Callable[[str], None]) -> list[CompareRun]:
    """This call's runs and every other finished run in out/runs made with the same settings (earlier calls with
    other methods or seeds, e.g. `--only`), in finished_runs' order: compare.md describes the whole folder."""
    made_now = {(r["method"], r["seed"]): r for r in runs}
    folder_runs, unfinished = finished_runs(out)
    combined = []
    for run in folder_runs:
        key = (run["method"], run["seed"])
        if key in made_now:
            combined.append(made_now.pop(key))
            continue
        mismatch = settings_mismatch(cfg, run["method"], run["seed"], run.get("config", {}))
        if mismatch is None:
            combined.append(run)
        else:
            log(f"not in the table: {run['method']} seed {run['seed']} (made with {mismatch})")
    for description in unfinished:
        log(f"not in the table: {description}, unfinished")
    return combined + list(made_now.values())


def family_of(method: str) -> str | None:
    """The family of a method folder's name as `compare` writes it (dense, init-random, fixed-3, epi-taylor, ...):
    for run folders whose settings say nothing (see method_of)."""
    if method.startswith("fixed-"):
        return "fixed" if method[len("fixed-"):].isdigit() else None
    for prefix, family in (("init-", "init"), ("tpf-", "tpf"), ("epi-", "epi"), ("earlybird", "earlybird")):
        if method.startswith(prefix):
            return family
    return {"dense": "dense", "dense-plain": "plain"}.get(method)


# the fields that tell compare's recipes apart (how a run was made, e.g. branched or not, is not among them)
METHOD_FIELDS = ("indicator", "importance", "prune_at", "finetune_epochs", "bn_l1")
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.name in METHOD_FIELDS}


def method_of(config: dict) -> Method | None:
    """The compare recipe that made a run, read from its recorded TrainConfig (summary.json's config, or the
    run's config.json): the recipe whose overrides it has. None when no recipe fits (not a compare run)."""
    def value(key: str) -> Any:
        return config.get(key, _DEFAULTS[key])

    epochs, prune_at, finetune = config.get("epochs"), value("prune_at"), value("finetune_epochs")
    if not isinstance(epochs, int) or epochs < 2:
        return None
    grid = [prune_at] if isinstance(prune_at, int) and 1 <= prune_at < epochs else None
    recipes = CompareConfig(epochs=epochs, grid=grid, finetune_epochs=finetune or None, branch=False).methods()
    for method in recipes:
        if all(value(k) == method.overrides.get(k, _DEFAULTS[k]) for k in METHOD_FIELDS):
            return method
    return None


def _recorded_config(folder: Path, summary: dict | None) -> dict | None:
    if summary is not None and isinstance(summary.get("config"), dict):
        return summary["config"]
    try:
        return read_config_file(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else None
    except EpipruneError:
        return None


def finished_runs(out: Path) -> tuple[list[CompareRun], list[str]]:
    """Summaries of the finished runs under out/runs/<method>/seed<k>/ (with method, family and run_dir added),
    and a description of each run folder that has no summary yet (running, interrupted or failed). A run's
    family is read from its recorded settings; folders of old runs that have none are known by their name."""
    runs, unfinished = [], []
    for folder in sorted(p for p in (out / "runs").glob("*/seed*") if p.is_dir()):
        method = folder.parent.name
        summary = folder / "summary.json"
        try:
            made = json.loads(summary.read_text()) if summary.is_file() else None
        except ValueError:  # a damaged summary: the run is listed as unfinished, not a traceback
            made = None
        made = made if isinstance(made, dict) else None
        config = _recorded_config(folder, made)
        recipe = method_of(config) if config is not None else None
        family = recipe.family if recipe is not None else family_of(method)
        if family is None:
            continue
        if made is not None:
            runs.append(CompareRun(**{**made, "method": method, "family": family, "run_dir": str(folder)}))
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


def write_comparison(out: Path, runs: list[dict], config: dict, log: Callable[[str], None] = print) -> list[dict]:
    """Aggregate finished runs into compare.md, compare.json and the four plots in `out`; return the rows."""
    rows = aggregate(runs)
    pairs = paired_differences(runs)
    reported = "test split (chosen on the held-out validation split)" if any("final_test_top1" in r for r in runs) \
        else "validation split (also used to choose the oracle)"
    table = markdown_table(rows) + f"\ntop-1: final accuracy on the {reported}\n"
    if pairs:
        table += "\n" + paired_table(pairs)
    atomic_write_text(out / "compare.md", table)
    atomic_write_text(out / "compare.json", json.dumps({"config": config, "rows": rows, "paired": pairs,
                                                        "runs": runs}, indent=1, default=str))
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
