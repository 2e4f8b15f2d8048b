"""Sealing at rest across every store: converting a project, rotating the master key, the doctor.

- :func:`seal_project` (``visage privacy seal``) converts a project from before sealing: every
  plaintext raw image becomes ``<image_id>.sealed`` under its subject's data key, scene frames
  go under the ``scenes`` collection key, the plaintext crop array ``faces.u8.npy`` becomes the
  sealed ``faces.sealed``, kept plaintext export bundles become ``.zip.sealed`` under their
  subject's key. Each file is converted atomically (sealed copy written, fsync'd, renamed, then
  the plaintext overwritten and unlinked), so a run killed anywhere is finished by running it
  again. The MD5s of the plaintext files are journaled first (``.visage/seal-journal.json``):
  their objects are then deleted from the DVC cache and every remote, unless the workspace
  still references them. Subjects the registry marks erased, or does not know, are never given
  a key: their files are left to :func:`doctor`.
- :func:`rotate_master_key` (``visage privacy rotate-master-key``) wraps every data key of every
  key ring (data, collections, vault, gallery) under a new master key without touching a data
  file; the vault's blind index, which derives from the master key, is recomputed. The new key
  waits in ``secrets/master.key.next`` until every ring is done (atomic per key file; while it
  exists every other command refuses to run), then replaces ``secrets/master.key``.
- :func:`doctor` (``visage privacy doctor [--purge]``) lists what should not be at rest: files
  of erased or unknown subjects (a restored backup of ``data/raw``, ``gallery/`` or the key
  rings), sealed files whose key is gone, plaintext faces in ``data/``, the DVC cache and local
  remotes, plaintext export bundles, notebooks whose saved outputs hold images, the temporary
  files killed writes left in the key rings and the vault (each a key, a record or an index
  whole); ``--purge`` removes them (a notebook loses its outputs only).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from visage_ml import dvcops, faults
from visage_ml.config import ProjectPaths
from visage_ml.data.crops import CropWriter
from visage_ml.data.prepare import FACES_FILE, LEGACY_FACES_FILE, MANIFEST_FILE, purge_subject
from visage_ml.data.rawstore import (
    IMAGE_ID_RE,
    PLAIN_EXTS,
    RawStore,
    check_checked_out,
)
from visage_ml.evaluation.figures import FIGURE_NAME, MLFLOW_FOLDER
from visage_ml.io import (
    CHUNK,
    LockHeldError,
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    fsync_dir,
    leftover_target,
    md5_file,
    secure_unlink,
    sha256_file,
)
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import (
    IMAGE_KINDS,
    SUFFIX,
    DataKeys,
    SealedFileError,
    keyring_folders,
    parse_header,
    sniff,
)
from visage_ml.privacy.documents import SIGN_PNG
from visage_ml.privacy.keys import (
    MASTER_KEY_ENV,
    PID_RE,
    MasterKeyError,
    decode_master_key,
    load_master_key,
    next_master_key_path,
)
from visage_ml.privacy.notebooks import find_image_notebooks, strip_file
from visage_ml.privacy.registry import SubjectState
from visage_ml.privacy.requests import IN_PROGRESS, RequestBook
from visage_ml.privacy.sealed import KeyDestroyedError, KeyRing, destroy_key, rewrap_keyring
from visage_ml.privacy.tombstones import seek_key
from visage_ml.privacy.vault import IdentityVault
from visage_ml.rights import content_scan, dvc_objects, embedded
from visage_ml.rights.content_hashes import ContentHashes
from visage_ml.rights.erasure.copies import git_allowed, holds_inside
from visage_ml.rights.erasure.orchestrator import LOCK as ERASURE_LOCK
from visage_ml.rights.export import EXPORTS_DIR, bundle_owner, forget_owner
from visage_ml.serving import gallery as gallery_store

log = logging.getLogger(__name__)

JOURNAL = Path(".visage") / "seal-journal.json"
ERASED = "erased_subject"
UNKNOWN = "unknown_subject"
NO_KEY = "no_key"
PLAINTEXT = "plaintext"
LEFTOVER = "leftover"
NOTEBOOK = "notebook_image"
# An image file under data/, mlruns/, models/, notebooks/, reports/ (or at the project's top)
# that no store accounts for: a face copied out of its sealed file, a source set kept inside the
# project, a debug image or crop saved with a run or a report. Someone decides: --purge leaves it
# (it may be the only copy of a source set).
STRAY = "stray_image"
STRAY_FOLDERS: tuple[str, ...] = ("data", "mlruns", "models", "notebooks", "reports")
# The project's own images: the evaluation's figures in an MLflow run, the privacy sign.
SIGN_FILE = f"reports/privacy/{SIGN_PNG}"
# An anchor template that is not the one the ledger last recorded (an older one put back from a
# copy or a backup): never used; purged, the subject is re-anchored by a dpo's re-enrolment.
UNRECORDED_ANCHOR = "unrecorded_anchor"
# An object of the project's git history holding an erased subject's image (a photo or a
# notebook showing it, committed once): there for good, whatever the working tree holds now, until
# the history is rewritten and pruned. Someone does that: --purge leaves it.
ERASED_IN_GIT = "erased_in_git"
GIT_UNREACHED = "an object no commit reaches (expire the reflog, then prune)"
# A file of the project holding an erased subject's image among other content the erasure does
# not cut it from (an archive made for a colleague, a pickle, an array, a table): the erasure
# stops on it. Someone takes the image out, or deletes the file: --purge leaves it.
ERASED_INSIDE = "erased_inside"
# A file of the project whose content expands too far to look inside (an archive of far more than
# its size: a zip bomb, or near enough), or that holds more image starts than any image file has
# (a pickle of a JPEG's header repeated), or a database that cannot be read to its end (damaged,
# encrypted, a -wal file not yet checkpointed too large to read with it, a -wal alone) or whose
# freed space holds deleted rows that may be a photograph (until VACUUM): not shown to hold no
# erased image, so the erasure stops on it. Someone unpacks, repairs, checkpoints, vacuums or
# deletes it: --purge leaves it.
EXPANDS_INSIDE = "expands_inside"
# A file of the project the scan could not read, or a folder it could not list (permissions, an
# I/O error), and a notebook too large to look inside: none is shown to hold no erased content,
# so the erasure stops before its certificate and the verifier fails. Someone makes it readable
# (or deletes it, clears the notebook's outputs): --purge leaves it.
UNREADABLE = "unreadable"
OPAQUE_NOTEBOOK = "opaque_notebook"
# What to do about the kinds that stop an erasure (``DoctorReport.to_dict``'s ``what_to_do``).
WHAT_TO_DO = {
    ERASED_INSIDE: (
        "these files hold an erased subject's content among other content: take it out of "
        "them, or delete them, then run `visage privacy resume`"
    ),
    EXPANDS_INSIDE: (
        "these files expand too far to look inside (a zip bomb, or near enough), or hold more "
        "image starts than any image file has, or there was "
        "no room to unpack them to look inside (.visage/, the git folder, .dvc/tmp), or are "
        "databases that could not be read to their end (damaged, encrypted) or whose freed "
        "space holds deleted rows that may be a photograph: unpack, repair "
        '(`sqlite3 FILE .recover`), vacuum (`sqlite3 FILE "VACUUM"`; `PRAGMA secure_delete = '
        "ON` before deleting zeroes what is deleted) or delete them, or free disk space, then "
        "run `visage privacy resume`"
    ),
    UNREADABLE: (
        "these files could not be read, or folders listed, by this user, so no erasure shows "
        "them to hold no erased content (it stops before its certificate; the verifier "
        "fails): fix their permissions or owner (an I/O error: the disk), or delete them, "
        "then run `visage privacy resume`"
    ),
    OPAQUE_NOTEBOOK: (
        "these notebooks are too large to look inside, so no erasure shows them to hold no "
        "erased image: clear their outputs, or delete them, then run `visage privacy resume`"
    ),
}
# A checkpoint kept for an erasure whose certificate was issued (it carries the checkpoint): the
# process was killed before it went. No personal data; nothing reads it again.
KEPT_CHECKPOINT = "kept_checkpoint"
# Folders of personal data: 0700, their files 0600 (privacy/ itself holds the public key).
PRIVATE_FOLDERS: tuple[str, ...] = (
    "data/raw",
    "data/scenes",
    "data/processed",
    "data/eval_population",
    "gallery",
    "privacy/vault",
    "privacy/keys",
    "privacy/exports",
    "privacy/imports",
    "secrets",
)

MSG_CROPS_CHANGED = (
    "{path} changed while it was sealed (another program wrote, cut short or replaced it): "
    "nothing was replaced and it is kept; run `visage privacy seal` again once that program "
    "has finished"
)
MSG_NOT_CROPS = (
    "{path} is not a crop array visage-ml wrote (a NumPy array, one crop a row, in C order): "
    "move it out of data/processed (`dvc repro prepare` makes the crops again from data/raw), "
    "then run `visage privacy seal` again"
)
# The plaintext crop array is read this much at a time (:func:`_seal_crops`): memory stays
# bounded whatever its size.
LEGACY_CHUNK = 64 << 20


class CropsChangedError(OSError):
    """The plaintext crop array changed while ``visage privacy seal`` sealed it: nothing was
    replaced; the seal is to be run again."""


MSG_SAME_KEY = "the new master key is the current one; give another (or none: one is drawn)"
MSG_OTHER_NEW_KEY = (
    "an interrupted rotation to another new key is pending ({next}); finish it first by "
    "running `visage privacy rotate-master-key` without --new-key-file"
)
MSG_ENV_NEEDS_KEY = (
    "the master key comes from $VISAGE_MASTER_KEY, which visage-ml cannot change: give the new "
    "key with --new-key-file FILE (base64 or hex of 32 bytes), then set VISAGE_MASTER_KEY to it"
)
MSG_SET_ENV = "set VISAGE_MASTER_KEY to the new key now: the old one opens nothing any more"
MSG_RING_LOCKED = (
    "{folder}: {n} leftover(s) left in place: the folder is locked by a command writing to it "
    "(a master-key rotation, a key's creation, an erasure), whose next file may be one of them; "
    "run `visage privacy doctor --purge` again when it has finished"
)
MSG_KEPT_LOCKED = (
    "{folder}: {n} kept checkpoint(s) left in place: an erasure is running, whose certificate "
    "may need one of them; run `visage privacy doctor --purge` again when it has finished"
)
KEPT_FOLDER = "privacy/checkpoints/kept"


def locked_message(folder: str, n: int) -> str:
    """What the purge says of ``folder`` (project-relative), whose ``n`` findings it left
    because a running command holds the folder's lock (:attr:`DoctorReport.locked`)."""
    return (MSG_KEPT_LOCKED if folder == KEPT_FOLDER else MSG_RING_LOCKED).format(
        folder=folder, n=n
    )


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _status(states: Any, pid: str) -> str | None:
    """``erased_subject`` / ``unknown_subject`` for a pid the registry refuses, else None."""
    st: SubjectState | None = states.get(pid)
    if st is None:
        return UNKNOWN
    return ERASED if st.erased else None


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _seal_file(src: Path, dst: Path, sealed: bytes, opens: Any) -> bool:
    """Put ``sealed`` at ``dst`` (atomic, 0600) and remove the plaintext ``src``.

    Returns False when an earlier, interrupted run had already written ``dst`` (``opens(dst)``
    returns the plaintext): then only ``src`` goes.
    """
    plain = src.read_bytes()
    if dst.is_file():
        try:
            if opens(dst) == plain:
                secure_unlink(src)
                return False
        except (SealedFileError, KeyDestroyedError, ValueError, OSError):
            pass  # a damaged or foreign file: replaced below
    atomic_write_bytes(dst, sealed, mode=0o600)
    faults.crash_point("seal:file:written")
    secure_unlink(src)
    return True


