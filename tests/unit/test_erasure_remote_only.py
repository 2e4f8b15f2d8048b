"""A copy that lives only on a DVC remote: pushed, then gone from the cache and the workspace
(``dvc push`` then ``dvc gc -w -c``, or a clone that never pulled). Its object is named by its
own md5 (a notebook's, not the photograph's), so no local file leads to it.

Before, the copies step and the verifier read local files only: the notebook on the remote kept
the erased photograph, the certificate verified VALID and ``dvc pull`` brought it back.
"""

from __future__ import annotations

import base64
import shutil
import socket

import pytest
from project_helpers import stack_project_on
from rights_fakes import make_project
from test_erasure import _dvc
from test_erasure_embedded import images_in, tracked_notebook

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import IN_PROGRESS, RequestBook
from visage_ml.rights import dvc_objects, lineage
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.stack.manager import Stack, configure_project


def _remote_only_notebook(root, proj, victim: str, other: str):
    """A notebook showing ``victim``'s photograph, tracked, pushed to a local remote, then gone
    from the workspace and the cache (as in a clone that never pulled)."""
    png, nb = tracked_notebook(root, proj, victim, other)
    remote = root.parent / "remote"
    assert _dvc(root, "remote", "add", "-f", "-d", "local", str(remote)).returncode == 0
    assert _dvc(root, "push").returncode == 0
    nb.unlink()
    shutil.rmtree(root / ".dvc" / "cache")
    return png, nb, remote


def _shows(folder, png: bytes) -> bool:
    return any(base64.b64encode(png) in p.read_bytes() for p in folder.rglob("*") if p.is_file())


@pytest.mark.pipeline
def test_a_notebook_only_on_the_stack_s3_leaves_it_and_its_volume_files(stack, tiny_project):
    """The same on the stack's S3 (SeaweedFS): the remote is listed and read through the S3
    API, the object deleted, and its bytes leave SeaweedFS's volume files too."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    stack_project_on(stack, root)
    configure_project(Stack.of(proj.paths))
    victim, other = proj.pids[0], proj.pids[1]
    png, nb = tracked_notebook(root, proj, victim, other)
    assert _dvc(root, "push", "notebooks/look.ipynb.dvc").returncode == 0
    nb.unlink()
    shutil.rmtree(root / ".dvc" / "cache")
    seaweed = Stack.of(proj.paths).seaweed()
    assert seaweed.garbage_bytes() == 0

    result = Erasure(proj.paths).erase(victim)
    assert (result.certificate["claims"].get("copies_removed") or {}).get("dvc remote:stack") == 1
    assert verify_certificate(result.certificate_path, root=root).ok
    # SeaweedFS compresses a notebook: its deleted bytes are looked for as the volumes' garbage.
    assert seaweed.garbage_bytes() == 0, "the notebook's bytes stayed in a volume file"
    _dvc(root, "pull", "--force", "notebooks/look.ipynb.dvc")
    assert not nb.exists() or png not in images_in(nb), "dvc pull brought the photograph back"


def _through_the_api(monkeypatch) -> None:
    """The local remote read as an S3 one is: through DVC's filesystem API (listed with every
    size, objects opened and ranged-read there), never as files of this file system."""
    monkeypatch.setattr(dvc_objects, "_is_local", lambda odb: False)


@pytest.mark.pipeline
@pytest.mark.parametrize("read", ["as files", "through the API"])
def test_a_notebook_only_on_a_remote_loses_the_photograph_before_the_certificate(
    tiny_project, monkeypatch, read
):
    if read == "through the API":
        _through_the_api(monkeypatch)
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, other = proj.pids[0], proj.pids[1]
    png, nb, remote = _remote_only_notebook(root, proj, victim, other)
    assert _shows(remote, png)

    result = Erasure(proj.paths).erase(victim)
    assert not _shows(remote, png), "the remote still holds the erased photograph"
    assert (result.certificate["claims"].get("copies_removed") or {}).get("dvc remote:local") == 1
    assert verify_certificate(result.certificate_path, root=root).ok
    _dvc(root, "pull", "--force")
    assert not nb.exists() or png not in images_in(nb), "dvc pull brought the photograph back"


@pytest.mark.pipeline
@pytest.mark.parametrize("read", ["as files", "through the API"])
def test_a_copy_pushed_to_a_remote_after_the_certificate_fails_the_verifier(
    tiny_project, monkeypatch, read
):
    """A clone that still had the notebook pushed it again after the erasure: the remote holds
    the photograph once more, and the verifier says so."""
    if read == "through the API":
        _through_the_api(monkeypatch)
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, other = proj.pids[0], proj.pids[1]
    _png, _nb, remote = _remote_only_notebook(root, proj, victim, other)
    pushed = {p: p.read_bytes() for p in remote.rglob("*") if p.is_file()}

    result = Erasure(proj.paths).erase(victim)
    assert verify_certificate(result.certificate_path, root=root).ok
    for path, data in pushed.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert any(str(remote) in f["path"] for f in report.findings), report.findings


@pytest.mark.pipeline
def test_a_remote_that_cannot_be_listed_stops_the_erasure_and_fails_the_verifier(
    tiny_project, monkeypatch
):
    """A remote the erasure may delete from but not list (a key without `s3:ListBucket`, the
    network gone between two steps): none of its objects was looked at, so nothing there is
    shown clean; the erasure stops before its certificate, saying which remote and what to do,
    and finishes once the remote answers."""
    _through_the_api(monkeypatch)
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, other = proj.pids[0], proj.pids[1]
    png, _nb, remote = _remote_only_notebook(root, proj, victim, other)
    listed = dvc_objects.ObjectStore.listed

    def refused(self):
        raise PermissionError("Access Denied")

    monkeypatch.setattr(dvc_objects.ObjectStore, "listed", refused)
    with pytest.raises(OSError, match="could not be reached or listed") as caught:
        Erasure(proj.paths).erase(victim)
    assert "remote:local (PermissionError)" in str(caught.value)
    assert "visage privacy resume" in str(caught.value)
    assert list((root / "privacy" / "certificates").glob("*.json")) == []
    (st,) = RequestBook(PrivacyCore(proj.paths)).open(pid=victim)
    assert st.status == IN_PROGRESS

    monkeypatch.setattr(dvc_objects.ObjectStore, "listed", listed)
    (result,) = Erasure(proj.paths).resume()
    assert not _shows(remote, png)
    assert verify_certificate(result.certificate_path, root=root).ok
    monkeypatch.setattr(dvc_objects.ObjectStore, "listed", refused)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    detail = " ".join(c.detail for c in report.checks if not c.ok)
    assert "remote:local (PermissionError)" in detail and "could not be reached" in detail


def _cloud_remote_down(root) -> None:
    """An S3 remote ``cloud`` whose endpoint takes no connection (the stack stopped, the
    network down)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for args in (
        ["remote", "add", "cloud", "s3://visage/dvc"],
        ["remote", "modify", "--local", "cloud", "endpointurl", f"http://127.0.0.1:{port}"],
        ["remote", "modify", "--local", "cloud", "access_key_id", "k"],
        ["remote", "modify", "--local", "cloud", "secret_access_key", "s"],
    ):
        assert _dvc(root, *args).returncode == 0


