"""One list of settings (issue 22): PolicyConfig is the policy constructor's keywords, every policy option of
TrainConfig reaches the policy the trainer builds, and a user's own importance and indicator plug in."""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from epiprune import Budget, EarlyPruningPolicy, EpipruneError
from epiprune.policy.config import PolicyConfig
from epiprune.policy.importance import IMPORTANCES, MagnitudeImportance
from epiprune.policy.indicator import INDICATORS, Indicator
from epiprune.registry import Registry
from epiprune.run.config import TrainConfig
from epiprune.run.policy_setup import make_run_policy

from .helpers import ConvBNNet

# PolicyConfig fields no TrainConfig option feeds directly: derived by TrainConfig.policy_config, or library-only
DERIVED = {"max_dense_epochs", "latency", "epi_every", "steps_per_epoch"}
LIBRARY_ONLY = {"min_channels", "require_peak"}

# TrainConfig policy option -> (a non-default value, other settings it needs, what the built policy shows)
NON_DEFAULT: dict[str, tuple[Any, dict, Any]] = {
    "budget": ("params:0.4", {}, lambda p: str(p.budget)),
    "importance": ("magnitude", {}, lambda p: (p.importance_kind, type(p.importance).__name__)),
    "indicator": ("earlybird-budget", {}, lambda p: (p.indicator, p.rule.smooth)),
    "epi_window": (2, {}, lambda p: p.rule.window),
    "epi_threshold": (0.9, {}, lambda p: p.rule.threshold),
    "epi_average": ("group", {}, lambda p: p.epi_average),
    "epi_peak": (2, {}, lambda p: p.rule.peak),
    "epi_smooth": (3, {}, lambda p: p.rule.smooth),
    "earlybird_queue": (4, {"indicator": "earlybird"}, lambda p: (p.earlybird_queue, p.rule.min_dense_epochs)),
    "min_dense_epochs": (5, {}, lambda p: p.rule.min_dense_epochs),
    "max_dense_epochs": (6, {}, lambda p: p.rule.max_dense_epochs),
    "prune_at": (3, {}, lambda p: p.rule.prune_at),
    "channel_multiple": (2, {}, lambda p: p.channel_multiple),
    "seed": (7, {"importance": "random"}, lambda p: p.importance.seed),
    "latency_table": ("somewhere.json", {}, lambda p: p.config.latency_table),
    "latency_closed_loop": (False, {}, lambda p: p.config.latency_closed_loop),
}
EXPECTED = {"importance": ("magnitude", "MagnitudeImportance"), "indicator": ("earlybird-budget", 1),
            "earlybird_queue": (4, 5)}


def trainers_policy(cfg: TrainConfig, tmp_path: Path) -> EarlyPruningPolicy:
    """The policy `epiprune train` builds for cfg (the trainer's own path, not from_config called by hand)."""
    return make_run_policy(cfg, ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget.parse(cfg.budget), tmp_path, False,
                        lambda _: None, [])


def test_policy_config_is_the_constructors_keywords_with_its_defaults():
    params = inspect.signature(EarlyPruningPolicy.__init__).parameters
    for f in fields(PolicyConfig):
        assert f.name in params, f"PolicyConfig.{f.name} is no keyword of EarlyPruningPolicy"
        if params[f.name].default is not None:
            assert params[f.name].default == f.default, f.name
    assert str(Budget()) == PolicyConfig.budget


def test_every_policy_field_is_fed_once():
    fed = [f.metadata["policy"] for f in fields(TrainConfig) if f.metadata.get("policy")]
    assert len(fed) == len(set(fed))
    assert set(fed) | DERIVED | LIBRARY_ONLY == {f.name for f in fields(PolicyConfig)}
    policy_options = {f.name for f in fields(TrainConfig) if f.metadata.get("policy")} | {"max_dense_epochs"}
    assert policy_options == set(NON_DEFAULT), "each policy option needs a case below"


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_a_non_default_policy_setting_reaches_the_trainers_policy(name, tmp_path):
    value, needs, shown = NON_DEFAULT[name]
    default = next(f.default for f in fields(TrainConfig) if f.name == name)
    assert value != default
    cfg = TrainConfig(**{**needs, name: value}, out=str(tmp_path))
    cfg.validate()
    assert shown(trainers_policy(cfg, tmp_path)) == EXPECTED.get(name, value)
    plain = trainers_policy(TrainConfig(**needs, out=str(tmp_path)), tmp_path)
    assert shown(plain) != EXPECTED.get(name, value)  # the value shown is the setting's, not the default's


