"""Erasure certificates: signature, canonical bytes, inclusion proof, hash scan, model lineage."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rights_fakes import erase_first, make_project, retrain, write_training_lock
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.io import canonical_json, md5_file
from visage_ml.privacy.certificate import claims_digest, render, sign, unsigned, verify_offline
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.keys import key_id
from visage_ml.privacy.tombstones import Tombstones, set_mac
from visage_ml.privacy.witness import Witness, default_witness_dir
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.erasure import raw as raw_store
from visage_ml.rights.erasure import tombstone as tombstone_store
from visage_ml.rights.lineage import NO_MODEL, subject_lineage


@pytest.fixture
def erased(project):
    return erase_first(project)


def failed(report) -> set[str]:
    return {c.name for c in report.checks if not c.ok}


def test_valid_certificate_verifies_with_the_public_key_and_the_checkout(erased):
    proj, victim, _, result = erased
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok and report.pid == victim
    names = {c.name for c in report.checks}
    assert {"signature", "inclusion proof", "tree head", "no erased content remains"} <= names
    assert report.files_hashed > 10 and report.findings == []
    doc = json.loads(result.certificate_path.read_text())
    assert doc["claims"]["dataset"]["raw_md5_before"] is None  # not a DVC project here
    assert doc["ledger"]["inclusion"]["leaf_index"] == doc["ledger"]["erasure_completed"]["seq"]


def test_altering_any_single_byte_fails_verification(erased):
    proj, _, _, result = erased
    original = result.certificate_path.read_bytes()
    tampered = proj.paths.root / "tampered.json"
    positions = sorted(
        {*range(0, len(original), max(1, len(original) // 60)), original.index(b"\n  "), 1}
    )
    for pos in positions:
        data = bytearray(original)
        data[pos] = data[pos] ^ 0x01 if data[pos] not in (0x20, 0x0A) else 0x09
        tampered.write_bytes(bytes(data))
        report = verify_certificate(tampered, root=proj.paths.root, scan=False, models=False)
        assert not report.ok, f"a change at byte {pos} went unnoticed"


def test_another_key_or_a_forged_resigned_certificate_fails(erased, tmp_path):
    proj, _, _, result = erased
    other = Ed25519PrivateKey.generate()
    pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "other.pub").write_bytes(pem)
    report = verify_certificate(
        result.certificate_path, root=proj.paths.root, public_key=tmp_path / "other.pub"
    )
    assert {"signature", "erasure.completed entry", "tree head"} <= failed(report)
    # A forger with the real key's output but edited claims cannot re-sign, and even a
    # re-signed document (simulated with the project key) no longer matches the ledger entry.
    doc = json.loads(result.certificate_path.read_text())
    doc["claims"]["artefacts"] = doc["claims"]["artefacts"][1:]
    forged = tmp_path / "forged.json"
    forged.write_text(render(sign(doc, proj.paths)))
    report = verify_certificate(forged, root=proj.paths.root, scan=False)
    assert failed(report) == {"claims committed in the ledger"}
    doc = json.loads(result.certificate_path.read_text())
    doc["ledger"]["inclusion"]["path"][0] = "00" * 32
    forged.write_text(render(sign(doc, proj.paths)))
    report = verify_certificate(forged, root=proj.paths.root, scan=False)
    assert failed(report) == {"inclusion proof"}


def test_restored_content_or_a_manifest_naming_the_subject_is_found(erased):
    proj, victim, removed, result = erased
    restored = proj.paths.root / "data" / "backup" / "old.png"
    restored.parent.mkdir(parents=True)
    restored.write_bytes(next(iter(removed.values())))
    manifest = proj.paths.root / "data" / "stale.dir"
    manifest.write_text(json.dumps([{"md5": "0" * 32, "relpath": f"{victim}/i000000000000.png"}]))
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert failed(report) == {"no erased content remains"}
    assert {f["path"] for f in report.findings} == {str(restored), str(manifest)}


def test_the_records_keep_no_hash_a_photograph_of_the_subject_could_be_checked_against(erased):
    # The attack: whoever reads the certificate or the ledger (both kept for good) holds a
    # photograph that encodes to the erased PNG's bytes and looks for its SHA-256 there.
    proj, _, removed, result = erased
    records = result.certificate_path.read_bytes() + proj.paths.ledger.read_bytes()
    sought = {hashlib.sha256(png).hexdigest() for png in removed.values()}
    assert sought and not [h for h in sought if h.encode() in records]
    # The controller's scan still knows a plaintext copy (keyed), and says when it cannot look.
    copy = proj.paths.root / "data" / "backup" / "copy.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(next(iter(removed.values())))
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert [f["path"] for f in report.findings] == [str(copy)]
    copy.unlink()
    proj.paths.tombstone_key.unlink()
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert failed(report) == {"no erased content remains"} and not report.findings
    assert "tombstone key is missing" in next(c.detail for c in report.checks if not c.ok)


def test_without_the_subjects_tombstone_the_scan_says_it_could_not_look_for_plaintext(erased):
    # The certificate names no PNG: the tombstones do. A checkout whose tombstones lack the
    # subject's (an older file put back) cannot show that no plaintext copy is left.
    proj, victim, _, result = erased
    tombstones = proj.paths.tombstones
    key = proj.paths.tombstone_key.read_bytes()
    gone = f'"{Tombstones.mac_with(key, "pid", victim)}"'
    lines = tombstones.read_text().splitlines(True)
    kept = [ln for ln in lines if ln.strip() != gone]
    # A whole set without it, under the key (as an older file restored would be) ...
    macs = sorted(json.loads(ln) for ln in kept[1:])
    header = {"v": 2, "n": len(macs), "mac": set_mac(key, macs)}
    tombstones.write_text("\n".join([json.dumps(header), *(json.dumps(m) for m in macs)]) + "\n")
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert failed(report) == {"no erased content remains"}
    detail = next(c.detail for c in report.checks if not c.ok)
    assert "does not hold the subject's tombstone" in detail
    # ... and the same line cut out by hand: the file is damaged, and the scan says so.
    tombstones.write_text("".join(kept))
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert failed(report) == {"no erased content remains"}
    detail = next(c.detail for c in report.checks if not c.ok)
    assert "damaged or not of this tombstone key" in detail


def _earlier_raw_plan(m: pytest.MonkeyPatch, images: dict[str, bytes], name: str) -> None:
    """The raw step as versions before this one planned it: each sealed image named its PNG in
    the plan (``plain_mac``, keyed; older still ``plain_sha256``, in clear), and the tombstones
    held no plaintext hashes."""
    current_raw, current_tombstone = raw_store.plan, tombstone_store.plan

    def plan(ctx, pid):
        with pytest.MonkeyPatch.context() as inner:
            inner.setattr(ctx.core.tombstones, "add", lambda *a, **k: False)
            found = current_raw(ctx, pid)
        for a in found.artefacts:
            image_id = Path(a["path"]).name.split(".")[0]
            if a["path"].endswith(".sealed") and image_id in images:
                sha = hashlib.sha256(images[image_id]).hexdigest()
                plain = Tombstones.open(ctx.paths).mac("plain_sha256", sha)
                a[name] = plain if name == "plain_mac" else sha
        return found

    def tombstone_plan(ctx, pid):
        found = current_tombstone(ctx, pid)
        found.state.plains.clear()
        return found

    m.setattr(raw_store, "plan", plan)
    m.setattr(tombstone_store, "plan", tombstone_plan)


@pytest.mark.parametrize("name", ["plain_mac", "plain_sha256"])
def test_a_certificate_naming_the_png_as_earlier_versions_did_still_verifies_and_scans(
    project, monkeypatch, tmp_path, name
):
    proj = make_project(project, n_subjects=3)
    victim = proj.pids[0]
    images = dict(proj.images[victim])
    with monkeypatch.context() as m:
        _earlier_raw_plan(m, images, name)
        result = Erasure(proj.paths).erase(victim)
    doc = json.loads(result.certificate_path.read_text())
    assert [a for a in doc["claims"]["artefacts"] if a.get(name)]
    assert not any(
        Tombstones.open(proj.paths).has_plain(hashlib.sha256(png).hexdigest())
        for png in images.values()
    )
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]
    # Its scan still finds a plaintext copy, by the names the certificate holds.
    copy = proj.paths.root / "data" / "backup" / "copy.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(next(iter(images.values())))
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert [f["path"] for f in report.findings] == [str(copy)]
    out = CliRunner().invoke(app, ["privacy", "verify-certificate", str(result.certificate_path)])
    assert out.exit_code == 1, out.output
    copy.unlink()
    out = CliRunner().invoke(app, ["privacy", "verify-certificate", str(result.certificate_path)])
    assert out.exit_code == 0 and "certificate VALID" in out.output, out.output
    # The stand-alone verifier of docs/verify.md knows no artefact member: it accepts it too.
    script = tmp_path / "verify.py"
    script.write_text(_verifier_code())
    cert, pub = _offline_copy(proj, result, tmp_path)
    args = [str(script), str(cert), "--public-key", str(pub), "--witness-key", _witness_vkey()]
    args += ["--origin", doc["proof"]["log"]["origin"]]
    ran = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0 and "certificate VALID" in ran.stdout, ran.stdout + ran.stderr


def test_certificate_and_key_alone_verify_the_proof_without_the_checkout(erased, tmp_path):
    proj, _, _, result = erased
    shutil.copy(result.certificate_path, tmp_path / "cert.json")
    shutil.copy(proj.paths.ledger_public_key, tmp_path / "ledger.pub")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    report = verify_certificate(
        tmp_path / "cert.json",
        root=empty,
        public_key=tmp_path / "ledger.pub",
        models=False,
        scan=False,
    )
    assert report.ok
    # With the scan asked for, nothing there to hash is not "no erased content remains".
    scanned = verify_certificate(
        tmp_path / "cert.json", root=empty, public_key=tmp_path / "ledger.pub", models=False
    )
    assert failed(scanned) == {"no erased content remains"}
    # A checkout whose ledger disagrees with the certificate is reported.
    ledger = proj.paths.ledger
    lines = ledger.read_bytes().split(b"\n")
    seq = json.loads(result.certificate_path.read_text())["ledger"]["erasure_completed"]["seq"]
    lines[seq] = lines[seq].replace(b'"erasure.completed"', b'"erasure.completed "')
    ledger.write_bytes(b"\n".join(lines))
    report = verify_certificate(result.certificate_path, root=proj.paths.root, scan=False)
    assert failed(report) == {"ledger in checkout"}


def test_cli_verify_certificate_exit_codes(erased):
    proj, _, _, result = erased
    runner = CliRunner()
    ok = runner.invoke(app, ["privacy", "verify-certificate", str(result.certificate_path)])
    assert ok.exit_code == 0 and "certificate VALID" in ok.output
    data = bytearray(result.certificate_path.read_bytes())
    data[-5] ^= 1
    bad = proj.paths.root / "bad.json"
    bad.write_bytes(bytes(data))
    out = runner.invoke(app, ["privacy", "verify-certificate", str(bad), "--json", "--no-scan"])
    assert out.exit_code == 1 and json.loads(out.output)["ok"] is False


def test_offline_verification_of_a_missing_or_empty_file_exits_1(tmp_path):
    pub = tmp_path / "ledger.pub"
    pub.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "empty.json").write_text("")
    runner = CliRunner()
    for name in ("missing.json", "empty.json"):
        for keys in ([], ["--public-key", str(pub)]):
            args = ["privacy", "verify-certificate", "--offline", str(tmp_path / name), *keys]
            out = runner.invoke(app, args)
            assert out.exit_code == 1 and "certificate INVALID" in out.output, (name, keys)


def _mlflow_db(paths, versions):
    """Versions of a registered model in the project's MLflow store, tagged with a data md5."""
    # Deferred: MLflow is heavy and only this test writes to a tracking store.
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    paths.mlruns.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)
    with contextlib.suppress(MlflowException):  # registered by an earlier call
        client.create_registered_model("visage-embedder")
    for version, md5 in versions:
        mv = client.create_model_version("visage-embedder", str(paths.models / "embedder.onnx"))
        assert int(mv.version) == version
        client.set_model_version_tag("visage-embedder", mv.version, "visage.data_md5", md5)


