"""What the ``train_demographics`` stage trains on, the net it starts from, what it reports.

The labeled training and validation crops joined by the synthetic training people of
``data/demographic_population`` (:func:`demographic_data`), the demographic net
(:func:`build_demographic_net`), the report (:func:`demographic_report`) and the inference
checkpoint (:func:`demographic_payload`). The stage
(:mod:`visage_ml.app.stages.train_demographics`) runs
:func:`~visage_ml.training.loop.fit_demographics` between them and writes the files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from visage_ml.config import GENDERS, GROUPS, ProjectPaths, TrainDemographicsParams
from visage_ml.data import eval_population as populations
from visage_ml.data.processed import images_at_size, load_processed, train_val_images
from visage_ml.io import md5_file
from visage_ml.models.checkpoint import inference_payload
from visage_ml.models.demographic import create_demographic_net
from visage_ml.preprocess import PreprocessSpec
from visage_ml.privacy.datakeys import DataKeys
from visage_ml.training.config import (
    MSG_NO_LABELS,
    DemographicTargets,
    FitResult,
    seed_everything,
)

logger = logging.getLogger(__name__)

KIND = "demographics"
LABELS = ("age", "gender", "group")
MSG_FEW_IMAGES = "the training split holds fewer than 2 images; add data and re-run"
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


@dataclass
class DemographicData:
    """The array the loop reads, each split's rows in it and targets, with what was left out.

    ``population`` describes the synthetic training people that joined the training rows
    (``images``, ``identities``, ``faces_md5``: None without them).
    """

    data_md5: str
    images: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    targets: DemographicTargets
    val_targets: DemographicTargets
    coverage: dict[str, Any]
    unlabeled: dict[str, int]
    population: dict[str, Any]

    @property
    def age_stats(self) -> tuple[float, float]:
        """``(mean, std)`` of the known training ages the net's age output is scaled by
        (45 and 18 years without any; the std at least 1)."""
        known_age = self.targets.age[self.targets.known[0]]
        age_mean = float(np.mean(known_age)) if known_age.size else 45.0
        age_std = max(1.0, float(np.std(known_age))) if known_age.size else 18.0
        return age_mean, age_std

    def fit_inputs(self) -> dict[str, Any]:
        """The data keywords of :func:`~visage_ml.training.loop.fit_demographics` (no
        validation arguments without validation rows)."""
        has_val = len(self.val_rows) > 0
        return {
            "images": self.images,
            "rows": self.train_rows,
            "targets": self.targets,
            "val_rows": self.val_rows if has_val else None,
            "val_targets": self.val_targets if has_val else None,
        }


def demographic_data(paths: ProjectPaths, input_size: int) -> DemographicData:
    """Decrypt the training and validation subjects' crops (only theirs) at ``input_size``.

    Only images with at least one demographic label are kept (unlabeled sets train the
    embedder only); the synthetic training people join the training rows, validation stays
    the data's.

    Raises
    ------
    ValueError
        Fewer than 2 training images, or fewer than 2 labeled ones; an altered or foreign
        population (:func:`training_population`).
    """
    data = load_processed(paths, splits=("train", "val"))
    all_train, all_val = data.split("train"), data.split("val")
    if len(all_train) < 2:
        raise ValueError(MSG_FEW_IMAGES)
    train, targets, train_cov = labeled_rows(all_train)
    val, val_targets, val_cov = labeled_rows(all_val)
    if len(train) < 2:
        raise ValueError(
            MSG_NO_LABELS.format(
                n=len(all_train), split="training", genders=list(GENDERS), groups=list(GROUPS)
            )
        )
    images, train_rows, val_rows = train_val_images(data, train, val, input_size)
    pop = training_population(paths)
    pop_doc: dict[str, Any] = {"images": 0, "identities": 0, "faces_md5": None}
    if pop is not None and len(pop.faces):
        extra, _ = images_at_size(pop.faces, np.arange(len(pop.faces)), input_size)
        train_rows = np.concatenate([train_rows, len(images) + np.arange(len(extra))])
        images = np.concatenate([images, extra])
        frame = pd.concat([train[list(LABELS)], pop.manifest[list(LABELS)]], ignore_index=True)
        targets = DemographicTargets.from_manifest(frame)
        pop_doc = {
            "images": len(extra),
            "identities": int(pop.manifest["pid"].nunique()),
            "faces_md5": md5_file(paths.demographic_population / populations.FACES_FILE),
        }
    return DemographicData(
        data_md5=data.data_md5,
        images=images,
        train_rows=train_rows,
        val_rows=val_rows,
        targets=targets,
        val_targets=val_targets,
        coverage={"train": train_cov, "val": val_cov},
        unlabeled={"train": len(all_train) - len(train), "val": len(all_val) - len(val)},
        population=pop_doc,
    )


def build_demographic_net(
    p: TrainDemographicsParams, data: DemographicData, *, seed: int
) -> nn.Module:
    """The net as ``p`` says, its age output scaled by ``data``'s training ages, initialised
    after seeding every generator with ``seed``."""
    seed_everything(seed)
    age_mean, age_std = data.age_stats
    return create_demographic_net(
        p.backbone, input_size=p.input_size, age_mean=age_mean, age_std=age_std
    )


def demographic_report(
    result: FitResult, data: DemographicData, *, t_start: float
) -> dict[str, Any]:
    """``reports/train_demographics.json``: validation metrics, sizes, label coverage;
    ``stage_seconds`` counts from ``t_start`` (``time.perf_counter``)."""
    val = result.val_metrics
    return {
        "final_loss": result.final_loss,
        "val_gender_accuracy": val.get("val_gender_accuracy"),
        "val_group_accuracy": val.get("val_group_accuracy"),
        "val_age_mae": val.get("val_age_mae"),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "images_per_second": result.images_per_second,
        "train_seconds": result.train_seconds,
        "warmup_seconds": result.warmup_seconds,
        "stage_seconds": time.perf_counter() - t_start,
        "numerics": result.numerics,
        "train_images": len(data.train_rows),
        "train_images_synthetic": data.population["images"],
        "train_identities_synthetic": data.population["identities"],
        "val_images": len(data.val_rows),
        "train_images_unlabeled": data.unlabeled["train"],
        "val_images_unlabeled": data.unlabeled["val"],
        "label_coverage": data.coverage,
    }


def demographic_payload(
    p: TrainDemographicsParams,
    result: FitResult,
    data: DemographicData,
    *,
    report: Mapping[str, Any],
    section: Mapping[str, Any],
) -> dict[str, Any]:
    """The inference checkpoint of the best epoch's weights (``models/demographics.pt``)."""
    age_mean, age_std = data.age_stats
    return inference_payload(
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
