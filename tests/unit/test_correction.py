"""Counts corrected for known error: the site's mix from its windows, each window's faces
reassigned with it, per-group confusion."""

from __future__ import annotations

import numpy as np
import pytest

from visage_ml.evaluation.confusion import demographic_confusion
from visage_ml.serving.analytics import (
    Analytics,
    CountTable,
    corrected_counts,
    count_predictions,
    release,
)
from visage_ml.serving.correction import ConfusionModel, posterior_counts, site_shares

GROUPS = ["g1", "g2", "g3", "g4"]
OBSERVED = ("group", "gender", "age_band")
GENDERS = ["female", "male"]
BANDS = [18, 30, 45, 60]
LABELS = {"group": GROUPS, "gender": GENDERS, "age_bands": BANDS}
# Per true group: P(predicted gender = true gender); g4 worse than chance (as measured on the
# demo's model), and the group head confuses neighbouring groups.
GENDER_ACC = {"g1": 0.95, "g2": 0.9, "g3": 0.8, "g4": 0.35}
GROUP_CONFUSION = np.array(
    [[0.9, 0.1, 0.0, 0.0], [0.1, 0.8, 0.1, 0.0], [0.0, 0.15, 0.75, 0.1], [0.0, 0.0, 0.3, 0.7]]
)


# A model that passes the demographic gate (every group's gender accuracy >= 0.85) and, like
# the demo's, pulls ages toward the middle: it cannot tell 25 from 35 well.
GATED_GENDER_ACC = {"g1": 0.96, "g2": 0.94, "g3": 0.92, "g4": 0.9}


def people(
    rng: np.random.Generator, n: int, shares=(0.5, 0.25, 0.15, 0.1), female=0.5, ages=(18, 80)
):
    group = rng.choice(4, size=n, p=shares)
    gender = (rng.random(n) >= female).astype(np.int64)  # 0 = female
    age = rng.uniform(ages[0], ages[1], n)
    return group, gender, age


def predict(rng: np.random.Generator, group, gender, age, *, gated: bool = False):
    """Predictions of a model with the error above (age: true age plus noise), or of the
    gated one (``GATED_GENDER_ACC``; age pulled toward 45)."""
    acc = GATED_GENDER_ACC if gated else GENDER_ACC
    pred_group = np.array([rng.choice(4, p=GROUP_CONFUSION[g]) for g in group])
    right = rng.random(group.size) < np.array([acc[GROUPS[g]] for g in group])
    pred_gender = np.where(right, gender, 1 - gender)
    centre = 45 + 0.5 * (age - 45) if gated else age
    return {
        "age": centre + rng.normal(0, 6, age.size),
        "gender_probs": np.eye(2)[pred_gender],
        "group_probs": np.eye(4)[pred_group],
    }


@pytest.fixture(scope="module")
def confusion() -> ConfusionModel:
    """Measured on an evaluation set of 2,000 images (balanced groups, like a decisive one)."""
    rng = np.random.default_rng(0)
    group, gender, age = people(rng, 2000, shares=(0.25, 0.25, 0.25, 0.25))
    doc = demographic_confusion(
        true_age=age,
        true_gender=np.array(GENDERS)[gender],
        true_group=np.array(GROUPS)[group],
        predictions=predict(rng, group, gender, age),
        labels=LABELS,
        model_version="dem-1",
    )
    assert doc["gender"]["g4"]["accuracy"] == pytest.approx(0.35, abs=0.06)
    return ConfusionModel(doc)


@pytest.fixture(scope="module")
def gated() -> ConfusionModel:
    """The gated model's confusion, on the same kind of evaluation set."""
    rng = np.random.default_rng(0)
    group, gender, age = people(rng, 2000, shares=(0.25, 0.25, 0.25, 0.25))
    return ConfusionModel(
        demographic_confusion(
            true_age=age,
            true_gender=np.array(GENDERS)[gender],
            true_group=np.array(GROUPS)[group],
            predictions=predict(rng, group, gender, age, gated=True),
            labels=LABELS,
            model_version="dem-2",
        )
    )


