"""Behavioural tests of the pruning decision: scripted importance scores make the dominant sub-network, and so EPI
and Early-Bird's mask distance, change in a known way, and each trigger must fire at exactly the epoch it should.

(Every end-to-end test elsewhere sets min = max dense epochs, so the fallback alone guarantees a prune there.)
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from epiprune import Budget, EarlyPruningPolicy, EpipruneError
from epiprune.policy.indicator import TriggerRule, early_pruning_indicator, earlybird_stability, structural_similarity

from .helpers import ConvBNNet, run_cli

# ConvBNNet has two channel groups, 4 and 6 channels wide. One channel far above the rest makes a group's
# normalised scores "peaked": its best channel ranks first, the others last; a flat group ranks in between.
PEAKED_0 = [np.array([10.0, 0.1, 0.1, 0.1]), np.ones(6)]  # group 0 shrinks to its best channel
PEAKED_1 = [np.ones(4), np.array([10.0, 0.1, 0.1, 0.1, 0.1, 0.1])]  # group 1 does


class ScriptedImportance:
    """An Importance whose scores for epoch e (1-based) are script[e - 1] (the last entry repeats)."""

    needs_gradients = False

    def __init__(self, script: list[list[np.ndarray]]) -> None:
        self.script, self.epoch, self.steps = script, 0, 0

    def step(self, grad_scale: float = 1.0) -> None:
        self.steps += 1

    def scores(self) -> list[np.ndarray]:
        return [s.copy() for s in self.script[min(self.epoch, len(self.script) - 1)]]

    def reset(self) -> None:  # the policy resets after each epoch's decision
        self.epoch, self.steps = self.epoch + 1, 0

    def state_tensors(self) -> list[torch.Tensor]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.epoch = state["steps"], state["epoch"]


def scripted_policy(script: list[list[np.ndarray]], **kwargs: Any) -> EarlyPruningPolicy:
    """A policy whose EPI is compared with tau directly (smooth 1) unless the test says otherwise."""
    kwargs.setdefault("smooth", 1)
    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), **kwargs)
    policy.importance = ScriptedImportance(script)
    return policy


def run(policy: EarlyPruningPolicy, epochs: int) -> list[int]:
    """End `epochs` epochs (no training: the scores are scripted); the epochs in which the policy pruned."""
    return [e + 1 for e in range(epochs) if policy.end_epoch()]


def alternating_then_stable(unstable_epochs: int) -> list[list[np.ndarray]]:
    """PEAKED_0, PEAKED_1, PEAKED_0, ... for `unstable_epochs` epochs, then the last of those forever."""
    return [PEAKED_0 if e % 2 == 0 else PEAKED_1 for e in range(unstable_epochs)]


def test_scripted_scores_make_two_distant_architectures():
    """The premise of the tests below: the two scripts select different widths, far apart in EPI's terms."""
    a = scripted_policy([PEAKED_0])
    b = scripted_policy([PEAKED_1])
    wa, wb = [int(m.sum()) for m in a.dominant_subnetwork()], [int(m.sum()) for m in b.dominant_subnetwork()]
    assert (wa, wb) == ([1, 6], [4, 2])
    assert structural_similarity(wa, wb) == 1 - (3 / 5 + 4 / 8) / 2


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("unstable_epochs", [3, 4])
def test_epi_triggers_at_exactly_the_epoch_it_crosses_tau(window, unstable_epochs):
    policy = scripted_policy(alternating_then_stable(unstable_epochs), window=window, threshold=0.95,
                             max_dense_epochs=20)
    # architectures alternate for `unstable_epochs` epochs, then repeat the last one: EPI_t = 1 once the
    # window holds only that one, i.e. at epoch unstable_epochs + window; before that some Psi < 0.8
    expected = unstable_epochs + window
    assert run(policy, 20) == [expected]
    assert policy.trigger == "epi" and policy.prune_epoch == expected
    assert [r.decision for r in policy.history] == [None] * (expected - 1) + ["epi"]
    widths = [r.widths for r in policy.history]
    for i, record in enumerate(policy.history):
        assert record.epi == early_pruning_indicator(widths[: i + 1], window)
    assert policy.history[-1].epi == 1.0
    assert all(r.epi is None or r.epi < 0.95 for r in policy.history[:-1])
    assert policy.widths() == widths[-1]  # pruned to the sub-network of the trigger epoch


