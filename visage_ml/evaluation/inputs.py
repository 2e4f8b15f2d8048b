"""What an evaluation reads: processed data, the exported models, lineage, inference.

Everything :func:`visage_ml.evaluation.protocol.evaluate` needs, read from the project's files
into an :class:`~visage_ml.evaluation.protocol.EvaluationInputs`: the test split of
``data/processed/{faces.sealed, manifest.parquet, detection.parquet}`` joined by the synthetic
evaluation population of ``data/eval_population/`` (:func:`read_inputs`), run through
``models/{embedder,demographics}.onnx``, with ``data/protocols/lfw_pairs.parquet`` when present;
and what serving will be configured with (:func:`served_context`). The ``evaluate`` stage reads
through :func:`evaluation_inputs`, the benchmarks through :func:`read_inputs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from visage_ml.config import EvaluateParams, Params, ProjectPaths
from visage_ml.data import eval_population as evalpop
from visage_ml.data.prepare import FACES_FILE, MANIFEST_FILE, PROCESSED_FILES
from visage_ml.data.processed import load_processed
from visage_ml.dvcops import git_revision
from visage_ml.evaluation.protocol import (
    DemographicModel,
    Embedder,
    EvaluationInputs,
    infer,
    select_test_rows,
)
from visage_ml.evaluation.serving_reports import ServedContext
from visage_ml.inference import OnnxModel, recorded_sha256
from visage_ml.io import md5_file
from visage_ml.privacy.datakeys import DataKeys

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


# Columns of detection.parquet that evaluation reads; all but the first three come from current
# prepare runs (LFW misses, fallback crops, sources, people, the second look) and are read when
# present.
DETECTION_COLUMNS = (
    "detected",
    "group",
    "gender",
    "image_id",
    "split",
    "source",
    "fallback",
    "pid",
    "second_look",
)
DETECTION_REQUIRED = 3


def _read_optional(
    path: Path, columns: list[str], missing: str | None, *, required: int | None = None
) -> pd.DataFrame | None:
    if path.is_file():
        if required is not None:
            present = set(pq.read_schema(path).names)
            columns = columns[:required] + [c for c in columns[required:] if c in present]
        return pd.read_parquet(path, columns=columns)
    if missing:
        logger.warning("%s is missing: %s", path, missing)
    return None


def lineage(
    paths: ProjectPaths, embedder: Embedder, demographic: DemographicModel
) -> dict[str, str]:
    """MD5 of each processed file (``faces.sealed``: the evaluated test split), models, git
    revision."""
    processed = paths.processed
    files = {
        f"data/processed/{name}": md5_file(processed / name)
        for name in PROCESSED_FILES
        if (processed / name).is_file()
    }
    return {
        "eval_data_md5": files.get(f"data/processed/{FACES_FILE}", "unknown"),
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
    _require(processed / MANIFEST_FILE, "prepare")
    _require(processed / FACES_FILE, "prepare")
    # Decrypted in memory, the test subjects' crops only (the evaluation purpose's).
    data = load_processed(paths, splits=("test",))
    manifest, faces = data.manifest, data.faces
    test = select_test_rows(manifest, faces.shape[0])
    if embedder is None or demographic is None:
        loaded_emb, loaded_dem = load_models(paths)
        embedder = embedder or loaded_emb
        demographic = demographic or loaded_dem
    rows = test["row"].to_numpy(dtype=np.int64)
    emb, pred = infer(
        faces, rows, embedder=embedder, demographic=demographic, batch_size=cfg.batch_size
    )
    detection = _read_optional(
        processed / "detection.parquet",
        list(DETECTION_COLUMNS),
        "no detector miss rates",
        required=DETECTION_REQUIRED,
    )
    pooled = with_population(
        paths, cfg, test, emb, pred, detection, embedder=embedder, demographic=demographic
    )
    return EvaluationInputs(
        test=pooled.test,
        embeddings=pooled.embeddings,
        predictions=pooled.predictions,
        demographic_labels=demographic.labels,
        lineage=_with_population_md5(lineage(paths, embedder, demographic), pooled.lineage),
        detection=pooled.detection,
        lfw_pairs=_read_optional(
            paths.protocols / "lfw_pairs.parquet",
            ["fold", "image_id_a", "image_id_b", "same"],
            None,
        ),
        calibration_embeddings=pooled.calibration_embeddings,
        calibration_ids=pooled.calibration_ids,
    )


def _with_population_md5(base: dict[str, str], population: dict[str, str]) -> dict[str, str]:
    """The lineage, its ``eval_data_md5`` covering the evaluation population when it was pooled:
    the MD5 of the test split's and the population's crop files' MD5s (``eval_population_md5``
    is the latter), so that a new population reads as another evaluated set."""
    out = {**base, **population}
    pop = population.get(f"md5 data/eval_population/{evalpop.FACES_FILE}")
    if pop:
        out["eval_population_md5"] = pop
        joined = f"{base['eval_data_md5']}+{pop}".encode()
        out["eval_data_md5"] = hashlib.md5(joined, usedforsecurity=False).hexdigest()
    return out


@dataclass
class Pooled:
    """The test split joined by the evaluation population's measured part."""

    test: pd.DataFrame
    embeddings: np.ndarray
    predictions: dict[str, np.ndarray]
    detection: pd.DataFrame | None
    lineage: dict[str, str]
    calibration_embeddings: np.ndarray | None = None
    calibration_ids: np.ndarray | None = None


