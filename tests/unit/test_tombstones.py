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
from visage_ml.privacy.tombstones import (
    MSG_KEY_LOST,
    TombstoneFileError,
    TombstoneKeyError,
    Tombstones,
)
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.sealing import doctor
from visage_ml.serving.gallery import Gallery

ZELDA, YORICK = "Zelda_Testperson", "Yorick_Examplename"
LEGAL = "art6(1)(f)+art9(2)(j)"
PID = "p" + "a" * 16
DIM = 16


def jpeg(seed: int, side: int = 64) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
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
    # "HR-4711", not "4711": four digits lie in the file's hex MACs one run in a few hundred.
    for leak in ("HR-4711", "hr-4711", "Zelda", "zelda", sha, PID):
        assert leak not in text
    assert t.path.stat().st_mode & 0o777 == 0o600
    assert t.key_path.stat().st_mode & 0o777 == 0o600
    # With the key: the same person (case and spaces do not matter) and the same file match.
    assert t.has_ref("  hr-4711   ZELDA ") and t.has_file(sha) and t.has_subject(PID)
    assert not t.has_ref("HR-4712 Zelda") and not t.has_file(hashlib.sha256(b"x").hexdigest())
    # Another key (one from another backup) answers nothing: not "not erased", which would let
    # the person back in; the set's MAC in the header does not verify under it.
    other = Tombstones(t.path, tmp_path / "other.key")
    other.key_path.write_bytes(os.urandom(32))
    with pytest.raises(TombstoneFileError, match="not written under the tombstone key"):
        other.has_ref("HR-4711 Zelda")


def _hex_macs(doc) -> set[str]:
    """Every 64-hex-digit string a JSON value holds, however nested."""
    if isinstance(doc, str):
        return {doc} if len(doc) == 64 and all(c in "0123456789abcdef" for c in doc) else set()
    if isinstance(doc, dict):
        return set().union(set(), *(_hex_macs(v) for v in doc.values()))
    if isinstance(doc, list):
        return set().union(set(), *(_hex_macs(v) for v in doc))
    return set()


def _erase_people(t: Tombstones, n: int) -> dict[str, tuple[str, str]]:
    """``n`` erasures, each of a pid with a name and a file: {pid: (name, sha256)}."""
    people = {
        f"p{i:016x}": (f"HR-{1000 + i} Person{i}", hashlib.sha256(b"photo%d" % i).hexdigest())
        for i in range(n)
    }
    for pid, (ref, sha) in people.items():
        t.add(pid, refs=[ref], sha256s=[sha])
    return people


def test_with_the_key_a_name_or_a_file_does_not_lead_to_the_erased_pid(tmp_path):
    """Whoever holds the tombstone key can ask "was this name, this file, this pid erased?",
    and nothing more: no record and no position in the file ties an erased name or file to the
    pid the ledger lists in clear (else the name would re-link to that pid's whole history)."""
    t = Tombstones(tmp_path / "privacy" / "tombstones.jsonl", tmp_path / "secrets" / "t.key")
    private_key = bytes(range(32))  # fixed: the file's order is then the same in every run
    t.key_path.parent.mkdir(parents=True)
    t.key_path.write_bytes(private_key)
    os.chmod(t.key_path, 0o600)
    people = _erase_people(t, 30)
    ledger_pids = [*people, *(f"p{i:016x}" for i in range(100, 130))]  # erased and others

    def mac(kind: str, value: str) -> str:
        return Tombstones.mac_with(private_key, kind, value)

    records = [_hex_macs(json.loads(ln)) for ln in t.path.read_text().splitlines() if ln.strip()]
    order = [m for rec in records for m in sorted(rec)]  # every MAC, in file order
    pid_at = {order.index(mac("pid", p)): p for p in ledger_pids if mac("pid", p) in order}
    assert set(pid_at.values()) == set(people)  # "was this pid erased?" is answered
    nearest_hits = 0
    for pid, (ref, sha) in people.items():
        name, photo = mac("ref", tombstones.normalise_ref(ref)), mac("sha256", sha)
        assert name in order and photo in order  # "was this name / file erased?" is answered
        # Attack 1: the record that holds the name (or the photo) names the pid too.
        for rec in records:
            if name in rec or photo in rec:
                assert not {p for p in ledger_pids if mac("pid", p) in rec}, "record links"
                assert not (name in rec and photo in rec), "record links name and photo"
        # Attack 2: one erasure writes its MACs together, so the pid nearest the name is theirs.
        at = order.index(name)
        nearest_hits += pid_at[min(pid_at, key=lambda i: abs(i - at))] == pid
    assert nearest_hits <= 5, f"file position gives the pid of {nearest_hits} of 30 names"


