"""Branches on the step clock (issue 20, item 4): a dense step-clock run with --record-scores records every probe
(the interval's scores and its first half's), --keep-checkpoints keeps the checkpoint before every probe step of the
kept epochs, and --branch-from replays the probes through the branch's policy, loads the checkpoint before the
step where it prunes, trains that step again and prunes there: bit for bit the run trained from scratch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from epiprune.cli import main
from epiprune.errors import EpipruneError
from epiprune.policy.replay import RecordedProbe
from epiprune.run.trajectory import read_scores

from .helpers import assert_one_line_error, call_main
from .test_decision import PEAKED_0, PEAKED_1
from .test_step_clock import HalvesImportance, step_policy

# 3 steps per epoch (as in test_branching), a probe every 2 steps: probes at 2, 4, ..., 14 of 15 steps
BASE = ["--train-subset", "192", "--val-subset", "64", "--epochs", "5", "--batch-size", "64", "--no-progress",
        "--holdout", "128", "--data-seed", "3", "--seed", "1", "--device", "cpu", "--epi-every", "2"]


def train(out: Path, *extra: str) -> Path:
    assert main(["train", *BASE, *extra, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("step-branch") / "dense"
    return train(out, "--indicator", "none", "--record-scores", "--keep-checkpoints", "1-3")


def test_replayed_probes_decide_exactly_as_the_steps_did():
    """The policy API: probes recorded from a live step-clock policy (its last_scores and last_half after each
    probe), replayed through a fresh one, give the same history and the same prune step, and the next step() prunes
    with the same channels."""
    per_step = [PEAKED_0, [10 * a for a in PEAKED_1], PEAKED_0, PEAKED_0] + [PEAKED_1] * 30
    live = step_policy(HalvesImportance(per_step), window=1, threshold="auto", max_dense_epochs=20)
    recorded = []
    for s in range(1, 31):
        if live.step():
            break
        if s % 2 == 0:
            recorded.append(RecordedProbe(s, live.last_scores, live.last_half))
    assert live.prune_step == 8
    replay = step_policy(HalvesImportance(per_step), window=1, threshold="auto", max_dense_epochs=20)
    loaded = []
    assert replay.replay_probes(recorded + [RecordedProbe(8, live.last_scores, live.last_half)],
                                loaded.append) == 8
    assert loaded == [8] and not replay.pruned and replay.clock.step == 7
    assert replay.history == live.history and replay.clock.noise == live.clock.noise
    assert replay.step() and replay.prune_step == 8 and replay.kept == live.kept
    assert replay.trigger == live.trigger == "epi" and replay.prune_epoch == live.prune_epoch


def test_replay_refuses_probes_of_another_clock():
    policy = step_policy(HalvesImportance([PEAKED_0]), window=1, threshold=0.9, max_dense_epochs=20)
    with pytest.raises(EpipruneError, match="recorded probe 1 is at step 3, this policy probes every 2 steps"):
        policy.replay_probes([RecordedProbe(3, [np.ones(4), np.ones(6)], None)], lambda s: None)


def test_a_dense_step_clock_run_records_every_probe_and_keeps_the_checkpoint_before_each(dense):
    epochs, probes = read_scores(dense)
    assert epochs == []  # on the step clock the probes are the record
    assert [p["step"] for p in probes] == [2, 4, 6, 8, 10, 12, 14]
    assert [p["epoch"] for p in probes] == [1, 2, 2, 3, 4, 4, 5]
    for p in probes:
        assert {"taylor", "taylor_half", "magnitude", "bn"} <= set(p)
        for full, half in zip(p["taylor"], p["taylor_half"], strict=True):
            assert all(0 <= h <= f for h, f in zip(half, full, strict=True))  # the first half is part of the whole
    kept = sorted(f.name for f in (dense / "checkpoints").iterdir())
    # probes 2, 4, 6, 8 fall in epochs 1-3: the checkpoints after steps 1, 3 (an epoch's end), 5, 7
    assert kept == ["epoch1.pt", "epoch2.pt", "epoch3.pt", "step1.pt", "step3.pt", "step5.pt", "step7.pt"]
    step3, epoch1 = (torch.load(dense / "checkpoints" / n, weights_only=False) for n in ("step3.pt", "epoch1.pt"))
    assert step3["extra"]["partial"] is None and len(step3["extra"]["metrics"]) == 1
    step5 = torch.load(dense / "checkpoints" / "step5.pt", weights_only=False)
    assert step5["extra"]["partial"][0]["step"] == 2 and step5["extra"]["partial"][0]["epoch"] == 2


def rows(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def same_run(scratch: Path, branched: Path) -> dict:
    a, b = load_file(scratch / "model.safetensors"), load_file(branched / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert rows(scratch) == rows(branched)
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (scratch, branched))
    left_out = {"train_seconds", "config", "branched_from", "branch_train_flops", "branch_seconds"}
    assert {k: v for k, v in sa.items() if k not in left_out} == {k: v for k, v in sb.items() if k not in left_out}
    return sb


@pytest.mark.parametrize(("extra", "prune_step"), [
    (("--max-dense-epochs", "1.5", "--epi-threshold", "1.0"), 6),  # fallback inside epoch 2 (after step 5)
    (("--max-dense-epochs", "1.2", "--epi-threshold", "1.0", "--budget", "flops:0.3"), 4),  # first step of epoch 2
    (("--prune-at", "2.1"), 8),  # a fixed prune point of the oracle grid, in fractions of an epoch: the probe at 2.67
    (("--epi-window", "1", "--epi-threshold", "auto"), None),  # the noise floor: the halves are replayed
    (("--epi-window", "1", "--epi-threshold", "0.5", "--epi-smooth", "1"), None),
    (("--importance", "magnitude", "--epi-window", "1", "--epi-threshold", "0.5", "--max-dense-epochs", "2.5"), None),
], ids=["fallback-mid-epoch", "epoch-start-other-budget", "fixed-fraction", "auto", "epi-fixed", "magnitude"])
def test_a_branched_step_clock_run_equals_the_run_from_scratch(dense, tmp_path, extra, prune_step):
    scratch = train(tmp_path / "scratch", *extra)
    branched = train(tmp_path / "branched", *extra, "--branch-from", str(dense))
    summary = same_run(scratch, branched)
    assert summary["prune_step"] is not None and summary["prune_step"] <= 8
    if prune_step is not None:
        assert summary["prune_step"] == prune_step
    assert summary["branched_from"] == str(dense)
    assert 0 < summary["branch_train_flops"] < summary["train_flops_total"]


def test_a_branched_run_killed_after_its_prune_step_resumes_with_its_branch_point(dense, tmp_path):
    """Issue 20: the branch point of a step-clock branch lies inside an epoch, so the metrics do not say where it
    was; the checkpoint keeps it, and the resumed run's summary counts only what the branch trained itself."""
    extra = ["--prune-at", "2.1", "--branch-from", str(dense)]  # prunes at step 8, inside epoch 3
    full = json.loads((train(tmp_path / "full", *extra) / "summary.json").read_text())
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "epiprune", "train", *BASE, *extra, "--out", str(out)]
    killer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 600
    for line in killer.stdout:
        if "pruned at step" in line or time.time() > deadline:
            killer.send_signal(signal.SIGKILL)  # right after the prune step's checkpoint, inside epoch 3
            break
    killer.wait(timeout=60)
    assert killer.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(rows(out)) == 2
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert rows(out) == rows(tmp_path / "full")
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["branched_from"] == full["branched_from"] == str(dense) and resumed["prune_step"] == 8
    # the source's 7 steps are not this run's: its own are step 8 (dense until it prunes) and 7 pruned ones
    assert resumed["branch_train_flops"] == full["branch_train_flops"] == pytest.approx(
        3 * 64 * (full["dense_flops"] + 7 * full["final_flops"]))


