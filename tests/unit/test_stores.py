"""The stores outside the project it wrote personal data to (visage_ml/stack/stores.py): kept
without secrets, and an erasure that cannot reach one stops before it erases anything."""

from __future__ import annotations

import dataclasses
import json

import pytest
from project_helpers import write_overrides
from rights_fakes import make_project

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import Erasure
from visage_ml.stack import stores
from visage_ml.stack.proc import StackError


def _record(paths):
    return PrivacyCore(paths).record_store


def test_a_store_is_remembered_once_by_its_server_without_any_secret(project):
    paths = ProjectPaths(project)
    record = _record(paths)
    dsn = "postgresql://visage:s3cr3t-pw@db.example.invalid:6543/faces?sslmode=require"
    assert stores.remember_pgvector(paths, dsn=dsn, table="gallery_a", record=record)
    # Another spelling of the same server and table (another user, a password in key=value
    # form) is the same store.
    other = "host=db.example.invalid port=6543 dbname=faces user=admin password=other-pw"
    assert not stores.remember_pgvector(paths, dsn=other, table="gallery_a", record=record)
    uri = "https://bob:tok3n@mlflow.example.invalid/"
    assert stores.remember_mlflow_server(paths, uri, record=record)
    text = (project / stores.STATE_FILE).read_text() + paths.ledger.read_text()
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
    stores.remember_mlflow_server(
        paths, "http://mlflow-old.example.invalid:5000", record=_record(paths)
    )
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


OLD_SERVER = "http://mlflow-old.example.invalid:5000"


def _left_for_sqlite(project):
    write_overrides(
        project / "params.yaml",
        {
            "stack.mode": "external",
            "stack.tracking": "sqlite",
            "stack.mlflow.uri": "http://mlflow-new.example.invalid:5000",
        },
    )


@pytest.mark.parametrize("lose", ["deleted", "emptied", "edited"])
def test_a_lost_or_edited_list_of_stores_does_not_take_a_store_out_of_the_erasure(project, lose):
    """An operator who deletes `.visage/stores.json` (or empties it, or drops the one store
    from it) must not take the server holding the subject's runs out of the erasure's reach:
    the signed ledger remembers it, and only `visage stack forget` (recorded) lets it go."""
    proj = make_project(project, n_subjects=3)
    paths = ProjectPaths(project)
    stores.remember_mlflow_server(paths, OLD_SERVER, record=_record(paths))
    stores.remember_mlflow_server(paths, "http://other.example.invalid", record=_record(paths))
    _left_for_sqlite(project)
    state = project / stores.STATE_FILE
    if lose == "deleted":
        state.unlink()
    elif lose == "emptied":
        state.write_text('{"stores": []}\n')
    else:
        doc = json.loads(state.read_text())
        doc["stores"] = [s for s in doc["stores"] if "mlflow-old" not in s["store"]]
        state.write_text(json.dumps(doc))
    victim = proj.pids[0]
    with pytest.raises(StackError) as refused:
        Erasure(paths, core=PrivacyCore(paths)).erase(victim)
    assert f"mlflow-server:{OLD_SERVER}" in str(refused.value)
    assert not PrivacyCore(paths).registry.get(victim).erased
    listed = [s.store for s in stores.remembered(paths)]
    assert f"mlflow-server:{OLD_SERVER}" in listed


def test_a_store_only_the_file_knew_is_recorded_in_the_ledger_by_the_next_erasure(project):
    """A list written by a version that kept the file alone: the first erasure records its
    stores in the ledger, so a later deletion of the file loses nothing."""
    proj = make_project(project, n_subjects=3)
    paths = ProjectPaths(project)
    entry = stores.RememberedStore(
        store=f"mlflow-server:{OLD_SERVER}",
        kind="mlflow-server",
        since="2026-01-01T00:00:00+00:00",
        uri=OLD_SERVER,
    )
    state = project / stores.STATE_FILE
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"stores": [dataclasses.asdict(entry)]}))
    _left_for_sqlite(project)
    with pytest.raises(StackError):
        Erasure(paths, core=PrivacyCore(paths)).erase(proj.pids[0])
    recorded = [e for e in PrivacyCore(paths).ledger.entries() if e.type == stores.REMEMBERED]
    assert [e.payload["store"] for e in recorded] == [entry.store]
    state.unlink()
    assert stores.remembered(paths) == [entry]


def test_a_forgotten_store_stays_forgotten_until_written_to_again(project):
    """Forgetting leaves the ledger's remembered entry in place (it is append-only): the later
    `store.forgotten` entry wins, whatever the file says, until the project writes there
    again."""
    make_project(project, n_subjects=1)
    paths = ProjectPaths(project)
    record = _record(paths)
    stores.remember_mlflow_server(paths, OLD_SERVER, record=record)
    backup = (project / stores.STATE_FILE).read_text()
    forgotten, entry = stores.forget(paths, f"mlflow-server:{OLD_SERVER}", record=record)
    assert entry.type == stores.FORGOTTEN and forgotten.uri == OLD_SERVER
    (project / stores.STATE_FILE).write_text(backup)  # an old copy put back changes nothing
    assert stores.remembered(paths) == []
    assert stores.remember_mlflow_server(paths, OLD_SERVER, record=record)
    assert [s.uri for s in stores.remembered(paths)] == [OLD_SERVER]


def test_an_unreadable_store_entry_of_the_ledger_stops_the_listing(project):
    make_project(project, n_subjects=1)
    paths = ProjectPaths(project)
    with paths.ledger.open("ab") as fh:
        fh.write(b'{"type":"store.remembered","payload":"cut here\n')
    with pytest.raises(stores.StoresError, match="verify-ledger"):
        stores.remembered(paths)


def test_the_words_of_a_store_entry_inside_another_entry_are_not_one(project):
    make_project(project, n_subjects=1)
    paths = ProjectPaths(project)
    PrivacyCore(paths).ledger.append("audit.exported", None, {"x": {"type": stores.REMEMBERED}})
    assert stores.remembered(paths) == []
    stores.remember_mlflow_server(paths, OLD_SERVER, record=_record(paths))
    assert [s.uri for s in stores.remembered(paths)] == [OLD_SERVER]
