"""Gallery search and erasure at 10k / 100k / 1M templates; prints one JSON object.

Identification (in memory, per query, ``top_k`` = 5, threshold 0.5):

- ``gallery``: :meth:`TemplateIndex.search`, the exact fp32 search the gallery runs;
- ``numpy_baseline``: plain brute force in the same run (``M @ q``, ``argpartition``, sort);
- ``stream_bound``: the faster of ``M.max()`` on one thread and split over all cores (``max``
  streams faster than ``sum`` here), i.e. the time to read the matrix once: a memory-bandwidth
  bound for any exact search. Searches, baseline and bound are timed alternately, query by
  query, so that load from other processes hits all of them alike;
- ``fp16``: the matrix stored as float16 (half the bytes) and searched by upcasting chunks to
  fp32 (numpy has no fp16 matrix-vector kernel), with its own stream bound (fastest of sum and
  max, one thread or all);
- ``gallery_end_to_end`` (sizes with an on-disk store): :meth:`Gallery.identify`, adding the
  consent refresh (a ``stat`` of the ledger), the lock and query normalisation.

Erasure (on disk, dim ``--erase-dim``): a store of N subjects (per-subject key and template
files) is written, then opened (the start-up load is timed) and ``--erasures`` random subjects
are erased, each including its durable writes (key and template overwrite + fsync + unlink +
directory fsync, ledger append + fsync). To build 1M subjects in minutes, the store is written
without per-file fsync and synced once (``os.sync``) before anything is timed; the registry is a
stub allowing every subject (its fold is measured by ``bench_ledger.py``).

    python benchmarks/bench_gallery.py [--sizes 10000,100000,1000000] [--dims 128,512]
        [--erase-sizes 10000,100000,1000000] [--erase-dim 128] [--queries 50]

Memory: 1M x 512 fp32 is 2 GB; the largest configuration peaks near 5 GB. Disk: about 8 KB per
on-disk subject (two small files), 8 GB at 1M, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from visage_ml.config import ProjectPaths
from visage_ml.io import sha256_bytes
from visage_ml.privacy.ledger import Ledger
from visage_ml.privacy.registry import ALLOWED, Decision
from visage_ml.serving import gallery as gallery_mod
from visage_ml.serving.gallery import Gallery
from visage_ml.serving.index import TemplateIndex

TOP_K = 5
THRESHOLD = 0.5


def _times(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _stats(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1e3
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "min_ms": round(float(a.min()), 3),
    }


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.empty((n, d), dtype=np.float32)
    step = 65536
    for s in range(0, n, step):
        block = rng.standard_normal((min(step, n - s), d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        m[s : s + block.shape[0]] = block
    return m


def _queries(m: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Noisy copies of random rows (so each query has a true match above the threshold)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, m.shape[0], size=n)
    q = m[rows] + rng.standard_normal((n, m.shape[1]), dtype=np.float32) * (
        0.5 / np.sqrt(m.shape[1])
    )
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _stream_bound(m: np.ndarray, pool: ThreadPoolExecutor, threads: int) -> dict[str, Any]:
    parts = np.array_split(np.arange(m.shape[0]), threads)
    spans = [(int(p[0]), int(p[-1]) + 1) for p in parts if p.size]

    def threaded(op: str) -> Callable[[], None]:
        def run() -> None:
            list(pool.map(lambda s: getattr(m[s[0] : s[1]], op)(), spans))

        return run

    ways = {
        "sum_1thread": lambda: m.sum(),
        "max_1thread": lambda: m.max(),
        f"sum_{threads}threads": threaded("sum"),
        f"max_{threads}threads": threaded("max"),
    }
    measured = {k: min(_times(f, 5, 1)) * 1e3 for k, f in ways.items()}
    best = min(measured, key=measured.__getitem__)
    return {
        "ms": round(measured[best], 3),
        "method": best,
        "gb_per_s": round(m.nbytes / (measured[best] / 1e3) / 1e9, 2),
        "all_ms": {k: round(v, 3) for k, v in measured.items()},
    }


def _baseline(m: np.ndarray, q: np.ndarray) -> list[int]:
    scores = m @ q
    top = np.argpartition(scores, -TOP_K)[-TOP_K:]
    return top[np.argsort(-scores[top])].tolist()


def _fp16_search(h: np.ndarray, q: np.ndarray, buf: np.ndarray, out: np.ndarray) -> None:
    c = buf.shape[0]
    for s in range(0, h.shape[0], c):
        e = min(h.shape[0], s + c)
        np.copyto(buf[: e - s], h[s:e])
        np.dot(buf[: e - s], q, out=out[s:e])
    cand = np.flatnonzero(out >= THRESHOLD)
    if cand.size > TOP_K:
        cand = cand[np.argpartition(out[cand], -TOP_K)[-TOP_K:]]


def _interleaved(fns: dict[str, Callable[[int], Any]], n: int) -> dict[str, list[float]]:
    """Time each function once per query, alternating, so load on a shared machine hits all."""
    for f in fns.values():
        f(0)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(n):
        for k, f in fns.items():
            t = time.perf_counter()
            f(i)
            out[k].append(time.perf_counter() - t)
    return out


def _search_numbers(
    index: TemplateIndex, pids: list[str], n_queries: int, pool: ThreadPoolExecutor
) -> dict[str, Any]:
    mat = index.matrix
    n, d = mat.shape
    qs = _queries(mat, n_queries, seed=1)
    # Both find the true neighbour of the query.
    got = index.search(qs[:1], top_k=TOP_K, threshold=THRESHOLD)[0]
    assert got and got[0][0] == pids[_baseline(mat, qs[0])[0]]
    threads = os.cpu_count() or 1
    spans = [(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(n), threads) if a.size]

    def stream_threads(_: int) -> None:
        list(pool.map(lambda sp: mat[sp[0] : sp[1]].max(), spans))

    # Alternating per query, so that load from other processes hits every method alike.
    times = _interleaved(
        {
            "gallery": lambda i: index.search(qs[i : i + 1], top_k=TOP_K, threshold=THRESHOLD),
            "numpy_baseline": lambda i: _baseline(mat, qs[i]),
            "max_1thread": lambda i: mat.max(),
            f"max_{threads}threads": stream_threads,
        },
        n_queries,
    )
    t_ours, t_base = _stats(times["gallery"]), _stats(times["numpy_baseline"])
    streams = {k: _stats(v) for k, v in times.items() if k.startswith("max_")}
    best = min(streams, key=lambda k: streams[k]["p50_ms"])
    bound = {
        "ms": streams[best]["p50_ms"],
        "method": best,
        "gb_per_s": round(mat.nbytes / (streams[best]["p50_ms"] / 1e3) / 1e9, 2),
        "all": streams,
    }
    h = mat.astype(np.float16)
    buf = np.empty((min(8192, n), d), dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    t16 = _stats(_times(lambda: _fp16_search(h, qs[0], buf, out), max(3, n_queries // 10), 1))
    b16 = _stream_bound(h, pool, os.cpu_count() or 1)
    return {
        "templates": n,
        "dim": d,
        "matrix_mb": round(mat.nbytes / 1e6, 1),
        "gallery": t_ours,
        "numpy_baseline": t_base,
        "stream_bound": bound,
        "gallery_over_bound": round(t_ours["p50_ms"] / bound["ms"], 3),
        "gallery_over_baseline": round(t_ours["p50_ms"] / t_base["p50_ms"], 3),
        "fp16": {
            "search": t16,
            "stream_bound": b16,
            "over_fp32_gallery": round(t16["p50_ms"] / t_ours["p50_ms"], 2),
        },
    }


def bench_search(n: int, d: int, n_queries: int, pool: ThreadPoolExecutor) -> dict[str, Any]:
    """Search numbers for one size and dimension (the matrix lives only inside this call)."""
    index = TemplateIndex(d, capacity=n)
    pids = [f"p{i:016x}" for i in range(n)]
    index.extend(pids, _unit_rows(n, d, seed=n + d))
    gc.collect()
    return _search_numbers(index, pids, n_queries, pool)


# ---------------------------------------------------------------------------------------------
# On-disk store
# ---------------------------------------------------------------------------------------------


class _AllowAll:
    """Registry stand-in: every pid may be processed (the fold is not what is measured here),
    and the ledger vouches for each template written by :func:`build_store` (its SHA-256)."""

    def __init__(self, vouched: dict[str, str]) -> None:
        self._pids = set(vouched)
        self._vouched = vouched
        self.as_of_seq = -1

    def peek(self, pid: str) -> SimpleNamespace | None:
        digest = self._vouched.get(pid)
        return None if digest is None else SimpleNamespace(template_sha256=digest)

    def refresh(self) -> _AllowAll:
        return self

    def allowed(self, purpose: str) -> set[str]:
        return self._pids

    def may_process(self, pid: str, purpose: str) -> Decision:
        return Decision(True, ALLOWED)


class _Core:
    def __init__(self, paths: ProjectPaths, vouched: dict[str, str]) -> None:
        self.paths = paths
        self.ledger = Ledger(
            paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key
        )
        self.registry = _AllowAll(vouched)


@contextlib.contextmanager
def unsynced_writes() -> Iterator[None]:
    """Write files without per-file fsync (bulk construction only), then one ``os.sync``."""
    import visage_ml.privacy.sealed as keys_mod

    def fast(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    saved = (keys_mod.atomic_write_bytes, gallery_mod.atomic_write_bytes)
    keys_mod.atomic_write_bytes = fast
    gallery_mod.atomic_write_bytes = fast
    try:
        yield
    finally:
        keys_mod.atomic_write_bytes, gallery_mod.atomic_write_bytes = saved
        os.sync()


def build_store(root: Path, n: int, d: int) -> tuple[ProjectPaths, dict[str, str]]:
    """``n`` subjects' keys and encrypted templates under ``root/gallery`` (no ledger events);
    returns each pid's template SHA-256 (what its ``gallery.enrolled`` event would record)."""
    paths = ProjectPaths(root)
    pids = [f"p{i:016x}" for i in range(n)]
    core = _Core(paths, dict.fromkeys(pids, ""))
    g = Gallery.open(paths, model_version="bench", embedding_dim=d, threshold=THRESHOLD, core=core)
    rng = np.random.default_rng(0)
    vouched: dict[str, str] = {}
    with unsynced_writes():
        for s in range(0, n, 4096):
            chunk = pids[s : s + 4096]
            m = rng.standard_normal((len(chunk), d), dtype=np.float32)
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            for pid, vec in zip(chunk, m, strict=True):
                key = g.keys.get(pid, create=True)
                blob = g._seal(pid, key, vec, 1)
                gallery_mod.atomic_write_bytes(g.template_path(pid), blob, mode=0o600)
                vouched[pid] = sha256_bytes(blob)
    return paths, vouched


