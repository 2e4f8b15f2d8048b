"""Exact copies of an erased subject's files elsewhere in the project: removed before the
certificate, counted on it without a name, and looked for by the verifier in the same places."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rights_fakes import make_project

from visage_ml.privacy.certificate_page import page_path
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import IN_PROGRESS, RequestBook
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.erasure import orchestrator as erasure_mod

# What someone names a photo they copied out: the person's name.
NAME = "Zelda_Testperson_portrait"


@pytest.fixture
def proj(project):
    return make_project(project, n_subjects=4)


def _plant(proj, pid: str) -> dict[Path, bytes]:
    """A plaintext photo of ``pid`` and a copy of one of their sealed files, where people put
    files: beside the data, in reports, notebooks, models and at the project's top."""
    root = proj.paths.root
    photo = next(iter(proj.images[pid].values()))
    sealed = next((proj.paths.raw / pid).glob("*.sealed")).read_bytes()
    planted = {
        root / "data" / "interim_qx9" / f"{NAME}.png": photo,
        root / "data" / "aside_qx9" / f"{NAME}.sealed": sealed,
        root / "reports" / f"{NAME}.png": photo,
        root / "notebooks" / "scratch_qx9" / f"{NAME}.png": photo,
        root / "models" / f"{NAME}.png": photo,
        root / f"{NAME}.png": photo,
    }
    for path, data in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return planted


def test_exact_copies_anywhere_in_the_project_go_before_the_certificate_which_names_none(proj):
    # Copies under data/ outside data/raw, in reports/, notebooks/ and at the top survived the
    # erasure, which certified it; the verifier then failed it ("1 found"), and did not even
    # look in reports/, notebooks/ or at the top.
    victim, other = proj.pids[0], proj.pids[1]
    planted = _plant(proj, victim)
    # Another subject's photo under reports/ is no copy of the victim's: it stays.
    kept = proj.paths.root / "reports" / "other.png"
    kept.write_bytes(next(iter(proj.images[other].values())))
    result = Erasure(proj.paths).erase(victim)
    assert [p for p in planted if p.exists()] == []
    assert kept.is_file() and (proj.paths.raw / other).is_dir()
    # Counted by top folder on the certificate; no file name, no folder below the top.
    claims = result.certificate["claims"]
    assert claims["copies_removed"] == {
        "data": 2,
        "models": 1,
        "notebooks": 1,
        "reports": 1,
        "top level": 1,
    }
    written = [
        result.certificate_path.read_text(encoding="utf-8"),
        page_path(result.certificate_path).read_text(encoding="utf-8"),
        proj.paths.ledger.read_text(encoding="utf-8"),
    ]
    # The folders below the top, whole: a bare "qx9" turns up by chance in the ledger's base64
    # signatures, failing the test at random.
    for needle in (NAME, "interim_qx9", "aside_qx9", "scratch_qx9"):
        assert not [w for w in written if needle in w], needle
    assert "6 exact cop" in " ".join(written[1].split())
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]
    # Put back, every one of them is found by the verifier, in the same places.
    for path, data in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert {Path(f["path"]) for f in report.findings} == set(planted)


def test_a_copy_that_cannot_be_removed_stops_the_erasure_before_it_certifies(proj, monkeypatch):
    victim = proj.pids[0]
    planted = _plant(proj, victim)
    from visage_ml.rights.erasure import copies as copies_store  # the store under test

    stuck = proj.paths.root / "reports" / f"{NAME}.png"
    removed = copies_store.secure_unlink

    def unlink(path: Path) -> bool:
        if Path(path) == stuck:  # a read-only mount
            raise OSError(errno.EROFS, "Read-only file system")
        return removed(path)

    monkeypatch.setattr(copies_store, "secure_unlink", unlink)
    with pytest.raises(OSError) as caught:
        Erasure(proj.paths).erase(victim)
    message = str(caught.value)
    # Says where (top folder), why and what to do, never the file's name.
    assert "reports" in message and "visage privacy resume" in message
    assert NAME not in message and "Read-only" in message
    assert list((proj.paths.root / "privacy" / "certificates").glob("*.json")) == []
    (st,) = RequestBook(PrivacyCore(proj.paths)).open(pid=victim)
    assert st.status == IN_PROGRESS
    assert [p for p in planted if p.exists()] == [stuck]
    monkeypatch.setattr(copies_store, "secure_unlink", removed)
    (result,) = Erasure(proj.paths).resume()
    assert not stuck.exists()
    # The copies the first run removed are still counted.
    assert sum(result.certificate["claims"]["copies_removed"].values()) == len(planted)
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_a_completion_committed_before_the_copies_step_existed_certifies_what_it_committed(
    proj, monkeypatch
):
    # An erasure whose `erasure.completed` an earlier version recorded (the witnesses did not
    # answer, say) is resumed by this one: the claims were committed, a new step must not
    # change them (the certificate would not match its entry).
    victim = proj.pids[0]
    steps, fault = erasure_mod.STEPS, erasure_mod._fault
    monkeypatch.setattr(erasure_mod, "STEPS", tuple(s for s in steps if s != "copies"))
    monkeypatch.setattr(erasure_mod, "_fault", _stop_after_completion)
    with pytest.raises(_StopError):
        Erasure(proj.paths).erase(victim)
    monkeypatch.setattr(erasure_mod, "STEPS", steps)
    monkeypatch.setattr(erasure_mod, "_fault", fault)
    (result,) = Erasure(proj.paths).resume()
    assert "copies" not in {s["step"] for s in result.certificate["claims"]["steps"]}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


