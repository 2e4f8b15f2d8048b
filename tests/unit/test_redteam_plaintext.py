"""Red team on where an erased image's plaintext is named: what a photograph of an erased subject
(with or without the tombstone key) finds next to their pid after the erasure.

The guarantee under attack (visage_ml/rights/content_hashes.py): a plaintext copy is found
through the tombstones and recorded by its path, never by its SHA-256; a plaintext image the
erasure removes itself (a project not yet sealed: PNGs in data/raw, their DVC objects) is
recorded without its SHA-256 or MD5.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from rights_fakes import make_project
from test_certificate import erased, failed  # noqa: F401 - fixtures
from test_erasure import _dvc, _objects, md5_bytes

from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.rawstore import RawStore
from visage_ml.rights import dvc_objects
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.content_hashes import PLAINTEXT_WITHHELD
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.erasure.orchestrator import STORES


def test_a_verification_report_of_a_plaintext_copy_pairs_no_photo_hash_with_the_pid(erased):  # noqa: F811
    # `visage privacy verify-certificate --json` is what an auditor keeps: it names the pid
    # (the certificate's) and each finding. A finding that is an erased image's plaintext must
    # not carry that image's SHA-256, or the report is the link the ledger no longer holds.
    proj, victim, removed, result = erased
    png = next(iter(removed.values()))
    copy = proj.paths.root / "data" / "backup" / "copy.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(png)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert failed(report) == {"no erased content remains"}
    assert [f["path"] for f in report.findings] == [str(copy)]
    out = json.dumps(report.to_dict())
    assert victim in out
    assert hashlib.sha256(png).hexdigest() not in out, "the report pairs the photo with the pid"


def unseal(proj, pid: str) -> list[bytes]:
    """Put the subject's images back in clear, as a project from before sealing holds them
    (``rawstore.PLAIN_EXTS``); return their PNGs."""
    store = RawStore(proj.paths, core=proj.core)
    pngs = []
    for f in sorted((proj.paths.raw / pid).glob("*.sealed")):
        png = store.read_image(pid, f.name.split(".")[0])
        pngs.append(png)
        f.with_name(f.name.split(".")[0] + ".png").write_bytes(png)
        f.unlink()
    assert pngs
    return pngs


def names_of(pngs: list[bytes]) -> set[str]:
    """What a photograph of the subject hashes to: SHA-256 and MD5 (DVC's object name)."""
    return {h for p in pngs for h in (hashlib.sha256(p).hexdigest(), md5_bytes(p))}


def pids_linked(paths, needles: set[str]) -> set[str]:
    """The pids of ledger entries holding any of ``needles``."""
    lines = paths.ledger.read_text(encoding="utf-8").splitlines()
    return {json.loads(ln)["pid"] for ln in lines if any(n in ln for n in needles)}


def test_an_erasure_before_sealing_records_no_hash_of_the_subjects_photographs(project):
    proj = make_project(project, n_subjects=3)
    victim = proj.pids[0]
    pngs = unseal(proj, victim)
    result = Erasure(proj.paths).erase(victim)
    assert pids_linked(proj.paths, names_of(pngs)) == set(), (
        "a photograph's hash in the ledger names the erased pid"
    )
    raw = [a for a in result.certificate["claims"]["artefacts"] if a["path"].endswith(".png")]
    assert len(raw) == len(pngs)
    assert all(a["sha256"] is None and "md5" not in a for a in raw)
    assert {a["content"] for a in raw} == {PLAINTEXT_WITHHELD}
    assert {a["outcome"] for a in raw} == {"physically removed"}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


# ---------------------------------------------------------------------------------------------
# In a DVC repository: the objects of the PNGs are DVC's md5 of the photograph
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def dvc_plain(tiny_project, tmp_path):
    """A DVC project whose victim's images were tracked in clear (after a sealed version), in
    the cache and pushed to a local remote: ``(proj, victim, pngs, remote)``."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    victim = proj.pids[0]
    pngs = unseal(proj, victim)
    dvc_objects.add(root, proj.paths.raw)
    remote = tmp_path / "remote"
    assert _dvc(root, "remote", "add", "-d", "store", str(remote)).returncode == 0
    assert _dvc(root, "push").returncode == 0
    for folder in (root / ".dvc" / "cache", remote):
        assert {md5_bytes(p) for p in pngs} <= set(_objects(folder))
    return proj, victim, pngs, remote


def assert_no_object_of(proj, victim: str, pngs: list[bytes], remote) -> None:
    """No store holds a PNG of the victim, by name or bytes, nor a manifest listing them."""
    for folder in (proj.paths.root / ".dvc" / "cache", remote):
        objs = _objects(folder)
        assert not {md5_bytes(p) for p in pngs} & set(objs)
        assert not set(pngs) & set(objs.values())
        assert not any(victim.encode() in d for o, d in objs.items() if o.endswith(".dir"))


@pytest.mark.pipeline
def test_a_dvc_erasure_before_sealing_names_no_photograph_and_purges_every_object(dvc_plain):
    proj, victim, pngs, remote = dvc_plain
    needles = names_of(pngs)
    result = Erasure(proj.paths).erase(victim)
    # The attack: a photograph's SHA-256 or MD5 in the ledger or the certificate.
    assert pids_linked(proj.paths, needles) == set()
    cert = result.certificate_path.read_text(encoding="utf-8")
    assert not [n for n in needles if n in cert]
    # Every object of the PNGs is gone, from the cache and the remote; certified by the file
    # each held, physically removed.
    assert_no_object_of(proj, victim, pngs, remote)
    withheld = [
        a
        for a in result.certificate["claims"]["artefacts"]
        if a["step"] == "dvc" and a.get("content") == PLAINTEXT_WITHHELD
    ]
    assert {a["store"] for a in withheld} == {"dvc-cache", "dvc-remote:store"}
    assert len(withheld) == 2 * len(pngs)
    assert all(a["sha256"] is None and "md5" not in a for a in withheld)
    assert {a["outcome"] for a in withheld} == {"physically removed"}
    assert Erasure(proj.paths).remaining(victim) == {s: [] for s in STORES}
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, report.findings
    # The tombstones still know the photographs: importing one again is refused.
    base = proj.paths.root.parent / "again"
    (base / "lfw" / "Some_One").mkdir(parents=True)
    (base / "lfw" / "Some_One" / "Some_One_0001.png").write_bytes(pngs[0])
    basis = ImportBasis.from_options(legal_basis="art6(1)(f)+art9(2)(j)")
    again = import_dataset("lfw", base, paths=proj.paths, basis=basis)
    assert again.images_imported == 0
    assert again.skipped_by_reason == {"erased_subject": 1} and again.skipped == []


@pytest.mark.pipeline
@pytest.mark.parametrize("cut", ["objects", "manifests"])
def test_a_dvc_purge_interrupted_then_resumed_removes_every_plaintext_object(
    dvc_plain, monkeypatch, cut
):
    # The ledger does not name the PNGs' objects, so a resumed run can only find what an
    # interrupted one left through the .dir manifests: those must go last, in every store.
    proj, victim, pngs, remote = dvc_plain
    removed: list[str] = []
    remove = dvc_objects.ObjectStore.remove

    def failing(store, oid):
        manifests = sum(o.endswith(".dir") for o in removed)
        if (cut == "objects" and len(removed) == 2) or (cut == "manifests" and manifests == 1):
            raise OSError("store went away")
        removed.append(oid)
        return remove(store, oid)

    monkeypatch.setattr(dvc_objects.ObjectStore, "remove", failing)
    with pytest.raises(OSError, match="store went away"):
        Erasure(proj.paths).erase(victim)
    plain = {md5_bytes(p) for p in pngs}
    left = set(_objects(proj.paths.root / ".dvc" / "cache")) | set(_objects(remote))
    if cut == "objects":
        assert not any(o.endswith(".dir") for o in removed)
        assert plain & left, "the cut fell after every plaintext object"
    else:
        assert not plain & left and any(o.endswith(".dir") for o in left)
    monkeypatch.setattr(dvc_objects.ObjectStore, "remove", remove)
    (result,) = Erasure(proj.paths).resume()
    assert "dvc" in result.resumed_steps
    assert_no_object_of(proj, victim, pngs, remote)
    assert pids_linked(proj.paths, names_of(pngs)) == set()
    assert Erasure(proj.paths).remaining(victim) == {s: [] for s in STORES}
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, report.findings
