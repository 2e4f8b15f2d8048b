"""The C2SP transparency-log formats: signed notes, checkpoints, cosignatures and proofs.

Written from the specifications, byte for byte what Go's ``golang.org/x/mod/sumdb/note``,
transparency-dev witnesses and Sigsum speak (the tests run their published vectors):

- **signed-note** (c2sp.org/signed-note): a UTF-8 text ending in a newline, a blank line, then
  signature lines ``— <key name> base64(key ID || signature)``. The key ID is the first four
  bytes of ``SHA-256(name || 0x0A || type || public key)``; type ``0x01`` is a plain Ed25519
  signature over the text. A verifier ignores signatures of unknown keys, rejects the whole note
  when a known key's signature fails, and needs at least one verified signature.
- **verifier keys** (vkeys): ``<name>+<hex key ID>+base64(type || public key)``; signer keys
  ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed)`` as Go's ``note.GenerateKey`` writes.
- **tlog-checkpoint** (c2sp.org/tlog-checkpoint): the note text ``<origin>\\n<tree size>\\n
  <base64 RFC 6962 root>\\n``; the log signs it with the key named like its origin.
- **tlog-cosignature** (c2sp.org/tlog-cosignature), Ed25519 ``cosignature/v1``: type ``0x04``
  key IDs, the signature is ``u64 big-endian timestamp || Ed25519 over "cosignature/v1\\ntime
  <t>\\n" || checkpoint text``.
- **tlog-proof** (c2sp.org/tlog-proof): ``c2sp.org/tlog-proof@v1``, an optional ``extra`` line,
  ``index <n>``, the inclusion proof hashes, a blank line and the checkpoint note verbatim.

Only parsing, signing and verifying live here (no files, no keys on disk): the ledger's witness
logic is in :mod:`visage_ml.privacy.witness`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# Signature types of c2sp.org/signed-note.
ED25519 = 0x01
COSIGNATURE_V1 = 0x04

EM_DASH = "\u2014"
SIG_PREFIX = EM_DASH + " "
MAX_SIGNATURES = 100  # what Go's note.Open accepts; the spec asks for at least 16
MAX_NOTE_BYTES = 1 << 20
COSIG_HEADER = b"cosignature/v1\n"
TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
MAX_PROOF_HASHES = 63

MSG_MALFORMED = "malformed note: {why}"
MSG_BAD_VKEY = "not a verifier key (name+keyid+base64 of type and public key): {why}"
MSG_BAD_SKEY = "not a signer key (PRIVATE+KEY+name+keyid+base64 of 0x01 and seed): {why}"
MSG_INVALID_SIG = "invalid signature for key {name}+{key_id:08x}"
MSG_NO_VERIFIED = "note has no verifiable signatures (known keys: {known})"
MSG_BAD_CHECKPOINT = "not a tlog checkpoint: {why}"
MSG_BAD_PROOF = "not a c2sp.org/tlog-proof@v1 proof: {why}"

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX8 = re.compile(r"^[0-9a-f]{8}$")


class NoteError(ValueError):
    """A note, key or proof is malformed, or its signatures do not verify."""


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def valid_name(name: str) -> bool:
    """A key name: non-empty, no Unicode space, no ``+`` (signed-note)."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32 bytes of an Ed25519 public key (RFC 8032 encoding)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, sig_type: int, public: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Verifier:
    """A trusted key: name, signature type and Ed25519 public key (its key ID follows)."""

    name: str
    sig_type: int
    public_key: Ed25519PublicKey

    @property
    def raw(self) -> bytes:
        return raw_public(self.public_key)

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.sig_type, self.raw)

    @property
    def vkey(self) -> str:
        """The verifier key text ``name+keyid+base64(type || key)``."""
        blob = base64.b64encode(bytes([self.sig_type]) + self.raw).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{blob}"

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the raw public key: the same for every name and type."""
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, text: bytes, sig: bytes) -> bool:
        """Whether ``sig`` (without its key ID) is this key's signature over note ``text``."""
        try:
            if self.sig_type == ED25519:
                self.public_key.verify(sig, text)
                return True
            if self.sig_type == COSIGNATURE_V1 and len(sig) == 72:
                stamp = int.from_bytes(sig[:8], "big")
                if stamp >= 1 << 63:
                    return False
                self.public_key.verify(sig[8:], cosigned_message(text, stamp))
                return True
        except InvalidSignature:
            return False
        return False


