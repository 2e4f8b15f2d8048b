"""Label-free score calibration (FSN, FairCal, AS-norm): it evens out FMR between regions of the
embedding space without labels, keeps raw scores for `none`, round-trips as a released file,
scores a pair as serving does, and refuses another embedder's or a tampered calibration."""

import json

import numpy as np
import pytest

from visage_ml.data.pairs import build_pairs, threshold_at_far
from visage_ml.evaluation.calibration import (
    NO_CALIBRATION,
    ScoreCalibration,
    calibrate,
    calibration_set,
    fit_all,
    fit_beta,
    load_calibration,
)
from visage_ml.evaluation.calibration_report import compare_calibrations, rescored
from visage_ml.evaluation.fairness import make_breakdown
from visage_ml.serving.index import TemplateIndex
from visage_ml.serving.score_calibration import load_score_calibration


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def population(seed: int, *, per_region: int = 60, images: int = 3, dim: int = 24):
    """Two regions of the embedding space: in ``crowded`` people look more alike (impostor
    scores are higher), as dark-skinned women did for the demo's embedder."""
    rng = np.random.default_rng(seed)
    axes = np.eye(dim)
    emb, ids, region = [], [], []
    for r, spread in enumerate((1.0, 0.45)):
        for k in range(per_region):
            centre = _unit(axes[r] * 2.0 + spread * rng.normal(size=dim) / np.sqrt(dim) * 4)
            for _ in range(images):
                emb.append(_unit(centre + 0.18 * rng.normal(size=dim) / np.sqrt(dim) * 2))
                ids.append(r * per_region + k)
                region.append(["open", "crowded"][r])
    return np.asarray(emb, np.float32), np.asarray(ids), np.asarray(region)


def fmr_by_region(pairs, id_region, threshold):
    out = {}
    imp = ~pairs.genuine
    for r in ("open", "crowded"):
        same = imp & (id_region[pairs.id_a] == r) & (id_region[pairs.id_b] == r)
        out[r] = float(np.mean(pairs.score[same] >= threshold))
    return out


@pytest.fixture(scope="module")
def fitted():
    emb, ids, _ = population(1)
    cal = calibration_set(emb, ids, n_clusters=2, impostor_pairs_max=10**6, seed=3)
    return fit_all(
        cal,
        ["none", "fsn", "faircal", "asnorm"],
        target_fmr=1e-2,
        min_cluster_impostors=200,
        cohort_top_k=20,
    )


@pytest.mark.parametrize("method", ["fsn", "faircal", "asnorm"])
def test_calibration_evens_fmr_between_regions_it_never_saw_labels_of(fitted, method):
    emb, ids, region = population(2)  # other people than the calibration's
    id_region = np.array([region[ids == k][0] for k in range(ids.max() + 1)])
    raw = build_pairs(emb, ids, impostor_limit=10**6, seed=0)
    t = threshold_at_far(raw.score[~raw.genuine], 1e-2)
    before = fmr_by_region(raw, id_region, t)
    assert before["crowded"] > 5 * before["open"]  # the planted differential

    cal = fitted[method]
    fixed = rescored(raw, cal, cal.sides(emb))
    t2 = threshold_at_far(fixed.score[~fixed.genuine], 1e-2)
    after = fmr_by_region(fixed, id_region, t2)
    ratio_before = max(before.values()) / max(min(before.values()), 1e-4)
    ratio_after = max(after.values()) / max(min(after.values()), 1e-4)
    assert ratio_after < ratio_before / 3, (before, after)


