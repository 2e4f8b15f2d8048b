"""Red team of session 37's own changes: each test failed while the attack it describes worked
(preflight on an external stack, ledger-keys.pem completeness, consent evidence checks,
config validate's follow-on errors)."""

from __future__ import annotations

import json

import pytest
from project_helpers import write_overrides
from regulator_helpers import pinned_cli_args, run_cli, witness_vkey
from rights_fakes import make_project
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths, load_params, validate_params
from visage_ml.data.importers.basis import ImportBasis, record_basis
from visage_ml.privacy import ledger as ledger_mod
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.rights.erasure import Erasure, preflight
from visage_ml.stack import manager


def test_external_stack_without_postgres_password_is_not_blocked(project, monkeypatch):
    """External stack: the team's MLflow server (stack.tracking: server) is the only service
    this erasure needs (gallery in memory, no DVC remote). The MLflow server answers. The
    project has no PostgreSQL password (it never talks to the team's PostgreSQL: the MLflow
    server does). preflight calls Stack.status(), which builds the PostgreSQL DSN of *every*
    service and raises 'the PostgreSQL password is not set': the erasure, which needs no
    PostgreSQL, is refused with a message about a credential it does not use."""
    proj = make_project(project, n_subjects=2)
    write_overrides(
        project / "params.yaml",
        {
            "stack.mode": "external",
            "stack.tracking": "server",
            "stack.mlflow.uri": "http://mlflow.example.invalid",
            "stack.s3.endpoint": "http://s3.example.invalid",
            "stack.postgres.dsn": "postgresql://pg.example.invalid/mlflow",
        },
    )
    monkeypatch.delenv("VISAGE_STACK_POSTGRES_PASSWORD", raising=False)
    monkeypatch.setattr(manager, "_http_up", lambda url: True)  # MLflow (and S3) answer
    paths = ProjectPaths(project)
    ctx = Erasure(paths, core=PrivacyCore(paths)).ctx
    assert preflight.needed(ctx) == ["mlflow"]
    preflight.check(ctx, proj.pids[0])  # raises StackError: PostgreSQL password not set


def test_ledger_keys_of_a_project_rotated_before_the_upgrade_hold_every_key(project, tmp_path):
    """A project that rotated its key with the previous version has no ledger-keys.pem (the
    rotation did not write one: simulated by deleting it). Its next rotation writes
    ledger-keys.pem = ledger.pub (K2) + K3: K1, the key of every certificate made before the
    first rotation, is in neither file, though docs/verify.md says the file 'holds every key the
    ledger has had' and the ledger's key chain holds K1 (verified)."""
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert = tmp_path / "cert.json"
    cert.write_bytes(result.certificate_path.read_bytes())
    keys = proj.paths.ledger_public_key.with_name("ledger-keys.pem")
    assert PrivacyCore(proj.paths).rotate_ledger_key()[1] == []
    keys.unlink()  # the file the old version never wrote
    assert PrivacyCore(proj.paths).rotate_ledger_key()[1] == []
    assert len(PrivacyCore(proj.paths).ledger.key_chain().fingerprints()) == 3
    assert keys.read_bytes().count(b"BEGIN PUBLIC KEY") == 3, "ledger-keys.pem misses K1"
    doc = json.loads(cert.read_text())
    res = run_cli(cert, *pinned_cli_args(doc, keys, witness_vkey()))
    assert res.exit_code == 0, res.output


