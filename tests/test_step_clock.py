"""The step clock (issue 20): EPI probed every N optimizer steps from policy.step(), the noise-floor threshold,
spans in fractions of an epoch, a prune inside an epoch in a foreign loop, in Lightning, and in `epiprune train`
(killed right after it and resumed, bit for bit)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
import torch

from epiprune import Budget, EarlyPruningPolicy, EpipruneError
from epiprune.policy.indicator import structural_similarity
from epiprune.policy.subnetwork import normalise_per_group, select_subnetwork, widths_of
from epiprune.run.config import TrainConfig

from .helpers import ConvBNNet, assert_one_line_error, call_main, run_cli
from .test_decision import PEAKED_0, PEAKED_1, ScriptedImportance, alternating_then_stable


def step_policy(importance: Any = None, **kwargs: Any) -> EarlyPruningPolicy:
    kwargs.setdefault("smooth", 1)
    kwargs.setdefault("epi_every", 2)
    kwargs.setdefault("steps_per_epoch", 4)
    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), log=lambda _: None,
                                **kwargs)
    if importance is not None:
        policy.importance = importance
    return policy


def pruning_steps(policy: EarlyPruningPolicy, steps: int) -> list[int]:
    """Call step() `steps` times (no training: the scores are scripted); the steps at which it pruned."""
    return [s + 1 for s in range(steps) if policy.step()]


@pytest.mark.parametrize("window", [1, 2])
def test_epi_fires_at_exactly_the_probe_whose_value_crosses_the_threshold(window):
    # one script entry per probe: architectures alternate for 3 probes, then stay; EPI = 1 at probe 3 + window
    policy = step_policy(ScriptedImportance(alternating_then_stable(3)), window=window, threshold=0.95,
                         max_dense_epochs=20)
    expected_probe = 3 + window
    assert pruning_steps(policy, 40) == [2 * expected_probe]
    assert policy.prune_step == 2 * expected_probe and policy.trigger == "epi"
    assert policy.prune_epoch == -(-2 * expected_probe // 4)  # the epoch the step fell in
    assert [r.step for r in policy.history] == [2 * (i + 1) for i in range(expected_probe)]
    assert [r.decision for r in policy.history] == [None] * (expected_probe - 1) + ["epi"]
    assert all(r.epi is None or r.epi < 0.95 for r in policy.history[:-1])


def test_end_epoch_does_not_probe_on_the_step_clock():
    policy = step_policy(ScriptedImportance([PEAKED_0]), window=1, threshold=0.95, max_dense_epochs=20)
    assert not policy.end_epoch() and not policy.end_epoch()
    assert policy.history == [] and policy.epoch == 2


def test_the_fallback_and_the_dense_span_are_fractions_of_an_epoch():
    # 4 steps per epoch, a probe every 2: the fallback at 1.5 epochs is step 6, the third probe
    never = step_policy(ScriptedImportance(alternating_then_stable(20)), window=1, threshold=0.99, max_dense_epochs=1.5)
    assert pruning_steps(never, 20) == [6] and never.trigger == "fallback"
    # a stable architecture gives EPI 1 from the second probe (step 4), but not before 1.25 epochs (step 5)
    late = step_policy(ScriptedImportance([PEAKED_0]), window=1, threshold=0.95, min_dense_epochs=1.25,
                       max_dense_epochs=20)
    assert pruning_steps(late, 20) == [6] and late.trigger == "epi"
    fixed = step_policy(ScriptedImportance([PEAKED_0]), window=1, prune_at=1)
    assert pruning_steps(fixed, 20) == [4] and fixed.trigger == "fixed"


class HalvesImportance:
    """A gradient importance whose per-step scores are given: step k adds per_step[k] (the last repeats)."""

    name, default_threshold, needs_gradients = "scripted", 0.944, True

    def __init__(self, per_step: list[list[np.ndarray]]) -> None:
        self.per_step, self.k = per_step, 0
        self.reset()

    def bind(self, graph: Any) -> None:
        self.reset()

    def reset(self) -> None:
        self.totals, self.steps = [np.zeros(4), np.zeros(6)], 0

    def step(self, grad_scale: float = 1.0) -> None:
        add = self.per_step[min(self.k, len(self.per_step) - 1)]
        self.totals = [t + a for t, a in zip(self.totals, add, strict=True)]
        self.k, self.steps = self.k + 1, self.steps + 1

    def scores(self) -> list[np.ndarray]:
        return [t.copy() for t in self.totals]

    def state_tensors(self) -> list[torch.Tensor]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_the_auto_threshold_is_the_running_mean_of_the_halves_similarity():
    # probes of 2 steps. Probe 1: its halves rank like PEAKED_0 and (ten times louder) PEAKED_1, so they disagree;
    # later probes' halves agree. The probes' architectures go [4, 2], [1, 6], [4, 2], [4, 2]: EPI is 1 at probe 4
    per_step = [PEAKED_0, [10 * a for a in PEAKED_1], PEAKED_0, PEAKED_0] + [PEAKED_1] * 30
    policy = step_policy(HalvesImportance(per_step), window=1, threshold="auto", max_dense_epochs=20)
    assert pruning_steps(policy, 30) == [8]
    expected_noise = []
    for record in policy.history:
        halves = per_step[record.step - 2], per_step[record.step - 1]
        a, b = (widths_of(select_subnetwork(normalise_per_group(h), policy.cost, policy.target, 1, 1,
                                            policy.partitions)) for h in halves)
        expected_noise.append(structural_similarity(a, b, policy.layer_weights))
        assert record.noise == pytest.approx(expected_noise[-1])
        assert record.threshold == pytest.approx(np.mean(expected_noise))  # the running mean, this probe included
    assert expected_noise[0] < 0.9 and expected_noise[1:] == [1.0, 1.0, 1.0]
    assert [r.widths for r in policy.history] == [[4, 2], [1, 6], [4, 2], [4, 2]]
    # it fires at the first probe whose EPI reaches its threshold (smooth 1): EPI 1 at probe 4, threshold < 1
    assert [r.decision for r in policy.history] == [None, None, None, "epi"]
    assert all(r.epi is None or r.epi < r.compared_with for r in policy.history[:-1])


def test_the_auto_threshold_follows_the_noise_it_measures():
    """Halves that always agree give the threshold 1; halves that disagree give a lower one."""
    calm = step_policy(HalvesImportance([PEAKED_0]), window=1, threshold="auto", max_dense_epochs=20)
    pruning_steps(calm, 4)
    noisy = step_policy(HalvesImportance([PEAKED_0, PEAKED_1]), window=1, threshold="auto", max_dense_epochs=20)
    pruning_steps(noisy, 4)
    assert calm.history[-1].threshold == 1.0 > noisy.history[-1].threshold


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epi_every": 4}, "epi_every 4 needs steps_per_epoch"),
    ({"epi_every": 1, "steps_per_epoch": 4}, "epi_every 1 is too small or not a whole number"),
    ({"threshold": "auto"}, "threshold 'auto' needs the step clock and a gradient importance"),
    ({"max_dense_epochs": 1.5}, "max dense epochs 1.5 is not a whole number of epochs"),
    ({"epi_every": 2, "steps_per_epoch": 4, "threshold": "auto", "importance": "magnitude"},
     "threshold 'auto' needs the step clock and a gradient importance"),
])
def test_bad_clock_settings_are_one_line(kwargs, message):
    with pytest.raises(EpipruneError) as err:
        EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), log=lambda _: None, **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize(("args", "message"), [
    (["--epi-every", "1"], "--epi-every '1' is not a clock"),
    (["--epi-every", "often"], "--epi-every 'often' is not a clock"),
    (["--epi-threshold", "auto"], "--epi-threshold auto needs the step clock"),
    (["--epi-threshold", "high"], "--epi-threshold 'high' is not a number"),
    (["--epi-every", "4", "--epi-threshold", "auto", "--importance", "bn"], "--epi-threshold auto needs gradient"),
    (["--max-dense-epochs", "2.5"], "--max-dense-epochs 2.5 is not a whole number of epochs"),
    (["--epi-every", "4", "--record-scores", "--probe-every", "2"], "--probe-every 2 is the epoch clock's extra"),
])
def test_bad_clock_options_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert_one_line_error(call_main(["train", *args, "--out", str(out)], capsys), message)
    assert not out.exists()


def test_auto_spreads_probes_over_the_schedule():
    from epiprune.run.config import PROBES_PER_SCHEDULE

    assert TrainConfig(epochs=12, epi_every="auto").resolved_epi_every(47) == round(12 * 47 / PROBES_PER_SCHEDULE)
    assert TrainConfig(epochs=2, epi_every="auto").resolved_epi_every(3) == 2  # at least 2 (two halves)
    cfg = TrainConfig(epochs=12, epi_every="auto", epi_threshold="auto")
    config = cfg.policy_config(47)
    assert (config.epi_every, config.steps_per_epoch, config.threshold, config.max_dense_epochs) == (24, 47, "auto", 6)
    assert TrainConfig().policy_config(47).epi_every == 0


def test_a_foreign_loop_with_adamw_prunes_inside_an_epoch_and_keeps_training():
    torch.manual_seed(0)
    model = ConvBNNet()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), epi_every=3,
                                steps_per_epoch=8, max_dense_epochs=1.5, threshold=1.0, log=lambda _: None)
    pruned_at, losses = [], []
    for step in range(24):  # three epochs of 8 batches
        batch = slice(8 * (step % 8), 8 * (step % 8) + 8)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        if policy.step(optimizer=optimizer):
            pruned_at.append(step + 1)
            kept = model.conv1.weight.shape[0]
            assert model.conv1.weight.grad.shape[0] == kept  # the step's gradients were cut with the weights
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert pruned_at == [12] and policy.prune_step == 12 and policy.trigger == "fallback"  # 1.5 epochs of 8 steps
    assert policy.prune_epoch == 2
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert optimizer.state[p]["exp_avg"].shape == p.shape  # AdamW's state followed the surgery
    assert all(np.isfinite(losses))


def test_lightning_callback_prunes_on_the_step_clock(tmp_path):
    pytest.importorskip("lightning")
    import lightning

    from epiprune.policy.lightning_callback import EarlyPruningCallback

    from .test_lightning import Classifier

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)  # 4 steps per epoch
    callback = EarlyPruningCallback(torch.zeros(1, 1, 16, 16), Budget("flops", 0.5), window=1, epi_every=2,
                                    max_dense_epochs=1.5, threshold=1.0)
    trainer = lightning.Trainer(max_epochs=3, callbacks=[callback], accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=tmp_path)
    module = Classifier()
    trainer.fit(module, loader)
    policy = callback.policy
    assert policy.clock.steps_per_epoch == 4  # taken from the trainer
    assert policy.pruned and policy.prune_step == 6 and policy.prune_epoch == 2
    assert module.net.layers[0].conv1.weight.shape[0] < 16


# 512 / 64 = 8 steps per epoch, a probe every 4 steps; EPI cannot pass tau 1.0 easily, the fallback at 1.5 epochs
# (step 12) prunes inside epoch 2 unless EPI fires at step 4 or 8 before it
ARGS = ["--device", "cpu", "--train-subset", "512", "--val-subset", "128", "--epochs", "4", "--epi-window", "1",
        "--epi-every", "4", "--max-dense-epochs", "1.5", "--epi-threshold", "1.0", "--batch-size", "64",
        "--no-progress"]


def rows(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_run_killed_right_after_a_prune_inside_an_epoch_resumes_bit_identically(tmp_path):
    full, out = tmp_path / "full", tmp_path / "run"
    proc = run_cli("train", *ARGS, "--out", full, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((full / "summary.json").read_text())
    assert summary["prune_step"] == 12 and summary["prune_epoch"] == 2 and summary["epi_every"] == 4
    assert summary["trigger"] == "fallback"
    metrics = rows(full)
    assert metrics[1]["prune_step"] == 12 and [p["step"] for p in metrics[1]["probes"]] == [12]
    assert [p["step"] for p in metrics[0]["probes"]] == [4, 8] and "probes" in metrics[2]
    # training cost: 12 dense steps, then pruned ones (the FLOPs of each step as it was taken)
    dense, pruned = summary["dense_flops"], summary["final_flops"]
    assert summary["train_flops_total"] == pytest.approx(3 * 64 * (12 * dense + 20 * pruned))

    cmd = [sys.executable, "-m", "epiprune", "train", *ARGS, "--out", str(out)]
    killer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 600
    for line in killer.stdout:
        if "pruned at step" in line or time.time() > deadline:
            killer.send_signal(signal.SIGKILL)  # right after the prune step's checkpoint
            break
    killer.wait(timeout=60)
    assert killer.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(rows(out)) == 1  # killed inside epoch 2
    resumed = run_cli("train", "--resume", out, "--no-progress", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "after step 4 of epoch 2" in resumed.stdout
    assert rows(out) == metrics
    assert json.loads((out / "summary.json").read_text())["final_val_top1"] == summary["final_val_top1"]


def test_a_schedule_where_epi_cannot_fire_before_the_fallback_is_warned_about(tmp_path):
    proc = run_cli("train", "--device", "cpu", "--train-subset", "128", "--val-subset", "64", "--epochs", "6",
                   "--batch-size", "64", "--no-progress", "--out", tmp_path / "run", timeout=900)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: epi cannot fire")]
    assert len(warnings) == 1 and "fallback at epoch 4: it needs 5 epochs (window + smoothing)" in warnings[0]
    assert "pruned after epoch 4 (fallback)" in proc.stdout


def _live_run_with_records(per_step: list[list[np.ndarray]], steps: int, **kwargs: Any
                           ) -> tuple[EarlyPruningPolicy, list[int], list[Any]]:
    """A step-clock policy driven for `steps` steps; the steps it pruned at and every probe as recorded for replay
    (the interval's scores and its first half's, what --record-scores writes)."""
    from epiprune.policy.replay import RecordedProbe

    policy = step_policy(HalvesImportance(per_step), **kwargs)
    pruned, probes = [], []
    for s in range(1, steps + 1):
        before = len(policy.history)
        if policy.step():
            pruned.append(s)
        if len(policy.history) > before:
            probes.append(RecordedProbe(s, [a.copy() for a in policy.last_scores],
                                        None if policy.last_half is None else [a.copy() for a in policy.last_half]))
    return policy, pruned, probes


@pytest.mark.parametrize("threshold", [0.95, "auto"])
def test_replayed_probes_prune_at_the_step_and_with_the_channels_of_the_live_run(threshold):
    per_step = [PEAKED_0, [10 * a for a in PEAKED_1], PEAKED_0, PEAKED_0] + [PEAKED_1] * 30
    live, pruned, probes = _live_run_with_records(per_step, 30, window=1, threshold=threshold, max_dense_epochs=20)
    assert len(pruned) == 1 and live.trigger == "epi"
    replayed = step_policy(HalvesImportance([PEAKED_0]), window=1, threshold=threshold, max_dense_epochs=20)
    calls: list[int] = []
    assert replayed.replay_probes(probes, calls.append) == pruned[0] == calls[0]
    assert not replayed.pruned  # the probe step is trained again: the next step() prunes
    assert [(r.step, r.epi, r.noise, r.threshold, r.decision) for r in replayed.history] == \
        [(r.step, r.epi, r.noise, r.threshold, r.decision) for r in live.history]
    model = replayed.graph.model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert replayed.step(optimizer=optimizer) and replayed.prune_step == live.prune_step == pruned[0]
    assert replayed.kept == live.kept
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    assert replayed.trigger == "epi" and not replayed.step()


def test_replayed_probes_that_never_fire_and_bad_records_are_refused():
    from epiprune.policy.replay import RecordedProbe

    louder_1 = [10 * a for a in PEAKED_1]  # probes of 2 steps whose architectures alternate: EPI stays low
    _, pruned, probes = _live_run_with_records([PEAKED_0, PEAKED_0, louder_1, louder_1] * 3, 12, window=1,
                                               threshold=0.999, max_dense_epochs=20)
    assert pruned == []
    calls: list[int] = []
    fresh = step_policy(HalvesImportance([PEAKED_0]), window=1, threshold=0.999, max_dense_epochs=20)
    assert fresh.replay_probes(probes, calls.append) is None and calls == []
    assert len(fresh.history) == len(probes) == 6
    other_period = step_policy(HalvesImportance([PEAKED_0]), window=1, epi_every=4, max_dense_epochs=20)
    with pytest.raises(EpipruneError, match=r"^recorded probe 1 is at step 2, this policy probes every 4 steps "
                                            r"\(accepted: probes recorded with the same --epi-every\)$"):
        other_period.replay_probes(probes, calls.append)
    used = step_policy(HalvesImportance([PEAKED_0]), window=1, max_dense_epochs=20)
    used.step()
    with pytest.raises(EpipruneError, match=r"^replay_probes starts from a fresh policy \(accepted: a policy that has "
                                            r"seen no step\)$"):
        used.replay_probes(probes, calls.append)
    epoch_clock = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), log=lambda _: None)
    with pytest.raises(EpipruneError, match=r"^replay_probes decides on the step clock \(accepted: a policy with "
                                            r"epi_every >= 2, or replay on the epoch clock\)$"):
        epoch_clock.replay_probes(probes, calls.append)
    with pytest.raises(EpipruneError, match=r"^replay decides on the epoch clock \(accepted: a policy with "
                                            r"epi_every=0, or replay_probes on the step clock\)$"):
        fresh.replay([[np.ones(4), np.ones(6)]], lambda epoch: None)
    assert not epoch_clock.step()  # the epoch clock never prunes from step()
    assert RecordedProbe(2, [np.ones(4)], None).half is None


def test_a_step_clock_policy_resumed_after_the_half_of_an_interval_decides_as_the_uninterrupted_one(tmp_path):
    import copy

    per_step = [PEAKED_0, [10 * a for a in PEAKED_1]] * 4 + [PEAKED_1] * 30
    kwargs = {"window": 1, "threshold": "auto", "max_dense_epochs": 20, "epi_every": 4}
    live = step_policy(HalvesImportance(per_step), **kwargs)
    assert pruning_steps(live, 7) == []  # a probe at step 4; step 6 ended the second interval's first half
    torch.save(live.state_dict(), tmp_path / "policy.pt")  # as a checkpoint stores it
    resumed = step_policy(HalvesImportance(per_step), **kwargs)
    resumed.load_state_dict(torch.load(tmp_path / "policy.pt", weights_only=True))
    resumed.importance = copy.deepcopy(live.importance)  # the scripted importance keeps no state of its own
    assert resumed.clock.step == 7 and resumed.clock.half is not None and resumed.clock.noise == live.clock.noise
    assert pruning_steps(resumed, 30) == pruning_steps(live, 30) != []
    assert [(r.step, r.epi, r.noise, r.threshold, r.decision) for r in resumed.history] == \
        [(r.step, r.epi, r.noise, r.threshold, r.decision) for r in live.history]
    assert resumed.history[1].noise is not None  # the interval the state cut in two still has its noise estimate
    other = step_policy(HalvesImportance(per_step), **{**kwargs, "epi_every": 2})
    with pytest.raises(EpipruneError, match="policy state was made with every 4, this policy has 2"):
        other.load_state_dict(live.state_dict())
    longer_epochs = step_policy(HalvesImportance(per_step), **{**kwargs, "steps_per_epoch": 8})
    with pytest.raises(EpipruneError, match="made with steps_per_epoch 4, this policy has 8"):
        longer_epochs.load_state_dict(live.state_dict())


@pytest.mark.parametrize(("rule", "clock", "probes", "expected"), [
    ({"window": 3, "smooth": 2, "max_dense_epochs": 4}, None, 5,
     "epi cannot fire before the fallback at epoch 4: it needs 5 epochs (window + smoothing); the run"),
    ({"window": 3, "smooth": 2, "max_dense_epochs": 5}, None, 5, None),  # fires at epoch 5 at the earliest
    ({"max_dense_epochs": 3}, (12, 47), 5, None),  # 5 probes of 12 steps: epoch 1.28
    ({"max_dense_epochs": 1}, (12, 47), 5,
     "epi cannot fire before the fallback at epoch 1: it needs 5 probes of 12 steps (window + smoothing), until "
     "epoch 1.28;"),
    ({"min_dense_epochs": 3, "max_dense_epochs": 3}, (12, 47), 5, None),  # the minimum span ends at the fallback
    ({"min_dense_epochs": 2, "max_dense_epochs": 2}, None, 2, None),
    ({"max_dense_epochs": 4, "prune_at": 2}, None, 5, None),  # a fixed prune point: nothing to warn about
    ({}, None, 5, None),  # no fallback
])
def test_when_the_indicator_cannot_fire_before_the_fallback(rule, clock, probes, expected):
    from epiprune.policy.clock import StepClock, cannot_fire_before_fallback
    from epiprune.policy.indicator import TriggerRule

    step_clock = None if clock is None else StepClock(*clock)
    message = cannot_fire_before_fallback("epi", TriggerRule(**rule), step_clock, probes)
    assert message == expected or (expected is not None and message.startswith(expected)), message


def test_the_policy_counts_the_probes_its_indicator_needs_before_the_fallback():
    def policy(**kwargs: Any) -> EarlyPruningPolicy:
        return EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), log=lambda _: None,
                                  **kwargs)

    assert "it needs 5 epochs" in policy(window=3, smooth=2, max_dense_epochs=4).epi_cannot_fire_before_fallback()
    assert policy(window=2, smooth=2, max_dense_epochs=4).epi_cannot_fire_before_fallback() is None
    assert policy(indicator="none", max_dense_epochs=1).epi_cannot_fire_before_fallback() is None
    earlybird = policy(indicator="earlybird", earlybird_queue=5, max_dense_epochs=5)
    assert "it needs 6 epochs" in earlybird.epi_cannot_fire_before_fallback()
    assert policy(indicator="earlybird", earlybird_queue=4, max_dense_epochs=5).epi_cannot_fire_before_fallback() \
        is None


class PerStepImportance(HalvesImportance):
    """HalvesImportance for any model: per_step[k] are the scores step k adds, one array per group."""

    def reset(self) -> None:
        self.totals, self.steps = [np.zeros_like(a) for a in self.per_step[0]], 0


@pytest.mark.parametrize("average", ["layer", "group"])
def test_the_noise_floor_compares_the_halves_as_epi_averages_them(average):
    """ResNet-20, probes of 2 steps: the two halves differ only in stage 1's residual group (4 layers), so the
    layer average (the paper's) weighs that disagreement 4 times; the second half's scores are all below 1 (the
    interval's total minus its first half, clamped at 0, ranks them, not a floor of 1)."""
    from epiprune.models import build_model

    model = build_model("resnet20", num_classes=10, in_channels=1)
    probe = EarlyPruningPolicy(model, torch.zeros(1, 1, 28, 28), Budget("flops", 0.5), log=lambda _: None)
    rng = np.random.default_rng(0)
    first = [rng.random(w) + 1.0 for w in probe.dense_widths]
    second = [a / 4 for a in first]  # the same ranking, all below 1 ...
    second[0] = np.linspace(0.9, 0.01, len(first[0]))  # ... except stage 1's group, ranked the other way round
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 28, 28), Budget("flops", 0.5), log=lambda _: None,
                                importance=PerStepImportance([first, second]), epi_every=2, steps_per_epoch=4,
                                threshold="auto", epi_average=average, smooth=1, max_dense_epochs=20)
    policy.step(), policy.step()
    halves = [widths_of(policy.select(h)) for h in (first, second)]
    weights = policy.layer_weights if average == "layer" else None
    assert policy.history[0].noise == pytest.approx(structural_similarity(*halves, weights))
    assert structural_similarity(*halves, policy.layer_weights) != pytest.approx(structural_similarity(*halves))
    assert policy.history[0].noise < 1.0


