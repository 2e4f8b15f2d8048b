"""The one per-group mechanism: same numbers as fairlearn's MetricFrame, to the bit."""

import functools

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame

from visage_ml.evaluation.demographics import accuracy, band_accuracy, mean_absolute_error
from visage_ml.evaluation.groups import Partition, frame_summary


@pytest.fixture(scope="module")
def ages():
    rng = np.random.default_rng(7)
    n = 5000
    y_true = rng.integers(18, 80, n).astype(np.float64)
    y_pred = y_true + rng.normal(0.0, 7.3, n).astype(np.float32).astype(np.float64)
    groups = rng.choice(["g1", "g2", "g3", "g4"], n, p=[0.4, 0.3, 0.2, 0.1])
    return y_true, y_pred, groups


@pytest.mark.parametrize(
    "metric",
    [
        mean_absolute_error,
        functools.partial(band_accuracy, bands=[18, 30, 45, 60]),
        lambda t, p: accuracy(np.rint(t / 10), np.rint(p / 10)),
    ],
    ids=["mae", "band_accuracy", "accuracy"],
)
def test_frame_summary_equals_metricframe_exactly(ages, metric):
    y_true, y_pred, groups = ages
    ours = frame_summary(metric, y_true, y_pred, groups, name="m")
    mf = MetricFrame(metrics={"m": metric}, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    # Exact equality: a reviewer's MetricFrame reproduces the report's numbers digit for digit.
    assert ours["overall"] == float(mf.overall["m"])
    assert ours["by_group"] == {str(k): float(v) for k, v in mf.by_group["m"].items()}
    assert ours["difference"] == float(mf.difference()["m"])
    assert ours["ratio"] == float(mf.ratio()["m"])
    assert list(ours["by_group"]) == ["g1", "g2", "g3", "g4"]
    assert sum(ours["n"].values()) == y_true.size


def test_vectorised_sums_match_per_group_sums_for_weights():
    rng = np.random.default_rng(1)
    codes = rng.integers(-1, 6, 20_000)
    weights = rng.integers(0, 5, codes.size).astype(np.float64)
    part = Partition(codes, [f"c{i}" for i in range(7)])
    expected = [weights[codes == i].sum() for i in range(7)]
    np.testing.assert_array_equal(part.sums(weights), expected)
    assert part.n.tolist() == [int((codes == i).sum()) for i in range(7)]
    assert part.n[6] == 0 and part.sums(weights)[6] == 0.0


def test_apply_keeps_sample_order_and_marks_empty_groups():
    codes = np.array([1, 0, 1, -1, 1, 0])
    values = np.array([10, 20, 30, 40, 50, 60])
    part = Partition(codes, ["a", "b", "empty"])
    seen = part.apply(
        lambda x, sample_weight: (x.tolist(), sample_weight.tolist()),
        values,
        missing=None,
        sample_weight=values * 2,
    )
    assert seen == [([20, 60], [40, 120]), ([10, 30, 50], [20, 60, 100]), None]


def test_from_values_leaves_out_unlisted_values():
    part = Partition.from_values(["x", "y", "z", "x"], labels=["x", "y"])
    assert part.codes.tolist() == [0, 1, -1, 0]
    assert part.n.tolist() == [2, 1]
    assert Partition.from_values(["b", "a", "b"]).labels == ("a", "b")


def test_unlabeled_samples_count_overall_but_form_no_group():
    y_true = np.array([1, 1, 0, 0, 1, 0])
    y_pred = np.array([1, 0, 0, 0, 0, 1])
    sens = np.array(["a", "a", "b", "b", "unlabeled", "unlabeled"])

    def acc(t, p):
        return float(np.mean(t == p))

    out = frame_summary(acc, y_true, y_pred, sens, name="acc", unlabeled="unlabeled")
    assert out["by_group"] == {"a": 0.5, "b": 1.0} and out["difference"] == 0.5
    assert out["overall"] == pytest.approx(3 / 6)
    assert out["unlabeled"] == {"n": 2, "share": pytest.approx(1 / 3), "value": 0.0}
    # Without the option the unlabeled samples would be a group of their own.
    assert "unlabeled" in frame_summary(acc, y_true, y_pred, sens, name="acc")["by_group"]
