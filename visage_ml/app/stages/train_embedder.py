"""Stage ``train_embedder``: the identity embedder on the training split, early-stopped on val.

Reads ``data/processed/{faces.sealed, manifest.parquet}``; writes ``models/embedder.pt``,
resume checkpoints in ``models/checkpoints/embedder/`` and ``reports/train_embedder.json``;
logs params and per-epoch metrics to MLflow. Paths are those of ``dvc.yaml``.

With ``train_embedder.distributed.nproc`` > 1 the stage (the same ``dvc.yaml`` command) starts
itself again as ``torchrun --standalone --nproc-per-node=nproc -m
visage_ml.app.stages.train_embedder`` and waits: each worker decrypts the crops into its own
memory, trains on its share of every global batch under DDP, and rank 0 alone writes the
checkpoints, the model, the report and the MLflow run (docs/gpu.md, "Several processes").
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import numpy as np
import torch

from visage_ml.app.stages._train_common import (
    epoch_logger,
    launch_workers,
    save_outputs,
    stage_main,
)
from visage_ml.config import GROUPS, ProjectPaths, flatten, load_params, to_dict
from visage_ml.data.processed import load_processed, train_val_images
from visage_ml.models.backbones import create_backbone
from visage_ml.models.checkpoint import inference_payload
from visage_ml.models.heads import create_head
from visage_ml.models.weights import PIN_FILE, PUBLISHED, verify_installed
from visage_ml.preprocess import PreprocessSpec
from visage_ml.tracking import stage_run
from visage_ml.training.config import LoopConfig, resolve_device, seed_everything
from visage_ml.training.distributed import (
    MSG_TOO_FEW_GPUS,
    DistContext,
    check_global_batch,
    init_from_env,
    shutdown,
    worker_env,
)
from visage_ml.training.loop import fit_embedder
from visage_ml.training.resume import resume_point

logger = logging.getLogger(__name__)
STAGE = "train_embedder"
KIND = "embedder"
MODULE = "visage_ml.app.stages.train_embedder"
MSG_WORLD_MISMATCH = (
    "torchrun started {world} processes but train_embedder.distributed.nproc is {nproc}; set "
    "nproc to {world} (the stage starts torchrun itself when nproc > 1: run it plainly)"
)
MSG_RESUME_DISAGREES = (
    "rank {rank} found another resume checkpoint than rank 0 in models/checkpoints/embedder "
    "(changed while starting?); run the stage again"
)


def run(paths: ProjectPaths | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train the embedder as ``params.yaml`` says; return the metrics written to the report.

    With ``distributed.nproc`` > 1 and outside torchrun, start ``nproc`` torchrun workers of
    this stage, wait for them and return the report rank 0 wrote.
    """
    t_start = time.perf_counter()
    paths = paths or ProjectPaths.discover()
    params = load_params(paths.params)
    p = params.train_embedder
    d = p.distributed
    place = worker_env()
    world = place[1] if place is not None else 1
    if place is None and d.nproc > 1:
        check_global_batch(p.batch_size, d.nproc)
        gpus = torch_gpus(p.device)
        if gpus is not None and d.nproc > gpus:
            raise ValueError(MSG_TOO_FEW_GPUS.format(world=d.nproc, gpus=gpus))
        launch_workers(MODULE, nproc=d.nproc, root=paths.root)
        return json.loads((paths.reports / f"{STAGE}.json").read_text())
    if world != d.nproc:
        raise ValueError(MSG_WORLD_MISMATCH.format(world=world, nproc=d.nproc))
    ctx = None
    if world > 1:
        ctx = init_from_env(
            device=p.device,
            backend=d.backend,
            timeout_s=d.timeout_s,
            sync_batchnorm=d.sync_batchnorm,
        )
        if not ctx.is_main:  # one log of the run: rank 0's (errors still show from every rank)
            logging.getLogger("visage_ml").setLevel(logging.WARNING)
    try:
        return _train(paths, params, ctx=ctx, progress=progress, t_start=t_start)
    finally:
        if ctx is not None:
            shutdown()


def torch_gpus(device: str) -> int | None:
    """How many GPUs a run on ``device`` would use processes on (``None``: the CPU)."""
    return torch.cuda.device_count() if resolve_device(device).type == "cuda" else None


def _train(
    paths: ProjectPaths,
    params: Any,
    *,
    ctx: DistContext | None,
    progress: bool,
    t_start: float,
) -> dict[str, Any]:
    p = params.train_embedder
    seed = params.project.seed
    main = ctx is None or ctx.is_main
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
    if ctx is None:
        fp, ckpt_dir, resume = resume_point(paths, KIND, section, data.data_md5, seed)
    else:
        # Rank 0 clears stale checkpoints before the others read the folder.
        if main:
            fp, ckpt_dir, resume = resume_point(paths, KIND, section, data.data_md5, seed)
        ctx.barrier()
        if not main:
            fp, ckpt_dir, resume = resume_point(
                paths, KIND, section, data.data_md5, seed, clear_stale=False
            )
        # Ranks that started from different epochs would wait for each other's collectives.
        mine = None if resume is None else int(resume["epoch"])
        if ctx.from_main(mine) != mine:
            raise RuntimeError(MSG_RESUME_DISAGREES.format(rank=ctx.rank))

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
    tracked = (
        stage_run(paths, STAGE, params=mlflow_params, tags=tags)
        if main
        else contextlib.nullcontext()
    )
    with tracked:
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
            )
            if main
            else None,
            dist=ctx,
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
        if ctx is not None:
            report["processes"] = ctx.world_size
        if not main:
            return report
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
    if worker_env() is not None:
        # Heavy optional dependency: torch's elastic error file, so torchrun reports a worker's
        # traceback with its failure.
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(stage_main)(run)
    return stage_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