def test_a_probe_without_a_snapshot_at_its_half_has_no_noise_estimate():
    """A run resumed after the half of an interval has only the second half's importance: no noise measured."""
    policy = step_policy(HalvesImportance([PEAKED_0]), window=1, threshold="auto", epi_every=4, max_dense_epochs=20)
    pruning_steps(policy, 3)
    policy.clock.half = None  # as after a resume from a checkpoint written before the half
    pruning_steps(policy, 1)
    assert policy.history[0].noise is None and policy.clock.noise == []


def test_the_step_clock_refuses_a_bool_or_a_non_positive_epoch_length():
    from epiprune.policy.clock import StepClock

    assert StepClock(2, 1).steps_per_epoch == 1
    for bad in (0, True, 2.5):
        with pytest.raises(EpipruneError, match=rf"^steps_per_epoch {bad!r} is too small or not a whole number "
                                                r"\(accepted: an integer >= 1\)$"):
            StepClock(2, bad)


def test_a_pruned_step_clock_policy_restores_its_prune_step_and_refuses_the_other_clock(tmp_path):
    live = step_policy(ScriptedImportance(alternating_then_stable(3)), window=1, threshold=0.95, max_dense_epochs=20)
    assert pruning_steps(live, 20) == [8]
    torch.save(live.state_dict(), tmp_path / "policy.pt")
    resumed = step_policy(ScriptedImportance([PEAKED_0]), window=1, threshold=0.95, max_dense_epochs=20)
    resumed.load_state_dict(torch.load(tmp_path / "policy.pt", weights_only=True))
    assert (resumed.prune_step, resumed.trigger, resumed.kept, resumed.clock.step) == (8, "epi", live.kept, 8)
    assert resumed.summary()["prune_step"] == 8
    epoch_clock = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), log=lambda _: None,
                                     window=1, threshold=0.95, max_dense_epochs=20, smooth=1)
    message = r"^policy state does not match: one clock probes per epoch, the other every N steps \(accepted: the same"
    with pytest.raises(EpipruneError, match=message):
        epoch_clock.load_state_dict(step_policy(window=1, threshold=0.95, max_dense_epochs=20).state_dict())