def parse_vkey(vkey: str) -> Verifier:
    """Read a verifier key; types ``0x01`` (Ed25519) and ``0x04`` (Ed25519 cosignature/v1).

    Raises
    ------
    NoteError
        The text is not a well-formed vkey, or its key ID does not match the key.
    """
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError(MSG_BAD_VKEY.format(why="expected three parts separated by '+'"))
    name, hash16, blob = parts
    if not valid_name(name) or not _HEX8.fullmatch(hash16):
        raise NoteError(MSG_BAD_VKEY.format(why="bad name or key ID"))
    try:
        key = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(MSG_BAD_VKEY.format(why="the key is not base64")) from None
    if len(key) != 33 or key[0] not in (ED25519, COSIGNATURE_V1):
        raise NoteError(MSG_BAD_VKEY.format(why="not an Ed25519 key of type 0x01 or 0x04"))
    verifier = Verifier(name, key[0], Ed25519PublicKey.from_public_bytes(key[1:]))
    if verifier.key_id != int(hash16, 16):
        raise NoteError(MSG_BAD_VKEY.format(why="the key ID does not match the key"))
    return verifier


def cosigner(vkey_or_verifier: str | Verifier) -> Verifier:
    """The cosignature/v1 verifier of a witness key given as a type 0x01 or 0x04 vkey.

    As in transparency-dev's ``NewVerifierForCosignatureV1``, an Ed25519 vkey is taken as the
    same key used for timestamped cosignatures (type 0x04, hence another key ID).
    """
    v = parse_vkey(vkey_or_verifier) if isinstance(vkey_or_verifier, str) else vkey_or_verifier
    return Verifier(v.name, COSIGNATURE_V1, v.public_key)


@dataclass(frozen=True)
class Signer:
    """A named Ed25519 private key that signs notes (type 0x01) or cosigns checkpoints (0x04)."""

    name: str
    private_key: Ed25519PrivateKey

    def verifier(self, sig_type: int = ED25519) -> Verifier:
        return Verifier(self.name, sig_type, self.private_key.public_key())

    @property
    def skey(self) -> str:
        """Go's signer key text ``PRIVATE+KEY+name+keyid+base64(0x01 || seed)``."""
        seed = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        blob = base64.b64encode(bytes([ED25519]) + seed).decode("ascii")
        return f"PRIVATE+KEY+{self.name}+{self.verifier().key_id:08x}+{blob}"

    def sign(self, text: bytes) -> Signature:
        """A plain Ed25519 note signature (type 0x01) over ``text``."""
        check_text(text)
        v = self.verifier(ED25519)
        return Signature(self.name, v.key_id, self.private_key.sign(text))

    def cosign(self, text: bytes, timestamp: int | None = None) -> Signature:
        """A cosignature/v1 (type 0x04) over checkpoint ``text`` at POSIX ``timestamp``."""
        check_text(text)
        stamp = int(time.time()) if timestamp is None else int(timestamp)
        if not 0 <= stamp < 1 << 63:
            raise NoteError(MSG_MALFORMED.format(why="timestamp out of range"))
        sig = self.private_key.sign(cosigned_message(text, stamp))
        v = self.verifier(COSIGNATURE_V1)
        return Signature(self.name, v.key_id, stamp.to_bytes(8, "big") + sig)


