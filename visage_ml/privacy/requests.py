"""Data-subject requests: one lifecycle for every right, folded from the signed ledger.

A request (access, portability, rectification, erasure, restriction, objection) has an id, a
subject (pid), a received time and a deadline: one calendar month from receipt
(``privacy.deadline_months``; the same day of the next month, or its last day when it has no
such day), extendable before it passes by up to two further months with a reason
(``privacy.max_extension_months``, Art. 12(3)). The received time is the one the request
reached the controller at, even before its subject was added to the registry (the request then
says so: ``received_before_registration``, ``subject_added_at``); only a time in the future or
before the GDPR applied (25 May 2018) is refused. Its lifecycle is::

    received -> verified -> in_progress -> completed
        \\-----------\\-------------\\--------> denied (with a reason code)

Each transition is one signed ledger event (``request.received``, ``request.verified``,
``request.in_progress``, ``request.extended``, ``request.completed``, ``request.denied``); the
state of every request is a fold over those events, exactly like the subject registry, so
there is no second, mutable database to keep in step with the ledger. Completion writes a
receipt signed with the ledger key (``privacy/requests/<id>.receipt.json``) whose SHA-256 the
``request.completed`` event carries. Each transition the subject must hear of (receipt,
extension with its reasons, completion, denial with its reasons and the right to complain) and
each Art. 19 notice to a registered recipient is put in the outbox
(:mod:`visage_ml.privacy.outbox`), from which ``visage privacy notify`` delivers it.

An action that fails once its request is in progress (a store or the audit log fails under it),
or verified and about to start (an erasure's preflight finds a store out of reach), records
``request.failed`` with a step and an error code: the request stays as it was (the subject is
still owed an answer, and its deadline runs), and ``visage privacy requests`` /
``request show`` say what failed and how to answer it (:func:`failure_hint`): run the action
again with the request id, or deny it.

Erasure progress (``erasure.step`` events with the request id) is folded here too, which is
what makes an interrupted erasure resumable: :class:`RequestState.steps` says which steps were
planned (with the content hashes taken before deletion) and which finished.

Payloads hold codes, pids and hashes only: no names, values or free text.
"""

from __future__ import annotations

import calendar
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from visage_ml.config import PrivacyParams, ProjectPaths, load_params
from visage_ml.io import atomic_write_text, sha256_bytes
from visage_ml.privacy.certificate import render, sign
from visage_ml.privacy.clock import Now, decide, given, ledger_times
from visage_ml.privacy.core import ALREADY_ERASED, PrivacyCore
from visage_ml.privacy.keys import check_pid
from visage_ml.privacy.ledger import LedgerFold, line_spans, read_appended
from visage_ml.privacy.outbox import Outbox

log = logging.getLogger(__name__)

RIGHTS: dict[str, str] = {
    "access": "Art. 15",
    "portability": "Art. 20",
    "rectification": "Art. 16",
    "erasure": "Art. 17",
    "restriction": "Art. 18",
    "objection": "Art. 21",
}
RECEIVED, VERIFIED, IN_PROGRESS, COMPLETED, DENIED = (
    "received",
    "verified",
    "in_progress",
    "completed",
    "denied",
)
OPEN_STATUSES: frozenset[str] = frozenset({RECEIVED, VERIFIED, IN_PROGRESS})
# Allowed next statuses; "denied" is reachable from every open status.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    RECEIVED: frozenset({VERIFIED, DENIED}),
    VERIFIED: frozenset({IN_PROGRESS, DENIED}),
    IN_PROGRESS: frozenset({COMPLETED, DENIED}),
    COMPLETED: frozenset(),
    DENIED: frozenset(),
}
EVENT_STATUS: Mapping[str, str] = {
    "request.verified": VERIFIED,
    "request.in_progress": IN_PROGRESS,
    "request.completed": COMPLETED,
    "request.denied": DENIED,
}
REQUEST_ID_RE = re.compile(r"^r\d{8}-[0-9a-f]{8}$")
CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
RECEIPT_FORMAT = "visage-request-receipt/1"
DAY = timedelta(days=1)
# The first instant at which it was 25 May 2018 anywhere (UTC+14): the rights of Arts. 15-21
# apply from that day (Art. 99(2)), so no request of theirs arrived before it, in any time
# zone a DPO may have written its date in. The only receipt times refused besides the future.
GDPR_APPLIES = datetime(2018, 5, 25, tzinfo=timezone(timedelta(hours=14)))

