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
    check = ["privacy", "consent", "check-evidence", pid]
    assert CliRunner().invoke(app, [*check, str(form)]).exit_code == 0
    other = tmp_path / "other.pdf"
    other.write_bytes(b"another form")
    assert CliRunner().invoke(app, [*check, str(other)]).exit_code == 1
    Erasure(ProjectPaths(project)).erase(pid)
    plain = hashlib.sha256(form.read_bytes()).hexdigest()
    assert plain.encode() not in core.paths.ledger.read_bytes()


def _recorded_sha256s(core: PrivacyCore, path: str) -> set[str]:
    """What the erasure steps recorded of file ``path`` (in the ledger and the certificate)."""
    return {
        a["sha256"]
        for e in core.ledger.entries()
        if e.type == "erasure.step"
        for a in e.payload.get("artefacts") or []
        if a.get("path") == path and a.get("sha256")
    }


def test_the_raw_tables_hash_does_not_confirm_the_erased_subject_s_attributes(project):
    """The raw step recorded the SHA-256 of data/raw/subjects.parquet before the erasure. The
    file is written deterministically, so the current table plus one guessed row (position x
    age x gender x group, ~100k tries) rebuilt it byte for byte: the erased subject's age,
    gender and group came back without any key. Each version of a shared table now carries
    randomness of its own, gone with it: even the right guess is not confirmed."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    from rights_fakes import make_project

    from visage_ml.data.rawstore import SUBJECTS_SCHEMA, read_subjects, table_bytes
    from visage_ml.rights.erasure import Erasure

    proj = make_project(project, n_subjects=4)
    victim = proj.pids[0]
    truth = read_subjects(proj.paths.raw)  # the rows before: the attacker's best guess
    Erasure(proj.paths).erase(victim)
    recorded = _recorded_sha256s(proj.core, "data/raw/subjects.parquet")
    assert recorded  # the certificate does name the table it rewrote
    current_meta = pq.read_schema(proj.paths.raw / "subjects.parquet").metadata or {}

    def written(meta) -> str:
        table = pa.Table.from_pandas(truth, schema=SUBJECTS_SCHEMA, preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table.replace_schema_metadata(meta), sink)
        return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()

    guesses = {
        hashlib.sha256(table_bytes(truth, SUBJECTS_SCHEMA)).hexdigest(),
        written(current_meta),
        written({k: v for k, v in current_meta.items() if not k.startswith(b"visage.")}),
    }
    assert not guesses & recorded


def test_the_vault_index_hash_does_not_link_an_erased_reference_to_its_pid(project):
    """The vault step recorded the SHA-256 of privacy/vault/index.json before the entry went:
    with the master key on disk, the current index plus {blind(guessed ref): erased pid}
    rebuilt it, linking the reference (a name, an employee number) to the pid and everything
    the ledger keeps under it. The index carries randomness of its own per version now."""
    import hashlib
    import json

    from visage_ml.rights.erasure import Erasure

    core = PrivacyCore(ProjectPaths(project))
    victim = core.add_subject(external_ref="HR-ZQ-99123", source="test")
    core.add_subject(external_ref="HR-4711", source="test")
    Erasure(ProjectPaths(project)).erase(victim)
    recorded = _recorded_sha256s(core, "privacy/vault/index.json")
    assert recorded
    vault = PrivacyCore(ProjectPaths(project)).vault
    current = json.loads((project / "privacy" / "vault" / "index.json").read_text())
    guesses = set()
    for keep_other in (True, False):
        index = {k: v for k, v in current.items() if keep_other or not k.startswith("_")}
        index[vault._blind("HR-ZQ-99123")] = victim
        text = json.dumps(index, indent=None, sort_keys=True) + "\n"
        guesses.add(hashlib.sha256(text.encode()).hexdigest())
    assert not guesses & recorded