def test_derived_latency_settings_reach_the_policy(tmp_path):
    cfg = TrainConfig(latency_target="infer", latency_batch=4, channels_last=True, latency_noise_limit=0.9)
    assert cfg.latency_settings().noise_limit == 0.9  # --latency-noise-limit: what the table's build must meet
    assert cfg.policy_config().latency == cfg.latency_settings()
    assert trainers_policy(cfg, tmp_path).config.latency == cfg.latency_settings()


def test_the_derived_step_clock_reaches_the_trainers_policy(tmp_path):
    """--epi-every and the loader's length become the policy's clock (and the epoch clock stays without one)."""
    cfg = TrainConfig(epi_every="6", epi_threshold="auto", out=str(tmp_path))
    cfg.validate()
    policy = make_run_policy(cfg, ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget.parse(cfg.budget), tmp_path, False,
                          lambda _: None, [], steps_per_epoch=10)
    assert (policy.clock.every, policy.clock.steps_per_epoch, policy.auto_threshold) == (6, 10, True)
    assert policy.rule.max_dense_epochs == cfg.epochs / 2  # the fallback at half the schedule, in epochs
    assert trainers_policy(TrainConfig(out=str(tmp_path)), tmp_path).clock is None


def test_from_config_builds_what_the_keywords_build():
    config = PolicyConfig(budget="params:0.4", window=2, peak=1, smooth=1, channel_multiple=2, epi_average="group")
    a = EarlyPruningPolicy.from_config(ConvBNNet(), torch.zeros(1, 1, 8, 8), config, log=lambda _: None)
    b = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget(params=0.4), window=2, peak=1, smooth=1,
                           channel_multiple=2, epi_average="group", log=lambda _: None)
    assert a.rule == b.rule and a.config == b.config == replace(config, budget="params:0.4")
    assert (a.budget, a.channel_multiple, a.epi_average) == (b.budget, 2, "group")


class Incomplete:
    name, default_threshold, needs_gradients = "incomplete", 0.9, False

    def step(self, grad_scale: float = 1.0) -> None: ...

    def reset(self) -> None: ...

    def state_tensors(self) -> list: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def test_unknown_names_are_one_line_naming_the_registered_ones():
    with pytest.raises(EpipruneError, match=r"^unknown importance 'taylr' \(accepted: taylor, magnitude, bn, "
                       r"random\)$"):
        EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), importance="taylr")
    with pytest.raises(EpipruneError, match=r"^unknown indicator 'epl' \(accepted: epi, earlybird, earlybird-budget, "
                       r"none\)$"):
        EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), indicator="epl")
    with pytest.raises(EpipruneError, match="is neither a registered name nor an Importance: a class, not an "):
        EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), importance=MagnitudeImportance)
    with pytest.raises(EpipruneError, match=r"nor an Importance: lacks bind, scores \(accepted: taylor, magnitude"):
        EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), importance=Incomplete())


def test_registry_registers_once_and_lists_in_order():
    things: Registry[int] = Registry("thing")
    things.register("b", 2)

    @things.register("a")
    def a() -> int:
        return 1

    assert list(things) == ["b", "a"] and things.get("a") is a and "b" in things and len(things) == 2
    with pytest.raises(EpipruneError, match=r"^thing 'a' is registered already"):
        things.register("a", 3)
    with pytest.raises(EpipruneError, match=r"^unknown thing 'c' \(accepted: b, a\)$"):
        things.get("c")


def test_importances_carry_their_default_threshold():
    assert {name: IMPORTANCES.get(name).default_threshold for name in IMPORTANCES} == \
        {"taylor": 0.944, "magnitude": 0.983, "bn": 0.983, "random": 0.944}
    for name in IMPORTANCES:
        policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), importance=name)
        assert policy.rule.threshold == IMPORTANCES.get(name).default_threshold
    early_bird = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), indicator="earlybird", importance="bn")
    assert early_bird.rule.threshold == pytest.approx(0.9) and INDICATORS.get("earlybird").threshold == 0.9


