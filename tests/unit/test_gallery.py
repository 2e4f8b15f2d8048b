"""The consent-aware encrypted gallery: enrolment, search, consent changes, erasure, restarts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from serving_fakes import DIM, THRESHOLD, fake_engine, make_person, make_world, receipt

from visage_ml.config import ProjectPaths
from visage_ml.io import sha256_file
from visage_ml.privacy.core import PrivacyCore
from visage_ml.serving import gallery as gallery_module
from visage_ml.serving.gallery import (
    AnchorUnrecordedError,
    EnrolmentRefusedError,
    Gallery,
    GalleryError,
    GalleryVersionError,
    NotEnrolledError,
    Reference,
    ReferenceChangedError,
    load_threshold,
    subject_files,
)
from visage_ml.serving.index import template_of

VERSION = "emb-test-1"


def open_gallery(world, engine=None, *, core=None, version=VERSION, load=True):
    return Gallery.open(
        world.paths,
        model_version=version,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=core or world.core,
        embed=engine.embed if engine is not None else None,
        load=load,
    )


@pytest.fixture
def world(project):
    return make_world(project, n_subjects=20, without_identification=2)


@pytest.fixture
def engine(world):
    return fake_engine(world.paths.root)


@pytest.fixture
def enrolled(world, engine):
    """A gallery with the 18 subjects allowed for identification enrolled (3 photos each)."""
    gallery = open_gallery(world, engine)
    pids = list(world.people)[:18]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 3)) for pid in pids})
    return gallery, pids


def top1(gallery, engine, world, pid):
    matches = gallery.identify(engine.embed(world.photo(pid))[0], top_k=3)
    return matches[0].pid if matches else None


def ledger_events(world, type_):
    return [e for e in world.core.ledger.entries() if e.type == type_]


def test_held_out_photos_identify_their_subject_and_strangers_match_nobody(world, engine, enrolled):
    gallery, pids = enrolled
    assert gallery.size == 18
    for pid in pids:
        emb = engine.embed(world.photo(pid))[0]
        matches = gallery.identify(emb, top_k=3)
        assert matches[0].pid == pid
        assert all(m.score >= THRESHOLD for m in matches)
        assert gallery.verify(emb, pid)[0] is True
        other = pids[(pids.index(pid) + 1) % len(pids)]
        assert gallery.verify(emb, other)[0] is False
    stranger = make_person("p" + "0" * 16, world.rng, "g1", "female")
    from serving_fakes import face_tile

    emb = engine.embed(face_tile(stranger, world.rng)[None])[0]
    assert gallery.identify(emb) == []


def test_templates_are_encrypted_per_subject_and_ledger_holds_only_hashes(world, engine):
    gallery = open_gallery(world, engine)
    pid = next(iter(world.people))
    emb = engine.embed(world.photo(pid, 3))
    gallery.enroll(pid, emb)
    path = gallery.template_path(pid)
    template = template_of(emb, DIM)
    assert template.tobytes() not in path.read_bytes()
    assert gallery.keys.exists(pid)
    (event,) = ledger_events(world, "gallery.enrolled")
    assert event.pid == pid and event.payload["template_sha256"] == sha256_file(path)
    assert set(event.payload) == {
        "template_sha256",
        "anchor_sha256",
        "model_version",
        "replaced",
    }
    assert event.payload["anchor_sha256"] == sha256_file(gallery.anchor_path(pid))
    meta = json.loads((world.paths.gallery / "gallery.json").read_text())
    assert meta["model_version"] == VERSION
    assert meta["embedding_dim"] == DIM
    # The access right gets the decrypted template back, with the model that made it.
    vector, header = gallery.template(pid)
    np.testing.assert_array_equal(vector, template)
    assert (header["model_version"], header["n_images"]) == (VERSION, 3)


def test_the_ledger_records_an_enrolment_from_three_photographs_as_one_from_one(world, engine):
    """The ledger is kept for good, pids in clear. A photo count per pid in it is a
    quasi-identifier: whoever holds the source data set (and, after an erasure, the tombstone
    key, which tells which of its photographs were erased) matches a person with three
    photographs to the pid enrolled from three. The count stays in the sealed template (the
    subject's access right reads it), never in the ledger."""
    gallery = open_gallery(world, engine)
    three, one = list(world.people)[:2]
    gallery.enroll(three, engine.embed(world.photo(three, 3)))
    gallery.enroll(one, engine.embed(world.photo(one, 1)))
    payloads = {e.pid: e.payload for e in ledger_events(world, "gallery.enrolled")}
    hashes = ("template_sha256", "anchor_sha256")
    assert {k: v for k, v in payloads[three].items() if k not in hashes} == {
        k: v for k, v in payloads[one].items() if k not in hashes
    }
    assert gallery.template(three)[1]["n_images"] == 3


def test_stored_template_is_exportable_while_restricted_but_not_after_erasure(world, enrolled):
    gallery, pids = enrolled
    world.core.restrict(pids[0])
    vector, _ = gallery.template(pids[0])
    assert vector.shape == (DIM,)
    gallery.erase(pids[1])
    with pytest.raises(NotEnrolledError):
        gallery.template(pids[1])
    gallery.keys.destroy(pids[2])  # an erasure interrupted after its commit point
    with pytest.raises(NotEnrolledError):
        gallery.template(pids[2])


def test_subject_without_identification_consent_is_refused_and_nothing_is_written(world, engine):
    gallery = open_gallery(world, engine)
    pid = list(world.people)[-1]
    with pytest.raises(EnrolmentRefusedError) as err:
        gallery.enroll(pid, crops=world.photo(pid, 2))
    assert err.value.reason == "no_consent"
    assert "no_consent" in str(err.value) and pid in str(err.value)
    assert not gallery.template_path(pid).exists()
    assert not gallery.keys.exists(pid)
    assert ledger_events(world, "gallery.enrolled") == []
    with pytest.raises(EnrolmentRefusedError) as err:
        gallery.enroll("p" + "1" * 16, crops=world.photo(pid, 1))
    assert err.value.reason == "unknown_subject"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda core, pid: core.restrict(pid), "restricted"),
        (lambda core, pid: core.object(pid, ["identification"]), "objected"),
        (lambda core, pid: core.withdraw_consent(pid, ["identification"]), "consent_withdrawn"),
    ],
)
def test_subject_who_may_no_longer_be_identified_is_not_even_scored(
    world, engine, enrolled, change, reason
):
    gallery, pids = enrolled
    pid = pids[3]
    # A separate core, as the CLI in another process would use: the gallery sees the ledger.
    change(PrivacyCore(world.paths), pid)
    emb = engine.embed(world.photo(pid))[0]
    assert all(m.pid != pid for m in gallery.identify(emb, top_k=18))
    assert pid not in gallery.searchable()
    assert gallery.size == 17
    # The matrix itself no longer holds the row: nothing of theirs is scored.
    assert gallery.size == 17
    with pytest.raises(NotEnrolledError):
        gallery.verify(emb, pid)
    assert world.core.may_process(pid, "identification").reason == reason
    with pytest.raises(EnrolmentRefusedError):
        gallery.enroll(pid, crops=world.photo(pid, 1))
    # The template stays stored (restriction keeps data); the others are unaffected.
    assert gallery.status(pid) == {
        "enrolled": True,
        "searchable": False,
        "template_model_version": VERSION,
    }
    assert top1(gallery, engine, world, pids[4]) == pids[4]


