"""The privacy ledger: an append-only, hash-chained, Ed25519-signed JSONL log of events.

Each line is the canonical JSON of ``{seq, time, type, pid, payload, prev_hash, hash, sig}``:
``hash`` is SHA-256 over the canonical JSON of the first six fields, ``sig`` an Ed25519
signature of ``hash``, and ``prev_hash`` the SHA-256 of the previous entry's whole line
(signature included), so the last entry's signed hash commits to every byte before it. The
ledger holds pids and hashes only, never names, contacts, images or templates, so it can be kept
for ever as the record of what was done.

Appends take an exclusive ``flock``, write one whole line with a single ``write`` on an
``O_APPEND`` descriptor and ``fsync`` it. A line left incomplete by a crash (a "torn" tail) is
never accepted: :meth:`Ledger.verify` reports it, and the next append moves the torn bytes to a
quarantine file and records a ``ledger.repaired`` event before continuing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from visage_ml import faults
from visage_ml.io import atomic_write_bytes, canonical_json, file_lock, fsync_dir
from visage_ml.privacy import merkle
from visage_ml.privacy.keys import check_pid, load_or_create_signing_key, load_public_key

log = logging.getLogger(__name__)

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
        "request.received",
        "request.verified",
        "request.in_progress",
        "request.extended",
        "request.completed",
        "request.denied",
        "erasure.requested",
        "erasure.step",
        "erasure.completed",
        "erasure.models_retrained",
        "notification.sent",
        "gallery.enrolled",
        "gallery.removed",
        "dataset.acquired",
        "tree_head",
        "ledger.repaired",
    }
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


class LedgerError(RuntimeError):
    """The ledger cannot be read or written as asked."""


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "type": self.type,
            "pid": self.pid,
            "payload": dict(self.payload),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "sig": self.sig,
        }

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

    def message(self) -> str:
        if self.ok:
            return (
                f"ledger OK: {self.entries} entries, chain and signatures valid, "
                f"{self.tree_heads} tree heads match; root {self.root}"
            )
        where = f"line {self.bad_line}"
        if self.bad_seq is not None:
            where += f" (seq {self.bad_seq})"
        return f"ledger INVALID at {where}: {self.reason}"


def entry_hash(
    seq: int, time: str, type_: str, pid: str | None, payload: Mapping[str, Any], prev: str
) -> str:
    """SHA-256 (hex) over the canonical JSON of an entry's content fields."""
    body = {
        "seq": seq,
        "time": time,
        "type": type_,
        "pid": pid,
        "payload": payload,
        "prev_hash": prev,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


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
        The Ed25519 private key (``secrets/ledger.key``), created on first append.
    public_key_path
        Where the public key is published (``privacy/ledger.pub``).
    """

    def __init__(self, path: Path, *, key_path: Path, public_key_path: Path) -> None:
        self.path = Path(path)
        self.key_path = Path(key_path)
        self.public_key_path = Path(public_key_path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._key: Ed25519PrivateKey | None = None
        self._tail: _Tail | None = None

    # -- keys ----------------------------------------------------------------------------------
    def _signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_signing_key(self.key_path, self.public_key_path)
        return self._key

    def public_key(self) -> Ed25519PublicKey:
        """The key that verifies this ledger (from ``ledger.pub``)."""
        if self.public_key_path.exists():
            return load_public_key(self.public_key_path)
        return self._signing_key().public_key()

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

    def entries(self, *, start_offset: int = 0) -> Iterator[Entry]:
        """Entries in order (complete lines only; a torn tail is not returned)."""
        for _, line in self.iter_lines(start_offset=start_offset):
            yield Entry(**orjson.loads(line))

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
        self, type_: str, pid: str | None = None, payload: Mapping[str, Any] | None = None
    ) -> Entry:
        """Sign and durably append one event; return it.

        Raises
        ------
        ValueError
            Unknown event type, malformed pid, or a payload that would hold personal data.
        """
        return self.append_many([(type_, pid, payload or {})])[0]

    def append_many(
        self, events: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Entry]:
        """Append several events under one lock and one ``fsync`` (all or, on a crash, a prefix)."""
        for type_, pid, payload in events:
            if type_ not in EVENT_TYPES:
                raise ValueError(
                    f"unknown ledger event type '{type_}'; known: {', '.join(sorted(EVENT_TYPES))}"
                )
            if pid is not None:
                check_pid(pid)
            _check_payload(payload)
        key = self._signing_key()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock_path):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size, seq, prev, torn = self._read_tail(fd)
                if torn:
                    seq, prev = self._repair(fd, size, torn, seq, prev, key)
                out: list[Entry] = []
                lines: list[bytes] = []
                for type_, pid, payload in events:
                    seq += 1
                    entry = self._make(seq, type_, pid, dict(payload), prev, key)
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
        return out

    def _make(
        self,
        seq: int,
        type_: str,
        pid: str | None,
        payload: dict[str, Any],
        prev: str,
        key: Ed25519PrivateKey,
    ) -> Entry:
        time = utc_now()
        h = entry_hash(seq, time, type_, pid, payload, prev)
        sig = base64.b64encode(key.sign(h.encode("ascii"))).decode("ascii")
        return Entry(seq, time, type_, pid, payload, prev, h, sig)

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
        covered offset, then 32 bytes per entry), so a tree head over a large ledger hashes only
        the lines appended since. The cache is used only when the line it ends with still
        hashes to its last leaf; :meth:`verify` never uses it.
        """
        hashes, offset = self._cached_leaves()
        fresh = 0
        for end, line in self.iter_lines(start_offset=offset):
            hashes.append(merkle.leaf_hash(line))
            offset, fresh = end, fresh + 1
        if fresh >= LEAF_CACHE_BATCH:
            with contextlib.suppress(OSError):
                atomic_write_bytes(
                    self._leaves_path, offset.to_bytes(8, "big") + b"".join(hashes), mode=0o600
                )
        return hashes if size is None else hashes[:size]

    @property
    def _leaves_path(self) -> Path:
        return self.path.with_name(self.path.name + ".leaves")

    def _cached_leaves(self) -> tuple[list[bytes], int]:
        try:
            blob = self._leaves_path.read_bytes()
        except OSError:
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

        Returns the first problem found, naming its line (1-based) and seq.
        """
        pub = public_key or self.public_key()
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

        def bad(i: int, seq: int | None, reason: str) -> VerifyResult:
            return VerifyResult(False, i, heads, i + 1, seq, reason)

        def sig_ok(obj: dict[str, Any]) -> bool:
            try:
                raw = base64.b64decode(obj["sig"], validate=True)
                pub.verify(raw, obj["hash"].encode())
            except (InvalidSignature, ValueError, TypeError, AttributeError):
                return False
            # Base64 has spare bits: another last character can decode to the same signature.
            # Only the canonical encoding is accepted, so that no byte of the last entry (which
            # no later prev_hash covers) can change unnoticed.
            return base64.b64encode(raw).decode("ascii") == obj["sig"]

        for i, line in enumerate(lines):
            body = _body_of(line)
            try:
                obj = orjson.loads(line)
                if body is None or set(obj) != _FIELDS:
                    raise KeyError("fields")
                seq = obj["seq"]
            except (ValueError, KeyError, TypeError):
                return bad(i, i, "not a well-formed ledger entry (bytes were altered)")
            if seq != i:
                return bad(i, seq, f"sequence gap: expected seq {i}")
            if hashlib.sha256(body).hexdigest() != obj["hash"]:
                return bad(i, seq, "hash mismatch: the entry was altered")
            if obj["prev_hash"] != prev:
                if i > 0 and not sig_ok(parsed[i - 1]):
                    return VerifyResult(False, i - 1, heads, i, i - 1, "bad signature")
                return bad(i, seq, "prev_hash does not match the previous entry")
            if (all_signatures or obj["type"] == "tree_head" or i == n - 1) and not sig_ok(obj):
                return bad(i, seq, "bad signature")
            if obj["type"] == "tree_head":
                size, root = obj["payload"].get("size"), obj["payload"].get("root")
                if (
                    not isinstance(size, int)
                    or size > len(leaves)
                    or merkle.root_from_leaf_hashes(leaves[:size]).hex() != root
                ):
                    return bad(i, seq, "tree head does not match the entries")
                heads += 1
            leaves.append(merkle.leaf_hash(line))
            parsed.append({"sig": obj["sig"], "hash": obj["hash"]})
            prev = hashlib.sha256(line).hexdigest()
        if torn:
            return VerifyResult(
                False,
                n,
                heads,
                n + 1,
                None,
                f"torn last line ({len(torn)} bytes without a newline), left by an interrupted "
                "write; the next append quarantines it",
            )
        return VerifyResult(True, n, heads, root=merkle.root_from_leaf_hashes(leaves).hex())


_FIELDS = frozenset({"seq", "time", "type", "pid", "payload", "prev_hash", "hash", "sig"})
_HASH_PREFIX = b'{"hash":"'
_SIG_KEY = b',"sig":"'


def _body_of(line: bytes) -> bytes | None:
    """The canonical JSON of an entry's content fields, cut out of its canonical line.

    Keys are sorted, so a line reads ``{"hash":"<64 hex>",<content...>,"sig":"<b64>",...}``;
    dropping the ``hash`` and ``sig`` members leaves exactly the bytes :func:`entry_hash` hashes.
    Returns None when the line is not in that form.
    """
    if not line.startswith(_HASH_PREFIX) or line[73:75] != b'",':
        return None
    i = line.rfind(_SIG_KEY)
    if i == -1:
        return None
    j = line.find(b'"', i + len(_SIG_KEY))
    if j == -1:
        return None
    return b"{" + line[75:i] + line[j + 1 :]


def inclusion_for(ledger: Ledger, seq: int, tree_size: int) -> dict[str, Any]:
    """Inclusion proof of entry ``seq`` in the tree of the first ``tree_size`` entries."""
    hashes = ledger.leaf_hashes(tree_size)
    if len(hashes) < tree_size:
        raise LedgerError(f"the ledger has only {len(hashes)} entries, not {tree_size}")
    tree = merkle.MerkleTree(hashes)
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
    return [e for e in ledger.entries() if e.pid == pid]