def tighten_permissions(paths: ProjectPaths) -> int:
    """Folders holding personal data to 0700 and their files to 0600; returns modes changed."""
    changed = 0
    for rel in PRIVATE_FOLDERS:
        top = paths.root / rel
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            if os.stat(dirpath).st_mode & 0o777 != 0o700:
                os.chmod(dirpath, 0o700)
                changed += 1
            for name in filenames:
                f = os.path.join(dirpath, name)
                if os.path.islink(f):
                    continue
                if os.stat(f).st_mode & 0o777 != 0o600:
                    os.chmod(f, 0o600)
                    changed += 1
    return changed


def _journal(paths: ProjectPaths, md5s: set[str]) -> set[str]:
    """Merge ``md5s`` into the journal of plaintext objects to purge; return all of them."""
    path = paths.root / JOURNAL
    known: set[str] = set()
    if path.is_file():
        try:
            known = set(json.loads(path.read_text(encoding="utf-8")).get("md5s", []))
        except ValueError:
            known = set()
    if md5s - known:
        known |= md5s
        atomic_write_json(path, {"md5s": sorted(known)}, mode=0o600)
    return known


# ---------------------------------------------------------------------------------------------
# visage privacy seal
# ---------------------------------------------------------------------------------------------


@dataclass
class SealReport:
    """What :func:`seal_project` converted (counts only)."""

    raw_sealed: int = 0
    raw_already: int = 0
    raw_left: dict[str, int] = field(default_factory=dict)
    scenes_sealed: int = 0
    crops_rows_sealed: int = 0
    plaintext_crops_removed: bool = False
    bundles_sealed: int = 0
    bundles_left: int = 0
    dvc_objects_removed: int = 0
    permissions_fixed: int = 0
    dvc: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plain_raw(raw: Path) -> Iterator[tuple[str, Path]]:
    if not raw.is_dir():
        return
    for folder in sorted(p for p in raw.iterdir() if p.is_dir() and PID_RE.fullmatch(p.name)):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in PLAIN_EXTS and IMAGE_ID_RE.fullmatch(f.stem) and f.is_file():
                yield folder.name, f