def with_population(
    paths: ProjectPaths,
    cfg: EvaluateParams,
    test: pd.DataFrame,
    emb: np.ndarray,
    pred: dict[str, np.ndarray],
    detection: pd.DataFrame | None,
    *,
    embedder: Embedder,
    demographic: DemographicModel,
) -> Pooled:
    """Add the synthetic evaluation population (``data/eval_population``) to the evaluated set.

    Its ``measure`` part joins the test split (source ``synthfaces:evaluation``, role
    ``evaluation``); its ``calibration`` part only fits the score calibration. Without the
    population (a project from before the stage) the test split is evaluated alone.
    """
    folder = paths.eval_population
    if not (folder / evalpop.MANIFEST_FILE).is_file():
        logger.warning(
            "%s is missing: fairness is decided on the test split alone (run `dvc repro "
            "eval_population`)",
            folder,
        )
        return Pooled(test, emb, pred, detection, {})
    pop = evalpop.read(folder, DataKeys.for_project(paths))
    rows = np.arange(len(pop.faces), dtype=np.int64)
    pop_emb, pop_pred = infer(
        pop.faces, rows, embedder=embedder, demographic=demographic, batch_size=cfg.batch_size
    )
    part = pop.manifest["part"].astype(str).to_numpy()
    measure = part == evalpop.MEASURE
    extra = pop.manifest.loc[measure].assign(split="test", row=-1)
    # The population's rows say where they come from even when the test split's do not
    # (a manifest from before sources: its rows read "unknown").
    columns = [c for c in test.columns if c in extra.columns]
    columns += [c for c in ("source", "role") if c not in columns]
    pooled = pd.concat([test, extra[columns]], ignore_index=True)
    for col in ("gender", "group", "source", "role"):
        if col in pooled:
            pooled[col] = pooled[col].astype("string")
    det = detection
    if detection is not None:
        # The measured people's images only: the calibration people fit the score calibration
        # and are measured nowhere (README "Fairness").
        mine = pop.detection
        if "part" in mine:
            mine = mine[mine["part"].astype(str) == evalpop.MEASURE]
        det = pd.concat(
            [detection, mine[[c for c in detection.columns if c in mine]]], ignore_index=True
        )
    lineage = {
        f"md5 data/eval_population/{name}": md5_file(folder / name) for name in evalpop.FILES
    }
    cal = part == evalpop.CALIBRATION
    return Pooled(
        test=pooled,
        embeddings=np.concatenate([emb, pop_emb[measure]], axis=0),
        predictions={k: np.concatenate([v, pop_pred[k][measure]], axis=0) for k, v in pred.items()},
        detection=det,
        lineage=lineage,
        calibration_embeddings=pop_emb[cal] if cal.any() else None,
        calibration_ids=pop.manifest.loc[cal, "pid"].astype(str).to_numpy() if cal.any() else None,
    )


def served_context(paths: ProjectPaths, params: Params) -> ServedContext:
    """``serving.identify`` and the size of the gallery the ``gallery`` stage builds: the
    subjects allowed for identification (the consent snapshot, when there is one) that have a
    processed image (``data/processed/manifest.parquet``, when there is one); a subject
    allowed without one is never enrolled."""
    size = None
    if paths.consents.is_file():
        consents = pd.read_parquet(paths.consents, columns=["pid", "purpose", "allowed"])
        allowed = consents[(consents["purpose"] == "identification") & consents["allowed"]]
        pids = set(allowed["pid"].astype(str))
        manifest = paths.processed / "manifest.parquet"
        if manifest.is_file():
            pids &= set(pd.read_parquet(manifest, columns=["pid"])["pid"].astype(str))
        size = len(pids)
    ident = params.serving.identify
    return ServedContext(
        target_fpir=ident.target_fpir,
        confidence=ident.confidence,
        gallery_size=size,
        max_expected_fnir=ident.max_expected_fnir,
    )


def evaluation_inputs(
    paths: ProjectPaths,
    params: Params,
    *,
    embedder: Embedder | None = None,
    demographic: DemographicModel | None = None,
) -> EvaluationInputs:
    """:func:`read_inputs` with what the evaluation of a project also needs from ``params``:
    serving's identification settings (:func:`served_context`) and the embedder's sampling."""
    inputs = read_inputs(paths, params.evaluate, embedder=embedder, demographic=demographic)
    return dataclasses.replace(
        inputs,
        served=served_context(paths, params),
        embedder_sampling=params.train_embedder.sampling,
    )