MSG_UNKNOWN_REQUEST = (
    "no request {rid}; list open requests with `visage privacy requests` (all with --all)"
)
MSG_BAD_RIGHT = "unknown right '{right}'; rights are: " + ", ".join(RIGHTS)
MSG_SUBJECT_ERASED = (
    "subject {pid} was erased (erasure request {rid}; its certificate is "
    "privacy/certificates/{rid}.json, checked with `visage privacy verify-certificate` and "
    "served to auditors at GET /v1/certificates/{rid}): nothing about them can be recorded or "
    "changed any more"
)
MSG_TRANSITION = "request {rid} is {status}; it cannot become {target} (allowed next: {allowed})"
MSG_CODE = (
    "{what} must be a short code of lowercase letters, digits and '_' (the ledger keeps it for "
    "ever, so no free text), e.g. 'manifestly_unfounded'"
)
MSG_EXTENSION = (
    "request {rid} may be extended to {limit} at most (privacy.max_extension_months = {max}, "
    "Art. 12(3): two further months after the first); ask for less"
)
MSG_EXTEND_OVERDUE = (
    "request {rid} passed its deadline {deadline}: Art. 12(3) allows an extension only within "
    "the first month; answer the request now (or deny it with a reason)"
)
MSG_EXTEND_HOW = "give the extension in months or in days (one of them, at least 1)"
MSG_BAD_TIME = (
    "'{text}' is not an ISO 8601 time between years 1 and 9999 (e.g. 2026-11-26T09:30:00Z)"
)
MSG_FUTURE = "received time {text} is in the future; give the time the request arrived"
MSG_BEFORE_GDPR = (
    "received time {text} is before 25 May 2018, when the GDPR began to apply (Art. 99(2)): "
    "no request under it can have arrived then; give the time the request arrived"
)
MSG_FAILED = (
    "the last attempt failed at {time} ({step}: {code}); {action}, then run it again with "
    "--request {rid} (HTTP: request_id={rid}), or deny it with a reason code "
    "(`visage privacy request deny {rid} --reason CODE`)"
)
# What to do about a recorded failure, by its code; other codes: the error the action printed.
FAILURE_ACTIONS: Mapping[str, str] = {
    "audit_log_unverified": "restore privacy/audit.jsonl from a backup (check it with "
    "`visage privacy audit verify`)",
    "image_unreadable": "make the stored photograph the error named (the server's log names "
    "it) readable: its permissions and owner, the storage it is on; or restore it with `dvc "
    "checkout data/raw`",
    "raw_data_missing": "check out the raw data as the error said: `dvc checkout data/raw`, "
    "or first `dvc fetch data/raw` where the DVC cache lacks a file of it (a checkout then "
    "takes the whole of data/raw out of the workspace)",
    # An erasure's stops (nothing certified): the error said which store and what to do.
    "stores_unreachable": "make the store the error named reachable (`visage stack up` for the "
    "project's stack services; the server's log has the message)",
    "scan_incomplete": "end what stopped the content scan, as the error said (a read or a "
    "process that hung or was killed; the server's log has the message)",
    "gallery_table_held": "end the database session that holds the gallery table's old copy "
    "(the error named its backend; the server's log has the message)",
}
FAILURE_ACTION_DEFAULT = "fix what the failed command reported (also in the server's log)"


class UnknownRequestError(KeyError):
    """No request with this id in the ledger."""

    def __str__(self) -> str:
        return MSG_UNKNOWN_REQUEST.format(rid=self.args[0])


class RequestStateError(ValueError):
    """The request's status does not allow the asked transition."""


class RequestRefusedError(ValueError):
    """What a request says, or its subject's state, does not allow it to be recorded or
    changed: the subject was erased (:class:`SubjectErasedError`), a receipt time cannot be
    true, an extension is not given in months or days or goes past the limit, a right or code is
    not one. Nothing is recorded; the message says why (the HTTP API answers 409
    ``not_allowed``)."""


