"""Erasure on the stack's MLflow server: runs, artefacts and rows naming the subject, gone."""

from __future__ import annotations

import os

import pytest
from project_helpers import stack_project_on

from visage_ml.config import ProjectPaths, load_params
from visage_ml.io import sha256_bytes
from visage_ml.privacy.tombstones import Tombstones
from visage_ml.rights.erasure import mlflow_server
from visage_ml.rights.erasure.base import Context
from visage_ml.stack.manager import Stack
from visage_ml.stack.seaweed import scan

PID = "p_mlflowerase01"


def test_runs_artefacts_and_rows_of_the_subject_removed(stack, project, tmp_path):
    from mlflow import MlflowClient  # heavy optional dependency
    from mlflow.exceptions import MlflowException

    stack_project_on(stack, project)
    paths = ProjectPaths(project)
    assert paths.tracking_uri == stack.mlflow_uri
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    exp = client.create_experiment(f"erase-{os.urandom(4).hex()}")
    client.set_experiment_tag(exp, "owner", f"asked by {PID}")
    named = client.create_run(exp, tags={"note": f"debug run for {PID}"}).info.run_id
    image = os.urandom(8000)  # a plaintext copy of the subject's image, logged by mistake
    copy = tmp_path / "face.png"
    copy.write_bytes(image)
    holding = client.create_run(exp).info.run_id
    client.log_artifact(holding, str(copy))
    clean = client.create_run(exp).info.run_id
    other = tmp_path / "metrics.json"
    other.write_bytes(os.urandom(3000))
    client.log_artifact(clean, str(other))

    # The image's erasure left its PNG's hash in the tombstones (any erased subject's counts).
    Tombstones.open(paths).add("p" + "e" * 16, plains=[sha256_bytes(image)])
    ctx = Context(paths=paths, core=None, params=load_params(paths.params), planned={"raw": []})
    plan = mlflow_server.plan(ctx, PID)
    assert plan is not None
    assert {a["run_id"] for a in plan.artefacts} == {named, holding}
    # The copy is recorded without what the photograph hashes to.
    assert sha256_bytes(image) not in str(plan.artefacts)
    assert mlflow_server.verify(ctx, PID)  # the experiment tag still names the subject
    assert scan(stack.s3_data_dir, image[3000:3064])

    out = mlflow_server.erase(ctx, PID, plan.artefacts, plan)
    assert out.info["runs"] == 2 and "experiment_tags" in out.info["tables"]

    assert mlflow_server.verify(ctx, PID) == []
    for rid in (named, holding):
        with pytest.raises(MlflowException):
            client.get_run(rid)
    assert client.get_run(clean).info.lifecycle_stage == "active"
    keys = [o["Key"] for o in stack.s3.client().list_objects_v2(Bucket=stack.s3_bucket)["Contents"]]
    assert not any(holding in k for k in keys)
    assert any(clean in k for k in keys)
    # The attack: the image copy's bytes are nowhere in SeaweedFS's volume files.
    assert scan(stack.s3_data_dir, image[3000:3064]) == []
    assert mlflow_server.db_rows_naming(Stack.of(paths), PID) == []