def test_none_leaves_scores_unchanged_and_calibrate_accepts_both_shapes(fitted):
    emb, _, _ = population(4, per_region=5)
    scores = emb @ emb.T
    assert np.array_equal(calibrate(scores, emb, emb), scores)
    assert np.array_equal(calibrate(scores, emb, emb, calibration=fitted["none"]), scores)
    cal = fitted["fsn"]
    matrix = calibrate(scores, emb, emb, calibration=cal)
    paired = calibrate(np.diag(scores).copy(), emb, emb, calibration=cal)
    assert np.allclose(np.diag(matrix), paired)
    assert not np.allclose(matrix, scores)
    with pytest.raises(ValueError, match="calibrate"):
        calibrate(scores[:3], emb, emb, calibration=cal)


@pytest.mark.parametrize("method", ["none", "fsn", "faircal"])
def test_released_document_round_trips_and_holds_no_identities(fitted, method, tmp_path):
    doc = json.loads(json.dumps(fitted[method].to_dict()))
    back = load_calibration(doc)
    emb, _, _ = population(5, per_region=4)
    s = emb @ emb.T
    assert np.allclose(back.calibrate(s, emb, emb), fitted[method].calibrate(s, emb, emb))
    assert set(doc) == {
        "format",
        "method",
        "score",
        "n_clusters",
        "centroids",
        "shift",
        "beta",
        "weight",
        "global_beta",
        "info",
    }
    assert "pid" not in json.dumps(doc)


def test_serving_refuses_a_calibration_fitted_for_another_embedder(fitted, tmp_path):
    from visage_ml.config import ProjectPaths

    cal = ScoreCalibration(
        method="fsn",
        centroids=fitted["fsn"].centroids,
        shift=fitted["fsn"].shift,
        info={"embedder_model_version": "aaaa"},
    )
    paths = ProjectPaths(tmp_path)
    paths.reports.mkdir()
    (paths.reports / "score_calibration.json").write_text(json.dumps(cal.to_dict()))
    loaded, digest = load_score_calibration(paths, model_version="aaaa")
    assert loaded.method == "fsn" and len(digest) == 64
    with pytest.raises(ValueError, match="dvc repro evaluate"):
        load_score_calibration(paths, model_version="bbbb")
    (paths.reports / "score_calibration.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="format"):
        load_score_calibration(paths, model_version=None)


@pytest.mark.parametrize("method", ["faircal", "asnorm"])
def test_index_searches_and_verifies_on_calibrated_scores(fitted, method):
    cal = fitted[method]
    emb, _, _ = population(6, per_region=8, images=1)
    index = TemplateIndex(emb.shape[1])
    pids = [f"p{i:016x}" for i in range(len(emb))]
    index.extend(pids[:10], emb[:10])
    index.set_calibration(cal)  # clusters of rows already there
    for p, v in zip(pids[10:], emb[10:], strict=True):
        index.put(p, v)  # and of rows added after
    index.remove(pids[3])  # the last row moves into the hole with its cluster
    q = emb[[0, 12]]
    expected = calibrate(
        q @ np.stack([emb[pids.index(p)] for p in index.pids()]).T,
        q,
        np.stack([emb[pids.index(p)] for p in index.pids()]),
        calibration=cal,
    )
    found = index.search(q, top_k=3, threshold=-10.0)
    for row, hits in enumerate(found):
        best = np.sort(expected[row])[::-1][:3]
        assert np.allclose([s for _, s in hits], best)
    assert index.score(pids[12], emb[0]) == pytest.approx(
        float(
            calibrate(np.array([float(emb[12] @ emb[0])]), emb[[0]], emb[[12]], calibration=cal)[0]
        )
    )
    index.set_calibration(NO_CALIBRATION)
    assert index.score(pids[12], emb[0]) == pytest.approx(float(emb[12] @ emb[0]))


def test_beta_map_is_monotone_even_when_the_data_would_bend_it():
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, 4000)
    y = rng.random(4000) < np.where(s > 0.5, 0.9, 0.05)
    a, b, _ = fit_beta(s, y)
    assert a >= 0 and b >= 0


