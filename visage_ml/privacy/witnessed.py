"""The project's side of witnessing: signed checkpoints of the ledger, cosigned by witnesses, and
the fail-closed check every process runs when it opens the ledger.

A checkpoint (:mod:`visage_ml.privacy.checkpoint`) names the ledger by its *origin*
(``privacy.witness.origin``, by default ``visage-ml.local/ledger/<hash of the ledger's first
key>``: the same wherever a copy of the project is put, so that a pre-erasure backup restored
into another folder, or a history re-signed with a stolen key, still meets the witnesses' newer
checkpoints) and commits to its RFC 9162 Merkle root at a size; the ledger key signs it, and
each configured witness (:mod:`visage_ml.privacy.witness`) checks a consistency proof from the
size it saw last and cosigns. The cosigned note is kept in ``privacy/checkpoints/latest``; the
witnesses keep their own copy.

- :meth:`Witnessing.after_append` runs after every append of the privacy core: an event that
  narrows processing (:data:`NARROWING_EVENTS`) is covered by a witnessed checkpoint before the
  append returns, so before any command or HTTP request reports success; other events at least
  every ``every_entries`` entries or ``every_seconds`` seconds. The checkpoint an
  ``erasure.completed`` entry was cosigned under is kept (``privacy/checkpoints/kept/<seq>``,
  :meth:`Witnessing.witnessed_with`): its certificate carries it, however late it is made. A
  process killed once the witnesses cosigned leaves a mark, and the next checkpoint or
  certificate keeps it from the witnesses' copies; it goes once the certificate is issued
  (:meth:`Witnessing.prune_kept`).
- :meth:`Witnessing.check` is the open check. It gathers every checkpoint it can find (the
  local one, each directory witness's, each HTTP witness's), keeps those the ledger's own keys
  signed, and stops with :class:`LedgerRollbackError` when the ledger is shorter than one of
  them or its root at that size differs (a fork). It also asks each witness which log the
  project's folder is bound to (:meth:`~visage_ml.privacy.witness.Witness.bind`): a ledger
  rebuilt in place under a brand-new key is another log, and stops there too. The check costs
  one root over the leaf-hash cache; a process repeats it only when the ledger or a checkpoint
  changed.
- The ledger records its witnesses: a ``witness.set`` entry (:class:`WitnessSet`) names each
  configured witness (its cosignature key; the path or URL as configured) and the quorum. A new
  ledger begins with it (:meth:`Witnessing.genesis_events`, so that no non-empty prefix lacks
  it); an older ledger gains it at its next checkpoint,
  and so does every checkpoint after params.yaml gained a witness or asks more cosignatures;
  the checkpoint covers it, so the witnesses see it. A recorded witness is its key: a directory
  witness whose folder (``default``: ``$VISAGE_WITNESS_DIR``) holds no witness or another key
  is not the recorded one (:meth:`RecordedWitness.same`). The open check refuses
  (:class:`WitnessSetError`) while a witness of the ledger's latest record is missing from
  params.yaml or not in its folder, or the quorum there is lower: dropping a witness, and with
  it the copy that shows a truncation, is a signed ledger event (:meth:`Witnessing.remove`,
  ``visage privacy remove-witness``), never an edit of params.yaml or of an environment
  variable.
- The open check reads the checkpoints of every witness it can reach that may hold one
  (:meth:`Witnessing.readers`): the configured ones, every one any ``witness.set`` entry of the
  ledger ever named (a signed record that drops them, or a cut back to before the record that
  added them, does not stop their copies being read), and the default directory witness when
  its folder exists (a ledger cut back to before its first record names none). What is left:
  someone with the disk and the ledger key who also deletes, or replaces with an older copy,
  every witness folder they can reach (or removes on the record a witness that cannot be
  reached); for a ledger older than its first record, a cut to before it with the default
  witness folder hidden needs no key, and neither does a cut past a directory witness whose
  state for this log (``logs/<hash>/state.json``) is deleted or garbled while its key files
  stay (read as having cosigned nothing, or skipped). A witness on another host, whose copy an
  auditor compares (``visage witness status``), remains the proof.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visage_ml.config import ProjectPaths, WitnessParams, WitnessSpec, load_params
from visage_ml.faults import crash_point
from visage_ml.io import atomic_write_bytes, file_lock, fsync_dir
from visage_ml.privacy import merkle
from visage_ml.privacy.checkpoint import (
    ED25519,
    Checkpoint,
    Note,
    NoteError,
    Signature,
    Signer,
    Verifier,
    cosignature_timestamp,
    cosigner,
    parse_checkpoint,
    parse_note,
    verified_cosigners,
    verify_note,
)
from visage_ml.privacy.clock import WitnessTimes
from visage_ml.privacy.keys import load_public_key
from visage_ml.privacy.ledger import (
    Entry,
    Ledger,
    LedgerError,
    LedgerFold,
    first_rotation_in_file,
    held_lines,
    line_hash_at,
    line_spans,
    raw_key,
)
from visage_ml.privacy.witness import (
    DirectoryWitness,
    HttpWitness,
    Witness,
    WitnessClient,
    WitnessError,
    binding_text,
    default_witness_dir,
    project_id,
)

log = logging.getLogger(__name__)

# Events after which the subject may be processed less: witnessed before success is reported.
NARROWING_EVENTS: frozenset[str] = frozenset(
    {
        "consent.withdrawn",
        "consent.expired",
        "restriction.set",
        "objection",
        "erasure.requested",
        "erasure.completed",
    }
)
# Events whose witnessed checkpoint is kept (privacy/checkpoints/kept/<seq>): the certificate
# of an erasure carries the checkpoint its completion was cosigned under, whose cosignature
# times date it, even when the certificate is made later (the process died after the
# completion was witnessed, and `visage privacy resume` ran hours after), not one cosigned then.
KEPT_EVENTS: frozenset[str] = frozenset({"erasure.completed"})
ORIGIN_PREFIX = "visage-ml.local/ledger/"
LATEST = "latest"
KEPT = "kept"
# kept/<seq>.pending: the checkpoint asked of the witnesses for entry seq, until it is kept.
PENDING = ".pending"
# What kept/ holds for an entry: <seq>, <seq>.pending, and atomic writes' temporary files.
_KEPT_NAME = re.compile(r"\.?(\d+)(?:\.pending)?(?:\.[^.]+\.tmp)?")
# How long an HTTP witness's answer to "your latest checkpoint?" is reused by a process.
REMOTE_TTL_SECONDS = 60.0
# An HTTP witness no longer configured (removed on the record) is read on a short timeout, and
# its silence is remembered on disk for an hour (privacy/checkpoints/silent.json), so that one
# decommissioned host that hangs does not hold up every CLI command and stage. Best effort, as
# for any witness that cannot be reached: the configured witnesses are read as before.
REMOVED_TIMEOUT_SECONDS = 1.0
SILENT_RETRY_SECONDS = 3600.0
SILENT = "silent.json"

MSG_ONLY_DIRECTORY_WITNESSES = (
    "every witness of the ledger (privacy.witness.witnesses) is a folder, which this host's "
    "operator can put back from an older copy: a certificate proves nothing against that "
    "operator. Add a witness on a host someone else runs (docs/deploy.md, \"The ledger's "
    'witnesses")'
)


def independence_note(params: WitnessParams) -> str | None:
    """What to say when no witness is run by someone else (every one is a directory)."""
    if all(w.kind == "directory" for w in params.witnesses):
        return MSG_ONLY_DIRECTORY_WITNESSES
    return None


MSG_SHORTER = (
    "ledger rollback: {ledger} holds {n} entries, but the checkpoint witnessed by {source} "
    "covers {size} (root {root}, origin {origin}). Entries were removed or an old copy was "
    "restored. Nothing is processed until this is resolved: restore privacy/ledger.jsonl from "
    "a backup holding at least {size} entries (`visage privacy verify-ledger` checks it), "
    "then run again."
)
MSG_FORK = (
    "ledger fork: the first {size} entries of {ledger} do not have the root {root} that the "
    "checkpoint witnessed by {source} commits to (origin {origin}); they hash to {actual}. The "
    "history was rewritten or an entry was removed or altered. Nothing is processed until this "
    "is resolved: restore privacy/ledger.jsonl from a backup consistent with that checkpoint "
    "(`visage privacy verify-ledger` names the first bad entry)."
)
MSG_FOREIGN = (
    "the checkpoint witnessed by {source} (size {size}, origin {origin}) is not signed by any "
    "key of this ledger's key history ({keys}): the ledger, privacy/ledger.pub or the "
    "checkpoint was replaced. Nothing is processed; restore privacy/ledger.jsonl and "
    "privacy/ledger.pub from a backup."
)
MSG_UNREADABLE = (
    "the checkpoint from {source} is unreadable ({why}); restore privacy/checkpoints/latest "
    "from a backup, or remove it if this project's witnesses hold a newer one"
)
MSG_NOT_WITNESSED = (
    "ledger entries up to seq {seq} are recorded but not witnessed: {got} of {needed} "
    "cosignatures ({problems}). The change is in force locally; run `visage privacy "
    "checkpoint` once the witnesses answer (README, 'Witnesses')."
)
MSG_WITNESS_AHEAD = (
    "ledger rollback: {source} cosigned a tree of {size} entries for this ledger, which has only "
    "{n}. Restore privacy/ledger.jsonl from a backup holding at least {size} entries."
)


MSG_REBUILT = (
    "ledger replaced: {source} binds this project folder to the log {bound}, but the ledger "
    "here is the log {origin} (named after another first key). The ledger was rebuilt under a "
    "new key, or the project re-created in this folder. Nothing is processed until this is "
    "resolved: restore privacy/ (ledger.jsonl, ledger.pub, checkpoints/) and "
    "secrets/ledger.key from a backup of the log {bound}; if the project was re-created on "
    "purpose and holds none of the old personal data, the witness's operator releases it: "
    "`visage witness release {root}`."
)


MSG_WITNESS_DROPPED = (
    "witness {name} ({where}; recorded in the ledger at entry {seq}) is not in params.yaml "
    "privacy.witness.witnesses. Without it a rollback of the ledger could go unnoticed, so "
    "nothing is processed: put it back, or remove it on the record with `visage privacy "
    "remove-witness {name} --reason CODE` (README, 'Witnesses')."
)
MSG_WITNESS_NOT_THERE = (
    "witness {name} ({where}; recorded in the ledger at entry {seq}) is not in {folder}: "
    "{found}. Without its checkpoints a rollback of the ledger could go unnoticed, so nothing "
    "is processed: {fix}, or record the change with `visage privacy remove-witness {name} "
    "--reason CODE` (README, 'Witnesses')."
)
FOUND_NO_WITNESS = "that folder holds no witness"
FOUND_OTHER_WITNESS = "that folder holds another witness, {other}"
FIX_DEFAULT_DIR = (
    "point VISAGE_WITNESS_DIR (unset: ~/.local/share/visage-ml/witness) back at the folder "
    "holding key {name}"
)
FIX_PATH = (
    "put the folder holding key {name} back at {folder}, or set its path in params.yaml "
    "privacy.witness.witnesses"
)
MSG_QUORUM_LOWERED = (
    "privacy.witness.quorum in params.yaml asks for {got} cosignature(s), fewer than the "
    "{needed} recorded in the ledger at entry {seq}. Nothing is processed: put it back, or "
    "lower it on the record with `visage privacy remove-witness --quorum {quorum} --reason "
    "CODE` (README, 'Witnesses')."
)
MSG_NONE_RECORDED = (
    "the ledger records no witnesses yet (it gets its record at its first checkpoint with a "
    "witness): nothing to remove; edit params.yaml privacy.witness as you need"
)
MSG_NOT_RECORDED = (
    "{name} is not a witness the ledger records; it records: {recorded} "
    "(`visage privacy verify-ledger` shows them)"
)
MSG_STILL_CONFIGURED = (
    "witness {name} is still in params.yaml privacy.witness.witnesses: take it out there "
    "first, then run this again (it is asked to cosign the record of its removal)"
)
MSG_QUORUM_NOT_CONFIGURED = (
    "params.yaml privacy.witness.quorum is {configured}, not {quorum}: set it there first, "
    "then run this again"
)
MSG_NOTHING_TO_RECORD = (
    "nothing to record: name the witnesses taken out of params.yaml, or pass --quorum with the "
    "lower privacy.witness.quorum set there"
)
MSG_REMOVE_UNREADABLE = (
    "witness {name} cannot be read now ({why}). Its copy may hold a checkpoint no witness left "
    "holds (one that missed its quorum, say), and removed on the record it is read only when "
    "found again, so nothing is recorded: bring it back (mount its volume, start its host, "
    "point its path at its folder) and run this again. Only if it is lost for good, run this "
    "again with --lost-for-good: the ledger then records it as lost, and `visage privacy "
    "verify-ledger` says, for good, that a rollback made before this removal shows only "
    "through a newer checkpoint of a witness left."
)
MSG_WITNESS_DAMAGED = (
    "{where} cannot show what it cosigned for this ledger: {why}. Its checkpoints are what "
    "would show a rollback of the ledger, so nothing is processed: if its volume is at fault "
    "for now (a stale network mount, say), put it right and run again; else restore that "
    "folder from a backup; if it is lost for good, take the witness out of params.yaml "
    "privacy.witness.witnesses and run `visage privacy remove-witness {name} --reason CODE "
    "--lost-for-good` (README, 'Witnesses')."
)
MSG_NOT_LOST = (
    "--lost-for-good: every witness removed can be read ({names}); run this again without it"
)


class LedgerRollbackError(LedgerError):
    """The ledger is shorter than, or inconsistent with, a checkpoint it signed (fail closed)."""


class WitnessSetError(LedgerRollbackError):
    """params.yaml drops a witness the ledger records, or lowers its quorum (fail closed): the
    rollback check would no longer read that witness's checkpoint."""


