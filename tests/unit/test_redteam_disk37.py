"""An operator with the disk, after an erasure (session 37): what the signed, append-only ledger
kept must not confirm a guess about the erased subject. Each test failed while the attack it
describes worked."""

from __future__ import annotations

import orjson
from notify_fakes import SimClock, SmtpServer

from visage_ml.config import NotifyParams, ProjectPaths
from visage_ml.io import canonical_json, sha256_bytes
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.outbox import Outbox
from visage_ml.privacy.requests import RequestBook
from visage_ml.rights.notify import Notifier

CONTACT = "zelda.quokka@example.invalid"


def test_a_delivered_message_s_ledger_hash_does_not_confirm_a_guessed_address(project):
    """`notification.queued` kept SHA-256(id, channel, address, subject, body): all but the
    address can be rebuilt (templates, the request's dates), so a guessed address was confirmed
    for good after the message file was gone. The hash now covers a salt that leaves with it."""
    clock = SimClock()
    core = PrivacyCore(ProjectPaths(project))
    core.ledger.clock = clock.iso
    pid = core.add_subject(contact=CONTACT, source="test")
    st = RequestBook(core).receive(pid, "erasure", channel="email")
    (msg,) = Outbox(core).messages()
    # What an attacker rebuilds from the templates (here: read before delivery, the best case).
    rebuilt = {"id": msg.id, "channel": msg.channel, "subject": msg.subject, "body": msg.body}
    with SmtpServer() as smtp:
        Notifier(core.paths, core=core, params=NotifyParams(smtp_port=smtp.port)).deliver()
    assert Outbox(core).messages() == []
    queued = [e for e in core.ledger.entries() if e.type == "notification.queued"]
    recorded = {e.payload["sha256"] for e in queued if e.payload.get("request_id") == st.request_id}
    guess = sha256_bytes(canonical_json({**rebuilt, "address": CONTACT}))
    assert guess not in recorded
    assert CONTACT.encode() not in core.paths.ledger.read_bytes()
    # The webhook/SMTP receiver can still check what it got: the salt travels with the message.
    assert orjson.loads(orjson.dumps(msg.wire())).get("sha256") == msg.sha256


def test_the_consent_evidence_does_not_find_the_erased_subject_in_the_ledger(project, tmp_path):
    """`consent give --evidence signed-form.pdf` put the form's plain SHA-256 beside the pid
    in the ledger, for good: whoever holds the form found the pid and its whole history after
    the erasure. The receipt names the evidence by an HMAC under the subject's data key, which
    the erasure destroys; while the subject is on record a DPO still checks a form against it."""
    import hashlib

    from typer.testing import CliRunner

    from visage_ml.app.cli import app
    from visage_ml.rights.erasure import Erasure

    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(source="test")
    form = tmp_path / "signed-form.pdf"
    form.write_bytes(b"%PDF-1.4 signed by Zelda Quokka on 2026-12-01")
    res = CliRunner().invoke(
        app, ["privacy", "consent", "give", pid, "-p", "identification", "--evidence", str(form)]
    )
    assert res.exit_code == 0, res.output
    core = PrivacyCore(ProjectPaths(project))
    assert core.evidence_matches(pid, form.read_bytes())
    assert not core.evidence_matches(pid, b"another form")
    Erasure(ProjectPaths(project)).erase(pid)
    plain = hashlib.sha256(form.read_bytes()).hexdigest()
    assert plain.encode() not in core.paths.ledger.read_bytes()
