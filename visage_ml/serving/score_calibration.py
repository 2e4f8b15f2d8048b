"""Serving's side of the label-free score calibration: load the released calibration.

Evaluation fits the calibration on the synthetic evaluation population and measures every
threshold on calibrated scores (``reports/threshold.json`` for 1:1, ``reports/score_model.json``
for 1:N), so serving must score the same way: :class:`visage_ml.serving.index.TemplateIndex`
applies :func:`visage_ml.evaluation.calibration.calibrate` to each comparison before the
threshold (``Gallery.set_calibration``). The file is released in the privacy ledger like the
threshold (``reports/score_calibration.json``; :mod:`visage_ml.serving.release`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from visage_ml.config import ProjectPaths
from visage_ml.evaluation.calibration import ScoreCalibration
from visage_ml.io import sha256_bytes
from visage_ml.serving.release import SCORE_CALIBRATION_JSON, Release, check_released

logger = logging.getLogger(__name__)

SCORE_CALIBRATION_FILE = "score_calibration.json"

MSG_MISSING = (
    "{path} is missing: the thresholds were measured on calibrated scores, so serving needs the "
    "calibration evaluation fitted; run `dvc repro evaluate`"
)
MSG_UNREADABLE = "{path} is not a score calibration ({error}); run `dvc repro evaluate`"


def load_score_calibration(
    paths: ProjectPaths, *, model_version: str | None
) -> tuple[ScoreCalibration, str]:
    """``reports/score_calibration.json`` for the serving embedder, and the SHA-256 of its bytes.

    Raises
    ------
    FileNotFoundError
        No calibration file.
    ValueError
        Unreadable, of another format, or fitted for another embedder.
    """
    path = Path(paths.reports) / SCORE_CALIBRATION_FILE
    if not path.is_file():
        raise FileNotFoundError(MSG_MISSING.format(path=path))
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        calibration = ScoreCalibration.from_dict(doc, what=str(path))
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, ValueError) and "dvc repro evaluate" in str(exc):
            raise
        raise ValueError(MSG_UNREADABLE.format(path=path, error=type(exc).__name__)) from None
    if model_version is not None:
        calibration.check_embedder(model_version)
    return calibration, sha256_bytes(raw)


def released_calibration(
    paths: ProjectPaths, releases: Mapping[str, Release], *, model_version: str
) -> ScoreCalibration | None:
    """The calibration serving must apply: the released file, or None when no evaluation has
    released one (an evaluation from before calibration measured its thresholds on raw scores).

    Once a release names ``reports/score_calibration.json`` the file is required and must be
    the released bytes for this embedder: deleting or swapping it does not make serving fall
    back to raw scores.

    Raises
    ------
    FileNotFoundError, ValueError
        Released but missing, changed since its release, or of another embedder.
    """
    if SCORE_CALIBRATION_JSON not in releases:
        logger.info("no score calibration released: serving raw cosine scores")
        return None
    calibration, digest = load_score_calibration(paths, model_version=model_version)
    check_released(releases, SCORE_CALIBRATION_JSON, digest)
    return calibration