def test_models_trained_with_the_subject_are_stale_until_retrained_then_upgraded(project):
    proj = make_project(project, n_subjects=4)
    paths, victim = proj.paths, proj.pids[1]
    data_md5 = md5_file(paths.processed / "faces.sealed")
    write_training_lock(paths, data_md5, "a" * 32)
    _mlflow_db(paths, [(1, data_md5)])
    lin = subject_lineage(paths, victim)
    assert {(m.kind, m.model, m.version) for m in lin.models} == {
        ("dvc", "train_embedder:models/embedder.pt", "a" * 32),
        ("mlflow_model", "visage-embedder", "1"),
    }
    assert subject_lineage(paths, victim).processed_md5s == {data_md5}
    result = Erasure(paths).erase(victim)
    claims = result.certificate["claims"]
    assert {m["status"] for m in claims["models"]} == {"stale"}
    report = verify_certificate(result.certificate_path, root=paths.root)
    assert report.ok and report.models["status"].startswith("stale")
    runner = CliRunner()
    shown = json.loads(runner.invoke(app, ["privacy", "lineage", victim, "--json"]).output)
    assert {m["status"] for m in shown["lineage"]["models"]} == {"stale"}
    # Nothing retrained yet: --refresh records nothing.
    refresh = runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"])
    assert json.loads(refresh.output)["upgraded"] == []
    # `dvc repro` retrains on the purged data: new lock, new MLflow version.
    new_md5 = claims["dataset"]["processed_md5_after"]
    assert new_md5 == md5_file(paths.processed / "faces.sealed") != data_md5
    retrain(paths, new_md5, "b" * 32)
    _mlflow_db(paths, [(2, new_md5)])
    refresh = runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"])
    assert json.loads(refresh.output)["upgraded"] == [result.request_id]
    (event,) = [
        e for e in PrivacyCore(paths).ledger.entries() if e.type == "erasure.models_retrained"
    ]
    assert event.payload["request_id"] == result.request_id
    assert canonical_json(event.payload).count(b"visage-embedder") == 1
    report = verify_certificate(result.certificate_path, root=paths.root)
    assert report.ok and report.models["status"].startswith("retrained (signed")
    assert report.models["current_models_clean"] is True
    shown = json.loads(runner.invoke(app, ["privacy", "lineage", victim, "--json"]).output)
    assert {m["status"] for m in shown["lineage"]["models"]} == {"retrained"}
    assert PrivacyCore(paths).ledger.verify().ok