def test_comparison_judges_each_method_on_the_goals(fitted):
    emb, ids, region = population(7)
    id_region = np.array([region[ids == k][0] for k in range(ids.max() + 1)])
    pairs = build_pairs(emb, ids, impostor_limit=10**6, seed=0)
    b = make_breakdown("group", id_region, ("open", "crowded"))
    out = compare_calibrations(
        pairs,
        emb,
        fitted,
        [b],
        target_fmr=1e-2,
        fmr_limits={"group": 2.0},
        max_tar_cost=0.02,
        served="fsn",
        rounds=30,
        seed=0,
        ci_level=0.95,
    )
    rows = out["methods"]
    assert rows["none"]["goals"]["fmr_max_min_ratio.group"]["met"] is False
    assert rows["none"]["tar_cost"] == 0
    assert rows["fsn"]["served"] and not rows["none"]["served"]
    assert out["best"] in (None, "fsn", "faircal", "asnorm")
    fmr_none = rows["none"]["breakdowns"]["group"]["fmr_max_min_ratio"]["value"]
    fmr_fsn = rows["fsn"]["breakdowns"]["group"]["fmr_max_min_ratio"]["value"]
    assert fmr_fsn < fmr_none
    assert "dvc exp run" in out["training"]["group_balanced"]


def test_once_released_the_calibration_cannot_be_swapped_or_deleted_to_serve_raw_scores(
    fitted, tmp_path
):
    from visage_ml.config import ProjectPaths
    from visage_ml.io import sha256_file
    from visage_ml.serving.release import SCORE_CALIBRATION_JSON, Release, ReleaseError
    from visage_ml.serving.score_calibration import released_calibration

    paths = ProjectPaths(tmp_path)
    paths.reports.mkdir()
    path = paths.reports / "score_calibration.json"
    path.write_text(json.dumps(fitted["fsn"].to_dict()))
    # An evaluation from before calibration released none: its thresholds are of raw scores.
    assert released_calibration(paths, {}, model_version="x") is None
    releases = {
        SCORE_CALIBRATION_JSON: Release(SCORE_CALIBRATION_JSON, sha256_file(path), 7, "evaluate")
    }
    assert released_calibration(paths, releases, model_version="x").method == "fsn"
    # An operator swaps in the identity (raw scores): refused.
    path.write_text(json.dumps(fitted["none"].to_dict()))
    with pytest.raises(ReleaseError, match="changed or replaced"):
        released_calibration(paths, releases, model_version="x")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="dvc repro evaluate"):
        released_calibration(paths, releases, model_version="x")


# ---------------------------------------------------------------------------------------------
# AS-norm: the cohort travels in the released file; evaluation and serving score alike
# ---------------------------------------------------------------------------------------------


def _release(cal, tmp_path):
    from visage_ml.config import ProjectPaths

    paths = ProjectPaths(tmp_path)
    paths.reports.mkdir(exist_ok=True)
    (paths.reports / "score_calibration.json").write_text(json.dumps(cal.to_dict()))
    return paths


def test_asnorm_file_carries_its_cohort_compactly_and_round_trips_bit_for_bit(fitted, tmp_path):
    cal = fitted["asnorm"]
    doc = json.loads(json.dumps(cal.to_dict()))
    assert doc["method"] == "asnorm" and doc["n_clusters"] == 0
    assert doc["cohort"]["dtype"] == "<f4" and doc["cohort"]["shape"] == list(cal.cohort.shape)
    # base64 float32 (4/3 bytes of text per byte), not a list of decimals.
    assert len(doc["cohort"]["base64"]) <= cal.cohort.size * 4 * 4 / 3 + 4
    # Synthetic calibration people's embeddings only: no pid, no identity code beside them.
    assert "pid" not in json.dumps({**doc, "cohort": {**doc["cohort"], "base64": ""}})
    back, digest = load_score_calibration(_release(cal, tmp_path), model_version=None)
    assert len(digest) == 64 and np.array_equal(back.cohort, cal.cohort)
    emb, _, _ = population(5, per_region=4)
    s = emb @ emb.T
    assert np.array_equal(back.calibrate(s, emb, emb), cal.calibrate(s, emb, emb))
    # A cosine-like scale: inside (-1, 1), increasing in the raw score for fixed sides.
    out = cal.calibrate(s, emb, emb)
    assert np.all(np.abs(out) < 1)
    side = cal.sides(emb[:2])
    grid = np.linspace(-1, 1, 101)
    assert np.all(np.diff(cal.apply(grid, side[0], side[1])) > 0)


