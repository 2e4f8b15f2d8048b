"""The git history's scan (:func:`visage_ml.rights.content_scan.git_objects`) on a large
repository, cold and warm; one JSON object.

Every erasure, every ``visage privacy doctor`` and every certificate verification looks at every
blob of the project's git history for erased content. A monorepo's history holds gigabytes: the
scan must not read them all again each time.

The repository is built once with ``git fast-import`` (one pack, as after ``git gc``):
``--commits`` commits, each adding a file of random bytes (``--gb`` in all) and changing a small
text file, and every ``--notebook-every`` commits a notebook showing a small PNG; with
``--archive-mb``, one more commit adds a ``dataset.tar.gz`` of that many MB (random members),
too large to hold in memory when over 64 MiB: it is written to an unnamed file in the git
folder as it streams and read member by member. Then ``git_objects`` is timed:

- ``cold_s``: nothing read before (the erasure's or doctor's first scan);
- ``warm_s``: again, nothing new (the next erasure, doctor);
- ``new_commit_s``: after one more commit (a 1 MB file);
- ``verifier_s``: as the verifier calls it, reading every object whatever was read before;
- ``cache_bytes``: the size of the git folder's scan cache (0: none).

The operating system's page cache is warm throughout (the repository was just written): the
figures are the CPU's cost of reading, not the disk's.

    python benchmarks/bench_git_scan.py [--commits 2000] [--gb 1] [--notebook-every 200]
        [--archive-mb 0] [--scratch DIR] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import inspect
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from visage_ml.rights import content_scan

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def _git(root: Path, *args: str, data: bytes | None = None) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=root, input=data, capture_output=True, env={**os.environ, **GIT_ENV}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr[-2000:]!r}")
    return proc.stdout.decode().strip()


def _notebook(png: bytes) -> bytes:
    out = {"output_type": "display_data", "metadata": {}, "data": {"image/png": ""}}
    out["data"]["image/png"] = base64.b64encode(png).decode()
    cell = {"cell_type": "code", "source": "show()", "metadata": {}, "outputs": [out]}
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb).encode()


def _archive(rng: np.random.Generator, total: int) -> bytes:
    """A ``.tar.gz`` of ``total`` bytes of random members of 8 MB (incompressible)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as t:
        for i in range(max(1, total // (8 << 20))):
            data = rng.bytes(min(8 << 20, total))
            info = tarfile.TarInfo(f"dataset/part-{i:04d}.bin")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build(root: Path, *, commits: int, total: int, notebook_every: int, archive: int = 0) -> dict:
    """A repository of ``commits`` commits holding ``total`` bytes of random blobs (and, after
    them, a ``.tar.gz`` of ``archive`` bytes), in one pack (``git fast-import``)."""
    root.mkdir(parents=True)
    _git(root, "init", "-q")
    rng = np.random.default_rng(0)
    each = max(1, total // commits)
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet"],
        cwd=root,
        stdin=subprocess.PIPE,
        env={**os.environ, **GIT_ENV},
    )
    assert proc.stdin is not None
    w = proc.stdin.write
    notebooks = 0
    for i in range(commits + (1 if archive else 0)):
        if i == commits:  # the archive's own commit
            files = [("data/dataset.tar.gz", _archive(rng, archive))]
        else:
            blob = rng.bytes(each)
            files = [(f"data/blob-{i:05d}.bin", blob), ("log.txt", f"commit {i}\n".encode())]
        if notebook_every and i % notebook_every == 0 and i < commits:
            png = b"\x89PNG\r\n\x1a\n" + rng.bytes(20_000)
            files.append((f"notebooks/nb-{notebooks:03d}.ipynb", _notebook(png)))
            notebooks += 1
        w(b"commit refs/heads/main\n")
        w(f"committer bench <bench@example.invalid> {1_700_000_000 + i} +0000\n".encode())
        msg = f"commit {i}".encode()
        w(b"data %d\n%s\n" % (len(msg), msg))
        for path, data in files:
            w(f"M 100644 inline {path}\n".encode())
            w(b"data %d\n%s\n" % (len(data), data))
        w(b"\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    _git(root, "symbolic-ref", "HEAD", "refs/heads/main")
    return {
        "commits": commits,
        "blob_bytes": each * commits,
        "notebooks": notebooks,
        "archive_bytes": archive,
    }


def _scan(root: Path, **kw: bool) -> tuple[float, int, int]:
    t = time.perf_counter()
    found = content_scan.git_objects(root, **kw)
    return time.perf_counter() - t, len(found), sum(h.size for h in found)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--gb", type=float, default=1.0, help="GB of random blobs in all")
    ap.add_argument("--notebook-every", type=int, default=200)
    ap.add_argument(
        "--archive-mb", type=int, default=0, help="also one .tar.gz blob of this many MB"
    )
    ap.add_argument("--scratch", default=None, help="Folder for the repository (default: tmp).")
    ap.add_argument("--keep", action="store_true", help="Keep the repository afterwards.")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-git-scan-", dir=args.scratch))
    root = base / "repo"
    try:
        t = time.perf_counter()
        info = build(
            root,
            commits=args.commits,
            total=int(args.gb * (1 << 30)),
            notebook_every=args.notebook_every,
            archive=args.archive_mb << 20,
        )
        info["build_s"] = round(time.perf_counter() - t, 1)
        # Before the cache, git_objects had no ``cached`` keyword: every call read everything.
        has_cache = "cached" in inspect.signature(content_scan.git_objects).parameters
        cache = {"cached": True} if has_cache else {}
        cold, n, size = _scan(root, **cache)
        warm, n_warm, _ = _scan(root, **cache)
        assert n_warm == n, (n_warm, n)
        (root / "new.bin").write_bytes(np.random.default_rng(1).bytes(1 << 20))
        _git(root, "add", "new.bin")
        _git(root, "commit", "-qm", "one more")
        new_commit, n_new, _ = _scan(root, **cache)
        assert n_new == n + 1, (n_new, n)  # the new file (blobs only)
        verifier, n_verify, _ = _scan(root, **({"cached": False} if has_cache else {}))
        assert n_verify == n_new
        out = {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "git": _git(root, "--version"),
            "cache": has_cache,
            "repository": {**info, "blobs": n, "bytes_in_blobs": size},
            "cold_s": round(cold, 3),
            "warm_s": round(warm, 3),
            "new_commit_s": round(new_commit, 3),
            "verifier_s": round(verifier, 3),
            "cache_bytes": _size(root / ".git" / getattr(content_scan, "SCAN_CACHE", "none")),
        }
        print(json.dumps(out, indent=2))
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
