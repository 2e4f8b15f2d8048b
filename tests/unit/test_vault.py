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
