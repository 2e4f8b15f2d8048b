"""An imported subject's source photograph: the data set's file, as the import read it.

An import re-encodes each photograph as a PNG before sealing it. The erasure and the verifier
sought that PNG and the hashes their records name; the data set's own file (a JPEG) went only
to the tombstones, to refuse a re-import, and was never sought. A copy of it in the project
(the data set's folder copied under ``data/``, a zip or a pickle of its files) survived a
VALID certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from lfw_fakes import make_lfw_set

from visage_ml.config import ProjectPaths
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.rawstore import read_images
from visage_ml.privacy.certificate_page import page_path
from visage_ml.privacy.tombstones import Tombstones
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.content_hashes import ERASED_SOURCE, ContentHashes
from visage_ml.rights.erasure import Erasure

BASIS = ImportBasis.from_options(legal_basis="art6(1)(f)+art9(2)(j)")
# A file of a size nothing erased has: random bytes, as a project's other data would be.
BULK = ("reports/bulk.bin", 123_457)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zip(*files: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, data in enumerate(files):
            z.writestr(f"person-{i}.jpg", data)
    return buf.getvalue()


def _imported(tiny_project, tmp_path: Path) -> tuple[ProjectPaths, Path, str, bytes, bytes]:
    """A project that imported an LFW-layout data set lying outside it: the project, the data
    set's folder, the erased subject, one of their source JPEGs and another person's."""
    base, _ = make_lfw_set(
        tmp_path / "download", n_people=3, per_person=2, folds=1, pairs_per_fold=1, size=64
    )
    paths = ProjectPaths(tiny_project())
    import_dataset("lfw", base, paths=paths, basis=BASIS)
    images = read_images(paths.raw)
    pid_of = dict(zip(images["source_sha256"].astype(str), images["pid"].astype(str), strict=True))
    sources = sorted((base / "lfw").rglob("*.jpg"))
    photo = sources[0].read_bytes()
    victim = pid_of[_sha(photo)]
    other = next(p.read_bytes() for p in sources if pid_of[_sha(p.read_bytes())] != victim)
    assert photo.startswith(b"\xff\xd8\xff"), "the data set's file is a JPEG"
    stored = set(images.loc[images["pid"] == victim, "sha256"].astype(str))
    assert _sha(photo) not in stored, "what data/raw holds is a re-encoding, not the source"
    bulk = paths.root / BULK[0]
    bulk.parent.mkdir(parents=True, exist_ok=True)
    bulk.write_bytes(os.urandom(BULK[1]))
    return paths, base, victim, photo, other


def _holders(paths: ProjectPaths, photo: bytes, other: bytes) -> dict[Path, bytes]:
    """The source JPEG's exact bytes as a plain file, in a zip and in a pickle of the data
    set's files (beside another person's)."""
    shared = paths.root / "data" / "shared"
    return {
        shared / "copy.jpg": photo,
        shared / "dataset.zip": _zip(other, photo),
        shared / "dataset.pkl": pickle.dumps([other, photo]),
    }


def _put(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_a_copy_of_the_source_jpeg_is_removed_or_stops_the_erasure_and_fails_the_verifier(
    tiny_project, tmp_path
):
    paths, base, victim, photo, other = _imported(tiny_project, tmp_path)
    planted = _holders(paths, photo, other)
    plain, *inside = planted
    _put(planted)
    with pytest.raises(OSError) as stopped:
        Erasure(paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert "2 file(s) hold erased content inside" in said and "data: 2" in said, said
    assert not plain.exists(), "the exact copy of the source JPEG was left"
    assert all(p.exists() for p in inside), "a file holding other content was deleted"
    for path in inside:  # the operator takes the photograph out (here: the files go)
        path.unlink()
    (done,) = Erasure(paths).resume()
    report = verify_certificate(done.certificate_path, root=paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]
    # The source's size was recorded at import: a file of no size sought is still left unread.
    assert report.files_looked_at > report.files_hashed
    # Kept for good, the certificate and the ledger never hold the source photograph's hash.
    for record in (done.certificate_path, paths.ledger):
        assert _sha(photo).encode() not in record.read_bytes()
    _put(planted)
    report = verify_certificate(done.certificate_path, root=paths.root)
    assert not report.ok
    assert {Path(f["path"]) for f in report.findings} == set(planted)
    assert all(f.get("sha256") is None for f in report.findings), report.findings
    # The page says the data set where it was imported from is beyond the erasure, and does
    # not name that folder (its sub-folders are the people's names).
    html = page_path(done.certificate_path).read_text()
    assert "data set a subject was imported from" in " ".join(html.split())
    assert str(base) not in html and "Testperson" not in html


def test_a_subject_imported_before_source_sizes_were_recorded_has_every_file_read(
    tiny_project, tmp_path
):
    """An import of an earlier version recorded the source's SHA-256 and not its size: the
    scans cannot tell which files are too small or too large to be it, and read them all."""
    paths, _, victim, photo, other = _imported(tiny_project, tmp_path)
    table = paths.raw / "images.parquet"
    pd.read_parquet(table).drop(columns=["source_size"]).to_parquet(table, index=False)
    done = Erasure(paths).erase(victim)
    report = verify_certificate(done.certificate_path, root=paths.root)
    assert report.ok, [c for c in report.checks if not c.ok]
    assert report.files_looked_at == report.files_hashed, "a file of an unknown size sought unread"
    planted = _holders(paths, photo, other)
    _put(planted)
    report = verify_certificate(done.certificate_path, root=paths.root)
    assert {Path(f["path"]) for f in report.findings} == set(planted)


def test_a_tombstone_word_on_sizes_written_for_the_pngs_alone_is_not_taken(project):
    """Before, the header's ``sizes`` said every PNG's size was there, while the source files'
    sizes were not recorded at all: taken now, the scans would pass over an erased subject's
    source file of a size no PNG has."""
    paths = ProjectPaths(project)
    t = Tombstones.open(paths)
    png, source = "ab" * 32, "cd" * 32
    t.add("p" + "1" * 16, sha256s=[source], plains=[png], plain_sizes={png: 4242})
    key = paths.tombstone_key.read_bytes()
    head, _, body = paths.tombstones.read_text().partition("\n")
    doc = json.loads(head)
    assert "sizes" not in doc, "a source without its size, yet the sizes are said known"
    held = [json.loads(x) for x in body.splitlines()]
    # The word as the earlier version wrote it: a MAC of the set in the domain ``sizes``.
    word = hmac.new(key, b"sizes\0", hashlib.sha256)
    for m in sorted(held):
        word.update(m.encode("ascii"))
    doc["sizes"] = word.hexdigest()
    paths.tombstones.write_text(json.dumps(doc, separators=(",", ":")) + "\n" + body)
    assert Tombstones.open(paths).has_file(source)
    hashes = ContentHashes.of(paths, [{"store": "x", "path": "a", "sha256": "ef" * 32, "size": 9}])
    assert hashes.may_match(123_457) and hashes.why(source) == ERASED_SOURCE

    # Recorded with its size, the source is sought at that size alone.
    paths.tombstones.unlink()
    paths.tombstone_key.with_suffix(".setmac").unlink(missing_ok=True)
    Tombstones.open(paths).add(
        "p" + "2" * 16,
        sha256s=[source, png],
        plains=[png],
        plain_sizes={png: 4242},
        file_sizes={source: 5151},
    )
    hashes = ContentHashes.of(paths, [{"store": "x", "path": "a", "sha256": "ef" * 32, "size": 9}])
    assert hashes.may_match(5151) and hashes.may_match(4242) and hashes.may_match(9)
    assert not hashes.may_match(123_457)
