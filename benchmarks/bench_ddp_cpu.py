"""Two-process DDP (gloo, CPU) against one process: the same final validation metric?

Goal (issue 19): with the same seed and global batch, two torchrun processes reach the same
final validation TAR@FAR as one process, within the difference one process shows against itself
when only its thread count changes (float32 summation order; docs/gpu.md "Several processes").
Trains the default backbone (MobileFaceNet) on learnable synthetic faces (each identity a smooth
colour pattern, its images noisy and shifted in brightness) with the real loop
(:func:`~visage_ml.training.loop.fit_embedder`): one process on 1 thread, one process on 2
threads, and two processes on 1 thread each. Prints one JSON object.

    python benchmarks/bench_ddp_cpu.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visage_ml.models.backbones import create_backbone
from visage_ml.models.heads import create_head
from visage_ml.training import distributed
from visage_ml.training.config import LoopConfig, seed_everything
from visage_ml.training.loop import fit_embedder


def faces(n_ids: int, per_id: int, size: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 faces (n, size, size, 3), identity (n,))``: learnable, not real faces."""
    rng = np.random.default_rng(0)
    protos = torch.from_numpy(rng.uniform(0, 255, (n_ids, 3, 6, 6)).astype(np.float32))
    base = F.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)
    base = base.permute(0, 2, 3, 1).numpy()
    ids = np.repeat(np.arange(n_ids), per_id)
    shift = rng.uniform(-noise, noise, (len(ids), 1, 1, 1))
    pixels = base[ids] + rng.normal(0, noise, (len(ids), size, size, 3)) + shift
    return np.clip(pixels, 0, 255).astype(np.uint8), ids


class Float64(torch.nn.Module):
    """``inner`` in float64, so that summation order moves results by ~1e-16 instead of ~1e-7
    (in float32 AdamW turns last-bit differences into whole learning-rate steps)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.double())


def train(args: argparse.Namespace, dist: distributed.DistContext | None) -> dict[str, Any]:
    imgs, ids = faces(args.identities, args.per_identity, args.size, args.noise)
    n_val = args.identities // 5
    train_rows, val_rows = np.where(ids >= n_val)[0], np.where(ids < n_val)[0]
    seed_everything(args.seed)
    model = create_backbone("mobilefacenet", embedding_dim=64, input_size=args.size)
    head = create_head("arcface", embedding_dim=64, num_classes=args.identities - n_val, s=32.0)
    if args.fp64:
        model, head = Float64(model), head.double()
    t0 = time.perf_counter()
    last: dict[str, Any] = {}
    result = fit_embedder(
        model,
        head,
        images=imgs,
        rows=train_rows,
        labels=ids[train_rows] - n_val,
        val_rows=val_rows,
        val_labels=ids[val_rows],
        config=LoopConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=6e-3,
            progress=False,
            seed=args.seed,
            device="cpu",
        ),
        on_epoch_end=lambda record, state: last.update(state["modules"]["model"]),
        dist=dist,
    )
    # The final weights (rank 0 sees the epoch-end state), not the best epoch's.
    weights = {k: v.double() for k, v in last.items() if v.is_floating_point()}
    return {
        "val_tar_per_epoch": [round(h["val_tar"], 4) for h in result.history],
        "final_val_tar": result.history[-1]["val_tar"],
        "final_loss": result.final_loss,
        "seconds": round(time.perf_counter() - t0, 1),
        "weights": weights,
    }


def worker(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    ctx = distributed.init_from_env(device="cpu", backend="gloo", timeout_s=600)
    try:
        out = train(args, ctx)
        if ctx.is_main:
            torch.save(out, args.worker)
        ctx.barrier()
    finally:
        distributed.shutdown()
    return 0


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--identities", type=int, default=50)
    ap.add_argument("--per-identity", type=int, default=8)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32, help="global batch")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--noise", type=float, default=60.0, help="pixel noise std (difficulty)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fp64", action="store_true", help="train in float64 (isolates the algorithm)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    forwarded = [
        f"--identities={args.identities}",
        f"--per-identity={args.per_identity}",
        f"--size={args.size}",
        f"--batch-size={args.batch_size}",
        f"--epochs={args.epochs}",
        f"--noise={args.noise}",
        f"--seed={args.seed}",
        *(["--fp64"] if args.fp64 else []),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one = train(args, None)
    torch.set_num_threads(2)
    one_2t = train(args, None)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="visage-ddp-") as tmp:
        out = Path(tmp) / "two.pt"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node=2", str(Path(__file__).resolve()), *forwarded]
        cmd += ["--worker", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(json.dumps({"error": proc.stderr[-3000:]}))
            return 1
        two = torch.load(out, weights_only=False)
    self_noise = abs(one["final_val_tar"] - one_2t["final_val_tar"])
    diff = abs(one["final_val_tar"] - two["final_val_tar"])
    # Tolerance: what one process differs from itself on another thread count, and never less
    # than one genuine pair of the validation split.
    genuine_pairs = (args.identities // 5) * args.per_identity * (args.per_identity - 1) // 2
    tolerance = max(self_noise, 1.0 / genuine_pairs)
    runs = {"one_process_1_thread": one, "one_process_2_threads": one_2t, "two_processes": two}
    print(
        json.dumps(
            {
                "benchmark": "ddp_cpu_equivalence",
                "backend": "gloo",
                "precision": "fp64" if args.fp64 else "fp32",
                "global_batch": args.batch_size,
                "train_images": (args.identities - args.identities // 5) * args.per_identity,
                "epochs": args.epochs,
                "runs": {
                    k: {key: v for key, v in r.items() if key != "weights"} for k, r in runs.items()
                },
                "final_val_tar_diff_two_vs_one": round(diff, 4),
                "final_val_tar_diff_threads": round(self_noise, 4),
                "tolerance": round(tolerance, 4),
                "weights_max_diff_two_vs_one": _max_diff(one["weights"], two["weights"]),
                "weights_max_diff_threads": _max_diff(one["weights"], one_2t["weights"]),
                "within_tolerance": diff <= tolerance + 1e-12,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
