"""No resurrection: keyed tombstones, re-imports and regenerations after an erasure, restored
backups of data/raw, gallery/ and the key rings."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.prepare import prepare
from visage_ml.data.processed import load_processed
from visage_ml.data.rawstore import read_images, read_subjects
from visage_ml.privacy import tombstones
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.tombstones import MSG_KEY_LOST, TombstoneKeyError, Tombstones
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.sealing import doctor
from visage_ml.serving.gallery import Gallery

ZELDA, YORICK = "Zelda_Testperson", "Yorick_Examplename"
LEGAL = "art6(1)(f)+art9(2)(j)"
PID = "p" + "a" * 16
DIM = 16


def jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def run_import(project: Path, root: Path):
    basis = ImportBasis.from_options(legal_basis=LEGAL)
    return import_dataset("imagefolder", root, paths=ProjectPaths(project), basis=basis)


def reasons(result) -> dict[str, str]:
    return {s.rel: s.reason for s in result.skipped}


# -- the tombstone file ------------------------------------------------------------------------


def test_a_tombstone_reveals_nothing_without_its_key(tmp_path):
    t = Tombstones(tmp_path / "privacy" / "tombstones.jsonl", tmp_path / "secrets" / "t.key")
    sha = hashlib.sha256(b"photo").hexdigest()
    assert t.add(PID, refs=["HR-4711 Zelda"], sha256s=[sha])
    assert not t.add(PID, refs=["HR-4711 Zelda"], sha256s=[sha])  # once per subject
    text = t.path.read_text()
    for leak in ("4711", "Zelda", "zelda", sha, PID):
        assert leak not in text
    assert t.path.stat().st_mode & 0o777 == 0o600
    assert t.key_path.stat().st_mode & 0o777 == 0o600
    # With the key: the same person (case and spaces do not matter) and the same file match.
    assert t.has_ref("  hr-4711   ZELDA ") and t.has_file(sha) and t.has_subject(PID)
    assert not t.has_ref("HR-4712 Zelda") and not t.has_file(hashlib.sha256(b"x").hexdigest())
    # Another key sees nothing in the same file: the MACs are keyed.
    other = Tombstones(t.path, tmp_path / "other.key")
    other.key_path.write_bytes(os.urandom(32))
    assert not other.has_ref("HR-4711 Zelda") and not other.has_file(sha)


def test_a_lost_tombstone_key_stops_imports_instead_of_letting_people_back(tmp_path):
    t = Tombstones(tmp_path / "privacy" / "tombstones.jsonl", tmp_path / "secrets" / "t.key")
    t.add(PID, refs=["HR-1"])
    t.key_path.unlink()
    fresh = Tombstones(t.path, t.key_path)
    with pytest.raises(TombstoneKeyError, match="never creates a new one"):
        fresh.has_ref("HR-1")
    with pytest.raises(TombstoneKeyError):
        fresh.add("p" + "b" * 16, refs=["HR-2"])
    assert not t.key_path.exists()
    assert "Restore secrets/tombstone.key" in MSG_KEY_LOST


def test_a_torn_last_line_does_not_break_the_next_tombstone(tmp_path):
    t = Tombstones(tmp_path / "t.jsonl", tmp_path / "t.key")
    t.add(PID, refs=["HR-1"])
    with open(t.path, "ab") as fh:
        fh.write(b'{"v":1,"subject":"ab')  # a crash in the middle of an append
    t2 = Tombstones(t.path, t.key_path)
    assert t2.add("p" + "b" * 16, refs=["HR-2"])
    assert t2.has_ref("HR-1") and t2.has_ref("HR-2") and len(t2) == 2


def test_an_erased_person_is_known_under_any_spelling_of_their_name(project, tmp_path, monkeypatch):
    # A copy made through macOS spells names NFD, people retype case and spaces, editors leave
    # zero-width characters and full-width letters: each is the erased person.
    paths = ProjectPaths(project)
    t = Tombstones.open(paths)
    nfc = unicodedata.normalize("NFC", "Zoë_Testperson")
    t.add(PID, refs=[f"imagefolder:{nfc}"])
    # A line written before references were Unicode-normalised (case-folded only, NFD as the
    # import saw it) still matches.
    with monkeypatch.context() as m:
        m.setattr(tombstones, "normalise_ref", tombstones._legacy_ref)
        t.add("p" + "b" * 16, refs=[unicodedata.normalize("NFD", "imagefolder:Åsa_Example")])
    for spelling in (
        unicodedata.normalize("NFD", nfc),
        " ZOË_TESTPERSON ",
        "Zoë\u200b_Testperson",
        "\uff3aoë_Testperson",
        unicodedata.normalize("NFC", "Åsa_Example"),
    ):
        assert t.has_ref(f"imagefolder:{spelling}"), ascii(spelling)
    assert not t.has_ref("imagefolder:Zoe_Testperson")  # another name: no diaeresis
    src = tmp_path / "faces"
    put(src / unicodedata.normalize("NFD", nfc) / "new.jpg", jpeg(1))
    put(src / YORICK / "a.jpg", jpeg(2))
    result = run_import(project, src)
    assert result.subjects_added == 1 and result.images_imported == 1
    assert set(reasons(result).values()) == {"erased_subject"}


# -- re-import and regeneration after an erasure -----------------------------------------------


def test_reimporting_the_original_folder_after_an_erasure_skips_the_person(project, tmp_path):
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    put(src / ZELDA / "b.jpg", jpeg(2))
    put(src / YORICK / "c.jpg", jpeg(3))
    first = run_import(project, src)
    assert first.subjects_added == 2
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    zelda = core.vault.find(f"imagefolder:{ZELDA}")
    Erasure(paths, core=core).erase(zelda)

    again = run_import(project, src)
    assert again.subjects_added == 0 and again.images_imported == 0
    assert reasons(again) == {
        f"{ZELDA}/a.jpg": "erased_subject",
        f"{ZELDA}/b.jpg": "erased_subject",
        f"{YORICK}/c.jpg": "duplicate",
    }
    assert again.skipped_by_reason["erased_subject"] == 2
    report = json.loads(again.report_path.read_text())
    assert report["reason_text"]["erased_subject"].startswith("the person, or this file")
    # The same photos under another name are the same files: refused, and so is the new
    # photo that came with them (the person is the erased one).
    renamed = tmp_path / "renamed"
    put(renamed / "Z_Testperson" / "x.jpg", jpeg(2))
    put(renamed / "Z_Testperson" / "new.jpg", jpeg(9))
    put(renamed / "Someone_Else" / "y.jpg", jpeg(10))
    third = run_import(project, renamed)
    assert reasons(third) == {
        "Z_Testperson/x.jpg": "erased_subject",
        "Z_Testperson/new.jpg": "erased_subject",
    }
    assert third.subjects_added == 1 and third.images_imported == 1
    # A new photo under the erased person's reference: refused by the reference.
    later = tmp_path / "later"
    put(later / ZELDA / "fresh.jpg", jpeg(11))
    assert reasons(run_import(project, later)) == {f"{ZELDA}/fresh.jpg": "erased_subject"}
    # Nobody was registered again under a new pid.
    core = PrivacyCore(paths)
    assert core.vault.find(f"imagefolder:{ZELDA}") is None
    assert len(core.registry) == 3 and core.subject(zelda).erased


def test_regenerating_synthfaces_never_brings_an_erased_subject_back(tiny_project):
    root = tiny_project()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    acquire_synthfaces(paths, params, progress=False)
    victim = str(read_subjects(paths.raw)["pid"].iloc[0])
    Erasure(paths).erase(victim)
    shutil.rmtree(paths.raw)
    shutil.rmtree(paths.scenes)
    result = acquire_synthfaces(paths, params, progress=False)
    assert result.generated and result.skipped == {"erased_subject": 1}
    assert victim not in set(read_subjects(paths.raw)["pid"])
    assert victim not in set(read_images(paths.raw)["pid"])
    assert not (paths.raw / victim).exists()
    assert not PrivacyCore(paths).data_keys.exists(victim)  # no new key for them either


# -- restoring an old backup ---------------------------------------------------------------


def _embed(crops: np.ndarray) -> np.ndarray:
    w = np.random.default_rng(3).normal(size=(int(np.prod(crops.shape[1:])), DIM))
    e = crops.reshape(len(crops), -1).astype(np.float32) @ w.astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_a_restored_backup_never_brings_the_subject_back(tiny_project, tmp_path):
    """The operator restores data/raw, gallery/ and even privacy/keys from before the erasure:
    prepare leaves the subject out, the gallery never scores them, the doctor finds every
    leftover and purges it."""
    root = tiny_project()
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    acquire_synthfaces(paths, params, progress=False)
    prepare(paths, params)
    data = load_processed(paths)
    core = PrivacyCore(paths)
    gallery = Gallery.open(paths, model_version="fake-1", embedding_dim=DIM, threshold=0.5)
    rows = data.manifest.groupby("pid")["row"].apply(list)
    templates = {pid: _embed(data.faces[r]) for pid, r in rows.items()}
    gallery.enroll_many(templates)
    victim = str(data.manifest["pid"].iloc[0])
    assert victim in gallery.searchable()
    backup = tmp_path / "backup"
    for name in ("data/raw", "gallery", "privacy/keys"):
        shutil.copytree(root / name, backup / name, symlinks=True)

    Erasure(paths, core=core).erase(victim)
    for name in ("data/raw", "gallery", "privacy/keys"):
        shutil.rmtree(root / name)
        shutil.copytree(backup / name, root / name, symlinks=True)
    assert (paths.raw / victim).is_dir() and PrivacyCore(paths).data_keys.exists(victim)

    # prepare: the registry says erased, so the subject is not even opened.
    report = prepare(paths, params)
    manifest = pd.read_parquet(paths.processed / "manifest.parquet")
    detection = pd.read_parquet(paths.processed / "detection.parquet")
    assert victim not in set(manifest["pid"]) and victim not in set(detection["pid"])
    assert report["subjects_excluded"].get("erased", 0) >= 1
    # the gallery: the restored template and key are never loaded nor scored.
    restored = Gallery.open(paths, model_version="fake-1", embedding_dim=DIM, threshold=0.5)
    assert victim not in restored.searchable()
    probe = templates[victim].mean(axis=0, keepdims=True)
    assert all(m.pid != victim for m in restored.identify(probe[0], top_k=5))
    # the doctor lists the leftovers (files of an erased subject, their restored keys) ...
    found = doctor(paths)
    kinds = {(f.kind, f.path.split("/")[0]) for f in found.findings if f.pid == victim}
    assert ("erased_subject", "data") in kinds and ("erased_subject", "gallery") in kinds
    assert ("erased_subject", "privacy") in kinds
    # ... and purges them, leaving the project consistent.
    done = doctor(paths, purge=True)
    assert done.purged >= len([f for f in found.findings if f.pid == victim])
    assert not (paths.raw / victim).exists()
    assert victim not in set(read_subjects(paths.raw)["pid"])
    assert not PrivacyCore(paths).data_keys.exists(victim)
    assert not list(paths.gallery.rglob(f"{victim}*"))
    assert doctor(paths).ok
    prepare(paths, params)


def test_an_import_with_tombstones_but_no_key_stops_with_the_fix(project, tmp_path):
    from typer.testing import CliRunner

    from visage_ml.app.cli import app

    paths = ProjectPaths(project)
    Tombstones.open(paths).add(PID, refs=["imagefolder:Someone"])
    paths.tombstone_key.unlink()
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    r = CliRunner().invoke(app, ["data", "import", "imagefolder", str(src), "--legal-basis", LEGAL])
    assert r.exit_code == 2 and "tombstone.key" in r.output
    assert not paths.raw.exists()
