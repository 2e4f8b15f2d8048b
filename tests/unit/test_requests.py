"""Data-subject requests: lifecycle as ledger events, deadlines, extensions, receipts, CLI."""

from __future__ import annotations

import json
import math
import re
import threading
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from project_helpers import write_overrides
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import PrivacyParams, ProjectPaths
from visage_ml.privacy.certificate import render, signature_ok
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.keys import load_public_key
from visage_ml.privacy.ledger import utc_now
from visage_ml.privacy.requests import (
    RequestBook,
    RequestStateError,
    UnknownRequestError,
    add_months,
    fold_requests,
    format_time,
)
from visage_ml.privacy.witness import Witness, make_server
from visage_ml.rights.erasure import Erasure

RECEIVED = "2026-10-01T09:00:00.000Z"


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def add_subject_at(core: PrivacyCore, when: datetime) -> str:
    """A subject added to the registry at ``when`` (a request received before says so)."""
    core.ledger.clock = lambda: format_time(when)
    try:
        return core.add_subject(source="test")
    finally:
        core.ledger.clock = utc_now


@pytest.fixture
def setup(project):
    core = PrivacyCore(ProjectPaths(project))
    pid = add_subject_at(core, datetime(2026, 9, 1, tzinfo=UTC))
    clock = Clock(datetime(2026, 10, 10, 12, 0, tzinfo=UTC))
    return core, pid, RequestBook(core, params=PrivacyParams(), now=clock), clock


def events(core, rid):
    return [e.type for e in core.ledger.entries() if e.payload.get("request_id") == rid]


def test_lifecycle_is_one_signed_event_per_transition_and_ends_with_a_signed_receipt(setup):
    core, pid, book, _ = setup
    st = book.receive(pid, "access", received_at=RECEIVED, channel="email")
    assert (st.status, st.right, st.article) == ("received", "access", "Art. 15")
    book.verify(st.request_id, method="id_document")
    book.start(st.request_id)
    receipt = book.complete(st.request_id, outcome={"bundle_sha256": "ab" * 32})
    # The subject (no contact recorded) is owed a receipt and a completion notice: both are
    # recorded, as undeliverable, with the hash of what would have been sent.
    assert events(core, st.request_id) == [
        "request.received",
        "notification.queued",
        "request.verified",
        "request.in_progress",
        "request.completed",
        "notification.queued",
    ]
    assert core.ledger.verify().ok
    # The receipt is signed by the ledger key, stored in its canonical form, and its hash is
    # what the completion event recorded.
    text = receipt.path.read_text()
    doc = json.loads(text)
    assert render(doc) == text
    assert signature_ok(doc, load_public_key(core.paths.ledger_public_key))
    assert doc["outcome"] == {"bundle_sha256": "ab" * 32} and doc["pid"] == pid
    done = book.get(st.request_id)
    assert done.status == "completed" and done.receipt_sha256 == receipt.sha256
    tampered = {**doc, "right": "erasure"}
    assert not signature_ok(tampered, load_public_key(core.paths.ledger_public_key))


def test_state_is_a_fold_over_the_ledger_not_a_separate_database(setup):
    core, pid, book, _ = setup
    a = book.receive(pid, "objection", details={"purposes": ["training"]})
    b = book.receive(pid, "erasure")
    book.verify(b.request_id)
    book.deny(b.request_id, reason_code="art17_3_b")
    fresh = RequestBook(PrivacyCore(core.paths))
    assert {s.request_id: s.status for s in fresh.all()} == {
        a.request_id: "received",
        b.request_id: "denied",
    }
    lines = [orjson.loads(line) for _, line in core.ledger.iter_lines()]
    folded = fold_requests(lines)
    assert folded[b.request_id].denied_reason == "art17_3_b"
    assert folded[a.request_id].details == {"purposes": ["training"]}
    # Nothing but the ledger (and receipts, written at completion) holds request state.
    assert not core.paths.requests.exists()