def test_lineage_its_refresh_and_the_verifier_agree_on_whether_models_were_retrained(
    project, monkeypatch
):
    """`lineage PID` judged the models in use against the data versions the certificate's
    dataset lists only; `lineage --refresh` and verify-certificate also count the versions its
    models were trained on. A certificate whose list is shorter read "retrained (run --refresh
    to record it)" where --refresh then declined and the verifier said stale."""
    proj = make_project(project, n_subjects=4)
    paths, victim = proj.paths, proj.pids[1]
    trained_on = md5_file(paths.processed / "faces.sealed")
    write_training_lock(paths, trained_on, "a" * 32)
    claims_of = Erasure.claims

    def shorter(self, st):
        claims = claims_of(self, st)
        claims["dataset"]["processed_md5s_with_subject"] = []
        return claims

    # Made so by the erasure (signed and committed in its ledger entry), not edited afterwards:
    # an edited certificate is not judged at all.
    monkeypatch.setattr(Erasure, "claims", shorter)
    result = Erasure(paths).erase(victim)
    doc = json.loads(result.certificate_path.read_text())
    assert {m["data_md5"] for m in doc["claims"]["models"]} == {trained_on}
    assert doc["claims"]["dataset"]["processed_md5s_with_subject"] == []
    runner = CliRunner()

    def shown() -> tuple[set[str], bool]:
        out = json.loads(runner.invoke(app, ["privacy", "lineage", victim, "--json"]).output)
        lin = out["lineage"]
        return {m["status"] for m in lin["models"]}, lin["current_models_clean"]

    def refreshed() -> list[str]:
        out = runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"]).output
        return json.loads(out)["upgraded"]

    def verifier_clean() -> bool:
        report = verify_certificate(result.certificate_path, root=paths.root, scan=False)
        return report.models["current_models_clean"]

    # Not retrained: the embedder in use was trained on the data that held the subject.
    assert shown() == ({"stale"}, False)
    assert verifier_clean() is False and refreshed() == []
    # Retrained on the purged data: all three say so, and --refresh records it.
    retrain(paths, doc["claims"]["dataset"]["processed_md5_after"], "b" * 32)
    assert shown() == ({"retrained (run --refresh to record it)"}, True)
    assert verifier_clean() is True and refreshed() == [result.request_id]
    assert shown() == ({"retrained"}, True)


