"""The three-way fairness gate: a differential is passed only when its whole interval clears the
limit, failed when the whole interval is beyond it, and otherwise (or on too few people) left
inconclusive, saying why. The old gate passed an FMR ratio of 9 resting on five people."""

import numpy as np
import pytest

from visage_ml.data.pairs import build_pairs
from visage_ml.evaluation.demographic_intervals import accuracy_intervals
from visage_ml.evaluation.fairness import demographic_differentials, make_breakdown
from visage_ml.evaluation.gate import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    combine,
    decide,
    demographic_checks,
    differential_checks,
)


def test_decide_reads_the_interval_not_the_point():
    assert decide(ci_low=1.1, ci_high=1.9, limit=2.0, upper=True)[0] == PASS
    assert decide(ci_low=2.1, ci_high=9.0, limit=2.0, upper=True)[0] == FAIL
    outcome, reason = decide(ci_low=1.5, ci_high=12.0, limit=2.0, upper=True)
    assert outcome == INCONCLUSIVE and "straddles" in reason
    assert decide(ci_low=0.86, ci_high=0.95, limit=0.85, upper=False)[0] == PASS
    assert decide(ci_low=0.5, ci_high=0.7, limit=0.85, upper=False)[0] == FAIL
    assert decide(ci_low=float("nan"), ci_high=1.0, limit=2.0, upper=True)[0] == INCONCLUSIVE


def _population(seed, sizes, *, crowd):
    """Identities in groups; group ``g`` impostors are closer together by ``crowd[g]``."""
    rng = np.random.default_rng(seed)
    dim = 16
    emb, ids, groups = [], [], []
    k = 0
    for g, (n, spread) in enumerate(zip(sizes, crowd, strict=True)):
        axis = np.zeros(dim)
        axis[g] = 2.0
        for _ in range(n):
            c = axis + spread * rng.normal(size=dim)
            c /= np.linalg.norm(c)
            for _ in range(3):
                e = c + 0.08 * rng.normal(size=dim)
                emb.append(e / np.linalg.norm(e))
                ids.append(k)
            groups.append(f"g{g + 1}")
            k += 1
    return np.asarray(emb, np.float32), np.asarray(ids), np.asarray(groups)


def _checks(sizes, crowd, *, min_identities=50, limit=2.0):
    emb, ids, groups = _population(0, sizes, crowd=crowd)
    pairs = build_pairs(emb, ids, impostor_limit=10**7, seed=0)
    labels = tuple(f"g{i + 1}" for i in range(len(sizes)))
    b = make_breakdown("group", groups, labels)
    t = float(np.quantile(pairs.score[~pairs.genuine], 0.995))
    diffs = demographic_differentials(pairs, [b], threshold=t, rounds=60, seed=1)
    return differential_checks(
        diffs,
        max_fmr_ratio={"group": limit},
        max_fnmr_ratio=50.0,
        breakdowns=["group"],
        min_identities={"group": min_identities},
        ci_level=0.95,
    )


def test_a_clear_differential_on_enough_people_fails():
    checks = _checks([60, 60], [0.6, 0.25])
    fmr = next(c for c in checks if c["bound"] == "max_fmr_ratio")
    assert fmr["outcome"] == FAIL, fmr
    assert fmr["ci_low"] > 2.0
    assert combine(checks).outcome == FAIL


def test_five_people_in_a_group_is_inconclusive_and_says_so():
    # The same planted differential, but the second group holds five people.
    checks = _checks([60, 5], [0.6, 0.25])
    fmr = next(c for c in checks if c["bound"] == "max_fmr_ratio")
    assert fmr["outcome"] == INCONCLUSIVE
    assert "too few identities: g2 has 5" in fmr["reason"]
    gate = combine(checks)
    assert gate.outcome == INCONCLUSIVE and not gate.passed
    assert "inconclusive" in gate.describe()


