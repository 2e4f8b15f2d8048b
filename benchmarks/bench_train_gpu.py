"""Training data path on GPUs: the real loop vs the same steps on tensors already on the device.

Goal (issues: training, 19): the real loop (uint8 memmap -> background gather into pinned
buffers -> non-blocking copy -> on-device augmentation -> step) reaches >= 0.90 of the images/s
of the same model, head, optimizer and batch fed a random tensor that already sits on the device
(channels-last, the same autocast), for InceptionResnetV1 at 160 px, batch 256 per GPU, in bf16
and fp32 -- on one GPU, and on all GPUs of the machine under torchrun DDP (NCCL, synchronised
batch norm, batch 256 per GPU so the global batch is 256 x GPUs). Both are timed between CUDA
synchronisations after warm-up steps. Prints one JSON object; without a CUDA device it prints
``{"skipped": ...}`` and exits 0.

    python benchmarks/bench_train_gpu.py                      # every GPU: the goal
    python benchmarks/bench_train_gpu.py --nproc 1            # one GPU only
    python benchmarks/bench_train_gpu.py --device cpu --quick # the code path on the CPU (gloo)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visage_ml.models.backbones import create_backbone
from visage_ml.models.heads import create_head
from visage_ml.training import distributed
from visage_ml.training.config import (
    LoopConfig,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from visage_ml.training.loop import fit_embedder, lr_factor, make_optimizer

GOAL = 0.90
CLASSES = 1000
MSG_NO_CUDA = (
    "no CUDA device: the goal is measured on GPUs. Run it where one is; "
    "`--device cpu --quick` exercises the same code on the CPU"
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memmap(folder: Path, n: int, size: int) -> Path:
    """A ``faces.u8.npy``-style file of random crops (opened by each process as the stage does)."""
    path = folder / "faces.u8.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    rng = np.random.default_rng(0)
    for i in range(0, n, 512):
        arr[i : i + 512] = rng.integers(0, 256, size=arr[i : i + 512].shape, dtype=np.uint8)
    arr.flush()
    del arr
    return path


def _models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    seed_everything(0)
    model = create_backbone(
        args.backbone, embedding_dim=args.embedding_dim, input_size=args.input_size
    )
    head = create_head("arcface", embedding_dim=args.embedding_dim, num_classes=CLASSES)
    return model, head


def real_loop(
    args: argparse.Namespace,
    images: np.ndarray,
    device: torch.device,
    precision: str,
    ctx: distributed.DistContext | None = None,
) -> float:
    """Images/s (all processes) of :func:`~visage_ml.training.loop.fit_embedder`, timed over
    steps ``warmup .. warmup + steps``."""
    model, head = _models(args)
    marks: dict[str, float] = {}
    world = 1 if ctx is None else ctx.world_size

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
        batch_size=args.batch_size * world,
        lr=1e-3,
        warmup_epochs=0.1,
        device=device.type,
        precision=precision,
        max_steps=args.warmup + args.steps,
        progress=False,
        desc="bench",
        compile=args.compile,
    )
    fit_embedder(
        model,
        head,
        images=images,
        rows=np.arange(len(images)),
        labels=labels,
        config=config,
        on_step=on_step,
        dist=ctx,
    )
    return args.steps * args.batch_size * world / (marks["t1"] - marks["t0"])


class _RandomTask:
    """The embedder's loss on whatever batch it is given (labels drawn once, on the device)."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module, labels: torch.Tensor):
        self.model, self.head, self.labels = model, head, labels

    def loss(self, x: torch.Tensor, idx: Any, device: torch.device) -> torch.Tensor:
        return self.head(self.model(x), self.labels)