class WitnessUnavailableError(LedgerError):
    """Fewer witnesses cosigned a checkpoint than the quorum asks for."""


def project_origin(
    paths: ProjectPaths, params: WitnessParams, *, ledger_path: Path | None = None
) -> tuple[str, bool]:
    """The origin line of the project's checkpoints and whether it is final.

    ``params.origin`` when set; else named after the ledger's first key (the old key of its
    first ``ledger.key_rotated`` entry, else ``ledger.pub``), which no move, copy, restore or
    re-signed history changes: every copy of the ledger is one log to the witnesses. Before
    the ledger has a key, the project folder stands in (not final: nothing is signed yet).
    """
    if params.origin:
        return params.origin, True
    first = first_rotation_in_file(Path(ledger_path or paths.ledger))
    if first is None and paths.ledger_public_key.is_file():
        first = raw_key(load_public_key(paths.ledger_public_key))
    if first is not None:
        return ORIGIN_PREFIX + hashlib.sha256(first).hexdigest()[:16], True
    digest = hashlib.sha256(str(Path(paths.root).resolve()).encode("utf-8")).hexdigest()
    return ORIGIN_PREFIX + digest[:16], False


def witness_folder(spec: WitnessSpec) -> Path:
    """The folder of a directory witness (``default``: :func:`default_witness_dir`)."""
    if spec.path == "default":
        return default_witness_dir()
    return Path(os.path.expandvars(spec.path)).expanduser()


def make_client(spec: WitnessSpec, *, timeout: float) -> WitnessClient:
    """The client of one configured witness."""
    if spec.kind == "directory":
        return DirectoryWitness(witness_folder(spec))
    return HttpWitness(spec.url, spec.key, timeout=timeout)


WITNESS_SET = "witness.set"
_SET_MARK = b'"type":"witness.set"'


@dataclass(frozen=True)
class RecordedWitness:
    """One witness as a ``witness.set`` entry records it.

    ``where`` is the path as configured in params.yaml (a directory witness: ``default`` stays
    ``default``) or the URL (an http witness); ``vkey`` its cosignature key ("" for a directory
    witness whose folder could not be read). A witness is its key: a directory witness is the
    recorded one only while its folder, as found, holds the recorded key, so ``default``
    pointed by ``$VISAGE_WITNESS_DIR`` at an empty folder, or at another witness, is a witness
    gone (:meth:`same`).
    """

    kind: str
    where: str
    vkey: str

    @property
    def name(self) -> str:
        """What messages call it and ``visage privacy remove-witness`` takes: its key's name."""
        return self.vkey.split("+", 1)[0] if self.vkey else self.where

    @property
    def spec(self) -> WitnessSpec:
        if self.kind == "http":
            return WitnessSpec(kind="http", url=self.where, key=self.vkey)
        return WitnessSpec(kind="directory", path=self.where)

    def same(self, later: RecordedWitness) -> bool:
        """Whether ``later`` (as configured now, or in a later record) is this recorded witness:
        the same key; a directory witness recorded without one (its folder could not be read
        then), the same path as configured. A directory witness configured at the same path
        whose folder holds no key, or another one, is not."""
        if self.kind != later.kind:
            return False
        if self.vkey:
            return self.vkey == later.vkey
        return self.kind == "directory" and self.where == later.where

    def describe(self) -> str:
        if self.kind == "directory" and self.where == "default":
            return "the default directory witness"
        return f"{self.kind} witness {self.where}"

    def answers_to(self, text: str) -> bool:
        return text in {self.name, self.vkey, self.where}

    def to_payload(self) -> dict[str, str]:
        place = "path" if self.kind == "directory" else "url"
        return {"kind": self.kind, place: self.where, "vkey": self.vkey}

    @classmethod
    def from_payload(cls, item: Mapping[str, Any]) -> RecordedWitness:
        kind = str(item["kind"])
        return cls(kind, str(item["path" if kind == "directory" else "url"]), str(item["vkey"]))