class SubjectErasedError(RequestRefusedError):
    """The subject was erased: nothing about them can be recorded any more. The message names
    their erasure's request and certificate where the ledger has it (the HTTP API answers 409
    ``subject_erased``, to a DPO: an operator's routes do not tell)."""


def check_code(value: str, what: str) -> str:
    """Return ``value`` if it is a ledger-safe code (``[a-z0-9_]{1,64}``), else raise
    :class:`RequestRefusedError`."""
    if not isinstance(value, str) or not CODE_RE.fullmatch(value):
        raise RequestRefusedError(MSG_CODE.format(what=what))
    return value


def check_right(right: str) -> str:
    """Return ``right`` if it is one of :data:`RIGHTS`, else raise
    :class:`RequestRefusedError`."""
    if right not in RIGHTS:
        raise RequestRefusedError(MSG_BAD_RIGHT.format(right=right))
    return right


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (a naive time is taken as UTC)."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        # A time near year 1 or 9999 can leave the datetime range once converted to UTC.
        return t.astimezone(UTC)
    except (ValueError, AttributeError, OverflowError):
        raise ValueError(MSG_BAD_TIME.format(text=str(text)[:40])) from None


def format_time(t: datetime) -> str:
    """The ledger's time format: UTC, milliseconds, ``Z``."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add_months(t: datetime, months: int) -> datetime:
    """``t`` plus calendar months: the same day and time, or the month's last day when it has
    no such day (31 January + 1 month = 28/29 February), as periods are counted in Union law
    (Regulation 1182/71, Art. 3(2)(c))."""
    index = t.month - 1 + months
    year, month = t.year + index // 12, index % 12 + 1
    last = calendar.monthrange(year, month)[1]
    return t.replace(year=year, month=month, day=min(t.day, last))


def new_request_id(received: datetime) -> str:
    """``r<YYYYMMDD>-<8 hex>``: sortable by receipt day, unguessable."""
    day = received.astimezone(UTC)
    # The year is zero-padded by hand: strftime's %Y drops leading zeros before year 1000.
    return f"r{day.year:04d}{day.month:02d}{day.day:02d}-{os.urandom(4).hex()}"


@dataclass
class StepRecord:
    """Progress of one erasure step as the ledger records it."""

    name: str
    planned: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    artefacts: list[dict[str, Any]] = field(default_factory=list)
    seq: int = -1


@dataclass
class RequestState:
    """One request as folded from the ledger."""

    request_id: str
    pid: str
    right: str
    received_at: str
    deadline: str
    received_seq: int
    status: str = RECEIVED
    details: dict[str, Any] = field(default_factory=dict)
    extended_days: int = 0
    extended_months: int = 0
    first_deadline: str = ""
    extension_reasons: list[str] = field(default_factory=list)
    verification: str | None = None
    denied_reason: str | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    receipt_sha256: str | None = None
    completed_at: str | None = None
    received_before_registration: bool = False
    subject_added_at: str | None = None
    failure: dict[str, Any] | None = None
    history: list[tuple[int, str, str]] = field(default_factory=list)
    steps: dict[str, StepRecord] = field(default_factory=dict)
    erasure_completed_seq: int | None = None
    models_retrained_seq: int | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def article(self) -> str:
        return RIGHTS.get(self.right, "")

    def days_left(self, now: datetime | None = None) -> int:
        """Whole days until the deadline (negative when overdue); rounded up."""
        now = now or datetime.now(UTC)
        seconds = (parse_time(self.deadline) - now).total_seconds()
        return math.ceil(seconds / 86400.0)

    def overdue(self, now: datetime | None = None) -> bool:
        """Open and past its deadline."""
        now = now or datetime.now(UTC)
        return self.is_open and now > parse_time(self.deadline)

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "pid": self.pid,
            "right": self.right,
            "article": self.article,
            "status": self.status,
            "received_at": self.received_at,
            "received_before_registration": self.received_before_registration,
            "subject_added_at": self.subject_added_at,
            "deadline": self.deadline,
            "days_left": self.days_left(now) if self.is_open else None,
            "overdue": self.overdue(now),
            "extended_days": self.extended_days,
            "extended_months": self.extended_months,
            "extension_reasons": list(self.extension_reasons),
            "verification": self.verification,
            "denied_reason": self.denied_reason,
            "completed_at": self.completed_at,
            "receipt_sha256": self.receipt_sha256,
            "failure": dict(self.failure) if self.failure else None,
            "details": dict(self.details),
            "outcome": dict(self.outcome),
            "steps_done": [s.name for s in self.steps.values() if s.done],
            "history": [{"seq": s, "event": t, "time": tm} for s, t, tm in self.history],
        }


def _apply(states: dict[str, RequestState], obj: Mapping[str, Any]) -> None:
    """Fold one ledger entry (as a mapping) into ``states``; other events are ignored."""
    type_ = obj["type"]
    if not (type_.startswith("request.") or type_.startswith("erasure.")):
        return
    payload = obj.get("payload") or {}
    rid = payload.get("request_id")
    if not isinstance(rid, str):
        return
    seq, time = obj["seq"], obj["time"]
    if type_ == "request.received":
        states[rid] = RequestState(
            request_id=rid,
            pid=obj["pid"],
            right=payload.get("right", ""),
            received_at=payload.get("received_at", time),
            deadline=payload.get("deadline", time),
            first_deadline=payload.get("deadline", time),
            received_seq=seq,
            details=dict(payload.get("details") or {}),
            received_before_registration=payload.get("received_before_registration") is True,
            subject_added_at=payload.get("subject_added_at"),
            history=[(seq, type_, time)],
        )
        return
    st = states.get(rid)
    if st is None:
        return
    st.history.append((seq, type_, time))
    if type_ in EVENT_STATUS:
        st.status = EVENT_STATUS[type_]
    if type_ == "request.verified":
        st.verification = payload.get("method")
    elif type_ == "request.extended":
        st.extended_days += int(payload.get("days", 0))
        st.extended_months += int(payload.get("months", 0))
        st.deadline = payload.get("deadline", st.deadline)
        st.extension_reasons.append(payload.get("reason_code", ""))
    elif type_ == "request.denied":
        st.denied_reason = payload.get("reason_code")
        st.completed_at = time
    elif type_ == "request.failed":
        st.failure = {
            "step": payload.get("step", ""),
            "code": payload.get("code", ""),
            "seq": seq,
            "time": time,
        }
    elif type_ == "request.completed":
        st.receipt_sha256 = payload.get("receipt_sha256")
        st.outcome = dict(payload.get("outcome") or {})
        st.completed_at = time
    elif type_ == "erasure.step":
        name = payload.get("step", "")
        rec = st.steps.setdefault(name, StepRecord(name))
        if payload.get("phase") == "planned":
            rec.planned = list(payload.get("artefacts") or [])
            rec.info.update(payload.get("info") or {})
        else:
            rec.done = True
            rec.artefacts = list(payload.get("artefacts") or [])
            rec.info.update(payload.get("info") or {})
        rec.seq = seq
    elif type_ == "erasure.completed":
        st.erasure_completed_seq = seq
    elif type_ == "erasure.models_retrained":
        st.models_retrained_seq = seq


def failure_hint(st: RequestState) -> str | None:
    """What the last recorded failure of an open request was, and what the DPO does next."""
    if not st.is_open or not st.failure:
        return None
    f = st.failure
    action = FAILURE_ACTIONS.get(f["code"], FAILURE_ACTION_DEFAULT)
    return MSG_FAILED.format(
        time=f["time"], step=f["step"], code=f["code"], action=action, rid=st.request_id
    )


def fold_requests(entries: Iterable[Mapping[str, Any]]) -> dict[str, RequestState]:
    """Fold ledger entries (mappings with seq, time, type, pid, payload) into request states."""
    states: dict[str, RequestState] = {}
    for obj in entries:
        _apply(states, obj)
    return states


def _request_lines(data: bytes) -> bytes:
    """The lines of ``data`` (complete ledger lines) that name a request, each ending in a
    newline. Only request.* and erasure.* events do: jump from one such line to the next and
    leave the rest (nearly all of a large ledger) unparsed."""
    return b"".join(data[a : b + 1] for a, b in line_spans(data, (b'"request_id"',)))


def _fold_request_lines(state: tuple[bytes, int], chunk: bytes, offset: int) -> tuple[bytes, int]:
    return state[0] + _request_lines(chunk), offset + len(chunk)


# Per ledger, in this process: its lines naming a request and where they were read up to. Every
# HTTP call about a request opens a new book: read from the start each time, a 150k-entry ledger
# cost 0.15 s a call.
_REQUEST_LINES: LedgerFold[tuple[bytes, int]] = LedgerFold(_fold_request_lines, (b"", 0))


class RequestBook:
    """The requests of a project: an incrementally folded view of the ledger, plus transitions.

    Parameters
    ----------
    core
        The project's privacy core (its ledger is read and appended to).
    params
        The ``privacy`` section (read from ``params.yaml`` when None).
    now
        Clock returning an aware UTC datetime, taken as it is (tests pass a fixed one); by
        default the ledger's clock, never before the ledger's newest entry or the time the HTTP
        witnesses cosigned the latest checkpoint at (:meth:`clock`).
    """

    def __init__(
        self,
        core: PrivacyCore,
        *,
        params: PrivacyParams | None = None,
        now: Any = None,
    ) -> None:
        self.core = core
        self.paths: ProjectPaths = core.paths
        self._params = params
        # By default the ledger's clock: requests and the entries recording them agree, unless
        # the host's clock was set back (see clock()).
        self._given = now is not None
        self._now = now or (lambda: parse_time(core.ledger.clock()))
        self._states: dict[str, RequestState] = {}
        self._offset = 0
        self.outbox = Outbox(core)

    @property
    def params(self) -> PrivacyParams:
        if self._params is None:
            self._params = (
                load_params(self.paths.params).privacy
                if self.paths.params.exists()
                else PrivacyParams()
            )
        return self._params

    def now(self) -> datetime:
        """The time receipts are dated and deadlines judged at (:meth:`clock`)."""
        return self.clock().time

    def clock(self) -> Now:
        """The time now, and where it came from: as given; else the ledger's clock, but never
        before the ledger's newest entry or the time the HTTP witnesses cosigned the latest
        checkpoint kept at (:mod:`visage_ml.privacy.clock`; nothing is asked of a witness
        here), so that a host clock set back does not hide a deadline that passed.

        With no fresh answer the newest entry's time stays a floor even when it was stamped
        while the host's clock ran ahead (only an enforcement pass, which asks the witnesses,
        disregards it): a kept cosignature says nothing about now, and a deadline shown as
        passed too early is an error the DPO sees, one shown later than it is would hide one."""
        if self._given:
            return given(self._now())
        newest, back = ledger_times(self.core.ledger.path)
        return decide(
            self._now(),
            ledger=newest,
            witnesses=self.core.witnessing.witness_times(),
            steps_back=back,
        )

    # -- reading -------------------------------------------------------------------------------
    def refresh(self) -> RequestBook:
        """Fold ledger lines appended since the last call (a new book starts from the lines
        naming a request that this process has already picked out of the ledger)."""
        path = self.core.ledger.path
        if not path.exists():
            return self
        if self._offset == 0 and not self._states:
            lines, self._offset = _REQUEST_LINES(path)
            for line in lines.splitlines():
                _apply(self._states, orjson.loads(line))
        size = path.stat().st_size
        if size < self._offset:
            self._states, self._offset = {}, 0
        if size == self._offset:
            return self
        data = read_appended(path, self._offset, size)
        for line in _request_lines(data).splitlines():
            _apply(self._states, orjson.loads(line))
        self._offset += len(data)
        return self

    def get(self, request_id: str) -> RequestState:
        """The request, or :class:`UnknownRequestError`."""
        self.refresh()
        st = self._states.get(request_id)
        if st is None:
            raise UnknownRequestError(request_id)
        return st

    def all(self, *, pid: str | None = None) -> list[RequestState]:
        """Every request (of ``pid`` when given), oldest first."""
        self.refresh()
        out = [s for s in self._states.values() if pid is None or s.pid == pid]
        return sorted(out, key=lambda s: s.received_seq)

    def open(self, *, pid: str | None = None) -> list[RequestState]:
        """Open requests (received, verified or in progress), the nearest deadline first."""
        return sorted(
            (s for s in self.all(pid=pid) if s.is_open), key=lambda s: parse_time(s.deadline)
        )

    def uncertified_completions(self) -> set[int]:
        """The ``erasure.completed`` entries (seq) of erasure requests still open: their
        certificates are yet to be issued, and need the checkpoints kept for them
        (:meth:`~visage_ml.privacy.witnessed.Witnessing.prune_kept`)."""
        return {
            s.erasure_completed_seq
            for s in self.all()
            if s.right == "erasure" and s.is_open and s.erasure_completed_seq is not None
        }

    def overdue(self) -> list[RequestState]:
        """Open requests past their deadline."""
        now = self.now()
        return [s for s in self.open() if s.overdue(now)]

    # -- transitions ---------------------------------------------------------------------------
    def _transition(self, st: RequestState, target: str) -> None:
        allowed = TRANSITIONS[st.status]
        if target not in allowed:
            raise RequestStateError(
                MSG_TRANSITION.format(
                    rid=st.request_id,
                    status=st.status,
                    target=target,
                    allowed=", ".join(sorted(allowed)) or "none (closed)",
                )
            )

    def receive(
        self,
        pid: str,
        right: str,
        *,
        received_at: str | datetime | None = None,
        details: Mapping[str, Any] | None = None,
        channel: str = "unspecified",
    ) -> RequestState:
        """Record a new request; returns its state (status ``received``).

        Parameters
        ----------
        pid
            The subject (must be registered and not erased).
        right
            One of :data:`RIGHTS`.
        received_at
            When the request reached the controller (default now): the deadline counts from it
            (Art. 12(3)), even when that was before the subject was added to the registry (a
            letter answered after the import of its subject's data, pending requests migrated
            in): the request then records ``received_before_registration`` and
            ``subject_added_at``, which the listing and ``GET /v1/requests/{id}`` show. Refused
            only when it cannot be true: in the future, or before the GDPR applied
            (:data:`GDPR_APPLIES`); a bound at the registration (or at the ledger's start) would
            refuse true dates and make the DPO record a later one, and a later deadline.
        details
            Codes only (purposes, fields, an action), never values: the ledger keeps them.
        channel
            How it arrived, as a code (``email``, ``web_form``, ``letter``, ``api``, ...).

        Raises
        ------
        SubjectErasedError
            The subject was erased (a :class:`RequestRefusedError`).
        RequestRefusedError
            A receipt time in the future or before the GDPR applied, or not a time; a right or
            channel that is not one.
        """
        check_pid(pid)
        check_right(right)
        check_code(channel, "channel")
        st = self.core.subject(pid)
        if st.erased:
            raise SubjectErasedError(self.erased_message(pid))
        now = self.now()
        if received_at is None:
            received = now
        elif isinstance(received_at, datetime):
            received = received_at.astimezone(UTC)
        else:
            try:
                received = parse_time(received_at)
            except ValueError as exc:
                raise RequestRefusedError(str(exc)) from None
        if received > now + timedelta(minutes=5):
            raise RequestRefusedError(MSG_FUTURE.format(text=format_time(received)))
        if received < GDPR_APPLIES:
            # A typo or a 1970 default: overdue by years the moment it was recorded.
            raise RequestRefusedError(MSG_BEFORE_GDPR.format(text=format_time(received)))
        rid = new_request_id(received)
        deadline = add_months(received, self.params.deadline_months)
        payload: dict[str, Any] = {
            "request_id": rid,
            "right": right,
            "article": RIGHTS[right],
            "received_at": format_time(received),
            "deadline": format_time(deadline),
            "channel": channel,
            "details": dict(details or {}),
        }
        added = self.core.added_at(pid)
        if added is not None and received < parse_time(added):
            # True, and the deadline counts from it; said on the record so that a reviewer
            # sees a receipt the registry did not know of yet (and can ask for the letter).
            payload["received_before_registration"] = True
            payload["subject_added_at"] = added
        self.core.ledger.append("request.received", pid, payload)
        log.info("request %s (%s) received", rid, right)
        st = self.get(rid)
        self.outbox.for_request(st, "receipt")
        return st

    def verify(self, request_id: str, *, method: str = "identity_verified") -> RequestState:
        """The requester's identity was verified (Art. 12(6)); ``method`` is a code."""
        st = self.get(request_id)
        self._transition(st, VERIFIED)
        check_code(method, "verification method")
        self.core.ledger.append(
            "request.verified", st.pid, {"request_id": request_id, "method": method}
        )
        return self.get(request_id)

    def start(self, request_id: str) -> RequestState:
        """Work on the request begins; an erasure request also stops all processing now.

        For erasure, ``erasure.requested`` is appended with ``request.in_progress`` (one
        append): from then on the registry refuses every purpose for the subject, so the
        pipeline and serving exclude them while the erasure runs.
        """
        st = self.get(request_id)
        self._transition(st, IN_PROGRESS)
        events: list[tuple[str, str | None, Mapping[str, Any]]] = [
            ("request.in_progress", st.pid, {"request_id": request_id, "right": st.right})
        ]
        if st.right == "erasure":
            events.append(("erasure.requested", st.pid, {"request_id": request_id}))
        self.core.ledger.append_many(events)
        if st.right == "erasure":
            self.core.snapshot()
        return self.get(request_id)

    def extend(
        self,
        request_id: str,
        *,
        months: int | None = None,
        days: int | None = None,
        reason_code: str,
    ) -> RequestState:
        """Extend the deadline by calendar ``months`` (or ``days``), with a reason code.

        Art. 12(3): only while the request is open and its deadline has not passed, and to at
        most ``privacy.max_extension_months`` months after the first deadline. The subject is
        told (an ``extension`` message with the reasons goes to the outbox).

        Raises
        ------
        RequestStateError
            The request is closed, or its deadline passed.
        RequestRefusedError
            Neither or both of months and days, a bad reason code, or beyond the limit.
        """
        st = self.get(request_id)
        if not st.is_open:
            raise RequestStateError(
                MSG_TRANSITION.format(
                    rid=request_id, status=st.status, target="extended", allowed="none (closed)"
                )
            )
        if st.overdue(self.now()):
            raise RequestStateError(MSG_EXTEND_OVERDUE.format(rid=request_id, deadline=st.deadline))
        check_code(reason_code, "extension reason")
        if (months is None) == (days is None) or (months or days or 0) < 1:
            raise RequestRefusedError(MSG_EXTEND_HOW)
        current = parse_time(st.deadline)
        deadline = add_months(current, months) if months else current + int(days or 0) * DAY
        limit = add_months(parse_time(st.first_deadline), self.params.max_extension_months)
        if deadline > limit:
            raise RequestRefusedError(
                MSG_EXTENSION.format(
                    rid=request_id, limit=format_time(limit), max=self.params.max_extension_months
                )
            )
        payload: dict[str, Any] = {"request_id": request_id, "reason_code": reason_code}
        payload["months" if months else "days"] = int(months or days or 0)
        payload["deadline"] = format_time(deadline)
        self.core.ledger.append("request.extended", st.pid, payload)
        st = self.get(request_id)
        self.outbox.for_request(st, "extension")
        return st

    def deny(self, request_id: str, *, reason_code: str) -> RequestState:
        """Refuse the request with a reason code (e.g. ``manifestly_unfounded``, Art. 12(5)).

        A denied erasure lifts the processing stop that ``erasure.requested`` put in place,
        unless another erasure request of the subject is in progress (``lifts_stop`` in the
        entry says which): denying a duplicate must not let the subject be processed while the
        first one runs.
        """
        st = self.get(request_id)
        self._transition(st, DENIED)
        check_code(reason_code, "denial reason")
        payload: dict[str, Any] = {
            "request_id": request_id,
            "right": st.right,
            "reason_code": reason_code,
        }
        if st.right == "erasure":
            payload["lifts_stop"] = not any(
                r.right == "erasure" and r.status == IN_PROGRESS and r.request_id != request_id
                for r in self.all(pid=st.pid)
            )
        self.core.ledger.append("request.denied", st.pid, payload)
        self.core.snapshot()
        st = self.get(request_id)
        self.outbox.for_request(st, "denial")
        return st

    def erased_message(self, pid: str) -> str:
        """What a refusal of erased subject ``pid`` says (a new request's, every other DPO route
        of the HTTP API's): their erasure's request and certificate (the last erasure
        completed), or only that they were erased. Pseudonymous ids only; not for an operator,
        whose answers never tell an erased subject from another."""
        erasures = [s for s in self.all(pid=pid) if s.right == "erasure" and s.status == COMPLETED]
        if not erasures:
            return ALREADY_ERASED.format(pid=pid)
        return MSG_SUBJECT_ERASED.format(pid=pid, rid=erasures[-1].request_id)

    def fail(self, request_id: str, *, step: str, code: str) -> RequestState:
        """Record that an action on an in-progress request failed (``request.failed``), or on a
        verified one before it started it (an erasure's preflight).

        The request stays as it was: it is still owed, and its deadline runs. The subject is
        not told (nothing was decided); ``visage privacy request show`` gives the DPO the step,
        the code and what to do (:func:`failure_hint`).

        Parameters
        ----------
        step, code
            Where it failed and why, as codes (no free text: the ledger keeps them).

        Raises
        ------
        RequestStateError
            The request is neither verified nor in progress.
        """
        st = self.get(request_id)
        if st.status not in (VERIFIED, IN_PROGRESS):
            raise RequestStateError(
                MSG_TRANSITION.format(
                    rid=request_id,
                    status=st.status,
                    target="failed",
                    allowed=f"{VERIFIED}, {IN_PROGRESS}",
                )
            )
        check_code(step, "failed step")
        check_code(code, "failure code")
        self.core.ledger.append(
            "request.failed",
            st.pid,
            {"request_id": request_id, "right": st.right, "step": step, "code": code},
        )
        log.warning("request %s (%s): %s failed (%s)", request_id, st.right, step, code)
        return self.get(request_id)

    def complete(self, request_id: str, *, outcome: Mapping[str, Any]) -> Receipt:
        """Close the request: write its signed receipt, then ``request.completed``.

        Parameters
        ----------
        outcome
            What was done, as codes and hashes (e.g. the export bundle's SHA-256).

        Returns
        -------
        Receipt
            The signed receipt (also written to ``privacy/requests/<id>.receipt.json``).
        """
        st = self.get(request_id)
        self._transition(st, COMPLETED)
        receipt = self._write_receipt(st, dict(outcome))
        self.core.ledger.append(
            "request.completed",
            st.pid,
            {
                "request_id": request_id,
                "right": st.right,
                "receipt_sha256": receipt.sha256,
                "outcome": dict(outcome),
            },
        )
        log.info("request %s (%s) completed", request_id, st.right)
        st = self.get(request_id)
        # The subject hears of the completion; recipients of their data of a rectification,
        # erasure or restriction (Art. 19).
        self.outbox.for_request(st, "completion", receipt_sha256=receipt.sha256)
        self.outbox.art19(st)
        return receipt

    def receipt_path(self, request_id: str) -> Path:
        """Where the signed receipt of ``request_id`` is kept."""
        if not REQUEST_ID_RE.fullmatch(request_id):
            raise ValueError(f"'{request_id[:40]}' is not a request id (r<YYYYMMDD>-<8 hex>)")
        return self.paths.requests / f"{request_id}.receipt.json"

    def _write_receipt(self, st: RequestState, outcome: dict[str, Any]) -> Receipt:
        params = load_params(self.paths.params) if self.paths.params.exists() else None
        controller = params.project if params is not None else None
        doc = {
            "format": RECEIPT_FORMAT,
            "request_id": st.request_id,
            "pid": st.pid,
            "right": st.right,
            "article": st.article,
            "received_at": st.received_at,
            "deadline": st.deadline,
            "extended_days": st.extended_days,
            "completed_at": format_time(self.now()),
            "outcome": outcome,
            "controller": {
                "name": controller.controller if controller else "",
                "contact": controller.controller_contact if controller else "",
            },
            "ledger": {"received_seq": st.received_seq},
        }
        signed = sign(doc, self.paths)
        text = render(signed)
        path = self.receipt_path(st.request_id)
        atomic_write_text(path, text)
        return Receipt(path=path, document=signed, sha256=sha256_bytes(text.encode("utf-8")))


@dataclass(frozen=True)
class Receipt:
    """A signed completion receipt."""

    path: Path
    document: dict[str, Any]
    sha256: str
