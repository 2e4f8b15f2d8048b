"""The demographic model's measured confusion, per skin-tone group: what analytics corrects with.

Counts of true against predicted labels on the evaluation images
(``reports/demographic_confusion.json``, released in the privacy ledger with the model's
version): the predicted group against the true group, and within each true group the predicted
gender against the true gender and the predicted age band against the true age band. A model
whose gender accuracy is 0.95 for one group and 0.35 for another biases every count of a crowd
in which the groups mix; analytics (:mod:`visage_ml.serving.correction`) corrects with these
matrices (the site's mix estimated from its windows, each window's faces reassigned with it)
and reports the corrected counts, with intervals from their uncertainty, beside the raw ones.

Only counts of images per (true, predicted) label pair are stored: no identifiers.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FORMAT = 1
UNLABELED = "unlabeled"


def age_band_labels(bands: Sequence[float]) -> list[str]:
    """Labels of the bands cut at ``bands`` (``[18, 30]`` -> ``<18``, ``18-29``, ``30+``)."""
    edges = [int(b) for b in bands]
    if not edges:
        return ["all"]
    labels = [f"<{edges[0]}"]
    labels += [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    labels.append(f"{edges[-1]}+")
    return labels


def age_band_index(age: np.ndarray, bands: Sequence[float]) -> np.ndarray:
    """Band index of each age (the band whose lower edge is the last one at or below it)."""
    return np.searchsorted(np.asarray(bands, dtype=np.float64), age, side="right")


def _counts(true: np.ndarray, pred: np.ndarray, k_true: int, k_pred: int) -> list[list[int]]:
    m = np.zeros((k_true, k_pred), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m.tolist()


def _accuracy(counts: list[list[int]]) -> float | None:
    m = np.asarray(counts, dtype=np.float64)
    total = m.sum()
    if total <= 0 or m.shape[0] != m.shape[1]:
        return None
    return float(np.trace(m) / total)


def demographic_confusion(
    *,
    true_age: np.ndarray,
    true_gender: np.ndarray,
    true_group: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    labels: Mapping[str, Any],
    model_version: str = "",
) -> dict[str, Any]:
    """Confusion counts of the demographic model, per true skin-tone group.

    Parameters
    ----------
    true_age, true_gender, true_group
        Ground truth per image (``NaN`` / ``"unlabeled"`` where unknown: such images are left
        out of the matrices that need the label).
    predictions
        :meth:`visage_ml.inference.OnnxModel.predict` output: ``age``, ``gender_probs``,
        ``group_probs``.
    labels
        The model's label orders (``gender``, ``group``, optional ``age_bands``).
    model_version
        The demographic model's version (analytics refuses matrices of another model).

    Returns
    -------
    dict
        ``group.counts`` (true group x predicted group), ``gender[g].counts`` and
        ``age_band[g].counts`` (true x predicted within true group ``g``), label orders and
        accuracies. JSON-ready.
    """
    genders = [str(x) for x in labels["gender"]]
    groups = [str(x) for x in labels["group"]]
    bands = [float(b) for b in (labels.get("age_bands") or [])]
    band_names = age_band_labels(bands)
    pred_gender = np.argmax(np.asarray(predictions["gender_probs"]), axis=1)
    pred_group = np.argmax(np.asarray(predictions["group_probs"]), axis=1)
    pred_band = age_band_index(np.asarray(predictions["age"], dtype=np.float64).reshape(-1), bands)
    g_idx = {g: i for i, g in enumerate(groups)}
    s_idx = {s: i for i, s in enumerate(genders)}
    tg = np.array([g_idx.get(str(x), -1) for x in np.asarray(true_group)], dtype=np.int64)
    ts = np.array([s_idx.get(str(x), -1) for x in np.asarray(true_gender)], dtype=np.int64)
    ages = np.asarray(true_age, dtype=np.float64)
    age_known = np.isfinite(ages)
    tb = np.where(age_known, age_band_index(np.nan_to_num(ages), bands), -1)
    known_g = tg >= 0
    doc: dict[str, Any] = {
        "format": FORMAT,
        "demographics_model_version": model_version,
        "labels": {
            "group": groups,
            "gender": genders,
            "age_bands": bands,
            "age_band": band_names,
        },
        "rows": "true label",
        "columns": "predicted label",
        "n_images": int(np.asarray(true_group).size),
        "group": {
            "counts": _counts(tg[known_g], pred_group[known_g], len(groups), len(groups)),
        },
        "gender": {},
        "age_band": {},
    }
    doc["group"]["accuracy"] = _accuracy(doc["group"]["counts"])
    for gi, g in enumerate(groups):
        in_g = tg == gi
        sel = in_g & (ts >= 0)
        counts = _counts(ts[sel], pred_gender[sel], len(genders), len(genders))
        doc["gender"][g] = {"counts": counts, "accuracy": _accuracy(counts)}
        sel = in_g & (tb >= 0)
        counts = _counts(tb[sel], pred_band[sel], len(band_names), len(band_names))
        doc["age_band"][g] = {"counts": counts, "accuracy": _accuracy(counts)}
    return doc
