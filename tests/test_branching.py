"""Branching a pruned run from a recorded dense run (`train --branch-from`) must be the same computation as training
it from scratch: same prune epoch, same kept channels, bit-identical weights and metrics (timings aside). This is
what lets `compare` train the oracle's grid, train-prune-fine-tune and the EPI runs without their dense epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from epiprune.cli import main
from epiprune.run.trajectory import read_scores

from .helpers import assert_one_line_error, call_main

BASE = ["--train-subset", "192", "--val-subset", "64", "--epochs", "5", "--batch-size", "64", "--no-progress",
        "--holdout", "128", "--data-seed", "3", "--seed", "1"]


def train(out: Path, *extra: str) -> Path:
    assert main(["train", *BASE, *extra, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("branch") / "dense"
    return train(out, "--indicator", "none", "--record-scores", "--probe-every", "2", "--keep-checkpoints", "1-5")


def same_run(scratch: Path, branched: Path) -> None:
    a, b = load_file(scratch / "model.safetensors"), load_file(branched / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    rows_a = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (branched / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in x.items() if k != "epoch_seconds"} == \
               {k: v for k, v in y.items() if k != "epoch_seconds"}
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (scratch, branched))
    for key in ("prune_epoch", "trigger", "final_widths", "final_val_top1", "final_test_top1", "train_flops_total"):
        assert sa[key] == sb[key], key


@pytest.mark.parametrize("extra", [
    ("--prune-at", "2"),  # a grid run
    ("--epi-window", "1", "--epi-threshold", "0.5"),  # EPI fires at 2
    ("--importance", "magnitude", "--epi-window", "1", "--epi-threshold", "0.5", "--budget", "flops:0.3"),
    ("--indicator", "earlybird-budget", "--importance", "magnitude", "--epi-window", "1"),
    ("--prune-at", "5", "--finetune-epochs", "1"),  # train-prune-fine-tune
], ids=["fixed", "epi-taylor", "epi-magnitude-other-budget", "earlybird-budget", "tpf"])
def test_a_branched_run_equals_the_run_from_scratch(dense, tmp_path, extra):
    scratch = train(tmp_path / "scratch", *extra)
    branched = train(tmp_path / "branched", *extra, "--branch-from", str(dense))
    same_run(scratch, branched)
    summary = json.loads((branched / "summary.json").read_text())
    assert summary["branched_from"] == str(dense)
    assert 0 < summary["branch_train_flops"] < summary["train_flops_total"]


def test_the_recorded_scores_cover_every_dense_epoch_and_the_probes_add_up(dense):
    epochs, probes = read_scores(dense)
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5]
    assert all({"taylor", "magnitude", "bn"} <= set(r) for r in epochs)
    # 192 - 128 held out... 192 training images at batch 64: 3 steps per epoch, a probe every 2 steps, so the
    # probe windows tile the steps across epoch boundaries: every window holds exactly 2 steps' scores
    assert [p["step"] for p in probes] == [2, 4, 6, 8, 10, 12, 14]
    total_epochs = sum(sum(sum(g) for g in r["taylor"]) for r in epochs[:4])  # steps 1..12
    total_probes = sum(sum(sum(g) for g in p["taylor"]) for p in probes[:6])  # steps 1..12
    assert total_probes == pytest.approx(total_epochs, rel=1e-12)


@pytest.mark.parametrize(("extra", "message"), [
    (("--prune-at", "2", "--lr", "0.05"), "was trained with lr=0.1, this run has 0.05 (accepted: the same lr"),
    (("--prune-at", "2", "--importance", "random"), "--branch-from cannot replay"),
    (("--indicator", "earlybird", "--importance", "bn"), "--branch-from cannot replay indicator 'earlybird'"),
])
def test_a_branch_from_another_trajectory_is_refused_in_one_line(dense, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert_one_line_error(call_main(["train", *BASE, *extra, "--branch-from", dense, "--out", out], capsys), message)
    assert not (out / "summary.json").exists()


def test_a_missing_checkpoint_or_score_file_is_refused_in_one_line(dense, tmp_path, capsys):
    partial = tmp_path / "partial"
    train(partial, "--indicator", "none", "--record-scores", "--keep-checkpoints", "1")
    result = call_main(["train", *BASE, "--prune-at", "2", "--branch-from", partial, "--out", tmp_path / "a"], capsys)
    assert_one_line_error(result, "kept no checkpoint of epoch 2")
    result = call_main(["train", *BASE, "--prune-at", "2", "--branch-from", tmp_path / "nowhere", "--out",
                        tmp_path / "b"], capsys)
    assert_one_line_error(result, "has no scores.jsonl")


def test_a_dense_run_recorded_before_an_option_existed_counts_as_its_default(tmp_path):
    """Old runs have no entry for options added later (model_kwargs, holdout, bn_l1): they ran as the default
    does, so a branch accepts them; a recorded value that differs is still refused."""
    from dataclasses import asdict

    from epiprune.errors import EpipruneError
    from epiprune.run.config import TrainConfig
    from epiprune.run.options import recorded_setting
    from epiprune.run.trajectory import TRAJECTORY_SETTINGS, _check_same_trajectory

    mine = asdict(TrainConfig())
    old = {k: v for k, v in mine.items() if k not in ("model_kwargs", "holdout", "bn_l1", "data_seed")}
    _check_same_trajectory(old, mine, tmp_path)
    assert recorded_setting(old, "model_kwargs") == {} and recorded_setting(old, "holdout") == 0
    assert recorded_setting(old, "not_an_option") is None
    with pytest.raises(EpipruneError, match="trained with holdout=0, this run has 100"):
        _check_same_trajectory(old, {**mine, "holdout": 100}, tmp_path)
    assert {"model_kwargs", "holdout", "bn_l1", "data_seed"} <= set(TRAJECTORY_SETTINGS)


@pytest.mark.parametrize("name,value", [("optimizer", "adamw"), ("clip_grad_norm", 1.0)])
def test_a_branch_refuses_a_dense_run_of_another_optimizer_or_clipping(tmp_path, name, value):
    """Both shape the dense trajectory a branch continues (issue 21 added clipping; a run made before it records
    none and ran without: accepted by a branch that does not clip)."""
    from dataclasses import asdict

    from epiprune.errors import EpipruneError
    from epiprune.run.config import TrainConfig
    from epiprune.run.trajectory import _check_same_trajectory

    mine = asdict(TrainConfig())
    _check_same_trajectory({k: v for k, v in mine.items() if k != "clip_grad_norm"}, mine, tmp_path)
    with pytest.raises(EpipruneError, match=f"trained with {name}=.*, this run has {value!r}"):
        _check_same_trajectory(mine, {**mine, name: value}, tmp_path)


def test_a_run_with_holdout_ends_by_naming_its_test_split(tmp_path, capsys):
    """--holdout: compare reports the test split, so the run's last lines name it beside validation."""
    result = call_main(["train", *BASE, "--epochs", "2", "--indicator", "none", "--out", tmp_path / "r"], capsys)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (f"final val top-1 {100 * summary['final_val_top1']:.2f}%, test top-1 "
            f"{100 * summary['final_test_top1']:.2f}%") in result.stdout
    report = call_main(["report", tmp_path / "r"], capsys)
    assert report.returncode == 0, report.stderr
    assert (f"test split (held out, chooses nothing), after the last epoch: top-1 "
            f"{100 * summary['final_test_top1']:.2f}%") in report.stdout