def synthetic_loop(
    args: argparse.Namespace,
    device: torch.device,
    precision: str,
    ctx: distributed.DistContext | None = None,
) -> float:
    """Images/s (all processes) of the same step on a standardised random batch already on the
    device; under DDP with the same wrapping and batch norm as the real loop."""
    model, head = _models(args)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the real loop sets it
    for m in (model, head):
        m.to(device=device, memory_format=torch.channels_last).train()
        if args.compile:
            m.compile()
    world = 1 if ctx is None else ctx.world_size
    if ctx is not None and ctx.sync_batchnorm and world > 1:
        distributed.convert_batchnorm(model, cuda=device.type == "cuda")
    amp = resolve_precision(precision, device)
    opt = make_optimizer([model, head], lr=1e-3, weight_decay=0.05)
    total = args.warmup + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup_steps=1, total_steps=total)
    )
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (args.batch_size,), device=device)
    task = _RandomTask(model, head, y)
    step_fn = (
        distributed.wrap_task(task, {"model": model, "head": head}, ctx)
        if ctx is not None
        else None
    )
    t0 = 0.0
    for step in range(total):
        if step == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        ctx_amp = (
            torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        )
        with ctx_amp:
            loss = task.loss(x, None, device) if step_fn is None else step_fn(x, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _sync(device)
    return args.steps * args.batch_size * world / (time.perf_counter() - t0)


def _measure(
    args: argparse.Namespace,
    images: np.ndarray,
    device: torch.device,
    ctx: distributed.DistContext | None,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for precision in args.precisions:
        # Alternate the two loops, `rounds` times each: a GPU host's speed drifts from one
        # run to the next by more than the difference measured (seen: 20 % on an H200).
        synthetic, real = [], []
        for _ in range(args.rounds):
            synthetic.append(synthetic_loop(args, device, precision, ctx))
            real.append(real_loop(args, images, device, precision, ctx))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        s_med, r_med = statistics.median(synthetic), statistics.median(real)
        results[precision] = {
            "real_images_per_s": round(r_med, 1),
            "synthetic_images_per_s": round(s_med, 1),
            "ratio": round(r_med / s_med, 3),
            "real_rounds": [round(v, 1) for v in real],
            "synthetic_rounds": [round(v, 1) for v in synthetic],
        }
    return results


def worker(args: argparse.Namespace) -> int:
    """One torchrun process of the all-devices measurement; rank 0 writes ``args.worker``."""
    if device_is_cpu(args):
        torch.set_num_threads(1)
    ctx = distributed.init_from_env(device=args.device, timeout_s=600)
    try:
        images = np.load(args.images, mmap_mode="r")
        results = _measure(args, images, ctx.device, ctx)
        if ctx.is_main:
            Path(args.worker).write_text(json.dumps(results))
        ctx.barrier()
    finally:
        distributed.shutdown()
    return 0


def device_is_cpu(args: argparse.Namespace) -> bool:
    return args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())


def _all_devices(args: argparse.Namespace, images: Path, out: Path) -> dict[str, Any]:
    """The measurement in ``args.nproc`` torchrun processes (one per GPU); rank 0's results."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        str(Path(__file__).resolve()),
        *_forward(args),
        "--worker",
        str(out),
        "--images",
        str(images),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": f"torchrun exited with {proc.returncode}", "stderr": proc.stderr[-3000:]}
    return json.loads(out.read_text())


def _forward(args: argparse.Namespace) -> list[str]:
    """The resolved settings, for the worker processes."""
    return [
        f"--device={args.device}",
        f"--backbone={args.backbone}",
        f"--input-size={args.input_size}",
        f"--batch-size={args.batch_size}",
        f"--embedding-dim={args.embedding_dim}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--rounds={args.rounds}",
        *(["--compile"] if args.compile else []),
        "--precisions",
        *args.precisions,
    ]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="tiny model and few steps (CPU smoke)")
    ap.add_argument("--backbone", default=None, help="default inception_resnet_v1")
    ap.add_argument("--input-size", type=int, default=None, help="default 160 (32 quick)")
    ap.add_argument("--batch-size", type=int, default=None, help="per process; default 256")
    ap.add_argument("--embedding-dim", type=int, default=None, help="default 512 (32 quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30; 3 quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 8; 1 quick)")
    ap.add_argument("--rounds", type=int, default=None, help="alternations (default 3; 1 quick)")
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile the modules (LoopConfig.compile)"
    )
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument(
        "--nproc", type=int, default=None, help="processes of the all-devices run (GPUs; 2 cpu)"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--images", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    args.backbone = args.backbone or ("mobilefacenet" if quick else "inception_resnet_v1")
    args.input_size = args.input_size or (32 if quick else 160)
    args.batch_size = args.batch_size or (8 if quick else 256)
    args.embedding_dim = args.embedding_dim or (32 if quick else 512)
    args.steps = args.steps or (3 if quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 8)
    args.rounds = args.rounds or (1 if quick else 3)
    if device_is_cpu(args):  # no bf16 autocast timing on the CPU
        args.precisions = [p for p in args.precisions if p != "bf16"] or ["fp32"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        return worker(args)
    if args.device in ("auto", "cuda") and not torch.cuda.is_available():
        print(json.dumps({"skipped": MSG_NO_CUDA, "goal_ratio": GOAL}))
        return 0
    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    if on_cpu:
        torch.set_num_threads(1)  # one core per process, as each torchrun worker gets
    gpus = torch.cuda.device_count() if not on_cpu else 0
    args.nproc = args.nproc or (gpus if not on_cpu else 2)
    n_images = args.batch_size * max(1, args.nproc) * (args.warmup + args.steps)
    with tempfile.TemporaryDirectory(prefix="visage-bench-") as tmp:
        path = _memmap(Path(tmp), n_images, args.input_size)
        images = np.load(path, mmap_mode="r")
        single = _measure(args, images, device, None)
        del images
        everyone = _all_devices(args, path, Path(tmp) / "all.json") if args.nproc > 1 else single
    ratios = [r["ratio"] for r in single.values()]
    ratios += [r["ratio"] for k, r in everyone.items() if k in args.precisions]
    out = {
        "benchmark": "train_data_path",
        "device": torch.cuda.get_device_name(device) if not on_cpu else "cpu",
        "gpus": gpus,
        "backbone": args.backbone,
        "input_size": args.input_size,
        "batch_size_per_process": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "compile": args.compile,
        "torch": torch.__version__,
        "one_device": single,
        "all_devices": {"processes": args.nproc, "backend": "gloo" if on_cpu else "nccl"}
        | everyone,
        "goal_ratio": GOAL,
        "meets_goal": "error" not in everyone and all(r >= GOAL for r in ratios),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
