"""A file too large to hold in memory (over ``embedded.EMBED_MAX``, 64 MiB; made small here)
holding the erased photograph, kept where no local file is: a data scientist's
``dataset.tar.gz`` of 200 MB, or a CSV of the dataset's photographs base64-encoded, pushed to
the DVC remote and gone from the cache (``dvc gc -w -c``, a clone that never pulled), or
committed to git without LFS.

Before, a local file that large was read member by member (an archive) or a window at a time
(a text file), but an object of a remote read through DVC's filesystem API (S3) and a git blob
were only hashed whole: the erasure left them, the certificate verified VALID, and ``dvc pull``
or ``git checkout`` brought the photograph back.
"""

from __future__ import annotations

import base64
import errno
import io
import random
import shutil
import subprocess
import tarfile

import pytest
from project_helpers import git, stack_project_on
from rights_fakes import make_project
from test_erasure import _dvc

from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import IN_PROGRESS, RequestBook
from visage_ml.rights import certify, content_scan, dvc_objects, embedded
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.sealing import ERASED_IN_GIT, doctor
from visage_ml.stack.manager import Stack, configure_project

# What is held in memory at once, here: the files below are several times larger.
SMALL_MAX = 256 << 10
MADE = ["tar.gz", "csv"]


def _filler(n: int, seed: int) -> bytes:
    """Bytes that do not compress (other people's photographs, as far as size goes)."""
    return random.Random(seed).randbytes(n)


