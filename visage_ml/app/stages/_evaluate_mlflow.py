"""MLflow side of the ``evaluate`` stage: one run with its artefacts, both ONNX models registered.

Each registered model version is tagged with its lineage (data md5s, git revision, model
version) and the fairness gate outcome, so a reviewer can judge it in the MLflow UI.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.evaluation.fairness import GateOutcome
from visage_ml.evaluation.figures import MLFLOW_FOLDER
from visage_ml.evaluation.outputs import PLOTS_DIR, REPORT_FILES
from visage_ml.evaluation.protocol import EvaluationResult
from visage_ml.privacy.core import store_recorder
from visage_ml.tracking import (
    flat_metrics,
    log_contents,
    log_metrics,
    pinned_requirements,
    stage_run,
)

logger = logging.getLogger(__name__)

STAGE = "evaluate"
REGISTERED: Mapping[str, str] = {
    "embedder": "visage-embedder",
    "demographics": "visage-demographics",
}


def _gate_tags(gate: GateOutcome) -> dict[str, str]:
    return {
        "visage.fairness_gate": gate.describe(),
        "visage.fairness_gate_passed": str(gate.passed).lower(),
        "visage.fairness_gate_outcome": str(
            getattr(gate, "outcome", "pass" if gate.passed else "fail")
        ),
    }


def log_evaluation(
    paths: ProjectPaths, result: EvaluationResult, *, lineage: Mapping[str, Any]
) -> tuple[str, dict[str, str]]:
    """Log one run (params, metrics, tags, the written reports, figures, tables); register models.

    Parameters
    ----------
    paths
        The project (the reports are logged from ``reports/``, the models from ``models/``).
    result
        The evaluation.
    lineage
        Data md5s, model versions and git revision (tags of the run and of each model version).

    Returns
    -------
    tuple
        ``(run id, {registered model name: version})``.
    """
    # Deferred: mlflow and onnx are slow to import; the stage imports this module on every run.
    import mlflow
    import onnx
    from mlflow import MlflowClient

    gate = result.gate
    tags = {
        **_gate_tags(gate),
        "visage.git_rev": str(lineage["git_rev"]),
        "visage.data_md5": str(lineage["embedder_data_md5"]),
        "visage.eval_data_md5": str(lineage["eval_data_md5"]),
        "visage.eval_population_md5": str(lineage.get("eval_population_md5", "none")),
        "visage.embedder_version": str(lineage["embedder_model_version"]),
        "visage.demographics_version": str(lineage["demographics_model_version"]),
    }
    versions: dict[str, str] = {}
    record = store_recorder(paths)
    with stage_run(paths, STAGE, params=result.params, tags=tags, record=record) as active:
        log_metrics(flat_metrics(result.metrics))
        for name in REPORT_FILES:
            mlflow.log_artifact(str(paths.reports / name), artifact_path="reports")
        mlflow.log_artifacts(str(paths.reports / PLOTS_DIR), artifact_path="reports/plots")
        log_contents(result.figures, MLFLOW_FOLDER)
        log_contents(result.tables, "tables")
        client = MlflowClient()
        requirements = pinned_requirements(("onnx", "onnxruntime", "numpy"))
        for kind, registered in REGISTERED.items():
            info = mlflow.onnx.log_model(
                onnx.load(str(paths.models / f"{kind}.onnx")),
                name=kind,
                registered_model_name=registered,
                pip_requirements=requirements,
            )
            version = str(info.registered_model_version)
            versions[registered] = version
            version_tags = {
                "visage.data_md5": lineage[f"{kind}_data_md5"],
                "visage.eval_data_md5": lineage["eval_data_md5"],
                "visage.git_rev": lineage["git_rev"],
                "visage.model_version": lineage[f"{kind}_model_version"],
                **_gate_tags(gate),
            }
            for key, value in version_tags.items():
                client.set_model_version_tag(registered, version, key, str(value))
        run_id = active.info.run_id
    logger.info("MLflow run %s; registered %s", run_id, versions)
    return run_id, versions
