"""Stage ``train_demographics``: the separate age / gender / group network.

Reads ``data/processed/{faces.sealed, manifest.parquet}`` and the synthetic training people of
``data/demographic_population`` (balanced per skin-tone group x gender; never the evaluation
population, whose sealed crops do not open here) (crops resized once to
``train_demographics.input_size``); writes ``models/demographics.pt``, resume checkpoints in
``models/checkpoints/demographics/`` and ``reports/train_demographics.json``; logs params and
per-epoch metrics to MLflow. It never loads the identity embedder.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from visage_ml.app.stages._train_common import epoch_logger, save_outputs, stage_main, tracked_run
from visage_ml.config import ProjectPaths, load_params, to_dict
from visage_ml.training.config import LoopConfig
from visage_ml.training.demographics import (
    KIND,
    build_demographic_net,
    demographic_data,
    demographic_payload,
    demographic_report,
)
from visage_ml.training.loop import fit_demographics
from visage_ml.training.resume import resume_point

logger = logging.getLogger(__name__)
STAGE = "train_demographics"
METRIC_KEYS = (
    "loss",
    "val_gender_accuracy",
    "val_group_accuracy",
    "val_age_mae",
    "images_per_s",
    "lr",
)


def run(paths: ProjectPaths | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train the demographic net as ``params.yaml`` says; return the report's metrics."""

    t_start = time.perf_counter()
    paths = paths or ProjectPaths.discover()
    params = load_params(paths.params)
    p, seed = params.train_demographics, params.project.seed
    # Training decrypts only the training and validation subjects' crops; balanced synthetic
    # training people join them (validation stays the data's).
    data = demographic_data(paths, p.input_size)
    section = to_dict(p)
    resume_section = {**section, "population": data.population["faces_md5"]}
    # The network first: a bad backbone fails before stale checkpoints are cleared.
    model = build_demographic_net(p, data, seed=seed)
    fp, ckpt_dir, resume = resume_point(paths, KIND, resume_section, data.data_md5, seed)
    config = LoopConfig.from_params(p, seed=seed, progress=progress, desc=KIND)
    with tracked_run(paths, stage=STAGE, kind=KIND, section=p, seed=seed, data_md5=data.data_md5):
        result = fit_demographics(
            model,
            **data.fit_inputs(),
            group_balanced_loss=p.group_balanced_loss,
            config=config,
            resume=resume,
            on_epoch_end=epoch_logger(
                kind=KIND, folder=ckpt_dir, fingerprint=fp, metric_keys=METRIC_KEYS
            ),
        )
        report = demographic_report(result, data, t_start=t_start)
        payload = demographic_payload(p, result, data, report=report, section=section)
        save_outputs(paths, stage=STAGE, kind=KIND, payload=payload, report=report, result=result)
    logger.info(
        "demographics %s: val gender acc %s, group acc %s, age MAE %s after %d epochs",
        payload["model_version"],
        report["val_gender_accuracy"],
        report["val_group_accuracy"],
        report["val_age_mae"],
        result.epochs_run,
    )
    return report


def main() -> int:
    """Entry point of ``python -m visage_ml.app.stages.train_demographics`` (the exit status)."""
    return stage_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
