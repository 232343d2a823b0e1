"""`--optimizer adamw`: ConvNeXt-style networks (LayerNorm, no BN) do not learn under SGD; AdamW must train, prune
and carry its moments through the surgery like SGD's momentum."""

import json

import pytest
import torch

from epiprune.cli import main
from epiprune.run.checkpoint import load_checkpoint

from .helpers import assert_one_line_error, call_main


def test_adamw_trains_prunes_and_carries_its_moments(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--train-subset", "128", "--val-subset", "64", "--epochs", "3", "--batch-size", "64",
                 "--prune-at", "1", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05",
                 "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["optimizer"] == "adamw" and summary["flops_ratio"] <= 0.5
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.05
    weights = state["model"]
    moments = [s for s in state["optimizer"]["state"].values()]
    assert moments and all({"exp_avg", "exp_avg_sq"} <= set(s) for s in moments)
    # the moments have the pruned shapes: the first conv's rows are the kept channels
    shapes = {tuple(s["exp_avg"].shape) for s in moments}
    assert tuple(weights["conv1.weight"].shape) in shapes and weights["conv1.weight"].shape[0] < 16
    assert torch.isfinite(torch.tensor(summary["final_val_top1"]))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # argparse's choices: its own exit, with our one-line error
        call_main(["train", "--optimizer", "adam", "--out", tmp_path / "bad"], capsys)
    assert exc.value.code == 2
    capsys.readouterr()
    assert_one_line_error(call_main(["train", "--optimizer", "adam", "--out", tmp_path / "bad"], capsys,
                                    argparse_exit=True), "invalid choice: 'adam'")
    assert not (tmp_path / "bad").exists()
