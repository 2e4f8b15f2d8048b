"""What an erasure's rewrite of the pgvector gallery costs, and what serving sees; one JSON.

A PostgreSQL of the stack (:class:`~visage_ml.stack.postgres.PostgresServer`, with its erasure
settings: ``wal_recycle = off``...) is started in ``--scratch`` and a gallery table of
``--templates`` rows is built through the gallery's own schema (:func:`pg_gallery.ensure_schema`):
all but a few rows are random unit vectors loaded by ``COPY`` with a random ``sealed`` column of
a real sealed template's size (as ``bench_identify_pgvector.py`` loads them; they are never above
the threshold, so never opened), and ``--victims`` subjects are enrolled for real (consent in the
ledger, sealed template, gallery key). ``--hnsw``: the HNSW index is built and served from, as
``serving.gallery.hnsw: true`` does. ``--toast-autovacuum``: an autovacuum of the table's TOAST
table (where the sealed templates lie) is made to run through the erasures, as one did by
chance at a million templates (``toast_autovacuum_s``: how long it took to start).

Then, while two serving replicas run against the table (each its own :class:`PgGallery`, as a
``visage serve`` process holds one):

- ``identify``: :meth:`PgGallery.search` of random unit queries in a loop;
- ``enrol``: :meth:`PgGallery.enroll_many` of a new consenting subject every ``--enrol-every-s``;

each window is timed: ``baseline`` (``--baseline-s`` with no erasure), then each erasure in a
row, each the real erasure step (:func:`visage_ml.rights.erasure.pgvector.plan` and ``erase``:
revoke + DELETE, then the table, its TOAST table and indexes rewritten (copy and swap, or
``VACUUM FULL`` where it cannot be swapped: ``rewrite``), the statistics,
``pg_switch_wal()`` + ``CHECKPOINT`` twice): ``erase_1`` and ``erase_2`` of two enrolled
subjects back to back, ``erase_absent`` of a subject the gallery never held. For each window:
the step's seconds and its purge's (``purge_s``), and per replica the calls that completed, their
p50 / p99 / max latency, and the longest time in which no call completed (``longest_gap_s``, the
window's edges included) and those answered with an error (``failed``: with
``--lock-timeout-s``, a search or enrolment that waited that long for the rewrite's lock is
refused, as ``visage serve`` answers 503). ``hold_s``: how long the swap held the table
ACCESS EXCLUSIVE, from the lock taken to the swap's commit (its lock released), timed at the
swap's phase markers (``pg_swap._phase``: ``locked``, ``committed``); ``old_drop_s``: the drop
of the old table after it, where the swap drops it in a transaction of its own (``dropped``;
null where it has no such step). ``table_bytes``: heap, TOAST, indexes, before and
after. ``--server-maintenance-work-mem`` sets the server's ``maintenance_work_mem`` after the
load and index build (the purge sizes its own from the HNSW index, up to
``serving.gallery.purge_memory_mb``; the step's info says what it set and what the server said).

    python benchmarks/bench_erasure_vacuum.py [--templates 100000] [--hnsw] [--dim 512]
        [--baseline-s 10] [--windows erase_1,erase_2,erase_absent] [--scratch /work/scratch/h5]
        [--lock-timeout-s 2] [--server-maintenance-work-mem 16MB] [--toast-autovacuum]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from psycopg import sql as psycopg_sql

from visage_ml.config import ProjectPaths, load_params
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import pgvector as pg_store
from visage_ml.rights.erasure.base import Context
from visage_ml.serving import pg_gallery, pg_swap
from visage_ml.serving.pg_gallery import PgGallery, PgOptions
from visage_ml.stack.postgres import PostgresServer, temporary_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The bulk rows and index build of bench_identify_pgvector, the consenting subjects of
# bench_identify_scale: one copy of each.
from bench_identify_pgvector import VERSION, build_hnsw, load_table, unit_rows
from bench_identify_scale import register

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.5


def server(scratch: Path) -> contextlib.AbstractContextManager[PostgresServer]:
    """A PostgreSQL of the stack's settings in ``scratch`` (removed afterwards)."""
    scratch.mkdir(parents=True, exist_ok=True)
    return temporary_server(prefix="pg-", parent=scratch)


def timed_phases(marks: list[tuple[str, float]]) -> Callable[[Any, str], None]:
    """A stand-in for ``pg_swap._phase`` that notes when the purge reaches each phase."""
    real = pg_swap._phase

    def phase(conn: Any, name: str) -> None:
        marks.append((name, time.perf_counter()))
        real(conn, name)

    return phase


def held(marks: list[tuple[str, float]]) -> dict[str, float | None]:
    """The swap's hold (``locked`` to ``committed``) and the old table's drop after it
    (``committed`` to ``dropped``), in seconds; None for a phase the purge did not reach."""
    at = dict(marks)  # the last of each: the lock taken on the try that got it
    hold = at["committed"] - at["locked"] if {"locked", "committed"} <= set(at) else None
    drop = at["dropped"] - at["committed"] if {"committed", "dropped"} <= set(at) else None
    return {
        "hold_s": None if hold is None else round(hold, 4),
        "old_drop_s": None if drop is None else round(drop, 4),
    }


