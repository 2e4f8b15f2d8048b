"""One entry point to the privacy core of a project: ledger, registry, vault, snapshot.

CLI commands, HTTP handlers, acquisition and the rights workflows all go through
:class:`PrivacyCore`, so every state change is a signed ledger event and refreshes the consent
snapshot the pipeline reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from visage_ml.config import PURPOSES, ProjectPaths
from visage_ml.privacy.consent import ConsentReceipt, check_basis, check_purposes
from visage_ml.privacy.keys import check_pid, new_pid
from visage_ml.privacy.ledger import Entry, Ledger
from visage_ml.privacy.registry import Decision, Registry, SubjectState
from visage_ml.privacy.snapshot import write_snapshot
from visage_ml.privacy.vault import IdentityVault

log = logging.getLogger(__name__)

UNKNOWN_SUBJECT = (
    "no subject {pid} in the registry; list subjects with `visage privacy subject list`"
)
ALREADY_ERASED = "subject {pid} was erased; nothing about them can be changed any more"


class UnknownSubjectError(KeyError):
    """The pid is not in the registry."""

    def __str__(self) -> str:
        return UNKNOWN_SUBJECT.format(pid=self.args[0])


@dataclass(frozen=True)
class NewSubject:
    """A subject to register: identity data goes to the vault only, never the ledger."""

    external_ref: str | None = None
    contact: str | None = None
    pid: str | None = None


class PrivacyCore:
    """The privacy core of the project at ``paths``."""

    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths
        self._snapshot_written: tuple[int, int, int, int] | None = None

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(
            self.paths.ledger,
            key_path=self.paths.signing_key,
            public_key_path=self.paths.ledger_public_key,
        )

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.paths.ledger)

    @cached_property
    def vault(self) -> IdentityVault:
        """Opened on first use: needs the master key."""
        return IdentityVault(self.paths.vault, self.paths.master_key)

    # -- questions -----------------------------------------------------------------------------
    def may_process(self, pid: str, purpose: str) -> Decision:
        """May ``pid`` be processed for ``purpose``? The single question the code base asks."""
        return self.registry.may_process(pid, purpose)

    def subject(self, pid: str) -> SubjectState:
        """The subject's state, or :class:`UnknownSubjectError`."""
        check_pid(pid)
        st = self.registry.get(pid)
        if st is None:
            raise UnknownSubjectError(pid)
        return st

    def _live(self, pid: str) -> SubjectState:
        st = self.subject(pid)
        if st.erased:
            raise ValueError(ALREADY_ERASED.format(pid=pid))
        return st

    # -- acquisition ---------------------------------------------------------------------------
    def add_subjects(
        self, subjects: Sequence[NewSubject], *, source: str, snapshot: bool = True
    ) -> list[str]:
        """Register subjects: identity to the vault, a ``subject.added`` event each.

        A subject whose external reference is already in the vault keeps its existing pid
        (re-import of the same person).
        """
        pids: list[str] = []
        records: dict[str, dict[str, Any]] = {}
        events: list[tuple[str, str | None, Mapping[str, Any]]] = []
        seen: dict[str, str] = {}
        refs = [s.external_ref for s in subjects if s.external_ref]
        known = self.vault.find_many(refs) if refs else {}
        # Vault records whose subject.added never reached the ledger (a crash between the two
        # writes below): such a subject is registered under its pid now.
        states = self.registry.states() if known else {}
        orphans = {pid for pid in known.values() if pid not in states}
        for s in subjects:
            existing = None
            if s.external_ref:
                existing = seen.get(s.external_ref) or known.get(s.external_ref)
            if existing is not None:
                pids.append(existing)
                if existing in orphans:
                    orphans.discard(existing)
                    events.append(("subject.added", existing, {"source": source}))
                continue
            pid = check_pid(s.pid) if s.pid else new_pid()
            if pid in self.registry:
                raise ValueError(f"subject {pid} is already registered")
            pids.append(pid)
            if s.external_ref:
                seen[s.external_ref] = pid
            if s.external_ref or s.contact:
                records[pid] = {
                    k: v
                    for k, v in {"external_ref": s.external_ref, "contact": s.contact}.items()
                    if v
                }
                records[pid]["source"] = source
            events.append(("subject.added", pid, {"source": source}))
        if records:
            # Vault first: a crash between the two leaves an orphan record, never a ledger
            # subject whose identity is lost.
            self.vault.put_many(records)
        if events:
            self.ledger.append_many(events)
        if snapshot:
            self.snapshot()
        return pids

    def add_subject(
        self,
        *,
        external_ref: str | None = None,
        contact: str | None = None,
        source: str = "manual",
        pid: str | None = None,
    ) -> str:
        """Register one subject and return their pid."""
        return self.add_subjects([NewSubject(external_ref, contact, pid)], source=source)[0]

    # -- consent and bases ---------------------------------------------------------------------
    def give_consent(self, pid: str, receipt: ConsentReceipt, *, snapshot: bool = True) -> Entry:
        """Record consent for the receipt's purposes."""
        return self.give_consents([pid], receipt, snapshot=snapshot)[0]

    def give_consents(
        self, pids: Sequence[str], receipt: ConsentReceipt, *, snapshot: bool = True
    ) -> list[Entry]:
        """Record the same consent receipt for several subjects (one lock, one fsync)."""
        for pid in pids:
            self._live(pid)
        payload = {"receipt": receipt.to_dict(), "receipt_hash": receipt.digest()}
        entries = self.ledger.append_many([("consent.given", pid, payload) for pid in pids])
        if snapshot:
            self.snapshot()
        return entries

    def record_basis(
        self,
        pid: str,
        *,
        purposes: Iterable[str],
        legal_basis: Iterable[str],
        evidence_hash: str | None = None,
        snapshot: bool = True,
    ) -> Entry:
        """Record a legal basis other than consent (e.g. Art. 9(2)(j) research) for purposes."""
        return self.record_bases(
            [pid],
            purposes=purposes,
            legal_basis=legal_basis,
            evidence_hash=evidence_hash,
            snapshot=snapshot,
        )[0]

    def record_bases(
        self,
        pids: Sequence[str],
        *,
        purposes: Iterable[str],
        legal_basis: Iterable[str],
        evidence_hash: str | None = None,
        snapshot: bool = True,
    ) -> list[Entry]:
        """:meth:`record_basis` for several subjects (one lock, one fsync)."""
        for pid in pids:
            self._live(pid)
        payload = {
            "purposes": list(check_purposes(purposes)),
            "legal_basis": list(check_basis(legal_basis)),
            "evidence_hash": evidence_hash,
        }
        entries = self.ledger.append_many([("basis.recorded", pid, payload) for pid in pids])
        if snapshot:
            self.snapshot()
        return entries

    def withdraw_consent(
        self, pid: str, purposes: Iterable[str] | None = None, *, snapshot: bool = True
    ) -> Entry:
        """Withdraw consent for ``purposes`` (all when None), Art. 7(3)."""
        self._live(pid)
        chosen = list(check_purposes(purposes)) if purposes else list(PURPOSES)
        entry = self.ledger.append("consent.withdrawn", pid, {"purposes": chosen})
        if snapshot:
            self.snapshot()
        return entry

    def restrict(self, pid: str, *, reason_code: str = "subject_request") -> Entry:
        """Restrict processing (Art. 18): data kept, no purpose allowed until lifted."""
        self._live(pid)
        entry = self.ledger.append("restriction.set", pid, {"reason_code": reason_code})
        self.snapshot()
        return entry

    def lift(self, pid: str) -> Entry:
        """Lift a restriction."""
        if not self._live(pid).restricted:
            raise ValueError(f"subject {pid} is not restricted; nothing to lift")
        entry = self.ledger.append("restriction.lifted", pid, {})
        self.snapshot()
        return entry

    def object(self, pid: str, purposes: Iterable[str] | None = None) -> Entry:
        """Record an objection (Art. 21) to ``purposes`` (all when None)."""
        self._live(pid)
        chosen = list(check_purposes(purposes)) if purposes else list(PURPOSES)
        entry = self.ledger.append("objection", pid, {"purposes": chosen})
        self.snapshot()
        return entry

    def withdraw_objection(self, pid: str, purposes: Iterable[str] | None = None) -> Entry:
        """The subject withdraws an objection."""
        self._live(pid)
        chosen = list(check_purposes(purposes)) if purposes else list(PURPOSES)
        entry = self.ledger.append("objection.withdrawn", pid, {"purposes": chosen})
        self.snapshot()
        return entry

    # -- outputs -------------------------------------------------------------------------------
    def snapshot(self) -> bool:
        """Refresh ``data/registry/consents.parquet``; returns whether it changed.

        Skipped when no subject's state changed since this core last wrote it and the file is
        as written then: every state change sets that subject's ``last_seq`` to the newest seq,
        so (subjects, largest ``last_seq``) identifies the snapshot's content.
        """
        registry = self.registry.refresh()
        key = self._snapshot_key(registry)
        if key is not None and key == self._snapshot_written:
            return False
        changed = write_snapshot(registry, self.paths.consents)
        self._snapshot_written = self._snapshot_key(registry)
        if changed:
            log.info("consent snapshot refreshed (as of ledger seq %d)", self.registry.as_of_seq)
        return changed

    def _snapshot_key(self, registry: Registry) -> tuple[int, int, int, int] | None:
        try:
            st = self.paths.consents.stat()
        except FileNotFoundError:
            return None
        # changed_seq is the largest last_seq of any subject.
        return (len(registry), registry.changed_seq, st.st_mtime_ns, st.st_size)
