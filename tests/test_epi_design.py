"""Issue 13: EPI averaged over layers as the paper defines it, the trigger variants (peak, smoothing, strict),
Early-Bird as published (BN |gamma| channel-ratio masks, a queue of 5, < 0.1, L1 on gamma), and the statistical
design of comparisons (one data subset for all seeds, held-out validation vs test, paired bootstrap intervals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from epiprune import Budget, EarlyPruningPolicy
from epiprune.evidence.table import bootstrap_interval, oracle_runs, paired_differences
from epiprune.models import build_model
from epiprune.policy.importance import BatchNormScaleImportance
from epiprune.policy.indicator import TriggerRule, early_pruning_indicator, structural_similarity
from epiprune.run.config import TrainConfig
from epiprune.run.data import Dataset
from epiprune.run.steps import add_bn_l1_gradient, split_data

from .test_decision import ScriptedImportance


def resnet20_policy(**kwargs) -> EarlyPruningPolicy:
    return EarlyPruningPolicy(build_model("resnet20", 1, 10), torch.zeros(1, 1, 28, 28), Budget(flops=0.5),
                              log=lambda _: None, progress=False, **kwargs)


def test_a_residual_stage_counts_once_per_layer_it_spans():
    policy = resnet20_policy()
    weights = dict(zip(policy.group_names, policy.layer_weights, strict=True))
    # stage 1: the stem conv and the second conv of its three blocks; stages 2 and 3: the shortcut conv and three
    assert weights["conv1"] == weights["layers.3.shortcut.0"] == weights["layers.6.shortcut.0"] == 4
    assert all(w == 1 for name, w in weights.items() if name.endswith(".conv1") and name != "conv1")


def test_weighted_similarity_by_hand():
    a, b = [10, 4], [10, 2]  # layer distances 0 and 1/3
    assert structural_similarity(a, b) == pytest.approx(1 - (1 / 3) / 2)
    assert structural_similarity(a, b, [3, 1]) == pytest.approx(1 - (1 / 3) / 4)
    with pytest.raises(ValueError):
        structural_similarity(a, b, [0, 0])


def moving_stage_scores(policy: EarlyPruningPolicy, epoch: int) -> list[np.ndarray]:
    """Scores under which only stage 1's residual group (4 layers) changes its width from epoch to epoch."""
    rng = np.random.default_rng(0)
    scores = [rng.random(w) + 1.0 for w in policy.dense_widths]
    scores[0] = np.linspace(0.1, 5.0 + 20 * (epoch % 2), len(scores[0])) ** (1 + epoch % 2)
    return scores


@pytest.mark.parametrize("average", ["layer", "group"])
def test_epi_averages_over_layers_by_default_and_records_both(average):
    policy = resnet20_policy(window=1, indicator="none", epi_average=average)
    policy.importance = ScriptedImportance([moving_stage_scores(policy, e) for e in range(4)])
    for _ in range(3):
        policy.end_epoch()
    widths = [r.widths for r in policy.history]
    assert widths[0][0] != widths[1][0]  # the 4-layer group moved
    for i in (1, 2):
        layer = early_pruning_indicator(widths[: i + 1], 1, policy.layer_weights)
        group = early_pruning_indicator(widths[: i + 1], 1)
        assert layer != pytest.approx(group)
        record = policy.history[i]
        assert (record.epi_layer, record.epi_group) == (pytest.approx(layer), pytest.approx(group))
        assert record.epi == (record.epi_layer if average == "layer" else record.epi_group)
    assert policy.summary()["epi_average"] == average


