"""Concurrency: 8 clients with mixed identify / enrol / erase on loopback, then an audit.

A short run (about 10 s) is part of the default suite; the 60 s run is marked slow. Both
print their figures (requests, throughput, p50/p99 latency per operation) as JSON and require
zero lost updates, zero matches of a subject after its erasure returned, zero enrolments of an
erased subject, no 5xx, and a ledger that verifies.
"""

from __future__ import annotations

import json

import pytest
from loadgen import Server, audit, figures, prepare, run_load

MIX = (0.6, 0.35, 0.05)  # identify, enrol, erase


def load_and_audit(root, seconds: float, subjects: int) -> dict:
    site = prepare(root, n_subjects=subjects, enrolled=subjects // 2)
    server = Server(site.root)
    try:
        server.wait()
        result = run_load(site, server.base, clients=8, seconds=seconds, mix=MIX)
    finally:
        log = server.stop()
    report = {**figures(result), **audit(site, result)}
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_detail")}, indent=1))
    assert "Traceback" not in log, log[-3000:]
    return report


def check(report: dict) -> None:
    assert report["lost_updates"] == 0, report["lost_detail"]
    assert report["leaks"] == 0, report["leak_detail"]
    assert report["enrolments_after_erasure_accepted"] == 0
    assert report["server_errors"] == 0, report["statuses"]
    assert report["ledger_ok"]
    ops = report["ops"]
    assert ops["identify"]["ok"] > 0 and ops["enroll"]["ok"] > 0 and ops["erase"]["ok"] > 0, ops


def test_mixed_load_loses_nothing_and_leaks_nothing(project):
    check(load_and_audit(project, seconds=10.0, subjects=64))


@pytest.mark.slow
def test_mixed_load_for_a_minute(project):
    report = load_and_audit(project, seconds=60.0, subjects=256)
    check(report)
    assert report["requests"] > 500
