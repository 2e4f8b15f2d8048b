"""Two replica processes on one pgvector gallery under 8 clients: erasures and withdrawals made
on a third are honoured by both within a second, and no query started after a change returns
the subject (the short version of benchmarks/bench_replicas.py)."""

from __future__ import annotations

import importlib
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_replicas_honour_erasure_and_withdrawal_within_one_second(stack_postgres, monkeypatch):
    # On sys.path so that the replica processes (spawned) import the same module.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    out = importlib.import_module("bench_replicas").run(
        dsn=stack_postgres.dsn, replicas=2, clients=8, duration=5, interval=0.8, subjects=120
    )
    assert out["changes"]["erasures"] >= 2 and out["changes"]["withdrawals"] >= 2, out["changes"]
    assert sum(out["queries"].values()) > 1000, out["queries"]
    assert out["violations"] == 0
    assert out["probes_not_honoured_within_5s"] == 0
    assert out["hidden_ms"]["max"] <= 1000 and out["size_ms"]["max"] <= 1000, out