class SmallestWeights:
    """A user's own importance (the README example): ranks channels by the inverse of their weight norm, so the
    policy keeps the channels with the smallest weights."""

    name = "smallest-weights"
    default_threshold = 0.95
    needs_gradients = False

    def __init__(self) -> None:
        self.steps = 0

    def bind(self, graph) -> None:  # noqa: ANN001 (a PrunableGraph)
        self.graph = graph

    def step(self, grad_scale: float = 1.0) -> None:
        self.steps += 1

    def scores(self) -> list[np.ndarray]:
        return [1 / g.root.weight.detach().flatten(1).norm(dim=1).double().numpy() for g in self.graph.groups]

    def reset(self) -> None:
        self.steps = 0

    def state_tensors(self) -> list[torch.Tensor]:
        return []

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def test_a_users_importance_decides_what_is_kept():
    model = ConvBNNet()
    policy = EarlyPruningPolicy(model, torch.zeros(1, 1, 8, 8), Budget(flops=0.5), importance=SmallestWeights())
    assert (policy.importance_kind, policy.rule.threshold) == ("smallest-weights", 0.95)
    norms = [g.root.weight.detach().flatten(1).norm(dim=1).numpy() for g in policy.graph.groups]
    policy.prune_now()
    for name, norm in zip(policy.group_names, norms, strict=True):
        kept = policy.kept[name]
        assert sorted(kept) == sorted(np.argsort(norm, kind="stable")[:len(kept)].tolist()), name
    assert policy.summary()["importance"] == "smallest-weights"


def test_negative_scores_are_refused_in_one_line():
    class Negative(SmallestWeights):
        name = "negative"

        def scores(self) -> list[np.ndarray]:
            return [-s for s in super().scores()]

    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), importance=Negative())
    with pytest.raises(EpipruneError, match=r"^importance 'negative' gave group conv1 scores from -[0-9.]+ to "
                       r"-[0-9.]+ \(accepted: finite scores >= 0\)$"):
        policy.prune_now()
    assert not policy.pruned


def test_a_users_indicator_object_decides_when():
    eager = Indicator("eager", threshold=0.01)  # any defined EPI is "stable"
    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), indicator=eager, window=1, smooth=1,
                                max_dense_epochs=5)
    assert (policy.indicator, policy.rule.threshold) == ("eager", 0.01)
    fired = [e for e in range(1, 6) if policy.end_epoch()]
    assert fired == [2] and policy.trigger == "epi"  # EPI exists from epoch window + 1
    never = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), indicator=Indicator("watch", prunes=False),
                               window=1, max_dense_epochs=3)
    assert not any(never.end_epoch() for _ in range(6))


def test_policy_config_defaults_are_trainconfigs():
    train_defaults = {f.metadata["policy"]: f.default for f in fields(TrainConfig)
                      if f.metadata.get("policy") and f.default is not MISSING}
    for f in fields(PolicyConfig):
        if f.name in train_defaults:
            assert train_defaults[f.name] == f.default, f.name


