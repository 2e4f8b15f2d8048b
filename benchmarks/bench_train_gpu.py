"""Training data path on a GPU: the real loop vs the same steps on tensors already on the device.

Goal (issue: training): the real loop (uint8 memmap -> background gather into pinned buffers ->
non-blocking copy -> on-device augmentation -> step) reaches >= 0.90 of the images/s of the same
model, head, optimizer and batch fed a random tensor that already sits on the device, for
InceptionResnetV1 at 160 px, batch 256, in bf16 autocast and in fp32. Both are timed between
CUDA synchronisations after warm-up steps. Prints one JSON object; without a CUDA device it
prints ``{"skipped": "no CUDA device"}`` and exits 0.

    python benchmarks/bench_train_gpu.py                                  # H100: the goal
    python benchmarks/bench_train_gpu.py --device cpu --steps 2           # tiny smoke run here
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visage_ml.models.backbones import create_backbone
from visage_ml.models.heads import create_head
from visage_ml.training.config import (
    LoopConfig,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from visage_ml.training.loop import fit_embedder, lr_factor, make_optimizer

GOAL = 0.90
CLASSES = 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memmap(folder: Path, n: int, size: int) -> np.ndarray:
    """A ``faces.u8.npy``-style file of random crops, opened as the stage opens it."""
    path = folder / "faces.u8.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    rng = np.random.default_rng(0)
    for i in range(0, n, 512):
        arr[i : i + 512] = rng.integers(0, 256, size=arr[i : i + 512].shape, dtype=np.uint8)
    arr.flush()
    del arr
    return np.load(path, mmap_mode="r")


def _models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    seed_everything(0)
    model = create_backbone(
        args.backbone, embedding_dim=args.embedding_dim, input_size=args.input_size
    )
    head = create_head("arcface", embedding_dim=args.embedding_dim, num_classes=CLASSES)
    return model, head


def real_loop(
    args: argparse.Namespace, images: np.ndarray, device: torch.device, precision: str
) -> float:
    """Images/s of :func:`~visage_ml.training.loop.fit_embedder` over steps warmup..warmup+steps."""
    model, head = _models(args)
    marks: dict[str, float] = {}

    def on_step(step: int) -> None:
        if step == args.warmup:
            _sync(device)
            marks["t0"] = time.perf_counter()
        elif step == args.warmup + args.steps:
            _sync(device)
            marks["t1"] = time.perf_counter()

    labels = np.random.default_rng(1).integers(0, CLASSES, len(images))
    config = LoopConfig(
        epochs=1,
        batch_size=args.batch_size,
        lr=1e-3,
        warmup_epochs=0.1,
        device=str(device),
        precision=precision,
        max_steps=args.warmup + args.steps,
        progress=False,
        desc="bench",
    )
    fit_embedder(
        model,
        head,
        images=images,
        rows=np.arange(len(images)),
        labels=labels,
        config=config,
        on_step=on_step,
    )
    return args.steps * args.batch_size / (marks["t1"] - marks["t0"])


def synthetic_loop(args: argparse.Namespace, device: torch.device, precision: str) -> float:
    """Images/s of the same step on a standardised random batch already on the device."""
    model, head = _models(args)
    for m in (model, head):
        m.to(device=device, memory_format=torch.channels_last).train()
    amp = resolve_precision(precision, device)
    opt = make_optimizer([model, head], lr=1e-3, weight_decay=0.05)
    total = args.warmup + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup_steps=1, total_steps=total)
    )
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (args.batch_size,), device=device)
    t0 = 0.0
    for step in range(total):
        if step == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        ctx = (
            torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        )
        with ctx:
            loss = head(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--backbone", default="inception_resnet_v1")
    ap.add_argument("--input-size", type=int, default=None, help="default 160 (96 on cpu)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 (8 on cpu)")
    ap.add_argument("--embedding-dim", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 8; 1 on cpu)")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    args = ap.parse_args(argv)

    if args.device in ("auto", "cuda") and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device", "goal_ratio": GOAL}))
        return 0
    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    args.input_size = args.input_size or (96 if on_cpu else 160)
    args.batch_size = args.batch_size or (8 if on_cpu else 256)
    args.warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 8)
    if on_cpu and "bf16" in args.precisions:
        args.precisions = [p for p in args.precisions if p != "bf16"] or ["fp32"]

    n_images = args.batch_size * (args.warmup + args.steps)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="visage-bench-") as tmp:
        images = _memmap(Path(tmp), n_images, args.input_size)
        for precision in args.precisions:
            synthetic = synthetic_loop(args, device, precision)
            real = real_loop(args, images, device, precision)
            results[precision] = {
                "real_images_per_s": round(real, 1),
                "synthetic_images_per_s": round(synthetic, 1),
                "ratio": round(real / synthetic, 3),
            }
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out = {
        "benchmark": "train_data_path",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone": args.backbone,
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "results": results,
        "goal_ratio": GOAL,
        "meets_goal": all(r["ratio"] >= GOAL for r in results.values()),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
