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
