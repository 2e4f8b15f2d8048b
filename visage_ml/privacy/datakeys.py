"""Per-subject data keys for biometric files, and the sealed-file format they open.

Where the keys live
-------------------
``privacy/keys/<pid>.key``
    The subject's data key (AES-256), wrapped by the master key: a
    :class:`~visage_ml.privacy.sealed.KeyRing` with context ``"data"``. It seals every file that
    holds the subject's face: raw images (``data/raw/<pid>/<image_id>.sealed``), their chunk of
    the processed crops (``data/processed/faces.sealed``) and export bundles kept on disk.
    ``privacy/`` is never pushed by DVC, so a DVC cache, a remote, a copied disk or a backup of
    ``data/`` holds ciphertext only; destroying this one file (erasure) makes every copy of
    everything it sealed unreadable (NIST SP 800-88 cryptographic erase). The vault and the
    gallery keep their own key rings (``privacy/vault/keys``, ``gallery/keys``): each store's
    key dies with its step of the erasure.
``privacy/keys/collections/<name>.key``
    Keys of biometric data that belongs to no registered subject (the SynthFaces scene frames:
    passers-by), context ``"data-collection"``.

Sealed file format
------------------
``MAGIC | u16 header length (big-endian) | header JSON | nonce (12) | AES-256-GCM ciphertext+tag``.
The header (canonical JSON: role, pid or collection, file id; nothing a pid does not already
say) is authenticated as associated data together with the magic, so a file moved to another
subject, image or role does not open. :func:`sniff` tells a sealed file from a plaintext image
by its first bytes, which is how ``visage privacy doctor`` finds leftovers.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag

from visage_ml.config import ProjectPaths
from visage_ml.privacy.keys import check_pid, load_master_key
from visage_ml.privacy.sealed import KeyDestroyedError, KeyRing, open_sealed, seal

MAGIC = b"VISAGE-SEALED-1\n"
SUFFIX = ".sealed"
CONTEXT = "data"
COLLECTION_CONTEXT = "data-collection"
COLLECTIONS_DIR = "collections"
SCENES = "scenes"
ROLE_RAW = "raw"
ROLE_SCENE = "scene"
ROLE_BUNDLE = "bundle"
# The gallery's key ring (serving.gallery.KEYS_DIR under paths.gallery; a test keeps the two
# equal): listed here because the master key may only be created when no ring holds a key.
GALLERY_KEYS = "keys"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_HEADER_MAX = 0xFFFF

MSG_NOT_SEALED = (
    "{what} is not a visage sealed file (no header); plaintext biometric files are converted "
    "with `visage privacy seal`"
)
MSG_TAMPERED = (
    "{what} fails authentication: it was altered, truncated, or sealed for another subject, "
    "image or role; restore it (`dvc checkout`) or re-import the image"
)
MSG_MISPLACED = (
    "{what} was sealed as {found}, not as {expected}: a sealed file was moved or renamed; "
    "restore it (`dvc checkout`)"
)
MSG_NO_KEY = (
    "the data key of subject {pid} does not exist (the subject was erased, or the key was "
    "never created): their sealed files cannot be opened by anyone. `visage privacy doctor "
    "--purge` removes such leftovers"
)
MSG_BAD_NAME = "collection name {name!r} must be lowercase letters, digits and '-'"


class SealedFileError(ValueError):
    """A sealed file is malformed, altered, or not the file it is read as."""


class NoDataKeyError(KeyDestroyedError, ValueError):
    """The subject's data key is gone: what it sealed is unreadable (crypto-shredded)."""

    def __str__(self) -> str:
        return MSG_NO_KEY.format(pid=self.args[0] if self.args else "?")


class _NamedKeyRing(KeyRing):
    """A key ring whose keys have short names instead of pids (collections)."""

    def path(self, pid: str) -> Path:
        if not isinstance(pid, str) or not _NAME_RE.fullmatch(pid):
            raise ValueError(MSG_BAD_NAME.format(name=str(pid)[:40]))
        return self.directory / f"{pid}.key"

    def pids(self) -> list[str]:
        if not self.directory.exists():
            return []
        return sorted(p.stem for p in self.directory.glob("*.key"))


def keyring_folders(paths: ProjectPaths) -> dict[str, tuple[Path, str]]:
    """Every key ring of the project: name -> (folder, wrapping context)."""
    return {
        "data": (paths.data_keys, CONTEXT),
        "collections": (paths.data_keys / COLLECTIONS_DIR, COLLECTION_CONTEXT),
        "vault": (paths.vault / "keys", "vault"),
        "gallery": (paths.gallery / GALLERY_KEYS, "gallery"),
    }


