"""A project whose erasures came before the source files' sizes were recorded: its tombstone
header's word on sizes spoke for the PNGs alone, and no longer verifies. Where the signed ledger
shows that every erased subject was made by SynthFaces (no data set file was ever read for them,
so the PNGs were every file erased), the word speaks for every file: the header is rewritten in
the current domain and the scans for copies read only files of an erased size again. An erased
subject who was imported, or a ledger edited without its key, leaves every file to be read."""

from __future__ import annotations

import hashlib
import hmac
import json

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.privacy.tombstones import Tombstones
from visage_ml.rights.content_hashes import ContentHashes

PNG_SIZE = 4242
UNRELATED = 123_457
RECORD = [{"store": "x", "path": "a", "sha256": "ef" * 32, "size": 9}]


def _register(paths: ProjectPaths, pids: dict[str, str]) -> None:
    core = PrivacyCore(paths)
    for source in sorted(set(pids.values())):
        core.add_subjects(
            [NewSubject(pid=p) for p, s in pids.items() if s == source],
            source=source,
            snapshot=False,
        )


def _erase_as_before(paths: ProjectPaths, pids: dict[str, str]) -> None:
    """The tombstones an earlier version left: each subject's PNG with its size, an imported
    subject's source file without one, and the header's word in the domain of the PNGs."""
    t = Tombstones(paths.tombstones, paths.tombstone_key)  # as that version: no ledger asked
    for i, (pid, source) in enumerate(sorted(pids.items())):
        png = f"{i:02x}" * 32
        files = [png] if source == "synthfaces" else [f"{i + 64:02x}" * 32, png]
        t.add(pid, sha256s=files, plains=[png], plain_sizes={png: PNG_SIZE})
    key = paths.tombstone_key.read_bytes()
    head, _, body = paths.tombstones.read_text().partition("\n")
    doc = json.loads(head)
    held = [json.loads(x) for x in body.splitlines()]
    word = hmac.new(key, b"sizes\0", hashlib.sha256)
    for m in sorted(held):
        word.update(m.encode("ascii"))
    doc["sizes"] = word.hexdigest()
    paths.tombstones.write_text(json.dumps(doc, separators=(",", ":")) + "\n" + body)


def _reads_unrelated_file(paths: ProjectPaths) -> bool:
    hashes = ContentHashes.of(paths, RECORD)
    assert hashes.may_match(PNG_SIZE), "an erased PNG's size must always be read"
    return hashes.may_match(UNRELATED)


SYNTH = {"p" + "1" * 16: "synthfaces", "p" + "2" * 16: "synthfaces"}
MIXED = {**SYNTH, "p" + "3" * 16: "lfw"}


def test_erasures_of_synthfaces_subjects_alone_keep_the_size_filter(project):
    paths = ProjectPaths(project)
    _register(paths, SYNTH)
    _erase_as_before(paths, SYNTH)
    before = paths.tombstones.read_text()
    assert not _reads_unrelated_file(paths), "a file of an unrelated size read on every scan"
    after = paths.tombstones.read_text()
    assert after != before and after.split("\n", 1)[1] == before.split("\n", 1)[1], (
        "the header is rewritten (once, for every later scan), the MACs kept"
    )
    # A later erasure whose PNG could not be read back still has every file read.
    late = "p" + "4" * 16
    _register(paths, {late: "synthfaces"})
    Tombstones.open(paths).add(late, sha256s=["aa" * 32], plains=["aa" * 32], plain_sizes={})
    assert _reads_unrelated_file(paths), "a PNG without its size: every file read"


def test_a_later_erasure_keeps_the_filter_the_earlier_word_gave(project):
    """The first erasure after the upgrade, before any scan, must not drop the word."""
    paths = ProjectPaths(project)
    _register(paths, SYNTH)
    _erase_as_before(paths, SYNTH)
    late = "p" + "4" * 16
    _register(paths, {late: "synthfaces"})
    png = "bb" * 32
    Tombstones.open(paths).add(late, sha256s=[png], plains=[png], plain_sizes={png: PNG_SIZE})
    assert not _reads_unrelated_file(paths)


def test_one_imported_subject_among_them_has_every_file_read(project):
    paths = ProjectPaths(project)
    _register(paths, MIXED)
    _erase_as_before(paths, MIXED)
    before = paths.tombstones.read_text()
    assert _reads_unrelated_file(paths), "an imported subject's source file of that size unread"
    assert paths.tombstones.read_text() == before


def test_a_subject_registered_by_hand_has_every_file_read(project):
    """A subject added by hand has a reference: a later import of that reference gave them
    images read from a data set file, and nothing signed says whether one did."""
    paths = ProjectPaths(project)
    pids = {**SYNTH, "p" + "3" * 16: "manual"}
    _register(paths, pids)
    _erase_as_before(paths, pids)
    assert _reads_unrelated_file(paths)


def test_an_unkeyed_edit_of_the_ledger_does_not_turn_the_filter_on(project):
    paths = ProjectPaths(project)
    _register(paths, MIXED)
    _erase_as_before(paths, MIXED)
    text = paths.ledger.read_text()
    assert text.count('"source":"lfw"') == 1
    paths.ledger.write_text(text.replace('"source":"lfw"', '"source":"synthfaces"'))
    assert _reads_unrelated_file(paths), "an edited ledger line made a source file unread"


def test_tombstones_of_subjects_the_ledger_does_not_register_have_every_file_read(project):
    paths = ProjectPaths(project)
    _erase_as_before(paths, SYNTH)  # no ledger at all
    assert _reads_unrelated_file(paths)
    _register(paths, {"p" + "5" * 16: "synthfaces"})  # a ledger, of none of them
    assert _reads_unrelated_file(paths)
