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

import json
import logging
import time
from typing import Any

from visage_ml.app.stages._train_common import epoch_logger, save_outputs, stage_main, tracked_run
from visage_ml.config import ProjectPaths, load_params, to_dict
from visage_ml.models.weights import PIN_FILE
from visage_ml.training.config import LoopConfig
from visage_ml.training.distributed import DistContext, shutdown, worker_env
from visage_ml.training.embedder import (
    KIND,
    build_embedder,
    embedder_data,
    embedder_payload,
    embedder_report,
)
from visage_ml.training.launch import check_launch, join_run, launch_workers
from visage_ml.training.loop import fit_embedder
from visage_ml.training.resume import shared_resume_point

logger = logging.getLogger(__name__)
STAGE = "train_embedder"
MODULE = "visage_ml.app.stages.train_embedder"
METRIC_KEYS = ("loss", "val_tar", "images_per_s", "lr")


def run(paths: ProjectPaths | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train the embedder as ``params.yaml`` says; return the metrics written to the report.

    With ``distributed.nproc`` > 1 and outside torchrun, start ``nproc`` torchrun workers of
    this stage, wait for them and return the report rank 0 wrote.
    """
    t_start = time.perf_counter()
    paths = paths or ProjectPaths.discover()
    params = load_params(paths.params)
    p, d = params.train_embedder, params.train_embedder.distributed
    if worker_env() is None and d.nproc > 1:
        check_launch(batch_size=p.batch_size, nproc=d.nproc, device=p.device)
        launch_workers(MODULE, nproc=d.nproc, root=paths.root)
        return json.loads((paths.reports / f"{STAGE}.json").read_text())
    ctx = join_run(d, device=p.device)
    if ctx is not None and not ctx.is_main:  # one log of the run: rank 0's (errors: every rank)
        logging.getLogger("visage_ml").setLevel(logging.WARNING)
    try:
        return _train(paths, params, ctx=ctx, progress=progress, t_start=t_start)
    finally:
        if ctx is not None:
            shutdown()


def _train(
    paths: ProjectPaths, params: Any, *, ctx: DistContext | None, progress: bool, t_start: float
) -> dict[str, Any]:
    p, seed = params.train_embedder, params.project.seed
    main = ctx is None or ctx.is_main
    # Training decrypts only the training and validation subjects' crops.
    data = embedder_data(paths, p.input_size)
    section = to_dict(p)
    # The networks first: a bad backbone or init file fails before stale checkpoints are cleared.
    model, head = build_embedder(
        p, num_classes=data.num_classes, seed=seed, pin_file=paths.root / PIN_FILE
    )
    fp, ckpt_dir, resume = shared_resume_point(paths, KIND, section, data.data_md5, seed, ctx=ctx)
    config = LoopConfig.from_params(p, seed=seed, progress=progress, desc=KIND, sampling=p.sampling)
    with tracked_run(
        paths, stage=STAGE, kind=KIND, section=p, seed=seed, data_md5=data.data_md5, main=main
    ):
        on_epoch_end = epoch_logger(
            kind=KIND, folder=ckpt_dir, fingerprint=fp, metric_keys=METRIC_KEYS
        )
        result = fit_embedder(
            model,
            head,
            **data.fit_inputs(),
            val_far=p.val_far,
            config=config,
            resume=resume,
            on_epoch_end=on_epoch_end if main else None,
            dist=ctx,
        )
        report = embedder_report(result, data, val_far=p.val_far, t_start=t_start, ctx=ctx)
        if not main:
            return report
        payload = embedder_payload(p, result, data, report=report, section=section)
        save_outputs(paths, stage=STAGE, kind=KIND, payload=payload, report=report, result=result)
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
    logger.info(
        "embedder %s: best val TAR@FAR=%g %s after %d epochs (%s), %.0f images/s",
        payload["model_version"],
        p.val_far,
        best,
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
