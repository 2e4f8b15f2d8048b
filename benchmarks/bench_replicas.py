"""Several serving replicas (processes) on one pgvector gallery: consent withdrawals and
erasures on one, honoured by all; prints one JSON object.

A project with ``--subjects`` consented subjects is enrolled into a pgvector gallery. Then
``--replicas`` processes each open the gallery (:class:`PgGallery`, listening) and serve
``--clients`` client threads in all (client i on replica i mod R), each running a mixed load:
identification of a random subject's (noisy) template, verification against a random subject,
and status. Meanwhile the controller (acting as one more replica, "replica A") erases or
withdraws the identification consent of a subject every ``--interval`` seconds, alternating.

Measured, per change and replica:
- ``hidden_ms``: from the change returning on replica A until the start of that replica's
  first search that no longer returns the subject (a prober thread searches the subject's
  exact template in a loop);
- ``size_ms``: until that replica's cached gallery size (LISTEN/NOTIFY, poll fallback; watched
  by a thread of its own, needing no lock) shows the change; both goal <= 1000 ms.
- ``prober_first_check_ms``: when the prober first looked (its own scheduling delay, a floor
  for both numbers above); ``hidden_at_first_check``: probes that found the subject already
  gone at that first look;
- ``violations``: matches of a subject by a query that *started* after its erasure or
  withdrawal had returned on replica A (goal 0), across every client query.

    python benchmarks/bench_replicas.py [--replicas 2] [--clients 8] [--duration 60]
        [--interval 2] [--subjects 500] [--dim 128] [--dsn URI]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.config import ProjectPaths
from visage_ml.privacy.consent import ConsentReceipt, sha256_text
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.serving import pg_gallery
from visage_ml.serving.pg_gallery import PgGallery, PgOptions
from visage_ml.stack.postgres import temporary_server

VERSION = "bench-replicas"
THRESHOLD = 0.5
PURPOSES = ("training", "evaluation", "identification")


def receipt() -> ConsentReceipt:
    return ConsentReceipt(
        controller="Example Controller Ltd",
        controller_contact="dpo@example.org",
        purposes=PURPOSES,
        notice_version="v1",
        notice_hash=sha256_text("notice"),
        collection_method="benchmark",
        given_at="2026-11-26T07:00:00.000Z",
    )


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[str]:
    """``dsn`` or a PostgreSQL started for the run (stopped afterwards)."""
    if dsn:
        yield dsn
        return
    with temporary_server(prefix="visage-bench-pg-") as server:
        yield server.dsn


def open_gallery(root: Path, dsn: str, table: str, dim: int, *, listen: bool) -> PgGallery:
    return PgGallery.open(
        ProjectPaths(root),
        options=PgOptions(dsn=dsn, table=table, listen=listen, poll_interval_s=0.25),
        model_version=VERSION,
        embedding_dim=dim,
        threshold=THRESHOLD,
    )


def build(root: Path, dsn: str, table: str, n: int, dim: int) -> dict[str, np.ndarray]:
    """A project with ``n`` consented subjects, all enrolled; returns their templates."""
    core = PrivacyCore(ProjectPaths(root))
    rng = np.random.default_rng(0)
    pids = [f"p{secrets.randbits(63):016x}" for _ in range(n)]
    core.add_subjects([NewSubject(pid=p) for p in pids], source="benchmark", snapshot=False)
    r = receipt()
    core.ledger.append_many(
        [("consent.given", p, {"receipt": r.to_dict(), "receipt_hash": r.digest()}) for p in pids]
    )
    core.snapshot()
    m = rng.standard_normal((n, dim)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    templates = dict(zip(pids, m, strict=True))
    gallery = open_gallery(root, dsn, table, dim, listen=False)
    for i in range(0, n, 256):
        gallery.enroll_many({p: templates[p][None] for p in pids[i : i + 256]})
    gallery.close()
    return templates


def replica(
    index: int,
    root: str,
    dsn: str,
    table: str,
    dim: int,
    clients: int,
    templates: dict[str, np.ndarray],
    control: Any,
    results: Any,
    stop_at: float,
) -> None:
    """One replica process: ``clients`` client threads and a prober of announced changes."""
    gallery = open_gallery(Path(root), dsn, table, dim, listen=True)
    pids = list(templates)
    log: list[tuple[float, str]] = []  # (query start, matched pid) for top-1 matches
    counts = {"identify": 0, "verify": 0, "status": 0}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.time() < stop_at:
            pid = pids[int(rng.integers(len(pids)))]
            v = templates[pid] + rng.standard_normal(dim).astype(np.float32) * 0.02
            kind = ("identify", "identify", "verify", "status")[int(rng.integers(4))]
            t0 = time.time()
            if kind == "identify":
                found = [m.pid for m in gallery.identify(v, top_k=3)]
            elif kind == "verify":
                try:
                    found = [pid] if gallery.verify(v, pid)[0] else []
                except KeyError:
                    found = []
            else:
                found = [pid] if gallery.status(pid)["searchable"] else []
            with lock:
                counts[kind] += 1
                log.extend((t0, p) for p in found)

    def prober() -> None:
        while time.time() < stop_at + 1:
            try:
                pid, t_done, size_after = control.get(timeout=0.5)
            except queue.Empty:
                continue
            v = templates[pid]
            sized: list[float] = []

            def watch_size(
                size_after: int = size_after, t_done: float = t_done, sized: list[float] = sized
            ) -> None:
                # Its own thread: the cached size needs no lock, the searches below may wait
                # for the gallery's lock behind the clients.
                while time.time() - t_done < 5:
                    if gallery.size <= size_after:
                        sized.append(time.time() - t_done)
                        return
                    time.sleep(0.001)

            watcher = threading.Thread(target=watch_size)
            watcher.start()
            hidden = first = None
            while hidden is None and time.time() - t_done < 5:
                now = time.time()  # the query's start
                first = now - t_done if first is None else first
                if pid not in [m.pid for m in gallery.identify(v, top_k=1)]:
                    hidden = now - t_done
                time.sleep(0.001)
            watcher.join()
            size = sized[0] if sized else None
            results.put(("probe", index, pid, hidden, size, first))

    threads = [threading.Thread(target=client, args=(index * 100 + c,)) for c in range(clients)]
    threads.append(threading.Thread(target=prober))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(("log", index, log, counts, gallery.notifications))
    gallery.close()


def run(
    *,
    dsn: str,
    replicas: int = 2,
    clients: int = 8,
    duration: float = 60.0,
    interval: float = 2.0,
    subjects: int = 500,
    dim: int = 128,
) -> dict[str, Any]:
    """The benchmark (also the short check of ``tests/unit/test_pg_replicas.py``)."""
    table = f"replicas_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        templates = build(root, dsn, table, subjects, dim)
        ctx = mp.get_context("spawn")
        controls = [ctx.Queue() for _ in range(replicas)]
        results = ctx.Queue()
        start = time.time() + 3.0 + replicas  # every replica open before the load starts
        stop_at = start + duration
        per = [clients // replicas + (1 if i < clients % replicas else 0) for i in range(replicas)]
        procs = [
            ctx.Process(
                target=replica,
                args=(
                    i,
                    str(root),
                    dsn,
                    table,
                    dim,
                    per[i],
                    templates,
                    controls[i],
                    results,
                    stop_at,
                ),
            )
            for i in range(replicas)
        ]
        for p in procs:
            p.start()
        a = open_gallery(root, dsn, table, dim, listen=False)
        changes: dict[str, tuple[str, float]] = {}
        time.sleep(max(0.0, start - time.time()))
        order = list(templates)
        k = 0
        # Changes on a fixed schedule (not interval after the last one returned).
        while start + interval * (k + 1) < stop_at - 0.5 and k < len(order):
            time.sleep(max(0.0, start + interval * (k + 1) - time.time()))
            pid = order[k]
            kind = "erasure" if k % 2 == 0 else "withdrawal"
            if kind == "erasure":
                a.erase(pid)
            else:
                a.core.withdraw_consent(pid, ["identification"])
                a.refresh()  # as the HTTP route does after recording the withdrawal
            t_done = time.time()
            changes[pid] = (kind, t_done)
            size_after = subjects - k - 1
            for q in controls:
                q.put((pid, t_done, size_after))
            k += 1
        probes: list[tuple[int, str, float | None, float | None, float]] = []
        logs: dict[int, Any] = {}
        while len(logs) < replicas:
            item = results.get(timeout=duration + 60)
            if item[0] == "probe":
                probes.append(item[1:])
            else:
                logs[item[1]] = item[2:]
        for p in procs:
            p.join(timeout=30)
        a.close()
        # The tables and their triggers' functions.
        pg_gallery.reset_table(dsn, table=table)
    violations = 0
    queries = {"identify": 0, "verify": 0, "status": 0}
    notifications = 0
    for log, counts, notes in logs.values():
        notifications += notes
        for key in queries:
            queries[key] += counts[key]
        for t0, pid in log:
            change = changes.get(pid)
            if change is not None and t0 > change[1]:
                violations += 1
    hidden = [h for _, _, h, _, _ in probes if h is not None]
    sizes = [s for _, _, _, s, _ in probes if s is not None]
    firsts = [f for *_, f in probes]
    missing = sum(1 for _, _, h, s, _ in probes if h is None or s is None)
    # Hidden at the prober's first look: the latency is the prober's own start (scheduling).
    at_first = sum(1 for _, _, h, _, f in probes if h is not None and h == f)

    def ms(xs: list[float]) -> dict[str, float | None]:
        if not xs:
            return {"max": None, "p50": None}
        a_ = np.asarray(xs) * 1000
        return {"max": round(float(a_.max()), 2), "p50": round(float(np.median(a_)), 2)}

    return {
        "replicas": replicas,
        "clients": clients,
        "duration_s": duration,
        "subjects": subjects,
        "dim": dim,
        "changes": {
            "erasures": sum(1 for k_, _ in changes.values() if k_ == "erasure"),
            "withdrawals": sum(1 for k_, _ in changes.values() if k_ == "withdrawal"),
        },
        "queries": queries,
        "hidden_ms": ms(hidden),
        "size_ms": ms(sizes),
        "prober_first_check_ms": ms(firsts),
        "hidden_at_first_check": f"{at_first}/{len(probes)}",
        "probes_not_honoured_within_5s": missing,
        "violations": violations,
        "notifications_received": notifications,
        "goal_visibility_le_1s": bool(hidden and sizes and max(hidden + sizes) <= 1.0)
        and missing == 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--subjects", type=int, default=500)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dsn", default=os.environ.get(pg_gallery.DSN_ENV, ""))
    args = ap.parse_args()
    os.environ.setdefault("VISAGE_WITNESS_DIR", tempfile.mkdtemp(prefix="visage-witness-"))
    with postgres(args.dsn or None) as dsn:
        out = run(
            dsn=dsn,
            replicas=args.replicas,
            clients=args.clients,
            duration=args.duration,
            interval=args.interval,
            subjects=args.subjects,
            dim=args.dim,
        )
    print(json.dumps({"benchmark": "replicas", **out}))


if __name__ == "__main__":
    main()