@dataclass(frozen=True)
class WitnessSet:
    """A ``witness.set`` entry: the witnesses and quorum in force from entry ``seq`` on."""

    seq: int
    time: str
    actor: str | None
    witnesses: tuple[RecordedWitness, ...]
    quorum: int
    reason: str = ""
    lost: tuple[RecordedWitness, ...] = ()  # removed by this record while unreadable

    @property
    def needed(self) -> int:
        """Cosignatures a checkpoint needs (quorum 0: every witness)."""
        return self.quorum or len(self.witnesses)

    @staticmethod
    def payload(
        witnesses: Sequence[RecordedWitness],
        quorum: int,
        reason: str = "",
        lost: Sequence[RecordedWitness] = (),
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"witnesses": [w.to_payload() for w in witnesses], "quorum": quorum}
        if reason:
            out["reason"] = reason
        if lost:
            out["lost"] = [w.to_payload() for w in lost]
        return out

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> WitnessSet:
        payload = entry["payload"]
        return cls(
            seq=int(entry["seq"]),
            time=str(entry["time"]),
            actor=entry.get("actor"),
            witnesses=tuple(RecordedWitness.from_payload(w) for w in payload["witnesses"]),
            quorum=int(payload["quorum"]),
            reason=str(payload.get("reason", "")),
            lost=tuple(RecordedWitness.from_payload(w) for w in payload.get("lost") or ()),
        )


def witness_history(sets: Sequence[WitnessSet]) -> list[dict[str, Any]]:
    """What each ``witness.set`` entry changed (``visage privacy verify-ledger`` shows it)."""
    out: list[dict[str, Any]] = []
    before: tuple[RecordedWitness, ...] = ()
    for s in sets:
        out.append(
            {
                "seq": s.seq,
                "time": s.time,
                "actor": s.actor,
                "witnesses": [w.name for w in s.witnesses],
                "quorum": s.quorum,
                "needed": s.needed,
                "added": [w.name for w in s.witnesses if not any(b.same(w) for b in before)],
                "removed": [b.name for b in before if not any(b.same(w) for w in s.witnesses)],
                "reason": s.reason,
                "lost": [w.name for w in s.lost],
            }
        )
        before = s.witnesses
    return out


@dataclass
class Witnessed:
    """A checkpoint of the ledger, signed by its key and cosigned by witnesses."""

    checkpoint: Checkpoint
    note: bytes
    cosigners: list[str] = field(default_factory=list)
    tree: merkle.MerkleTree | None = None


# Process-wide memory of checks that passed: (ledger inode, bytes covered, hash of the line
# ending there, digests of the checkpoints checked). A check repeats only when that changed.
_CHECKED: dict[str, tuple[int, int, str, frozenset[str]]] = {}
_REMOTE: dict[tuple[str, str], tuple[float, bytes | None]] = {}
_BOUND: set[tuple[str, str, str]] = set()  # (witness, project, origin) bound by this process
_MEMO_LOCK = threading.Lock()


