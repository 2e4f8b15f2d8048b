"""The scan for leftover copies reads only the files that could be one: a file whose size none
of the erased content has is looked at (its size) and left unread.

Before, the erasure's copies step and the verifier read and hashed every byte of the project
(10 GB of unrelated files: 18 s of a 22 s erasure, 10 s of the verification). Whenever a size
sought is not known (records or a tombstone file of an earlier version, no tombstone key), every
file is read as before: never "clean" for a file that was not compared.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from rights_fakes import make_project

from visage_ml.privacy.tombstones import (
    KIND_PID,
    KIND_PLAIN,
    KIND_SHA256,
    Tombstones,
    set_mac,
)
from visage_ml.rights import content_scan
from visage_ml.rights.certify import GIT_OBJECT, verify_certificate
from visage_ml.rights.content_hashes import ContentHashes
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.erasure import orchestrator as erasure_mod

NAME = "Zelda_Testperson_portrait"
# Files of sizes no erased content has: random bytes, as a project's other data would be.
BULK = {
    "data/interim_qx9/bulk-a.bin": 300_001,
    "reports/bulk-b.bin": 123_457,
    "models/bulk-c.bin": 77_777,
}
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


# First bytes no reader looks inside (:func:`~visage_ml.rights.embedded.kind` is None).
NO_KIND = b"\0bulk\0"


@pytest.fixture
def proj(project):
    return make_project(project, n_subjects=4)


def _bulk(proj) -> set[Path]:
    out = set()
    for rel, size in BULK.items():
        path = proj.paths.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # Begins as no format looked inside does (random first bytes were a pickle's or a
        # gzip's once in a few thousand runs).
        path.write_bytes(NO_KIND + os.urandom(size - len(NO_KIND)))
        out.add(path)
    return out


def _notebook(*pngs: bytes) -> str:
    outputs = [
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": b64}}
        for b64 in (base64.b64encode(p).decode() for p in pngs)
    ]
    cell = {"cell_type": "code", "source": "show()", "metadata": {}, "outputs": outputs}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def _plant(proj, pid: str) -> dict[Path, bytes]:
    """The subject's photograph in clear, a copy of a sealed file of theirs, and a notebook
    showing the photograph (beside another subject's)."""
    root = proj.paths.root
    photo = next(iter(proj.images[pid].values()))
    other = next(iter(proj.images[proj.pids[-1]].values()))
    sealed = next((proj.paths.raw / pid).glob("*.sealed")).read_bytes()
    planted = {
        root / "reports" / f"{NAME}.png": photo,
        root / "data" / "aside_qx9" / f"{NAME}.sealed": sealed,
        root / "notebooks" / "explore.ipynb": _notebook(photo, other).encode(),
    }
    for path, data in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return planted


class _Counted:
    """A file the scan opened: reading more of it than its first bytes (what tells a notebook,
    which has no suffix in a DVC store, from the rest) says so in ``log``."""

    def __init__(self, fh, path: Path, log: list[Path]) -> None:
        self.fh, self.path, self.log = fh, path, log

    def read(self, *args):
        data = self.fh.read(*args)
        if self.fh.tell() > content_scan.SNIFF:
            self.log.append(self.path)
        return data

    def __getattr__(self, name: str):  # fileno (the scan keys its cache by the file's state)
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """The files the scan reads."""
    log: list[Path] = []
    real_open = open

    def counted(path, *args, **kwargs):
        return _Counted(real_open(path, *args, **kwargs), Path(path), log)

    monkeypatch.setattr(content_scan, "open", counted, raising=False)
    return log


def _detail(report) -> str:
    (check,) = [c for c in report.checks if c.name == "no erased content remains"]
    return check.detail


def test_a_file_of_no_size_sought_is_not_read_and_every_copy_is_still_found(proj, reads):
    victim = proj.pids[0]
    bulk = _bulk(proj)
    planted = _plant(proj, victim)
    nb = proj.paths.root / "notebooks" / "explore.ipynb"
    result = Erasure(proj.paths).erase(victim)
    assert [p for p in planted if p != nb and p.exists()] == []
    assert nb.is_file() and b"image/png" in nb.read_bytes(), "the other subject's image stays"
    assert result.certificate["claims"]["copies_removed"] == {
        "data": 1,
        "notebooks": 1,
        "reports": 1,
    }
    assert bulk.isdisjoint(reads), "a file of no size sought was read by the erasure"
    assert nb in reads, "a notebook is read whatever its size (its images are inside)"

    reads.clear()
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]
    assert bulk.isdisjoint(reads), "a file of no size sought was read by the verifier"
    # It says how many it looked at, and how many of those it read.
    looked, read = report.files_looked_at, report.files_hashed
    assert looked >= read + len(bulk) and read > 0
    assert f"{looked} files looked at ({read} read" in _detail(report)

    # Put back: each is found, the bulk still unread.
    for path, data in planted.items():
        path.write_bytes(data)
    reads.clear()
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert {Path(f["path"]) for f in report.findings} == set(planted)
    assert bulk.isdisjoint(reads)