def test_the_file_is_the_same_whatever_order_the_erasures_came_in(tmp_path):
    """Nothing in the file depends on which erasure wrote which MAC, or when."""
    a = Tombstones(tmp_path / "a" / "t.jsonl", tmp_path / "t.key")
    people = _erase_people(a, 5)
    b = Tombstones(tmp_path / "b" / "t.jsonl", tmp_path / "t.key")
    for pid, (ref, sha) in reversed(people.items()):
        b.add(pid, refs=[ref], sha256s=[sha])
    assert a.path.read_bytes() == b.path.read_bytes()
    assert "day" not in a.path.read_text()
    # A write killed before its rename left the set it was writing: the next one removes it.
    killed = a.path.with_name(f".{a.path.name}.x1y2.tmp")
    killed.write_bytes(a.path.read_bytes())
    a.add("p" + "f" * 16, refs=["HR-9"])
    assert not killed.exists() and a.has_ref("HR-9")
    # MACs put out of order (by hand, by another tool) are damage, not a format to repair: the
    # file is only ever written whole. Every question fails and the file is left as found.
    lines = a.path.read_text().splitlines()
    a.path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    damaged = a.path.read_bytes()
    with pytest.raises(TombstoneFileError, match="out of order"):
        Tombstones(a.path, a.key_path).has_ref("HR-9")
    assert a.path.read_bytes() == damaged


def test_an_erased_images_plaintext_is_asked_for_apart_from_the_files_it_stops(tmp_path):
    """The scans for plaintext copies (an MLflow artefact, a decrypted file) ask the set, not
    the ledger: an erased image's PNG hash is one more unlinked MAC, of a kind of its own."""
    t = Tombstones(tmp_path / "privacy" / "tombstones.jsonl", tmp_path / "secrets" / "t.key")
    png, source = hashlib.sha256(b"png").hexdigest(), hashlib.sha256(b"jpeg").hexdigest()
    assert t.add(PID, refs=["HR-1"], sha256s=[source], plains=[png])
    assert t.has_plain(png) and not t.has_plain(source) and not t.has_file(png)
    assert png not in t.path.read_text() and len(t) == 4
    # A resumed erasure brings nothing new: nothing is written.
    before = t.path.read_bytes()
    assert not t.add(PID, plains=[png]) and t.path.read_bytes() == before
    # One begun by an earlier version left its tombstone without them: they join the set.
    later = hashlib.sha256(b"png 2").hexdigest()
    assert not t.add(PID, plains=[later]) and t.has_plain(later)
    lines = t.path.read_text().splitlines()
    assert json.loads(lines[0])["n"] == 5 and lines[1:] == sorted(lines[1:]) and len(lines) == 6


def _v1_line(key: bytes, pid: str, refs: list[str], sha256s: list[str]) -> bytes:
    """A line as versions before 2 wrote it: one per erased subject, its MACs grouped."""
    macs = [Tombstones.mac_with(key, "ref", tombstones.normalise_ref(r)) for r in refs]
    macs += [Tombstones.mac_with(key, "sha256", s) for s in sha256s]
    doc = {
        "v": 1,
        "subject": Tombstones.mac_with(key, "pid", pid),
        "macs": sorted(macs),
        "day": "2025-01-31",
    }
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def test_a_tombstone_file_of_the_older_format_is_rewritten_without_its_links(tmp_path):
    t = Tombstones(tmp_path / "privacy" / "tombstones.jsonl", tmp_path / "secrets" / "t.key")
    t.key_path.parent.mkdir(parents=True)
    key = os.urandom(32)
    t.key_path.write_bytes(key)
    t.path.parent.mkdir(parents=True)
    shas = [hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()]
    older = _v1_line(key, PID, ["HR-1 Zelda"], shas) + _v1_line(key, "p" + "b" * 16, ["HR-2"], [])
    t.path.write_bytes(older + b'{"v":1,"subject":"ab')  # and a torn append
    os.chmod(t.path, 0o600)
    v1_macs = _hex_macs(json.loads(older.splitlines()[0])) | _hex_macs(
        json.loads(older.splitlines()[1])
    )
    # Read as it is: every question is answered as before.
    fresh = Tombstones(t.path, t.key_path)
    assert fresh.has_ref("hr-1 zelda") and fresh.has_ref("HR-2") and fresh.has_file(shas[1])
    assert fresh.has_subject(PID) and fresh.has_subject("p" + "b" * 16)
    # ... and the first reading left the file in the current format, no MAC lost.
    lines = t.path.read_text().splitlines()
    assert json.loads(lines[0])["v"] == 2 and json.loads(lines[0])["n"] == len(v1_macs)
    assert lines[1:] == [json.dumps(m) for m in sorted(v1_macs)]
    assert t.path.stat().st_mode & 0o777 == 0o600
    assert not list(t.path.parent.glob("*.tmp"))
    # A resumed erasure of a subject of the older file writes nothing; a new one keeps them all.
    assert not fresh.add(PID, refs=["HR-1 Zelda"], sha256s=shas)
    assert fresh.add("p" + "c" * 16, refs=["HR-3"])
    after = {json.loads(ln) for ln in t.path.read_text().splitlines()[1:]}
    assert v1_macs < after and len(after) == len(v1_macs) + 2


