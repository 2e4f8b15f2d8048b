"""Erasure on the stack's MLflow server: runs, artefacts and rows naming the subject, gone."""

from __future__ import annotations

import os
import time

import psycopg
import pytest
from project_helpers import files_holding, stack_project_on

from visage_ml import tracking
from visage_ml.config import ProjectPaths, load_params
from visage_ml.io import sha256_bytes
from visage_ml.privacy.core import PrivacyCore, store_recorder
from visage_ml.privacy.tombstones import Tombstones
from visage_ml.rights.erasure import mlflow_server
from visage_ml.rights.erasure.base import Context
from visage_ml.stack.manager import Stack, set_tracking
from visage_ml.stack.seaweed import scan

PID = "p_mlflowerase01"
PID2 = "p_mlflowerase02"


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
    copy = tmp_path / "Jane_Doe.png"  # under the person's name
    copy.write_bytes(image)
    holding = client.create_run(exp).info.run_id
    client.log_artifact(holding, str(copy), artifact_path="Jane_Doe")
    clean = client.create_run(exp).info.run_id
    other = tmp_path / "metrics.json"
    other.write_bytes(os.urandom(3000))
    client.log_artifact(clean, str(other))

    # The image's erasure left its PNG's hash in the tombstones (any erased subject's counts).
    Tombstones.open(paths).add("p" + "e" * 16, plains=[sha256_bytes(image)])
    ctx = Context(
        paths=paths, core=PrivacyCore(paths), params=load_params(paths.params), planned={"raw": []}
    )
    plan = mlflow_server.plan(ctx, PID)
    assert plan is not None
    assert {a["run_id"] for a in plan.artefacts} == {named, holding}
    # The copy is recorded without what the photograph hashes to, nor the name it was logged
    # under (the ledger and the certificate pair it with the pid for good).
    assert sha256_bytes(image) not in str(plan.artefacts)
    assert "Jane" not in str(plan.artefacts)
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


def _named(stack, files: list[str]) -> list[str]:
    """The files with the relation each one is (``base/<db oid>/<filenode>``), for a message."""
    out = []
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        dbs = dict(conn.execute("SELECT oid::text, datname FROM pg_database").fetchall())
    for f in files:
        parts = f.split("/")
        if len(parts) == 3 and parts[0] == "base" and parts[2].split(".")[0].isdigit():
            dsn = stack.manager.postgres_dsn(dbs.get(parts[1], "visage"))
            with psycopg.connect(dsn) as conn:
                rel = conn.execute(
                    "SELECT pg_filenode_relation(0, %s::oid)::text", (parts[2].split(".")[0],)
                ).fetchone()[0]
            f = f"{f} ({dbs.get(parts[1])}: {rel})"
        out.append(f)
    return out


def test_rows_gc_deleted_leave_no_byte_in_the_database_files(stack, project):
    """``mlflow gc`` deletes the runs' rows before the step purges: a plain DELETE leaves the
    old tuples in the tables' files (and the WAL), where SQL no longer sees them."""
    from mlflow import MlflowClient  # heavy optional dependency

    pid = f"p_mlfdisk{os.urandom(4).hex()}"
    stack_project_on(stack, project)
    paths = ProjectPaths(project)
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    exp = client.create_experiment(f"disk-{os.urandom(4).hex()}")
    rid = client.create_run(exp, run_name=f"debug {pid}", tags={"note": f"for {pid}"}).info.run_id
    client.log_param(rid, "subject", pid)
    client.log_metric(rid, f"loss_{pid}", 0.5)
    mlflow_dsn = stack.manager.postgres_dsn(stack.manager.params.mlflow.database)
    with psycopg.connect(mlflow_dsn, autocommit=True) as conn:
        for table in ("runs", "tags", "params", "metrics"):
            conn.execute(f"ANALYZE {table}")  # as autovacuum does: samples in pg_statistic
        conn.execute("CHECKPOINT")  # the rows' pages reach the tables' files
    needle = pid.encode()
    before = files_holding(stack.data_dir, needle)
    # The attack works before the erasure: the tables' files hold the pid.
    assert any(f.startswith("base/") for f in before), before

    ctx = Context(paths=paths, core=None, params=load_params(paths.params), planned={"raw": []})
    plan = mlflow_server.plan(ctx, pid)
    assert plan is not None and {a["run_id"] for a in plan.artefacts} == {rid}
    out = mlflow_server.erase(ctx, pid, plan.artefacts, plan)
    assert out.info["runs"] == 1
    assert {"runs", "params", "tags", "metrics", "latest_metrics"} <= set(out.info["rewritten"])
    # The same claims as the gallery's purge, each one checked.
    assert out.info["vacuum_full"] and out.info["wal_removed"], out.info
    assert out.info["statistics_cleared"] and "note" not in out.info, out.info
    assert mlflow_server.verify(ctx, pid) == []
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    left = files_holding(stack.data_dir, needle)
    assert left == [], "\n".join(_named(stack, left))


