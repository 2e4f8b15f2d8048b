"""Time and peak memory of the scan for content held inside a data set's large files
(:func:`visage_ml.rights.content_scan.hash_files`, with a sizes filter, as the erasure and the
verifier call it); one JSON object.

A Hugging Face ``datasets`` Parquet shard (an ``image`` struct column of ``{bytes, path}``,
100 rows a row group) and a pickle of a data set's photographs (``pickle.dump`` of a list of
JPEG bytes), each ``--mib`` MiB: over 64 MiB, each is looked inside from its file, not held
in memory (:func:`visage_ml.rights.embedded.inside_large`). Each photograph is a distinct JPEG
(a comment segment numbers it); the sought size is one photograph's, so each file is read.

The files are made in a child process, and each is scanned in a child process of its own (its
peak resident set size, ``resource.getrusage``, is that scan's alone: Linux starts a child's at
its parent's), with this checkout's code, and with ``--before``'s (another checkout, e.g.
``git archive <commit> visage_ml | tar -x -C /tmp/before``) when given:

- ``seconds``: the scan's time; ``peak_rss_mib``: the child's peak resident set, and
  ``rss_before_mib`` after its imports;
- ``found``: whether the sought photograph was found inside (``held``); ``held``: how many
  SHA-256s it found inside.

    python benchmarks/bench_inside_large.py [--mib 1024] [--before DIR] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Rows of the shard a row group, as ``datasets`` writes image tables.
ROW_GROUP = 100


def _photos(total: int) -> list[bytes]:
    """Distinct JPEGs of about 100 kB (noise, so they do not compress), ``total`` bytes in all:
    a few encoded, each then numbered by a comment segment after its SOI."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = []
    for _ in range(8):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), np.uint8)).save(out, "JPEG", quality=95)
        base.append(out.getvalue())
    photos, n = [], 0
    while n < total:
        jpeg = base[len(photos) % len(base)]
        comment = b"photo %08d" % len(photos)
        photo = jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]
        photos.append(photo)
        n += len(photo)
    return photos


def _parquet(path: Path, photos: list[bytes]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("label", pa.int64()),
        ]
    )
    with pq.ParquetWriter(path, schema) as w:
        for at in range(0, len(photos), ROW_GROUP):
            rows = photos[at : at + ROW_GROUP]
            image = [{"bytes": p, "path": f"img_{at + i:06d}.jpg"} for i, p in enumerate(rows)]
            w.write_table(pa.table({"image": image, "label": [0] * len(rows)}, schema=schema))


class _Sought:
    """What a scan seeks, by size (as :class:`~visage_ml.rights.content_hashes.ContentHashes`)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def may_match(self, size: int) -> bool:
        return size == self.size


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _child(path: Path, sought: str, size: int) -> dict[str, object]:
    from visage_ml.rights import content_scan

    before = _rss_mib()
    start = time.perf_counter()
    (hashed,) = content_scan.hash_files([content_scan.Root(path.parent)], sizes=_Sought(size))
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "found": sought in hashed.held,
        "held": len(hashed.held),
        "expands": hashed.expands,
    }


def _make(folder: Path, mib: int) -> dict[str, object]:
    """The two files, in ``folder``: their paths, and the sought photograph's SHA-256 and size."""
    photos = _photos(mib << 20)
    victim = photos[len(photos) * 2 // 3]
    random.Random(0).shuffle(photos)
    shard = folder / "parquet" / "train-00000-of-00001.parquet"
    pickled = folder / "pickle" / "photos.pkl"
    for path in (shard, pickled):
        path.parent.mkdir()
    _parquet(shard, photos)
    with open(pickled, "wb") as f:
        pickle.dump(photos, f, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        "photos": len(photos),
        "sought": hashlib.sha256(victim).hexdigest(),
        "size": len(victim),
        "files": {"parquet": str(shard), "pickle": str(pickled)},
    }


def _run(code: Path, path: Path, sought: str, size: int) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", str(path), "--sought", sought, "--size", str(size)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=code)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--before", type=Path, default=None, help="a checkout of the earlier code")
    ap.add_argument("--scratch", type=Path, default=None)
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sought", default="", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.sought, args.size)))
        return
    if args.make is not None:
        print(json.dumps(_make(args.make, args.mib)))
        return
    here = Path(__file__).resolve().parents[1]
    codes = {"after": here, **({"before": args.before.resolve()} if args.before else {})}
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        cmd = [sys.executable, __file__, "--make", tmp, "--mib", str(args.mib)]
        made = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        sought, size = made["sought"], made["size"]
        for name, file in made["files"].items():
            path = Path(file)
            runs = {k: _run(code, path, sought, size) for k, code in codes.items()}
            results[name] = {"file_mib": round(path.stat().st_size / (1 << 20), 1), **runs}
            path.unlink()
    print(
        json.dumps(
            {
                "photos": made["photos"],
                "photo_bytes": size,
                **results,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
