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


def test_a_replica_whose_database_is_down_logs_once_and_backs_off(monkeypatch, caplog):
    """With PostgreSQL stopped under running replicas, each listener wrote "lost its
    connection; reconnecting" four times a second (4,450 lines in 19 minutes, deploy walk of
    session 37). It warns once, then retries with a growing pause."""
    import logging
    import threading
    import time
    import types

    import psycopg

    from visage_ml.serving import pg_gallery as pgmod

    attempts: list[float] = []

    def refused(*_a, **_k):
        attempts.append(time.monotonic())
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(pgmod, "connect", refused)
    fake = types.SimpleNamespace(
        names=pgmod.Names("g_test"),
        options=types.SimpleNamespace(dsn="postgresql://nowhere", poll_interval_s=0.01),
        _stop=threading.Event(),
    )
    caplog.set_level(logging.DEBUG, logger=pgmod.__name__)
    worker = threading.Thread(target=pgmod.PgGallery._listen, args=(fake,))
    worker.start()
    time.sleep(1.0)
    fake._stop.set()
    worker.join(timeout=5)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    # 0.01 s doubling: about seven attempts in a second, not a hundred.
    assert 3 <= len(attempts) <= 10, len(attempts)
