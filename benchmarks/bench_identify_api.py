"""Identification accuracy through the HTTP API on a project after `make demo`; one JSON object.

Starts `visage serve` on a free loopback port with a temporary operator key, then sends
`/v1/identify` requests for held-out images (images not used to enrol them) of every searchable
subject, and for images of subjects who are not in the gallery at all. Reports rank-1 accuracy
of enrolled probes, the false-match rate of non-enrolled probes at the served threshold, and
latencies. The key is revoked at the end.

    python benchmarks/bench_identify_api.py [--project DIR] [--probes 200]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from visage_ml.config import ProjectPaths
from visage_ml.data.rawstore import RawStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _visage(*args: str, env: dict[str, str]) -> str:
    exe = str(Path(sys.executable).with_name("visage"))
    out = subprocess.run([exe, *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project", default=os.environ.get("VISAGE_PROJECT") or ".")
    ap.add_argument("--probes", type=int, default=200, help="enrolled probes at most")
    args = ap.parse_args()
    root = Path(args.project).resolve()
    env = {**os.environ, "VISAGE_PROJECT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}

    holdout = json.loads(
        _visage("gallery", "holdout", "--count", str(args.probes), "--json", env=env)
    )
    searchable = {
        r["pid"]
        for r in json.loads(_visage("gallery", "list", "--json", env=env))
        if r.get("searchable")
    }
    manifest = pd.read_parquet(root / "data" / "processed" / "manifest.parquet")
    strangers = manifest[~manifest["pid"].astype(str).isin(searchable)]
    strangers = strangers.groupby("pid").head(1).head(args.probes)
    created = json.loads(_visage("apikey", "create", "--role", "operator", "--json", env=env))
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("visage")), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict[str, object] = {"project": str(root)}
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(240):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.5)
            headers = {"X-API-Key": created["key"]}

            def identify(data: bytes) -> tuple[list[str], float]:
                body = {"image": base64.b64encode(data).decode(), "top_k": 1}
                t = time.perf_counter()
                r = client.post("/v1/identify", json=body, headers=headers)
                dt = time.perf_counter() - t
                r.raise_for_status()
                faces = r.json()["faces"]
                return [m["pid"] for f in faces[:1] for m in f["matches"]], dt

            hits, no_match, wrong, lat = 0, 0, 0, []
            store = RawStore(ProjectPaths(root), track=False)
            for row in holdout:
                # Listed, not decrypted to disk: read in memory like the strangers below.
                got, dt = identify(store.read_image(row["pid"], row["image_id"]))
                lat.append(dt)
                if got and got[0] == row["pid"]:
                    hits += 1
                elif not got:
                    no_match += 1
                else:
                    wrong += 1
            false_matches = 0
            for r in strangers.itertuples():
                # Raw images are sealed: decrypted in memory, never written in clear.
                got, dt = identify(store.read_image(str(r.pid), str(r.image_id)))
                lat.append(dt)
                false_matches += bool(got)
        n = len(holdout)
        out.update(
            {
                "enrolled_probes": n,
                "rank1_accuracy": round(hits / n, 4) if n else None,
                "no_match_rate": round(no_match / n, 4) if n else None,
                "wrong_match_rate": round(wrong / n, 4) if n else None,
                "non_enrolled_probes": len(strangers),
                "false_match_rate": (
                    round(false_matches / len(strangers), 4) if len(strangers) else None
                ),
                "latency_ms_p50": round(float(np.percentile(lat, 50)) * 1000, 1),
                "latency_ms_p99": round(float(np.percentile(lat, 99)) * 1000, 1),
                "note": "one image per subject; threshold from reports/threshold.json",
            }
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        _visage("apikey", "revoke", created["key_id"], env=env)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
