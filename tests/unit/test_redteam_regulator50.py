"""A regulator verifying an erasure certificate (session 50): what the verifiers say must be what
they found. "Retrained" only while the models in use are clean; pins given on site are checked,
not dropped; a certificate checked with keys it carries itself is not called VALID; a witness the
certificate lists but that never cosigned is named; and what the claims concede (stale models,
kept content, store notes) is said beside the verdict. Each test failed while the attack it
describes worked."""

from __future__ import annotations

import json

from regulator_helpers import (
    offline_copy,
    pinned_cli_args,
    run_cli,
    run_verify_py,
    verifier_script,
    witness_vkey,
)
from rights_fakes import make_project, retrain, write_training_lock
from test_certificate import _mlflow_db
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.io import md5_file
from visage_ml.privacy.certificate import (
    CONSISTENT_ONLY,
    EXIT_CONSISTENT_ONLY,
    OwnWitnesses,
    conceded,
    render,
    sign,
)
from visage_ml.privacy.checkpoint import cosigner
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.witness import Witness, default_witness_dir
from visage_ml.rights import certify, lineage
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure


def _erased_with_models(project):
    """An erasure of a subject the embedder was trained on (the certificate says stale)."""
    proj = make_project(project, n_subjects=4)
    paths, victim = proj.paths, proj.pids[1]
    old_md5 = md5_file(paths.processed / "faces.sealed")
    write_training_lock(paths, old_md5, "a" * 32)
    _mlflow_db(paths, [(1, old_md5)])
    result = Erasure(paths).erase(victim)
    return proj, victim, old_md5, result


def _says_in_use_again(paths, victim, result, runner):
    report = verify_certificate(result.certificate_path, root=paths.root)
    status = report.models["status"]
    assert not status.startswith(lineage.RETRAINED), status
    assert lineage.IN_USE_AGAIN in status and report.models["current_models_clean"] is False
    assert any(lineage.IN_USE_AGAIN in n for n in report.notes), report.notes
    cli = runner.invoke(app, ["privacy", "verify-certificate", str(result.certificate_path)])
    assert "models: retrained" not in cli.output and lineage.IN_USE_AGAIN in cli.output
    # Flagged, as stale models are: never a plain VALID.
    assert "certificate VALID\n" not in cli.output, cli.output
    lin = json.loads(runner.invoke(app, ["privacy", "lineage", victim, "--json"]).output)
    assert {m["status"] for m in lin["lineage"]["models"]} == {lineage.IN_USE_AGAIN}
    page = runner.invoke(app, ["privacy", "certificate-page", str(result.certificate_path)])
    assert page.exit_code == 0, page.output
    html = result.certificate_path.with_suffix(".html").read_text()
    assert "retrained without the subject" not in html and lineage.IN_USE_AGAIN in html


def test_models_put_back_in_service_after_the_retrained_event_are_not_called_retrained(project):
    proj, victim, old_md5, result = _erased_with_models(project)
    paths = proj.paths
    new_md5 = result.certificate["claims"]["dataset"]["processed_md5_after"]
    retrain(paths, new_md5, "b" * 32)
    _mlflow_db(paths, [(2, new_md5)])
    runner = CliRunner()
    out = runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"])
    assert json.loads(out.output)["upgraded"] == [result.request_id]
    retrained = verify_certificate(result.certificate_path, root=paths.root)
    assert retrained.models["status"].startswith("retrained (signed"), retrained.models
    # The controller puts the old model, trained with the subject, back in service.
    write_training_lock(paths, old_md5, "a" * 32)
    _mlflow_db(paths, [(3, old_md5)])
    _says_in_use_again(paths, victim, result, runner)


def test_a_retrained_event_appended_without_retraining_is_not_believed(project):
    proj, victim, _, result = _erased_with_models(project)
    core = PrivacyCore(proj.paths)
    core.ledger.append(
        "erasure.models_retrained",
        victim,
        {"request_id": result.request_id, "stale_models": 1, "current_models": []},
    )
    _says_in_use_again(proj.paths, victim, result, CliRunner())