class _StopError(Exception):
    pass


def _stop_after_completion(step: str, where: str = "") -> None:
    if (step, where) == ("certificate", "completed"):
        raise _StopError


def test_the_ledger_records_of_the_copies_step_hold_counts_only(proj):
    victim = proj.pids[0]
    _plant(proj, victim)
    Erasure(proj.paths).erase(victim)
    records = [
        e.payload
        for e in PrivacyCore(proj.paths).ledger.entries()
        if e.type == "erasure.step" and e.payload["step"] == "copies"
    ]
    assert [r["phase"] for r in records] == ["planned", "done"]
    assert all(r["artefacts"] == [] for r in records)
    assert NAME not in json.dumps(records)


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).with_name("dvc"))
    return subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True, check=False)


@pytest.mark.pipeline
def test_a_copy_tracked_with_dvc_goes_with_its_objects(tiny_project):
    """The subject's photo saved in data/external and tracked with `dvc add` (and pushed to a
    local remote): the copy went from the workspace, its object stayed in DVC's cache and the
    remote, `dvc checkout` put it back, and the verifier failed the certificate just made."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    victim = proj.pids[0]
    photo = next(iter(proj.images[victim].values()))
    ext = root / "data" / "external"
    ext.mkdir(parents=True)
    (ext / "portrait.png").write_bytes(photo)
    (ext / "unrelated.txt").write_text("kept")
    assert _dvc(root, "add", "data/external").returncode == 0
    remote = root.parent / "remote"
    assert _dvc(root, "remote", "add", "-f", "-d", "local", str(remote)).returncode == 0
    assert _dvc(root, "push").returncode == 0

    result = Erasure(proj.paths).erase(victim)
    removed = result.certificate["claims"]["copies_removed"]
    assert removed == {"data": 1, "dvc cache": 1, "dvc remote:local": 1}, removed
    assert not (ext / "portrait.png").exists() and (ext / "unrelated.txt").read_text() == "kept"
    report = verify_certificate(result.certificate_path, root=root)
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]
    _dvc(root, "checkout", "data/external")
    assert not (ext / "portrait.png").exists(), "dvc checkout put the erased photo back"


def test_a_file_that_cannot_be_read_is_never_shown_clean(proj, monkeypatch):
    """A file the scan could not read (permissions, an I/O error) was skipped in silence: it
    may be a copy, yet the erasure certified and the verifier said nothing remains."""
    from visage_ml.rights import content_scan

    done = Erasure(proj.paths).erase(proj.pids[0])
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    locked = proj.paths.root / "reports" / f"{NAME}.png"
    locked.parent.mkdir(parents=True, exist_ok=True)
    locked.write_bytes(b"whatever it holds")
    real_open = open

    def guarded(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(content_scan, "open", guarded, raising=False)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(locked)]
    with pytest.raises(OSError) as caught:
        Erasure(proj.paths).erase(proj.pids[1])
    message = str(caught.value)
    assert "could not be read" in message and "reports" in message and NAME not in message
    assert "visage privacy resume" in message
    monkeypatch.delattr(content_scan, "open")
    (result,) = Erasure(proj.paths).resume()
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_doctor_lists_what_the_scan_could_not_read_and_what_to_do(proj, monkeypatch):
    """A file the scan could not read, a folder it could not list and a notebook too large to
    look inside stop the erasure before its certificate (and fail the verifier), whose message
    sends the operator to `visage privacy doctor`: the doctor listed none of them, so nothing
    said which files they were."""
    import os

    from typer.testing import CliRunner

    from visage_ml.app.cli import app
    from visage_ml.rights import content_scan

    root = proj.paths.root
    Erasure(proj.paths).erase(proj.pids[0])  # something is sought from now on
    locked_file = root / "reports" / f"{NAME}.png"
    locked_folder = root / "data" / "backup_qx9"
    locked_folder.mkdir(parents=True)
    locked_file.parent.mkdir(parents=True, exist_ok=True)
    locked_file.write_bytes(b"whatever it holds")
    (locked_folder / f"{NAME}.png").write_bytes(b"whatever it holds")
    monkeypatch.setattr(content_scan, "NOTEBOOK_MAX", 4096)  # here, rather than 256 MiB
    large = root / "notebooks" / "survey_qx9.ipynb"
    large.parent.mkdir(parents=True, exist_ok=True)
    large.write_text(json.dumps({"cells": [{"source": "x" * 8192}]}), encoding="utf-8")
    real_open, real_scandir = open, os.scandir

    def no_open(path, *args, **kwargs):
        if Path(path) == locked_file:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)

    def no_listing(path=".", *args, **kwargs):
        if isinstance(path, str | os.PathLike) and Path(path) == locked_folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(content_scan, "open", no_open, raising=False)
    monkeypatch.setattr(os, "scandir", no_listing)
    with pytest.raises(OSError, match="could not be read"):
        Erasure(proj.paths).erase(proj.pids[1])

    said = CliRunner().invoke(app, ["privacy", "doctor", "--json"])
    assert said.exit_code == 1, said.output
    report = json.loads(said.output[said.output.index("{") :])
    listed = sorted(
        (f["kind"], f["path"], f["action"])
        for f in report["findings"]
        if f["kind"] in ("unreadable", "opaque_notebook")
    )
    assert listed == [
        ("opaque_notebook", "notebooks/survey_qx9.ipynb", "review"),
        ("unreadable", "data/backup_qx9", "review"),
        ("unreadable", f"reports/{NAME}.png", "review"),
    ], report["findings"]
    todo = " ".join(report["what_to_do"]["unreadable"].split())
    assert "permissions" in todo and "visage privacy resume" in todo and NAME not in todo
    assert "clear their outputs" in report["what_to_do"]["opaque_notebook"]

    shown = CliRunner().invoke(app, ["privacy", "doctor", "--purge"])
    text = " ".join(shown.output.split())
    assert shown.exit_code == 1 and "visage privacy resume" in text, shown.output
    assert f"reports/{NAME}.png" in text and "data/backup_qx9" in text
    assert locked_file.exists() and (locked_folder / f"{NAME}.png").exists()  # a person decides
    assert large.exists()

    monkeypatch.delattr(content_scan, "open")
    monkeypatch.setattr(os, "scandir", real_scandir)
    large.unlink()
    (done,) = Erasure(proj.paths).resume()
    assert verify_certificate(done.certificate_path, root=root).ok


def test_a_copy_in_any_folder_of_the_project_goes_and_tool_folders_are_not_read(proj):
    """The walk covered data/, gallery/, mlruns/, models/, privacy/, reports/, notebooks/ and
    the top: a photo in backup/ or a hidden folder survived a certified erasure that verified
    VALID."""
    victim = proj.pids[0]
    root = proj.paths.root
    photo = next(iter(proj.images[victim].values()))
    planted = [root / "backup" / "2026" / f"{NAME}.png", root / ".cache-qx9" / f"{NAME}.png"]
    # A virtual environment (any name: it has a pyvenv.cfg) is the tools', not read.
    venv = root / "env-qx9"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")
    in_venv = venv / "lib" / "sample.png"
    in_venv.write_bytes(photo)
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo)
    result = Erasure(proj.paths).erase(victim)
    assert [p for p in planted if p.exists()] == []
    assert result.certificate["claims"]["copies_removed"] == {".cache-qx9": 1, "backup": 1}
    assert in_venv.exists()
    assert verify_certificate(result.certificate_path, root=root).ok
    planted[0].write_bytes(photo)
    report = verify_certificate(result.certificate_path, root=root)
    assert [f["path"] for f in report.findings] == [str(planted[0])]


@pytest.mark.pipeline
def test_a_copy_in_a_dvc_temporary_workspace_goes(tiny_project):
    """``dvc exp run --temp`` and ``--queue`` check the project out under .dvc/tmp/exps: a copy
    there was not looked at."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim = proj.pids[0]
    photo = next(iter(proj.images[victim].values()))
    copy = root / ".dvc" / "tmp" / "exps" / "tmpx1" / "data" / "interim" / f"{NAME}.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(photo)
    result = Erasure(proj.paths).erase(victim)
    assert not copy.exists()
    assert result.certificate["claims"]["copies_removed"] == {".dvc": 1}
    assert verify_certificate(result.certificate_path, root=root).ok


def test_a_folder_that_cannot_be_listed_is_never_shown_clean(proj, monkeypatch):
    """A folder the walk could not list (its permissions, an I/O error) was skipped in
    silence, every file in it unseen: the erasure certified and the verifier said nothing
    remains, whatever it held."""
    import os

    done = Erasure(proj.paths).erase(proj.pids[0])
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    locked = proj.paths.root / "reports" / "backup"
    locked.mkdir(parents=True)
    (locked / f"{NAME}.png").write_bytes(b"whatever it holds")
    real_scandir = os.scandir

    def guarded(path=".", *args, **kwargs):
        if isinstance(path, str | os.PathLike) and Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", guarded)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(locked)]
    with pytest.raises(OSError) as caught:
        Erasure(proj.paths).erase(proj.pids[1])
    message = str(caught.value)
    assert "could not be read" in message and "reports" in message and NAME not in message
    monkeypatch.setattr(os, "scandir", real_scandir)
    (result,) = Erasure(proj.paths).resume()
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
