"""The Importance protocol: what the policy asks of taylor, magnitude and random importance (and of a user's own)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epiprune import Budget, EarlyPruningPolicy
from epiprune.policy.importance import IMPORTANCES, Importance, MagnitudeImportance, RandomImportance, make_importance
from epiprune.surgery import PrunableGraph

from .helpers import ConvBNNet


def graph() -> PrunableGraph:
    return PrunableGraph(ConvBNNet(), torch.zeros(1, 1, 8, 8))


def train_step(model: torch.nn.Module) -> None:
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("kind", IMPORTANCES)
def test_every_importance_has_the_protocol(kind):
    g = graph()
    importance: Importance = make_importance(kind, g)
    for name in ("needs_gradients", "steps", "step", "scores", "reset", "state_tensors", "state_dict",
                 "load_state_dict"):
        assert hasattr(importance, name), name
    assert importance.needs_gradients == (kind == "taylor")
    train_step(g.model)
    importance.step()
    first = importance.scores()
    assert [len(s) for s in first] == g.widths()
    assert all(np.array_equal(a, b) for a, b in zip(first, importance.scores(), strict=True))  # looking is free
    state = importance.state_dict()
    assert state["steps"] == 1
    other = make_importance(kind, g)
    other.load_state_dict(state)
    assert other.steps == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, other.scores(), strict=True))


def test_random_scores_do_not_advance_the_generator_when_only_looked_at():
    importance = RandomImportance(graph(), seed=5)
    first = importance.scores()
    first[0][:] = -1.0  # the caller's copy: the importance's own draw is untouched
    again = importance.scores()
    assert importance.draws == 1 and (again[0] >= 0).all()
    importance.reset()  # next epoch: a new draw
    second = importance.scores()
    assert importance.draws == 2 and not np.array_equal(again[0], second[0])
    fresh = RandomImportance(graph(), seed=5)
    fresh.replay(1)  # the generator after one epoch: its next draw is the second epoch's
    assert all(np.array_equal(a, b) for a, b in zip(second, fresh.scores(), strict=True))


def test_random_policy_resumed_mid_epoch_after_a_look_draws_the_same_scores():
    def policy_of(model: torch.nn.Module) -> EarlyPruningPolicy:
        return EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), importance="random",
                                  indicator="none", seed=3)

    original = policy_of(ConvBNNet())
    original.end_epoch()
    looked = original.dominant_subnetwork()  # a look in the middle of epoch 2, then a checkpoint
    state = original.state_dict()
    assert state["importance_draws"] == 1  # the finished epoch only: the looked-at draw is drawn again
    resumed = policy_of(ConvBNNet())
    resumed.load_state_dict(state)
    for a, b, c in zip(looked, original.dominant_subnetwork(), resumed.dominant_subnetwork(), strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_taylor_without_gradients_falls_back_to_weight_magnitude():
    model = ConvBNNet()
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8), Budget("flops", 0.5))
    magnitude = EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8), Budget("flops", 0.5), importance="magnitude")
    assert policy.importance.steps == 0
    want = magnitude.dominant_subnetwork()
    assert all(np.array_equal(a, b) for a, b in zip(want, policy.dominant_subnetwork(), strict=True))
    assert np.mean([s.std() for s in MagnitudeImportance(policy.graph).scores()]) > 0  # not a tie everywhere


def test_taylor_state_round_trip_carries_the_totals():
    g = graph()
    taylor = make_importance("taylor", g)
    train_step(g.model)
    taylor.step()
    other = make_importance("taylor", g)
    other.load_state_dict(taylor.state_dict())
    assert other.steps == 1
    for a, b in zip(taylor.scores(), other.scores(), strict=True):
        assert np.array_equal(a, b) and a.any()
