"""Training a transformer with `epiprune train` (issue 21, item 5): a transformer's own defaults (AdamW, a warm-up,
the gradient norm clipped) wherever the user gave no value, the clipping itself, bf16 autocast, an lm_tiny run killed
right after its prune inside an epoch and resumed bit for bit, and two torchrun ranks that agree exactly."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from epiprune.evidence.runs import CompareConfig, settings_mismatch  # noqa: E402
from epiprune.run import trainer  # noqa: E402
from epiprune.run.config import TrainConfig  # noqa: E402
from epiprune.run.defaults import CNN_DEFAULTS  # noqa: E402

from .helpers import assert_one_line_error, call_main, run_cli  # noqa: E402
from .test_distributed import torchrun  # noqa: E402

NETWORK_DEPENDENT = tuple(CNN_DEFAULTS)  # optimizer, lr, weight_decay, warmup_epochs, clip_grad_norm
# 4 optimizer steps per epoch, a probe every 2: --prune-at 0.5 prunes at step 2, inside epoch 1
TINY_LM = dict(model="lm_tiny", data="text", train_subset=16, val_subset=8, batch_size=4, seq_len=32,
               budget="flops:0.5", epi_every="2", prune_at=0.5, device="cpu", progress=False)


def settings(cfg: TrainConfig) -> tuple:
    return tuple(getattr(cfg, name) for name in NETWORK_DEPENDENT)


def test_a_transformer_trains_with_adamw_a_warm_up_and_clipping_unless_told_otherwise():
    lm = TrainConfig(model="lm_tiny", data="text", epochs=4, epi_every="auto")
    assert settings(lm) == ("adamw", 1e-3, 0.05, 0.2, 1.0)  # the warm-up: 5% of the epochs
    assert settings(TrainConfig(model="vit_tiny", epochs=20)) == ("adamw", 1e-3, 0.05, 1.0, 1.0)
    lm.validate()
    # a CNN and a user's network keep what every run did before (the golden run's settings)
    for cnn in (TrainConfig(), TrainConfig(model="convnext_mini"), TrainConfig(model="tests.zoo:GroupedNet")):
        assert settings(cnn) == ("sgd", 0.1, 5e-4, 0.0, 0.0)
    # a value given always wins, also one equal to a CNN's default
    given = TrainConfig(model="lm_tiny", data="text", optimizer="sgd", lr=0.1, weight_decay=0.0, warmup_epochs=0.0,
                        clip_grad_norm=0.0)
    assert settings(given) == ("sgd", 0.1, 0.0, 0.0, 0.0)
    # the run records the values it used: a resumed run (TrainConfig of the recorded settings) takes the same
    assert asdict(lm)["optimizer"] == "adamw" and TrainConfig(**asdict(lm)) == lm
    assert TrainConfig(**{**asdict(lm), "epochs": 40}).warmup_epochs == 0.2  # recorded, not derived again
    # compare's runs of a transformer take them too (compare's shared --lr and --warmup-epochs are unset)
    shared = TrainConfig(**CompareConfig(model="lm_tiny", data="text").shared_settings())
    assert settings(shared) == ("adamw", 1e-3, 0.05, 0.6, 1.0)


@pytest.mark.parametrize("argv,fragments", [
    (["--momentum", "0.9"], ["--momentum 0.9 is SGD's and AdamW does not use it"]),  # AdamW: a transformer's default
    (["--clip-grad-norm", "-1"], ["--clip-grad-norm -1.0 is not a number >= 0", "0 for off"]),
    (["--clip-grad-norm", "nan"], ["--clip-grad-norm nan is not a number >= 0"]),
])
def test_settings_a_transformer_run_cannot_take_are_one_line(argv, fragments, tmp_path, capsys):
    result = call_main(["train", *_argv(epochs=1), *argv, "--out", tmp_path / "run"], capsys)  # tiny if accepted
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_a_run_recorded_before_clipping_existed_is_read_as_one_without_it():
    """Runs made before --clip-grad-norm record none: they ran without clipping, whatever their network. A resume
    continues without it (not with a transformer's default), and compare reuses such a run of a CNN, but not of a
    transformer, whose runs clip now."""
    old = asdict(TrainConfig(model="lm_tiny", data="text", epochs=2, epi_every="auto"))
    del old["clip_grad_norm"]
    notes: list[str] = []
    assert TrainConfig(**trainer._saved_settings(old, "old", notes.append)).clip_grad_norm == 0.0
    assert notes == ["note: the run in old records no clip_grad_norm: resumed with today's defaults "
                     "(clip_grad_norm=0.0)"]
    for compared, expected in ((CompareConfig(epochs=6, epi_window=2), None),
                               (CompareConfig(model="lm_tiny", data="text", epochs=6, epi_window=2),
                                "clip_grad_norm=0.0, not 1.0")):
        made = asdict(TrainConfig(**compared.shared_settings()))
        del made["clip_grad_norm"]
        assert settings_mismatch(compared, "dense", 0, made) == expected


def _gradient_norms(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The global L2 norm of the gradients each optimizer step of the next run applies (read by a step pre-hook on
    the run's optimizer: after everything the loop does to the gradients)."""
    norms: list[float] = []
    make = trainer.make_optimizer

    def spied(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        optimizer = make(model, cfg)

        def record(opt: torch.optim.Optimizer, *_: object) -> None:
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        optimizer.register_step_pre_hook(record)
        return optimizer

    monkeypatch.setattr(trainer, "make_optimizer", spied)
    return norms


@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_the_gradient_norm_is_clipped_before_each_step_also_after_the_prune(tmp_path, monkeypatch, amp):
    """fp16: the loss is scaled (by 2^16 at first), so gradients clipped before unscaling would reach the step
    65536 times smaller than the bound."""
    norms = _gradient_norms(monkeypatch)
    result = trainer.train(TrainConfig(**TINY_LM, epochs=1, clip_grad_norm=0.01, amp=amp, out=str(tmp_path / "run")),
                           log=lambda _: None)
    assert result.summary["prune_step"] == 2
    assert len(norms) == 4 if amp == "none" else norms  # two steps dense, two pruned (fp16 skips overflowing ones)
    assert max(norms) <= 0.01 * (1 + 1e-5), norms  # unclipped, a step's norm at initialisation is about 5
    assert min(norms) > 0.009, norms  # clipped to the bound, not below


def test_a_cnn_run_at_its_defaults_does_not_clip(tmp_path, monkeypatch):
    """The golden run's numbers stay: at the default (0) no clipping call touches the gradients."""
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a CNN run at its defaults clipped its gradients")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", refuse)
    cfg = TrainConfig(epochs=2, train_subset=32, val_subset=32, batch_size=16, indicator="none", device="cpu",
                      progress=False, out=str(tmp_path / "run"))
    assert trainer.train(cfg, log=lambda _: None).summary["config"]["clip_grad_norm"] == 0.0


def test_lm_tiny_trains_and_prunes_under_bf16_autocast_with_a_finite_loss(tmp_path, monkeypatch):
    dtypes: list[torch.dtype] = []
    build = trainer.build_network

    def watched(*args: object, **kwargs: object) -> tuple:
        model, ignored = build(*args, **kwargs)
        model.lm_head.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype) if m.training else None)
        return model, ignored

    monkeypatch.setattr(trainer, "build_network", watched)
    out = tmp_path / "run"
    result = trainer.train(TrainConfig(**TINY_LM, epochs=2, amp="bf16", out=str(out)), log=lambda _: None)
    assert len(dtypes) == 8 and set(dtypes) == {torch.bfloat16}  # every training step's forward ran in bf16
    summary = result.summary
    assert summary["prune_step"] == 2 and summary["flops_ratio"] <= 0.5 and summary["config"]["amp"] == "bf16"
    for row in result.metrics:
        assert all(math.isfinite(row[k]) for k in ("train_loss", "val_loss", "val_bits_per_byte")), row
    assert result.metrics[-1]["val_bits_per_byte"] < 8.0  # better than uniform bytes
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # autocast: fp32 weights