def test_a_pair_scores_the_same_in_evaluation_and_in_serving(fitted, tmp_path):
    """Evaluation rescoring its pairs, its score-model matrix, its open-set search, and serving's
    index (from the released file) give one score per pair."""
    from visage_ml.evaluation.identification import search_scores
    from visage_ml.serving.index import normalize_queries

    cal = fitted["asnorm"]
    served, _ = load_score_calibration(_release(cal, tmp_path), model_version=None)
    emb, ids, _ = population(8, per_region=10)
    pairs = build_pairs(emb, ids, impostor_limit=10**5, seed=0)
    evaluated = rescored(pairs, cal, cal.sides(emb)).score
    matrix = calibrate(emb @ emb.T, emb, emb, calibration=cal)
    index = TemplateIndex(emb.shape[1])
    pids = [f"p{i:016x}" for i in range(len(emb))]
    index.extend(pids, emb)  # each image enrolled as a template
    index.set_calibration(served)
    rng = np.random.default_rng(0)
    for k in rng.choice(pairs.score.size, 50, replace=False):
        a, b = int(pairs.a[k]), int(pairs.b[k])
        q = normalize_queries(emb[a], emb.shape[1])[0]
        assert index.score(pids[b], q) == pytest.approx(evaluated[k], abs=2e-5)
        assert matrix[a, b] == pytest.approx(evaluated[k], abs=2e-5)
    q = normalize_queries(emb[:4], emb.shape[1])
    best = search_scores(q, emb, np.arange(len(emb)), len(emb), calibration=cal)
    for row, hits in enumerate(index.search(q, top_k=3, threshold=-1.0)):
        assert [s for _, s in hits] == pytest.approx(np.sort(best[row])[::-1][:3], abs=2e-5)