def test_wal_the_server_may_keep_is_noted_not_claimed_removed(stack, project):
    """The step switched the WAL once and claimed nothing either way: with recycled segments
    (which keep their old bytes) the certificate could not tell the run's rows may survive."""
    from mlflow import MlflowClient  # heavy optional dependency

    pid = f"p_mlfwal{os.urandom(4).hex()}"
    stack_project_on(stack, project)
    paths = ProjectPaths(project)
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    exp = client.create_experiment(f"wal-{os.urandom(4).hex()}")
    client.create_run(exp, run_name=f"debug {pid}")
    ctx = Context(paths=paths, core=None, params=load_params(paths.params), planned={"raw": []})
    plan = mlflow_server.plan(ctx, pid)
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_recycle = on")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)
        try:
            out = mlflow_server.erase(ctx, pid, plan.artefacts, plan)
        finally:
            conn.execute("ALTER SYSTEM SET wal_recycle = off")
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.2)
    assert out.info["wal_removed"] is False, out.info
    assert any("wal_recycle" in why for why in out.info["wal_retention"])
    assert "wal_recycle" in out.info["note"]


def test_the_tables_rewritten_after_gc_are_those_the_installed_mlflow_deletes_from():
    """An MLflow upgrade whose gc deletes from another table would leave that table's dead rows
    on disk unnoticed: the lists follow the installed MLflow's code."""
    import inspect
    import re

    from mlflow.store.tracking import sqlalchemy_store as store
    from mlflow.store.tracking.dbmodels import models

    def tables(fn) -> set[str]:
        names = set(re.findall(r"\b(Sql[A-Za-z]+)\b", inspect.getsource(fn)))
        return {getattr(models, n).__tablename__ for n in names if hasattr(models, n)}

    run = {m.__tablename__ for m in store._RUN_DELETE_CASCADE_MODELS} | {"runs"}
    run |= tables(store.SqlAlchemyStore._hard_delete_run)
    run |= tables(store.SqlAlchemyStore._mark_run_deleted)  # deleting a run through the client
    assert run <= set(mlflow_server.GC_RUN_TABLES)
    experiment = tables(store.SqlAlchemyStore._hard_delete_experiment) | {"experiments"}
    assert experiment <= set(mlflow_server.GC_EXPERIMENT_TABLES)
    logged = tables(store.SqlAlchemyStore._hard_delete_logged_model)
    assert logged <= set(mlflow_server.GC_LOGGED_MODEL_TABLES)


def test_a_server_the_project_tracked_to_is_erased_after_a_switch_back_to_sqlite(stack, project):
    """A project that tracked to the stack's MLflow server, then went back to SQLite
    (`stack.tracking: sqlite`), kept its runs on the server: the erasure planned the server step
    from params.yaml alone and never looked there, the certificate silent about it."""
    from mlflow import MlflowClient  # heavy optional dependency

    stack_project_on(stack, project)
    paths = ProjectPaths(project)
    with tracking.stage_run(paths, "train", record=store_recorder(paths)):
        pass  # the project tracks to the server: it remembers it
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    exp = client.create_experiment(f"erase-{os.urandom(4).hex()}")
    named = client.create_run(exp, tags={"note": f"debug run for {PID2}"}).info.run_id
    set_tracking(paths, "sqlite")
    assert paths.tracking_uri.startswith("sqlite:")

    ctx = Context(paths=paths, core=None, params=load_params(paths.params), planned={"raw": []})
    plan = mlflow_server.plan(ctx, PID2)
    assert plan is not None, "the server the project tracked to is not looked at"
    assert {a["run_id"] for a in plan.artefacts} == {named}
    mlflow_server.erase(ctx, PID2, plan.artefacts, plan)
    assert mlflow_server.verify(ctx, PID2) == []
