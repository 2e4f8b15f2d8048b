"""Keys of the privacy core: pseudonymous ids, the ledger's Ed25519 signing key, the master key.

- A pid (``p`` + 16 hex) is the only subject key anywhere; :func:`new_pid` draws one at random.
- The signing key lives in ``secrets/ledger.key`` (PKCS#8 PEM, mode 0600) and is created on first
  use; its public key is written to ``privacy/ledger.pub`` where any verifier can find it.
- The master key (32 bytes) comes from ``VISAGE_MASTER_KEY`` (base64 or hex) or
  ``secrets/master.key``. It only wraps per-subject data keys (the
  :class:`~visage_ml.privacy.sealed.KeyRing`); it never encrypts records itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from visage_ml.io import atomic_write_bytes, file_lock

PID_RE = re.compile(r"^p[0-9a-f]{16}$")
MASTER_KEY_ENV = "VISAGE_MASTER_KEY"

MISSING_MASTER_KEY = (
    "the master key is missing: {what} is encrypted under a master key that is not available. "
    "Set VISAGE_MASTER_KEY (base64 or hex of 32 bytes) or restore secrets/master.key from your "
    "key backup; visage-ml never invents a new key for existing data."
)
WRONG_MASTER_KEY = (
    "the master key does not open {what} (key check failed). Set VISAGE_MASTER_KEY or "
    "secrets/master.key to the key this project was created with."
)
BAD_MASTER_KEY_FORMAT = (
    "the master key from {source} is not 32 bytes of base64 or hex; generate one with "
    "`python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'`."
)
BAD_PID = (
    "'{pid}' is not a visage pid (p + 16 lowercase hex characters); pids come from the registry"
)


class MasterKeyError(RuntimeError):
    """The master key is missing, malformed or not the one the data was encrypted with."""


def check_pid(pid: str) -> str:
    """Return ``pid`` if it is a well-formed pseudonymous id, else raise ``ValueError``."""
    if not isinstance(pid, str) or not PID_RE.fullmatch(pid):
        raise ValueError(BAD_PID.format(pid=str(pid)[:40]))
    return pid


def new_pid() -> str:
    """A fresh random pseudonymous subject id."""
    return "p" + os.urandom(8).hex()


# ---------------------------------------------------------------------------------------------
# Ed25519 signing key
# ---------------------------------------------------------------------------------------------


MSG_LEDGER_KEY_MISSING = (
    "the ledger signing key {key} is missing but the ledger {ledger} holds {size} bytes of "
    "signed entries (published key privacy/ledger.pub, fingerprint {fingerprint}). Restore "
    "{key} from your key backup (mode 0600) and run again. visage-ml never creates a new "
    "ledger key while a ledger exists: the entries would no longer verify and the witnesses "
    "would refuse its checkpoints. To change keys on purpose, restore the key first, then run "
    "`visage privacy rotate-ledger-key`."
)
MSG_LEDGER_PUB_MISMATCH = (
    "{pub} (fingerprint {published}) is not the public key of the ledger signing key {key} "
    "(fingerprint {actual}): one of them was replaced. Restore both from your key backup; "
    "`visage privacy verify-ledger` shows which key signs the ledger."
)


class LedgerKeyError(MasterKeyError):
    """The ledger's signing key is missing, or its published public key was replaced."""


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw public key: the fingerprint witnesses and certificates pin."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _published_fingerprint(public_path: Path) -> str:
    try:
        return fingerprint(load_public_key(public_path))
    except (OSError, ValueError):
        return "unknown (privacy/ledger.pub missing or unreadable)"


def _ledger_size(ledger_path: Path | None) -> int:
    if ledger_path is None:
        return 0
    try:
        return Path(ledger_path).stat().st_size
    except FileNotFoundError:
        return 0


def load_or_create_signing_key(
    key_path: Path, public_path: Path, *, ledger_path: Path | None = None
) -> Ed25519PrivateKey:
    """Load the ledger signing key; create it (and its public key file) only for a new ledger.

    Parameters
    ----------
    key_path
        ``secrets/ledger.key`` (PKCS#8 PEM, 0600).
    public_path
        ``privacy/ledger.pub``, written when missing.
    ledger_path
        The ledger the key signs. While it holds entries, a missing key is an error (never a
        new key) and a ``ledger.pub`` that is not the key's public key is an error (never
        overwritten).

    Raises
    ------
    LedgerKeyError
        The key is missing while the ledger exists, or ``ledger.pub`` was replaced.
    """
    key_path, public_path = Path(key_path), Path(public_path)
    size = _ledger_size(ledger_path)
    if not key_path.exists():
        if size:
            raise LedgerKeyError(
                MSG_LEDGER_KEY_MISSING.format(
                    key=key_path,
                    ledger=ledger_path,
                    size=size,
                    fingerprint=_published_fingerprint(public_path),
                )
            )
        with file_lock(key_path.parent / ".keys.lock"):
            if not key_path.exists():
                key = Ed25519PrivateKey.generate()
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                os.chmod(key_path.parent, 0o700)
                atomic_write_bytes(key_path, pem, mode=0o600)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise MasterKeyError(f"{key_path} is not an Ed25519 private key")
    pub_pem = public_pem(key.public_key())
    if not public_path.exists():
        atomic_write_bytes(public_path, pub_pem, mode=0o644)
    elif public_path.read_bytes() != pub_pem:
        if size:
            raise LedgerKeyError(
                MSG_LEDGER_PUB_MISMATCH.format(
                    pub=public_path,
                    key=key_path,
                    published=_published_fingerprint(public_path),
                    actual=fingerprint(key.public_key()),
                )
            )
        atomic_write_bytes(public_path, pub_pem, mode=0o644)
    return key