def test_the_default_compares_the_mean_of_the_last_two_epi_values_with_tau():
    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), window=1,
                                threshold=0.95, max_dense_epochs=20)
    policy.importance = ScriptedImportance(alternating_then_stable(3))
    assert policy.rule.smooth == 2
    # EPI is 1 from epoch 4 on and below 0.8 before: the mean of two reaches tau one epoch later, at 5
    assert run(policy, 20) == [5] and policy.trigger == "epi"
    assert [r.epi for r in policy.history][-2:] == [1.0, 1.0]
    # train and compare use the same default as the API
    from epiprune.run.config import TrainConfig
    assert TrainConfig().epi_smooth == policy.rule.smooth == 2
    # Early-Bird's test is not smoothed
    assert EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), indicator="earlybird-budget").rule.smooth == 1


def test_epi_waits_for_min_dense_epochs():
    policy = scripted_policy([PEAKED_0], window=1, threshold=0.95, min_dense_epochs=4, max_dense_epochs=20)
    assert run(policy, 10) == [4]  # EPI is 1 from epoch 2 on
    assert policy.trigger == "epi" and [r.epi for r in policy.history] == [None, 1.0, 1.0, 1.0]


def test_fallback_prunes_at_max_dense_epochs_when_epi_never_crosses():
    policy = scripted_policy(alternating_then_stable(100), window=2, threshold=0.95, max_dense_epochs=6)
    assert run(policy, 10) == [6]
    assert policy.trigger == "fallback" and policy.prune_epoch == 6
    assert all(r.epi is None or r.epi < 0.95 for r in policy.history)


def test_earlybird_triggers_when_the_masks_stop_moving():
    policy = scripted_policy(alternating_then_stable(3), indicator="earlybird-budget", window=2, max_dense_epochs=20)
    assert run(policy, 20) == [5]  # mask distances: epochs 2, 3 large; 4, 5 zero; the window holds two
    assert policy.trigger == "earlybird"
    masks = policy.masks
    for i, record in enumerate(policy.history):
        assert record.earlybird == earlybird_stability(masks[: i + 1], 2)
    assert policy.history[-1].earlybird == 1.0 and policy.history[-2].earlybird < 0.9


def test_earlybird_falls_back_too():
    policy = scripted_policy(alternating_then_stable(100), indicator="earlybird-budget", window=1, max_dense_epochs=4)
    assert run(policy, 10) == [4] and policy.trigger == "fallback"


def test_prune_at_ignores_epi():
    policy = scripted_policy([PEAKED_0], window=1, threshold=0.95, prune_at=3)
    assert run(policy, 6) == [3]  # EPI is 1 from epoch 2 on, but the epoch is fixed
    assert policy.trigger == "fixed" and policy.history[1].epi == 1.0


def test_indicator_none_tracks_epi_and_never_prunes():
    policy = scripted_policy([PEAKED_0], window=1, threshold=0.95, indicator="none", max_dense_epochs=2)
    assert run(policy, 4) == [] and not policy.pruned
    assert [r.epi for r in policy.history] == [None, 1.0, 1.0, 1.0]


def test_normalisation_puts_groups_of_different_scale_on_one_ranking():
    """Scaling one group's scores by 1000 must not change the sub-network: the policy normalises per group.
    Without normalisation the loud group would keep every channel and the quiet one shrink to its floor."""
    rng = np.random.default_rng(0)
    scores = [rng.random(4), rng.random(6)]
    plain = scripted_policy([scores]).dominant_subnetwork()
    loud = scripted_policy([[scores[0] * 1000.0, scores[1]]]).dominant_subnetwork()
    assert all(np.array_equal(a, b) for a, b in zip(plain, loud, strict=True))
    assert 1 < int(loud[1].sum()) and int(loud[0].sum()) < 4  # both groups give up some channels