def test_the_site_mix_is_the_one_under_which_its_counts_are_most_likely():
    p = np.array([[0.8, 0.2, 0.0], [0.1, 0.7, 0.2], [0.0, 0.3, 0.7]])
    shares = np.array([0.5, 0.3, 0.2])
    assert site_shares(1000 * shares @ p, p, prior=0.0) == pytest.approx(shares, abs=1e-6)
    # The prior (one face per class) is nothing beside a site's thousand faces...
    assert site_shares(1000 * shares @ p, p) == pytest.approx(shares, abs=2e-3)
    # ...but where the counts cannot tell two classes apart, it keeps them even instead of
    # letting one take everything.
    twins = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    lopsided = np.array([0.8, 0.05, 0.15])
    flat = site_shares(np.array([80.0, 20.0]), twins, prior=0.0, start=lopsided)
    assert flat[0] > 0.75  # without it, wherever the search started
    even = site_shares(np.array([80.0, 20.0]), twins, start=lopsided)
    assert even[:2] == pytest.approx([0.42, 0.42], abs=0.01)
    # Counts no mix on the simplex gives (the inverse would be negative): shares stay shares,
    # and the window's faces are all accounted for.
    est = site_shares(np.array([0.0, 0.0, 10.0]), p)
    assert np.all(est >= 0) and est.sum() == pytest.approx(1.0)
    assert posterior_counts(np.array([0.0, 0.0, 10.0]), p, est).sum() == pytest.approx(10.0)
    # A window corrected with its own most likely mix gives that mix's counts (the estimate is
    # the fixed point of reassigning its faces).
    c = np.array([40.0, 35.0, 25.0])
    own = site_shares(c, p, prior=0.0)
    assert posterior_counts(c, p, own) == pytest.approx(100 * own, abs=1e-3)


def site_windows(rng, *, n_windows, faces, shares, female, ages=(18, 80)):
    """Consecutive windows of one site seen by the gated model: predicted and true counts."""
    out = []
    for _ in range(n_windows):
        group, gender, age = people(rng, faces, shares=shares, female=female, ages=ages)
        pred = predict(rng, group, gender, age, gated=True)
        table = count_predictions(pred, age_bands=BANDS, genders=GENDERS, groups=GROUPS)
        observed = {dim: np.array(list(getattr(table, dim).values()), float) for dim in OBSERVED}
        band = np.searchsorted(BANDS, age, side="right")
        truth = {
            "group": np.bincount(group, minlength=4),
            "gender": np.bincount(gender, minlength=2),
            "age_band": np.bincount(band, minlength=5),
        }
        out.append((observed, truth))
    return out


def window_errors(confusion, windows, *, keep, rng, rounds=0):
    """Mean absolute error per cell (all dimensions) of raw and corrected counts, with the
    site's mix estimated from the last ``keep`` windows and this one (0: this one alone), and
    the share of cells whose interval holds the truth."""
    raw, cor, covered, cells, past = [], [], 0, 0, []
    for observed, truth in windows:
        history = {d: observed[d] + sum((p[d] for p in past), 0.0) for d in observed}
        est = confusion.correct_all(observed, history=history, rounds=rounds, rng=rng)
        past = [*past, observed][-keep:] if keep else []
        for dim, names in (
            ("group", GROUPS),
            ("gender", GENDERS),
            ("age_band", confusion.age_labels),
        ):
            e = np.array([est[dim].estimate[k] for k in names])
            raw.append(np.abs(observed[dim] - truth[dim]).mean())
            cor.append(np.abs(e - truth[dim]).mean())
            if rounds:
                lo = np.array([est[dim].low[k] for k in names])
                hi = np.array([est[dim].high[k] for k in names])
                covered += int(((truth[dim] >= lo - 0.5) & (truth[dim] <= hi + 0.5)).sum())
                cells += len(names)
    return float(np.mean(raw)), float(np.mean(cor)), covered / cells if cells else None


def test_small_windows_of_a_young_site_are_corrected_with_the_sites_mix(gated):
    """A campus (ages 18-30, three women in four, mostly g4), 40 windows of 30 faces, seen by
    a model that pulls ages toward 45: its raw age bands put the young in 30-44. One window
    alone holds too few faces to tell its mix; the site's windows pooled do. Measured (all
    cells, three seeds): raw MAE 4.3-4.5, each window alone 0.40-0.43x, with the site's mix
    0.23-0.27x; intervals held 97% of true counts."""
    rng = np.random.default_rng(5)
    site = {"shares": (0.1, 0.15, 0.25, 0.5), "female": 0.75, "ages": (18, 30)}
    windows = site_windows(rng, n_windows=40, faces=30, **site)
    raw, alone, _ = window_errors(gated, windows, keep=0, rng=rng)
    raw, pooled, coverage = window_errors(gated, windows, keep=60, rng=rng, rounds=60)
    assert pooled <= 0.5 * raw, (raw, pooled)
    assert pooled < alone, (alone, pooled)
    assert coverage >= 0.85, coverage


