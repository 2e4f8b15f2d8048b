"""A regulator who trusts nothing of ours (session 37): certificate dates bound to the ledger and
the witnesses' clocks, the fingerprints the certificate states checked against the keys that
verify, and certificates from before a key rotation verifiable with the published keys. Each test
failed while the attack it describes worked, in both verifiers (the CLI and docs/verify.md)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

from project_helpers import write_overrides
from regulator_helpers import (
    REPO_PARAMS,
    cosign_times,
    offline_copy,
    pinned_cli_args,
    run_cli,
    run_verify_py,
    verifier_script,
    witness_vkey,
)
from rights_fakes import make_project

from visage_ml.privacy import ledger as ledger_mod
from visage_ml.privacy.certificate import render, sign
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import Erasure


def test_backdated_certificate_dates_fail_both_verifiers(project, tmp_path):
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert, pub = offline_copy(proj, result, tmp_path)
    doc = json.loads(cert.read_text())
    real_time = doc["ledger"]["erasure_completed"]["time"]
    # The operator rewrites the dates (an erasure 70 days late made to look 3 days long).
    doc["received_at"] = "2026-01-05T09:00:00.000Z"
    doc["completed_at"] = "2026-01-08T09:00:00.000Z"
    cert.write_text(render(sign(doc, proj.paths)))
    vkey = witness_vkey()
    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    script = verifier_script(tmp_path)
    py = run_verify_py(script, cert, "--public-key", str(pub), "--witness-key", vkey)
    assert real_time != doc["completed_at"]
    # Expected of an offline proof: completed_at must be the witnessed entry's time.
    assert (cli.exit_code, py.returncode) == (1, 1), cli.output + py.stdout


def test_a_ledger_clock_set_back_shows_in_the_witness_time(project, tmp_path, monkeypatch):
    """The host clock set back 60 days for the ledger (an HTTP witness elsewhere keeps real
    time; here the directory witness stands in for it). The certificate carries the evidence
    (the witness's cosignature time) but neither verifier checks or prints it."""
    real_now = ledger_mod.utc_now

    def set_back() -> str:
        t = datetime.fromisoformat(real_now().replace("Z", "+00:00")).timestamp() - 60 * 86400
        return (
            datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )

    monkeypatch.setattr(ledger_mod, "utc_now", set_back)
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert, pub = offline_copy(proj, result, tmp_path)
    doc = json.loads(cert.read_text())
    entry_time = datetime.fromisoformat(
        doc["ledger"]["erasure_completed"]["time"].replace("Z", "+00:00")
    )

    (stamp,) = cosign_times(doc)
    gap_days = (stamp - entry_time.timestamp()) / 86400
    assert gap_days > 59  # the witness cosigned ~60 days after the entry's own time
    vkey = witness_vkey()
    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    py = run_verify_py(
        verifier_script(tmp_path), cert, "--public-key", str(pub), "--witness-key", vkey
    )
    witnessed_day = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d")
    # Expected: a completion stamped weeks before any witness saw it is flagged, or at the
    # very least the witnessed time is shown next to VALID.
    flagged_cli = cli.exit_code == 1 or witnessed_day in cli.output
    flagged_py = py.returncode == 1 or witnessed_day in py.stdout
    assert flagged_cli and flagged_py, cli.output + py.stdout


def test_a_forged_certificate_carrying_the_genuine_fingerprint_fails(
    project, tmp_path, monkeypatch
):
    genuine = make_project(project, n_subjects=3)
    real = Erasure(genuine.paths).erase(genuine.pids[0])
    real_doc = json.loads(real.certificate_path.read_text())
    published_fp = real_doc["proof"]["log"]["fingerprint"]  # what the controller publishes
    # The forger: its own project, ledger key and witness, nothing of the controller's.
    forger_root = tmp_path / "forger"
    forger_root.mkdir()
    shutil.copy(REPO_PARAMS, forger_root / "params.yaml")
    # ... naming its log exactly as the controller's (a string anyone can choose).
    write_overrides(
        forger_root / "params.yaml", {"privacy.witness.origin": real_doc["proof"]["log"]["origin"]}
    )
    (tmp_path / "forger-witness").mkdir()
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(tmp_path / "forger-witness"))
    monkeypatch.setenv("VISAGE_PROJECT", str(forger_root))
    forger = make_project(forger_root, n_subjects=3)
    fake = Erasure(forger.paths).erase(forger.pids[0])
    doc = json.loads(fake.certificate_path.read_text())
    doc["proof"]["log"]["fingerprint"] = published_fp
    doc["proof"]["key_history"] = [published_fp]
    cert = tmp_path / "forged.json"
    cert.write_text(render(sign(doc, forger.paths)))
    shipped_pub = tmp_path / "ledger.pub"  # "the controller's key", shipped with the certificate
    shutil.copy(forger.paths.ledger_public_key, shipped_pub)
    script = verifier_script(tmp_path)
    alone = run_verify_py(script, cert)
    with_shipped = run_verify_py(script, cert, "--public-key", str(shipped_pub))
    # The certificate contradicts itself (its fingerprint is not its key's): expected INVALID.
    assert doc["proof"]["log"]["origin"] == real_doc["proof"]["log"]["origin"]
    assert (
        doc["pid"] == real_doc["pid"]
    )  # same seed, same pseudonym: the forgery names the real subject
    assert alone.returncode == 1, alone.stdout
    # verify.py prints the fingerprint of the key it verified with.
    assert with_shipped.returncode == 1 or published_fp[:16] in with_shipped.stdout, (
        with_shipped.stdout
    )