def test_peak_smooth_and_strict_rules():
    peak = TriggerRule(window=1, threshold=0.9, min_dense_epochs=1, peak=2)
    assert peak.decide(3, [0.95, 0.96, 0.955]) is None  # above tau, not above the last two
    assert peak.decide(4, [0.95, 0.96, 0.955, 0.97]) == "epi"
    assert peak.decide(2, [None, 0.95]) == "epi"  # only defined earlier values are compared
    smooth = TriggerRule(window=1, threshold=0.944, min_dense_epochs=1, smooth=2)
    assert smooth.decide(2, [0.94, 0.95]) == "epi"  # mean 0.945
    assert smooth.decide(2, [0.93, 0.95]) is None  # mean 0.94, although 0.95 alone is above tau
    assert smooth.decide(2, [None, 0.99]) is None  # the mean needs two defined values
    plain, strict = TriggerRule(window=1, threshold=0.9, min_dense_epochs=1), \
        TriggerRule(window=1, threshold=0.9, min_dense_epochs=1, strict=True)
    assert plain.decide(1, [0.9]) == "epi" and strict.decide(1, [0.9]) is None and strict.decide(1, [0.91]) == "epi"


def test_bn_importance_sums_gamma_over_the_groups_batchnorms():
    policy = resnet20_policy()
    with torch.no_grad():
        for m in policy.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
    scores = BatchNormScaleImportance(policy.graph).scores()
    stage = policy.group_names.index("conv1")
    bns = [m for m in policy.graph.groups[stage].out_modules if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4
    np.testing.assert_allclose(scores[stage], sum(m.weight.detach().abs().double().numpy() for m in bns))


def test_earlybird_as_published_masks_a_channel_ratio_of_bn_scales_and_waits_for_its_queue():
    policy = resnet20_policy(indicator="earlybird", importance="bn", max_dense_epochs=10)
    assert policy.rule.min_dense_epochs == 6 and policy.rule.strict  # a queue of 5 distances, then < epsilon
    with torch.no_grad():
        for m in policy.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1)
    mask = policy.earlybird_mask()
    gammas = np.concatenate(BatchNormScaleImportance(policy.graph).scores())
    assert mask.sum() == round(np.sqrt(0.5) * len(gammas))
    assert gammas[mask].min() >= gammas[~mask].max()
    for _ in range(1, 6):  # the weights do not move: every distance is 0, but the queue fills first
        assert not policy.end_epoch()
    assert policy.end_epoch() and policy.trigger == "earlybird" and policy.prune_epoch == 6
    # with queue 5 and a fallback at 6, a 12-epoch schedule can only prune at 6: defaults clamp, not refuse
    assert resnet20_policy(indicator="earlybird", max_dense_epochs=4).rule.min_dense_epochs == 4


def test_earlybird_mask_breaks_ties_in_bn_scales_by_channel_index():
    """BN scales with many ties (two values, alternating by channel): at the mask's boundary value the channels
    kept are the lowest-indexed ones, not whichever an unstable sort puts first."""
    policy = resnet20_policy(indicator="earlybird", importance="bn")
    with torch.no_grad():
        for m in policy.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.where(torch.arange(m.num_features) % 2 == 0, 1.0, 0.5))
    mask = policy.earlybird_mask()
    gammas = np.concatenate(BatchNormScaleImportance(policy.graph).scores())
    boundary = gammas[mask].min()
    assert (gammas[~mask] <= boundary).all() and mask[gammas > boundary].all()
    at_boundary = np.flatnonzero(gammas == boundary)
    kept = mask[at_boundary]
    assert 0 < kept.sum() < kept.size and kept[: kept.sum()].all()  # a prefix of the tied channels


def test_bn_l1_adds_the_subgradient_of_the_penalty():
    model = build_model("resnet20", 1, 10)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    bn = model.bn1
    with torch.no_grad():
        bn.weight[:3] = torch.tensor([-0.5, 0.0, 2.0])
    before = bn.weight.grad.clone()
    add_bn_l1_gradient(model, 1e-2)
    torch.testing.assert_close(bn.weight.grad - before, 1e-2 * torch.sign(bn.weight.detach()))
    assert (bn.weight.grad - before)[1] == 0


