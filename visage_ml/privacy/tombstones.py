"""Keyed tombstones: what an erasure leaves so that the same person or files never come back.

``privacy/tombstones.jsonl`` holds one line per erased subject::

    {"v": 1, "subject": HMAC(pid), "macs": [HMAC(external reference), HMAC(file SHA-256), ...],
     "day": "2025-01-31"}

Every value is HMAC-SHA256 under the tombstone key ``secrets/tombstone.key`` (32 random bytes,
mode 0600), over a kind prefix and the value (external references normalised by
:func:`normalise_ref`: NFKC, case-folded, invisible format characters dropped, spaces collapsed,
so a folder copied through macOS (NFD), retyped in another case, with a zero-width or a leading
space is still the erased person; lines written under the older case-fold-only normalisation
still match). Without the key a line reveals nothing: not who, not which files, not even which
MAC is a reference and which a file (the list is sorted). With it, an import asks "was this
reference or this file's SHA-256 erased?" and skips the person or file with reason
``erased_subject``.

The key is created with the first tombstone and never again: when tombstones exist and the key
is missing, every question fails with :data:`MSG_KEY_LOST` instead of silently answering "no"
(which would let erased people back in).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_bytes, file_lock, fsync_dir, private_dir
from visage_ml.privacy.keys import MasterKeyError, check_pid

KEY_BYTES = 32
KIND_REF = "ref"
KIND_SHA256 = "sha256"
KIND_PID = "pid"

MSG_KEY_LOST = (
    "{tombstones} holds tombstones of erased subjects but the tombstone key {key} is missing: "
    "without it no import can tell whether a person was erased. Restore secrets/tombstone.key "
    "from your key backup; visage-ml never creates a new one while tombstones exist"
)
MSG_BAD_KEY = "{key} is not a 32-byte tombstone key; restore it from your key backup"


class TombstoneKeyError(MasterKeyError):
    """Tombstones exist but their key is missing or malformed (a key error the CLI and the
    HTTP API report like a missing master key)."""


def normalise_ref(external_ref: str) -> str:
    """An external reference as a tombstone holds it: NFKC, case-folded, without format
    characters (zero-width spaces and joiners, BOM), spaces collapsed and dropped around a
    colon (``imagefolder: Zelda`` is the folder `` Zelda``).

    Folder names of one person differ that way between copies of a data set (macOS writes NFD,
    Linux keeps the bytes it got), so an erased person comes back unless all compare equal.
    """
    text = unicodedata.normalize("NFKC", str(external_ref))
    text = unicodedata.normalize("NFKC", text.casefold())
    text = " ".join("".join(c for c in text if unicodedata.category(c) != "Cf").split())
    return re.sub(r" ?: ?", ":", text)


def _legacy_ref(external_ref: str) -> str:
    """The normalisation of tombstones and vault index entries written before
    :func:`normalise_ref` knew Unicode: case-folded, spaces collapsed."""
    return " ".join(str(external_ref).strip().casefold().split())


def ref_forms(external_ref: str) -> set[str]:
    """Every form under which a tombstone may hold ``external_ref``: :func:`normalise_ref`, and
    the legacy form of its NFC and NFD spellings (older lines kept whichever the import saw)."""
    ref = str(external_ref)
    legacy = {_legacy_ref(unicodedata.normalize(form, ref)) for form in ("NFC", "NFD")}
    return {normalise_ref(ref), _legacy_ref(ref), *legacy}


class Tombstones:
    """The tombstones of one project.

    Parameters
    ----------
    path
        ``privacy/tombstones.jsonl``.
    key_path
        ``secrets/tombstone.key``.
    """

    def __init__(self, path: Path, key_path: Path) -> None:
        self.path = Path(path)
        self.key_path = Path(key_path)
        self._key: bytes | None = None
        self._macs: set[str] = set()
        self._subjects: set[str] = set()
        self._stat: tuple[int, int] | None = None

    @classmethod
    def open(cls, paths: ProjectPaths) -> Tombstones:
        """The tombstones of the project at ``paths``."""
        return cls(paths.tombstones, paths.tombstone_key)

    # -- key -----------------------------------------------------------------------------------
    def _has_lines(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def _load_key(self, *, create: bool) -> bytes | None:
        if self._key is not None:
            return self._key
        if self.key_path.is_file():
            key = self.key_path.read_bytes()
            if len(key) != KEY_BYTES:
                raise TombstoneKeyError(MSG_BAD_KEY.format(key=self.key_path))
            self._key = key
            return key
        if self._has_lines():
            raise TombstoneKeyError(MSG_KEY_LOST.format(tombstones=self.path, key=self.key_path))
        if not create:
            return None
        private_dir(self.key_path.parent)
        with file_lock(self.key_path.parent / ".keys.lock"):
            if not self.key_path.is_file():
                atomic_write_bytes(self.key_path, os.urandom(KEY_BYTES), mode=0o600)
        return self._load_key(create=False)

    def mac(self, kind: str, value: str, *, key: bytes | None = None) -> str:
        """Hex HMAC-SHA256 of ``kind`` and ``value`` under the tombstone key."""
        key = key if key is not None else self._load_key(create=True)
        if key is None:  # pragma: no cover - _load_key(create=True) returns a key or raises
            raise TombstoneKeyError(MSG_BAD_KEY.format(key=self.key_path))
        return self.mac_with(key, kind, value)

    @staticmethod
    def mac_with(key: bytes, kind: str, value: str) -> str:
        """:meth:`mac` under a key already read (for a scan that keys every file's digest)."""
        return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()

    def existing_key(self) -> bytes | None:
        """The tombstone key if the project has one (None: missing, or unreadable); never makes
        one."""
        try:
            return self._load_key(create=False)
        except TombstoneKeyError:
            return None

    # -- reading -------------------------------------------------------------------------------
    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._macs, self._subjects, self._stat = set(), set(), None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stat:
            return
        macs: set[str] = set()
        subjects: set[str] = set()
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue  # a torn last line of a crashed append: its erasure re-adds it
                subjects.add(str(doc.get("subject", "")))
                macs.update(str(m) for m in doc.get("macs") or [])
        self._macs, self._subjects, self._stat = macs, subjects, stamp

    def __len__(self) -> int:
        self._refresh()
        return len(self._subjects)

    def _matches(self, kind: str, *values: str) -> bool:
        key = self._load_key(create=False)
        if key is None:
            return False
        self._refresh()
        return any(self.mac(kind, value, key=key) in self._macs for value in values)

    def has_ref(self, external_ref: str) -> bool:
        """Whether a subject with this external reference (in any of :func:`ref_forms`) was
        erased."""
        return self._matches(KIND_REF, *sorted(ref_forms(external_ref)))

    def has_file(self, sha256: str) -> bool:
        """Whether a file with this SHA-256 (source file or stored image) belonged to an
        erased subject."""
        return self._matches(KIND_SHA256, sha256.lower())

    def has_subject(self, pid: str) -> bool:
        """Whether ``pid`` left a tombstone."""
        key = self._load_key(create=False)
        if key is None:
            return False
        self._refresh()
        return self.mac(KIND_PID, check_pid(pid), key=key) in self._subjects

    # -- writing -------------------------------------------------------------------------------
    def add(self, pid: str, *, refs: Iterable[str] = (), sha256s: Iterable[str] = ()) -> bool:
        """Record ``pid``'s tombstone (once); returns whether a line was written.

        Appended with fsync under a lock, mode 0600; a second call for the same pid (a resumed
        erasure) writes nothing.
        """
        key = self._load_key(create=True)
        if key is None:  # pragma: no cover - see mac()
            raise TombstoneKeyError(MSG_BAD_KEY.format(key=self.key_path))
        subject = self.mac(KIND_PID, check_pid(pid), key=key)
        macs = {self.mac(KIND_REF, normalise_ref(r), key=key) for r in refs if r}
        macs |= {self.mac(KIND_SHA256, s.lower(), key=key) for s in sha256s if s}
        private_dir(self.path.parent)
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            self._stat = None
            self._refresh()
            if subject in self._subjects:
                return False
            line = {
                "v": 1,
                "subject": subject,
                "macs": sorted(macs),
                "day": datetime.now(UTC).date().isoformat(),
            }
            data = (json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n").encode()
            if self._has_lines():
                with open(self.path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data  # end a torn line first: it stays unparseable alone
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.path.parent)
            self._stat = None
        return True
