"""Protect a user's finished (or interrupted) run from being silently replaced by another `epiprune train`.

`train --out DIR` on a folder that already holds a run is refused, naming `--resume` and `--force`. With
`--force` the old run's files are moved aside into a hidden folder inside DIR and deleted only once the new run
has written its first checkpoint; if the new run dies before that (bad input found late, Ctrl-C, an exception),
they are moved back. A run killed hard (SIGKILL, power loss) in that window leaves the hidden folder: the next
`epiprune train` on DIR puts the old files back first. Output folders that a failed command created and left
empty are removed again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType

from epiprune.errors import EpipruneError
from epiprune.files import CHECKPOINT_FILE, RUN_FILE_PATTERNS, RUN_FILES, RUN_MARKERS

ASIDE = ".epiprune-replaced"


def holds_run(folder: str | Path) -> bool:
    """True when `folder` holds the files of an `epiprune train` run (finished or interrupted)."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).exists() for name in RUN_MARKERS)


def _run_files(folder: Path) -> list[Path]:
    found = [folder / name for name in RUN_FILES if (folder / name).exists()]
    for pattern in RUN_FILE_PATTERNS:
        found += sorted(p for p in folder.glob(pattern) if p.is_file())
    return found


def recover(folder: str | Path) -> bool:
    """Finish what a run killed while replacing `folder` left behind: if the new run never wrote a checkpoint,
    put the old run's files back; if it did, drop them. Returns True when old files were put back."""
    folder = Path(folder)
    aside = folder / ASIDE
    if not aside.is_dir():
        return False
    if (folder / CHECKPOINT_FILE).exists():
        shutil.rmtree(aside, ignore_errors=True)
        return False
    for path in _run_files(folder):  # the dead run's partial files (no checkpoint: nothing resumable)
        path.unlink()
    for path in aside.iterdir():
        os.replace(path, folder / path.name)
    aside.rmdir()
    return True


class RunFolder:
    """Context manager around one training run's output folder.

    On entry: refuse a folder that holds a run (unless `resume` or `force`); with `force`, move the old run's
    files aside. `commit()` (call it after the first checkpoint is written) deletes them. On an exception before
    `commit()`, the new run's partial files are removed and the old ones put back; a folder this object created
    is removed again if it is left empty. `active=False` (ranks other than 0) only checks, never moves files.
    """

    def __init__(self, out: str | Path, resume: bool = False, force: bool = False, active: bool = True) -> None:
        self.out = Path(out)
        self.resume, self.force, self.active = resume, force, active
        self.committed = False
        self.checkpointed = False  # this command wrote a checkpoint (what an interrupt message may promise)
        self._aside: Path | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunFolder:
        if self.active:
            recover(self.out)
        if self.resume:
            if (self.out / "summary.json").exists():  # resuming would only rewrite its outputs
                raise EpipruneError(f"the run in {self.out} has finished: nothing to resume (accepted: a run "
                                    "without summary.json, or a new run with --out and --force)")
            self.committed = True  # nothing to protect: the run continues in place
            return self
        if holds_run(self.out) and not self.force:
            raise EpipruneError(f"output folder {self.out} already holds a run (accepted: --resume {self.out} to "
                                "continue it, --force to replace it, or another --out)")
        if not self.active:
            return self
        missing = self.out
        while not missing.exists() and missing != missing.parent:
            self._created.append(missing)
            missing = missing.parent
        files = _run_files(self.out) if self.out.is_dir() else []
        if files:
            self._aside = self.out / ASIDE
            self._aside.mkdir()
            for path in files:
                os.replace(path, self._aside / path.name)
        return self

    def commit(self) -> None:
        """The new run has its first checkpoint: the old run's files are no longer needed."""
        self.checkpointed = True
        if self.committed:
            return
        self.committed = True
        if self._aside is not None:
            shutil.rmtree(self._aside, ignore_errors=True)
            self._aside = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or not self.active:
            if exc_type is None:
                self.commit()
            return
        if not self.committed and self._aside is not None:
            recover(self.out)
        for folder in self._created:  # innermost first
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
