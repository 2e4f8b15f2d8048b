"""The notification outbox and the Art. 19 recipients register.

Every message the controller owes is first written, durably, to ``privacy/outbox/<id>.json``
(mode 0600 in a 0700 folder) and recorded in the ledger as ``notification.queued`` with the
SHA-256 of what will be sent, its channel and audience; delivery (:mod:`visage_ml.rights.notify`,
``visage privacy notify``) sends it by SMTP or webhook, retries with a growing wait, and records
``notification.sent`` (the same SHA-256) or ``notification.failed`` (a code; ``dead`` after the
last try; ``notification.revived`` when ``visage privacy notify --retry-dead`` gives it another
round). From these :meth:`Outbox.subject_message` tells where a request's message to the subject
stands. The ledger never holds a message body or an address, only hashes and states. A
delivered message's file is removed: the address it held is not kept. A ``dead`` one is kept for
``visage privacy notify --retry-dead`` until ``visage privacy enforce`` discards it,
``privacy.retention.dead_messages_days`` after it died.

Messages (:data:`KINDS`): to the data subject the ``receipt`` of a request, an ``extension``
with its reasons, the ``completion`` and a ``denial`` with its reasons and the right to complain
(Art. 12(3), (4)); to each registered recipient an ``art19`` notice of a rectification, erasure
or restriction. The subject's address is the ``contact`` of their identity-vault record. So
that the completion of an erasure can still reach them after the vault record is destroyed, the
address a request's receipt went to is kept with the request (``requests/<id>.json`` beside the
messages) until its closing message is delivered, then removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson

from visage_ml.io import (
    atomic_write_bytes,
    canonical_json,
    file_lock,
    private_dir,
    secure_unlink,
    sha256_bytes,
)
from visage_ml.privacy.datakeys import wrapped_keys_exist
from visage_ml.privacy.ledger import LedgerFold, line_spans
from visage_ml.privacy.records import COMPLAINT_TEXT, records_of
from visage_ml.privacy.sealed import KeyDestroyedError
from visage_ml.privacy.vault import VaultError

if TYPE_CHECKING:  # the core imports nothing of this module; requests pass it in
    from visage_ml.privacy.core import PrivacyCore

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
RECIPIENTS_FILE = "recipients.json"
KINDS: tuple[str, ...] = ("receipt", "extension", "completion", "denial", "art19")
CLOSING = frozenset({"completion", "denial"})
ART19_RIGHTS = frozenset({"rectification", "erasure", "restriction"})
SMTP, WEBHOOK, NONE = "smtp", "webhook", "none"
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
# Where a request's last message to the subject stands (the rights API's subject_message):
# queued without an address (never sent), queued, a try failed and another is due, given up
# (dead), delivered.
NO_ADDRESS, QUEUED, RETRYING, FAILED = "no_address", "queued", "retrying", "failed"
SUBJECT_MESSAGE_STATES: tuple[str, ...] = (NO_ADDRESS, QUEUED, RETRYING, DELIVERED, FAILED)
MESSAGE_ID_RE = re.compile(r"^m[0-9a-f]{16}$")
RECIPIENT_ID_RE = re.compile(r"^[a-z0-9_]{1,32}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

MSG_RECIPIENT_ID = "recipient id must be a short code of lowercase letters, digits and '_'"
MSG_ADDRESS = (
    "'{address}' is neither an e-mail address (name@example.org) nor an http(s):// webhook URL"
)
MSG_NO_RECIPIENT = (
    "no registered recipient '{rid}'; list them with `visage privacy recipients list`"
)
MSG_RECIPIENT_EXISTS = "recipient '{rid}' is registered already; remove it first to change it"

# Reason codes a denial or an extension may carry, in words for the subject.
REASON_TEXT: dict[str, str] = {
    "manifestly_unfounded": "the request is manifestly unfounded (Art. 12(5))",
    "manifestly_excessive": "the request is manifestly excessive (Art. 12(5))",
    "identity_not_verified": "we could not verify your identity (Art. 12(6))",
    "art17_3_b": "the data must be kept to comply with a legal obligation (Art. 17(3)(b))",
    "art17_3_e": "the data is needed for legal claims (Art. 17(3)(e))",
    "complex_request": "the request is complex",
    "number_of_requests": "we received a large number of requests",
    "no_legal_basis": "no legal basis remains for processing your data",
    "retention_expired": "the retention period of your data ended",
}

# What a request's outcome did to the subject's biometric template (its ``gallery`` code, from
# a rectification or the lift of a restriction: visage_ml.rights.rectify), and the same in
# words for the subject's completion message.
REENROLLED = "reenrolled"
REMOVED_WHILE_RESTRICTED = "template_removed_while_restricted"
REMOVED_NO_BASIS = "template_removed_no_legal_basis"
REMOVED_UNTIL_REENROLMENT = "template_removed_until_reenrolment"
REMOVED_NO_FACE = "template_removed_no_face"
REENROLMENT_NEEDED = "reenrolment_needed"
GALLERY_TEXT: dict[str, str] = {
    REENROLLED: "Your biometric template was made again from your corrected photograph(s).",
    REMOVED_WHILE_RESTRICTED: (
        "Your corrected photograph(s) are stored. Because processing of your data is "
        "restricted (Art. 18), the biometric template made from the old photograph(s) was "
        "deleted and no new template is made while the restriction lasts. When the "
        "restriction is lifted (we tell you before, Art. 18(3)), your template is made again "
        "from the corrected photograph(s)."
    ),
    REMOVED_NO_BASIS: (
        "The biometric template made from your old photograph(s) was deleted; no new one is "
        "made, as no legal basis covers identifying you."
    ),
    REMOVED_UNTIL_REENROLMENT: (
        "The biometric template made from your old photograph(s) was deleted; a new one is "
        "made from the corrected photograph(s) when our gallery is next rebuilt."
    ),
    REMOVED_NO_FACE: (
        "The biometric template made from your old photograph(s) was deleted; no face could "
        "be found in the corrected photograph(s), so you are not identified until you are "
        "enrolled again."
    ),
    REENROLMENT_NEEDED: (
        "Your biometric template, deleted when your photograph(s) were corrected during the "
        "restriction, could not be made again: you are not identified until you are enrolled "
        "again."
    ),
}

# What a verified request found already so when it was run (its outcome's key, from
# visage_ml.rights.runner): it is completed with that, nothing changed, rather than left open
# while its deadline runs or denied (which would tell the subject an honoured right was
# refused); the words for the subject's completion message. Nothing changed: no Art. 19 notice.
ALREADY_OBJECTED = "already_objected"
ALREADY_RESTRICTED = "already_restricted"
NOT_RESTRICTED = "not_restricted"
UNCHANGED_TEXT: dict[str, str] = {
    ALREADY_OBJECTED: (
        "You had already objected to the processing of your data for {value}; that objection "
        "is recorded and stands, so nothing needed to change."
    ),
    ALREADY_RESTRICTED: (
        "Processing of your data was already restricted when we acted on your request; that "
        "restriction is recorded and stands, so nothing needed to change."
    ),
    NOT_RESTRICTED: (
        "Processing of your data was not restricted when we acted on your request: there was "
        "no restriction to lift, and nothing changed."
    ),
}


def unchanged_text(outcome: Mapping[str, Any]) -> str:
    """The subject's words for what a request found already so (:data:`UNCHANGED_TEXT`), one
    line each; empty when it changed something."""
    out = []
    for code, text in UNCHANGED_TEXT.items():
        value = outcome.get(code)
        if value:
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            out.append(text.format(value=shown) + "\n")
    return "".join(out)


SUBJECTS: dict[str, str] = {
    "receipt": "We received your {right} request ({rid})",
    "extension": "Your {right} request ({rid}): more time needed",
    "completion": "Your {right} request ({rid}) is completed",
    "denial": "Your {right} request ({rid}) is refused",
    "art19": "Art. 19 notice: {right} of data subject {pid}",
    "lift_notice": "The restriction of processing of your data is being lifted ({rid})",
}
BODIES: dict[str, str] = {
    "receipt": (
        "We received your {right} request ({article}) on {received}. Its reference is {rid}.\n"
        "We will answer by {deadline} at the latest (Art. 12(3)).\n\n{signature}"
    ),
    "extension": (
        "We need more time to answer your {right} request {rid}. The deadline is extended to "
        "{deadline} (Art. 12(3)).\nReasons: {reasons}.\n\n{signature}"
    ),
    "completion": (
        "Your {right} request {rid} ({article}) was completed on {completed}.\n{done}The signed "
        "receipt of what was done has SHA-256 {receipt}; ask us for a copy.\n\n{signature}"
    ),
    "denial": (
        "We do not act on your {right} request {rid} ({article}).\nReason: {reasons}.\n"
        "{complaint} Supervisory authority: {authority}. You may also seek a judicial remedy "
        "(Art. 79).\n\n{signature}"
    ),
    "lift_notice": (
        "Under Art. 18(3) GDPR we inform you, before it happens, that the restriction of "
        "processing of your data is being lifted (request {rid}): your data will be processed "
        "again for the purposes you consented to or we have a legal basis for. You may object "
        "(Art. 21) or withdraw your consent at any time.\n\n{signature}"
    ),
    "art19": (
        "Under Art. 19 GDPR we inform you, as a recipient of personal data from us, that the "
        "data of data subject {pid} was subject to {right} ({article}) on {completed} "
        "(request {rid}). Please apply the same to any copy you hold and confirm to "
        "{dpo}.\n\n{signature}"
    ),
}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def channel_of(address: str | None) -> str:
    """``webhook`` for an http(s) URL, ``smtp`` for an e-mail address, else ``none``."""
    if not address:
        return NONE
    if address.startswith(("http://", "https://")):
        return WEBHOOK
    return SMTP if EMAIL_RE.fullmatch(address) else NONE


@dataclass(frozen=True)
class _SubjectMessages:
    """The last message queued to the data subject about each request, and its state."""

    last: Mapping[str, str]  # request id -> message id
    states: Mapping[str, str]  # message id (the last of its request) -> SUBJECT_MESSAGE_STATES


_NOTIFICATION_LINES = (
    b'"notification.queued"',
    b'"notification.sent"',
    b'"notification.failed"',
    b'"notification.revived"',
)


def _subject_messages_fold(held: _SubjectMessages, chunk: bytes, offset: int) -> _SubjectMessages:
    """What the ledger says of each request's last message to the subject: queued (with an
    address or without), a failed try (retried, or given up), revived, delivered."""
    last: dict[str, str] | None = None
    states: dict[str, str] | None = None
    for a, b in line_spans(chunk, _NOTIFICATION_LINES):
        entry = orjson.loads(chunk[a:b])
        type_, payload = entry.get("type"), entry.get("payload") or {}
        mid = payload.get("message_id")
        if not isinstance(mid, str):
            continue
        if last is None or states is None:
            last, states = dict(held.last), dict(held.states)
        if type_ == "notification.queued":
            rid = payload.get("request_id")
            if payload.get("audience") != "data_subject" or not isinstance(rid, str):
                continue
            states.pop(last.get(rid, ""), None)  # an earlier message of the request
            last[rid] = mid
            states[mid] = NO_ADDRESS if payload.get("state") == NO_ADDRESS else QUEUED
        elif mid not in states:
            continue  # a recipient's message, or an earlier one of its request
        elif type_ == "notification.sent":
            states[mid] = DELIVERED
        elif type_ == "notification.failed":
            states[mid] = FAILED if payload.get("state") == DEAD else RETRYING
        elif type_ == "notification.revived":
            states[mid] = QUEUED
    if last is None or states is None:
        return held
    return _SubjectMessages(MappingProxyType(last), MappingProxyType(states))


_SUBJECT_MESSAGES: LedgerFold[_SubjectMessages] = LedgerFold(
    _subject_messages_fold, _SubjectMessages(MappingProxyType({}), MappingProxyType({}))
)


@dataclass
class Message:
    """One message of the outbox (its file holds the address and body until delivered)."""

    id: str
    kind: str
    audience: str
    channel: str
    address: str
    subject: str
    body: str
    pid: str | None
    request_id: str | None
    created: str
    recipient_id: str | None = None
    attempts: int = 0
    next_attempt: str = ""
    state: str = PENDING
    last_error: str | None = None
    # Creation order within the outbox (wall-clock nanoseconds): messages go out in order.
    order: int = 0
    # Random, kept in the message file only (and sent with it): the ledger's hash of the message
    # then confirms no guessed address once the file is gone. Empty in messages of older versions.
    salt: str = ""

    @property
    def sha256(self) -> str:
        """SHA-256 of what is sent: id, channel, address, subject and body (and the salt)."""
        content = {
            "id": self.id,
            "channel": self.channel,
            "address": self.address,
            "subject": self.subject,
            "body": self.body,
        }
        if self.salt:
            content["salt"] = self.salt
        return sha256_bytes(canonical_json(content))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def wire(self) -> dict[str, Any]:
        """The JSON a webhook receives."""
        return {
            "message_id": self.id,
            "kind": self.kind,
            "pid": self.pid,
            "request_id": self.request_id,
            "subject": self.subject,
            "body": self.body,
            "salt": self.salt,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Recipient:
    """A registered recipient of personal data (Art. 19): told of rectification, erasure,
    restriction."""

    id: str
    name: str
    address: str
    channel: str
    added: str = ""


class Recipients:
    """The Art. 19 register, ``privacy/recipients.json`` (0600); changes are ledger events."""

    def __init__(self, core: PrivacyCore) -> None:
        self.core = core
        self.path = core.paths.privacy / RECIPIENTS_FILE

    def all(self) -> list[Recipient]:
        if not self.path.exists():
            return []
        raw = orjson.loads(self.path.read_bytes())
        return [Recipient(**r) for r in raw.get("recipients", [])]

    def _write(self, items: list[Recipient]) -> None:
        doc = {"recipients": [asdict(r) for r in sorted(items, key=lambda r: r.id)]}
        atomic_write_bytes(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2), mode=0o600)

    def add(self, rid: str, *, name: str, address: str) -> Recipient:
        """Register a recipient (``address``: an e-mail address or a webhook URL)."""
        if not RECIPIENT_ID_RE.fullmatch(rid or ""):
            raise ValueError(MSG_RECIPIENT_ID)
        channel = channel_of(address)
        if channel == NONE:
            raise ValueError(MSG_ADDRESS.format(address=address[:60]))
        with file_lock(self.path.with_name(".recipients.lock")):
            items = self.all()
            if any(r.id == rid for r in items):
                raise ValueError(MSG_RECIPIENT_EXISTS.format(rid=rid))
            rec = Recipient(rid, name, address, channel, _iso(_now()))
            self._write([*items, rec])
        self.core.ledger.append(
            "recipient.registered",
            None,
            {
                "recipient_id": rid,
                "channel": channel,
                "address_sha256": sha256_bytes(address.encode()),
            },
        )
        return rec

    def remove(self, rid: str) -> Recipient:
        """Remove a recipient from the register."""
        with file_lock(self.path.with_name(".recipients.lock")):
            items = self.all()
            found = [r for r in items if r.id == rid]
            if not found:
                raise KeyError(MSG_NO_RECIPIENT.format(rid=rid))
            self._write([r for r in items if r.id != rid])
        self.core.ledger.append("recipient.removed", None, {"recipient_id": rid})
        return found[0]


class Outbox:
    """The project's outbox (``privacy/outbox``); see the module docstring."""

    def __init__(self, core: PrivacyCore) -> None:
        self.core = core
        self.paths = core.paths
        self.directory = self.paths.privacy / OUTBOX_DIR

    # -- files ---------------------------------------------------------------------------------
    def _dir(self) -> Path:
        private_dir(self.directory)
        return self.directory

    def _path(self, message_id: str) -> Path:
        if not MESSAGE_ID_RE.fullmatch(message_id):
            raise ValueError(f"'{message_id[:30]}' is not a message id")
        return self.directory / f"{message_id}.json"

    def _reply_path(self, request_id: str) -> Path:
        return self.directory / "requests" / f"{request_id}.json"

    def save(self, msg: Message) -> None:
        """Write ``msg``'s file atomically (mode 0600)."""
        self._dir()
        atomic_write_bytes(self._path(msg.id), orjson.dumps(msg.to_dict()), mode=0o600)

    def load(self, message_id: str) -> Message:
        return Message(**orjson.loads(self._path(message_id).read_bytes()))

    def messages(self) -> list[Message]:
        """Every message still in the outbox (pending or dead), oldest first."""
        if not self.directory.is_dir():
            return []
        out = []
        for f in sorted(self.directory.glob("m*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                out.append(Message(**orjson.loads(f.read_bytes())))
        return sorted(out, key=lambda m: (m.order, m.created, m.id))

    def due(self, now: datetime | None = None) -> list[Message]:
        """Pending messages whose next attempt is due."""
        t = _iso(now or _now())
        return [m for m in self.messages() if m.state == PENDING and m.next_attempt <= t]

    # -- composing -----------------------------------------------------------------------------
    def _contact(self, pid: str) -> str | None:
        if not wrapped_keys_exist(self.paths):
            return None
        try:
            return (self.core.vault.get(pid) or {}).get("contact")
        except (KeyError, KeyDestroyedError, VaultError):  # none, or erased: no address left
            return None

    def _reply_address(self, st: Any, kind: str) -> str | None:
        """The subject's address for a message about request ``st``."""
        path = self._reply_path(st.request_id)
        if path.exists():
            return str(orjson.loads(path.read_bytes()).get("address") or "") or None
        address = self._contact(st.pid)
        if address and kind not in CLOSING:
            self._dir()
            private_dir(path.parent)
            atomic_write_bytes(path, orjson.dumps({"address": address}), mode=0o600)
        return address

    def _values(self, st: Any, **extra: Any) -> dict[str, Any]:
        records = records_of(self.paths)
        reasons = [REASON_TEXT.get(r, r.replace("_", " ")) for r in st.extension_reasons]
        if st.denied_reason:
            reasons = [REASON_TEXT.get(st.denied_reason, st.denied_reason.replace("_", " "))]
        return {
            "right": st.right,
            "article": st.article,
            "rid": st.request_id,
            "pid": st.pid,
            "received": st.received_at,
            "deadline": st.deadline,
            "completed": st.completed_at or "",
            "reasons": "; ".join(reasons) or "-",
            "complaint": COMPLAINT_TEXT,
            "authority": f"{records.supervisory_authority.name} "
            f"({records.supervisory_authority.contact})",
            "dpo": records.dpo.contact,
            "signature": f"{records.controller.name}\nData protection officer: "
            f"{records.dpo.contact}",
            "receipt": extra.get("receipt_sha256") or "-",
            "done": "".join(
                GALLERY_TEXT[code] + "\n"
                for code in (st.outcome.get("gallery"),)
                if code in GALLERY_TEXT
            )
            + unchanged_text(st.outcome),
        }

    def enqueue(
        self,
        *,
        kind: str,
        audience: str,
        address: str | None,
        subject: str,
        body: str,
        pid: str | None,
        request_id: str | None,
        recipient_id: str | None = None,
    ) -> Message | None:
        """Put one message in the outbox and record ``notification.queued``.

        A message without a deliverable address is not written; the ledger records it as
        queued on channel ``none`` with state ``no_address``. Returns the message (None then).
        """
        channel = channel_of(address)
        msg = Message(
            id="m" + os.urandom(8).hex(),
            kind=kind,
            audience=audience,
            channel=channel,
            address=address or "",
            subject=subject,
            body=body,
            pid=pid,
            request_id=request_id,
            created=self.core.ledger.clock(),
            recipient_id=recipient_id,
            order=time.time_ns(),
            salt=os.urandom(16).hex(),
        )
        payload = {
            "message_id": msg.id,
            "kind": kind,
            "audience": audience,
            "channel": channel,
            "sha256": msg.sha256,
            "request_id": request_id,
            "recipient_id": recipient_id,
            "state": PENDING if channel != NONE else NO_ADDRESS,
        }
        if channel == NONE:
            self.core.ledger.append("notification.queued", pid, payload)
            return None
        self.save(msg)  # durable before it is recorded: a crash leaves a message to deliver
        self.core.ledger.append("notification.queued", pid, payload)
        return msg

    def for_request(
        self, st: Any, kind: str, *, receipt_sha256: str | None = None
    ) -> Message | None:
        """Queue the subject's ``kind`` message about request ``st``."""
        values = self._values(st, receipt_sha256=receipt_sha256)
        return self.enqueue(
            kind=kind,
            audience="data_subject",
            address=self._reply_address(st, kind),
            subject=SUBJECTS[kind].format(**values),
            body=BODIES[kind].format(**values),
            pid=st.pid,
            request_id=st.request_id,
        )

    def art19(self, st: Any) -> list[Message]:
        """Queue an Art. 19 notice to every registered recipient (rectification, erasure,
        restriction requests only; none for a request that found nothing to change)."""
        if st.right not in ART19_RIGHTS or unchanged_text(st.outcome):
            return []
        values = self._values(st)
        if st.right == "restriction" and (st.details or {}).get("action") == "lift":
            # Recipients are to lift it on their copies too, not to restrict them.
            values["right"] = "the lifting of a restriction of processing"
        out = []
        for r in Recipients(self.core).all():
            msg = self.enqueue(
                kind="art19",
                audience="recipient",
                address=r.address,
                subject=SUBJECTS["art19"].format(**values),
                body=BODIES["art19"].format(**values),
                pid=st.pid,
                request_id=st.request_id,
                recipient_id=r.id,
            )
            if msg is not None:
                out.append(msg)
        return out

    # -- delivery bookkeeping ------------------------------------------------------------------
    def delivered(self, msg: Message, *, attempts: int) -> None:
        """Record delivery (``notification.sent``) and remove the message's file (and, after a
        closing message, the request's kept address)."""
        self.core.ledger.append(
            "notification.sent",
            msg.pid,
            {
                "message_id": msg.id,
                "kind": msg.kind,
                "channel": msg.channel,
                "sha256": msg.sha256,
                "attempts": attempts,
                "state": DELIVERED,
                "request_id": msg.request_id,
                "recipient_id": msg.recipient_id,
            },
        )
        # Overwritten, not only unlinked: the file held the address and the salt.
        secure_unlink(self._path(msg.id))
        if msg.kind in CLOSING and msg.request_id:
            secure_unlink(self._reply_path(msg.request_id))

    def failed(
        self,
        msg: Message,
        *,
        error: str,
        now: datetime,
        max_attempts: int,
        backoff_seconds: float,
    ) -> Message:
        """Record a failed attempt; the message waits ``backoff * 2**(attempts-1)`` or, after
        ``max_attempts``, is ``dead`` (kept for `visage privacy notify --retry-dead`)."""
        msg.attempts += 1
        msg.last_error = error
        if msg.attempts >= max_attempts:
            msg.state = DEAD
        else:
            wait = backoff_seconds * 2 ** (msg.attempts - 1)
            msg.next_attempt = _iso(now + timedelta(seconds=wait))
        self.save(msg)
        self.core.ledger.append(
            "notification.failed",
            msg.pid,
            {
                "message_id": msg.id,
                "sha256": msg.sha256,
                "attempts": msg.attempts,
                "state": "dead" if msg.state == DEAD else "retrying",
                "error": error,
            },
        )
        return msg

    def subject_message(self, request_id: str) -> str | None:
        """Where the last message queued to the subject about request ``request_id`` stands,
        one of :data:`SUBJECT_MESSAGE_STATES` (``no_address``: the subject has no contact in
        the vault and was not told), or None when none was queued. Read from the ledger's
        ``notification.*`` entries (what delivery recorded, not what was hoped), by a fold
        carried on from where the process's last call stopped (every request's answer asks:
        reading a 150k-entry ledger each time cost 0.25 s)."""
        held = _SUBJECT_MESSAGES(self.core.ledger.path)
        mid = held.last.get(request_id)
        return held.states.get(mid) if mid is not None else None

    def discard(self, message_id: str, *, only_dead: bool = False) -> Message | None:
        """Remove a message's file without delivering it (and, for a closing message, the
        request's kept address, which nothing else will send to); returns it, or None when it
        is gone already (or, with ``only_dead``, is no longer dead). The caller records why
        (retention: ``visage privacy enforce``)."""
        try:
            msg = self.load(message_id)
        except FileNotFoundError:
            return None
        if only_dead and msg.state != DEAD:
            return None
        # Overwritten, not only unlinked: the file held the address and the salt.
        secure_unlink(self._path(msg.id))
        if msg.kind in CLOSING and msg.request_id:
            secure_unlink(self._reply_path(msg.request_id))
        return msg

    def revive(self, ids: Iterable[str] | None = None) -> int:
        """Make dead messages (all, or ``ids``) pending again, each recorded as
        ``notification.revived``; returns how many."""
        n = 0
        wanted = set(ids) if ids is not None else None
        for m in self.messages():
            if m.state == DEAD and (wanted is None or m.id in wanted):
                m.state, m.attempts, m.next_attempt = PENDING, 0, ""
                self.save(m)  # saved before it is recorded, as a queued message is
                self.core.ledger.append(
                    "notification.revived",
                    m.pid,
                    {
                        "message_id": m.id,
                        "sha256": m.sha256,
                        "request_id": m.request_id,
                        "state": PENDING,
                    },
                )
                n += 1
        return n
