"""Language models and ViTs trained by `epiprune train` (issue 21): the built-in text corpus (offline, checksum,
deterministic disjoint split), bits per byte, a tiny lm_tiny run that prunes on the step clock and reloads, a short
vit_tiny run whose exports equal the reloaded model, and the one-line refusals."""

import json
import math
import socket
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from epiprune.errors import EpipruneError  # noqa: E402
from epiprune.io.serialization import load_pruned  # noqa: E402
from epiprune.models.hf import lm_tiny  # noqa: E402
from epiprune.run import text  # noqa: E402
from epiprune.run.steps import evaluate  # noqa: E402
from epiprune.run.tasks import TASKS, bits_per_byte  # noqa: E402
from epiprune.run.text import TokenLoader, load_text, split_documents  # noqa: E402

from .helpers import assert_one_line_error, call_main  # noqa: E402

TINY_LM = ["--model", "lm_tiny", "--data", "text", "--epochs", "1", "--epi-every", "auto", "--budget", "flops:0.5",
           "--train-subset", "64", "--val-subset", "8", "--batch-size", "4", "--seq-len", "32", "--no-progress"]


@pytest.fixture
def offline(monkeypatch):
    """Any network connection fails."""
    def refuse(*_args, **_kwargs):
        raise OSError("network access in a test")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_builtin_corpus_loads_offline_and_its_checksum_is_checked(offline, monkeypatch):
    docs = text.builtin_documents()
    assert len(docs) == 34
    assert docs[0].startswith(b"State of the Union Address, 1790, George Washington\n\n")
    assert docs[-1].startswith(b"State of the Union Address, 2020, Donald J Trump\n\n")
    assert 1_400_000 < sum(map(len, docs)) < 1_500_000
    monkeypatch.setattr(text, "BUILTIN_TEXT_SHA256", "0" * 64)
    with pytest.raises(EpipruneError, match=r"^built-in text sotu_extract.txt.gz has SHA256 15582aee") as err:
        text.builtin_documents()
    assert "\n" not in str(err.value)


def test_validation_split_is_each_documents_tail_deterministic_and_disjoint():
    docs = [b"a" * 95 + b"B" * 5, b"0123456789" * 3]
    train, val = split_documents(docs)
    assert train.tobytes() == b"a" * 90 + b"0123456789" * 2 + b"0123456"
    assert val.tobytes() == b"a" * 5 + b"B" * 5 + b"789"
    first, again = load_text(None, 64), load_text(None, 64)
    np.testing.assert_array_equal(first.train_windows, again.train_windows)
    np.testing.assert_array_equal(first.val_windows, again.val_windows)
    # every byte of the corpus is in exactly one split: the splits' lengths add up and each document's pieces join
    full_train, full_val = split_documents(text.builtin_documents())
    assert len(full_train) + len(full_val) == sum(map(len, text.builtin_documents()))
    assert 0.099 < len(full_val) / (len(full_train) + len(full_val)) < 0.101
    assert first.val_windows.shape == ((len(full_val) - 1) // 64, 65)
    loader = TokenLoader(first.train_windows[:3], 2, train=False)
    x, y = next(iter(loader))
    np.testing.assert_array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())  # targets are the next bytes
    assert x.dtype == y.dtype == torch.int64 and x.shape == (2, 64)


def test_user_text_folder_and_its_refusals(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"second file " * 40)
    (tmp_path / "a.txt").write_bytes(b"first file " * 40)
    (tmp_path / "notes.md").write_bytes(b"ignored " * 40)
    data = load_text(tmp_path, 16)
    assert data.name == "textfolder" and data.train_windows[0].tobytes() == b"first file first "
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no text here")
    with pytest.raises(EpipruneError, match=r"^no text in .*empty: it has no non-empty \.txt file"):
        load_text(empty, 16)
    with pytest.raises(EpipruneError, match=r"too little text for --seq-len 4096"):
        load_text(tmp_path, 4096)


def test_bits_per_byte_is_the_cross_entropy_over_ln_2():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 256)
    targets = torch.randint(0, 256, (3, 5))
    by_hand = -torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None]).mean().item()
    task = TASKS.get("text")
    assert task.loss(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)
    assert bits_per_byte(by_hand) == pytest.approx(by_hand / math.log(2), rel=1e-15)
    row = task.row_metrics(1.0, by_hand)
    assert row["val_bits_per_byte"] == pytest.approx(by_hand / math.log(2), rel=1e-15)
    assert row["val_perplexity"] == pytest.approx(math.exp(by_hand), rel=1e-15)
    # evaluate() averages per byte over the whole loader, and counts next-byte hits per byte
    model = lm_tiny().eval()
    windows = np.random.default_rng(0).integers(0, 256, (5, 9), dtype=np.uint8)
    loss, acc = evaluate(model, TokenLoader(windows, 2, train=False), torch.device("cpu"), task=task)
    data = torch.from_numpy(windows).long()
    with torch.no_grad():
        out = model(data[:, :-1]).logits.double()
    expected = -torch.log_softmax(out, -1).gather(-1, data[:, 1:, None]).mean().item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert acc == pytest.approx((out.argmax(-1) == data[:, 1:]).double().mean().item())


