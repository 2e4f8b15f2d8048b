"""The subject registry: each subject's current state as a fold over the ledger.

The pipeline and serving ask one question, :meth:`Registry.may_process`, and never a flag stored
anywhere else. The fold is incremental: :meth:`Registry.refresh` reads only the ledger lines
appended since the last call.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from visage_ml.config import PURPOSES

# Reason codes of a Decision (stable strings: the snapshot and the API expose them).
ALLOWED = "allowed"
UNKNOWN = "unknown_subject"
ERASED = "erased"
ERASURE_PENDING = "erasure_pending"
OBJECTED = "objected"
RESTRICTED = "restricted"
WITHDRAWN = "consent_withdrawn"
NO_BASIS = "no_consent"

REASON_TEXT: dict[str, str] = {
    ALLOWED: "a recorded legal basis covers this purpose",
    UNKNOWN: "no such subject in the registry",
    ERASED: "the subject's data was erased (Art. 17)",
    ERASURE_PENDING: "an erasure request is in progress (Art. 17)",
    OBJECTED: "the subject objected to this processing (Art. 21)",
    RESTRICTED: "processing is restricted (Art. 18)",
    WITHDRAWN: "consent for this purpose was withdrawn (Art. 7(3))",
    NO_BASIS: "no consent or other legal basis recorded for this purpose",
}


@dataclass(frozen=True)
class Decision:
    """Answer to "may I process this subject for this purpose?"."""

    allowed: bool
    reason: str

    @property
    def explanation(self) -> str:
        return REASON_TEXT[self.reason]


@dataclass(slots=True)
class Permission:
    """A purpose's legal basis as recorded (consent or another basis)."""

    granted: bool
    basis: tuple[str, ...]
    seq: int
    receipt_hash: str | None = None
    withdrawn: bool = False


@dataclass(slots=True)
class SubjectState:
    """Everything the registry knows about one subject (pids and hashes only)."""

    pid: str
    added_seq: int
    source: str = ""
    permissions: dict[str, Permission] = field(default_factory=dict)
    restricted: bool = False
    objected: set[str] = field(default_factory=set)
    erasure_pending: bool = False
    erased: bool = False
    last_seq: int = -1
    # SHA-256 of the gallery template last recorded as enrolled (None once removed): the
    # gallery only searches the template file that the ledger vouches for.
    template_sha256: str | None = None

    def decision(self, purpose: str) -> Decision:
        if self.erased:
            return Decision(False, ERASED)
        if self.erasure_pending:
            return Decision(False, ERASURE_PENDING)
        if purpose in self.objected:
            return Decision(False, OBJECTED)
        if self.restricted:
            return Decision(False, RESTRICTED)
        perm = self.permissions.get(purpose)
        if perm is None:
            return Decision(False, NO_BASIS)
        if not perm.granted:
            return Decision(False, WITHDRAWN if perm.withdrawn else NO_BASIS)
        return Decision(True, ALLOWED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "source": self.source,
            "added_seq": self.added_seq,
            "last_seq": self.last_seq,
            "restricted": self.restricted,
            "objected": sorted(self.objected),
            "erasure_pending": self.erasure_pending,
            "erased": self.erased,
            "purposes": {
                p: {
                    "allowed": self.decision(p).allowed,
                    "reason": self.decision(p).reason,
                    "basis": list(self.permissions[p].basis) if p in self.permissions else [],
                    "receipt_hash": (
                        self.permissions[p].receipt_hash if p in self.permissions else None
                    ),
                }
                for p in PURPOSES
            },
        }