def test_withdrawing_other_purposes_keeps_identification_and_lift_restores(world, engine, enrolled):
    gallery, pids = enrolled
    pid = pids[5]
    world.core.withdraw_consent(pid, ["training"])
    assert top1(gallery, engine, world, pid) == pid
    world.core.restrict(pid)
    assert top1(gallery, engine, world, pid) != pid
    world.core.lift(pid)
    assert top1(gallery, engine, world, pid) == pid
    assert gallery.size == 18


def test_erase_removes_row_key_and_ciphertext_durably_and_survives_restart(world, engine, enrolled):
    gallery, pids = enrolled
    pid = pids[7]
    tpl, anchor, key = gallery.template_path(pid), gallery.anchor_path(pid), gallery.keys.path(pid)
    assert gallery.files_of(pid) == [tpl, anchor, key]
    before = {p: sha256_file(p) for p in (tpl, anchor, key)}
    removal = gallery.erase(pid)
    root = world.paths.root
    assert removal.removed == {p.relative_to(root).as_posix(): h for p, h in before.items()}
    assert not tpl.exists() and not anchor.exists() and not key.exists()
    assert gallery.files_of(pid) == [] == subject_files(world.paths.gallery, pid)
    assert not gallery.keys.exists(pid)
    assert top1(gallery, engine, world, pid) != pid
    assert gallery.size == 17
    (event,) = ledger_events(world, "gallery.removed")
    assert event.pid == pid
    assert event.payload["template_sha256"] == before[tpl]
    assert event.payload["anchor_sha256"] == before[anchor]
    # Erasing again finds nothing left and records nothing.
    assert gallery.erase(pid).removed == {}
    assert len(ledger_events(world, "gallery.removed")) == 1
    # A restart (new process: new core, new gallery) does not bring it back.
    restarted = open_gallery(world, engine, core=PrivacyCore(ProjectPaths(root)))
    assert restarted.size == 17
    assert pid not in restarted.searchable()
    assert top1(restarted, engine, world, pids[8]) == pids[8]