def table_bytes(dsn: str, table: str) -> dict[str, int]:
    with pg_gallery.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(c.reltoastrelid), 0),"
            " pg_indexes_size(c.oid), pg_total_relation_size(c.oid) FROM pg_class c"
            " WHERE c.oid = %s::regclass",
            (table,),
        ).fetchone()
    return dict(zip(("heap", "toast", "indexes", "total"), map(int, row), strict=True))


def toast_autovacuum(dsn: str, table: str, *, within: float = 300.0) -> float:
    """Make an autovacuum of ``table``'s TOAST table run, slowly enough to outlast the
    erasures (the launcher every second, the table's vacuum cost-delayed: its TOAST table takes
    its settings), and wait until it does; returns the seconds waited."""
    t0 = time.perf_counter()
    with pg_gallery.connect(dsn, autocommit=True) as conn:
        conn.execute(
            psycopg_sql.SQL(
                "ALTER TABLE {t} SET (autovacuum_vacuum_cost_delay = 100, "
                "autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_insert_threshold = 1, "
                "autovacuum_vacuum_insert_scale_factor = 0)"
            ).format(t=psycopg_sql.Identifier(table))
        )
        conn.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
        conn.execute("SELECT pg_reload_conf()")
        toast = conn.execute(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = %s::regclass",
            (table,),
        ).fetchone()[0]
        while time.perf_counter() - t0 < within:
            if conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                "AND query LIKE %s",
                (f"%VACUUM {toast}%",),
            ).fetchone():
                return round(time.perf_counter() - t0, 1)
            time.sleep(0.5)
    raise SystemExit(f"no autovacuum of {toast} within {within:.0f} s")