def _apply(states: dict[str, SubjectState], seq: int, type_: str, pid: Any, payload: Any) -> None:
    """Fold one event into ``states``. Unknown subjects and irrelevant events are ignored."""
    if pid is None:
        return
    if type_ == "subject.added":
        if pid in states:
            # A second registration of a pid must not reset its state: that would lift a
            # restriction or objection, or bring an erased subject back.
            return
        states[pid] = SubjectState(pid=pid, added_seq=seq, source=payload.get("source", ""))
        states[pid].last_seq = seq
        return
    st = states.get(pid)
    if st is None:
        return
    if type_ == "gallery.enrolled":
        st.template_sha256 = payload.get("template_sha256")
        return
    if type_ == "gallery.removed":
        st.template_sha256 = None
        return
    if type_ == "consent.given" or type_ == "basis.recorded":
        receipt = payload.get("receipt") or {}
        basis = tuple(receipt.get("legal_basis") or payload.get("legal_basis") or ())
        rh = payload.get("receipt_hash") or payload.get("evidence_hash")
        for p in receipt.get("purposes") or payload.get("purposes") or ():
            st.permissions[p] = Permission(True, basis, seq, rh)
    elif type_ == "consent.withdrawn":
        for p in payload.get("purposes") or PURPOSES:
            prev = st.permissions.get(p)
            st.permissions[p] = Permission(False, prev.basis if prev else (), seq, None, True)
    elif type_ == "restriction.set":
        st.restricted = True
    elif type_ == "restriction.lifted":
        st.restricted = False
    elif type_ == "objection":
        st.objected.update(payload.get("purposes") or PURPOSES)
    elif type_ == "objection.withdrawn":
        st.objected.difference_update(payload.get("purposes") or PURPOSES)
    elif type_ == "erasure.requested":
        st.erasure_pending = True
    elif type_ == "erasure.completed":
        st.erasure_pending = False
        st.erased = True
        st.permissions.clear()
    elif type_ == "request.denied" and payload.get("right") == "erasure":
        st.erasure_pending = False
    else:
        return
    st.last_seq = seq


def fold(events: Iterable[tuple[int, str, Any, Any]]) -> dict[str, SubjectState]:
    """Fold ``(seq, type, pid, payload)`` events into subject states (pure, for tests)."""
    states: dict[str, SubjectState] = {}
    for seq, type_, pid, payload in events:
        _apply(states, seq, type_, pid, payload)
    return states


class Registry:
    """Incrementally folded view of the ledger at ``ledger_path``."""

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = Path(ledger_path)
        self._states: dict[str, SubjectState] = {}
        self._offset = 0
        self.as_of_seq = -1

    def refresh(self) -> Registry:
        """Fold entries appended since the last refresh; returns self."""
        path = self.ledger_path
        if not path.exists():
            return self
        size = path.stat().st_size
        if size < self._offset:
            # The ledger is append-only; a shorter file means it was replaced: start over.
            self._states, self._offset, self.as_of_seq = {}, 0, -1
        if size == self._offset:
            return self
        with open(path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        end = data.rfind(b"\n")
        if end == -1:
            return self
        loads = orjson.loads
        states = self._states
        seq = self.as_of_seq
        # The fold allocates many small containers; the cyclic GC would rescan them all
        # repeatedly (they hold no cycles), tripling the time of a large fold.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for line in data[: end + 1].splitlines():
                obj = loads(line)
                seq = obj["seq"]
                _apply(states, seq, obj["type"], obj["pid"], obj["payload"])
        finally:
            if gc_was_enabled:
                gc.enable()
        self._offset += end + 1
        self.as_of_seq = seq
        return self

    def may_process(self, pid: str, purpose: str) -> Decision:
        """May ``pid``'s data be processed for ``purpose`` now?"""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown purpose '{purpose}'; purposes are: {', '.join(PURPOSES)}")
        self.refresh()
        st = self._states.get(pid)
        if st is None:
            return Decision(False, UNKNOWN)
        return st.decision(purpose)

    def allowed(self, purpose: str) -> set[str]:
        """Every pid currently allowed for ``purpose``."""
        self.refresh()
        return {pid for pid, st in self._states.items() if st.decision(purpose).allowed}

    def get(self, pid: str) -> SubjectState | None:
        self.refresh()
        return self._states.get(pid)

    def peek(self, pid: str) -> SubjectState | None:
        """``pid``'s state as of the last refresh, without reading the ledger (bulk loops)."""
        return self._states.get(pid)

    def __contains__(self, pid: object) -> bool:
        self.refresh()
        return pid in self._states

    def __iter__(self) -> Iterator[SubjectState]:
        self.refresh()
        return iter(list(self._states.values()))

    def __len__(self) -> int:
        self.refresh()
        return len(self._states)

    def states(self) -> Mapping[str, SubjectState]:
        self.refresh()
        return dict(self._states)