def test_a_retraining_recorded_after_a_key_rotation_is_read_by_the_verifier(project):
    """The ledger key rotates between the erasure and `lineage --refresh`: the refresh is signed
    by the new key. The page said "retrained" while verify-certificate said "not yet recorded:
    run lineage --refresh", which did nothing more."""
    proj = make_project(project, n_subjects=4)
    paths, victim = proj.paths, proj.pids[1]
    write_training_lock(paths, md5_file(paths.processed / "faces.sealed"), "a" * 32)
    result = Erasure(paths).erase(victim)
    _, problems = PrivacyCore(paths).rotate_ledger_key()
    assert not problems
    new_md5 = result.certificate["claims"]["dataset"]["processed_md5_after"]
    retrain(paths, new_md5, "b" * 32)
    runner = CliRunner()
    refresh = runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"])
    assert json.loads(refresh.output)["upgraded"] == [result.request_id]
    report = verify_certificate(result.certificate_path, root=paths.root)
    assert report.models["status"].startswith("retrained (signed"), report.models["status"]


def _signed_with(doc: dict, key: Ed25519PrivateKey) -> dict:
    """``doc`` signed as :func:`sign` signs, with ``key``."""
    body = unsigned(doc)
    value = base64.b64encode(key.sign(canonical_json(body))).decode("ascii")
    signature = {"alg": "Ed25519", "key_id": key_id(key.public_key()), "value": value}
    return {**body, "signature": signature}


