"""Every option of every subcommand has help text showing its default once, and is in the README (issue 14)."""

import argparse
import re
from pathlib import Path

import pytest

from epiprune.cli import _Help, build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices.items())


def options(parser):
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("name,parser", subcommands())
def test_every_option_has_help_and_its_default_once(name, parser):
    formatter = _Help(prog=name)
    for action in options(parser):
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        if action.option_strings:
            text = formatter._expand_help(action)  # the help as --help prints it
            assert text.count("(default") == 1, f"{name} {action.option_strings[0]}: {text!r}"
            assert "(default: None)" not in text, f"{name} {action.option_strings[0]}: say what None means"


@pytest.mark.parametrize("name,parser", subcommands())
def test_every_option_is_in_the_readme(name, parser):
    documented = set(re.findall(r"`(--[a-z0-9-]+)", README))
    missing = [a.option_strings[0] for a in options(parser) if a.option_strings and
               a.option_strings[0] not in documented]
    assert not missing, f"README lacks {name} options {missing}"


def test_bare_epiprune_prints_its_commands_and_version_prints_the_version(capsys):
    from epiprune import __version__
    from epiprune.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: epiprune") and "{train,compare,export,latency-table,report,predict}" in out
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"epiprune {__version__}\n"


def _readme_defaults() -> list[tuple[list[str], list[str]]]:
    """README's train table rows whose meaning starts with one default per flag ('0, 2: ...'): (flags, defaults)."""
    table = README.split("## `epiprune train`", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = line.split(" | ")
        if len(cells) < 2 or not cells[0].startswith("| `--"):
            continue
        flags = re.findall(r"`(--[a-z0-9-]+)", cells[0])
        head = cells[1].split(":", 1)[0]
        values = [v.strip() for v in head.split(",")]
        if ":" in cells[1] and len(values) == len(flags) > 0 and all(len(v.split()) == 1 and v.count("`") != 1
                                                                     for v in values):
            rows.append((flags, values))
    return rows


def _same(readme: str, default: object) -> bool:
    if readme in ("none", "all") or (readme == "off" and default is False):
        return default in (None, False)
    try:
        return float(readme) == float(default)
    except (TypeError, ValueError):
        return readme.strip("`") == str(default)


def test_the_readme_table_states_the_defaults_train_help_states():
    """Issue 20: README said --epi-smooth defaults to 1 while --help said 2. Each row of defaults is checked."""
    from epiprune.run.config import TrainConfig

    made = TrainConfig()  # the network-dependent defaults (None in the field) as the default network takes them
    defaults = {"--" + f.name.replace("_", "-"): getattr(made, f.name) for f in TrainConfig.options()}
    rows = _readme_defaults()
    assert len(rows) >= 8 and any("--epi-smooth" in flags for flags, _ in rows)
    for flags, values in rows:
        for flag, value in zip(flags, values, strict=True):
            if flag in defaults:
                assert _same(value, defaults[flag]), f"README says {flag} defaults to {value}, --help {defaults[flag]}"


def test_the_readme_states_the_defaults_a_transformer_run_takes():
    """Issue 21: a transformer (vit_tiny, lm_tiny) trains with AdamW, a warm-up and clipping where not told
    otherwise; README's row says which values, as run/defaults.py sets them."""
    from epiprune.run.config import TrainConfig
    from epiprune.run.defaults import CNN_DEFAULTS, TRANSFORMER_WARMUP

    row = next(line for line in README.splitlines() if line.startswith("| a transformer's defaults"))
    stated = dict(re.findall(r"--([a-z-]+) ([^ `]+)", row.split(" | ")[1].split("`")[1]))
    made = TrainConfig(model="lm_tiny", data="text", epochs=20)
    for name, value in stated.items():
        assert _same(value, getattr(made, name.replace("-", "_"))), f"README says {name} {value}"
    assert set(stated) | {"warmup-epochs"} == {n.replace("_", "-") for n in CNN_DEFAULTS}
    assert f"warm-up (`--warmup-epochs`) of {100 * TRANSFORMER_WARMUP:g}% of `--epochs`" in row
    assert made.warmup_epochs == TRANSFORMER_WARMUP * 20