def test_a_new_book_sees_what_the_ledger_holds_now_also_after_a_restore(setup):
    # Every HTTP call opens a new book, which starts from the request lines this process has
    # already read; it must never answer from a ledger that is no longer there.
    core, pid, book, _ = setup
    a = book.receive(pid, "access")
    older = core.paths.ledger.read_bytes()
    assert [s.request_id for s in RequestBook(core).all()] == [a.request_id]
    b = book.receive(pid, "erasure")
    book.verify(a.request_id)
    later = RequestBook(core)
    assert {s.request_id: s.status for s in later.all()} == {
        a.request_id: "verified",
        b.request_id: "received",
    }
    core.paths.ledger.write_bytes(older)  # the ledger put back as it was (same file)
    assert {s.request_id: s.status for s in RequestBook(core).all()} == {a.request_id: "received"}


def test_deadline_is_one_calendar_month_after_receipt_and_overdue_requests_are_flagged(setup):
    _, pid, book, clock = setup
    st = book.receive(pid, "access", received_at=RECEIVED)
    # Art. 12(3) counts a month, not 30 days: 1 October -> 1 November.
    assert st.deadline == "2026-11-01T09:00:00.000Z"
    assert st.days_left(clock()) == 22 and not st.overdue(clock())
    clock.t = datetime(2026, 11, 2, 10, tzinfo=UTC)
    assert st.overdue(clock()) and st.days_left(clock()) == -1
    assert [s.request_id for s in book.overdue()] == [st.request_id]
    # Closed requests are never overdue.
    book.deny(st.request_id, reason_code="manifestly_unfounded")
    assert book.overdue() == []


def test_extension_up_to_two_more_months_with_a_reason_code(setup):
    _, pid, book, _ = setup
    st = book.receive(pid, "erasure", received_at=RECEIVED)
    st = book.extend(st.request_id, months=1, reason_code="complex_request")
    assert st.deadline == "2026-12-01T09:00:00.000Z" and st.extended_months == 1
    st = book.extend(st.request_id, days=31, reason_code="number_of_requests")
    assert st.deadline == "2027-01-01T09:00:00.000Z"
    assert st.extension_reasons == ["complex_request", "number_of_requests"]
    with pytest.raises(ValueError, match="2027-01-01"):
        book.extend(st.request_id, days=1, reason_code="complex_request")
    with pytest.raises(ValueError, match="code"):
        book.extend(st.request_id, days=1, reason_code="Because the subject is John Smith")


def test_month_arithmetic_ends_on_the_last_day_of_a_shorter_month(setup):
    _, pid, book, clock = setup
    clock.t = datetime(2027, 2, 1, tzinfo=UTC)
    st = book.receive(pid, "access", received_at="2027-01-31T08:00:00Z")
    assert st.deadline == "2027-02-28T08:00:00.000Z"
    st = book.extend(st.request_id, months=2, reason_code="complex_request")
    # Two months after the first deadline (28 Feb), not after 31 January.
    assert st.deadline == "2027-04-28T08:00:00.000Z"


def test_an_overdue_request_cannot_be_extended(setup):
    _, pid, book, clock = setup
    st = book.receive(pid, "access", received_at=RECEIVED)
    clock.t = datetime(2026, 11, 1, 9, 0, 1, tzinfo=UTC)  # one second past the deadline
    with pytest.raises(RequestStateError, match="only within the first month"):
        book.extend(st.request_id, months=1, reason_code="complex_request")
    assert book.get(st.request_id).deadline == "2026-11-01T09:00:00.000Z"


def test_invalid_transitions_are_refused_with_what_is_allowed(setup):
    _, pid, book, _ = setup
    st = book.receive(pid, "access")
    with pytest.raises(RequestStateError, match="allowed next: denied, verified"):
        book.complete(st.request_id, outcome={})
    with pytest.raises(RequestStateError):
        book.start(st.request_id)
    with pytest.raises(UnknownRequestError):
        book.get("r20260101-00000000")
    with pytest.raises(ValueError, match="unknown right"):
        book.receive(pid, "forgetting")
    with pytest.raises(ValueError, match="future"):
        book.receive(pid, "access", received_at=datetime.now(UTC) + timedelta(days=2))


