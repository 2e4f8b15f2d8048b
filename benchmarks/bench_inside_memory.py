"""Peak memory of the scan for content held inside nested archives
(:func:`visage_ml.rights.content_scan.hash_files`); one JSON object.

Every erasure, every ``visage privacy doctor`` and every certificate verification looks inside
the project's archives for erased content, member by member, nested ones too
(:mod:`visage_ml.rights.embedded`), in several threads at once. A member small enough to look
inside is read into memory: a dataset's archives of archives, or a file made for it, must not
make the scan hold gigabytes at once.

``--files`` zip files are made, each a few kB on disk: a zip (deflated) of a zip of a zip ...
``--levels`` deep, each level stored and ``--member-mib`` MiB (the innermost holds that many
zero bytes). They are scanned with ``--threads`` threads (one child process each run, so that
its peak resident set size, ``resource.getrusage``, is that scan's alone):

- ``rss_before_mib``: the child's resident set after its imports;
- ``peak_rss_mib``: its peak resident set during the scan;
- ``seconds``: the scan's time; ``digests``: how many SHA-256s it found inside (the same before
  and after a change: the results do not depend on memory).

    python benchmarks/bench_inside_memory.py [--files 8] [--threads 1,8] [--levels 3]
        [--member-mib 60] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


def _nested(levels: int, member_mib: int) -> bytes:
    """A deflated zip of ``levels`` stored zips nested, the innermost holding zeros."""
    data = bytes(member_mib << 20)
    for _ in range(levels):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            z.writestr("part.bin" if len(data) == member_mib << 20 else "inner.zip", data)
        data = out.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner.zip", data)
    return out.getvalue()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _child(folder: Path, threads: int) -> dict[str, float | int]:
    from visage_ml.rights import content_scan

    # As many scan threads as asked, whatever this machine's CPUs (the scan takes up to 8).
    content_scan.usable_cpus = lambda: threads  # type: ignore[assignment]
    before = _rss_mib()
    start = time.perf_counter()
    hashed = content_scan.hash_files([content_scan.Root(folder)])
    seconds = time.perf_counter() - start
    return {
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "seconds": round(seconds, 2),
        "digests": sum(len(h.held) for h in hashed),
        "expands": sum(h.expands for h in hashed),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--threads", default="1,8", help="comma-separated thread counts")
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--member-mib", type=int, default=60)
    ap.add_argument("--scratch", type=Path, default=None)
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.child_threads)))
        return
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        made = _nested(args.levels, args.member_mib)
        for i in range(args.files):
            (folder / f"archive{i}.zip").write_bytes(made)
        runs = {}
        for threads in (int(t) for t in args.threads.split(",")):
            cmd = [sys.executable, __file__, "--child", str(folder)]
            cmd += ["--child-threads", str(threads)]
            # This checkout's code, whichever is installed.
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            runs[str(threads)] = json.loads(out.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "files": args.files,
                "file_bytes": len(made),
                "levels": args.levels,
                "member_mib": args.member_mib,
                "by_threads": runs,
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
