"""Mixed identify / enrol / erase load on a served project over loopback, and its audit.

Used by ``test_concurrency.py`` and ``benchmarks/bench_reliability.py``. The server runs
``create_app`` under uvicorn in a subprocess (``python loadgen.py --serve ROOT PORT``) on the
tiny ONNX models and tile-grid "faces" of the serving tests. Client threads share one clock:

- each client owns a disjoint set of subjects that it alone enrols and erases (so the last
  acknowledged enrolment of a subject is well defined), and identifies anyone's photos;
- after the run, :func:`audit` counts *lost* updates (an acknowledged enrolment whose template
  is not the stored, recorded one; an acknowledged erasure that left anything behind) and
  *leaks* (an identification sent after a subject's erasure returned that still matched them).

Not a test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import VERSION, Site, make_site  # noqa: E402 - after the path set-up above
from project_helpers import free_port, run_server  # noqa: E402, F401 - run_server for its users

from visage_ml.config import ProjectPaths, load_params  # noqa: E402
from visage_ml.io import sha256_file  # noqa: E402
from visage_ml.privacy.core import PrivacyCore  # noqa: E402
from visage_ml.serving.gallery import Gallery  # noqa: E402


@dataclass
class Record:
    """One request as a client saw it (times from one monotonic clock)."""

    client: int
    op: str
    pid: str | None
    sent: float
    done: float
    status: int
    matched: tuple[str, ...] = ()
    template_sha256: str | None = None


@dataclass
class LoadResult:
    records: list[Record] = field(default_factory=list)
    seconds: float = 0.0


def prepare(root: Path, *, n_subjects: int = 64, enrolled: int = 32) -> Site:
    """A project whose first ``enrolled`` subjects are in the gallery."""
    return make_site(root, n_subjects=n_subjects, enrol=enrolled)


def serve(root: Path, port: int) -> None:
    """The server process: fake engine, the project's gallery, uvicorn on loopback."""
    import uvicorn
    from serving_fakes import fake_engine, open_gallery

    # Deferred: FastAPI is heavy and only the server subprocess needs the app.
    from visage_ml.app.http.app import create_app

    paths = ProjectPaths(root)
    params = load_params(paths.params)
    engine = fake_engine(root, max_faces=params.serving.max_faces)
    core = PrivacyCore(paths)
    gallery = open_gallery(paths, core, engine, version=VERSION)
    app = create_app(paths, params=params, engine=engine, gallery=gallery, core=core)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Server:
    """``serve`` in a subprocess, up once ``/healthz`` answers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "VISAGE_PROJECT": str(root)}
        env.pop("VISAGE_FAULT", None)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root), str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"the server did not start:\n{err[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode() if err else ""


def run_load(
    site: Site,
    base: str,
    *,
    clients: int = 8,
    seconds: float = 10.0,
    mix: tuple[float, float, float] = (0.6, 0.3, 0.1),
    seed: int = 0,
) -> LoadResult:
    """``clients`` threads posting identify / enroll / erasure in proportions ``mix``."""
    import httpx
    from serving_fakes import png_b64

    pids = site.pids
    owned = [pids[k::clients] for k in range(clients)]
    photos_lock = threading.Lock()
    stop = threading.Event()
    out = LoadResult()
    per_client: list[list[Record]] = [[] for _ in range(clients)]

    def photos(pid: str, n: int) -> list[str]:
        with photos_lock:  # the world's generator is not thread-safe
            tiles = site.world.photo(pid, n)
        return [png_b64(t) for t in tiles]

    def client(k: int) -> None:
        rng = np.random.default_rng([seed, k])
        erased: set[str] = set()
        log = per_client[k]
        op_key = {"X-API-Key": site.keys["operator"]}
        dpo_key = {"X-API-Key": site.keys["dpo"]}
        with httpx.Client(base_url=base, timeout=120) as http:
            while not stop.is_set():
                r = rng.random()
                live = [p for p in owned[k] if p not in erased]
                if r < mix[0] or not live:
                    pid = pids[int(rng.integers(len(pids)))]
                    body = {"image": photos(pid, 1)[0], "top_k": 3}
                    t = time.monotonic()
                    resp = http.post("/v1/identify", json=body, headers=op_key)
                    done = time.monotonic()
                    matched: tuple[str, ...] = ()
                    if resp.status_code == 200:
                        matched = tuple(
                            m["pid"] for f in resp.json()["faces"] for m in f["matches"]
                        )
                    log.append(Record(k, "identify", pid, t, done, resp.status_code, matched))
                elif r < mix[0] + mix[1]:
                    pid = live[int(rng.integers(len(live)))]
                    body = {"pid": pid, "images": photos(pid, 2)}
                    t = time.monotonic()
                    resp = http.post("/v1/enroll", json=body, headers=op_key)
                    done = time.monotonic()
                    sha = resp.json().get("template_sha256") if resp.status_code == 200 else None
                    log.append(Record(k, "enroll", pid, t, done, resp.status_code, (), sha))
                else:
                    pid = live[int(rng.integers(len(live)))]
                    t = time.monotonic()
                    resp = http.post(f"/v1/subjects/{pid}/erasure", headers=dpo_key)
                    done = time.monotonic()
                    log.append(Record(k, "erase", pid, t, done, resp.status_code))
                    if resp.status_code != 200:
                        continue
                    erased.add(pid)
                    # Probe the moment right after the erasure returned: the subject must
                    # neither be matched nor be enrolled again.
                    body = {"image": photos(pid, 1)[0], "top_k": 3}
                    t = time.monotonic()
                    resp = http.post("/v1/identify", json=body, headers=op_key)
                    matched = ()
                    if resp.status_code == 200:
                        matched = tuple(
                            m["pid"] for f in resp.json()["faces"] for m in f["matches"]
                        )
                    log.append(
                        Record(k, "identify", pid, t, time.monotonic(), resp.status_code, matched)
                    )
                    body = {"pid": pid, "images": photos(pid, 2)}
                    t = time.monotonic()
                    resp = http.post("/v1/enroll", json=body, headers=op_key)
                    log.append(Record(k, "enroll", pid, t, time.monotonic(), resp.status_code))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=300)
    out.seconds = time.monotonic() - t0
    out.records = sorted((r for log in per_client for r in log), key=lambda r: r.sent)
    return out


def figures(result: LoadResult) -> dict[str, Any]:
    """Requests, throughput and latency percentiles, overall and per operation."""
    recs = result.records
    out: dict[str, Any] = {
        "requests": len(recs),
        "seconds": round(result.seconds, 2),
        "throughput_rps": round(len(recs) / result.seconds, 1) if result.seconds else 0.0,
        "server_errors": sum(r.status >= 500 for r in recs),
        "statuses": {},
        "ops": {},
    }
    for r in recs:
        out["statuses"][str(r.status)] = out["statuses"].get(str(r.status), 0) + 1
    lat = np.asarray([r.done - r.sent for r in recs]) * 1e3
    if lat.size:
        out["latency_p50_ms"] = round(float(np.percentile(lat, 50)), 1)
        out["latency_p99_ms"] = round(float(np.percentile(lat, 99)), 1)
    for op in ("identify", "enroll", "erase"):
        sel = np.asarray([r.done - r.sent for r in recs if r.op == op]) * 1e3
        if sel.size:
            out["ops"][op] = {
                "requests": int(sel.size),
                "ok": sum(1 for r in recs if r.op == op and r.status == 200),
                "p50_ms": round(float(np.percentile(sel, 50)), 1),
                "p99_ms": round(float(np.percentile(sel, 99)), 1),
            }
    return out


def audit(site: Site, result: LoadResult) -> dict[str, Any]:
    """Lost updates and leaks, from the client records and the stores after the run."""
    recs = result.records
    erased_at: dict[str, float] = {}
    for r in recs:
        if r.op == "erase" and r.status == 200:
            erased_at[r.pid] = min(r.done, erased_at.get(r.pid, r.done))
    leaks = [
        (r.pid, m)
        for r in recs
        if r.op == "identify" and r.status == 200
        for m in r.matched
        if m in erased_at and r.sent > erased_at[m]
    ]
    last_enrol: dict[str, Record] = {}
    for r in recs:
        if r.op == "enroll" and r.status == 200:
            last_enrol[r.pid] = r
    core = PrivacyCore(site.paths)
    gallery = Gallery.open(
        site.paths, model_version=VERSION, embedding_dim=64, threshold=0.7, core=core
    )
    searchable = set(gallery.searchable())
    recorded = {
        e.payload["template_sha256"] for e in core.ledger.entries() if e.type == "gallery.enrolled"
    }
    lost: list[str] = []
    for pid, r in last_enrol.items():
        if pid in erased_at:
            continue
        path = gallery.template_path(pid)
        if not path.exists() or sha256_file(path) != r.template_sha256:
            lost.append(f"{pid}: acknowledged template not stored")
        elif r.template_sha256 not in recorded:
            lost.append(f"{pid}: acknowledged template not in the ledger")
        elif pid not in searchable:
            lost.append(f"{pid}: acknowledged template not searchable")
    for pid in erased_at:
        st = core.registry.get(pid)
        left = [
            p
            for p in (
                gallery.template_path(pid),
                gallery.anchor_path(pid),
                gallery.keys.path(pid),
                site.paths.vault / "keys" / f"{pid}.key",
            )
            if p.exists()
        ]
        if not (st is not None and st.erased) or left or pid in searchable:
            lost.append(f"{pid}: acknowledged erasure incomplete")
    after_erase = [
        r for r in recs if r.op == "enroll" and r.pid in erased_at and r.sent > erased_at[r.pid]
    ]
    return {
        "lost_updates": len(lost),
        "leaks": len(leaks),
        "lost_detail": lost[:10],
        "leak_detail": leaks[:10],
        "enrolments_acknowledged": sum(1 for r in recs if r.op == "enroll" and r.status == 200),
        "erasures_acknowledged": len(erased_at),
        "enrolments_after_erasure": len(after_erase),
        "enrolments_after_erasure_accepted": sum(r.status == 200 for r in after_erase),
        "ledger_ok": core.ledger.verify().ok,
        "searchable_after_restart": len(searchable),
    }


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--serve":
        serve(Path(argv[1]), int(argv[2]))
        return
    raise SystemExit("usage: loadgen.py --serve ROOT PORT (the tests and benchmark drive it)")


if __name__ == "__main__":
    main(sys.argv[1:])