def test_scores_do_not_read_group_labels(fitted):
    """Shuffled group labels change the per-group figures, never a score, threshold or TAR."""
    emb, ids, region = population(7)
    id_region = np.array([region[ids == k][0] for k in range(ids.max() + 1)])
    pairs = build_pairs(emb, ids, impostor_limit=10**6, seed=0)
    shuffled = np.random.default_rng(1).permutation(id_region)
    assert (shuffled != id_region).any()
    runs = []
    for labels in (id_region, shuffled):
        b = make_breakdown("group", labels, ("open", "crowded"))
        runs.append(
            compare_calibrations(
                pairs,
                emb,
                fitted,
                [b],
                target_fmr=1e-2,
                fmr_limits={"group": 2.0},
                max_tar_cost=0.02,
                served="asnorm",
                rounds=0,
                seed=0,
                ci_level=0.95,
            )["methods"]
        )
    for method in fitted:
        assert runs[0][method]["threshold"] == runs[1][method]["threshold"]
        assert runs[0][method]["tar_at_target_fmr"] == runs[1][method]["tar_at_target_fmr"]
    assert runs[0]["none"]["breakdowns"] != runs[1]["none"]["breakdowns"]
    # The calibration itself is fitted from embeddings and synthetic identity codes only.
    emb_c, ids_c, _ = population(1)
    again = calibration_set(emb_c, ids_c, n_clusters=2, impostor_pairs_max=10**6, seed=3)
    refit = fit_all(again, ["asnorm"], target_fmr=1e-2, min_cluster_impostors=200, cohort_top_k=20)
    assert refit["asnorm"].to_dict() == fitted["asnorm"].to_dict()


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.pop("cohort"),
        lambda d: d["cohort"].update(base64=d["cohort"]["base64"][:-8]),
        lambda d: d["cohort"].update(base64="%%%not base64%%%"),
        lambda d: d["cohort"].update(base64=_b64(np.full(d["cohort"]["shape"], np.nan, "<f4"))),
        lambda d: d["cohort"].update(base64=_b64(np.full(d["cohort"]["shape"], 3.0, "<f4"))),
        lambda d: d.update(to_cosine=[-d["to_cosine"][0], d["to_cosine"][1]]),
        lambda d: d.update(top_k=0),
        lambda d: d.update(top_k=10**6),
        lambda d: d.update(sd_ref=0.0),
        lambda d: d.update(sd_power="1"),
    ],
    ids=[
        "no-cohort",
        "truncated",
        "not-base64",
        "nan",
        "not-unit",
        "reversed-map",
        "k0",
        "k-too-big",
        "sd0",
        "string",
    ],
)
def test_a_tampered_asnorm_file_is_refused_with_what_to_do(fitted, tmp_path, tamper):
    doc = json.loads(json.dumps(fitted["asnorm"].to_dict()))
    tamper(doc)
    from visage_ml.config import ProjectPaths

    paths = ProjectPaths(tmp_path)
    paths.reports.mkdir()
    (paths.reports / "score_calibration.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="dvc repro evaluate"):
        load_score_calibration(paths, model_version=None)


def test_the_default_method_is_what_params_say_and_what_evaluation_serves():
    from pathlib import Path

    from visage_ml.config import CalibrationParams, load_params
    from visage_ml.evaluation.decision import fit_calibrations

    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    cfg = params.evaluate.calibration
    assert cfg.method == CalibrationParams().method == "asnorm"
    assert cfg == CalibrationParams()
    emb, ids, _ = population(1)
    calibrations = fit_calibrations(
        emb, np.array([f"s{i}" for i in ids]), cfg, target_fmr=1e-2, seed=3, model_version="m"
    )
    assert calibrations.served.method == "asnorm"
    assert calibrations.served.top_k == cfg.cohort_top_k
    assert set(calibrations.fitted) == {"none", "fsn", "faircal", "asnorm"}


def test_asnorm_fits_a_cohort_smaller_than_its_top_k():
    # A small evaluation population (the tiny pipeline's: 16 people, 30 images): with every
    # image's own identity left out of its cohort, fewer than top_k members remain. The fit
    # keeps k within them and gives finite statistics, not -inf means that stop `evaluate`.
    emb, ids, _ = population(4, per_region=8, images=2)
    cal = calibration_set(emb, ids, n_clusters=2, impostor_pairs_max=10**6, seed=3)
    asnorm = fit_all(cal, ["asnorm"], target_fmr=1e-3, min_cluster_impostors=200, cohort_top_k=50)[
        "asnorm"
    ]
    assert asnorm.top_k == emb.shape[0] - 2
    scores = calibrate(emb[:1] @ emb[1:6].T, emb[:1], emb[1:6], calibration=asnorm)
    assert np.isfinite(scores).all()


def test_an_embedder_that_does_not_tell_people_apart_is_named_as_the_cause():
    # A smoke experiment (train_embedder.max_steps=4) gave every face nearly the same
    # embedding; evaluate then advised more calibration identities, which cannot help.
    emb, ids, _ = population(4, per_region=8, images=2)
    flat = np.tile(emb[:1], (emb.shape[0], 1))
    cal = calibration_set(flat, ids, n_clusters=2, impostor_pairs_max=10**6, seed=3)
    with pytest.raises(ValueError, match="does not tell people apart yet"):
        fit_all(cal, ["asnorm"], target_fmr=1e-3, min_cluster_impostors=200, cohort_top_k=50)