def parse_skey(skey: str) -> Signer:
    """Read a signer key as Go's ``note.GenerateKey`` writes it."""
    parts = skey.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise NoteError(MSG_BAD_SKEY.format(why="expected PRIVATE+KEY+name+keyid+key"))
    name, hash16, blob = parts[2:]
    if not valid_name(name) or not _HEX8.fullmatch(hash16):
        raise NoteError(MSG_BAD_SKEY.format(why="bad name or key ID"))
    try:
        key = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(MSG_BAD_SKEY.format(why="the key is not base64")) from None
    if len(key) != 33 or key[0] != ED25519:
        raise NoteError(MSG_BAD_SKEY.format(why="not a 32-byte Ed25519 seed of type 0x01"))
    signer = Signer(name, Ed25519PrivateKey.from_private_bytes(key[1:]))
    if signer.verifier().key_id != int(hash16, 16):
        raise NoteError(MSG_BAD_SKEY.format(why="the key ID does not match the key"))
    return signer


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    """What an Ed25519 cosignature/v1 signs: header, time line, then the checkpoint text."""
    return COSIG_HEADER + b"time %d\n" % timestamp + text


def cosignature_timestamp(sig: Signature) -> int:
    """The POSIX time a cosignature/v1 was made (its first eight signature bytes)."""
    if len(sig.sig) != 72:
        raise NoteError(MSG_MALFORMED.format(why="not an Ed25519 cosignature/v1"))
    return int.from_bytes(sig.sig[:8], "big")


# ---------------------------------------------------------------------------------------------
# Notes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, key ID and the signature bytes after the ID."""

    name: str
    key_id: int
    sig: bytes

    @property
    def base64(self) -> str:
        return base64.b64encode(self.key_id.to_bytes(4, "big") + self.sig).decode("ascii")

    def line(self) -> bytes:
        """The signature line, newline included."""
        return f"{SIG_PREFIX}{self.name} {self.base64}\n".encode()


@dataclass(frozen=True)
class Note:
    """A parsed signed note: its text (final newline included) and its signatures."""

    text: bytes
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        return format_note(self.text, self.signatures)

    def with_signatures(self, extra: Iterable[Signature]) -> Note:
        """This note with ``extra`` signatures added (exact duplicates dropped)."""
        sigs = list(self.signatures)
        for s in extra:
            if s not in sigs:
                sigs.append(s)
        return Note(self.text, tuple(sigs))


def check_text(text: bytes) -> None:
    """Refuse a note text that the format cannot carry."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError(MSG_MALFORMED.format(why="not UTF-8")) from None
    if not decoded.endswith("\n") or _CONTROL.search(decoded):
        raise NoteError(MSG_MALFORMED.format(why="text must end in a newline, no control chars"))


def format_note(text: bytes, signatures: Sequence[Signature]) -> bytes:
    """The note's bytes: text, a blank line, one line per signature."""
    check_text(text)
    if not signatures:
        raise NoteError(MSG_MALFORMED.format(why="a signed note needs a signature"))
    return text + b"\n" + b"".join(s.line() for s in signatures)


def parse_note(data: bytes) -> Note:
    """Split a signed note into text and signature lines (nothing is verified here).

    Raises
    ------
    NoteError
        Not UTF-8, a control character, no blank line before the signatures, a malformed
        signature line, or more than :data:`MAX_SIGNATURES` signatures.
    """
    if len(data) > MAX_NOTE_BYTES:
        raise NoteError(MSG_MALFORMED.format(why="too large"))
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError(MSG_MALFORMED.format(why="not UTF-8")) from None
    if _CONTROL.search(decoded):
        raise NoteError(MSG_MALFORMED.format(why="control character"))
    split = data.rfind(b"\n\n")
    if split < 0 or not data.endswith(b"\n"):
        raise NoteError(MSG_MALFORMED.format(why="no blank line before the signatures"))
    text, block = data[: split + 1], data[split + 2 :]
    sigs: list[Signature] = []
    for raw in block.decode("utf-8").split("\n")[:-1]:
        sigs.append(parse_signature_line(raw))
        if len(sigs) > MAX_SIGNATURES:
            raise NoteError(MSG_MALFORMED.format(why="too many signatures"))
    if not sigs:
        raise NoteError(MSG_MALFORMED.format(why="no signature"))
    return Note(text, tuple(sigs))


