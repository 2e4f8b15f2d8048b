"""The pipeline's MLflow logging, registry and lineage against the stack's server."""

from __future__ import annotations

import json

from project_helpers import stack_project_on

from visage_ml import tracking
from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import store_recorder
from visage_ml.rights import lineage


def test_stage_run_registry_and_lineage_through_the_server(stack, project):
    from mlflow import MlflowClient  # heavy optional dependency

    stack_project_on(stack, project)
    paths = ProjectPaths(project)
    md5 = "0123456789abcdef0123456789abcdef"
    with tracking.stage_run(
        paths,
        "train_embedder",
        params={"epochs": 3},
        tags={"visage.data_md5": md5},
        record=store_recorder(paths),
    ) as run:
        tracking.log_metrics({"val/auc": 0.9})
        tracking.log_contents({"summary.json": json.dumps({"ok": True})}, "reports")
        rid = run.info.run_id
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    got = client.get_run(rid)
    assert got.data.metrics["val/auc"] == 0.9
    # Artefacts go through the server to S3, never to a local folder of the project.
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")
    assert not (project / "mlruns").exists()
    keys = [o["Key"] for o in stack.s3.client().list_objects_v2(Bucket=stack.s3_bucket)["Contents"]]
    assert any(rid in k and k.endswith("reports/summary.json") for k in keys)
    name = f"embedder-{rid[:8]}"
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{rid}/reports", run_id=rid)
    client.set_model_version_tag(name, mv.version, "visage.data_md5", md5)
    registry = lineage.mlflow_models(paths)
    found = {(v.model, v.version, v.data_md5) for v in registry.versions}
    assert (name, str(mv.version), md5) in found
    assert rid in {r.version for r in registry.runs}
    # The newest version is in use, read through the server as from the SQLite file.
    assert (name, str(mv.version)) in {(v.model, v.version) for v in registry.in_use}