def test_a_probe_that_prunes_points_the_optimizer_at_the_cut_tensors():
    policy = step_policy(ScriptedImportance(alternating_then_stable(3)), window=1, threshold=0.95, max_dense_epochs=20)
    model = policy.graph.model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruned = [s + 1 for s in range(20) if policy.step(optimizer=optimizer)]
    assert pruned == [8] and [p.shape for p in optimizer.param_groups[0]["params"]] == \
        [p.shape for p in model.parameters()] != []
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_probes_recorded_without_a_gradient_importance_replay_without_noise():
    """Magnitude importance records no first half (RecordedProbe.half None): the replay decides on the intervals."""
    from epiprune.policy.replay import RecordedProbe

    probes = [RecordedProbe(2 * k, [a.copy() for a in script], None)
              for k, script in enumerate(alternating_then_stable(3) + [alternating_then_stable(3)[-1]] * 3, 1)]
    policy = step_policy(ScriptedImportance([PEAKED_0]), window=1, threshold=0.95, max_dense_epochs=20)
    assert policy.replay_probes(probes, lambda step: None) == 8
    assert [r.noise for r in policy.history] == [None] * 4


def test_a_step_clock_whose_probes_come_too_late_says_so_in_probes():
    policy = step_policy(window=3, smooth=2, max_dense_epochs=2)  # 5 probes of 2 steps: epoch 2.5 of 4-step epochs
    assert policy.epi_cannot_fire_before_fallback() == (
        "epi cannot fire before the fallback at epoch 2: it needs 5 probes of 2 steps (window + smoothing), until "
        "epoch 2.50; the run will prune by fallback (accepted: --epi-every auto or a smaller --epi-window / "
        "--epi-smooth, or a later --max-dense-epochs)")