def test_a_request_received_before_its_subject_was_registered_counts_from_receipt_and_says_so(
    project,
):
    # A postal request that arrived before its subject's data was imported (or a pending
    # request migrated in) was refused: the DPO had to record a later date, which moved the
    # Art. 12(3) deadline in the controller's favour. Recorded as received, its deadline counts
    # from receipt, and the request says it predates the registration, with when that was.
    runner = CliRunner()
    core = PrivacyCore(ProjectPaths(project))
    pid = add_subject_at(core, datetime(2026, 9, 1, tzinfo=UTC))
    book = RequestBook(core)
    st = book.receive(pid, "access", received_at="2026-08-20T08:00:00Z", channel="letter")
    assert st.received_at == "2026-08-20T08:00:00.000Z"
    assert st.deadline == "2026-09-20T08:00:00.000Z"
    assert st.received_before_registration and st.subject_added_at == "2026-09-01T00:00:00.000Z"
    (entry,) = [e for e in core.ledger.entries() if e.type == "request.received"]
    assert entry.payload["received_before_registration"] is True
    assert entry.payload["subject_added_at"] == "2026-09-01T00:00:00.000Z"
    # The erasure that records its own request takes it too.
    erasure = Erasure(core.paths, core=core).request(pid, received_at="2026-08-21T00:00:00Z")
    assert erasure.received_before_registration
    # The DPO sees it in the listing, in `request show` and in their JSON.
    listing = " ".join(runner.invoke(app, ["privacy", "requests"]).output.split())
    assert listing.count("received before registration (2026-09-01)") == 2, listing
    shown = runner.invoke(app, ["privacy", "request", "show", st.request_id])
    assert "received before registration (2026-09-01)" in " ".join(shown.output.split())
    shown = runner.invoke(app, ["privacy", "request", "show", st.request_id, "--json"])
    doc = json.loads(shown.output)
    assert doc["received_before_registration"] is True
    assert doc["subject_added_at"] == "2026-09-01T00:00:00.000Z"
    # A request received after the registration says nothing of it.
    later = book.receive(pid, "access", received_at="2026-09-01T00:00:00Z")
    assert not later.received_before_registration
    assert later.to_dict()["subject_added_at"] is None


def test_a_receipt_time_before_the_gdpr_applied_is_refused_saying_why(project):
    # "1970-01-01" recorded a request 20 000 days overdue. No request under Arts. 15-21 can
    # have arrived before 25 May 2018 (Art. 99(2)): refused over the core, the erasure and the
    # CLI, naming the date; the first instant of 25 May anywhere is taken.
    runner = CliRunner()
    core = PrivacyCore(ProjectPaths(project))
    pid = add_subject_at(core, datetime(2026, 9, 1, tzinfo=UTC))
    book = RequestBook(core)
    ledger = core.paths.ledger.read_bytes()
    for when in ("1970-01-01T00:00:00Z", "2018-05-24T23:59:59+14:00", "2018-05-24T09:59:59Z"):
        with pytest.raises(ValueError, match=r"before 25 May 2018, when the GDPR began to apply"):
            book.receive(pid, "access", received_at=when)
        with pytest.raises(ValueError, match=re.escape("Art. 99(2)")):
            Erasure(core.paths, core=core).erase(pid, received_at=when)
        r = runner.invoke(
            app, ["privacy", "request", "new", pid, "--right", "access", "--received-at", when]
        )
        assert r.exit_code != 0 and "GDPR began to apply" in " ".join(r.output.split())
    assert core.paths.ledger.read_bytes() == ledger
    st = book.receive(pid, "access", received_at="2018-05-25T00:00:00+14:00")
    assert st.received_at == "2018-05-24T10:00:00.000Z" and st.received_before_registration
    assert st.overdue()


def test_started_erasure_stops_processing_and_a_denial_restores_it(setup):
    core, pid, book, _ = setup
    from serving_fakes import receipt

    core.give_consent(pid, receipt(["training", "identification"]))
    st = book.receive(pid, "erasure")
    assert core.may_process(pid, "training").allowed  # a mere request changes nothing
    book.verify(st.request_id)
    book.start(st.request_id)
    assert core.may_process(pid, "training").reason == "erasure_pending"
    import pandas as pd

    snap = pd.read_parquet(core.paths.consents)
    assert not snap[(snap.pid == pid)]["allowed"].any()  # the pipeline's input says so too
    book.deny(st.request_id, reason_code="art17_3_e")
    assert core.may_process(pid, "training").allowed


