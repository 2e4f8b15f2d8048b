"""The notification outbox and its delivery: real SMTP and webhook receivers on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import orjson
import pytest
from notify_fakes import SimClock, SmtpServer, WebhookServer, free_port
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import NotifyParams, ProjectPaths, load_params
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.outbox import Outbox, Recipients
from visage_ml.privacy.requests import RequestBook
from visage_ml.rights.enforce import Enforcer
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.notify import Notifier


@pytest.fixture
def setup(project):
    clock = SimClock()
    core = PrivacyCore(ProjectPaths(project))
    core.ledger.clock = clock.iso
    pid = core.add_subject(contact="zelda@example.invalid", source="test")
    return core, pid, clock


def events(core, type_):
    return [e for e in core.ledger.entries() if e.type == type_]


def test_every_message_of_a_request_reaches_the_subject_by_smtp(setup):
    core, pid, _ = setup
    book = RequestBook(core)
    with SmtpServer() as smtp:
        notifier = Notifier(core.paths, core=core, params=NotifyParams(smtp_port=smtp.port))
        st = book.receive(pid, "erasure", channel="email")
        first_deadline = st.deadline
        book.extend(st.request_id, months=1, reason_code="complex_request")
        book.verify(st.request_id)
        book.deny(st.request_id, reason_code="art17_3_b")
        report = notifier.deliver()
    assert len(report.delivered) == 3 and not report.retrying
    assert all(m.to == ["zelda@example.invalid"] for m in smtp.mails)
    assert [m.subject.split(" (")[0] for m in smtp.mails] == [
        "We received your erasure request",
        "Your erasure request",
        "Your erasure request",
    ]
    receipt, extension, denial = (m.body for m in smtp.mails)
    assert st.request_id in receipt and first_deadline in receipt
    assert st.deadline in extension and st.deadline != first_deadline
    assert "the request is complex" in extension and "extended to" in extension
    assert "legal obligation (Art. 17(3)(b))" in denial and "supervisory authority" in denial
    # The ledger has each message's hash and its delivery, never the address or the text.
    sent = events(core, "notification.sent")
    queued = events(core, "notification.queued")
    assert [q.payload["sha256"] for q in queued] == [s.payload["sha256"] for s in sent]
    assert b"zelda@example.invalid" not in core.paths.ledger.read_bytes()
    assert Outbox(core).messages() == []


def test_failed_delivery_is_retried_with_backoff_then_given_up_and_revived(setup):
    core, pid, clock = setup
    port = free_port()  # nothing listens here yet
    params = NotifyParams(smtp_port=port, max_attempts=3, backoff_seconds=60.0)
    notifier = Notifier(core.paths, core=core, params=params)
    rid = RequestBook(core).receive(pid, "access").request_id
    env = {"VISAGE_PROJECT": str(core.paths.root)}

    def shown() -> str:
        # What the DPO sees of the subject's message (the HTTP API's subject_message too).
        r = CliRunner().invoke(app, ["privacy", "request", "show", rid, "--json"], env=env)
        assert r.exit_code == 0, r.output
        return json.loads(r.output)["subject_message"]

    assert shown() == "queued"
    assert notifier.deliver().retrying  # first try fails
    assert shown() == "retrying"
    assert notifier.deliver().to_dict() == {"delivered": [], "retrying": [], "dead": []}
    clock.advance(seconds=61)  # waited 60 s
    assert notifier.deliver().retrying
    clock.advance(seconds=100)  # the next wait is 120 s: not yet
    assert not notifier.deliver().retrying
    clock.advance(seconds=30)
    assert notifier.deliver().dead  # third try: given up
    (msg,) = Outbox(core).messages()
    assert msg.state == "dead" and msg.attempts == 3 and msg.last_error == "smtp_unreachable"
    failed = events(core, "notification.failed")
    assert [f.payload["state"] for f in failed] == ["retrying", "retrying", "dead"]
    assert shown() == "failed"
    # The server is back: `visage privacy notify --retry-dead` delivers it.
    smtp = SmtpServer()
    smtp.port = port
    from aiosmtpd.controller import Controller

    smtp._controller = Controller(smtp._sink, hostname="127.0.0.1", port=port)
    with smtp:
        r = CliRunner().invoke(
            app,
            ["privacy", "notify", "--retry-dead", "--json"],
            env={"VISAGE_PROJECT": str(core.paths.root)},
        )
        assert r.exit_code == 1, r.output  # the CLI's params point at port 25: still failing
        assert shown() == "retrying"  # revived (notification.revived), then failed once more
        Outbox(core).revive()
        assert len(notifier.deliver().delivered) == 1
    assert len(smtp.mails) == 1 and Outbox(core).messages() == []
    assert shown() == "delivered"
    revived = events(core, "notification.revived")
    assert [e.payload["request_id"] for e in revived] == [rid]  # the CLI's; then none was dead


def test_webhooks_are_signed_and_art19_reaches_every_registered_recipient(setup):
    core, pid, _ = setup
    with SmtpServer() as smtp, WebhookServer() as hook:
        runner = CliRunner()
        env = {"VISAGE_PROJECT": str(core.paths.root)}
        for args in (
            ["partner", "--name", "Partner", "--address", hook.url],
            ["processor", "--name", "IT", "--address", "privacy@it.invalid"],
        ):
            r = runner.invoke(app, ["privacy", "recipients", "add", *args], env=env)
            assert r.exit_code == 0, r.output
        bad = runner.invoke(
            app,
            ["privacy", "recipients", "add", "x", "--name", "X", "--address", "nowhere"],
            env=env,
        )
        assert bad.exit_code == 2 and "neither an e-mail address" in bad.output
        listed = json.loads(
            runner.invoke(app, ["privacy", "recipients", "list", "--json"], env=env).output
        )
        assert [r["id"] for r in listed] == ["partner", "processor"]
        book = RequestBook(core)
        st = book.receive(pid, "restriction", details={"action": "set"})
        book.verify(st.request_id)
        book.start(st.request_id)
        core.restrict(pid)
        book.complete(st.request_id, outcome={"event": "restriction.set"})
        Notifier(core.paths, core=core, params=NotifyParams(smtp_port=smtp.port)).deliver()
    (posted,) = hook.received
    key = (core.paths.secrets / "notify.key").read_bytes()
    expected = "sha256=" + hmac.new(key, posted.body, hashlib.sha256).hexdigest()
    assert posted.headers["x-visage-signature"] == expected
    body = orjson.loads(posted.body)
    assert body["kind"] == "art19" and pid in body["body"] and "restriction" in body["body"]
    to = sorted(a for m in smtp.mails for a in m.to)
    assert to == ["privacy@it.invalid", "zelda@example.invalid", "zelda@example.invalid"]
    art19 = [e for e in events(core, "notification.queued") if e.payload["kind"] == "art19"]
    assert sorted(e.payload["recipient_id"] for e in art19) == ["partner", "processor"]
    assert Recipients(core).remove("partner").id == "partner"
    assert [r.id for r in Recipients(core).all()] == ["processor"]


def test_a_restriction_the_dpo_sets_directly_reaches_every_registered_recipient(setup):
    # `visage privacy restrict` (no request first) is still a restriction under Art. 18: the
    # recipient of the subject's data must hear of it (Art. 19), and the subject is told.
    core, pid, _ = setup
    env = {"VISAGE_PROJECT": str(core.paths.root)}
    runner = CliRunner()
    with SmtpServer() as smtp, WebhookServer() as hook:
        Recipients(core).add("partner", name="Partner", address=hook.url)
        r = runner.invoke(app, ["privacy", "restrict", pid, "--json"], env=env)
        assert r.exit_code == 0, r.output
        rid = json.loads(r.output)["request_id"]
        Notifier(core.paths, core=core, params=NotifyParams(smtp_port=smtp.port)).deliver()
    assert core.subject(pid).restricted
    (posted,) = hook.received
    body = orjson.loads(posted.body)
    assert body["kind"] == "art19" and body["request_id"] == rid
    assert "restriction" in body["body"] and pid in body["body"]
    assert [m.to for m in smtp.mails] == [["zelda@example.invalid"]] * 2  # receipt, completion
    (done,) = [s for s in RequestBook(core).all() if s.request_id == rid]
    assert done.right == "restriction" and done.status == "completed"


def test_a_subject_without_contact_is_recorded_as_unreachable_not_silently_skipped(project):
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(source="test")
    RequestBook(core).receive(pid, "access")
    (q,) = events(core, "notification.queued")
    assert q.payload["channel"] == "none" and q.payload["state"] == "no_address"
    assert Outbox(core).messages() == []


def test_backoff_doubles(setup):
    core, pid, clock = setup
    outbox = Outbox(core)
    RequestBook(core).receive(pid, "access")
    (msg,) = outbox.messages()
    now = clock()
    waits = []
    for _ in range(3):
        msg = outbox.failed(msg, error="x", now=now, max_attempts=9, backoff_seconds=10)
        waits.append(msg.next_attempt)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    assert waits == [(now + timedelta(seconds=s)).strftime(fmt) for s in (10, 20, 40)]


def test_an_erased_subject_s_address_leaves_with_their_dead_messages_after_the_retention(setup):
    core, pid, clock = setup
    # Nothing listens: every message dies at its first try.
    params = NotifyParams(smtp_port=free_port(), max_attempts=1)
    Erasure(core.paths, core=core).erase(pid)  # a receipt, then the completion, for their address
    notifier = Notifier(core.paths, core=core, params=params, now=clock)
    assert len(notifier.deliver().dead) == 2
    outbox = core.paths.privacy / "outbox"
    # Erased, but the address is kept for `notify --retry-dead` (and so the completion can reach
    # them) ...
    assert [f for f in outbox.rglob("*.json") if b"zelda@example.invalid" in f.read_bytes()]
    project = load_params(core.paths.params)
    days = project.privacy.retention.dead_messages_days
    clock.advance(days=days - 1)
    enforcer = Enforcer(core.paths, core=core, params=project, now=clock)
    assert [a.kind for a in enforcer.plan()] == []
    # ... until `dead_messages_days` after they died: then `enforce` discards them, on the record.
    clock.advance(days=1, seconds=1)
    result = enforcer.apply(deliver=False)
    assert [a.kind for a in result.actions] == ["discard_message", "discard_message"]
    left = [f for f in outbox.rglob("*") if f.is_file()]
    assert [f for f in left if b"zelda@example.invalid" in f.read_bytes()] == []
    assert Outbox(core).messages() == []
    applied = [e.payload for e in events(core, "retention.applied")]
    queued = {
        e.payload["message_id"]: e.payload["sha256"] for e in events(core, "notification.queued")
    }
    assert {(p["message_id"], p["sha256"]) for p in applied} == set(queued.items())
