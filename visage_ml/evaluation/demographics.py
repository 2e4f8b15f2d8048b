"""Per-group quality of the demographic model and of face detection.

Metrics are plain callables ``fn(y_true, y_pred, **kw)``;
:func:`visage_ml.evaluation.groups.frame_summary` aggregates one of them per demographic group
(``overall``, ``by_group``, ``difference()``, ``ratio()``, as fairlearn's ``MetricFrame``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visage_ml.evaluation.groups import Metric, frame_summary

logger = logging.getLogger(__name__)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of exact matches between true and predicted labels."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute difference (years, for age)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    return float(np.mean(np.abs(t - p))) if t.size else float("nan")


def band_accuracy(y_true: np.ndarray, y_pred: np.ndarray, *, bands: Sequence[float]) -> float:
    """Share of predictions in the same band as the truth; ``bands`` are the lower edges."""
    edges = np.asarray(bands, dtype=np.float64)[1:]
    t = np.digitize(np.asarray(y_true, dtype=np.float64), edges)
    p = np.digitize(np.asarray(y_pred, dtype=np.float64), edges)
    return float(np.mean(t == p)) if t.size else float("nan")


def miss_rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of present faces (``y_true`` true) that were not detected (``y_pred`` false)."""
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    return float(np.mean(~p[t])) if t.any() else float("nan")


def demographic_model_report(
    *,
    true_age: np.ndarray,
    true_gender: np.ndarray,
    true_group: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    labels: Mapping[str, Any],
    breakdowns: Mapping[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
    """Per-group gender and group accuracy, age MAE and age-band accuracy of the model.

    Parameters
    ----------
    true_age, true_gender, true_group
        Ground truth per image.
    predictions
        :meth:`visage_ml.inference.OnnxModel.predict` output: ``age``, ``gender_probs``,
        ``group_probs``.
    labels
        The model's label orders (``gender``, ``group``, optional ``age_bands``).
    breakdowns
        Sensitive feature per image by breakdown name (e.g. ``{"group": ..., "gender": ...}``).

    Returns
    -------
    dict
        ``{task: {breakdown: frame_summary}}`` for tasks ``gender_accuracy``,
        ``group_accuracy``, ``age_mae`` and (with age bands) ``age_band_accuracy``.
    """
    gender_names = np.asarray([str(x) for x in labels["gender"]])
    group_names = np.asarray([str(x) for x in labels["group"]])
    pred_gender = gender_names[np.argmax(predictions["gender_probs"], axis=1)]
    pred_group = group_names[np.argmax(predictions["group_probs"], axis=1)]
    pred_age = np.asarray(predictions["age"], dtype=np.float64)
    tasks: dict[str, tuple[Metric, np.ndarray, np.ndarray]] = {
        "gender_accuracy": (accuracy, np.asarray(true_gender).astype(str), pred_gender),
        "group_accuracy": (accuracy, np.asarray(true_group).astype(str), pred_group),
        "age_mae": (mean_absolute_error, np.asarray(true_age, dtype=np.float64), pred_age),
    }
    bands = labels.get("age_bands")
    if bands:
        metric = functools.partial(band_accuracy, bands=[float(b) for b in bands])
        tasks["age_band_accuracy"] = (metric, np.asarray(true_age, dtype=np.float64), pred_age)
    out: dict[str, dict[str, Any]] = {}
    for task, (metric, y_true, y_pred) in tasks.items():
        out[task] = {
            b: frame_summary(metric, y_true, y_pred, sens, name=task)
            for b, sens in breakdowns.items()
        }
    return out


def detection_report(
    detected: np.ndarray, breakdowns: Mapping[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """MTCNN miss rate per group: every row is an image holding one face.

    Parameters
    ----------
    detected
        Whether the detector found the face, per source image.
    breakdowns
        Sensitive feature per image by breakdown name.

    Returns
    -------
    dict
        ``{breakdown: frame_summary}`` of :func:`miss_rate`.
    """
    det = np.asarray(detected, dtype=bool)
    present = np.ones_like(det)
    return {
        b: frame_summary(miss_rate, present, det, sens, name="miss_rate")
        for b, sens in breakdowns.items()
    }
