"""What evaluation hands to serving: score model, confusion, and the FNIR-against-size view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from visage_ml.config import EvaluateParams, ScoreModelParams
from visage_ml.evaluation.serving_reports import FIGURE, ServedContext, serving_reports


def inputs(n_ids: int = 60, per_id: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_ids), per_id)
    centres = rng.normal(size=(n_ids, 32))
    emb = centres[codes] + 0.6 * rng.normal(size=(codes.size, 32))
    groups = np.array(["g1", "g2", "g3", "g4"])[np.arange(n_ids) % 4]
    genders = np.array(["female", "male"])[(np.arange(n_ids) // 4) % 2]
    test = pd.DataFrame(
        {"age": rng.uniform(20, 70, codes.size), "gender": genders[codes], "group": groups[codes]}
    )
    pred = {
        "age": test["age"].to_numpy() + rng.normal(0, 5, codes.size),
        "gender_probs": np.eye(2)[(genders[codes] == "male").astype(int)],
        "group_probs": np.eye(4)[np.arange(n_ids)[codes] % 4],
    }
    labels = {"gender": ["female", "male"], "group": ["g1", "g2", "g3", "g4"], "age_bands": [30]}
    return test, emb, codes, groups, pred, labels


def reports(
    score_model: ScoreModelParams,
    served: ServedContext | None = None,
    verify_threshold: float | None = None,
):
    """serving_reports of :func:`inputs` with these score-model settings."""
    test, emb, codes, groups, pred, labels = inputs()
    return serving_reports(
        test=test,
        embeddings=emb,
        codes=codes,
        id_group=groups,
        predictions=pred,
        demographic_labels=labels,
        lineage={"embedder_model_version": "emb-9", "demographics_model_version": "dem-9"},
        cfg=dataclasses.replace(EvaluateParams(), score_model=score_model),
        seed=0,
        served=served,
        verify_threshold=verify_threshold,
    )


def test_the_report_names_the_templates_it_measured():
    """Four photographs per person and five asked: the templates average three (one photograph
    is the probe), and the report's sentence on the impostor tail must say three."""
    out = reports(ScoreModelParams(template_images=5, min_exceedances=20, bootstrap=0))
    assert out.score_model["template_images"] == 3 and out.summary["template_images"] == 3


def test_serving_reports_make_the_released_documents_and_mark_the_served_point():
    out = reports(
        ScoreModelParams(template_images=2, min_exceedances=20, bootstrap=20),
        ServedContext(target_fpir=0.01, confidence=0.8, gallery_size=250),
    )
    doc = out.score_model
    assert doc["embedder_model_version"] == "emb-9" and doc["template_images"] == 2
    # 60 identities x 2 probe images each against their own template; every image against 59.
    assert doc["n_genuine"] == 120 and doc["n_impostor"] == 240 * 59
    assert set(doc["fmr_upper"]) == {"0.5", "0.8", "0.9", "0.95"}
    assert set(doc["groups"]) == {"g1", "g2", "g3", "g4"}
    s = out.summary
    assert s["served"]["gallery_size"] == 250 and s["target_fpir"] == 0.01
    # The report flags the served point as serving flags it (operating_point.IdentificationPolicy).
    assert s["served"]["too_large"] == (
        s["served"]["expected_fnir"] > 0.5 or not s["served"]["bounded"]
    )
    assert s["bound"].startswith("an upper 0.8 confidence bound on FMR")
    assert s["thresholds"] == sorted(s["thresholds"])
    assert set(s["fnir"]) == {"all", "g1", "g2", "g3", "g4"}
    # 14,160 comparisons: FMR below ~7e-6 is beyond what they bound (N from 3,000 on).
    assert s["unbounded_from"] == 3_000
    assert out.headline["served_gallery_size"] == 250
    assert out.figures[FIGURE].startswith(b"\x89PNG")
    conf = out.confusion
    assert conf["demographics_model_version"] == "dem-9"
    assert conf["gender"]["g1"]["accuracy"] == 1.0 and conf["group"]["accuracy"] == 1.0


def floored_reports():
    """The reports of a served gallery of 5 without a floor (their summary), the 1:1 threshold
    set where the target alone serves N = 100, and the reports with that floor."""
    sm = ScoreModelParams(template_images=2, min_exceedances=20, bootstrap=20)
    served = ServedContext(target_fpir=0.01, confidence=0.8, gallery_size=5)
    free = reports(sm, served).summary
    verify_at = free["thresholds"][free["sizes"].index(100)]
    return free, verify_at, reports(sm, served, verify_threshold=verify_at)


