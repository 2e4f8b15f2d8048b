"""Stage ``train_embedder``: the identity embedder on the training split, early-stopped on val.

Reads ``data/processed/{faces.sealed, manifest.parquet}``; writes ``models/embedder.pt``,
resume checkpoints in ``models/checkpoints/embedder/`` and ``reports/train_embedder.json``;
logs params and per-epoch metrics to MLflow. Paths are those of ``dvc.yaml``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from visage_ml.app.stages._train_common import epoch_logger, save_outputs, stage_main
from visage_ml.config import GROUPS, ProjectPaths, flatten, load_params, to_dict
from visage_ml.data.processed import load_processed, train_val_images
from visage_ml.models.backbones import create_backbone
from visage_ml.models.checkpoint import inference_payload
from visage_ml.models.heads import create_head
from visage_ml.models.weights import PIN_FILE, PUBLISHED, verify_installed
from visage_ml.preprocess import PreprocessSpec
from visage_ml.tracking import stage_run
from visage_ml.training.config import LoopConfig, seed_everything
from visage_ml.training.loop import fit_embedder
from visage_ml.training.resume import resume_point

logger = logging.getLogger(__name__)
STAGE = "train_embedder"
KIND = "embedder"


def run(paths: ProjectPaths | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train the embedder as ``params.yaml`` says; return the metrics written to the report."""
    t_start = time.perf_counter()
    paths = paths or ProjectPaths.discover()
    params = load_params(paths.params)
    p = params.train_embedder
    seed = params.project.seed
    # Training decrypts only the training and validation subjects' crops.
    data = load_processed(paths, splits=("train", "val"))
    train, val = data.split("train"), data.split("val")
    if train["pid"].nunique() < 2:
        raise ValueError(
            "the training split holds fewer than 2 identities; add data or lower "
            "prepare.split.val / prepare.split.test, then run `dvc repro`"
        )
    # Identity classes of the training split, in sorted pid order (pids are pseudonymous).
    _, labels = np.unique(train["pid"].to_numpy(), return_inverse=True)
    _, val_labels = np.unique(val["pid"].to_numpy(), return_inverse=True)
    # Unlabeled subjects train the embedder too; for group_balanced sampling they form one
    # more stratum (-1).
    groups = train["group"].map({g: i for i, g in enumerate(GROUPS)}).fillna(-1).to_numpy(np.int64)
    images, train_rows, val_rows = train_val_images(data, train, val, p.input_size)
    section = to_dict(p)
    fp, ckpt_dir, resume = resume_point(paths, KIND, section, data.data_md5, seed)

    if p.init in PUBLISHED:
        # A swapped or corrupted published file is refused before it shapes a model.
        verify_installed(p.init, pin_file=paths.root / PIN_FILE)
    seed_everything(seed)
    model = create_backbone(
        p.backbone, embedding_dim=p.embedding_dim, input_size=p.input_size, init=p.init
    )
    head = create_head(
        p.head,
        embedding_dim=p.embedding_dim,
        num_classes=int(labels.max()) + 1,
        s=p.margin.s,
        m1=p.margin.m1,
        m2=p.margin.m2,
        m3=p.margin.m3,
    )
    config = LoopConfig.from_params(p, seed=seed, progress=progress, desc=KIND, sampling=p.sampling)
    mlflow_params = {**flatten(p, STAGE), "project.seed": seed}
    tags = {"visage.data_md5": data.data_md5, "visage.kind": KIND}
    with stage_run(paths, STAGE, params=mlflow_params, tags=tags):
        result = fit_embedder(
            model,
            head,
            images=images,
            rows=train_rows,
            labels=labels,
            groups=groups,
            val_rows=val_rows if len(val_rows) else None,
            val_labels=val_labels if len(val_rows) else None,
            val_far=p.val_far,
            config=config,
            resume=resume,
            on_epoch_end=epoch_logger(
                kind=KIND,
                folder=ckpt_dir,
                fingerprint=fp,
                metric_keys=("loss", "val_tar", "images_per_s", "lr"),
            ),
        )
        report = {
            "final_loss": result.final_loss,
            "best_val_tar_at_far": result.best_metric,
            "val_far": p.val_far,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "images_per_second": result.images_per_second,
            "train_seconds": result.train_seconds,
            "stage_seconds": time.perf_counter() - t_start,
            "train_identities": int(labels.max()) + 1,
            "train_images": len(train_rows),
            "val_images": len(val_rows),
        }
        payload = inference_payload(
            kind=KIND,
            config={
                "backbone": p.backbone,
                "embedding_dim": p.embedding_dim,
                "input_size": p.input_size,
            },
            preprocess=PreprocessSpec(input_size=p.input_size).to_dict(),
            state_dict=result.best_state,
            data_md5=data.data_md5,
            labels={"group": list(GROUPS)},
            metrics={k: v for k, v in report.items() if v is not None},
            params=section,
        )
        save_outputs(paths, stage=STAGE, kind=KIND, payload=payload, report=report, result=result)
    logger.info(
        "embedder %s: best val TAR@FAR=%g %s after %d epochs (%s), %.0f images/s",
        payload["model_version"],
        p.val_far,
        "n/a" if result.best_metric is None else f"{result.best_metric:.4f}",
        result.epochs_run,
        result.stopped,
        result.images_per_second,
    )
    return report


def main() -> int:
    """Entry point of ``python -m visage_ml.app.stages.train_embedder``; returns the exit status."""
    return stage_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