def indexed_dataset(n_train: int = 100, n_val: int = 40) -> Dataset:
    """Images whose first pixel is their index (train 0.., val 200..), to follow them through the splits."""
    train = np.zeros((n_train, 4, 4, 1), dtype=np.uint8)
    train[:, 0, 0, 0] = np.arange(n_train)
    val = np.zeros((n_val, 4, 4, 1), dtype=np.uint8)
    val[:, 0, 0, 0] = 200 + np.arange(n_val)
    return Dataset("idx", train, np.arange(n_train) % 3, val, np.arange(n_val) % 3, 3)


def ids(images: np.ndarray) -> set[int]:
    return set(images[:, 0, 0, 0].tolist())


def test_holdout_makes_disjoint_train_and_validation_splits_and_a_test_split():
    cfg = TrainConfig(holdout=20, train_subset=50, val_subset=30, seed=4, data_seed=1)
    data, (test_images, _) = split_data(indexed_dataset(), cfg)
    train, val, test = ids(data.train_images), ids(data.val_images), ids(test_images)
    assert len(train) == 50 and len(val) == 20 and len(test) == 30
    assert not train & val and max(train | val) < 100 and min(test) >= 200
    # seeds share the subset when the data seed is fixed, and draw their own when it is not
    other, _ = split_data(indexed_dataset(), TrainConfig(holdout=20, train_subset=50, val_subset=30, seed=9,
                                                         data_seed=1))
    assert ids(other.train_images) == train and ids(other.val_images) == val
    own, _ = split_data(indexed_dataset(), TrainConfig(holdout=20, train_subset=50, val_subset=30, seed=9))
    assert ids(own.train_images) != train
    plain, test_split = split_data(indexed_dataset(), TrainConfig(train_subset=50, val_subset=30, seed=4))
    assert test_split is None and min(ids(plain.val_images)) >= 200  # without --holdout: as before


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = [0.1, -0.4, 0.3, 0.2, -0.1]
    low, high = bootstrap_interval(values)
    assert low < np.mean(values) < high and (low, high) == bootstrap_interval(values)
    assert bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)


def summary(method: str, family: str, seed: int, val: float, test: float) -> dict:
    return {"method": method, "family": family, "seed": seed, "final_val_top1": val, "final_test_top1": test}


def test_the_oracle_is_chosen_on_validation_and_reported_on_test_and_differences_are_paired_by_seed():
    runs = [summary("fixed-1", "fixed", 0, 0.90, 0.80), summary("fixed-2", "fixed", 0, 0.85, 0.88),
            summary("fixed-1", "fixed", 1, 0.70, 0.70), summary("fixed-2", "fixed", 1, 0.75, 0.72),
            summary("epi-taylor", "epi", 0, 0.8, 0.81), summary("epi-taylor", "epi", 1, 0.8, 0.75),
            summary("dense", "dense", 1, 0.9, 0.9)]
    assert [(r["method"], r["seed"]) for r in oracle_runs(runs)] == [("fixed-1", 0), ("fixed-2", 1)]
    pairs = {p["method"]: p for p in paired_differences(runs)}
    assert pairs["oracle"]["diffs"] == [pytest.approx(80 - 81), pytest.approx(72 - 75)]
    assert pairs["dense"]["diffs"] == [pytest.approx(90 - 75)] and pairs["dense"]["seeds"] == 1
    assert pairs["fixed-2"]["mean"] == pytest.approx(((88 - 81) + (72 - 75)) / 2)


def test_one_seed_shows_no_interval_in_the_paired_table():
    """compare with one seed printed '95% interval [+3.60, +3.60]' (issue 23): no spread, so no interval."""
    from epiprune.evidence.table import paired_table

    one = {"method": "dense", "vs": "epi-taylor", "seeds": 1, "diffs": [3.6], "mean": 3.6, "low": 3.6, "high": 3.6}
    two = {**one, "seeds": 2, "diffs": [3.0, 4.2], "low": 3.0, "high": 4.2}
    rows = paired_table([one, two]).splitlines()[2:]
    assert rows == ["| dense | 1 | +3.60 | - (one seed) | +3.60 |",
                    "| dense | 2 | +3.60 | [+3.00, +4.20] | +3.00 +4.20 |"]
