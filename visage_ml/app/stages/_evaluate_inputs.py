"""Read side of the ``evaluate`` stage: processed data, the exported models, lineage, inference.

Everything :func:`visage_ml.evaluation.protocol.evaluate` needs, read from the project's files
into an :class:`~visage_ml.evaluation.protocol.EvaluationInputs`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from visage_ml.config import EvaluateParams, ProjectPaths
from visage_ml.data.prepare import PROCESSED_FILES
from visage_ml.dvcops import git_revision
from visage_ml.evaluation.protocol import (
    DemographicModel,
    Embedder,
    EvaluationInputs,
    infer,
    select_test_rows,
)
from visage_ml.inference import OnnxModel, recorded_sha256
from visage_ml.io import md5_file

logger = logging.getLogger(__name__)

MSG_MISSING = "{path} is missing; run `dvc repro {stage}` first"


def _require(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(MSG_MISSING.format(path=path, stage=stage))
    return path


def _model(paths: ProjectPaths, kind: str) -> OnnxModel:
    return OnnxModel(
        _require(paths.models / f"{kind}.onnx", "export"),
        expected_kind=kind,
        expected_sha256=recorded_sha256(paths.reports, kind),
    )


def load_models(paths: ProjectPaths) -> tuple[OnnxModel, OnnxModel]:
    """Both exported ONNX models, each refused unless it is the file export recorded.

    The SHA-256 in ``reports/export.json`` is checked when one is recorded
    (:class:`visage_ml.inference.ModelHashError`, a ``ValueError``, when the file differs).
    """
    return _model(paths, "embedder"), _model(paths, "demographics")


def _read_optional(path: Path, columns: list[str], missing: str | None) -> pd.DataFrame | None:
    if path.is_file():
        return pd.read_parquet(path, columns=columns)
    if missing:
        logger.warning("%s is missing: %s", path, missing)
    return None


def lineage(
    paths: ProjectPaths, embedder: Embedder, demographic: DemographicModel
) -> dict[str, str]:
    """MD5 of each processed file (``faces.u8.npy``: the evaluated data), models, git revision."""
    processed = paths.processed
    files = {
        f"data/processed/{name}": md5_file(processed / name)
        for name in PROCESSED_FILES
        if (processed / name).is_file()
    }
    return {
        "eval_data_md5": files.get("data/processed/faces.u8.npy", "unknown"),
        **{f"md5 {k}": v for k, v in files.items()},
        "embedder_model_version": embedder.model_version,
        "embedder_data_md5": embedder.data_md5,
        "demographics_model_version": demographic.model_version,
        "demographics_data_md5": demographic.data_md5,
        "git_rev": git_revision(paths.root, mark_dirty=True),
    }


def read_inputs(
    paths: ProjectPaths,
    cfg: EvaluateParams,
    *,
    embedder: Embedder | None = None,
    demographic: DemographicModel | None = None,
) -> EvaluationInputs:
    """The test crops run through both models, with their manifest rows and lineage.

    Models not given are the exported ONNX files (:func:`load_models`).
    """
    processed = paths.processed
    manifest = pd.read_parquet(_require(processed / "manifest.parquet", "prepare"))
    faces = np.load(_require(processed / "faces.u8.npy", "prepare"), mmap_mode="r")
    test = select_test_rows(manifest, faces.shape[0])
    if embedder is None or demographic is None:
        loaded_emb, loaded_dem = load_models(paths)
        embedder = embedder or loaded_emb
        demographic = demographic or loaded_dem
    rows = test["row"].to_numpy(dtype=np.int64)
    emb, pred = infer(
        faces, rows, embedder=embedder, demographic=demographic, batch_size=cfg.batch_size
    )
    return EvaluationInputs(
        test=test,
        embeddings=emb,
        predictions=pred,
        demographic_labels=demographic.labels,
        lineage=lineage(paths, embedder, demographic),
        detection=_read_optional(
            processed / "detection.parquet",
            ["detected", "group", "gender"],
            "no detector miss rates",
        ),
        lfw_pairs=_read_optional(
            paths.protocols / "lfw_pairs.parquet",
            ["fold", "image_id_a", "image_id_b", "same"],
            None,
        ),
    )