def _plain_scenes(scenes: Path) -> list[Path]:
    if not scenes.is_dir():
        return []
    return sorted(f for f in scenes.iterdir() if f.suffix.lower() in PLAIN_EXTS and f.is_file())


def seal_project(paths: ProjectPaths, *, core: PrivacyCore | None = None) -> SealReport:
    """Convert every plaintext biometric file of the project to its sealed form (resumable).

    Returns
    -------
    SealReport
        Counts; subjects left unsealed (erased or unknown to the registry) are counted in
        ``raw_left`` for :func:`doctor`.

    Raises
    ------
    visage_ml.data.rawstore.RawDataMissingError
        In a DVC repository, before anything is sealed, where a table of ``data/raw`` is not
        there though rows are expected in it (:func:`~visage_ml.data.rawstore.check_tables`):
        the ``dvc add data/raw`` that ends the seal would make a version without them current.
        So too where photographs the tables list are not there though DVC can bring them back
        (:func:`~visage_ml.data.rawstore.check_images`: checked out only in part), or where
        ``data/raw`` is not shown to be what DVC records, its listing not in the DVC cache
        (:func:`~visage_ml.data.rawstore.check_recorded`).
    """
    if dvcops.is_dvc_repo(paths.root):
        check_checked_out(paths.raw)
    core = core if core is not None else PrivacyCore(paths)
    keys = core.data_keys
    states = core.registry.states()
    report = SealReport()
    raw_plain = list(_plain_raw(paths.raw))
    scenes_plain = _plain_scenes(paths.scenes)
    legacy = paths.processed / LEGACY_FACES_FILE
    md5s = {md5_file(f) for _, f in raw_plain} | {md5_file(f) for f in scenes_plain}
    legacy_md5 = md5_file(legacy) if legacy.is_file() else None
    if legacy_md5 is not None:
        md5s.add(legacy_md5)
    journal = _journal(paths, md5s)

    store = RawStore(paths, core=core, track=False)
    with store.lock():
        store.recover()
        for pid, f in raw_plain:
            why = _status(states, pid)
            if why is not None:
                report.raw_left[why] = report.raw_left.get(why, 0) + 1
                continue
            dst = f.with_suffix(SUFFIX)
            sealed = keys.seal_raw(pid, f.stem, f.read_bytes())
            opens = lambda p, pid=pid, f=f: keys.open_raw(p.read_bytes(), pid, f.stem)  # noqa: E731
            if _seal_file(f, dst, sealed, opens):
                report.raw_sealed += 1
            else:
                report.raw_already += 1
    for f in scenes_plain:
        dst = f.with_suffix(SUFFIX)
        sealed = keys.seal_scene(f.stem, f.read_bytes())
        _seal_file(f, dst, sealed, lambda p: keys.open(p.read_bytes()))
        report.scenes_sealed += 1
    if legacy.is_file():
        report.crops_rows_sealed = _seal_crops(paths, keys, states, md5=legacy_md5)
        secure_unlink(legacy)
        report.plaintext_crops_removed = True
    report.bundles_sealed, report.bundles_left = _seal_bundles(paths, keys, states)
    report.permissions_fixed = tighten_permissions(paths)
    if dvcops.is_dvc_repo(paths.root):
        with store.lock():
            for folder in (paths.raw, paths.scenes):
                if folder.is_dir():
                    report.dvc[_rel(folder, paths.root)] = dvc_objects.add(paths.root, folder)
        report.dvc_objects_removed = _purge_objects(paths.root, journal)
    (paths.root / JOURNAL).unlink(missing_ok=True)
    log.info("seal: %s", report.to_dict())
    return report


