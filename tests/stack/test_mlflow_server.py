"""The stack's MLflow server: rows in PostgreSQL, artefacts in S3, both gone after delete + gc."""

from __future__ import annotations

import os

import psycopg

from visage_ml.stack.mlflow_server import gc
from visage_ml.stack.seaweed import scan


def test_run_logged_to_server_then_deleted_and_gc_removes_rows_and_bytes(stack, tmp_path):
    from mlflow import MlflowClient  # heavy optional dependency

    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    exp = client.create_experiment("stack-gc-test")
    run = client.create_run(exp)
    rid = run.info.run_id
    client.log_param(rid, "marker", "stack-gc-marker")
    blob = os.urandom(5000)
    art = tmp_path / "weights.bin"
    art.write_bytes(blob)
    client.log_artifact(rid, str(art))
    client.set_terminated(rid)
    s3 = stack.s3.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.s3_bucket).get("Contents", [])]
    assert any(rid in k and k.endswith("weights.bin") for k in keys)
    with psycopg.connect(stack.postgres.dsn_for("mlflow")) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (rid,)).fetchone()[0]

    # The needles that hold the artefact: SeaweedFS deletes them asynchronously after the
    # S3 delete, and a vacuum must wait for that before it can compact them away.
    needles = [fid for k in keys if rid in k for fid in stack.s3.chunk_ids(k)]
    assert needles
    client.delete_run(rid)
    gc(stack.mlflow_backend, tracking_uri=stack.mlflow_uri, run_ids=[rid])

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.s3_bucket).get("Contents", [])]
    assert not any(rid in k for k in keys)
    with psycopg.connect(stack.postgres.dsn_for("mlflow")) as conn:
        for table, col in (("runs", "run_uuid"), ("params", "run_uuid"), ("tags", "run_uuid")):
            sql = f"SELECT count(*) FROM {table} WHERE {col} = %s"  # noqa: S608 - fixed names
            n = conn.execute(sql, (rid,)).fetchone()
            assert n[0] == 0, table
    stack.s3.vacuum(wait_for=needles, timeout=30)
    assert scan(stack.s3_data_dir, blob[2000:2064]) == []