def test_a_branch_needing_a_checkpoint_that_was_not_kept_is_refused_in_one_line(dense, tmp_path, capsys):
    result = call_main(["train", *BASE, "--prune-at", "3", "--branch-from", dense, "--out", tmp_path / "late"],
                       capsys)  # the first probe at or after 3 epochs: step 10, in epoch 4
    assert_one_line_error(result, "kept no checkpoint before step 10", "including epoch 4")
    result = call_main(["train", *BASE[:-2], "--epi-every", "4", "--prune-at", "1", "--branch-from", dense,
                        "--out", tmp_path / "other"], capsys)
    assert_one_line_error(result, "this policy probes every 4 steps")


def test_a_fractional_prune_point_is_refused_on_the_epoch_clock(tmp_path, capsys):
    result = call_main(["train", "--prune-at", "1.5", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(result, "--prune-at 1.5 is not a whole number of epochs")
    result = call_main(["train", "--prune-at", "soon", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(result, "--prune-at 'soon' is not a number of epochs")


@pytest.mark.parametrize("importance", ["taylor", "random"])
def test_prune_at_initialisation_on_the_step_clock_is_the_epoch_clocks_run(tmp_path, importance):
    """compare's prune-at-init rows on the step clock: the init batches' gradients are no training steps (before,
    they ticked the clock, a probe pruned during them and the prune that follows was refused: "already pruned"),
    and the run is epoch 0's prune, the same run as on the epoch clock."""
    init = ["--prune-at", "0", "--importance", importance]
    steps = train(tmp_path / "steps", *init)
    epoch = train(tmp_path / "epoch", *BASE[:-2], *init, "--epi-every", "epoch")
    a, b = load_file(steps / "model.safetensors"), load_file(epoch / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    summary = json.loads((steps / "summary.json").read_text())
    assert summary["prune_epoch"] == 0 and summary["prune_step"] == 0 and summary["trigger"] == "fixed"
    assert [r["val_top1"] for r in rows(steps)] == [r["val_top1"] for r in rows(epoch)]