def _seal_crops(paths: ProjectPaths, keys: DataKeys, states: Any, *, md5: str | None) -> int:
    """``faces.u8.npy`` -> ``faces.sealed`` (rows of subjects without a key stay empty).

    The array is read a chunk at a time, never mapped: it lies in data/processed, where a
    user's script (``np.save`` over it empties it first), ``dvc checkout`` or a second seal
    (which overwrites it with zeros, then deletes it) may write while it is sealed; a mapped
    file cut short kills the process with SIGBUS, and one overwritten is sealed as it is read.
    ``faces.sealed`` is replaced only when what was read is the file whose MD5 (``md5``) the
    journal holds and the same file is still in place (:class:`CropsChangedError` otherwise).
    """
    legacy = paths.processed / LEGACY_FACES_FILE
    manifest_path = paths.processed / MANIFEST_FILE
    if not manifest_path.is_file():
        return 0  # crops nobody can attribute: removed by the caller, prepare rebuilds
    manifest = pd.read_parquet(manifest_path, columns=["row", "pid"])
    owners = dict(
        zip(manifest["row"].astype(int).tolist(), manifest["pid"].astype(str).tolist(), strict=True)
    )
    changed = CropsChangedError(MSG_CROPS_CHANGED.format(path=_rel(legacy, paths.root)))
    sealed = 0
    with legacy.open("rb") as raw:
        before = _identity(os.fstat(raw.fileno()))
        fh = _Hashing(raw)
        name = _rel(legacy, paths.root)
        shape, dtype = _crops_layout(fh, name)
        width = int(np.prod(shape[1:])) * dtype.itemsize
        # The header is the file's word only: rows it declares that the file does not hold
        # (a read of terabytes, or a loop over rows of nothing), or crops it leaves out (sealed
        # as none, then deleted), are refused before a row is read.
        if raw.tell() + shape[0] * width != before[2]:
            raise ValueError(MSG_NOT_CROPS.format(path=name))
        per_read = max(1, LEGACY_CHUNK // width)
        with CropWriter(paths.processed / FACES_FILE, keys, int(shape[1])) as writer:
            for start in range(0, shape[0], per_read):
                count = min(per_read, shape[0] - start)
                data = fh.read(count * width)
                if len(data) != count * width:
                    raise changed  # cut short meanwhile
                rows = np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])
                for row in range(start, start + count):
                    pid = owners.get(row)
                    if pid is None or _status(states, pid) is not None or not keys.exists(pid):
                        writer.skip(1)
                        continue
                    writer.add(pid, rows[row - start])
                    sealed += 1
            while fh.read(CHUNK):  # np.save writes nothing after the rows; the MD5 covers all
                pass
            try:
                now = _identity(os.stat(legacy))
            except FileNotFoundError:
                raise changed from None
            if fh.hexdigest() != md5 or not before == now == _identity(os.fstat(raw.fileno())):
                raise changed
            writer.commit()
    return sealed


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file from the one read before (another in its place, or written)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _Hashing:
    """A file read through, its MD5 taken of every byte read (as :func:`md5_file`'s)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._md5 = hashlib.md5(usedforsecurity=False)

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._md5.update(data)
        return data

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


def _crops_layout(fh: Any, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the NumPy array whose header ``fh`` begins with; ``fh`` is left at
    its first row."""
    try:
        version = np.lib.format.read_magic(fh)
        read = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read is None:
            raise ValueError(version)
        shape, fortran, dtype = read(fh)
    except ValueError:
        raise ValueError(MSG_NOT_CROPS.format(path=name)) from None
    # uint8 only: another dtype's values were cast row by row (floats in [0, 1] sealed as
    # zeros) before the array was deleted. Every side of a crop at least 1, and rows >= 0.
    if (
        fortran
        or dtype != np.uint8
        or len(shape) < 2
        or shape[0] < 0
        or any(int(n) < 1 for n in shape[1:])
    ):
        raise ValueError(MSG_NOT_CROPS.format(path=name))
    return tuple(int(n) for n in shape), dtype


def _seal_bundles(paths: ProjectPaths, keys: DataKeys, states: Any) -> tuple[int, int]:
    folder = paths.root / EXPORTS_DIR
    if not folder.is_dir():
        return 0, 0
    sealed = left = 0
    for f in sorted(folder.glob("*.zip")):
        pid = bundle_owner(f)
        if pid is None or _status(states, pid) is not None or not keys.exists(pid):
            left += 1
            continue
        dst = f.with_name(f.name + SUFFIX)
        blob = keys.seal_bundle(pid, f.name, f.read_bytes())
        _seal_file(f, dst, blob, lambda p: keys.open(p.read_bytes()))
        forget_owner(paths, [f.name])
        sealed += 1
    return sealed, left


def _purge_objects(root: Path, md5s: set[str]) -> int:
    """Delete the journaled plaintext objects from the DVC cache and every remote."""
    if not md5s:
        return 0
    setup = dvc_objects.open_setup(root)
    refs = dvc_objects.current_references(setup)
    removed = 0
    for md5 in sorted(md5s - refs):
        for store in setup.stores:
            try:
                if store.exists(md5) and store.remove(md5):
                    removed += 1
            except OSError as exc:
                log.warning("DVC store %s: object not removed (%s)", store.name, exc)
    return removed


# ---------------------------------------------------------------------------------------------
# visage privacy rotate-master-key
# ---------------------------------------------------------------------------------------------


def key_fingerprint(key: bytes) -> str:
    """A public fingerprint of a master key (16 hex of a domain-separated SHA-256)."""
    return hashlib.sha256(b"visage-ml master key fingerprint\0" + key).hexdigest()[:16]


@dataclass
class RotationReport:
    """What :func:`rotate_master_key` did."""

    rings: dict[str, dict[str, int]] = field(default_factory=dict)
    vault_index_entries: int = 0
    old_fingerprint: str = ""
    new_fingerprint: str = ""
    resumed: bool = False
    key_location: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key_rings(paths: ProjectPaths) -> dict[str, tuple[Path, str]]:
    rings = dict(keyring_folders(paths))
    # The gallery owns its layout; ask it.
    rings["gallery"] = (paths.gallery / gallery_store.KEYS_DIR, gallery_store.KEY_CONTEXT)
    return rings


