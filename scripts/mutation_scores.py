"""Per-file mutation scores of the last mutmut run (docs/DEVELOPMENT.md, "Mutation testing"): a table on stdout and
the same numbers as JSON.

Reads mutmut's own verdicts from mutants/**/*.py.meta (written by `mutmut run`; nothing is re-run here) and counts,
per mutated file, the mutants killed (a test failed; mutmut also counts an exceeded time limit as caught, shown
apart), survived, without a test, and not checked yet. The score is killed / checked, and the score that docs quote,
killed / (checked - equivalent), uses the survivors listed as equivalent in scripts/mutation_equivalent.json, each
with its reason.

    python scripts/mutation_scores.py [--json benchmarks/results/mutation/scores.json] [--survivors] [--carry]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# mutmut 3.8's exit codes (mutmut/stats.py status_by_exit_code), folded into the columns of the table
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", None: "not checked",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 34: "skipped",
          37: "killed"}

# Survivors that cannot change behaviour, each with its reason (a class of reasons: docs/DEVELOPMENT.md) and its
# diff (the first removed and added line, as `mutmut show` prints them). mutmut numbers a function's mutants anew
# when the function changes: `--carry` re-keys the entries whose name no longer survives by that diff.
EQUIVALENT_FILE = Path(__file__).with_name("mutation_equivalent.json")
ENTRIES: dict[str, dict | str] = json.loads(EQUIVALENT_FILE.read_text())
EQUIVALENT: dict[str, str] = {name: e if isinstance(e, str) else e["reason"] for name, e in ENTRIES.items()}


def mutant_diff(name: str) -> tuple[str, str]:
    """(first removed line, first added line) of a mutant, stripped, from `mutmut show` (run where mutants/ is)."""
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    removed = next((x[1:].strip() for x in shown if x.startswith("-") and not x.startswith("---")), "")
    added = next((x[1:].strip() for x in shown if x.startswith("+") and not x.startswith("+++")), "")
    return removed, added


def carry_equivalents(survivors: list[str]) -> tuple[dict[str, dict], list[str]]:
    """The equivalent entries keyed by today's mutant names: an entry whose name still survives keeps it (and gets
    its diff recorded if it had none); one whose name does not is matched to a survivor of the same function with
    the same diff. Returns (entries, survivors left to read)."""
    def function(name: str) -> str:
        return name.rsplit("__mutmut_", 1)[0]
    entries: dict[str, dict] = {}
    for name, e in ENTRIES.items():
        entry = {"reason": e} if isinstance(e, str) else dict(e)
        if name in survivors and "removed" not in entry:
            entry["removed"], entry["added"] = mutant_diff(name)
        entries[name] = entry
    stale = {(function(n), e.get("removed"), e.get("added")): n for n, e in entries.items()
             if n not in survivors and "removed" in e}
    unread = []
    for name in (n for n in survivors if n not in entries):
        old = stale.pop((function(name), *mutant_diff(name)), None)
        if old is None:
            unread.append(name)
        else:
            entries[name] = entries.pop(old)
    return dict(sorted(entries.items())), unread


def load_verdicts(mutants: Path, killed_by_hand: set[str] = frozenset()) -> dict[str, dict[str, str]]:
    """{source file: {mutant name: status}} from mutmut's .meta files under `mutants` (its src/ tree); a survivor
    named in `killed_by_hand` (seen killed by a test written after mutmut's verdict, run by hand under
    MUTANT_UNDER_TEST) counts as "killed by hand"."""
    verdicts: dict[str, dict[str, str]] = {}
    for meta in sorted(mutants.glob("src/**/*.py.meta")):
        data = json.loads(meta.read_text())
        source = str(meta.relative_to(mutants)).removesuffix(".meta")
        verdicts[source] = {name: STATUS.get(code, "suspicious") for name, code in data["exit_code_by_key"].items()}
        for name, status in verdicts[source].items():
            if status == "survived" and name in killed_by_hand:
                verdicts[source][name] = "killed by hand"
    return verdicts


def score_table(verdicts: dict[str, dict[str, str]]) -> list[dict]:
    """One row per file (and a total): counts per status, the equivalent survivors and the two scores (%)."""
    rows = []
    for source, by_name in [*verdicts.items(), ("all", {k: v for d in verdicts.values() for k, v in d.items()})]:
        counts = Counter(by_name.values())
        equivalent = sum(1 for name, status in by_name.items() if status == "survived" and name in EQUIVALENT)
        caught = counts["killed"] + counts["killed by hand"] + counts["timeout"]
        checked = caught + counts["survived"]
        rows.append({"file": source, "mutants": len(by_name), "killed": counts["killed"],
                     "killed_by_hand": counts["killed by hand"], "timeout": counts["timeout"],
                     "survived": counts["survived"], "equivalent": equivalent, "no_tests": counts["no tests"],
                     "not_checked": counts["not checked"],
                     "score": round(100 * caught / checked, 1) if checked else None,
                     "score_non_equivalent": round(100 * caught / (checked - equivalent), 1)
                     if checked - equivalent else None})
    return rows


def write_json_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's working folder")
    parser.add_argument("--json", type=Path, help="also write the table (and the survivors) here")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants' names")
    parser.add_argument("--carry", action="store_true", help="re-key scripts/mutation_equivalent.json to this "
                        "run's mutant names by each entry's diff (mutmut renumbers a changed function's mutants), "
                        "record the diffs it lacks, and list the survivors still to read")
    parser.add_argument("--killed-by-hand", type=Path, help="a file of mutant names (one per line) that tests written "
                        "after mutmut's run were seen to kill, run by hand under MUTANT_UNDER_TEST")
    args = parser.parse_args(argv)
    if not args.mutants.is_dir():
        print(f"error: no mutmut results in {args.mutants} (accepted: the folder `mutmut run` wrote)", file=sys.stderr)
        return 2
    by_hand = set(args.killed_by_hand.read_text().split()) if args.killed_by_hand else set()
    if args.carry:
        survived = sorted(n for d in load_verdicts(args.mutants).values() for n, st in d.items() if st == "survived")
        entries, unread = carry_equivalents(survived)
        write_json_atomically(EQUIVALENT_FILE, entries)
        EQUIVALENT.clear()
        EQUIVALENT.update({name: e["reason"] for name, e in entries.items()})
        print(f"{EQUIVALENT_FILE}: {len(entries)} entries; survivors not listed (to read): {len(unread)}")
        print("\n".join(unread))
    verdicts = load_verdicts(args.mutants, by_hand)
    rows = score_table(verdicts)
    columns = ["file", "mutants", "killed", "killed_by_hand", "timeout", "survived", "equivalent", "no_tests",
               "not_checked", "score", "score_non_equivalent"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |")
    survivors = sorted(name for d in verdicts.values() for name, status in d.items()
                       if status in ("survived", "no tests"))
    if args.survivors:
        print("\n".join(survivors))
    if args.json:
        write_json_atomically(args.json, {"rows": rows, "survivors_and_untested": survivors,
                                          "killed_by_hand": sorted(by_hand)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