def test_a_site_like_the_evaluation_set_is_not_made_worse(gated):
    """Balanced groups, half women, ages 18-80 (the evaluation set's mix): gender and group
    have little bias to fix, the age bands some (the model moves the young and the old toward
    the middle bands). Measured over three seeds: 0.61-0.71x the raw counts' error."""
    rng = np.random.default_rng(6)
    windows = site_windows(rng, n_windows=40, faces=30, shares=(0.25,) * 4, female=0.5)
    raw, pooled, _ = window_errors(gated, windows, keep=60, rng=rng)
    assert pooled <= raw, (raw, pooled)


def test_corrected_counts_have_at_most_half_the_error_of_raw_counts(confusion):
    """Windows of 1,000 faces, each crowd of its own mix and corrected alone (no history):
    mean absolute error per gender and group cell, raw against corrected, and how often the
    95% interval holds the true count.

    The raw error is a bias that grows with the window; a window alone must also estimate its
    own mix from its faces, whose classification noise the correction then carries. Measured
    with this model: corrected/raw MAE 1.01 (gender) and 0.71 (group) at 100 faces, 0.54 and
    0.58 at 300, 0.31 and 0.33 at 1,000. A site's windows pooled do better in small windows
    (test_small_windows_of_a_young_site_are_corrected_with_the_sites_mix)."""
    rng = np.random.default_rng(1)
    raw_err, cor_err, covered, cells = [], [], 0, 0
    for _ in range(20):
        shares = rng.dirichlet(np.ones(4) * 2)
        group, gender, age = people(rng, 1000, shares=shares, female=rng.uniform(0.15, 0.85))
        table = count_predictions(
            predict(rng, group, gender, age), age_bands=BANDS, genders=GENDERS, groups=GROUPS
        )
        observed = {dim: np.array(list(getattr(table, dim).values())) for dim in OBSERVED}
        est = confusion.correct_all(observed, rounds=100, rng=rng)
        for dim, truth_codes, names in (("gender", gender, GENDERS), ("group", group, GROUPS)):
            truth = np.bincount(truth_codes, minlength=len(names))
            raw = np.array([getattr(table, dim)[k] for k in names])
            corrected = np.array([est[dim].estimate[k] for k in names])
            raw_err.append(np.abs(raw - truth).mean())
            cor_err.append(np.abs(corrected - truth).mean())
            lo = np.array([est[dim].low[k] for k in names])
            hi = np.array([est[dim].high[k] for k in names])
            covered += int(((truth >= lo - 0.5) & (truth <= hi + 0.5)).sum())
            cells += len(names)
    raw_mae, cor_mae = float(np.mean(raw_err)), float(np.mean(cor_err))
    assert cor_mae <= 0.5 * raw_mae, (raw_mae, cor_mae)
    assert covered / cells >= 0.85, covered / cells


def test_a_crowd_unlike_the_evaluation_set_is_still_corrected(confusion):
    """Only g4 people, 80% women (the model gets g4's gender wrong 65% of the time)."""
    rng = np.random.default_rng(2)
    group, gender, age = people(rng, 400, shares=(0, 0, 0, 1.0), female=0.8)
    table = count_predictions(
        predict(rng, group, gender, age), age_bands=BANDS, genders=GENDERS, groups=GROUPS
    )
    truth = np.bincount(gender, minlength=2)
    raw = np.array([table.gender[k] for k in GENDERS])
    observed = {dim: np.array(list(getattr(table, dim).values())) for dim in OBSERVED}
    est = confusion.correct_all(observed, rounds=100, rng=rng)["gender"]
    corrected = np.array([est.estimate[k] for k in GENDERS])
    # The raw count is off by a third of the crowd; the correction is nearer, and its interval
    # (wide: 0.35 accuracy is little information) holds the truth.
    assert np.abs(corrected - truth).max() < np.abs(raw - truth).max()
    assert est.low["female"] <= truth[0] <= est.high["female"]


