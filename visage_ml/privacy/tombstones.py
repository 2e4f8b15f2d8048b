"""Keyed tombstones: what an erasure leaves so that the same person or files never come back.

``privacy/tombstones.jsonl`` holds one set of MACs, whichever erasure left them::

    {"v": 2, "n": 2, "mac": HMAC(the whole set)}
    "0b4f...": one MAC a line (a JSON string), sorted, each once
    "5e07..."

The header counts the MACs and MACs the whole set under the key: the file is only ever written
whole, so a line that is not a MAC, a count that differs or a set MAC that does not verify (a
damaged or edited file, one cut short, a key from another backup) is :class:`TombstoneFileError`
on every question, never a smaller set answering "not erased", and the file is left as found.
Whoever may write ``privacy/`` without the key could still write a file that needs no key (no set
MAC, the first version 2 header ``{"v":2}``, a version 1 file, an empty file, none), which a
project of an older version legitimately has: so the first set MAC written (or verified) leaves
a mark beside the key (``secrets/tombstone.setmac``: the file's path from the project root), and
from then on only a set MAC that verifies is that tombstone file.

Every MAC is HMAC-SHA256 under the tombstone key ``secrets/tombstone.key`` (32 random bytes,
mode 0600) over a kind prefix and a value: an erased subject's pid, their external reference
(normalised by :func:`normalise_ref`: NFKC, case-folded, invisible format characters dropped,
spaces collapsed, so a folder copied through macOS (NFD), retyped in another case, with a
zero-width or a leading space is still the erased person; MACs of the older case-fold-only
normalisation still match), the SHA-256 of one of their files, or the SHA-256 of one of their
images' PNG (the plaintext a sealed image holds, kind ``plain_sha256``) and that PNG's size in
bytes (kind ``plain_size``), and the size of each of their files (kind ``file_size``: the data
set's file an import read, which a scan looks for too), so that a scan for copies reads only
files of a size something erased has; the header's ``sizes``, a MAC of the whole set, says every
PNG's and every file's size is there, and a file without it, as earlier versions wrote and
rewrite it (or one whose ``sizes`` spoke for the PNGs alone, unless the signed ledger shows that
no erased subject had any other file: :mod:`visage_ml.privacy.tombstone_sources`, the header then
rewritten), leaves every file to be read.
The SHA-256 of each of an erased subject's keys as unwrapped (kind ``key_sha256``, with one MAC
of kind ``key_size`` saying the set holds such keys), and a keyed tag of its 32 bytes
(:func:`key_tag`, which a scan computes faster), are added before the key is destroyed
(:meth:`Tombstones.add_keys`), so that a scan finds a key printed in a notebook or a file
(:meth:`Tombstones.key_check`): the SHA-256 of a key is a check value of it, kept here keyed
and unlinked rather than in the ledger beside the pid.
Without the key the file reveals nothing: not who, not which files, not which MAC is a pid, a
reference, a file or a size. With it,
an import asks "was this reference erased?", "was this file's SHA-256 erased?" and skips the
person or file with reason ``erased_subject``; an acquisition asks "was this pid erased?"; a scan
for plaintext copies (MLflow artefacts, a certificate's verification) asks "is this file an
erased image's PNG, or the file it was imported from?", so that no record kept for good (ledger,
certificate) needs to name either, even keyed: with the key and a photograph that encodes to
it, such a name leads to the pid.

Nothing links the answers: no record groups one erasure's MACs (a reference found does not lead
to the pid, which the ledger lists in clear with its whole history), no date is kept, and every
erasure rewrites the whole sorted set atomically (temporary file, fsync, rename), so neither the
order nor the position of a MAC says which erasure wrote it. Version 1 files (one line per subject,
``{"v": 1, "subject": HMAC(pid), "macs": [...], "day": ...}``) are read and rewritten as version
2 the first time a process reads them, no MAC lost.

The key is created with the first tombstone and never again: when tombstones exist and the key
is missing, every question fails with :data:`MSG_KEY_LOST` instead of silently answering "no"
(which would let erased people back in).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_bytes, file_lock, private_dir
from visage_ml.privacy.keys import MasterKeyError, check_pid
from visage_ml.privacy.sealed import KeyDestroyedError, KeyRing

log = logging.getLogger(__name__)

KEY_BYTES = 32
VERSION = 2
HEADER = json.dumps({"v": VERSION}, separators=(",", ":"))  # as first written (no count)
_MAC_RE = re.compile(r"[0-9a-f]{64}")
_MAC_LINE_RE = re.compile(r'^"([0-9a-f]{64})"$', re.MULTILINE)
_MAC_LINE_LEN = 64 + 3  # quotes and newline
_V1_START = re.compile(r'\{\s*"v"\s*:\s*1\b')
# Beside the key: its set has been MACed, so a file that needs no key is an edit.
MARK_SUFFIX = ".setmac"
KIND_REF = "ref"
KIND_SHA256 = "sha256"
KIND_PID = "pid"
# An erased image's PNG, as a scan for plaintext copies asks for it (the domain, and so the MACs,
# that erasure records of earlier versions kept as ``plain_mac``).
KIND_PLAIN = "plain_sha256"
# The size in bytes of an erased image's PNG (the value: its decimal digits), so that a scan
# reads only the files of a size some erased image has. Keyed like the rest: without the key
# nothing says which MACs are sizes; with it, a size alone names no one.
KIND_PLAIN_SIZE = "plain_size"
# The size in bytes of an erased subject's file (kind ``sha256``: the data set's file an import
# read), so that a scan for that file reads only files of its size (a file that is one of the
# PNGs has its size as ``plain_size``).
KIND_FILE_SIZE = "file_size"
# An erased subject's key as it is once unwrapped (the SHA-256 of its 32 bytes: the data key, the
# vault's, the gallery's), so that a scan finds it printed in a notebook or a file, or saved as
# it is: with it, and no key file, every sealed copy of the subject opens. Keyed like the rest:
# the SHA-256 of a key is a check value that confirms a key guessed or found, and with the MAC
# it confirms only "an erased subject's key", never whose. Added before the key is destroyed.
KIND_KEY = "key_sha256"
# One MAC says that the set holds such keys (the value: their size, 32), so that a scan reads
# the 32-byte parts of files only where there is a key to look for.
KIND_KEY_SIZE = "key_size"
KEY_SIZE = 32
# Beside each key's MAC, a tag of its 32 bytes themselves (keyed BLAKE2b, its key derived from
# the tombstone key: :func:`key_tag`), so that a scan tests a 64-digit hex run of a log with one
# call, without a SHA-256 first and an HMAC's state copied after (1.9 s for a 64 MiB log of
# SHA-256s where a scan without keys took 0.9 s; 1.4 s so). A line like any MAC.
_KEY_TAG_DOMAIN = b"unwrapped key tag\0"
_KEY_TAG_PERSON = b"visage-key"
# The header's word that every erased image's PNG and every erased file in the set has its size
# there too: a MAC of the whole set (:func:`sizes_mac`). A file without it (one an earlier version
# wrote or rewrote, migrated, or edited) says nothing of sizes, and every file is read.
SIZES_FIELD = "sizes"
# Its domain. Before, the word spoke for the PNGs alone (domain ``sizes``), written while the
# files' sizes were not: such a word does not verify, and every file is read (but see below).
_SIZES_DOMAIN = b"sizes+files\0"
# The earlier domain. Such a word is complete where no erasure added a file without its size:
# where every erased subject was made by SynthFaces, which no import reaches (``sources``).
_PNG_SIZES_DOMAIN = b"sizes\0"

MSG_KEY_LOST = (
    "{tombstones} holds tombstones of erased subjects but the tombstone key {key} is missing: "
    "without it no import can tell whether a person was erased. Restore secrets/tombstone.key "
    "from your key backup; visage-ml never creates a new one while tombstones exist"
)
MSG_BAD_KEY = "{key} is not a 32-byte tombstone key; restore it from your key backup"
MSG_DAMAGED = (
    "{tombstones} is damaged ({why}): it can no longer tell whether a person or file was erased, "
    "so nothing is imported or acquired. Restore privacy/tombstones.jsonl from your backup "
    "(visage-ml never rewrites a damaged tombstone file)"
)
MSG_WRONG_KEY = (
    "{tombstones} was not written under the tombstone key {key} (a key or a file from another "
    "backup?): with it no import can tell whether a person was erased. Restore the matching "
    "secrets/tombstone.key and privacy/tombstones.jsonl from the same backup"
)
MSG_KEYLESS = (
    "{what}, though a set MAC under this key was written ({mark}): an edit by someone without "
    "the key, or a file older than the key's backup"
)
MSG_NOT_REWRITTEN_SIZES = (
    "%s says every erased file's size is there in an earlier format and could not be "
    "rewritten (%s), so every file is read by the scans for copies; make it writable"
)
MSG_KEY_NOT_SOUGHT = (
    "the {ring} key of {pid} was destroyed without its tag in the tombstones ({error}): a copy "
    "of the key printed in a notebook or saved to a file will not be found by a later erasure; "
    "once the tombstones are restored, look for such copies by hand"
)
MSG_NOT_REWRITTEN = (
    "%s is in the older tombstone format, whose lines link an erased subject's reference and "
    "files to their pid, and could not be rewritten (%s); make it writable and run any import"
)


class TombstoneKeyError(MasterKeyError):
    """Tombstones exist but their key is missing or malformed (a key error the CLI and the
    HTTP API report like a missing master key)."""


class TombstoneFileError(TombstoneKeyError):
    """The tombstone file is damaged, cut short or not of the key at hand: every question fails
    (never "not erased") and the file is never rewritten."""


def set_mac(key: bytes, macs: Iterable[str]) -> str:
    """The MAC of a whole sorted set of tombstone MACs (the version 2 header's ``mac``): a MAC
    dropped, changed or added, or another key, does not verify."""
    h = hmac.new(key, b"set\0", hashlib.sha256)
    for m in sorted(macs):
        h.update(m.encode("ascii"))
    return h.hexdigest()


def sizes_mac(key: bytes, macs: Iterable[str], *, domain: bytes = _SIZES_DOMAIN) -> str:
    """The header's :data:`SIZES_FIELD`: a MAC of the whole set in another domain than
    :func:`set_mac`, written only when every PNG and every file in the set has its size there
    too. An earlier version rewrites the header without it; without the key it cannot be
    made."""
    h = hmac.new(key, domain, hashlib.sha256)
    for m in sorted(macs):
        h.update(m.encode("ascii"))
    return h.hexdigest()


def _key_tag_key(key: bytes) -> bytes:
    """The key of :func:`key_tag`, derived from the tombstone key (its own domain: no MAC of
    the set is a tag, nor the other way)."""
    return hmac.digest(key, _KEY_TAG_DOMAIN, "sha256")


def key_tag(key: bytes, raw: bytes) -> str:
    """The tag of an erased subject's unwrapped key ``raw`` under the tombstone key ``key``:
    keyed BLAKE2b (RFC 7693) of its 32 bytes, hex, a line of the set as a MAC is."""
    return _tagger(key)(raw)


def _tagger(key: bytes) -> Callable[[bytes], str]:
    """:func:`key_tag` under the tombstone key ``key``, its own key derived once."""
    blake2b, tag_key = hashlib.blake2b, _key_tag_key(key)

    def tag(raw: bytes) -> str:
        return blake2b(raw, key=tag_key, digest_size=32, person=_KEY_TAG_PERSON).hexdigest()

    return tag


def seek_key(tombstones: Tombstones, ring: KeyRing, pid: str, *, name: str) -> None:
    """Add ``pid``'s key in ``ring`` (called ``name`` in the log), as unwrapped, to the
    tombstones (:meth:`Tombstones.add_keys`) before it is destroyed, whatever destroys it (a
    gallery's purge, the doctor's): every later scan for copies (the subject's erasure,
    another's, the certificate's verifier) then finds the key an operator printed in a notebook
    or saved to a file, which opens the subject's sealed copies in any backup; the subject's
    later erasure finds no key file left to take it from. Tombstones that cannot be written do
    not keep the key: its destruction goes on, the tag a further safeguard
    (:data:`MSG_KEY_NOT_SOUGHT` logged, with the pid alone)."""
    try:
        key = ring.get(pid)
    except (KeyDestroyedError, MasterKeyError):
        return  # no key, or not one this master key opens: nothing it could open
    try:
        tombstones.add_keys([key])
    except (TombstoneKeyError, OSError) as exc:
        log.warning(MSG_KEY_NOT_SOUGHT.format(ring=name, pid=pid, error=exc))


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
    sources
        Given the key and a set of MACs, whether signed records show that no erased subject
        among them had a file but their PNGs (:mod:`visage_ml.privacy.tombstone_sources`):
        then a header word on sizes written for the PNGs alone speaks for every file, and is
        rewritten in the current domain. None: such a word is never taken.
    """

    def __init__(
        self,
        path: Path,
        key_path: Path,
        *,
        sources: Callable[[bytes, frozenset[str]], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        self.key_path = Path(key_path)
        self.sources = sources
        self._key: bytes | None = None
        self._macs: frozenset[str] = frozenset()
        self._sized = True
        # Whether the file last read carries a word on sizes for the PNGs alone that verifies.
        self._png_word = False
        self._sources_said: dict[frozenset[str], bool] = {}
        self._stat: tuple[int, int, int] | None = None

    @property
    def mark_path(self) -> Path:
        """``secrets/tombstone.setmac``: lists the tombstone files whose set has been MACed
        under the key (by their path from the project root, so a moved project keeps it)."""
        return self.key_path.with_suffix(MARK_SUFFIX)

    def _mark_name(self) -> str:
        return os.path.relpath(self.path.absolute(), self.key_path.absolute().parent.parent)

    def _marked(self) -> bool:
        try:
            names = self.mark_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError):
            return True  # unreadable: not evidence that no set MAC was written
        return self._mark_name() in names

    def _keyless(self, what: str) -> TombstoneFileError:
        """A file that needs no key where the set has been MACed: an edit."""
        why = MSG_KEYLESS.format(what=what, mark=self.mark_path.name)
        return self._damaged(why)

    def _mark(self) -> None:
        if self._marked():
            return
        try:
            names = self.mark_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            names = []
        except (OSError, UnicodeDecodeError):  # pragma: no cover - _marked() said True
            return
        try:
            private_dir(self.mark_path.parent)
            text = "".join(f"{n}\n" for n in sorted({*names, self._mark_name()}))
            atomic_write_bytes(self.mark_path, text.encode(), mode=0o600)
        except OSError as exc:  # the protection waits for the next write that can leave it
            log.warning("%s could not be written (%s)", self.mark_path, exc.strerror or exc)

    @classmethod
    def open(cls, paths: ProjectPaths) -> Tombstones:
        """The tombstones of the project at ``paths`` (its signed ledger says which erased
        subjects had no source file)."""
        # Deferred: the ledger's module is not needed by a project without tombstones.
        from visage_ml.privacy.tombstone_sources import no_unsized_files

        # A partial, not a lambda: the scan hands the tombstones to a fork server's processes
        # (pickled), which ask the sizes as this process would.
        return cls(
            paths.tombstones,
            paths.tombstone_key,
            sources=functools.partial(no_unsized_files, paths),
        )

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
    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> tuple[frozenset[str], bool, bool]:
        """The MACs the file holds, whether it must be rewritten (version 1 lines, or a
        version 2 header without its count and set MAC), and whether every PNG among them has
        its size there too (:data:`SIZES_FIELD`; an empty set has nothing without one).

        A version 2 file is only ever replaced whole (temporary file, fsync, rename), so a line
        that is not a MAC, a count that differs or a set MAC that does not verify under the key
        is damage, not a torn append: :class:`TombstoneFileError`, never a smaller set. Only
        version 1 files, which were appended to, may end in a torn line (its erasure, resumed,
        adds it again).
        """
        self._png_word = False
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if self._marked():
                raise self._keyless("missing") from None
            return frozenset(), False, True
        except UnicodeDecodeError:
            raise self._damaged("not text") from None
        if not text:
            if self._marked():
                raise self._keyless("empty")
            return frozenset(), False, True
        head, _, body = text.partition("\n")
        try:
            header = json.loads(head)
        except ValueError:
            header = None
        if isinstance(header, dict) and header.get("v") == VERSION:
            return self._read_v2(header, head, body)
        v1 = isinstance(header, dict) and header.get("v") == 1
        if not v1 and not _V1_START.match(head):  # (a version 1 line may be torn, even the first)
            raise self._damaged("its first line is no tombstone header")
        if self._marked():
            raise self._keyless("in the version 1 format")
        macs: set[str] = set()
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a torn append of version 1: its erasure, resumed, adds it again
            if isinstance(doc, dict):  # version 1: one subject's MACs, grouped
                found = [doc.get("subject"), *(doc.get("macs") or [])]
                macs.update(m for m in map(str, found) if _MAC_RE.fullmatch(m))
        return frozenset(macs), True, not macs

    def _read_v2(
        self, header: dict[str, object], head: str, body: str
    ) -> tuple[frozenset[str], bool, bool]:
        found = _MAC_LINE_RE.findall(body)
        if len(body) != _MAC_LINE_LEN * len(found):
            raise self._damaged("a line that is not a MAC, or a line cut short")
        if found != sorted(set(found)):
            raise self._damaged("MACs out of order or repeated")
        held = frozenset(found)
        mac = header.get("mac")
        if mac is None and self._marked():
            raise self._keyless("without its set MAC")
        if head == HEADER:  # as first written: no count, no set MAC (rewritten with them)
            return held, True, not held
        if header.get("n") != len(found):
            raise self._damaged(f"{len(found)} MACs where its header counts {header.get('n')}")
        key = self.existing_key()
        # Sizes are known only where the key shows the header's word was written with this set
        # (an edit without the key, or a rewrite by an earlier version, leaves them unknown).
        sizes = header.get(SIZES_FIELD)
        sized = not held or (
            key is not None
            and isinstance(sizes, str)
            and hmac.compare_digest(sizes, sizes_mac(key, held))
        )
        self._png_word = (
            not sized
            and key is not None
            and isinstance(sizes, str)
            and hmac.compare_digest(sizes, sizes_mac(key, held, domain=_PNG_SIZES_DOMAIN))
        )
        if mac is None:
            return held, key is not None, sized  # written without the key (a migration): add it
        if key is not None:
            if not hmac.compare_digest(str(mac), set_mac(key, held)):
                raise TombstoneFileError(
                    MSG_WRONG_KEY.format(tombstones=self.path, key=self.key_path)
                )
            self._mark()  # a set MACed by a version that left no mark
        return held, False, sized

    def _png_word_complete(self, key: bytes, held: frozenset[str]) -> bool:
        """Whether the file just read (``held``) carries a word on sizes for the PNGs alone that
        speaks for every file too: it verifies, and the signed records show that no erased
        subject had a file without its size (asked once a set; anything unsure: False)."""
        if not self._png_word or self.sources is None:
            return False
        if held not in self._sources_said:
            self._sources_said[held] = bool(self.sources(key, held))
        return self._sources_said[held]

    def _adopt_png_word(self) -> None:
        """Rewrite the header of a file whose word on sizes, written for the PNGs alone, speaks
        for every file (:meth:`_png_word_complete`) with the word of the current domain (under
        the lock, atomically, the same MACs), so that no scan reads every file for it."""
        key = self.existing_key()
        if key is None:
            return
        try:
            with self._lock():
                held, stale, sized = self._read()
                if not stale and not sized and self._png_word_complete(key, held):
                    self._write(held, sized=True)
        except OSError as exc:  # every file is read until a process can rewrite it
            log.warning(MSG_NOT_REWRITTEN_SIZES, self.path, exc.strerror or exc)

    def _damaged(self, why: str) -> TombstoneFileError:
        return TombstoneFileError(MSG_DAMAGED.format(tombstones=self.path, why=why))

    def _write(self, macs: Iterable[str], *, sized: bool) -> None:
        """Replace the file with ``macs`` as one sorted set, its header counting them and, when
        the key is at hand, MACing the set and (``sized``: every PNG's size is in it) saying so
        (the caller holds the lock)."""
        held = sorted(set(macs))
        header: dict[str, object] = {"v": VERSION, "n": len(held)}
        key = self.existing_key()
        if key is not None:
            header["mac"] = set_mac(key, held)
            if sized:
                header[SIZES_FIELD] = sizes_mac(key, held)
        lines = [json.dumps(header, separators=(",", ":")), *(f'"{m}"' for m in held)]
        private_dir(self.path.parent)
        self._remove_leftovers()
        atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode(), mode=0o600)
        if key is not None:  # after the rename: a mark before it would fail the older file
            self._mark()

    def _remove_leftovers(self) -> None:
        """Remove temporary files of killed rewrites (the caller holds the lock): beside the
        file it would have replaced, one's difference is that erasure's MACs, linked."""
        for left in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            left.unlink(missing_ok=True)

    def _lock(self) -> AbstractContextManager[None]:
        return file_lock(self.path.with_name(self.path.name + ".lock"))

    def _refresh(self) -> None:
        stamp = self._stamp()
        if stamp is None:
            if self._marked():
                raise self._keyless("missing")
            self._macs, self._sized, self._stat = frozenset(), True, None
            return
        if stamp == self._stat:
            return
        macs, stale, sized = self._read()
        leftovers = any(self.path.parent.glob(f".{self.path.name}.*.tmp"))
        if stale or leftovers:  # an older file links a subject's MACs: rewritten at once
            try:
                with self._lock():
                    self._remove_leftovers()
                    macs, stale, sized = self._read()
                    if stale:
                        self._write(macs, sized=sized)
                    stamp = self._stamp()
            except OSError as exc:
                log.warning(MSG_NOT_REWRITTEN, self.path, exc.strerror or exc)
        if not sized and self._png_word:
            self._adopt_png_word()
            macs, _, sized = self._read()
            stamp = self._stamp()
        self._macs, self._sized, self._stat = macs, sized, stamp

    def __len__(self) -> int:
        """How many MACs the tombstones hold (0: no erasure left one)."""
        self._refresh()
        return len(self._macs)

    def _matches(self, kind: str, *values: str) -> bool:
        key = self._load_key(create=False)
        if key is None:
            return False
        self._refresh()
        return any(self.mac_with(key, kind, value) in self._macs for value in values)

    def has_ref(self, external_ref: str) -> bool:
        """Whether a subject with this external reference (in any of :func:`ref_forms`) was
        erased."""
        return self._matches(KIND_REF, *sorted(ref_forms(external_ref)))

    def has_file(self, sha256: str) -> bool:
        """Whether a file with this SHA-256 (source file or stored image) belonged to an
        erased subject."""
        return self._matches(KIND_SHA256, sha256.lower())

    def has_plain(self, sha256: str) -> bool:
        """Whether a file with this SHA-256 is the PNG of an erased subject's image (a
        plaintext copy of a sealed image)."""
        return self._matches(KIND_PLAIN, sha256.lower())

    def has_subject(self, pid: str) -> bool:
        """Whether ``pid`` left a tombstone."""
        return self._matches(KIND_PID, check_pid(pid))

    def sizes_known(self) -> bool:
        """Whether :meth:`has_plain_size` and :meth:`has_file_size` answer for every erased
        image's PNG and every erased file: the set holds none, or the key shows that every
        erasure that added one added its size (False for a file an earlier version wrote, or
        without the key)."""
        if not self._has_lines():
            return True
        if self.existing_key() is None:
            return False
        self._refresh()
        return self._sized

    def has_plain_size(self, size: int) -> bool:
        """Whether an erased image's PNG is ``size`` bytes long (meaningful while
        :meth:`sizes_known`)."""
        return self._matches(KIND_PLAIN_SIZE, str(int(size)))

    def has_file_size(self, size: int) -> bool:
        """Whether an erased subject's file (:meth:`has_file`) is ``size`` bytes long
        (meaningful while :meth:`sizes_known`)."""
        return self._matches(KIND_FILE_SIZE, str(int(size)))

    def has_key(self, sha256: str) -> bool:
        """Whether 32 bytes with this SHA-256 are an erased subject's unwrapped key."""
        return self._matches(KIND_KEY, sha256.lower())

    def holds_keys(self) -> bool:
        """Whether the set holds any erased subject's unwrapped key (:meth:`add_keys`)."""
        return self._matches(KIND_KEY_SIZE, str(KEY_SIZE))

    def key_check(self) -> tuple[Callable[[bytes], str], frozenset[str]] | None:
        """How a scan tells 32 bytes for an erased subject's unwrapped key: the tag of 32 bytes
        (:func:`key_tag`: one call, no file read, for a scan that asks it of every 64-digit hex
        run of a gigabyte of logs) and the set as it is now, which holds the tag of each key;
        None when it holds none, or there is no key."""
        key = self.existing_key()
        if key is None or not self.holds_keys():
            return None
        return _tagger(key), self._macs

    def macs(self) -> frozenset[str]:
        """Every MAC of the set as it is now (which says nothing without the key)."""
        self._refresh()
        return self._macs

    # -- writing -------------------------------------------------------------------------------
    def add_keys(self, keys: Iterable[bytes]) -> bool:
        """Add erased subjects' unwrapped keys (32 bytes each) to the set, before the keys are
        destroyed: the MAC of each key's SHA-256 and its tag (:func:`key_tag`), never the key;
        returns whether the file was rewritten (not when it holds them all). Nothing else
        changes: no pid's MAC (the subject's tombstone is the vault step's), the word on sizes
        as it was (a key's size is always known)."""
        found = [k for k in keys if len(k) == KEY_SIZE]
        if not found:
            return False
        key = self._load_key(create=True)
        if key is None:  # pragma: no cover - see mac()
            raise TombstoneKeyError(MSG_BAD_KEY.format(key=self.key_path))
        macs = {self.mac(KIND_KEY, hashlib.sha256(k).hexdigest(), key=key) for k in found}
        macs |= {key_tag(key, k) for k in found}
        macs.add(self.mac(KIND_KEY_SIZE, str(KEY_SIZE), key=key))
        private_dir(self.path.parent)
        with self._lock():
            held, stale, sized = self._read()
            sized = sized or self._png_word_complete(key, held)
            written = not macs <= held or stale
            if written:
                self._write(held | macs, sized=sized)
            self._macs, self._sized, self._stat = held | macs, sized, self._stamp()
        return written

    def add(
        self,
        pid: str,
        *,
        refs: Iterable[str] = (),
        sha256s: Iterable[str] = (),
        plains: Iterable[str] = (),
        plain_sizes: Mapping[str, int] | None = None,
        file_sizes: Mapping[str, int] | None = None,
    ) -> bool:
        """Record ``pid``'s tombstone; returns whether the pid was new to it.

        The MACs of the pid, of ``refs``, of ``sha256s`` (files), of ``plains`` (the SHA-256
        of images' PNG) and of their sizes (``plain_sizes`` and ``file_sizes``: SHA-256 ->
        bytes) join the set, which replaces the file whole (sorted, under a lock, fsync and
        rename, mode 0600): nothing in it says which MACs came together. A PNG or a file new
        to the set without its size (a source an earlier version imported, its size not
        recorded) leaves the sizes unknown from then on (:meth:`sizes_known`). A second call
        for the same pid (a resumed erasure) writes nothing unless it brings a MAC the set
        lacks (an erasure begun by an earlier version, whose tombstone held no ``plains``) or
        the file was of version 1 (rewritten, with the same MACs).
        """
        key = self._load_key(create=True)
        if key is None:  # pragma: no cover - see mac()
            raise TombstoneKeyError(MSG_BAD_KEY.format(key=self.key_path))
        subject = self.mac(KIND_PID, check_pid(pid), key=key)
        macs = {self.mac(KIND_REF, normalise_ref(r), key=key) for r in refs if r}
        files = {self.mac(KIND_SHA256, s.lower(), key=key): s.lower() for s in sha256s if s}
        macs |= set(files)
        lengths = {str(s).lower(): n for s, n in (file_sizes or {}).items()}
        macs |= {
            self.mac(KIND_FILE_SIZE, str(int(lengths[s])), key=key)
            for s in files.values()
            if s in lengths
        }
        sizes = {str(s).lower(): n for s, n in (plain_sizes or {}).items()}
        pngs = {self.mac(KIND_PLAIN, s.lower(), key=key): s.lower() for s in plains if s}
        macs |= set(pngs)
        sized_pngs = {s for s in pngs.values() if s in sizes}
        macs |= {self.mac(KIND_PLAIN_SIZE, str(int(sizes[s])), key=key) for s in sized_pngs}
        macs.add(subject)
        private_dir(self.path.parent)
        with self._lock():
            held, stale, sized = self._read()
            # A word on sizes of an earlier version, complete for this set: the sizes are known.
            sized = sized or self._png_word_complete(key, held)
            new = subject not in held
            # A PNG or a file the set lacks, without its size: no size is known to be there for
            # every one of them.
            sized = (
                sized
                and all(m in held or s in sizes for m, s in pngs.items())
                # (a file that is one of the PNGs has its size as one)
                and all(m in held or s in lengths or s in sized_pngs for m, s in files.items())
            )
            if not macs <= held:
                held, stale = held | macs, True
            if stale:
                self._write(held, sized=sized)
            self._macs, self._sized, self._stat = held, sized, self._stamp()
        return new
