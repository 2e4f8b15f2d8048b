"""Identify latency of the pgvector gallery (exact and HNSW) against the in-memory one; one JSON.

For each size N: N random unit templates (dim ``--dim``) are loaded into a pgvector gallery
table (``COPY``, with a random ``sealed`` column of a real sealed template's size) and into the
in-memory :class:`~visage_ml.serving.index.TemplateIndex`; queries are gallery rows plus noise
(so each has a true mate). Timed per query, in the same run, alternating:

- ``memory``: ``TemplateIndex.search`` (what ``serving.gallery.backend: memory`` runs);
- ``pgvector_exact``: :meth:`PgGallery.search` with ``hnsw: false`` (sequential scan, revoked
  filter, size re-count in the same snapshot when it changed);
- ``pgvector_hnsw_ef<E>``: the same with ``hnsw: true`` at each ``ef_search`` E of
  ``--ef-search``, after one index build (its time is reported).

``hnsw_ef<E>_recall_at_1``: share of queries whose HNSW top-1 is the exact top-1. With no
``--dsn`` a PostgreSQL is started for the run (:mod:`visage_ml.stack.postgres`) in a temporary
folder and stopped at the end.

    python benchmarks/bench_identify_pgvector.py [--sizes 100000,1000000] [--dim 512]
        [--queries 100] [--ef-search 40,100,200,400] [--hnsw-m 16] [--ef-construction 64]
        [--hnsw-max 1000000] [--measure-erase] [--dsn URI]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from psycopg import sql

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.serving import pg_gallery
from visage_ml.serving.index import TemplateIndex, normalize_queries
from visage_ml.serving.pg_gallery import PgGallery, PgOptions
from visage_ml.stack.postgres import temporary_server

TOP_K = 5
VERSION = "bench"
# MAGIC + header + nonce + ciphertext + tag of a 512-d template, about.
SEALED_OVERHEAD = 140


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[str]:
    """``dsn`` or a PostgreSQL started for the run (stopped afterwards)."""
    if dsn:
        yield dsn
        return
    with temporary_server(prefix="visage-bench-pg-") as server:
        yield server.dsn


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - i), d), dtype=np.float32)
        out[i : i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def load_table(dsn: str, table: str, m: np.ndarray, pids: list[str]) -> float:
    """COPY the rows into a fresh gallery table; returns seconds."""
    names = pg_gallery.Names(table)
    t0 = time.perf_counter()
    with pg_gallery.connect(dsn, autocommit=True) as conn:
        pg_gallery.ensure_schema(conn, names, m.shape[1])
        conn.execute(sql.SQL("UPDATE {s} SET model_version = %s").format(s=names.state), (VERSION,))
        sealed = os.urandom(m.shape[1] * 4 + SEALED_OVERHEAD)
        copy = sql.SQL(
            "COPY {t} (pid, model_version, embedding, cluster, sealed, template_sha256, "
            "n_images) FROM STDIN WITH (FORMAT BINARY)"
        ).format(t=names.t)
        with conn.cursor() as cur, cur.copy(copy) as cp:
            cp.set_types(["text", "text", "vector", "int4", "bytea", "text", "int4"])
            for pid, row in zip(pids, m, strict=True):
                cp.write_row((pid, VERSION, row, 0, sealed, "x", 1))
        conn.execute(sql.SQL("VACUUM ANALYZE {t}").format(t=names.t))
    return time.perf_counter() - t0


def build_hnsw(dsn: str, table: str, *, m: int, ef_construction: int) -> float:
    t0 = time.perf_counter()
    with pg_gallery.connect(dsn, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '2GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        pg_gallery.ensure_hnsw(conn, pg_gallery.Names(table), m=m, ef_construction=ef_construction)
    return time.perf_counter() - t0


def _search(gallery: PgGallery, v: np.ndarray) -> list[Any]:
    return gallery.search(v, top_k=TOP_K, threshold_for=lambda _n: -1.0)[0][0]


def stats(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def agree(a: list[str], b: list[str]) -> float:
    """Share of positions where ``a`` and ``b`` name the same subject."""
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)]))


def bench_size(dsn: str, n: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    d = args.dim
    m = unit_rows(n, d, seed=n)
    pids = [f"p{i:016x}" for i in range(n)]
    rng = np.random.default_rng(7)
    mates = rng.choice(n, size=args.queries, replace=False)
    q = m[mates] + rng.standard_normal((args.queries, d), dtype=np.float32) * 0.03
    q = normalize_queries(q, d)
    table = f"bench_{secrets.token_hex(4)}"
    out: dict[str, Any] = {"n": n, "dim": d, "queries": args.queries}
    out["load_s"] = round(load_table(dsn, table, m, pids), 2)
    index = TemplateIndex(d, capacity=n)
    index.extend(pids, m)
    del m
    paths = ProjectPaths(scratch / table)
    (scratch / table).mkdir()
    core = PrivacyCore(paths)

    def open_(hnsw: bool, ef: int = 40) -> PgGallery:
        return PgGallery.open(
            paths,
            options=PgOptions(dsn=dsn, table=table, hnsw=hnsw, ef_search=ef, listen=False),
            model_version=VERSION,
            embedding_dim=d,
            threshold=-1.0,
            core=core,
            load=False,  # an empty ledger: every COPY'd row stays searchable
        )

    exact = open_(False)
    fns: dict[str, Any] = {
        "memory": lambda v: index.search(v[None], top_k=TOP_K, threshold=-1.0)[0],
        "pgvector_exact": functools.partial(_search, exact),
    }
    hnsw: dict[int, PgGallery] = {}
    if n <= args.hnsw_max:
        build = build_hnsw(dsn, table, m=args.hnsw_m, ef_construction=args.ef_construction)
        out["hnsw_build_s"] = round(build, 1)
        out["hnsw_m"], out["hnsw_ef_construction"] = args.hnsw_m, args.ef_construction
        for ef in (int(x) for x in str(args.ef_search).split(",") if x):
            hnsw[ef] = open_(True, ef)
            fns[f"pgvector_hnsw_ef{ef}"] = functools.partial(_search, hnsw[ef])
    else:
        out["hnsw_build_s"] = None
        out["hnsw_skipped"] = f"n > --hnsw-max {args.hnsw_max}"
    times: dict[str, list[float]] = {k: [] for k in fns}
    top1: dict[str, list[str]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up: caches, plans
        fn(q[0])
        fn(q[1])
    for v in q:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            res = fn(v)
            times[name].append(time.perf_counter() - t0)
            first = res[0]
            top1[name].append(first[0] if isinstance(first, tuple) else first.pid)
    for name in fns:
        out[name] = stats(times[name])
    truth = [pids[i] for i in mates]
    out["exact_top1_is_mate"] = agree(top1["pgvector_exact"], truth)
    out["exact_agrees_with_memory"] = agree(top1["pgvector_exact"], top1["memory"])
    for ef, g in hnsw.items():
        out[f"hnsw_ef{ef}_recall_at_1"] = agree(
            top1[f"pgvector_hnsw_ef{ef}"], top1["pgvector_exact"]
        )
        g.close()
    exact.close()
    if args.measure_erase:
        # One subject's erasure down to disk: DELETE, VACUUM FULL (table, TOAST, every index,
        # HNSW included when built), WAL switch + CHECKPOINT.
        t0 = time.perf_counter()
        pg_gallery.delete_subject(dsn, pids[int(mates[0])], table=table)
        report = pg_gallery.purge_physically(dsn, table=table)
        out["erase_purge_s"] = round(time.perf_counter() - t0, 2)
        out["erase_wal_removed"] = report.to_dict()["wal_removed"]
    with pg_gallery.connect(dsn, autocommit=True) as conn:
        names = pg_gallery.Names(table)
        for ident in (names.t, names.revoked, names.state):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=ident))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--ef-search", default="40,100,200,400", help="comma-separated")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--hnsw-max", type=int, default=1_000_000)
    ap.add_argument("--measure-erase", action="store_true", help="time one erasure + purge")
    ap.add_argument("--dsn", default=os.environ.get(pg_gallery.DSN_ENV, ""))
    args = ap.parse_args()
    result: dict[str, Any] = {
        "benchmark": "identify_pgvector",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "top_k": TOP_K,
        "ef_search": args.ef_search,
        "results": [],
    }
    with postgres(args.dsn or None) as dsn, tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",") if s):
            try:
                result["results"].append(bench_size(dsn, n, args, Path(tmp)))
            except MemoryError as exc:
                result["results"].append({"n": n, "error": type(exc).__name__})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