class Replica:
    """One serving replica calling ``call`` in a loop (``pause`` between calls), timing each."""

    def __init__(self, call: Callable[[int], Any], *, pause: float = 0.0) -> None:
        self.call, self.pause = call, pause
        self.spans: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self.failed_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self.call(i)
            except Exception as exc:  # counted: the window goes on
                self.errors.append(type(exc).__name__)
                self.failed_at.append(time.perf_counter())
            self.spans.append((t0, time.perf_counter()))
            i += 1
            if self.pause:
                self._stop.wait(self.pause)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> dict[str, Any]:
        """The calls that completed in ``[start, end]``: latency and the longest silence."""
        done = [(a, b) for a, b in self.spans if start <= b <= end]
        lat = np.asarray([b - a for a, b in done]) * 1000
        ends = [start, *(b for _, b in done), end]
        out: dict[str, Any] = {
            "calls": len(done),
            "longest_gap_s": round(max(np.diff(ends)), 3),
            # Answered with an error (503 gallery_unavailable under a lock timeout).
            "failed": sum(start <= t <= end for t in self.failed_at),
        }
        if len(lat):
            out.update(
                p50_ms=round(float(np.percentile(lat, 50)), 1),
                p99_ms=round(float(np.percentile(lat, 99)), 1),
                max_ms=round(float(lat.max()), 1),
            )
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--templates", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--hnsw", action="store_true", help="build and serve from the HNSW index")
    ap.add_argument("--baseline-s", type=float, default=10.0)
    ap.add_argument("--enrol-every-s", type=float, default=0.5)
    ap.add_argument(
        "--windows", default="erase_1,erase_2,erase_absent", help="which erasures, in order"
    )
    ap.add_argument("--scratch", type=Path, default=Path("/work/scratch/h5"))
    ap.add_argument(
        "--lock-timeout-s",
        type=float,
        default=0.0,
        help="the replicas' serving.gallery.lock_timeout_s (default 0: wait for the rewrite)",
    )
    ap.add_argument(
        "--toast-autovacuum",
        action="store_true",
        help="an autovacuum of the table's TOAST table runs through the erasures (slowed; waited "
        "for before the baseline), as one did by chance at 1M",
    )
    ap.add_argument(
        "--server-maintenance-work-mem",
        default="",
        help="the server's maintenance_work_mem (e.g. 16MB; default: PostgreSQL's 64MB)",
    )
    args = ap.parse_args()
    d, n = args.dim, args.templates
    out: dict[str, Any] = {
        "benchmark": "erasure_vacuum",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "templates": n,
        "dim": d,
        "hnsw": args.hnsw,
        "lock_timeout_s": args.lock_timeout_s,
    }
    victims = [f"pa{i:015x}" for i in range(2)]
    enrolees = [f"pe{i:015x}" for i in range(2000)]
    args.scratch.mkdir(parents=True, exist_ok=True)
    with server(args.scratch) as srv:
        dsn, table = srv.dsn, f"bench_{secrets.token_hex(4)}"
        bulk = n - len(victims)
        m = unit_rows(bulk, d, seed=n)
        out["load_s"] = round(load_table(dsn, table, m, [f"p{i:016x}" for i in range(bulk)]), 1)
        del m
        if args.hnsw:
            out["hnsw_build_s"] = round(build_hnsw(dsn, table, m=16, ef_construction=64), 1)
        # After the build: only the erasure's rebuild runs under it.
        if args.server_maintenance_work_mem:
            with pg_gallery.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    psycopg_sql.SQL("ALTER SYSTEM SET maintenance_work_mem = {v}").format(
                        v=psycopg_sql.Literal(args.server_maintenance_work_mem)
                    )
                )
                conn.execute("SELECT pg_reload_conf()")
        out["server_maintenance_work_mem"] = args.server_maintenance_work_mem or "default"
        proj = args.scratch / f"project-{table}"
        proj.mkdir()
        paths = ProjectPaths(proj)
        core = PrivacyCore(paths)
        register(core, [*victims, *enrolees])
        rng = np.random.default_rng(1)

        def open_() -> PgGallery:
            return PgGallery.open(
                paths,
                options=PgOptions(
                    dsn=dsn,
                    table=table,
                    hnsw=args.hnsw,
                    listen=False,
                    lock_timeout_s=args.lock_timeout_s,
                ),
                model_version=VERSION,
                embedding_dim=d,
                threshold=THRESHOLD,
                # A core each, as each replica is a process of its own (one core is one thread's).
                core=PrivacyCore(paths),
                load=False,  # the COPY'd rows have no consent recorded (bench_identify_pgvector)
            )

        eraser, searcher, enroller = open_(), open_(), open_()
        eraser.enroll_many({p: unit_rows(1, d, seed=i)[0] for i, p in enumerate(victims)})
        out["table_bytes_before"] = table_bytes(dsn, table)
        queries = unit_rows(256, d, seed=99)
        search = Replica(
            lambda i: searcher.search(
                queries[i % len(queries)], top_k=5, threshold_for=lambda _n: THRESHOLD
            )
        )
        enrol = Replica(
            lambda i: enroller.enroll_many({enrolees[i]: rng.standard_normal(d).astype("f4")}),
            pause=args.enrol_every_s,
        )
        params = load_params(ROOT / "params.yaml")
        g = dataclasses.replace(params.serving.gallery, backend="pgvector", dsn=dsn, table=table)
        params = dataclasses.replace(params, serving=dataclasses.replace(params.serving, gallery=g))
        ctx = Context(paths=paths, core=core, params=params, gallery=eraser)
        search.start()
        enrol.start()
        time.sleep(2.0)  # warm: plans, caches
        if args.toast_autovacuum:
            out["toast_autovacuum_s"] = toast_autovacuum(dsn, table)
        windows: dict[str, Any] = {}
        marks: list[tuple[str, float]] = []
        pg_swap._phase = timed_phases(marks)  # type: ignore[assignment]

        def timed(name: str, step: Callable[[], dict[str, Any]]) -> None:
            start = time.perf_counter()
            info = step()
            time.sleep(1.0)  # the calls queued behind the lock complete
            end = time.perf_counter()
            windows[name] = {
                **info,
                "identify": search.window(start, end),
                "enrol": enrol.window(start, end),
            }

        def baseline() -> dict[str, Any]:
            time.sleep(args.baseline_s)
            return {}

        def erase(pid: str) -> Callable[[], dict[str, Any]]:
            def step() -> dict[str, Any]:
                marks.clear()
                t0 = time.perf_counter()
                plan = pg_store.plan(ctx, pid)
                outcome = pg_store.erase(ctx, pid, plan.artefacts if plan else [], plan)
                info = outcome.info
                return {
                    "step_s": round(time.perf_counter() - t0, 2),
                    "purge_s": info.get("seconds"),
                    "rows_removed": len(outcome.artefacts),
                    "wal_removed": info.get("wal_removed"),
                    "maintenance_work_mem_mb": info.get("maintenance_work_mem_mb"),
                    "lock_attempts": info.get("lock_attempts"),
                    "rewrite": info.get("rewrite"),
                    "server_messages": info.get("server_messages"),
                    **held(marks),
                }

            return step

        steps = {"erase_1": victims[0], "erase_2": victims[1], "erase_absent": "pf" + "0" * 15}
        try:
            timed("baseline", baseline)
            for name in (w for w in args.windows.split(",") if w):
                timed(name, erase(steps[name]))
        finally:
            # Stopped before the server is, an erasure's error too: they would otherwise call
            # on into its shutdown, logging each lost connection.
            search.stop()
            enrol.stop()
        out["windows"] = windows
        out["errors"] = {"identify": search.errors[:5], "enrol": enrol.errors[:5]}
        out["enrolled_during_run"] = len(enrol.spans)
        out["table_bytes_after"] = table_bytes(dsn, table)
        for g_ in (eraser, searcher, enroller):
            g_.close()
        shutil.rmtree(proj, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