def test_readme_own_importance_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- example:own-importance -->\s*```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    policy = namespace["policy"]
    # unchanged weights: the same sub-network every epoch, EPI 1 at epoch 2 > tau 0.98 (strict), so it prunes there
    assert (policy.importance_kind, policy.indicator, policy.rule.threshold) == ("weight-norm", "strict-epi", 0.98)
    assert (policy.prune_epoch, policy.trigger) == (2, "epi") and policy.rule.strict
    assert capsys.readouterr().out.split() == ["weight-norm", "0.98", "2", "epi"]


def test_from_config_hands_over_how_the_policy_runs(monkeypatch):
    """log, progress and ignored_layers reach the policy (the latency table's build is where log and progress go)."""
    from epiprune.policy import early_pruning as policy_module

    calls = []

    def fake_load_or_build(graph: Any, settings: Any, path: Any, progress: bool, log: Any, *, select: Any) -> None:
        calls.append((graph.names, progress, log))
        raise EpipruneError("stop here")

    monkeypatch.setattr(policy_module, "load_or_build", fake_load_or_build)
    model, quiet = ConvBNNet(), (lambda _: None)
    with pytest.raises(EpipruneError, match="stop here"):
        EarlyPruningPolicy.from_config(model, torch.zeros(1, 1, 8, 8), PolicyConfig(budget="latency:0.5"),
                                       ignored_layers=[model.conv2], log=quiet, progress=False)
    with pytest.raises(EpipruneError, match="stop here"):
        EarlyPruningPolicy.from_config(model, torch.zeros(1, 1, 8, 8), PolicyConfig(budget="latency:0.5"))
    assert calls == [(["conv1"], False, quiet), (["conv1", "conv2"], True, print)]


def test_an_indicator_of_an_unknown_signal_is_refused_and_earlybird_is_a_signal():
    with pytest.raises(EpipruneError, match=r"^indicator 'x': unknown signal 'bn' \(accepted: epi, earlybird\)$"):
        Indicator("x", signal="bn")
    assert Indicator("mine", signal="earlybird").signal == "earlybird"


def test_the_summary_names_the_step_clock_and_the_auto_threshold():
    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget(flops=0.5), epi_every=4,
                                steps_per_epoch=8, threshold="auto", log=lambda _: None)
    summary = policy.summary()
    assert (summary["epi_every"], summary["threshold"]) == (4, "auto")
    epoch_clock = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget(flops=0.5), log=lambda _: None)
    assert (epoch_clock.summary()["epi_every"], epoch_clock.summary()["threshold"]) == (0, 0.944)
    assert policy.clock.threshold() is None  # no probe yet: no noise measured, no auto threshold


def test_an_importance_without_a_name_is_called_by_its_class():
    class Unnamed(SmallestWeights):
        name = ""

    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), importance=Unnamed())
    assert policy.importance_kind == "Unnamed"


@pytest.mark.parametrize("setting, words", [("min_dense_epochs", "min dense epochs 1.5"),
                                            ("max_dense_epochs", "max dense epochs 1.5"),
                                            ("prune_at", "prune-at epoch 1.5")])
def test_a_fraction_of_an_epoch_on_the_epoch_clock_is_refused_naming_the_setting(setting, words):
    with pytest.raises(EpipruneError) as error:
        EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), **{setting: 1.5})
    assert str(error.value) == f"{words} is not a whole number of epochs (accepted: fractions of an epoch on the " \
                               "step clock, epi_every >= 2)"


def test_an_importance_giving_scores_for_another_number_of_groups_is_refused_in_one_line():
    class Short(SmallestWeights):
        name = "short"

        def scores(self) -> list[np.ndarray]:
            return super().scores()[:-1]

    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), importance=Short())
    with pytest.raises(EpipruneError) as error:
        policy.prune_now()
    groups = len(policy.group_names)
    assert str(error.value) == f"importance 'short' gave scores for {groups - 1} groups (accepted: one array per " \
                               f"channel group, {groups})"


def test_zero_scores_are_accepted():
    class Zeros(SmallestWeights):
        name = "zeros"

        def scores(self) -> list[np.ndarray]:
            return [np.zeros_like(s) for s in super().scores()]

    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), importance=Zeros())
    policy.prune_now()
    assert policy.pruned


def test_a_latency_budget_without_settings_uses_the_default_settings_and_the_policys_log(monkeypatch, tmp_path):
    from epiprune.costs.timing import LatencySettings
    from epiprune.policy import early_pruning

    seen = {}

    def fake_load_or_build(graph, settings, table, progress, log, select):
        seen["build"] = settings
        raise EpipruneError("stop here")

    monkeypatch.setattr(early_pruning, "load_or_build", fake_load_or_build)
    with pytest.raises(EpipruneError, match="stop here"):
        EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8), Budget(latency=0.5), latency_table=tmp_path / "t")
    assert seen["build"] == LatencySettings()


def test_a_fresh_policy_has_no_scores_no_probe_half_and_no_prune_step():
    policy = EarlyPruningPolicy(ConvBNNet(), torch.zeros(1, 1, 8, 8))
    assert policy.last_scores is None and policy.last_half is None and policy.prune_step is None
    assert policy.summary()["prune_step"] is None
