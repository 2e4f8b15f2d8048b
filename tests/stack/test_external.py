"""`stack.mode: external`: the same settings point at existing services; nothing is started."""

from __future__ import annotations

import psycopg
from project_helpers import copy_repo_params, init_dvc_repo, write_overrides

from visage_ml.config import ProjectPaths
from visage_ml.stack.manager import Stack


def test_external_services_are_used_not_started(stack, project, monkeypatch):
    # The session's stack plays the team's existing PostgreSQL, S3 and MLflow server.
    copy_repo_params(project / "params.yaml")
    write_overrides(
        project / "params.yaml",
        {
            "stack.mode": "external",
            "stack.postgres.dsn": f"postgresql://visage@127.0.0.1:{stack.postgres.port}/visage",
            "stack.s3.endpoint": stack.s3_endpoint,
            "stack.mlflow.uri": stack.mlflow_uri,
        },
    )
    init_dvc_repo(project)
    monkeypatch.setenv("VISAGE_STACK_POSTGRES_PASSWORD", stack.postgres.password)
    monkeypatch.setenv("VISAGE_STACK_S3_ACCESS_KEY", stack.s3_access_key)
    monkeypatch.setenv("VISAGE_STACK_S3_SECRET_KEY", stack.s3_secret_key)
    paths = ProjectPaths(project)
    ext = Stack.of(paths, generate=True)
    assert not paths.stack_secrets.exists()  # nothing generated for someone else's services
    assert ext.up() == {}
    assert not (project / ".stack").exists()
    assert paths.tracking_uri == stack.mlflow_uri
    assert all(s["up"] for s in ext.status().values())
    with psycopg.connect(ext.postgres_dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    local = (project / ".dvc" / "config.local").read_text()
    assert stack.s3_endpoint in local and stack.s3_secret_key in local
    assert stack.s3_secret_key not in (project / ".dvc" / "config").read_text()
    assert ext.down() == []
    assert stack.manager.status()["postgres"]["up"]  # the team's services keep running
