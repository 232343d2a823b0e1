"""The committed data behind a compare's published table: its finished runs' summaries and per-epoch (and
per-probe) metrics, and each dense run's recorded scores, out of the git-ignored runs/ folder.

    python benchmarks/collect_compare.py OUT [OUT ...]

OUT: a folder `epiprune compare --out OUT` wrote. Writes OUT/runs.jsonl (each finished run's summary.json with its
method and seed), OUT/metrics.jsonl (each run's metrics.jsonl lines, tagged the same; on the step clock each line
holds the epoch's probes: step, EPI, noise similarity, threshold, decision) and OUT/trajectories/dense-seed<k>.
scores.jsonl.gz (the dense run's per-probe channel scores, which `policy.replay.replay_probes` replays offline, e.g.
for another threshold). compare.json, compare.md and the plots are compare's own, already in OUT.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from epiprune.files import atomic_write, atomic_write_text


def collect(out: Path) -> int:
    """Write OUT's committed data; the number of finished runs collected."""
    summaries, metrics = [], []
    for summary_file in sorted(out.glob("runs/*/seed*/summary.json")):
        folder = summary_file.parent
        tag = {"method": folder.parent.name, "seed": int(folder.name.removeprefix("seed"))}
        summaries.append({**tag, **json.loads(summary_file.read_text())})
        metrics += [{**tag, **json.loads(line)} for line in (folder / "metrics.jsonl").read_text().splitlines()
                    if line.strip()]
        scores = folder / "scores.jsonl"
        if tag["method"] == "dense" and scores.is_file():
            data = gzip.compress(scores.read_bytes(), mtime=0)
            (out / "trajectories").mkdir(exist_ok=True)
            atomic_write(out / "trajectories" / f"dense-seed{tag['seed']}.scores.jsonl.gz",
                         lambda tmp, data=data: tmp.write_bytes(data))
    atomic_write_text(out / "runs.jsonl", "".join(json.dumps(s) + "\n" for s in summaries))
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
    return len(summaries)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for name in sys.argv[1:]:
        out = Path(name)
        if not (out / "runs").is_dir():
            raise SystemExit(f"error: {out} holds no runs/ folder (accepted: a folder `epiprune compare --out` wrote)")
        print(f"{out}: {collect(out)} runs")


if __name__ == "__main__":
    main()