def parse_signature_line(raw: str) -> Signature:
    """One ``— <name> <base64>`` line (without its newline)."""
    if not raw.startswith(SIG_PREFIX):
        raise NoteError(MSG_MALFORMED.format(why="a signature line must start with '— '"))
    name, sep, b64 = raw[len(SIG_PREFIX) :].partition(" ")
    if not sep or not valid_name(name):
        raise NoteError(MSG_MALFORMED.format(why="bad key name in a signature line"))
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(MSG_MALFORMED.format(why="signature is not base64")) from None
    if len(blob) < 5:
        raise NoteError(MSG_MALFORMED.format(why="signature too short"))
    return Signature(name, int.from_bytes(blob[:4], "big"), blob[4:])


def verify_note(note: Note | bytes, verifiers: Iterable[Verifier]) -> list[Verifier]:
    """The known keys whose signatures on ``note`` verify (at least one, or :class:`NoteError`).

    Signatures of unknown keys (another name or key ID) are ignored; a signature of a known key
    that fails rejects the whole note, as c2sp.org/signed-note asks.
    """
    if isinstance(note, bytes):
        note = parse_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[Verifier] = []
    for sig in note.signatures:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            continue
        if not v.verify(note.text, sig.sig):
            raise NoteError(MSG_INVALID_SIG.format(name=sig.name, key_id=sig.key_id))
        if v not in verified:
            verified.append(v)
    if not verified:
        names = ", ".join(f"{n}+{k:08x}" for n, k in known) or "none"
        raise NoteError(MSG_NO_VERIFIED.format(known=names))
    return verified


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size and RFC 6962 root hash (extension lines kept)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> bytes:
        """The checkpoint note text (c2sp.org/tlog-checkpoint)."""
        root = base64.b64encode(self.root).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return ("\n".join(lines) + "\n").encode("utf-8")


def parse_checkpoint(text: bytes) -> Checkpoint:
    """Read a checkpoint note text (the part before the signatures)."""
    try:
        lines = text.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise NoteError(MSG_BAD_CHECKPOINT.format(why="not UTF-8")) from None
    if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
        raise NoteError(MSG_BAD_CHECKPOINT.format(why="needs origin, size and root lines"))
    origin, size, root = lines[0], lines[1], lines[2]
    if not size.isascii() or not size.isdigit() or (size != "0" and size.startswith("0")):
        raise NoteError(MSG_BAD_CHECKPOINT.format(why="the size is not a decimal"))
    try:
        digest = base64.b64decode(root, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(MSG_BAD_CHECKPOINT.format(why="the root is not base64")) from None
    if len(digest) != 32:
        raise NoteError(MSG_BAD_CHECKPOINT.format(why="the root is not a SHA-256 hash"))
    return Checkpoint(origin, int(size), digest, tuple(lines[3:-1]))


def open_checkpoint(
    data: bytes, log_keys: Iterable[Verifier]
) -> tuple[Checkpoint, Note, list[Verifier]]:
    """Parse a signed checkpoint and verify the log's signature (named like its origin)."""
    note = parse_note(data)
    cp = parse_checkpoint(note.text)
    keys = [k for k in log_keys if k.name == cp.origin]
    verified = verify_note(note, keys)
    return cp, note, verified


def verified_cosigners(note: Note, witnesses: Iterable[Verifier]) -> list[Verifier]:
    """The witnesses whose cosignature/v1 on ``note`` verifies (unknown ones ignored).

    Unlike :func:`verify_note`, no verified cosignature is not an error here: the caller
    decides how many it needs.
    """
    out: list[Verifier] = []
    for w in witnesses:
        v = cosigner(w)
        for sig in note.signatures:
            if sig.name == v.name and sig.key_id == v.key_id:
                if not v.verify(note.text, sig.sig):
                    raise NoteError(MSG_INVALID_SIG.format(name=sig.name, key_id=sig.key_id))
                if v not in out:
                    out.append(v)
    return out


# ---------------------------------------------------------------------------------------------
# tlog-proof
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlogProof:
    """An offline inclusion proof: entry index, audit path, the (cosigned) checkpoint note."""

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes
    extra: bytes | None = None

    def to_text(self) -> str:
        lines = [TLOG_PROOF_HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode("ascii"))
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(h).decode("ascii") for h in self.hashes)
        return "\n".join(lines) + "\n\n" + self.checkpoint.decode("utf-8")


