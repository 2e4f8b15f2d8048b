"""A photograph two current subjects share, on a project whose images are in clear (or a sealed
file filed byte for byte under another subject): the erasure of one keeps the other's file, and
its own verifier must then agree with it.

Before, the copies step skipped the other subject's file while the verifier flagged it: the
erasure's own certificate failed "no erased content remains" on the controller's checkout.
The file stays (it is another current subject's data), and the certificate says so, counted.
A copy filed under another subject after the certificate is not covered by that count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
from project_helpers import cached_object, follow_first_advice
from rights_fakes import make_project
from test_erasure import _dvc, _objects, md5_bytes
from test_redteam_plaintext import unseal

from visage_ml.data.rawstore import RawStore
from visage_ml.io import sha256_bytes
from visage_ml.privacy.certificate_page import render_page
from visage_ml.rights import content_scan, dvc_objects
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure


def _file_under(proj, other: str, data: bytes, *, sealed: bool) -> str:
    """Give ``other`` a new image (listed in data/raw's manifest) and return its id; its file then
    holds ``data`` byte for byte (a PNG in clear, or the victim's sealed file)."""
    store = RawStore(proj.paths, core=proj.core)
    size = {"width": 32, "height": 32}
    with store.transaction() as txn:
        image_id = txn.write_image(other, data if not sealed else b"placeholder")
        txn.add_images([{"pid": other, "image_id": image_id, "sha256": sha256_bytes(data), **size}])
    if sealed:
        (proj.paths.raw / other / f"{image_id}.sealed").write_bytes(data)
    return image_id


def _shared_plain(proj):
    victim, other = proj.pids[0], proj.pids[1]
    pngs = unseal(proj, victim)
    image_id = _file_under(proj, other, pngs[0], sealed=False)
    unseal(proj, other)
    assert (proj.paths.raw / other / f"{image_id}.png").read_bytes() == pngs[0]
    return victim, other, pngs, image_id


def test_a_photograph_two_subjects_share_in_clear_stays_with_the_other_and_is_declared(project):
    proj = make_project(project, n_subjects=3)
    victim, other, pngs, image_id = _shared_plain(proj)
    result = Erasure(proj.paths).erase(victim)
    assert (proj.paths.raw / other / f"{image_id}.png").read_bytes() == pngs[0]
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, report.findings
    assert any("current subject" in c for c in report.conceded), report.conceded
    cert = result.certificate_path.read_text(encoding="utf-8")
    assert sha256_bytes(pngs[0]) not in cert and other not in cert


def test_the_verifier_without_data_raws_images_table_says_it_cannot_tell_the_others_photograph(
    project,
):
    """data/raw's images.parquet not checked out where the verifier runs (`dvc checkout` cut
    short): read as empty, it listed no current subject's photograph, so the other subject's
    own file, which the erasure declared kept, was reported as erased content that remains (a
    false alarm, blaming the erasure). The verifier says now that it cannot tell without the
    table and what to run; checked out, the certificate verifies."""
    proj = make_project(project, n_subjects=3)
    victim, other, _pngs, image_id = _shared_plain(proj)
    result = Erasure(proj.paths).erase(victim)
    table = proj.paths.raw / "images.parquet"
    kept = table.read_bytes()
    table.unlink()

    report = verify_certificate(result.certificate_path, root=proj.paths.root)

    assert not report.ok
    [finding] = report.findings
    assert finding["path"].endswith(f"/{other}/{image_id}.png"), finding
    assert "cannot be told" in finding["why"] and "dvc checkout data/raw" in finding["why"]
    [check] = [c for c in report.checks if c.name == "no erased content remains"]
    assert "dvc checkout data/raw" in check.detail, check.detail

    table.write_bytes(kept)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, report.findings


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.pipeline
@pytest.mark.parametrize("cached", [False, True], ids=["a_photograph_not_cached", "all_cached"])
def test_the_verifier_without_images_table_says_fetch_first_where_the_cache_lacks_a_photograph(
    tiny_project, tmp_path, cached
):
    """data/raw's images.parquet not checked out where the verifier runs, and a third subject's
    photograph gone from the workspace and the DVC cache: the verifier said to run `dvc
    checkout data/raw`, which then fails and takes the whole of data/raw out of the workspace
    (DVC 3.67), every photograph still there. It says to fetch first now, in the finding and
    in the check; where the cache holds it all, the checkout it advises brings the table back."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    victim, other, _pngs, _image_id = _shared_plain(proj)
    dvc_objects.add(root, proj.paths.raw)
    result = Erasure(proj.paths).erase(victim)
    (proj.paths.raw / "images.parquet").unlink()
    if not cached:
        photo = sorted((proj.paths.raw / proj.pids[2]).iterdir())[0]
        md5 = hashlib.md5(photo.read_bytes(), usedforsecurity=False).hexdigest()
        photo.unlink()
        cached_object(root, md5).unlink()
    raw = _files(proj.paths.raw)

    report = verify_certificate(result.certificate_path, root=root)

    assert not report.ok
    untold = [f["why"] for f in report.findings if "cannot be told" in f["why"]]
    [check] = [c for c in report.checks if c.name == "no erased content remains"]
    assert untold, report.findings
    for n, said in enumerate((untold[0], check.detail)):
        followed = tmp_path / f"followed-{n}"
        assert follow_first_advice(said, root, followed).returncode == 0 or not cached
        after = _files(followed / "data" / "raw") if (followed / "data" / "raw").is_dir() else {}
        assert after.pop("images.parquet", None) is not None or not cached, said
        assert after == raw, said  # nothing taken out of the workspace
        assert ("run `dvc fetch data/raw` first" in said) != cached, said
        assert other not in said and proj.pids[2] not in said, said


def test_a_copy_filed_under_another_subject_after_the_certificate_is_found(project):
    proj = make_project(project, n_subjects=3)
    victim, other, pngs, _ = _shared_plain(proj)
    result = Erasure(proj.paths).erase(victim)
    # After the certificate, someone files a second photograph of the erased subject (kept
    # aside) as the other subject's: not the content the certificate declared in use.
    _file_under(proj, other, pngs[1], sealed=False)
    unseal(proj, other)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f for f in report.findings if f"/{other}/" in f["path"]], report.findings


def test_a_sealed_file_filed_under_another_subject_is_a_copy(project):
    """Sealed under the erased subject's key, a byte copy filed under another subject is never
    theirs (their key does not open it): removed, like any copy, and nothing is declared."""
    proj = make_project(project, n_subjects=3)
    victim, other = proj.pids[0], proj.pids[1]
    sealed = sorted((proj.paths.raw / victim).glob("*.sealed"))[0].read_bytes()
    image_id = _file_under(proj, other, sealed, sealed=True)
    result = Erasure(proj.paths).erase(victim)
    assert not (proj.paths.raw / other / f"{image_id}.sealed").exists()
    assert "copies_in_use" not in result.certificate["claims"]
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, report.findings


@pytest.mark.pipeline
def test_a_shared_photograph_in_clear_under_dvc_verifies_after_the_erasure(tiny_project, tmp_path):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    victim, other, pngs, image_id = _shared_plain(proj)
    dvc_objects.add(root, proj.paths.raw)
    assert _dvc(root, "remote", "add", "-d", "store", str(tmp_path / "remote")).returncode == 0
    assert _dvc(root, "push").returncode == 0
    result = Erasure(proj.paths).erase(victim)
    assert (proj.paths.raw / other / f"{image_id}.png").read_bytes() == pngs[0]
    # The other subject's object stays in the cache and the remote: DVC still has their photo.
    for folder in (root / ".dvc" / "cache", tmp_path / "remote"):
        assert md5_bytes(pngs[0]) in _objects(folder)
    status = _dvc(root, "status", "-c")
    assert status.returncode == 0 and "deleted" not in status.stdout, status.stdout
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert report.ok, report.findings
    assert any("current subject" in c for c in report.conceded), report.conceded


def test_the_certificate_page_says_what_other_subjects_keep(project):
    proj = make_project(project, n_subjects=3)
    victim, *_ = _shared_plain(proj)
    result = Erasure(proj.paths).erase(victim)
    page = render_page(result.certificate_path).html
    assert "1 file(s) of other current subjects' data hold content identical" in page


@pytest.mark.pipeline
def test_a_stray_copy_of_a_shared_photograph_takes_not_the_other_subjects_object_from_a_remote(
    tiny_project, tmp_path, monkeypatch
):
    """A remote the erasure reaches only through its API (S3) is asked for the objects of the
    copies found, by md5: the stray copy's md5 is the other subject's object's too."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    victim, other, pngs, image_id = _shared_plain(proj)
    dvc_objects.add(root, proj.paths.raw)
    remote = tmp_path / "remote"
    assert _dvc(root, "remote", "add", "-d", "store", str(remote)).returncode == 0
    assert _dvc(root, "push").returncode == 0
    stray = proj.paths.root / "data" / "interim" / "copy.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(pngs[0])
    open_setup = dvc_objects.open_setup

    def api_only(*args, **kwargs):
        setup = open_setup(*args, **kwargs)
        setup.stores = [
            dataclasses.replace(s, local_path=None) if s.kind == "remote" else s
            for s in setup.stores
        ]
        return setup

    monkeypatch.setattr(dvc_objects, "open_setup", api_only)
    result = Erasure(proj.paths).erase(victim)
    assert not stray.exists()
    assert result.certificate["claims"]["copies_removed"] == {"data": 1}
    assert md5_bytes(pngs[0]) in _objects(remote), "the other subject's photo left the remote"
    assert (proj.paths.raw / other / f"{image_id}.png").read_bytes() == pngs[0]


def test_the_kept_file_is_the_one_declared_not_any_as_many(project):
    """The certificate once counted the kept files: the shared photograph gone (its subject's
    data deleted), another photograph of the erased subject filed under a third subject kept the
    count and verified."""
    proj = make_project(project, n_subjects=3)
    victim, other, pngs, image_id = _shared_plain(proj)
    result = Erasure(proj.paths).erase(victim)
    cert = result.certificate_path.read_text(encoding="utf-8")
    assert f"{other}/{image_id}" not in cert and image_id not in cert
    store = RawStore(proj.paths, core=proj.core)
    with store.transaction() as txn:
        txn.remove_subject(other)
    third = proj.pids[2]
    _file_under(proj, third, pngs[1], sealed=False)
    unseal(proj, third)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f for f in report.findings if f"/{third}/" in f["path"]], report.findings


def test_a_hard_link_to_a_kept_photograph_goes_without_destroying_it(project):
    """Removing a copy zeroed its bytes first: a copy hard-linked to the photograph another
    subject keeps (as DVC's hardlink cache links workspace files) zeroed theirs too, and the
    certificate still verified."""
    proj = make_project(project, n_subjects=3)
    victim, other, pngs, image_id = _shared_plain(proj)
    theirs = proj.paths.raw / other / f"{image_id}.png"
    link = proj.paths.root / "data" / "interim" / "copy.png"
    link.parent.mkdir(parents=True)
    os.link(theirs, link)
    result = Erasure(proj.paths).erase(victim)
    assert not link.exists()
    assert theirs.read_bytes() == pngs[0], "the other subject's photograph was destroyed"
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_a_file_beside_a_listed_image_is_no_other_subjects_data(project):
    """Any file named after a listed image id was kept: the erased subject's second photo saved
    as <id>.bak.png under another subject was kept, declared and verified."""
    proj = make_project(project, n_subjects=3)
    victim, other, pngs, image_id = _shared_plain(proj)
    aside = proj.paths.raw / other / f"{image_id}.bak.png"
    aside.write_bytes(pngs[1])
    result = Erasure(proj.paths).erase(victim)
    assert not aside.exists()
    assert len(result.certificate["claims"]["copies_in_use"]) == 1
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_a_symlinked_data_folder_is_walked_and_names_no_one_when_it_fails(project, tmp_path):
    proj = make_project(project, n_subjects=3)
    victim, other, pngs, image_id = _shared_plain(proj)
    elsewhere = tmp_path / "volume" / "data"
    elsewhere.parent.mkdir()
    (proj.paths.root / "data").rename(elsewhere)
    (proj.paths.root / "data").symlink_to(elsewhere)
    stray = elsewhere / "interim" / "copy.png"
    stray.parent.mkdir()
    stray.write_bytes(pngs[1])
    result = Erasure(proj.paths).erase(victim)
    assert not stray.exists()
    assert (elsewhere / "raw" / other / f"{image_id}.png").read_bytes() == pngs[0]
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_a_later_erasure_of_a_shared_photograph_leaves_earlier_certificates_valid(project):
    """The verifier looks for every erased subject's photographs: after a second erasure whose
    subject shared a photo with a current subject (declared on its own certificate), the first,
    honest certificate failed on that file."""
    proj = make_project(project, n_subjects=4)
    first = Erasure(proj.paths).erase(proj.pids[3])
    victim, *_ = _shared_plain(proj)
    Erasure(proj.paths).erase(victim)
    report = verify_certificate(first.certificate_path, root=proj.paths.root)
    assert report.ok, report.findings


def _group_photo(proj):
    """One photograph filed under three subjects, in clear: the first two are erased."""
    first, second, third = proj.pids[0], proj.pids[1], proj.pids[2]
    png = unseal(proj, first)[0]
    for pid in (second, third):
        _file_under(proj, pid, png, sealed=False)
        unseal(proj, pid)
    return first, second


def test_two_certificates_do_not_show_that_their_subjects_shared_a_photograph(project):
    """The kept file's name was a MAC of its path alone: each certificate of a subject who shared
    a photograph with the same current subject listed the same name, so anyone reading both (the
    subjects, a regulator) learnt that the two shared a photograph with one third person."""
    proj = make_project(project, n_subjects=4)
    first, second = _group_photo(proj)
    one = Erasure(proj.paths).erase(first)
    two = Erasure(proj.paths).erase(second)
    names = [set(r.certificate["claims"]["copies_in_use"]) for r in (one, two)]
    assert all(names), names
    assert not names[0] & names[1], names
    for result in (one, two):
        report = verify_certificate(result.certificate_path, root=proj.paths.root)
        assert report.ok, report.findings


def test_certificates_that_named_kept_files_by_path_alone_still_verify(project, monkeypatch):
    """Certificates issued before the names were bound to their request list the path's MAC
    alone: they (and an earlier one, whose verifier finds the same file) still verify, and so
    does a later erasure's."""
    proj = make_project(project, n_subjects=4)
    earlier = Erasure(proj.paths).erase(proj.pids[3])
    first, second = _group_photo(proj)
    bound = content_scan.in_use_name

    def by_path(mac, root, path, *, request_id):
        return bound(mac, root, path, request_id=None)

    with monkeypatch.context() as m:
        m.setattr(content_scan, "in_use_name", by_path)
        old = Erasure(proj.paths).erase(first)
    assert len(old.certificate["claims"]["copies_in_use"]) == 2
    for result in (old, earlier):
        report = verify_certificate(result.certificate_path, root=proj.paths.root)
        assert report.ok, report.findings
    later = Erasure(proj.paths).erase(second)
    for result in (old, earlier, later):
        report = verify_certificate(result.certificate_path, root=proj.paths.root)
        assert report.ok, report.findings
