"""The KeyRing and sealed files used by vault and gallery.

- A :class:`KeyRing` holds one AES-256 data key per subject, each wrapped (AES-GCM) by the master
  key in its own file. Destroying that file is a cryptographic erase of everything sealed under
  the subject's key, in every copy and backup of the ciphertext (NIST SP 800-88).
- :func:`seal` / :func:`open_sealed` encrypt with AES-256-GCM and associated data (the pid and
  the role of the bytes), so a ciphertext moved to another subject or role does not open.
- :func:`write_sealed` / :func:`read_sealed` are the file form: ``prefix || nonce || ciphertext
  + tag`` written atomically with mode 0600, and its inverse.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from visage_ml import faults
from visage_ml.io import (
    atomic_write_bytes,
    file_lock,
    leftover_target,
    leftovers,
    private_dir,
    secure_unlink,
    sha256_file,
    sha256_sized,
)
from visage_ml.privacy.keys import WRONG_MASTER_KEY, MasterKeyError, check_pid

NONCE_BYTES = 12
_CHECK_PLAINTEXT = b"visage-ml master key check v1"
# Beside a key file (``.<pid>.key.was``): the SHA-256 and size of each version of it a master-key
# rotation replaced, or a destruction outside an erasure (a consent withdrawal's purge, the
# doctor) removed, a line each. Each such version is the subject's data key wrapped under the
# master key, an earlier one or the kept one: a backup made before holds it, and whoever kept
# that master key unwraps it, so an erasure seeks those bytes as well as the key file's (a
# digest opens nothing). Only the erasure, which sought them, removes the file.
# Hidden, and not ``*.key``: never taken for a key by the rings, the rotation or the doctor.
WAS_SUFFIX = ".was"


class KeyDestroyedError(KeyError):
    """The subject's data key was destroyed (cryptographic erase); the data is unrecoverable."""


def was_path(key_path: Path) -> Path:
    """Where the earlier versions of key file ``key_path`` are named (:data:`WAS_SUFFIX`)."""
    key_path = Path(key_path)
    return key_path.with_name(f".{key_path.name}{WAS_SUFFIX}")


def earlier_wrappings(key_path: Path) -> list[tuple[str, int]]:
    """(SHA-256, size) of each version of key file ``key_path`` a rotation replaced or a
    destruction outside an erasure removed (:meth:`KeyRing.destroy_files`)."""
    try:
        text = was_path(key_path).read_text(encoding="ascii")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        digest, _, size = line.partition(" ")
        if len(digest) == 64 and size.isdigit():
            out.append((digest, int(size)))
    return out


def _remember_wrapping(key_path: Path, blob: bytes) -> None:
    """Name ``blob``, the version of ``key_path`` about to be replaced, in its ``.was`` file
    (before the replace: a rotation killed between names it twice at worst, never not)."""
    _remember_versions(key_path, [(hashlib.sha256(blob).hexdigest(), len(blob))])


def _remember_versions(key_path: Path, entries: list[tuple[str, int]]) -> None:
    """Add ``entries`` (SHA-256, size) not named yet to ``key_path``'s ``.was`` file."""
    known = earlier_wrappings(key_path)
    fresh = [e for e in dict.fromkeys(entries) if e not in known]
    if fresh:
        lines = [f"{d} {n}\n" for d, n in [*known, *fresh]]
        atomic_write_bytes(was_path(key_path), "".join(lines).encode("ascii"), mode=0o600)