def test_a_dir_manifest_naming_the_subject_is_still_read_by_the_verifier(proj, reads):
    victim = proj.pids[0]
    result = Erasure(proj.paths).erase(victim)
    manifest = proj.paths.root / "data" / "aside_qx9" / "0123456789abcdef.dir"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps([{"md5": "0" * 32, "relpath": f"{victim}/a.sealed"}]))
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(manifest)]


def _strip_sizes(monkeypatch) -> None:
    """Records as an earlier version made them: no size beside any SHA-256."""
    record = erasure_mod.Erasure._record

    def old(self, st, step, phase, artefacts, info=None):
        bare = [{k: v for k, v in a.items() if k != "size"} for a in artefacts]
        return record(self, st, step, phase, bare, info)

    monkeypatch.setattr(erasure_mod.Erasure, "_record", old)


def test_an_erasure_recorded_without_sizes_reads_every_file(proj, reads, monkeypatch):
    victim = proj.pids[0]
    bulk = _bulk(proj)
    planted = _plant(proj, victim)
    _strip_sizes(monkeypatch)
    result = Erasure(proj.paths).erase(victim)
    artefacts = result.certificate["claims"]["artefacts"]
    assert artefacts and not [a for a in artefacts if "size" in a]
    assert bulk <= set(reads), "a size not known, yet a file was left unread"
    reads.clear()
    sealed = proj.paths.root / "data" / "aside_qx9" / f"{NAME}.sealed"
    sealed.write_bytes(planted[sealed])
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert bulk <= set(reads)
    assert [f["path"] for f in report.findings] == [str(sealed)]


def _add_without_sizes(monkeypatch) -> None:
    """Tombstones as an earlier version wrote them: the PNGs' hashes, no sizes."""
    add = Tombstones.add

    def old(self, pid, **kw):
        kw.pop("plain_sizes", None)
        return add(self, pid, **kw)

    monkeypatch.setattr(Tombstones, "add", old)


def test_a_photograph_of_a_subject_erased_before_sizes_were_recorded_is_still_found(
    proj, reads, monkeypatch
):
    earlier, victim = proj.pids[0], proj.pids[1]
    with monkeypatch.context() as m:
        _add_without_sizes(m)
        Erasure(proj.paths).erase(earlier)
    bulk = _bulk(proj)
    # The earlier subject's photograph saved again since: a copy of erased content.
    photo = next(iter(proj.images[earlier].values()))
    copy = proj.paths.root / "reports" / f"{NAME}.png"
    copy.write_bytes(photo)
    result = Erasure(proj.paths).erase(victim)
    assert not copy.exists(), "an erased image's plaintext was left"
    assert bulk <= set(reads), "a tombstone without sizes, yet a file was left unread"
    copy.write_bytes(photo)
    reads.clear()
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert bulk <= set(reads)
    assert [f["path"] for f in report.findings] == [str(copy)]