@pytest.mark.parametrize("forgery", ["edited", "re-signed, another key", "re-signed, ledger key"])
def test_lineage_refresh_signs_nothing_on_a_certificate_edited_on_disk(project, forgery):
    """The attack: whoever can write privacy/certificates/ edits an erasure certificate's claims
    so that the embedder in use, trained on data that held the subject, no longer counts; then
    `lineage --refresh` signed erasure.models_retrained ("retrained without the subject") on the
    file's word, signature unchecked, and `lineage PID` said "retrained (run --refresh...)"."""
    proj = make_project(project, n_subjects=4)
    paths, victim = proj.paths, proj.pids[1]
    write_training_lock(paths, md5_file(paths.processed / "faces.sealed"), "a" * 32)
    result = Erasure(paths).erase(victim)
    cert = result.certificate_path
    original = cert.read_bytes()
    doc = json.loads(original)
    doc["claims"]["dataset"]["processed_md5s_with_subject"] = []
    for model in doc["claims"]["models"]:
        model["data_md5"] = "0" * 32
    if forgery == "re-signed, another key":
        doc["claims_sha256"] = claims_digest(doc["claims"])
        doc = _signed_with(doc, Ed25519PrivateKey.generate())
    elif forgery == "re-signed, ledger key":  # the key file read: the ledger entry differs
        doc["claims_sha256"] = claims_digest(doc["claims"])
        doc = sign(doc, paths)
    cert.write_text(render(doc))
    ledger = paths.ledger.read_bytes()
    runner = CliRunner()
    refresh = runner.invoke(app, ["privacy", "lineage", "--refresh"])
    assert refresh.exit_code == 1, refresh.output
    said = " ".join(refresh.output.split())
    assert "failed verification" in said
    assert f"run `visage privacy verify-certificate {cert}`" in said
    assert "upgraded" not in said
    assert paths.ledger.read_bytes() == ledger  # nothing signed, not even a tree head
    refresh = runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"])
    assert refresh.exit_code == 1
    out = json.loads(refresh.stdout)
    assert out["upgraded"] == [] and [r["request_id"] for r in out["refused"]] == [
        result.request_id
    ]
    # `lineage PID` says the certificate failed verification, not a verdict on the models.
    shown = runner.invoke(app, ["privacy", "lineage", victim])
    assert shown.exit_code == 1
    said = " ".join(shown.output.split())
    assert "failed verification" in said and "retrained" not in said
    assert NO_MODEL not in said
    lin = json.loads(runner.invoke(app, ["privacy", "lineage", victim, "--json"]).stdout)
    assert lin["lineage"]["certificate_verified"] is False
    assert "models" not in lin["lineage"] and "current_models_clean" not in lin["lineage"]
    # The certificate the ledger signed, put back: judged again (the models are still stale).
    cert.write_bytes(original)
    assert json.loads(runner.invoke(app, ["privacy", "lineage", "--refresh", "--json"]).stdout) == {
        "upgraded": [],
        "refused": [],
    }
    shown = json.loads(runner.invoke(app, ["privacy", "lineage", victim, "--json"]).stdout)
    assert {m["status"] for m in shown["lineage"]["models"]} == {"stale"}
    assert paths.ledger.read_bytes() == ledger
    # Retrained for real on the purged data: recorded.
    retrain(paths, doc["claims"]["dataset"]["processed_md5_after"], "b" * 32)
    refresh = runner.invoke(app, ["privacy", "lineage", "--refresh"])
    assert refresh.exit_code == 0 and result.request_id in refresh.output
    shown = json.loads(runner.invoke(app, ["privacy", "lineage", victim, "--json"]).stdout)
    assert {m["status"] for m in shown["lineage"]["models"]} == {"retrained"}