def test_probe_records_carry_the_epoch_of_their_step_not_the_epochs_closed():
    # 4 steps per epoch, a probe every 2 steps; end_epoch is never called (a loop that counts only steps)
    policy = step_policy(ScriptedImportance(alternating_then_stable(20)), window=1, threshold=0.99,
                         max_dense_epochs=20)
    pruning_steps(policy, 10)
    assert [(r.step, r.epoch) for r in policy.history] == [(2, 1), (4, 1), (6, 2), (8, 2), (10, 3)]


def test_a_prune_at_initialisation_on_the_step_clock_is_epoch_zero():
    policy = step_policy(ScriptedImportance([PEAKED_0]), window=1, prune_at=0)
    policy.prune_now(trigger="fixed")
    assert (policy.prune_epoch, policy.prune_step) == (0, 0)


def test_replay_refuses_a_policy_that_has_probed():
    from epiprune.policy.replay import replay_probes

    policy = step_policy(ScriptedImportance(alternating_then_stable(20)), window=1, threshold=0.99,
                         max_dense_epochs=20)
    pruning_steps(policy, 2)
    assert policy.history and not policy.pruned
    policy.clock.step = 0  # a policy that has probed, whatever its clock says
    with pytest.raises(EpipruneError, match=r"^replay_probes starts from a fresh policy \(accepted: a policy that "
                                            r"has seen no step\)$"):
        replay_probes(policy, [], lambda: None)