def test_windows_report_corrected_counts_beside_raw_ones_and_suppress_small_cells(confusion):
    rng = np.random.default_rng(3)
    group, gender, age = people(rng, 80)
    table = count_predictions(
        predict(rng, group, gender, age), age_bands=BANDS, genders=GENDERS, groups=GROUPS
    )
    out = release(table, k_min=5, epsilon=0.0, confusion=confusion, rounds=50, rng=rng)
    corrected = out["corrected"]
    assert set(corrected) == {"age_band", "gender", "group"}
    for dim in ("gender", "group"):
        for name, raw in out[dim].items():
            cell = corrected[dim][name]
            if raw == "suppressed":
                assert cell == "suppressed"
            elif cell != "suppressed":
                assert cell["low"] <= cell["count"] <= cell["high"]
                assert cell["count"] >= 5
    total = sum(c["count"] for c in corrected["gender"].values() if c != "suppressed")
    assert total == pytest.approx(80, abs=1.0)
    # Without a confusion report: raw counts only, as before.
    assert "corrected" not in release(table, k_min=5, epsilon=0.0, rng=rng)
    # Without resamples no interval is made up: [count, count] read as certainty.
    bare = release(table, k_min=5, epsilon=0.0, confusion=confusion, rounds=0, rng=rng)
    cells = [c for d in ("gender", "group") for c in bare["corrected"][d].values()]
    assert any(c != "suppressed" for c in cells)
    assert all(c["low"] is None and c["high"] is None for c in cells if c != "suppressed")


def test_closed_windows_of_the_service_carry_corrected_counts(confusion):
    class Engine:
        class demographics:  # noqa: N801 - stands in for the model object
            labels = LABELS

        faces = np.random.default_rng(0)  # distinct faces: each counts once in its window

        def detect(self, image):
            return [
                type("F", (), {"crop": self.faces.integers(0, 256, (8, 8, 3), np.uint8)})()
                for _ in range(12)
            ]

        def predict(self, crops):
            rng = np.random.default_rng(len(crops))
            group, gender, age = people(rng, len(crops))
            return predict(rng, group, gender, age)

    clock = [1000.0]
    analytics = Analytics(
        Engine(), k_min=1, window_seconds=60, clock=lambda: clock[0], confusion=confusion
    )
    for _ in range(3):
        assert analytics.analyze(object())["counts"] is None  # only windows are released
    clock[0] += 60
    (window,) = analytics.windows()
    assert window["counts"]["faces"] == 36
    assert {"count", "low", "high"} <= set(window["counts"]["corrected"]["gender"]["female"])


def test_corrected_counts_do_not_give_away_how_suppressed_cells_split(confusion):
    # Two windows that release the same raw cells and differ only in how four faces split
    # between the two suppressed groups: whatever is released must not tell them apart. The
    # correction mixes every cell of a dimension, so corrected figures computed from the
    # hidden cells (as they were) differed: 8.6 vs 9.5 for g2, which with the published
    # confusion report gives the split away.
    def table(g3: int, g4: int, g1: int = 26) -> CountTable:
        return CountTable(
            age_band={"<18": 0, "18-29": 9, "30-44": 10, "45-59": 10, "60+": 11},
            gender={"female": 20, "male": 20},
            group={"g1": g1, "g2": 10, "g3": g3, "g4": g4},
            faces=40,
        )

    releases = [
        release(
            table(g3, 4 - g3),
            k_min=5,
            epsilon=0.0,
            confusion=confusion,
            rounds=20,
            rng=np.random.default_rng(1),
        )
        for g3 in range(5)
    ]
    assert releases[0]["group"] == {"g1": 26, "g2": 10, "g3": "suppressed", "g4": "suppressed"}
    assert all(r == releases[0] for r in releases[1:]), releases
    # The hidden groups enter as one cell of their sum (40 - 26 - 10, public anyway): the
    # corrected figures are released, and the same whatever the split.
    corrected = releases[0]["corrected"]
    assert isinstance(corrected["group"]["g1"], dict)
    assert isinstance(corrected["gender"]["female"], dict)
    # The age bands hide "<18" (0) and, so that it cannot be worked out, the smallest band
    # (18-29: 9, under every band shown; a tie would hide them all): the others are still
    # corrected, as the bands the model was measured on.
    assert isinstance(corrected["age_band"]["60+"], dict)
    # A different split of released cells does move them (the rule is not "constant").
    other = release(
        table(2, 2, g1=20),
        k_min=5,
        epsilon=0.0,
        confusion=confusion,
        rounds=20,
        rng=np.random.default_rng(1),
    )
    assert other["corrected"]["group"] != corrected["group"]


