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
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from epiprune.errors import EpipruneError
from epiprune.evidence.runs import CONFIG_FILE, CompareConfig, Method, finished_runs, settings_mismatch
from epiprune.evidence.table import write_comparison
from epiprune.models import is_import_path
from epiprune.run.records import CompareRun, RunSummary


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


