"""CPU embedding inference: the exported ONNX model (ONNX Runtime) vs torch eager, same weights.

Goal (issue: export): ONNX Runtime >= 2x the images/s of torch eager on the CPU. Both runtimes
get the same thread count and the same standardised NCHW batch (preprocessing is outside the
timed region for both); torch eager runs under ``torch.inference_mode`` in its faster memory
format (contiguous or channels_last, both measured), ONNX Runtime with all graph optimisations
through :class:`visage_ml.inference.OnnxModel`, as serving runs it. Calls of the candidates are
interleaved so background load hits all alike; speedups use median times. Networks come from the
backbone registry with random weights (speed does not depend on them). Prints one JSON object.

    python benchmarks/bench_embed_inference.py                       # default compact + IRv1
    python benchmarks/bench_embed_inference.py --backbone inception_resnet_v1 --input-size 160 \
        --threads 2 --iters 10 --batch-sizes 1 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from visage_ml.config import ProjectPaths, TrainEmbedderParams, load_params
from visage_ml.dvcops import git_revision
from visage_ml.export import to_onnx
from visage_ml.inference import OnnxModel
from visage_ml.models.backbones import create_backbone
from visage_ml.preprocess import PreprocessSpec, to_model_input

REPO = Path(__file__).resolve().parents[1]
GOAL = 2.0
# facenet-pytorch's InceptionResnetV1: 160 px crops, 512-d embeddings.
IRV1 = ("inception_resnet_v1", 160, 512)


def _time(fns: dict[str, Callable[[], Any]], *, iters: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns``, calls interleaved round-robin.

    Interleaving exposes every candidate to the same background load, which matters on a
    shared machine.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    return times


def bench_backbone(
    name: str,
    *,
    input_size: int,
    embedding_dim: int,
    threads: int,
    iters: int,
    warmup: int,
    batch_sizes: list[int],
    opset: int,
) -> dict[str, Any]:
    """Export ``name`` (random init) and time both runtimes on each batch size."""
    torch.manual_seed(0)
    model = create_backbone(name, embedding_dim=embedding_dim, input_size=input_size).eval()
    spec = PreprocessSpec(input_size=input_size)
    lineage = {
        "visage.backbone": name,
        "visage.model_version": "benchmark-random-init",
        "visage.data_md5": "none",
        "visage.git_rev": git_revision(REPO),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        to_onnx(model, path, spec=spec, kind="embedder", opset=opset, metadata=lineage)
        onnx_bytes = path.stat().st_size
        session = OnnxModel(path, expected_kind="embedder", intra_op_threads=threads)

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(max(batch_sizes), input_size, input_size, 3), dtype=np.uint8)
    x_all = to_model_input(crops, spec)
    result: dict[str, Any] = {
        "backbone": name,
        "input_size": input_size,
        "embedding_dim": embedding_dim,
        "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "onnx_bytes": onnx_bytes,
        "batches": {},
    }
    contiguous = model
    channels_last = create_backbone(name, embedding_dim=embedding_dim, input_size=input_size)
    channels_last.load_state_dict(model.state_dict())
    channels_last = channels_last.eval().to(memory_format=torch.channels_last)
    for bs in batch_sizes:
        x = x_all[:bs]
        xt = torch.from_numpy(x)
        xt_cl = xt.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref = contiguous(xt).numpy()
            times = _time(
                {
                    "contiguous": partial(contiguous, xt),
                    "channels_last": partial(channels_last, xt_cl),
                    "onnx": partial(session.run, x),
                },
                iters=iters,
                warmup=warmup,
            )
        got = session.run(x)["embedding"]
        median = {k: statistics.median(v) for k, v in times.items()}
        best = min(("contiguous", "channels_last"), key=median.__getitem__)
        eager_ips, ort_ips = bs / median[best], bs / median["onnx"]
        result["batches"][str(bs)] = {
            "eager_images_per_s": round(eager_ips, 1),
            "eager_memory_format": best,
            "onnx_images_per_s": round(ort_ips, 1),
            "speedup": round(ort_ips / eager_ips, 2),
            "ms_per_batch_median": {k: round(v * 1e3, 2) for k, v in median.items()},
            "ms_per_batch_min": {k: round(min(v) * 1e3, 2) for k, v in times.items()},
            "max_abs_diff": float(np.abs(ref - got).max()),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", help="one registered backbone (default: compact + IRv1)")
    ap.add_argument("--input-size", type=int, help="crop side in px (default: per backbone)")
    ap.add_argument("--embedding-dim", type=int, help="embedding size (default: per backbone)")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--iters", type=int, default=10, help="timed calls per measurement")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--opset", type=int, help="ONNX opset (default: params.yaml export.opset)")
    args = ap.parse_args()

    params_file = ProjectPaths.discover(REPO).params
    params = load_params(params_file) if params_file.exists() else None
    compact = params.train_embedder if params else TrainEmbedderParams()
    opset = args.opset or (params.export.opset if params else 17)
    defaults = {compact.backbone: (compact.input_size, compact.embedding_dim)}
    defaults.setdefault(IRV1[0], IRV1[1:])
    if args.backbone:
        size, dim = defaults.get(args.backbone, (compact.input_size, compact.embedding_dim))
        configs = [(args.backbone, args.input_size or size, args.embedding_dim or dim)]
    else:
        configs = [
            (n, args.input_size or s, args.embedding_dim or d) for n, (s, d) in defaults.items()
        ]

    torch.set_num_threads(args.threads)
    results = [
        bench_backbone(
            name,
            input_size=size,
            embedding_dim=dim,
            threads=args.threads,
            iters=args.iters,
            warmup=args.warmup,
            batch_sizes=args.batch_sizes,
            opset=opset,
        )
        for name, size, dim in configs
    ]
    speedups = [b["speedup"] for r in results for b in r["batches"].values()]
    out = {
        "benchmark": "embed_inference_cpu",
        "goal_speedup": GOAL,
        "meets_goal": all(s >= GOAL for s in speedups),
        "min_speedup": min(speedups),
        "threads": args.threads,
        "iters": args.iters,
        "opset": opset,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