class Witnessing:
    """Witnessed checkpoints of the ledger of the project at ``paths``.

    Parameters
    ----------
    paths
        The project.
    params
        ``privacy.witness`` of its parameters.
    ledger
        Its ledger.
    """

    def __init__(self, paths: ProjectPaths, params: WitnessParams, ledger: Ledger) -> None:
        self.paths = paths
        self.params = params
        self.ledger = ledger
        self._origin: str | None = None
        self._clients: list[WitnessClient] | None = None
        self._latest_cache: tuple[tuple[int, int], Checkpoint, float] | None = None
        self._times_cache: tuple[tuple[int, int, int], dict[str, datetime]] | None = None
        # When the next checkpoint is due on cadence: (ledger size, time.monotonic()).
        self._due: tuple[int, float] | None = None
        self.latest_path = paths.checkpoints / LATEST
        self.project = project_id(paths.root)

    @property
    def origin(self) -> str:
        """The log's origin line (:func:`project_origin`), fixed once the ledger has a line."""
        if self._origin is None:
            origin, final = project_origin(self.paths, self.params, ledger_path=self.ledger.path)
            if not final:
                return origin
            self._origin = origin
        return self._origin

    @property
    def clients(self) -> list[WitnessClient]:
        if self._clients is None:
            self._clients = [
                make_client(s, timeout=self.params.timeout_seconds) for s in self.params.witnesses
            ]
        return self._clients

    def log_verifier(self, key: Ed25519PrivateKey | None = None) -> Verifier:
        """The ledger key (default: the current signing key) as this log's note verifier."""
        k = key if key is not None else self.ledger.signing_key()
        return Verifier(self.origin, ED25519, k.public_key())

    def _local(self) -> bytes | None:
        try:
            return self.latest_path.read_bytes()
        except FileNotFoundError:
            return None

    def _latest_info(self) -> tuple[Checkpoint, float] | None:
        """The local latest checkpoint and when it was written (cached by file stat)."""
        try:
            st = os.stat(self.latest_path)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._latest_cache is None or self._latest_cache[0] != stamp:
            try:
                cp = parse_checkpoint(parse_note(self.latest_path.read_bytes()).text)
            except (OSError, NoteError):
                return None
            self._latest_cache = (stamp, cp, st.st_mtime)
        return self._latest_cache[1], self._latest_cache[2]

    # -- witnessing ----------------------------------------------------------------------------
    def after_append(self, entries: Sequence[Entry]) -> None:
        """The ledger's append hook: witness now for a narrowing event, else on cadence.

        Raises
        ------
        WitnessUnavailableError
            A narrowing event could not be witnessed (it is recorded and in force).
        LedgerRollbackError
            A witness holds a larger tree than the ledger.
        """
        if all(e.type == WITNESS_SET for e in entries):
            return  # appended by this class, which witnesses it itself
        if any(e.type in NARROWING_EVENTS for e in entries):
            self.checkpoint_and_witness(keep=[e.seq for e in entries if e.type in KEPT_EVENTS])
            return
        if self._due is None:
            info = self._latest_info()
            if info is not None and info[0].origin == self.origin:
                cp, written = info
                age = time.time() - written
                self._due = (
                    cp.size + self.params.every_entries,
                    time.monotonic() + self.params.every_seconds - age,
                )
            else:
                self._due = (0, 0.0)
        if entries[-1].seq + 1 < self._due[0] and time.monotonic() < self._due[1]:
            return
        try:
            self.checkpoint_and_witness()
        except WitnessUnavailableError as exc:
            # Not a narrowing event: it is recorded; the next checkpoint will cover it.
            log.warning("%s", exc)

    def checkpoint_and_witness(
        self,
        *,
        extra_signers: Iterable[Ed25519PrivateKey] = (),
        tell: Sequence[WitnessClient] = (),
        keep: Sequence[int] = (),
    ) -> Witnessed:
        """Sign a checkpoint of the whole ledger and have every witness cosign it.

        When params.yaml has a witness the ledger's record lacks (or asks more cosignatures), a
        ``witness.set`` entry recording them is appended first, so that this checkpoint covers
        it.

        Parameters
        ----------
        extra_signers
            Keys that sign the checkpoint besides the current one (a key rotation: witnesses
            still pin the previous key until they see the rotation).
        tell
            Witnesses asked to cosign besides the configured ones, whose cosignatures count
            for no quorum (those a removal lets go).
        keep
            Entries (of :data:`KEPT_EVENTS`) whose certificate carries this checkpoint: kept in
            ``privacy/checkpoints/kept/<seq>`` once the quorum cosigned it, before it is
            recorded as the latest. A ``<seq>.pending`` mark, written before any witness is
            asked, lets the next checkpoint or certificate keep it from the witnesses' copies
            when the process dies once they cosigned (:meth:`_settle_pending`).

        Returns
        -------
        Witnessed
            The cosigned checkpoint (also written to ``privacy/checkpoints/latest``).

        Raises
        ------
        WitnessUnavailableError
            Fewer cosignatures than ``privacy.witness.quorum`` (0: every witness).
        LedgerRollbackError
            A witness already cosigned a larger tree of this log.
        WitnessSetError
            params.yaml drops a witness the ledger records, or lowers its quorum.
        """
        self.check_witness_set()
        with file_lock(self.paths.checkpoints / ".lock"):
            # Before a witness is asked to cosign a newer tree, which replaces its copy.
            waiting = self._settle_pending()
            self._record_witness_set()
            hashes = self.ledger.leaf_hashes()
            size = len(hashes)
            tree = merkle.tree(hashes)
            cp = Checkpoint(self.origin, size, tree.root())
            local = self._latest_info()
            local_size = local[0].size if local and local[0].origin == self.origin else 0
            if local is not None and local_size:
                # A log never signs a checkpoint inconsistent with one it signed before.
                self._check_extends(local[0], tree)
            text = cp.text()
            key = self.ledger.signing_key()
            signers = [*extra_signers, key]
            note = Note(text, tuple(Signer(self.origin, k).sign(text) for k in signers))
            for seq in keep:
                atomic_write_bytes(self._pending_path(seq), note.to_bytes(), mode=0o644)
            cosigs: list[Signature] = []
            names: list[str] = []
            problems: list[str] = []
            counted = 0
            for i, client in enumerate([*self.clients, *tell]):
                if client.where in waiting:
                    # It could not be read, and is about to cosign a newer tree, which
                    # replaces its copy of the checkpoint a mark waits for: gathered first.
                    waiting.discard(client.where)
                    self._settle_pending(only=client)
                try:
                    sig = self._witness_one(client, tree, note, local_size, signers)
                except WitnessError as exc:
                    problems.append(f"{client.where}: {exc}")
                    continue
                except OSError as exc:  # a directory witness on a volume that is not there
                    problems.append(f"{client.where}: not reachable ({exc.strerror or exc})")
                    continue
                cosigs.append(sig)
                names.append(sig.name)
                counted += i < len(self.clients)
            if keep:
                crash_point("witness:kept:cosigned")
            signed = note.with_signatures(cosigs).to_bytes()
            needed = self.params.quorum or len(self.clients)
            for seq in keep:
                # Kept before it is the latest: a checkpoint that no longer is (another process
                # checkpointed since) is still the one this entry was cosigned under.
                if counted and counted >= needed:
                    atomic_write_bytes(self._kept_path(seq), signed, mode=0o644)
                self._unmark(seq)
            if local is None or local[0].origin != self.origin or size >= local[0].size:
                atomic_write_bytes(self.latest_path, signed, mode=0o644)
            self._remember(hashes, [cp])
        if counted < needed:
            raise WitnessUnavailableError(
                MSG_NOT_WITNESSED.format(
                    seq=size - 1, got=counted, needed=needed, problems="; ".join(problems)
                )
            )
        self._due = (size + self.params.every_entries, time.monotonic() + self.params.every_seconds)
        log.debug("checkpoint of %d entries cosigned by %s", size, ", ".join(names) or "nobody")
        return Witnessed(cp, signed, names, tree)

    def _check_extends(self, previous: Checkpoint, tree: merkle.MerkleTree) -> None:
        """Raise :class:`LedgerRollbackError` unless ``tree`` extends ``previous``."""
        args = {
            "ledger": self.ledger.path,
            "source": self.latest_path,
            "size": previous.size,
            "root": previous.root.hex(),
            "origin": previous.origin,
        }
        if previous.size > tree.size:
            raise LedgerRollbackError(MSG_SHORTER.format(n=tree.size, **args))
        proof = tree.consistency_proof(previous.size) if previous.size < tree.size else []
        if not merkle.verify_consistency(
            previous.size, tree.size, proof, previous.root, tree.root()
        ):
            raise LedgerRollbackError(MSG_FORK.format(actual="(another tree)", **args))

    def _witness_one(
        self,
        client: WitnessClient,
        tree: merkle.MerkleTree,
        note: Note,
        local_size: int,
        signers: Sequence[Ed25519PrivateKey],
    ) -> Signature:
        """One witness's cosignature of ``note`` (``add-checkpoint`` with the right old size);
        ``signers`` signed it, and sign the project's binding too."""
        client.ensure_log(self.log_verifier().vkey)
        self._bind(client, signers)
        known = client.known_size(self.origin)
        old = known if known is not None else local_size
        size = tree.size
        for attempt in range(2):
            if old > size:
                raise LedgerRollbackError(
                    MSG_WITNESS_AHEAD.format(source=client.where, size=old, n=size)
                )
            proof = tree.consistency_proof(old) if 0 < old < size else []
            try:
                sig = client.add_checkpoint(old, proof, note.to_bytes())
            except WitnessError as exc:
                # 409: the witness is at another size than we thought; retry once from there.
                if exc.status == 409 and exc.size is not None and exc.size != old and not attempt:
                    old = exc.size
                    continue
                if exc.status in (409, 422):
                    raise WitnessError(
                        exc.status,
                        f"refused the checkpoint ({exc}): this ledger is not an extension of "
                        "the tree the witness cosigned (a fork or a rollback)",
                    ) from None
                raise
            expected = client.cosigner()
            if expected is None or not verified_cosigners(Note(note.text, (sig,)), [expected]):
                raise WitnessError(502, "returned a cosignature that does not verify")
            return sig
        raise WitnessError(409, "kept changing its size")  # pragma: no cover - loop returns

    def _bind(self, client: WitnessClient, signers: Sequence[Ed25519PrivateKey]) -> None:
        """Bind the project's folder to this log at ``client`` (once per process), signed as
        the checkpoint is: during a key rotation the witness still pins the previous key, which
        signs too (a process that rotated before it bound was refused, and so was every
        checkpoint after)."""
        key = (client.where, self.project, self.origin)
        with _MEMO_LOCK:
            if key in _BOUND:
                return
        text = binding_text(self.project, self.origin)
        note = Note(text, tuple(Signer(self.origin, k).sign(text) for k in signers))
        try:
            client.bind(note.to_bytes())
        except WitnessError as exc:
            if exc.status == 409:
                bound = client.bound(self.project) or "(another log)"
                raise LedgerRollbackError(self._rebuilt(client.where, bound)) from None
            if exc.status != 404:  # 404: a witness without bindings (a plain tlog-witness)
                raise
        with _MEMO_LOCK:
            _BOUND.add(key)

    def _rebuilt(self, source: str, bound: str) -> str:
        return MSG_REBUILT.format(
            source=source, bound=bound, origin=self.origin, root=self.paths.root
        )

    def check_binding(self) -> None:
        """Stop when a witness binds the project's folder to another log than its ledger's.

        Raises
        ------
        LedgerRollbackError
            The ledger was rebuilt in place under a new key (another origin).
        """
        origin, final = project_origin(self.paths, self.params, ledger_path=self.ledger.path)
        if not final:
            return  # nothing signed yet: the first append binds (or is refused)
        for client in self.clients:
            try:
                bound = self._bound_of(client)
            except (WitnessError, OSError) as exc:
                log.warning("%s: its project binding could not be read (%s)", client.where, exc)
                continue
            if bound is not None and bound != origin:
                raise LedgerRollbackError(self._rebuilt(client.where, bound))

    def _bound_of(self, client: WitnessClient) -> str | None:
        if isinstance(client, DirectoryWitness):
            return client.bound(self.project)
        key = (client.where, "project:" + self.project)
        now = time.monotonic()
        with _MEMO_LOCK:
            hit = _REMOTE.get(key)
        if hit is not None and now - hit[0] < REMOTE_TTL_SECONDS:
            return hit[1].decode("utf-8") if hit[1] is not None else None
        bound = client.bound(self.project)
        with _MEMO_LOCK:
            _REMOTE[key] = (now, bound.encode("utf-8") if bound is not None else None)
        return bound

    def announce_rotation(
        self, entry: Entry, previous: Ed25519PrivateKey
    ) -> tuple[Witnessed, list[str]]:
        """Tell every witness about a key rotation; returns the checkpoint and the problems.

        The checkpoint covering the rotation entry is signed by the previous key (which the
        witnesses pin) and the new one; each witness then checks the entry's inclusion and
        signatures and pins the new key (:meth:`~visage_ml.privacy.witness.Witness.rotate_log_key`).
        """
        problems: list[str] = []
        try:
            witnessed = self.checkpoint_and_witness(extra_signers=[previous])
        except WitnessUnavailableError as exc:
            problems.append(str(exc))
            witnessed = self.checkpoint_and_witness_partial()
        tree = witnessed.tree
        if tree is None:  # pragma: no cover - checkpoint_and_witness always builds one
            raise LedgerError("no tree for the rotation proof")
        line = entry.line()
        proof = tree.inclusion_proof(entry.seq)
        for client in self.clients:
            try:
                client.rotate_log_key(self.origin, line, entry.seq, proof)
            except WitnessError as exc:
                problems.append(f"{client.where}: {exc}")
        return witnessed, problems

    def _kept_path(self, seq: int) -> Path:
        return self.paths.checkpoints / KEPT / str(int(seq))

    def _pending_path(self, seq: int) -> Path:
        return self.paths.checkpoints / KEPT / f"{int(seq)}{PENDING}"

    def _unmark(self, seq: int) -> None:
        path = self._pending_path(seq)
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)

    def _settle_pending(self, only: WitnessClient | None = None) -> set[str]:
        """Keep the checkpoint of each entry whose witnessing a process did not finish: a
        ``kept/<seq>.pending`` mark holds the checkpoint it asked the witnesses to cosign.

        Each witness keeps the checkpoint it cosigned last with its cosignature (and so does
        ``privacy/checkpoints/latest``): those of the checkpoint asked are gathered, and
        ``kept/<seq>`` written once they reach the quorum. The mark goes then, or once every
        configured witness that has not cosigned it was read (it never did: the process died
        before it asked, or the witness refused); while one cannot be read it stays, with the
        cosignatures gathered so far. Called with the checkpoints' lock held, before any
        witness is asked to cosign a newer tree (which replaces its copy).

        ``only``: read that witness alone (one that could not be read before, about to be asked
        to cosign a newer tree): its copy is gathered into the marks, which stay unless kept.

        Returns the witnesses (``where``) that could not be read while a mark waits for them.
        """
        folder = self.paths.checkpoints / KEPT
        try:
            marks = sorted(p for p in folder.iterdir() if p.name.endswith(PENDING))
        except FileNotFoundError:
            return set()
        if not marks:
            return set()
        keys = [v for v in (c.cosigner() for c in self.clients) if v is not None]
        found: list[bytes | None] = [self._local()] if only is None else []
        unread: dict[str, Verifier | None] = {}
        for client in self.clients if only is None else [only]:
            try:
                found.append(client.latest(self.origin))
            except (WitnessError, OSError) as exc:
                log.warning("%s: its latest checkpoint could not be read (%s)", client.where, exc)
                unread[client.where] = client.cosigner()
        copies: list[Note] = []
        for data in found:
            with contextlib.suppress(NoteError):
                if data is not None:
                    copies.append(parse_note(data))
        needed = self.params.quorum or len(self.clients)
        waiting: set[str] = set()
        for mark in marks:
            seq_text = mark.name.removesuffix(PENDING)
            try:
                asked = parse_note(mark.read_bytes()) if seq_text.isdigit() else None
            except (OSError, NoteError):
                asked = None
            if asked is None:
                mark.unlink(missing_ok=True)
                continue
            seq = int(seq_text)
            if self._kept_path(seq).exists():  # kept, the process died before the mark went
                self._unmark(seq)
                continue
            gathered = asked.with_signatures(
                sig
                for copy in copies
                if copy.text == asked.text
                for sig in copy.signatures
                if any(_cosigned_by(k, asked.text, sig) for k in keys)
            )
            cosigned = {
                k.vkey
                for k in keys
                if any(_cosigned_by(k, asked.text, s) for s in gathered.signatures)
            }
            if cosigned and len(cosigned) >= needed:
                atomic_write_bytes(self._kept_path(seq), gathered.to_bytes(), mode=0o644)
                log.info("entry %d: its checkpoint kept from the witnesses' copies", seq)
            elif only is not None or any(
                v is None or v.vkey not in cosigned for v in unread.values()
            ):
                if gathered != asked:
                    atomic_write_bytes(mark, gathered.to_bytes(), mode=0o644)
                waiting |= {w for w, v in unread.items() if v is None or v.vkey not in cosigned}
                continue
            self._unmark(seq)
        return waiting

    def kept_files(self) -> dict[int, list[Path]]:
        """The files under ``privacy/checkpoints/kept`` by the entry they are kept for: its
        checkpoint, its pending mark, temporary files of a write that was killed."""
        folder = self.paths.checkpoints / KEPT
        out: dict[int, list[Path]] = {}
        try:
            found = sorted(folder.iterdir())
        except FileNotFoundError:
            return out
        for path in found:
            m = _KEPT_NAME.fullmatch(path.name)
            if m is not None and path.is_file():
                out.setdefault(int(m.group(1)), []).append(path)
        return out

    def prune_kept(self, *, needed: Iterable[int]) -> list[Path]:
        """Remove what ``privacy/checkpoints/kept`` holds for entries not in ``needed`` (those
        whose certificate is yet to be written); returns what was removed.

        A certificate carries its checkpoint verbatim (the tlog-proof's note, see
        :func:`~visage_ml.privacy.certificate.offline_proof`): once it is written, nothing
        reads the kept copy again, and every erasure would otherwise add a file for good.
        """
        keep = set(needed)
        removed: list[Path] = []
        if all(seq in keep for seq in self.kept_files()):
            return removed
        with file_lock(self.paths.checkpoints / ".lock"):
            for seq, paths in self.kept_files().items():
                if seq in keep:
                    continue
                for path in paths:
                    path.unlink(missing_ok=True)
                    removed.append(path)
            if removed:
                fsync_dir(removed[0].parent)
        return removed

    def witnessed_with(self, seq: int) -> Witnessed | None:
        """The checkpoint entry ``seq`` (of :data:`KEPT_EVENTS`) was witnessed under when it
        was appended, while it still serves as its proof: signed by the current ledger key,
        of this log, covering the entry, its root the ledger's at its size, and cosigned by a
        configured witness (those are the cosigners it names). None otherwise: not kept (the
        witnesses did not answer then), a key rotated or every witness replaced since. A
        process that died once the witnesses cosigned left a mark: the checkpoint is kept
        from their copies first (:meth:`_settle_pending`)."""
        if not self._kept_path(seq).exists() and self._pending_path(seq).exists():
            with file_lock(self.paths.checkpoints / ".lock"):
                self._settle_pending()
        try:
            data = self._kept_path(seq).read_bytes()
            note = parse_note(data)
            verify_note(note, [self.log_verifier()])
            cp = parse_checkpoint(note.text)
            names = [v.name for v in self.cosigners_of(data)]
        except (OSError, NoteError, WitnessError):
            return None
        if cp.origin != self.origin or cp.size <= seq or not names:
            return None
        hashes = self.ledger.leaf_hashes(cp.size)
        tree = merkle.tree(hashes)
        if len(hashes) != cp.size or tree.root() != cp.root:
            return None
        return Witnessed(cp, data, names, tree)

    def checkpoint_and_witness_partial(self) -> Witnessed:
        """The local latest checkpoint with its tree (after a checkpoint short of quorum)."""
        hashes = self.ledger.leaf_hashes()
        tree = merkle.tree(hashes)
        note = self._local() or b""
        return Witnessed(Checkpoint(self.origin, tree.size, tree.root()), note, [], tree)

    def cosigners_of(self, note: bytes) -> list[Verifier]:
        """The configured witnesses whose cosignature on ``note`` verifies."""
        keys = [c for c in (client.cosigner() for client in self.clients) if c is not None]
        return verified_cosigners(parse_note(note), keys)

    # -- the witnesses' clock ------------------------------------------------------------------
    def _http_cosigners(self) -> list[Verifier]:
        return [
            v
            for c in self.clients
            if isinstance(c, HttpWitness) and (v := c.cosigner()) is not None
        ]

    def witness_times(self) -> dict[str, datetime]:
        """When each configured HTTP witness cosigned the latest checkpoint kept
        (``privacy/checkpoints/latest``): ``{witness name: time}``, from the timestamps of its
        cosignatures that verify (c2sp.org/tlog-cosignature).

        A directory witness stamps with this host's clock and is left out. Empty when no HTTP
        witness is configured or none cosigned; read again only when the file changes.
        """
        http = self._http_cosigners()
        if not http:
            return {}
        try:
            st = os.stat(self.latest_path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._times_cache is not None and self._times_cache[0] == stamp:
            return dict(self._times_cache[1])
        try:
            out = self._times_of(self.latest_path.read_bytes(), http)
        except OSError:
            out = {}
        self._times_cache = (stamp, out)
        return dict(out)

    def _times_of(self, data: bytes, http: Sequence[Verifier]) -> dict[str, datetime]:
        """``{witness name: time}`` of the cosignatures by ``http`` on the checkpoint ``data``
        of this log that verify."""
        out: dict[str, datetime] = {}
        try:
            note = parse_note(data)
            ours = parse_checkpoint(note.text).origin == self.origin
        except NoteError:
            ours = False
        for v in http if ours else []:
            for sig in note.signatures:
                if (sig.name, sig.key_id) != (v.name, v.key_id) or not v.verify(note.text, sig.sig):
                    continue
                try:
                    t = datetime.fromtimestamp(cosignature_timestamp(sig), UTC)
                except (NoteError, ValueError, OverflowError, OSError):
                    continue  # a time no calendar holds says nothing
                out[v.name] = max(out.get(v.name, t), t)
        return out

    def ask_time(self) -> WitnessTimes:
        """Have the witnesses cosign a checkpoint of the ledger as it is now and return when
        each HTTP witness says that was (:meth:`witness_times`), and in ``fresh`` the times of
        those that cosigned in this call (:class:`~visage_ml.privacy.clock.WitnessTimes`).

        A witness cosigns a checkpoint of the size it cosigned last (c2sp.org/tlog-witness), so
        nothing need have changed. A witness that does not answer keeps the time of its
        cosignature on the checkpoint kept before (not fresh); one that answers neither way is
        left out. Nothing is asked when no HTTP witness is configured or the ledger is empty.

        Raises
        ------
        LedgerRollbackError
            A witness holds a larger tree than the ledger.
        """
        http = self._http_cosigners()
        if not http or not len(self.ledger):
            return WitnessTimes()
        before = self.witness_times()
        try:
            fresh = self._times_of(self.checkpoint_and_witness().note, http)
        except WitnessUnavailableError as exc:
            log.warning("%s", exc)
            fresh = None
        after = self.witness_times()
        if fresh is None:
            # Short of quorum the cosignatures gathered are kept but not returned: those newer
            # than the ones kept before were made now.
            fresh = {n: t for n, t in after.items() if n not in before or t > before[n]}
        said = {
            n: max(t for t in (before.get(n), after.get(n), fresh.get(n)) if t)
            for n in before | after | fresh
        }
        return WitnessTimes(said, fresh)

    # -- the open check ------------------------------------------------------------------------
    def readers(self) -> list[WitnessClient]:
        """Every witness whose copy of this log's checkpoints the open check reads.

        The configured witnesses; every witness any ``witness.set`` entry of the ledger names
        (one removed on the record, or dropped by a signed record no witness saw, still holds
        the checkpoints it cosigned); and the default directory witness when its folder exists,
        named or not (a ledger cut back to before its first record names none), with or without
        its key files. A folder is read as found: nothing is created.
        """
        out = list(self.clients)
        seen = {c.where for c in out}
        recorded: set[RecordedWitness] = set()
        for s in witness_sets(self.ledger.path):
            recorded.update(s.witnesses)
        removed_timeout = min(self.params.timeout_seconds, REMOVED_TIMEOUT_SECONDS)
        extra: list[WitnessClient] = [
            make_client(w.spec, timeout=removed_timeout)
            for w in sorted(recorded, key=lambda w: (w.kind, w.where, w.vkey))
        ]
        default = default_witness_dir()
        # Its folder, not its key, decides (one stat when there is none): a folder stripped of
        # its key files still holds the checkpoints it cosigned.
        if default.is_dir():
            extra.append(DirectoryWitness(default))
        for client in extra:
            if client.where not in seen:
                seen.add(client.where)
                out.append(client)
        return out

    def candidates(self, excused: frozenset[str] = frozenset()) -> list[tuple[str, bytes]]:
        """``(where, note)`` of every checkpoint of this ledger that can be found now (the
        local one and those of :meth:`readers`). A directory witness whose folder cannot show
        what it cosigned stops the check, unless :meth:`_excused` (``excused``: the witnesses
        a removal is recording as lost, by ``where``)."""
        out: list[tuple[str, bytes]] = []
        local = self._local()
        if local is not None:
            out.append((str(self.latest_path), local))
        configured = {c.where for c in self.clients}
        for client in self.readers():
            try:
                note = self._latest_of(client, configured=client.where in configured)
            except (WitnessError, OSError) as exc:
                if (
                    isinstance(client, DirectoryWitness)
                    and isinstance(exc, WitnessError)
                    and not self._excused(client, excused)
                ):
                    # A folder that is there but cannot show what it cosigned is damage, not
                    # absence: its checkpoints are what would show a rollback.
                    raise self._damaged(client, exc) from None
                # One that cannot be reached is skipped, as a volume lost with its witness is.
                log.warning("%s: its latest checkpoint could not be read (%s)", client.where, exc)
                continue
            if note is not None:
                out.append((client.where, note))
        return out

    def _excused(self, client: WitnessClient, excused: frozenset[str]) -> bool:
        """Whether a damaged copy at ``client`` may be skipped: its witness is being recorded
        as lost (``excused``, by ``where``), or was (by a record that does not also keep it), or
        an earlier record names it and the latest one no longer does (it holds nothing newer
        than its removal).

        The witness is told by the key its folder publishes, not by its path: a new witness in
        a lost one's folder, or ``default`` pointed at another witness, is not the lost one. A
        folder stripped of its keys is told by its path (a configured witness in that state
        already stops every process: :meth:`check_witness_set`).
        """
        if client.where in excused:
            return True
        sets = witness_sets(self.ledger.path)
        found = client.cosigner()
        timeout = self.params.timeout_seconds

        def ids(witnesses: Iterable[RecordedWitness]) -> set[str]:
            if found is not None:
                return {w.vkey for w in witnesses if w.vkey}
            return {make_client(w.spec, timeout=timeout).where for w in witnesses}

        me = found.vkey if found is not None else client.where
        lost = ids(w for s in sets for w in s.lost if not any(w.same(kept) for kept in s.witnesses))
        if me in lost:
            return True
        if not sets:
            return False
        earlier = ids(w for s in sets for w in s.witnesses)
        return me in earlier - ids(sets[-1].witnesses)

    def _damaged(self, client: WitnessClient, exc: Exception) -> WitnessSetError:
        verifier = client.cosigner()
        name = verifier.name if verifier is not None else client.where
        return WitnessSetError(MSG_WITNESS_DAMAGED.format(where=client.where, why=exc, name=name))

    def _latest_of(self, client: WitnessClient, *, configured: bool = True) -> bytes | None:
        if isinstance(client, DirectoryWitness):
            note = client.latest(self.origin)
            if note is None and (why := client.lost_state(self.origin, self.project)):
                raise WitnessError(500, why)
            return note
        key = (client.where, self.origin)
        now = time.monotonic()
        with _MEMO_LOCK:
            hit = _REMOTE.get(key)
        if hit is not None and now - hit[0] < REMOTE_TTL_SECONDS:
            return hit[1]
        # A configured witness is always asked; one no longer configured not while its silence
        # is remembered on disk.
        silent = self._silent() if not configured else {}
        since = silent.get(client.where)
        if since is not None and 0 <= time.time() - since < SILENT_RETRY_SECONDS:
            raise WitnessError(
                503,
                f"no answer since {datetime.fromtimestamp(since, UTC):%Y-%m-%dT%H:%M:%SZ}; "
                f"asked again after {SILENT_RETRY_SECONDS / 60:.0f} minutes",
            )
        try:
            note = client.latest(self.origin)
        except WitnessError:
            if not configured:
                # A witness no longer configured may be gone for good: its silence is
                # remembered (by this process and on disk), so that opens do not each wait.
                with _MEMO_LOCK:
                    _REMOTE[key] = (now, None)
                self._remember_silence(client.where, time.time())
            raise
        with _MEMO_LOCK:
            _REMOTE[key] = (now, note)
        if client.where in silent:
            self._remember_silence(client.where, None)
        return note

    def _silent(self) -> dict[str, float]:
        """Removed HTTP witnesses that did not answer, and when (``silent.json``)."""
        try:
            data = orjson.loads((self.paths.checkpoints / SILENT).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}

    def _remember_silence(self, where: str, when: float | None) -> None:
        silent = self._silent()
        if when is None:
            silent.pop(where, None)
        else:
            silent[where] = when
        with contextlib.suppress(OSError):  # best effort: a read-only project waits again
            atomic_write_bytes(self.paths.checkpoints / SILENT, orjson.dumps(silent))

    def check(self, *, full: bool = False) -> list[dict[str, Any]]:
        """Check the ledger against every checkpoint found; return what was checked.

        ``full`` repeats the check even when this process already passed it for the ledger and
        checkpoints as they are (the diagnostics do).

        Raises
        ------
        LedgerRollbackError
            The ledger is shorter than a checkpoint its keys signed that one of
            :meth:`readers` (or ``privacy/checkpoints/latest``) holds, its root at that size
            differs, or a checkpoint is signed by a key not in its history.
        WitnessSetError
            params.yaml lacks a witness the ledger's latest ``witness.set`` entry names, a
            directory witness's folder holds no witness or another key than recorded, or
            params.yaml asks fewer cosignatures (the witnesses' copies are read first, so that
            a ledger cut back after one was dropped is named as a rollback).
        LedgerError
            ``privacy/ledger.pub`` is not a key of the ledger's history.
        """
        report = self._check_checkpoints(full=full)
        # After the checkpoints, whose messages are more precise (a replaced ledger.pub, say).
        self.check_binding()
        self.check_witness_set()
        return report

    # -- the recorded witness set --------------------------------------------------------------
    def recorded(self) -> WitnessSet | None:
        """The ledger's latest ``witness.set`` entry (None before its first)."""
        sets = witness_sets(self.ledger.path)
        return sets[-1] if sets else None

    def history(self) -> list[dict[str, Any]]:
        """Every ``witness.set`` entry and what it changed (:func:`witness_history`)."""
        return witness_history(witness_sets(self.ledger.path))

    def configured(self, *, create: bool = False) -> list[RecordedWitness]:
        """The witnesses of params.yaml as a ``witness.set`` entry records them (``create``:
        a directory witness's folder and key are made first, so that its key is recorded)."""
        out = []
        for spec, client in zip(self.params.witnesses, self.clients, strict=True):
            if create and isinstance(client, DirectoryWitness):
                with contextlib.suppress(OSError, WitnessError):
                    client.witness.verifier  # noqa: B018 - creates the folder and its key
            verifier = client.cosigner()
            where = spec.path if spec.kind == "directory" else spec.url
            out.append(RecordedWitness(spec.kind, where, verifier.vkey if verifier else ""))
        return out

    def departed(self, recorded: WitnessSet | None = None) -> list[RecordedWitness]:
        """The witnesses the ledger's latest record names that params.yaml lacks, or whose
        folder (as found) holds no witness or another key (:meth:`RecordedWitness.same`)."""
        recorded = recorded or self.recorded()
        if recorded is None:
            return []
        configured = self.configured()
        return [w for w in recorded.witnesses if not any(w.same(c) for c in configured)]

    def _clients_of(self, witnesses: Iterable[RecordedWitness]) -> list[WitnessClient]:
        return [make_client(w.spec, timeout=self.params.timeout_seconds) for w in witnesses]

    def _needed(self) -> int:
        return self.params.quorum or len(self.params.witnesses)

    def check_witness_set(self) -> None:
        """Stop while params.yaml lacks a witness the ledger records, a recorded directory
        witness is not in its folder (no witness there, or another key: ``default`` pointed
        elsewhere by ``$VISAGE_WITNESS_DIR``, a folder deleted and made again), or params.yaml
        asks fewer cosignatures than the ledger records.

        Raises
        ------
        WitnessSetError
            Naming the witness (or the quorum) and the entry that recorded it.
        """
        recorded = self.recorded()
        if recorded is None:
            return
        departed = self.departed(recorded)
        if departed:
            raise self._dropped(departed[0], recorded)
        if self._needed() < recorded.needed:
            raise self._quorum_lowered(recorded)

    def _dropped(self, witness: RecordedWitness, recorded: WitnessSet) -> WitnessSetError:
        args = {"name": witness.name, "where": witness.describe(), "seq": recorded.seq}
        still = witness.kind == "directory" and any(
            s.kind == "directory" and s.path == witness.where for s in self.params.witnesses
        )
        if not still:
            return WitnessSetError(MSG_WITNESS_DROPPED.format(**args))
        # Still in params.yaml, but its folder (as found: nothing is created to compare) holds
        # no witness or another one.
        folder = witness_folder(witness.spec)
        other = Witness.published_verifier(folder)
        found = (
            FOUND_OTHER_WITNESS.format(other=other.name) if other is not None else FOUND_NO_WITNESS
        )
        fix = FIX_DEFAULT_DIR if witness.where == "default" else FIX_PATH
        return WitnessSetError(
            MSG_WITNESS_NOT_THERE.format(
                folder=folder, found=found, fix=fix.format(name=witness.name, folder=folder), **args
            )
        )

    def _quorum_lowered(self, recorded: WitnessSet) -> WitnessSetError:
        return WitnessSetError(
            MSG_QUORUM_LOWERED.format(
                got=self._needed(),
                needed=recorded.needed,
                seq=recorded.seq,
                quorum=self.params.quorum,
            )
        )

    def genesis_events(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        """The ``witness.set`` entry an empty ledger starts with (none without witnesses): so
        that cutting a new project's ledger back leaves either nothing or a record of its
        witnesses (:attr:`~visage_ml.privacy.ledger.Ledger.genesis`)."""
        if not self.params.witnesses:
            return []
        configured = self.configured(create=True)
        return [(WITNESS_SET, None, WitnessSet.payload(configured, self.params.quorum))]

    def _record_witness_set(self) -> None:
        """Append a ``witness.set`` entry when params.yaml has a witness the ledger's record
        lacks (or there is none yet), or asks more cosignatures."""
        if not self.params.witnesses:
            return
        recorded = self.recorded()
        configured = self.configured(create=True)
        if (
            recorded is not None
            and all(any(w.same(c) for w in recorded.witnesses) for c in configured)
            and self._needed() <= recorded.needed
        ):
            return
        self.ledger.append(WITNESS_SET, None, WitnessSet.payload(configured, self.params.quorum))

    def remove(
        self,
        names: Sequence[str],
        *,
        quorum: int | None,
        reason: str,
        lost_for_good: bool = False,
    ) -> tuple[WitnessSet, Witnessed, dict[str, bool]]:
        """Record that the witnesses ``names`` left and/or that ``quorum`` (as params.yaml now
        has it) is lower: a ``witness.set`` entry of the witnesses params.yaml now has.

        The ledger is first checked against every checkpoint found, the leaving witnesses'
        included; the record is then witnessed by the configured witnesses and, where they can
        be reached, by the leaving ones (so that they learn it; their cosignatures count for no
        quorum).

        Parameters
        ----------
        names
            The witnesses taken out of params.yaml (name, vkey, or path or URL as recorded).
        quorum
            ``privacy.witness.quorum`` as params.yaml now has it, when it is lower than
            recorded.
        reason
            Why, as a code (the ledger keeps it).
        lost_for_good
            Record the removal of a witness that cannot be read (recorded as ``lost``: a
            rollback made before the removal shows only through a newer checkpoint of a witness
            left). Without it such a removal is refused.

        Returns
        -------
        tuple
            The new record, its witnessed checkpoint and, for each leaving witness (by
            name), whether it cosigned the record.

        Raises
        ------
        ValueError
            A name the record does not hold or params.yaml still has, a quorum params.yaml
            does not have, or nothing to record.
        WitnessSetError
            params.yaml lacks another recorded witness, or lowers the quorum without
            ``quorum``; or a witness removed cannot be read and ``lost_for_good`` is not
            given.
        LedgerRollbackError
            The ledger is shorter than, or forked from, a checkpoint found.
        """
        recorded = self.recorded()
        if recorded is None:
            raise ValueError(MSG_NONE_RECORDED)
        removed: list[RecordedWitness] = []
        for name in names:
            found = [w for w in recorded.witnesses if w.answers_to(name)]
            if len(found) != 1:
                listed = ", ".join(w.name for w in recorded.witnesses) or "none"
                raise ValueError(MSG_NOT_RECORDED.format(name=name, recorded=listed))
            removed.append(found[0])
        departed = self.departed(recorded)
        for w in removed:
            if w not in departed:
                raise ValueError(MSG_STILL_CONFIGURED.format(name=w.name))
        left = [w for w in departed if w not in removed]
        if left:
            raise self._dropped(left[0], recorded)
        if quorum is not None and quorum != self.params.quorum:
            raise ValueError(
                MSG_QUORUM_NOT_CONFIGURED.format(quorum=quorum, configured=self.params.quorum)
            )
        lowered = self._needed() < recorded.needed
        # A removal lowers the cosignatures needed as far as the witnesses left ask, no more.
        floor = min(recorded.needed, len(recorded.witnesses) - len(removed))
        if quorum is None and self._needed() < floor:
            raise self._quorum_lowered(recorded)
        if not removed and not (quorum is not None and lowered):
            raise ValueError(MSG_NOTHING_TO_RECORD)
        # Whether a witness left holds everything an unreadable one did cannot be told (a
        # checkpoint that missed its quorum was cosigned by fewer), so it goes only as lost.
        lost = [(w, why) for w in removed if (why := self._unread(w)) is not None]
        if lost and not lost_for_good:
            witness, why = lost[0]
            raise WitnessSetError(MSG_REMOVE_UNREADABLE.format(name=witness.name, why=why))
        if lost_for_good and not lost:
            names_removed = ", ".join(w.name for w in removed) or "none"
            raise ValueError(MSG_NOT_LOST.format(names=names_removed))
        timeout = self.params.timeout_seconds
        lost_where = frozenset(make_client(w.spec, timeout=timeout).where for w, _ in lost)
        # The leaving witnesses' copies are read too, those being recorded as lost excepted.
        self._check_checkpoints(full=True, excused=lost_where)
        self.check_binding()
        entry = self.ledger.append(
            WITNESS_SET,
            None,
            WitnessSet.payload(
                self.configured(create=True), self.params.quorum, reason, [w for w, _ in lost]
            ),
        )
        # A directory witness is told only where its folder still holds its key: a folder gone
        # with its volume is not made again as a new witness.
        # Nor one recorded as lost: its damaged copy is left as found.
        tell = [
            client
            for w, client in zip(removed, self._clients_of(removed), strict=True)
            if client.where not in lost_where
            and (
                not isinstance(client, DirectoryWitness)
                or getattr(client.cosigner(), "vkey", None) == w.vkey
            )
        ]
        witnessed = self.checkpoint_and_witness(tell=tell)
        told = {w.name: w.name in witnessed.cosigners for w in removed}
        return WitnessSet.from_entry(entry.to_dict()), witnessed, told

    def _unread(self, witness: RecordedWitness) -> str | None:
        """Why the copy of this log's checkpoints that ``witness`` holds cannot be read now
        (None: it can, or it holds none)."""
        if witness.kind == "directory":
            folder = witness_folder(witness.spec)
            found = Witness.published_verifier(folder)
            if found is None:
                return f"{folder} holds no witness"
            if witness.vkey and found.vkey != witness.vkey:
                return f"{folder} holds another witness, {found.name}"
        client = make_client(witness.spec, timeout=self.params.timeout_seconds)
        try:
            if isinstance(client, DirectoryWitness):
                self._latest_of(client)  # a state deleted while the folder binds the project too
            else:
                client.latest(self.origin)
        except (WitnessError, OSError) as exc:
            return str(exc) or type(exc).__name__
        return None

    def _check_checkpoints(
        self, *, full: bool, excused: frozenset[str] = frozenset()
    ) -> list[dict[str, Any]]:
        found = self.candidates(excused)
        if not found:
            return []
        notes: list[tuple[str, bytes, Checkpoint, Note]] = []
        for source, data in found:
            try:
                note = parse_note(data)
                notes.append((source, data, parse_checkpoint(note.text), note))
            except NoteError as exc:
                raise LedgerRollbackError(MSG_UNREADABLE.format(source=source, why=exc)) from None
        if not full and self._still_checked(frozenset(_tree_key(cp) for _, _, cp, _ in notes)):
            return [{"source": s, "size": cp.size, "memo": True} for s, _, cp, _ in notes]
        if not self.ledger.path.exists() or not self.ledger.path.stat().st_size:
            # No ledger left at all (and perhaps no key to check signatures with).
            source, _, cp, _ = max(notes, key=lambda t: t[2].size)
            if cp.size:
                raise LedgerRollbackError(
                    MSG_SHORTER.format(
                        ledger=self.ledger.path,
                        n=0,
                        source=source,
                        size=cp.size,
                        root=cp.root.hex(),
                        origin=cp.origin,
                    )
                )
        chain = self.ledger.key_chain()
        report: list[dict[str, Any]] = []
        parsed: list[tuple[str, bytes, Checkpoint, Note]] = []
        for source, data, cp, note in notes:
            keys = [Verifier(cp.origin, ED25519, k) for k in chain.public_keys()]
            try:
                verify_note(note, keys)
            except NoteError:
                raise LedgerRollbackError(
                    MSG_FOREIGN.format(
                        source=source,
                        size=cp.size,
                        origin=cp.origin,
                        keys=", ".join(f[:16] for f in chain.fingerprints()),
                    )
                ) from None
            parsed.append((source, data, cp, note))
        hashes = self.ledger.leaf_hashes()
        n = len(hashes)
        roots: dict[int, bytes] = {}
        witnesses = [c for c in (cl.cosigner() for cl in self.readers()) if c is not None]
        local = str(self.latest_path)
        # Largest first; at equal size a witness's copy is named rather than our own.
        for source, _data, cp, note in sorted(parsed, key=lambda p: (-p[2].size, p[0] == local)):
            args = {
                "ledger": self.ledger.path,
                "source": source,
                "size": cp.size,
                "root": cp.root.hex(),
                "origin": cp.origin,
            }
            if cp.size > n:
                raise LedgerRollbackError(MSG_SHORTER.format(n=n, **args))
            if cp.size not in roots:
                roots[cp.size] = merkle.root_from_leaf_hashes(hashes[: cp.size])
            if roots[cp.size] != cp.root:
                raise LedgerRollbackError(MSG_FORK.format(actual=roots[cp.size].hex(), **args))
            try:
                cosigned = [v.name for v in verified_cosigners(note, witnesses)]
            except NoteError:
                cosigned = []
            report.append({"source": source, "size": cp.size, "cosigned_by": cosigned})
        self._remember(hashes, [cp for _, _, cp, _ in parsed])
        return report

    def _memo_key(self) -> str:
        return str(self.ledger.path.resolve())

    def _still_checked(self, digests: frozenset[str]) -> bool:
        with _MEMO_LOCK:
            memo = _CHECKED.get(self._memo_key())
        if memo is None or not digests <= memo[3]:
            return False
        ino, covered, line_hash, _ = memo
        try:
            with open(self.ledger.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != ino or st.st_size < covered:
                    return False
                return line_hash_at(fh.fileno(), covered) == line_hash
        except FileNotFoundError:
            return False

    def _remember(self, hashes: Sequence[bytes], checkpoints: Iterable[Checkpoint]) -> None:
        """Record that the ledger as it is now is consistent with ``checkpoints``."""
        try:
            with open(self.ledger.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data_end = st.st_size
                start = max(0, data_end - (1 << 16))
                chunk = os.pread(fh.fileno(), data_end - start, start)
        except FileNotFoundError:
            return
        cut = chunk.rfind(b"\n")
        if cut == -1:
            return
        covered = data_end - (len(chunk) - cut - 1)
        last = chunk[:cut].rsplit(b"\n", 1)[-1]
        if merkle.leaf_hash(last) != (hashes[-1] if hashes else None):
            return  # the ledger moved on while we computed: check again next time
        digests = {_tree_key(cp) for cp in checkpoints}
        key = self._memo_key()
        with _MEMO_LOCK:
            old = _CHECKED.get(key)
            if old is not None and old[0] == st.st_ino:
                digests |= old[3]
            _CHECKED[key] = (
                st.st_ino,
                covered,
                hashlib.sha256(last).hexdigest(),
                frozenset(digests),
            )


_Held = tuple[int, bytes, WitnessSet]  # offset, line with its newline, the set


def _sets_of(found: tuple[_Held, ...], data: bytes, offset: int) -> tuple[_Held, ...]:
    """``found`` and the ``witness.set`` entries among the complete lines ``data`` (at byte
    ``offset`` of the ledger); see :data:`_WITNESS_SETS`."""
    out = list(found)
    for line_start, line_end in line_spans(data, (_SET_MARK,)):
        try:
            obj = orjson.loads(data[line_start:line_end])
            if obj.get("type") == WITNESS_SET:
                line = data[line_start : line_end + 1]
                out.append((offset + line_start, line, WitnessSet.from_entry(obj)))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LedgerError(
                f"a witness.set entry at byte {offset + line_start} is unreadable; "
                "run `visage privacy verify-ledger` to locate the damage and restore the ledger "
                "from a backup"
            ) from None
    return tuple(out)


# Every witness.set entry of a ledger, oldest first, read on from where the process stopped (so
# the open check makes no pass over a large ledger). Signatures are not checked here: the
# registry refuses a ledger with a forged line, and `visage privacy verify-ledger` names it.
# Each line is read again on every call (held): a set rewritten in place is seen at once.
_WITNESS_SETS: LedgerFold[tuple[_Held, ...]] = LedgerFold(_sets_of, (), held=held_lines)


def _cosigned_by(witness: Verifier, text: bytes, sig: Signature) -> bool:
    """Whether ``sig`` is ``witness``'s cosignature/v1 of the checkpoint ``text``."""
    v = cosigner(witness)
    return (sig.name, sig.key_id) == (v.name, v.key_id) and v.verify(text, sig.sig)


def witness_sets(ledger_path: Path) -> list[WitnessSet]:
    """Every ``witness.set`` entry of the ledger at ``ledger_path``, oldest first.

    Raises
    ------
    LedgerError
        A ``witness.set`` line is unreadable.
    """
    try:
        return [held[2] for held in _WITNESS_SETS(ledger_path)]
    except LedgerError as exc:
        raise LedgerError(f"{ledger_path}: {exc}") from None


def witness_set_lines(ledger_path: Path) -> list[tuple[bytes, WitnessSet]]:
    """Every ``witness.set`` entry of the ledger at ``ledger_path`` with its line (without its
    newline), oldest first: to check its signature, which :func:`witness_sets` does not.

    Raises
    ------
    LedgerError
        A ``witness.set`` line is unreadable.
    """
    try:
        return [(held[1].rstrip(b"\n"), held[2]) for held in _WITNESS_SETS(ledger_path)]
    except LedgerError as exc:
        raise LedgerError(f"{ledger_path}: {exc}") from None


def _tree_key(cp: Checkpoint) -> str:
    """What the open check compares of a checkpoint: its origin, size and root."""
    return f"{cp.origin}\n{cp.size}\n{cp.root.hex()}"


def forget_checks(ledger_path: Path | None = None) -> None:
    """Drop the process's memory of passed checks (of one ledger, or all of them)."""
    with _MEMO_LOCK:
        if ledger_path is None:
            _CHECKED.clear()
            _REMOTE.clear()
            _BOUND.clear()
        else:
            _CHECKED.pop(str(Path(ledger_path).resolve()), None)
    _WITNESS_SETS.forget(ledger_path)


_PARAMS: dict[str, tuple[tuple[int, int], WitnessParams]] = {}


def witness_params(paths: ProjectPaths) -> WitnessParams:
    """``privacy.witness`` of the project's ``params.yaml`` (defaults when there is none);
    read again only when the file changes."""
    try:
        st = os.stat(paths.params)
    except FileNotFoundError:
        return WitnessParams()
    stamp = (st.st_mtime_ns, st.st_size)
    key = str(paths.params)
    with _MEMO_LOCK:
        hit = _PARAMS.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    params = load_params(paths.params).privacy.witness
    with _MEMO_LOCK:
        _PARAMS[key] = (stamp, params)
    return params
