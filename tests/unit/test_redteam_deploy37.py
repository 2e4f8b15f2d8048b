"""The deployment walk of docs/deploy.md, as a new operator follows it (session 37): each test
asserts what the operator is promised and failed while the walk found otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from project_helpers import init_dvc_repo, pipeline_env, write_overrides
from rights_fakes import make_project

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import Erasure
from visage_ml.stack.proc import StackError

VISAGE = str(Path(sys.executable).with_name("visage"))
DVC = str(Path(sys.executable).with_name("dvc"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stack_configured_but_down(project: Path, *, tracking: str = "server") -> None:
    """A project that `visage stack up` configured (S3 remote `stack`, MLflow server), whose
    stack is not running now (after `visage stack down`, or a reboot)."""
    s3, pg, ml = _free_port(), _free_port(), _free_port()
    write_overrides(
        project / "params.yaml",
        {
            "stack.tracking": tracking,
            "stack.s3.port": s3,
            "stack.postgres.port": pg,
            "stack.mlflow.port": ml,
        },
    )
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for args in (
        ["remote", "add", "-d", "stack", "s3://visage/dvc"],
        ["remote", "modify", "--local", "stack", "endpointurl", f"http://127.0.0.1:{s3}"],
        ["remote", "modify", "--local", "stack", "access_key_id", "k"],
        ["remote", "modify", "--local", "stack", "secret_access_key", "s"],
    ):
        subprocess.run([DVC, *args], cwd=project, env=env, check=True, capture_output=True)


@pytest.mark.pipeline
def test_an_erasure_with_the_stack_down_stops_before_it_starts_with_a_message(project):
    """With the stack down, the erasure crashed in its first step with a ~180-line botocore
    traceback (docs/deploy.md: "an unreachable store stops the erasure with a message"). It
    stops before any step, the request is not started, the subject is untouched, and the
    command says what to do in one message."""
    init_dvc_repo(project)
    proj = make_project(project, n_subjects=3, track=True)
    _stack_configured_but_down(project)
    victim = proj.pids[0]

    with pytest.raises(StackError, match="visage stack up"):
        Erasure(ProjectPaths(project), core=PrivacyCore(ProjectPaths(project))).erase(victim)
    assert (proj.paths.raw / victim).is_dir()
    assert not PrivacyCore(ProjectPaths(project)).registry.get(victim).erased

    out = subprocess.run(
        [VISAGE, "privacy", "erase", victim],
        cwd=project,
        env=pipeline_env(project),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "visage stack up" in out.stderr
    assert "nothing was erased" in out.stderr


def test_add_log_without_dir_does_not_make_a_second_witness(project, tmp_path, monkeypatch):
    """docs/deploy.md ran `visage witness add-log VKEY` without --dir after `witness init --dir
    /srv/witness`: it silently created a new witness under ~/.local/share and trusted the log
    there, while the served witness never did. add-log needs an existing witness, and says
    which one it changed."""
    from typer.testing import CliRunner

    from visage_ml.app.cli import app

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISAGE_WITNESS_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    served = tmp_path / "srv-witness"
    runner = CliRunner()
    assert runner.invoke(app, ["witness", "init", "--dir", str(served)]).exit_code == 0
    vkey = PrivacyCore(ProjectPaths(project)).witnessing.log_verifier().vkey  # log-key

    res = runner.invoke(app, ["witness", "add-log", vkey])
    assert res.exit_code == 2
    assert "--dir" in res.output and "witness init" in res.output
    assert not (tmp_path / "home" / ".local" / "share" / "visage-ml" / "witness").exists()

    res = runner.invoke(app, ["witness", "add-log", vkey, "--dir", str(served)])
    assert res.exit_code == 0, res.output
    assert str(served) in res.output


def test_an_erasure_whose_witness_is_down_says_nothing_was_erased_yet(project):
    """With a witness host down, `visage privacy erase` said "The change is in force locally",
    which an operator read as done: no step had run. It says that the request is recorded and
    nothing is erased yet, and what to run; the same command finishes it afterwards."""
    from typer.testing import CliRunner

    from visage_ml.app.cli import app
    from visage_ml.privacy.witness import Witness

    proj = make_project(project, n_subjects=3)
    victim = proj.pids[0]
    down = Witness.create(project.parent / "w2")
    write_overrides(
        project / "params.yaml",
        {
            "privacy.witness.witnesses": [
                {"kind": "directory", "path": "default"},
                {"kind": "http", "url": "http://127.0.0.1:9", "key": down.verifier.vkey},
            ],
            "privacy.witness.timeout_seconds": 2.0,
        },
    )
    res = CliRunner().invoke(app, ["privacy", "erase", victim])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "nothing was erased" in text
    assert f"visage privacy erase {victim}" in text
    assert (proj.paths.raw / victim).is_dir()


def test_erase_says_how_each_artefact_went_not_that_all_were_removed(project):
    """`visage privacy erase` said "N artefacts removed" where most were crypto-shredded
    (their ciphertext made unreadable, as the certificate says): it counts them by outcome."""
    from typer.testing import CliRunner

    from visage_ml.app.cli import app

    proj = make_project(project, n_subjects=3)
    res = CliRunner().invoke(app, ["privacy", "erase", proj.pids[0]])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "removed;" not in text
    assert "key destroyed" in text and "crypto-shredded" in text


def test_config_validate_names_every_bad_key_not_only_the_first(project):
    """`visage config validate` stopped at the first bad key: an operator editing params.yaml
    for a deployment fixed one, ran it again, found the next. It names all of them."""
    from typer.testing import CliRunner

    from visage_ml.app.cli import app

    write_overrides(
        project / "params.yaml",
        {
            "serving.gallery.backend": "postgres",
            "serving.identify.target_fpir": 2.0,
            "stack.s3.prot": 1,
        },
    )
    res = CliRunner().invoke(app, ["config", "validate"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    for key in ("serving.gallery.backend", "serving.identify.target_fpir", "stack.s3.prot"):
        assert f"key '{key}'" in text
    assert "3 problem(s)" in text


def test_an_erasure_whose_completion_is_not_witnessed_says_the_data_is_gone(project, monkeypatch):
    """A witness that stops answering during an erasure: every step has run, but the
    completion cannot be witnessed and the command said only "The change is in force locally".
    It says the subject's data is erased and the certificate waits, and `resume` after the
    witnesses answer issues it."""
    from typer.testing import CliRunner

    from visage_ml.app.cli import app
    from visage_ml.privacy import witnessed
    from visage_ml.rights.certify import verify_certificate

    proj = make_project(project, n_subjects=3)
    victim = proj.pids[0]
    real = witnessed.Witnessing.after_append

    def down_at_completion(self, entries):
        if any(e.type == "erasure.completed" for e in entries):
            raise witnessed.WitnessUnavailableError("witness down (test)")
        return real(self, entries)

    monkeypatch.setattr(witnessed.Witnessing, "after_append", down_at_completion)
    res = CliRunner().invoke(app, ["privacy", "erase", victim])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "data is erased" in text and "visage privacy resume" in text
    assert not (proj.paths.raw / victim).exists()
    monkeypatch.setattr(witnessed.Witnessing, "after_append", real)
    res = CliRunner().invoke(app, ["privacy", "resume"])
    assert res.exit_code == 0, res.output
    (cert,) = proj.paths.certificates.glob("*.json")
    assert verify_certificate(cert, root=proj.paths.root).ok


@pytest.mark.pipeline
def test_verify_certificate_does_not_call_an_unreachable_remote_clean(project):
    """`verify-certificate` in the checkout with the stack down said "no erased content
    remains ... 0 found" and VALID: each S3 lookup's error was taken as "not there". A remote
    it could not ask is named, and the check is not passed."""
    from visage_ml.rights.certify import verify_certificate

    init_dvc_repo(project)
    proj = make_project(project, n_subjects=3, track=True)
    result = Erasure(ProjectPaths(project)).erase(proj.pids[0])
    assert verify_certificate(result.certificate_path, root=project).ok
    _stack_configured_but_down(project, tracking="sqlite")
    report = verify_certificate(result.certificate_path, root=project)
    assert not report.ok
    (check,) = [c for c in report.checks if c.name == "no erased content remains"]
    assert not check.ok and "could not be reached" in check.detail


@pytest.mark.pipeline
def test_a_remote_whose_endpoint_refuses_is_not_asked_object_by_object(project, monkeypatch):
    """The S3 client retried each lookup on a stopped stack for 4-14 s per store before it
    gave up (about 20 s for `verify-certificate`): an endpoint that takes no connection is
    passed over at once, by the certificate's check and by the references a seal keeps."""
    from visage_ml.rights import dvc_objects
    from visage_ml.rights.certify import verify_certificate

    init_dvc_repo(project)
    proj = make_project(project, n_subjects=3, track=True)
    result = Erasure(ProjectPaths(project)).erase(proj.pids[0])
    _stack_configured_but_down(project, tracking="sqlite")
    asked = []
    real = dvc_objects.ObjectStore.exists

    def exists(store, oid):
        if store.local_path is None:
            asked.append(store.name)
        return real(store, oid)

    monkeypatch.setattr(dvc_objects.ObjectStore, "exists", exists)
    report = verify_certificate(result.certificate_path, root=project)
    (check,) = [c for c in report.checks if c.name == "no erased content remains"]
    assert not check.ok and "ConnectionRefusedError" in check.detail
    setup = dvc_objects.open_setup(project)
    assert dvc_objects.current_references(setup, unreachable_ok=True)
    assert asked == []
