"""TrainConfig as text: the command-line options generated from its fields (train's, and compare's shared ones),
option lists parsed back into field values (compare's extra_args), and a run's recorded settings read with today's
defaults for what it did not record."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from typing import Any

from epiprune.errors import EpipruneError
from epiprune.run.config import TrainConfig
from epiprune.run.config_text import base_types


def scalar_type(name: str) -> type | None:
    """int, float or str: the argparse type of a field's option; None for bool (a switch) and containers."""
    plain, _ = base_types(TrainConfig.field_types()[name])
    return plain[0] if plain[0] in (int, float, str) else None


def recorded_setting(recorded: dict[str, Any], key: str) -> Any:
    """The value of TrainConfig field `key` in a run's recorded settings (summary.json's or a checkpoint's config,
    config.json). A run made before the option existed has no entry: it ran as the field's default does today for
    the default network, so that default is returned (None for a name that is not a field)."""
    if key in recorded:
        return recorded[key]
    if key in {f.name for f in fields(TrainConfig)}:
        # the default network's value: a network-dependent setting (run/defaults.py) that a run did not record
        # did not exist when it ran, and every network ran as a CNN's default does (clip_grad_norm: 0, off)
        return getattr(TrainConfig(), key)
    return None


def add_config_options(p: argparse.ArgumentParser, names: tuple[str, ...] | None = None,
                       defaults: dict[str, Any] | None = None) -> None:
    """The command-line options of TrainConfig's fields (all, or those named), generated from each field's type,
    default and metadata (help, choices, metavar, parse): the one place a train option is described. A field with
    `parse` takes text (default: none given), which `config_values` turns into the field's value. `defaults`
    replaces TrainConfig's default of a plain field (compare runs 12 epochs, not 15)."""
    for f in TrainConfig.options():
        if names is not None and f.name not in names:
            continue
        meta = f.metadata
        kwargs: dict = {"help": meta["help"]}
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if meta["metavar"] is not None:
            kwargs["metavar"] = meta["metavar"]
        if TrainConfig.field_types()[f.name] is bool:  # a switch; one that is on by default also has --no-NAME
            kwargs.update(action=argparse.BooleanOptionalAction if f.default is True else "store_true",
                          default=f.default)
        elif meta["parse"] is not None:
            kwargs["default"] = None
        else:
            kwargs.update(type=scalar_type(f.name), default=(defaults or {}).get(f.name, f.default))
        p.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_values(given: dict) -> dict:
    """TrainConfig field values of explicitly given train options (their text parsed where a field says how)."""
    values = {}
    for f in TrainConfig.options():
        if f.name in given:
            value, parse = given[f.name], f.metadata["parse"]
            values[f.name] = parse(value) if parse is not None and value is not None else value
    return values


class _OptionParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise EpipruneError(message)


def parse_options(argv: list[str]) -> dict[str, Any]:
    """TrainConfig field values of `epiprune train` options in argv, e.g. ['--channels-last'] -> {'channels_last':
    True} (what compare's extra_args add to every run); an option that is not a TrainConfig field is an error."""
    parser = _OptionParser(prog="train", add_help=False, argument_default=argparse.SUPPRESS)
    add_config_options(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    try:
        given, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise EpipruneError(f"bad train option in {argv} ({e})") from None
    if rest:
        raise EpipruneError(f"{rest} are not train settings (accepted: options of TrainConfig's fields, e.g. "
                            "--channels-last)")
    return config_values(vars(given))
