"""What starting the content scan's processes costs, and from what size they pay; one JSON object.

The scan (:func:`visage_ml.rights.content_scan.hash_files`) looks at the project's files in
processes where it reads at least ``PROCESS_MIN_BYTES``: forked where the process is alone (the
command line, the verifier), children of a fork server beside other threads (the service), else
in threads of its own process (:func:`~visage_ml.rights.content_scan._start_method`).

- ``start``: a pool of the scan's processes made as the scan makes it, each handed one trivial
  task: the seconds to the first answer and to the pool's end (``pool_s``), forked, and from a
  fork server started by a fresh process (``forkserver_cold``: the server started and its
  imports made, measured ``--repeat`` times, each in a new process) and then kept
  (``forkserver_warm``); the same where the main script imports the CLI, as the ``visage``
  script does (``forkserver_as_visage``: each child runs that script again, as multiprocessing
  does), and with the CLI preloaded by the server as ``visage serve`` has it
  (``forkserver_as_visage_preloaded``); and spawned (``spawn``: where there is no fork
  server, each child imports what it needs itself, every scan); what a child holds of the
  modules a scan must not load (``heavy_modules``: torch, ONNX Runtime, MLflow, FastAPI) and
  how many modules it holds.
- ``scan``: logs of ``--mib`` MiB each (CSV and JSON lines of hex ids and SHA-256s, as
  ``bench_erasure.py --bulk-text-gb`` writes them, read from the page cache), scanned with a size
  filter of 20 photograph sizes, in threads beside another thread (the service's way below the
  threshold, and every way before the fork server), in the fork server's children beside
  another thread (the server warm) and forked: each ``--repeat`` times, every run's seconds.
- ``--project DIR --pid PID`` instead: the files of a project (``bench_erasure.py --build-only``
  kept, ``PID`` erased in it since), scanned for what that erasure sought (the tombstones, the
  subject's keys among them) as the copies step's first scan does (a file scan cache, empty)
  and as the verifier does (none), each of the three ways in turn, ``--repeat`` times: on a
  shared machine whose load comes and goes, the ways are compared round by round.

    python benchmarks/bench_scan_processes.py [--mib 16,32,64,128] [--repeat 3] [--scratch DIR]
        [--project DIR --pid PID]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from visage_ml.config import ProjectPaths
from visage_ml.rights import content_scan, embedded_spill
from visage_ml.rights.content_hashes import ContentHashes

# Run as the `visage` script is (``visage serve``): a main script that imports the CLI, which
# each fork server's child runs again (multiprocessing's way; its argv is this process's).
AS_VISAGE = "--as-visage"
if AS_VISAGE in sys.argv:
    import visage_ml.app.cli  # noqa: F401

HEAVY = ("torch", "onnxruntime", "mlflow", "fastapi")


class Sought:
    """Photographs of 20 sizes sought, none there (as an erasure's filter, without keys)."""

    sizes = frozenset(3000 + 97 * i for i in range(20))

    def may_match(self, size: int) -> bool:
        return size in self.sizes

    def __contains__(self, digest: object) -> bool:
        return False


def _modules() -> tuple[int, list[str]]:
    """In a scan process: how many modules it holds, and which of :data:`HEAVY`."""
    return len(sys.modules), [m for m in HEAVY if m in sys.modules]


def _pool(method: str) -> dict:
    """A pool of the scan's processes started with ``method``, one trivial task each."""
    n = content_scan.SCAN_PROCESSES
    t = time.perf_counter()
    with ProcessPoolExecutor(
        max_workers=n,
        mp_context=content_scan._context(method),
        initializer=content_scan._in_process,
        initargs=(n, embedded_spill.MEMORY_MAX, None, Sought()),
    ) as pool:
        futures = [pool.submit(_modules) for _ in range(n)]
        modules, heavy = futures[0].result()
        first = time.perf_counter() - t
        for f in futures:
            heavy = sorted({*heavy, *f.result()[1]})
    return {
        "first_answer_s": round(first, 3),
        "pool_s": round(time.perf_counter() - t, 3),
        "child_modules": modules,
        "heavy_modules": heavy,
    }


def _cold(preload: list[str]) -> dict:
    """The first fork server's pool of a fresh process (this one, run as ``--cold``), and the
    two after it, the server ``preload``-ing those modules
    (:func:`~visage_ml.rights.content_scan.preload`)."""
    content_scan.preload(*preload)
    return {"cold": _pool("forkserver"), "warm": [_pool("forkserver") for _ in range(2)]}


def _fresh(*flags: str) -> dict:
    """:func:`_cold` in a new process run with ``flags``."""
    run = [sys.executable, __file__, "--cold", *flags]
    return json.loads(subprocess.run(run, capture_output=True, check=True).stdout)


def _scan(
    walked: list[content_scan.Root], sizes: object, how: str, *, cache: Path | None = None
) -> float:
    """Seconds of one scan of ``walked``: ``threads`` (beside another thread, as the service's
    scans too small for processes, and every one of them before the fork server), ``forkserver``
    (beside another thread) or ``fork`` (alone); ``cache``: a file scan cache, removed first."""
    least = content_scan.PROCESS_MIN_BYTES
    content_scan.PROCESS_MIN_BYTES = 1 << 62 if how == "threads" else 0
    done = threading.Event()
    beside = threading.Thread(target=done.wait, daemon=True)
    if how != "fork":
        beside.start()
    try:
        assert how == "threads" or content_scan._start_method() == how, threading.enumerate()
        if cache is not None:
            cache.unlink(missing_ok=True)
        t = time.perf_counter()
        content_scan.hash_files(walked, sizes=sizes, cache=cache)  # type: ignore[arg-type]
        return round(time.perf_counter() - t, 3)
    finally:
        content_scan.PROCESS_MIN_BYTES = least
        done.set()
        if beside.is_alive():
            beside.join()


def _project(root: Path, pid: str, repeat: int) -> dict:
    """Scans of the project at ``root`` for what an erasure of ``pid`` (done) sought: as the
    copies step's first (a file cache, empty) and as the verifier's (none)."""
    paths = ProjectPaths(root)
    sought = ContentHashes.of(paths, [], pid=pid)
    walked = content_scan.roots(paths)
    cache = Path(tempfile.mkdtemp(prefix="bench-scan-cache-")) / "cache.json"
    runs: dict[str, dict[str, list[float]]] = {
        kind: {"threads": [], "forkserver": [], "fork": []} for kind in ("copies", "verifier")
    }
    try:
        for _ in range(repeat):
            for how in ("threads", "forkserver", "fork"):
                runs["copies"][how].append(_scan(walked, sought, how, cache=cache))
                runs["verifier"][how].append(_scan(walked, sought, how))
    finally:
        shutil.rmtree(cache.parent, ignore_errors=True)
    return {"project": str(root), "keys_sought": sought.key_tagger() is not None, "seconds": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", default="16,32,64,128", help="Sizes of logs to scan, in MiB.")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scratch", default=None, help="Folder for the logs (default: tmp).")
    ap.add_argument(
        "--project",
        default=None,
        help="Scan this project instead (one bench_erasure.py --build-only kept, a subject "
        "erased in it: --pid), as the copies step and the verifier do, in turn each way.",
    )
    ap.add_argument("--pid", default=None, help="The subject erased in --project.")
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(AS_VISAGE, action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preload", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cold:
        print(json.dumps(_cold(args.preload)))
        return
    if args.project:
        _pool("forkserver")  # the server of this process started: warm from now on
        print(json.dumps(_project(Path(args.project), args.pid, args.repeat), indent=2))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_erasure import fill_text  # the same logs as the erasure's benchmark

    cli = ("--preload", "visage_ml.app.cli")
    start = {
        "fork": _pool("fork"),
        "forkserver_cold": [_fresh()["cold"] for _ in range(args.repeat)],
        # As `visage serve`: without the CLI preloaded, and with it (what serve does).
        "forkserver_as_visage": [_fresh(AS_VISAGE) for _ in range(args.repeat)],
        "forkserver_as_visage_preloaded": [_fresh(AS_VISAGE, *cli) for _ in range(args.repeat)],
    }
    _pool("forkserver")  # the server of this process started: warm from now on
    start["forkserver_warm"] = _pool("forkserver")
    start["spawn"] = _pool("spawn")
    content_scan.PROCESS_MIN_BYTES = 0  # each size in processes, to compare
    base = Path(tempfile.mkdtemp(prefix="bench-scan-processes-", dir=args.scratch))
    scans = []
    try:
        for mib in (int(m) for m in args.mib.split(",")):
            folder = base / f"{mib}"
            fill_text(folder, mib / 1024, each=min(32 << 20, mib << 20))
            runs: dict[str, list[float]] = {"threads": [], "forkserver": [], "fork": []}
            for _ in range(args.repeat):
                for how, seconds in runs.items():
                    seconds.append(_scan([content_scan.Root(folder)], Sought(), how))
            scans.append({"mib": mib, "seconds": runs})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        json.dumps(
            {
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "processes": content_scan.SCAN_PROCESSES,
                "start": start,
                "scan": scans,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
