"""What the git history's scan learnt of each object, kept by its id in the git folder
(``<git dir>/visage/scan-cache.json``), so that an erasure or ``visage privacy doctor`` on a
monorepo does not read gigabytes of history again; the verifier reads every object whatever the
cache says.

Before, every erasure, doctor and verification read every blob of the repository.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import zipfile

import pytest
from project_helpers import git
from rights_fakes import make_project

from visage_ml.rights import content_scan
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.sealing import ERASED_IN_GIT, GIT_UNREACHED, doctor


def blob(root, data: bytes, *, git_dir=None) -> str:
    where = [f"--git-dir={git_dir}"] if git_dir is not None else []
    done = subprocess.run(
        ["git", *where, "hash-object", "-w", "--stdin"], cwd=root, input=data, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def in_git(report) -> list[str]:
    return [f.path for f in report.findings if f.kind == ERASED_IN_GIT]


def cache_of(git_dir):
    return git_dir / content_scan.SCAN_CACHE


@pytest.fixture
def erased(project):
    """A project whose first subject was erased (certificate VALID), then put in git."""
    proj = make_project(project, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    git(project, "init", "-q")
    png = next(iter(proj.images[proj.pids[0]].values()))
    return proj, result, png


def test_a_cache_edited_to_hide_a_photograph_does_not_fool_the_verifier(erased):
    """An operator with disk access rewrites the cache so the erased photograph's object reads
    as other bytes: the verifier, which reads every object, still fails the certificate."""
    proj, result, png = erased
    root = proj.paths.root
    assert verify_certificate(result.certificate_path, root=root).ok
    blob(root, png)
    assert in_git(doctor(proj.paths)) == [f"git:{GIT_UNREACHED}"]
    cache = cache_of(root / ".git")
    sha = hashlib.sha256(png).hexdigest()
    text = cache.read_text(encoding="utf-8")
    assert sha in text, "doctor's scan kept what it read"
    cache.write_text(text.replace(sha, "0" * 64), encoding="utf-8")
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    (finding,) = report.findings
    assert finding["path"].startswith(f"{root / '.git'} (an object of the git history"), finding
    assert finding["why"] == "plaintext of an erased image"


def test_a_cache_entry_git_contradicts_is_not_used(erased):
    """An entry whose size is not that of the object git lists under its id (a cache copied
    from another repository, an edit) says nothing of that object: it is read."""
    proj, _result, png = erased
    root = proj.paths.root
    oid = blob(root, png)
    assert in_git(doctor(proj.paths))
    cache = cache_of(root / ".git")
    doc = json.loads(cache.read_text(encoding="utf-8"))
    doc["objects"][oid] = ["0" * 64, len(png) + 1, [], False]
    cache.write_text(json.dumps(doc), encoding="utf-8")
    assert in_git(doctor(proj.paths)), "the erased photograph in git"
    (hit,) = [h for h in content_scan.git_objects(root, cached=True) if h.name == oid]
    assert hit.digest == hashlib.sha256(png).hexdigest()


@pytest.mark.parametrize("damage", [b"garbage", b'{"format": 99}', b"[]", b'{"objects": 3}'])
def test_a_damaged_or_foreign_cache_is_ignored(erased, damage):
    proj, _result, png = erased
    root = proj.paths.root
    blob(root, png)
    assert in_git(doctor(proj.paths))
    cache_of(root / ".git").write_bytes(damage)
    assert in_git(doctor(proj.paths)), "the erased photograph in git"
    # And the cache is whole again.
    assert hashlib.sha256(png).hexdigest() in cache_of(root / ".git").read_text(encoding="utf-8")


def test_a_cache_from_before_a_history_rewrite_forgets_the_erased_photograph(erased):
    proj, _result, png = erased
    root = proj.paths.root
    (root / "README.md").write_text("project\n", encoding="utf-8")
    git(root, "add", "README.md")
    git(root, "commit", "-qm", "start")
    (root / "face.png").write_bytes(png)
    git(root, "add", "-f", "face.png")
    git(root, "commit", "-qm", "review")
    assert in_git(doctor(proj.paths)) == ["git:face.png"]
    sha = hashlib.sha256(png).hexdigest()
    folder = cache_of(root / ".git").parent
    assert sha in cache_of(root / ".git").read_text(encoding="utf-8")
    # A temporary file a killed write left beside the cache holds it too.
    (folder / f".{content_scan.SCAN_CACHE.name}.dead.tmp").write_text(sha, encoding="utf-8")
    git(root, "reset", "-q", "--hard", "HEAD~1")
    git(root, "reflog", "expire", "--expire=now", "--all")
    git(root, "gc", "-q", "--prune=now")
    assert in_git(doctor(proj.paths)) == []
    left = [p for p in folder.iterdir() if sha in p.read_text(encoding="utf-8", errors="replace")]
    assert left == [], "the erased photograph's digest lingers in the git folder"


def test_a_damaged_object_is_not_shown_clean_with_the_cache_warm(erased):
    proj, result, png = erased
    root = proj.paths.root
    oid = blob(root, png)
    blob(root, b"other bytes")
    assert content_scan.git_objects(root, cached=True)
    loose = root / ".git" / "objects" / oid[:2] / oid[2:]
    loose.chmod(0o644)
    loose.write_bytes(b"garbage")
    with pytest.raises(content_scan.GitUnreadableError, match="damaged"):
        content_scan.git_objects(root, cached=True)
    assert in_git(doctor(proj.paths)) == ["git:"]
    assert not verify_certificate(result.certificate_path, root=root).ok


def test_what_is_committed_after_the_cache_is_read(erased):
    """A new commit, a notebook showing the photograph, a submodule's object: each read once
    the cache is warm, and each git folder keeps its own cache."""
    proj, result, png = erased
    root = proj.paths.root
    (root / "README.md").write_text("project\n", encoding="utf-8")
    git(root, "add", "README.md")
    git(root, "commit", "-qm", "start")
    assert in_git(doctor(proj.paths)) == []
    assert cache_of(root / ".git").is_file()
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "source": "show()",
                "metadata": {},
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"image/png": base64.b64encode(png).decode()},
                    }
                ],
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "review.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    git(root, "add", "review.ipynb")
    git(root, "commit", "-qm", "review")
    assert in_git(doctor(proj.paths)) == ["git:review.ipynb"]
    git(root, "rm", "-q", "review.ipynb")
    git(root, "commit", "-qm", "tidy")
    git(root, "reset", "-q", "--hard", "HEAD~2")
    git(root, "reflog", "expire", "--expire=now", "--all")
    git(root, "gc", "-q", "--prune=now")
    assert in_git(doctor(proj.paths)) == []
    # A submodule's own objects, with its own cache.
    module = root / ".git" / "modules" / "sub"
    git(root, "init", "-q", "--bare", str(module))
    assert in_git(doctor(proj.paths)) == []
    blob(root, png, git_dir=module)
    assert in_git(doctor(proj.paths)) == ["git:.git/modules/sub"]
    assert hashlib.sha256(png).hexdigest() in cache_of(module).read_text(encoding="utf-8")
    assert not verify_certificate(result.certificate_path, root=root).ok


def test_a_git_folder_the_scan_cannot_write_to_is_still_read(erased, monkeypatch):
    proj, _result, png = erased
    root = proj.paths.root
    blob(root, png)

    def refuse(*_a, **_k):
        raise PermissionError("read-only")

    monkeypatch.setattr(content_scan, "atomic_write_bytes", refuse)
    assert in_git(doctor(proj.paths))
    assert not cache_of(root / ".git").exists()


def test_an_archive_holding_the_photograph_in_git_is_found_with_the_cache_warm(erased):
    """A zip of the data folder committed once: what it holds inside is kept with its entry,
    so a warm cache still finds the photograph in it (the entry kept only the archive's own
    digest, and the next doctor or erasure called the history clean)."""
    proj, _result, png = erased
    root = proj.paths.root
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data/face.png", png)
        z.writestr("data/README.txt", "for a colleague")
    blob(root, zipped.getvalue())
    assert in_git(doctor(proj.paths)) == [f"git:{GIT_UNREACHED}"]  # cold: read
    assert in_git(doctor(proj.paths)) == [f"git:{GIT_UNREACHED}"]  # warm: from the cache
