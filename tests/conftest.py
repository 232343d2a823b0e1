import os

# One torch thread per test process (and per subprocess it starts, which inherits the variable), unless the caller
# chose: on a 2-core machine shared with other work, two intra-op threads that wait for each other made an epoch
# of 128 images take 7.5 s instead of 0.5 s. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Hypothesis profiles (docs/DEVELOPMENT.md, "Mutation testing"). "mutation" runs few examples, always the same ones
# (derandomized, no example database), so a surviving mutant costs seconds, not minutes, and verdicts repeat.
# Loaded by `--hypothesis-profile=mutation` (what [tool.mutmut] in pyproject.toml passes to every pytest run) or by
# EPIPRUNE_TEST_PROFILE=mutation. Tests that set max_examples themselves take it through helpers.max_examples, which
# lets this profile lower it: hypothesis gives an explicit @settings argument precedence over any profile.
MUTATION_EXAMPLES = 10
settings.register_profile("mutation", max_examples=MUTATION_EXAMPLES, deadline=None, derandomize=True, database=None)
if os.environ.get("EPIPRUNE_TEST_PROFILE"):
    settings.load_profile(os.environ["EPIPRUNE_TEST_PROFILE"])


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def _mutant_under_test() -> str:
    """The mutmut mutant this process runs the tests against, or '' (mutmut's names contain '__mutmut_'; its stats
    and clean runs set other values)."""
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    return name if "__mutmut_" in name else ""


def pytest_configure(config):
    """Under a mutant, freeze what the forkserver already holds (torch, the collected tests) out of the garbage
    collector's reach: each mutant's pytest session then collects only the objects it made itself, and the forked
    child does not copy the parent's pages by touching their reference counts."""
    if _mutant_under_test():
        import gc

        gc.freeze()


# Under a mutant of these modules only the tests of these files run (docs/DEVELOPMENT.md, "Mutation testing"): every
# policy builds a cost model and selects a sub-network, so mutmut's stats give a survivor of counting.py or
# subnetwork.py every policy test (30-35 s each); their own tests (exact counts against torch-pruning's counter; the
# selection's properties) are what kill their mutants.
MUTATION_TESTS_BY_MODULE = {
    "epiprune.costs.counting": ("tests/test_surgery.py", "tests/test_transformer_surgery.py"),
    "epiprune.policy.subnetwork": ("tests/test_subnetwork.py", "tests/test_selection_properties.py",
                                   "tests/test_surgery.py", "tests/test_latency.py", "tests/test_layer_ratios.py",
                                   "tests/test_closed_loop.py"),
}


def pytest_collection_modifyitems(config, items):
    """Under a mutant, run only its module's test files when MUTATION_TESTS_BY_MODULE lists them, and the quickest
    tests first: pytest stops at the first failure (mutmut passes -x), so a killed mutant costs its quickest killing
    test, not the selection in file order. The durations are those mutmut recorded in its stats run
    (mutants/mutmut-stats.json; the working directory is mutants/ during a run)."""
    mutant = _mutant_under_test()
    if not mutant:
        return
    files = MUTATION_TESTS_BY_MODULE.get(mutant.rsplit(".", 1)[0])
    if files:
        deselected = [item for item in items if item.nodeid.split("::")[0] not in files]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if item.nodeid.split("::")[0] in files]
    import json
    from pathlib import Path

    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    durations = json.loads(stats.read_text())["duration_by_test"]
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
