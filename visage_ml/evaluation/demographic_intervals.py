"""Per-group accuracy of the demographic model with identity-bootstrap intervals.

:mod:`visage_ml.evaluation.demographics` gives each group's accuracy (fairlearn's MetricFrame);
the gate needs to know how precisely: every image of one person is scored by the same model on
the same face, so images are not independent and the intervals resample identities, as the FRVT
differentials do (:mod:`visage_ml.evaluation.bootstrap`). For each task (gender, skin-tone group,
age band) this gives each group's accuracy, the lowest group's accuracy and the min/max ratio
between groups, each with its interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visage_ml.evaluation.bootstrap import estimate, finite_or_none, identity_multiplicities
from visage_ml.evaluation.confusion import age_band_index

TASKS: tuple[str, ...] = ("gender_accuracy", "group_accuracy", "age_band_accuracy")


def correct_predictions(
    *,
    true_age: np.ndarray,
    true_gender: np.ndarray,
    true_group: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    labels: Mapping[str, Any],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task, ``(known, correct)`` boolean arrays over the images.

    ``known``: the image's label for the task is known (an age, a gender or group among the
    model's labels); ``correct``: the prediction matches it (age: the same band of
    ``labels["age_bands"]``).
    """
    gender_names = np.asarray([str(x) for x in labels["gender"]])
    group_names = np.asarray([str(x) for x in labels["group"]])
    genders = np.asarray(true_gender).astype(str)
    groups = np.asarray(true_group).astype(str)
    pred_gender = gender_names[np.argmax(predictions["gender_probs"], axis=1)]
    pred_group = group_names[np.argmax(predictions["group_probs"], axis=1)]
    out = {
        "gender_accuracy": (np.isin(genders, gender_names), pred_gender == genders),
        "group_accuracy": (np.isin(groups, group_names), pred_group == groups),
    }
    bands = labels.get("age_bands")
    if bands:
        ages = np.asarray(true_age, dtype=np.float64)
        cuts = [float(b) for b in bands]
        pred_age = np.asarray(predictions["age"], dtype=np.float64)
        known = ~np.isnan(ages)
        # The bands of the analytics counts (<18, 18-29, ...), as demographics.band_accuracy.
        band_true = age_band_index(np.where(known, ages, 0.0), cuts)
        out["age_band_accuracy"] = (known, band_true == age_band_index(pred_age, cuts))
    return out


def accuracy_intervals(
    correct: Mapping[str, tuple[np.ndarray, np.ndarray]],
    identity_codes: np.ndarray,
    image_groups: np.ndarray,
    *,
    groups: Sequence[str],
    rounds: int,
    seed: int,
    ci_level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Each task's accuracy per group, lowest group and min/max ratio, with intervals.

    Parameters
    ----------
    correct
        :func:`correct_predictions` output.
    identity_codes
        Identity code (``0..K-1``) per image.
    image_groups
        The group (breakdown value) of each image; values not in ``groups`` are left out.
    groups
        Groups reported, in order.
    rounds, seed, ci_level
        Identity bootstrap resamples, their seed, the interval level.

    Returns
    -------
    dict
        ``{task: {"groups": {g: {value, ci_low, ci_high, n_images, n_identities}},
        "min": {...}, "ratio": {...}, "lowest_group": g, "unmeasured_groups": [...]}}`` (the
        groups of ``groups`` without a labelled image, in none of the figures); JSON-ready.
    """
    codes = np.asarray(identity_codes, dtype=np.int64)
    grp = np.asarray(image_groups).astype(str)
    n_ids = int(codes.max()) + 1 if codes.size else 0
    mult = identity_multiplicities(n_ids, rounds, seed=seed)
    out: dict[str, dict[str, Any]] = {}
    for task, (known, hit) in correct.items():
        known = np.asarray(known, dtype=bool)
        hit = np.asarray(hit, dtype=bool)
        present = [g for g in groups if np.any(known & (grp == g))]
        # Groups asked for that no labelled image measures: the gate cannot pass them.
        unmeasured = [g for g in groups if g not in present]
        if not present:
            out[task] = {
                "groups": {},
                "min": {},
                "ratio": {},
                "lowest_group": None,
                "unmeasured_groups": unmeasured,
            }
            continue
        member = np.stack([known & (grp == g) for g in present], axis=1).astype(np.float64)
        correct_f = hit.astype(np.float64)[:, None] * member
        n = member.sum(axis=0)
        acc = correct_f.sum(axis=0) / n
        samples = None
        if rounds > 0 and n_ids:
            w = mult[:, codes]  # (R, images): each image weighs its identity's multiplicity
            with np.errstate(invalid="ignore", divide="ignore"):
                samples = (w @ correct_f) / (w @ member)
        group_docs = {}
        for i, g in enumerate(present):
            est = estimate(acc[i], None if samples is None else samples[:, i], ci_level)
            group_docs[g] = {
                **{k: finite_or_none(v) for k, v in est.items()},
                "n_images": int(n[i]),
                "n_identities": int(np.unique(codes[member[:, i] > 0]).size),
            }
        mins = ratio = None
        if samples is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                mins = np.nanmin(samples, axis=1)
                ratio = mins / np.nanmax(samples, axis=1)
        low = float(acc.min())
        high = float(acc.max())
        out[task] = {
            "groups": group_docs,
            "min": {k: finite_or_none(v) for k, v in estimate(low, mins, ci_level).items()},
            "ratio": {
                k: finite_or_none(v)
                for k, v in estimate(
                    low / high if high > 0 else float("nan"), ratio, ci_level
                ).items()
            },
            "lowest_group": present[int(np.argmin(acc))],
            "unmeasured_groups": unmeasured,
        }
    return out


def miss_rate_intervals(
    detected: np.ndarray,
    identities: np.ndarray,
    image_groups: np.ndarray,
    *,
    groups: Sequence[str],
    rounds: int,
    seed: int,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """The detector's miss rate per group with identity-bootstrap intervals.

    A person's photographs are missed together or not at all more often than chance (the same
    face, lighting and pose habits), so images are not independent: the intervals resample
    people, as :func:`accuracy_intervals` does (a "hit" there is a miss here).

    Parameters
    ----------
    detected
        Whether the detector found the face, per rendered image.
    identities
        The person of each image (any hashable id: pseudonymous or synthetic).
    image_groups
        The group (breakdown value) of each image; values not in ``groups`` are left out.
    groups, rounds, seed, ci_level
        As for :func:`accuracy_intervals`.

    Returns
    -------
    dict
        ``{"groups": {g: {value, ci_low, ci_high, n_images, n_identities}},
        "unmeasured_groups": [...]}``; JSON-ready.
    """
    ids = np.asarray(identities).astype(str)
    codes = np.unique(ids, return_inverse=True)[1].reshape(-1)
    missed = ~np.asarray(detected, dtype=bool)
    doc = accuracy_intervals(
        {"miss_rate": (np.ones_like(missed), missed)},
        codes,
        image_groups,
        groups=groups,
        rounds=rounds,
        seed=seed,
        ci_level=ci_level,
    )["miss_rate"]
    return {"groups": doc["groups"], "unmeasured_groups": doc["unmeasured_groups"]}
