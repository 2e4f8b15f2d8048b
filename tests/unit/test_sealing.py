"""`visage privacy seal`, `rotate-master-key`, `doctor`: a project's biometric files at rest."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from PIL import Image
from rights_fakes import REF, make_project
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.prepare import prepare
from visage_ml.data.processed import load_processed
from visage_ml.data.rawstore import RawStore
from visage_ml.faults import FAULT_ENV, FAULT_EXIT
from visage_ml.io import file_lock
from visage_ml.privacy import sealed as sealed_mod
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import IMAGE_KINDS, parse_header, sniff, sniff_bytes
from visage_ml.privacy.keys import MASTER_KEY_ENV, MasterKeyError, load_master_key
from visage_ml.privacy.sealed import KeyDestroyedError, open_sealed
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.export import Delivery, export_subject
from visage_ml.rights.sealing import doctor, rotate_master_key, seal_project
from visage_ml.serving.gallery import Gallery

PLAIN = Delivery(plaintext=True)


def _in_child(root: Path, code: str, fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, FAULT_ENV: fault, "VISAGE_PROJECT": str(root)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _opens_as_image(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # any decoder refusal: not an image
        return False


def _plaintext_files(*roots: Path) -> list[str]:
    out = []
    for root in roots:
        for f in root.rglob("*"):
            if (
                f.is_file()
                and not f.is_symlink()
                and (sniff(f) in IMAGE_KINDS | {"npy"} or _opens_as_image(f))
            ):
                out.append(str(f))
    return out


def _chart(path: Path) -> bool:
    """A PNG matplotlib drew (it names itself in the PNG's Software chunk): a plot, no face."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and str(im.info.get("Software", "")).startswith("Matplotlib")
    except Exception:  # any decoder refusal: not a chart
        return False


# -- the pipeline leaves no plaintext face at rest --------------------------------------------


@pytest.mark.pipeline
def test_after_synth_and_dvc_repro_no_file_under_data_or_the_cache_opens_as_an_image(
    tiny_pipeline,
):
    root = tiny_pipeline.root
    data, cache = root / "data", root / ".dvc" / "cache"
    files = [f for f in [*data.rglob("*"), *cache.rglob("*")] if f.is_file()]
    assert len(files) > 100
    assert _plaintext_files(data, cache) == []
    # Nor anywhere else the pipeline writes (models and checkpoints, reports and plots, MLflow
    # artefacts, the gallery, privacy/): the only images are the charts matplotlib drew.
    assert len([f for f in _plaintext_files(root) if _chart(Path(f))]) > 5
    found = [f for f in _plaintext_files(root) if "/.git/" not in f and not _chart(Path(f))]
    assert found == []
    # Folders and files of personal data are the owner's only.
    for rel in ("data/raw", "data/processed", "gallery", "privacy/keys", "secrets"):
        assert (root / rel).stat().st_mode & 0o777 == 0o700, rel
    for f in [*(root / "data" / "raw").rglob("*.sealed"), root / "data/processed/faces.sealed"]:
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert doctor(tiny_pipeline).ok


# -- visage privacy seal ------------------------------------------------------------------------


def _make_legacy(root: Path) -> dict:
    """A project as visage-ml wrote it before sealing: plaintext PNGs in data/raw and
    data/scenes, the crop array faces.u8.npy, a plaintext bundle; tracked and pushed by DVC."""
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    prepare(paths, load_params(paths.params))
    core = PrivacyCore(paths)
    store = RawStore(paths, core=core)
    crops = load_processed(paths)
    pid = str(crops.manifest["pid"].iloc[0])
    sealed_bundle = export_subject(paths, pid, core=core, delivery=PLAIN).path
    bundle = sealed_bundle.with_name(sealed_bundle.name.removesuffix(".sealed"))
    bundle.write_bytes(core.data_keys.open(sealed_bundle.read_bytes()))  # kept in clear back then
    sealed_bundle.unlink()
    pngs = {}
    for f in sorted(paths.raw.glob("p*/*.sealed")):
        png = store.read_image(f.parent.name, f.stem)
        pngs[(f.parent.name, f.stem)] = png
        f.with_suffix(".png").write_bytes(png)
        f.unlink()
    for f in sorted(paths.scenes.glob("*.sealed")):
        f.with_suffix(".png").write_bytes(core.data_keys.open(f.read_bytes()))
        f.unlink()
    np.save(paths.processed / "faces.u8.npy", crops.faces)
    (paths.processed / "faces.sealed").unlink()
    for key in paths.data_keys.glob("p*.key"):  # nothing was sealed back then
        key.unlink()
    _dvc(root, "add", "data/raw", "data/scenes")
    _dvc(root, "push")
    return {"pngs": pngs, "faces": crops.faces, "bundle": bundle, "pid": pid}


@pytest.mark.pipeline
def test_seal_converts_a_legacy_project_resumably_and_purges_plaintext_from_dvc(
    tiny_project, tmp_path
):
    root = tiny_project(dvc=True)
    paths = ProjectPaths(root)
    remote = tmp_path / "remote"
    _dvc(root, "remote", "add", "-d", "store", str(remote))
    legacy = _make_legacy(root)
    cache = root / ".dvc" / "cache"
    assert _plaintext_files(paths.raw) and _plaintext_files(cache) and _plaintext_files(remote)
    found = doctor(paths)
    assert {f.action for f in found.findings if f.kind == "plaintext"} == {"seal"}

    # Killed right after the first file was sealed: the next run finishes the job.
    code = "from visage_ml.config import ProjectPaths; from visage_ml.rights.sealing import "
    code += "seal_project; seal_project(ProjectPaths.discover())"
    child = _in_child(root, code, "seal:file:written")
    assert child.returncode == FAULT_EXIT, child.stderr[-2000:]
    assert len(list(paths.raw.glob("p*/*.sealed"))) == 1
    report = seal_project(paths)
    assert report.raw_sealed + report.raw_already == len(legacy["pngs"]) - 1 + report.raw_already
    assert report.plaintext_crops_removed and report.bundles_sealed == 1
    assert report.dvc_objects_removed >= len(legacy["pngs"])

    # No plaintext face anywhere: data/, the cache, the remote; the plaintext bundle is sealed.
    assert _plaintext_files(paths.data, cache, remote) == []
    assert not legacy["bundle"].exists()
    sealed_bundle = legacy["bundle"].with_name(legacy["bundle"].name + ".sealed")
    keys = PrivacyCore(paths).data_keys
    assert keys.open(sealed_bundle.read_bytes())[:4] == b"PK\x03\x04"
    # Everything reads back as it was, decrypted in memory.
    store = RawStore(paths)
    for (pid, image_id), png in legacy["pngs"].items():
        assert store.read_image(pid, image_id) == png
    assert np.array_equal(load_processed(paths).faces, legacy["faces"])
    assert doctor(paths).ok
    # DVC tracks the sealed tree and the remote can be brought up to date.
    _dvc(root, "push")
    assert "new:" not in _dvc(root, "status", "-c").stdout
    again = seal_project(paths)
    assert again.raw_sealed == again.scenes_sealed == 0


@pytest.mark.pipeline
def test_seal_where_data_raw_is_not_checked_out_is_refused_and_dvc_adds_nothing(tiny_project):
    """DVC tracks data/raw, its tables not checked out (`dvc checkout` cut short): `visage
    privacy seal` sealed what it found and `dvc add`ed data/raw as it was, so data/raw.dvc's
    current version held neither table, no subject's rows. Refused now before anything is
    sealed, saying what to run."""
    root = tiny_project(dvc=True)
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    dvcfile = paths.data / "raw.dvc"
    tracked = dvcfile.read_text()
    for name in ("subjects.parquet", "images.parquet"):
        (paths.raw / name).unlink()

    result = CliRunner().invoke(app, ["privacy", "seal"])

    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "DVC tracks data/raw" in said and "run `dvc checkout data/raw`" in said, said
    assert dvcfile.read_text() == tracked
    assert _dvc(root, "checkout", "data/raw").returncode == 0
    seal_project(paths)
    assert dvcfile.read_text() == tracked


def test_seal_where_data_raw_is_checked_out_in_part_is_refused_and_dvc_adds_nothing(
    tiny_project,
):
    """DVC tracks data/raw, both tables there, one photograph they list not (a checkout cut
    short): `visage privacy seal` `dvc add`ed data/raw as it was, so data/raw.dvc's current
    version lacked the photograph and `dvc checkout data/raw` brought it back no more.
    Refused now before anything is sealed, saying what to run."""
    root = tiny_project(dvc=True)
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    dvcfile = paths.data / "raw.dvc"
    tracked = dvcfile.read_text()
    photo = sorted(paths.raw.glob("*/*.sealed"))[0]
    photo.unlink()

    result = CliRunner().invoke(app, ["privacy", "seal"])

    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "checked out only in part" in said and "run `dvc checkout data/raw`" in said, said
    assert dvcfile.read_text() == tracked
    assert _dvc(root, "checkout", "data/raw").returncode == 0
    assert photo.is_file()
    seal_project(paths)
    assert dvcfile.read_text() == tracked


# -- visage privacy rotate-master-key ------------------------------------------------------


def _tree_hashes(*roots: Path) -> dict[str, str]:
    return {
        str(f): hashlib.sha256(f.read_bytes()).hexdigest()
        for root in roots
        for f in root.rglob("*")
        if f.is_file() and f.suffix != ".key" and f.name not in (".check", "index.json")
    }


def test_rotating_the_master_key_rewraps_every_key_and_touches_no_data_file(project):
    proj = make_project(project, n_subjects=3)
    paths = proj.paths
    pid = proj.pids[0]
    old = paths.master_key.read_bytes()
    data_before = _tree_hashes(paths.raw, paths.processed, paths.gallery / "templates")
    key_files = sorted(
        f
        for d in (paths.data_keys, paths.vault / "keys", paths.gallery / "keys")
        for f in d.glob("p*.key")
    )
    wrapped_before = {f: f.read_bytes() for f in key_files}

    # Killed after the first key file was re-wrapped: half the keys are under the new key.
    code = "from visage_ml.config import ProjectPaths; from visage_ml.rights.sealing import "
    code += "rotate_master_key; rotate_master_key(ProjectPaths.discover())"
    child = _in_child(paths.root, code, "keys:rewrap:file")
    assert child.returncode == FAULT_EXIT, child.stderr[-2000:]
    # Meanwhile every other command refuses, saying how to finish.
    with pytest.raises(MasterKeyError, match="rotate-master-key"):
        PrivacyCore(paths).data_keys  # noqa: B018
    report = rotate_master_key(paths)
    assert report.resumed
    assert sum(r["rewrapped"] + r["already"] for r in report.rings.values()) >= len(key_files)
    new = paths.master_key.read_bytes()
    assert new != old and not (paths.root / "secrets" / "master.key.next").exists()
    assert all(f.read_bytes() != wrapped_before[f] for f in key_files)
    assert _tree_hashes(paths.raw, paths.processed, paths.gallery / "templates") == data_before

    # Everything opens under the new key: images, crops, templates, the vault and its index.
    core = PrivacyCore(paths)
    image_id = sorted(proj.images[pid])[0]
    assert RawStore(paths, core=core).read_image(pid, image_id) == proj.images[pid][image_id]
    assert load_processed(paths).faces.any()
    assert core.vault.get(pid)["external_ref"] == REF and core.vault.find(REF) == pid
    gallery = Gallery.open_existing(paths, core=core)
    assert pid in gallery.searchable()
    (event,) = [e for e in core.ledger.entries() if e.type == "keys.master_rotated"]
    assert event.payload["new_fingerprint"] == report.new_fingerprint
    assert base64.b64encode(new).decode() not in paths.ledger.read_text()
    # The old master key opens nothing any more.
    os.environ[MASTER_KEY_ENV] = old.decode().strip()
    try:
        with pytest.raises(MasterKeyError, match="does not open"):
            PrivacyCore(paths).data_keys.key(pid)
    finally:
        del os.environ[MASTER_KEY_ENV]


# The key rings a subject has a key in: folder under the project, wrapping context.
_RINGS = {"privacy/keys": "data", "privacy/vault/keys": "vault", "gallery/keys": "gallery"}


def _unwraps(root: Path, pid: str, masters: list[bytes]) -> dict[str, bytes]:
    """Every file of a key ring that unwraps ``pid``'s key under one of ``masters`` (the key
    it gives, by project-relative path)."""
    found = {}
    for folder, context in _RINGS.items():
        for f in sorted((root / folder).rglob("*")):
            blob = f.read_bytes() if f.is_file() else b""
            for master in masters:
                try:
                    key = AESGCM(master).decrypt(blob[:12], blob[12:], f"{context}:{pid}".encode())
                except (InvalidTag, ValueError):
                    continue
                found[f.relative_to(root).as_posix()] = key
    return found


def _kill_rotation_at(root: Path, target: str) -> None:
    """Run `rotate-master-key` in a child killed (as by ``kill -9``) as it renames ``target``
    (project-relative) into place: the new version written in full beside it, not renamed."""
    code = f"""
import os
from visage_ml.config import ProjectPaths
from visage_ml.rights.sealing import rotate_master_key
rename = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith({target!r}):
        os._exit({FAULT_EXIT})
    return rename(src, dst, *args, **kwargs)
os.replace = replace
rotate_master_key(ProjectPaths.discover())
"""
    child = _in_child(root, code, "")
    assert child.returncode == FAULT_EXIT, child.stderr[-2000:]


def test_a_rotation_killed_at_a_rename_leaves_no_copy_of_an_erased_subjects_keys(project):
    # Killed as each ring renames the victim's re-wrapped key into place, and as the vault's
    # blind index is replaced, then finished: the temporary files those renames never moved
    # hold the victim's keys wrapped under the master key now in use. After the erasure no
    # file of any key ring may still give them: the sealed copies in backups and the DVC
    # cache would open again.
    proj = make_project(project, n_subjects=4)
    paths, root = proj.paths, project
    victim = proj.pids[0]
    image_id = sorted(proj.images[victim])[0]
    backup = (paths.raw / victim / f"{image_id}.sealed").read_bytes()
    old = load_master_key(paths.master_key, create=False)
    for target in (*(f"{folder}/{victim}.key" for folder in _RINGS), "privacy/vault/index.json"):
        _kill_rotation_at(root, target)
    rotate_master_key(paths)
    assert doctor(paths).ok  # the finished rotation cleared what its killed runs left
    new = load_master_key(paths.master_key, create=False)
    keys = _unwraps(root, victim, [new])
    assert set(keys) == {f"{folder}/{victim}.key" for folder in _RINGS}
    _, end = parse_header(backup)
    assert open_sealed(keys[f"privacy/keys/{victim}.key"], backup[end:], aad=backup[:end])

    result = Erasure(paths).erase(victim)

    assert verify_certificate(result.certificate_path, root=root).ok
    assert not any(Erasure(paths).remaining(victim).values())
    assert doctor(paths).ok
    assert sorted(_unwraps(root, victim, [new, old])) == []
    # Nor does the vault keep a blind index entry naming the victim (an older index's copy).
    vault = [f for f in (root / "privacy/vault").rglob("*") if f.is_file()]
    assert [f.name for f in vault if victim.encode() in f.read_bytes()] == []


def test_an_erasure_destroys_leftover_copies_of_the_subjects_keys_and_the_doctor_finds_them(
    project,
):
    # A key file's copy a killed write left beside it (an older version's rotation, a first
    # creation killed at the rename) unwraps like the key itself: the erasure plans, destroys
    # and certifies it with the key; one put back afterwards is the doctor's to purge.
    proj = make_project(project, n_subjects=3)
    paths, root = proj.paths, project
    victim, live = proj.pids[:2]
    copies = {}
    for folder in _RINGS:
        key = root / folder / f"{victim}.key"
        copies[f"{folder}/.{victim}.key.k1ll3d00.tmp"] = key.read_bytes()
    for rel, blob in copies.items():
        (root / rel).write_bytes(blob)
    before = [p for paths_ in Erasure(paths).remaining(victim).values() for p in paths_]
    assert set(copies) <= set(before)

    result = Erasure(paths).erase(victim)

    outcome = {a["path"]: a["outcome"] for a in result.certificate["claims"]["artefacts"]}
    assert {outcome.get(rel) for rel in copies} == {"key destroyed"}
    assert verify_certificate(result.certificate_path, root=root).ok
    assert not any(Erasure(paths).remaining(victim).values())
    master = load_master_key(paths.master_key, create=False)
    assert sorted(_unwraps(root, victim, [master])) == []

    # Put back (a restored backup of the key rings), beside a live subject's own leftover.
    for rel, blob in copies.items():
        (root / rel).write_bytes(blob)
    mine = root / "privacy/keys" / f".{live}.key.k1ll3d00.tmp"
    mine.write_bytes((root / "privacy/keys" / f"{live}.key").read_bytes())
    found = {(f.kind, f.path, f.action) for f in doctor(paths).findings}
    assert found == {
        *(("erased_subject", rel, "purge") for rel in copies),
        ("leftover", mine.relative_to(root).as_posix(), "purge"),
    }
    doctor(paths, purge=True)
    assert doctor(paths).ok and not mine.exists()
    assert sorted(_unwraps(root, victim, [master])) == []
    image_id = sorted(proj.images[live])[0]
    assert RawStore(paths).read_image(live, image_id) == proj.images[live][image_id]


def test_a_key_destroyed_without_an_erasure_stays_named_and_nothing_takes_the_name_for_a_key(
    project,
):
    # A consent withdrawal's purge destroys the gallery key, the doctor an unknown subject's:
    # no erasure, so the versions destroyed stay named beside them for the subject's later
    # erasure to seek in a backup. The name is no key and no leftover: the doctor passes it
    # over, the rotation neither re-wraps it nor fails on it, and no subject is listed by it.
    proj = make_project(project, n_subjects=3)
    paths = proj.paths
    victim, live = proj.pids[:2]
    key = paths.gallery / "keys" / f"{victim}.key"
    blob = key.read_bytes()
    proj.core.withdraw_consent(victim, ["identification"])
    gallery = proj.gallery()
    assert [r.pid for r in gallery.purge_without_basis()] == [victim]
    was = sealed_mod.was_path(key)
    named = [(hashlib.sha256(blob).hexdigest(), len(blob))]
    assert not key.exists() and sealed_mod.earlier_wrappings(key) == named
    # A gallery key the registry does not know (restored from elsewhere): the doctor's purge.
    stranger = "p" + "e" * 16
    foreign = paths.gallery / "keys" / f"{stranger}.key"
    foreign.write_bytes(blob)
    assert doctor(paths, purge=True).findings
    assert not foreign.exists() and sealed_mod.earlier_wrappings(foreign) == named

    report = doctor(paths)
    assert report.ok, report.findings
    assert victim not in gallery.keys.pids() and stranger not in gallery.keys.pids()
    before = was.read_bytes()
    rotate_master_key(paths, core=proj.core)
    assert was.read_bytes() == before and not key.exists()
    assert doctor(paths).ok
    image_id = sorted(proj.images[live])[0]
    assert RawStore(paths).read_image(live, image_id) == proj.images[live][image_id]


@pytest.mark.timeout(120)
def test_doctor_purge_leaves_a_locked_key_rings_leftovers_and_says_why(project, monkeypatch):
    # A key ring's lock is held while a rotation re-wraps it or a key is created: a temporary
    # file there may be the one about to be renamed into place. The purge leaves that ring's
    # (it does not wait either) and says why; the other rings' leftovers go.
    proj = make_project(project, n_subjects=2)
    root, live = project, proj.pids[0]
    left = {}
    for folder in _RINGS:
        left[folder] = root / folder / f".{live}.key.k1ll3d00.tmp"
        left[folder].write_bytes((root / folder / f"{live}.key").read_bytes())
    monkeypatch.chdir(root)
    runner = CliRunner()
    with file_lock(root / "privacy/keys/.lock"):  # a rotation at work on the data keys
        r = runner.invoke(app, ["privacy", "doctor", "--purge"])
    said = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert left["privacy/keys"].exists()
    assert not left["privacy/vault/keys"].exists() and not left["gallery/keys"].exists()
    assert "privacy/keys: 1 leftover(s) left in place: the folder is locked" in said
    assert "run `visage privacy doctor --purge` again" in said
    r = runner.invoke(app, ["privacy", "doctor", "--purge", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["locked"] == {} and not left["privacy/keys"].exists()


def test_a_purge_during_a_master_key_rotation_leaves_the_rotations_files_alone(
    project, monkeypatch
):
    # A doctor started before the rotation purges while the rotation has written a key's
    # re-wrapped version and not yet renamed it: the purge deleted it and the rotation died.
    proj = make_project(project, n_subjects=2)
    paths = proj.paths
    core = PrivacyCore(paths)
    assert core.data_keys  # opened before the rotation began
    rename, purges = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if not purges and Path(dst).parent == paths.data_keys and Path(dst).suffix == ".key":
            purges.append(doctor(paths, purge=True, core=core))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    rotate_master_key(paths)
    monkeypatch.setattr(os, "replace", rename)
    assert list(purges[0].locked) == ["privacy/keys"]
    pid = proj.pids[1]
    image_id = sorted(proj.images[pid])[0]
    assert RawStore(paths).read_image(pid, image_id) == proj.images[pid][image_id]
    assert doctor(paths).ok


def _victims_keys(root: Path, victim: str, folder: str, masters: list[bytes]) -> list[str]:
    """The files of key ring ``folder`` that still unwrap ``victim``'s key."""
    return [p for p in _unwraps(root, victim, masters) if p.startswith(f"{folder}/")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("folder", list(_RINGS))
def test_a_key_destroyed_during_a_master_key_rotation_stays_destroyed(project, monkeypatch, folder):
    # An erasure that opened its stores before the rotation began destroys the subject's key
    # while the rotation has read it and is writing it back re-wrapped: the rotation brought
    # the key back under the new master key (new bytes: the hash the certificate records finds
    # nothing), and the erased subject's sealed copies in backups opened again.
    proj = make_project(project, n_subjects=2)
    paths, root = proj.paths, project
    victim = proj.pids[0]
    core = PrivacyCore(paths)
    gallery = Gallery.open_existing(paths, core=core)
    assert core.data_keys and core.vault  # opened before the rotation began
    old = load_master_key(paths.master_key, create=False)
    destroy = {
        "privacy/keys": lambda: core.data_keys.destroy_files(victim),
        "privacy/vault/keys": lambda: core.vault.destroy(victim).removed,
        "gallery/keys": lambda: gallery.erase(victim).removed,
    }[folder]
    target = root / folder / f"{victim}.key"
    write, erasers, removed = sealed_mod.atomic_write_bytes, [], []

    def rewrite(path, data, **kwargs):
        if Path(path) == target and not erasers:
            erasers.append(threading.Thread(target=lambda: removed.append(destroy())))
            erasers[0].start()
            erasers[0].join(timeout=2)  # it runs now, unless the rotation holds it off
        return write(path, data, **kwargs)

    monkeypatch.setattr(sealed_mod, "atomic_write_bytes", rewrite)
    rotate_master_key(paths)
    monkeypatch.setattr(sealed_mod, "atomic_write_bytes", write)
    erasers[0].join(timeout=60)
    assert removed and removed[0]  # the erasure destroyed the key (its certificate says so)
    new = load_master_key(paths.master_key, create=False)
    assert _victims_keys(root, victim, folder, [old, new]) == []
    core = PrivacyCore(paths)
    rings = {"privacy/keys": core.data_keys.ring, "privacy/vault/keys": core.vault.keys}
    ring = rings.get(folder) or Gallery.open_existing(paths, core=core).keys
    with pytest.raises(KeyDestroyedError):  # what it sealed, in every copy, stays unreadable
        ring.get(victim)
    other = proj.pids[1]
    image_id = sorted(proj.images[other])[0]
    assert RawStore(paths).read_image(other, image_id) == proj.images[other][image_id]


def test_a_key_deleted_without_the_rings_lock_during_a_rotation_is_not_written_back(
    project, monkeypatch
):
    # A key file removed by something that does not take the ring's lock (a person, a process
    # of an older version) after the rotation read it: the rotation must not write it back.
    proj = make_project(project, n_subjects=2, enrol=False)
    paths, root = proj.paths, project
    victim = proj.pids[0]
    target = paths.data_keys / f"{victim}.key"
    old = load_master_key(paths.master_key, create=False)
    read, deleted = Path.read_bytes, []

    def read_then_delete(self: Path) -> bytes:
        blob = read(self)
        if self == target and not deleted:
            deleted.append(self)
            self.unlink()  # read by the rotation, not yet written back
        return blob

    monkeypatch.setattr(Path, "read_bytes", read_then_delete)
    rotate_master_key(paths)
    monkeypatch.setattr(Path, "read_bytes", read)
    assert deleted
    new = load_master_key(paths.master_key, create=False)
    assert _victims_keys(root, victim, "privacy/keys", [old, new]) == []
    other = proj.pids[1]
    image_id = sorted(proj.images[other])[0]
    assert RawStore(paths).read_image(other, image_id) == proj.images[other][image_id]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("folder", list(_RINGS))
def test_a_purge_during_a_rotation_leaves_an_erased_subjects_key_to_a_later_run(
    project, monkeypatch, folder
):
    # An erased subject's key put back (a restored backup of the ring), purged by a doctor
    # while the rotation is writing that key back re-wrapped: the purge deleted it, reported
    # it purged, and the rotation wrote it back under the new master key.
    proj = make_project(project, n_subjects=2)
    paths, root = proj.paths, project
    victim = proj.pids[0]
    target = root / folder / f"{victim}.key"
    copy = target.read_bytes()
    Erasure(paths).erase(victim)
    target.write_bytes(copy)
    rel = f"{folder}/{victim}.key"
    assert [f.path for f in doctor(paths).findings if f.pid == victim] == [rel]
    core = PrivacyCore(paths)
    assert core.data_keys and core.vault  # opened before the rotation began
    write, purges = sealed_mod.atomic_write_bytes, []

    def rewrite(path, data, **kwargs):
        if Path(path) == target and not purges:
            purges.append(doctor(paths, purge=True, core=core))
        return write(path, data, **kwargs)

    monkeypatch.setattr(sealed_mod, "atomic_write_bytes", rewrite)
    rotate_master_key(paths)
    monkeypatch.setattr(sealed_mod, "atomic_write_bytes", write)
    (purge,) = purges
    assert purge.locked == {str(Path(rel).parent): [rel]}
    assert [f.path for f in doctor(paths).findings if f.pid == victim] == [rel]
    report = doctor(paths, purge=True)
    assert report.locked == {} and doctor(paths).ok
    new = load_master_key(paths.master_key, create=False)
    assert _victims_keys(root, victim, folder, [new]) == []


def test_rotation_with_the_key_in_the_environment_needs_the_new_key(project, monkeypatch):
    proj = make_project(project, n_subjects=2, enrol=False)
    paths = proj.paths
    old = paths.master_key.read_text().strip()
    paths.master_key.unlink()
    monkeypatch.setenv(MASTER_KEY_ENV, old)
    with pytest.raises(MasterKeyError, match="--new-key-file"):
        rotate_master_key(paths)
    new = os.urandom(32)
    report = rotate_master_key(paths, new_key=new)
    assert report.key_location == MASTER_KEY_ENV and "VISAGE_MASTER_KEY" in report.note
    assert not paths.master_key.exists()
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(new).decode())
    pid = proj.pids[1]
    image_id = sorted(proj.images[pid])[0]
    assert RawStore(paths).read_image(pid, image_id) == proj.images[pid][image_id]


# -- visage privacy doctor -----------------------------------------------------------------


def test_doctor_finds_an_anchor_template_without_template_or_key(project):
    # An anchor template left behind (a half-restored backup) without the subject's template and
    # key, and one of a subject the registry does not know: found like an orphan template, purged.
    proj = make_project(project, n_subjects=3)
    paths = proj.paths
    gallery = proj.gallery()
    pid = proj.pids[0]
    anchor = gallery.anchor_path(pid)
    assert anchor.is_file()
    stranger = "p" + "e" * 16
    foreign = gallery.anchor_path(stranger)
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_bytes(anchor.read_bytes())
    gallery.template_path(pid).unlink()
    gallery.keys.path(pid).unlink()
    found = {(f.kind, f.path) for f in doctor(paths).findings if f.pid in (pid, stranger)}
    assert found == {
        ("no_key", anchor.relative_to(paths.root).as_posix()),
        ("unknown_subject", foreign.relative_to(paths.root).as_posix()),
    }
    doctor(paths, purge=True)
    assert not anchor.exists() and not foreign.exists()
    assert not [f for f in doctor(paths).findings if f.path.startswith("gallery/")]


def test_doctor_finds_an_anchor_template_the_ledger_does_not_record(project):
    # An older anchor put back (from a copy, a backup) after a privileged re-enrolment moved it:
    # never compared with; the doctor names it and purges it (a dpo re-enrolment re-anchors).
    proj = make_project(project, n_subjects=3)
    paths = proj.paths
    gallery = proj.gallery()
    pid = proj.pids[0]
    anchor = gallery.anchor_path(pid)
    stale = anchor.read_bytes()
    template, _ = gallery.template(pid)
    gallery.enroll(pid, -template[None, :])  # a dpo's: another template, the anchor moves
    assert not [f for f in doctor(paths).findings if f.pid == pid]
    anchor.write_bytes(stale)
    found = [(f.kind, f.path) for f in doctor(paths).findings if f.pid == pid]
    assert found == [("unrecorded_anchor", anchor.relative_to(paths.root).as_posix())]
    doctor(paths, purge=True)
    assert not anchor.exists() and gallery.template_path(pid).exists()


# -- the CLI -------------------------------------------------------------------------------


def test_cli_seal_doctor_decrypt_and_rotate(project, tmp_path, monkeypatch):
    proj = make_project(project, n_subjects=3, enrol=False)
    paths = proj.paths
    monkeypatch.chdir(paths.root)
    runner = CliRunner()
    pid = proj.pids[1]
    image_id = sorted(proj.images[pid])[0]
    # A plaintext copy of a sealed image left in data/raw (a restored old backup).
    leftover = paths.raw / pid / f"{image_id}.png"
    leftover.write_bytes(proj.images[pid][image_id])
    r = runner.invoke(app, ["privacy", "doctor", "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.output)
    assert doc["counts"] == {"plaintext": 1} and doc["findings"][0]["action"] == "purge"
    r = runner.invoke(app, ["privacy", "doctor", "--purge"])
    assert r.exit_code == 0, r.output
    assert not leftover.exists()
    assert runner.invoke(app, ["privacy", "doctor"]).exit_code == 0
    r = runner.invoke(app, ["privacy", "seal", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["raw_sealed"] == 0
    sealed = paths.raw / pid / f"{image_id}.sealed"
    out = tmp_path / "probe.png"
    r = runner.invoke(app, ["data", "decrypt", str(sealed), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == proj.images[pid][image_id]
    assert out.stat().st_mode & 0o777 == 0o600
    r = runner.invoke(app, ["data", "decrypt", str(sealed), "--out", str(paths.raw / "x.png")])
    assert r.exit_code == 2 and "inside the project" in r.output
    new_key = tmp_path / "new.key"
    new_key.write_text(base64.b64encode(os.urandom(32)).decode())
    r = runner.invoke(app, ["privacy", "rotate-master-key", "--new-key-file", str(new_key)])
    assert r.exit_code == 0, r.output
    assert paths.master_key.read_text().strip() == new_key.read_text().strip()
    # An erased subject's file is refused even by the DPO's decrypt.
    victim = proj.pids[2]
    kept = paths.raw / victim / f"{sorted(proj.images[victim])[0]}.sealed"
    copy = tmp_path / "kept.sealed"
    copy.write_bytes(kept.read_bytes())
    assert runner.invoke(app, ["privacy", "erase", victim]).exit_code == 0
    r = runner.invoke(app, ["data", "decrypt", str(copy), "--out", str(tmp_path / "y.png")])
    assert r.exit_code == 2 and "erased" in r.output
    assert not (tmp_path / "y.png").exists()


def test_manifest_and_tables_stay_readable_without_any_key(project):
    """subjects.parquet, images.parquet and the processed manifest hold no image bytes: they
    stay in clear (DVC diffs them), and nothing in them decodes as an image."""
    proj = make_project(project, n_subjects=2, enrol=False)
    for f in (
        proj.paths.raw / "subjects.parquet",
        proj.paths.raw / "images.parquet",
        proj.paths.processed / "manifest.parquet",
    ):
        df = pd.read_parquet(f)
        assert len(df) and not _opens_as_image(f)
        blob = f.read_bytes()
        assert not any(png in blob for imgs in proj.images.values() for png in imgs.values())
        assert not any(
            np.asarray(Image.open(io.BytesIO(png)))[:2].tobytes() in blob
            for imgs in proj.images.values()
            for png in imgs.values()
        )


def test_doctor_finds_a_face_decrypted_anywhere_under_data_and_leaves_it_to_a_person(project):
    # `visage data decrypt` refuses to write inside the project, but a shell copy does not
    # ask: a face saved as data/leak.png, data/myexport/face.png or ./leak-root.png was not
    # found ("0 finding(s)"), while the help promised "plaintext faces in data/".
    proj = make_project(project, n_subjects=3)
    paths = proj.paths
    raw_file = next(paths.raw.glob("p*/*.sealed"))
    face = PrivacyCore(paths).data_keys.open(raw_file.read_bytes())
    assert sniff_bytes(face) in IMAGE_KINDS
    leaks = [paths.root / "data" / "leak.png", paths.root / "data" / "myexport" / "face.png"]
    leaks.append(paths.root / "leak-root.png")
    for leak in leaks:
        leak.parent.mkdir(parents=True, exist_ok=True)
        leak.write_bytes(face)
    (paths.root / "data" / "notes.txt").write_text("not an image")
    found = {(f.kind, f.path, f.action) for f in doctor(paths).findings}
    assert found == {
        ("stray_image", leak.relative_to(paths.root).as_posix(), "review") for leak in leaks
    }
    # A person decides (it may be the only copy of a source set): --purge leaves it, and the
    # command still exits 1 saying what to do with it.
    doctor(paths, purge=True)
    assert all(leak.is_file() for leak in leaks)
    r = CliRunner().invoke(app, ["privacy", "doctor", "--purge"])
    assert r.exit_code == 1 and "marked review" in " ".join(r.output.split())


def test_doctor_lists_face_images_in_mlflow_models_notebooks_and_reports_for_review(project):
    # A re-encoded or cropped face is no exact copy: the erasure cannot know it, and doctor
    # looked only under data/ and at the top, so a debug JPEG logged to MLflow, a crop beside
    # the models or a "hardest pair" plot went unnoticed. The project's own figures are not
    # faces: they are not listed.
    proj = make_project(project, n_subjects=3)
    paths = proj.paths
    face = Image.open(io.BytesIO(next(iter(proj.images[proj.pids[0]].values()))))
    run = paths.mlruns / "1" / "0123abcd" / "artifacts"
    leaks = {
        run / "debug" / "raw.jpg": "JPEG",
        paths.root / "reports" / "plots" / "hardest_pair.png": "PNG",
        paths.models / "debug_crop.png": "PNG",
        paths.root / "notebooks" / "crop.png": "PNG",
    }
    for leak, fmt in leaks.items():
        leak.parent.mkdir(parents=True, exist_ok=True)
        face.resize((24, 24)).save(leak, format=fmt)
    own = [
        run / "figures" / "roc_group.png",
        run / "figures" / "fnir_vs_gallery_size.png",
        paths.root / "reports" / "privacy" / "sign.png",
    ]
    for figure in own:
        figure.parent.mkdir(parents=True, exist_ok=True)
        face.save(figure, format="PNG")
    found = {(f.kind, f.path, f.action) for f in doctor(paths).findings}
    assert found == {
        ("stray_image", leak.relative_to(paths.root).as_posix(), "review") for leak in leaks
    }


class _Remote:
    """A DVC remote whose server is down (the local stack stopped): botocore raises."""

    name, local_path, asked = "remote:stack", None, 0

    def exists(self, oid):
        self.asked += 1
        raise RuntimeError("EndpointConnectionError")


class _Local:
    name, local_path = "cache", Path("/cache")

    def exists(self, oid):
        return True

    def read(self, oid):
        return b"[]"


def test_doctor_passes_over_a_remote_it_cannot_reach_and_an_erasure_does_not():
    # `visage privacy doctor` ended in a botocore traceback after `visage stack down`: it reads
    # the .dir manifests from every store. It now passes over a dead remote, asked once; an
    # erasure, which must not pass over a copy, still stops on it.
    from visage_ml.rights.dvc_objects import read_object

    remote, dead = _Remote(), set()
    for oid in ("a.dir", "b.dir"):
        assert read_object([remote, _Local()], oid, unreachable=dead) == b"[]"
    assert dead == {"remote:stack"} and remote.asked == 1
    with pytest.raises(RuntimeError):
        read_object([_Remote(), _Local()], "a.dir")


class _Refused(_Remote):
    """A remote that answers, but refuses: s3fs turns a 403 (AccessDenied) into PermissionError."""

    def exists(self, oid):
        self.asked += 1
        raise PermissionError("AccessDenied")


def test_an_erasure_does_not_pass_over_a_remote_that_refuses_it():
    # read_object's docstring: without `unreachable` "its error is raised" (an erasure must
    # not pass over a copy). An OSError (403 -> PermissionError, ECONNREFUSED) was instead
    # taken for "not in this store" and the next store's copy returned.
    from visage_ml.rights.dvc_objects import read_object

    with pytest.raises(PermissionError):
        read_object([_Refused(), _Local()], "a.dir")
    dead: set[str] = set()
    assert read_object([_Refused(), _Local()], "a.dir", unreachable=dead) == b"[]"
    assert dead == {"remote:stack"}