def test_cli_run_prunes_when_epi_fires_before_the_fallback(tmp_path):
    """epiprune train on the built-in data, with a window and threshold that let EPI (not the fallback) fire."""
    out = tmp_path / "run"
    proc = run_cli("train", "--train-subset", "256", "--val-subset", "128", "--epochs", "4", "--batch-size", "64",
                   "--epi-window", "1", "--epi-threshold", "0.5", "--max-dense-epochs", "3", "--epi-smooth", "1",
                   "--budget", "flops:0.5", "--out", out, "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    # EPI is defined from epoch 2 (window 1) and the widths of two sub-networks at one budget are far more
    # alike than 0.5: EPI fires at epoch 2, before the fallback at 3
    assert summary["trigger"] == "epi" and summary["prune_epoch"] == 2, summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epi"] is None and rows[1]["epi"] >= 0.5
    widths = [rows[0]["widths"], rows[1]["widths"]]
    assert rows[1]["epi"] == rows[1]["epi_layer"] == early_pruning_indicator(widths, 1, summary["epi_layer_weights"])
    assert rows[1]["epi_group"] == early_pruning_indicator(widths, 1)


def test_earlybird_as_published_compares_bn_masks_over_its_own_queue():
    """indicator='earlybird' records Early-Bird's BN-scale mask (not the dominant sub-network, which the script
    makes alternate) and measures stability over earlybird_queue distances (not the EPI window)."""
    policy = scripted_policy(alternating_then_stable(6), indicator="earlybird", earlybird_queue=1, window=3,
                             max_dense_epochs=20)
    bn_mask = policy.earlybird_mask()
    assert not np.array_equal(bn_mask, np.concatenate(policy.select(PEAKED_0)))
    assert run(policy, 6) == [2] and policy.trigger == "earlybird"  # the weights (and BN scales) do not move
    assert [r.earlybird for r in policy.history] == [None, 1.0]
    for mask in policy.masks:
        np.testing.assert_array_equal(mask, bn_mask)
    with pytest.raises(EpipruneError, match=r"^the model is already pruned \(Early-Bird's mask is of the dense "
                       r"model\)$"):  # was an IndexError from the BN targets of the dense channels
        policy.earlybird_mask()


def test_end_epoch_decides_on_the_scores_it_is_given():
    given, scripted = scripted_policy([PEAKED_0], indicator="none"), scripted_policy([PEAKED_1], indicator="none")
    given.end_epoch(scores=PEAKED_1)
    scripted.end_epoch()
    assert given.history[0].widths == scripted.history[0].widths


def test_replay_decides_and_prunes_as_end_epoch_would_have():
    script = alternating_then_stable(3)
    live = scripted_policy(script, window=2, max_dense_epochs=20)
    pruned_at = run(live, 20)
    replayed = scripted_policy([np.ones(4), np.ones(6)], window=2, max_dense_epochs=20)
    calls: list[int] = []
    recorded = [script[min(e, len(script) - 1)] for e in range(20)]
    assert replayed.replay(recorded, lambda epoch: calls.append(epoch)) == pruned_at[0] == calls[0]
    assert calls == pruned_at and replayed.trigger == live.trigger == "epi"
    assert replayed.kept == live.kept and [r.epi for r in replayed.history] == [r.epi for r in live.history]
    never = scripted_policy(script, indicator="none")
    assert never.replay(recorded, lambda epoch: calls.append(epoch)) is None and calls == pruned_at


def test_peak_compares_with_exactly_the_last_peak_values_and_needs_a_rise():
    rule = TriggerRule(window=1, threshold=0.9, min_dense_epochs=1, peak=1)
    assert rule.decide(3, [0.99, 0.95, 0.96]) == "epi"  # above the last value; the one before is not compared
    assert rule.decide(2, [0.95, 0.95]) is None  # equal is not a rise
    assert scripted_policy([PEAKED_0], peak=2).rule.peak == 2  # the policy hands peak to its rule
