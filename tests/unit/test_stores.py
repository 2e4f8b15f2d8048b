"""The stores outside the project it wrote personal data to (visage_ml/stack/stores.py): kept
without secrets, and an erasure that cannot reach one stops before it erases anything."""

from __future__ import annotations

import json

import pytest
from project_helpers import write_overrides
from rights_fakes import make_project

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import Erasure
from visage_ml.stack import stores
from visage_ml.stack.proc import StackError


def test_a_store_is_remembered_once_by_its_server_without_any_secret(project):
    paths = ProjectPaths(project)
    dsn = "postgresql://visage:s3cr3t-pw@db.example.invalid:6543/faces?sslmode=require"
    assert stores.remember_pgvector(paths, dsn=dsn, table="gallery_a")
    # Another spelling of the same server and table (another user, a password in key=value
    # form) is the same store.
    other = "host=db.example.invalid port=6543 dbname=faces user=admin password=other-pw"
    assert not stores.remember_pgvector(paths, dsn=other, table="gallery_a")
    assert stores.remember_mlflow_server(paths, "https://bob:tok3n@mlflow.example.invalid/")
    text = (project / stores.STATE_FILE).read_text()
    assert "s3cr3t-pw" not in text and "other-pw" not in text and "tok3n" not in text
    assert (project / stores.STATE_FILE).stat().st_mode & 0o777 == 0o600
    pg, ml = stores.remembered(paths)
    assert pg.store == "pgvector:db.example.invalid:6543/faces/gallery_a"
    assert stores.pg_server(pg.conninfo) == ("db.example.invalid", "6543", "faces")
    assert "sslmode=require" in pg.conninfo
    assert ml.store == "mlflow-server:https://mlflow.example.invalid"


def test_an_mlflow_server_the_stack_no_longer_names_stops_the_erasure(project):
    """The project tracked to a team's MLflow server, then went back to SQLite and its stack
    settings moved on: the old server holds its runs and cannot be reached with the project's
    settings. The erasure stops before anything is erased, naming it, and goes on once it is
    forgotten (recorded in the ledger)."""
    from typer.testing import CliRunner

    from visage_ml.app.cli import app

    proj = make_project(project, n_subjects=3)
    paths = ProjectPaths(project)
    stores.remember_mlflow_server(paths, "http://mlflow-old.example.invalid:5000")
    write_overrides(
        project / "params.yaml",
        {
            "stack.mode": "external",
            "stack.tracking": "sqlite",
            "stack.mlflow.uri": "http://mlflow-new.example.invalid:5000",
        },
    )
    victim = proj.pids[0]
    with pytest.raises(StackError) as refused:
        Erasure(paths, core=PrivacyCore(paths)).erase(victim)
    msg = str(refused.value)
    assert "mlflow-server:http://mlflow-old.example.invalid:5000" in msg
    assert "nothing was erased" in msg and "visage stack forget" in msg
    assert not PrivacyCore(paths).registry.get(victim).erased
    assert (proj.paths.raw / victim).is_dir()

    runner = CliRunner()
    unknown = runner.invoke(app, ["stack", "forget", "mlflow-server:http://nowhere.invalid"])
    assert unknown.exit_code == 2 and "visage stack stores" in unknown.output
    forgot = runner.invoke(
        app, ["stack", "forget", "mlflow-server:http://mlflow-old.example.invalid:5000"]
    )
    assert forgot.exit_code == 0, forgot.output
    listed = runner.invoke(app, ["stack", "stores", "--json"])
    assert json.loads(listed.output) == []
    result = Erasure(paths, core=PrivacyCore(paths)).erase(victim)
    assert result.certificate_path is not None
