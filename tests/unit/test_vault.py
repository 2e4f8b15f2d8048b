"""The identity vault's blind index: one person is found under every spelling of their name."""

import hashlib
import hmac
import json
import unicodedata

import pytest

from visage_ml.privacy.vault import IdentityVault

NFC = unicodedata.normalize("NFC", "lfw:Zoë_Testperson")
NFD = unicodedata.normalize("NFD", NFC)
PID = "p0123456789abcdef"
OTHER = "pfedcba9876543210"


@pytest.fixture
def vault(project) -> IdentityVault:
    return IdentityVault(project / "privacy" / "vault", project / "secrets" / "master.key")


def legacy_entry(vault: IdentityVault, ref: str, pid: str) -> None:
    """An index entry as the vault wrote it before it normalised Unicode (case-fold, spaces)."""
    norm = " ".join(ref.strip().casefold().split())
    blind = hmac.new(vault._index_key, norm.encode(), hashlib.sha256).hexdigest()
    index = json.loads(vault._index_path.read_text())
    index = {k: v for k, v in index.items() if v != pid} | {blind: pid}
    vault._index_path.write_text(json.dumps(index))


@pytest.mark.parametrize(
    "spelling",
    [NFD, "lfw:Zo\u200bë_Testperson", "LFW : ZOË_TESTPERSON", "lfw:Ｚoë_Testperson"],
    ids=["nfd", "zero-width-space", "case-and-spaces", "full-width"],
)
def test_every_spelling_finds_the_pid(vault, spelling):
    vault.put(PID, {"external_ref": NFC})
    assert vault.find(spelling) == PID
    assert vault.find_many([spelling, "lfw:Somebody_Else"]) == {spelling: PID}


def test_records_indexed_under_the_old_normalisation_are_still_found(vault):
    vault.put(PID, {"external_ref": NFD})
    legacy_entry(vault, NFD, PID)  # imported from a macOS copy before the vault knew Unicode
    assert vault.find(NFC) == PID
    assert vault.find(NFD) == PID
    assert vault.find_many([NFC]) == {NFC: PID}


def test_rewriting_a_record_replaces_its_legacy_entry(vault):
    vault.put(PID, {"external_ref": NFC})
    legacy_entry(vault, NFC, PID)
    vault.put(PID, {"external_ref": "lfw:Renamed_Testperson"})
    assert vault.find(NFC) is None
    assert vault.find("lfw:renamed_testperson") == PID
    on_disk = json.loads(vault._index_path.read_text())
    on_disk.pop("_nonce")  # the version's randomness (docs/security.md)
    assert list(on_disk.values()) == [PID]


def test_reindex_writes_the_new_normalisation(vault):
    vault.put(PID, {"external_ref": NFD})
    legacy_entry(vault, NFD, PID)
    assert vault.reindex() == 1
    assert vault.find("lfw:Zo\u200bË_testperson") == PID


def test_destroy_removes_every_entry_of_the_pid(vault):
    vault.put_many({PID: {"external_ref": NFC}, OTHER: {"external_ref": "lfw:Somebody_Else"}})
    vault.destroy(PID)
    assert vault.find(NFD) is None and vault.find(NFC) is None
    assert vault.find("lfw:somebody_else") == OTHER


def test_what_killed_writes_left_of_a_subject_goes_with_their_record(vault):
    # Each a full version beside the file it was to replace: the key of a first storing killed
    # at the rename (storing again clears it), a record's and an index's copy naming the pid.
    key = vault.keys.path(PID)
    killed_key = key.with_name(f".{key.name}.k1ll3d00.tmp")
    killed_key.parent.mkdir(parents=True, exist_ok=True)
    killed_key.write_bytes(b"\x01" * 60)
    vault.put_many({PID: {"external_ref": NFC}, OTHER: {"external_ref": "lfw:Somebody_Else"}})
    assert not killed_key.exists()
    record = vault.records_dir / f"{PID}.bin"
    copies = [
        record.with_name(f".{record.name}.k1ll3d00.tmp"),
        vault._index_path.with_name(".index.json.k1ll3d00.tmp"),
        key.with_name(f".{key.name}.k1ll3d01.tmp"),
    ]
    sources = [record, vault._index_path, key]
    for copy, source in zip(copies, sources, strict=True):
        copy.write_bytes(source.read_bytes())
    assert set(copies) <= set(vault.files_of(PID))
    removed = vault.destroy(PID).removed
    assert {str(c) for c in copies} <= set(removed)
    assert vault.files_of(PID) == [] and not any(c.exists() for c in copies)
    assert vault.find("lfw:somebody_else") == OTHER
