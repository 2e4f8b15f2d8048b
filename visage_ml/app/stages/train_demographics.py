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

import numpy as np
import pandas as pd

from visage_ml.app.stages._train_common import epoch_logger, save_outputs, stage_main
from visage_ml.config import GENDERS, GROUPS, ProjectPaths, flatten, load_params, to_dict
from visage_ml.data import eval_population as populations
from visage_ml.data.processed import images_at_size, load_processed, train_val_images
from visage_ml.io import md5_file
from visage_ml.models.checkpoint import inference_payload
from visage_ml.models.demographic import create_demographic_net
from visage_ml.preprocess import PreprocessSpec
from visage_ml.privacy.datakeys import DataKeys
from visage_ml.tracking import stage_run
from visage_ml.training.config import (
    MSG_NO_LABELS,
    DemographicTargets,
    LoopConfig,
    seed_everything,
)
from visage_ml.training.loop import fit_demographics
from visage_ml.training.resume import resume_point

logger = logging.getLogger(__name__)
STAGE = "train_demographics"
KIND = "demographics"
LABELS = ("age", "gender", "group")
MSG_NO_POPULATION = (
    "%s is missing: the demographic model trains on the processed data alone; run `dvc repro "
    "demographic_population` for its balanced synthetic training people"
)
MSG_EVALUATION_PEOPLE = (
    "the demographic training population lists {n} identities of the evaluation population: "
    "it would be trained on the people that measure it; re-run `dvc repro demographic_population`"
)


def labeled_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, DemographicTargets, dict]:
    """The manifest rows with at least one demographic label, their targets, the coverage."""
    targets = DemographicTargets.from_manifest(frame)
    coverage = targets.coverage()
    keep = targets.labeled()
    if keep.all():
        return frame, targets, coverage
    return frame[keep].reset_index(drop=True), targets.take(keep), coverage


def training_population(paths: ProjectPaths) -> populations.Population | None:
    """The synthetic training people (``data/demographic_population``), or None without them.

    Raises
    ------
    ValueError
        The folder holds another population's files (the evaluation population's crops do not
        open as these; rows with an evaluation id are refused), or they were altered.
    """
    folder = paths.demographic_population
    if not (folder / populations.MANIFEST_FILE).is_file():
        logger.warning(MSG_NO_POPULATION, folder)
        return None
    pop = populations.read(folder, DataKeys.for_project(paths), purpose=populations.TRAINING)
    ids = pop.manifest["pid"].astype(str)
    evaluation = ids.str.startswith(populations.EVALUATION.id_prefix)
    if evaluation.any():
        raise ValueError(MSG_EVALUATION_PEOPLE.format(n=ids[evaluation].nunique()))
    return pop


def run(paths: ProjectPaths | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train the demographic net as ``params.yaml`` says; return the report's metrics."""

    t_start = time.perf_counter()
    paths = paths or ProjectPaths.discover()
    params = load_params(paths.params)
    p = params.train_demographics
    seed = params.project.seed
    # Training decrypts only the training and validation subjects' crops.
    data = load_processed(paths, splits=("train", "val"))
    all_train, all_val = data.split("train"), data.split("val")
    if len(all_train) < 2:
        raise ValueError("the training split holds fewer than 2 images; add data and re-run")
    # Only images with at least one demographic label: unlabeled sets train the embedder only.
    train, targets, train_cov = labeled_rows(all_train)
    val, val_targets, val_cov = labeled_rows(all_val)
    if len(train) < 2:
        raise ValueError(
            MSG_NO_LABELS.format(
                n=len(all_train), split="training", genders=list(GENDERS), groups=list(GROUPS)
            )
        )
    images, train_rows, val_rows = train_val_images(data, train, val, p.input_size)
    # Balanced synthetic training people beside the data (validation stays the data's).
    pop = training_population(paths)
    pop_doc: dict[str, Any] = {"images": 0, "identities": 0, "faces_md5": None}
    if pop is not None and len(pop.faces):
        extra, _ = images_at_size(pop.faces, np.arange(len(pop.faces)), p.input_size)
        train_rows = np.concatenate([train_rows, len(images) + np.arange(len(extra))])
        images = np.concatenate([images, extra])
        frame = pd.concat([train[list(LABELS)], pop.manifest[list(LABELS)]], ignore_index=True)
        targets = DemographicTargets.from_manifest(frame)
        pop_doc = {
            "images": len(extra),
            "identities": int(pop.manifest["pid"].nunique()),
            "faces_md5": md5_file(paths.demographic_population / populations.FACES_FILE),
        }
    section = to_dict(p)
    fp, ckpt_dir, resume = resume_point(
        paths, KIND, {**section, "population": pop_doc["faces_md5"]}, data.data_md5, seed
    )

    seed_everything(seed)
    known_age = targets.age[targets.known[0]]
    age_mean = float(np.mean(known_age)) if known_age.size else 45.0
    age_std = max(1.0, float(np.std(known_age))) if known_age.size else 18.0
    model = create_demographic_net(
        p.backbone, input_size=p.input_size, age_mean=age_mean, age_std=age_std
    )
    config = LoopConfig.from_params(p, seed=seed, progress=progress, desc=KIND)
    mlflow_params = {**flatten(p, STAGE), "project.seed": seed}
    tags = {"visage.data_md5": data.data_md5, "visage.kind": KIND}
    with stage_run(paths, STAGE, params=mlflow_params, tags=tags):
        result = fit_demographics(
            model,
            images=images,
            rows=train_rows,
            targets=targets,
            val_rows=val_rows if len(val_rows) else None,
            val_targets=val_targets if len(val_rows) else None,
            group_balanced_loss=p.group_balanced_loss,
            config=config,
            resume=resume,
            on_epoch_end=epoch_logger(
                kind=KIND,
                folder=ckpt_dir,
                fingerprint=fp,
                metric_keys=(
                    "loss",
                    "val_gender_accuracy",
                    "val_group_accuracy",
                    "val_age_mae",
                    "images_per_s",
                    "lr",
                ),
            ),
        )
        val = result.val_metrics
        report = {
            "final_loss": result.final_loss,
            "val_gender_accuracy": val.get("val_gender_accuracy"),
            "val_group_accuracy": val.get("val_group_accuracy"),
            "val_age_mae": val.get("val_age_mae"),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "images_per_second": result.images_per_second,
            "train_seconds": result.train_seconds,
            "stage_seconds": time.perf_counter() - t_start,
            "train_images": len(train_rows),
            "train_images_synthetic": pop_doc["images"],
            "train_identities_synthetic": pop_doc["identities"],
            "val_images": len(val_rows),
            "train_images_unlabeled": len(all_train) - len(train),
            "val_images_unlabeled": len(all_val) - len(val),
            "label_coverage": {"train": train_cov, "val": val_cov},
        }
        payload = inference_payload(
            kind=KIND,
            config={
                "backbone": p.backbone,
                "input_size": p.input_size,
                "age_mean": age_mean,
                "age_std": age_std,
                "age_bands": list(p.age_bands),
            },
            preprocess=PreprocessSpec(input_size=p.input_size).to_dict(),
            state_dict=result.best_state,
            data_md5=data.data_md5,
            labels={"gender": list(GENDERS), "group": list(GROUPS), "age_bands": list(p.age_bands)},
            metrics={k: v for k, v in report.items() if v is not None},
            params=section,
        )
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
