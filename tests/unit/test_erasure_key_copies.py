"""Copies of an erased subject's KEY files: crypto-shredding against whoever kept one.

An erasure destroys the subject's wrapped data key (``privacy/keys/<pid>.key``), vault key and
gallery key; the master key that wraps them is kept. So a copy of a wrapped key file anywhere
(``cp -r privacy privacy.bak``, a tarball of ``privacy/`` in the project, its base64 printed
in a notebook, a commit) and the kept master key open every sealed byte of the subject that
survived out of reach (a DVC remote, an off-site backup): the certificate's "no one can open
them any more" would be false. These tests play that operator: each keeps a key copy, and the
erasure must remove it (an exact copy), stop on it (one among other content, or in git), and
the verifier must fail while one is put back.
"""

from __future__ import annotations

import base64
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from project_helpers import committed_then_removed
from rights_fakes import make_project, printed_notebook
from test_erasure import _dvc

from visage_ml.privacy.datakeys import DataKeys, NoDataKeyError
from visage_ml.privacy.keys import load_master_key
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure


@pytest.fixture
def proj(project):
    return make_project(project, n_subjects=3)


def _key_files(proj, pid: str) -> dict[Path, bytes]:
    """The subject's wrapped key files an erasure destroys, and their bytes."""
    paths = proj.paths
    files = [
        paths.data_keys / f"{pid}.key",
        paths.vault / "keys" / f"{pid}.key",
        paths.gallery / "keys" / f"{pid}.key",
    ]
    found = {p: p.read_bytes() for p in files if p.is_file()}
    # The data key at least (the one that seals the photographs), and the vault's (pids[0]).
    assert paths.data_keys / f"{pid}.key" in found and len(found) >= 2, found
    return found


def _opens(proj, key_dir: Path, sealed: bytes, pid: str, image_id: str) -> bool:
    """Whether the kept master key and a key folder opens an off-site copy of a sealed image."""
    master = load_master_key(proj.paths.master_key, create=False)
    try:
        DataKeys(key_dir, master).open_raw(sealed, pid, image_id)
    except NoDataKeyError:
        return False
    return True


def _certified_and_each_found_put_back(result, copies: dict[Path, bytes], *, root: Path) -> None:
    """The erasure's certificate verifies; each erased copy put back, the verifier finds it."""
    assert verify_certificate(result.certificate_path, root=root).ok
    for path, data in copies.items():
        path.write_bytes(data)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert {Path(f["path"]) for f in report.findings} >= set(copies), report.findings


def test_a_copied_privacy_folder_loses_the_erased_subjects_keys_and_nothing_else(proj):
    # `cp -r privacy privacy.bak` (and a copy of gallery/): an honest backup. Its copy of the
    # subject's key, with the master key the erasure keeps, opened the off-site copy of every
    # sealed photograph after a VALID certificate.
    root = proj.paths.root
    victim, other = proj.pids[0], proj.pids[1]
    sealed_path = next((proj.paths.raw / victim).glob("*.sealed"))
    offsite = (sealed_path.read_bytes(), sealed_path.stem)
    shutil.copytree(proj.paths.privacy, root / "privacy.bak")
    shutil.copytree(proj.paths.gallery, root / "gallery.bak")
    keys = _key_files(proj, victim)
    copies = {
        root / f"{top.name}.bak" / p.relative_to(top): b
        for p, b in keys.items()
        for top in (proj.paths.privacy, proj.paths.gallery)
        if p.is_relative_to(top)
    }
    copies = {p: b for p, b in copies.items() if p.is_file()}
    assert len(copies) == len(keys)
    assert _opens(proj, root / "privacy.bak" / "keys", offsite[0], victim, offsite[1])

    result = Erasure(proj.paths).erase(victim)

    assert [p for p in copies if p.exists()] == []
    assert not _opens(proj, root / "privacy.bak" / "keys", offsite[0], victim, offsite[1])
    # The other subject's key copy is no copy of the erased one's: kept.
    assert (root / "privacy.bak" / "keys" / f"{other}.key").is_file()
    _certified_and_each_found_put_back(result, copies, root=root)


def _stops(proj, victim: str, made: Path) -> None:
    """The erasure stops on ``made`` (it holds a key among other content), keeping it; taken
    out, it resumes and certifies."""
    with pytest.raises(OSError, match="hold erased content inside other content"):
        Erasure(proj.paths).erase(victim)
    assert made.is_file()
    assert not list(proj.paths.certificates.glob("*.json"))
    made.unlink()
    (result,) = Erasure(proj.paths).resume()
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_a_tarball_of_the_key_folder_in_the_project_stops_the_erasure(proj):
    root, victim = proj.paths.root, proj.pids[0]
    # The key folder alone: nothing else of the subject inside (the vault's record, say).
    made = root / "keys.tgz"
    with tarfile.open(made, "w:gz") as tar:
        tar.add(proj.paths.data_keys, arcname="privacy/keys")
    _stops(proj, victim, made)


def test_a_zip_of_the_key_folder_stops_the_erasure(proj):
    root, victim = proj.paths.root, proj.pids[0]
    made = root / "reports" / "keys.zip"
    made.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(made, "w") as z:
        for p in sorted(proj.paths.data_keys.glob("*.key")):
            z.write(p, f"keys/{p.name}")
    _stops(proj, victim, made)


def test_a_notebook_that_printed_the_key_file_in_base64_loses_it(proj):
    root, victim = proj.paths.root, proj.pids[0]
    wrapped = (proj.paths.data_keys / f"{victim}.key").read_bytes()
    text = base64.b64encode(wrapped).decode()
    nb = printed_notebook([text], "base64.b64encode(open(k, 'rb').read())")
    path = root / "notebooks" / "keys.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nb, encoding="utf-8")
    result = Erasure(proj.paths).erase(victim)
    assert text not in path.read_text(encoding="utf-8") if path.exists() else True
    assert verify_certificate(result.certificate_path, root=root).ok
    path.write_text(nb, encoding="utf-8")
    assert not verify_certificate(result.certificate_path, root=root).ok