CACHE_KEY_FILE = "fold.key"


def cache_mac_key(path: Path | None, *, create: bool) -> bytes | None:
    """The HMAC key of the ledger's derived caches (``secrets/fold.key``, 32 random bytes).

    The registry's fold cache and the ledger's leaf-hash cache are authenticated with it, so
    that whoever can write ``privacy/`` but not read ``secrets/`` cannot forge them. Returns
    None when ``path`` is None, or the key is missing and ``create`` is false.
    """
    if path is None:
        return None
    path = Path(path)
    try:
        key = path.read_bytes()
        return key if len(key) == 32 else None
    except FileNotFoundError:
        if not create:
            return None
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return cache_mac_key(path, create=False)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
        fh.flush()
        os.fsync(fh.fileno())
    return cache_mac_key(path, create=False)


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """PEM (SubjectPublicKeyInfo) encoding of an Ed25519 public key."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path_or_pem: Path | bytes) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file or PEM bytes."""
    pem = path_or_pem if isinstance(path_or_pem, bytes) else Path(path_or_pem).read_bytes()
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key; pass the ledger's privacy/ledger.pub")
    return key


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key of a PEM file (``ledger-keys.pem`` holds several)."""
    data = Path(path).read_bytes()
    end = b"-----END PUBLIC KEY-----"
    blocks = [b + end for b in data.split(end) if b"-----BEGIN" in b]
    return [load_public_key(b) for b in blocks] or [load_public_key(data)]


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key: first 16 hex of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Master key
# ---------------------------------------------------------------------------------------------


def _decode_key(text: str, source: str) -> bytes:
    text = text.strip()
    for decode in (bytes.fromhex, base64.b64decode, base64.urlsafe_b64decode):
        with contextlib.suppress(ValueError, binascii.Error):
            raw = decode(text)
            if len(raw) == 32:
                return raw
    raise MasterKeyError(BAD_MASTER_KEY_FORMAT.format(source=source))


ROTATION_SUFFIX = ".next"
MSG_ROTATION_IN_PROGRESS = (
    "a master-key rotation was interrupted ({next} exists): some data keys are wrapped under "
    "the new key, some under the old one. Run `visage privacy rotate-master-key` again to "
    "finish it before anything else"
)


def next_master_key_path(key_path: Path) -> Path:
    """Where a rotation keeps the new master key until every key ring is re-wrapped."""
    key_path = Path(key_path)
    return key_path.with_name(key_path.name + ROTATION_SUFFIX)


def decode_master_key(text: str, source: str) -> bytes:
    """32 key bytes from base64 or hex text (``MasterKeyError`` naming ``source`` otherwise)."""
    return _decode_key(text, source)


def load_master_key(key_path: Path, *, create: bool, rotating: bool = False) -> bytes:
    """The master key from ``$VISAGE_MASTER_KEY`` or ``key_path``.

    Parameters
    ----------
    key_path
        ``secrets/master.key`` of the project.
    create
        Create ``key_path`` (mode 0600) when neither source exists. Callers pass ``True`` only
        when no data encrypted under a master key exists yet.
    rotating
        Called by the master-key rotation itself; everyone else is refused while an
        interrupted rotation is unfinished (:data:`MSG_ROTATION_IN_PROGRESS`).
    """
    pending = next_master_key_path(key_path)
    if not rotating and pending.exists():
        raise MasterKeyError(MSG_ROTATION_IN_PROGRESS.format(next=pending))
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return _decode_key(env, MASTER_KEY_ENV)
    key_path = Path(key_path)
    if key_path.exists():
        return _decode_key(key_path.read_text(encoding="ascii", errors="replace"), str(key_path))
    if not create:
        raise MasterKeyError(MISSING_MASTER_KEY.format(what="this project's data"))
    with file_lock(key_path.parent / ".keys.lock"):
        if not key_path.exists():
            key_path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(key_path.parent, 0o700)
            atomic_write_bytes(key_path, base64.b64encode(os.urandom(32)) + b"\n", mode=0o600)
    return _decode_key(key_path.read_text(encoding="ascii"), str(key_path))
