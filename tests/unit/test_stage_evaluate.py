import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evaluate_fakes import make_dataset, write_models

from visage_ml.app.stages import evaluate as stage
from visage_ml.config import ProjectPaths, load_params, write_params

FAST = {
    "evaluate.bootstrap": 30,
    "evaluate.impostor_pairs": 5000,
    "evaluate.target_fmr": 0.01,
}


def _params(project: Path, **extra):
    params = load_params(project / "params.yaml", overrides={**FAST, **extra})
    write_params(params, project / "params.yaml")
    return params


def _lfw_protocol(project: Path, rows: dict) -> int:
    """10 folds of same/different pairs over test images (what the LFW importer writes)."""
    test = rows["split"] == "test"
    ids, pids = rows["image_id"][test], rows["pid"][test]
    rng = np.random.default_rng(0)
    out = []
    for fold in range(10):
        for _ in range(12):
            i = rng.integers(len(ids))
            same_rows = np.flatnonzero((pids == pids[i]) & (np.arange(len(ids)) != i))
            other_rows = np.flatnonzero(pids != pids[i])
            j = rng.choice(same_rows)
            k = rng.choice(other_rows)
            out.append({"fold": fold, "image_id_a": ids[i], "image_id_b": ids[j], "same": True})
            out.append({"fold": fold, "image_id_a": ids[i], "image_id_b": ids[k], "same": False})
    out.append({"fold": 0, "image_id_a": "missing", "image_id_b": ids[0], "same": False})
    (project / "data" / "protocols").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(out).to_parquet(project / "data" / "protocols" / "lfw_pairs.parquet")
    return len(out)


def _all_text(root: Path) -> str:
    chunks = []
    for p in root.rglob("*"):
        if p.is_file() and p.suffix in {".json", ".csv", ".html", ".txt", ".yaml", ""}:
            chunks.append(p.read_text(encoding="utf-8", errors="ignore"))
    return "\n".join(chunks)


