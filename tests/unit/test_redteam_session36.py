"""Red-team tests of session 36's changes (import-report redaction, manifest index, dead
messages, re-enrolment, 422 messages). Each asserts a guarantee and fails while the attack
it describes works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tombstones import LEGAL, jpeg, put

from visage_ml.config import ProjectPaths
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.importers.reports import report_files
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import Erasure


def _import(project: Path, fmt: str, root: Path):
    basis = ImportBasis.from_options(legal_basis=LEGAL)
    return import_dataset(fmt, root, paths=ProjectPaths(project), basis=basis)


def _reports_text(paths: ProjectPaths) -> str:
    return "".join(f.read_text() for f in report_files(paths))


# -- 2. import reports ---------------------------------------------------------------------------


def test_utkface_chip_copy_line_is_redacted_when_its_person_is_erased(project, tmp_path):
    """UTKFace: both published copies of a photograph are one person (reference
    ``utkface:X.jpg``). The chip copy ``X.jpg.chip.jpg`` refused (too small) names the person
    in the report; its line references are ``utkface:X.jpg.chip.jpg`` only (an alias the vault
    knows, the tombstone does not), so the erasure leaves the line."""
    stem = "24_1_0_20170116174525125"
    src = tmp_path / "utk"
    put(src / f"{stem}.jpg", jpeg(1))
    put(src / f"{stem}.jpg.chip.jpg", jpeg(2, side=16))
    result = _import(project, "utkface", src)
    assert result.images_imported == 1
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid = core.vault.find(f"utkface:{stem}.jpg")
    assert pid and stem in _reports_text(paths)
    Erasure(paths, core=core).erase(pid)
    assert stem not in _reports_text(paths)


# -- 4. dead messages ----------------------------------------------------------------------------


def test_a_message_that_died_without_its_ledger_line_is_still_discarded(project, monkeypatch):
    """``Outbox.failed`` saves the message as dead *before* it appends ``notification.failed``
    (state dead). A crash (or a ledger append that fails) between the two leaves a dead message,
    holding the erased subject's address, that the enforcer never dates, so never discards."""
    from notify_fakes import SimClock, free_port

    from visage_ml.config import NotifyParams, load_params
    from visage_ml.privacy.outbox import DEAD, Outbox
    from visage_ml.rights.enforce import Enforcer
    from visage_ml.rights.notify import Notifier

    clock = SimClock()
    core = PrivacyCore(ProjectPaths(project))
    core.ledger.clock = clock.iso
    pid = core.add_subject(contact="zelda@example.invalid", source="test")
    Erasure(core.paths, core=core).erase(pid)
    ledger_append = core.ledger.append

    def crash_on_death(type_, *a, **kw):
        payload = a[1] if len(a) > 1 else kw.get("payload", {})
        if type_ == "notification.failed" and (payload or {}).get("state") == "dead":
            raise KeyboardInterrupt("killed between the outbox's save and the ledger line")
        return ledger_append(type_, *a, **kw)

    monkeypatch.setattr(core.ledger, "append", crash_on_death)
    params = NotifyParams(smtp_port=free_port(), max_attempts=1)
    with pytest.raises(KeyboardInterrupt):
        Notifier(core.paths, core=core, params=params, now=clock).deliver()
    monkeypatch.setattr(core.ledger, "append", ledger_append)
    assert [m.state for m in Outbox(core).messages()][:1] == [DEAD]
    outbox = core.paths.privacy / "outbox"
    project_params = load_params(core.paths.params)
    clock.advance(days=10 * project_params.privacy.retention.dead_messages_days)
    Enforcer(core.paths, core=core, params=project_params, now=clock).apply(deliver=False)
    dead = [m.id for m in Outbox(core).messages() if m.state == DEAD]
    assert dead == [], "a dead message the ledger never dated is kept for good"
    # What still holds the address waits to be sent (the crash came before its first try).
    pending = {f"{m.id}.json" for m in Outbox(core).messages()}
    assert pending and all(m.state != DEAD for m in Outbox(core).messages())
    holding = {f.name for f in outbox.glob("m*.json") if b"zelda@example.invalid" in f.read_bytes()}
    assert holding <= pending


