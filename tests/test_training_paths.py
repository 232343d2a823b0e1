"""The faster training paths a latency table must match: channels-last, autocast (bf16/fp16) and torch.compile."""

import json

import numpy as np
import torch

from epiprune.cli import main
from epiprune.run.checkpoint import load_checkpoint
from epiprune.run.network import trainable
from epiprune.surgery import PrunableGraph

from .helpers import ConvBNNet

TRAIN = ["--train-subset", "192", "--val-subset", "64", "--epochs", "3", "--batch-size", "16", "--prune-at", "1",
         "--no-progress"]


def test_channels_last_and_bf16_train_and_prune(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--channels-last", "--amp", "bf16", "--out", str(out), *TRAIN]) == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["channels_last"] and summary["config"]["amp"] == "bf16"
    assert summary["prune_epoch"] == 1 and summary["final_flops"] < summary["dense_flops"]
    assert np.isfinite(summary["final_val_top1"])


def test_fp16_uses_loss_scaling_and_checkpoints_the_scaler(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--amp", "fp16", "--epochs", "2", "--train-subset", "64", *TRAIN[2:4], *TRAIN[6:],
                 "--out", str(out)]) == 0, capsys.readouterr()
    scaler = load_checkpoint(out / "checkpoint.pt")["extra"]["scaler"]
    assert scaler["scale"] > 1  # fp16 gradients are scaled (the default initial scale is 65536)


def test_compiled_model_is_recompiled_after_the_prune_and_matches_eager():
    torch.manual_seed(0)
    model = ConvBNNet().eval()
    x = torch.randn(4, 1, 8, 8)
    graph = PrunableGraph(model, torch.zeros(1, 1, 8, 8))
    compiled = trainable(model, torch.device("cpu"), compile_model=True)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)
    graph.prune([np.arange(2), np.arange(3)])
    compiled = trainable(model, torch.device("cpu"), compile_model=True)
    assert model.conv2.weight.shape == (3, 2, 3, 3)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_surgery_keeps_channels_last_weights_channels_last():
    model = ConvBNNet().to(memory_format=torch.channels_last)
    graph = PrunableGraph(model, torch.zeros(1, 1, 8, 8))
    graph.prune([np.arange(2), np.arange(3)])
    weight = model.conv2.weight  # (3, 2, 3, 3): the two layouts differ (conv1's single input channel does not)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_in_memory_format_converts_modules_and_4d_tensors_only_when_asked():
    from epiprune.numerics import in_memory_format

    x, flat = torch.randn(2, 3, 4, 4), torch.randn(2, 3)
    assert in_memory_format(x, True).is_contiguous(memory_format=torch.channels_last)
    assert not in_memory_format(x, True).is_contiguous()
    assert in_memory_format(x, False) is x and in_memory_format(flat, True) is flat
    model = in_memory_format(ConvBNNet(), True)
    assert model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv2.weight.is_contiguous()
