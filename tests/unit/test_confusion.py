"""The demographic model's confusion per true group: exact counts, unknown labels left out."""

from __future__ import annotations

import json
import re

import numpy as np

from visage_ml.evaluation.confusion import age_band_labels, demographic_confusion

LABELS = {"group": ["g1", "g2"], "gender": ["female", "male"], "age_bands": [18, 40]}


def onehot(idx, k):
    return np.eye(k)[np.asarray(idx)]


def test_counts_are_true_against_predicted_per_true_group():
    doc = demographic_confusion(
        true_age=np.array([25.0, 50.0, 10.0, np.nan, 30.0]),
        true_gender=np.array(["female", "male", "female", "male", "unlabeled"]),
        true_group=np.array(["g1", "g1", "g2", "g2", "g2"]),
        predictions={
            "age": np.array([45.0, 50.0, 12.0, 30.0, 31.0]),
            "gender_probs": onehot([1, 1, 0, 0, 1], 2),
            "group_probs": onehot([0, 1, 1, 1, 1], 2),
        },
        labels=LABELS,
        model_version="dem-1",
    )
    assert doc["labels"]["age_band"] == ["<18", "18-39", "40+"] == age_band_labels([18, 40])
    assert doc["group"]["counts"] == [[1, 1], [0, 3]]
    assert doc["group"]["accuracy"] == 0.8
    # g1: a woman called a man, a man called a man.
    assert doc["gender"]["g1"]["counts"] == [[0, 1], [0, 1]]
    # g2: the unlabeled image is left out of the gender matrix (but counted for its group).
    assert doc["gender"]["g2"]["counts"] == [[1, 0], [1, 0]]
    # Age bands: 25 -> 45 (18-39 called 40+), 50 -> 50; g2: 10 -> 12, unknown age left out.
    assert doc["age_band"]["g1"]["counts"] == [[0, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert doc["age_band"]["g2"]["counts"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert doc["demographics_model_version"] == "dem-1"
    assert not re.search(r"p[0-9a-f]{16}", json.dumps(doc))
