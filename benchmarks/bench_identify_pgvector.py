"""Identify latency of the pgvector gallery (exact and HNSW) against the in-memory one; one JSON.

For each size N: N random unit templates (dim ``--dim``) go into a pgvector gallery table and
into the in-memory :class:`~visage_ml.serving.index.TemplateIndex`. ``--queries`` of them are the
mates: queries are those rows plus noise (N(0, 0.03) per dimension, so a query's cosine with its
mate is about 0.83 at 512-d, while a random 512-d unit vector scores about 0 +- 0.044: the best
of 1M non-mates stays near 0.25). Searches run at a fixed cosine ``--threshold`` (0.5 unless
told; the in-memory index the same), so only a query's true mate is above it, and what is timed
is what serving runs on the rows serving would return:

- the mates are real sealed rows, enrolled through :meth:`PgGallery.enroll_many` (consent to
  identification recorded in a temporary project's ledger; their ``sealed``, ``template_sha256``,
  gallery key and ``gallery.enrolled`` event are real), so the check that a returned row's
  ``embedding`` is the template its ``sealed`` column opens to runs on every returned row, and
  passes (``tampered``: rows it set aside, must be 0). Each mate is a different subject, so each
  timed search opens its mate's sealed template once per gallery object (the digest cache is
  cold except for the two warm-up queries);
- the other N - ``--queries`` rows are loaded in bulk (``COPY``) with a random ``sealed`` column
  of a real sealed template's size: none of them is ever above the threshold, so none is ever
  opened (were one returned, the check would set it aside and log it).

Timed per query, in the same run, alternating:

- ``memory``: ``TemplateIndex.search`` (what ``serving.gallery.backend: memory`` runs);
- ``pgvector_exact``: :meth:`PgGallery.search` with ``hnsw: false`` (sequential scan, revoked
  filter, size re-count in the same snapshot when it changed, the sealed-template check);
- ``pgvector_hnsw_ef<E>``: the same with ``hnsw: true`` at each ``ef_search`` E of
  ``--ef-search``, after one index build (its time is reported).

``exact_top1_is_mate``: share of queries whose exact top-1 is their mate (a query with no result
counts as a miss). ``hnsw_ef<E>_recall_at_1``: share of queries whose HNSW top-1 is the exact
top-1. With no ``--dsn`` a PostgreSQL is started for the run (:mod:`visage_ml.stack.postgres`) in
a temporary folder and stopped at the end.

    python benchmarks/bench_identify_pgvector.py [--sizes 100000,1000000] [--dim 512]
        [--queries 100] [--threshold 0.5] [--ef-search 40,100,200,400] [--hnsw-m 16]
        [--ef-construction 64] [--hnsw-max 1000000] [--measure-erase] [--dsn URI]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import secrets
import sys
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
from visage_ml.serving.index import TemplateIndex, normalize_queries, template_of
from visage_ml.serving.pg_gallery import PgGallery, PgOptions
from visage_ml.stack.postgres import temporary_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The consenting subjects of bench_identify_scale, one copy.
from bench_identify_scale import register

TOP_K = 5
VERSION = "bench"
# Cosine a result must reach: a query's mate scores ~0.83, the best random row of 1M ~0.25.
THRESHOLD = 0.5
NOISE = 0.03
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
    """COPY the rows into a fresh gallery table, with a random ``sealed`` (they are never
    above the threshold, so never opened); returns seconds."""
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


def _search(gallery: PgGallery, threshold: float, v: np.ndarray) -> list[Any]:
    return gallery.search(v, top_k=TOP_K, threshold_for=lambda _n: threshold)[0][0]


def top1(res: list[Any]) -> str | None:
    """The pid of the first result (None: nothing at or above the threshold)."""
    if not res:
        return None
    first = res[0]
    return first[0] if isinstance(first, tuple) else first.pid


def stats(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def agree(a: list[str | None], b: list[str | None]) -> float:
    """Share of positions where ``a`` and ``b`` name the same subject (None: a miss)."""
    return float(np.mean([x is not None and x == y for x, y in zip(a, b, strict=True)]))


def bench_size(dsn: str, n: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    d = args.dim
    m = unit_rows(n, d, seed=n)
    pids = [f"p{i:016x}" for i in range(n)]
    thr = float(args.threshold)
    rng = np.random.default_rng(7)
    mates = rng.choice(n, size=args.queries, replace=False)
    # The mates' rows are what enrolment stores (the normalised mean of one embedding).
    m[mates] = np.stack([template_of(m[i], d) for i in mates])
    q = m[mates] + rng.standard_normal((args.queries, d), dtype=np.float32) * NOISE
    q = normalize_queries(q, d)
    table = f"bench_{secrets.token_hex(4)}"
    out: dict[str, Any] = {"n": n, "dim": d, "queries": args.queries, "threshold": thr}
    is_mate = np.zeros(n, dtype=bool)
    is_mate[mates] = True
    bulk = np.flatnonzero(~is_mate)
    out["load_s"] = round(load_table(dsn, table, m[bulk], [pids[i] for i in bulk]), 2)
    del bulk
    index = TemplateIndex(d, capacity=n)
    index.extend(pids, m)
    paths = ProjectPaths(scratch / table)
    (scratch / table).mkdir()
    core = PrivacyCore(paths)
    mate_pids = [pids[i] for i in mates]
    register(core, mate_pids)  # as bench_identify_scale registers its gallery

    def open_(hnsw: bool, ef: int = 40) -> PgGallery:
        return PgGallery.open(
            paths,
            options=PgOptions(dsn=dsn, table=table, hnsw=hnsw, ef_search=ef, listen=False),
            model_version=VERSION,
            embedding_dim=d,
            threshold=thr,
            core=core,
            # No reconciliation with the ledger: the COPY'd rows have no consent recorded and
            # would all be revoked; the mates are enrolled with theirs.
            load=False,
        )

    exact = open_(False)
    t0 = time.perf_counter()
    enrolled = exact.enroll_many({pid: m[i] for pid, i in zip(mate_pids, mates, strict=True)})
    out["enrol_mates_s"] = round(time.perf_counter() - t0, 2)
    out["sealed_mates"] = sum(e.changed for e in enrolled)
    del m
    fns: dict[str, Any] = {
        "memory": lambda v: index.search(v[None], top_k=TOP_K, threshold=thr)[0],
        "pgvector_exact": functools.partial(_search, exact, thr),
    }
    hnsw: dict[int, PgGallery] = {}
    if n <= args.hnsw_max:
        build = build_hnsw(dsn, table, m=args.hnsw_m, ef_construction=args.ef_construction)
        out["hnsw_build_s"] = round(build, 1)
        out["hnsw_m"], out["hnsw_ef_construction"] = args.hnsw_m, args.ef_construction
        for ef in (int(x) for x in str(args.ef_search).split(",") if x):
            hnsw[ef] = open_(True, ef)
            fns[f"pgvector_hnsw_ef{ef}"] = functools.partial(_search, hnsw[ef], thr)
    else:
        out["hnsw_build_s"] = None
        out["hnsw_skipped"] = f"n > --hnsw-max {args.hnsw_max}"
    times: dict[str, list[float]] = {k: [] for k in fns}
    firsts: dict[str, list[str | None]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up: caches, plans
        fn(q[0])
        fn(q[1])
    for v in q:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            res = fn(v)
            times[name].append(time.perf_counter() - t0)
            firsts[name].append(top1(res))
    for name in fns:
        out[name] = stats(times[name])
    out["exact_top1_is_mate"] = agree(firsts["pgvector_exact"], mate_pids)
    out["memory_top1_is_mate"] = agree(firsts["memory"], mate_pids)
    out["exact_agrees_with_memory"] = agree(firsts["pgvector_exact"], firsts["memory"])
    for ef in hnsw:
        out[f"hnsw_ef{ef}_recall_at_1"] = agree(
            firsts[f"pgvector_hnsw_ef{ef}"], firsts["pgvector_exact"]
        )
    # Rows the sealed-template check set aside (and logged): none, or the bench is wrong.
    out["tampered"] = sum(g.stats()["tampered"] for g in (exact, *hnsw.values()))
    for g in hnsw.values():
        g.close()
    exact.close()
    if args.measure_erase:
        # One subject's erasure down to disk: DELETE, VACUUM FULL (table, TOAST, every index,
        # HNSW included when built), WAL switch + CHECKPOINT.
        t0 = time.perf_counter()
        pg_gallery.delete_subject(dsn, mate_pids[0], table=table)
        report = pg_gallery.purge_physically(dsn, table=table)
        out["erase_purge_s"] = round(time.perf_counter() - t0, 2)
        out["erase_wal_removed"] = report.to_dict()["wal_removed"]
    # The tables and their triggers' functions.
    pg_gallery.reset_table(dsn, table=table)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100, help="mates, enrolled sealed")
    ap.add_argument("--threshold", type=float, default=THRESHOLD, help="cosine to reach")
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
        "threshold": args.threshold,
        "query_noise": NOISE,
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
