"""The scan of a large SQLite database of other people's photographs; one JSON object.

A labelling tool's ``project.db`` or a cache of a dataset: ``--gb`` GB of rows (an id, a name,
a photograph: JPEG-like random bytes of 50-400 kB, none of them sought) in one table, written
with SQLite's default 4 kB pages, so that each photograph lies over about 100 overflow pages.
:func:`~visage_ml.rights.content_scan.hash_files` scans it as the erasure's copies step and
the verifier do, with what is sought by size (one size no row has): the file is hashed whole,
then read table by table from its file (read-only, immutable), each BLOB taken as a part is
(not hashed, being of a size nothing sought has; its first bytes told from an archive's).
Reported: the seconds of that scan, of the file hashed alone (what the scan did before it knew
the format), the bytes this process read meanwhile (``rchar``), and what the scan found.

    PYTHONPATH=. python benchmarks/bench_scan_sqlite.py [--gb 1] [--scratch DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from visage_ml.io import CHUNK
from visage_ml.rights import content_scan, embedded


def _rchar() -> int:
    """Bytes this process (every thread) has read so far, page cache or disk; 0 off Linux."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _photo(rng: np.random.Generator) -> bytes:
    """Another person's photograph as far as the scan goes: a JPEG's markers around random
    bytes (no compressor shrinks them) of 50-400 kB."""
    n = int(rng.integers(50_000, 400_000))
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.bytes(n) + b"\xff\xd9"


def fill(path: Path, gb: float) -> int:
    """A database at ``path`` of ``gb`` GB of photographs; returns its rows."""
    rng = np.random.default_rng(5)
    total, written, rows = int(gb * (1 << 30)), 0, 0
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE faces (id INTEGER PRIMARY KEY, name TEXT, img BLOB, score REAL)")
    while written < total:
        img = _photo(rng)
        con.execute(
            "INSERT INTO faces (name, img, score) VALUES (?, ?, ?)", (f"p{rows:08d}", img, 0.5)
        )
        written += len(img)
        rows += 1
    con.commit()
    con.close()
    return rows


class _Sought:
    """What a scan seeks, by size: one size no row's photograph has."""

    def __init__(self, size: int) -> None:
        self.size = size

    def may_match(self, n: int) -> bool:
        return n == self.size


def _hashed_alone(path: Path) -> float:
    t = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--scratch", default=None, help="Folder for the database (default: tmp).")
    ap.add_argument("--keep", action="store_true", help="Keep the database afterwards.")
    args = ap.parse_args()
    base = Path(args.scratch or tempfile.mkdtemp(prefix="bench-sqlite-"))
    folder = base / "data" / "labelling"
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "project.db"
    try:
        t = time.perf_counter()
        rows = fill(db, args.gb)
        build_s = time.perf_counter() - t
        size = db.stat().st_size
        before = sorted(os.listdir(folder))
        alone_s = _hashed_alone(db)  # also brings the file into the page cache for both
        t, r = time.perf_counter(), _rchar()
        (h,) = content_scan.hash_files([content_scan.Root(folder)], sizes=_Sought(1))
        scan_s, scan_rchar = time.perf_counter() - t, _rchar() - r
        out = {
            "bench": "scan_sqlite",
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "rows": rows,
            "file_bytes": size,
            "build_s": round(build_s, 2),
            "hash_alone_s": round(alone_s, 2),
            "scan_s": round(scan_s, 2),
            "scan_rchar_bytes": scan_rchar,
            "scan_mb_per_s": round(size / scan_s / 1e6, 1),
            "kind": h.kind,
            "held": len(h.held),
            "not_shown_clean": h.unreadable,
            "file_unchanged": sorted(os.listdir(folder)) == before,
            "embed_max": embedded.EMBED_MAX,
        }
        print(json.dumps(out, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
