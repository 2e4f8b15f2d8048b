"""LFW 10-fold accuracy on every protocol pair: detector misses count, never vanish."""

import numpy as np
import pandas as pd
import pytest

from visage_ml.evaluation.lfw import protocol_accuracy, ten_fold_accuracy


def test_a_pair_with_a_miss_is_a_non_match_at_any_threshold():
    scores = np.array([0.9, 0.1, 0.99, 0.8, 0.2, 0.95])
    same = np.array([True, False, True, True, False, False])
    folds = np.array([0, 0, 0, 1, 1, 1])
    rejected = np.array([False, False, True, False, False, True])
    out = ten_fold_accuracy(scores, same, folds, rejected=rejected)
    # Fold 0: threshold 0.5 (from fold 1's scored pairs); the genuine pair with a miss is an
    # error despite its high score. Fold 1: the impostor pair with a miss is a correct reject.
    assert out["accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert out["threshold"] == pytest.approx(0.5) and out["n_pairs"] == 6
    # Dropping the misses instead would have claimed a perfect score.
    kept = ~rejected
    assert ten_fold_accuracy(scores[kept], same[kept], folds[kept])["accuracy"] == 1.0


def _unit(angle_deg):
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a)], dtype=np.float32)


def test_protocol_counts_every_pair_and_the_misses():
    # Three identities at 0, 90 and 180 degrees, two images each; one more image was missed.
    ids = np.array(["a1", "a2", "b1", "b2", "c1", "c2"])
    emb = np.stack([_unit(0), _unit(5), _unit(90), _unit(95), _unit(180), _unit(185)])
    detection = pd.DataFrame(
        {
            "image_id": [*ids, "b3", "t1"],
            "detected": [True] * 6 + [False, False],
            "split": ["test"] * 7 + ["train"],  # t1: a training image, never scored
        }
    )
    rows = []
    for fold in range(4):
        rows += [(fold, "a1", "a2", True), (fold, "a1", "b1", False), (fold, "b1", "b2", True)]
    rows += [(0, "b3", "b1", True), (1, "b3", "c1", False), (2, "t1", "c1", False)]
    protocol = pd.DataFrame(rows, columns=["fold", "image_id_a", "image_id_b", "same"])
    out = protocol_accuracy(protocol, ids, emb, detection=detection)
    assert out["pairs_in_protocol"] == 15
    assert out["pairs_used"] == 14 and out["pairs_not_evaluated"] == 1
    assert out["pairs_with_undetected_image"] == 2
    assert out["images"] == 6 and out["images_missed"] == 1  # a1 a2 b1 b2 b3 c1
    assert out["miss_rate"] == pytest.approx(1 / 6)
    # Every pair with two crops is right; the genuine pair with a miss is the one error.
    assert out["accuracy"] == pytest.approx(1 - (1 / 4) / 4)
    assert out["accuracy_detected_pairs"] == 1.0


def test_fallback_crops_are_scored_and_counted():
    ids = np.array(["a1", "a2", "b1", "b2"])
    emb = np.stack([_unit(0), _unit(3), _unit(90), _unit(92)])
    detection = pd.DataFrame(
        {"image_id": ids, "detected": [True, False, True, True], "split": "test"}
    )
    rows = [(f, "a1", "a2", True) for f in range(3)] + [(f, "a2", "b1", False) for f in range(3)]
    protocol = pd.DataFrame(rows, columns=["fold", "image_id_a", "image_id_b", "same"])
    out = protocol_accuracy(protocol, ids, emb, detection=detection, fallback_ids=np.array(["a2"]))
    assert out["pairs_with_fallback_crop"] == 6 and out["pairs_with_undetected_image"] == 0
    assert out["images_missed"] == 1 and out["images_fallback"] == 1
    assert out["accuracy"] == 1.0


def test_too_few_scored_folds_say_why():
    protocol = pd.DataFrame(
        [(0, "x", "y", True), (1, "x", "z", False)],
        columns=["fold", "image_id_a", "image_id_b", "same"],
    )
    out = protocol_accuracy(protocol, np.array(["q"]), np.zeros((1, 2), np.float32))
    assert out["pairs_not_evaluated"] == 2 and "skipped" in out and "accuracy" not in out
