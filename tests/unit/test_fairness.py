import dataclasses
import math

import numpy as np
import pytest

from visage_ml.data.pairs import PairSet, threshold_at_far
from visage_ml.evaluation.bootstrap import identity_multiplicities, pair_weights
from visage_ml.evaluation.confusion import age_band_index, age_band_labels
from visage_ml.evaluation.demographic_intervals import correct_predictions
from visage_ml.evaluation.demographics import (
    band_accuracy,
    demographic_model_report,
    detection_report,
    mean_absolute_error,
    miss_rate,
)
from visage_ml.evaluation.fairness import (
    SUMMARY_KEYS,
    demographic_differentials,
    fairness_discrepancy_rate,
    fairness_gate,
    gini,
    make_breakdown,
    max_geomean_ratio,
    max_min_ratio,
    skewed_error_ratio,
    summarize,
)
from visage_ml.evaluation.groups import frame_summary

GROUPS = ("g1", "g2", "g3", "g4")


# -- summaries, hand-checked ------------------------------------------------------------------


def test_gini_hand_checked():
    assert gini(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(1.0)  # all error in one group
    assert gini(np.array([0.2, 0.2, 0.2])) == 0.0
    # [1, 3]: sum|xi - xj| = 4, 2 n^2 mean = 16 -> 0.25, times n/(n-1) = 2 -> 0.5
    assert gini(np.array([1.0, 3.0])) == pytest.approx(0.5)
    assert gini(np.array([1.0, np.nan, 3.0])) == pytest.approx(0.5)  # no comparisons: ignored


def test_fdr_hand_checked():
    fmr = np.array([0.001, 0.003, 0.002])
    fnmr = np.array([0.02, 0.10, 0.05])
    # A = 0.002, B = 0.08 -> 1 - (0.5 * 0.002 + 0.5 * 0.08)
    assert fairness_discrepancy_rate(fmr, fnmr, 0.5) == pytest.approx(0.959)
    assert fairness_discrepancy_rate(fmr, fnmr, 1.0) == pytest.approx(0.998)
    assert fairness_discrepancy_rate(np.full(3, 0.01), np.full(3, 0.1)) == 1.0


def test_ratios_hand_checked():
    rates = np.array([0.01, 0.02, 0.04])
    assert max_min_ratio(rates) == pytest.approx(4.0)
    # geometric mean of .01, .02, .04 is .02
    assert max_geomean_ratio(rates) == pytest.approx(2.0)
    assert skewed_error_ratio(np.array([0.05, 0.15])) == pytest.approx(3.0)
    assert max_min_ratio(np.array([0.0, 0.01])) == math.inf
    # A zero count is floored at one error in that group's comparisons.
    assert max_min_ratio(np.array([0.0, 0.01]), np.array([0.001, 0.001])) == pytest.approx(10.0)
    # The floor never inflates the maximum and the ratio never drops below 1.
    assert max_min_ratio(np.array([0.0, 0.0005]), np.array([0.01, 0.001])) == 1.0
    assert max_min_ratio(np.zeros(3)) == 1.0
    s = summarize(np.array([0.001, 0.004]), np.array([0.1, 0.05]), alpha=0.5)
    assert set(s) == set(SUMMARY_KEYS)
    assert s["fmr_max_min_ratio"] == pytest.approx(4.0)
    assert s["fnmr_max_min_ratio"] == pytest.approx(2.0)
    # half total error rates: .0505 and .027
    assert s["skewed_error_ratio"] == pytest.approx(0.0505 / 0.027)


# -- differentials on synthetic comparisons ---------------------------------------------------


def synthetic_pairs(*, shift_g4: float = 0.0, seed: int = 0, per_group: int = 40) -> tuple:
    """Identities in four groups; genuine ~ N(.45, .1) (g4 shifted), impostor ~ N(0, .12)."""
    rng = np.random.default_rng(seed)
    k = per_group * len(GROUPS)
    group_of = np.repeat(np.arange(len(GROUPS)), per_group)
    gen_ids = np.repeat(np.arange(k), 30)
    gen = rng.normal(0.45, 0.1, gen_ids.size) - np.where(group_of[gen_ids] == 3, shift_g4, 0.0)
    n_imp = 200_000
    ia = rng.integers(0, k, n_imp)
    ib = (ia + rng.integers(1, k, n_imp)) % k
    imp = rng.normal(0.0, 0.12, n_imp)
    id_a = np.r_[gen_ids, np.minimum(ia, ib)]
    id_b = np.r_[gen_ids, np.maximum(ia, ib)]
    n = id_a.size
    pairs = PairSet(
        a=np.arange(n),
        b=np.arange(n),
        id_a=id_a,
        id_b=id_b,
        genuine=id_a == id_b,
        score=np.r_[gen, imp],
        n_identities=k,
    )
    breakdown = make_breakdown("group", [GROUPS[g] for g in group_of], GROUPS)
    return pairs, breakdown, group_of


def test_per_group_rates_agree_with_fairlearn_metricframe():
    from fairlearn.metrics import MetricFrame, false_negative_rate, false_positive_rate

    pairs, breakdown, group_of = synthetic_pairs(shift_g4=0.2)
    t = threshold_at_far(pairs.score[~pairs.genuine], 1e-3)
    d = demographic_differentials(pairs, [breakdown], threshold=t)["group"]
    ga, gb = group_of[pairs.id_a], group_of[pairs.id_b]
    same = ga == gb
    mf = MetricFrame(
        metrics={"fmr": false_positive_rate, "fnmr": false_negative_rate},
        y_true=pairs.genuine[same].astype(int),
        y_pred=(pairs.score[same] >= t).astype(int),
        sensitive_features=np.array(GROUPS)[ga[same]],
    )
    np.testing.assert_allclose(d.fmr, mf.by_group["fmr"].loc[list(GROUPS)].to_numpy())
    np.testing.assert_allclose(d.fnmr, mf.by_group["fnmr"].loc[list(GROUPS)].to_numpy())
    # Cross-group cell (g1, g3): impostors with one subject in each, either order.
    imp = ~pairs.genuine
    cell = imp & (((ga == 0) & (gb == 2)) | ((ga == 2) & (gb == 0)))
    assert d.cross_fmr[0, 2] == pytest.approx(np.mean(pairs.score[cell] >= t))
    assert d.cross_fmr[2, 0] == d.cross_fmr[0, 2]
    assert d.cross_n[0, 2] == cell.sum()
    np.testing.assert_allclose(np.diag(d.cross_fmr), d.fmr)
    assert d.n_identities.tolist() == [40, 40, 40, 40]


def test_bootstrap_intervals_contain_estimates():
    pairs, breakdown, _ = synthetic_pairs(shift_g4=0.15, per_group=25)
    t = threshold_at_far(pairs.score[~pairs.genuine], 1e-2)
    d = demographic_differentials(pairs, [breakdown], threshold=t, rounds=100, seed=5)["group"]
    out = d.to_dict()
    for g in GROUPS:
        for metric in ("fmr", "fnmr"):
            e = out["groups"][g][metric]
            assert e["ci_low"] <= e["value"] <= e["ci_high"], (g, metric)
    for key in ("fnmr_max_min_ratio", "fdr", "fnmr_gini"):
        e = out["summaries"][key]
        assert e["ci_low"] <= e["value"] <= e["ci_high"], key
        assert e["ci_low"] < e["ci_high"]
    assert d.samples["cross_fmr"].shape == (100, 4, 4)
    lo, hi = np.array(out["cross_fmr"]["ci_low"]), np.array(out["cross_fmr"]["ci_high"])
    assert np.all(lo <= hi)


def test_each_resample_weighs_every_comparison_by_its_identities_multiplicities():
    # A resample's rates are summed per identity pair; they must be the rates of the
    # comparisons weighted one by one (a genuine one by its identity's multiplicity, an
    # impostor one by the product of both), with a subject of unknown group left out.
    pairs, breakdown, _ = synthetic_pairs(shift_g4=0.15, per_group=25)
    labels = breakdown.identity_label.copy()
    labels[:3] = -1
    breakdown = dataclasses.replace(breakdown, identity_label=labels)
    t = threshold_at_far(pairs.score[~pairs.genuine], 1e-2)
    d = demographic_differentials(pairs, [breakdown], threshold=t, rounds=5, seed=9)["group"]
    accepted = pairs.score >= t
    la, lb = labels[pairs.id_a], labels[pairs.id_b]
    for r, m in enumerate(identity_multiplicities(pairs.n_identities, 5, seed=9)):
        w = pair_weights(pairs, m)
        for g in range(len(GROUPS)):
            imp = ~pairs.genuine & (la == g) & (lb == g)
            gen = pairs.genuine & (la == g)
            assert d.samples["fmr"][r, g] == pytest.approx(w[imp & accepted].sum() / w[imp].sum())
            assert d.samples["fnmr"][r, g] == pytest.approx(w[gen & ~accepted].sum() / w[gen].sum())
        cross = ~pairs.genuine & (((la == 0) & (lb == 1)) | ((la == 1) & (lb == 0)))
        assert d.samples["cross_fmr"][r, 0, 1] == pytest.approx(
            w[cross & accepted].sum() / w[cross].sum()
        )


def test_planted_bias_is_flagged_and_fails_the_gate():
    fair, b, _ = synthetic_pairs(shift_g4=0.0)
    biased, _, _ = synthetic_pairs(shift_g4=0.35)
    results = {}
    for name, pairs in (("fair", fair), ("biased", biased)):
        t = threshold_at_far(pairs.score[~pairs.genuine], 1e-2)
        results[name] = demographic_differentials(pairs, [b], threshold=t)
    f, bi = results["fair"]["group"], results["biased"]["group"]
    assert np.argmax(bi.fnmr) == 3  # g4
    assert bi.summaries["fnmr_max_min_ratio"] > 10 * f.summaries["fnmr_max_min_ratio"]
    assert bi.summaries["fdr"] < f.summaries["fdr"]
    assert bi.summaries["fnmr_gini"] > f.summaries["fnmr_gini"]
    ok = fairness_gate(results["fair"], max_fmr_ratio=10, max_fnmr_ratio=3)
    assert ok.passed and ok.describe() == "pass"
    gate = fairness_gate(results["biased"], max_fmr_ratio=10, max_fnmr_ratio=3)
    assert not gate.passed
    assert [x["bound"] for x in gate.failures] == ["max_fnmr_ratio"]
    assert "max_fnmr_ratio" in gate.describe()
    assert f"{bi.summaries['fnmr_max_min_ratio']:.3g}" in gate.describe()


def test_gate_fails_when_a_ratio_cannot_be_measured():
    pairs, _, _ = synthetic_pairs(per_group=5)
    only_one = make_breakdown("group", ["g1"] * 20, GROUPS)
    t = threshold_at_far(pairs.score[~pairs.genuine], 1e-2)
    d = demographic_differentials(pairs, [only_one], threshold=t)
    gate = fairness_gate(d, max_fmr_ratio=10, max_fnmr_ratio=3)
    assert not gate.passed
    assert all(f["groups_measured"] < 2 for f in gate.failures)
    assert gate.to_dict()["failures"][0]["measured"] in (None, 1.0)


# -- demographic model and detection (fairlearn MetricFrame) -----------------------------------


def test_metric_callables():
    assert mean_absolute_error([20, 30], [25, 30]) == 2.5
    assert band_accuracy([20, 35, 70], [29, 44, 50], bands=[18, 30, 45, 60]) == pytest.approx(2 / 3)
    # The bands of the analytics counts (confusion.age_band_labels): an adult of 20 read as 15 is
    # counted under "<18", so the report must not call it right.
    assert band_accuracy([20, 25], [15, 22], bands=[18, 30, 45, 60]) == pytest.approx(1 / 2)


def test_the_report_and_the_counts_cut_ages_into_the_same_bands():
    ages = np.array([10.0, 17.9, 18.0, 29.0, 30.0, 44.0, 45.0, 59.0, 60.0, 90.0])
    bands = [18, 30, 45, 60]
    labels = age_band_labels(bands)
    assert labels == ["<18", "18-29", "30-44", "45-59", "60+"]
    idx = age_band_index(ages, bands)
    assert [labels[i] for i in idx] == [
        "<18",
        "<18",
        "18-29",
        "18-29",
        "30-44",
        "30-44",
        "45-59",
        "45-59",
        "60+",
        "60+",
    ]
    # The per-group intervals score the same bands: 20 read as 15 is wrong, 25 as 22 right.
    true, pred = np.array([20.0, 25.0, 40.0]), np.array([15.0, 22.0, 41.0])
    correct = correct_predictions(
        true_age=true,
        true_gender=np.array(["female"] * 3),
        true_group=np.array(["g1"] * 3),
        predictions={
            "age": pred,
            "gender_probs": np.tile([1.0, 0.0], (3, 1)),
            "group_probs": np.ones((3, 1)),
        },
        labels={"gender": ["female", "male"], "group": ["g1"], "age_bands": bands},
    )["age_band_accuracy"][1]
    assert correct.tolist() == [False, True, True]
    assert miss_rate([1, 1, 1, 1], [1, 0, 1, 1]) == 0.25


def test_frame_summary_by_group_difference_ratio():
    s = frame_summary(
        lambda t, p: float(np.mean(np.asarray(t) == np.asarray(p))),
        np.array(["a", "a", "b", "b", "a", "b"]),
        np.array(["a", "b", "b", "b", "a", "a"]),
        np.array(["g1", "g1", "g1", "g2", "g2", "g2"]),
        name="accuracy",
    )
    assert s["by_group"] == {"g1": pytest.approx(2 / 3), "g2": pytest.approx(2 / 3)}
    assert s["overall"] == pytest.approx(4 / 6)
    assert s["difference"] == pytest.approx(0.0)
    assert s["ratio"] == pytest.approx(1.0)
    assert s["n"] == {"g1": 3, "g2": 3}


def test_demographic_model_report_per_group():
    true_gender = np.array(["female", "male", "female", "male"])
    true_group = np.array(["g1", "g1", "g2", "g2"])
    predictions = {
        "age": np.array([30.0, 40.0, 50.0, 20.0]),
        # columns in label order: female, male
        "gender_probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]]),
        "group_probs": np.array([[0.7, 0.3], [0.6, 0.4], [0.1, 0.9], [0.8, 0.2]]),
    }
    r = demographic_model_report(
        true_age=np.array([32.0, 40.0, 44.0, 30.0]),
        true_gender=true_gender,
        true_group=true_group,
        predictions=predictions,
        labels={"gender": ["female", "male"], "group": ["g1", "g2"], "age_bands": [18, 30, 45]},
        breakdowns={"group": true_group, "gender": true_gender},
    )
    gender_by_group = r["gender_accuracy"]["group"]
    assert gender_by_group["by_group"] == {"g1": 1.0, "g2": 0.5}
    assert gender_by_group["difference"] == pytest.approx(0.5)
    assert gender_by_group["ratio"] == pytest.approx(0.5)
    assert r["group_accuracy"]["gender"]["by_group"] == {"female": 1.0, "male": 0.5}
    assert r["age_mae"]["group"]["by_group"] == {"g1": 1.0, "g2": 8.0}
    assert r["age_band_accuracy"]["group"]["overall"] == pytest.approx(0.5)


def test_detection_miss_rate_per_group():
    detected = np.array([True, True, False, True, False, False])
    groups = np.array(["g1", "g1", "g1", "g2", "g2", "g2"])
    r = detection_report(detected, {"group": groups})["group"]
    assert r["by_group"] == {"g1": pytest.approx(1 / 3), "g2": pytest.approx(2 / 3)}
    assert r["overall"] == pytest.approx(0.5)
    assert r["difference"] == pytest.approx(1 / 3)


def test_without_bootstrap_intervals_are_null_not_nan():
    import json

    pairs, breakdown, _ = synthetic_pairs(per_group=5)
    t = threshold_at_far(pairs.score[~pairs.genuine], 1e-2)
    out = demographic_differentials(pairs, [breakdown], threshold=t)["group"].to_dict()
    assert out["groups"]["g1"]["fmr"]["ci_low"] is None
    assert out["summaries"]["fdr"]["value"] is not None
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN or Infinity anywhere