def test_pins_given_without_offline_are_checked_not_dropped(project, tmp_path, monkeypatch):
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert, pub = offline_copy(proj, result, tmp_path)
    doc = json.loads(cert.read_text())
    stranger = Witness.create(tmp_path / "stranger", name="witness.example.org/w1").verifier.vkey
    wrong = ["--witness-key", stranger, "--origin", "example.org/not-the-log"]
    runner = CliRunner()
    # On site, in the controller's checkout: a witness that never cosigned, a wrong log name.
    on_site = runner.invoke(
        app, ["privacy", "verify-certificate", str(result.certificate_path), *wrong]
    )
    assert on_site.exit_code == 1 and "certificate INVALID" in on_site.output, on_site.output
    assert "FAIL witness cosignatures" in on_site.output
    assert "FAIL log origin" in on_site.output
    # The right pins pass there.
    right = ["--witness-key", witness_vkey(), "--origin", doc["proof"]["log"]["origin"]]
    good = runner.invoke(
        app, ["privacy", "verify-certificate", str(result.certificate_path), *right]
    )
    assert good.exit_code == 0 and "ok   witness cosignatures" in good.output, good.output
    # Without pins, one of the checkout's witnesses (configured or on its ledger's record) must
    # have cosigned; none of them (a checkout that never knew the certificate's witnesses)
    # leaves the certificate's own list: consistent only.
    unpinned = runner.invoke(app, ["privacy", "verify-certificate", str(result.certificate_path)])
    assert unpinned.exit_code == 0 and "ok   witness cosignatures" in unpinned.output
    with monkeypatch.context() as m:
        m.setattr(certify, "checkout_witnesses", lambda paths: OwnWitnesses(vkeys=(stranger,)))
        args = ["privacy", "verify-certificate", str(result.certificate_path)]
        replaced = runner.invoke(app, args)
    assert replaced.exit_code == EXIT_CONSISTENT_ONLY, replaced.output
    assert "none of the witnesses this checkout is configured with" in replaced.output
    # A certificate stripped of its witnessed proof bundle and signed again fails on site.
    doc.pop("proof")
    stripped = proj.paths.root / "stripped.json"
    stripped.write_text(render(sign(doc, proj.paths)))
    for pins in ([], right):
        out = runner.invoke(app, ["privacy", "verify-certificate", str(stripped), *pins])
        assert out.exit_code == 1 and "no tlog-proof" in out.output, out.output
    # A regulator who forgot --offline, in an empty folder: nothing was scanned, nothing is
    # said to be clean, and the pins are checked all the same.
    empty = tmp_path / "regulator"
    empty.mkdir()
    monkeypatch.setenv("VISAGE_PROJECT", str(empty))
    away = runner.invoke(
        app, ["privacy", "verify-certificate", str(cert), "--public-key", str(pub), *wrong]
    )
    assert away.exit_code == 1 and "certificate INVALID" in away.output, away.output
    assert "ok   no erased content remains" not in away.output
    assert "FAIL no erased content remains" in away.output and "--offline" in away.output
    assert "FAIL witness cosignatures" in away.output


def test_a_certificate_checked_with_its_own_keys_is_not_called_valid(project, tmp_path):
    # Anyone can make a project, a key and a witness named like a public one.
    Witness.create(default_witness_dir(), name="witness.example.org/w1")
    forger = make_project(project, n_subjects=3)
    result = Erasure(forger.paths).erase(forger.pids[0])
    cert, pub = offline_copy(forger, result, tmp_path)
    doc = json.loads(cert.read_text())
    script = verifier_script(tmp_path)
    cli, py = run_cli(cert), run_verify_py(script, cert)
    for out, code in ((cli.output, cli.exit_code), (py.stdout, py.returncode)):
        assert code == EXIT_CONSISTENT_ONLY, out
        verdicts = [line for line in out.splitlines() if line.startswith("certificate ")]
        assert len(verdicts) == 1 and verdicts[0].startswith(f"certificate {CONSISTENT_ONLY}"), out
    as_json = json.loads(run_cli(cert, "--json").output)
    assert as_json["verdict"] == CONSISTENT_ONLY and as_json["unpinned"]
    # One pin missing is still not authenticated (here the log name).
    partial = ["--public-key", str(pub), "--witness-key", witness_vkey()]
    cli, py = run_cli(cert, *partial), run_verify_py(script, cert, *partial)
    assert (cli.exit_code, py.returncode) == (EXIT_CONSISTENT_ONLY,) * 2, cli.output + py.stdout
    # Everything pinned: VALID, exit 0, in both.
    cli = run_cli(cert, *pinned_cli_args(doc, pub, witness_vkey()))
    py = run_verify_py(script, cert, *partial, "--origin", doc["proof"]["log"]["origin"])
    assert (cli.exit_code, py.returncode) == (0, 0), cli.output + py.stdout
    assert "\ncertificate VALID\n" in py.stdout, py.stdout
    assert "certificate VALID" in cli.output and CONSISTENT_ONLY not in cli.output