def test_cli_lists_open_requests_with_days_left_and_flags_overdue(project):
    runner = CliRunner()
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(source="test")
    now = datetime.now(UTC)
    received = now - timedelta(days=40)
    old = received.isoformat()
    # The deadline is a calendar month after receipt: 9 to 12 days ago, depending on the month.
    overdue = -math.ceil((add_months(received, 1) - now).total_seconds() / 86400)
    left = math.ceil((add_months(now, 1) - now).total_seconds() / 86400)
    r = runner.invoke(
        app, ["privacy", "request", "new", pid, "--right", "access", "--received-at", old]
    )
    assert r.exit_code == 0, r.output
    # The subject has no contact address: the command says they were not told.
    assert "the subject was not told" in " ".join(r.output.split())
    r = runner.invoke(app, ["privacy", "request", "new", pid, "--right", "erasure", "--json"])
    recent = json.loads(r.output)["request_id"]
    assert "no contact address" in json.loads(r.output)["subject_not_told"]
    listing = runner.invoke(app, ["privacy", "requests"])
    assert listing.exit_code == 0
    assert f"OVERDUE by {overdue} days" in listing.output, listing.output
    assert f"{left} days left" in listing.output and "(s) left" not in listing.output
    assert "2 request(s), 1 overdue" in listing.output
    # Received 40 days before the subject was added just now: the late one says so, the other not.
    flat = " ".join(listing.output.split())
    assert flat.count(f"received before registration ({now.date().isoformat()})") == 1, flat
    data = json.loads(runner.invoke(app, ["privacy", "requests", "--json"]).output)
    assert [d["overdue"] for d in data] == [True, False]
    assert runner.invoke(app, ["privacy", "request", "verify", recent]).exit_code == 0
    shown = runner.invoke(app, ["privacy", "request", "show", recent, "--json"])
    assert [h["event"] for h in json.loads(shown.output)["history"]] == [
        "request.received",
        "request.verified",
    ]
    denied = runner.invoke(app, ["privacy", "request", "deny", recent, "--reason", "art17_3_b"])
    assert denied.exit_code == 0
    assert "1 request(s), 1 overdue" in runner.invoke(app, ["privacy", "requests"]).output
    unknown = runner.invoke(app, ["privacy", "request", "show", "r20260101-0000abcd"])
    assert unknown.exit_code == 2 and "visage privacy requests" in unknown.output
    with_contact = core.add_subject(source="test", contact="zelda@example.invalid")
    told = runner.invoke(app, ["privacy", "request", "new", with_contact, "--right", "access"])
    assert told.exit_code == 0 and "not told" not in told.output