def test_restart_loads_only_allowed_subjects(world, engine, enrolled):
    _gallery, pids = enrolled
    world.core.restrict(pids[0])
    restarted = open_gallery(world, engine, core=PrivacyCore(world.paths))
    assert set(restarted.searchable()) == set(pids[1:])
    assert restarted.stats()["stored"] == 18
    assert restarted.stats()["not_searchable"] == 1


def test_a_gallery_not_loaded_lists_every_stored_template_restricted_ones_too(world, enrolled):
    """A notebook opens the gallery without loading it (``load=False``, as the rights commands and
    ``open_project_gallery`` do) and asks which subjects have a template: a restricted subject's
    template is stored (kept for them, exportable), so it is listed, and counted, as a loaded
    gallery lists and counts it; an answer without it is silently wrong."""
    _gallery, pids = enrolled
    world.core.restrict(pids[0])
    loaded = open_gallery(world, core=PrivacyCore(world.paths))
    not_loaded = open_gallery(world, core=PrivacyCore(world.paths), load=False)
    assert not_loaded.stored() == loaded.stored() == sorted(pids)
    assert not_loaded.stats() == loaded.stats()
    assert not_loaded.stats()["not_searchable"] == 1
    assert sorted(not_loaded.searchable()) == sorted(pids[1:])


def test_erasure_interrupted_after_key_destruction_is_finished_at_start_up(world, engine, enrolled):
    gallery, pids = enrolled
    pid = pids[2]
    gallery.keys.destroy(pid)  # the commit point of an erasure, then a crash
    assert gallery.template_path(pid).exists()
    restarted = open_gallery(world, engine, core=PrivacyCore(world.paths))
    assert not restarted.template_path(pid).exists()
    assert not restarted.anchor_path(pid).exists()
    assert pid not in restarted.searchable()
    (event,) = ledger_events(world, "gallery.removed")
    assert event.payload["reason"] == "interrupted_erasure_completed"


def test_other_embedder_version_is_refused_with_rebuild_instruction(world, engine, enrolled):
    gallery, pids = enrolled
    with pytest.raises(GalleryVersionError, match="visage gallery rebuild"):
        open_gallery(world, engine, version="emb-test-2")
    with pytest.raises(GalleryVersionError, match="visage gallery rebuild"):
        gallery.enroll(pids[0], engine.embed(world.photo(pids[0])), model_version="emb-test-2")


def test_rebuild_in_another_process_makes_a_running_gallery_refuse_queries(world, engine, enrolled):
    gallery, pids = enrolled
    Gallery.open(
        world.paths,
        model_version="emb-test-2",
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=PrivacyCore(world.paths),
        rebuild=True,
    ).write_meta()
    with pytest.raises(GalleryVersionError, match="restart"):
        gallery.identify(engine.embed(world.photo(pids[0]))[0])


def test_enrolment_by_another_process_is_picked_up(world, engine):
    serving = open_gallery(world, engine)
    other = open_gallery(world, engine, core=PrivacyCore(world.paths))
    pid = next(iter(world.people))
    other.enroll(pid, crops=world.photo(pid, 3))
    assert top1(serving, engine, world, pid) == pid