@contextmanager
def ring_lock(directory: Path, *, wait: bool = True) -> Iterator[None]:
    """The lock of key-ring folder ``directory``: held while a key is created or destroyed and
    for a whole re-wrap (:func:`rewrap_keyring`), so a rotation never writes back a key an
    erasure destroyed after the rotation read it. Not re-entrant (``flock`` on a second
    descriptor of the same file waits, in the same process too): never nest it.

    With ``wait`` false, :class:`~visage_ml.io.LockHeldError` at once instead of waiting.
    """
    with file_lock(Path(directory) / ".lock", wait=wait):
        yield


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM encrypt: ``nonce (12) || ciphertext+tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; raises ``cryptography.exceptions.InvalidTag`` on any change."""
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def write_sealed(
    path: Path, key: bytes, plaintext: bytes, *, aad: bytes, prefix: bytes = b""
) -> bytes:
    """Seal ``plaintext`` and write ``prefix || sealed`` to ``path`` atomically, mode 0600.

    Parameters
    ----------
    path
        The sealed file.
    key
        The subject's data key (:meth:`KeyRing.get`).
    plaintext
        What to protect.
    aad
        Associated data bound into the tag (pid, role, any clear header).
    prefix
        Clear bytes stored before the ciphertext (a header the reader parses before opening;
        authenticate it by putting it in ``aad`` too).

    Returns
    -------
    bytes
        The file's content, for hashing without reading it back.
    """
    blob = prefix + seal(key, plaintext, aad=aad)
    atomic_write_bytes(Path(path), blob, mode=0o600)
    return blob


def read_sealed(path: Path, key: bytes, *, aad: bytes, prefix_len: int = 0) -> bytes:
    """The plaintext of a file written by :func:`write_sealed`.

    Raises
    ------
    FileNotFoundError
        No such file.
    cryptography.exceptions.InvalidTag
        The file, its prefix-free part or ``aad`` differ from what was sealed, or ``key`` is
        another key.
    """
    return open_sealed(key, Path(path).read_bytes()[prefix_len:], aad=aad)


def destroy_key(key_path: Path, *, wait: bool = True, erasure: bool = False) -> dict[Path, str]:
    """Overwrite and delete key file ``key_path`` and the copies of it killed writes left
    (the key file first); each with its SHA-256 before deletion.

    With ``erasure`` (the subject's erasure, which sought every version named in
    :func:`was_path` before destroying) that file goes too. Without (a consent withdrawal's
    purge, a rectification, the doctor) each file's SHA-256 and size is added to it first: a
    backup made before holds the key, which the kept master key unwraps, and the subject's later
    erasure seeks it there by that name (:func:`earlier_wrappings`).

    Under the ring's lock (:func:`ring_lock`): a rotation re-wrapping the ring holds it until it
    is done, so the key it may have read is gone after it, not written back under the new
    master key. With ``wait`` false, :class:`~visage_ml.io.LockHeldError` when the lock is
    held, and nothing is destroyed.
    """
    key_path = Path(key_path)
    removed = {}
    with ring_lock(key_path.parent, wait=wait):
        files = [*([key_path] if key_path.is_file() else []), *leftovers(key_path)]
        if not erasure:
            # Named before any is destroyed: a destruction killed between leaves the key with
            # its name, never the key gone without one.
            _remember_versions(key_path, [sha256_sized(p) for p in files])
        for path in files:
            digest = sha256_file(path)
            if secure_unlink(path):
                removed[path] = digest
        if erasure:
            # Digests only (no key): each was sought, nothing is left to seek for it.
            secure_unlink(was_path(key_path))
    return removed


class KeyRing:
    """One wrapped AES-256 data key per subject in ``directory/<pid>.key``.

    Parameters
    ----------
    directory
        Folder of wrapped keys (created on first write).
    master_key
        32-byte key that wraps the data keys.
    context
        Bound into each wrapping as associated data, so a key file moved between key rings
        (vault, gallery) does not unwrap.
    """

    def __init__(self, directory: Path, master_key: bytes, *, context: str) -> None:
        self.directory = Path(directory)
        self._aead = AESGCM(master_key)
        self._context = context
        self._check_master_key()

    def _check_master_key(self) -> None:
        check = self.directory / ".check"
        aad = f"{self._context}:check".encode()
        if check.exists():
            blob = check.read_bytes()
            try:
                self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
            except InvalidTag:
                raise MasterKeyError(WRONG_MASTER_KEY.format(what=str(self.directory))) from None
        else:
            # Nobody but the owner may list, add, replace or delete key files.
            private_dir(self.directory)
            nonce = os.urandom(NONCE_BYTES)
            blob = nonce + self._aead.encrypt(nonce, _CHECK_PLAINTEXT, aad)
            atomic_write_bytes(check, blob, mode=0o600)

    def path(self, pid: str) -> Path:
        """File holding ``pid``'s wrapped key."""
        return self.directory / f"{check_pid(pid)}.key"

    def exists(self, pid: str) -> bool:
        """Whether ``pid`` has a (not destroyed) key here."""
        return self.path(pid).exists()

    def get(self, pid: str, *, create: bool = False) -> bytes:
        """``pid``'s data key; created when missing and ``create`` is true.

        Raises
        ------
        KeyDestroyedError
            When the key does not exist (never created, or destroyed) and ``create`` is false.
        """
        path = self.path(pid)
        aad = f"{self._context}:{pid}".encode()
        if not path.exists():
            if not create:
                raise KeyDestroyedError(pid)
            with ring_lock(self.directory):
                if not path.exists():
                    # A creation killed before its rename left a key nothing was sealed with.
                    for left in leftovers(path):
                        secure_unlink(left)
                    key = AESGCM.generate_key(bit_length=256)
                    nonce = os.urandom(NONCE_BYTES)
                    atomic_write_bytes(
                        path, nonce + self._aead.encrypt(nonce, key, aad), mode=0o600
                    )
                    return key
        blob = path.read_bytes()
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise MasterKeyError(WRONG_MASTER_KEY.format(what=str(path))) from None

    def files(self, pid: str) -> list[Path]:
        """``pid``'s key file and the copies of it that killed writes left beside it (a rotation
        or a first creation killed at the rename), those that exist: each unwraps the key."""
        path = self.path(pid)
        return [*([path] if path.is_file() else []), *leftovers(path)]

    def destroy_files(
        self, pid: str, *, wait: bool = True, erasure: bool = False
    ) -> dict[Path, str]:
        """Overwrite and delete :meth:`files` (the key file first); each with its SHA-256 before
        deletion (:func:`destroy_key`: with ``erasure``, the names of its versions go too;
        without, the versions destroyed are named for the subject's later erasure)."""
        return destroy_key(self.path(pid), wait=wait, erasure=erasure)

    def destroy(self, pid: str, *, wait: bool = True, erasure: bool = False) -> str | None:
        """Overwrite and delete ``pid``'s key file and its leftover copies (:meth:`files`);
        return the key file's SHA-256 before deletion (or None). ``erasure``: as
        :meth:`destroy_files`."""
        return self.destroy_files(pid, wait=wait, erasure=erasure).get(self.path(pid))

    def pids(self) -> list[str]:
        """Subjects that currently hold a key."""
        if not self.directory.exists():
            return []
        return sorted(p.stem for p in self.directory.glob("p*.key"))


