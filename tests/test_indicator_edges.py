"""Edges of the indicator module that mutation testing found untested: empty and zero-width inputs, the exact
threshold, the first epoch each signal is defined, and which epochs require_peak compares."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from epiprune.errors import EpipruneError
from epiprune.policy.indicator import (
    TriggerRule,
    early_pruning_indicator,
    earlybird_stability,
    layer_distances,
    mask_distance,
    structural_similarity,
)


def test_a_layer_both_architectures_removed_is_at_distance_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 division either
        assert layer_distances([0, 4, 0, 1], [0, 2, 3, 0]).tolist() == [0.0, 1 / 3, 1.0, 1.0]
        assert mask_distance(np.array([], dtype=bool), np.array([], dtype=bool)) == 0.0


def test_masks_are_read_as_booleans():
    assert mask_distance(np.array([2, 0, 1]), np.array([1, 0, 0])) == 1 / 3
    assert mask_distance(np.array([1, 0, 0]), np.array([2, 0, 1])) == 1 / 3


def test_vectors_of_different_lengths_are_refused_with_both_shapes():
    with pytest.raises(ValueError, match=r"^width vectors differ in length: \(2,\) vs \(3,\)$"):
        layer_distances([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=r"^EPI window 0 is too small \(accepted: an integer >= 1\)$"):
        early_pruning_indicator([[1], [1]], 0)
    with pytest.raises(ValueError, match=r"^masks differ in length: \(1,\) vs \(2,\)$"):
        mask_distance(np.ones(1), np.ones(2))


def test_earlybird_stability_is_defined_once_window_distances_exist():
    a, b = np.array([1, 1, 0, 0], dtype=bool), np.array([1, 0, 1, 0], dtype=bool)
    assert earlybird_stability([a], 1) is None
    assert earlybird_stability([a, a], 1) == 1.0
    assert earlybird_stability([a, b], 1) == 0.5
    assert earlybird_stability([b, a, a], 2) == 0.5  # the max over both distances in the window
    assert earlybird_stability([b, a, a], 1) == 1.0
    assert earlybird_stability([a, a], 2) is None


def test_epi_at_exactly_tau_triggers():
    rule = TriggerRule(window=1, threshold=0.9, min_dense_epochs=2)
    assert rule.decide(2, [None, 0.9]) == "epi"
    assert rule.decide(1, [None]) is None


def test_decide_with_no_history_yet():
    assert TriggerRule(window=1, threshold=0.9, min_dense_epochs=0, max_dense_epochs=3).decide(0, []) is None
    assert TriggerRule(window=1, threshold=0.9, min_dense_epochs=0, max_dense_epochs=1).decide(1, []) == "fallback"


def test_require_peak_compares_the_window_and_not_older_epochs():
    rule = TriggerRule(window=2, threshold=0.9, min_dense_epochs=1, require_peak=True)
    assert rule.decide(4, [None, 0.99, 0.5, 0.95]) is None  # 0.99 is two epochs back: inside the window
    assert rule.decide(5, [None, 0.99, 0.5, 0.5, 0.95]) == "epi"  # now three back: outside it


def test_trigger_rule_messages_name_the_setting():
    from epiprune.errors import EpipruneError

    for kwargs, message in [({"window": 0}, "EPI window 0 is too small (accepted: an integer >= 1)"),
                            ({"threshold": 1.5}, "EPI threshold 1.5 is outside (0, 1]"),
                            ({"min_dense_epochs": -1}, "min dense epochs -1 is too small (accepted: an integer >= 0)"),
                            ({"min_dense_epochs": 3, "max_dense_epochs": 2},
                             "max dense epochs 2 must be >= min dense epochs 3 and > 0"),
                            ({"prune_at": -1}, "prune-at epoch -1 is too small (accepted: an integer >= 0)")]:
        with pytest.raises(EpipruneError) as err:
            TriggerRule(**kwargs)
        assert str(err.value) == message
    assert TriggerRule(threshold=1.0).threshold == 1.0  # tau = 1: prune only on an unchanged architecture


def test_similarity_weights_are_validated_with_their_count_named():
    """Zero and fractional weights are accepted (a group spanning no layer; any positive scale), negative ones, a
    wrong count and all zeros are refused, each with the number of weights expected."""
    assert structural_similarity([4, 2], [2, 2], [0.0, 0.5]) == pytest.approx(1.0)
    assert structural_similarity([4, 2], [2, 2], [0.25, 0.5]) == pytest.approx(1.0 - 0.25 * (2 / 6) / 0.75)
    for bad in ([1.0], [1.0, -0.5], [0.0, 0.0]):
        with pytest.raises(ValueError, match=r"^weights must be 2 non-negative numbers, not all 0$"):
            structural_similarity([4, 2], [2, 2], bad)


def test_epi_passes_its_weights_to_every_similarity():
    history = [[4, 2], [2, 2], [2, 2]]
    assert early_pruning_indicator(history, 2, [1.0, 0.0]) == pytest.approx(0.5 * (1.0 + 1.0 - 2 / 6))
    assert early_pruning_indicator(history, 2) != early_pruning_indicator(history, 2, [1.0, 0.0])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("peak", -1, "EPI peak -1 is too small (accepted: an integer >= 0; 0 turns it off)"),
    ("smooth", 0, "EPI smoothing 0 is too small (accepted: an integer >= 1; 1 is none)"),
])
def test_trigger_rule_refuses_a_negative_peak_and_no_smoothing_by_name(field, value, message):
    with pytest.raises(EpipruneError, match="^" + re.escape(message) + "$"):
        TriggerRule(**{field: value})


def test_a_fallback_at_epoch_zero_is_refused_in_one_line():
    with pytest.raises(EpipruneError) as error:
        TriggerRule(window=1, threshold=0.9, min_dense_epochs=0, max_dense_epochs=0)
    assert str(error.value) == "max dense epochs 0 must be >= min dense epochs 0 and > 0"


def test_smoothing_waits_for_as_many_values_as_it_averages():
    rule = TriggerRule(window=1, threshold=0.9, min_dense_epochs=0, smooth=3)
    assert rule._smoothed([0.95, 0.97]) is None
    assert rule._smoothed([0.5, 0.95, 0.97, 0.99]) == pytest.approx(0.97)
    assert rule._smoothed([0.95, None, 0.99]) is None and rule._smoothed([]) is None


def test_a_setting_below_its_bound_is_named_with_its_value_as_the_user_typed_it():
    """policy.bounds.check_at_least: a float (the command line parses --min-dense-epochs -1 as -1.0) is shown as
    -1, not -1.0; an int as itself; None and the bound are accepted."""
    from epiprune.errors import EpipruneError
    from epiprune.policy.bounds import check_at_least

    with pytest.raises(EpipruneError) as e:
        check_at_least("min_dense_epochs", -1.0)
    assert str(e.value) == "min dense epochs -1 is too small (accepted: an integer >= 0)"
    with pytest.raises(EpipruneError) as e:
        check_at_least("smooth", 0, name="--epi-smooth")
    assert str(e.value) == "--epi-smooth 0 is too small (accepted: an integer >= 1; 1 is none)"
    check_at_least("min_dense_epochs", None)
    check_at_least("min_dense_epochs", 0)
