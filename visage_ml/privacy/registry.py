"""The subject registry: each subject's current state as a fold over the ledger.

The pipeline and serving ask one question, :meth:`Registry.may_process`, and never a flag stored
anywhere else. The fold is incremental: :meth:`Registry.refresh` reads only the ledger lines
appended since the last call.

Only verified lines are folded. Each refresh checks the lines it reads before folding any of
them: every line's ``seq`` follows the last one and its ``prev_hash`` is the SHA-256 of the line
before (the chain continues from the last verified line), and the last line's hash recomputes
and its Ed25519 signature verifies with the key in force. Each ``prev_hash`` commits to the
whole previous line, signature included, so that one signature authenticates every line of the
batch; a key rotation (``ledger.key_rotated``) is verified in full and switches the key. The
key history must contain ``privacy/ledger.pub``. A batch that fails (an unsigned or wrongly
signed line, a removed or inserted entry, a replaced public key) raises
:class:`LedgerRefusedError` and nothing of it is folded.

A cold registry starts from the fold cache ``<ledger>.fold`` when it matches the ledger, and
folds only the lines appended after it. The cache is derived data, like the ledger's
``.leaves``: the states of the first ``offset`` bytes of the ledger (pids and consent states
only, nothing the ledger does not hold), with the SHA-256 of the last line they cover and the
key in force there. It is used only when

- it was written by this fold code (a fingerprint of this module's source, so that a changed
  fold never reads states an older one computed),
- its HMAC-SHA256 under the project's key ``secrets/fold.key`` verifies (a damaged or forged
  cache is ignored: unlike a plain hash, nobody without that key can recompute it), and
- the ledger line that ends at ``offset`` still hashes to the digest in its header. Every line
  commits to the one before it (``prev_hash``), so this line commits to the whole prefix: a
  truncated, replaced or rewritten ledger does not match, and the registry folds the ledger
  from the start, verifying it.

Cached states are unpacked when first asked for, so a cold process that needs a few subjects
(an erasure, one rights request) does not build 100k objects.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from visage_ml.config import PURPOSES, ProjectPaths
from visage_ml.io import atomic_write_bytes
from visage_ml.privacy.keys import CACHE_KEY_FILE, cache_mac_key, load_public_key
from visage_ml.privacy.ledger import (
    GENESIS_HASH,
    MSG_KEY_NOT_IN_HISTORY,
    MSG_NO_PUBLIC_KEY,
    ROTATION_TYPE,
    LedgerError,
    body_of,
    check_rotation,
    first_rotation_old_key,
    raw_key,
    read_appended,
)

log = logging.getLogger(__name__)

# Reason codes of a Decision (stable strings: the snapshot and the API expose them).
# The ``source`` of a subject SynthFaces rendered (``subject.added``): no data set's file behind
# it (:mod:`visage_ml.privacy.tombstone_sources`), written by :mod:`visage_ml.data.acquire`.
SYNTHFACES_SOURCE = "synthfaces"
ALLOWED = "allowed"
UNKNOWN = "unknown_subject"
ERASED = "erased"
ERASURE_PENDING = "erasure_pending"
OBJECTED = "objected"
RESTRICTED = "restricted"
WITHDRAWN = "consent_withdrawn"
EXPIRED = "consent_expired"
NO_BASIS = "no_consent"
# Decisions under which no legal basis remains for a purpose: what `visage privacy enforce`
# purges (an objection counts: Art. 21(1), processing stops unless compelling grounds).
NO_BASIS_REASONS: frozenset[str] = frozenset({WITHDRAWN, EXPIRED, NO_BASIS, OBJECTED, UNKNOWN})

REASON_TEXT: dict[str, str] = {
    ALLOWED: "a recorded legal basis covers this purpose",
    UNKNOWN: "no such subject in the registry",
    ERASED: "the subject's data was erased (Art. 17)",
    ERASURE_PENDING: "an erasure request is in progress (Art. 17)",
    OBJECTED: "the subject objected to this processing (Art. 21)",
    RESTRICTED: "processing is restricted (Art. 18)",
    WITHDRAWN: "consent for this purpose was withdrawn (Art. 7(3))",
    EXPIRED: "the consent for this purpose expired (privacy.retention.consent_months)",
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
    expired: bool = False


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
    # SHA-256 of the gallery anchor template last recorded as set (``anchor_sha256`` of a
    # ``gallery.enrolled`` that moved it, or a ``gallery.anchored``; None once removed, and for
    # a subject anchored before anchors were recorded): an operator's re-enrolment is checked
    # only against the anchor file the ledger vouches for.
    anchor_sha256: str | None = None

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
            if perm.expired:
                return Decision(False, EXPIRED)
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


def _apply(states: dict[str, SubjectState], seq: int, type_: str, pid: Any, payload: Any) -> bool:
    """Fold one event into ``states``. Unknown subjects and irrelevant events are ignored.

    Returns whether the subject's state (what :attr:`SubjectState.last_seq` tracks) changed.
    """
    if pid is None:
        return False
    if type_ == "subject.added":
        if pid in states:
            # A second registration of a pid must not reset its state: that would lift a
            # restriction or objection, or bring an erased subject back.
            return False
        states[pid] = SubjectState(pid=pid, added_seq=seq, source=payload.get("source", ""))
        states[pid].last_seq = seq
        return True
    st = states.get(pid)
    if st is None:
        return False
    if type_ == "gallery.enrolled":
        st.template_sha256 = payload.get("template_sha256")
        # An operator's re-enrolment leaves the anchor, and its event names none.
        if payload.get("anchor_sha256") is not None:
            st.anchor_sha256 = payload["anchor_sha256"]
        return False
    if type_ == "gallery.anchored":
        st.anchor_sha256 = payload.get("anchor_sha256")
        return False
    if type_ == "gallery.removed":
        st.template_sha256 = None
        st.anchor_sha256 = None
        return False
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
    elif type_ == "consent.expired":
        # Only the consent it names lapses: a basis or consent recorded after it stands.
        for p in payload.get("purposes") or ():
            prev = st.permissions.get(p)
            if prev is not None and prev.granted and prev.seq == payload.get("consent_seq"):
                st.permissions[p] = Permission(False, prev.basis, seq, None, False, True)
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
        # Unless another erasure of the subject is still running (entries before the field
        # lifted it always).
        if payload.get("lifts_stop", True):
            st.erasure_pending = False
    else:
        return False
    st.last_seq = seq
    return True


def fold(events: Iterable[tuple[int, str, Any, Any]]) -> dict[str, SubjectState]:
    """Fold ``(seq, type, pid, payload)`` events into subject states (pure, for tests)."""
    states: dict[str, SubjectState] = {}
    for seq, type_, pid, payload in events:
        _apply(states, seq, type_, pid, payload)
    return states


# ---------------------------------------------------------------------------------------------
# The fold cache
# ---------------------------------------------------------------------------------------------

CACHE_FORMAT = "visage-registry-fold/3"
CACHE_SUFFIX = ".fold"
# The HMAC key of the fold cache, in the project's secrets/ folder (32 random bytes, 0600).
FOLD_KEY = CACHE_KEY_FILE

MSG_REFUSED = (
    "the registry refuses the ledger at entry seq {seq}: {why}. Nothing from that point on is "
    "trusted and no subject is processed; run `visage privacy verify-ledger` to see the damage "
    "and restore privacy/ledger.jsonl (and privacy/ledger.pub) from a backup"
)


class LedgerRefusedError(LedgerError):
    """Lines of the ledger do not verify (signature, hash chain or key history)."""


# A refresh that folded at least this many lines (a cold start, a bulk import) writes the cache;
# the small refreshes of a running server do not.
CACHE_EVERY = 10_000


class _Tables:
    """Strings (sources, purposes) and legal-basis tuples of packed states, by index; grow only."""

    def __init__(self, strings: Iterable[str] = (), bases: Iterable[Iterable[str]] = ()) -> None:
        self.strings: list[str] = list(strings)
        self.bases: list[tuple[str, ...]] = [tuple(b) for b in bases]
        self._strings = {s: i for i, s in enumerate(self.strings)}
        self._bases = {b: i for i, b in enumerate(self.bases)}

    def string(self, value: str) -> int:
        i = self._strings.get(value)
        if i is None:
            i = self._strings[value] = len(self.strings)
            self.strings.append(value)
        return i

    def basis(self, value: tuple[str, ...]) -> int:
        i = self._bases.get(value)
        if i is None:
            i = self._bases[value] = len(self.bases)
            self.bases.append(value)
        return i


def _pack(st: SubjectState, t: _Tables) -> list[Any]:
    """One subject as a cache row: ``[pid, added_seq, last_seq, source, flags, objected,
    template_sha256, permissions, anchor_sha256]``, strings and bases as indexes into ``t``."""
    perms: list[Any] = []
    for purpose, p in st.permissions.items():
        pflags = p.granted | p.withdrawn << 1 | p.expired << 2
        perms += (t.string(purpose), pflags, t.basis(p.basis), p.seq, p.receipt_hash)
    flags = st.restricted | st.erasure_pending << 1 | st.erased << 2
    objected = [t.string(o) for o in sorted(st.objected)]
    source = t.string(st.source)
    return [
        st.pid,
        st.added_seq,
        st.last_seq,
        source,
        flags,
        objected,
        st.template_sha256,
        perms,
        st.anchor_sha256,
    ]


def _unpack(row: list[Any], t: _Tables) -> SubjectState:
    """The :class:`SubjectState` of a row made by :func:`_pack`."""
    pid, added_seq, last_seq, source, flags, objected, template_sha256, perms, anchor = row
    strings, bases = t.strings, t.bases
    permissions = {}
    for i in range(0, len(perms), 5):
        pflags = perms[i + 1]
        permissions[strings[perms[i]]] = Permission(
            bool(pflags & 1),
            bases[perms[i + 2]],
            perms[i + 3],
            perms[i + 4],
            bool(pflags & 2),
            bool(pflags & 4),
        )
    return SubjectState(
        pid,
        added_seq,
        strings[source],
        permissions,
        bool(flags & 1),
        {strings[o] for o in objected},
        bool(flags & 2),
        bool(flags & 4),
        last_seq,
        template_sha256,
        anchor,
    )


@functools.cache
def fold_fingerprint() -> str | None:
    """SHA-256 of this module's source and the purposes (None when the source cannot be read).

    Any change to the fold or to the cache rows changes it, and a cache written by other code
    is never read.
    """
    try:
        source = Path(__file__).read_bytes()
    except OSError:
        return None
    h = hashlib.sha256(CACHE_FORMAT.encode("utf-8"))
    h.update(source)
    h.update(repr(tuple(PURPOSES)).encode("utf-8"))
    return h.hexdigest()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC. Folds and cache loads allocate 100k small containers that hold no
    cycles; the GC would rescan them all repeatedly, tripling the time of a large fold."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _line_ending_at(path: Path, offset: int) -> bytes | None:
    """The ledger line whose newline is byte ``offset - 1`` (None when that is no newline)."""
    with open(path, "rb") as fh:
        fd = fh.fileno()
        end = offset - 1
        if end < 0 or os.pread(fd, 1, end) != b"\n":
            return None
        buf, pos = b"", end
        while True:
            start = max(0, pos - (1 << 16))
            buf = os.pread(fd, pos - start, start) + buf
            pos = start
            nl = buf.rfind(b"\n")
            if nl != -1:
                return buf[nl + 1 :]
            if pos == 0:
                return buf


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


class Registry:
    """Incrementally folded view of the ledger at ``ledger_path``.

    Not for two threads at once (a refresh reads from where the last one ended): the server
    calls it under the lock that guards its privacy core and gallery; another process, or
    another host, has a registry of its own.

    Parameters
    ----------
    ledger_path
        The ledger.
    cache
        Start a cold registry from the fold cache ``<ledger>.fold`` when it matches the ledger,
        and write it after a large refresh (see the module docstring).
    cache_every
        How many lines one refresh must fold before it writes the cache.
    public_key_path
        The ledger's published key (default ``ledger.pub`` beside the ledger): it must be in the
        ledger's key history.
    mac_key_path
        The fold cache's HMAC key (default ``secrets/fold.key`` of the project the ledger is
        in; without one, no cache is read or written).
    on_replaced
        Called when the ledger file became shorter than what was folded (a rollback or a
        replaced ledger) before the registry starts over; it may raise to stop processing.
    """

    def __init__(
        self,
        ledger_path: Path,
        *,
        cache: bool = True,
        cache_every: int = CACHE_EVERY,
        public_key_path: Path | None = None,
        mac_key_path: Path | None = None,
        on_replaced: Callable[[], None] | None = None,
    ) -> None:
        self.ledger_path = Path(ledger_path)
        self.cache = cache
        self.cache_every = cache_every
        self.public_key_path = (
            Path(public_key_path)
            if public_key_path is not None
            else self.ledger_path.with_name("ledger.pub")
        )
        if mac_key_path is None and self.ledger_path.parent.name == "privacy":
            mac_key_path = self.ledger_path.parent.parent / "secrets" / FOLD_KEY
        self.mac_key_path = Path(mac_key_path) if mac_key_path is not None else None
        self.on_replaced = on_replaced
        self._anchor_cache: tuple[tuple[int, int], bytes] | None = None
        self._reset()

    @property
    def cache_path(self) -> Path:
        """Where the fold cache is kept."""
        return self.ledger_path.with_name(self.ledger_path.name + CACHE_SUFFIX)

    def _reset(self) -> None:
        """Nothing folded yet."""
        # Values are SubjectStates, or rows of the fold cache not unpacked yet (lists).
        self._states: dict[str, Any] = {}
        self._packed = 0
        self._tables = _Tables()
        self._offset = 0
        self.as_of_seq = -1
        # The seq of the last event that changed a subject's state: the largest last_seq.
        self.changed_seq = -1
        # Where the verified chain stands: hash of the last folded line, key in force, and
        # every key of the history so far (raw Ed25519 public keys).
        self._prev = GENESIS_HASH
        self._key: bytes | None = None
        self._chain: list[bytes] = []

    def refresh(self) -> Registry:
        """Fold entries appended since the last refresh; returns self."""
        path = self.ledger_path
        if not path.exists():
            return self
        size = path.stat().st_size
        if size < self._offset:
            # The ledger is append-only; a shorter file means a rollback or a replaced ledger.
            if self.on_replaced is not None:
                self.on_replaced()
            self._reset()
        if self._offset == 0 and self.cache and size:
            self._load_cache(size)
        if size == self._offset:
            return self
        data = read_appended(path, self._offset, size)
        if not data:
            return self
        read = len(data)
        lines = data.splitlines()
        last_line = lines[-1]
        try:
            with _gc_paused():
                self._fold_verified(lines, data)
        except LedgerRefusedError:
            # Part of the batch may be folded already: forget every state, so that nothing is
            # ever answered from lines that did not verify (the next refresh refuses again).
            self._reset()
            raise
        self._offset += read
        if self.cache and len(lines) >= self.cache_every:
            self._write_cache(last_line)
        return self

    # -- verification --------------------------------------------------------------------------
    def _anchor(self) -> bytes:
        """The raw key of ``ledger.pub`` (re-read when the file changes)."""
        try:
            st = os.stat(self.public_key_path)
        except FileNotFoundError:
            raise LedgerRefusedError(
                MSG_NO_PUBLIC_KEY.format(pub=self.public_key_path, ledger=self.ledger_path)
            ) from None
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._anchor_cache is None or self._anchor_cache[0] != stamp:
            try:
                key = raw_key(load_public_key(self.public_key_path))
            except ValueError as exc:
                raise LedgerRefusedError(f"{self.public_key_path}: {exc}") from None
            self._anchor_cache = (stamp, key)
        return self._anchor_cache[1]

    def _fold_verified(self, lines: list[bytes], data: bytes) -> None:
        """Fold ``lines`` while checking their chain; then check the last line's signature
        (see the module docstring). Raises :class:`LedgerRefusedError`, after which the caller
        drops every state."""
        anchor = self._anchor()
        key, chain = self._key, list(self._chain)
        if key is None:
            # The very first line: the first key is the one the first rotation replaces (its
            # new key vouches for that), or the published key when there was no rotation.
            key = first_rotation_old_key(data) or anchor
            chain = [key]
        prev, expected = self._prev, self.as_of_seq + 1
        sha256, loads = hashlib.sha256, orjson.loads
        states = self._states
        changed = self.changed_seq
        obj: dict[str, Any] = {}
        for line in lines:
            try:
                obj = loads(line)
                seq, link, type_, pid = obj["seq"], obj["prev_hash"], obj["type"], obj["pid"]
            except (ValueError, KeyError, TypeError):
                raise self._refused(expected, "a line is not a ledger entry") from None
            if seq != expected:
                raise self._refused(expected, f"found seq {seq} (an entry was removed or added)")
            if link != prev:
                raise self._refused(
                    seq,
                    "its prev_hash is not the hash of the entry before (removed, inserted "
                    "or altered entries)",
                )
            if type_ == ROTATION_TYPE:
                try:
                    key = check_rotation(obj, key)
                except ValueError as exc:
                    raise self._refused(seq, str(exc)) from None
                chain.append(key)
            prev = sha256(line).hexdigest()
            expected += 1
            if self._packed and states.get(pid).__class__ is list:
                self._unpack_one(pid)
            if _apply(states, seq, type_, pid, obj["payload"]):
                changed = seq
        body = body_of(lines[-1])
        if body is None or sha256(body).hexdigest() != obj.get("hash"):
            raise self._refused(obj["seq"], "the entry's hash does not match its content")
        if obj["type"] != ROTATION_TYPE:
            try:
                Ed25519PublicKey.from_public_bytes(key).verify(
                    base64.b64decode(obj["sig"], validate=True), obj["hash"].encode("ascii")
                )
            except (InvalidSignature, ValueError, TypeError):
                raise self._refused(
                    obj["seq"],
                    "unsigned or not signed by the ledger key in force (fingerprint "
                    f"{hashlib.sha256(key).hexdigest()[:16]})",
                ) from None
        if anchor not in chain:
            raise LedgerRefusedError(
                MSG_KEY_NOT_IN_HISTORY.format(
                    fingerprint=hashlib.sha256(anchor).hexdigest(),
                    history=", ".join(hashlib.sha256(k).hexdigest() for k in chain),
                )
            )
        self._prev, self._key, self._chain = prev, key, chain
        self.as_of_seq, self.changed_seq = expected - 1, changed

    @staticmethod
    def _refused(seq: int, why: str) -> LedgerRefusedError:
        log.error("registry refused the ledger at seq %d", seq)
        return LedgerRefusedError(MSG_REFUSED.format(seq=seq, why=why))

    @property
    def key_chain(self) -> list[bytes]:
        """The ledger's keys (raw) as far as it was folded, oldest first."""
        return list(self._chain)

    # -- the fold cache ------------------------------------------------------------------------
    def _mac_key(self, *, create: bool) -> bytes | None:
        """The fold cache's HMAC key (created, 0600, when ``create`` and missing)."""
        return cache_mac_key(self.mac_key_path, create=create)

    @staticmethod
    def _mac(key: bytes, header: Mapping[str, Any], body: bytes) -> str:
        signed = orjson.dumps(dict(header), option=orjson.OPT_SORT_KEYS) + b"\n" + body
        return hmac.new(key, signed, hashlib.sha256).hexdigest()

    def _write_cache(self, last_line: bytes) -> None:
        """Store the states as of ``self._offset``, whose last line is ``last_line``."""
        fingerprint = fold_fingerprint()
        if fingerprint is None or self._key is None:
            return
        try:
            mac_key = self._mac_key(create=True)
        except OSError as exc:  # no secrets/ to write to: the next cold start folds in full
            log.debug("registry fold cache not written (%s)", type(exc).__name__)
            return
        if mac_key is None:
            return
        t = self._tables
        try:
            rows = [v if v.__class__ is list else _pack(v, t) for v in self._states.values()]
            body = orjson.dumps({"strings": t.strings, "bases": t.bases, "states": rows})
        except (TypeError, ValueError) as exc:  # a payload value the rows cannot hold
            log.debug("registry fold cache not written (%s)", type(exc).__name__)
            return
        header = {
            "format": CACHE_FORMAT,
            "fold": fingerprint,
            "offset": self._offset,
            "seq": self.as_of_seq,
            "changed_seq": self.changed_seq,
            "subjects": len(rows),
            "head_sha256": hashlib.sha256(last_line).hexdigest(),
            "key": base64.b64encode(self._key).decode("ascii"),
            "chain": [base64.b64encode(k).decode("ascii") for k in self._chain],
        }
        header["mac"] = self._mac(mac_key, header, body)
        try:
            atomic_write_bytes(self.cache_path, orjson.dumps(header) + b"\n" + body, mode=0o600)
        except OSError as exc:  # a read-only project: the next cold start folds in full
            log.debug("registry fold cache not written (%s)", type(exc).__name__)

    def _load_cache(self, size: int) -> bool:
        """Start from the fold cache when it matches the ledger of ``size`` bytes."""
        fingerprint = fold_fingerprint()
        if fingerprint is None:
            return False
        try:
            blob = self.cache_path.read_bytes()
            mac_key = self._mac_key(create=False)
        except OSError:
            return False
        if mac_key is None:
            return self._stale("there is no fold key secrets/fold.key to authenticate it")
        try:
            head, _, body = blob.partition(b"\n")
            h = orjson.loads(head)
            offset = h["offset"]
            mac = h.pop("mac")
            if (
                h["format"] != CACHE_FORMAT
                or h["fold"] != fingerprint
                or not isinstance(offset, int)
                or not 0 < offset <= size
            ):
                return self._stale("it does not match this fold")
            if not isinstance(mac, str) or not hmac.compare_digest(
                mac, self._mac(mac_key, h, body)
            ):
                return self._stale("its HMAC does not verify (damaged or forged)")
            key = base64.b64decode(h["key"], validate=True)
            chain = [base64.b64decode(k, validate=True) for k in h["chain"]]
            line = _line_ending_at(self.ledger_path, offset)
            if line is None or hashlib.sha256(line).hexdigest() != h["head_sha256"]:
                return self._stale("the ledger no longer holds the line it ends with")
            with _gc_paused():
                doc = orjson.loads(body)
                states = {row[0]: row for row in doc["states"]}
            tables = _Tables(doc["strings"], doc["bases"])
            if len(states) != h["subjects"]:
                return self._stale("it is damaged")
            seq, changed = int(h["seq"]), int(h["changed_seq"])
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return self._stale("it is unreadable")
        self._states, self._packed, self._tables = states, len(states), tables
        self._offset, self.as_of_seq, self.changed_seq = offset, seq, changed
        anchor = self._anchor()
        if anchor not in chain:
            raise LedgerRefusedError(
                MSG_KEY_NOT_IN_HISTORY.format(
                    fingerprint=hashlib.sha256(anchor).hexdigest(),
                    history=", ".join(hashlib.sha256(k).hexdigest() for k in chain),
                )
            )
        self._prev, self._key, self._chain = h["head_sha256"], key, chain
        return True

    def _stale(self, why: str) -> bool:
        log.info("registry fold cache not used (%s); folding the whole ledger", why)
        return False

    # -- states --------------------------------------------------------------------------------
    def _unpack_one(self, pid: str) -> SubjectState:
        st = self._states[pid] = _unpack(self._states[pid], self._tables)
        self._packed -= 1
        return st

    def _get(self, pid: str) -> SubjectState | None:
        st = self._states.get(pid)
        if st.__class__ is list:
            st = self._unpack_one(pid)
        return st

    def _all(self) -> dict[str, SubjectState]:
        """Every state, unpacked (in the order a full fold gives)."""
        if self._packed:
            states, t = self._states, self._tables
            with _gc_paused():
                for pid, v in states.items():
                    if v.__class__ is list:
                        states[pid] = _unpack(v, t)
            self._packed = 0
        return self._states

    def may_process(self, pid: str, purpose: str) -> Decision:
        """May ``pid``'s data be processed for ``purpose`` now?"""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown purpose '{purpose}'; purposes are: {', '.join(PURPOSES)}")
        self.refresh()
        st = self._get(pid)
        if st is None:
            return Decision(False, UNKNOWN)
        return st.decision(purpose)

    @classmethod
    def for_project(cls, paths: ProjectPaths) -> Registry:
        """The registry of the project at ``paths`` (its ledger, public key and cache key)."""
        return cls(
            paths.ledger,
            public_key_path=paths.ledger_public_key,
            mac_key_path=paths.secrets / CACHE_KEY_FILE,
        )

    def allowed(self, purpose: str) -> set[str]:
        """Every pid currently allowed for ``purpose``."""
        self.refresh()
        return {pid for pid, st in self._all().items() if st.decision(purpose).allowed}

    def get(self, pid: str) -> SubjectState | None:
        self.refresh()
        return self._get(pid)

    def peek(self, pid: str) -> SubjectState | None:
        """``pid``'s state as of the last refresh, without reading the ledger (bulk loops)."""
        return self._get(pid)

    def last_seqs(self) -> dict[str, int]:
        """Each subject's ``last_seq`` (what the consent snapshot compares), nothing unpacked."""
        self.refresh()
        return {pid: v[2] if v.__class__ is list else v.last_seq for pid, v in self._states.items()}

    def __contains__(self, pid: object) -> bool:
        self.refresh()
        return pid in self._states

    def __iter__(self) -> Iterator[SubjectState]:
        self.refresh()
        return iter(list(self._all().values()))

    def __len__(self) -> int:
        self.refresh()
        return len(self._states)

    def states(self) -> Mapping[str, SubjectState]:
        self.refresh()
        return dict(self._all())
