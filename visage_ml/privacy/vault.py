"""The identity vault: pid <-> external reference and contact, one encrypted record per subject.

Each record is a sealed file (:mod:`visage_ml.privacy.sealed`): AES-256-GCM under the subject's
own data key (a :class:`~visage_ml.privacy.sealed.KeyRing` entry wrapped by the master key), the
pid as associated data. :meth:`IdentityVault.destroy` deletes that key: every copy of the
record, backups included, becomes unreadable (cryptographic erase, NIST SP 800-88).

A blind index (HMAC-SHA256 of the normalised external reference under a key derived from the
master key) lets the vault find a subject's pid from their reference without decrypting every
record and without storing the reference in clear. References are normalised as tombstones
normalise them (:func:`~visage_ml.privacy.tombstones.normalise_ref`: NFKC, case-folded, invisible
characters dropped, spaces collapsed), so ``Zoë`` written in NFC, in NFD (a copy made on macOS)
or with a zero-width space is one person with one pid. Entries written under the older
case-fold-only normalisation are still found: a look-up tries every form of
:func:`~visage_ml.privacy.tombstones.ref_forms`, the current one first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from visage_ml.io import (
    atomic_write_json,
    file_lock,
    leftovers,
    private_dir,
    secure_unlink,
    sha256_file,
    version_nonce,
)
from visage_ml.privacy.keys import check_pid, load_master_key
from visage_ml.privacy.sealed import KeyDestroyedError, KeyRing, read_sealed, write_sealed
from visage_ml.privacy.tombstones import normalise_ref, ref_forms

RECORD_FIELDS = ("external_ref", "contact", "source", "notes")


# The blind index's own key for its version randomness (no blind entry is named so).
INDEX_NONCE = "_nonce"


class VaultError(RuntimeError):
    """A vault record cannot be read or written."""


@dataclass(frozen=True)
class DestroyResult:
    """What :meth:`IdentityVault.destroy` removed: each path with its SHA-256 before deletion."""

    pid: str
    removed: dict[str, str]


class IdentityVault:
    """Encrypted pid -> identity records under ``directory``.

    Parameters
    ----------
    directory
        ``privacy/vault`` of the project.
    master_key_path
        ``secrets/master.key``; ``$VISAGE_MASTER_KEY`` takes precedence.
    create_master
        Whether a missing master key may be created (only where no key ring of the project
        holds a key; default: where this vault holds none).
    master_key
        Use this master key instead of loading one (master-key rotation).
    """

    def __init__(
        self,
        directory: Path,
        master_key_path: Path,
        *,
        create_master: bool | None = None,
        master_key: bytes | None = None,
    ) -> None:
        self.directory = private_dir(Path(directory))
        self.records_dir = self.directory / "records"
        keys_dir = self.directory / "keys"
        if create_master is None:
            create_master = not (keys_dir.exists() and any(keys_dir.iterdir()))
        master = (
            master_key
            if master_key is not None
            else load_master_key(master_key_path, create=create_master)
        )
        self.keys = KeyRing(keys_dir, master, context="vault")
        self._index_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"visage-ml vault blind index"
        ).derive(master)
        self._index_path = self.directory / "index.json"
        self._lock = self.directory / ".lock"

    # -- blind index ---------------------------------------------------------------------------
    def _mac(self, norm: str) -> str:
        return hmac.new(self._index_key, norm.encode("utf-8"), hashlib.sha256).hexdigest()

    def _blind(self, external_ref: str) -> str:
        """The index entry written for ``external_ref`` (current normalisation)."""
        return self._mac(normalise_ref(external_ref))

    def _blinds(self, external_ref: str) -> list[str]:
        """Every index entry ``external_ref`` may have been written under, the current first
        (a record indexed before the vault normalised Unicode has a legacy entry)."""
        current = normalise_ref(external_ref)
        return [self._mac(f) for f in (current, *sorted(ref_forms(external_ref) - {current}))]

    def _read_index(self) -> dict[str, str]:
        if not self._index_path.exists():
            return {}
        index = json.loads(self._index_path.read_text(encoding="utf-8"))
        index.pop(INDEX_NONCE, None)
        return index

    def _write_index(self, index: Mapping[str, str]) -> None:
        # A fresh nonce per version: the hash an erasure records of the version it replaced
        # cannot be rebuilt from this one plus a guessed reference (the index key is on disk).
        doc = {**index, INDEX_NONCE: version_nonce()}
        # Killed writes' versions (the caller holds the lock): one may name an erased subject.
        for left in leftovers(self._index_path):
            secure_unlink(left)
        atomic_write_json(self._index_path, doc, mode=0o600, indent=None)

    def _lookup(self, index: Mapping[str, str], external_ref: str) -> str | None:
        return next((index[b] for b in self._blinds(external_ref) if b in index), None)

    def find(self, external_ref: str) -> str | None:
        """The pid recorded for ``external_ref`` (under any spelling of it), or None."""
        return self._lookup(self._read_index(), external_ref)

    def find_many(self, external_refs: Iterable[str]) -> dict[str, str]:
        """``{external_ref: pid}`` for the references already in the vault (one index read)."""
        index = self._read_index()
        found = {}
        for ref in external_refs:
            pid = self._lookup(index, ref)
            if pid is not None:
                found[ref] = pid
        return found

    # -- records -------------------------------------------------------------------------------
    def _record_path(self, pid: str) -> Path:
        return self.records_dir / f"{check_pid(pid)}.bin"

    def put(self, pid: str, record: Mapping[str, Any]) -> None:
        """Store (or replace) ``pid``'s record atomically."""
        self.put_many({pid: record})

    def put_many(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Store several records, updating the blind index once."""
        for pid, record in records.items():
            check_pid(pid)
            unknown = set(record) - set(RECORD_FIELDS)
            if unknown:
                raise ValueError(
                    f"unknown vault record field(s) {sorted(unknown)}; allowed: {RECORD_FIELDS}"
                )
        private_dir(self.records_dir)
        with file_lock(self._lock):
            index = self._read_index()
            # A pid may hold a legacy entry next to a current one: a new reference replaces both.
            by_pid: dict[str, list[str]] = {}
            for blind, owner in index.items():
                by_pid.setdefault(owner, []).append(blind)
            for pid, record in records.items():
                write_sealed(
                    self._record_path(pid),
                    self.keys.get(pid, create=True),
                    json.dumps(dict(record), sort_keys=True).encode(),
                    aad=pid.encode(),
                )
                ref = record.get("external_ref")
                if ref:
                    for old in by_pid.get(pid, []):
                        if index.get(old) == pid:
                            del index[old]
                    blind = self._blind(str(ref))
                    index[blind] = pid
                    by_pid[pid] = [blind]
            self._write_index(index)

    def get(self, pid: str) -> dict[str, Any]:
        """Decrypt ``pid``'s record.

        Raises
        ------
        KeyError
            No record for ``pid``.
        KeyDestroyedError
            The record's key was destroyed: the data is gone for good.
        """
        path = self._record_path(pid)
        try:
            key = self.keys.get(pid)
        except KeyDestroyedError:
            if path.exists():
                raise
            raise KeyError(pid) from None
        try:
            return json.loads(read_sealed(path, key, aad=pid.encode()))
        except FileNotFoundError:
            raise KeyError(pid) from None
        except InvalidTag:
            raise VaultError(
                f"vault record {path.name} fails authentication (altered or truncated); "
                "restore it from a backup"
            ) from None

    def __contains__(self, pid: object) -> bool:
        return isinstance(pid, str) and self.keys.exists(pid)

    def pids(self) -> list[str]:
        """Subjects whose record is still readable."""
        return self.keys.pids()

    def destroy(self, pid: str, *, wait: bool = True, erasure: bool = False) -> DestroyResult:
        """Cryptographically erase ``pid``: destroy the data key, then record and index entry.

        The vault's lock, then its key ring's (a rotation holds that one for its whole re-wrap,
        never the other way round). With ``wait`` false, ``LockHeldError`` when either is held,
        and nothing is destroyed. ``erasure``: as
        :meth:`~visage_ml.privacy.sealed.KeyRing.destroy_files` (without it the key's versions
        stay named for the subject's later erasure).
        """
        removed: dict[str, str] = {}
        with file_lock(self._lock, wait=wait):
            for path, digest in self.keys.destroy_files(pid, wait=wait, erasure=erasure).items():
                removed[str(path)] = digest
            rec = self._record_path(pid)
            for path in [*([rec] if rec.exists() else []), *self._leftovers_of(pid)]:
                removed[str(path)] = sha256_file(path)
                secure_unlink(path)
            index = self._read_index()
            kept = {k: v for k, v in index.items() if v != pid}
            if len(kept) != len(index):
                self._write_index(kept)
        return DestroyResult(pid, removed)

    def _leftovers_of(self, pid: str) -> list[Path]:
        """What killed writes left of ``pid``'s record, and versions of the index naming them."""
        named = json.dumps(pid).encode()
        index = [f for f in leftovers(self._index_path) if named in f.read_bytes()]
        return [*leftovers(self._record_path(pid)), *index]

    def files_of(self, pid: str) -> list[Path]:
        """The vault's files that hold something of ``pid``: record, key, the copies of them
        killed writes left, the index naming them.

        What an erasure plans to remove (and hashes first); only files that exist.
        """
        record = self._record_path(pid)
        out = [*([record] if record.is_file() else []), *self.keys.files(pid)]
        out += self._leftovers_of(pid)
        if pid in self._read_index().values():
            out.append(self._index_path)
        return out

    def reindex(self) -> int:
        """Rebuild the blind index from the records under this vault's master key.

        The index key derives from the master key, so a master-key rotation re-computes it;
        records whose key was destroyed have no entry. Returns the entries written.
        """
        index: dict[str, str] = {}
        with file_lock(self._lock):
            for pid in self.keys.pids():
                try:
                    ref = self.get(pid).get("external_ref")
                except (KeyError, VaultError):
                    continue
                if ref:
                    index[self._blind(str(ref))] = pid
            self._write_index(index)
        return len(index)

    def destroyed(self, pids: Iterable[str]) -> list[str]:
        """Those of ``pids`` whose key no longer exists."""
        return [p for p in pids if not self.keys.exists(p)]