def test_same_template_again_writes_nothing_new_template_replaces(world, engine):
    gallery = open_gallery(world, engine)
    pid = next(iter(world.people))
    emb = engine.embed(world.photo(pid, 3))
    first = gallery.enroll(pid, emb)
    again = gallery.enroll(pid, emb)
    assert not again.changed and again.template_sha256 == first.template_sha256
    assert len(ledger_events(world, "gallery.enrolled")) == 1
    third = gallery.enroll(pid, engine.embed(world.photo(pid, 2)))
    assert third.changed and third.replaced
    assert gallery.size == 1


def test_failed_ledger_append_leaves_the_gallery_as_it_was(world, engine, monkeypatch):
    gallery = open_gallery(world, engine)
    pid = next(iter(world.people))

    def fail(events):
        raise OSError("disk full")

    monkeypatch.setattr(world.core.ledger, "append_many", fail)
    with pytest.raises(OSError):
        gallery.enroll(pid, crops=world.photo(pid, 2))
    assert not gallery.template_path(pid).exists()
    assert not gallery.anchor_path(pid).exists()
    assert not gallery.keys.exists(pid), "a key for a subject the gallery never enrolled"
    assert gallery.size == 0


def test_only_a_privileged_enrolment_moves_the_anchor(world, engine):
    # The anchor is the first template; a re-enrolment with keep_anchor (an operator's) leaves
    # it, any other (a dpo's, the gallery stage's, a rebuild's) makes the new template the anchor.
    gallery = open_gallery(world, engine)
    pid = next(iter(world.people))
    first = engine.embed(world.photo(pid, 3))
    gallery.enroll(pid, first)
    anchor, header = gallery.anchor(pid)
    np.testing.assert_array_equal(anchor, template_of(first, DIM))
    assert header["pid"] == pid and header["model_version"] == VERSION
    sealed = gallery.anchor_path(pid).read_bytes()
    assert anchor.astype("<f4").tobytes() not in sealed  # sealed, like the template
    second = engine.embed(world.photo(pid, 3))
    assert gallery.enroll(pid, second, keep_anchor=True).changed
    assert gallery.anchor_path(pid).read_bytes() == sealed
    np.testing.assert_array_equal(gallery.template(pid)[0], template_of(second, DIM))
    gallery.enroll(pid, second)  # same template, privileged: only the anchor is rewritten
    np.testing.assert_array_equal(gallery.anchor(pid)[0], template_of(second, DIM))
    assert len(ledger_events(world, "gallery.enrolled")) == 2


def test_an_anchor_is_made_for_a_template_enrolled_before_anchors_were_kept(world, engine):
    gallery = open_gallery(world, engine)
    pid = next(iter(world.people))
    emb = engine.embed(world.photo(pid, 3))
    gallery.enroll(pid, emb)
    gallery.anchor_path(pid).unlink()
    with pytest.raises(NotEnrolledError):
        gallery.anchor(pid)
    gallery.enroll(pid, emb, keep_anchor=True)  # an operator's re-enrolment makes none
    assert not gallery.anchor_path(pid).exists()
    again = gallery.enroll(pid, emb)  # a rebuild's: template unchanged, anchor made, no event
    assert not again.changed and gallery.anchor_path(pid).exists()
    assert len(ledger_events(world, "gallery.enrolled")) == 1
    # ... but for the ledger's record of the new anchor.
    (event,) = ledger_events(world, "gallery.anchored")
    assert event.payload["anchor_sha256"] == sha256_file(gallery.anchor_path(pid))


def recorded_anchor(world, pid):
    return world.core.registry.get(pid).anchor_sha256