@dataclass
class RewrapResult:
    """What :func:`rewrap_keyring` did in one key-ring folder."""

    directory: str
    rewrapped: int = 0
    already: int = 0


def rewrap_keyring(
    directory: Path, *, context: str, old_master: bytes, new_master: bytes
) -> RewrapResult:
    """Wrap every key file of a key-ring folder (and its check file) under ``new_master``.

    The data keys themselves do not change, so nothing they seal is touched. Each file is
    replaced atomically; a file that already opens under ``new_master`` is skipped, so an
    interrupted run is finished by running it again. The check file goes last: while it still
    opens under ``old_master`` the folder is not done. The temporary files of a run killed at
    a rename go first: each is a subject's key under ``new_master``, which no erasure of the
    key file would reach. Each key file's version replaced is named beside it first
    (:func:`earlier_wrappings`): a backup made before holds it, for an erasure to seek.

    Raises
    ------
    MasterKeyError
        A file opens under neither key.
    """
    directory = Path(directory)
    result = RewrapResult(str(directory))
    if not directory.is_dir():
        return result
    # Held while a key is created (its file is no leftover) or destroyed and for the whole
    # re-wrap: a doctor's purge takes it too, so it never deletes a version that is about to
    # be renamed, and an erasure's destroy waits, so the key read here is never written back.
    with ring_lock(directory):
        for left in sorted(directory.glob(".*.tmp")):
            if (leftover_target(left) or "").endswith((".key", ".check")):
                secure_unlink(left)
        old, new = AESGCM(old_master), AESGCM(new_master)
        files = sorted(directory.glob("*.key"))
        check = directory / ".check"
        if check.exists():
            files.append(check)
        for path in files:
            aad = f"{context}:{'check' if path == check else path.stem}".encode()
            try:
                blob = path.read_bytes()
            except FileNotFoundError:
                continue  # destroyed by something that does not take the lock (a person)
            nonce, body = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
            try:
                plain = old.decrypt(nonce, body, aad)
            except InvalidTag:
                try:
                    new.decrypt(nonce, body, aad)
                except InvalidTag:
                    raise MasterKeyError(WRONG_MASTER_KEY.format(what=str(path))) from None
                result.already += 1
                continue
            if not path.exists():
                # Deleted since it was read, by something that does not take the lock: writing
                # it back would bring a destroyed key back under the new master key.
                continue
            if path != check:
                _remember_wrapping(path, blob)
            fresh = os.urandom(NONCE_BYTES)
            atomic_write_bytes(path, fresh + new.encrypt(fresh, plain, aad), mode=0o600)
            faults.crash_point("keys:rewrap:file")
            result.rewrapped += 1
    return result
