"""The content an erasure looks for: what its records name, and every erased image's plaintext.

An erased artefact is named by the SHA-256 of its file as stored (a sealed image: ciphertext,
which says nothing of the face). A plaintext copy of a sealed image (an MLflow artefact, a file
someone decrypted) is looked for too, by the SHA-256 of its PNG; but the ledger and the
certificate, kept for good, name the pid next to its whole history, so they must hold nothing a
photograph of the subject hashes to: not the PNG's SHA-256, and not a MAC of it either (whoever
holds the tombstone key and a photograph that encodes to the PNG computes the MAC, finds the
entry and so the pid). So the PNG's SHA-256 goes only to the tombstones
(:mod:`visage_ml.privacy.tombstones`, kind ``plain_sha256``: one unlinked set of every
erasure's MACs), and a scan asks them "is this file an erased image's PNG?": it finds a
plaintext copy of any erased subject's image, not only the erasure's own. An import re-encodes
each photograph as a PNG: the data set's own file (a JPEG, as read) is not the PNG, and the
records never name it; the tombstones hold its SHA-256 (kind ``sha256``, which refuses a
re-import), and a scan asks them "is this file one an erased subject was imported from?" too
(:data:`ERASED_SOURCE`): a copy of the data set in the project, or a zip or a pickle of its
files, holds the subject's photograph. A file found so is recorded by its path, never by its
SHA-256 (:func:`content_hit`).

A plaintext image an erasure removes itself (a project not yet sealed holds its PNGs in clear in
``data/raw``; their DVC objects) is planned the same way: by its path alone, with ``sha256``
None and ``content`` :data:`PLAINTEXT_WITHHELD` (no MD5 either, DVC's object name); its SHA-256
goes to the tombstones.

Records made before carry the PNG keyed (``plain_mac``: the same MAC, under the tombstone key)
or, older still, in clear (``plain_sha256``): both are still looked for.

An erased subject's keys as they are once unwrapped (the data key, the vault's, the gallery's:
32 bytes each, which open every sealed copy of the subject without a key file) are sought the
same way (:data:`ERASED_KEY`): each step that destroys a key first adds its SHA-256 to the
tombstones, keyed (:mod:`visage_ml.rights.erasure.unwrapped`), and a scan asks them of each
32-byte part it finds (a run of 64 hex digits or base64 of 32 bytes in a text,
:mod:`visage_ml.rights.embedded_text`; a member; a file of 32 bytes):
:meth:`ContentHashes.key_test` tests it with one keyed hash before it is hashed and kept, so
that a log's SHA-256s cost a test each and leave nothing. Found, it is recorded by its path
alone.

A file that cannot be a copy because of its size is not read (:meth:`ContentHashes.may_match`):
records name each SHA-256 with the ``size`` of its content, and the tombstones hold every erased
image's PNG size and every source file's size (recorded by the import), keyed. Whenever a size
sought is not known (a record or a tombstone file of an earlier version, a subject an earlier
version imported without recording its source's size, no tombstone key, any
:attr:`~ContentHashes.gap`), every size may match.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.privacy.tombstones import KIND_PLAIN, TombstoneFileError, Tombstones
from visage_ml.rights import embedded

# Older records' name of the PNG in clear (and the domain of their plain_mac).
PLAIN_KIND = KIND_PLAIN
RAW_STORE = "data"
SEALED_IMAGE = ".sealed"
LISTED = "listed hash"
ERASED_IMAGE = "plaintext of an erased image"
ERASED_SOURCE = "an erased subject's source file (the data set's file an import read)"
ERASED_KEY = "an erased subject's key, unwrapped"
# What a scan finds through the tombstones alone: recorded by its path, never by its hash.
WITHHELD = frozenset({ERASED_IMAGE, ERASED_SOURCE, ERASED_KEY})
# The size of a key once unwrapped (:mod:`visage_ml.rights.erasure.unwrapped`).
KEY_SIZE = embedded.KEY_SIZE
KEY_MARK = embedded.KEY_MARK
# What an erasure records of a plaintext image it removes (a PNG in data/raw, its DVC object) in
# place of its hashes: the SHA-256 and MD5 of a photograph of the subject are the hashes.
PLAINTEXT_WITHHELD = "plaintext image, hash withheld"
# Where a copy of erased content is looked for, by the erasure before it certifies
# (:mod:`visage_ml.rights.erasure.copies`) and by the verifier after
# (:mod:`visage_ml.rights.certify`), every file hashed: the whole project (:func:`scanned_roots`)
# but what tools keep there, which holds no one's data and can be large: git's object store
# (read as objects, :func:`~visage_ml.rights.content_scan.git_objects`), DVC's folder (its cache
# is walked as a store; its temporary experiment workspaces under ``.dvc/tmp`` are walked),
# virtual environments (any folder holding a ``pyvenv.cfg``) and the caches of Python tools.
SKIPPED_DIRS: frozenset[str] = frozenset(
    {
        ".git",
        ".dvc",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    }
)
DVC_TMP = Path(".dvc") / "tmp"
# The project's own folders: walked even when linked elsewhere.
PROJECT_FOLDERS: frozenset[str] = frozenset(
    {"data", "gallery", "mlruns", "models", "privacy", "reports", "notebooks", "secrets"}
)
VENV_MARK = "pyvenv.cfg"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MSG_NO_KEY = "plaintext copies not looked for: the tombstone key is missing"
MSG_BAD_TOMBSTONES = (
    "plaintext copies not looked for: privacy/tombstones.jsonl is damaged or not of this "
    "tombstone key; restore both from the same backup"
)
MSG_NO_TOMBSTONE = (
    "plaintext copies of the subject's images not looked for: privacy/tombstones.jsonl does "
    "not hold the subject's tombstone; restore it from your backup"
)


@dataclass(frozen=True)
class ContentHashes:
    """SHA-256s to look for, and an erased image's plaintext matched through the tombstones.

    ``digest in hashes`` for each file's SHA-256 (hex); :meth:`why` says how it matched;
    ``len(hashes)`` how many the records name; :meth:`may_match` whether a file of a size can.
    ``sizes``: the byte sizes of what the records name (None: not all known); ``sized``:
    whether the tombstones know every erased image's PNG size.
    """

    sha256s: frozenset[str]
    plain_macs: frozenset[str] = frozenset()
    key: bytes | None = None
    tombstones: Tombstones | None = None
    excluded: frozenset[str] = frozenset()
    gap: str | None = None
    sizes: frozenset[int] | None = None
    sized: bool = False

    @classmethod
    def of(
        cls,
        paths: ProjectPaths,
        artefacts: Iterable[Mapping[str, Any]],
        *,
        exclude: Iterable[str | None] = (),
        pid: str | None = None,
    ) -> ContentHashes:
        """What ``artefacts`` name (``sha256``, and ``plain_sha256`` / ``plain_mac`` of older
        records), and every erased image's plaintext the tombstones know.

        ``exclude``: SHA-256s not to look for (shared content in use); the empty file, which
        carries no data and has one well-known hash, never is. ``pid``: the erased
        subject, whose tombstone must then be there when the records name sealed images
        without their PNG (made since the PNG went to the tombstones only) or plaintext images
        without their hash (:data:`PLAINTEXT_WITHHELD`); else :attr:`gap`
        says why plaintext copies could not all be looked for.
        """
        rows = [a for a in artefacts if isinstance(a, Mapping)]
        excluded = frozenset(str(e) for e in exclude if e) | {EMPTY_SHA256}
        sha256s = {str(a[k]) for a in rows for k in ("sha256", PLAIN_KIND) if a.get(k)}
        macs = frozenset(str(a["plain_mac"]) for a in rows if a.get("plain_mac"))
        sizes = _sizes(rows, sha256s - excluded) if not macs else None
        unnamed = any(
            a.get("content") == PLAINTEXT_WITHHELD
            or (
                a.get("store") == RAW_STORE
                and str(a.get("path", "")).endswith(SEALED_IMAGE)
                and not (a.get("plain_mac") or a.get(PLAIN_KIND))
            )
            for a in rows
        )
        tombstones = Tombstones.open(paths)
        # Never made by looking; None when missing or unreadable.
        key = tombstones.existing_key()
        gap = None
        # Only what these records need counts: without the key, the plaintext of an image they
        # do not name is not looked for, and says nothing of this erasure.
        try:
            if key is None and (macs or (unnamed and len(tombstones))):
                gap = MSG_NO_KEY
            elif pid is not None and unnamed and (key is None or not tombstones.has_subject(pid)):
                gap = MSG_NO_TOMBSTONE
            if key is not None:
                len(tombstones)  # reads (and checks) the file now, not in the middle of a scan
            # Any doubt (no key, a gap) leaves every size possible.
            sized = gap is None and (
                tombstones.sizes_known() if key is not None else not len(tombstones)
            )
        except TombstoneFileError:
            # Not asked again: the listed hashes are still looked for, the gap says what not.
            return cls(
                frozenset(sha256s - excluded), macs, key, None, excluded, MSG_BAD_TOMBSTONES, sizes
            )
        return cls(
            frozenset(sha256s - excluded), macs, key, tombstones, excluded, gap, sizes, sized
        )

    def __getstate__(self) -> dict[str, Any]:
        # Handed to a scan process that is not forked (a fork server's): the tag of a key, a
        # closure, is made again there from the tombstones when first asked (as in a forked
        # process that had not asked it before the fork).
        return {k: v for k, v in self.__dict__.items() if k != "_keys"}

    @property
    def keyed(self) -> bool:
        """Whether every plaintext copy can be looked for (False: see :attr:`gap`)."""
        return self.gap is None

    def why(self, digest: str) -> str | None:
        """How a file with SHA-256 ``digest`` matched: :data:`LISTED` (a record names it),
        :data:`ERASED_IMAGE`, :data:`ERASED_SOURCE`, or None (it did not)."""
        if digest in self.sha256s:
            return LISTED
        if self.key is None or digest in self.excluded:
            return None
        if self.plain_macs and Tombstones.mac_with(self.key, PLAIN_KIND, digest) in self.plain_macs:
            return ERASED_IMAGE
        if self.tombstones is not None and self.tombstones.has_plain(digest):
            return ERASED_IMAGE
        if self.tombstones is not None and self.tombstones.has_file(digest):
            return ERASED_SOURCE
        t = self.tombstones
        if t is not None and self._keys is not None and t.has_key(digest):
            return ERASED_KEY
        return None

    @functools.cached_property
    def _keys(self) -> tuple[Callable[[bytes], str], frozenset[str]] | None:
        """The tombstones' tag of 32 bytes and the set that holds each erased subject's key's
        (:meth:`~visage_ml.privacy.tombstones.Tombstones.key_check`), as it was when first
        asked; None: it holds none."""
        if self.key is None or self.tombstones is None:
            return None
        try:
            return self.tombstones.key_check()
        except TombstoneFileError:
            return None

    @functools.cached_property
    def _key_sized(self) -> bool:
        """Whether something a record or the tombstones name is :data:`KEY_SIZE` bytes long
        (as the tombstones were when first asked). Sizes not all known (every size may match)
        leave that size to the keys: no photograph, no key file (wrapped: 60 bytes) is so short."""
        if self.sizes is not None and KEY_SIZE in self.sizes:
            return True
        t = self.tombstones
        if t is None or self.key is None or not self.sized or not t.sizes_known():
            return False
        return t.has_plain_size(KEY_SIZE) or t.has_file_size(KEY_SIZE)

    def key_tagger(self) -> tuple[Callable[[bytes], str], frozenset[str]] | None:
        """The tag of a part of :data:`KEY_SIZE` bytes and the tags sought
        (:meth:`key_test`); None when every such part is sought, or none."""
        return None if self._key_sized else self._keys

    def key_test(self) -> Callable[[bytes], bool]:
        """Whether a part of :data:`KEY_SIZE` bytes a file holds (a run of 64 hex digits or
        base64 decoded, an archive's member) is to be hashed: every one when something sought
        has that size, else an erased subject's key (one keyed hash, so that the SHA-256s of a
        gigabyte of logs are tested, not each hashed and kept; no file read for it)."""
        if self._key_sized:
            return embedded.every_part
        if self._keys is None:
            return _none
        tag, tags = self._keys
        return lambda raw: tag(raw) in tags

    @functools.cached_property
    def key_marks(self) -> frozenset[str] | None:
        """The first :data:`KEY_MARK` hex digits of every MAC of the tombstones (as they were
        when first asked), against which the file scan cache checks the tags of what a file
        read earlier held that might have been a key (:mod:`~visage_ml.rights.scan_cache`);
        None: no tombstone key, and no tag."""
        if self.key is None or self.tombstones is None:
            return None
        try:
            return frozenset(m[:KEY_MARK] for m in self.tombstones.macs())
        except TombstoneFileError:
            return None

    def may_match(self, size: int) -> bool:
        """Whether a file of ``size`` bytes may be what is sought: a size a record names, an
        erased image's PNG size or an erased source file's; True whenever one is not known (a
        file then read is never wrongly clean)."""
        if self.sizes is None or not self.sized or size in self.sizes:
            return True
        # Plaintexts are looked for only with the key (and so a gap when they must be).
        if self.key is None or self.tombstones is None:
            return False
        # Asked of the file as it is now: an erasure by an earlier version while the scan runs
        # leaves the sizes unknown from then on.
        t = self.tombstones
        if size == KEY_SIZE and self._keys is not None:
            return True
        return t.has_plain_size(size) or t.has_file_size(size) or not t.sizes_known()

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and self.why(digest) is not None

    def __len__(self) -> int:
        return len(self.sha256s) + len(self.plain_macs)


def _none(data: bytes) -> bool:
    return False


def skipped(folder: Path) -> bool:
    """Whether ``folder`` is a tool's (:data:`SKIPPED_DIRS`, or a virtual environment)."""
    return folder.name in SKIPPED_DIRS or (folder / VENV_MARK).is_file()