def test_the_report_shows_small_galleries_searched_at_the_1_1_threshold_as_serving_does():
    # Serving never identifies below the 1:1 threshold (identify would name whom verify
    # refuses); the report drew the curve and marked the served point at the lower threshold
    # the target alone gives, and a DPO reading it was told a threshold that is not served.
    from visage_ml.evaluation.score_model import ScoreModel
    from visage_ml.serving.operating_point import IdentificationPolicy

    free, verify_at, out = floored_reports()
    s = out.summary
    below = [n for n, t in zip(free["sizes"], free["thresholds"], strict=True) if t < verify_at]
    assert below and s["at_verify_threshold"] == below and s["verify_threshold"] == verify_at
    assert all(
        t == (verify_at if n in below else f)
        for n, t, f in zip(s["sizes"], s["thresholds"], free["thresholds"], strict=True)
    )
    assert s["served"]["threshold"] == verify_at and s["served"]["at_verify_threshold"] is True
    # Fewer mates found at the higher threshold, and the same point serving derives.
    assert s["served"]["expected_fnir"] > free["served"]["expected_fnir"]
    policy = IdentificationPolicy(
        ScoreModel(out.score_model, confidence=0.8),
        target_fpir=0.01,
        max_expected_fnir=0.5,
        verify_threshold=verify_at,
    )
    st = policy.status(5)
    assert st["threshold"] == s["served"]["threshold"]
    assert st["expected_fnir"] == s["served"]["expected_fnir"]


def test_the_report_page_says_which_galleries_are_searched_at_the_1_1_threshold():
    # The page opened "Serving does not search at the 1:1 threshold" above a table whose small
    # galleries are searched at it: a DPO read a rule that serving no longer follows.
    import re

    from visage_ml.evaluation.report import fmt_rate, render_html
    from visage_ml.evaluation.score_model import ScoreModel

    free, verify_at, out = floored_reports()
    s = out.summary
    # The first size the target alone serves at or above the 1:1 threshold, as serving finds it.
    model = ScoreModel(out.score_model, confidence=0.8)
    n = s["verify_threshold_below"]
    assert model.operating_point(n - 1, 0.01, floor=verify_at).floored
    assert not model.operating_point(n, 0.01, floor=verify_at).floored
    assert max(s["at_verify_threshold"]) < n <= 100

    def text(summary):
        page = render_html(
            fairness={"open_set_scale": summary}, metrics={}, figures={}, lineage={}, params={}
        )
        section = page.split("Identification threshold for the gallery")[1].split("<h2>")[0]
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", section))

    words = text(s)
    assert "does not search at the 1:1 threshold" not in words
    v = fmt_rate(verify_at)
    assert f"fewer than {n} subjects are searched at the 1:1 threshold {v}" in words
    assert f"threshold {v} (the 1:1 threshold: the target allows a lower one at N = 5)" in words
    # No floor (an evaluation without a 1:1 threshold): the page says nothing of one.
    bare = text(free)
    assert "fewer than" not in bare and "searched at the 1:1 threshold" not in bare


def test_the_served_point_counts_whom_the_gallery_stage_enrols_not_every_consent(project):
    # The report marked N = 161 (consents for identification) while the gallery served 145:
    # subjects allowed but without a processed image are never enrolled.
    from visage_ml.config import ProjectPaths, load_params
    from visage_ml.evaluation.inputs import served_context

    paths = ProjectPaths(project)
    paths.consents.parent.mkdir(parents=True)
    rows = [(f"p{i:016x}", "identification", i != 3) for i in range(6)]
    rows.append(("p" + "0" * 16, "training", True))
    pd.DataFrame(rows, columns=["pid", "purpose", "allowed"]).to_parquet(paths.consents)
    params = load_params(paths.params)
    assert served_context(paths, params).gallery_size == 5  # no manifest yet: every consent
    paths.processed.mkdir(parents=True)
    manifest = pd.DataFrame({"pid": [f"p{i:016x}" for i in (0, 0, 1, 3, 4)]})
    manifest.to_parquet(paths.processed / "manifest.parquet")
    assert served_context(paths, params).gallery_size == 3  # 0, 1 and 4: allowed, with images