def rotate_master_key(
    paths: ProjectPaths, *, new_key: bytes | None = None, core: PrivacyCore | None = None
) -> RotationReport:
    """Re-wrap every data key under a new master key (resumable; data files untouched).

    Parameters
    ----------
    paths
        The project.
    new_key
        The new master key (32 bytes); drawn at random when None. Required when the current
        key comes from ``$VISAGE_MASTER_KEY``.
    core
        The privacy core whose ledger records ``keys.master_rotated``.

    Raises
    ------
    MasterKeyError
        The current key is missing or wrong, or an interrupted rotation to another key waits.
    """
    key_path = paths.master_key
    pending = next_master_key_path(key_path)
    from_env = bool(os.environ.get(MASTER_KEY_ENV))
    old = load_master_key(key_path, create=False, rotating=True)
    report = RotationReport(resumed=pending.exists())
    if report.resumed:
        new = decode_master_key(pending.read_text(encoding="ascii"), str(pending))
        if new_key is not None and new_key != new:
            raise MasterKeyError(MSG_OTHER_NEW_KEY.format(next=pending))
    else:
        if from_env and new_key is None:
            raise MasterKeyError(MSG_ENV_NEEDS_KEY)
        new = new_key if new_key is not None else os.urandom(32)
        if new == old:
            raise ValueError(MSG_SAME_KEY)
        atomic_write_bytes(pending, base64.b64encode(new) + b"\n", mode=0o600)
    faults.crash_point("rotate:next-written")
    for name, (folder, context) in _key_rings(paths).items():
        done = rewrap_keyring(folder, context=context, old_master=old, new_master=new)
        report.rings[name] = {"rewrapped": done.rewrapped, "already": done.already}
    if paths.vault.is_dir():
        vault = IdentityVault(paths.vault, key_path, master_key=new)
        report.vault_index_entries = vault.reindex()
    faults.crash_point("rotate:rewrapped")
    report.old_fingerprint, report.new_fingerprint = key_fingerprint(old), key_fingerprint(new)
    core = core if core is not None else PrivacyCore(paths)
    core.ledger.append(
        "keys.master_rotated",
        None,
        {
            "old_fingerprint": report.old_fingerprint,
            "new_fingerprint": report.new_fingerprint,
            "rings": report.rings,
            "resumed": report.resumed,
        },
    )
    if from_env:
        secure_unlink(pending)
        report.key_location = MASTER_KEY_ENV
        report.note = MSG_SET_ENV
    else:
        os.replace(pending, key_path)
        fsync_dir(key_path.parent)
        report.key_location = _rel(key_path, paths.root)
    log.info("master key rotated: %s -> %s", report.old_fingerprint, report.new_fingerprint)
    return report


# ---------------------------------------------------------------------------------------------
# visage privacy doctor
# ---------------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One thing at rest that should not be: what, where, and what ``--purge`` does."""

    # erased_subject, unknown_subject, no_key, plaintext, leftover, notebook_image,
    # unrecorded_anchor, stray_image, kept_checkpoint, erased_in_git, erased_inside,
    # expands_inside, unreadable, opaque_notebook
    kind: str
    path: str
    pid: str | None = None
    # purge; "seal" (run `visage privacy seal`: live data); "review" (delete it, or move it
    # out of the project: --purge leaves it)
    action: str = "purge"


@dataclass
class DoctorReport:
    """What :func:`doctor` found (and removed, with ``purge``)."""

    findings: list[Finding] = field(default_factory=list)
    purged: int = 0
    # Key-ring folder -> its leftovers the purge left because the folder's lock was held.
    locked: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "purged": self.purged,
            "findings": [asdict(f) for f in self.findings],
            "locked": self.locked,
            "what_to_do": self.what_to_do(),
        }

    def what_to_do(self) -> dict[str, str]:
        """What to do about each kind found that stops an erasure (:data:`WHAT_TO_DO`)."""
        return {k: WHAT_TO_DO[k] for k in self.counts() if k in WHAT_TO_DO}


