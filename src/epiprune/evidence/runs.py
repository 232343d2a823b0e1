"""What `epiprune compare` runs and finds: its settings (CompareConfig), the methods as TrainConfig recipes, where
each (method, seed) run lives, whether a finished run was made with the same settings, and the finished runs of a
compare folder. Reads and writes no training state: `epiprune report` uses it without importing the trainer."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from epiprune.costs.timing import MAX_PAIR_RATIO_SPREAD
from epiprune.errors import EpipruneError
from epiprune.evidence.grid import first_probe_at, fixed_point, point_text, probe_grid
from epiprune.models import is_import_path
from epiprune.run.config import TrainConfig, read_config_file
from epiprune.run.data import load_dataset
from epiprune.run.folder import holds_run
from epiprune.run.network import build_network
from epiprune.run.options import parse_options, recorded_setting
from epiprune.run.records import CompareRun
from epiprune.run.tasks import task_of

FAMILIES = ("dense", "plain", "init", "tpf", "fixed", "earlybird", "epi")
DENSE = "{dense}"  # in a method's overrides: the folder of the same seed's dense run
CONFIG_FILE = "config.json"  # in a run folder: its TrainConfig, which `epiprune train --config` runs
# the TrainConfig fields that are also CompareConfig fields, shared by every run of a comparison: `compare`'s
# command-line options for them are generated from TrainConfig's (cli.py), with CompareConfig's defaults
SHARED_SETTINGS = ("model", "model_kwargs", "ignore_layers", "data", "data_dir", "seq_len", "train_subset",
                   "val_subset", "epochs", "batch_size", "lr", "warmup_epochs", "budget", "epi_window", "epi_every",
                   "holdout", "data_seed", "latency_target", "latency_batch", "latency_noise_limit")
# how a run was made, not what it computes: a finished run is reused whatever these recorded (paths, devices,
# progress, what the dense run records for its branches; the method's own fields are the recipe's, see METHOD_FIELDS)
NOT_COMPARED = ("out", "progress", "data_dir", "latency_table", "device", "dist_timeout", "record_scores",
                "probe_every", "keep_checkpoints", "branch_from", "latency_noise_limit")


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
    seq_len: int = 128  # bytes per sample of --data text (TrainConfig.seq_len)
    train_subset: int | None = None
    val_subset: int | None = None
    epochs: int = 12
    batch_size: int = 128
    lr: float | None = None  # None: the network's default, as train's (run/defaults.py)
    warmup_epochs: float | None = None
    budget: str = "flops:0.5"
    epi_window: int = 3
    epi_every: str = "epoch"  # the clock of every run; on the step clock the grid is probes (evidence/grid.py)
    grid: list[float] | None = None  # fixed prune epochs; default 1..max dense epochs (step clock: probe_grid)
    finetune_epochs: int | None = None  # for train-prune-fine-tune; default epochs // 4
    seeds: list[int] = field(default_factory=lambda: [0])
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    jobs: int = 1
    out: str = "runs/compare"
    force: bool = False
    holdout: int = 0  # training images (text: windows) held out for validation; the dataset's validation split: test
    data_seed: int | None = None  # one data subset for every seed (None: each seed draws its own)
    branch: bool = True  # grid, tpf and EPI runs branch from the seed's dense run
    probe_every: int = 0  # the dense run also records Taylor scores every N steps (trigger studies)
    only: list[str] | None = None  # run only these method names (e.g. one prune-at-init variant)
    extra_args: list[str] = field(default_factory=list)  # more `epiprune train` options for every run
    latency_target: str = "train"  # a latency budget: what its table times (TrainConfig.latency_target)
    latency_batch: int | None = None  # a latency budget: the batch its table times (None: --batch-size)
    # a latency budget's table build is refused above this timing spread (TrainConfig.latency_noise_limit)
    latency_noise_limit: float = MAX_PAIR_RATIO_SPREAD

    @property
    def max_dense(self) -> float:
        """The EPI runs' fallback epoch, the same default as `epiprune train`'s (step clock: half the schedule, a
        fraction)."""
        return TrainConfig(epochs=self.epochs, epi_window=self.epi_window,
                           epi_every=self.epi_every).resolved_max_dense_epochs

    @property
    def step_clock(self) -> bool:
        return self.epi_every != "epoch"

    def probe_clock(self) -> tuple[int, int]:
        """(steps between probes, steps per epoch) of every run on the step clock: the training images after
        --holdout and --train-subset in batches of --batch-size (one process; the last batch may be partial)."""
        cfg = TrainConfig(**self.shared_settings())
        images = _training_samples(cfg.data, cfg.data_dir, cfg.image_size, cfg.seq_len, cfg.holdout)
        if cfg.train_subset is not None:
            images = min(images, cfg.train_subset)
        steps = -(-max(1, images) // cfg.batch_size)
        return cfg.resolved_epi_every(steps), steps

    def validate(self) -> None:
        """Raise EpipruneError for settings that every run would reject (before any folder is made)."""
        if not str(self.out).strip() or (Path(self.out).exists() and not Path(self.out).is_dir()):
            raise EpipruneError(f"--out {self.out!r} is not a folder name (accepted: a new or existing folder)")
        if holds_run(self.out):
            raise EpipruneError(f"--out {self.out} holds an `epiprune train` run, which compare's files would mix with "
                                "(accepted: a new folder, or one compare made)")
        if self.jobs < 1:
            raise EpipruneError(f"--jobs {self.jobs} is too small (accepted: an integer >= 1)")
        if not self.seeds:
            raise EpipruneError("--seeds names no seed (accepted: integers like 0,1,2 or 0-2)")
        if self.grid is not None and not self.grid:
            raise EpipruneError("--grid names no epoch (accepted: integers like 1,2,3 or 1-6)")
        if self.probe_every and self.step_clock:
            raise EpipruneError(f"probe_every {self.probe_every} is the epoch clock's extra probing (accepted: 0 on "
                                "the step clock, whose dense run records every probe)")
        if not self.step_clock and self.epochs < self.epi_window + 2:
            raise EpipruneError(f"--epochs {self.epochs} is too small for --epi-window {self.epi_window} (accepted: "
                                f">= {self.epi_window + 2}: EPI needs window + 1 dense epochs, then pruned training; "
                                "or --epi-every auto, every run on the step clock)")
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
            build_network(train_cfg, data.in_channels, data.num_classes, task_of(data).input_size(data),
                          task_of(data).name)

    def methods(self) -> list[Method]:
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise EpipruneError(f"unknown methods {sorted(unknown)} (accepted: {', '.join(FAMILIES)})")
        grid = self.grid_points() if "fixed" in self.families or not self.step_clock else []
        finetune = self.finetune_epochs if self.finetune_epochs is not None else max(1, self.epochs // 4)
        branch = {"branch_from": DENSE} if self.branch and "dense" in self.families else {}
        record = {}
        if branch:
            record = {"record_scores": True, "keep_checkpoints": self.kept_epochs(grid)}
        if self.probe_every:
            record["probe_every"] = self.probe_every
        # the step-clock dense run records probes, not the last epoch's scores that train-prune-fine-tune prunes
        # with: on the step clock it trains from scratch (pruning at the first probe at or after the schedule's end)
        tpf_branch = {} if self.step_clock else branch
        recipes = {
            "dense": [Method("dense", "dense", {"indicator": "none", **(record if branch else {})})],
            "plain": [Method("dense-plain", "plain", {"indicator": "none", "importance": "magnitude"})],
            "init": [Method(f"init-{imp}", "init", {"prune_at": 0, "importance": imp})
                     for imp in ("random", "magnitude", "taylor")],
            "tpf": [Method(f"tpf-ft{finetune}", "tpf", {"prune_at": self.epochs, "finetune_epochs": finetune,
                                                         **tpf_branch})],
            "fixed": [Method(f"fixed-{point_text(k)}", "fixed", {"prune_at": k, **branch}) for k in grid],
            "earlybird": [Method("earlybird", "earlybird", {"indicator": "earlybird", "importance": "bn",
                                                            "bn_l1": 1e-4}),
                          Method("earlybird-budget", "earlybird", {"indicator": "earlybird-budget",
                                                                   "importance": "magnitude", **branch})],
            "epi": [Method("epi-taylor", "epi", {"importance": "taylor", **branch}),
                    Method("epi-magnitude", "epi", {"importance": "magnitude", **branch})],
        }
        methods = [m for fam in FAMILIES if fam in self.families for m in recipes[fam]]
        return [m for m in methods if self.only is None or m.name in self.only]

    def grid_points(self) -> list[float]:
        """The fixed prune points (epochs): --grid, or by default every whole epoch up to the fallback (epoch
        clock) or the probes of evidence.grid.probe_grid (step clock); checked to lie inside the schedule."""
        if self.step_clock:
            grid = self.grid or probe_grid(*self.probe_clock(), self.max_dense)
            if any(not 0 < k < self.epochs for k in grid):
                raise EpipruneError(f"--grid points {grid} must lie in (0, {self.epochs}) (accepted: prune points in "
                                    "epochs before the schedule's end, e.g. 0.5,1,2.25)")
            return grid
        grid = self.grid or list(range(1, self.max_dense + 1))
        if any(not 1 <= k < self.epochs for k in grid):
            raise EpipruneError(f"--grid epochs {grid} must lie in 1..{self.epochs - 1} (accepted: prune epochs "
                                "before the last, e.g. 1-4)")
        return grid

    def kept_epochs(self, grid: list[float]) -> list[int]:
        """Epochs whose checkpoints the dense run keeps: every epoch a branch may prune at (step clock: every epoch
        up to the one of the fallback's probe, which holds every probe EPI and the grid may prune at)."""
        if self.step_clock:
            every, steps = self.probe_clock()
            last = max([self.max_dense, *grid])
            return list(range(1, min(self.epochs, -(-first_probe_at(last, every, steps) // steps)) + 1))
        return sorted({*range(1, self.max_dense + 1), *grid, self.epochs})

    def shared_settings(self) -> dict[str, Any]:
        """The TrainConfig fields every run of the comparison shares (its extra_args included)."""
        values: dict[str, Any] = {name: getattr(self, name) for name in SHARED_SETTINGS}
        values.update(max_dense_epochs=self.max_dense, progress=False)
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
    None when its numbers are comparable. Every TrainConfig field is compared (the shared settings, extra_args and
    the fallback epoch included) except how the run was made (NOT_COMPARED) and what its method sets
    (METHOD_FIELDS); one dense trajectory serves every budget, so dense runs skip the budget."""
    expected = asdict(TrainConfig(**cfg.shared_settings(), seed=seed))
    skipped = {*NOT_COMPARED, *METHOD_FIELDS, *(("budget",) if method == "dense" else ())}
    for key, value in expected.items():
        if key in skipped:
            continue
        found = recorded_setting(made_with, key)
        if found != value:
            return f"{key}={found!r}, not {value!r}"
    return None


@functools.cache
def _training_samples(data: str, data_dir: str | None, image_size: int, seq_len: int, holdout: int) -> int:
    """Training samples of a dataset once --holdout took its own: images, or text windows of seq_len bytes (a text
    holdout takes N x seq_len + 1 bytes, so the count is the dataset's own, not a subtraction)."""
    dataset = load_dataset(data, data_dir, image_size=image_size, seq_len=seq_len)
    if holdout:  # the count does not depend on the seed of the draw
        dataset = dataset.hold_out(holdout)[0]
    return len(dataset.train_labels)


def family_of(method: str) -> str | None:
    """The family of a method folder's name as `compare` writes it (dense, init-random, fixed-3, fixed-2.66,
    epi-taylor, ...): for run folders whose settings say nothing (see method_of)."""
    if method.startswith("fixed-"):
        return "fixed" if fixed_point(method) is not None else None
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
    every = config.get("epi_every", "epoch")
    if not isinstance(epochs, int) or epochs < 2 or not isinstance(every, str):
        return None
    if every == "epoch":
        grid = [prune_at] if isinstance(prune_at, int) and 1 <= prune_at < epochs else None
    else:
        grid = [prune_at] if isinstance(prune_at, (int, float)) and 0 < prune_at < epochs else None
    families = [f for f in FAMILIES if grid is not None or f != "fixed"]  # no grid: no fixed recipe can fit
    recipes = CompareConfig(epochs=epochs, grid=grid, finetune_epochs=finetune or None, branch=False,
                            epi_every=every, families=families).methods()
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
    # the order `compare` uses: families as in FAMILIES, methods as their recipes list them (the grid by its prune
    # point), then seeds
    names = [m.name for m in CompareConfig(epochs=2, families=[f for f in FAMILIES if f != "fixed"]).methods()]

    def order(run: CompareRun) -> float:
        if run["family"] == "fixed":
            point = (run.get("config") or {}).get("prune_at")
            return point if isinstance(point, (int, float)) else fixed_point(run["method"]) or run["prune_epoch"] or 0
        return names.index(run["method"]) if run["method"] in names else 0

    runs.sort(key=lambda r: (FAMILIES.index(r["family"]), order(r), r["seed"]))
    return runs, unfinished