# ---------------------------------------------------------------------------------------------
# The offline proof bundle (witnessed checkpoint) and the stand-alone verifier of docs/verify.md
# ---------------------------------------------------------------------------------------------


def _witness_vkey() -> str:
    return Witness(default_witness_dir()).verifier.vkey


def _offline_copy(proj, result, tmp_path):
    cert = tmp_path / "cert.json"
    shutil.copy(result.certificate_path, cert)
    pub = tmp_path / "ledger.pub"
    shutil.copy(proj.paths.ledger_public_key, pub)
    return cert, pub


def _other_base64(value: str) -> str:
    """The same 64 signature bytes in another base64 text: the spare bits of the last data
    character (before ``==``) set, which decoders ignore."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert value.endswith("==")
    return value[:-3] + alphabet[alphabet.index(value[-3]) ^ 1] + "=="


def test_the_unsigned_signature_member_cannot_change_and_a_malformed_one_fails_by_name(
    erased, tmp_path
):
    proj, _, _, result = erased
    cert, pub = _offline_copy(proj, result, tmp_path)
    vkey = _witness_vkey()
    original = json.loads(cert.read_text())

    def variant(change):
        doc = json.loads(json.dumps(original))
        change(doc)
        return doc

    variants = {
        # The signature cannot sign itself: its member is outside the signed bytes.
        "spare base64 bits": variant(
            lambda d: d["signature"].update(value=_other_base64(d["signature"]["value"]))
        ),
        "an added member": variant(lambda d: d["signature"].update(note="erasure of p-other")),
        # A hostile file is a failed check, not a traceback.
        "ledger not an object": variant(lambda d: d.update(ledger="x")),
        "payload not an object": variant(
            lambda d: d["ledger"]["erasure_completed"].update(payload=["x"])
        ),
    }
    for what, doc in variants.items():
        changed = tmp_path / "changed.json"
        changed.write_text(render(doc))
        report = verify_offline(changed, public_key=pub, witness_keys=[vkey])
        assert not report.ok, what


def test_the_certificate_carries_a_witnessed_tlog_proof_verified_offline(erased, tmp_path):
    proj, _, _, result = erased
    doc = json.loads(result.certificate_path.read_text())
    proof = doc["proof"]
    assert proof["tlog_proof"].startswith("c2sp.org/tlog-proof@v1\nextra ")
    assert proof["witnesses"] and proof["log"]["fingerprint"] == proof["key_history"][-1]
    cert, pub = _offline_copy(proj, result, tmp_path)
    vkey = _witness_vkey()
    report = verify_offline(cert, public_key=pub, witness_keys=[vkey])
    assert report.ok, [c for c in report.checks if not c.ok]
    names = {c.name for c in report.checks}
    assert {"checkpoint signature", "checkpoint inclusion", "witness cosignatures"} <= names
    # A witness the verifier trusts that did not cosign, or another controller key: refused.
    stranger = Witness.create(tmp_path / "stranger").verifier.vkey
    assert not verify_offline(cert, public_key=pub, witness_keys=[vkey, stranger]).ok
    other = tmp_path / "other.pub"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert not verify_offline(cert, public_key=other, witness_keys=[vkey]).ok
    # Without pinned keys it says that the keys came from the certificate itself.
    alone = verify_offline(cert)
    assert alone.ok and any("taken from the certificate" in n for n in alone.notes)
    unpinned = CliRunner().invoke(app, ["privacy", "verify-certificate", "--offline", str(cert)])
    assert unpinned.exit_code == 3, unpinned.output
    assert "certificate CONSISTENT ONLY, NOT AUTHENTICATED" in unpinned.output, unpinned.output
    runner = CliRunner()
    args = ["privacy", "verify-certificate", "--offline", str(cert), "--public-key", str(pub)]
    ok = runner.invoke(app, [*args, "--witness-key", vkey, "--origin", proof["log"]["origin"]])
    assert ok.exit_code == 0 and "certificate VALID" in ok.output, ok.output
    # VALID for which erasure: a certificate of another request or subject must be visible.
    assert doc["request_id"] in ok.output and doc["pid"] in ok.output
    assert runner.invoke(app, [*args, "--witness-key", stranger]).exit_code == 1
    # The log's name pinned: a checkpoint of a second log under the same key would fail.
    origin = [*args, "--witness-key", vkey, "--origin"]
    pinned = runner.invoke(app, [*origin, proof["log"]["origin"]])
    assert pinned.exit_code == 0 and "CONSISTENT ONLY" not in pinned.output, pinned.output
    assert runner.invoke(app, [*origin, "example.org/another-log"]).exit_code == 1
    # A valid certificate of another erasure fails a verifier who says which one it asked for.
    asked = [*args, "--witness-key", vkey, "--origin", proof["log"]["origin"]]
    asked += ["--request-id", doc["request_id"], "--subject"]
    assert runner.invoke(app, [*asked, doc["pid"]]).exit_code == 0
    other_subject = runner.invoke(app, [*asked, "p-someone-else"])
    assert other_subject.exit_code == 1 and "certificate INVALID" in other_subject.output
    other_request = [*args, "--witness-key", vkey, "--request-id", "r-another"]
    assert runner.invoke(app, other_request).exit_code == 1


def _verifier_code() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "verify.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_standalone_verifier_of_docs_accepts_a_real_certificate_and_rejects_a_changed_byte(
    erased, tmp_path
):
    proj, _, _, result = erased
    code = _verifier_code()
    # Short enough to read in one sitting (dates, fingerprints and the asked-for pins included).
    assert len(code.splitlines()) <= 260
    imported = set(re.findall(r"^(?:from|import) (\w+)", code, re.M))
    assert imported <= {"argparse", "base64", "datetime", "hashlib", "json", "sys", "cryptography"}
    script = tmp_path / "verify.py"
    script.write_text(code)
    cert, pub = _offline_copy(proj, result, tmp_path)
    vkey = _witness_vkey()
    origin = json.loads(cert.read_text())["proof"]["log"]["origin"]

    def run(path):
        args = [sys.executable, str(script), str(path), "--public-key", str(pub)]
        return subprocess.run(
            [*args, "--witness-key", vkey, "--origin", origin],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )

    good = run(cert)
    assert good.returncode == 0 and "certificate VALID" in good.stdout, good.stdout + good.stderr
    original = cert.read_bytes()
    doc = json.loads(original)
    assert f"request {doc['request_id']}, subject {doc['pid']}" in good.stdout
    targets = {
        "a claimed artefact hash": doc["claims"]["artefacts"][0]["sha256"][10:30],
        "the tlog proof": doc["proof"]["tlog_proof"].split("\n")[3][5:25],
        "the checkpoint root": doc["proof"]["tlog_proof"].split("\n\n")[1].split("\n")[2][3:20],
        "the certificate signature": doc["signature"]["value"][5:25],
        # alg and key_id sit outside the signed bytes: the verifier must pin them itself.
        "the signature's algorithm": '"alg": "Ed25519"',
        "the signature's key id": doc["signature"]["key_id"],
    }
    for what, needle in targets.items():
        pos = original.index(needle.encode()) + 3
        data = bytearray(original)
        data[pos] = ord("A") if data[pos] != ord("A") else ord("B")
        changed = tmp_path / "changed.json"
        changed.write_bytes(bytes(data))
        out = run(changed)
        assert out.returncode == 1 and "certificate INVALID" in out.stdout, (what, out.stdout)
    # Bytes that decode to the same text or the same signature are still other bytes.
    value = doc["signature"]["value"]
    for what, data in (
        ("spare base64 bits", original.replace(value.encode(), _other_base64(value).encode())),
        ("CRLF line ends", original.replace(b"\n", b"\r\n")),
    ):
        changed = tmp_path / "changed.json"
        changed.write_bytes(data)
        out = run(changed)
        assert out.returncode == 1 and "certificate INVALID" in out.stdout, (what, out.stdout)
    # A change that breaks the JSON or drops a member is a named failure, not a traceback.
    for what, data in (
        ("not JSON", b"x" + original[1:]),
        ("no tlog proof", original.replace(b'"tlog_proof"', b'"tlog_proog"')),
    ):
        changed = tmp_path / "changed.json"
        changed.write_bytes(data)
        out = run(changed)
        assert out.returncode == 1 and "FAIL  readable certificate" in out.stdout, (what, out)
        assert "certificate INVALID" in out.stdout and "Traceback" not in out.stderr, what


def test_a_certificate_made_before_a_ledger_key_rotation_still_verifies(erased):
    proj, _, _, result = erased
    old_pub = proj.paths.ledger_public_key.read_bytes()
    _, problems = PrivacyCore(proj.paths).rotate_ledger_key()
    assert problems == [] and proj.paths.ledger_public_key.read_bytes() != old_pub
    report = verify_certificate(result.certificate_path, root=proj.paths.root, scan=False)
    assert report.ok, [c for c in report.checks if not c.ok]


def test_a_certificate_says_its_request_was_received_before_the_subject_was_registered(
    project, tmp_path
):
    """A letter dated before its subject's import is taken as the receipt, the deadline counting
    from it; the request says so (received_before_registration), but its certificate did not,
    so a regulator read the receipt date as one the registry corroborated. The certificate
    carries both, committed in the signed entry, and its page says so near "received"."""
    from datetime import UTC, datetime, timedelta

    from visage_ml.privacy.certificate_page import page_path

    proj = make_project(project, n_subjects=3)
    victim, other = proj.pids[:2]
    added = PrivacyCore(proj.paths).added_at(victim)
    received = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    result = Erasure(proj.paths).erase(victim, received_at=received)
    doc = json.loads(result.certificate_path.read_text())
    assert doc["received_at"] == received
    assert doc["received_before_registration"] is True and doc["subject_added_at"] == added
    payload = doc["ledger"]["erasure_completed"]["payload"]
    assert payload["received_before_registration"] is True
    assert payload["subject_added_at"] == added
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]
    html = " ".join(page_path(result.certificate_path).read_text().split())
    row = html[html.index("<th>request received</th>") :].split("</tr>")[0]
    assert f"before the subject was added to the registry ({added[:10]})" in row, row
    assert "the deadline counts from it" in row, row

    # Dropped from the certificate, which is signed again with the controller's key: the
    # signed entry still says so.
    edited = json.loads(result.certificate_path.read_text())
    del edited["received_before_registration"], edited["subject_added_at"]
    forged = tmp_path / "forged.json"
    forged.write_text(render(sign(unsigned(edited), proj.paths)))
    report = verify_certificate(forged, root=proj.paths.root, scan=False, models=False)
    assert "reception date" in failed(report)

    # The stand-alone verifier of docs/verify.md takes it as it is.
    script = tmp_path / "verify.py"
    script.write_text(_verifier_code())
    cert, pub = _offline_copy(proj, result, tmp_path)
    origin = doc["proof"]["log"]["origin"]
    args = ["--public-key", str(pub), "--witness-key", _witness_vkey(), "--origin", origin]
    out = subprocess.run(
        [sys.executable, str(script), str(cert), *args], capture_output=True, text=True
    )
    assert out.returncode == 0 and "certificate VALID" in out.stdout, out.stdout + out.stderr

    # A request received after registration: no such field, nothing said (as a certificate
    # of an older version, which still verifies).
    plain = Erasure(proj.paths).erase(other)
    doc = json.loads(plain.certificate_path.read_text())
    assert "received_before_registration" not in doc
    assert "received_before_registration" not in doc["ledger"]["erasure_completed"]["payload"]
    assert verify_certificate(plain.certificate_path, root=proj.paths.root).ok
    assert "added to the registry" not in page_path(plain.certificate_path).read_text()