def bench_store(n: int, d: int, erasures: int, n_queries: int, scratch: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"gallery-{n}-", dir=scratch))
    try:
        t = time.perf_counter()
        paths, vouched = build_store(root, n, d)
        build_s = time.perf_counter() - t
        pids = list(vouched)
        core = _Core(paths, vouched)
        t = time.perf_counter()
        g = Gallery.open(
            paths, model_version="bench", embedding_dim=d, threshold=THRESHOLD, core=core
        )
        load_s = time.perf_counter() - t
        assert g.size == n
        qs = _queries(g._index.matrix, n_queries, seed=2)
        index = g._index
        times = _interleaved(
            {
                "identify": lambda i: g.identify(qs[i], top_k=TOP_K),
                "index_search": lambda i: index.search(
                    qs[i : i + 1], top_k=TOP_K, threshold=THRESHOLD
                ),
            },
            n_queries,
        )
        e2e = {
            **_stats(times["identify"]),
            "index_search_p50_ms": _stats(times["index_search"])["p50_ms"],
        }
        rng = np.random.default_rng(3)
        victims = [pids[i] for i in rng.choice(n, size=min(erasures, n), replace=False)]
        erase_times = []
        for pid in victims:
            t = time.perf_counter()
            removal = g.erase(pid)
            erase_times.append(time.perf_counter() - t)
            assert len(removal.removed) == 2
        assert g.size == n - len(victims)
        return {
            "templates": n,
            "dim": d,
            "build_s": round(build_s, 1),
            "load_s": round(load_s, 2),
            "load_us_per_template": round(load_s / n * 1e6, 1),
            "gallery_end_to_end_identify": e2e,
            "erase": {
                **_stats(erase_times),
                "max_ms": round(max(erase_times) * 1e3, 3),
                "n": len(erase_times),
            },
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dims", default="128,512")
    ap.add_argument("--erase-sizes", default="10000,100000,1000000")
    ap.add_argument("--erase-dim", type=int, default=128)
    ap.add_argument("--erasures", type=int, default=20)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--scratch", default=None, help="Folder for on-disk stores (default: tmp).")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    dims = [int(x) for x in args.dims.split(",") if x]
    erase_sizes = [int(x) for x in args.erase_sizes.split(",") if x]
    scratch = Path(args.scratch or tempfile.gettempdir())
    out: dict[str, Any] = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "top_k": TOP_K,
        "search": [],
        "store": [],
    }
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for d in dims:
            for n in sizes:
                out["search"].append(bench_search(n, d, args.queries, pool))
    for n in erase_sizes:
        out["store"].append(bench_store(n, args.erase_dim, args.erasures, args.queries, scratch))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