def test_the_ledger_records_every_anchor_move_and_an_anchor_put_back_is_refused(
    world, engine, caplog
):
    gallery = open_gallery(world, engine)
    pid = next(iter(world.people))
    path = gallery.anchor_path(pid)
    first, second = (engine.embed(world.photo(pid, 3)) for _ in range(2))
    gallery.enroll(pid, first)  # a first enrolment sets the anchor
    assert recorded_anchor(world, pid) == sha256_file(path)
    stale = path.read_bytes()
    ref = gallery.reference(pid)
    np.testing.assert_array_equal(ref.anchor, template_of(first, DIM))
    assert (ref.template_sha256, ref.anchor_sha256) == (
        sha256_file(gallery.template_path(pid)),
        sha256_file(path),
    )
    gallery.enroll(pid, second, keep_anchor=True, expect=ref)  # an operator's: no anchor named
    assert "anchor_sha256" not in ledger_events(world, "gallery.enrolled")[-1].payload
    assert recorded_anchor(world, pid) == sha256_file(path)
    gallery.enroll(pid, second)  # privileged, template unchanged: the anchor moves, recorded
    assert path.read_bytes() != stale
    assert recorded_anchor(world, pid) == sha256_file(path)
    current = path.read_bytes()
    # The old anchor put back (from a copy, a backup): never compared with; logged by pid.
    path.write_bytes(stale)
    with caplog.at_level(logging.WARNING), pytest.raises(AnchorUnrecordedError):
        gallery.reference(pid)
    assert any(pid in r.getMessage() for r in caplog.records)
    # A restarted gallery (registry folded anew) knows it as well.
    restarted = open_gallery(world, engine, core=PrivacyCore(world.paths))
    with pytest.raises(AnchorUnrecordedError):
        restarted.reference(pid)
    path.write_bytes(current)
    np.testing.assert_array_equal(restarted.reference(pid).anchor, template_of(second, DIM))
    # A privileged re-enrolment re-anchors a subject whose anchor was put back.
    path.write_bytes(stale)
    gallery.enroll(pid, second)
    np.testing.assert_array_equal(gallery.reference(pid).anchor, template_of(second, DIM))
    gallery.erase(pid)
    assert recorded_anchor(world, pid) is None


def test_an_anchor_set_before_anchors_were_recorded_is_used_until_its_next_move(
    world, engine, monkeypatch
):
    # A subject anchored by an older version: its gallery.enrolled names no anchor.
    gallery = open_gallery(world, engine)
    pid = next(iter(world.people))
    first, second = (engine.embed(world.photo(pid, 3)) for _ in range(2))

    def unrecorded(*args, **kw):
        kw.pop("anchor_sha256", None)
        return enrolled_event(*args, **kw)

    enrolled_event = gallery_module.enrolled_event
    monkeypatch.setattr(gallery_module, "enrolled_event", unrecorded)
    gallery.enroll(pid, first)
    monkeypatch.undo()
    assert recorded_anchor(world, pid) is None
    stale = gallery.anchor_path(pid).read_bytes()
    # Works as before (and an anchor put back is not told apart: nothing recorded to compare).
    assert gallery.reference(pid).anchor_sha256 == sha256_file(gallery.anchor_path(pid))
    # Its next anchor move is recorded; from then on it is protected.
    gallery.enroll(pid, second)
    assert recorded_anchor(world, pid) == sha256_file(gallery.anchor_path(pid))
    gallery.anchor_path(pid).write_bytes(stale)
    with pytest.raises(AnchorUnrecordedError):
        gallery.reference(pid)


def test_an_enrolment_checked_against_a_reference_is_not_written_over_a_change(world, engine):
    # Compare-and-set: an operator's enrolment is written only over the template and anchor it
    # was checked against; a dpo's enrolment in between wins.
    gallery = open_gallery(world, engine)
    a, b = list(world.people)[:2]
    first, dpo, operator = (engine.embed(world.photo(a, 3)) for _ in range(3))
    gallery.enroll(a, first)
    ref = gallery.reference(a)
    moved = gallery.enroll(a, dpo)
    with pytest.raises(ReferenceChangedError):
        gallery.enroll(a, operator, keep_anchor=True, expect=ref)
    assert gallery.stored_sha256(a) == moved.template_sha256
    np.testing.assert_array_equal(gallery.anchor(a)[0], template_of(dpo, DIM))
    assert len(ledger_events(world, "gallery.enrolled")) == 2
    # The anchor alone changed since the check (template left as it was): refused too.
    ref = gallery.reference(a)
    anchor = gallery.anchor_path(a).read_bytes()
    gallery.anchor_path(a).unlink()
    gallery.enroll(a, dpo)  # template unchanged, a new anchor
    assert gallery.anchor_path(a).read_bytes() != anchor
    with pytest.raises(ReferenceChangedError):
        gallery.enroll(a, operator, keep_anchor=True, expect=ref)
    assert gallery.enroll(a, operator, keep_anchor=True, expect=gallery.reference(a)).changed
    # A first enrolment expects no template: another enrolment in between wins.
    other = engine.embed(world.photo(b, 3))
    expect_none = Reference.none_stored(b)
    taken = gallery.enroll(b, other)
    with pytest.raises(ReferenceChangedError):
        gallery.enroll(b, engine.embed(world.photo(b, 3)), expect=expect_none)
    assert gallery.stored_sha256(b) == taken.template_sha256


