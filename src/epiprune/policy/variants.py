"""What the policy's settings name: the importance and indicator (registered names or user objects) and the clock
(epoch or step), each checked before the policy builds anything expensive."""

from __future__ import annotations

from epiprune.errors import EpipruneError
from epiprune.policy.bounds import check_at_least, check_epi_average
from epiprune.policy.clock import StepClock
from epiprune.policy.importance import IMPORTANCE_MEMBERS, IMPORTANCES, Importance
from epiprune.policy.indicator import INDICATORS, Indicator


def resolve_variants(importance: str | Importance, indicator: str | Indicator, epi_average: str,
                      earlybird_queue: int) -> tuple[Importance | type, Indicator]:
    """(the importance's class or instance, the indicator) that registered names or user objects stand for; a
    bad name, object or setting is one EpipruneError line."""
    kind = INDICATORS.get(indicator) if isinstance(indicator, str) else indicator
    if not isinstance(kind, Indicator):
        raise EpipruneError(f"indicator {indicator!r} is neither a registered name nor an Indicator (accepted: "
                            f"{', '.join(INDICATORS)}, or an epiprune.policy.indicator.Indicator)")
    importance_type = IMPORTANCES.get(importance) if isinstance(importance, str) else importance
    if not isinstance(importance, str):
        missing = [a for a in IMPORTANCE_MEMBERS if not hasattr(importance, a)]  # `steps` may come with bind()
        if isinstance(importance, type) or missing:
            what = "a class, not an instance" if isinstance(importance, type) else f"lacks {', '.join(missing)}"
            raise EpipruneError(f"importance {importance!r} is neither a registered name nor an Importance: {what} "
                                f"(accepted: {', '.join(IMPORTANCES)}, or an object with the members of "
                                "epiprune.policy.importance.Importance)")
    check_epi_average(epi_average)
    check_at_least("earlybird_queue", earlybird_queue)
    return importance_type, kind


def make_clock(epi_every: int, steps_per_epoch: int | None) -> StepClock | None:
    """The step clock epi_every asks for (None: the epoch clock); it needs the epoch's length in steps."""
    if epi_every == 0:
        return None
    if steps_per_epoch is None:
        raise EpipruneError(f"epi_every {epi_every} needs steps_per_epoch (accepted: the optimizer steps of one "
                            "epoch, e.g. len(loader): the dense span and the fallback are counted in epochs)")
    return StepClock(epi_every, steps_per_epoch)
