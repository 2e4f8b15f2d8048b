"""SynthFaces generation speed: face images per second per core (rendering + PNG encoding).

Goal (issue: SynthFaces): >= 300 face images/s per core at 160 px. Per-core throughput is
measured in process CPU time, so it does not depend on how busy the other cores are; wall time
is reported too. Also times :func:`write_synthfaces` end to end (files, fsync, parquet,
scenes) on a small population. Prints one JSON object.

    python benchmarks/bench_synth.py [--images 600] [--size 160] [--identities 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from visage_ml.config import SynthParams
from visage_ml.data.synth import encode_png, make_population, render_face, write_synthfaces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=600, help="faces rendered for the rate")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--identities", type=int, default=30, help="population of the end-to-end run")
    ap.add_argument("--seed", type=int, default=20261126)
    args = ap.parse_args()

    params = dataclasses.replace(SynthParams(), image_size=args.size)
    people = make_population(dataclasses.replace(params, n_identities=50), args.seed)
    # warm caches (gradients, noise bank) outside the timed loop
    render_face(people[0], rng=np.random.default_rng(0), params=params)

    render_cpu = png_cpu = 0.0
    n_bytes = 0
    wall0 = time.perf_counter()
    for k in range(args.images):
        t0 = time.process_time()
        image, _ = render_face(
            people[k % len(people)], rng=np.random.default_rng([args.seed, k]), params=params
        )
        t1 = time.process_time()
        n_bytes += len(encode_png(image))
        t2 = time.process_time()
        render_cpu += t1 - t0
        png_cpu += t2 - t1
    wall = time.perf_counter() - wall0
    cpu = render_cpu + png_cpu

    small = dataclasses.replace(params, n_identities=args.identities, n_scenes=10)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = write_synthfaces(
            Path(tmp) / "raw", Path(tmp) / "scenes", small, seed=args.seed, progress=False
        )
        e2e_wall, e2e_cpu = time.perf_counter() - t0, time.process_time() - c0

    out = {
        "benchmark": "synth",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "size_px": args.size,
        "images": args.images,
        "images_per_s_per_core": round(args.images / cpu, 1),
        "render_ms_cpu": round(1e3 * render_cpu / args.images, 3),
        "png_ms_cpu": round(1e3 * png_cpu / args.images, 3),
        "images_per_s_wall": round(args.images / wall, 1),
        "png_kb_mean": round(n_bytes / args.images / 1024, 1),
        "goal_images_per_s_per_core": 300,
        "write_synthfaces": {
            "identities": summary.n_identities,
            "images": summary.n_images,
            "scenes": summary.n_scenes,
            "wall_s": round(e2e_wall, 2),
            "cpu_s": round(e2e_cpu, 2),
            "images_per_s_wall": round((summary.n_images + summary.n_scenes) / e2e_wall, 1),
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
