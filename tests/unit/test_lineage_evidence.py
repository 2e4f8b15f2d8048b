"""Which models in use count as retrained after an erasure (rights/lineage.py): only those trained
on a data version known to be without the subject, wherever the model was trained and however the
registry serves it. A model trained in a `dvc exp run`, on another branch or in a stash was neither
on the certificate nor conceded; a data version lineage had never seen counted as clean; a registry
alias or stage on a version trained on the subject, or a version registered again without the
project's tag, was ignored. Each read "retrained" while a model trained on the subject was in use;
each test failed while that was so."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
from project_helpers import git
from rights_fakes import make_project, retrain, write_pipeline_lock
from test_certificate import _mlflow_db
from test_redteam_regulator50 import _erased_with_models, _says_in_use_again
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.dvcops import tracked_md5
from visage_ml.io import md5_file
from visage_ml.rights import lineage
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure

EXP_FACES, EXP_MODEL = "e" * 32, "9" * 32


def _commit_lock(root, raw_md5: str, faces_md5: str, model_md5: str, message: str) -> None:
    write_pipeline_lock(root, raw_md5, faces_md5, model_md5)
    git(root, "add", "dvc.lock")
    git(root, "commit", "-qm", message)


def _refreshed(runner) -> list[str]:
    out = runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"]).output
    return json.loads(out)["upgraded"]


def _retrained(paths, result) -> dict:
    report = verify_certificate(result.certificate_path, root=paths.root, scan=False)
    return report.models


def _cached(root, body: bytes) -> str:
    """An object in the DVC cache, as `dvc repro` caches a stage output; its md5."""
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    obj = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(body)
    return md5


@pytest.mark.pipeline
def test_a_model_trained_in_a_dvc_experiment_is_listed_and_not_retrained_once_applied(
    tiny_project,
):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=4, track=True)
    paths, victim = proj.paths, proj.pids[1]
    raw_md5 = tracked_md5(root, paths.raw)
    faces = md5_file(paths.processed / "faces.sealed")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "data")
    base = git(root, "rev-parse", "HEAD")
    # `dvc exp run` commits its dvc.lock under refs/exps/..., never on the branch.
    write_pipeline_lock(root, raw_md5, EXP_FACES, EXP_MODEL)
    git(root, "add", "dvc.lock")
    exp = git(root, "commit-tree", git(root, "write-tree"), "-p", base, "-m", "exp-big")
    git(root, "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/exp-big", exp)
    _commit_lock(root, raw_md5, faces, "a" * 32, "run")
    _mlflow_db(paths, [(1, faces), (2, EXP_FACES)])  # the experiment's evaluate registered v2
    result = Erasure(paths, core=proj.core).erase(victim)
    claims = result.certificate["claims"]
    listed = {(m["kind"], m["version"], m["data_md5"]) for m in claims["models"]}
    assert {("dvc", EXP_MODEL, EXP_FACES), ("mlflow_model", "2", EXP_FACES)} <= listed, listed
    # `dvc repro` on the purged data/raw: prepare's new output (its manifest is in the cache
    # and does not list the subject), the embedder trained on it, registered as v3.
    new_raw = tracked_md5(root, paths.raw)
    assert new_raw != raw_md5
    retrain(paths, "d" * 32, "b" * 32, raw_md5=new_raw)
    _mlflow_db(paths, [(3, "d" * 32)])
    runner = CliRunner()
    assert _refreshed(runner) == [result.request_id]
    assert _retrained(paths, result)["status"].startswith("retrained (signed")
    # `dvc exp apply exp-big` writes the experiment's dvc.lock into the workspace.
    (root / "dvc.lock").write_text(git(root, "show", f"{exp}:dvc.lock") + "\n")
    _says_in_use_again(paths, victim, result, runner)


@pytest.mark.pipeline
def test_models_on_another_branch_in_a_stash_or_past_the_history_read_are_not_left_out(
    tiny_project, monkeypatch
):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=4, track=True)
    paths, victim = proj.paths, proj.pids[1]
    raw_md5 = tracked_md5(root, paths.raw)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "data")
    main = git(root, "rev-parse", "--abbrev-ref", "HEAD")
    git(root, "checkout", "-qb", "bigger-backbone")
    _commit_lock(root, raw_md5, "1" * 32, "c" * 32, "branch run")
    git(root, "checkout", "-q", main)
    _commit_lock(root, raw_md5, "2" * 32, "d" * 32, "run")
    # A run whose dvc.lock was stashed, not committed.
    write_pipeline_lock(root, raw_md5, "3" * 32, "e" * 32)
    git(root, "stash", "-q")
    trained = {"c" * 32, "d" * 32, "e" * 32}
    assert trained <= {m.version for m in lineage.subject_lineage(paths, victim).models}
    # More dvc.lock versions than are read: the unread ones are conceded, not passed over.
    monkeypatch.setattr(lineage, "MAX_REVISIONS", 1)
    lin = lineage.subject_lineage(paths, victim)
    assert any("not read" in n for n in lin.notes), lin.notes
    monkeypatch.undo()
    result = Erasure(paths, core=proj.core).erase(victim)
    assert trained <= {m["version"] for m in result.certificate["claims"]["models"]}


def test_a_model_trained_on_a_data_version_never_recorded_is_not_called_retrained(project):
    paths, victim, _, result, runner, _client = _retrained_then_registry(project)
    # A `dvc repro` of data that still held the subject, its dvc.lock never committed and since
    # overwritten: only its MLflow version says which data it was trained on.
    _mlflow_db(paths, [(3, "f" * 32)])
    _says_in_use_again(paths, victim, result, runner)


def test_a_model_of_a_data_version_no_lock_records_is_conceded_by_the_certificate(project):
    proj = make_project(project, n_subjects=4)
    paths, victim = proj.paths, proj.pids[1]
    retrain(paths, md5_file(paths.processed / "faces.sealed"), "a" * 32)
    _mlflow_db(paths, [(1, md5_file(paths.processed / "faces.sealed")), (2, "f" * 32)])
    result = Erasure(paths).erase(victim)
    notes = result.certificate["claims"]["lineage_notes"]
    assert any("f" * 32 in n and "visage-embedder v2" in n for n in notes), notes
    said = verify_certificate(result.certificate_path, root=paths.root, scan=False).conceded
    assert any("could not be read" in c for c in said), said


def _retrained_then_registry(project):
    """An erasure whose models were retrained (MLflow version 2) and recorded so (--refresh):
    ``(paths, victim, old data md5, result, runner, MLflow client)``."""
    from mlflow import MlflowClient

    proj, victim, old_md5, result = _erased_with_models(project)
    paths = proj.paths
    after = result.certificate["claims"]["dataset"]["processed_md5_after"]
    retrain(paths, after, "b" * 32)
    _mlflow_db(paths, [(2, after)])
    runner = CliRunner()
    assert _refreshed(runner) == [result.request_id]
    client = MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)
    return paths, victim, old_md5, result, runner, client


def test_a_registry_alias_or_stage_on_a_version_trained_on_the_subject_is_not_retrained(project):
    paths, victim, _, result, runner, client = _retrained_then_registry(project)
    # Serving resolves `models:/visage-embedder@champion`: version 1, trained on the subject.
    client.set_registered_model_alias("visage-embedder", "champion", "1")
    _says_in_use_again(paths, victim, result, runner)
    client.set_registered_model_alias("visage-embedder", "champion", "2")
    assert _retrained(paths, result)["status"].startswith("retrained (signed")
    # ... or `models:/visage-embedder/Production` (stages: deprecated, still served).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage("visage-embedder", "1", "Production")
    _says_in_use_again(paths, victim, result, runner)


def test_a_version_registered_without_the_projects_tag_is_not_retrained(project):
    paths, victim, old_md5, result, runner, client = _retrained_then_registry(project)
    # `mlflow.register_model` or the UI: a version of unknown training data is the newest.
    client.create_model_version("visage-embedder", str(paths.models / "other.onnx"))
    _says_in_use_again(paths, victim, result, runner)
    # Version 1's model registered again from its run: trained on the subject, untagged.
    run = client.create_run(client.create_experiment("evaluate")).info.run_id
    client.set_tag(run, lineage.DATA_MD5_TAG, old_md5)
    client.create_model_version("visage-embedder", f"runs:/{run}/embedder", run)
    models = _retrained(paths, result)
    stale = {(m["kind"], m["version"], m["data_md5"]) for m in models["stale"]}
    assert ("mlflow_model", "4", old_md5) in stale, models


@pytest.mark.pipeline
def test_models_trained_on_the_subject_still_restorable_after_retraining_are_conceded(
    tiny_project,
):
    """ "Retrained" said nothing of the bytes: the model trained on the subject stayed in DVC's
    cache (one `dvc checkout` away) and its MLflow version stayed registered."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=4, track=True)
    paths, victim = proj.paths, proj.pids[1]
    body = b"weights trained on the subject"
    model = _cached(root, body)
    faces = md5_file(paths.processed / "faces.sealed")
    write_pipeline_lock(root, tracked_md5(root, paths.raw), faces, model)
    _mlflow_db(paths, [(1, faces)])
    result = Erasure(paths, core=proj.core).erase(victim)
    after = result.certificate["claims"]["dataset"]["processed_md5_after"]
    retrain(paths, after, "b" * 32)
    _mlflow_db(paths, [(2, after)])
    runner = CliRunner()
    assert _refreshed(runner) == [result.request_id]
    report = verify_certificate(result.certificate_path, root=paths.root, scan=False)
    assert report.models["status"].startswith("retrained (signed")
    said = [c for c in report.conceded if "remain restorable" in c]
    assert len(said) == 1 and said[0].startswith("2 model(s) trained on the subject"), said
    assert model in said[0] and "visage-embedder v1" in said[0], said
    cli = runner.invoke(app, ["privacy", "verify-certificate", str(result.certificate_path)])
    assert "conceded: 2 model(s) trained on the subject remain restorable" in cli.output
    lin = json.loads(runner.invoke(app, ["privacy", "lineage", victim, "--json"]).output)
    assert any("remain restorable" in n for n in lin["lineage"]["notes"]), lin
    # Purged as docs/security.md says: nothing is conceded any more.
    (root / ".dvc" / "cache" / "files" / "md5" / model[:2] / model[2:]).unlink()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)
    client.delete_model_version("visage-embedder", "1")
    report = verify_certificate(result.certificate_path, root=paths.root, scan=False)
    assert not any("remain restorable" in c for c in report.conceded), report.conceded