def test_stage_writes_reports_logs_mlflow_and_registers_models(project: Path):
    from mlflow import MlflowClient

    rows = make_dataset(project, n_identities=40, images=(4, 10), noise=40.0, seed=1)
    write_models(project)
    n_protocol = _lfw_protocol(project, rows)
    paths = ProjectPaths(project)
    params = _params(project)
    out = stage.run(paths, params)

    reports = project / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())
    ver = metrics["verification"]
    assert 0.5 < ver["auc"] <= 1.0
    assert ver["n_impostor_pairs"] == 5000
    assert set(metrics["identification"]) >= {"rank1", "fnir_at_fpir_1e-2", "fnir_at_fpir_1e-1"}
    # The gate's verdict is the one its checks' intervals and limits imply, in both reports:
    # 20 test identities are too few to decide on (evaluate.gate.min_identities).
    gate = json.loads((reports / "fairness.json").read_text())["gate"]
    outcomes = {c["outcome"] for c in gate["checked"]}
    expected = "fail" if "fail" in outcomes else "pass"
    expected = "inconclusive" if expected == "pass" and "inconclusive" in outcomes else expected
    assert metrics["fairness"]["gate_outcome"] == gate["outcome"] == expected
    assert metrics["fairness"]["gate_passed"] == int(gate["passed"]) == int(expected == "pass")
    diffs = [c for c in gate["checked"] if c["gate"] == "differentials"]
    assert diffs and all(c["outcome"] == "inconclusive" for c in diffs)
    assert all("too few identities" in c["reason"] for c in diffs)
    assert {"gender_accuracy", "group_accuracy", "age_mae"} <= set(metrics["demographics"])
    assert 0 <= metrics["detection"]["miss_rate"] < 0.2
    # The detection table names each image's person: the miss rates have intervals.
    missed = json.loads((reports / "fairness.json").read_text())["detection_intervals"]
    g1 = missed["group"]["groups"]["g1"]
    assert g1["ci_low"] <= g1["value"] <= g1["ci_high"] and g1["n_identities"] > 0
    # LFW: the pair whose image is not among the test crops is left out.
    assert metrics["lfw"]["n_pairs"] == n_protocol - 1
    assert 0.5 < metrics["lfw"]["accuracy"] <= 1.0

    # Only test identities are scored.
    n_test_ids = len(set(rows["pid"][rows["split"] == "test"]))
    fairness = json.loads((reports / "fairness.json").read_text())
    assert fairness["n_identities"] == n_test_ids
    assert fairness["n_images"] == int((rows["split"] == "test").sum())
    g1 = fairness["breakdowns"]["group"]["groups"]["g1"]["fnmr"]
    assert g1["ci_low"] <= g1["value"] <= g1["ci_high"]
    assert set(fairness["breakdowns"]) == {"group", "gender", "group_gender"}

    threshold = json.loads((reports / "threshold.json").read_text())
    assert threshold["target_fmr"] == 0.01
    assert threshold["embedder_model_version"] == "emb-test-1"
    assert threshold["measured_fmr"] <= 0.01
    assert threshold["threshold"] == pytest.approx(ver["threshold"])

    plots = sorted(p.name for p in (reports / "plots").glob("*.csv"))
    assert "roc_overall.csv" in plots and "det_g1.csv" in plots and "roc_g4.csv" in plots
    for p in (reports / "plots").glob("*.csv"):
        frame = pd.read_csv(p)
        assert 2 <= len(frame) <= 500
        assert list(frame.columns)[:2] == ["threshold", "fmr"]

    page = (reports / "fairness_report.html").read_text()
    assert page.count("data:image/png;base64,") >= 8
    assert "How to read this report" in page

    # No subject identifier anywhere in what the stage wrote.
    written = _all_text(reports) + _all_text(project / "mlruns" / "artifacts")
    for pid in set(rows["pid"]):
        assert pid not in written

    client = MlflowClient(tracking_uri=paths.tracking_uri)
    run = client.get_run(out.run_id)
    assert run.data.tags["visage.stage"] == "evaluate"
    assert run.data.tags["visage.fairness_gate"] == out.gate.describe()
    assert run.data.params["evaluate.target_fmr"] == "0.01"
    assert run.data.metrics["verification.auc"] == pytest.approx(ver["auc"])
    assert "fairness.fnmr.g1" in run.data.metrics
    top = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"reports", "figures", "tables"} <= top
    report_files = {a.path for a in client.list_artifacts(out.run_id, "reports")}
    assert "reports/fairness_report.html" in report_files
    assert client.list_artifacts(out.run_id, "figures")
    for name, expected_version in (
        ("visage-embedder", "emb-test-1"),
        ("visage-demographics", "dem-test-1"),
    ):
        versions = client.search_model_versions(f"name='{name}'")
        assert len(versions) == 1
        mv = versions[0]
        assert mv.run_id == out.run_id
        assert mv.tags["visage.data_md5"] == "0123456789abcdef0123456789abcdef"
        assert mv.tags["visage.git_rev"] == "unknown"  # the tmp project is not a git repo
        assert mv.tags["visage.model_version"] == expected_version
        assert mv.tags["visage.fairness_gate"] == out.gate.describe()
        assert mv.tags["visage.eval_data_md5"] == out.threshold["eval_data_md5"]


def test_planted_bias_trips_the_enforced_gate(project: Path, capsys):
    from mlflow import MlflowClient

    # Group g4's faces are much noisier: its genuine comparisons fall below the threshold.
    make_dataset(
        project, n_identities=80, images=(4, 10), noise=20.0, group_noise=(1, 1, 1, 4), seed=2
    )
    write_models(project)
    _params(
        project,
        **{
            "evaluate.gate.enforce": True,
            "evaluate.gate.max_fnmr_ratio": 3.0,
            "evaluate.gate.max_fmr_ratio": 100.0,
            "evaluate.gate.breakdowns": ["group"],
            "evaluate.gate.min_identities": {"group": 2},
            "evaluate.gate.demographics.enforce": False,
        },
    )
    rc = stage.main([])
    err = capsys.readouterr().err
    assert rc == 1
    assert "fairness gate failed (differentials)" in err
    assert "evaluate.gate.max_fnmr_ratio = 3" in err
    fairness = json.loads((project / "reports" / "fairness.json").read_text())
    summary = fairness["breakdowns"]["group"]["summaries"]["fnmr_max_min_ratio"]
    assert summary["ci_low"] > 3
    assert f"fnmr_max_min_ratio across group: interval [{summary['ci_low']:.3g}" in err
    fnmr = fairness["breakdowns"]["group"]["groups"]
    assert max(fnmr, key=lambda g: fnmr[g]["fnmr"]["value"]) == "g4"
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["fairness"]["gate_passed"] == 0
    client = MlflowClient(tracking_uri=ProjectPaths(project).tracking_uri)
    (mv,) = client.search_model_versions("name='visage-embedder'")
    assert mv.tags["visage.fairness_gate_passed"] == "false"
    assert client.get_run(mv.run_id).data.tags["visage.fairness_gate"].startswith("fail")


