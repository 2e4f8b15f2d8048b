"""The verifier where data/raw is checked out only in part, as a regulator's copy may be: both
tables there, a photograph they list not (a `dvc checkout` or `dvc pull` cut short, or run for
some files).

A photograph not checked out whose object the DVC cache (or a remote looked at) holds was read
there: nothing is hidden, and the certificate verifies. One whose bytes are nowhere the
verifier looks may be a copy of the erased subject's photograph: it cannot tell, and says what
to run, naming no subject. So too where DVC's listing of data/raw is not in the cache and
data/raw is not what data/raw.dvc records: a recorded file the images table does not list may
be gone.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
from rights_fakes import make_project
from test_erasure import _dvc
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.rights.erasure import Erasure


def _verify(cert) -> tuple[int, str]:
    """`visage privacy verify-certificate CERT` in the checkout, as a regulator runs it."""
    out = CliRunner().invoke(app, ["privacy", "verify-certificate", str(cert)])
    return out.exit_code, " ".join(out.output.split())


def _certified(tiny_project):
    """A DVC project whose first subject's erasure has certified: the project, the erased
    subject, another subject and the certificate."""
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True, processed=False)
    victim, other = proj.pids[0], proj.pids[1]
    result = Erasure(proj.paths).erase(victim)
    assert _verify(result.certificate_path)[0] == 0
    return proj, victim, other, result.certificate_path


def _cached(root, data: bytes):
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


@pytest.mark.pipeline
@pytest.mark.parametrize("where", ["the_dvc_cache", "a_remote_alone"])
def test_another_subjects_photograph_not_checked_out_but_in_a_dvc_store_verifies(
    tiny_project, tmp_path, where
):
    """Its object in the cache, or on a remote (a regulator's copy pulled in part, the remote
    configured), was read there: a copy in it would be found, and nothing is hidden."""
    proj, _victim, other, cert = _certified(tiny_project)
    root = proj.paths.root
    photo = sorted((proj.paths.raw / other).iterdir())[0]
    assert _cached(root, photo.read_bytes()).is_file()
    if where == "a_remote_alone":
        assert _dvc(root, "remote", "add", "-d", "store", str(tmp_path / "remote")).returncode == 0
        assert _dvc(root, "push").returncode == 0
        _cached(root, photo.read_bytes()).unlink()
    photo.unlink()

    code, said = _verify(cert)

    assert code == 0 and "certificate VALID" in said, said


@pytest.mark.pipeline
@pytest.mark.parametrize("whose", ["another_subjects", "a_copy_of_the_erased_subjects"])
def test_a_photograph_not_checked_out_nor_in_the_dvc_cache_says_the_verifier_cannot_tell(
    tiny_project, whose
):
    """A regulator's copy pulled in part: the photograph not in data/raw, its object not in the
    cache, no remote. Whether it is a copy of the erased subject's photograph cannot be told;
    the verifier must not call the certificate VALID, nor name anyone. Checked out
    (`dvc pull` brings it, here put back), it verifies again, or finds the copy."""
    proj, victim, other, cert = _certified(tiny_project)
    root = proj.paths.root
    photo = sorted((proj.paths.raw / other).iterdir())[0]
    if whose == "a_copy_of_the_erased_subjects":
        # Filed under the other subject after the certificate, then `dvc add`ed.
        photo.write_bytes(proj.images[victim][next(iter(proj.images[victim]))])
        assert _dvc(root, "add", "data/raw").returncode == 0
    data = photo.read_bytes()
    _cached(root, data).unlink()
    photo.unlink()

    code, said = _verify(cert)

    assert code == 1 and "certificate VALID" not in said, said
    assert "cannot tell" in said and "1 photograph(s)" in said, said
    assert "dvc checkout data/raw" in said and "run `dvc fetch data/raw`" in said, said
    # The certificate names its subject; what the scan says names no one.
    scanned = said[said.index("no erased content remains") :]
    assert victim not in scanned and other not in said, said

    photo.write_bytes(data)
    code, said = _verify(cert)
    if whose == "another_subjects":
        assert code == 0 and "certificate VALID" in said, said
    else:
        assert code == 1 and "cannot tell" not in said and photo.name in said, said


@pytest.mark.pipeline
def test_data_raw_checked_out_whole_with_no_dvc_cache_verifies(tiny_project):
    """A regulator's copy checked out whole, its DVC cache gone (data/raw.dvc's listing with
    it): data/raw is what DVC records, every file of it was read in the workspace, and the
    certificate verifies."""
    proj, _victim, _other, cert = _certified(tiny_project)
    shutil.rmtree(proj.paths.root / ".dvc" / "cache")

    code, said = _verify(cert)

    assert code == 0 and "certificate VALID" in said, said


@pytest.mark.pipeline
@pytest.mark.parametrize("what", ["a_copy_of_the_erased_subjects", "any_file"])
def test_a_recorded_file_no_images_table_lists_gone_with_the_dvc_cache_says_it_cannot_tell(
    tiny_project, what
):
    """A file images.parquet does not list (a copy of the erased subject's photograph filed
    under another subject with a new name, or any file) `dvc add`ed into data/raw, then deleted
    from the workspace, the DVC cache gone: every photograph the table lists is there, but a
    file DVC records was read nowhere. The verifier must not call the certificate VALID, nor
    name anyone. Put back, it verifies again, or finds the copy."""
    proj, victim, other, cert = _certified(tiny_project)
    root = proj.paths.root
    if what == "a_copy_of_the_erased_subjects":
        extra = proj.paths.raw / other / "kept.png"
        data = proj.images[victim][next(iter(proj.images[victim]))]
    else:
        extra = proj.paths.raw / "notes.bin"
        data = b"notes kept beside the photographs\n"
    extra.write_bytes(data)
    assert _dvc(root, "add", "data/raw").returncode == 0
    extra.unlink()
    shutil.rmtree(root / ".dvc" / "cache")

    code, said = _verify(cert)

    assert code == 1 and "certificate VALID" not in said, said
    assert "cannot tell" in said and "data/raw.dvc" in said, said
    assert "run `dvc fetch data/raw`" in said, said
    scanned = said[said.index("no erased content remains") :]
    assert victim not in scanned and other not in said and extra.name not in said, said

    extra.write_bytes(data)
    code, said = _verify(cert)
    if what == "any_file":
        assert code == 0 and "certificate VALID" in said, said
    else:
        assert code == 1 and "cannot tell" not in said and extra.name in said, said


@pytest.mark.pipeline
def test_data_raw_not_checked_out_at_all_with_no_dvc_cache_says_it_cannot_tell(tiny_project):
    """No data/raw in the workspace and no DVC cache (a clone that never pulled): no photograph
    the images table lists is missing, for there is no table; every file DVC records was read
    nowhere. It cannot tell, and says what to run."""
    proj, _victim, other, cert = _certified(tiny_project)
    shutil.rmtree(proj.paths.raw)
    shutil.rmtree(proj.paths.root / ".dvc" / "cache")

    code, said = _verify(cert)

    assert code == 1 and "certificate VALID" not in said, said
    assert "cannot tell" in said and "run `dvc fetch data/raw`" in said, said
    assert other not in said, said
