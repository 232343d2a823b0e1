"""Properties of dominant sub-network selection: the budget is met from below by a maximal kept set, per-group
normalisation matters when group scales differ, and a budget is refused at construction exactly when selection
would refuse it later (the same floor, channel_multiple included)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from epiprune import Budget, EarlyPruningPolicy, EpipruneError
from epiprune.costs.model import CostModel
from epiprune.models import build_model
from epiprune.policy.subnetwork import check_budget, floor_widths, normalise_per_group, select_subnetwork

from .helpers import max_examples


def random_chain_cost(widths: list[int], rng: np.random.Generator) -> CostModel:
    """A chain of len(widths) layers plus a classifier, with random per-layer costs and one BN-like term per group."""
    g = len(widths)
    coef = np.concatenate([rng.uniform(1, 100, size=g + 1), rng.uniform(0, 5, size=g)])
    out_group = np.array([*range(g), -1, *range(g)])
    in_group = np.array([-1, *range(g - 1), g - 1, *[-1] * g])
    return CostModel(np.asarray(widths), coef=coef, out_group=out_group, in_group=in_group, constant=1.0)


selections = st.tuples(st.lists(st.integers(1, 40), min_size=2, max_size=6), st.floats(0.05, 0.95),
                       st.integers(0, 10_000), st.sampled_from([1, 1, 2, 4, 8]), st.sampled_from([1, 1, 2, 3]))


@settings(max_examples=max_examples(150), deadline=None)
@given(selections)
def test_kept_set_is_maximal_and_meets_the_budget_from_below(case):
    """No dropped channel block still fits: growing any group that is not whole by its next block (the best of its
    dropped channels, up to the next multiple) would cost more than the target."""
    widths, fraction, seed, multiple, min_channels = case
    rng = np.random.default_rng(seed)
    cost = random_chain_cost(widths, rng)
    scores = normalise_per_group([rng.random(w) for w in widths])
    target = fraction * cost.dense
    try:
        masks = select_subnetwork(scores, cost, target, min_channels, multiple)
    except EpipruneError:
        assert cost(floor_widths(widths, min_channels, multiple)) > target
        return
    kept = np.array([int(m.sum()) for m in masks])
    assert cost(kept) <= target
    assert (kept >= floor_widths(widths, min_channels, multiple)).all()
    for g, dense in enumerate(widths):
        if kept[g] < dense:
            grown = kept.copy()
            grown[g] = min(dense, kept[g] + multiple)
            assert cost(grown) > target, (g, kept, grown)


grouped_selections = st.tuples(st.lists(st.tuples(st.integers(1, 6), st.sampled_from([1, 2, 4])), min_size=2,
                                        max_size=5),
                               st.floats(0.05, 0.95), st.integers(0, 10_000), st.sampled_from([1, 2, 4]),
                               st.sampled_from([1, 2, 3]))


@settings(max_examples=max_examples(150), deadline=None)
@given(grouped_selections)
def test_groups_spread_over_grouped_convs_keep_equal_counts_per_block_above_the_floor(case):
    """A group whose channels belong to the B groups of grouped convolutions (partitions: each channel's block id)
    keeps the same number in every block, each block's best, at least the floor (a multiple of B), and the budget
    is met from below; refused only when that floor does not fit."""
    spec, fraction, seed, multiple, min_channels = case
    rng = np.random.default_rng(seed)
    widths = [rows * blocks for rows, blocks in spec]
    blocks = [b for _, b in spec]
    partitions = [None if b == 1 else rng.permutation(np.repeat(np.arange(b), rows)) for rows, b in spec]
    cost = random_chain_cost(widths, rng)
    scores = normalise_per_group([rng.random(w) for w in widths])
    floor = floor_widths(widths, min_channels, multiple, blocks)
    try:
        with warnings.catch_warnings():  # no numpy warning either (e.g. the mean of an empty block)
            warnings.simplefilter("error")
            masks = select_subnetwork(scores, cost, fraction * cost.dense, min_channels, multiple,
                                      partitions=partitions)
    except EpipruneError:
        assert cost(floor) > fraction * cost.dense
        return
    kept = np.array([int(m.sum()) for m in masks])
    assert cost(kept) <= fraction * cost.dense and (kept >= floor).all()
    for mask, part, score, b, width in zip(masks, partitions, scores, blocks, widths, strict=True):
        if part is None:
            continue
        per_block = np.bincount(part[mask], minlength=b)
        assert len(set(per_block.tolist())) == 1, per_block
        assert int(mask.sum()) in (width, *range(0, width, math.lcm(b, multiple)))
        for block in range(b):  # the block's best channels
            mine = part == block
            if (mine & ~mask).any() and (mine & mask).any():
                assert score[mine & mask].min() > score[mine & ~mask].max()


def test_regrow_fills_the_budget_after_a_large_block_is_dropped():
    """Dropping in ascending score can overshoot with a wide block; the cheap block dropped before it fits back."""
    # multiple 4: group 0 (8 channels) = 4 kept always + a block of 4; group 1 (5 channels) = 4 + a block of 1
    cost = CostModel(np.array([8, 5]), coef=np.array([80.0, 20.0]), out_group=np.array([0, 1]),
                     in_group=np.array([-1, -1]), constant=0.0)
    scores = [np.array([9.0] * 4 + [1.0] * 4), np.array([9.0] * 4 + [0.5])]  # group 1's block goes first
    masks = select_subnetwork(scores, cost, 0.62 * cost.dense, channel_multiple=4)
    # dropping group 1's block (cost 100 -> 96) is not enough, dropping group 0's too overshoots (56): regrow
    # offers group 1's back (60 <= 62)
    assert [int(m.sum()) for m in masks] == [4, 5]


def test_a_sub_network_costing_exactly_the_target_fits():
    """The budget is met from below *or at* the target: the regrow above with a target of exactly 60 keeps [4, 5]."""
    cost = CostModel(np.array([8, 5]), coef=np.array([80.0, 20.0]), out_group=np.array([0, 1]),
                     in_group=np.array([-1, -1]), constant=0.0)
    scores = [np.array([9.0] * 4 + [1.0] * 4), np.array([9.0] * 4 + [0.5])]
    masks = select_subnetwork(scores, cost, 60.0, channel_multiple=4)
    assert [int(m.sum()) for m in masks] == [4, 5] and cost(np.array([4, 5])) == 60.0


def test_normalisation_changes_the_ranking_when_group_scales_differ():
    cost = CostModel(np.array([8, 8]), coef=np.array([100.0, 100.0]), out_group=np.array([0, 1]),
                     in_group=np.array([-1, -1]), constant=0.0)
    shape = np.linspace(2.0, 1.0, 8)
    scores = [1000.0 * shape, shape]  # the same ranking inside each group, a thousand times louder in group 0
    raw = [int(m.sum()) for m in select_subnetwork(scores, cost, 0.5 * cost.dense)]
    normalised = [int(m.sum()) for m in select_subnetwork(normalise_per_group(scores), cost, 0.5 * cost.dense)]
    assert raw == [7, 1]  # without normalisation the quiet group shrinks to its floor
    assert normalised == [4, 4]
    for s in normalise_per_group(scores):
        assert np.mean(s) == pytest.approx(1.0)
    assert normalise_per_group([np.array([])])[0].size == 0


@settings(max_examples=max_examples(100), deadline=None)
@given(selections)
def test_budget_check_refuses_exactly_what_selection_refuses(case):
    widths, fraction, seed, multiple, min_channels = case
    rng = np.random.default_rng(seed)
    cost = random_chain_cost(widths, rng)
    target = fraction * cost.dense
    try:
        check_budget(cost, target, min_channels, multiple)
        accepted = True
    except EpipruneError:
        accepted = False
    try:
        select_subnetwork([rng.random(w) for w in widths], cost, target, min_channels, multiple)
        selected = True
    except EpipruneError:
        selected = False
    assert accepted == selected


def test_floor_widths_round_min_channels_up_to_the_multiple():
    assert floor_widths([16, 32, 5, 64], 1, 16).tolist() == [16, 16, 5, 16]
    assert floor_widths([16, 32, 5, 64], 17, 16).tolist() == [16, 32, 5, 32]
    assert floor_widths([16, 3], 2, 1).tolist() == [2, 2]
    for bad, name in (({"min_channels": 0}, "min channels"), ({"channel_multiple": 0}, "channel multiple")):
        with pytest.raises(EpipruneError, match=f"^{name} 0 is too small \\(accepted: an integer >= 1\\)$"):
            floor_widths([4], **bad)


def test_policy_refuses_at_construction_a_budget_the_channel_multiple_puts_out_of_reach():
    """resnet20 keeping 16 channels per group already costs 0.467 of its FLOPs: flops:0.2 with multiple 16 used to
    be accepted and then fail after the first epoch."""
    with pytest.raises(EpipruneError, match=r"budget flops:0.2 cannot be met: .*channel multiple 16.*0\.467"):
        EarlyPruningPolicy(build_model("resnet20", 1, 10), torch.zeros(1, 1, 28, 28), Budget("flops", 0.2),
                           channel_multiple=16)
    policy = EarlyPruningPolicy(build_model("resnet20", 1, 10), torch.zeros(1, 1, 28, 28), Budget("flops", 0.5),
                                channel_multiple=16)
    policy.end_epoch()  # accepted budgets are met by selection
    assert all(w % 16 == 0 for w in policy.history[0].widths)


def test_normalising_an_empty_group_is_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalise_per_group([np.array([]), np.array([2.0, 6.0])])
    assert out[0].size == 0 and out[1].tolist() == pytest.approx([0.5, 1.5])


def test_score_vectors_must_match_the_groups():
    cost = CostModel(np.array([2, 2]), coef=np.array([1.0, 1.0]), out_group=np.array([0, 1]),
                     in_group=np.array([-1, -1]), constant=0.0)
    with pytest.raises(ValueError, match=r"^1 score vectors for 2 groups$"):
        select_subnetwork([np.ones(2)], cost, 1.0)


def test_ties_are_broken_by_channel_index():
    """Equal scores keep the lower channel index: selection is deterministic, so ranks that compute the same scores
    agree on the same channels (numpy's default sort is not stable on long arrays)."""
    scores = np.random.default_rng(0).integers(0, 3, 200).astype(float)
    cost = CostModel(np.array([200]), coef=np.array([200.0]), out_group=np.array([0]), in_group=np.array([-1]),
                     constant=0.0)
    kept = np.flatnonzero(select_subnetwork([scores], cost, 90.0)[0])
    assert len(kept) == 90
    cut = np.sort(scores)[::-1][89]  # the score at the cut: all above it kept, the first ones equal to it
    above, tied = np.flatnonzero(scores > cut), np.flatnonzero(scores == cut)
    assert kept.tolist() == sorted([*above, *tied[: 90 - len(above)]])


def test_ties_within_a_block_of_a_grouped_conv_keep_the_lower_channel_index():
    """As above, for a group spread over two conv groups (channels alternate between the blocks): each block keeps
    its tied channels in index order."""
    scores = np.random.default_rng(1).integers(0, 3, 200).astype(float)
    partition = np.arange(200) % 2
    cost = CostModel(np.array([200]), coef=np.array([200.0]), out_group=np.array([0]), in_group=np.array([-1]),
                     constant=0.0)
    kept = select_subnetwork([scores], cost, 90.0, partitions=[partition])[0]
    for block in (0, 1):
        mine = np.flatnonzero(partition == block)
        block_scores, block_kept = scores[mine], mine[kept[mine]]
        assert len(block_kept) == 45
        cut = np.sort(block_scores)[::-1][44]
        above, tied = mine[block_scores > cut], mine[block_scores == cut]
        assert block_kept.tolist() == sorted([*above, *tied[: 45 - len(above)]])


def test_selection_evaluates_the_cost_about_once_per_dropped_block_not_once_per_block():
    """The binary search over the drop count is what keeps selection fast on wide networks (the regrow pass alone
    would give the same kept set, at one cost evaluation per block): at 90% of the cost, 60 groups of 64
    channels take a few hundred evaluations, not one per channel (3,840)."""
    rng = np.random.default_rng(0)
    cost = random_chain_cost([64] * 60, rng)
    calls = []

    class Counted:
        dense_widths, dense = cost.dense_widths, cost.dense

        def __call__(self, widths):
            calls.append(1)
            return cost(widths)

    masks = select_subnetwork(normalise_per_group([rng.random(64) for _ in range(60)]), Counted(), 0.9 * cost.dense)
    dropped = 3840 - sum(int(m.sum()) for m in masks)
    assert 0 < dropped < 3840 * 0.2 and len(calls) < dropped + 40, (dropped, len(calls))


ONE_GROUP = CostModel(np.array([100]), coef=np.array([100.0]), out_group=np.array([0]), in_group=np.array([-1]),
                      constant=13.0124)  # the floor (1 channel) costs 0.12399 of dense: the bound rounds up
TWO_GROUPS = CostModel(np.array([8, 8]), coef=np.array([80.0, 20.0]), out_group=np.array([0, 1]),
                       in_group=np.array([-1, -1]), constant=0.0)


@pytest.mark.parametrize(("cost", "min_channels", "multiple", "budget", "blocks", "message"), [
    (ONE_GROUP, 1, 1, "", None, "budget cannot be met: keeping 1 channel(s) per layer already costs 0.124 of the "
     "dense model (accepted: a fraction >= 0.124)"),
    (TWO_GROUPS, 1, 4, "flops:0.01", None, "budget flops:0.01 cannot be met: keeping 4 channel(s) per layer "
     "(channel multiple 4) already costs 0.500 of the dense model (accepted: a fraction >= 0.500 or a smaller "
     "channel multiple)"),
    (TWO_GROUPS, 1, 1, "params:0.05", [1, 4], "budget params:0.05 cannot be met: keeping 1-4 channel(s) per layer "
     "(grouped convolutions keep the same number in each group) already costs 0.200 of the dense model (accepted: "
     "a fraction >= 0.200)"),
    (TWO_GROUPS, 3, 2, "", [1, 4], "budget cannot be met: keeping 4 channel(s) per layer (grouped convolutions "
     "keep the same number in each group) (channel multiple 2) already costs 0.500 of the dense model (accepted: a "
     "fraction >= 0.500 or a smaller channel multiple)"),
    (TWO_GROUPS, 1, 1, "", [2, 1], "budget cannot be met: keeping 1-2 channel(s) per layer (grouped convolutions "
     "keep the same number in each group) already costs 0.225 of the dense model (accepted: a fraction >= 0.225)"),
    (TWO_GROUPS, 7, 1, "", None, "budget cannot be met: keeping 7 channel(s) per layer already costs 0.875 of the "
     "dense model (accepted: a fraction >= 0.875)"),
])
def test_a_budget_below_the_floor_is_refused_with_what_is_kept_and_what_is_accepted(cost, min_channels, multiple,
                                                                                   budget, blocks, message):
    from epiprune.costs.budget import BudgetError

    with pytest.raises(BudgetError) as refused:
        check_budget(cost, 1.0, min_channels, multiple, budget, blocks)
    assert str(refused.value) == message
    check_budget(cost, cost(floor_widths(cost.dense_widths, min_channels, multiple, blocks)), min_channels, multiple,
                 budget, blocks)  # the floor itself fits


def test_floor_and_budget_check_defaults_are_one_channel_and_no_multiple():
    """Called without min_channels / channel_multiple / budget name, the floor is one channel per group and the
    refusal names no budget."""
    from epiprune.costs.budget import BudgetError

    assert floor_widths([4, 8, 1]).tolist() == [1, 1, 1]
    check_budget(ONE_GROUP, ONE_GROUP([1]))  # one channel fits exactly: a floor of 2 channels would not
    with pytest.raises(BudgetError, match=r"^budget cannot be met: keeping 1 channel\(s\) per layer "):
        check_budget(ONE_GROUP, 1.0)