def test_missing_inputs_name_the_stage_to_run(project: Path, capsys):
    make_dataset(project, n_identities=12, images=(4, 5), seed=3)
    assert stage.main([]) == 2
    err = capsys.readouterr().err
    assert "embedder.onnx is missing" in err and "dvc repro export" in err


def test_evaluation_population_joins_the_test_split_and_fits_the_served_calibration(
    project: Path,
):
    from evaluate_fakes import make_eval_population

    from visage_ml.evaluation.calibration import load_calibration

    rows = make_dataset(project, n_identities=24, images=(4, 6), noise=30.0, seed=4)
    pop = make_eval_population(project, per_cell=6, calibration_per_cell=4, images=3)
    write_models(project)
    paths = ProjectPaths(project)
    params = _params(
        project,
        **{
            "evaluate.calibration.n_clusters": 2,
            "evaluate.calibration.min_cluster_impostors": 50,
            "evaluate.calibration.bootstrap": 10,
            "evaluate.gate.min_identities": {"group": 10, "gender": 10, "group_gender": 5},
            "evaluate.gate.demographics.min_identities": 10,
        },
    )
    out = stage.run(paths, params, log_to_mlflow=False)
    fairness = out.fairness
    n_test = len(set(rows["pid"][rows["split"] == "test"]))
    measured = pop[pop["part"] == "measure"]
    # The measured part joins the test split; the calibration part is never measured.
    assert fairness["n_identities"] == n_test + measured["pid"].nunique()
    assert fairness["population"]["identities_by_source"]["synthfaces:evaluation"] == 48
    assert "synthfaces:evaluation" in fairness["sources"]
    assert fairness["breakdowns"]["group_gender"]["groups"]["g4_female"]["n_identities"] >= 6
    # So is the calibration part's detection: the miss rates count the measured images only.
    counted = sum(fairness["detection"]["group"]["n"].values())
    own = pd.read_parquet(project / "data/processed/detection.parquet")
    assert counted == len(own) + len(measured)
    # The served calibration is released beside the threshold, fitted on the calibration part.
    doc = json.loads((project / "reports" / "score_calibration.json").read_text())
    cal = load_calibration(doc)
    # The default: AS-norm, its cohort the calibration part's images (32 people, 3 images each).
    assert cal.method == "asnorm" and cal.cohort.shape[0] == doc["info"]["cohort_images"] == 96
    assert doc["info"]["calibration_identities"] == 32
    assert doc["info"]["embedder_model_version"] == "emb-test-1"
    comparison = fairness["score_calibration"]["comparison"]
    assert set(comparison["methods"]) == {"none", "fsn", "faircal", "asnorm"}
    assert comparison["methods"]["asnorm"]["served"]
    assert comparison["methods"]["fsn"]["clusters"] == 2
    assert out.metrics["fairness"]["gate_outcome"] in ("pass", "fail", "inconclusive")
    # The evaluated data's md5 covers the population too: a new population is another
    # measurement, which the lineage must tell apart from the same test split alone.
    test_md5 = hashlib.md5((project / "data/processed/faces.sealed").read_bytes()).hexdigest()  # noqa: S324
    assert out.threshold["eval_data_md5"] != test_md5
    assert (
        out.threshold["eval_population_md5"]
        == hashlib.md5(  # noqa: S324
            (project / "data/eval_population/faces.sealed").read_bytes()
        ).hexdigest()
    )
    assert {"gate_differentials", "gate_demographics"} <= set(out.metrics["fairness"])
    assert "gender_accuracy.g4" in out.metrics["demographics"]
    # Synthetic ids, like pids, appear in no report.
    written = _all_text(project / "reports")
    for synthetic in set(pop["pid"]):
        assert synthetic not in written
    page = (project / "reports" / "fairness_report.html").read_text()
    assert "Fair scores without labels" in page and "Gate: pass, fail or inconclusive" in page
