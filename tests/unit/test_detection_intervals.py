"""The detector's miss rate per group, with intervals that resample people."""

import numpy as np

from visage_ml.evaluation.demographic_intervals import miss_rate_intervals


def _photos(missed_people: int, missed_each: int, *, people: int = 40, each: int = 5):
    """``people`` people of ``each`` photographs; the first ``missed_people`` lose
    ``missed_each`` of theirs to the detector."""
    detected = np.ones((people, each), dtype=bool)
    detected[:missed_people, :missed_each] = False
    return detected.reshape(-1), np.repeat(np.arange(people), each)


def test_misses_that_come_by_person_are_less_certain_than_scattered_ones():
    # Both groups lose 10 % of their images; in "clustered" four people are never detected,
    # in "scattered" twenty people lose one photograph each. Treating images as independent
    # gives both the same interval; resampling people tells them apart.
    clustered, ids_a = _photos(4, 5)
    scattered, ids_b = _photos(20, 1)
    doc = miss_rate_intervals(
        np.r_[clustered, scattered],
        np.r_[[f"a{i}" for i in ids_a], [f"b{i}" for i in ids_b]],
        np.r_[["clustered"] * clustered.size, ["scattered"] * scattered.size],
        groups=["clustered", "scattered", "absent"],
        rounds=400,
        seed=0,
    )
    c, s = doc["groups"]["clustered"], doc["groups"]["scattered"]
    assert c["value"] == s["value"] == 0.1
    assert (c["n_images"], c["n_identities"]) == (200, 40)
    assert c["ci_low"] <= 0.1 <= c["ci_high"] and s["ci_low"] <= 0.1 <= s["ci_high"]
    assert c["ci_high"] - c["ci_low"] > 1.5 * (s["ci_high"] - s["ci_low"])
    assert doc["unmeasured_groups"] == ["absent"]


def test_a_detector_that_never_misses_has_a_zero_interval():
    detected, ids = _photos(0, 0)
    doc = miss_rate_intervals(
        detected, ids, np.array(["g1"] * detected.size), groups=["g1"], rounds=50, seed=0
    )
    assert doc["groups"]["g1"] | {"n_images": 0} == {
        "value": 0.0,
        "ci_low": 0.0,
        "ci_high": 0.0,
        "n_images": 0,
        "n_identities": 40,
    }