def test_altered_fingerprint_members_fail_with_every_pin(project, tmp_path):
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert, pub = offline_copy(proj, result, tmp_path)
    doc = json.loads(cert.read_text())
    doc["proof"]["log"]["fingerprint"] = "00" * 32
    doc["proof"]["key_history"] = ["11" * 32, "00" * 32]
    doc["proof"]["witnesses"][0]["fingerprint"] = "22" * 32
    cert.write_text(render(sign(doc, proj.paths)))
    vkey = witness_vkey()
    cli = run_cli(cert, *pinned_cli_args(doc, pub, vkey))
    py = run_verify_py(
        verifier_script(tmp_path), cert, "--public-key", str(pub), "--witness-key", vkey
    )
    assert (cli.exit_code, py.returncode) == (1, 1), cli.output + py.stdout


def test_a_certificate_from_before_a_key_rotation_verifies_with_the_published_keys(
    project, tmp_path
):
    """After `rotate-ledger-key`, privacy/ledger.pub held the new key only and no file kept the
    old one: every earlier certificate failed with the published key. privacy/ledger-keys.pem
    holds every key; both verifiers take it and use the certificate's own."""
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert = tmp_path / "cert.json"
    cert.write_bytes(result.certificate_path.read_bytes())
    _, problems = PrivacyCore(proj.paths).rotate_ledger_key()
    assert problems == []
    doc = json.loads(cert.read_text())
    vkey = witness_vkey()
    keys = proj.paths.ledger_public_key.with_name("ledger-keys.pem")
    assert keys.read_bytes().count(b"BEGIN PUBLIC KEY") == 2
    cli = run_cli(cert, *pinned_cli_args(doc, keys, vkey))
    origin = doc["proof"]["log"]["origin"]
    py = run_verify_py(
        verifier_script(tmp_path),
        cert,
        *("--public-key", str(keys), "--witness-key", vkey, "--origin", origin),
    )
    assert (cli.exit_code, py.returncode) == (0, 0), cli.output + py.stdout
    # The current key alone says what to ask for.
    only_new = run_cli(cert, *pinned_cli_args(doc, proj.paths.ledger_public_key, vkey))
    assert only_new.exit_code == 1 and "ledger-keys.pem" in only_new.output


def test_the_stand_alone_verifier_says_what_the_cli_says_of_a_directory_witness_and_old_keys(
    project, tmp_path
):
    """README: both verifiers say a pinned witness's name proves nothing of who runs it, and
    name the default name a directory witness has; verify.py said nothing of it, nor which
    file to ask for when the certificate's key was rotated."""
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    cert, pub = offline_copy(proj, result, tmp_path)
    vkey = witness_vkey()
    assert vkey.startswith("visage-witness.local/")
    script = verifier_script(tmp_path)
    origin = json.loads(cert.read_text())["proof"]["log"]["origin"]
    pins = ("--public-key", str(pub), "--witness-key", vkey, "--origin", origin)
    py = run_verify_py(script, cert, *pins)
    assert py.returncode == 0, py.stdout
    assert "proves nothing of who runs it" in py.stdout and "directory witness" in py.stdout
    _, problems = PrivacyCore(proj.paths).rotate_ledger_key()
    assert problems == []
    only_new = run_verify_py(
        script, cert, "--public-key", str(proj.paths.ledger_public_key), "--witness-key", vkey
    )
    assert only_new.returncode == 1 and "ledger-keys.pem" in only_new.stdout