def wrapped_keys_exist(paths: ProjectPaths) -> bool:
    """Whether any key ring holds a wrapped key (then a missing master key is never invented)."""
    return any(
        folder.is_dir() and any(folder.glob("*.key"))
        for folder, _ in keyring_folders(paths).values()
    )


def header_bytes(header: Mapping[str, str]) -> bytes:
    """``MAGIC | u16 length | canonical JSON`` of ``header``: the clear, authenticated prefix."""
    head = json.dumps(dict(header), sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(head) > _HEADER_MAX:
        raise ValueError("sealed-file header too long")
    return MAGIC + len(head).to_bytes(2, "big") + head


def parse_header(blob: bytes, *, what: str = "the file") -> tuple[dict[str, str], int]:
    """The header of a sealed file and the length of its clear prefix.

    Raises
    ------
    SealedFileError
        ``blob`` does not start with a sealed-file header.
    """
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 2:
        raise SealedFileError(MSG_NOT_SEALED.format(what=what))
    n = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 2], "big")
    end = len(MAGIC) + 2 + n
    try:
        header = json.loads(blob[len(MAGIC) + 2 : end])
    except (UnicodeDecodeError, ValueError):
        raise SealedFileError(MSG_TAMPERED.format(what=what)) from None
    if not isinstance(header, dict) or len(blob) < end:
        raise SealedFileError(MSG_TAMPERED.format(what=what))
    return header, end


def sniff(path: Path) -> str:
    """What a file holds, by its first bytes: ``sealed``, ``png``, ``jpeg``, ``gif``, ``bmp``,
    ``webp``, ``tiff``, ``npy``, ``zip``, ``age``, ``parquet`` or ``other``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return "other"
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str:
    """:func:`sniff` of a file's first bytes."""
    kinds = (
        (MAGIC, "sealed"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"\xff\xd8\xff", "jpeg"),
        (b"GIF8", "gif"),
        (b"BM", "bmp"),
        (b"II*\x00", "tiff"),
        (b"MM\x00*", "tiff"),
        (b"\x93NUMPY", "npy"),
        (b"PK\x03\x04", "zip"),
        (b"age-encryption.org/", "age"),
        (b"PAR1", "parquet"),
    )
    for magic, kind in kinds:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "other"


IMAGE_KINDS = frozenset({"png", "jpeg", "gif", "bmp", "webp", "tiff"})