def test_an_older_tombstone_file_that_cannot_be_rewritten_still_answers(
    tmp_path, monkeypatch, caplog
):
    t = Tombstones(tmp_path / "t.jsonl", tmp_path / "t.key")
    t.key_path.write_bytes(key := os.urandom(32))
    t.path.write_bytes(older := _v1_line(key, PID, ["HR-1"], []))

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tombstones, "atomic_write_bytes", read_only)
    assert t.has_ref("HR-1") and t.has_subject(PID) and not t.has_ref("HR-2")
    assert t.path.read_bytes() == older
    assert "could not be rewritten (Permission denied)" in caplog.text
    assert "HR-1" not in caplog.text and PID not in caplog.text


def test_an_older_tombstone_file_without_its_key_still_stops_imports(tmp_path):
    t = Tombstones(tmp_path / "t.jsonl", tmp_path / "t.key")
    t.path.write_bytes(_v1_line(os.urandom(32), PID, ["HR-1"], []))
    with pytest.raises(TombstoneKeyError, match="never creates a new one"):
        t.has_ref("HR-1")
    with pytest.raises(TombstoneKeyError):
        t.add("p" + "b" * 16, refs=["HR-2"])
    assert not t.key_path.exists()


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
    # An older version (appending a line per subject) crashed in the middle of an append.
    t = Tombstones(tmp_path / "t.jsonl", tmp_path / "t.key")
    t.key_path.write_bytes(os.urandom(32))
    t.path.write_bytes(_v1_line(t.key_path.read_bytes(), PID, ["HR-1"], []) + b'{"v":1,"subj')
    t2 = Tombstones(t.path, t.key_path)
    assert t2.add("p" + "b" * 16, refs=["HR-2"])
    assert t2.has_ref("HR-1") and t2.has_ref("HR-2") and len(t2) == 4  # 2 pids, 2 references
    assert b'"subject"' not in t.path.read_bytes()


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
    assert result.skipped_by_reason == {"erased_subject": 1} and reasons(result) == {}


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
    # Counted, not listed by path (her folder is her name).
    assert reasons(again) == {f"{YORICK}/c.jpg": "duplicate"}
    assert again.skipped_by_reason == {"duplicate": 1, "erased_subject": 2}
    report = json.loads(again.report_path.read_text())
    assert report["reason_text"]["erased_subject"].startswith("the person, or this file")
    assert report["files_skipped"] == 3 and ZELDA not in again.report_path.read_text()
    # The same photos under another name are the same files: refused, and so is the new
    # photo that came with them (the person is the erased one).
    renamed = tmp_path / "renamed"
    put(renamed / "Z_Testperson" / "x.jpg", jpeg(2))
    put(renamed / "Z_Testperson" / "new.jpg", jpeg(9))
    put(renamed / "Someone_Else" / "y.jpg", jpeg(10))
    third = run_import(project, renamed)
    assert third.skipped_by_reason == {"erased_subject": 2} and reasons(third) == {}
    assert "Z_Testperson" not in third.report_path.read_text()
    assert third.subjects_added == 1 and third.images_imported == 1
    # A new photo under the erased person's reference: refused by the reference.
    later = tmp_path / "later"
    put(later / ZELDA / "fresh.jpg", jpeg(11))
    fresh = run_import(project, later)
    assert fresh.skipped_by_reason == {"erased_subject": 1} and fresh.images_imported == 0
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
