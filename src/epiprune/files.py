"""Files every layer writes: atomic writes (temp file in the same folder, then rename, so a reader never sees half a
file) and the names of the files an `epiprune train` run folder holds. A base module: imports nothing of epiprune."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

CHECKPOINT_FILE = "checkpoint.pt"
# a folder holding any of these holds a run
RUN_MARKERS = (CHECKPOINT_FILE, "metrics.jsonl", "summary.json", "model.safetensors", "architecture.json")
# what a run writes, all moved aside by --force (other files in the folder, e.g. compare's train.log, stay)
RUN_FILES = (*RUN_MARKERS, "epi.png", "preprocessing.json")
RUN_FILE_PATTERNS = ("model_export.*",)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temp file in path's folder, then rename it over path (readers never see half)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make outputs private unlike every other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))