def test_a_crash_after_ledger_pub_leaves_ledger_keys_without_the_current_key(
    project, tmp_path, monkeypatch
):
    """_install_next_key writes ledger.pub, then ledger-keys.pem. A crash between the two (the
    .next key already moved, so _finish_rotation never runs again) leaves ledger-keys.pem
    without the current key, for good: every later certificate fails offline with the file
    the docs tell a regulator to use ('ask for ledger-keys.pem')."""
    proj = make_project(project, n_subjects=4)
    keys = proj.paths.ledger_public_key.with_name("ledger-keys.pem")
    assert PrivacyCore(proj.paths).rotate_ledger_key()[1] == []  # K1, K2 in the file

    real = ledger_mod.atomic_write_bytes

    def crash_on_keys_file(path, data, **kw):
        if path.name == "ledger-keys.pem":
            raise KeyboardInterrupt("power cut")
        return real(path, data, **kw)

    monkeypatch.setattr(ledger_mod, "atomic_write_bytes", crash_on_keys_file)
    with pytest.raises(KeyboardInterrupt):
        PrivacyCore(proj.paths).rotate_ledger_key()
    monkeypatch.setattr(ledger_mod, "atomic_write_bytes", real)
    # The operator finishes as the CLI says: `visage privacy rotate-ledger-key --announce`.
    assert PrivacyCore(proj.paths).announce_rotation() == []

    result = Erasure(proj.paths).erase(proj.pids[1])  # signed by K3
    cert = tmp_path / "cert.json"
    cert.write_bytes(result.certificate_path.read_bytes())
    doc = json.loads(cert.read_text())
    res = run_cli(cert, *pinned_cli_args(doc, keys, witness_vkey()))
    assert res.exit_code == 0, res.output


def test_check_evidence_finds_an_imported_subjects_evidence(project, tmp_path):
    """`visage data import --consent-evidence FORM` records FORM's SHA-256 in each imported
    subject's receipt (basis.py). `visage privacy consent check-evidence PID FORM` is the one
    command to ask 'is FORM the evidence of PID's consent?', and it compares an HMAC only:
    for every imported subject it answers 'is not' (exit 1) for the very file recorded."""
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid = "p" + "1" * 16
    core.add_subjects([NewSubject(pid=pid)], source="import", snapshot=False)
    form = tmp_path / "dataset-consent.pdf"
    form.write_bytes(b"%PDF the participants' signed consent forms")
    basis = ImportBasis.from_options(consent_evidence=form)
    record_basis(core, [pid], basis, fmt="folder", controller=load_params(paths.params).project)

    res = CliRunner().invoke(app, ["privacy", "consent", "check-evidence", pid, str(form)])
    assert res.exit_code == 0, res.output


def test_check_evidence_of_an_unknown_pid_writes_nothing(project, tmp_path):
    """check-evidence is a question, yet evidence_digest calls data_keys.key(pid, create=True):
    asked about a pid that is not on record (a typo), it creates and stores a data key for it
    and answers 'is not'. `consent give` does the same before it refuses the unknown pid."""
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    core.add_subjects([NewSubject(pid="p" + "2" * 16)], source="test", snapshot=False)
    ghost = "p" + "3" * 16
    form = tmp_path / "form.pdf"
    form.write_bytes(b"form")
    res = CliRunner().invoke(app, ["privacy", "consent", "check-evidence", ghost, str(form)])
    assert "Traceback" not in res.output
    assert not PrivacyCore(paths).data_keys.exists(ghost), (
        "a data key was created for a pid not on record"
    )
    res = CliRunner().invoke(app, ["privacy", "consent", "give", ghost, "--evidence", str(form)])
    assert res.exit_code != 0
    assert not PrivacyCore(paths).data_keys.exists(ghost), "consent give left a data key"


def test_a_mistyped_witness_kind_is_one_problem_not_two(project):
    """One typo (kind: https for http). validate_all substitutes the default kind
    ('directory') and runs WitnessSpec.check(), which then complains that the directory
    witness has no path: a second, spurious error about a key the operator never meant to set
    (their witness is an http one with a correct url and key)."""
    write_overrides(
        project / "params.yaml",
        {
            "privacy.witness.witnesses": [
                {"kind": "directory", "path": "default"},
                {"kind": "https", "url": "https://w.example.org", "key": "w.example.org+01+AA=="},
            ],
        },
    )
    problems = validate_params(project / "params.yaml")
    assert len(problems) == 1, problems


def test_a_bad_witness_entry_does_not_make_quorum_wrong(project):
    """witnesses[1] is a bare URL (not a mapping); quorum: 2 matches the two witnesses listed.
    The whole list falls back to the default (one witness), and WitnessParams.check() then
    reports 'quorum: at most the 1 witnesses listed': spurious, the operator listed two."""
    write_overrides(
        project / "params.yaml",
        {
            "privacy.witness.witnesses": [
                {"kind": "directory", "path": "default"},
                "https://w.example.org",
            ],
            "privacy.witness.quorum": 2,
        },
    )
    problems = validate_params(project / "params.yaml")
    assert not any("quorum" in p for p in problems), problems