def test_lm_tiny_trains_on_text_prunes_on_the_step_clock_and_reloads(tmp_path, capsys):
    out = tmp_path / "lm"
    result = call_main(["train", *TINY_LM, "--out", out], capsys)
    assert result.returncode == 0, result.stderr
    assert "bits/byte" in result.stdout and "val top-1" not in result.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prune_step"] is not None and 0 < summary["prune_step"] < summary["steps_per_epoch"]
    assert summary["epi_every"] > 0 and summary["flops_ratio"] <= 0.5
    row = rows[-1]
    assert row["val_bits_per_byte"] == pytest.approx(row["val_loss"] / math.log(2), rel=1e-12)
    assert row["val_perplexity"] == pytest.approx(math.exp(row["val_loss"]), rel=1e-12)
    assert row["train_bits_per_byte"] == pytest.approx(row["train_loss"] / math.log(2), rel=1e-12)
    assert summary["final_val_bits_per_byte"] == row["val_bits_per_byte"] < 8.0  # better than uniform bytes
    assert 0 <= row["val_top1"] <= 1 and 0 <= row["train_top1"] <= 1  # per byte, not per sequence
    model = load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
    assert model(torch.zeros(1, 32, dtype=torch.long)).logits.shape == (1, 32, 256)
    assert_one_line_error(call_main(["predict", out, str(out / "epi.png")], capsys), "language model", code=2)
    assert_one_line_error(call_main(["export", out, "--format", "onnx"], capsys), "language model",
                          "--format safetensors")


def test_vit_tiny_short_run_prunes_and_its_export_equals_the_reloaded_model(tmp_path, capsys):
    out = tmp_path / "vit"
    result = call_main(["train", "--model", "vit_tiny", "--epochs", "1", "--epi-every", "auto", "--budget",
                        "flops:0.5", "--train-subset", "64", "--val-subset", "32", "--batch-size", "16", "--optimizer",
                        "adamw", "--lr", "1e-3", "--no-progress", "--out", out], capsys)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prune_step"] is not None and summary["flops_ratio"] <= 0.5
    assert "final_val_bits_per_byte" not in summary and "val top-1" in result.stdout
    model = load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
    assert call_main(["export", out, "--out", tmp_path / "vit.pt"], capsys).returncode == 0
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "vit.pt"))(x), model(x))


@pytest.mark.parametrize("argv,fragments", [
    (["--data", "text", "--model", "resnet20"],
     ["model resnet20 takes images, but --data text is text", "accepted: --model lm_tiny"]),
    (["--model", "lm_tiny"], ["model lm_tiny takes text, but --data builtin is images", "resnet20", "vit_tiny"]),
    (["--data", "text", "--model", "lm_tiny", "--seq-len", "1"], ["--seq-len 1", ">= 2"]),
    (["--data", "text", "--model", "lm_tiny", "--holdout", "99999", "--seq-len", "256"],
     ["--holdout 99999 does not fit", "training sequences of 256 bytes", "(accepted: 1.."]),
])
def test_text_settings_that_do_not_fit_are_refused_in_one_line(argv, fragments, tmp_path, capsys):
    assert_one_line_error(call_main(["train", *argv, "--out", tmp_path / "run"], capsys), *fragments)
    assert not (tmp_path / "run").exists()


def test_the_config_refuses_a_model_that_does_not_take_the_data_before_any_data_is_read():
    from epiprune.run.config import TrainConfig

    with pytest.raises(EpipruneError, match=r"^model resnet20 takes images, but --data text is text"):
        TrainConfig(model="resnet20", data="text").validate()
    TrainConfig(model="lm_tiny", data="text").validate()  # accepted
    TrainConfig(model="vit_tiny").validate()


def test_a_data_dir_without_text_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not text")
    result = call_main(["train", "--model", "lm_tiny", "--data", "text", "--data-dir", tmp_path / "images", "--out",
                        tmp_path / "run", "--no-progress"], capsys)
    assert_one_line_error(result, "no text in", ".txt")


def test_registry_transformers_without_the_extra_are_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(EpipruneError, match=r"^model lm_tiny needs Hugging Face transformers") as err:
        lm_tiny()
    assert "pip install 'epiprune[transformers]'" in str(err.value) and "\n" not in str(err.value)
