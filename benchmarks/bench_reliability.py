"""Reliability figures: concurrent load, crash recovery and bad input; prints one JSON object.

Three parts, each on a temporary project built from the test suite's fakes (tiny ONNX models,
tile-grid "faces"; ``tests/reliability/``):

- ``concurrency``: ``--clients`` threads post a mix of identify / enrol / erasure to a uvicorn
  server on loopback for ``--seconds``; requests, throughput, p50/p99 latency (overall and per
  operation), then an audit: lost updates and matches of a subject after its erasure returned
  (both must be 0);
- ``crash``: every fault point of enrolment, erasure, ledger append and import
  (``VISAGE_FAULT``), each followed by restart, recovery and the consistency checks;
- ``bad_input``: the generated corpus of bad and unusual image files through the HTTP API:
  kinds, answers by status, server errors and store changes (both must be 0).

    python benchmarks/bench_reliability.py [--seconds 60] [--clients 8] [--subjects 256]
                                           [--skip crash,bad_input]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reliability"))
sys.path.insert(0, str(REPO / "tests" / "unit"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def fresh_root(tmp: str, name: str) -> Path:
    import shutil

    root = Path(tmp) / name
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


def concurrency(tmp: str, *, clients: int, seconds: float, subjects: int) -> dict[str, Any]:
    from loadgen import Server, audit, figures, prepare, run_load

    root = fresh_root(tmp, "load")
    os.environ["VISAGE_PROJECT"] = str(root)
    site = prepare(root, n_subjects=subjects, enrolled=subjects // 2)
    server = Server(site.root)
    try:
        server.wait()
        result = run_load(
            site, server.base, clients=clients, seconds=seconds, mix=(0.6, 0.35, 0.05)
        )
    finally:
        server.stop()
    report = {"clients": clients, **figures(result), **audit(site, result)}
    return {k: v for k, v in report.items() if not k.endswith("_detail") or v}


def crash(tmp: str) -> dict[str, Any]:
    from crashcases import CASES, crash_and_recover

    survived, failed = [], []
    t0 = time.perf_counter()
    for i, (op, fault) in enumerate(CASES):
        root = fresh_root(tmp, f"crash{i}")
        scratch = Path(tmp) / f"scratch{i}"
        scratch.mkdir()
        os.environ["VISAGE_PROJECT"] = str(root)
        try:
            crash_and_recover(root, scratch, op, fault)
            survived.append(f"{op}@{fault}")
        except Exception as exc:  # report every point, then the failures
            failed.append({"case": f"{op}@{fault}", "error": str(exc)[:300]})
    return {
        "fault_points": len(CASES),
        "survived": len(survived),
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 1),
        "points": survived,
    }


def bad_input(tmp: str) -> dict[str, Any]:
    from badinputs import API_MAX_PIXELS, corpus
    from harness import changes, make_site, store_hashes

    root = fresh_root(tmp, "bad")
    os.environ["VISAGE_PROJECT"] = str(root)
    site = make_site(root, enrol=6, overrides={"serving.max_image_pixels": API_MAX_PIXELS})
    client = site.client()
    before = store_hashes(root)
    statuses: dict[str, int] = {}
    items = corpus()
    t0 = time.perf_counter()
    for it in items:
        for path in ("/v1/identify", "/v1/analytics"):
            r = client.post(path, json={"image": it.b64}, headers=site.headers("operator"))
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
    return {
        "kinds": len(items),
        "requests": sum(statuses.values()),
        "statuses": statuses,
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5")),
        "store_changes": len(changes(before, store_hashes(root))),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--subjects", type=int, default=256)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    import logging

    logging.basicConfig(level=logging.ERROR)
    out: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        if "concurrency" not in skip:
            out["concurrency"] = concurrency(
                tmp, clients=args.clients, seconds=args.seconds, subjects=args.subjects
            )
        if "crash" not in skip:
            out["crash"] = crash(tmp)
        if "bad_input" not in skip:
            out["bad_input"] = bad_input(tmp)
    out["note"] = (
        "tile detector + tiny ONNX models; server and clients share the machine; erasure runs "
        "every store step (no DVC remote)"
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
