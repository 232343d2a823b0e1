"""The package map of docs/DEVELOPMENT.md, enforced: imports run downwards only, and the commands that read files
(`report`, `predict`) do not load the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "epiprune"
BASE = {"errors", "files", "registry", "distributed", "numerics"}  # modules every layer may import
# layer -> the layers it may import (besides itself and BASE); the order of docs/DEVELOPMENT.md's map
MAY_IMPORT = {
    "base": set(),
    "models": set(),
    "surgery": {"models"},
    "costs": {"surgery", "models"},
    "io": {"surgery", "models"},
    "policy": {"costs", "surgery", "models"},
    "run": {"policy", "costs", "surgery", "io", "models"},
    "evidence": {"run", "policy", "costs", "surgery", "io", "models"},
    "entry": {"evidence", "run", "policy", "costs", "surgery", "io", "models"},  # cli.py, __main__.py, __init__.py
}


def layer_of(module: str) -> str:
    """'epiprune.run.trainer' -> 'run'; base modules -> 'base'; cli/__main__/the package itself -> 'entry'."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return "entry"
    return "base" if parts[1] in BASE else parts[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def epiprune_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every epiprune module `path` imports, top-level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("epiprune"):
            found += [(node.lineno, node.module)]
            if node.module == "epiprune":  # `from epiprune import distributed` (a module), not `__version__`
                found += [(node.lineno, f"epiprune.{a.name}") for a in node.names
                          if (SRC / f"{a.name}.py").exists() or (SRC / a.name).is_dir()]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "relative import"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("epiprune")]
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        importer = module_name(path)
        mine = layer_of(importer)
        for line, imported in epiprune_imports(path):
            if imported == "relative import":
                if mine != "models":  # the model zoo's own files import each other relatively
                    bad.append(f"{importer}:{line} uses a relative import")
                continue
            theirs = layer_of(imported)
            if imported != "epiprune" and theirs not in (mine, "base") and theirs not in MAY_IMPORT[mine]:
                bad.append(f"{importer}:{line} ({mine}) imports {imported} ({theirs})")
    return bad


def test_every_layer_is_known():
    layers = {layer_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert layers <= set(MAY_IMPORT), layers - set(MAY_IMPORT)


def test_imports_run_downwards_only():
    assert upward_imports() == []


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    """The check itself can fail: a policy module importing the trainer is reported."""
    fake = SRC / "policy" / "_upward_probe.py"
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: iter([fake]))
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from epiprune.run.trainer import train\n")
    assert upward_imports() == ["epiprune.policy._upward_probe:1 (policy) imports epiprune.run.trainer (run)"]


@pytest.mark.parametrize("module, forbidden", [
    ("epiprune.evidence.report", ("torch_pruning", "epiprune.run.trainer", "epiprune.policy.early_pruning",
                                  "epiprune.evidence.compare")),
    ("epiprune.io.predict", ("epiprune.run", "epiprune.policy", "epiprune.costs", "epiprune.evidence")),
    ("epiprune", ("torch", "epiprune.run", "epiprune.policy")),
])
def test_reading_commands_do_not_load_the_training_stack(module, forbidden):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({forbidden!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} loaded {out.strip()}"