def _large(made: str, png: bytes, theirs: bytes) -> bytes:
    """``dataset.tar.gz`` (other photographs, then the erased one) or ``faces.csv`` (rows of
    base64 photographs, the erased one among them), over :data:`SMALL_MAX` several times."""
    if made == "tar.gz":
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as t:
            for name, data in (
                ("dataset/other-0.png", _filler(3 * SMALL_MAX, 0)),
                ("dataset/face.png", png),
                ("dataset/other-1.png", theirs),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return out.getvalue()
    rows = [f"{i},{base64.b64encode(_filler(9000 + i, i)).decode()}" for i in range(120)]
    rows.insert(60, f"60,{base64.b64encode(png).decode()}")
    return ("id,img\n" + "\n".join(rows) + f"\n999,{base64.b64encode(theirs).decode()}\n").encode()


def _photos(proj) -> tuple[str, bytes, bytes]:
    victim, other = proj.pids[0], proj.pids[1]
    return victim, next(iter(proj.images[victim].values())), next(iter(proj.images[other].values()))


def _objects(remote) -> dict:
    return {p: p.read_bytes() for p in remote.rglob("*") if p.is_file()}


def _holds(remote, data: bytes) -> bool:
    return any(v == data for v in _objects(remote).values())


def _pushed_then_gone(root, made: str, data: bytes):
    """``data`` tracked with ``dvc add``, pushed to a local remote, then gone from the workspace
    and the cache: the remote alone holds it."""
    path = root / "data" / "shared" / f"dataset.{made}"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    dvc_objects.add(root, path)
    remote = root.parent / "remote"
    assert _dvc(root, "remote", "add", "-f", "-d", "local", str(remote)).returncode == 0
    assert _dvc(root, "push").returncode == 0
    path.unlink()
    shutil.rmtree(root / ".dvc" / "cache")
    return remote


@pytest.mark.pipeline
@pytest.mark.parametrize("made", MADE)
def test_a_large_file_only_on_a_remote_read_through_the_api_goes_whole(
    tiny_project, monkeypatch, made
):
    """The remote read as an S3 one is (DVC's filesystem API, not as files of this file
    system): the object goes whole, as any object holding erased content does, and put back it
    fails the verifier."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    monkeypatch.setattr(dvc_objects, "_is_local", lambda odb: False)
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, png, theirs = _photos(proj)
    data = _large(made, png, theirs)
    assert len(data) > 3 * embedded.EMBED_MAX
    remote = _pushed_then_gone(root, made, data)
    pushed = _objects(remote)
    assert _holds(remote, data)

    result = Erasure(proj.paths).erase(victim)
    assert not _holds(remote, data), "the remote still holds the erased photograph"
    assert (result.certificate["claims"].get("copies_removed") or {}).get("dvc remote:local") == 1
    assert verify_certificate(result.certificate_path, root=root).ok
    for path, content in pushed.items():  # a clone that still had it pushed it again
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert [f for f in report.findings if str(remote) in f["path"]], report.findings


@pytest.mark.pipeline
def test_a_large_archive_only_on_the_stack_s3_goes_whole(stack, tiny_project, monkeypatch):
    """The same on the stack's S3 (SeaweedFS), read through s3fs."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    stack_project_on(stack, root)
    configure_project(Stack.of(proj.paths))
    victim, png, theirs = _photos(proj)
    path = root / "data" / "shared" / "dataset.tar.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(_large("tar.gz", png, theirs))
    dvc_objects.add(root, path)
    assert _dvc(root, "push", "data/shared/dataset.tar.gz.dvc").returncode == 0
    path.unlink()
    shutil.rmtree(root / ".dvc" / "cache")

    result = Erasure(proj.paths).erase(victim)
    assert (result.certificate["claims"].get("copies_removed") or {}).get("dvc remote:stack") == 1
    assert verify_certificate(result.certificate_path, root=root).ok
    _dvc(root, "pull", "--force", "data/shared/dataset.tar.gz.dvc")
    assert not path.exists(), "dvc pull brought the archive of the photograph back"


def _hash_object(root, data: bytes) -> None:
    done = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"], cwd=root, input=data, capture_output=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.pipeline
@pytest.mark.parametrize("made", MADE)
def test_a_large_file_committed_to_git_stops_the_erasure_and_fails_the_verifier(
    tiny_project, monkeypatch, made
):
    """Committed without LFS, then removed from the tree: the blob is there for good. The
    erasure stops (twice: the second time from the git folder's scan cache), doctor says
    where; rewritten out of the history, the erasure certifies; written back into git, the
    verifier fails."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, png, theirs = _photos(proj)
    data = _large(made, png, theirs)
    assert len(data) > 3 * embedded.EMBED_MAX
    path = root / "data" / "shared" / f"dataset.{made}"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    git(root, "add", "-f", f"data/shared/dataset.{made}")
    git(root, "commit", "-qm", "dataset for the colleague")
    git(root, "rm", "-q", f"data/shared/dataset.{made}")
    git(root, "commit", "-qm", "tidy")

    with pytest.raises(OSError, match="git") as stop:
        Erasure(proj.paths).erase(victim)
    assert "dataset" not in str(stop.value), "a name someone chose in the message"
    with pytest.raises(OSError, match="git"):  # what the scan cache holds of it
        Erasure(proj.paths).resume()
    found = [f for f in doctor(proj.paths).findings if f.kind == ERASED_IN_GIT]
    assert [f.path for f in found] == [f"git:data/shared/dataset.{made}"]
    (st,) = RequestBook(PrivacyCore(proj.paths)).open(pid=victim)
    assert st.status == IN_PROGRESS

    git(root, "reset", "-q", "--hard", "HEAD~2")
    git(root, "reflog", "expire", "--expire=now", "--all")
    git(root, "gc", "-q", "--prune=now")
    (result,) = Erasure(proj.paths).resume()
    assert verify_certificate(result.certificate_path, root=root).ok
    _hash_object(root, data)  # a clone pushed it back
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert [f for f in report.findings if "git" in f["path"]], report.findings


class _FullAtFlush(io.BytesIO):
    """A spilled file on a disk that fills as its last bytes are flushed to it."""

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.pipeline
@pytest.mark.parametrize("full", ["made", "flushed"])
@pytest.mark.parametrize("where", ["remote", "git"])
def test_a_large_file_that_cannot_be_spilled_to_look_inside_is_not_shown_clean(
    tiny_project, monkeypatch, where, full
):
    """What is too large to hold is written, unnamed, to a folder of the project to be looked
    inside; with no room there (or a folder this user cannot write) it is not looked inside,
    and nothing shows it clean: the verifier fails, saying so."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    monkeypatch.setattr(dvc_objects, "_is_local", lambda odb: False)
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim, png, theirs = _photos(proj)
    data = _large("tar.gz", png, theirs)
    result = Erasure(proj.paths).erase(victim)
    if where == "remote":
        _pushed_then_gone(root, "tar.gz", data)
    else:
        _hash_object(root, data)

    def no_room(folder):
        if full == "flushed":
            return _FullAtFlush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(content_scan, "_spill_file", no_room)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    whys = [f["why"] for f in report.findings]
    if where == "remote":
        assert whys == [certify.UNREAD], whys
    else:
        assert len(whys) == 1 and "ENOSPC" in whys[0] and "git folder" in whys[0], whys
