"""Registries: the variants of one kind (importances, indicators, models, latency layer kinds) as named objects,
timm-style (register, list, get), instead of strings compared in many files. A base module: imports nothing of
epiprune but the error type.

    IMPORTANCES = Registry("importance")

    @IMPORTANCES.register("taylor")
    class TaylorImportance: ...

    IMPORTANCES.get("taylor")   # the class; an unknown name is one EpipruneError line naming the accepted ones
    list(IMPORTANCES)           # ['taylor', ...] in registration order (what --help lists)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from epiprune.errors import EpipruneError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order. Iterating yields the names, so a registry serves as an
    argparse `choices` and in `', '.join(...)`; `name in registry` asks whether a name is registered."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """Register `entry` under `name` (also usable as a decorator). A name is registered once."""
        if not isinstance(name, str) or not name:
            raise EpipruneError(f"a {self.kind} needs a non-empty name (got {name!r})")

        def add(value: T) -> T:
            if name in self._entries:
                raise EpipruneError(f"{self.kind} {name!r} is registered already (accepted: a new name; registered: "
                                    f"{', '.join(self)})")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        """The entry registered as `name`; EpipruneError naming the accepted names for any other."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise EpipruneError(f"unknown {self.kind} {name!r} (accepted: {', '.join(self)})") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"