def test_equal_groups_pass_only_when_the_interval_clears_the_limit():
    checks = _checks([70, 70], [0.45, 0.45], limit=4.0)
    fmr = next(c for c in checks if c["bound"] == "max_fmr_ratio")
    assert fmr["ci_high"] <= 4.0 and fmr["outcome"] == PASS, fmr
    strict = _checks([70, 70], [0.45, 0.45], limit=1.05)
    fmr = next(c for c in strict if c["bound"] == "max_fmr_ratio")
    assert fmr["outcome"] in (INCONCLUSIVE, FAIL)


def test_an_enforced_gate_blocks_on_fail_and_on_inconclusive_only_when_told():
    inconclusive = combine([{"outcome": INCONCLUSIVE, "metric": "m", "breakdown": "b"}])
    failed = combine([{"outcome": FAIL, "metric": "m", "breakdown": "b"}])
    assert failed.blocks() and failed.blocks(on_inconclusive="fail")
    assert not inconclusive.blocks()
    assert inconclusive.blocks(on_inconclusive="fail")
    assert not combine([{"outcome": PASS}]).blocks(on_inconclusive="fail")


def _demo_report(acc_by_group, n_ids=60, images=4, seed=0):
    rng = np.random.default_rng(seed)
    codes, groups, hit = [], [], []
    k = 0
    for g, acc in acc_by_group.items():
        for _ in range(n_ids):
            p = np.clip(acc + rng.normal(0, 0.05), 0, 1)
            for _ in range(images):
                codes.append(k)
                groups.append(g)
                hit.append(rng.random() < p)
            k += 1
    codes = np.asarray(codes)
    correct = {"gender_accuracy": (np.ones(len(codes), bool), np.asarray(hit))}
    return accuracy_intervals(
        correct, codes, np.asarray(groups), groups=list(acc_by_group), rounds=100, seed=0
    )


def test_demographic_model_fails_a_group_it_gets_wrong_and_passes_a_fair_model():
    bad = _demo_report({"g1": 0.96, "g2": 0.93, "g3": 0.82, "g4": 0.35})
    assert bad["gender_accuracy"]["lowest_group"] == "g4"
    checks = demographic_checks(
        bad,
        min_accuracy={"gender_accuracy": 0.85},
        min_ratio={"gender_accuracy": 0.9},
        min_identities=50,
    )
    assert [c["outcome"] for c in checks] == [FAIL, FAIL]
    good = _demo_report({"g1": 0.97, "g2": 0.96, "g3": 0.96, "g4": 0.95})
    checks = demographic_checks(
        good,
        min_accuracy={"gender_accuracy": 0.85},
        min_ratio={"gender_accuracy": 0.9},
        min_identities=50,
    )
    assert [c["outcome"] for c in checks] == [PASS, PASS], checks
    few = demographic_checks(
        _demo_report({"g1": 0.97, "g4": 0.95}, n_ids=8),
        min_accuracy={"gender_accuracy": 0.85},
        min_ratio={},
        min_identities=50,
    )
    assert few[0]["outcome"] == INCONCLUSIVE and "too few identities" in few[0]["reason"]


def test_intervals_resample_people_so_fewer_people_means_wider_intervals():
    many = _demo_report({"g1": 0.9}, n_ids=200)["gender_accuracy"]["groups"]["g1"]
    few = _demo_report({"g1": 0.9}, n_ids=12)["gender_accuracy"]["groups"]["g1"]
    assert few["ci_high"] - few["ci_low"] > 2 * (many["ci_high"] - many["ci_low"])
    assert many["ci_low"] <= many["value"] <= many["ci_high"]
    assert many["n_identities"] == 200 and many["n_images"] == 800


@pytest.mark.parametrize("limits", [{"group": 2.0}, 2.0])
def test_limits_are_one_number_or_one_per_breakdown(limits):
    checks = _checks([60, 60], [0.6, 0.25], limit=2.0)
    assert {c["breakdown"] for c in checks} == {"group"}
    from visage_ml.evaluation.gate import limit_of

    assert limit_of(limits, "group", "max_fmr_ratio") == 2.0
    if isinstance(limits, dict):
        with pytest.raises(ValueError, match="group_gender"):
            limit_of(limits, "group_gender", "max_fmr_ratio")