class _Doctor:
    def __init__(self, paths: ProjectPaths, core: PrivacyCore) -> None:
        self.paths = paths
        self.root = paths.root
        self.core = core
        self.states = core.registry.states()
        self.keys: DataKeys | None = core.data_keys if paths.data_keys.is_dir() else None
        self.report = DoctorReport()
        self.bad_pids: dict[str, str] = {}
        # A key ring's leftover (project-relative) -> the lock its writers hold while writing.
        self.ring_locks: dict[str, Path] = {}

    def add(self, kind: str, path: Path, pid: str | None = None, action: str = "purge") -> None:
        self.report.findings.append(Finding(kind, _rel(path, self.root), pid, action))

    def has_key(self, pid: str) -> bool:
        return self.keys is not None and self.keys.exists(pid)

    # -- where to look ---------------------------------------------------------------------
    def raw(self) -> None:
        raw = self.paths.raw
        if not raw.is_dir():
            return
        for folder in sorted(p for p in raw.iterdir() if p.is_dir() and PID_RE.fullmatch(p.name)):
            pid = folder.name
            files = sorted(f for f in folder.rglob("*") if f.is_file())
            status = _status(self.states, pid)
            if status is not None:
                self.bad_pids[pid] = status
                for f in files:
                    self.add(status, f, pid)
                continue
            for f in files:
                kind = sniff(f)
                if kind in IMAGE_KINDS:
                    twin = f.with_suffix(SUFFIX).is_file()
                    self.add(PLAINTEXT, f, pid, "purge" if twin else "seal")
                elif kind == "sealed" and not self.has_key(pid):
                    self.bad_pids[pid] = NO_KEY
                    self.add(NO_KEY, f, pid)

    def scenes(self) -> None:
        folder = self.paths.scenes
        if not folder.is_dir():
            return
        for f in sorted(folder.iterdir()):
            if f.is_file() and sniff(f) in IMAGE_KINDS:
                twin = f.with_suffix(SUFFIX).is_file()
                self.add(PLAINTEXT, f, None, "purge" if twin else "seal")

    def processed(self) -> None:
        processed = self.paths.processed
        legacy = processed / LEGACY_FACES_FILE
        if legacy.is_file():
            twin = (processed / FACES_FILE).is_file()
            self.add(PLAINTEXT, legacy, None, "purge" if twin else "seal")
        for f in sorted(processed.glob(".*.tmp")) if processed.is_dir() else []:
            # Left by a killed run: crops (in clear from an older version) nobody reads.
            self.add(PLAINTEXT if sniff(f) in IMAGE_KINDS | {"npy"} else LEFTOVER, f)
        manifest = processed / MANIFEST_FILE
        if manifest.is_file():
            sealed = (processed / FACES_FILE).is_file()
            pids = pd.read_parquet(manifest, columns=["pid"])["pid"].astype(str).unique()
            for pid in sorted(pids):
                why = _status(self.states, pid)
                if why is None and sealed and not self.has_key(pid):
                    why = NO_KEY  # their chunk of faces.sealed opens for nobody
                if why is not None:
                    self.add(why, manifest, pid)

    def gallery(self) -> None:
        """Subjects with a template, an anchor template or a key under ``gallery/``: all their
        files when the registry refuses them or their key is gone (a template or anchor alone);
        an anchor whose SHA-256 is not the one the ledger last recorded (one file hash each, for
        subjects whose anchor is recorded)."""
        keys_dir = self.paths.gallery / gallery_store.KEYS_DIR
        seen: set[str] = set()
        for folder, suffix in (
            (gallery_store.TEMPLATES_DIR, gallery_store.SUFFIX),
            (gallery_store.ANCHORS_DIR, gallery_store.ANCHOR_SUFFIX),
        ):
            found = self.paths.gallery / folder
            for f in sorted(found.rglob(f"*{suffix}")) if found.is_dir() else []:
                seen.add(f.stem)
        for f in sorted(keys_dir.glob("p*.key")) if keys_dir.is_dir() else []:
            seen.add(f.stem)
        for pid in sorted(p for p in seen if PID_RE.fullmatch(p)):
            files = gallery_store.subject_files(self.paths.gallery, pid)
            status = _status(self.states, pid)
            if status is None and not (keys_dir / f"{pid}.key").is_file():
                status = NO_KEY
            if status is not None:
                for f in files:
                    self.add(status, f, pid)
                continue
            st = self.states.get(pid)
            anchor = gallery_store.anchor_path(self.paths.gallery, pid)
            recorded = st.anchor_sha256 if st is not None else None
            if recorded is not None and anchor.is_file() and sha256_file(anchor) != recorded:
                self.add(UNRECORDED_ANCHOR, anchor, pid)

    def key_rings(self) -> None:
        """Keys of erased subjects in the data and vault rings (the gallery's are its own), and
        what killed writes left in every ring, the vault and its records: each a key (a record,
        an index) as whole as the file it was to replace, named by its subject's status."""
        seen = {f.path for f in self.report.findings}
        folders = [folder for folder, _ in _key_rings(self.paths).values()]
        for name, (folder, _) in _key_rings(self.paths).items():
            if name in ("collections", "gallery") or not folder.is_dir():
                continue
            for f in sorted(folder.glob("p*.key")):
                status = _status(self.states, f.stem)
                if status == ERASED:
                    self.add(ERASED, f, f.stem)
        # A ring's keys are created and re-wrapped under its own lock; the vault's records and
        # index are written under the vault's.
        vault_lock = self.paths.vault / ".lock"
        for folder, lock in [
            *((folder, folder / ".lock") for folder in folders),
            (self.paths.vault, vault_lock),
            (self.paths.vault / "records", vault_lock),
        ]:
            for f in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
                target = leftover_target(f)
                if target is None or _rel(f, self.root) in seen:
                    continue
                pid = Path(target).stem if PID_RE.fullmatch(Path(target).stem) else None
                status = _status(self.states, pid) if pid else None
                self.add(status or LEFTOVER, f, pid if status else None)
                self.ring_locks[_rel(f, self.root)] = lock

    def exports(self) -> None:
        folder = self.root / EXPORTS_DIR
        if not folder.is_dir():
            return
        for f in sorted(folder.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            pid = bundle_owner(f)
            status = _status(self.states, pid) if pid else None
            if status is not None:
                self.add(status, f, pid)
            elif sniff(f) == "zip":
                self.add(PLAINTEXT, f, pid, "seal")
            elif sniff(f) == "sealed" and pid and not self.has_key(pid):
                self.add(NO_KEY, f, pid)

    def strays(self) -> None:
        """Image files under ``data/``, ``mlruns/``, ``models/``, ``notebooks/``, ``reports/``
        and at the project's top that no other check found (a decrypted face saved beside the
        data, a source set kept inside, a debug image logged to MLflow, a crop in a plot): an
        erasure removes exact copies of a subject's files only, so a re-encoded or cropped face
        is for a person to review. The project's own figures are not listed."""
        seen = {f.path for f in self.report.findings}
        files = [f for f in sorted(self.root.iterdir()) if f.is_file()]
        for name in STRAY_FOLDERS:
            folder = self.root / name
            if not folder.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = sorted(
                    d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))
                )
                files += [Path(dirpath, n) for n in sorted(filenames)]
        for f in files:
            rel = _rel(f, self.root)
            if f.is_symlink() or not f.is_file() or rel in seen or _project_figure(rel):
                continue
            with contextlib.suppress(OSError):
                if sniff(f) in IMAGE_KINDS:
                    self.add(STRAY, f, None, "review")

    def git_history(self) -> None:
        """Objects of the git history that hold an erased subject's image, or a notebook
        showing one (the tombstones know every erased image's PNG), or what an erasure under
        way recorded, by the paths commits hold them under (``git:<path>``); as the erasure's
        rule (:func:`~visage_ml.rights.content_scan.git_hits`) allows, not the current
        subjects' photographs nor ciphertext whose key was destroyed."""
        # And what the erasures under way recorded (an old table version committed, a key file):
        # the erasure stops on them until the history is rewritten, and says to look here.
        pending = [
            a
            for st in RequestBook(self.core).open()
            if st.right == "erasure" and st.status == IN_PROGRESS
            for rec in st.steps.values()
            for a in (*rec.planned, *rec.artefacts)
        ]
        hashes = ContentHashes.of(self.paths, pending)
        if not len(hashes) and (hashes.key is None or not hashes.tombstones):
            return
        self.held_inside(hashes)
        try:
            allowed = git_allowed(self.paths, "", pending)
            found = content_scan.git_hits(self.root, hashes, allowed=allowed, cached=True)
        except content_scan.GitUnreadableError as exc:
            log.warning("%s", exc)
            self.report.findings.append(Finding(ERASED_IN_GIT, "git:", None, "review"))
            return
        main = content_scan.git_dir(self.root)
        where = content_scan.git_paths(self.root, [h.name for h in found if h.path == main])
        for h in found:
            if h.path != main:  # a submodule's own history
                self.report.findings.append(
                    Finding(ERASED_IN_GIT, f"git:{_rel(h.path, self.root)}", None, "review")
                )
                continue
            for path in where[h.name] or [GIT_UNREACHED]:
                self.report.findings.append(Finding(ERASED_IN_GIT, f"git:{path}", None, "review"))

    def held_inside(self, hashes: ContentHashes) -> None:
        """Files of the project that hold erased content (``hashes``) among other content the
        erasure does not take it out of (:func:`~visage_ml.rights.erasure.copies.holds_inside`),
        by path: the erasure stopped on them, and says to look here. And those it stops on too,
        being shown clean by nothing: content that expands too far to look inside (a zip bomb),
        a notebook too large to look inside, a file it could not read or a folder it could not
        list (:attr:`~visage_ml.rights.content_scan.Hashed.unreadable`)."""
        walked = content_scan.roots(self.paths)
        embedded.spill_into(self.root)
        cache = content_scan.file_cache(self.paths)
        for h in content_scan.hash_files(walked, sizes=hashes, cache=cache):
            if h.matches(hashes) and holds_inside(h, hashes):
                self.add(ERASED_INSIDE, h.path, None, "review")
            elif h.expands:
                self.add(EXPANDS_INSIDE, h.path, None, "review")
            elif h.opaque:
                self.add(OPAQUE_NOTEBOOK, h.path, None, "review")
            elif h.unreadable:
                self.add(UNREADABLE, h.path, None, "review")

    def kept_checkpoints(self) -> None:
        """What ``privacy/checkpoints/kept`` holds for erasures whose certificate was issued."""
        needed = RequestBook(self.core).uncertified_completions()
        for seq, files in sorted(self.core.witnessing.kept_files().items()):
            if seq not in needed:
                for f in files:
                    self.add(KEPT_CHECKPOINT, f)

    def notebooks(self) -> None:
        """Notebooks anywhere in the project whose outputs hold images (faces shown, saved)."""
        for path in find_image_notebooks(self.root):
            self.add(NOTEBOOK, path)

    def dvc(self) -> list[tuple[dvc_objects.ObjectStore, str]]:
        """Plaintext images among the objects of the cache and local remotes."""
        if not dvcops.is_dvc_repo(self.root):
            return []
        setup = dvc_objects.open_setup(self.root)
        # Only local stores are searched; a stopped stack's remote is passed over.
        refs = dvc_objects.current_references(setup, unreachable_ok=True)
        found = []
        for store in setup.stores:
            if store.local_path is None:
                continue
            for oid in store.oids():
                if oid.endswith(".dir") or oid in refs:
                    continue
                if sniff(Path(store.oid_path(oid))) in IMAGE_KINDS:
                    found.append((store, oid))
                    self.add(PLAINTEXT, Path(store.oid_path(oid)))
        return found

    # -- purge ------------------------------------------------------------------------------
    def purge(self, objects: list[tuple[dvc_objects.ObjectStore, str]]) -> int:
        purged = 0
        todo = [f for f in self.report.findings if f.action == "purge"]
        # Subjects whose whole folder goes (erased, unknown, keyless); a plaintext copy of a
        # live subject's sealed image is only that file.
        raw_pids = {
            f.pid for f in todo if f.pid and f.path.startswith("data/raw/") and f.kind != PLAINTEXT
        }
        if raw_pids:
            store = RawStore(self.paths, core=self.core, track=False)
            with store.transaction() as txn:
                for pid in sorted(raw_pids):
                    purged += len(txn.remove_subject(pid))
            if dvcops.is_dvc_repo(self.root):
                with store.lock():
                    dvc_objects.add(self.root, self.paths.raw)
        processed_pids = {
            f.pid for f in todo if f.pid and f.path == f"data/processed/{MANIFEST_FILE}"
        }
        for pid in sorted(processed_pids):
            purge_subject(self.paths.processed, pid)
            purged += 1
        purged += self._purge_ring_leftovers([f for f in todo if f.path in self.ring_locks])
        purged += self._purge_kept([f for f in todo if f.kind == KEPT_CHECKPOINT])
        rings = {folder for folder, _ in _key_rings(self.paths).values()}
        for f in todo:
            path = self.root / f.path if not Path(f.path).is_absolute() else Path(f.path)
            if f.path in self.ring_locks or f.kind == KEPT_CHECKPOINT:
                continue
            if f.path.startswith("data/raw/") and f.pid in raw_pids:
                continue
            if f.path == f"data/processed/{MANIFEST_FILE}":
                continue
            if path.suffix == ".key" and path.parent in rings and f.pid:
                purged += int(self._destroy_key(path, f.pid))
                continue
            if f.kind == NOTEBOOK:
                # The notebook stays, without its outputs.
                purged += int(strip_file(path) > 0)
                continue
            if path.is_file() and secure_unlink(path):
                purged += 1
        for folder, files in self.report.locked.items():
            log.warning("%s", locked_message(folder, len(files)))
        exported = [Path(f.path).name for f in todo if f.path.startswith(f"{EXPORTS_DIR}/")]
        if exported:
            forget_owner(self.paths, exported)
        for store, oid in objects:
            purged += int(store.remove(oid))
        return purged

    def _purge_ring_leftovers(self, found: list[Finding]) -> int:
        """Remove key rings' leftovers, each under the lock its ring's writers hold: a
        temporary file there may be a rotation's or a key creation's next version, about to be
        renamed into place. A ring whose lock is held keeps its leftovers
        (:attr:`DoctorReport.locked`, :data:`MSG_RING_LOCKED`): a writer may hold it for a
        whole rotation, and a later run removes what is still left."""
        by_lock: dict[Path, list[Finding]] = {}
        for f in found:
            by_lock.setdefault(self.ring_locks[f.path], []).append(f)
        purged = 0
        for lock, files in sorted(by_lock.items()):
            try:
                with file_lock(lock, wait=False):
                    for f in files:
                        # Gone when its writer renamed it before the lock was ours.
                        path = self.root / f.path
                        purged += int(path.is_file() and secure_unlink(path))
            except LockHeldError:
                folder = _rel(lock.parent, self.root)
                self.report.locked.setdefault(folder, []).extend(f.path for f in files)
        return purged

    def _purge_kept(self, found: list[Finding]) -> int:
        """Remove the kept checkpoints found, only while no erasure runs (its lock, not waited
        for) and only those still not needed, decided again under the lock the witnessing
        writes them under: the open requests were read before a running erasure recorded its
        completion, and its checkpoint, kept since, is what its certificate will carry. While
        an erasure runs they stay (:attr:`DoctorReport.locked`, :data:`MSG_KEPT_LOCKED`)."""
        if not found:
            return 0
        purged = 0
        try:
            with (
                file_lock(self.root / ERASURE_LOCK, wait=False),
                file_lock(self.paths.checkpoints / ".lock"),
            ):
                needed = RequestBook(self.core).uncertified_completions()
                spare = {
                    _rel(path, self.root)
                    for seq, paths in self.core.witnessing.kept_files().items()
                    if seq not in needed
                    for path in paths
                }
                for f in found:
                    path = self.root / f.path
                    purged += int(f.path in spare and path.is_file() and secure_unlink(path))
        except LockHeldError:
            self.report.locked.setdefault(KEPT_FOLDER, []).extend(f.path for f in found)
        return purged

    def _destroy_key(self, path: Path, pid: str) -> bool:
        """Destroy a subject's key file (erased, unknown) as an erasure does, under its ring's
        lock, without waiting: a rotation holding it may have read the key and would write it
        back re-wrapped. A locked ring keeps the key (:attr:`DoctorReport.locked`) for a later
        run. No erasure: the versions destroyed stay named beside it (``.<pid>.key.was``), for
        an erasure of the subject to seek in a backup made before, and the key itself goes to
        the tombstones first (:meth:`_seek_key`)."""
        self._seek_key(path, pid)
        try:
            if path.parent == self.paths.data_keys and self.keys is not None:
                return self.keys.destroy(pid, wait=False) is not None
            if path.parent == self.paths.vault / "keys":
                return bool(self.core.vault.destroy(pid, wait=False).removed)
            return bool(destroy_key(path, wait=False))
        except LockHeldError:
            folder = _rel(path.parent, self.root)
            self.report.locked.setdefault(folder, []).append(_rel(path, self.root))
            return False

    def _seek_key(self, path: Path, pid: str) -> None:
        """Add the key file ``path`` holds for ``pid``, as unwrapped, to the tombstones before
        it is destroyed (:func:`~visage_ml.privacy.tombstones.seek_key`, as a gallery's purge
        does): a subject the registry does not know yet (data migrated in before the
        registration) is erased later, and that erasure finds no key file left to seek the key
        an operator printed. Without a master key that opens the ring, nothing can open what
        the key sealed, and nothing is added."""
        for name, (folder, context) in _key_rings(self.paths).items():
            if folder != path.parent:
                continue
            try:
                master = load_master_key(self.paths.master_key, create=False)
                ring = KeyRing(folder, master, context=context)
            except MasterKeyError:
                return
            seek_key(self.core.tombstones, ring, pid, name=name)
            return


