"""Wall time of the whole ``evaluate`` stage on a fake set of the default size.

Goal (issue: evaluate): <= 60 s on the 2-core machine for ~300 identities (25% test, ~900 test
crops of 112 px), 200k impostor pairs and 200 identity-bootstrap rounds, MLflow logging and
model registration included, in a fresh temporary project (so the MLflow store is created too).

The data are the synthetic crops of ``tests/unit/evaluate_fakes.py``. The embedder is either
that module's linear ONNX graph (``--embedder linear``: fast, keeps identity structure so the
metrics are meaningful) or the default backbone from the registry with random weights, exported
by :func:`visage_ml.export.to_onnx` (``--embedder backbone``: realistic inference cost). Prints
one JSON object.

    python benchmarks/bench_evaluate.py
    python benchmarks/bench_evaluate.py --embedder backbone --bootstrap 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from visage_ml.app.stages.evaluate import run
from visage_ml.config import ProjectPaths, load_params
from visage_ml.export import to_onnx
from visage_ml.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 60.0


def _backbone_embedder(root: Path, params: Any) -> None:
    """Replace ``models/embedder.onnx`` with the configured backbone (random weights)."""
    # Deferred: torch (imported by the backbones) is slow to load and only this option needs it.
    import torch

    from visage_ml.models.backbones import create_backbone

    cfg = params.train_embedder
    torch.manual_seed(0)
    model = create_backbone(
        cfg.backbone, embedding_dim=cfg.embedding_dim, input_size=cfg.input_size
    ).eval()
    to_onnx(
        model,
        root / "models" / "embedder.onnx",
        spec=PreprocessSpec(input_size=cfg.input_size),
        kind="embedder",
        opset=params.export.opset,
        metadata={
            "visage.backbone": cfg.backbone,
            "visage.model_version": "benchmark-random-init",
            "visage.data_md5": "none",
            "visage.git_rev": "none",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=300)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--impostor-pairs", type=int, default=200_000)
    parser.add_argument("--embedder", choices=("linear", "backbone"), default="linear")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    import evaluate_fakes  # the test helpers' folder is on sys.path only from here on

    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    try:
        shutil.copy(REPO / "params.yaml", tmp / "params.yaml")
        params = load_params(
            tmp / "params.yaml",
            overrides={
                "evaluate.bootstrap": args.bootstrap,
                "evaluate.impostor_pairs": args.impostor_pairs,
            },
        )
        t = time.perf_counter()
        evaluate_fakes.make_dataset(
            tmp,
            n_identities=args.identities,
            images=(4, 20),
            size=args.size,
            test_share=params.prepare.split.test,
            noise=30.0,
        )
        evaluate_fakes.write_models(tmp, size=args.size, dim=128)
        if args.embedder == "backbone":
            _backbone_embedder(tmp, params)
        setup = time.perf_counter() - t
        t = time.perf_counter()
        outcome = run(ProjectPaths(tmp), params)
        total = time.perf_counter() - t
        result = {
            "benchmark": "evaluate_stage",
            "embedder": args.embedder,
            "identities": args.identities,
            "test_identities": outcome.fairness["n_identities"],
            "test_images": outcome.fairness["n_images"],
            "genuine_pairs": outcome.metrics["verification"]["n_genuine_pairs"],
            "impostor_pairs": outcome.metrics["verification"]["n_impostor_pairs"],
            "bootstrap_rounds": args.bootstrap,
            "setup_seconds": round(setup, 2),
            "stage_seconds": round(total, 2),
            "parts_seconds": {k: round(v, 2) for k, v in outcome.seconds.items()},
            "goal_seconds": GOAL_SECONDS,
            "meets_goal": total <= GOAL_SECONDS,
            "auc": outcome.metrics["verification"]["auc"],
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        }
        if args.keep:
            result["project"] = str(tmp)
        print(json.dumps(result))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