def test_a_template_file_does_not_open_as_an_anchor(world, engine):
    gallery = open_gallery(world, engine)
    a, b = list(world.people)[:2]
    gallery.enroll_many({p: engine.embed(world.photo(p, 3)) for p in (a, b)})
    gallery.anchor_path(a).write_bytes(gallery.template_path(a).read_bytes())
    with pytest.raises(GalleryError, match="fails authentication"):
        gallery.anchor(a)
    gallery.anchor_path(a).write_bytes(gallery.anchor_path(b).read_bytes())  # another's anchor
    with pytest.raises(GalleryError, match="fails authentication"):
        gallery.anchor(a)


def test_altered_template_is_skipped_not_fatal(world, engine, enrolled, caplog):
    gallery, pids = enrolled
    path = gallery.template_path(pids[0])
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    caplog.set_level(logging.ERROR)
    restarted = open_gallery(world, engine, core=PrivacyCore(world.paths))
    assert pids[0] not in restarted.searchable()
    assert restarted.size == 17
    assert "fails authentication" in caplog.text


def test_purge_erases_templates_without_basis_and_keeps_restricted(world, engine, enrolled):
    gallery, pids = enrolled
    world.core.withdraw_consent(pids[0], ["identification"])
    world.core.restrict(pids[1])
    removed = gallery.purge_without_basis()
    assert [r.pid for r in removed] == [pids[0]]
    assert not gallery.template_path(pids[0]).exists()
    assert gallery.template_path(pids[1]).exists()


def test_purge_from_a_gallery_not_loaded_erases_templates_without_basis(world, enrolled):
    """The purge run on a gallery opened without loading it still finds the template whose
    subject withdrew their consent (a refresh never loads it: it may not be identified)."""
    _gallery, pids = enrolled
    world.core.withdraw_consent(pids[0], ["identification"])
    not_loaded = open_gallery(world, core=PrivacyCore(world.paths), load=False)
    removed = not_loaded.purge_without_basis()
    assert [r.pid for r in removed] == [pids[0]]
    assert not not_loaded.template_path(pids[0]).exists()


def test_bad_embeddings_are_refused(world, engine):
    gallery = open_gallery(world, engine)
    pid = next(iter(world.people))
    with pytest.raises(ValueError, match="64"):
        gallery.enroll(pid, np.ones((2, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        gallery.enroll(pid, np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(ValueError):
        gallery.identify(np.zeros(DIM, np.float32))


def test_threshold_of_another_embedder_is_refused(world):
    reports = world.paths.reports
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "threshold.json").write_text(
        json.dumps({"threshold": 0.4, "target_fmr": 0.001, "embedder_model_version": "other"})
    )
    with pytest.raises(GalleryVersionError, match="dvc repro evaluate"):
        load_threshold(world.paths, VERSION)
    thr = load_threshold(world.paths, "other")
    assert (thr.value, thr.target_fmr, thr.source) == (0.4, 0.001, "reports/threshold.json")


def test_consent_given_later_makes_a_stored_template_searchable(world, engine):
    gallery = open_gallery(world, engine)
    pid = list(world.people)[-1]  # no identification consent yet
    world.core.give_consent(pid, receipt(["identification"]))
    gallery.enroll(pid, crops=world.photo(pid, 2))
    assert top1(gallery, engine, world, pid) == pid


def test_a_withdrawn_subjects_template_put_in_place_of_another_is_never_searched(
    world, engine, enrolled
):
    # Attack: an operator who can write gallery/ (not secrets/) copies the template of a subject
    # who withdrew over that of a consenting one, so that the withdrawn face is matched under
    # the other's pid.
    gallery, pids = enrolled
    withdrawn, cover = pids[0], pids[1]
    world.core.withdraw_consent(withdrawn, ["identification"])
    gallery.template_path(cover).write_bytes(gallery.template_path(withdrawn).read_bytes())
    restarted = open_gallery(world, engine, core=PrivacyCore(world.paths))
    assert cover not in restarted.searchable() and withdrawn not in restarted.searchable()
    assert top1(restarted, engine, world, withdrawn) is None