def _project_figure(rel: str) -> bool:
    """Whether project-relative ``rel`` is one of the project's own images (not a face)."""
    parts = rel.split("/")
    if rel == SIGN_FILE:
        return True
    return (
        parts[0] == "mlruns"
        and len(parts) > 2
        and parts[-2] == MLFLOW_FOLDER
        and FIGURE_NAME.fullmatch(parts[-1]) is not None
    )


def doctor(
    paths: ProjectPaths, *, purge: bool = False, core: PrivacyCore | None = None
) -> DoctorReport:
    """Find what should not be at rest (and remove it with ``purge``).

    Looks at ``data/raw``, ``data/scenes``, ``data/processed``, ``gallery/``, the key rings,
    ``privacy/exports``, notebooks (outputs holding images), the DVC cache and local remotes,
    and for any other image file under ``data/``, ``mlruns/``, ``models/``, ``notebooks/``,
    ``reports/`` or at the project's top, the project's own figures aside (``review``: deleted by
    a person, never by ``purge``; an erasure removes exact copies only).
    Plaintext files of live data that have
    no sealed twin are listed with action ``seal`` (``visage privacy seal`` converts them);
    everything else is purged by ``purge``: files of subjects the registry marks erased or does
    not know (a restored backup), sealed files without a key, plaintext copies of sealed data,
    unreferenced plaintext objects in DVC, and checkpoints kept for erasures whose certificate
    was issued (``privacy/checkpoints/kept``: the certificate carries its checkpoint; a process
    killed between the two left them; while an erasure runs they stay). The key rings' and the
    vault's leftovers, and erased or unknown subjects' keys, are removed under the lock of their
    folder's writers; a folder whose lock is held keeps them (``report.locked``).
    """
    core = core if core is not None else PrivacyCore(paths)
    doc = _Doctor(paths, core)
    doc.raw()
    doc.scenes()
    doc.processed()
    doc.gallery()
    doc.key_rings()
    doc.exports()
    doc.notebooks()
    doc.git_history()
    doc.kept_checkpoints()
    objects = doc.dvc()
    doc.strays()
    if purge:
        doc.report.purged = doc.purge(objects)
    return doc.report


MSG_DECRYPT_ERASED = "{path} belongs to subject {pid}, who was erased; it is not opened"


def open_sealed_file(paths: ProjectPaths, path: Path, *, core: PrivacyCore | None = None) -> bytes:
    """The plaintext of one sealed file of the project (a raw image, a scene, a kept bundle).

    A raw image must be the image its path names; a file of a subject the registry marks
    erased is refused even if a key survived somewhere.
    """
    core = core if core is not None else PrivacyCore(paths)
    path = Path(path)
    blob = path.read_bytes()
    shown = "/".join(path.parts[-2:])
    header, _ = parse_header(blob, what=shown)
    pid = header.get("pid")
    if pid and _status(core.registry.states(), str(pid)) == ERASED:
        raise ValueError(MSG_DECRYPT_ERASED.format(path=shown, pid=pid))
    expect = {"pid": path.parent.name, "id": path.stem} if header.get("role") == "raw" else None
    return core.data_keys.open(blob, expect=expect, what=shown)