class DataKeys:
    """The project's per-subject data keys and collection keys; seals and opens files.

    Parameters
    ----------
    directory
        ``privacy/keys`` (created 0700 on first use).
    master_key
        32-byte master key wrapping the data keys.

    Notes
    -----
    Unwrapped keys are cached in memory for the life of the object (one unwrap per subject in
    a pipeline run); a cached key is used only while its key file exists, so a key destroyed
    by an erasure elsewhere (another process, another object) is gone here at once. Thread-safe.
    """

    def __init__(self, directory: Path, master_key: bytes) -> None:
        self.directory = Path(directory)
        self.ring = KeyRing(self.directory, master_key, context=CONTEXT)
        self._master = master_key
        self._collections: _NamedKeyRing | None = None
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_project(cls, paths: ProjectPaths) -> DataKeys:
        """The data keys of the project at ``paths``.

        The master key is created only in a project where no key ring holds a key yet; else it
        must be there (``MasterKeyError`` says how to restore it).
        """
        master = load_master_key(paths.master_key, create=not wrapped_keys_exist(paths))
        return cls(paths.data_keys, master)

    # -- keys ----------------------------------------------------------------------------------
    def key(self, pid: str, *, create: bool = False) -> bytes:
        """``pid``'s data key (created when missing and ``create``); :class:`NoDataKeyError`."""
        check_pid(pid)
        with self._lock:
            cached = self._cache.get(pid)
            if cached is not None:
                # Destroyed by another process or object since it was cached: gone here too.
                if self.ring.path(pid).exists():
                    return cached
                del self._cache[pid]
                raise NoDataKeyError(pid)
            try:
                key = self.ring.get(pid, create=create)
            except KeyDestroyedError:
                raise NoDataKeyError(pid) from None
            self._cache[pid] = key
            return key

    def exists(self, pid: str) -> bool:
        """Whether ``pid`` has a data key (not destroyed)."""
        return self.ring.exists(pid)

    def pids(self) -> list[str]:
        """Subjects holding a data key."""
        return self.ring.pids()

    def path(self, pid: str) -> Path:
        """File of ``pid``'s wrapped data key."""
        return self.ring.path(pid)

    def files(self, pid: str) -> list[Path]:
        """``pid``'s key file and the copies of it killed writes left (what an erasure destroys)."""
        return self.ring.files(pid)

    def destroy_files(
        self, pid: str, *, wait: bool = True, erasure: bool = False
    ) -> dict[Path, str]:
        """Crypto-shred ``pid``: overwrite, delete :meth:`files`; each with its SHA-256 before.

        Under the ring's lock (:meth:`KeyRing.destroy_files`; ``wait`` false: ``LockHeldError``
        while a rotation holds it). Without ``erasure`` the versions destroyed stay named
        beside the key file for the subject's later erasure to seek."""
        with self._lock:
            self._cache.pop(pid, None)
        return self.ring.destroy_files(pid, wait=wait, erasure=erasure)

    def destroy(self, pid: str, *, wait: bool = True, erasure: bool = False) -> str | None:
        """Crypto-shred ``pid`` (:meth:`destroy_files`); the key file's SHA-256 before (or None)."""
        return self.destroy_files(pid, wait=wait, erasure=erasure).get(self.path(pid))

    def collection_key(self, name: str, *, create: bool = False) -> bytes:
        """The key of collection ``name`` (data of no registered subject)."""
        with self._lock:
            if self._collections is None:
                self._collections = _NamedKeyRing(
                    self.directory / COLLECTIONS_DIR, self._master, context=COLLECTION_CONTEXT
                )
            cache_key = f"collection:{name}"
            cached = self._cache.get(cache_key)
            if cached is not None:
                return cached
            key = self._collections.get(name, create=create)
            self._cache[cache_key] = key
            return key

    def _key_for(self, header: Mapping[str, str], *, create: bool) -> bytes:
        pid = header.get("pid")
        if pid is not None:
            return self.key(str(pid), create=create)
        collection = header.get("collection")
        if collection is None:
            raise SealedFileError("a sealed-file header names neither a pid nor a collection")
        return self.collection_key(str(collection), create=create)

    # -- files ---------------------------------------------------------------------------------
    def seal(self, header: Mapping[str, str], plaintext: bytes) -> bytes:
        """A sealed file's bytes: ``header`` in clear (authenticated), ``plaintext`` encrypted.

        The subject's key (``header["pid"]``) or the collection's key is created when missing.
        """
        prefix = header_bytes(header)
        return prefix + seal(self._key_for(header, create=True), plaintext, aad=prefix)

    def open(
        self, blob: bytes, *, expect: Mapping[str, str] | None = None, what: str = "the file"
    ) -> bytes:
        """The plaintext of a sealed file, checking that its header matches ``expect``.

        Raises
        ------
        SealedFileError
            Not a sealed file, altered, or sealed as another file than ``expect`` says.
        NoDataKeyError
            The subject's key was destroyed.
        """
        header, end = parse_header(blob, what=what)
        for k, v in (expect or {}).items():
            if header.get(k) != v:
                found = ", ".join(f"{a}={header.get(a)}" for a in sorted(expect or {}))
                wanted = ", ".join(f"{a}={b}" for a, b in sorted((expect or {}).items()))
                raise SealedFileError(MSG_MISPLACED.format(what=what, found=found, expected=wanted))
        key = self._key_for(header, create=False)
        try:
            return open_sealed(key, blob[end:], aad=blob[:end])
        except (InvalidTag, ValueError):
            raise SealedFileError(MSG_TAMPERED.format(what=what)) from None

    def open_file(self, path: Path, *, expect: Mapping[str, str] | None = None) -> bytes:
        """:meth:`open` of the file at ``path`` (named in errors by its last two parts)."""
        path = Path(path)
        return self.open(path.read_bytes(), expect=expect, what="/".join(path.parts[-2:]))

    # -- the roles of this project -------------------------------------------------------------
    def seal_raw(self, pid: str, image_id: str, png: bytes) -> bytes:
        """A raw image sealed under the subject's key (role ``raw``, pid and image id bound)."""
        return self.seal({"role": ROLE_RAW, "pid": check_pid(pid), "id": image_id}, png)

    def open_raw(self, blob: bytes, pid: str, image_id: str, *, what: str = "") -> bytes:
        """The PNG bytes of a sealed raw image of ``pid`` / ``image_id``."""
        return self.open(
            blob,
            expect={"role": ROLE_RAW, "pid": pid, "id": image_id},
            what=what or f"{pid}/{image_id}{SUFFIX}",
        )

    def seal_scene(self, scene_id: str, png: bytes) -> bytes:
        """A scene frame sealed under the ``scenes`` collection key."""
        return self.seal({"role": ROLE_SCENE, "collection": SCENES, "id": scene_id}, png)

    def seal_bundle(self, pid: str, name: str, data: bytes) -> bytes:
        """An export bundle kept on disk, sealed under the subject's key."""
        return self.seal({"role": ROLE_BUNDLE, "pid": check_pid(pid), "id": name}, data)