def test_a_key_copy_committed_to_git_stops_the_erasure(tiny_project):
    # privacy/ is ignored (.gitignore), a copy of it beside it is not: `git add .` commits it.
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim = proj.pids[0]
    shutil.copytree(proj.paths.data_keys, root / "keys-backup")
    committed_then_removed(root, "keys-backup")
    with pytest.raises(OSError, match="git"):
        Erasure(proj.paths).erase(victim)
    assert not list(proj.paths.certificates.glob("*.json"))


@pytest.mark.pipeline
def test_a_key_copy_tracked_and_pushed_with_dvc_goes_from_the_cache_and_the_remote(tiny_project):
    # `dvc add` of a copy of the key folder (privacy/ itself is in .dvcignore), pushed: the
    # remote is where a copy outlives the project's disk.
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, processed=False)
    victim = proj.pids[0]
    backup = root / "keys-backup"
    shutil.copytree(proj.paths.data_keys, backup)
    assert _dvc(root, "add", "keys-backup").returncode == 0
    remote = root.parent / "remote"
    assert _dvc(root, "remote", "add", "-f", "-d", "local", str(remote)).returncode == 0
    assert _dvc(root, "push").returncode == 0
    wrapped = (proj.paths.data_keys / f"{victim}.key").read_bytes()

    result = Erasure(proj.paths).erase(victim)

    removed = result.certificate["claims"]["copies_removed"]
    assert removed == {"dvc cache": 1, "dvc remote:local": 1, "keys-backup": 1}, removed
    held = [p for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()]
    held += [p for p in remote.rglob("*") if p.is_file()]
    assert not [p for p in held if p.read_bytes() == wrapped]
    assert verify_certificate(result.certificate_path, root=root).ok
    _dvc(root, "checkout", "keys-backup")
    assert not (backup / f"{victim}.key").exists(), "dvc checkout put the erased key back"


def test_a_backup_made_before_a_master_key_rotation_loses_the_erased_subjects_keys(proj):
    # The backup holds each key wrapped under the OLD master key: other bytes than the key file
    # a rotation rewrote, so the erasure, seeking the key file's bytes as they are now, passed
    # it over and certified. The operator who kept the old master key (secrets/ in the same
    # backup) unwrapped the data key and opened every off-site copy of the photographs.
    from visage_ml.rights.sealing import rotate_master_key

    root = proj.paths.root
    victim, other = proj.pids[0], proj.pids[1]
    sealed_path = next((proj.paths.raw / victim).glob("*.sealed"))
    offsite = (sealed_path.read_bytes(), sealed_path.stem)
    old_master = load_master_key(proj.paths.master_key, create=False)
    shutil.copytree(proj.paths.privacy, root / "privacy.bak")
    shutil.copytree(proj.paths.gallery, root / "gallery.bak")
    before = _key_files(proj, victim)
    rotate_master_key(proj.paths, core=proj.core)
    assert all(p.read_bytes() != b for p, b in before.items()), "the rotation rewrapped each"
    copies = {
        root / f"{top.name}.bak" / p.relative_to(top): b
        for p, b in before.items()
        for top in (proj.paths.privacy, proj.paths.gallery)
        if p.is_relative_to(top)
    }

    result = Erasure(proj.paths).erase(victim)

    assert [p for p in copies if p.exists()] == []
    with pytest.raises(NoDataKeyError):
        DataKeys(root / "privacy.bak" / "keys", old_master).open_raw(offsite[0], victim, offsite[1])
    assert (root / "privacy.bak" / "keys" / f"{other}.key").is_file()
    _certified_and_each_found_put_back(result, copies, root=root)


def test_a_backup_made_before_a_consent_withdrawal_purged_the_gallery_loses_the_key(proj):
    # Identification consent withdrawn: the gallery's purge destroyed the subject's gallery key
    # (no erasure), and with it the names of its versions. The subject's later erasure knew no
    # version of that key, passed over the copy in `cp -r gallery gallery.bak` and certified;
    # the kept master key unwrapped it and opened the sealed template copy beside it.
    from visage_ml.privacy.sealed import KeyDestroyedError, KeyRing
    from visage_ml.serving.gallery import KEY_CONTEXT

    root = proj.paths.root
    victim, other = proj.pids[0], proj.pids[1]
    master = load_master_key(proj.paths.master_key, create=False)
    shutil.copytree(proj.paths.gallery, root / "gallery.bak")
    copy = root / "gallery.bak" / "keys" / f"{victim}.key"
    kept = copy.read_bytes()
    proj.core.withdraw_consent(victim, ["identification"])
    (removal,) = proj.gallery().purge_without_basis()
    assert removal.pid == victim and not (proj.paths.gallery / "keys" / f"{victim}.key").exists()

    result = Erasure(proj.paths).erase(victim)

    assert not copy.exists()
    with pytest.raises(KeyDestroyedError):
        KeyRing(root / "gallery.bak" / "keys", master, context=KEY_CONTEXT).get(victim)
    assert (root / "gallery.bak" / "keys" / f"{other}.key").is_file()
    assert verify_certificate(result.certificate_path, root=root).ok
    # The trace the purge kept went with the erasure.
    assert not list((proj.paths.gallery / "keys").glob(f".{victim}.key*"))
    copy.write_bytes(kept)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert copy in {Path(f["path"]) for f in report.findings}, report.findings
