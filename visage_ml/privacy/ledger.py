"""The privacy ledger: an append-only, hash-chained, Ed25519-signed JSONL log of events.

Each line is the canonical JSON of ``{seq, time, type, pid, payload, prev_hash, hash, sig}``
plus, on entries written since actors were recorded, ``actor``: ``hash`` is SHA-256 over the
canonical JSON of the content fields (the first six, and ``actor`` when present), ``sig`` an
Ed25519 signature of ``hash``, and ``prev_hash`` the SHA-256 of the previous entry's whole line
(signature included), so the last entry's signed hash commits to every byte before it.

The actor says who caused the entry: ``api-key:<key id>`` (an HTTP request), ``os:<user>`` (a
command run by that operating-system user) or ``scheduler`` (``visage privacy enforce``). It is
taken from :func:`acting_as` (a context variable the HTTP boundary and the scheduler set), else
the operating-system user. Entries without it (older ledgers) verify exactly as before. The
ledger holds pids and hashes only, never names, contacts, images or templates, so it can be kept
for ever as the record of what was done.

Appends take an exclusive ``flock``, write one whole line with a single ``write`` on an
``O_APPEND`` descriptor and ``fsync`` it. A line left incomplete by a crash (a "torn" tail) is
never accepted: :meth:`Ledger.verify` reports it, and the next append moves the torn bytes to a
quarantine file and records a ``ledger.repaired`` event before continuing.

The signing key changes only by a ``ledger.key_rotated`` entry, signed by the old key and
carrying the new key's signature over both keys and the entry's ``prev_hash``; verification
follows this key history (:meth:`Ledger.key_chain`). Witnessed checkpoints of the ledger are the
business of :mod:`visage_ml.privacy.witnessed`.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import contextvars
import getpass
import hashlib
import hmac
import logging
import math
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from visage_ml import faults
from visage_ml.io import (
    atomic_write_bytes,
    canonical_json,
    file_lock,
    fsync_dir,
    line_spans,
    lines_containing,
    usable_cpus,
)
from visage_ml.privacy import merkle
from visage_ml.privacy.keys import (
    CACHE_KEY_FILE,
    cache_mac_key,
    check_pid,
    load_or_create_signing_key,
    load_public_key,
    public_pem,
)

log = logging.getLogger(__name__)

# Beside ``ledger.pub``: every public key the ledger has had, oldest first (PEM blocks), from its
# first rotation on; a certificate made before a rotation verifies with the key of its time.
KEYS_FILE = "ledger-keys.pem"

GENESIS_HASH = "0" * 64
# An append of at least this many entries refreshes the leaf-hash cache (see leaf_hashes).
LEAF_CACHE_BATCH = 1000

EVENT_TYPES: frozenset[str] = frozenset(
    {
        "subject.added",
        "consent.given",
        "consent.withdrawn",
        "basis.recorded",
        "restriction.set",
        "restriction.lifted",
        "objection",
        "objection.withdrawn",
        "rectification",
        "access.exported",
        "export.plaintext_released",  # a bundle handed out unencrypted (--plaintext), its hash
        "keys.master_rotated",  # every key ring re-wrapped under a new master key
        "request.received",
        "request.verified",
        "request.in_progress",
        "request.extended",
        "request.completed",
        "request.denied",
        "request.failed",  # an action on an in-progress request failed: its step and a code
        "erasure.requested",
        "erasure.step",
        "erasure.completed",
        "erasure.models_retrained",
        "notification.sent",
        "notification.queued",  # a message put in the outbox: its SHA-256, channel, audience
        "notification.failed",  # a delivery attempt failed (retried) or gave up, with a code
        "notification.revived",  # a message given up on gets another round (--retry-dead)
        "consent.expired",  # a consent older than privacy.retention.consent_months lapsed
        "retention.applied",  # `visage privacy enforce` carried out a policy (action, reason)
        "recipient.registered",  # Art. 19 recipients register (ids and hashes only)
        "recipient.removed",
        "audit.exported",  # the HTTP audit log's chain head at an export (anchors the chain)
        "audit.anchored",  # its chain head, anchored by `visage serve` (serving.audit)
        "gallery.enrolled",
        "gallery.anchored",  # a subject's anchor template set without a new template
        "gallery.removed",
        "dataset.acquired",
        "model.released",  # SHA-256 of served model / threshold files (serving/release.py)
        "tree_head",
        "ledger.repaired",
        "ledger.key_rotated",
        "witness.set",  # the witnesses and quorum in force (privacy/witnessed.py)
        "store.remembered",  # a gallery table or MLflow server written to (stack/stores.py)
        "store.forgotten",  # `visage stack forget`: a decommissioned store erasures skip now
    }
)

# A rotation entry is signed by the old key and carries the new key's signature over this
# context, both raw public keys and the entry's prev_hash (so it vouches for the whole prefix).
ROTATION_TYPE = "ledger.key_rotated"
ROTATION_CONTEXT = b"visage-ml ledger key rotation v1\n"
_ROTATION_MARK = b'"type":"ledger.key_rotated"'

MSG_NO_PUBLIC_KEY = (
    "{pub} is missing but the ledger {ledger} holds entries: restore privacy/ledger.pub from "
    "a backup (or the controller's published copy); it is the key every entry is checked with"
)
MSG_KEY_NOT_IN_HISTORY = (
    "the public key given (fingerprint {fingerprint}) signs no part of this ledger: its keys "
    "are {history}. privacy/ledger.pub was replaced, or the ledger is another one; restore "
    "privacy/ledger.pub from a backup"
)

# Keys that would put personal data into the ledger: refused in any payload, at any depth.
FORBIDDEN_PAYLOAD_KEYS: frozenset[str] = frozenset(
    {
        "name",
        "full_name",
        "external_ref",
        "reference",
        "contact",
        "email",
        "phone",
        "address",
        "image",
        "images",
        "template",
        "embedding",
        "face",
    }
)


# Who caused an entry (see the module docstring); a code, never free text.
ACTOR_RE = re.compile(r"^[A-Za-z0-9._:@+-]{1,96}$")
SCHEDULER = "scheduler"
MSG_BAD_ACTOR = (
    "actor {actor!r} is not an actor code (api-key:<id>, os:<user> or scheduler: letters, "
    "digits and ._:@+- only)"
)
_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("visage_actor", default=None)


class LedgerError(RuntimeError):
    """The ledger cannot be read or written as asked."""


def check_actor(actor: str) -> str:
    """Return ``actor`` if it is an actor code (:data:`ACTOR_RE`), else raise ValueError."""
    if not isinstance(actor, str) or not ACTOR_RE.fullmatch(actor):
        raise ValueError(MSG_BAD_ACTOR.format(actor=str(actor)[:40]))
    return actor


def os_actor() -> str:
    """``os:<user>`` for the operating-system user running this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (a bare container)
        user = str(os.getuid())
    return "os:" + (re.sub(r"[^A-Za-z0-9._-]", "_", user)[:64] or "unknown")


