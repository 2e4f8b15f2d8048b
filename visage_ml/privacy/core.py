"""One entry point to the privacy core of a project: ledger, registry, vault, snapshot.

CLI commands, HTTP handlers, acquisition and the rights workflows all go through
:class:`PrivacyCore`, so every state change is a signed ledger event and refreshes the consent
snapshot the pipeline reads.

Opening a core checks the ledger against the newest witnessed checkpoints it can find and
refuses a ledger that was rolled back or forked, or whose params.yaml drops a witness the
ledger records (:mod:`visage_ml.privacy.witnessed`); every append through it is witnessed as
``privacy.witness`` asks (narrowing events at once).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visage_ml.config import PURPOSES, ProjectPaths
from visage_ml.io import sha256_bytes
from visage_ml.privacy.certificate import offline_proof
from visage_ml.privacy.consent import (
    ANALYTICS,
    CONSENT_PURPOSES,
    MSG_ANALYTICS_NOT_CONSENT,
    ConsentReceipt,
    check_basis,
    check_purposes,
)
from visage_ml.privacy.datakeys import DataKeys, wrapped_keys_exist
from visage_ml.privacy.keys import CACHE_KEY_FILE, check_pid, new_pid
from visage_ml.privacy.ledger import ROTATION_TYPE, Entry, Ledger, LedgerError
from visage_ml.privacy.records import records_of
from visage_ml.privacy.registry import Decision, Registry, SubjectState
from visage_ml.privacy.snapshot import write_snapshot
from visage_ml.privacy.tombstones import Tombstones, normalise_ref
from visage_ml.privacy.vault import IdentityVault
from visage_ml.privacy.witnessed import (
    Witnessed,
    Witnessing,
    WitnessSet,
    WitnessUnavailableError,
    forget_checks,
    witness_params,
)

log = logging.getLogger(__name__)

# The subkey of a subject's data key that names their consent evidence (see evidence_digest).
EVIDENCE_CONTEXT = b"visage-ml consent evidence v1"


UNKNOWN_SUBJECT = (
    "no subject {pid} in the registry; list subjects with `visage privacy subject list`"
)
ALREADY_ERASED = "subject {pid} was erased; nothing about them can be changed any more"
MSG_NOTHING_TO_WITHDRAW = "subject {pid} has no consent given for {purposes}; nothing to withdraw"
MSG_ALREADY_OBJECTED = "subject {pid} already objects to {purposes}; nothing to record"
MSG_ALREADY_RESTRICTED = "subject {pid} is already restricted; nothing to record"
MSG_NOT_OBJECTED = "subject {pid} does not object to {purposes}; nothing to lift"


class NothingChangedError(ValueError):
    """A rights event that would change nothing about the subject, refused before anything is
    appended; ``code`` names how things stand (the API's error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownSubjectError(KeyError):
    """The pid is not in the registry."""

    def __str__(self) -> str:
        return UNKNOWN_SUBJECT.format(pid=self.args[0])


@dataclass(frozen=True)
class NewSubject:
    """A subject to register: identity data goes to the vault only, never the ledger.

    ``aliases`` are other references the same person may already be recorded under (an
    importer that changed how it names a person): looked up, never recorded.
    """

    external_ref: str | None = None
    contact: str | None = None
    pid: str | None = None
    aliases: tuple[str, ...] = ()


class PrivacyCore:
    """The privacy core of the project at ``paths``.

    Parameters
    ----------
    paths
        The project.
    check
        Check the ledger against its witnessed checkpoints now (fail closed). Only the
        diagnostics (`visage privacy verify-ledger`) open a core without it.

    Raises
    ------
    LedgerRollbackError
        The ledger is shorter than, or forked from, a checkpoint it signed, or params.yaml
        drops a witness it records (:class:`~visage_ml.privacy.witnessed.WitnessSetError`).
    """

    def __init__(self, paths: ProjectPaths, *, check: bool = True) -> None:
        self.paths = paths
        self._snapshot_written: tuple[int, int, int, int] | None = None
        if check:
            self.check_ledger()

    @cached_property
    def ledger(self) -> Ledger:
        ledger = Ledger(
            self.paths.ledger,
            key_path=self.paths.signing_key,
            public_key_path=self.paths.ledger_public_key,
        )
        ledger.after_append = self._after_append
        ledger.genesis = lambda: self.witnessing.genesis_events()
        return ledger

    @cached_property
    def registry(self) -> Registry:
        return Registry(
            self.paths.ledger,
            public_key_path=self.paths.ledger_public_key,
            mac_key_path=self.paths.secrets / CACHE_KEY_FILE,
            on_replaced=self._ledger_replaced,
        )

    @cached_property
    def witnessing(self) -> Witnessing:
        """Witnessed checkpoints of the ledger (``privacy.witness`` of params.yaml)."""
        return Witnessing(self.paths, witness_params(self.paths), self.ledger)

    # -- the ledger's integrity ----------------------------------------------------------------
    def check_ledger(self) -> list[dict[str, Any]]:
        """Check the ledger against every witnessed checkpoint found; see
        :meth:`~visage_ml.privacy.witnessed.Witnessing.check` (raises on rollback or fork)."""
        return self.witnessing.check()

    def checkpoint_and_witness(self) -> Witnessed:
        """Sign a checkpoint of the whole ledger and have the witnesses cosign it now."""
        return self.witnessing.checkpoint_and_witness()

    def offline_proof(self, entry: Entry) -> dict[str, Any]:
        """The offline proof bundle of ``entry`` (what an erasure certificate carries, see
        :func:`~visage_ml.privacy.certificate.offline_proof`) under the checkpoint the entry
        was witnessed under when appended, kept
        (:meth:`~visage_ml.privacy.witnessed.Witnessing.witnessed_with`): its cosignatures date
        the entry, however late the certificate is made. Without one (the witnesses did not
        answer then), under a checkpoint witnessed now, whose cosignatures date nothing
        earlier."""
        witnessed = self.witnessing.witnessed_with(entry.seq)
        if witnessed is None:
            now = self.checkpoint_and_witness()
            # Its settling may have kept the entry's own checkpoint, from a witness that could
            # not be read a moment before and was asked to cosign this newer tree.
            witnessed = self.witnessing.witnessed_with(entry.seq) or now
        if witnessed.tree is None or witnessed.tree.size <= entry.seq:
            raise LedgerError(f"the witnessed checkpoint does not cover entry {entry.seq}")
        return offline_proof(
            entry,
            note=witnessed.note,
            path=witnessed.tree.inclusion_proof(entry.seq),
            log_key=self.ledger.signing_key().public_key(),
            key_history=self.ledger.key_chain().fingerprints(),
            witnesses=self.witnessing.cosigners_of(witnessed.note),
        )

    def evidence_digest(self, pid: str, data: bytes) -> str:
        """What a consent receipt records of the subject's own evidence (e.g. the signed form):
        an HMAC-SHA256 under a subkey of their data key, so that once the erasure destroys the
        key the ledger's digest no longer finds them from a copy of the form.

        Raises
        ------
        UnknownSubjectError
            ``pid`` is not on record (no data key is made for it).
        """
        self.subject(pid)
        return self._evidence_mac(self.data_keys.key(pid, create=True), data)

    @staticmethod
    def _evidence_mac(data_key: bytes, data: bytes) -> str:
        subkey = hmac.new(data_key, EVIDENCE_CONTEXT, "sha256").digest()
        return hmac.new(subkey, data, "sha256").hexdigest()

    def evidence_matches(self, pid: str, data: bytes) -> bool:
        """Whether ``data`` is the evidence a consent or basis of ``pid`` recorded: their own
        (the keyed digest, while they are on record) or an import's (its SHA-256). Writes
        nothing."""
        wanted = {sha256_bytes(data)}
        if self.registry.get(pid) is not None and self.data_keys.exists(pid):
            wanted.add(self._evidence_mac(self.data_keys.key(pid), data))
        for e in self.ledger.entries(containing=pid.encode()):
            if e.pid != pid or e.type not in ("consent.given", "basis.recorded"):
                continue
            payload = e.payload if isinstance(e.payload, Mapping) else {}
            receipt = payload.get("receipt")
            recorded = {payload.get("evidence_hash")}
            if isinstance(receipt, Mapping):
                recorded.add(receipt.get("evidence_hash"))
            if recorded & wanted:
                return True
        return False

    def _after_append(self, entries: list[Entry]) -> None:
        try:
            self.witnessing.after_append(entries)
        except WitnessUnavailableError:
            # The event is recorded and in force: the pipeline's consent snapshot must say so
            # even though the command fails for want of cosignatures.
            self.snapshot()
            raise

    def _ledger_replaced(self) -> None:
        # The registry saw the ledger shrink under it: a rollback unless the checkpoints agree.
        forget_checks(self.paths.ledger)
        self.witnessing.check()

    def rotate_ledger_key(self) -> tuple[Entry, list[str]]:
        """Replace the ledger key: a ``ledger.key_rotated`` entry signed by the old key and
        vouched for by the new one, then every witness is shown the entry and pins the new key.

        Returns
        -------
        tuple
            The rotation entry and the witnesses that did not accept it yet (retry with
            :meth:`announce_rotation`).
        """
        self.check_ledger()
        if not self.paths.ledger.exists() or not self.paths.ledger.stat().st_size:
            raise LedgerError("the ledger is empty: there is no key to rotate yet")
        new = Ed25519PrivateKey.generate()
        entry, previous = self.ledger.rotate_key(new)
        _, problems = self.witnessing.announce_rotation(entry, previous)
        if not problems:
            self.ledger.previous_key_path.unlink(missing_ok=True)
        return entry, problems

    def remove_witnesses(
        self,
        names: Sequence[str],
        *,
        quorum: int | None = None,
        reason: str,
        lost_for_good: bool = False,
    ) -> tuple[WitnessSet, Witnessed, dict[str, bool]]:
        """Record on the ledger that witnesses left params.yaml, or that its quorum is lower;
        see :meth:`~visage_ml.privacy.witnessed.Witnessing.remove` (returns the record, its
        checkpoint and whether each leaving witness cosigned it)."""
        return self.witnessing.remove(
            names, quorum=quorum, reason=reason, lost_for_good=lost_for_good
        )

    def announce_rotation(self) -> list[str]:
        """Show every witness the last key rotation again (after one was unreachable)."""
        previous_path = self.ledger.previous_key_path
        if not previous_path.exists():
            raise LedgerError(
                "no rotation waits for its witnesses (secrets/ledger.key.previous is gone)"
            )
        previous = serialization.load_pem_private_key(previous_path.read_bytes(), password=None)
        if not isinstance(previous, Ed25519PrivateKey):
            raise LedgerError(f"{previous_path} is not an Ed25519 private key")
        entry = last_rotation(self.ledger)
        if entry is None:
            raise LedgerError("the ledger holds no key rotation")
        _, problems = self.witnessing.announce_rotation(entry, previous)
        self.ledger.publish_keys()  # a rotation a crash cut short may have left it incomplete
        if not problems:
            previous_path.unlink(missing_ok=True)
        return problems

    @cached_property
    def vault(self) -> IdentityVault:
        """Opened on first use: needs the master key."""
        return IdentityVault(
            self.paths.vault,
            self.paths.master_key,
            create_master=not wrapped_keys_exist(self.paths),
        )

    @cached_property
    def data_keys(self) -> DataKeys:
        """The per-subject data keys sealing biometric files (opened on first use)."""
        return DataKeys.for_project(self.paths)

    @cached_property
    def tombstones(self) -> Tombstones:
        """Keyed tombstones of erased subjects (:mod:`visage_ml.privacy.tombstones`)."""
        return Tombstones.open(self.paths)

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

    def added_at(self, pid: str) -> str | None:
        """When ``pid`` was added to the registry: the time of its ``subject.added`` entry
        (read from near that seq, not from the first entry); None when the ledger lacks it."""
        seq = self.subject(pid).added_seq
        ledger = self.ledger
        start = ledger.offset_before(seq)
        for entry in ledger.entries(start_offset=start, containing=pid.encode()):
            if entry.seq == seq:
                return entry.time
            if entry.seq > seq:
                break
        return None

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
        (re-import of the same person). References that compare equal under
        :func:`~visage_ml.privacy.tombstones.normalise_ref` (case, spaces, NFC/NFD, zero-width
        characters) are one subject, in the vault and within this call; the vault records the
        first spelling. A subject none of whose spellings is in the vault but one of whose
        ``aliases`` is keeps that alias's pid (the first alias found; the record is unchanged).
        """
        pids: list[str] = []
        records: dict[str, dict[str, Any]] = {}
        events: list[tuple[str, str | None, Mapping[str, Any]]] = []
        seen: dict[str, str] = {}
        refs = [r for s in subjects if s.external_ref for r in (s.external_ref, *s.aliases)]
        known = self.vault.find_many(refs) if refs else {}
        # Vault records whose subject.added never reached the ledger (a crash between the two
        # writes below): such a subject is registered under its pid now.
        states = self.registry.states() if known else {}
        orphans = {pid for pid in known.values() if pid not in states}
        for s in subjects:
            existing = None
            if s.external_ref:
                existing = seen.get(normalise_ref(s.external_ref)) or next(
                    (known[r] for r in (s.external_ref, *s.aliases) if r in known), None
                )
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
                seen[normalise_ref(s.external_ref)] = pid
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
        if ANALYTICS in receipt.purposes:
            raise ValueError(MSG_ANALYTICS_NOT_CONSENT)
        # Every consent names purposes of the records of processing, with a basis they allow.
        records_of(self.paths).check_basis(receipt.purposes, receipt.legal_basis)
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
        records_of(self.paths).check_basis(payload["purposes"], payload["legal_basis"])
        entries = self.ledger.append_many([("basis.recorded", pid, payload) for pid in pids])
        if snapshot:
            self.snapshot()
        return entries

    def withdraw_consent(
        self, pid: str, purposes: Iterable[str] | None = None, *, snapshot: bool = True
    ) -> Entry:
        """Withdraw consent for ``purposes`` (every purpose a consent is given for when None),
        Art. 7(3). Analytics is refused (:data:`~visage_ml.privacy.consent.
        MSG_ANALYTICS_NOT_CONSENT`): no consent to it is asked, and a withdrawal could not
        change what it counts."""
        st = self._live(pid)
        # An empty list names no purpose (refused): only None means every purpose.
        chosen = list(CONSENT_PURPOSES if purposes is None else check_purposes(purposes))
        if ANALYTICS in chosen:
            raise ValueError(MSG_ANALYTICS_NOT_CONSENT)
        # Refused when no purpose named has a basis given now (never given, withdrawn, expired):
        # a signed withdrawal that changes nothing would read as an act of the subject's.
        if not any((perm := st.permissions.get(p)) is not None and perm.granted for p in chosen):
            message = MSG_NOTHING_TO_WITHDRAW.format(pid=pid, purposes=", ".join(chosen))
            raise self._unchanged("not_consented", message, snapshot=snapshot)
        entry = self.ledger.append("consent.withdrawn", pid, {"purposes": chosen})
        if snapshot:
            self.snapshot()
        return entry

    def check_unrestricted(self, pid: str) -> None:
        """Refuse (:class:`NothingChangedError`) a restriction of a subject already restricted:
        a second ``restriction.set`` would tell recipients (Art. 19) of a change never made."""
        if self._live(pid).restricted:
            raise self._unchanged("already_restricted", MSG_ALREADY_RESTRICTED.format(pid=pid))

    def restrict(self, pid: str, *, reason_code: str = "subject_request") -> Entry:
        """Restrict processing (Art. 18): data kept, no purpose allowed until lifted; refused
        when it is restricted already (:meth:`check_unrestricted`)."""
        self.check_unrestricted(pid)
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

    def objection_purposes(self, pid: str, purposes: Iterable[str] | None = None) -> list[str]:
        """The purposes an objection to ``purposes`` (all when None) records; refused
        (:class:`NothingChangedError`) when the subject already objects to each of them."""
        st = self._live(pid)
        chosen = list(PURPOSES if purposes is None else check_purposes(purposes))
        if st.objected.issuperset(chosen):
            message = MSG_ALREADY_OBJECTED.format(pid=pid, purposes=", ".join(chosen))
            raise self._unchanged("already_objected", message)
        return chosen

    def _unchanged(self, code: str, message: str, *, snapshot: bool = True) -> NothingChangedError:
        """The refusal of an event that changes nothing. The event may be on the ledger from a
        call that died before refreshing the snapshot: the repeated call still refreshes it
        (nothing is written when it is current)."""
        if snapshot:
            self.snapshot()
        return NothingChangedError(code, message)

    def object(self, pid: str, purposes: Iterable[str] | None = None) -> Entry:
        """Record an objection (Art. 21) to ``purposes`` (all when None); refused when it would
        add none (:meth:`objection_purposes`)."""
        chosen = self.objection_purposes(pid, purposes)
        entry = self.ledger.append("objection", pid, {"purposes": chosen})
        self.snapshot()
        return entry

    def withdraw_objection(self, pid: str, purposes: Iterable[str] | None = None) -> Entry:
        """The subject withdraws an objection to ``purposes`` (all when None); refused
        (:class:`NothingChangedError`) when they object to none of them."""
        st = self._live(pid)
        chosen = list(PURPOSES if purposes is None else check_purposes(purposes))
        # A lift of no standing objection would read as an act of the subject's that changed
        # nothing.
        if not st.objected.intersection(chosen):
            message = MSG_NOT_OBJECTED.format(pid=pid, purposes=", ".join(chosen))
            raise self._unchanged("not_objected", message)
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

    def record_store(self, type_: str, payload: Mapping[str, Any]) -> Entry:
        """Sign a ``store.*`` entry (no pid): the recorder :mod:`visage_ml.stack.stores` is
        handed, as the layers below the ledger's cannot sign."""
        if not type_.startswith("store."):
            raise ValueError(f"{type_} is not a store event")
        return self.ledger.append(type_, None, payload)


def store_recorder(paths: ProjectPaths) -> Callable[[str, Mapping[str, Any]], Entry]:
    """:meth:`PrivacyCore.record_store` of the project at ``paths``, the core opened only when
    a store is recorded (the first write to it): for callers that hold no core."""

    def record(type_: str, payload: Mapping[str, Any]) -> Entry:
        return PrivacyCore(paths).record_store(type_, payload)

    return record


def last_rotation(ledger: Ledger) -> Entry | None:
    """The ledger's last ``ledger.key_rotated`` entry, if any."""
    found = None
    for entry in ledger.entries(containing=f'"{ROTATION_TYPE}"'.encode()):
        if entry.type == ROTATION_TYPE:
            found = entry
    return found
