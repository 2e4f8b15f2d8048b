"""Red-team tests of the data-subject rights (session 36): what an erasure leaves behind.

Each test asserts a guarantee of README.md / docs/security.md and fails while the leak it
describes exists.

- A rectification's ledger entry names the replaced photograph and its replacement by the
  SHA-256 of their PNGs, in clear. The ledger is append-only and kept for good, so after the
  subject's erasure a photograph of them (one that encodes to the PNG, as the tombstones'
  ``plains`` assume) leads straight to the erased pid and its history, without any key. The
  docs: "The certificate and the ledger, kept for good, name a sealed image by the SHA-256 of its
  ciphertext only, and nothing a photograph of the subject hashes to, keyed or not".
- The same entry holds the unsalted SHA-256 of the subject's attributes (age, gender, skin-tone
  group) before and after. The space is a few hundred values: enumerating it recovers the
  erased subject's age, gender and group from the ledger.
- The per-file import report (``privacy/imports/import-*.json``) names the files of a person
  that were not imported (their folder is their name, e.g. LFW's ``Firstname_Lastname``). An
  erasure of that person leaves the report as it was: the erased subject's name, in clear,
  with the names of their source files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from rights_fakes import make_project, png
from serving_fakes import face_tile
from test_tombstones import jpeg, put

from visage_ml.config import GENDERS, GROUPS, ProjectPaths
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.rawstore import RawStore, read_subjects
from visage_ml.io import canonical_json
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.rectify import rectify

LEGAL = "art6(1)(f)+art9(2)(j)"
ZELDA, YORICK = "Zelda_Q_Redteamperson", "Yorick_Examplename"


def _files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()]


def _holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in _files(root) if needle in p.read_bytes())


@pytest.fixture
def proj(project):
    return make_project(project)


def _rectify_then_erase(proj):
    """Rectify a subject's attributes and one image, then erase them; returns what identified
    them: (pid, old PNG, new PNG, attributes before, attributes after)."""
    pid = proj.pids[1]
    image_id = sorted(proj.images[pid])[0]
    old_png = RawStore(proj.paths, core=proj.core).read_image(pid, image_id)
    new_png = png(face_tile(proj.world.people[pid], np.random.default_rng(7), noise=3.0))
    row = read_subjects(proj.paths.raw).set_index("pid").loc[pid]
    before = {"age": int(row["age"]), "gender": str(row["gender"]), "group": str(row["group"])}
    after = {"age": 41, "gender": "male", "group": before["group"]}
    gallery = proj.gallery()
    rectify(
        proj.paths,
        pid,
        attributes={"age": 41, "gender": "male"},
        images={image_id: new_png},
        core=proj.core,
        gallery=gallery,
        engine=proj.engine,
    )
    stored = RawStore(proj.paths, core=proj.core).read_image(pid, image_id)
    Erasure(proj.paths, core=proj.core, gallery=gallery).erase(pid)
    assert PrivacyCore(proj.paths).subject(pid).erased
    return pid, old_png, stored, before, after


def test_after_erasure_no_photograph_of_a_rectified_subject_hashes_to_anything_kept(proj):
    """A photograph of an erased subject must not lead to their pid through the ledger or the
    certificate (docs/security.md, 'Biometric files at rest'). The rectification entry names
    the old and the new PNG by their plain SHA-256: whoever holds either photograph greps the
    ledger and finds the pid, its consent history and its erasure."""
    pid, old_png, new_png, _, _ = _rectify_then_erase(proj)
    root = proj.paths.root
    leaks = {}
    for name, data in (("replaced photograph", old_png), ("replacement photograph", new_png)):
        digest = hashlib.sha256(data).hexdigest().encode()
        found = _holding(root, digest)
        if found:
            leaks[name] = found
    assert leaks == {}, (
        f"after erasing {pid}, the plain SHA-256 of photographs of them is still on disk "
        f"(an append-only ledger keeps it for good): {leaks}"
    )


def test_after_erasure_the_ledger_does_not_tell_the_subjects_age_gender_and_group(proj):
    """'The ledger holds pids and hashes only': a hash of a value from a space of a few hundred
    is the value. The rectification entry keeps SHA-256(canonical JSON of age, gender, group)
    before and after; enumerating ages 0-120 x genders x groups recovers both, for an erased
    subject, from the permanent ledger."""
    pid, _, _, before, after = _rectify_then_erase(proj)
    table = {}
    for age in range(0, 121):
        for gender in (*GENDERS, None):
            for group in (*GROUPS, None):
                attrs = {"age": age, "gender": gender, "group": group}
                table[hashlib.sha256(canonical_json(attrs)).hexdigest()] = attrs
    # The enumeration covers the subject's attributes, before and after ...
    assert before in table.values() and after in table.values()
    # ... and none of its digests may be in the ledger.
    ledger = (proj.paths.privacy / "ledger.jsonl").read_text()
    recovered = [attrs for digest, attrs in table.items() if digest in ledger]
    assert recovered == [], (
        f"after erasing {pid} the ledger still gives their attributes by enumeration: {recovered}"
    )


def test_after_erasure_no_import_report_names_the_erased_person(project, tmp_path):
    """The erased subject's reference in clear must not survive the erasure. An import names,
    in its per-file report under privacy/imports/, every file of a person it did not take (here
    a photo too small to use); erasing that person leaves the report, and with it their name and
    the names of their source files, in clear and without any key."""
    src = tmp_path / "faces"
    put(src / ZELDA / "a.jpg", jpeg(1))
    put(src / ZELDA / "b.jpg", jpeg(2))
    put(src / ZELDA / "passport_scan_small.jpg", jpeg(3, side=16))  # too small: skipped
    put(src / YORICK / "c.jpg", jpeg(4))
    paths = ProjectPaths(project)
    basis = ImportBasis.from_options(legal_basis=LEGAL)
    first = import_dataset("imagefolder", src, paths=paths, basis=basis)
    assert first.subjects_added == 2
    assert {s.rel: s.reason for s in first.skipped} == {
        f"{ZELDA}/passport_scan_small.jpg": "too_small"
    }
    core = PrivacyCore(paths)
    zelda = core.vault.find(f"imagefolder:{ZELDA}")
    assert zelda is not None
    result = Erasure(paths, core=core).erase(zelda)
    assert result.certificate_path is not None and core.subject(zelda).erased
    found = _holding(project, ZELDA.encode())
    assert found == [], (
        f"the erased subject's name {ZELDA!r} is still in clear in {found}: "
        + json.dumps(
            [
                json.loads((project / f).read_text()).get("files")
                for f in found
                if f.endswith(".json")
            ]
        )
    )
