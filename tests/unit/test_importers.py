"""`visage data import`: each format, pseudonymisation, legal basis, bad inputs, atomicity."""

import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import ProjectPaths, SynthParams, load_params
from visage_ml.data import imagecheck, importers
from visage_ml.data.importers import (
    ImportBasis,
    ImportInputError,
    band_midpoint,
    import_dataset,
    parse_lfw_pairs,
)
from visage_ml.data.rawstore import RawStore, read_images, read_subjects
from visage_ml.data.synth import make_population, render_face
from visage_ml.privacy.consent import sha256_text
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.tombstones import Tombstones

ZELDA, YORICK, XAVIER = "Zelda_Testperson", "Yorick_Examplename", "Xavier_Probandus"
NAMES = (ZELDA, YORICK, XAVIER)
LEGAL = "art6(1)(f)+art9(2)(j)"


# ---------------------------------------------------------------------------------------------
# Fixture data: tiny images drawn with PIL (noise, so every file has distinct bytes)
# ---------------------------------------------------------------------------------------------


def photo(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(photo(seed, size))


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height pixels but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@functools.cache
def synth_people() -> tuple[SynthParams, list]:
    params = SynthParams(n_identities=len(NAMES))
    return params, make_population(params, 7)


def face_jpeg(person: int, shot: int) -> bytes:
    """A SynthFaces photograph (realistic LFW-like fixture) of person ``person``."""
    params, people = synth_people()
    image, _ = render_face(
        people[person], rng=np.random.default_rng([person, shot]), params=params, size=96
    )
    return encode(image)


def make_lfw(base: Path, per_person: int = 3) -> Path:
    for i, name in enumerate(NAMES):
        for k in range(1, per_person + 1):
            put(base / "lfw" / name / f"{name}_{k:04d}.jpg", face_jpeg(i, k))
    lines = ["2\t2"]
    lines += [f"{ZELDA}\t1\t2", f"{YORICK}\t1\t3"]  # fold 0 matched
    lines += [f"{ZELDA}\t1\t{YORICK}\t2", f"{YORICK}\t3\t{XAVIER}\t1"]  # fold 0 mismatched
    lines += [f"{XAVIER}\t1\t2", f"{ZELDA}\t2\t3"]  # fold 1 matched
    lines += [f"{ZELDA}\t3\t{XAVIER}\t2", f"{XAVIER}\t9\t{YORICK}\t1"]  # image 9 does not exist
    (base / "pairs.txt").write_text("\n".join(lines) + "\n")
    (base / "pairsDevTest.txt").write_text(f"1\n{ZELDA}\t1\t3\n{YORICK}\t1\t{XAVIER}\t3\n")
    return base


def basis(**kw) -> ImportBasis:
    return ImportBasis.from_options(**({"legal_basis": LEGAL} | kw))


def run_import(project: Path, fmt: str, root: Path, **kw):
    kw.setdefault("basis", basis())
    return import_dataset(fmt, root, paths=ProjectPaths(project), **kw)


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def files_mentioning(root: Path, needles: tuple[str, ...], *, skip: Path | None = None) -> list:
    """Files under ``root`` whose path or bytes hold any of ``needles``."""
    hits = []
    for p in root.rglob("*"):
        if skip is not None and skip in p.parents:
            continue
        text = p.relative_to(root).as_posix().encode()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
        for needle in needles:
            if needle.encode() in text or needle.encode() in data:
                hits.append((p.relative_to(root).as_posix(), needle))
    return hits


def report_of(result) -> dict:
    return json.loads(result.report_path.read_text())


def reasons_by_file(result) -> dict[str, str]:
    return {f["file"]: f["reason"] for f in report_of(result)["files"]}


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def test_imagefolder_pseudonymises_every_person(project, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "faces"
    for i, name in enumerate((ZELDA, YORICK)):
        put(src / name / "a.jpg", jpeg(10 + i))
        put(src / name / "b.png", encode(photo(20 + i), "PNG"))
    result = run_import(project, "imagefolder", src)
    assert (result.subjects_added, result.images_imported, result.skipped) == (2, 4, [])

    paths = ProjectPaths(project)
    subjects, images = read_subjects(paths.raw), read_images(paths.raw)
    assert len(subjects) == 2 and set(subjects["n_images"]) == {2}
    assert set(subjects["source"]) == {"import:imagefolder"}
    vault = PrivacyCore(paths).vault
    refs = {vault.get(pid)["external_ref"] for pid in subjects["pid"]}
    assert refs == {f"imagefolder:{ZELDA}", f"imagefolder:{YORICK}"}
    # Files are renamed to <pid>/<image_id>.sealed and hold, sealed, PNG bytes whose hash is
    # recorded; on disk they are ciphertext.
    store = RawStore(paths)
    for row in images.itertuples():
        sealed = store.image_path(row.pid, row.image_id).read_bytes()
        assert b"\x89PNG" not in sealed
        png = store.read_image(row.pid, row.image_id)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert hashlib.sha256(png).hexdigest() == row.sha256
    # No name anywhere in the project (data, ledger, snapshot, vault index), nor in the logs.
    for needle in ("Zelda", "Yorick", "Testperson"):
        assert files_mentioning(project, (needle,)) == []
        assert needle not in caplog.text


def test_lfw_import_writes_the_pairs_protocol(project, tmp_path):
    base = make_lfw(tmp_path / "download")
    result = run_import(project, "lfw", base)
    assert (result.subjects_added, result.images_imported) == (3, 9)
    assert (result.pairs_written, result.pairs_dropped) == (9, 1)

    paths = ProjectPaths(project)
    protocol = pd.read_parquet(paths.protocols / "lfw_pairs.parquet")
    assert {"fold", "image_id_a", "image_id_b", "same"} <= set(protocol.columns)
    pid_of = read_images(paths.raw).set_index("image_id")["pid"]
    for row in protocol.itertuples():
        assert row.same == (pid_of[row.image_id_a] == pid_of[row.image_id_b])
    assert sorted(protocol.groupby("fold").size().items()) == [(-1, 2), (0, 4), (1, 3)]
    assert set(protocol.loc[protocol.fold >= 0, "view"]) == {"view2"}
    assert set(protocol.loc[protocol.fold == -1, "view"]) == {"dev_test"}
    # Matched pairs of one person point to two different images of one pid.
    vault = PrivacyCore(paths).vault
    zelda = vault.find(f"lfw:{ZELDA}")
    first = protocol[(protocol.fold == 0) & protocol.same].iloc[0]
    assert pid_of[first.image_id_a] == zelda and first.image_id_a != first.image_id_b
    assert files_mentioning(project / "data", NAMES) == []


def test_lfw_names_folder_with_explicit_pairs_and_reimport_resolves_pairs(project, tmp_path):
    base = make_lfw(tmp_path / "download")
    first = run_import(project, "lfw", base / "lfw", pairs=[base / "pairsDevTest.txt"])
    assert (first.images_imported, first.pairs_written, first.pair_files) == (
        9,
        2,
        ["pairsDevTest.txt"],
    )
    # Importing the same tree again stores nothing, yet pairs resolve to the stored images.
    again = run_import(project, "lfw", base)
    assert again.images_imported == 0
    assert again.skipped_by_reason == {"duplicate": 9}
    assert (again.pairs_written, again.pairs_dropped) == (9, 1)
    protocol = pd.read_parquet(ProjectPaths(project).protocols / "lfw_pairs.parquet")
    assert len(protocol) == 9  # fold -1 replaced, not doubled


def test_an_erasure_cannot_land_between_the_raw_commit_and_the_pairs_write(
    project, tmp_path, monkeypatch
):
    # An erasure that took the data/raw lock after the import committed but before the pairs
    # table was written would leave pairs naming the erased subject's images. The pairs are
    # written under the same lock, so such an erasure waits for the import to finish.
    base = make_lfw(tmp_path / "download")
    paths = ProjectPaths(project)
    real_write = importers.write_lfw_protocol
    erasure = []

    def erasure_in_the_gap(*args, **kwargs):
        store = RawStore(paths, core=PrivacyCore(paths), track=False)
        fd = os.open(store.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            erasure.append("waits for the import")
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            zelda = store.core.vault.find(f"lfw:{ZELDA}")
            with store.transaction() as txn:  # the erasure's data/raw step
                assert txn.remove_subject(zelda)
            erasure.append("erased Zelda")
        finally:
            os.close(fd)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(importers, "write_lfw_protocol", erasure_in_the_gap)
    result = run_import(project, "lfw", base)
    assert result.pairs_written == 9

    images = read_images(paths.raw)
    protocol = pd.read_parquet(paths.protocols / "lfw_pairs.parquet")
    named = set(protocol["image_id_a"]) | set(protocol["image_id_b"])
    assert named <= set(images["image_id"]), erasure
    assert erasure == ["waits for the import"]


def test_malformed_pairs_file_is_refused_before_anything_is_written(project, tmp_path):
    base = make_lfw(tmp_path / "download")
    (base / "pairs.txt").write_text(f"10\t300\n{ZELDA}\t1\t2\n")
    with pytest.raises(ImportInputError, match="the file has 1") as info:
        run_import(project, "lfw", base)
    assert ZELDA not in str(info.value)
    assert not (project / "data").exists()
    bad = tmp_path / "pairsDevTrain.txt"
    bad.write_text(f"1\n{ZELDA}\t1\n{ZELDA}\t1\t{YORICK}\t2\n")
    with pytest.raises(ImportInputError, match="line 2") as info:
        parse_lfw_pairs(bad)
    assert ZELDA not in str(info.value)
    # Numbers str.isdigit takes and int() refuses ('²', thousands of digits), and a header of
    # 10^11 folds (whose fold list alone exhausted memory): the file's fault, said as such.
    for header, number in (("1", "²"), ("1", "9" * 5000), ("99999999999\t1", "2")):
        bad.write_text(f"{header}\n{ZELDA}\t1\t{number}\n{ZELDA}\t1\t{YORICK}\t2\n")
        with pytest.raises(ImportInputError):
            parse_lfw_pairs(bad)
    # A pairs file next to the images that links elsewhere is not read (nor silently skipped,
    # which would import the benchmark for training).
    (base / "pairs.txt").unlink()
    (base / "pairs.txt").symlink_to(bad)
    with pytest.raises(ImportInputError, match="symbolic link"):
        run_import(project, "lfw", base)
    assert not (project / "data").exists()


def test_utkface_labels_from_file_names_one_subject_per_photograph(project, tmp_path):
    src = tmp_path / "UTKFace"
    good = {
        "25_0_2_20170116174525125.jpg.chip.jpg": (25, "male", "asian"),
        "61_1_0_20170109142408075.jpg": (61, "female", "white"),
        "3_1_4_20161219140623097.jpg.chip.jpg": (3, "female", "others"),
    }
    for i, name in enumerate(good):
        put(src / name, jpeg(30 + i))
    for i, name in enumerate(
        ["39_1_20170116174525125.jpg.chip.jpg", "130_0_0_2017.jpg", "25_2_0_2017.jpg"]
    ):
        put(src / name, jpeg(40 + i))
    put(src / "part2" / "1_0_0_20170101000000000.jpg", jpeg(50))
    result = run_import(project, "utkface", src)
    assert (result.subjects_added, result.images_imported) == (3, 3)
    assert result.skipped_by_reason == {"malformed_name": 3, "unexpected_layout": 1}

    paths = ProjectPaths(project)
    images = read_images(paths.raw).set_index("pid")
    subjects = read_subjects(paths.raw).set_index("pid")
    vault = PrivacyCore(paths).vault
    for name, (age, gender, group) in good.items():
        pid = vault.find(f"utkface:{name.split('.')[0]}.jpg")
        assert (int(images.loc[pid, "age"]), images.loc[pid, "gender"]) == (age, gender)
        assert images.loc[pid, "group"] == group
        assert (int(subjects.loc[pid, "age"]), subjects.loc[pid, "group"]) == (age, group)
        assert int(subjects.loc[pid, "n_images"]) == 1


def test_an_erased_utkface_subject_does_not_come_back_through_the_other_copy(project, tmp_path):
    # UTKFace publishes each photograph in the wild (X.jpg) and aligned (X.jpg.chip.jpg): other
    # bytes, other pixels, other file name, the same person.
    stem = "26_1_2_20170116174525125"
    Tombstones.open(ProjectPaths(project)).add(
        "p" + "a" * 16, refs=[f"utkface:{stem}.jpg.chip.jpg"]
    )
    src = tmp_path / "UTKFace"
    put(src / f"{stem}.jpg", jpeg(1))
    put(src / "30_0_0_20170116174525126.jpg", jpeg(2))
    result = run_import(project, "utkface", src)
    assert report_of(result)["skipped_by_reason"] == {"erased_subject": 1}
    assert reasons_by_file(result) == {} and stem not in result.report_path.read_text()
    assert result.subjects_added == 1


UTK_A, UTK_B = "25_0_2_20170116174525125", "61_1_0_20170109142408075"


def pids_by_age(project: Path) -> dict[int, set[str]]:
    """The pids holding images of each age (UTK_A is 25, UTK_B 61: one age per photograph)."""
    images = read_images(ProjectPaths(project).raw)
    return {int(age): set(g["pid"]) for age, g in images.groupby("age")}


def assert_one_pid_per_photograph(project: Path) -> None:
    by_age = pids_by_age(project)
    assert set(by_age) == {25, 61}
    assert len(by_age[25]) == len(by_age[61]) == 1 and by_age[25] != by_age[61]
    subjects = read_subjects(ProjectPaths(project).raw).set_index("pid")
    assert len(subjects) == 2
    assert int(subjects.loc[by_age[25].pop(), "n_images"]) == 2
    assert int(subjects.loc[by_age[61].pop(), "n_images"]) == 2


def test_both_utkface_copies_imported_folder_by_folder_are_one_subject(project, tmp_path):
    # Two pids for one photograph put the same face in the training and the test split, and an
    # access request under one pid would return half of the person's data.
    chips, wild = tmp_path / "UTKFace", tmp_path / "utkface_inthewild"
    for i, stem in enumerate((UTK_A, UTK_B)):
        put(chips / f"{stem}.jpg.chip.jpg", jpeg(80 + i))
        put(wild / f"{stem}.jpg", jpeg(90 + i))
    one = run_import(project, "utkface", chips)
    assert (one.persons_found, one.subjects_added, one.images_imported) == (2, 2, 2)
    two = run_import(project, "utkface", wild)
    assert (two.subjects_added, two.subjects_updated, two.images_imported) == (0, 2, 2)
    assert_one_pid_per_photograph(project)


def test_both_utkface_copies_in_one_folder_are_one_subject(project, tmp_path):
    src = tmp_path / "UTKFace"
    for i, stem in enumerate((UTK_A, UTK_B)):
        put(src / f"{stem}.jpg.chip.jpg", jpeg(80 + i))
        put(src / f"{stem}.jpg", jpeg(90 + i))
    result = run_import(project, "utkface", src)
    assert (result.persons_found, result.subjects_added, result.images_imported) == (2, 2, 4)
    assert_one_pid_per_photograph(project)


@pytest.mark.parametrize("old_name", [f"{UTK_A}.jpg", f"{UTK_A}.jpg.chip.jpg"])
def test_a_utkface_subject_recorded_under_a_per_file_ref_keeps_the_pid(project, tmp_path, old_name):
    # Imports before one subject per photograph recorded each file's name as the reference.
    core = PrivacyCore(ProjectPaths(project))
    old = core.add_subject(external_ref=f"utkface:{old_name}", source="import:utkface")
    src = tmp_path / "UTKFace"
    put(src / f"{UTK_A}.jpg.chip.jpg", jpeg(80))
    put(src / f"{UTK_A}.jpg", jpeg(90))
    put(src / f"{UTK_B}.jpg", jpeg(91))
    result = run_import(project, "utkface", src)
    assert (result.subjects_added, result.subjects_updated, result.images_imported) == (1, 1, 3)
    by_age = pids_by_age(project)
    assert by_age[25] == {old} and by_age[61] != {old}
    assert len(PrivacyCore(ProjectPaths(project)).registry) == 2


@pytest.mark.parametrize("erased_name", [f"{UTK_A}.jpg", f"{UTK_A}.jpg.chip.jpg"])
def test_an_erased_utkface_subject_comes_back_through_neither_copy(project, tmp_path, erased_name):
    Tombstones.open(ProjectPaths(project)).add("p" + "a" * 16, refs=[f"utkface:{erased_name}"])
    src = tmp_path / "UTKFace"
    put(src / f"{UTK_A}.jpg.chip.jpg", jpeg(80))
    put(src / f"{UTK_A}.jpg", jpeg(90))
    put(src / f"{UTK_B}.jpg", jpeg(91))
    result = run_import(project, "utkface", src)
    assert report_of(result)["skipped_by_reason"] == {"erased_subject": 2}
    assert reasons_by_file(result) == {} and UTK_A not in result.report_path.read_text()
    assert (result.subjects_added, result.images_imported) == (1, 1)


def test_fairface_csv_bands_races_and_hostile_paths(project, tmp_path):
    src = tmp_path / "fairface"
    for i in range(1, 5):
        put(src / "train" / f"{i}.jpg", jpeg(60 + i))
    put(tmp_path / "secret.jpg", jpeg(70))
    put(tmp_path / "elsewhere" / "5.jpg", jpeg(71))
    (src / "link").symlink_to(tmp_path / "elsewhere")
    rows = [
        "file,age,gender,race,service_test",
        "train/1.jpg,20-29,Male,East Asian,True",
        "train/2.jpg,more than 70,Female,Latino_Hispanic,False",
        "train/3.jpg,3-9,Female,Middle Eastern,False",
        "../secret.jpg,20-29,Male,White,False",
        f"{tmp_path / 'secret.jpg'},20-29,Male,White,False",
        "train/missing.jpg,20-29,Male,White,False",
        "train/4.jpg,20-29,Other,White,False",
        "link/5.jpg,20-29,Male,White,False",
        f"train/1.jpg,{'1' * 5000}-2,Male,White,False",  # int() refuses it: one bad row
    ]
    (src / "fairface_label_train.csv").write_text("\n".join(rows) + "\n")
    result = run_import(project, "fairface", src / "fairface_label_train.csv")
    assert result.images_imported == 3
    reasons = reasons_by_file(result)
    assert reasons["../secret.jpg"] == "path_traversal"
    assert reasons[str(tmp_path / "secret.jpg")] == "path_traversal"
    assert reasons["train/missing.jpg"] == "missing_file"
    assert reasons["train/4.jpg"] == "bad_label"
    assert reasons["link/5.jpg"] == "symlink"
    assert list(reasons.values()).count("bad_label") == 2

    paths = ProjectPaths(project)
    images = read_images(paths.raw)
    got = sorted(
        zip(images["age"], images["age_band"], images["gender"], images["group"], strict=True)
    )
    assert got == [
        (6, "3-9", "female", "middle_eastern"),
        (25, "20-29", "male", "east_asian"),
        (75, "more than 70", "female", "latino_hispanic"),
    ]
    secret = hashlib.sha256((tmp_path / "secret.jpg").read_bytes()).hexdigest()
    assert secret not in set(images["source_sha256"])
    # A field over the csv module's limit is the file's fault: a message, not a traceback.
    huge = src / "huge.csv"
    huge.write_text("file,age,gender,race\ntrain/1.jpg,20-29,Male," + "x" * 200_000 + "\n")
    with pytest.raises(ImportInputError, match=r"huge\.csv line 2 is not valid CSV"):
        run_import(project, "fairface", huge)


def test_band_midpoints():
    assert [band_midpoint(b) for b in ("0-2", "3-9", "10-19", "20-29", "more than 70")] == [
        1,
        6,
        15,
        25,
        75,
    ]
    assert band_midpoint("old") is None


def test_unknown_format_lists_the_registered_ones(project, tmp_path):
    with pytest.raises(ValueError, match="imagefolder, lfw, utkface, fairface"):
        run_import(project, "celeba", tmp_path)


# ---------------------------------------------------------------------------------------------
# Legal basis
# ---------------------------------------------------------------------------------------------


def test_cli_refuses_without_a_basis_and_writes_nothing(project, tmp_path):
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    before = tree(project)
    result = CliRunner().invoke(app, ["data", "import", "imagefolder", str(src)])
    assert result.exit_code == 2
    assert "Art. 9" in result.output and "--consent-evidence" in result.output
    assert "--legal-basis" in result.output
    assert tree(project) == before


def test_consent_evidence_records_a_receipt_per_subject(project, tmp_path):
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    put(src / ZELDA / "b.jpg", jpeg(3))
    put(src / YORICK / "a.jpg", jpeg(2))
    evidence = put(tmp_path / "signed-forms.pdf", b"%PDF scanned consent forms")
    run_import(
        project, "imagefolder", src, basis=basis(legal_basis=None, consent_evidence=evidence)
    )
    core = PrivacyCore(ProjectPaths(project))
    given = [e for e in core.ledger.entries() if e.type == "consent.given"]
    assert len(given) == 2 and len({e.pid for e in given}) == 2  # one receipt per subject
    receipt = given[0].payload["receipt"]
    assert receipt["evidence_hash"] == sha256_text(evidence.read_bytes())
    assert receipt["legal_basis"] == ["art6(1)(a)", "art9(2)(a)"]
    assert receipt["purposes"] == ["training", "evaluation"]
    assert receipt["controller"] == load_params(project / "params.yaml").project.controller
    pid = given[0].pid
    assert core.may_process(pid, "training").allowed
    assert not core.may_process(pid, "identification").allowed
    snapshot = pd.read_parquet(project / "data" / "registry" / "consents.parquet")
    assert set(snapshot["pid"]) == {e.pid for e in given}


def test_legal_basis_is_recorded_as_such(project, tmp_path):
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    approval = put(tmp_path / "ethics.pdf", b"ethics board approval")
    chosen = basis(basis_evidence=approval, purposes=["evaluation"])
    run_import(project, "imagefolder", src, basis=chosen)
    core = PrivacyCore(ProjectPaths(project))
    types = [e.type for e in core.ledger.entries()]
    assert "consent.given" not in types
    (entry,) = [e for e in core.ledger.entries() if e.type == "basis.recorded"]
    assert entry.payload["legal_basis"] == ["art6(1)(f)", "art9(2)(j)"]
    assert entry.payload["purposes"] == ["evaluation"]
    assert entry.payload["evidence_hash"] == sha256_text(approval.read_bytes())
    assert core.may_process(entry.pid, "evaluation").allowed
    assert not core.may_process(entry.pid, "training").allowed


def test_basis_options_are_checked(tmp_path):
    with pytest.raises(importers.BasisRequiredError, match=r"Art\. 9"):
        ImportBasis.from_options()
    evidence = put(tmp_path / "e.pdf", b"x")
    with pytest.raises(importers.BasisRequiredError, match="not both"):
        ImportBasis.from_options(consent_evidence=evidence, legal_basis=LEGAL)
    with pytest.raises(ValueError, match="incomplete"):
        ImportBasis.from_options(legal_basis="art6(1)(f)")
    with pytest.raises(ValueError, match="--consent-evidence"):
        ImportBasis.from_options(legal_basis="art6(1)(a)+art9(2)(a)")


def test_an_import_consented_to_analytics_is_refused_before_anyone_is_registered(project, tmp_path):
    """Analytics rests on no one's consent; an import with consent evidence for it registered
    its people, then failed on the refused consent, leaving subjects with no basis."""
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    evidence = put(tmp_path / "signed-forms.pdf", b"%PDF scanned consent forms")
    before = tree(project)
    result = CliRunner().invoke(
        app,
        [
            "data", "import", "imagefolder", str(src),
            "--consent-evidence", str(evidence), "-p", "training", "-p", "analytics",
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "analytics does not rest on consent" in " ".join(result.output.split())
    assert tree(project) == before


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def hostile_tree(src: Path, outside: Path) -> dict[str, str]:
    """A person folder with every kind of bad input; returns file -> expected reason."""
    person = src / ZELDA
    good = put(person / "good.jpg", jpeg(1))
    whole = jpeg(2)
    put(person / "corrupt.jpg", whole[:300] + bytes(400) + whole[700:])
    put(person / "truncated.jpg", jpeg(3)[:900])
    put(person / "notes.jpg", b"these are notes, not a photograph")
    put(person / "empty.jpg", b"")
    shutil.copy(good, person / "good_copy.jpg")
    put(person / "bomb.png", png_header_only(30_000, 30_000))
    put(person / "too-many-pixels.png", encode(photo(4, (100, 100)), "PNG"))
    put(person / "tiny.png", encode(photo(5, (20, 20)), "PNG"))
    put(person / "icon.jpg", encode(photo(6, (64, 64)), "ICO"))
    put(outside / "elsewhere.jpg", jpeg(7))
    (person / "link.jpg").symlink_to(outside / "elsewhere.jpg")
    os.mkfifo(person / "pipe.jpg")
    put(person / os.fsdecode(b"bad\xffname.jpg"), jpeg(8))
    put(person / "new\nline.jpg", jpeg(9))
    put(person / "nested" / "deep.jpg", jpeg(10))
    put(src / "stray.jpg", jpeg(11))
    (outside / "linked-person").mkdir()
    put(outside / "linked-person" / "x.jpg", jpeg(12))
    (src / "Linked_Person").symlink_to(outside / "linked-person")
    return {
        f"{ZELDA}/corrupt.jpg": "corrupt",
        f"{ZELDA}/truncated.jpg": "truncated",
        f"{ZELDA}/notes.jpg": "not_an_image",
        f"{ZELDA}/empty.jpg": "empty_file",
        f"{ZELDA}/good_copy.jpg": "duplicate",
        f"{ZELDA}/bomb.png": "decompression_bomb",
        f"{ZELDA}/too-many-pixels.png": "decompression_bomb",
        f"{ZELDA}/tiny.png": "too_small",
        f"{ZELDA}/icon.jpg": "unsupported_format",
        f"{ZELDA}/link.jpg": "symlink",
        f"{ZELDA}/pipe.jpg": "not_a_regular_file",
        f"{ZELDA}/bad\\xffname.jpg": "bad_file_name",
        f"{ZELDA}/new\nline.jpg": "bad_file_name",
        f"{ZELDA}/nested/deep.jpg": "unexpected_layout",
        "stray.jpg": "unexpected_layout",
        "Linked_Person": "symlink",
    }


def converted_tree(person: Path) -> None:
    """Accepted-with-conversion kinds, one file each."""
    put(person / "gray.png", encode(photo(21).convert("L"), "PNG"))
    put(person / "alpha.png", encode(photo(22).convert("RGBA"), "PNG"))
    sixteen = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    put(person / "sixteen.png", encode(Image.fromarray(sixteen), "PNG"))
    put(person / "palette.png", encode(photo(23).convert("P"), "PNG"))
    put(person / "cmyk.jpg", encode(photo(24).convert("CMYK")))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010E] = "Zelda Testperson at home"  # ImageDescription
    exif[0x013B] = "Yorick Examplename"  # Artist
    put(person / "rotated.jpg", encode(photo(25, (80, 48)), exif=exif.tobytes()))


def test_every_bad_input_is_reported_and_nothing_of_it_is_stored(project, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    src, outside = tmp_path / "faces", tmp_path / "outside"
    outside.mkdir()
    expected = hostile_tree(src, outside)
    converted_tree(src / ZELDA)
    params = load_params(project / "params.yaml", overrides={"serving.max_image_pixels": 5000})
    caplog.clear()  # only what the import logs (Pillow logs EXIF text while making fixtures)
    result = run_import(project, "imagefolder", src, params=params)

    assert reasons_by_file(result) == expected
    assert result.images_imported == 7  # good + six converted kinds
    assert result.subjects_added == 1
    assert dict(result.conversions) == {
        "grayscale": 2,  # gray + 16-bit
        "rgba": 1,
        "16bit": 1,
        "palette": 1,
        "cmyk": 1,
        "exif_rotated": 1,
    }
    report = report_of(result)
    assert report["conversions"] == dict(sorted(result.conversions.items()))
    assert report["reason_text"]["decompression_bomb"]

    paths = ProjectPaths(project)
    images = read_images(paths.raw)
    stored = list(paths.raw.rglob("*.sealed"))
    assert len(images) == len(stored) == 7
    assert not list(paths.raw.rglob("*.png"))
    good_sha = hashlib.sha256((src / ZELDA / "good.jpg").read_bytes()).hexdigest()
    assert list(images["source_sha256"]).count(good_sha) == 1
    # The rotated photo is stored upright and no metadata (EXIF text, names) survives.
    rotated = images[(images.width == 48) & (images.height == 80)]
    assert len(rotated) == 1
    store = RawStore(paths)
    for sealed in stored:
        data = store.read_image(sealed.parent.name, sealed.stem)
        assert b"Exif" not in data and b"Testperson" not in data and b"Yorick" not in data
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == "RGB" and not im.getexif() and "icc_profile" not in im.info
    # The per-file report is the only place names appear: privacy/imports/, mode 0600.
    assert result.report_path.parent == paths.privacy / "imports"
    assert stat.S_IMODE(result.report_path.stat().st_mode) == 0o600
    assert not paths.reports.exists()
    assert files_mentioning(project, ("Zelda", "Linked"), skip=paths.privacy / "imports") == []
    for needle in ("Zelda", "Yorick", "Linked", "good.jpg"):
        assert needle not in caplog.text


# ---------------------------------------------------------------------------------------------
# Atomicity, re-import, duplicates, rights
# ---------------------------------------------------------------------------------------------


def test_failure_mid_import_leaves_data_raw_byte_identical(project, tmp_path, monkeypatch):
    first = tmp_path / "first"
    put(first / ZELDA / "a.jpg", jpeg(1))
    put(first / ZELDA / "b.jpg", jpeg(2))
    run_import(project, "imagefolder", first)
    paths = ProjectPaths(project)
    raw_before = tree(paths.raw)
    ledger_before = paths.ledger.read_bytes()
    reports_before = sorted((paths.privacy / "imports").iterdir())

    second = tmp_path / "second"
    for k in range(6):
        put(second / YORICK / f"{k}.jpg", jpeg(100 + k))
    real = imagecheck.check_image
    calls = {"n": 0}

    def fails_on_the_fourth(data, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise MemoryError("injected")
        return real(data, **kw)

    monkeypatch.setattr(imagecheck, "check_image", fails_on_the_fourth)
    with pytest.raises(MemoryError):
        run_import(project, "imagefolder", second)
    assert calls["n"] == 4
    assert tree(paths.raw) == raw_before
    assert paths.ledger.read_bytes() == ledger_before
    assert sorted((paths.privacy / "imports").iterdir()) == reports_before
    assert [p.name for p in paths.data.iterdir() if p.name.startswith("raw.")] == []


def test_failure_after_registration_still_leaves_data_raw_untouched(project, tmp_path, monkeypatch):
    first = tmp_path / "first"
    put(first / ZELDA / "a.jpg", jpeg(1))
    run_import(project, "imagefolder", first)
    raw_before = tree(ProjectPaths(project).raw)
    second = tmp_path / "second"
    put(second / YORICK / "a.jpg", jpeg(2))

    def ledger_down(*args, **kwargs):
        raise OSError("ledger volume unavailable")

    monkeypatch.setattr(importers, "record_basis", ledger_down)
    with pytest.raises(OSError, match="ledger volume"):
        run_import(project, "imagefolder", second)
    assert tree(ProjectPaths(project).raw) == raw_before


def test_reimport_reuses_the_pid_and_skips_duplicates(project, tmp_path):
    first = tmp_path / "first"
    put(first / ZELDA / "a.jpg", jpeg(1))
    put(first / ZELDA / "b.jpg", jpeg(2))
    one = run_import(project, "imagefolder", first)
    assert (one.subjects_added, one.images_imported) == (1, 2)

    second = tmp_path / "second"
    shutil.copytree(first, second)
    put(second / ZELDA / "c.jpg", jpeg(3))
    # Same pixels, other container: also a duplicate.
    put(second / ZELDA / "a-again.png", (second / ZELDA / "a.jpg").read_bytes())
    Image.open(io.BytesIO((first / ZELDA / "b.jpg").read_bytes())).save(
        second / ZELDA / "b.bmp", "BMP"
    )
    two = run_import(project, "imagefolder", second)
    assert (two.subjects_added, two.subjects_updated, two.images_imported) == (0, 1, 1)
    assert two.skipped_by_reason == {"duplicate": 4}

    paths = ProjectPaths(project)
    subjects = read_subjects(paths.raw)
    assert len(subjects) == 1 and int(subjects["n_images"].iloc[0]) == 3
    pid = PrivacyCore(paths).vault.find(f"imagefolder:{ZELDA}")
    assert set(read_images(paths.raw)["pid"]) == {pid}
    assert len(list((paths.raw / pid).iterdir())) == 3


def test_spellings_of_one_name_are_one_person_with_one_pid(project, tmp_path):
    # Case-variants (the vault's blind index finds both under one pid) and NFC/NFD spellings
    # (a folder copied through macOS) in one data set are one person, not two pids.
    src = tmp_path / "faces"
    zoe = unicodedata.normalize("NFC", "Zoë_Testperson")
    put(src / ZELDA / "a.jpg", jpeg(1))
    put(src / ZELDA.lower() / "b.jpg", jpeg(2))
    put(src / zoe / "c.jpg", jpeg(3))
    put(src / unicodedata.normalize("NFD", zoe) / "d.jpg", jpeg(4))
    result = run_import(project, "imagefolder", src)
    assert (result.persons_found, result.subjects_added, result.images_imported) == (2, 2, 4)
    paths = ProjectPaths(project)
    vault = PrivacyCore(paths).vault
    zelda = vault.find(f"imagefolder:{ZELDA}")
    assert zelda is not None and vault.find(f"imagefolder:{ZELDA.lower()}") == zelda
    assert sorted(read_images(paths.raw).groupby("pid").size()) == [2, 2]
    assert sorted(read_subjects(paths.raw)["n_images"]) == [2, 2]


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(unicodedata.normalize("NFD", "Zoë_Testperson"), id="nfd"),
        pytest.param("Zo\u200bë_Testperson", id="zero-width-space"),
        pytest.param("ＺＯË_Testperson", id="full-width-upper"),
    ],
)
def test_reimport_under_another_spelling_keeps_the_pid(project, tmp_path, spelling):
    # A copy of the data set made on macOS (NFD) or retyped is the same person, not a new pid
    # whose photos could land in another split.
    first = tmp_path / "first"
    put(first / unicodedata.normalize("NFC", "Zoë_Testperson") / "a.jpg", jpeg(1))
    one = run_import(project, "imagefolder", first)
    assert one.subjects_added == 1

    second = tmp_path / "second"
    put(second / spelling / "b.jpg", jpeg(2))
    two = run_import(project, "imagefolder", second)
    assert (two.subjects_added, two.subjects_updated, two.images_imported) == (0, 1, 1)
    paths = ProjectPaths(project)
    assert read_images(paths.raw)["pid"].nunique() == 1
    assert len(read_subjects(paths.raw)) == 1


def test_subject_who_withdrew_consent_gets_no_new_images(project, tmp_path):
    first = tmp_path / "first"
    put(first / ZELDA / "a.jpg", jpeg(1))
    run_import(project, "imagefolder", first)
    core = PrivacyCore(ProjectPaths(project))
    pid = core.vault.find(f"imagefolder:{ZELDA}")
    core.withdraw_consent(pid)
    second = tmp_path / "second"
    put(second / ZELDA / "new.jpg", jpeg(2))
    result = run_import(project, "imagefolder", second)
    assert result.images_imported == 0
    assert reasons_by_file(result) == {f"{ZELDA}/new.jpg": "subject_rights"}
    assert int(read_subjects(ProjectPaths(project).raw)["n_images"].iloc[0]) == 1
    assert not core.may_process(pid, "training").allowed


# ---------------------------------------------------------------------------------------------
# CLI and DVC
# ---------------------------------------------------------------------------------------------


def test_cli_json_summary_and_files_table(project, tmp_path):
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    put(src / ZELDA / "empty.jpg", b"")
    run = CliRunner().invoke
    result = run(app, ["data", "import", "imagefolder", str(src), "--legal-basis", LEGAL, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images_imported"] == 1
    assert summary["skipped_by_reason"] == {"empty_file": 1}
    assert "files" not in summary and ZELDA not in result.stdout
    assert Path(summary["report"]).parent == project / "privacy" / "imports"

    put(src / YORICK / "b.jpg", jpeg(2))
    result = run(
        app, ["data", "import", "imagefolder", str(src), "--legal-basis", LEGAL, "--files"]
    )
    assert result.exit_code == 0, result.output
    assert "1 added" in result.stdout and "duplicate" in result.stdout
    assert f"{ZELDA}/empty.jpg" in result.stdout  # only with --files


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_import_in_a_dvc_repository_tracks_data_raw(project, tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, env=env)
    subprocess.run([dvc, "init", "-q"], cwd=project, check=True, env=env)
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    result = run_import(project, "imagefolder", src)
    dvcfile = project / "data" / "raw.dvc"
    assert dvcfile.exists()
    assert result.dvc_md5 and result.dvc_md5.endswith(".dir")
    assert result.dvc_md5 in dvcfile.read_text()
    assert ZELDA not in dvcfile.read_text()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_an_import_where_data_raw_is_not_checked_out_is_refused_and_keeps_every_subject(
    project, tmp_path
):
    """DVC tracks data/raw, but it is not checked out here (a fresh clone, `dvc checkout` not
    run): the import read both tables as empty, wrote them with the new person's rows alone and
    `dvc add`ed them, so data/raw.dvc's current version held no earlier subject. Refused now in
    one line saying what to run, nothing written nor recorded; checked out, the same import
    keeps everyone."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, env=env)
    subprocess.run([dvc, "init", "-q"], cwd=project, check=True, env=env)
    first, second = tmp_path / "first", tmp_path / "second"
    put(first / ZELDA / "a.jpg", jpeg(1))
    put(second / YORICK / "a.jpg", jpeg(2))
    run_import(project, "imagefolder", first)
    paths = ProjectPaths(project)
    earlier = set(read_subjects(paths.raw)["pid"])
    shutil.rmtree(paths.raw)
    before = tree(project)

    cli = ["data", "import", "imagefolder", str(second), "--legal-basis", LEGAL]
    refused = CliRunner().invoke(app, cli)

    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert "DVC tracks data/raw" in said and "run `dvc checkout data/raw`" in said, said
    assert YORICK not in said and ZELDA not in said
    assert tree(project) == before  # no table, no ledger event, no report, data/raw.dvc as it was

    checkout = subprocess.run(
        [dvc, "checkout", "data/raw"], cwd=project, env=env, capture_output=True, text=True
    )
    assert checkout.returncode == 0, checkout.stderr
    assert CliRunner().invoke(app, cli).exit_code == 0
    subjects = set(read_subjects(paths.raw)["pid"])
    assert earlier < subjects and len(subjects) == 2
    assert len(read_images(paths.raw)) == 2


def test_a_protocol_set_is_evaluation_only_by_default_and_roles_are_recorded(project, tmp_path):
    base = make_lfw(tmp_path / "download")
    result = run_import(project, "lfw", base)
    assert result.role == "evaluation" and result.summary()["role"] == "evaluation"
    paths = ProjectPaths(project)
    assert set(read_subjects(paths.raw)["role"]) == {"evaluation"}
    src = tmp_path / "faces"
    put(src / "Walter_Newcomer" / "a.jpg", jpeg(77))
    assert run_import(project, "imagefolder", src).role == "both"
    subjects = read_subjects(paths.raw)
    assert sorted(subjects["role"]) == ["both", "evaluation", "evaluation", "evaluation"]


def test_cli_role_option_and_bad_role(project, tmp_path):
    base = make_lfw(tmp_path / "download")
    runner = CliRunner()
    bad = runner.invoke(
        app, ["data", "import", "lfw", str(base), "--legal-basis", LEGAL, "--role", "benchmark"]
    )
    assert bad.exit_code == 2 and "training, evaluation, both" in bad.output
    assert not (project / "data" / "raw").exists()
    ok = runner.invoke(
        app,
        ["data", "import", "lfw", str(base), "--legal-basis", LEGAL, "--role", "both", "--json"],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["role"] == "both"
    assert set(read_subjects(ProjectPaths(project).raw)["role"]) == {"both"}
