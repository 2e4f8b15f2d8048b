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

from visage_ml.data.manifest import UNLABELED
from visage_ml.evaluation.confusion import age_band_index
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
    """Share of predictions in the same band as the truth: the bands the analytics counts use
    (:func:`~visage_ml.evaluation.confusion.age_band_index`: ``[18, 30]`` cuts ``<18``,
    ``18-29`` and ``30+``)."""
    t = age_band_index(np.asarray(y_true, dtype=np.float64), bands)
    p = age_band_index(np.asarray(y_pred, dtype=np.float64), bands)
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

    Each task is scored on the images whose label for it is known: age not ``NaN``, gender and
    group among the model's labels (an ``"unlabeled"`` or foreign label is left out of that
    task). Images whose breakdown attribute is ``"unlabeled"`` count in ``overall`` and are
    reported under ``unlabeled``, never as a group.

    Parameters
    ----------
    true_age, true_gender, true_group
        Ground truth per image (``NaN`` / ``"unlabeled"`` where unknown).
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
    genders = np.asarray(true_gender).astype(str)
    groups = np.asarray(true_group).astype(str)
    ages = np.asarray(true_age, dtype=np.float64)
    age_known = ~np.isnan(ages)
    tasks: dict[str, tuple[Metric, np.ndarray, np.ndarray, np.ndarray]] = {
        "gender_accuracy": (accuracy, genders, pred_gender, np.isin(genders, gender_names)),
        "group_accuracy": (accuracy, groups, pred_group, np.isin(groups, group_names)),
        "age_mae": (mean_absolute_error, ages, pred_age, age_known),
    }
    bands = labels.get("age_bands")
    if bands:
        metric = functools.partial(band_accuracy, bands=[float(b) for b in bands])
        tasks["age_band_accuracy"] = (metric, ages, pred_age, age_known)
    out: dict[str, dict[str, Any]] = {}
    for task, (metric, y_true, y_pred, known) in tasks.items():
        out[task] = {
            b: frame_summary(
                metric,
                y_true[known],
                y_pred[known],
                np.asarray(sens).astype(str)[known],
                name=task,
                unlabeled=UNLABELED,
            )
            for b, sens in breakdowns.items()
        }
    return out


def label_counts(
    *, true_age: np.ndarray, true_gender: np.ndarray, true_group: np.ndarray, labels: Mapping
) -> dict[str, int]:
    """Images in total and with each label the demographic model is scored on."""
    ages = np.asarray(true_age, dtype=np.float64)
    return {
        "images": int(ages.size),
        "age": int((~np.isnan(ages)).sum()),
        "gender": int(np.isin(np.asarray(true_gender).astype(str), list(labels["gender"])).sum()),
        "group": int(np.isin(np.asarray(true_group).astype(str), list(labels["group"])).sum()),
    }


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
        b: frame_summary(miss_rate, present, det, sens, name="miss_rate", unlabeled=UNLABELED)
        for b, sens in breakdowns.items()
    }
