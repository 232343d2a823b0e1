"""Shared helpers for tests: tiny networks, channel zeroing, and running the command line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import settings
from torch import nn

from epiprune.surgery import PrunableGraph


class ConvBNNet(nn.Module):
    """conv-BN-ReLU x2 then a linear classifier: 2 channel groups (4 and 6 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def random_keep(graph: PrunableGraph, fraction: float, seed: int = 0) -> list[np.ndarray]:
    """A random keep-mask per group, about `fraction` of its channels; a group spread over the blocks of grouped
    convolutions keeps the same number in every block (different positions in each)."""
    rng = np.random.default_rng(seed)
    masks = []
    for g in graph.groups:
        keep = np.zeros(g.size, dtype=bool)
        if g.partition is None:
            keep[rng.permutation(g.size)[: max(1, int(round(fraction * g.size)))]] = True
        else:
            per_block = max(1, int(round(fraction * g.size / g.blocks)))
            for b in range(g.blocks):
                members = np.flatnonzero(g.partition == b)
                keep[rng.permutation(members)[:per_block]] = True
        masks.append(keep)
    return masks


@torch.no_grad()
def zero_dropped_channels(graph: PrunableGraph, masks: list[np.ndarray]) -> None:
    """Make dropped channels contribute nothing: zero every output-channel slice of the group's layers
    (conv/linear weight rows and biases, BN scale and shift), so each dropped channel outputs exactly 0."""
    for g, keep in zip(graph.groups, masks, strict=True):
        drop = torch.as_tensor(np.flatnonzero(~keep))
        if len(drop) == 0:
            continue
        for m in g.out_modules:
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.weight[drop] = 0
                if m.bias is not None:
                    m.bias[drop] = 0


def run_cli(*args, cwd=None, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m epiprune *args` in a child process, its stdout and stderr captured as text. The exit code is
    not checked here: the caller asserts it (with the stderr as the failure message).

    Under mutmut (any of its phases: stats, clean run, mutants) the test is skipped: the child process imports the
    unmutated package, so it cannot tell a mutant from the original; skipped in the stats run too, such a test is
    tied to no mutated function and costs the run nothing (docs/DEVELOPMENT.md)."""
    if "MUTANT_UNDER_TEST" in os.environ:
        pytest.skip("a child process does not see the mutant")
    return subprocess.run([sys.executable, "-m", "epiprune", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def call_main(argv, capsys, *, argparse_exit: bool = False) -> subprocess.CompletedProcess:
    """`epiprune.cli.main(argv)` in this process, with what it printed (pytest's capsys) as a CompletedProcess,
    so the same assertions fit it and run_cli. A SystemExit (argparse's errors) propagates unless argparse_exit,
    when its code becomes the returncode: only tests that accept either way of exiting pass it."""
    from epiprune.cli import main  # here, not at the top: the unit tests that import this module stay light

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        if not argparse_exit:
            raise
        code = e.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 2,
                          starts: str = "") -> str:
    """The command line's contract for bad input: exit `code` (2) and exactly one line on stderr, `error: ...`
    (starting "error: " + starts), no traceback, and every fragment in it. Returns that line."""
    err = result.stderr
    assert result.returncode == code, (result.returncode, err)
    assert err.count("\n") == 1 and err.endswith("\n") and err.startswith("error: " + starts), err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def max_examples(n: int) -> int:
    """For `@settings(max_examples=max_examples(n))`: n, except under the "mutation" hypothesis profile
    (tests/conftest.py), whose smaller count then applies. An explicit max_examples would otherwise win over every
    profile. Only that profile lowers it: the "ci" profile hypothesis may load by itself leaves n alone."""
    if settings.get_current_profile_name().startswith("mutation"):  # also "mutation-with-verbose-verbosity"
        return min(n, settings.default.max_examples)
    return n