@pytest.mark.pipeline
def test_a_cloud_remote_that_cannot_be_reached_is_not_shown_clean(tiny_project):
    """An S3 remote whose endpoint takes no connection (the stack stopped, the network down):
    nothing on it is shown clean, and the verifier says which remote and why, after one short
    connection attempt rather than the client's retries."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    assert verify_certificate(result.certificate_path, root=root).ok
    _cloud_remote_down(root)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    detail = " ".join(c.detail for c in report.checks if not c.ok)
    assert "remote:cloud (ConnectionRefusedError)" in detail, detail


@pytest.mark.pipeline
@pytest.mark.parametrize("read", ["as files", "through the API"])
def test_a_model_only_on_a_remote_is_still_said_to_be_restorable(tiny_project, monkeypatch, read):
    """A model trained on the subject, pushed and gone from the cache: `dvc pull` puts it back,
    yet `verify-certificate` and `lineage` conceded nothing when the remote was an S3 one
    (remotes elsewhere were not asked); one that cannot be asked is said to be so."""
    if read == "through the API":
        _through_the_api(monkeypatch)
    root = tiny_project(dvc=True)
    weights = root / "data" / "external" / "embedder-v1.pt"  # an old stage output, kept
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"weights trained on the subject")
    md5 = dvc_objects.add(root, weights)
    assert (
        _dvc(root, "remote", "add", "-f", "-d", "local", str(root.parent / "remote")).returncode
        == 0
    )
    assert _dvc(root, "push").returncode == 0
    weights.unlink()
    shutil.rmtree(root / ".dvc" / "cache")
    models = [{"kind": "dvc", "model": "train_embedder: models/embedder.pt", "version": md5}]

    said = lineage.restorable(ProjectPaths(root), models)
    assert said is not None and "1 model(s) trained on the subject remain restorable" in said
    assert md5 in said, said

    shutil.rmtree(root.parent / "remote")
    _cloud_remote_down(root)
    said = lineage.restorable(ProjectPaths(root), models)
    assert said is not None and "remote:cloud (ConnectionRefusedError)" in said, said
    assert "could not be asked" in said and "remain restorable" not in said, said