def api_key_actor(key_id: str) -> str:
    """``api-key:<key id>``: the actor of an HTTP request made with that key."""
    return check_actor(f"api-key:{key_id}")


def current_actor() -> str:
    """The actor new entries name: the one set by :func:`acting_as`, else :func:`os_actor`."""
    return _ACTOR.get() or os_actor()


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[str]:
    """Within the block (and the threads it starts with a copied context), entries name
    ``actor``."""
    token = _ACTOR.set(check_actor(actor))
    try:
        yield actor
    finally:
        _ACTOR.reset(token)


def set_actor(actor: str | None) -> contextvars.Token[str | None]:
    """Set the actor of this context (the HTTP boundary, for the rest of a request); returns
    the token :func:`reset_actor` takes."""
    return _ACTOR.set(check_actor(actor) if actor is not None else None)


def reset_actor(token: contextvars.Token[str | None]) -> None:
    """Undo :func:`set_actor`."""
    _ACTOR.reset(token)


def read_appended(path: Path, offset: int, size: int) -> bytes:
    """The complete lines of ``path`` between byte ``offset`` and ``size``, each ending in a
    newline (a torn last line is left for the next read); empty when there are none.

    What the folds of the ledger (the registry, the request book) read on each refresh.
    """
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size - offset)
    return data[: data.rfind(b"\n") + 1]


@dataclass(frozen=True)
class Entry:
    """One verified-form ledger entry."""

    seq: int
    time: str
    type: str
    pid: str | None
    payload: Mapping[str, Any]
    prev_hash: str
    hash: str
    sig: str
    # Who caused it (None on entries of ledgers older than actors).
    actor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "seq": self.seq,
            "time": self.time,
            "type": self.type,
            "pid": self.pid,
            "payload": dict(self.payload),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "sig": self.sig,
        }
        if self.actor is not None:
            d["actor"] = self.actor
        return d

    def line(self) -> bytes:
        """The entry's exact bytes in the ledger (without the newline): the Merkle leaf."""
        return canonical_json(self.to_dict())


@dataclass
class VerifyResult:
    """Outcome of :meth:`Ledger.verify`."""

    ok: bool
    entries: int
    tree_heads: int = 0
    bad_line: int | None = None
    bad_seq: int | None = None
    reason: str = ""
    root: str = ""
    # Fingerprints of the keys that sign the ledger, oldest first (rotations in between).
    keys: list[str] = field(default_factory=list)

    def message(self) -> str:
        if self.ok:
            rotated = f", {len(self.keys) - 1} key rotation(s)" if len(self.keys) > 1 else ""
            heads = f", {self.tree_heads} signed tree head(s) match" if self.tree_heads else ""
            key = f"; key fingerprint {self.keys[-1]}" if self.keys else ""
            return (
                f"ledger OK: {self.entries} entries, chain and signatures valid"
                f"{heads}{rotated}; root {self.root}{key}"
            )
        where = f"line {self.bad_line}"
        if self.bad_seq is not None:
            where += f" (seq {self.bad_seq})"
        return f"ledger INVALID at {where}: {self.reason}"


def entry_hash(
    seq: int,
    time: str,
    type_: str,
    pid: str | None,
    payload: Mapping[str, Any],
    prev: str,
    actor: str | None = None,
) -> str:
    """SHA-256 (hex) over the canonical JSON of an entry's content fields (``actor`` only
    when the entry has one, so that entries written before actors hash as they always did)."""
    body: dict[str, Any] = {
        "seq": seq,
        "time": time,
        "type": type_,
        "pid": pid,
        "payload": payload,
        "prev_hash": prev,
    }
    if actor is not None:
        body["actor"] = actor
    return hashlib.sha256(canonical_json(body)).hexdigest()


def entry_hash_of(obj: Mapping[str, Any]) -> str:
    """:func:`entry_hash` of a parsed ledger line (its own fields)."""
    return entry_hash(
        obj["seq"],
        obj["time"],
        obj["type"],
        obj["pid"],
        obj["payload"],
        obj["prev_hash"],
        obj.get("actor"),
    )


def _check_payload(payload: Any, path: str = "payload") -> None:
    if isinstance(payload, Mapping):
        for k, v in payload.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: keys must be strings")
            if k.lower() in FORBIDDEN_PAYLOAD_KEYS:
                raise ValueError(
                    f"{path}.{k}: the ledger holds pids and hashes only; store personal data "
                    "in the identity vault and put its hash here"
                )
            _check_payload(v, f"{path}.{k}")
    elif isinstance(payload, list | tuple):
        for i, v in enumerate(payload):
            _check_payload(v, f"{path}[{i}]")
    elif isinstance(payload, float):
        if payload != payload or payload in (float("inf"), float("-inf")):
            raise ValueError(f"{path}: non-finite number")
    elif not (payload is None or isinstance(payload, str | int | bool)):
        raise ValueError(f"{path}: {type(payload).__name__} is not JSON data")


