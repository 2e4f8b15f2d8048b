"""What starting the content scan's processes costs, and from what size they pay; one JSON object.

The scan (:func:`visage_ml.rights.content_scan.hash_files`) looks at the project's files in
processes where it reads at least ``PROCESS_MIN_BYTES``: forked where the process is alone (the
command line, the verifier), children of a fork server beside other threads (the service), else
in threads of its own process (:func:`~visage_ml.rights.content_scan._start_method`).

- ``start``: a pool of the scan's processes made as the scan makes it, each handed one trivial
  task: the seconds to the first answer and to the pool's end (``pool_s``), forked, and from a
  fork server started by a fresh process (``forkserver_cold``: the server started and its
  imports made, measured ``--repeat`` times, each in a new process) and then kept
  (``forkserver_warm``), and spawned (``spawn``: where there is no fork server, each child
  imports what it needs itself, every scan); what a child holds of the modules a scan must not load
  (``heavy_modules``: torch, ONNX Runtime, MLflow, FastAPI) and how many modules it holds.
- ``scan``: logs of ``--mib`` MiB each (CSV and JSON lines of hex ids and SHA-256s, as
  ``bench_erasure.py --bulk-text-gb`` writes them, read from the page cache), scanned with a size
  filter of 20 photograph sizes, in threads (``VISAGE_SCAN_PROCESSES=1``), in the fork server's
  children beside another thread (the server warm) and forked: each ``--repeat`` times, every
  run's seconds.

    python benchmarks/bench_scan_processes.py [--mib 16,32,64,128] [--repeat 3] [--scratch DIR]
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

from visage_ml.rights import content_scan, embedded_spill

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


def _cold() -> dict:
    """The first fork server's pool of a fresh process (this one, run as ``--cold``)."""
    return _pool("forkserver")


def _scan(folder: Path, how: str) -> float:
    """Seconds of one scan of ``folder``: ``threads``, ``forkserver`` or ``fork``."""
    env = os.environ.pop(content_scan.PROCESSES_ENV, None)
    if how == "threads":
        os.environ[content_scan.PROCESSES_ENV] = "1"
    done = threading.Event()
    beside = threading.Thread(target=done.wait, daemon=True)
    if how == "forkserver":
        beside.start()
    try:
        assert how == "threads" or content_scan._start_method() == how, threading.enumerate()
        t = time.perf_counter()
        content_scan.hash_files([content_scan.Root(folder)], sizes=Sought())
        return round(time.perf_counter() - t, 3)
    finally:
        done.set()
        if beside.is_alive():
            beside.join()
        os.environ.pop(content_scan.PROCESSES_ENV, None)
        if env is not None:
            os.environ[content_scan.PROCESSES_ENV] = env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", default="16,32,64,128", help="Sizes of logs to scan, in MiB.")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scratch", default=None, help="Folder for the logs (default: tmp).")
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cold:
        print(json.dumps(_cold()))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_erasure import fill_text  # the same logs as the erasure's benchmark

    cold = []
    for _ in range(args.repeat):
        run = [sys.executable, __file__, "--cold"]
        cold.append(json.loads(subprocess.run(run, capture_output=True, check=True).stdout))
    start = {"fork": _pool("fork"), "forkserver_cold": cold}
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
                    seconds.append(_scan(folder, how))
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
