"""Retention that enforces itself: ``visage privacy enforce``.

One pass looks at every subject, kept export bundle and request receipt, and plans what the
policies say must happen now (:meth:`Enforcer.plan`, the dry run); :meth:`Enforcer.apply`
carries it out as the actor ``scheduler``, each action a ledger event with its reason:

- ``expire_consent`` (reason ``consent_expired``): a consent older than
  ``privacy.retention.consent_months``;
- ``purge_template``: a stored gallery template whose identification basis is gone
  (``consent_withdrawn``, ``consent_expired``, ``no_consent``, ``objected``), whose
  ``biometric_template`` retention ended (``retention_expired``), or of a restricted subject
  when ``privacy.retention.restricted`` is ``purge_template`` (``restricted``);
- ``erase_subject``: no purpose has a basis any more and ``erase_without_basis`` is on
  (``no_legal_basis``), or the ``facial_images`` retention ended since collection
  (``retention_expired``);
- ``remove_export`` / ``remove_receipt`` (``retention_expired``): a kept export bundle or a
  request receipt older than the ``export_bundles`` / ``request_receipts`` retention, or than
  ``privacy.retention.exports_days`` / ``receipts_months`` when those end first;
- ``discard_message`` (``retention_expired``): a message the outbox gave up on (``dead``) more
  than ``privacy.retention.dead_messages_days`` ago, with the address it holds (an erased
  subject's too: a closing message keeps the address of their request until it is sent).

Periods come from the records of processing (``privacy/records.yaml``) and consent expiry from
``privacy.retention``; times are the ledger's (when a consent was recorded, a subject added, a
template enrolled, a bundle exported, a request completed), so a restored file cannot reset a
clock. "Now" is never before the ledger's newest entry nor before the time the HTTP witnesses
stamp on a cosignature of the current checkpoint, asked for at the start of each pass
(:mod:`visage_ml.privacy.clock`): a host clock set back does not postpone an expiry. (A newest
entry stamped while the host's clock ran ahead is disregarded when the witnesses answering in
this pass and the host's clock agree it is ahead, so it expires nothing early.) A
restricted subject (Art. 18) is never erased by policy: restriction keeps data stored.
Consent expiry is an event (``consent.expired``) the registry folds, so that the gallery,
``prepare`` and serving stop using the subject exactly as for a withdrawal. An erasure by policy
is a full erasure request (recorded with channel ``scheduler``, verified by ``retention_policy``)
ending with its certificate and its Art. 19 notices; template purges go through the gallery's
own erasure; every action also appends ``retention.applied`` with its reason. After a pass the
notification outbox is delivered (:mod:`visage_ml.rights.notify`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from visage_ml.config import PURPOSES, Params, ProjectPaths, load_params
from visage_ml.io import atomic_write_text, file_lock, private_dir, secure_unlink, sha256_file
from visage_ml.privacy.clock import Now, WitnessTimes, decide, given, ledger_times
from visage_ml.privacy.consent import ANALYTICS
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import SCHEDULER, acting_as
from visage_ml.privacy.outbox import DEAD, Outbox
from visage_ml.privacy.records import Records, Retention, records_of
from visage_ml.privacy.registry import NO_BASIS_REASONS, RESTRICTED, SubjectState
from visage_ml.privacy.requests import (
    RequestBook,
    RequestState,
    add_months,
    failure_hint,
    parse_time,
)
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.export import EXPORTS_DIR, bundle_owner, forget_owner
from visage_ml.rights.notify import DeliveryReport, Notifier
from visage_ml.serving.gallery import Gallery
from visage_ml.serving.pg_gallery import open_project_gallery

log = logging.getLogger(__name__)

LOCK = Path(".visage") / "locks" / "enforce.lock"
# When `visage serve`'s last pass began (seconds since the epoch): a server restarted before an
# interval had run would otherwise never enforce (the first pass waited one interval after
# each start).
LAST_PASS = Path(".visage") / "enforce-last-pass"
CONSENT_BASES = frozenset({"art6(1)(a)", "art9(2)(a)"})
IDENTIFICATION = "identification"
EXPIRED, NO_LEGAL_BASIS, RETENTION_EXPIRED = (
    "consent_expired",
    "no_legal_basis",
    "retention_expired",
)
# Ledger events whose time the policies count from.
_TIMED = (b'"consent.given"', b'"basis.recorded"', b'"subject.added"', b'"gallery.enrolled"')


@dataclass(frozen=True)
class Action:
    """One thing a policy says must be done now."""

    kind: str
    reason: str
    pid: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        who = f" {self.pid}" if self.pid else ""
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.detail.items()))
        return f"{self.kind}{who} ({self.reason}{'; ' + extra if extra else ''})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "pid": self.pid, **self.detail}


@dataclass(frozen=True)
class Attention:
    """An open request the DPO must answer now: overdue, or with a recorded failure.

    ``hint`` says what failed (step, code) and what to do (:func:`failure_hint`, whose wording
    comes from ``FAILURE_ACTIONS``); None when no failure is recorded.
    """

    request_id: str
    pid: str
    right: str
    deadline: str
    days_left: int
    overdue: bool
    failure: dict[str, Any] | None
    hint: str | None

    @classmethod
    def of(cls, st: RequestState, now: datetime) -> Attention:
        failure = {k: st.failure[k] for k in ("step", "code", "time")} if st.failure else None
        return cls(
            request_id=st.request_id,
            pid=st.pid,
            right=st.right,
            deadline=st.deadline,
            days_left=st.days_left(now),
            overdue=st.overdue(now),
            failure=failure,
            hint=failure_hint(st),
        )

    def describe(self) -> str:
        when = (
            f"OVERDUE by {-self.days_left} day(s)"
            if self.overdue
            else f"{self.days_left} day(s) left"
        )
        head = f"request {self.request_id} ({self.right}) of {self.pid}: deadline "
        return f"{head}{self.deadline[:10]}, {when}" + (f"; {self.hint}" if self.hint else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EnforceResult:
    """What :meth:`Enforcer.apply` did."""

    actions: list[Action]
    certificates: list[str] = field(default_factory=list)
    delivery: DeliveryReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "actions": [a.to_dict() for a in self.actions],
            "certificates": self.certificates,
            "delivery": self.delivery.to_dict() if self.delivery else None,
        }


def _after(start: datetime, retention: Retention) -> datetime | None:
    """When a period of ``retention`` that began at ``start`` ends (None: not time-limited)."""
    if retention.months is not None:
        return add_months(start, retention.months)
    if retention.days is not None:
        return start + timedelta(days=retention.days)
    return None


def _parsed(text: str) -> datetime | None:
    try:
        return parse_time(text)
    except (TypeError, ValueError):
        return None


def _earliest(*ends: datetime | None) -> datetime | None:
    """The first of the ``ends`` that are set (None when none is)."""
    return min((e for e in ends if e is not None), default=None)


class Enforcer:
    """Plans and carries out the retention policies of the project at ``paths``.

    Parameters
    ----------
    paths
        The project.
    core
        Its privacy core (opened when None).
    params
        The project's parameters (``params.yaml`` when None).
    gallery
        An open gallery to purge templates from (a running server passes its own); opened from
        disk when needed and None.
    now
        Clock returning an aware UTC datetime, taken as it is (a dry run's ``--at``; tests
        inject a simulated one). By default the ledger's clock, never before the ledger's
        newest entry nor the HTTP witnesses' time (:mod:`visage_ml.privacy.clock`), which the
        first plan of this enforcer asks them for.
    """

    def __init__(
        self,
        paths: ProjectPaths,
        *,
        core: PrivacyCore | None = None,
        params: Params | None = None,
        gallery: Gallery | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.paths = paths
        self.core = core if core is not None else PrivacyCore(paths)
        self.params = params if params is not None else load_params(paths.params)
        self.gallery = gallery
        # By default the ledger's clock (what its entries are stamped with), never before its
        # newest entry or the witnesses' time; a given time (`--at`) is taken as it is.
        self.now = now or (lambda: parse_time(self.core.ledger.clock()))
        self._floored = now is None
        self._witnessed: WitnessTimes | None = None
        self._asked: datetime | None = None  # the host's clock when the witnesses answered
        self.clock: Now | None = None  # the time the last plan or attention list used

    def current(self) -> Now:
        """The time the policies apply at now, and where it came from.

        The first call asks the HTTP witnesses to cosign the current checkpoint (their
        timestamps are a clock the host's operator does not set) and warns when the host's clock
        is behind, or when their fresh answers and the host's clock show that the ledger's
        newest entry was stamped while that clock ran ahead (that entry's time is then
        disregarded for the whole pass).
        """
        if not self._floored:
            self.clock = given(self.now())
            return self.clock
        first = self._witnessed is None
        if self._witnessed is None:
            self._witnessed = self.core.witnessing.ask_time()
        host = self.now()
        if self._asked is None:
            self._asked = host
        newest, back = ledger_times(self.core.ledger.path)
        now = decide(
            host,
            ledger=newest,
            witnesses=self._witnessed,
            steps_back=back,
            fresh=self._witnessed.fresh,
            asked=self._asked,
        )
        if first:
            now.warn()
        # Within one pass time never goes back (the entries the pass appends carry the host's
        # time, which may be behind the time it started at).
        if self.clock is None or now.time >= self.clock.time:
            self.clock = now
        return self.clock

    def _time(self) -> datetime:
        return self.current().time

    # -- planning ------------------------------------------------------------------------------
    def _times(self) -> dict[int, datetime]:
        """Ledger time of every entry a policy counts from, by seq."""
        out: dict[int, datetime] = {}
        for line in self.core.ledger.lines_containing(_TIMED):
            obj = orjson.loads(line)
            out[obj["seq"]] = parse_time(obj["time"])
        return out

    def _enrolled(self) -> dict[str, int]:
        """Each subject's last ``gallery.enrolled`` seq."""
        out: dict[str, int] = {}
        for line in self.core.ledger.lines_containing((b'"gallery.enrolled"',)):
            obj = orjson.loads(line)
            if obj["type"] == "gallery.enrolled" and obj["pid"]:
                out[obj["pid"]] = obj["seq"]
        return out

    def plan(self) -> list[Action]:
        """Every action the policies call for now, in the order :meth:`apply` runs them."""
        records = records_of(self.paths)
        retention = self.params.privacy.retention
        times = self._times()
        # Never before the ledger's newest entry or the witnesses' time: a clock set back would
        # postpone every expiry.
        now = self.current().time
        enrolled = self._enrolled()
        actions: list[Action] = []
        for st in self.core.registry.states().values():
            if st.erased or st.erasure_pending:
                continue
            expiring = self._expiring(st, times, now, retention.consent_months)
            actions += [
                Action("expire_consent", EXPIRED, st.pid, {"purposes": ps, "consent_seq": seq})
                for seq, ps in sorted(expiring.items())
            ]
            expired = {p for ps in expiring.values() for p in ps}
            actions += self._subject_actions(st, expired, times, enrolled, records, now)
        actions += self._file_actions(records, now)
        return actions

    @staticmethod
    def _expiring(
        st: SubjectState, times: dict[int, datetime], now: datetime, months: int
    ) -> dict[int, list[str]]:
        """Consents of ``st`` that lapsed by ``now``: ``{consent seq: [purposes]}``."""
        out: dict[int, list[str]] = {}
        if months <= 0:
            return out
        for purpose, perm in st.permissions.items():
            if not perm.granted or not set(perm.basis) & CONSENT_BASES:
                continue
            given = times.get(perm.seq)
            if given is not None and add_months(given, months) <= now:
                out.setdefault(perm.seq, []).append(purpose)
        return out

    def _subject_actions(
        self,
        st: SubjectState,
        expired: set[str],
        times: dict[int, datetime],
        enrolled: dict[str, int],
        records: Records,
        now: datetime,
    ) -> list[Action]:
        retention = self.params.privacy.retention
        reasons = {
            p: (EXPIRED if p in expired and st.decision(p).allowed else st.decision(p).reason)
            for p in PURPOSES
        }
        if st.restricted:
            # Art. 18: restricted data is stored, not used, and never erased by policy (a
            # restriction may be what the subject asked for while an objection is examined).
            if st.template_sha256 is not None and retention.restricted == "purge_template":
                return [Action("purge_template", RESTRICTED, st.pid)]
            return []
        added = times.get(st.added_seq)
        images_end = _after(added, records.retention("facial_images")) if added else None
        if images_end is not None and images_end <= now:
            detail = {"category": "facial_images"}
            return [Action("erase_subject", RETENTION_EXPIRED, st.pid, detail)]
        # Analytics keeps nothing of a registered subject's (it counts faces and identifies no
        # one): a consent to it recorded by an earlier version must not keep their data.
        kept_for = {p: r for p, r in reasons.items() if p != ANALYTICS}
        if retention.erase_without_basis and all(r in NO_BASIS_REASONS for r in kept_for.values()):
            why = {p: r for p, r in sorted(kept_for.items())}
            return [Action("erase_subject", NO_LEGAL_BASIS, st.pid, {"purposes": why})]
        if st.template_sha256 is None:
            return []
        ident = reasons[IDENTIFICATION]
        if ident in NO_BASIS_REASONS:
            return [Action("purge_template", ident, st.pid)]
        seq = enrolled.get(st.pid)
        end = _after(times[seq], records.retention("biometric_template")) if seq in times else None
        if end is not None and end <= now:
            return [Action("purge_template", RETENTION_EXPIRED, st.pid)]
        return []

    def _file_actions(self, records: Records, now: datetime) -> list[Action]:
        # The records' period is what subjects were told; privacy.retention's exports_days and
        # receipts_months may only shorten it (whichever ends first applies).
        knobs = self.params.privacy.retention
        actions: list[Action] = []
        book = RequestBook(self.core, params=self.params.privacy)
        requests = {s.request_id: s for s in book.all()}
        exported: dict[str, datetime] = {}
        for line in self.core.ledger.lines_containing((b'"access.exported"',)):
            obj = orjson.loads(line)
            rid = (obj.get("payload") or {}).get("request_id")
            if obj["type"] == "access.exported" and rid:
                exported[rid] = parse_time(obj["time"])
        folder = self.paths.root / EXPORTS_DIR
        keep = records.retention("export_bundles")
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                rid = f.name.split(".", 1)[0]
                made = exported.get(rid) or datetime.fromtimestamp(f.stat().st_mtime, UTC)
                end = _earliest(_after(made, keep), made + timedelta(days=knobs.exports_days))
                if end is not None and end <= now:
                    actions.append(
                        Action("remove_export", RETENTION_EXPIRED, None, {"file": f.name})
                    )
        actions += self._dead_messages(now, knobs.dead_messages_days)
        keep = records.retention("request_receipts")
        if self.paths.requests.is_dir():
            for f in sorted(self.paths.requests.glob("*.receipt.json")):
                rid = f.name.split(".", 1)[0]
                st = requests.get(rid)
                done = parse_time(st.completed_at) if st and st.completed_at else None
                end = (
                    _earliest(_after(done, keep), add_months(done, knobs.receipts_months))
                    if done
                    else None
                )
                if end is not None and end <= now:
                    actions.append(
                        Action("remove_receipt", RETENTION_EXPIRED, None, {"request_id": rid})
                    )
        return actions

    def _dead_messages(self, now: datetime, days: int) -> list[Action]:
        """Dead messages whose death the ledger dated more than ``days`` ago.

        A message is saved as dead before ``notification.failed`` (state dead) is appended: one
        killed between the two is dated by its last ledger line (queued, or a failed try), else
        by its file's creation time, so that it is not kept for good.
        """
        dead = {m.id: m for m in Outbox(self.core).messages() if m.state == DEAD}
        if not dead:
            return []
        died: dict[str, datetime] = {}
        seen: dict[str, datetime] = {}
        for line in self.core.ledger.lines_containing((b'"notification.',)):
            obj = orjson.loads(line)
            payload = obj.get("payload") or {}
            mid = str(payload.get("message_id"))
            if mid not in dead or not str(obj.get("type", "")).startswith("notification."):
                continue
            when = parse_time(obj["time"])
            seen[mid] = max(when, seen.get(mid, when))
            if obj["type"] == "notification.failed" and payload.get("state") == "dead":
                died[mid] = when
        actions = []
        for mid, msg in sorted(dead.items()):
            when = died.get(mid) or seen.get(mid) or _parsed(msg.created)
            if when is not None and when + timedelta(days=days) <= now:
                actions.append(
                    Action("discard_message", RETENTION_EXPIRED, None, {"message_id": mid})
                )
        return actions

    def attention(self) -> list[Attention]:
        """Open requests that are overdue or whose last attempt failed, nearest deadline first:
        what no policy carries out, and the DPO must."""
        book = RequestBook(self.core, params=self.params.privacy, now=self._time)
        now = book.now()
        return [Attention.of(st, now) for st in book.open() if st.overdue(now) or st.failure]

    # -- carrying out --------------------------------------------------------------------------
    def _gallery(self) -> Gallery | None:
        if self.gallery is None:
            self.gallery = open_project_gallery(self.paths, core=self.core, load=False)
        return self.gallery

    def apply(
        self,
        actions: list[Action] | None = None,
        *,
        deliver: bool = True,
        guard: Any = None,
    ) -> EnforceResult:
        """Carry out ``actions`` (default: :meth:`plan` now) as the actor ``scheduler``; then
        deliver the notification outbox (unless ``deliver`` is false).

        ``guard`` (a lock, e.g. a server's over its shared privacy core and gallery) is taken
        once the enforcement lock is held, for the rest of the pass: waiting for another pass
        does not hold it.
        """
        with (
            file_lock(self.paths.root / LOCK),
            guard if guard is not None else contextlib.nullcontext(),
            acting_as(SCHEDULER),
        ):
            actions = self.plan() if actions is None else actions
            result = EnforceResult(actions)
            failed: list[BaseException] = []
            for action in actions:
                try:
                    getattr(self, f"_do_{action.kind}")(action, result)
                except Exception as exc:  # one action's failure (a store down) stops no other
                    log.warning("enforce: %s failed (%s)", action.describe(), type(exc).__name__)
                    failed.append(exc)
                    continue
                log.info("enforce: %s", action.describe())
            if actions:
                self.core.snapshot()
            if deliver:
                result.delivery = Notifier(
                    self.paths, core=self.core, params=self.params.privacy.notify, now=self.now
                ).deliver()
        if failed:
            # The first failure says what to do (its own message); the note, what else happened.
            failed[0].add_note(
                MSG_ENFORCE_INCOMPLETE.format(failed=len(failed), done=len(actions) - len(failed))
            )
            raise failed[0]
        return result

    def _applied(self, action: Action, **extra: Any) -> None:
        self.core.ledger.append(
            "retention.applied",
            action.pid,
            {"action": action.kind, "reason": action.reason, **extra},
        )

    def _do_expire_consent(self, action: Action, result: EnforceResult) -> None:
        self.core.ledger.append(
            "consent.expired",
            action.pid,
            {
                "purposes": list(action.detail["purposes"]),
                "consent_seq": action.detail["consent_seq"],
                "reason": action.reason,
                "consent_months": self.params.privacy.retention.consent_months,
            },
        )

    def _do_purge_template(self, action: Action, result: EnforceResult) -> None:
        gallery = self._gallery()
        removed = gallery.erase(action.pid, reason=action.reason) if gallery else None
        files = sorted(removed.removed.values()) if removed else []
        self._applied(action, removed_sha256=files)

    def _do_erase_subject(self, action: Action, result: EnforceResult) -> None:
        book = RequestBook(self.core, params=self.params.privacy, now=self._time)
        open_ = [s for s in book.open(pid=action.pid) if s.right == "erasure"]
        if open_:
            st = open_[0]
        else:
            st = book.receive(
                action.pid,
                "erasure",
                channel="scheduler",
                details={"reason_code": action.reason},
            )
        if st.status == "received":
            book.verify(st.request_id, method="retention_policy")
        self._applied(action, request_id=st.request_id)
        erasure = Erasure(self.paths, core=self.core, gallery=self._gallery(), params=self.params)
        erasure.book = book
        out = erasure.run(st.request_id)
        if out.certificate_path is not None:
            result.certificates.append(str(out.certificate_path))

    def _do_remove_export(self, action: Action, result: EnforceResult) -> None:
        path = self.paths.root / EXPORTS_DIR / action.detail["file"]
        if not path.is_file():
            return
        pid = bundle_owner(path)
        digest = sha256_file(path)
        secure_unlink(path)
        forget_owner(self.paths, [path.name])
        self.core.ledger.append(
            "retention.applied",
            pid,
            {"action": action.kind, "reason": action.reason, "file": path.name, "sha256": digest},
        )

    def _do_discard_message(self, action: Action, result: EnforceResult) -> None:
        # Only while it is still dead: `notify --retry-dead` may have revived it since the plan.
        msg = Outbox(self.core).discard(action.detail["message_id"], only_dead=True)
        if msg is None:
            return
        self.core.ledger.append(
            "retention.applied",
            msg.pid,
            {
                "action": action.kind,
                "reason": action.reason,
                "message_id": msg.id,
                "sha256": msg.sha256,
            },
        )

    def _do_remove_receipt(self, action: Action, result: EnforceResult) -> None:
        rid = action.detail["request_id"]
        book = RequestBook(self.core, params=self.params.privacy)
        path = book.receipt_path(rid)
        if not path.is_file():
            return
        digest = sha256_file(path)
        path.unlink()
        self.core.ledger.append(
            "retention.applied",
            book.get(rid).pid,
            {
                "action": action.kind,
                "reason": action.reason,
                "request_id": rid,
                "sha256": digest,
            },
        )


MSG_ENFORCE_INCOMPLETE = (
    "{failed} action(s) of this enforcement pass failed and {done} were carried out; the "
    "failed ones are planned again by the next pass (`visage privacy enforce --apply`)"
)


def run_periodically(
    make: Callable[[], Enforcer],
    *,
    interval_seconds: float,
    stop: threading.Event,
    lock: Any = None,
    deliver: Callable[[], Any] | None = None,
    mark: Path | None = None,
) -> None:
    """Apply the policies every ``interval_seconds`` until ``stop`` is set (``visage serve``'s
    background task); a failing pass is logged and the next one runs on time.

    The first pass is one interval after the last one began, as recorded in ``mark``, across
    restarts (at once when that is past; one interval after the start when ``mark`` records
    none or lies ahead of the clock): a server restarted more often than the interval still
    enforces.

    Passes start at most ``interval_seconds`` apart (what the notice promises), however long
    one takes. ``lock`` is held for the policies only, taken once the enforcement lock is (a
    ``visage privacy enforce`` running meanwhile is waited for without it). ``deliver``, when
    given, delivers the notification outbox after each pass, without ``lock``: sending waits on
    SMTP servers and webhooks, which must not hold up what the lock guards (a server's requests);
    without it the pass delivers, under ``lock``.
    """
    due = time.monotonic() + _first_delay(mark, interval_seconds)
    while not stop.wait(max(0.0, due - time.monotonic())):
        due = time.monotonic() + interval_seconds
        if mark is not None:
            _mark_pass(mark)
        try:
            make().apply(deliver=deliver is None, guard=lock)
        except Exception:  # a background loop must not die of one bad pass
            log.exception("retention enforcement pass failed; retrying in %.0f s", interval_seconds)
        if deliver is None:
            continue
        try:
            deliver()
        except Exception:  # nor of one failed delivery (each message's failure is recorded)
            log.exception("notification delivery failed; retrying in %.0f s", interval_seconds)


def _first_delay(mark: Path | None, interval_seconds: float) -> float:
    """Seconds until the first pass: one interval after the last recorded one began."""
    if mark is None:
        return interval_seconds
    try:
        last = float(mark.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):  # none yet, or unreadable: count from this start
        _mark_pass(mark)
        return interval_seconds
    return min(interval_seconds, max(0.0, last + interval_seconds - time.time()))


def _mark_pass(mark: Path) -> None:
    try:
        private_dir(mark.parent)
        atomic_write_text(mark, f"{time.time():.0f}\n")
    except OSError:  # the schedule falls back to this process's own clock
        log.warning("could not record the enforcement pass in %s", mark)