def _rows(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _argv(**values: object) -> list[str]:
    """TINY_LM and `values` as `epiprune train` options."""
    argv = []
    for name, value in {**TINY_LM, **values}.items():
        if name != "progress":
            argv += ["--" + name.replace("_", "-"), str(value)]
    return [*argv, "--no-progress"]


def test_an_lm_tiny_run_killed_right_after_its_prune_resumes_bit_identically(tmp_path, capsys):
    """The pruned transformer is rebuilt from the checkpoint (the dense model from the config, the recorded heads
    and neurons cut again), with AdamW's state, the warm-up's schedule and the clipping of the run."""
    # 8 steps per epoch: the warm-up is round(0.1 x 8) = 1 step, the prune at step 4
    args = _argv(epochs=2, train_subset=32)
    full, out = tmp_path / "full", tmp_path / "run"
    done = call_main(["train", *args, "--out", full], capsys)
    assert done.returncode == 0, done.stderr
    summary = json.loads((full / "summary.json").read_text())
    assert summary["prune_step"] == 4 and summary["prune_epoch"] == 1 and summary["config"]["optimizer"] == "adamw"
    assert "optimizer adamw, lr 0.001 cosine per step after 0.1 warm-up epochs" in done.stdout

    killer = subprocess.Popen([sys.executable, "-m", "epiprune", "train", *args, "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in killer.stdout:
        if "pruned at step" in line:  # printed once the prune step's checkpoint is written
            killer.send_signal(signal.SIGKILL)
            break
    killer.wait(timeout=120)
    assert killer.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()  # killed inside epoch 1
    resumed = run_cli("train", "--resume", out, "--no-progress", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "after step 4 of epoch 1 (pruned)" in resumed.stdout
    assert _rows(out) == _rows(full)
    again = json.loads((out / "summary.json").read_text())
    assert again["final_val_bits_per_byte"] == summary["final_val_bits_per_byte"]
    assert again["final_widths"] == summary["final_widths"]
    assert (out / "architecture.json").read_text() == (full / "architecture.json").read_text()
    weights, reference = load_file(str(out / "model.safetensors")), load_file(str(full / "model.safetensors"))
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_two_torchrun_ranks_train_and_prune_transformers_identically(tmp_path):
    """lm_tiny on text and vit_tiny on the built-in images, each pruned inside its epoch on two gloo ranks: every
    rank ends with the same widths, the same parameters bit for bit and the same final metric."""
    # 8 steps of the global batch 4 (2 per rank), the prune at step 4
    configs = [{**TINY_LM, "epochs": 1, "train_subset": 32},
               {**TINY_LM, "model": "vit_tiny", "data": "builtin", "epochs": 1, "train_subset": 32, "val_subset": 32}]
    proc = torchrun(str(Path(__file__).with_name("ddp_train_worker.py")), str(tmp_path), json.dumps(configs),
                    timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for run in ("run0", "run1"):
        ranks = [json.loads((tmp_path / f"{run}-rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0] == ranks[1], run
        assert ranks[0]["world_size"] == 2 and ranks[0]["prune_step"] == 4 and ranks[0]["optimizer"] == "adamw"
        states = [load_file(str(tmp_path / f"{run}-rank{r}.safetensors")) for r in (0, 1)]
        assert states[0].keys() == states[1].keys()
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), (run, key)
    assert json.loads((tmp_path / "run0-rank0.json").read_text())["final_val_bits_per_byte"] < 8.0
