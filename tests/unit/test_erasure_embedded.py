"""Erased content the file walk cannot see as a file: a photograph shown in a notebook (a
base64 PNG in the ``.ipynb``) and one committed to git (an object in ``.git``, compressed).

Before, both survived a certified erasure that verified VALID: the copies step and the verifier
hashed files only, and ``git checkout`` put the committed photograph back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess

import pytest
from project_helpers import git
from rights_fakes import make_project

from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import IN_PROGRESS, RequestBook
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.sealing import ERASED_IN_GIT, doctor


def notebook(png: bytes, other: bytes) -> dict:
    """A notebook whose first cell showed ``png`` and whose second cell printed a table and
    showed ``other``, as VS Code or nbconvert save it (outputs kept)."""

    def cell(data: dict) -> dict:
        out = {"output_type": "display_data", "metadata": {}, "data": data}
        return {"cell_type": "code", "source": "show()", "metadata": {}, "outputs": [out]}

    return {
        "cells": [
            cell({"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}),
            cell({"image/png": base64.b64encode(other).decode()}),
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def tracked_notebook(root, proj, victim: str, other: str):
    """``notebooks/look.ipynb`` showing ``victim``'s photograph, then ``other``'s, tracked
    with ``dvc add``: the photograph and the notebook."""
    from visage_ml.rights import dvc_objects

    png = next(iter(proj.images[victim].values()))
    nb = root / "notebooks" / "look.ipynb"
    nb.parent.mkdir(parents=True)
    nb.write_text(json.dumps(notebook(png, next(iter(proj.images[other].values())))))
    dvc_objects.add(root, nb)
    return png, nb


def images_in(path) -> set[bytes]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return {
        base64.b64decode(o["data"]["image/png"])
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    }


def test_a_photograph_shown_in_a_notebook_goes_with_the_erasure_and_is_looked_for(project):
    proj = make_project(project, n_subjects=3)
    victim, other = proj.pids[0], proj.pids[1]
    png = next(iter(proj.images[victim].values()))
    theirs = next(iter(proj.images[other].values()))
    nb = proj.paths.root / "notebooks" / "explore.ipynb"
    nb.parent.mkdir(parents=True)
    nb.write_text(json.dumps(notebook(png, theirs)), encoding="utf-8")
    saved = nb.read_bytes()
    result = Erasure(proj.paths).erase(victim)
    assert nb.is_file(), "the notebook stays"
    assert png not in images_in(nb)
    assert result.certificate["claims"]["copies_removed"] == {"notebooks": 1}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    # The notebook as saved before (a backup put back): the verifier finds the photograph.
    nb.write_bytes(saved)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(nb)]


@pytest.mark.pipeline
def test_a_photograph_committed_to_git_stops_the_erasure_until_history_is_rewritten(
    tiny_project,
):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim = proj.pids[0]
    png = next(iter(proj.images[victim].values()))
    face = root / "notebooks" / "face_review.png"
    face.parent.mkdir(parents=True)
    face.write_bytes(png)
    git(root, "add", "-f", "notebooks/face_review.png")
    git(root, "commit", "-qm", "review")
    git(root, "rm", "-q", "notebooks/face_review.png")
    git(root, "commit", "-qm", "tidy")
    with pytest.raises(OSError, match="git") as stop:
        Erasure(proj.paths).erase(victim)
    assert "face_review" not in str(stop.value), "a name someone chose in the message"
    assert "visage privacy doctor" in str(stop.value)
    # The operator's own console: where the history holds it, left for them to rewrite.
    found = [f for f in doctor(proj.paths).findings if f.kind == ERASED_IN_GIT]
    assert [(f.path, f.action) for f in found] == [("git:notebooks/face_review.png", "review")]
    assert list((root / "privacy" / "certificates").glob("*.json")) == []
    (st,) = RequestBook(PrivacyCore(proj.paths)).open(pid=victim)
    assert st.status == IN_PROGRESS
    # History rewritten without the photograph (git filter-repo does the same), the reflog
    # expired and the objects pruned: the erasure completes, and verifies.
    git(root, "reset", "-q", "--hard", "HEAD~2")
    git(root, "reflog", "expire", "--expire=now", "--all")
    git(root, "gc", "-q", "--prune=now")
    (result,) = Erasure(proj.paths).resume()
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    # The photograph written into git again (a clone pushed back, a stash): found.
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"], cwd=root, input=png, capture_output=True
    )
    assert blob.returncode == 0
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert any("git" in f["path"] for f in report.findings), report.findings


@pytest.mark.pipeline
def test_a_git_history_that_cannot_be_read_is_not_shown_clean(tiny_project, monkeypatch):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    assert verify_certificate(result.certificate_path, root=root).ok
    # git gone from the PATH (or the repository owned by another user): the history was not
    # looked at, so the erased content is not shown to be absent from it.
    monkeypatch.setenv("PATH", "/nonexistent")
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert any(
        "git repository of the project could not be read" in f["why"] for f in report.findings
    )
    with pytest.raises(OSError, match="git repository of the project could not be read"):
        Erasure(proj.paths).erase(proj.pids[1])


@pytest.mark.pipeline
def test_a_notebook_tracked_with_dvc_leaves_no_object_showing_the_photograph(tiny_project):
    """The cached object of a notebook (no .ipynb suffix in the cache) was not looked inside:
    the workspace notebook lost its output, the object kept the photograph, the certificate
    verified and `dvc checkout --force` put it back."""
    from test_erasure import _dvc

    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, other = proj.pids[0], proj.pids[1]
    png, nb = tracked_notebook(root, proj, victim, other)
    cached = [p for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()]
    assert any(base64.b64encode(png) in p.read_bytes() for p in cached)
    result = Erasure(proj.paths).erase(victim)
    cached = [p for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()]
    assert not any(base64.b64encode(png) in p.read_bytes() for p in cached)
    assert png not in images_in(nb)
    assert verify_certificate(result.certificate_path, root=root).ok
    _dvc(root, "checkout", "--force")
    assert not nb.exists() or png not in images_in(nb)


def test_a_notebook_too_large_to_look_inside_is_not_shown_clean(project, monkeypatch):
    from visage_ml.rights import content_scan

    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    nb = proj.paths.root / "notebooks" / "huge.ipynb"
    nb.parent.mkdir(parents=True)
    nb.write_text(json.dumps({"cells": [], "metadata": {"pad": "x" * 4096}}))
    monkeypatch.setattr(content_scan, "NOTEBOOK_MAX", 1024)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(nb)]
    with pytest.raises(OSError, match="notebooks too large to look inside"):
        Erasure(proj.paths).erase(proj.pids[1])


def test_a_parent_repository_git_refuses_to_read_is_not_shown_clean(tmp_path, monkeypatch):
    """A project in a folder of a repository another user owns: git refuses it ("dubious
    ownership"), and the history was skipped as if there were none."""
    from visage_ml.rights import content_scan

    (tmp_path / "mono").mkdir()
    git(tmp_path / "mono", "init", "-q")
    project = tmp_path / "mono" / "team" / "proj"
    project.mkdir(parents=True)
    assert content_scan.git_dir(project) is not None
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    (tmp_path / "gitconfig").write_text("[safe]\n\tdirectory = /nowhere\n")
    monkeypatch.setenv("GIT_TEST_ASSUME_DIFFERENT_OWNER", "1")
    with pytest.raises(content_scan.GitUnreadableError, match="could not be read"):
        content_scan.git_objects(project)
    assert content_scan.git_dir(tmp_path) is None


@pytest.mark.pipeline
def test_git_stops_the_erasure_for_what_it_must_and_doctor_says_where(tiny_project):
    """A photograph another subject holds (shared with the erased one) and a sealed file whose
    key the erasure destroys, committed to git, stopped every erasure for good; an old table
    naming the subject stopped it, and doctor could not say where."""
    from test_redteam_plaintext import unseal
    from test_shared_in_use import _file_under

    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, other, second = proj.pids
    pngs = unseal(proj, victim)
    _file_under(proj, other, pngs[0], sealed=False)
    unseal(proj, other)
    snaps = root / "snapshots"
    snaps.mkdir()
    (snaps / "shared.png").write_bytes(pngs[0])
    git(root, "add", "-f", "snapshots")
    git(root, "commit", "-qm", "the photo two subjects share")
    (snaps / "shared.png").unlink()
    result = Erasure(proj.paths).erase(victim)
    assert verify_certificate(result.certificate_path, root=root).ok
    # The next subject's sealed file and the images table naming them, committed.
    (snaps / "one.sealed").write_bytes(
        sorted((proj.paths.raw / second).glob("*.sealed"))[0].read_bytes()
    )
    (snaps / "images.parquet").write_bytes((proj.paths.raw / "images.parquet").read_bytes())
    git(root, "add", "-f", "snapshots")
    git(root, "commit", "-qm", "snapshots")
    for f in snaps.iterdir():
        f.unlink()
    with pytest.raises(OSError, match="git"):
        Erasure(proj.paths).erase(second)
    found = [f.path for f in doctor(proj.paths).findings if f.kind == ERASED_IN_GIT]
    assert found == ["git:snapshots/images.parquet"], found


@pytest.mark.pipeline
def test_a_submodules_history_and_git_lfs_objects_are_looked_through(tiny_project):
    """A submodule keeps its objects in .git/modules/<name>, git LFS its files' bytes in
    .git/lfs/objects: both held a photograph of the erased subject after a VALID certificate."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    assert verify_certificate(result.certificate_path, root=root).ok
    png = next(iter(proj.images[proj.pids[0]].values()))
    module = root / ".git" / "modules" / "sub"
    git(root, "init", "-q", "--bare", str(module))
    blob = subprocess.run(
        ["git", f"--git-dir={module}", "hash-object", "-w", "--stdin"],
        input=png,
        capture_output=True,
    )
    assert blob.returncode == 0
    report = verify_certificate(result.certificate_path, root=root)
    assert [f["path"] for f in report.findings] == [
        f"{module} (an object of the git history: rewrite it out, see `visage privacy doctor`)"
    ]
    found = [f.path for f in doctor(proj.paths).findings if f.kind == ERASED_IN_GIT]
    assert found == ["git:.git/modules/sub"]
    shutil.rmtree(module)
    sha = hashlib.sha256(png).hexdigest()
    lfs = root / ".git" / "lfs" / "objects" / sha[:2] / sha[2:4] / sha
    lfs.parent.mkdir(parents=True)
    lfs.write_bytes(png)
    report = verify_certificate(result.certificate_path, root=root)
    assert [f["path"] for f in report.findings] == [str(lfs)]


@pytest.mark.parametrize("form", ["stream", "nbformat3", "widget"])
def test_a_photograph_a_notebook_holds_in_any_form_goes_and_is_looked_for(project, form):
    """Only nbformat 4 outputs' data was looked inside: a print of an <img> tag (a stream), an
    nbformat 3 notebook's png output and an Image widget's saved state kept the photograph."""
    proj = make_project(project, n_subjects=3)
    victim = proj.pids[0]
    png = next(iter(proj.images[victim].values()))
    b64 = base64.b64encode(png).decode()
    other = {"cell_type": "code", "source": "1", "metadata": {}, "outputs": []}
    if form == "stream":
        out = {
            "output_type": "stream",
            "name": "stdout",
            "text": f'<img src="data:image/png;base64,{b64}">',
        }
        doc = {
            "cells": [{**other, "outputs": [out]}],
            "metadata": {},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    elif form == "nbformat3":
        out = {"output_type": "display_data", "png": b64, "metadata": {}}
        cell = {"cell_type": "code", "input": "show()", "outputs": [out], "language": "python"}
        doc = {
            "worksheets": [{"cells": [cell]}],
            "metadata": {},
            "nbformat": 3,
            "nbformat_minor": 0,
        }
    else:
        state = {"model_name": "ImageModel", "state": {"value": b64, "format": "png"}}
        doc = {
            "cells": [other],
            "metadata": {
                "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {"m1": state}}}
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    nb = proj.paths.root / "notebooks" / "look.ipynb"
    nb.parent.mkdir(parents=True)
    nb.write_text(json.dumps(doc), encoding="utf-8")
    saved = nb.read_bytes()
    result = Erasure(proj.paths).erase(victim)
    assert nb.is_file() and b64 not in nb.read_text(encoding="utf-8")
    assert result.certificate["claims"]["copies_removed"] == {"notebooks": 1}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    nb.write_bytes(saved)
    assert not verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_a_damaged_git_object_is_not_shown_clean(project):
    """A damaged object (`<oid> missing` from git) crashed the verifier with a ValueError, or
    was taken for one pruned and skipped."""
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    root = proj.paths.root
    git(root, "init", "-q")
    png = next(iter(proj.images[proj.pids[0]].values()))
    oid = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"], cwd=root, input=png, capture_output=True
        )
        .stdout.decode()
        .strip()
    )
    loose = root / ".git" / "objects" / oid[:2] / oid[2:]
    loose.chmod(0o644)
    loose.write_bytes(b"garbage")
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert any("damaged" in f["why"] for f in report.findings), report.findings
    assert oid not in json.dumps(report.findings)


def test_a_notebook_with_a_byte_order_mark_or_odd_json_is_handled(project):
    proj = make_project(project, n_subjects=3)
    victim = proj.pids[0]
    png = next(iter(proj.images[victim].values()))
    theirs = next(iter(proj.images[proj.pids[1]].values()))
    folder = proj.paths.root / "notebooks"
    folder.mkdir()
    bom = folder / "bom.ipynb"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(notebook(png, theirs)).encode())
    spaced = folder / "spaced.ipynb"
    spaced.write_text(" " * 5000 + json.dumps(notebook(png, theirs)), encoding="utf-8")
    odd = folder / "odd.json"
    odd.write_text(json.dumps({"cells": [{"cell_type": "markdown", "attachments": ["a"]}]}))
    result = Erasure(proj.paths).erase(victim)
    assert png not in images_in(bom) and png not in images_in(spaced)
    assert result.certificate["claims"]["copies_removed"] == {"notebooks": 2}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


@pytest.mark.pipeline
def test_a_submodules_git_lfs_objects_are_walked(tiny_project):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    png = next(iter(proj.images[proj.pids[0]].values()))
    module = root / ".git" / "modules" / "sub"
    git(root, "init", "-q", "--bare", str(module))
    sha = hashlib.sha256(png).hexdigest()
    lfs = module / "lfs" / "objects" / sha[:2] / sha[2:4] / sha
    lfs.parent.mkdir(parents=True)
    lfs.write_bytes(png)
    report = verify_certificate(result.certificate_path, root=root)
    assert [f["path"] for f in report.findings] == [str(lfs)]
