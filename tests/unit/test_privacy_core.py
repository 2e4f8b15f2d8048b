"""PrivacyCore end to end: vault, consent, snapshot, master key errors, no personal data leaks."""

import base64
import logging
import os
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths
from visage_ml.privacy.consent import ConsentReceipt, sha256_text
from visage_ml.privacy.core import NewSubject, NothingChangedError, PrivacyCore
from visage_ml.privacy.keys import MasterKeyError
from visage_ml.privacy.sealed import KeyDestroyedError
from visage_ml.privacy.snapshot import snapshot_frame, write_snapshot
from visage_ml.privacy.vault import IdentityVault

REF = "Zelda Q. Testperson-4711"
CONTACT = "zelda.testperson@example.invalid"


def receipt(purposes=("training", "evaluation", "identification")) -> ConsentReceipt:
    return ConsentReceipt(
        controller="Example Controller Ltd",
        controller_contact="dpo@example.org",
        purposes=purposes,
        notice_version="v1",
        notice_hash=sha256_text("notice"),
        collection_method="web-form",
        given_at="2026-11-26T07:00:00.000Z",
        evidence_hash=sha256_text(b"signed form"),
    )


def scan(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_external_reference_never_appears_in_ledger_snapshot_logs_or_any_file(project, caplog):
    caplog.set_level(logging.DEBUG)
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(external_ref=REF, contact=CONTACT, source="manual")
    core.give_consent(pid, receipt())
    core.withdraw_consent(pid, ["training"])
    core.ledger.checkpoint()
    assert core.vault.get(pid) == {"external_ref": REF, "contact": CONTACT, "source": "manual"}
    for needle in (REF, CONTACT, "Zelda"):
        assert scan(project, needle.encode()) == []
        assert needle not in caplog.text
    snap = pd.read_parquet(project / "data" / "registry" / "consents.parquet")
    assert set(snap.columns) == {"pid", "purpose", "allowed", "reason", "as_of_seq"}
    row = snap[(snap.pid == pid) & (snap.purpose == "training")].iloc[0]
    assert (bool(row.allowed), row.reason) == (False, "consent_withdrawn")


def test_same_reference_keeps_its_pid_and_vault_finds_it(project):
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(external_ref=REF)
    assert core.add_subject(external_ref="  zelda q.  testperson-4711 ") == pid
    assert core.vault.find(REF) == pid


def test_spellings_of_one_reference_in_one_call_are_one_subject(project):
    core = PrivacyCore(ProjectPaths(project))
    nfc = unicodedata.normalize("NFC", "lfw:Zoë_Testperson")
    nfd = unicodedata.normalize("NFD", nfc)
    pids = core.add_subjects(
        [NewSubject(nfc), NewSubject(nfd), NewSubject("lfw:Zo\u200bë_testperson")],
        source="import:lfw",
    )
    assert len(set(pids)) == 1
    assert core.vault.get(pids[0])["external_ref"] == nfc  # the first spelling is recorded
    assert core.add_subject(external_ref=nfd, source="import:lfw") == pids[0]


def test_a_subject_recorded_under_an_alias_keeps_the_pid_and_the_record(project):
    # An importer that renamed its references (UTKFace: one per file, then one per photograph).
    core = PrivacyCore(ProjectPaths(project))
    old = core.add_subject(external_ref="utkface:1_0_0_2017.jpg.chip.jpg", source="import:utkface")
    pids = core.add_subjects(
        [
            NewSubject("utkface:1_0_0_2017.jpg", aliases=("utkface:1_0_0_2017.JPG.chip.jpg",)),
            NewSubject("utkface:2_0_0_2017.jpg", aliases=("utkface:2_0_0_2017.jpg.chip.jpg",)),
        ],
        source="import:utkface",
    )
    assert pids[0] == old and pids[1] != old and len(core.registry) == 2
    assert core.vault.get(old)["external_ref"] == "utkface:1_0_0_2017.jpg.chip.jpg"
    assert core.vault.find("utkface:1_0_0_2017.jpg") is None  # aliases are never recorded


def test_destroy_makes_the_record_unrecoverable(project):
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(external_ref=REF, contact=CONTACT)
    ciphertext = (project / "privacy" / "vault" / "records" / f"{pid}.bin").read_bytes()
    result = core.vault.destroy(pid)
    assert len(result.removed) == 2
    with pytest.raises(KeyError):
        core.vault.get(pid)
    assert core.vault.find(REF) is None
    # A backup of the ciphertext is useless without the destroyed key.
    backup = project / "privacy" / "vault" / "records" / f"{pid}.bin"
    backup.write_bytes(ciphertext)
    with pytest.raises(KeyDestroyedError):
        core.vault.get(pid)


def test_wrong_master_key_is_a_clear_error_not_an_empty_result(project, monkeypatch):
    core = PrivacyCore(ProjectPaths(project))
    core.add_subject(external_ref=REF)
    monkeypatch.setenv("VISAGE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(MasterKeyError, match="does not open"):
        IdentityVault(project / "privacy" / "vault", project / "secrets" / "master.key")


def test_missing_master_key_is_a_clear_error(project):
    core = PrivacyCore(ProjectPaths(project))
    core.add_subject(external_ref=REF)
    (project / "secrets" / "master.key").unlink()
    with pytest.raises(MasterKeyError, match="missing"):
        IdentityVault(project / "privacy" / "vault", project / "secrets" / "master.key")
    result = CliRunner().invoke(app, ["privacy", "subject", "add", "--ref", "someone"])
    assert result.exit_code != 0
    assert "master key is missing" in result.output


def test_malformed_master_key_from_env_says_how_to_make_one(project, monkeypatch):
    monkeypatch.setenv("VISAGE_MASTER_KEY", "too-short")
    with pytest.raises(MasterKeyError, match="32 bytes"):
        PrivacyCore(ProjectPaths(project)).add_subject(external_ref=REF)


def test_cli_scripted_scenario_then_tamper(project):
    run = CliRunner().invoke

    def ok(*args):
        result = run(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output.strip()

    pids = [ok("privacy", "subject", "add", "--ref", f"person {i}") for i in range(3)]
    for pid in pids:
        ok("privacy", "consent", "give", pid, "-p", "training", "-p", "evaluation")
    ok("privacy", "consent", "withdraw", pids[0], "-p", "training")
    ok("privacy", "restrict", pids[1])
    ok("privacy", "snapshot")
    assert "ledger OK" in ok("privacy", "verify-ledger")
    snap = pd.read_parquet(project / "data" / "registry" / "consents.parquet")
    allowed = snap[snap.allowed & (snap.purpose == "training")].pid.tolist()
    assert allowed == [pids[2]]

    ledger = project / "privacy" / "ledger.jsonl"
    data = bytearray(ledger.read_bytes())
    fourth_line_start = [i for i, b in enumerate(data) if b == ord("\n")][2] + 1
    data[fourth_line_start + 30] ^= 0x02
    ledger.write_bytes(bytes(data))
    result = run(app, ["privacy", "verify-ledger"])
    assert result.exit_code == 1
    assert "line 4" in result.output and "seq 3" in result.output


def test_commands_refuse_unknown_subject_and_purpose(project):
    run = CliRunner().invoke
    result = run(app, ["privacy", "consent", "give", "p" + "0" * 16])
    assert result.exit_code == 2 and "no subject" in result.output
    pid = run(app, ["privacy", "subject", "add"]).output.strip()
    result = run(app, ["privacy", "consent", "give", pid, "-p", "marketing"])
    assert result.exit_code == 2 and "unknown purpose" in result.output
    result = run(app, ["privacy", "lift", pid])
    assert result.exit_code == 2 and "not restricted" in result.output
    # A withdrawal of a consent never given, an objection repeated: refused like that lift,
    # nothing appended (each appended a signed event that changed nothing).
    before = (project / "privacy" / "ledger.jsonl").read_bytes()
    result = run(app, ["privacy", "consent", "withdraw", pid])
    assert result.exit_code == 2 and "nothing to withdraw" in result.output
    assert (project / "privacy" / "ledger.jsonl").read_bytes() == before
    assert run(app, ["privacy", "object", pid, "-p", "analytics"]).exit_code == 0
    before = (project / "privacy" / "ledger.jsonl").read_bytes()
    result = run(app, ["privacy", "object", pid, "-p", "analytics"])
    assert result.exit_code == 2 and "already objects to analytics" in result.output
    assert (project / "privacy" / "ledger.jsonl").read_bytes() == before


def test_a_restriction_already_set_is_refused_and_not_recorded(project):
    # `visage privacy restrict` of a subject already restricted appended a second
    # restriction.set (and an Art. 19 notice to every recipient) that changed nothing.
    run = CliRunner().invoke
    ledger = project / "privacy" / "ledger.jsonl"
    pid = run(app, ["privacy", "subject", "add"]).output.strip()
    assert run(app, ["privacy", "restrict", pid]).exit_code == 0
    before = ledger.read_bytes()
    result = run(app, ["privacy", "restrict", pid])
    assert result.exit_code == 2 and "already restricted" in result.output
    assert ledger.read_bytes() == before
    with pytest.raises(NothingChangedError, match="already restricted") as refused:
        PrivacyCore(ProjectPaths(project)).restrict(pid)
    assert refused.value.code == "already_restricted"
    assert ledger.read_bytes() == before


def test_lifting_an_objection_that_does_not_stand_is_refused_and_not_recorded(project):
    # withdraw_objection appended a signed objection.withdrawn for purposes the subject never
    # objected to, read as an act of theirs that changed nothing.
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(source="test")
    before = core.paths.ledger.read_bytes()
    with pytest.raises(NothingChangedError, match="does not object to training") as refused:
        core.withdraw_objection(pid, ["training"])
    assert refused.value.code == "not_objected"
    assert core.paths.ledger.read_bytes() == before
    # Lifted where one of the purposes named stands: recorded; lifted again: refused.
    core.object(pid, ["training"])
    assert core.withdraw_objection(pid, ["training", "evaluation"]).type == "objection.withdrawn"
    assert not core.subject(pid).objected
    before = core.paths.ledger.read_bytes()
    with pytest.raises(NothingChangedError, match="nothing to lift"):
        core.withdraw_objection(pid)
    assert core.paths.ledger.read_bytes() == before


def test_snapshot_patch_is_byte_identical_to_a_full_rebuild(project):
    core = PrivacyCore(ProjectPaths(project))
    pids = [core.add_subject(source="manual") for _ in range(12)]
    for pid in pids[::2]:
        core.give_consent(pid, receipt())
    core.withdraw_consent(pids[4], ["training"])
    core.restrict(pids[7])
    path = project / "data" / "registry" / "consents.parquet"
    patched = path.read_bytes()
    full = project / "full.parquet"
    snapshot_frame(core.registry).to_parquet(full, index=False, engine="pyarrow")
    assert patched == full.read_bytes()
    assert write_snapshot(core.registry, path) is False  # nothing changed: nothing written


def test_snapshot_patches_in_place_and_after_new_or_gone_subjects_match_a_full_rebuild(project):
    core = PrivacyCore(ProjectPaths(project))
    pids = core.add_subjects([NewSubject() for _ in range(20)], source="manual")
    core.give_consents(pids, receipt())
    path = project / "data" / "registry" / "consents.parquet"
    full = project / "full.parquet"

    def check() -> None:
        snapshot_frame(core.registry).to_parquet(full, index=False, engine="pyarrow")
        assert path.read_bytes() == full.read_bytes()

    check()
    # Same subjects, some states changed: rows rewritten where they are.
    core.withdraw_consent(pids[3], ["training"])
    core.restrict(pids[11])
    check()
    # New subjects between existing pids.
    core.add_subjects([NewSubject() for _ in range(5)], source="manual")
    check()
    # A snapshot naming a subject the registry does not know (another project's file).
    foreign = pd.read_parquet(path)
    extra = foreign.iloc[:3].assign(pid="p" + "0" * 16)
    pd.concat([extra, foreign], ignore_index=True).to_parquet(path, index=False)
    assert write_snapshot(core.registry, path) is True
    check()


def test_a_refused_repeat_of_a_withdrawal_still_brings_the_snapshot_up_to_date(project):
    # A withdrawal that died after its ledger append, before refreshing the snapshot the
    # pipeline reads: run again, it is refused (nothing left to withdraw), and must not leave
    # the snapshot saying the subject may still be trained on.
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(source="test")
    core.give_consent(pid, receipt())
    core.ledger.append("consent.withdrawn", pid, {"purposes": ["training"]})  # then it died
    snap = pd.read_parquet(core.paths.consents)
    assert snap[(snap.pid == pid) & (snap.purpose == "training")].allowed.all()
    with pytest.raises(NothingChangedError, match="nothing to withdraw"):
        PrivacyCore(core.paths).withdraw_consent(pid, ["training"])
    snap = pd.read_parquet(core.paths.consents)
    assert not snap[(snap.pid == pid) & (snap.purpose == "training")].allowed.any()