def parse_tlog_proof(text: str) -> TlogProof:
    """Read a ``c2sp.org/tlog-proof@v1`` text."""
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise NoteError(MSG_BAD_PROOF.format(why="no blank line before the checkpoint"))
    lines = head.split("\n")
    if lines[0] != TLOG_PROOF_HEADER:
        raise NoteError(MSG_BAD_PROOF.format(why="missing header line"))
    rest = lines[1:]
    extra = None
    try:
        if rest and rest[0].startswith("extra "):
            extra = base64.b64decode(rest.pop(0)[6:], validate=True)
        if not rest or not rest[0].startswith("index "):
            raise NoteError(MSG_BAD_PROOF.format(why="missing index line"))
        index_text = rest.pop(0)[6:]
        if not index_text.isascii() or not index_text.isdigit():
            raise NoteError(MSG_BAD_PROOF.format(why="the index is not a decimal"))
        hashes = tuple(base64.b64decode(h, validate=True) for h in rest)
    except (binascii.Error, ValueError) as exc:
        if isinstance(exc, NoteError):
            raise
        raise NoteError(MSG_BAD_PROOF.format(why="bad base64")) from None
    if any(len(h) != 32 for h in hashes):
        raise NoteError(MSG_BAD_PROOF.format(why="a hash is not 32 bytes"))
    return TlogProof(int(index_text), hashes, checkpoint.encode("utf-8"), extra)


# ---------------------------------------------------------------------------------------------
# tlog-witness add-checkpoint request bodies
# ---------------------------------------------------------------------------------------------


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """Body of ``POST /add-checkpoint`` (c2sp.org/tlog-witness)."""
    if len(proof) > MAX_PROOF_HASHES:
        raise NoteError(MSG_MALFORMED.format(why="more than 63 consistency proof lines"))
    lines = [f"old {old_size}"] + [base64.b64encode(h).decode("ascii") for h in proof]
    return ("\n".join(lines) + "\n\n").encode("ascii") + note


def parse_add_checkpoint(body: bytes) -> tuple[int, list[bytes], bytes]:
    """``(old size, consistency proof, checkpoint note)`` of an add-checkpoint body."""
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise NoteError(MSG_MALFORMED.format(why="no blank line before the checkpoint"))
    lines = head.split(b"\n")
    first = lines[0]
    if not first.startswith(b"old "):
        raise NoteError(MSG_MALFORMED.format(why="the body must start with 'old <size>'"))
    size = first[4:]
    if not size.isdigit() or (size != b"0" and size.startswith(b"0")):
        raise NoteError(MSG_MALFORMED.format(why="the old size is not a decimal"))
    if len(lines) - 1 > MAX_PROOF_HASHES:
        raise NoteError(MSG_MALFORMED.format(why="more than 63 consistency proof lines"))
    try:
        proof = [base64.b64decode(h, validate=True) for h in lines[1:]]
    except (binascii.Error, ValueError):
        raise NoteError(MSG_MALFORMED.format(why="a proof line is not base64")) from None
    if any(len(h) != 32 for h in proof):
        raise NoteError(MSG_MALFORMED.format(why="a proof line is not a SHA-256 hash"))
    return int(size), proof, note