def test_a_tombstone_file_an_earlier_version_wrote_still_loads_and_sizes_stay_unknown(project):
    paths = make_project(project, n_subjects=2).paths
    key = os.urandom(32)
    paths.tombstone_key.parent.mkdir(parents=True, exist_ok=True)
    paths.tombstone_key.write_bytes(key)
    png_sha, file_sha = "ab" * 32, "cd" * 32
    old_pid = "p" + "1" * 16
    macs = sorted(
        Tombstones.mac_with(key, kind, value)
        for kind, value in ((KIND_PID, old_pid), (KIND_PLAIN, png_sha), (KIND_SHA256, file_sha))
    )
    header = json.dumps({"v": 2, "n": len(macs), "mac": set_mac(key, macs)}, separators=(",", ":"))
    text = "\n".join([header, *(f'"{m}"' for m in macs)]) + "\n"
    paths.tombstones.parent.mkdir(parents=True, exist_ok=True)
    paths.tombstones.write_text(text)

    t = Tombstones.open(paths)
    assert t.has_plain(png_sha) and t.has_file(file_sha) and t.has_subject(old_pid)
    assert paths.tombstones.read_text() == text, "an older file is not rewritten to be read"
    hashes = ContentHashes.of(paths, [{"store": "x", "path": "a", "sha256": "ef" * 32, "size": 9}])
    assert hashes.may_match(123_457), "the older subject's sizes are not known: read everything"

    # A new erasure adds sizes of its own: the older subject's are still unknown.
    t.add("p" + "2" * 16, plains=["12" * 32], plain_sizes={"12" * 32: 4242})
    again = Tombstones.open(paths)
    assert again.has_plain(png_sha) and again.has_plain("12" * 32)
    hashes = ContentHashes.of(paths, [{"store": "x", "path": "a", "sha256": "ef" * 32, "size": 9}])
    assert hashes.may_match(123_457)
    # What an earlier version checks of the new file: the count and the set MAC of its lines.
    head, *lines = paths.tombstones.read_text().splitlines()
    doc = json.loads(head)
    held = [json.loads(x) for x in lines]
    assert doc["v"] == 2 and doc["n"] == len(held)
    assert doc["mac"] == set_mac(key, held)


def test_sizes_are_used_only_while_every_erasure_recorded_them(project):
    paths = make_project(project, n_subjects=2).paths
    t = Tombstones.open(paths)
    t.add("p" + "1" * 16, plains=["ab" * 32], plain_sizes={"ab" * 32: 4242})
    rows = [{"store": "x", "path": "a", "sha256": "ef" * 32, "size": 9}]
    hashes = ContentHashes.of(paths, rows)
    assert hashes.may_match(4242) and hashes.may_match(9)
    assert not hashes.may_match(123_457)
    # A row without its size (an earlier version's record): every size may be sought.
    assert ContentHashes.of(
        paths, [*rows, {"store": "y", "path": "b", "sha256": "01" * 32}]
    ).may_match(123_457)
    # The header's word for it, edited by someone without the key: not taken.
    head, _, body = paths.tombstones.read_text().partition("\n")
    doc = json.loads(head)
    doc["sizes"] = "0" * 64
    paths.tombstones.write_text(json.dumps(doc, separators=(",", ":")) + "\n" + body)
    assert Tombstones.open(paths).has_plain("ab" * 32)
    assert ContentHashes.of(paths, rows).may_match(123_457)
    # An earlier version adding an erasure rewrites the file without the header's word: every
    # file is read from then on.
    del doc["sizes"]
    paths.tombstones.write_text(json.dumps(doc, separators=(",", ":")) + "\n" + body)
    assert ContentHashes.of(paths, rows).may_match(123_457)
    # Without the key, nothing is known of the sizes erased images have.
    paths.tombstone_key.unlink()
    assert ContentHashes.of(paths, rows).may_match(123_457)


def _git(root: Path, *args: str, data: bytes | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, input=data, env=ENV)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().strip()


def test_git_objects_are_all_read_and_a_copy_there_is_found(proj):
    """Git does not say which blob is a notebook: every blob is read, whatever its size (one of
    no size sought, left unread, could have been a notebook showing the erased photograph)."""
    victim = proj.pids[0]
    result = Erasure(proj.paths).erase(victim)
    root = proj.paths.root
    _git(root, "init", "-q")
    photo = next(iter(proj.images[victim].values()))
    oids = {
        "photo": _git(root, "hash-object", "-w", "--stdin", data=photo),
        "notebook": _git(root, "hash-object", "-w", "--stdin", data=_notebook(photo).encode()),
        "bulk": _git(root, "hash-object", "-w", "--stdin", data=NO_KIND + os.urandom(50_000)),
    }
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    found = [f for f in report.findings if GIT_OBJECT in f["path"]]
    assert len(found) == 2, report.findings
    hashes = ContentHashes.of(proj.paths, result.certificate["claims"]["artefacts"])
    objects = {h.name: h for h in content_scan.git_objects(root)}
    assert objects[oids["photo"]].matches(hashes) and objects[oids["notebook"]].matches(hashes)
    assert objects[oids["bulk"]].read and not objects[oids["bulk"]].matches(hashes)