def test_a_revived_message_is_not_discarded_by_a_plan_made_while_it_was_dead(project):
    """``_do_discard_message`` does not look at the message's state again: a message revived
    (``notify --retry-dead``, which takes no enforce lock) after the plan was made is discarded
    though pending, and the completion never reaches the subject."""
    from notify_fakes import SimClock, free_port

    from visage_ml.config import NotifyParams, load_params
    from visage_ml.privacy.outbox import PENDING, Outbox
    from visage_ml.rights.enforce import Enforcer
    from visage_ml.rights.notify import Notifier

    clock = SimClock()
    core = PrivacyCore(ProjectPaths(project))
    core.ledger.clock = clock.iso
    pid = core.add_subject(contact="zelda@example.invalid", source="test")
    Erasure(core.paths, core=core).erase(pid)
    params = NotifyParams(smtp_port=free_port(), max_attempts=1)
    Notifier(core.paths, core=core, params=params, now=clock).deliver()
    project_params = load_params(core.paths.params)
    clock.advance(days=project_params.privacy.retention.dead_messages_days + 1)
    enforcer = Enforcer(core.paths, core=core, params=project_params, now=clock)
    actions = enforcer.plan()
    assert {a.kind for a in actions} == {"discard_message"}
    assert Outbox(core).revive() == 2  # the DPO retries them
    enforcer.apply(actions, deliver=False)
    assert {m.state for m in Outbox(core).messages()} == {PENDING}


# -- 3. manifest index ---------------------------------------------------------------------------


def _lineage_setup(tiny_project):
    from rights_fakes import make_project
    from test_erasure_lineage import MODEL, _lock

    from visage_ml.dvcops import tracked_md5
    from visage_ml.io import md5_file

    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True)
    raw_md5 = tracked_md5(root, proj.paths.raw)
    _lock(root, raw_md5, md5_file(proj.paths.processed / "faces.sealed"))
    return root, proj, raw_md5, MODEL


@pytest.mark.pipeline
def test_an_edited_manifest_index_cannot_make_lineage_deny_a_model_saw_someone(tiny_project):
    """privacy/lineage/manifests.json is plain, unauthenticated JSON. An operator who drops a
    pid from an entry (or a whole entry's list) makes lineage answer a definite "no model saw
    them" for a purged data version, where without the index it said "unknown"; nothing in
    the ledger lets a regulator check the index."""
    from visage_ml.rights import manifest_index
    from visage_ml.rights.lineage import subject_lineage

    _, proj, raw_md5, model = _lineage_setup(tiny_project)
    first, second, _ = proj.pids
    Erasure(proj.paths, core=proj.core).erase(first)
    assert {m.version for m in subject_lineage(proj.paths, second).models} == {model}
    index = manifest_index.index_path(proj.paths)
    doc = json.loads(index.read_text())
    assert second in doc[raw_md5]
    doc[raw_md5] = [p for p in doc[raw_md5] if p != second]
    index.write_text(json.dumps(doc))
    lin = subject_lineage(proj.paths, second)
    seen = {m.version for m in lin.models} == {model}
    unknown = any(raw_md5 in n for n in lin.notes)
    assert seen or unknown, "a hand-edited index makes the lineage deny the model saw them"


@pytest.mark.pipeline
def test_the_manifest_index_never_names_a_subject_erased_before(tiny_project):
    """An erasure remembers every pid a purged manifest lists but its own subject's, erased
    ones included: a copy of a manifest that outlived an earlier erasure (a restored cache
    backup) puts that erased pid into manifests.json when the next erasure purges it."""
    import shutil

    from visage_ml.rights import manifest_index

    root, proj, raw_md5, _ = _lineage_setup(tiny_project)
    first, second, _ = proj.pids
    (obj,) = [p for p in (root / ".dvc" / "cache").rglob("*.dir") if raw_md5[2:-4] in p.name]
    backup = root.parent / "backup.dir"
    shutil.copy2(obj, backup)
    Erasure(proj.paths, core=proj.core).erase(first)
    assert not obj.exists()
    shutil.copy2(backup, obj)  # the cache restored from a backup
    Erasure(proj.paths, core=proj.core).erase(second)
    assert PrivacyCore(proj.paths).subject(first).erased
    assert not manifest_index.names(proj.paths, first), "manifests.json names an erased pid"


# -- 6. 422 messages -----------------------------------------------------------------------------


def test_a_422_still_names_the_route_s_own_field_when_the_body_is_optional(project):
    """errors._declared_names takes the body model from ``body_field.field_info.annotation``
    only when it is a BaseModel class; a route whose body is ``RestrictRequest | None``
    (POST /v1/subjects/{pid}/restrict) declares no names, so its own field ``reason_code`` is
    written ``<key>``: the client is no longer told which field was wrong (it was before)."""
    from test_api import Served

    s = Served(project)
    r = s.call("POST", f"/v1/subjects/{s.pids[0]}/restrict", "dpo", json={"reason_code": "A B"})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert message.startswith("reason_code:"), message