def test_a_released_total_lets_every_dimension_with_hidden_cells_be_corrected(confusion):
    """No dimension released whole: the released total still makes each hidden sum public."""
    table = CountTable(
        age_band={"<18": 0, "18-29": 2, "30-44": 20, "45-59": 10, "60+": 8},
        gender={"female": 38, "male": 2},
        group={"g1": 30, "g2": 6, "g3": 3, "g4": 1},
        faces=40,
    )
    out = release(table, k_min=5, epsilon=0.0, confusion=confusion, rounds=0)
    assert out["faces"] == 40
    assert all("suppressed" in out[d].values() for d in ("age_band", "gender", "group"))
    assert isinstance(out["corrected"]["group"]["g1"], dict)
    assert isinstance(out["corrected"]["age_band"]["30-44"], dict)


def test_windows_whose_total_is_hidden_with_their_cells_are_not_corrected(confusion):
    """With the total withheld and no dimension released whole, the hidden cells' sum is not
    public either: nothing corrected is released."""
    released = {
        "faces": "suppressed",
        "age_band": {"<18": "suppressed", "18-29": 10, "30-44": "suppressed", "45-59": 9, "60+": 8},
        "gender": {"female": "suppressed", "male": 20},
        "group": {"g1": 20, "g2": "suppressed", "g3": 6, "g4": "suppressed"},
    }
    out = corrected_counts(confusion, released, k_min=5, rounds=0, rng=np.random.default_rng(0))
    for dim in ("group", "gender", "age_band"):
        assert set(out[dim].values()) == {"suppressed"}


def test_the_site_mix_uses_only_what_earlier_windows_released(confusion):
    """An earlier window adds to the site's mix only where it hid no cell that this window
    shows: its hidden cells must not move this window's corrected figures."""
    released = {
        "faces": 40,
        "age_band": {"<18": 0, "18-29": 10, "30-44": 10, "45-59": 10, "60+": 10},
        "gender": {"female": 20, "male": 20},
        "group": {"g1": 20, "g2": 10, "g3": 5, "g4": 5},
    }

    def earlier(g3: int) -> dict:
        return {
            "faces": 65,
            "age_band": {"<18": 0, "18-29": 50, "30-44": 5, "45-59": 5, "60+": 5},
            "gender": {"female": 60, "male": 5},
            "group": {"g1": 50, "g2": 11, "g3": "suppressed", "g4": "suppressed", "_g3": g3},
        }

    def run(history):
        return corrected_counts(
            confusion, released, k_min=1, rounds=0, rng=np.random.default_rng(0), history=history
        )

    alone = run([])
    # Its hidden group cells (shown in this window) keep its groups out, and however they
    # split, nothing released moves.
    assert run([earlier(1)]) == run([earlier(3)])
    assert run([earlier(1)])["group"] == alone["group"]
    # Released whole, an earlier window does move the estimate toward its mix.
    whole = earlier(0)
    whole["group"] = {"g1": 50, "g2": 5, "g3": 5, "g4": 5}
    moved = run([whole])
    assert moved["gender"]["female"]["count"] > alone["gender"]["female"]["count"]


def test_a_confusion_report_of_other_age_bands_is_refused(confusion, tmp_path):
    """A model cutting ages at 65 served with a report cut at 60: its 45-64 faces would be read
    through the wrong rows and their corrected counts fall outside their own intervals."""
    import json
    from types import SimpleNamespace

    from visage_ml.serving.correction import load_confusion

    (tmp_path / "demographic_confusion.json").write_text(json.dumps(confusion.doc))
    paths = SimpleNamespace(reports=tmp_path)
    same = {**LABELS}
    model, _ = load_confusion(paths, model_version="dem-1", labels=same)
    assert model.age_labels == confusion.age_labels
    other = {**LABELS, "age_bands": [*LABELS["age_bands"][:-1], LABELS["age_bands"][-1] + 5]}
    with pytest.raises(ValueError, match="age"):
        load_confusion(paths, model_version="dem-1", labels=other)