@pytest.fixture
def remote_witness(tmp_path):
    """A witness on another host, behind HTTP: its cosignatures carry its own (real) time."""
    remote = Witness.create(tmp_path / "other-host", name="witness.example.org/w1")
    server = make_server(remote, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield remote, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_host_clock_set_back_does_not_hide_a_passed_deadline(
    project, remote_witness, monkeypatch
):
    # The attack: a request's deadline D passed about ten days ago; the host's clock is set
    # back to D - 20 days, and a restriction recorded since then is stamped with it. The
    # listing must still flag the request overdue, and refuse to extend it: the HTTP witness
    # cosigned that restriction at the real time.
    remote, url = remote_witness
    clock = Clock(datetime.now(UTC).replace(microsecond=0) - timedelta(days=40))
    monkeypatch.setattr(
        "visage_ml.privacy.ledger.utc_now",
        lambda: clock.t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid, other = core.add_subject(source="test"), core.add_subject(source="test")
    remote.add_log(core.witnessing.log_verifier().vkey)
    witnesses = [{"kind": "directory", "path": "default"}]
    witnesses.append({"kind": "http", "url": url, "key": remote.verifier.vkey})
    write_overrides(project / "params.yaml", {"privacy.witness.witnesses": witnesses})
    core = PrivacyCore(paths)
    st = RequestBook(core).receive(pid, "access")
    deadline = datetime.fromisoformat(st.deadline.replace("Z", "+00:00"))
    clock.t = deadline - timedelta(days=1)
    core.checkpoint_and_witness()  # the newest entry before the clock goes back
    clock.t = deadline - timedelta(days=20)
    PrivacyCore(paths).restrict(other)
    runner = CliRunner()
    listed = runner.invoke(app, ["privacy", "requests", "--json"])
    assert listed.exit_code == 0, listed.output
    (item,) = [d for d in json.loads(listed.stdout) if d["request_id"] == st.request_id]
    assert item["overdue"] and item["days_left"] < 0
    extend = ["privacy", "request", "extend", st.request_id, "--months", "1"]
    refused = runner.invoke(app, [*extend, "--reason", "complex_request"])
    assert refused.exit_code != 0 and "deadline" in refused.output


def test_a_failed_attempt_shows_its_step_code_and_what_to_do_in_the_listing_and_in_enforce(
    project,
):
    """The DPO reading the deadline listing or the enforcement pass sees what failed and what
    to do, not only that the request is late."""
    runner = CliRunner()
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(source="test")
    received = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    book = RequestBook(core)
    st = book.receive(pid, "erasure", received_at=received)
    book.verify(st.request_id)
    book.start(st.request_id)
    book.fail(st.request_id, step="audit_log", code="audit_log_unverified")
    action = "restore privacy/audit.jsonl from a backup"

    listing = runner.invoke(app, ["privacy", "requests"]).output
    assert "failed: audit_log_unverified" in listing, listing
    assert "(audit_log: audit_log_unverified)" in listing
    assert action in listing and f"--request {st.request_id}" in listing

    r = runner.invoke(app, ["privacy", "enforce"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"request {st.request_id} (erasure) of {pid}" in out and "OVERDUE by" in out
    assert "(audit_log: audit_log_unverified)" in out and action in out
    assert "1 open request(s) need the DPO: 1 overdue, 1 with a failed attempt" in out
    doc = json.loads(runner.invoke(app, ["privacy", "enforce", "--json"]).output)
    (item,) = doc["requests"]
    assert item["failure"]["code"] == "audit_log_unverified" and action in item["hint"]


def test_every_rights_command_says_when_the_subject_was_not_told(project):
    # README: "without a contact the subject is not told of their requests: the commands say
    # so". restrict and erase complete a request and queue its notice like `request new`.
    runner = CliRunner()
    core = PrivacyCore(ProjectPaths(project))
    for contact in (None, "zelda@example.invalid"):
        pid = core.add_subject(source="test", contact=contact)
        for cmd in (["privacy", "restrict", pid], ["privacy", "erase", pid]):
            r = runner.invoke(app, cmd)
            assert r.exit_code == 0, r.output
            said = "the subject was not told" in " ".join(r.output.split())
            assert said == (contact is None), (cmd, contact, r.output)
    pid = core.add_subject(source="test")
    r = runner.invoke(app, ["privacy", "restrict", pid, "--json"])
    assert "no contact address" in json.loads(r.output)["subject_not_told"]


def test_denying_a_second_erasure_request_does_not_lift_the_first_ones_stop(setup):
    """Erasure A is running (the subject may not be processed); the DPO denies a duplicate
    request B as manifestly excessive. The denial of any erasure request lifted the stop, so
    the subject could be matched and enrolled again while A ran."""
    core, pid, book, _ = setup
    a = book.receive(pid, "erasure", received_at=RECEIVED)
    book.verify(a.request_id)
    book.start(a.request_id)
    assert not core.may_process(pid, "identification").allowed
    b = book.receive(pid, "erasure", received_at=RECEIVED)
    book.deny(b.request_id, reason_code="manifestly_excessive")
    assert not core.may_process(pid, "identification").allowed
    assert core.registry.get(pid).erasure_pending
    # Denying the running one lifts it, as before.
    book.deny(a.request_id, reason_code="manifestly_unfounded")
    assert not core.registry.get(pid).erasure_pending


def test_the_art19_notice_of_a_lifted_restriction_says_it_was_lifted(setup):
    """Recipients were told "the data of data subject X was subject to restriction" when the
    restriction was lifted: the opposite of what happened."""
    from visage_ml.privacy.outbox import Outbox, Recipients

    core, pid, book, _ = setup
    Recipients(core).add("partner", name="Partner Ltd", address="dpo@partner.example")
    bodies = {}
    for action in ("set", "lift"):
        st = book.receive(pid, "restriction", received_at=RECEIVED, details={"action": action})
        book.verify(st.request_id)
        book.start(st.request_id)
        book.complete(st.request_id, outcome={})
        (msg,) = Outbox(core).art19(book.get(st.request_id))
        bodies[action] = msg.body
    assert "was subject to restriction" in bodies["set"]
    assert "lifting of a restriction" in bodies["lift"]
    assert "was subject to restriction" not in bodies["lift"]
