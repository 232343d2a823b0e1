import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epiprune.costs.budget import Budget
from epiprune.costs.model import CostModel
from epiprune.errors import EpipruneError
from epiprune.policy.subnetwork import select_subnetwork

from .helpers import max_examples


def chain_cost(widths):
    """A 3-layer chain: conv(3->w0), conv(w0->w1), linear(w1->10), with one BN on w0."""
    dense = np.asarray(widths)
    return CostModel(dense, coef=np.array([300.0, 900.0, 100.0, 20.0]), out_group=np.array([0, 1, -1, 0]),
                     in_group=np.array([-1, 0, 1, -1]), constant=5.0)


def random_chain_cost(widths, rng):
    """A chain of len(widths) layers plus a classifier, with random per-layer costs."""
    g = len(widths)
    return CostModel(np.asarray(widths), coef=rng.uniform(1, 100, size=g + 1),
                     out_group=np.array([*range(g), -1]), in_group=np.array([-1, *range(g - 1), g - 1]),
                     constant=1.0)


def test_budget_parse_and_errors():
    assert Budget.parse("flops:0.5") == Budget("flops", 0.5)
    assert Budget.parse("params:0.25").kind == "params"
    for bad in ["flops:1.5", "flops:0", "flops", "watts:0.5", "latency:0", "latency:1.5", "latency:abc", "flops:abc",
                "params:-0.1"]:
        with pytest.raises(EpipruneError):
            Budget.parse(bad)


def test_cost_model_scales_bilinearly():
    cost = chain_cost([8, 4])
    assert cost.dense == 5 + 300 + 900 + 100 + 20
    # halve group 0: first conv and BN halve, second conv halves (its input)
    assert cost(np.array([4, 4])) == 5 + 150 + 450 + 100 + 10


def test_selection_keeps_most_important_and_meets_target():
    cost = chain_cost([8, 4])
    scores = [np.array([8, 7, 6, 5, 4, 3, 2, 1.0]), np.array([1, 2, 3, 4.0])]
    masks = select_subnetwork(scores, cost, 0.5 * cost.dense)
    assert cost(np.array([m.sum() for m in masks])) <= 0.5 * cost.dense
    kept0 = np.flatnonzero(masks[0])
    assert kept0.tolist() == list(range(len(kept0)))  # a prefix of the best channels of group 0
    assert masks[1][3]  # the best channel of group 1 survives


def test_budget_that_cannot_be_met_is_an_error():
    cost = chain_cost([8, 4])
    with pytest.raises(EpipruneError, match="cannot be met"):
        select_subnetwork([np.ones(8), np.ones(4)], cost, 0.01 * cost.dense)


@settings(max_examples=max_examples(60), deadline=None)
@given(st.lists(st.integers(1, 24), min_size=2, max_size=5), st.floats(0.2, 0.95), st.integers(0, 10_000))
def test_selection_properties(widths, fraction, seed):
    rng = np.random.default_rng(seed)
    g = len(widths)
    cost = random_chain_cost(widths, rng)
    scores = [rng.random(w) for w in widths]
    target = fraction * cost.dense
    try:
        masks = select_subnetwork(scores, cost, target)
    except EpipruneError:
        floor = cost(np.ones(g))
        assert floor > target
        return
    widths_kept = np.array([m.sum() for m in masks])
    assert cost(widths_kept) <= target + 1e-9
    assert (widths_kept >= 1).all()
    for s, m in zip(scores, masks, strict=True):
        assert m[np.argmax(s)]  # a group's best channel is never dropped


@settings(max_examples=max_examples(60), deadline=None)
@given(st.lists(st.integers(1, 40), min_size=2, max_size=5), st.floats(0.2, 0.95), st.integers(0, 10_000),
       st.sampled_from([2, 4, 8]))
def test_channel_multiple_keeps_whole_blocks_of_the_best_channels(widths, fraction, seed, multiple):
    rng = np.random.default_rng(seed)
    cost = random_chain_cost(widths, rng)
    scores = [rng.random(w) for w in widths]
    try:
        masks = select_subnetwork(scores, cost, fraction * cost.dense, channel_multiple=multiple)
    except EpipruneError:
        return
    assert cost(np.array([m.sum() for m in masks])) <= fraction * cost.dense + 1e-9
    for s, m in zip(scores, masks, strict=True):
        kept = int(m.sum())
        assert kept == len(s) or kept % multiple == 0, (kept, len(s))
        assert kept >= min(len(s), multiple)
        ranked = np.argsort(-s, kind="stable")
        assert set(np.flatnonzero(m)) == set(ranked[:kept])  # a prefix of the group's ranking


def linear_cost(widths):
    """cost = sum of widths (one unit per channel, no coupling): floors and targets read in channels."""
    g = len(widths)
    return CostModel(np.asarray(widths), coef=np.asarray(widths, dtype=np.float64), out_group=np.arange(g),
                     in_group=np.full(g, -1), constant=0.0)


def test_a_grouped_convolutions_blocks_set_the_floor_and_move_together():
    """Group 0 spans 4 blocks of grouped convolutions (2 channels each): its floor is one channel per block (4),
    and what it keeps stays a multiple of 4; group 1 is plain (floor 1)."""
    from epiprune.costs.budget import BudgetError

    cost = linear_cost([8, 6])
    partitions = [np.repeat(np.arange(4), 2), None]
    scores = [np.array([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0]), np.arange(6, 0, -1, dtype=np.float64)]
    with pytest.raises(BudgetError):
        select_subnetwork(scores, cost, 4.9, partitions=partitions)
    masks = select_subnetwork(scores, cost, 5.0, partitions=partitions)
    assert [int(m.sum()) for m in masks] == [4, 1]
    assert np.flatnonzero(masks[0]).tolist() == [0, 2, 4, 6] and np.flatnonzero(masks[1]).tolist() == [0]
    masks = select_subnetwork(scores, cost, 10.0, partitions=partitions)
    assert [int(m.sum()) for m in masks] == [8, 2] or [int(m.sum()) for m in masks] == [4, 6]
    assert int(masks[0].sum()) % 4 == 0 and sum(int(m.sum()) for m in masks) == 10
    # a grouped group far less important than the plain one still keeps its floor, one channel per block
    quiet = [scores[0] / 1000, scores[1]]
    assert [int(m.sum()) for m in select_subnetwork(quiet, cost, 9.0, partitions=partitions)] == [4, 5]


def test_the_floor_is_min_channels_rounded_up_to_the_channel_multiple():
    from epiprune.costs.budget import BudgetError

    cost = linear_cost([8, 8])
    scores = [np.arange(8, 0, -1, dtype=np.float64)] * 2
    with pytest.raises(BudgetError):  # floor: 3 channels rounded up to 4, in each group
        select_subnetwork(scores, cost, 7.9, min_channels=3, channel_multiple=2)
    assert [int(m.sum()) for m in select_subnetwork(scores, cost, 8.0, min_channels=3, channel_multiple=2)] == [4, 4]