def _sizes(rows: Iterable[Mapping[str, Any]], sought: Iterable[str]) -> frozenset[int] | None:
    """The sizes of the content ``sought`` names, from the records that give one (a SHA-256
    fixes its content, so any record will do); None when one has none (an earlier version's)."""
    known: dict[str, set[int]] = {}
    for a in rows:
        size = a.get("size")
        if a.get("sha256") and isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            known.setdefault(str(a["sha256"]), set()).add(size)
    try:
        return frozenset(n for s in sought for n in known[s])
    except KeyError:
        return None


def scanned_roots(root: Path) -> list[Path]:
    """What to walk in the project at ``root``: each folder at its top but the tools'
    (:func:`skipped`), DVC's temporary workspaces, then each file at its top."""
    entries = sorted(root.iterdir())
    # A link to a folder is followed only for the project's own folders (data/ on another
    # volume); any other may lead anywhere (the tests link the package in).
    folders = [
        e
        for e in entries
        if e.is_dir() and not skipped(e) and (not e.is_symlink() or e.name in PROJECT_FOLDERS)
    ]
    top = [f for f in entries if f.is_file() and not f.is_symlink()]
    return [*folders, root / DVC_TMP, *top]


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` (``root`` itself if a file), symbolic links not followed, the
    tools' folders below it (:func:`skipped`) not entered. A folder that cannot be listed
    (its permissions, an I/O error) is yielded itself: reading it fails, so what it holds is
    never shown clean (``os.walk`` passes over it in silence)."""
    if not root.exists():
        return
    if root.is_file():
        yield root
        return
    unlisted: list[Path] = []

    def _unlisted(exc: OSError) -> None:
        if exc.filename is not None and not isinstance(exc, FileNotFoundError):
            unlisted.append(Path(os.fsdecode(exc.filename)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=_unlisted, followlinks=False):
        yield from unlisted
        unlisted.clear()
        dirnames[:] = [d for d in dirnames if not skipped(Path(dirpath) / d)]
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p
    yield from unlisted


def content_hit(
    hashes: Container[str], digest: str, *, store: str, path: str, size: int | None = None
) -> dict[str, Any]:
    """The artefact a scan records for a file at ``path`` it found by its SHA-256 ``digest``
    in ``hashes``: with the digest (and ``size``, its bytes), or, for an erased image's
    plaintext or source file, with ``sha256`` None and ``content`` saying which (in the ledger,
    a photograph that hashes to it would find the pid; its size stays keyed in the
    tombstones)."""
    why = hashes.why(digest) if isinstance(hashes, ContentHashes) else None
    if why in WITHHELD:
        return {"store": store, "path": path, "sha256": None, "content": why}
    hit: dict[str, Any] = {"store": store, "path": path, "sha256": digest}
    if size is not None:
        hit["size"] = size
    return hit
