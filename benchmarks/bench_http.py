"""HTTP identify throughput on loopback with a 10k-subject gallery; prints one JSON object.

A temporary project gets the tiny ONNX models and tile-grid "faces" of the test suite
(``tests/unit/serving_fakes.py``), ``--subjects`` registered subjects with identification
consent and their encrypted templates. The server runs ``visage_ml.app.http.app.create_app``
under uvicorn in a subprocess; ``--clients`` threads post ``/v1/identify`` (one face per image,
base64 PNG in JSON) over keep-alive connections for ``--seconds``. Detection is the tile detector
of the tests, so the numbers measure the serving stack (HTTP, JSON, image decoding, alignment,
ONNX embedding, consent refresh, search, audit log, metrics), not MTCNN.

    python benchmarks/bench_http.py [--subjects 10000] [--clients 1,4,8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VERSION = "emb-test-1"


def build_project(root: Path, n: int) -> dict[str, Any]:
    """Models, ``n`` consenting subjects and their templates; returns probe images and a key."""
    from bench_gallery import unsynced_writes
    from evaluate_fakes import write_models
    from serving_fakes import (
        DIM,
        MODEL_SIZE,
        THRESHOLD,
        face_tile,
        fake_engine,
        make_person,
        png_b64,
        receipt,
    )

    from visage_ml.app.http.auth import KeyStore
    from visage_ml.config import ProjectPaths
    from visage_ml.privacy.core import NewSubject, PrivacyCore
    from visage_ml.serving.gallery import Gallery

    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    write_models(root, size=MODEL_SIZE, dim=DIM)
    paths = ProjectPaths(root)
    core = PrivacyCore(paths)
    rng = np.random.default_rng(0)
    pids = [f"p{i:016x}" for i in range(n)]
    r = receipt(("identification",))
    for s in range(0, n, 2000):
        chunk = pids[s : s + 2000]
        core.add_subjects([NewSubject(pid=p) for p in chunk], source="bench", snapshot=False)
        core.ledger.append_many(
            [
                ("consent.given", p, {"receipt": r.to_dict(), "receipt_hash": r.digest()})
                for p in chunk
            ]
        )
    core.snapshot()
    engine = fake_engine(root)
    people = [
        make_person(p, rng, ("g1", "g2", "g3", "g4")[i % 4], ("female", "male")[i % 2])
        for i, p in enumerate(pids)
    ]
    gallery = Gallery.open(
        paths, model_version=VERSION, embedding_dim=DIM, threshold=THRESHOLD, core=core
    )
    with unsynced_writes():
        for s in range(0, n, 1000):
            batch = people[s : s + 1000]
            crops = np.stack([face_tile(p, rng) for p in batch for _ in range(2)])
            emb = engine.embed(crops).reshape(len(batch), 2, DIM)
            gallery.enroll_many({p.pid: e for p, e in zip(batch, emb, strict=True)})
    probes = []
    for i in rng.choice(n, size=min(200, n), replace=False):
        probes.append((people[i].pid, png_b64(face_tile(people[i], rng))))
    key = KeyStore(paths.api_keys).create("operator")[1]
    return {"probes": probes, "key": key, "searchable": gallery.size}


def serve(root: Path, port: int) -> None:
    """The server process: the tiny-model engine, the project's gallery, uvicorn."""
    import uvicorn
    from serving_fakes import fake_engine, open_gallery

    from visage_ml.app.http.app import create_app
    from visage_ml.config import ProjectPaths, load_params
    from visage_ml.privacy.core import PrivacyCore

    paths = ProjectPaths(root)
    params = load_params(paths.params)
    engine = fake_engine(root)
    core = PrivacyCore(paths)
    gallery = open_gallery(paths, core, engine, version=VERSION)
    app = create_app(paths, params=params, engine=engine, gallery=gallery, core=core)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load(base: str, key: str, probes: list, clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    stop = threading.Event()
    measuring = threading.Event()
    lat: list[list[float]] = [[] for _ in range(clients)]
    right = [0] * clients
    errors = [0] * clients

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as http:
            while not stop.is_set():
                pid, image = probes[int(rng.integers(len(probes)))]
                t = time.perf_counter()
                r = http.post("/v1/identify", json={"image": image, "top_k": 1})
                dt = time.perf_counter() - t
                if not measuring.is_set():
                    continue
                lat[k].append(dt)
                if r.status_code != 200:
                    errors[k] += 1
                    continue
                matches = r.json()["faces"][0]["matches"]
                right[k] += bool(matches) and matches[0]["pid"] == pid

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # warm-up
    measuring.set()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join()
    all_lat = np.concatenate([np.asarray(x) for x in lat]) * 1e3
    n = int(all_lat.size)
    return {
        "clients": clients,
        "requests": n,
        "throughput_rps": round(n / elapsed, 1),
        "latency_p50_ms": round(float(np.percentile(all_lat, 50)), 2) if n else None,
        "latency_p99_ms": round(float(np.percentile(all_lat, 99)), 2) if n else None,
        "errors": int(sum(errors)),
        "top1_correct": round(sum(right) / max(n - sum(errors), 1), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve), args.port)
        return
    import httpx

    out: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        built = build_project(root, args.subjects)
        out["setup_s"] = round(time.perf_counter() - t, 1)
        out["gallery_searchable"] = built["searchable"]
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root), "--port", str(port)], env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start")
                time.sleep(0.2)
            out["runs"] = [
                load(base, built["key"], built["probes"], int(c), args.seconds)
                for c in args.clients.split(",")
            ]
        finally:
            server.terminate()
            server.wait(timeout=30)
    out["note"] = "tile detector + tiny ONNX models; server and clients share the machine"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
