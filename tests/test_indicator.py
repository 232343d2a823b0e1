import math

import pytest

from epiprune.errors import EpipruneError
from epiprune.policy.indicator import TriggerRule, early_pruning_indicator, layer_distances, structural_similarity


def test_layer_distance_by_hand():
    # |10-6|/(10+6) = 0.25 ; |4-4|/8 = 0 ; |1-3|/4 = 0.5
    assert layer_distances([10, 4, 1], [6, 4, 3]).tolist() == [0.25, 0.0, 0.5]


def test_structural_similarity_by_hand():
    assert math.isclose(structural_similarity([10, 4, 1], [6, 4, 3]), 1 - 0.75 / 3)
    assert structural_similarity([5, 7], [5, 7]) == 1.0


def test_epi_by_hand():
    history = [[8, 8], [6, 8], [6, 6], [6, 6]]
    # r = 2 at t = 3 (last): Psi(N3, N2) = 1, Psi(N3, N1) = 1 - (0 + 2/14)/2 = 1 - 1/14
    assert math.isclose(early_pruning_indicator(history, 2), (1 + (1 - 1 / 14)) / 2)
    # r = 3: add Psi(N3, N0) = 1 - (2/14 + 2/14)/2 = 1 - 1/7
    assert math.isclose(early_pruning_indicator(history, 3), (1 + 1 - 1 / 14 + 1 - 1 / 7) / 3)


def test_epi_undefined_until_window_filled():
    assert early_pruning_indicator([[1, 2]], 1) is None
    assert early_pruning_indicator([[1, 2], [1, 2]], 2) is None
    assert early_pruning_indicator([[1, 2], [1, 2]], 1) == 1.0


def test_trigger_respects_min_and_threshold():
    rule = TriggerRule(window=2, threshold=0.9, min_dense_epochs=4)
    assert rule.decide(3, [None, None, 0.95]) is None  # above tau but before the minimum
    assert rule.decide(4, [None, None, 0.95, 0.89]) is None
    assert rule.decide(5, [None, None, 0.95, 0.89, 0.91]) == "epi"


def test_trigger_fallback_and_fixed():
    rule = TriggerRule(window=2, threshold=0.99, min_dense_epochs=1, max_dense_epochs=3)
    assert rule.decide(2, [None, None]) is None
    assert rule.decide(3, [None, None, 0.5]) == "fallback"
    fixed = TriggerRule(window=2, threshold=0.5, prune_at=2)
    assert fixed.decide(1, [None]) is None
    assert fixed.decide(2, [None, None]) == "fixed"


def test_trigger_require_peak_waits_for_rising_curve():
    rule = TriggerRule(window=2, threshold=0.9, min_dense_epochs=1, require_peak=True)
    assert rule.decide(4, [None, None, 0.95, 0.93]) is None  # above tau but below the window's peak
    assert rule.decide(5, [None, None, 0.95, 0.93, 0.96]) == "epi"


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"threshold": 0.0}, {"threshold": 1.5},
                                    {"min_dense_epochs": 3, "max_dense_epochs": 2}, {"prune_at": -1}])
def test_trigger_rule_rejects_bad_settings(kwargs):
    with pytest.raises(EpipruneError):
        TriggerRule(**kwargs)


def test_default_threshold_by_registered_names():
    from epiprune.policy.importance import MAGNITUDE_TAU, TAYLOR_TAU
    from epiprune.policy.indicator import EARLYBIRD_EPSILON, default_threshold

    assert default_threshold("epi", "taylor") == TAYLOR_TAU == 0.944
    assert default_threshold("epi", "magnitude") == MAGNITUDE_TAU
    assert default_threshold("earlybird", "taylor") == 1.0 - EARLYBIRD_EPSILON