def test_faces_predicted_in_a_class_the_evaluation_never_predicted_are_not_dropped(confusion):
    """No evaluation person was predicted a minor, so the report says nothing of who is: the
    correction dropped such faces (20 of 140 gone from the age bands) and showed "<18" as
    "suppressed", the word for a cell under k_min, although 20 were released raw."""
    import json

    doc = json.loads(json.dumps(confusion.doc))
    for g in doc["age_band"]:
        doc["age_band"][g]["counts"] = [[0, *row[1:]] for row in doc["age_band"][g]["counts"]]
    no_minors = ConfusionModel(doc)
    assert not no_minors.evidenced("age_band")[0] and no_minors.evidenced("age_band")[1:].all()
    table = CountTable(
        age_band={"<18": 20, "18-29": 30, "30-44": 30, "45-59": 30, "60+": 30},
        gender={"female": 70, "male": 70},
        group={"g1": 50, "g2": 30, "g3": 30, "g4": 30},
        faces=140,
    )
    out = release(
        table, k_min=5, epsilon=0.0, confusion=no_minors, rounds=20, rng=np.random.default_rng(2)
    )
    assert out["age_band"]["<18"] == 20
    corrected = out["corrected"]
    assert corrected["age_band"]["<18"] == "not_estimated"
    assert corrected["not_estimated"] == {"age_band": 20}
    shown = [c["count"] for c in corrected["age_band"].values() if isinstance(c, dict)]
    assert len(shown) == 4 and sum(shown) == pytest.approx(120, abs=0.5)
    # With evidence for every class nothing is marked.
    evidenced = release(
        table, k_min=5, epsilon=0.0, confusion=confusion, rounds=20, rng=np.random.default_rng(2)
    )["corrected"]
    assert "not_estimated" not in evidenced


def test_the_draws_leave_a_class_nobody_was_predicted_in_as_empty_as_the_estimate(confusion):
    """The bootstrap's prior revived the "<18" column no evaluation face was predicted in, so
    the draws reassigned faces the estimate leaves out: the adult bands' intervals missed their
    own estimates."""
    import json

    doc = json.loads(json.dumps(confusion.doc))
    for g in doc["age_band"]:
        doc["age_band"][g]["counts"] = [[0, *row[1:]] for row in doc["age_band"][g]["counts"]]
    no_minors = ConfusionModel(doc)
    observed = {
        "group": np.array([20.0, 15, 10, 5]),
        "gender": np.array([25.0, 25]),
        "age_band": np.array([20.0, 10, 10, 5, 5]),
    }
    out = no_minors.correct_all(observed, rounds=200, rng=np.random.default_rng(4))
    ages = out["age_band"]
    assert sum(ages.estimate.values()) == pytest.approx(30)
    for band in ("18-29", "30-44", "45-59", "60+"):
        # Only the 30 faces predicted adult can be reassigned, in the draws as in the estimate.
        assert ages.high[band] <= 30, (band, ages.high)
        assert ages.low[band] <= ages.estimate[band] <= ages.high[band], band
    assert ages.estimate["<18"] == ages.low["<18"] == ages.high["<18"] == 0


def test_every_corrected_interval_holds_its_own_estimate(confusion):
    """A crowd mostly of g4, whose gender the model gets wrong two times in three: the draws
    lean away from the estimate (female 24.1 with an interval [4, 24.05]) and a reader is
    shown an estimate outside its own interval."""
    for seed in range(10):
        r = np.random.default_rng(100 + seed)
        observed = {
            "group": r.multinomial(30, [0.05, 0.05, 0.1, 0.8]).astype(float),
            "gender": r.multinomial(30, [0.2, 0.8]).astype(float),
            "age_band": r.multinomial(30, [0, 0.7, 0.3, 0, 0]).astype(float),
        }
        out = confusion.correct_all(observed, rounds=100, rng=np.random.default_rng(seed))
        for dim, c in out.items():
            for k, e in c.estimate.items():
                assert c.low[k] <= e <= c.high[k], (seed, dim, k, e, c.low[k], c.high[k])
