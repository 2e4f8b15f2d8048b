"""What the ``train_embedder`` stage trains on, the networks it starts from, what it reports.

The processed training and validation crops with their identity classes and sampling strata
(:func:`embedder_data`), the backbone and margin head (:func:`build_embedder`), the report
(:func:`embedder_report`) and the inference checkpoint (:func:`embedder_payload`). The stage
(:mod:`visage_ml.app.stages.train_embedder`) runs :func:`~visage_ml.training.loop.fit_embedder`
between them and writes the files.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from visage_ml.config import GROUPS, ProjectPaths, TrainEmbedderParams
from visage_ml.data.processed import load_processed, train_val_images
from visage_ml.models.backbones import create_backbone
from visage_ml.models.checkpoint import inference_payload
from visage_ml.models.heads import create_head
from visage_ml.models.weights import PUBLISHED, verify_installed
from visage_ml.preprocess import PreprocessSpec
from visage_ml.training.config import FitResult, seed_everything
from visage_ml.training.distributed import DistContext

KIND = "embedder"
MSG_FEW_IDENTITIES = (
    "the training split holds fewer than 2 identities; add data or lower "
    "prepare.split.val / prepare.split.test, then run `dvc repro`"
)


@dataclass
class EmbedderData:
    """The array the loop reads, each split's rows in it, identity classes and strata."""

    data_md5: str
    images: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    labels: np.ndarray
    val_labels: np.ndarray
    groups: np.ndarray

    @property
    def num_classes(self) -> int:
        """Identities of the training split (the head's classes)."""
        return int(self.labels.max()) + 1

    def fit_inputs(self) -> dict[str, Any]:
        """The data keywords of :func:`~visage_ml.training.loop.fit_embedder` (no validation
        arguments without validation rows)."""
        has_val = len(self.val_rows) > 0
        return {
            "images": self.images,
            "rows": self.train_rows,
            "labels": self.labels,
            "groups": self.groups,
            "val_rows": self.val_rows if has_val else None,
            "val_labels": self.val_labels if has_val else None,
        }


def embedder_data(paths: ProjectPaths, input_size: int) -> EmbedderData:
    """Decrypt the training and validation subjects' crops (only theirs) at ``input_size``.

    Identity classes are the training split's pids in sorted order (pids are pseudonymous).
    Unlabeled subjects train the embedder too; for group_balanced sampling they form one more
    stratum (-1).

    Raises
    ------
    ValueError
        The training split holds fewer than 2 identities.
    """
    data = load_processed(paths, splits=("train", "val"))
    train, val = data.split("train"), data.split("val")
    if train["pid"].nunique() < 2:
        raise ValueError(MSG_FEW_IDENTITIES)
    _, labels = np.unique(train["pid"].to_numpy(), return_inverse=True)
    _, val_labels = np.unique(val["pid"].to_numpy(), return_inverse=True)
    groups = train["group"].map({g: i for i, g in enumerate(GROUPS)}).fillna(-1).to_numpy(np.int64)
    images, train_rows, val_rows = train_val_images(data, train, val, input_size)
    return EmbedderData(
        data_md5=data.data_md5,
        images=images,
        train_rows=train_rows,
        val_rows=val_rows,
        labels=labels,
        val_labels=val_labels,
        groups=groups,
    )


def build_embedder(
    p: TrainEmbedderParams, *, num_classes: int, seed: int, pin_file: Path
) -> tuple[nn.Module, nn.Module]:
    """``(backbone, head)`` as ``p`` says, initialised after seeding every generator with ``seed``.

    Published initial weights (``p.init``) are checked against their pin in ``pin_file`` first:
    a swapped or corrupted file is refused before it shapes a model
    (:class:`~visage_ml.models.weights.WeightsHashError`).
    """
    if p.init in PUBLISHED:
        verify_installed(p.init, pin_file=pin_file)
    seed_everything(seed)
    model = create_backbone(
        p.backbone, embedding_dim=p.embedding_dim, input_size=p.input_size, init=p.init
    )
    head = create_head(
        p.head,
        embedding_dim=p.embedding_dim,
        num_classes=num_classes,
        s=p.margin.s,
        m1=p.margin.m1,
        m2=p.margin.m2,
        m3=p.margin.m3,
    )
    return model, head


def embedder_report(
    result: FitResult,
    data: EmbedderData,
    *,
    val_far: float,
    t_start: float,
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    """``reports/train_embedder.json``: the run's metrics and sizes (the number of
    ``processes`` when data-parallel); ``stage_seconds`` counts from ``t_start``
    (``time.perf_counter``)."""
    report: dict[str, Any] = {
        "final_loss": result.final_loss,
        "best_val_tar_at_far": result.best_metric,
        "val_far": val_far,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "images_per_second": result.images_per_second,
        "train_seconds": result.train_seconds,
        "warmup_seconds": result.warmup_seconds,
        "stage_seconds": time.perf_counter() - t_start,
        "numerics": result.numerics,
        "train_identities": data.num_classes,
        "train_images": len(data.train_rows),
        "val_images": len(data.val_rows),
    }
    if ctx is not None:
        report["processes"] = ctx.world_size
    return report


def embedder_payload(
    p: TrainEmbedderParams,
    result: FitResult,
    data: EmbedderData,
    *,
    report: Mapping[str, Any],
    section: Mapping[str, Any],
) -> dict[str, Any]:
    """The inference checkpoint of the best epoch's weights (``models/embedder.pt``)."""
    return inference_payload(
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
