"""What to keep: a Budget is a fraction of the dense model's FLOPs, parameters or measured latency."""

from __future__ import annotations

from dataclasses import dataclass

from epiprune.errors import EpipruneError

BUDGET_KINDS = ("flops", "params", "latency")


class BudgetError(EpipruneError):
    """A budget that cannot be parsed or met; the message is one line for the user."""

@dataclass(frozen=True, init=False)
class Budget:
    """Fraction of the dense model's FLOPs, parameters or measured latency to keep, in (0, 1).

    Budget("flops", 0.5), or with a keyword: Budget(flops=0.5), Budget(params=0.4), Budget(latency=0.5)
    (latency: the time of a training step, or of inference, measured on the device; see costs.latency_model)."""

    kind: str
    fraction: float

    def __init__(self, kind: str | None = None, fraction: float | None = None, *, flops: float | None = None,
                 params: float | None = None, latency: float | None = None) -> None:
        named = {k: v for k, v in (("flops", flops), ("params", params), ("latency", latency)) if v is not None}
        if named and (kind is not None or fraction is not None or len(named) > 1):
            raise BudgetError(f"give one budget, e.g. Budget(flops=0.5) or Budget('flops', 0.5) (got kind={kind!r}, "
                              f"fraction={fraction!r}, {', '.join(f'{k}={v!r}' for k, v in named.items())})")
        if named:
            kind, fraction = next(iter(named.items()))
        kind = "flops" if kind is None else kind
        fraction = 0.5 if fraction is None else fraction
        if kind not in BUDGET_KINDS:
            raise BudgetError(f"unknown budget kind {kind!r} (accepted: {', '.join(BUDGET_KINDS)})")
        try:
            value = float(fraction)
        except (TypeError, ValueError):
            raise BudgetError(f"budget fraction {fraction!r} is not a number (accepted: 0 < F < 1)") from None
        if not 0.0 < value < 1.0:
            raise BudgetError(f"budget fraction {fraction} is outside (0, 1) (e.g. {kind}:0.5 keeps half)")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "fraction", value)

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse 'flops:0.5', 'params:0.4' or 'latency:0.5'."""
        kind, sep, value = text.partition(":")
        try:
            fraction = float(value)
        except ValueError:
            fraction = float("nan")
        if not sep or fraction != fraction:
            raise BudgetError(f"bad budget {text!r} (accepted: flops:F, params:F or latency:F with 0 < F < 1)")
        return cls(kind.strip(), fraction)

    def __str__(self) -> str:
        return f"{self.kind}:{self.fraction:g}"