def utc_now() -> str:
    """Current UTC time, ISO 8601 with milliseconds and a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def raw_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def rotation_message(old: bytes, new: bytes, prev_hash: str) -> bytes:
    """What the new key signs in a ``ledger.key_rotated`` entry (both raw keys, prev_hash)."""
    return ROTATION_CONTEXT + old + new + prev_hash.encode("ascii")


def check_rotation(obj: Mapping[str, Any], active: bytes) -> bytes:
    """Verify a ``ledger.key_rotated`` entry (as parsed) made while ``active`` signed; return
    the new raw key.

    The entry's hash must recompute, its signature verify with ``active`` (which the payload
    must name as ``old_key``), and ``new_key_sig`` be the new key's signature of
    :func:`rotation_message`.

    Raises
    ------
    ValueError
        Any of these does not hold (the message says which).
    """
    try:
        payload = obj["payload"]
        old = base64.b64decode(payload["old_key"], validate=True)
        new = base64.b64decode(payload["new_key"], validate=True)
        new_sig = base64.b64decode(payload["new_key_sig"], validate=True)
        h = entry_hash_of(obj)
    except (KeyError, TypeError, ValueError):
        raise ValueError("key rotation entry is malformed") from None
    if obj.get("type") != ROTATION_TYPE or h != obj.get("hash"):
        raise ValueError("key rotation entry was altered")
    if old != active:
        raise ValueError("key rotation names another key than the one in force")
    try:
        Ed25519PublicKey.from_public_bytes(old).verify(
            base64.b64decode(obj["sig"], validate=True), obj["hash"].encode("ascii")
        )
    except (InvalidSignature, ValueError, TypeError):
        raise ValueError("key rotation is not signed by the key in force") from None
    try:
        Ed25519PublicKey.from_public_bytes(new).verify(
            new_sig, rotation_message(old, new, obj["prev_hash"])
        )
    except (InvalidSignature, ValueError):
        raise ValueError("key rotation is not signed by the new key") from None
    return new


def first_rotation_old_key(data: bytes) -> bytes | None:
    """The ``old_key`` of the first ``ledger.key_rotated`` line in ledger bytes ``data``."""
    pos = data.find(_ROTATION_MARK)
    while pos != -1:
        start = data.rfind(b"\n", 0, pos) + 1
        end = data.find(b"\n", pos)
        if end == -1:
            return None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            obj = orjson.loads(data[start:end])
            if obj.get("type") == ROTATION_TYPE:
                return base64.b64decode(obj["payload"]["old_key"], validate=True)
        pos = data.find(_ROTATION_MARK, end)
    return None


@dataclass
class KeyChain:
    """The ledger's signing keys in order: ``keys[i]`` signs from seq ``starts[i]`` (the entry
    after the rotation that introduced it; the rotation itself is signed by the key before)."""

    keys: list[bytes]
    starts: list[int]

    def key_at(self, seq: int) -> bytes:
        """The raw key that signs entry ``seq``."""
        i = bisect.bisect_right(self.starts, seq) - 1
        return self.keys[max(i, 0)]

    @property
    def current(self) -> bytes:
        return self.keys[-1]

    def fingerprints(self) -> list[str]:
        return [hashlib.sha256(k).hexdigest() for k in self.keys]

    def public_keys(self) -> list[Ed25519PublicKey]:
        return [Ed25519PublicKey.from_public_bytes(k) for k in self.keys]


@dataclass
class _Tail:
    size: int
    seq: int
    hash: str
    leaf_hashes: list[bytes] = field(default_factory=list)


class Ledger:
    """Append-only signed event log.

    Parameters
    ----------
    path
        The JSONL file (``privacy/ledger.jsonl``).
    key_path
        The Ed25519 private key (``secrets/ledger.key``), created on the first append of a new
        ledger and never again while a ledger exists (a missing key is an error); it changes
        only through :meth:`rotate_key`.
    public_key_path
        Where the public key is published (``privacy/ledger.pub``).
    """

    def __init__(self, path: Path, *, key_path: Path, public_key_path: Path) -> None:
        self.path = Path(path)
        self.key_path = Path(key_path)
        self.public_key_path = Path(public_key_path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._key: Ed25519PrivateKey | None = None
        self._key_stat: tuple[int, int] | None = None
        self._tail: _Tail | None = None
        # Called with the entries of every append once they are durable (the privacy core
        # witnesses checkpoints from here); may raise to report that they are not witnessed.
        self.after_append: Callable[[list[Entry]], None] | None = None
        # Events written before the first one of an empty ledger (the privacy core records its
        # witnesses there, so that no non-empty prefix of the ledger lacks the record).
        self.genesis: Callable[[], list[tuple[str, str | None, Mapping[str, Any]]]] | None = None
        # The time entries are stamped with (tests of retention inject a simulated clock).
        self.clock: Callable[[], str] = utc_now

    # -- keys ----------------------------------------------------------------------------------
    @property
    def _next_key_path(self) -> Path:
        return self.key_path.with_name(self.key_path.name + ".next")

    @property
    def previous_key_path(self) -> Path:
        """Where a rotation keeps the key it replaced (until every witness knows the new one)."""
        return self.key_path.with_name(self.key_path.name + ".previous")

    def _signing_key(self, *, locked: bool = False) -> Ed25519PrivateKey:
        if self._key is not None and self._key_stat == _stat_of(self.key_path):
            return self._key
        # Another process may have rotated the key since: always sign with the file's key.
        self._finish_rotation(locked=locked)
        self._key = load_or_create_signing_key(
            self.key_path, self.public_key_path, ledger_path=self.path
        )
        self._key_stat = _stat_of(self.key_path)
        return self._key

    def signing_key(self) -> Ed25519PrivateKey:
        """The key that signs new entries and the ledger's checkpoints."""
        return self._signing_key()

    def public_key(self) -> Ed25519PublicKey:
        """The key that verifies this ledger (from ``ledger.pub``).

        Raises
        ------
        LedgerError
            ``ledger.pub`` is missing while the ledger holds entries.
        """
        if self.public_key_path.exists():
            return load_public_key(self.public_key_path)
        if self.path.exists() and self.path.stat().st_size:
            raise LedgerError(MSG_NO_PUBLIC_KEY.format(pub=self.public_key_path, ledger=self.path))
        return self._signing_key().public_key()

    def key_chain(self, anchor: Ed25519PublicKey | None = None) -> KeyChain:
        """The keys that sign this ledger, following its ``ledger.key_rotated`` entries.

        Each rotation is verified (signed by the key in force, vouched for by the new key);
        ``anchor`` (default ``ledger.pub``) must be one of the keys.

        Raises
        ------
        LedgerError
            A rotation does not verify, or the anchor is not a key of this ledger.
        """
        anchor_raw = raw_key(anchor if anchor is not None else self.public_key())
        keys, starts = [anchor_raw], [0]
        if self.path.exists():
            # The complete lines that may be rotations, read on from where this process last
            # stopped (the whole ledger was read for them on every certificate).
            data = b"".join(line for _, line in _ROTATION_LINES(self.path))
            first = first_rotation_old_key(data)
            if first is not None:
                keys = [first]
                pos = data.find(_ROTATION_MARK)
                while pos != -1:
                    start = data.rfind(b"\n", 0, pos) + 1
                    end = data.find(b"\n", pos)
                    if end == -1:
                        break
                    obj = orjson.loads(data[start:end])
                    if obj.get("type") == ROTATION_TYPE:
                        try:
                            keys.append(check_rotation(obj, keys[-1]))
                        except ValueError as exc:
                            raise LedgerError(
                                f"{self.path} seq {obj.get('seq')}: {exc}; run "
                                "`visage privacy verify-ledger`"
                            ) from None
                        starts.append(int(obj["seq"]) + 1)
                    pos = data.find(_ROTATION_MARK, end)
        chain = KeyChain(keys, starts)
        if anchor_raw not in keys:
            raise LedgerError(
                MSG_KEY_NOT_IN_HISTORY.format(
                    fingerprint=hashlib.sha256(anchor_raw).hexdigest(),
                    history=", ".join(chain.fingerprints()),
                )
            )
        return chain

    def rotate_key(self, new_key: Ed25519PrivateKey) -> tuple[Entry, Ed25519PrivateKey]:
        """Append ``ledger.key_rotated`` (signed by the current key, vouched for by
        ``new_key``) and make ``new_key`` the signing key; return the entry and the old key.

        The new key is saved as ``ledger.key.next`` first; the entry is appended and the key
        files swapped under the ledger lock, so no process signs with the old key after the
        rotation. A crash in between is finished by the next process that loads the key
        (:meth:`_finish_rotation`). The old key is kept as ``ledger.key.previous``.
        """
        old = self._signing_key()
        old_raw, new_raw = raw_key(old.public_key()), raw_key(new_key.public_key())
        if old_raw == new_raw:
            raise ValueError("the new ledger key is the current one")
        pem = new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write_bytes(self._next_key_path, pem, mode=0o600)
        with file_lock(self._lock_path):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size, seq, prev, torn = self._read_tail(fd)
                if torn:
                    seq, prev = self._repair(fd, size, torn, seq, prev, old)
                payload = {
                    "old_key": base64.b64encode(old_raw).decode("ascii"),
                    "new_key": base64.b64encode(new_raw).decode("ascii"),
                    "new_key_fingerprint": hashlib.sha256(new_raw).hexdigest(),
                    "new_key_sig": base64.b64encode(
                        new_key.sign(rotation_message(old_raw, new_raw, prev))
                    ).decode("ascii"),
                }
                entry = self._make(seq + 1, ROTATION_TYPE, None, payload, prev, old)
                data = entry.line() + b"\n"
                if os.write(fd, data) != len(data):
                    raise LedgerError(f"{self.path}: short write of the key rotation")
                os.fsync(fd)
            finally:
                os.close(fd)
            faults.crash_point("ledger:rotate:before-swap")
            self._install_next_key(new_key)
        return entry, old

    def _install_next_key(self, new_key: Ed25519PrivateKey) -> None:
        """``ledger.key`` -> ``ledger.key.previous``, ``.next`` -> ``ledger.key``, new pub."""
        if self.key_path.exists():
            os.replace(self.key_path, self.previous_key_path)
        os.replace(self._next_key_path, self.key_path)
        fsync_dir(self.key_path.parent)
        atomic_write_bytes(self.public_key_path, public_pem(new_key.public_key()), mode=0o644)
        self.publish_keys()
        self._key, self._key_stat = new_key, _stat_of(self.key_path)

    def publish_keys(self) -> Path | None:
        """Write ``ledger-keys.pem`` (:data:`KEYS_FILE`): every key of the verified key chain,
        oldest first, once the ledger has been rotated; returns it (None before a rotation).

        Written from the chain, not added to: a key a crash or an older version left out is
        put back by the next rotation or announcement.
        """
        try:
            chain = self.key_chain()
        except LedgerError as exc:  # verify-ledger names the cause; the rotation stands
            log.warning("%s not written: %s", KEYS_FILE, exc)
            return None
        if len(chain.keys) < 2:
            return None
        path = self.public_key_path.with_name(KEYS_FILE)
        data = b"".join(public_pem(k) for k in chain.public_keys())
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data, mode=0o644)
        return path

    def _finish_rotation(self, *, locked: bool = False) -> None:
        """Complete or undo a rotation a crash interrupted (``ledger.key.next`` left behind)."""
        nxt = self._next_key_path
        if not nxt.exists():
            return
        with contextlib.nullcontext() if locked else file_lock(self._lock_path):
            if not nxt.exists():
                return
            key = serialization.load_pem_private_key(nxt.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise LedgerError(f"{nxt} is not an Ed25519 private key; remove it")
            new_raw = raw_key(key.public_key())
            last_new = None
            if self.path.exists():
                with open(self.path, "rb") as fh:
                    data = fh.read()
                pos = data.rfind(_ROTATION_MARK)
                if pos != -1:
                    start, end = data.rfind(b"\n", 0, pos) + 1, data.find(b"\n", pos)
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        obj = orjson.loads(data[start:end])
                        last_new = base64.b64decode(obj["payload"]["new_key"])
            if last_new == new_raw:
                log.warning("finishing a ledger key rotation that was interrupted")
                self._install_next_key(key)
            else:
                # The rotation never reached the ledger: the current key stays.
                os.unlink(nxt)

    # -- reading -------------------------------------------------------------------------------
    def _read_tail(self, fd: int) -> tuple[int, int, str, bytes]:
        """(size, last seq, last hash, torn bytes) of the file behind ``fd``; reads backwards."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, -1, GENESIS_HASH, b""
        # Find the last newline and the one before it.
        chunk = 1 << 16
        buf = b""
        pos = size
        while True:
            start = max(0, pos - chunk)
            buf = os.pread(fd, pos - start, start) + buf
            pos = start
            last_nl = buf.rfind(b"\n")
            if last_nl != -1:
                prev_nl = buf.rfind(b"\n", 0, last_nl)
                if prev_nl != -1 or pos == 0:
                    break
            elif pos == 0:
                break
        torn = buf[last_nl + 1 :] if last_nl != -1 else buf
        if last_nl == -1:
            return size, -1, GENESIS_HASH, torn
        prev_nl = buf.rfind(b"\n", 0, last_nl)
        line = buf[prev_nl + 1 : last_nl]
        try:
            seq = int(orjson.loads(line)["seq"])
            return size, seq, hashlib.sha256(line).hexdigest(), torn
        except (ValueError, KeyError, TypeError):
            raise LedgerError(
                f"{self.path}: the last complete entry is unreadable; run "
                "`visage privacy verify-ledger` to locate the damage and restore the ledger "
                "from a backup"
            ) from None

    def __iter__(self) -> Iterator[Entry]:
        return self.entries()

    def entries(
        self, *, start_offset: int = 0, containing: bytes | tuple[bytes, ...] = ()
    ) -> Iterator[Entry]:
        """Entries in order (complete lines only; a torn tail is not returned).

        ``containing``: only lines holding one of these byte strings are parsed and returned,
        a cheap filter before the caller's own test of the fields (a pid, ``b'"audit.anchored"'``
        for a type): most of a large ledger is then never parsed.
        """
        needles = (containing,) if isinstance(containing, bytes) else containing
        if needles:
            for line in self.lines_containing(needles, start_offset=start_offset):
                yield Entry(**orjson.loads(line))
            return
        for _, line in self.iter_lines(start_offset=start_offset):
            yield Entry(**orjson.loads(line))

    def lines_containing(
        self, needles: Sequence[bytes], *, start_offset: int = 0
    ) -> Iterator[bytes]:
        """Complete lines holding one of ``needles`` (without their newline), in order: found
        by searching large blocks for each needle, never line by line."""
        if not all(needles):  # b"" is in every line (and found again at once: no progress)
            for _, line in self.iter_lines(start_offset=start_offset):
                yield line
            return
        yield from lines_containing(self.path, needles, start_offset=start_offset, block=SCAN_BLOCK)

    def offset_before(self, seq: int) -> int:
        """A byte offset at which a line with seq at most ``seq`` starts (0 at worst): where a
        reader of the entries after some seq may start instead of the ledger's beginning."""
        if seq < LINE_STRIDE:  # the first page: no need to index the ledger
            return 0
        starts = _LINE_STARTS(self.path)[1]
        i = min(max(seq, 0) // LINE_STRIDE, len(starts) - 1)
        while i > 0:
            with open(self.path, "rb") as fh:
                fh.seek(starts[i])
                first = fh.readline()
            try:
                if int(orjson.loads(first)["seq"]) <= seq:
                    return starts[i]
            except (ValueError, KeyError, TypeError):
                pass
            i -= 1
        return 0

    def iter_lines(self, *, start_offset: int = 0) -> Iterator[tuple[int, bytes]]:
        """``(end offset, line bytes)`` of each complete line from ``start_offset``."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(start_offset)
            offset = start_offset
            for line in fh:
                if not line.endswith(b"\n"):
                    return
                offset += len(line)
                yield offset, line[:-1]

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as fh:
            fd = fh.fileno()
            return self._read_tail(fd)[1] + 1

    # -- writing -------------------------------------------------------------------------------
    def append(
        self,
        type_: str,
        pid: str | None = None,
        payload: Mapping[str, Any] | None = None,
        *,
        actor: str | None = None,
    ) -> Entry:
        """Sign and durably append one event; return it.

        ``actor`` names who caused it (default :func:`current_actor`).

        Raises
        ------
        ValueError
            Unknown event type, malformed pid or actor, or a payload that would hold personal
            data.
        """
        return self.append_many([(type_, pid, payload or {})], actor=actor)[0]

    def append_many(
        self,
        events: Sequence[tuple[str, str | None, Mapping[str, Any]]],
        *,
        actor: str | None = None,
    ) -> list[Entry]:
        """Append several events under one lock and one ``fsync`` (all or, on a crash, a prefix);
        return their entries (not the :attr:`genesis` entries an empty ledger gets first)."""
        actor = check_actor(actor) if actor is not None else current_actor()
        for type_, pid, payload in events:
            if type_ not in EVENT_TYPES:
                raise ValueError(
                    f"unknown ledger event type '{type_}'; known: {', '.join(sorted(EVENT_TYPES))}"
                )
            if pid is not None:
                check_pid(pid)
            _check_payload(payload)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock_path):
            # Under the lock: a rotation swaps the key file under this same lock.
            key = self._signing_key(locked=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size, seq, prev, torn = self._read_tail(fd)
                if torn:
                    seq, prev = self._repair(fd, size, torn, seq, prev, key)
                first: list[tuple[str, str | None, Mapping[str, Any]]] = []
                if seq < 0 and self.genesis is not None:
                    first = list(self.genesis())
                    for type_, _, payload in first:
                        if type_ not in EVENT_TYPES:
                            raise ValueError(f"unknown ledger event type '{type_}'")
                        _check_payload(payload)
                    events = [*first, *events]
                out: list[Entry] = []
                lines: list[bytes] = []
                for type_, pid, payload in events:
                    seq += 1
                    entry = self._make(seq, type_, pid, dict(payload), prev, key, actor)
                    line = entry.line()
                    prev = hashlib.sha256(line).hexdigest()
                    out.append(entry)
                    lines.append(line + b"\n")
                data = b"".join(lines)
                faults.crash_point("ledger:append:before-write")
                if faults.armed("ledger:append:torn"):
                    os.write(fd, data[: max(1, len(data) // 2)])
                    faults.die()
                written = os.write(fd, data)
                if written != len(data):
                    raise LedgerError(f"{self.path}: short write ({written} of {len(data)} bytes)")
                faults.crash_point("ledger:append:before-fsync")
                os.fsync(fd)
            finally:
                os.close(fd)
        if len(out) >= LEAF_CACHE_BATCH:
            # A bulk append (an import, a batch of consents) brings the leaf-hash cache up to
            # date while the lines are fresh, so that the next tree head or erasure certificate
            # hashes only what was appended after it, not the whole ledger.
            with contextlib.suppress(OSError, LedgerError):
                self.leaf_hashes()
        if self.after_append is not None and out:
            self.after_append(out)  # the genesis entries too: they are witnessed with the rest
        return out[len(first) :]  # what the caller appended

    def _make(
        self,
        seq: int,
        type_: str,
        pid: str | None,
        payload: dict[str, Any],
        prev: str,
        key: Ed25519PrivateKey,
        actor: str | None = None,
    ) -> Entry:
        time = self.clock()
        actor = check_actor(actor) if actor is not None else current_actor()
        h = entry_hash(seq, time, type_, pid, payload, prev, actor)
        sig = base64.b64encode(key.sign(h.encode("ascii"))).decode("ascii")
        return Entry(seq, time, type_, pid, payload, prev, h, sig, actor)

    def _repair(
        self, fd: int, size: int, torn: bytes, seq: int, prev: str, key: Ed25519PrivateKey
    ) -> tuple[int, str]:
        """Quarantine a torn tail, truncate to the last complete line, record the repair."""
        digest = hashlib.sha256(torn).hexdigest()
        quarantine = self.path.with_name(f"{self.path.name}.torn-{seq + 1}-{digest[:12]}")
        atomic_write_bytes(quarantine, torn, mode=0o600)
        os.ftruncate(fd, size - len(torn))
        os.fsync(fd)
        fsync_dir(self.path.parent)
        log.warning(
            "ledger had a torn last line (%d bytes) after seq %d, left by an interrupted write; "
            "it was moved to %s and a ledger.repaired event is recorded",
            len(torn),
            seq,
            quarantine.name,
        )
        seq += 1
        entry = self._make(
            seq,
            "ledger.repaired",
            None,
            {"torn_bytes": len(torn), "torn_sha256": digest, "quarantine": quarantine.name},
            prev,
            key,
        )
        line = entry.line()
        os.write(fd, line + b"\n")
        return seq, hashlib.sha256(line).hexdigest()

    # -- tree heads ----------------------------------------------------------------------------
    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        """RFC 9162 leaf hashes of the first ``size`` entries (all when None).

        Hashes of lines already seen are kept in ``<ledger>.leaves`` (derived data: 8 bytes of
        covered offset, 32 bytes per entry, then an HMAC-SHA256 under ``secrets/fold.key``), so
        a tree head over a large ledger hashes only the lines appended since. The cache is used
        only when its HMAC verifies and the line it ends with still hashes to its last leaf;
        :meth:`verify` never uses it.
        """
        hashes, offset = self._cached_leaves()
        fresh = 0
        for end, line in self.iter_lines(start_offset=offset):
            hashes.append(merkle.leaf_hash(line))
            offset, fresh = end, fresh + 1
        if fresh >= LEAF_CACHE_BATCH:
            with contextlib.suppress(OSError):
                mac_key = cache_mac_key(self._cache_key_path, create=True)
                if mac_key is not None:
                    blob = offset.to_bytes(8, "big") + b"".join(hashes)
                    mac = hmac.new(mac_key, blob, hashlib.sha256).digest()
                    atomic_write_bytes(self._leaves_path, blob + mac, mode=0o600)
        return hashes if size is None else hashes[:size]

    @property
    def _cache_key_path(self) -> Path:
        return self.key_path.with_name(CACHE_KEY_FILE)

    @property
    def _leaves_path(self) -> Path:
        return self.path.with_name(self.path.name + ".leaves")

    def _cached_leaves(self) -> tuple[list[bytes], int]:
        try:
            blob = self._leaves_path.read_bytes()
            mac_key = cache_mac_key(self._cache_key_path, create=False)
        except OSError:
            return [], 0
        blob, mac = blob[:-32], blob[-32:]
        if mac_key is None or not hmac.compare_digest(
            mac, hmac.new(mac_key, blob, hashlib.sha256).digest()
        ):
            return [], 0
        offset = int.from_bytes(blob[:8], "big")
        body = blob[8:]
        if not body or len(body) % 32 or not self.path.exists():
            return [], 0
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if offset > size:
                return [], 0
            start = max(0, offset - (1 << 16))
            chunk = os.pread(fh.fileno(), offset - start, start)
        if not chunk.endswith(b"\n"):
            return [], 0
        last = chunk[:-1].rsplit(b"\n", 1)[-1]
        if (start > 0 and b"\n" not in chunk[:-1]) or merkle.leaf_hash(last) != body[-32:]:
            return [], 0
        return [body[i : i + 32] for i in range(0, len(body), 32)], offset

    def checkpoint(self) -> Entry:
        """Append a signed Merkle tree head over every entry before it."""
        with file_lock(self._lock_path):
            hashes = self.leaf_hashes()
        size = len(hashes)
        root = merkle.root_from_leaf_hashes(hashes).hex()
        # Entries appended between reading and appending are fine: the head covers `size`.
        return self.append("tree_head", None, {"size": size, "root": root})

    def latest_tree_head(self) -> Entry | None:
        """The most recent ``tree_head`` entry, if any."""
        head = None
        for entry in self.entries():
            if entry.type == "tree_head":
                head = entry
        return head

    # -- verification --------------------------------------------------------------------------
    def verify(
        self, public_key: Ed25519PublicKey | None = None, *, all_signatures: bool = True
    ) -> VerifyResult:
        """Check every line: form, sequence, hash, chain link, signatures and tree heads.

        Parameters
        ----------
        public_key
            Verifying key; by default ``privacy/ledger.pub``.
        all_signatures
            Verify every entry's signature (the audit). With ``False`` only the anchors are
            verified - every tree head and the last entry - which detects the same tampering,
            because each ``prev_hash`` commits to the whole previous line, signature included;
            a broken link then triggers the signature check that names the altered entry.

        Key rotations are followed: each ``ledger.key_rotated`` entry must be signed by the key
        in force and vouched for by the new key, and later entries verify with the new key. The
        given key must be one of the ledger's keys (a replaced ``ledger.pub`` is reported).

        Returns the first problem found, naming its line (1-based) and seq.
        """
        pub = public_key or self.public_key()
        anchor = raw_key(pub)
        if not self.path.exists():
            return VerifyResult(ok=True, entries=0, root=merkle.EMPTY_ROOT.hex())
        with open(self.path, "rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        torn = lines.pop()  # after the final newline: b"" unless the tail is torn
        n = len(lines)
        prev = GENESIS_HASH
        heads = 0
        leaves: list[bytes] = []
        parsed: list[dict[str, Any]] = []
        active = first_rotation_old_key(data) or anchor
        chain = [active]

        def bad(i: int, seq: int | None, reason: str) -> VerifyResult:
            return VerifyResult(False, i, heads, i + 1, seq, reason)

        def sig_ok(obj: Mapping[str, Any], key: bytes) -> bool:
            try:
                raw = base64.b64decode(obj["sig"], validate=True)
                Ed25519PublicKey.from_public_bytes(key).verify(raw, obj["hash"].encode())
            except (InvalidSignature, ValueError, TypeError, AttributeError):
                return False
            # Base64 has spare bits: another last character can decode to the same signature.
            # Only the canonical encoding is accepted, so that no byte of the last entry (which
            # no later prev_hash covers) can change unnoticed.
            return base64.b64encode(raw).decode("ascii") == obj["sig"]

        def bad_sig(
            i: int, seq: int | None, key: bytes, at_heads: int | None = None
        ) -> VerifyResult:
            return VerifyResult(
                False,
                i,
                heads if at_heads is None else at_heads,
                i + 1,
                seq,
                "bad signature (not signed by the key in force, fingerprint "
                f"{hashlib.sha256(key).hexdigest()[:16]}; a forged entry or a replaced "
                "privacy/ledger.pub)",
            )

        # The anchors' signatures are checked on the walk below, the other entries' together
        # once it ends (on threads: Ed25519 verification releases the GIL). The problem named
        # is still the first: a bad signature before the line where the walk stopped wins.
        deferred: list[tuple[int, int]] = []  # (line index, tree heads before it)

        def first_problem(found: VerifyResult | None) -> VerifyResult | None:
            upto = found.entries if found is not None else n
            items = [(i, at, parsed[i]) for i, at in deferred if i <= upto]
            first = _first_bad_signature(items, sig_ok)
            if first is None:
                return found
            i, at_heads, entry = first
            return bad_sig(i, i, entry["key"], at_heads)

        def walk() -> VerifyResult | None:
            nonlocal prev, heads, active
            for i, line in enumerate(lines):
                body = _body_of(line)
                try:
                    obj = orjson.loads(line)
                    if body is None or (set(obj) != _FIELDS and set(obj) != _FIELDS_ACTOR):
                        raise KeyError("fields")
                    seq = obj["seq"]
                except (ValueError, KeyError, TypeError):
                    return bad(i, i, "not a well-formed ledger entry (bytes were altered)")
                if seq != i:
                    return bad(i, seq, f"sequence gap: expected seq {i}")
                if hashlib.sha256(body).hexdigest() != obj["hash"]:
                    return bad(i, seq, "hash mismatch: the entry was altered")
                if obj["prev_hash"] != prev:
                    if i > 0 and not sig_ok(parsed[i - 1], parsed[i - 1]["key"]):
                        return VerifyResult(False, i - 1, heads, i, i - 1, "bad signature")
                    return bad(i, seq, "prev_hash does not match the previous entry")
                rotation = obj["type"] == ROTATION_TYPE
                if obj["type"] == "tree_head" or rotation or i == n - 1:
                    if not sig_ok(obj, active):
                        return bad_sig(i, seq, active)
                elif all_signatures:
                    deferred.append((i, heads))  # checked by first_problem, from parsed[i]
                if rotation:
                    try:
                        signer = active
                        active = check_rotation(obj, active)
                    except ValueError as exc:
                        return bad(i, seq, str(exc))
                    chain.append(active)
                else:
                    signer = active
                if obj["type"] == "tree_head":
                    head = obj["payload"] if isinstance(obj["payload"], dict) else {}
                    size, root = head.get("size"), head.get("root")
                    if (
                        not isinstance(size, int)
                        or size > len(leaves)
                        or merkle.root_from_leaf_hashes(leaves[:size]).hex() != root
                    ):
                        return bad(i, seq, "tree head does not match the entries")
                    heads += 1
                leaves.append(merkle.leaf_hash(line))
                parsed.append({"sig": obj["sig"], "hash": obj["hash"], "key": signer})
                prev = hashlib.sha256(line).hexdigest()
            return None

        stopped = first_problem(walk())
        if stopped is not None:
            return stopped
        fingerprints = [hashlib.sha256(k).hexdigest() for k in chain]
        if n and anchor not in chain:
            result = bad(
                0,
                0,
                MSG_KEY_NOT_IN_HISTORY.format(
                    fingerprint=hashlib.sha256(anchor).hexdigest(),
                    history=", ".join(fingerprints),
                ),
            )
            result.keys = fingerprints
            return result
        if torn:
            return VerifyResult(
                False,
                n,
                heads,
                n + 1,
                None,
                f"torn last line ({len(torn)} bytes without a newline), left by an interrupted "
                "write; the next append quarantines it",
                keys=fingerprints,
            )
        return VerifyResult(
            True,
            n,
            heads,
            root=merkle.root_from_leaf_hashes(leaves).hex(),
            keys=fingerprints,
        )


# Threads that check a ledger's signatures (Ledger.verify): one per core this process may run
# on, at most 16, and one thread for each _SIGNATURES_PER_THREAD entries at least.
SIGNATURE_THREADS = min(16, usable_cpus())
_SIGNATURES_PER_THREAD = 2048


def _first_bad_signature(
    items: Sequence[tuple[int, int, Mapping[str, Any]]],
    ok: Callable[[Mapping[str, Any], bytes], bool],
) -> tuple[int, int, Mapping[str, Any]] | None:
    """The first of ``items`` (line index, tree heads before it, parsed entry with its ``key``)
    whose signature ``ok`` rejects, or None; checked in contiguous runs on threads."""
    workers = min(SIGNATURE_THREADS, len(items) // _SIGNATURES_PER_THREAD + 1)

    def first(run: Sequence[tuple[int, int, Mapping[str, Any]]]) -> Any:
        return next((it for it in run if not ok(it[2], it[2]["key"])), None)

    if workers <= 1:
        return first(items)
    size = math.ceil(len(items) / (4 * workers))  # four runs a thread: the load evens out
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ledger-verify")
    try:
        for found in pool.map(first, [items[k : k + size] for k in range(0, len(items), size)]):
            if found is not None:
                return found
        return None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_FIELDS = frozenset({"seq", "time", "type", "pid", "payload", "prev_hash", "hash", "sig"})
_FIELDS_ACTOR = _FIELDS | {"actor"}


def _stat_of(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


_HASH_PREFIX = b'{"hash":"'
_ACTOR_PREFIX = b'{"actor":"'
_SIG_KEY = b',"sig":"'


def _body_of(line: bytes) -> bytes | None:
    """The canonical JSON of an entry's content fields, cut out of its canonical line.

    Keys are sorted, so a line reads ``{"hash":"<64 hex>",<content...>,"sig":"<b64>",...}``
    (``{"actor":"<code>","hash":...`` on entries that name their actor: the code's characters
    need no escaping); dropping the ``hash`` and ``sig`` members leaves exactly the bytes
    :func:`entry_hash` hashes. Returns None when the line is not in that form.
    """
    if line.startswith(_ACTOR_PREFIX):
        end = line.find(b'"', len(_ACTOR_PREFIX))
        if end == -1 or line[end + 1 : end + 2] != b",":
            return None
        rest = _body_of(b"{" + line[end + 2 :])
        if rest is None:
            return None
        # '"actor":"<code>"' then the other content members.
        return b"{" + line[1 : end + 1] + b"," + rest[1:]
    if not line.startswith(_HASH_PREFIX) or line[73:75] != b'",':
        return None
    i = line.rfind(_SIG_KEY)
    if i == -1:
        return None
    j = line.find(b'"', i + len(_SIG_KEY))
    if j == -1:
        return None
    return b"{" + line[75:i] + line[j + 1 :]


# Public name: the registry checks the last line of each batch it folds the same way.
body_of = _body_of


def inclusion_for(ledger: Ledger, seq: int, tree_size: int) -> dict[str, Any]:
    """Inclusion proof of entry ``seq`` in the tree of the first ``tree_size`` entries."""
    hashes = ledger.leaf_hashes(tree_size)
    if len(hashes) < tree_size:
        raise LedgerError(f"the ledger has only {len(hashes)} entries, not {tree_size}")
    tree = merkle.tree(hashes)
    return {
        "leaf_index": seq,
        "tree_size": tree_size,
        "leaf_hash": hashes[seq].hex(),
        "path": [p.hex() for p in tree.inclusion_proof(seq)],
        "root": tree.root().hex(),
    }


def verify_inclusion_record(record: Mapping[str, Any], leaf_line: bytes) -> bool:
    """Check an inclusion record from :func:`inclusion_for` against the entry's ledger bytes."""
    leaf = merkle.leaf_hash(leaf_line)
    if leaf.hex() != record.get("leaf_hash"):
        return False
    return merkle.verify_inclusion(
        leaf,
        int(record["leaf_index"]),
        int(record["tree_size"]),
        [bytes.fromhex(p) for p in record["path"]],
        bytes.fromhex(record["root"]),
    )


def events_of(ledger: Ledger, pid: str) -> list[Entry]:
    """Every entry about ``pid``, in order."""
    return [e for e in ledger.entries(containing=pid.encode()) if e.pid == pid]


S = TypeVar("S")


def line_hash_at(fd: int, end: int) -> str | None:
    """SHA-256 (hex) of the line ending at byte ``end`` of the open file ("" at 0; None when
    no line ends there)."""
    if end == 0:
        return ""
    start = max(0, end - (1 << 16))
    chunk = os.pread(fd, end - start, start)
    if not chunk.endswith(b"\n"):
        return None
    return hashlib.sha256(chunk[:-1].rsplit(b"\n", 1)[-1]).hexdigest()


class LedgerFold(Generic[S]):
    """A fold over the complete lines of a ledger file that a process carries on from where its
    last call stopped, while the line it stopped after is unchanged (the same file, not cut or
    rewritten there): a large ledger is read once, then only what was appended.

    ``fold(state, chunk, offset)`` takes the state so far and the next complete lines
    (``offset``: where ``chunk`` starts in the file) and returns the new state; it may raise,
    and then nothing is remembered. ``initial`` is the state of an empty ledger.

    ``held(state)``, when given, names the lines the state rests on, ``(offset, bytes)``: a
    fold that keeps a few lines (rotations, witness sets, audit anchors) reads them again on
    every call and starts over when one differs (rewritten in place at the same length, or put
    back after that). A fold without it does not see such a rewrite of a line before the last
    one it read until the process restarts; ``visage privacy verify-ledger`` names it.

    Every fold is listed for :func:`warm_folds` while it exists.
    """

    def __init__(
        self,
        fold: Callable[[S, bytes, int], S],
        initial: S,
        *,
        held: Callable[[S], Iterable[tuple[int, bytes]]] | None = None,
    ) -> None:
        self._fold = fold
        self._initial = initial
        self._held = held
        self._memo: dict[str, tuple[int, int, str, S]] = {}
        self._lock = threading.Lock()
        _FOLDS.add(self)

    def _unchanged(self, fd: int, state: S) -> bool:
        """Whether the lines ``state`` rests on (``held``) are still those bytes."""
        if self._held is None:
            return True
        return all(os.pread(fd, len(line), at) == line for at, line in self._held(state))

    def __call__(self, path: Path) -> S:
        """The state over every complete line of the ledger at ``path``."""
        key = str(Path(path).resolve())
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below; the fd is read with pread
        except FileNotFoundError:
            return self._initial
        with fh:
            fd = fh.fileno()
            st = os.fstat(fd)
            with self._lock:
                hit = self._memo.get(key)
            start, last, state = 0, "", self._initial
            if (
                hit is not None
                and hit[0] == st.st_ino
                and hit[1] <= st.st_size
                and line_hash_at(fd, hit[1]) == hit[2]
                and self._unchanged(fd, hit[3])
            ):
                start, last, state = hit[1], hit[2], hit[3]
            data = os.pread(fd, st.st_size - start, start)
        end = data.rfind(b"\n") + 1  # complete lines only: a torn tail is read next time
        state = self._fold(state, data[:end], start)
        if end:  # the last complete line, found without copying what comes before it
            last = hashlib.sha256(data[data.rfind(b"\n", 0, end - 1) + 1 : end - 1]).hexdigest()
        with self._lock:
            self._memo[key] = (st.st_ino, start + end, last, state)
        return state

    def forget(self, path: Path | None = None) -> None:
        """Drop what was remembered (of one ledger, or of all)."""
        with self._lock:
            if path is None:
                self._memo.clear()
            else:
                self._memo.pop(str(Path(path).resolve()), None)


_FOLDS: weakref.WeakSet[LedgerFold[Any]] = weakref.WeakSet()  # for warm_folds


def warm_folds(path: Path) -> None:
    """Bring every :class:`LedgerFold` this process has made up to the ledger at ``path``: a
    server calls it as it starts, so that its first requests do not each read a long ledger
    whole (0.1-0.5 s apiece at 151k entries). A fold that fails here is left cold: the request
    that needs it meets the same error and answers with it."""
    for fold in list(_FOLDS):
        try:
            fold(path)
        except Exception as exc:  # see the docstring
            log.warning(
                "the ledger fold %s was not read at start-up: %s: %s",
                getattr(fold._fold, "__qualname__", "?"),
                type(exc).__name__,
                exc,
            )


LINE_STRIDE = 1024  # Ledger.offset_before: the start of every LINE_STRIDE-th line is kept
SCAN_BLOCK = 1 << 24  # bytes Ledger.entries(containing=...) searches at a time


def _line_starts_fold(
    state: tuple[int, tuple[int, ...]], chunk: bytes, offset: int
) -> tuple[int, tuple[int, ...]]:
    """(lines so far, start offset of lines 0, LINE_STRIDE, 2 LINE_STRIDE...)."""
    count, starts = state
    found = []
    pos = 0
    while pos < len(chunk):
        if count % LINE_STRIDE == 0:
            found.append(offset + pos)
        pos = chunk.index(b"\n", pos) + 1
        count += 1
    return count, starts + tuple(found)


_LINE_STARTS: LedgerFold[tuple[int, tuple[int, ...]]] = LedgerFold(_line_starts_fold, (0, ()))


Marked = tuple[tuple[int, bytes], ...]  # (offset, line with its newline) of each line


def marked_lines(needles: Sequence[bytes]) -> Callable[[Marked, bytes, int], Marked]:
    """A :class:`LedgerFold` function keeping the lines holding one of ``needles`` with their
    offsets (``held=held_lines``)."""

    def fold(found: Marked, chunk: bytes, offset: int) -> Marked:
        more = tuple((offset + a, chunk[a : b + 1]) for a, b in line_spans(chunk, needles))
        return found + more if more else found

    return fold


def held_lines(state: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, bytes]]:
    """``held`` of a fold whose state is a tuple of ``(offset, line, ...)``."""
    return ((item[0], item[1]) for item in state)


# The ledger's complete lines holding a rotation's type (Ledger.key_chain, the first key).
_ROTATION_LINES: LedgerFold[Marked] = LedgerFold(
    marked_lines((_ROTATION_MARK,)), (), held=held_lines
)


def first_rotation_in_file(path: Path) -> bytes | None:
    """:func:`first_rotation_old_key` of the ledger file at ``path``, reading only what was
    appended since this process last asked (:class:`LedgerFold`). Every served request opens
    the privacy core, which names the log after this key: reading a 150 MB ledger each time cost
    0.2 s a request."""
    return first_rotation_old_key(b"".join(line for _, line in _ROTATION_LINES(path)))