def test_a_listed_witness_that_never_cosigned_is_named_by_both_verifiers(project, tmp_path):
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert, pub = offline_copy(proj, result, tmp_path)
    doc = json.loads(cert.read_text())
    # The controller lists a witness of a name it chose, with a key it made: it never cosigned.
    fake = cosigner(
        Witness.create(tmp_path / "fake", name="witness.edpb.europa.eu/w1").verifier.vkey
    )
    doc["proof"]["witnesses"].append(
        {"name": fake.name, "vkey": fake.vkey, "fingerprint": fake.fingerprint}
    )
    cert.write_text(render(sign(doc, proj.paths)))
    vkey = witness_vkey()
    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    pins = ["--public-key", str(pub), "--witness-key", vkey, "--origin"]
    py = run_verify_py(verifier_script(tmp_path), cert, *pins, doc["proof"]["log"]["origin"])
    for out in (cli.output, py.stdout):
        assert f"listed but not cosigned: {fake.name}" in out, out
    assert "certificate VALID (see the notes)" in cli.output
    # Unpinned, both give one verdict: what the witnesses that cosigned show, without keys of
    # the reader's, is consistency only; the listed name is a claim, said in a note.
    pins = ["--public-key", str(pub), "--origin", doc["proof"]["log"]["origin"]]
    cli = run_cli(cert, *pins)
    py = run_verify_py(verifier_script(tmp_path), cert, *pins)
    assert (cli.exit_code, py.returncode) == (EXIT_CONSISTENT_ONLY,) * 2, cli.output + py.stdout
    for out in (cli.output, py.stdout):
        assert f"listed but not cosigned: {fake.name}" in out, out
        assert f"certificate {CONSISTENT_ONLY}" in out, out
    # The real certificate names no such witness.
    real = run_cli(result.certificate_path, *pinned_cli_args(doc, pub, vkey))
    assert "listed but not cosigned" not in real.output, real.output


def test_what_the_claims_concede_is_said_beside_the_verdict(project, tmp_path):
    proj, _, _, result = _erased_with_models(project)
    doc = result.certificate
    assert {m["status"] for m in doc["claims"]["models"]} == {"stale"}
    cert, pub = offline_copy(proj, result, tmp_path)
    vkey = witness_vkey()
    pins = pinned_cli_args(doc, pub, vkey)
    as_json = json.loads(run_cli(cert, *pins, "--json").output)
    n = len(doc["claims"]["models"])
    assert as_json["ok"] and as_json["models"]["certified_stale"] == n, as_json
    assert any("stale" in c for c in as_json["conceded"]), as_json["conceded"]
    cli = run_cli(cert, *pins)
    py = run_verify_py(verifier_script(tmp_path), cert, *pins)
    for out in (cli.output, py.stdout):
        after = out[out.index("certificate VALID") :]
        assert f"conceded: {n} model(s) trained on data that held the subject" in after, out
    # Every concession a certificate can make, as both verifiers word it.
    claims = {
        "models": [{"status": "stale"}, {"status": "stale"}],
        "lineage_notes": ["dvc.lock@abc: a manifest is not in any DVC store"],
        "store_notes": ["the database server may keep WAL segments for a while"],
        "dvc": {"kept_plaintext": 2},
        "retained_shared_content": [{"md5": "a" * 32, "sha256": "b" * 64}],
    }
    said = conceded(claims)
    assert len(said) == 5 and said[0].startswith("2 model(s) trained"), said
    assert any("2 DVC object(s)" in c and "in clear" in c for c in said), said
    assert any("the database server may keep WAL" in c for c in said), said
    assert any(c.startswith("1 file(s) byte-identical") for c in said), said
    assert conceded({}) == [] and conceded({"models": "x", "dvc": 3}) == []
