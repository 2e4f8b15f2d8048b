"""The served 1:N operating point: loading the released score model, and `visage gallery info`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from serving_fakes import DIM, THRESHOLD, make_world
from typer.testing import CliRunner

from visage_ml.app.cli import app as cli
from visage_ml.app.http.auth import KeyStore
from visage_ml.config import load_params
from visage_ml.evaluation.score_model import Comparisons, build_score_model
from visage_ml.serving.gallery import Gallery
from visage_ml.serving.operating_point import IdentificationPolicy, load_score_model
from visage_ml.serving.release import SCORE_MODEL_JSON, THRESHOLD_JSON, record_release

VERSION = "emb-test-1"
# The served galleries' 1:1 threshold: below the 1:N points of the score model's galleries
# (impostor scores of sd 0.1 around 0), as evaluation's own threshold is on a gallery of
# more than target_fpir / target_fmr templates.
VERIFY_AT = 0.25


def model_doc(version: str = VERSION) -> dict:
    rng = np.random.default_rng(0)
    imp, gen = rng.normal(0.0, 0.1, 100_000), rng.normal(0.8, 0.08, 2000)
    return build_score_model(
        Comparisons(
            genuine=gen,
            impostor=imp,
            genuine_probe=np.zeros(gen.size, dtype=np.int64),
            impostor_probe=np.arange(imp.size),
            impostor_ref=np.full(imp.size, -1),
            n_identities=imp.size,
            template_images=3,
        ),
        bootstrap=10,
        model_version=version,
    )


@pytest.fixture
def served_project(project):
    """A project with a gallery of 12 subjects and a released score model."""
    world = make_world(project, n_subjects=12)
    gallery = Gallery.open(
        world.paths, model_version=VERSION, embedding_dim=DIM, threshold=VERIFY_AT, core=world.core
    )
    rng = np.random.default_rng(1)
    gallery.enroll_many({pid: rng.normal(size=(2, DIM)) for pid in world.people})
    world.paths.reports.mkdir(exist_ok=True)
    (world.paths.reports / "score_model.json").write_text(json.dumps(model_doc()))
    record_release(world.core.ledger, world.paths.root, [SCORE_MODEL_JSON], stage="evaluate")
    return world


def test_the_score_model_must_exist_and_belong_to_the_serving_embedder(project):
    world = make_world(project, n_subjects=1)
    paths = world.paths
    with pytest.raises(FileNotFoundError, match="dvc repro evaluate"):
        load_score_model(paths, model_version=VERSION, confidence=0.8)
    paths.reports.mkdir(exist_ok=True)
    (paths.reports / "score_model.json").write_text(json.dumps(model_doc("other-embedder")))
    with pytest.raises(ValueError, match=r"'other-embedder'.*'emb-test-1'"):
        load_score_model(paths, model_version=VERSION, confidence=0.8)
    (paths.reports / "score_model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a score model"):
        load_score_model(paths, model_version=VERSION, confidence=0.8)


def test_operating_points_are_cached_per_size_and_rise_with_it(served_project):
    model, _ = load_score_model(served_project.paths, model_version=VERSION, confidence=0.8)
    # A 1:1 threshold below the 1:N ones of 10 and 100 templates (at FMR 0.02 in this model).
    policy = IdentificationPolicy.from_params(
        model, load_params(served_project.paths.params), verify_threshold=0.2
    )
    assert policy.threshold(100) > policy.threshold(10) > 0.2
    policy.threshold(100)
    assert policy.served.cache_info().hits >= 1
    status = policy.status(10)
    assert status["gallery_size"] == 10 and status["confidence"] == 0.8
    assert status["expected_fnir"] is not None and status["source"] == "reports/score_model.json"


def test_gallery_info_shows_the_served_point_and_refuses_a_tampered_score_model(served_project):
    runner = CliRunner()
    r = runner.invoke(cli, ["gallery", "info", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["gallery_size"] == 12 and info["target_fpir"] == 0.01
    assert info["verify_threshold"] == VERIFY_AT and info["too_large"] is False
    assert info["at_verify_threshold"] is False and info["threshold"] > VERIFY_AT
    assert 0 < info["expected_fnir"] < 1 and info["threshold"] > 0
    text = runner.invoke(cli, ["gallery", "info"]).output
    assert "1:N threshold" in text and "expected FNIR" in text and "12 searchable" in text
    # At the default level 0.5 the threshold sits on a median, not on an upper bound: an
    # operator told "upper bound" would think FPIR is held under the target, not about it.
    assert info["bound"] == "the median of FMR over 10 identity resamples"
    assert "median of FMR" in text and "upper" not in text
    # What the served FMR was measured on, beside what the gallery enrols.
    assert info["score_model_template_images"] == 3
    assert "3-image templates (the gallery stage enrols 3 images per subject)" in text
    # An operator with disk access lowers every bound (a lower threshold, more matches).
    path = served_project.paths.reports / "score_model.json"
    doc = json.loads(path.read_text())
    doc["fmr_upper"] = {k: [v and v / 100 for v in vals] for k, vals in doc["fmr_upper"].items()}
    path.write_text(json.dumps(doc))
    r = runner.invoke(cli, ["gallery", "info"])
    assert r.exit_code == 2
    assert "score_model.json" in r.output and "changed or replaced after its release" in r.output


def test_gallery_info_shows_the_1_1_threshold_serve_uses_after_a_new_evaluation(served_project):
    """A new evaluation moves reports/threshold.json; `visage serve` loads it at once, while
    gallery.json keeps the value of the gallery's last build. `visage gallery info` (and the
    templates a data subject is given) must show what is served, not the older value."""
    paths = served_project.paths
    (paths.reports / "threshold.json").write_text(
        json.dumps({"threshold": 0.45, "target_fmr": 0.001, "embedder_model_version": VERSION})
    )
    # Not released yet: serving would refuse it, so nothing shows it.
    assert Gallery.open_existing(paths, core=served_project.core, load=False).threshold == (
        VERIFY_AT
    )
    record_release(served_project.core.ledger, paths.root, [THRESHOLD_JSON], stage="evaluate")
    assert json.loads((paths.gallery / "gallery.json").read_text())["threshold"]["value"] == (
        VERIFY_AT
    )
    opened = Gallery.open_existing(paths, core=served_project.core, load=False)
    assert opened is not None and opened.threshold == 0.45
    # What a data subject's exported templates state (rights.export reads the opened meta).
    assert opened.meta.threshold["value"] == 0.45
    r = CliRunner().invoke(cli, ["gallery", "info", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["verify_threshold"] == 0.45
    # A threshold of another embedder is not what a server of this gallery would load.
    (paths.reports / "threshold.json").write_text(
        json.dumps({"threshold": 0.9, "target_fmr": 0.001, "embedder_model_version": "other"})
    )
    record_release(served_project.core.ledger, paths.root, [THRESHOLD_JSON], stage="evaluate")
    assert Gallery.open_existing(paths, core=served_project.core, load=False).threshold == (
        VERIFY_AT
    )


def test_gallery_info_says_when_the_gallery_is_searched_at_the_1_1_threshold(served_project):
    # A 1:1 threshold of 0.7 (FMR far below 1e-3 in this model): at 12 searchable templates
    # the target alone would serve about 0.32, and identify would name subjects verify refuses.
    paths = served_project.paths
    (paths.reports / "threshold.json").write_text(
        json.dumps({"threshold": 0.7, "target_fmr": 0.001, "embedder_model_version": VERSION})
    )
    record_release(served_project.core.ledger, paths.root, [THRESHOLD_JSON], stage="evaluate")
    runner = CliRunner()
    info = json.loads(runner.invoke(cli, ["gallery", "info", "--json"]).output)
    assert info["threshold"] == info["verify_threshold"] == 0.7
    assert info["at_verify_threshold"] is True and info["expected_fpir"] < 0.01
    assert "identify never names whom verify would refuse" in info["source"]
    text = runner.invoke(cli, ["gallery", "info"]).output
    assert "1:N threshold    0.7000 (the 1:1 threshold: the target allows a lower one" in text
    assert "median" not in text


def test_serve_loads_only_the_released_score_model_and_confusion(project):
    """The production path of the app: every file from evaluate must be the released one."""
    from fastapi.testclient import TestClient

    from visage_ml.app.http.app import create_app
    from visage_ml.config import write_params
    from visage_ml.evaluation.confusion import demographic_confusion
    from visage_ml.inference import OnnxModel
    from visage_ml.serving.release import (
        DEMOGRAPHIC_CONFUSION_JSON,
        DEMOGRAPHICS_ONNX,
        EMBEDDER_ONNX,
        THRESHOLD_JSON,
        ReleaseError,
    )

    world = make_world(project, n_subjects=4)
    paths = world.paths
    params = load_params(
        paths.params,
        overrides={
            "train_embedder.input_size": 32,
            "train_embedder.embedding_dim": DIM,
            "train_demographics.input_size": 32,
            "prepare.image_size": 32,
            # Corrected analytics counts (off by default) need the released confusion.
            "serving.analytics.correct": True,
        },
    )
    write_params(params, paths.params)
    emb = OnnxModel(paths.models / "embedder.onnx", expected_kind="embedder")
    dem = OnnxModel(paths.models / "demographics.onnx", expected_kind="demographics")
    paths.reports.mkdir(exist_ok=True)
    (paths.reports / "threshold.json").write_text(
        json.dumps(
            {
                "threshold": THRESHOLD,
                "target_fmr": 1e-3,
                "embedder_model_version": emb.model_version,
            }
        )
    )
    (paths.reports / "score_model.json").write_text(json.dumps(model_doc(emb.model_version)))
    rng = np.random.default_rng(0)
    n = 40
    confusion = demographic_confusion(
        true_age=rng.uniform(20, 70, n),
        true_gender=rng.choice(list(dem.labels["gender"]), n),
        true_group=rng.choice(list(dem.labels["group"]), n),
        predictions={
            "age": rng.uniform(20, 70, n),
            "gender_probs": rng.random((n, len(dem.labels["gender"]))),
            "group_probs": rng.random((n, len(dem.labels["group"]))),
        },
        labels=dem.labels,
        model_version=dem.model_version,
    )
    (paths.reports / "demographic_confusion.json").write_text(json.dumps(confusion))
    record_release(
        world.core.ledger, paths.root, [EMBEDDER_ONNX, DEMOGRAPHICS_ONNX], stage="export"
    )
    evaluated = [THRESHOLD_JSON, SCORE_MODEL_JSON, DEMOGRAPHIC_CONFUSION_JSON]
    record_release(world.core.ledger, paths.root, evaluated, stage="evaluate")

    app = create_app(paths, params=params, core=world.core)
    key = KeyStore(paths.api_keys).create("auditor")[1]
    health = TestClient(app).get("/healthz", headers={"X-API-Key": key}).json()
    served = health["identification"]
    # Derived from the score model (without one, no FMR is asked of a comparison).
    assert served["required_fmr"] == 0.01 and served["expected_fnir"] is not None
    assert "no score model" not in served["source"] and served["gallery_size"] == 0
    assert app.state.visage.analytics.confusion is not None
    # A score model edited after its release (a lower threshold) is not served ...
    doc = json.loads((paths.reports / "score_model.json").read_text())
    doc["tail"]["u"] = 0.0
    (paths.reports / "score_model.json").write_text(json.dumps(doc))
    with pytest.raises(ReleaseError, match=r"score_model\.json.*changed or replaced"):
        create_app(paths, params=params, core=world.core)
    (paths.reports / "score_model.json").write_text(json.dumps(model_doc(emb.model_version)))
    # ... nor a missing or altered confusion report.
    (paths.reports / "demographic_confusion.json").write_text(
        json.dumps({**confusion, "n_images": 1})
    )
    with pytest.raises(ReleaseError, match=r"demographic_confusion\.json"):
        create_app(paths, params=params, core=world.core)
    (paths.reports / "demographic_confusion.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"analytics\.correct: false"):
        create_app(paths, params=params, core=world.core)


def test_gallery_info_says_once_that_the_gallery_is_too_large(served_project):
    # The table's "too large" line and a log line of the same words: printed twice.
    from project_helpers import pipeline_env, write_overrides

    write_overrides(served_project.paths.params, {"serving.identify.max_expected_fnir": 1e-12})
    r = subprocess.run(
        [str(Path(sys.executable).parent / "visage"), "gallery", "info"],
        capture_output=True,
        text=True,
        env=pipeline_env(served_project.paths.root),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    said = r.stdout + r.stderr
    assert said.count("gallery too large for the target") == 1, said


def test_serving_logs_a_too_large_gallery_once_per_size_and_reports_do_not_log(
    served_project, caplog
):
    # /healthz, `visage gallery info` and the demo's summary show the warning themselves; the
    # identify path logs it, once per gallery size, not once per search.
    model, _ = load_score_model(served_project.paths, model_version=VERSION, confidence=0.8)
    policy = IdentificationPolicy(
        model, target_fpir=0.01, max_expected_fnir=1e-12, verify_threshold=VERIFY_AT
    )
    with caplog.at_level("WARNING", logger="visage_ml.serving.operating_point"):
        assert policy.status(12)["too_large"] is True
        assert not caplog.records
        for _ in range(3):
            policy.threshold(12)
        policy.threshold(13)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "gallery too large for the target at this model's accuracy"
    ] * 2
