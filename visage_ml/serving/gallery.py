"""The consent-aware, encrypted gallery: one template per subject, exact cosine search.

Storage (under ``gallery/``)
----------------------------
- ``gallery.json``: the embedder ``model_version``, the embedding size, the preprocessing and
  where the match threshold came from; written atomically.
- ``keys/<pid>.key``: the subject's own AES-256 data key, wrapped by the master key
  (:class:`visage_ml.privacy.keys.KeyRing`, context ``"gallery"``).
- ``templates/<pid[1:3]>/<pid>.tpl``: the subject's template, AES-GCM encrypted under that key.
  A file is ``MAGIC | u32 header length | header JSON | nonce | ciphertext+tag``; the header
  (pid, model version, size; nothing personal) is authenticated as associated data, the
  plaintext is the float32 template.
- ``anchors/<pid[1:3]>/<pid>.anc``: the subject's anchor template, sealed the same way under the
  same key (``ANCHOR_MAGIC``, so neither file opens as the other): the template of the subject's
  first enrolment, or of the last one made by a privileged path (a dpo key, the gallery stage,
  ``visage gallery rebuild`` from ``data/processed``, a rectification). An operator's
  re-enrolment must match it as well as the current template, and leaves it as it is
  (``keep_anchor``), so that a chain of re-enrolments, each close to the one before, cannot walk
  a subject's template to another face. The ledger records the SHA-256 of each anchor as it is
  set (see Accountability).

Why one file per subject rather than shared segment files: an erasure then touches only that
subject's own files (no other subject's ciphertext is ever rewritten, nothing waits for a
compaction, no copy of the erased ciphertext survives in a segment), its cost does not grow with
the gallery, and each removed artefact is exactly one file whose SHA-256 goes into the erasure
certificate and whose absence a verifier can check. The price is start-up time (two small files
per subject, about 50 µs warm; the anchor is not read at start-up); the per-subject key files that
crypto-shredding needs cost most of that in either design. The 256 shard folders keep directories
small.

Template: the L2-normalised mean of the subject's L2-normalised enrolment embeddings (one
template per subject; a new enrolment replaces it). Averaging is the usual multi-image fusion
for cosine-trained embedders and keeps search to one row per subject.

Consent: only subjects the registry allows for ``identification`` are ever decrypted into the
in-memory matrix. Before each query the gallery reads the ledger lines appended since the last
query (a ``stat`` when nothing changed) and adds or drops the subjects they touch, so a
restricted, objected, withdrawn or erased subject is not even scored, rather than masked.

Accountability: only the template file that the ledger vouches for (the ``template_sha256`` of
the subject's last ``gallery.enrolled``) is searched. A file the ledger does not record, such as
one left by an enrolment killed before its event was appended, stays unused (and is counted as
``unrecorded``) until the subject is enrolled again. Likewise an operator's re-enrolment is
checked only against the anchor file the ledger vouches for: every path that sets the anchor
records its SHA-256 (``anchor_sha256`` of ``gallery.enrolled``, or ``gallery.anchored`` when the
template stays as it was), and an anchor file that does not hash to the last recorded value (an
older anchor put back from a copy or a backup, or one written by a privileged enrolment killed
before its event) is refused (:class:`AnchorUnrecordedError`) until a privileged path anchors the
subject again. A subject anchored before anchors were recorded has no recorded value: its anchor
file is used as it is, as before, and is protected from its next anchor move on.

Compare-and-set: an operator's enrolment is checked against the template and anchor that
:meth:`Gallery.reference` read, outside the gallery's locks, and written with ``expect`` (that
:class:`Reference`): under the locks of the write the template and anchor must still be the very
bytes that were checked, so that a dpo's (or any other) enrolment between the check and the write
is never overwritten by an enrolment checked against what it replaced
(:class:`ReferenceChangedError`).

Erasure: the row leaves memory, the key file is destroyed (the commit point: from then on the
ciphertext is unreadable in every copy), the anchor and then the template file are overwritten and
unlinked, each with fsync, and a ``gallery.removed`` event is appended. A crash after the key is
destroyed leaves a template (and perhaps its anchor) without a key, which the next start-up
finishes removing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from cryptography.exceptions import InvalidTag

from visage_ml import faults
from visage_ml.config import ProjectPaths
from visage_ml.io import (
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    fsync_dir,
    leftovers,
    private_dir,
    secure_unlink,
    sha256_bytes,
    sha256_file,
)
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import wrapped_keys_exist
from visage_ml.privacy.keys import check_pid, load_master_key
from visage_ml.privacy.ledger import utc_now
from visage_ml.privacy.registry import NO_BASIS_REASONS, REASON_TEXT
from visage_ml.privacy.sealed import KeyDestroyedError, KeyRing, open_sealed, seal
from visage_ml.privacy.tombstones import seek_key
from visage_ml.serving.gallery_check import (
    ENROLLED_NEEDLE,
    NO_KEY,
    SEALED,
    UNRECORDED,
    TemplateCheck,
    enrolment_history,
    ledger_time,
    ledger_verdict,
)
from visage_ml.serving.index import (
    TemplateIndex,
    normalize_queries,
    score_against,
    template_of,
)
from visage_ml.serving.release import THRESHOLD_JSON, check_released, latest_releases

logger = logging.getLogger(__name__)

PURPOSE = "identification"
META_FILE = "gallery.json"
KEYS_DIR = "keys"
TEMPLATES_DIR = "templates"
KEY_CONTEXT = "gallery"
# The reason of the subject's erasure (its gallery step): the only removal that also forgets the
# names of the key's versions, which the erasure sought. Any other (a consent withdrawal's purge,
# a rectification) keeps them for the subject's later erasure (KeyRing.destroy_files).
ERASURE_REASON = "erasure"
SUFFIX = ".tpl"
MAGIC = b"VGT1"
ANCHORS_DIR = "anchors"
ANCHOR_SUFFIX = ".anc"
ANCHOR_MAGIC = b"VGA1"
FORMAT_VERSION = 1
TEMPLATE_RULE = "normalised mean of L2-normalised enrolment embeddings, one per subject"
# Start-up loading: threads reading and decrypting templates, subjects per task, and the
# gallery size from which threads are used at all.
LOAD_THREADS = 8
LOAD_CHUNK = 1024
LOAD_PARALLEL_MIN = 4096
# Decisions under which a stored template has no legal basis any more and a rebuild (or
# `visage privacy enforce`) removes it (registry.NO_BASIS_REASONS): withdrawn, expired or never
# given consent, an objection (Art. 21), an unknown subject. A restriction (Art. 18) keeps data
# stored; pending erasures are left to the erasure.

MSG_REBUILD = (
    "the gallery's templates were made by embedder {found!r} but the serving embedder is "
    "{expected!r}; run `visage gallery rebuild` to re-enrol consented subjects with it"
)
MSG_REBUILT_WHILE_RUNNING = (
    "the gallery was rebuilt with embedder {found!r} while this server runs {expected!r}; "
    "restart `visage serve` to load the new embedder and templates"
)
MSG_REFUSED = "subject {pid} may not be enrolled for identification: {text} ({reason})"
MSG_NOT_ENROLLED = (
    "subject {pid} has no usable template in the gallery (not enrolled, not available for "
    "identification, or erased)"
)
MSG_NO_EMBEDDER = "this gallery has no embedder to turn crops into embeddings; pass embeddings"
MSG_NO_THRESHOLD = (
    "{path} is missing: the match threshold comes from evaluation; run `dvc repro evaluate`"
)
MSG_THRESHOLD_MODEL = (
    "{path} was computed for embedder {found!r} but the gallery uses {expected!r}; run "
    "`dvc repro evaluate` for this embedder (or `visage gallery rebuild` for that one)"
)
MSG_NO_META = "no gallery at {path}; build it with `dvc repro gallery` or `visage gallery rebuild`"
MSG_UNRECORDED = (
    "template {name} is not the one the ledger records as enrolled (an enrolment interrupted "
    "before it was recorded, or a file put there by hand); it is not used. Enrol the subject "
    "again to replace it"
)
MSG_TAMPERED = (
    "template {name} fails authentication (altered, truncated or moved); it is not used. "
    "Restore it from a backup or re-enrol the subject"
)
MSG_ANCHOR_UNRECORDED = (
    "gallery: the anchor template of subject {pid} is not the one the ledger records (an older "
    "anchor put back from a copy or a backup, or an enrolment interrupted before it was "
    "recorded); operators' re-enrolments of the subject are refused until a dpo key, "
    "`visage gallery rebuild` or a rectification re-enrols it"
)
MSG_TEMPLATE_UNRECORDED = (
    "gallery: the template of subject {pid} is not the one the ledger records (an older "
    "template put back from a copy or a backup); it is neither searched nor compared with, and "
    "operators' re-enrolments of the subject are refused until a dpo key, `visage gallery "
    "rebuild` or a rectification re-enrols it"
)
MSG_REFERENCE_CHANGED = (
    "gallery: an operator's enrolment of subject {pid} was not written: the subject's template "
    "or anchor changed after the images were checked against them (a concurrent enrolment); "
    "enrol again"
)
MSG_MATCHES_ENROLLED = (
    "gallery: subject {pid} was not enrolled: the template matches another searchable subject "
    "at the identification threshold (one face, one pid: under a second pid the face would "
    "outlive the other subject's erasure); a dpo key may enrol it (twins), which the ledger "
    "records"
)


def enrolled_event(
    pid: str,
    template_sha256: str,
    *,
    model_version: str,
    replaced: bool,
    anchor_sha256: str | None = None,
    matched_enrolled: bool = False,
) -> tuple[str, str, dict[str, Any]]:
    """The ledger's ``gallery.enrolled`` entry of a template (both backends record the same).

    ``anchor_sha256``: the subject's anchor file after an enrolment that set the anchor (every
    one but an operator's re-enrolment, whose entry names none: the anchor stays as recorded).
    ``matched_enrolled``: a dpo key enrolled a template that matched another searchable subject
    (twins); recorded as a flag, not whom it matched: a pid kept for good beside this one would
    tie the two subjects together after the other's erasure.
    No image count: the ledger is kept for good with pids in clear, and a photo count per pid
    matches a person in the source data set to the pid (the count stays in the sealed
    template, for the subject's access right).
    """
    payload: dict[str, Any] = {
        "template_sha256": template_sha256,
        "model_version": model_version,
        "replaced": replaced,
    }
    if anchor_sha256 is not None:
        payload["anchor_sha256"] = anchor_sha256
    if matched_enrolled:
        payload["matched_enrolled"] = True
    return "gallery.enrolled", pid, payload


def anchored_event(
    pid: str, anchor_sha256: str, *, model_version: str
) -> tuple[str, str, dict[str, Any]]:
    """The ledger's ``gallery.anchored`` entry: a privileged enrolment left the template as it
    was but set (or first recorded) the subject's anchor file."""
    return (
        "gallery.anchored",
        pid,
        {"anchor_sha256": anchor_sha256, "model_version": model_version},
    )


class GalleryError(RuntimeError):
    """The gallery cannot be opened or used as asked."""


class GalleryUnavailableError(GalleryError):
    """The gallery's database could not be reached, or dropped the connection during a call.

    Nothing of the call is known to have happened; repeating it is safe (enrolment and erasure
    are idempotent), and the next call connects anew.
    """


class GalleryVersionError(GalleryError):
    """Templates were made by another embedder version than the one serving."""


class TemplateFileError(GalleryError):
    """A subject's stored template or anchor template fails authentication (altered,
    truncated or moved): the message names its file; `visage gallery verify` lists them."""


class EnrolmentRefusedError(PermissionError):
    """The registry does not allow the subject to be processed for identification."""

    def __init__(self, pid: str, reason: str) -> None:
        self.pid = pid
        self.reason = reason
        text = REASON_TEXT.get(reason, reason)
        super().__init__(MSG_REFUSED.format(pid=pid, text=text, reason=reason))


class AnchorUnrecordedError(GalleryError):
    """A subject's anchor file is not the one the ledger last recorded (see
    :meth:`Gallery.reference`)."""

    def __init__(self, pid: str) -> None:
        self.pid = pid
        super().__init__(MSG_ANCHOR_UNRECORDED.format(pid=pid))


class TemplateUnrecordedError(GalleryError):
    """A subject's template file is not the one the ledger last recorded (see
    :meth:`Gallery.reference`)."""

    def __init__(self, pid: str) -> None:
        self.pid = pid
        super().__init__(MSG_TEMPLATE_UNRECORDED.format(pid=pid))


class ReferenceChangedError(GalleryError):
    """An enrolment written with ``expect`` found the subject's template or anchor changed
    since they were read (:meth:`Gallery.enroll`); nothing was written."""

    def __init__(self, pid: str) -> None:
        self.pid = pid
        super().__init__(MSG_REFERENCE_CHANGED.format(pid=pid))


class MatchesEnrolledError(GalleryError):
    """An enrolment with ``distinct_at`` found the template matching another searchable subject
    (:meth:`Gallery.enroll`); nothing was written. The message names the subject enrolled, never
    the one matched."""

    def __init__(self, pid: str) -> None:
        self.pid = pid
        super().__init__(MSG_MATCHES_ENROLLED.format(pid=pid))


class NotEnrolledError(KeyError):
    """The subject has no searchable template."""

    def __str__(self) -> str:
        return MSG_NOT_ENROLLED.format(pid=self.args[0])


# ---------------------------------------------------------------------------------------------
# Results and metadata
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One identification candidate at or above the threshold."""

    pid: str
    score: float


@dataclass(frozen=True)
class Enrolment:
    """What :meth:`Gallery.enroll` stored (no template values)."""

    pid: str
    template_sha256: str
    images: int
    replaced: bool
    changed: bool = True


@dataclass(frozen=True, eq=False)
class Reference:
    """What an operator's enrolment of ``pid`` is checked against (:meth:`Gallery.reference`):
    the stored template and anchor template, decrypted, with their file headers and the SHA-256
    of the sealed bytes each was opened from. Passed back to :meth:`Gallery.enroll` as
    ``expect``, the enrolment is written only if both are still those bytes.

    :meth:`none_stored`: a first enrolment, written only if there is still no template.
    Never logged, never served.
    """

    pid: str
    template_sha256: str | None
    anchor_sha256: str | None
    template: np.ndarray | None = field(default=None, repr=False)
    template_header: Mapping[str, Any] = field(default_factory=dict, repr=False)
    anchor: np.ndarray | None = field(default=None, repr=False)
    anchor_header: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def none_stored(cls, pid: str) -> Reference:
        """The reference of a subject without a template (a first enrolment)."""
        return cls(pid, None, None)


@dataclass(frozen=True)
class Removal:
    """What :meth:`Gallery.erase` removed: project-relative path -> SHA-256 before deletion."""

    pid: str
    removed: dict[str, str]


@dataclass(frozen=True)
class Threshold:
    """The match threshold and where it came from."""

    value: float
    source: str
    target_fmr: float | None = None
    sha256: str | None = None
    embedder_model_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GalleryMeta:
    """Contents of ``gallery/gallery.json``."""

    model_version: str
    embedding_dim: int
    preprocess: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    format: int = FORMAT_VERSION
    purpose: str = PURPOSE
    template: str = TEMPLATE_RULE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GalleryMeta:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def read_meta(directory: Path) -> GalleryMeta | None:
    """``gallery.json`` of the gallery at ``directory``, or None when there is none."""
    path = Path(directory) / META_FILE
    if not path.exists():
        return None
    try:
        return GalleryMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise GalleryError(
            f"{path} is unreadable ({type(exc).__name__}); run `visage gallery rebuild`"
        ) from None


def meta_for(
    existing: GalleryMeta | None,
    *,
    model_version: str,
    embedding_dim: int,
    preprocess: Mapping[str, Any] | None,
    threshold: Threshold,
) -> GalleryMeta:
    """The gallery's metadata for an embedder, keeping what an existing ``gallery.json`` says
    of its creation time and, when none is given, its preprocessing."""
    now = utc_now()
    return GalleryMeta(
        model_version=model_version,
        embedding_dim=int(embedding_dim),
        preprocess=dict(preprocess or (existing.preprocess if existing else {})),
        threshold=threshold.to_dict(),
        created=existing.created if existing else now,
        updated=now,
    )


def served_threshold(paths: ProjectPaths, meta: GalleryMeta, core: Any = None) -> Threshold:
    """The 1:1 threshold a server of this gallery uses: the released ``reports/threshold.json``
    of the gallery's embedder (what ``visage serve`` loads, also after a new evaluation that did
    not rebuild the gallery), else the one ``gallery.json`` recorded at its last build.

    ``core`` (the project's :class:`~visage_ml.privacy.core.PrivacyCore`) checks the file is the
    released one; a file that is not (or no core) falls back to ``gallery.json``: serving would
    refuse to start on it.
    """
    recorded = meta.threshold or {}
    fallback = Threshold(
        float(recorded.get("value", 1.0)), str(recorded.get("source") or "gallery/gallery.json")
    )
    if core is None:
        return fallback
    try:
        thr = load_threshold(paths, meta.model_version)
        check_released(latest_releases(core.ledger), THRESHOLD_JSON, str(thr.sha256))
    except (FileNotFoundError, GalleryVersionError, ValueError, KeyError, TypeError):
        return fallback
    return thr


def load_threshold(paths: ProjectPaths, model_version: str | None = None) -> Threshold:
    """The match threshold from ``reports/threshold.json`` (written by ``evaluate``).

    Parameters
    ----------
    paths
        The project.
    model_version
        When given, the threshold must have been computed for this embedder version.

    Raises
    ------
    FileNotFoundError
        No threshold report.
    GalleryVersionError
        The report belongs to another embedder.
    """
    path = paths.reports / "threshold.json"
    if not path.is_file():
        raise FileNotFoundError(MSG_NO_THRESHOLD.format(path=path))
    raw = path.read_bytes()
    doc = json.loads(raw)
    found = doc.get("embedder_model_version")
    if model_version is not None and found is not None and found != model_version:
        raise GalleryVersionError(
            MSG_THRESHOLD_MODEL.format(path=path, found=found, expected=model_version)
        )
    return Threshold(
        value=float(doc["threshold"]),
        source="reports/threshold.json",
        target_fmr=float(doc["target_fmr"]) if doc.get("target_fmr") is not None else None,
        sha256=sha256_bytes(raw),
        embedder_model_version=found,
    )


# ---------------------------------------------------------------------------------------------
# The gallery
# ---------------------------------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def template_path(directory: Path, pid: str) -> Path:
    """File holding ``pid``'s encrypted template in the gallery folder ``directory``."""
    check_pid(pid)
    return directory / TEMPLATES_DIR / pid[1:3] / f"{pid}{SUFFIX}"


def anchor_path(directory: Path, pid: str) -> Path:
    """File holding ``pid``'s encrypted anchor template in the gallery folder ``directory``."""
    check_pid(pid)
    return directory / ANCHORS_DIR / pid[1:3] / f"{pid}{ANCHOR_SUFFIX}"


def listed_pids(root: Path, suffix: str) -> list[str]:
    """The names (without ``suffix``) of the files ending in ``suffix`` in the shard folders of
    ``root`` (``templates/`` or ``anchors/``), sorted; a listing, nothing is opened. Hidden
    files (a write in progress) are left out."""
    if not root.is_dir():
        return []
    out = []
    with os.scandir(root) as shards:
        for shard in shards:
            if not shard.is_dir():
                continue
            with os.scandir(shard.path) as files:
                for f in files:
                    name = f.name
                    if name.endswith(suffix) and not name.startswith("."):
                        out.append(name[: -len(suffix)])
    return sorted(out)


def subject_files(directory: Path, pid: str) -> list[Path]:
    """The files of ``pid`` (template, anchor, then key, each after the copies of it that
    killed writes left) in the gallery folder ``directory`` that exist.

    Needs no master key, so that an erasure can plan what it removes even when the gallery
    cannot be opened.
    """
    key = directory / KEYS_DIR / f"{check_pid(pid)}.key"
    files = (template_path(directory, pid), anchor_path(directory, pid), key)
    return [f for path in files for f in (*leftovers(path), path) if f.is_file()]


class Gallery:
    """Consent-aware encrypted gallery of one project (use :meth:`open`).

    Thread-safe: queries and changes are serialised by ``lock`` (an ``RLock``; pass the one that
    also guards other users of the same :class:`~visage_ml.privacy.core.PrivacyCore`, whose
    registry is not thread-safe). Changes to files also take ``gallery/.lock`` so that the CLI
    and a running server do not interleave.
    """

    def __init__(
        self,
        paths: ProjectPaths,
        *,
        core: Any,
        meta: GalleryMeta,
        threshold: float,
        master_key: bytes,
        embed: Callable[[np.ndarray], np.ndarray] | None = None,
        lock: Any = None,
    ) -> None:
        self.paths = paths
        self.directory = paths.gallery
        self.core = core
        self.meta = meta
        self.threshold = float(threshold)
        self._embed = embed
        self.lock = lock if lock is not None else threading.RLock()
        private_dir(self.directory)  # before the key ring creates it with the umask's mode
        self.keys = KeyRing(self.directory / KEYS_DIR, master_key, context=KEY_CONTEXT)
        self._file_lock = self.directory / ".lock"
        self._templates_root = str(self.directory / TEMPLATES_DIR)
        self._index = TemplateIndex(meta.embedding_dim)
        self._hashes: dict[str, str] = {}
        self._stored: set[str] = set()
        self._stale: set[str] = set()
        self._unrecorded: set[str] = set()
        self._offset = 0
        self._meta_stat: tuple[int, int] | None = None
        self._rebuilt_to: str | None = None
        # Whether :meth:`reload` ran: until then ``_stored`` holds only the subjects the ledger's
        # events named that are allowed for identification (:meth:`refresh`), not every file.
        self._loaded = False

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        paths: ProjectPaths,
        *,
        model_version: str,
        embedding_dim: int,
        threshold: Threshold | float,
        preprocess: Mapping[str, Any] | None = None,
        core: Any = None,
        embed: Callable[[np.ndarray], np.ndarray] | None = None,
        lock: Any = None,
        create: bool = True,
        rebuild: bool = False,
        load: bool = True,
    ) -> Gallery:
        """Open (or create) the gallery of ``paths`` for the given embedder.

        Parameters
        ----------
        paths
            The project.
        model_version, embedding_dim, preprocess
            The serving embedder's identity; templates of another version are refused.
        threshold
            The match threshold (:func:`load_threshold`) or a number.
        core
            The project's :class:`~visage_ml.privacy.core.PrivacyCore` (a new one when None).
        embed
            Turns aligned crops into embeddings, for :meth:`enroll` with ``crops``.
        lock
            Shared ``RLock`` (see the class docstring).
        create
            Create an empty gallery when there is none (else :class:`GalleryError`).
        rebuild
            Accept a gallery of another embedder version: its metadata is replaced and old
            templates stay unused until re-enrolled (``visage gallery rebuild``).
        load
            Decrypt the searchable templates into memory now.

        Raises
        ------
        GalleryVersionError
            ``gallery.json`` names another embedder version (and ``rebuild`` is false).
        """
        directory = paths.gallery
        existing = read_meta(directory)
        thr = threshold if isinstance(threshold, Threshold) else Threshold(float(threshold), "")
        if existing is None and not create:
            raise GalleryError(MSG_NO_META.format(path=directory))
        if existing is not None and not rebuild:
            if existing.model_version != model_version:
                raise GalleryVersionError(
                    MSG_REBUILD.format(found=existing.model_version, expected=model_version)
                )
            if existing.embedding_dim != embedding_dim:
                raise GalleryVersionError(
                    MSG_REBUILD.format(
                        found=f"{existing.model_version} (dim {existing.embedding_dim})",
                        expected=f"{model_version} (dim {embedding_dim})",
                    )
                )
        meta = meta_for(
            existing,
            model_version=model_version,
            embedding_dim=embedding_dim,
            preprocess=preprocess,
            threshold=thr,
        )
        # Any key ring holding a key means existing data: a missing master key is never invented.
        master = load_master_key(paths.master_key, create=not wrapped_keys_exist(paths))
        gallery = cls(
            paths,
            core=core if core is not None else PrivacyCore(paths),
            meta=meta,
            threshold=thr.value,
            master_key=master,
            embed=embed,
            lock=lock,
        )
        if existing is None:
            gallery.write_meta()
        elif rebuild and existing.model_version != model_version:
            logger.info(
                "gallery: switching from embedder %s to %s; templates are re-enrolled",
                existing.model_version,
                model_version,
            )
        if not rebuild:
            gallery._meta_stat = gallery._stat_meta()
        if load:
            gallery.reload()
        return gallery

    @classmethod
    def open_existing(
        cls, paths: ProjectPaths, *, core: Any = None, load: bool = True
    ) -> Gallery | None:
        """Open the gallery of ``paths`` as its ``gallery.json`` describes it (embedder version,
        size), with the 1:1 threshold a server of it uses (:func:`served_threshold`); None when
        there is none. Never creates one."""
        meta = read_meta(paths.gallery)
        if meta is None:
            return None
        core = core if core is not None else PrivacyCore(paths)
        return cls.open(
            paths,
            model_version=meta.model_version,
            embedding_dim=meta.embedding_dim,
            threshold=served_threshold(paths, meta, core),
            core=core,
            create=False,
            load=load,
        )

    def write_meta(self) -> None:
        """Write ``gallery.json`` atomically from :attr:`meta`."""
        with self.lock:
            atomic_write_json(self.directory / META_FILE, self.meta.to_dict())
            self._meta_stat = self._stat_meta()

    def _stat_meta(self) -> tuple[int, int] | None:
        try:
            st = (self.directory / META_FILE).stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    # -- files ---------------------------------------------------------------------------------

    def template_path(self, pid: str) -> Path:
        """File holding ``pid``'s encrypted template."""
        return template_path(self.directory, pid)

    def anchor_path(self, pid: str) -> Path:
        """File holding ``pid``'s encrypted anchor template."""
        return anchor_path(self.directory, pid)

    def stored_sha256(self, pid: str) -> str:
        """SHA-256 of ``pid``'s template as stored (the sealed bytes)."""
        return sha256_file(self.template_path(pid))

    def files_of(self, pid: str) -> list[Path]:
        """The gallery's files of ``pid`` (template, anchor, key) that exist: what an erasure
        removes."""
        return subject_files(self.directory, pid)

    def _scan(self) -> list[str]:
        return listed_pids(self.directory / TEMPLATES_DIR, SUFFIX)

    def _seal(
        self, pid: str, key: bytes, vector: np.ndarray, images: int, magic: bytes = MAGIC
    ) -> bytes:
        header = orjson.dumps(
            {
                "pid": pid,
                "model_version": self.meta.model_version,
                "dim": int(vector.shape[0]),
                "n_images": int(images),
                "format": FORMAT_VERSION,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        body = seal(key, vector.astype("<f4").tobytes(), aad=magic + header)
        return magic + struct.pack("<I", len(header)) + header + body

    @staticmethod
    def _parse(blob: bytes, magic: bytes = MAGIC) -> tuple[dict[str, Any], bytes, bytes]:
        if len(blob) < 8 or blob[:4] != magic:
            raise ValueError("not a visage gallery template")
        (n,) = struct.unpack("<I", blob[4:8])
        header_bytes = blob[8 : 8 + n]
        return orjson.loads(header_bytes), header_bytes, blob[8 + n :]

    def _decrypt(
        self, pid: str, blob: bytes, magic: bytes = MAGIC
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """(template or None when of another version, header); raises on damage/destroyed key."""
        header, header_bytes, body = self._parse(blob, magic)
        if header.get("pid") != pid:
            raise ValueError("template header names another subject")
        if header.get("model_version") != self.meta.model_version:
            return None, header
        key = self.keys.get(pid)
        plain = open_sealed(key, body, aad=magic + header_bytes)
        vec = np.frombuffer(plain, dtype="<f4").astype(np.float32)
        if vec.shape[0] != self.meta.embedding_dim:
            return None, header
        return vec, header

    # -- loading and consent refresh -----------------------------------------------------------

    def reload(self) -> None:
        """Rebuild the in-memory matrix from disk: searchable subjects only."""
        with self.lock:
            ledger_path = self.core.ledger.path
            offset = ledger_path.stat().st_size if ledger_path.exists() else 0
            registry = self.core.registry.refresh()
            allowed = registry.allowed(PURPOSE)
            stored = self._scan()
            self._stored = set(stored)
            self._stale = set()
            self._unrecorded = set()
            self._hashes = {}
            searchable = [p for p in stored if p in allowed]
            calibration = self._index.calibration  # a reload keeps the served calibration
            self._index = TemplateIndex(self.meta.embedding_dim, capacity=len(searchable))
            self._index.set_calibration(calibration)
            self._load_many(searchable)
            # Lines before `offset` are folded; later ones are re-read by the next refresh
            # (re-applying an event is harmless).
            self._offset = self._offset_floor(ledger_path, offset)
            self._loaded = True
            logger.info(
                "gallery loaded: %d searchable of %d stored templates (%d of another embedder)",
                len(self._index),
                len(self._stored),
                len(self._stale),
            )

    @staticmethod
    def _offset_floor(path: Path, offset: int) -> int:
        # Offsets must fall on a line boundary: back off to the last newline before `offset`.
        if offset == 0 or not path.exists():
            return 0
        with open(path, "rb") as fh:
            start = max(0, offset - (1 << 16))
            fh.seek(start)
            chunk = fh.read(offset - start)
        nl = chunk.rfind(b"\n")
        return start + nl + 1 if nl != -1 else start

    def _read(self, pid: str) -> tuple[str, bytes | None, np.ndarray | None]:
        """Read and decrypt ``pid``'s template without touching any state (thread-safe).

        Returns ``(status, file bytes, template)`` with status ``ok``, ``stale`` (another
        embedder), ``missing``, ``destroyed`` (key gone) or ``damaged``.
        """
        # Plain string paths: pathlib costs a third of the start-up time at a million subjects.
        path = f"{self._templates_root}/{pid[1:3]}/{pid}{SUFFIX}"
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            return "missing", None, None
        try:
            vec, _ = self._decrypt(pid, blob)
        except KeyDestroyedError:
            return "destroyed", blob, None
        except (InvalidTag, ValueError, orjson.JSONDecodeError, struct.error):
            return "damaged", blob, None
        return ("ok" if vec is not None else "stale"), blob, vec

    def _apply(self, pid: str, status: str, blob: bytes | None, vec: np.ndarray | None) -> bool:
        """Put the outcome of :meth:`_read` into the index and sets (under the lock)."""
        if status == "missing":
            self._drop(pid)
            self._stored.discard(pid)
            return False
        assert blob is not None
        if status == "destroyed":
            self._finish_interrupted_erase(pid, self.template_path(pid), blob)
            return False
        if status == "damaged":
            logger.error(MSG_TAMPERED.format(name=self.template_path(pid).name))
            self._drop(pid)
            return False
        self._stored.add(pid)
        if vec is None:
            self._stale.add(pid)
            self._drop(pid)
            return False
        self._stale.discard(pid)
        digest = sha256_bytes(blob)
        state = self.core.registry.peek(pid)
        if state is None or state.template_sha256 != digest:
            # Only the template the ledger vouches for is searched (Art. 30 record).
            if pid not in self._unrecorded:
                logger.warning(MSG_UNRECORDED.format(name=self.template_path(pid).name))
            self._unrecorded.add(pid)
            self._drop(pid)
            return False
        self._unrecorded.discard(pid)
        self._index.put(pid, vec)
        self._hashes[pid] = digest
        return True

    def _load_one(self, pid: str) -> bool:
        """Decrypt ``pid``'s template into the index; returns whether it is searchable now."""
        return self._apply(pid, *self._read(pid))

    def _load_many(self, pids: list[str]) -> None:
        """:meth:`_load_one` for many subjects, reading and decrypting on a few threads.

        Start-up is two small file reads and two AES-GCM decryptions per subject; file reads
        release the GIL, so a handful of threads overlap the waits (most of the time on a cold
        page cache). State changes stay on the calling thread.
        """
        if len(pids) < LOAD_PARALLEL_MIN:
            for pid in pids:
                self._load_one(pid)
            return
        chunks = [pids[i : i + LOAD_CHUNK] for i in range(0, len(pids), LOAD_CHUNK)]
        with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="gallery-load") as pool:
            for chunk, results in zip(
                chunks, pool.map(lambda c: [self._read(p) for p in c], chunks), strict=True
            ):
                for pid, result in zip(chunk, results, strict=True):
                    self._apply(pid, *result)

    def _drop(self, pid: str) -> None:
        self._index.remove(pid)
        self._hashes.pop(pid, None)

    def _finish_interrupted_erase(self, pid: str, path: Path, blob: bytes) -> None:
        """A template whose key is gone: an erasure stopped after its commit point; finish it
        (the anchor too, when the erasure stopped before removing it)."""
        digest = sha256_bytes(blob)
        with file_lock(self._file_lock):
            secure_unlink(self.anchor_path(pid))
            secure_unlink(path)
        self._drop(pid)
        self._stored.discard(pid)
        self._stale.discard(pid)
        self.core.ledger.append(
            "gallery.removed",
            pid,
            {"template_sha256": digest, "reason": "interrupted_erasure_completed"},
        )
        logger.warning("gallery: finished an interrupted erasure (template without key removed)")

    def refresh(self) -> None:
        """Apply registry and gallery changes made since the last call (cheap when none).

        Reads the ledger lines appended since the last refresh, folds them into the registry and
        re-decides every subject they name: a subject no longer allowed for identification
        leaves the matrix, one allowed again (or enrolled by another process) is loaded.
        """
        with self.lock:
            news = self._ledger_news()
            if news is None:
                return
            touched, registry = news
            for pid in touched:
                self._reconcile(pid, registry)

    def _ledger_news(self) -> tuple[set[str], Any] | None:
        """The pids the ledger lines appended since the last call name, and the registry
        folded that far; None when nothing was appended, or when the ledger was replaced (then
        the gallery has reloaded). Call with the lock held."""
        self._check_meta()
        path = self.core.ledger.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        if size == self._offset:
            return None
        if size < self._offset:
            # The ledger was replaced (restored from a backup): start over.
            self.reload()
            return None
        touched: set[str] = set()
        for end, line in self.core.ledger.iter_lines(start_offset=self._offset):
            pid = orjson.loads(line).get("pid")
            if pid:
                touched.add(pid)
            self._offset = end
        # The registry reads at least as far as we did (the file only grows).
        return touched, self.core.registry.refresh()

    def _reconcile(self, pid: str, registry: Any) -> None:
        if not registry.may_process(pid, PURPOSE).allowed:
            self._drop(pid)
            if not self.template_path(pid).exists():
                self._stored.discard(pid)
                self._stale.discard(pid)
            return
        path = self.template_path(pid)
        if not path.exists():
            self._drop(pid)
            self._stored.discard(pid)
            self._stale.discard(pid)
            return
        if pid in self._index and self._hashes.get(pid) == sha256_file(path):
            return
        self._load_one(pid)

    def _check_meta(self) -> None:
        if self._rebuilt_to is not None:
            raise GalleryVersionError(
                MSG_REBUILT_WHILE_RUNNING.format(
                    found=self._rebuilt_to, expected=self.meta.model_version
                )
            )
        if self._meta_stat is None:
            return
        stat = self._stat_meta()
        if stat == self._meta_stat:
            return
        current = read_meta(self.directory)
        self._meta_stat = stat
        if current is not None and current.model_version != self.meta.model_version:
            self._rebuilt_to = current.model_version
            self._check_meta()

    # -- queries -------------------------------------------------------------------------------

    def set_calibration(self, calibration: Any) -> None:
        """Score every search and verification through ``calibration`` (the released
        ``reports/score_calibration.json``, :func:`visage_ml.serving.score_calibration.
        load_score_calibration`), as evaluation measured the thresholds; None: raw scores."""
        if calibration is not None:
            calibration.check_embedder(self.model_version)
        with self.lock:
            self._index.set_calibration(calibration)

    @property
    def size(self) -> int:
        """Searchable subjects (rows of the in-memory matrix)."""
        with self.lock:
            return len(self._index)

    @property
    def model_version(self) -> str:
        return self.meta.model_version

    @property
    def embedding_dim(self) -> int:
        return self.meta.embedding_dim

    def searchable(self) -> list[str]:
        """Pids currently in the matrix (after applying pending registry changes)."""
        self.refresh()
        with self.lock:
            return self._index.pids()

    def is_searchable(self, pid: str) -> bool:
        """Whether ``pid`` is in the matrix now (after applying pending registry changes)."""
        with self.lock:
            self.refresh()
            return pid in self._index

    def _load_once(self) -> None:
        """:meth:`reload` a gallery opened without loading (``load=False``), for what lists or
        counts every stored template: a refresh loads only subjects allowed for identification,
        so a restricted subject's template (kept, never searched) would be left out."""
        with self.lock:
            if not self._loaded:
                self.reload()

    def stored(self) -> list[str]:
        """Pids that have a template file (searchable or not); a gallery opened without
        loading is loaded first."""
        self._load_once()
        self.refresh()
        with self.lock:
            return sorted(self._stored)

    def search(
        self,
        embeddings: np.ndarray,
        *,
        top_k: int = 5,
        threshold_for: Callable[[int], float],
    ) -> tuple[list[list[Match]], int, float]:
        """Top-``top_k`` matches at or above ``threshold_for(N)`` for each embedding row.

        ``N`` is the number of searchable subjects when the search runs (read under the same
        lock as the search), so a threshold that depends on the gallery's size
        (:mod:`visage_ml.serving.operating_point`) follows every enrolment and erasure.

        Returns
        -------
        matches, n, threshold
            The matches per row, ``N`` and the threshold applied.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, not {top_k}")
        q = normalize_queries(embeddings, self.meta.embedding_dim)
        # Refresh and search under one lock: a consent change recorded through the same lock
        # is either before this query (and applied) or after it.
        with self.lock:
            self.refresh()
            n = len(self._index)
            threshold = float(threshold_for(n))
            found = self._index.search(q, top_k=top_k, threshold=threshold)
        return [[Match(pid, score) for pid, score in row] for row in found], n, threshold

    def identify_many(self, embeddings: np.ndarray, *, top_k: int = 5) -> list[list[Match]]:
        """Top-``top_k`` matches at or above the (1:1) threshold for each embedding row.

        Only subjects allowed for identification at the time of the call are scored. The HTTP
        API searches at the gallery-size-dependent 1:N threshold instead (:meth:`search`).
        """
        return self.search(embeddings, top_k=top_k, threshold_for=lambda _n: self.threshold)[0]

    def identify(self, embedding: np.ndarray, *, top_k: int = 5) -> list[Match]:
        """Top-``top_k`` (pid, score) at or above the threshold for one embedding."""
        return self.identify_many(np.asarray(embedding).reshape(1, -1), top_k=top_k)[0]

    def verify(self, embedding: np.ndarray, pid: str) -> tuple[bool, float]:
        """Is ``embedding`` subject ``pid``? Returns ``(score >= threshold, score)``.

        Raises
        ------
        NotEnrolledError
            ``pid`` has no searchable template (never enrolled, restricted, objected,
            withdrawn, erased): such a subject is not scored at all.
        """
        check_pid(pid)
        q = normalize_queries(np.asarray(embedding).reshape(1, -1), self.meta.embedding_dim)
        with self.lock:
            self.refresh()
            if pid not in self._index:
                raise NotEnrolledError(pid)
            score = self._index.score(pid, q[0])
        return score >= self.threshold, score

    def compare(self, embeddings: np.ndarray, template: np.ndarray) -> np.ndarray:
        """Score of each embedding row against ``template``, as :meth:`verify` scores a probe
        against a subject's template (unit rows, the served score calibration): a row matches
        at or above :attr:`threshold`.

        For a template that is not searched as it is: a subject's stored template or anchor as
        :meth:`reference` read them, which an operator's re-enrolment must match.
        """
        dim = self.meta.embedding_dim
        q = normalize_queries(embeddings, dim)
        t = normalize_queries(np.asarray(template).reshape(1, -1), dim)[0]
        with self.lock:
            calibration = self._scoring_calibration()
        return score_against(q, t, calibration)

    def _scoring_calibration(self) -> Any:
        """The score calibration searches and verifications apply now (None: raw scores)."""
        return self._index.calibration

    def status(self, pid: str) -> dict[str, Any]:
        """Gallery state of ``pid``: enrolled (a template is stored), searchable, its version."""
        path = self.template_path(pid)
        self.refresh()
        version = None
        if path.exists():
            with contextlib.suppress(OSError, ValueError, orjson.JSONDecodeError, struct.error):
                version = self._parse(path.read_bytes())[0].get("model_version")
        with self.lock:
            return {
                "enrolled": path.exists(),
                "searchable": pid in self._index,
                "template_model_version": version,
            }

    def template(self, pid: str) -> tuple[np.ndarray, dict[str, Any]]:
        """``pid``'s decrypted template and its file header, for the subject's own copy.

        Used by the access/portability export (Art. 15, 20); any embedder version is returned
        (the header names it). Never logged, never served over the identification API.

        Raises
        ------
        NotEnrolledError
            No template file (never enrolled, or erased), or its key was destroyed (an
            erasure that stopped after its commit point).
        TemplateFileError
            The file fails authentication (altered or truncated): a GalleryError.
        """
        return self._open_file(pid, self.template_path(pid), MAGIC)

    @property
    def keeps_anchors(self) -> bool:
        """Whether this backend stores anchor templates (:meth:`anchor`).

        The in-memory backend writes them in :meth:`enroll_many`; a backend that replaces that
        method keeps none unless it writes them too and says so here (the pgvector one does), and
        :meth:`anchor` then finds none for anybody.
        """
        return type(self).enroll_many is Gallery.enroll_many

    def anchor(self, pid: str) -> tuple[np.ndarray, dict[str, Any]]:
        """``pid``'s decrypted anchor template and its header.

        The anchor is the template of the subject's first enrolment, or of the last enrolment
        made by a privileged path (a dpo key, the gallery stage, ``visage gallery rebuild``, a
        rectification); an operator's re-enrolment must match it (and the current template) and
        leaves it unchanged. Never logged, never served.

        Raises
        ------
        NotEnrolledError
            No anchor: never enrolled, erased, its key destroyed, enrolled before anchors were
            kept (a rebuild or a dpo re-enrolment makes one), or a backend that keeps none
            (:attr:`keeps_anchors`).
        TemplateFileError
            The file fails authentication (altered, truncated or moved): a GalleryError.
        """
        if not self.keeps_anchors:
            raise NotEnrolledError(pid)
        return self._open_file(pid, self.anchor_path(pid), ANCHOR_MAGIC)

    def reference(self, pid: str) -> Reference:
        """``pid``'s stored template and anchor template, as an operator's re-enrolment is
        checked against them and then written (``expect`` of :meth:`enroll`).

        Both are read under the lock; the anchor must be the file whose SHA-256 the ledger last
        recorded for the subject (a subject anchored before anchors were recorded has none, and
        its anchor is used as it is).

        Raises
        ------
        NotEnrolledError
            No template or no anchor (see :meth:`anchor`).
        AnchorUnrecordedError
            The anchor file is not the one the ledger records (logged with the pid).
        TemplateUnrecordedError
            The template is not the one the ledger records (an older one put back).
        GalleryError
            A file fails authentication.
        """
        check_pid(pid)
        if not self.keeps_anchors:
            raise NotEnrolledError(pid)
        path = self.anchor_path(pid)
        with self.lock:
            self.refresh()
            blob = self._sealed(pid)
            try:
                anchor_blob = path.read_bytes()
            except FileNotFoundError:
                anchor_blob = None
            state = self.core.registry.peek(pid)
        if blob is None or anchor_blob is None:
            raise NotEnrolledError(pid)
        template_sha256 = sha256_bytes(blob)
        if state is not None and state.template_sha256 != template_sha256:
            logger.warning(MSG_TEMPLATE_UNRECORDED.format(pid=pid))
            raise TemplateUnrecordedError(pid)
        anchor_sha256 = sha256_bytes(anchor_blob)
        recorded = state.anchor_sha256 if state is not None else None
        if recorded is not None and recorded != anchor_sha256:
            logger.warning(MSG_ANCHOR_UNRECORDED.format(pid=pid))
            raise AnchorUnrecordedError(pid)
        template, template_header = self._open_blob(pid, blob, MAGIC, self.template_path(pid).name)
        anchor, anchor_header = self._open_blob(pid, anchor_blob, ANCHOR_MAGIC, path.name)
        return Reference(
            pid,
            template_sha256,
            anchor_sha256,
            template,
            template_header,
            anchor,
            anchor_header,
        )

    def _sealed(self, pid: str) -> bytes | None:
        """The sealed bytes of ``pid``'s template as stored, or None."""
        try:
            return self.template_path(pid).read_bytes()
        except FileNotFoundError:
            return None

    def _open_file(self, pid: str, path: Path, magic: bytes) -> tuple[np.ndarray, dict[str, Any]]:
        """Decrypt ``pid``'s template or anchor file at ``path`` (any embedder version)."""
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise NotEnrolledError(pid) from None
        return self._open_blob(pid, blob, magic, path.name)

    def _open_blob(
        self, pid: str, blob: bytes, magic: bytes, name: str
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Decrypt ``pid``'s sealed template or anchor ``blob`` (any embedder version)."""
        try:
            header, header_bytes, body = self._parse(blob, magic)
            if header.get("pid") != pid:
                raise ValueError("template header names another subject")
            plain = open_sealed(self.keys.get(pid), body, aad=magic + header_bytes)
        except (FileNotFoundError, KeyDestroyedError):
            raise NotEnrolledError(pid) from None
        except (InvalidTag, ValueError, orjson.JSONDecodeError, struct.error):
            raise TemplateFileError(MSG_TAMPERED.format(name=name)) from None
        return np.frombuffer(plain, dtype="<f4").astype(np.float32), header

    def stats(self) -> dict[str, Any]:
        """Counts only: stored, searchable and stale templates, the embedder and threshold (a
        gallery opened without loading is loaded first)."""
        self._load_once()
        self.refresh()
        with self.lock:
            return {
                "stored": len(self._stored),
                "searchable": len(self._index),
                "stale": len(self._stale),
                "unrecorded": len(self._unrecorded & self._stored),
                "not_searchable": len(self._stored) - len(self._index) - len(self._stale),
                "model_version": self.meta.model_version,
                "embedding_dim": self.meta.embedding_dim,
                "threshold": self.threshold,
            }

    def check_templates(self, *, calibration: Any = None) -> TemplateCheck:
        """Open every template file under its subject's key and compare its SHA-256 with the
        one the ledger's last ``gallery.enrolled`` event of the subject records
        (:mod:`visage_ml.serving.gallery_check`); reads only.

        ``calibration`` is accepted for the pgvector gallery's sake: files hold no cluster.
        A file found wrong or in flight is read again (the ledger too) before it is reported.
        """
        report = TemplateCheck("files")
        with self.lock:
            suspects = self._check_files(report, self._scan(), first=True)
            if suspects:
                self._check_files(report, suspects, first=False)
        return report

    def _check_files(self, report: TemplateCheck, pids: list[str], *, first: bool) -> list[str]:
        """:meth:`check_templates` over ``pids`` (a second look: ``first`` false); returns the
        pids found wrong or in flight."""
        registry = self.core.registry.refresh()
        history = enrolment_history(self.core.ledger.lines_containing((ENROLLED_NEEDLE,)))
        now = ledger_time(self.core.ledger.clock())
        for pid in pids:
            status, blob, _ = self._read(pid)
            if status == "missing" or status == "stale":
                if first:
                    report.stale += status == "stale"
                else:
                    # Gone or replaced by another embedder's since the first look.
                    report.record(pid, None)
                    report.checked -= 1
                continue
            report.checked += first
            state = registry.peek(pid)
            if status == "destroyed":
                verdict: str | None = NO_KEY
            elif status == "damaged":
                verdict = SEALED
            elif state is None or blob is None:
                verdict = UNRECORDED
            else:
                verdict = ledger_verdict(
                    sha256_bytes(blob), state.template_sha256, history.get(pid, []), now
                )
            report.record(pid, verdict)
        return sorted(report.problems) + sorted(report.in_flight)

    # -- changes -------------------------------------------------------------------------------

    def _embeddings(self, embeddings: np.ndarray | None, crops: np.ndarray | None) -> np.ndarray:
        if (embeddings is None) == (crops is None):
            raise ValueError("pass either embeddings or crops")
        if embeddings is not None:
            return np.asarray(embeddings, dtype=np.float32)
        if self._embed is None:
            raise GalleryError(MSG_NO_EMBEDDER)
        return np.asarray(self._embed(np.asarray(crops)), dtype=np.float32)

    def enroll(
        self,
        pid: str,
        embeddings: np.ndarray | None = None,
        *,
        crops: np.ndarray | None = None,
        model_version: str | None = None,
        keep_anchor: bool = False,
        expect: Reference | None = None,
        distinct_at: Callable[[int], float] | None = None,
        match_overridden: bool = False,
    ) -> Enrolment:
        """Store ``pid``'s template (replacing an existing one) if identification is allowed.

        Parameters
        ----------
        pid
            The subject.
        embeddings
            ``(N, D)`` embeddings of the subject's enrolment images, or
        crops
            ``(N, S, S, 3)`` aligned uint8 crops, embedded with the gallery's embedder.
        model_version
            The embedder that made ``embeddings``; refused when it is not the gallery's.
        keep_anchor
            Leave the subject's anchor template as it is (an operator's re-enrolment, which the
            caller has matched against it); otherwise the new template becomes the anchor too.
        expect
            Write only if ``pid``'s template and anchor are still the sealed bytes this
            :class:`Reference` was read from (:meth:`reference`; :meth:`Reference.none_stored`:
            still no template), checked under the locks of the write: an operator's enrolment,
            checked against them before.
        distinct_at
            Refuse the template when it matches another searchable subject at or above
            ``distinct_at(N)`` (the 1:N threshold at the gallery's size ``N``), searched under
            the locks of the write, so that two enrolments of one face under two pids cannot
            both pass: an operator's enrolment (one face, one pid).
        match_overridden
            The template was found to match another searchable subject and a dpo key enrols it
            anyway (twins): the ledger's ``gallery.enrolled`` says so (``matched_enrolled``).

        Raises
        ------
        EnrolmentRefusedError
            The registry does not allow ``pid`` for identification (the reason is named).
        GalleryVersionError
            ``model_version`` is not the gallery's embedder.
        ReferenceChangedError
            ``expect`` is not what is stored any more (nothing written; logged with the pid).
        MatchesEnrolledError
            With ``distinct_at``: the template matches another searchable subject (nothing
            written; the other subject is not named).
        """
        items = {pid: self._embeddings(embeddings, crops)}
        kw: dict[str, Any] = {}
        # Only an operator's enrolment passes these, and keep_anchor only after :meth:`reference`
        # answered, which a backend without anchors (whose enroll_many may not take them) never
        # does.
        if keep_anchor:
            kw["keep_anchor"] = True
        if expect is not None:
            kw["expect"] = {pid: expect}
        if distinct_at is not None:
            kw["distinct_at"] = distinct_at
        if match_overridden:
            kw["match_overridden"] = True
        return self.enroll_many(items, model_version=model_version, **kw)[0]

    def enroll_many(
        self,
        items: Mapping[str, np.ndarray],
        *,
        model_version: str | None = None,
        keep_anchor: bool = False,
        expect: Mapping[str, Reference] | None = None,
        distinct_at: Callable[[int], float] | None = None,
        match_overridden: bool = False,
    ) -> list[Enrolment]:
        """Enrol several subjects under one lock and one ledger append.

        Nothing is written unless every subject is allowed, and each subject in ``expect``
        still has the template and anchor its :class:`Reference` was read from (else
        :class:`ReferenceChangedError`; see :meth:`enroll`). A template equal to the stored one
        is left alone (no write, no ``gallery.enrolled``), so a repeated rebuild changes nothing.
        On a failed ledger append the template and anchor files are restored to what they were.

        Unless ``keep_anchor``, each new template also becomes the subject's anchor template
        (written beside it, sealed under the same key; rewritten only when it differs): the
        first enrolment, a dpo's, the gallery stage's and a rebuild's (a new embedder's anchors
        are made from ``data/processed`` there) re-anchor the subject, and the ledger records the
        anchor file's SHA-256 (``anchor_sha256`` of ``gallery.enrolled``, or a
        ``gallery.anchored`` when the template is left alone but the anchor is not the one
        recorded). With ``keep_anchor`` (an operator's re-enrolment) the anchor is left as it
        is, and none is made for a subject who has none.

        ``distinct_at`` and ``match_overridden``: as in :meth:`enroll`, for every subject. A
        rebuild or the gallery stage passes neither: they re-enrol consented subjects from the
        project's own labelled crops, whose identities are the data set's (the DPO's) to answer
        for, and refusing one of them would drop a consented subject from the gallery.
        """
        if model_version is not None and model_version != self.meta.model_version:
            raise GalleryVersionError(
                MSG_REBUILD.format(found=model_version, expected=self.meta.model_version)
            )
        dim = self.meta.embedding_dim
        vectors: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for pid, e in items.items():
            vectors[check_pid(pid)] = template_of(e, dim)
            counts[pid] = int(np.asarray(e).reshape(-1, dim).shape[0])
        with self.lock, file_lock(self._file_lock):
            self.refresh()
            registry = self.core.registry
            for pid in vectors:
                decision = registry.may_process(pid, PURPOSE)
                if not decision.allowed:
                    raise EnrolmentRefusedError(pid, decision.reason)
            for pid, ref in (expect or {}).items():
                self._check_unchanged(ref, self._sealed(pid), registry.peek(pid))
            if distinct_at is not None:
                self._refuse_matches(vectors, distinct_at)
            results: list[Enrolment] = []
            undo: list[tuple[Path, bytes | None]] = []
            events: list[tuple[str, str | None, Mapping[str, Any]]] = []
            written: dict[str, tuple[np.ndarray, str]] = {}
            try:
                for pid, vec in vectors.items():
                    path = self.template_path(pid)
                    old = path.read_bytes() if path.exists() else None
                    state = registry.peek(pid)
                    recorded = state is not None and state.template_sha256 == (
                        sha256_bytes(old) if old is not None else None
                    )
                    if old is not None and recorded and self._same_template(pid, old, vec):
                        digest = sha256_bytes(old)
                        if not keep_anchor:
                            # A subject enrolled before anchors were kept (or recorded) gets
                            # one here.
                            anchor = self._write_anchor(pid, vec, counts[pid], undo)
                            if state is None or state.anchor_sha256 != anchor:
                                events.append(
                                    anchored_event(
                                        pid, anchor, model_version=self.meta.model_version
                                    )
                                )
                        results.append(Enrolment(pid, digest, counts[pid], True, changed=False))
                        written[pid] = (vec, digest)
                        continue
                    if not self.keys.exists(pid):  # a first enrolment undone leaves no key
                        undo.append((self.keys.path(pid), None))
                    key = self.keys.get(pid, create=True)
                    faults.crash_point("gallery:enroll:key-created")
                    blob = self._seal(pid, key, vec, counts[pid])
                    undo.append((path, old))
                    if not path.parent.is_dir():
                        private_dir(self.directory / TEMPLATES_DIR)
                        private_dir(path.parent)
                    atomic_write_bytes(path, blob, mode=0o600)
                    faults.crash_point("gallery:enroll:template-written")
                    anchor = None
                    if not keep_anchor:
                        anchor = self._write_anchor(pid, vec, counts[pid], undo)
                    digest = sha256_bytes(blob)
                    written[pid] = (vec, digest)
                    results.append(Enrolment(pid, digest, counts[pid], old is not None))
                    events.append(
                        enrolled_event(
                            pid,
                            digest,
                            model_version=self.meta.model_version,
                            replaced=old is not None,
                            anchor_sha256=anchor,
                            matched_enrolled=match_overridden,
                        )
                    )
                if events:
                    self.core.ledger.append_many(events)
                    faults.crash_point("gallery:enroll:recorded")
            except BaseException:
                self._undo(undo)
                raise
            for pid, (vec, digest) in written.items():
                self._stored.add(pid)
                self._stale.discard(pid)
                self._unrecorded.discard(pid)
                self._index.put(pid, vec)
                self._hashes[pid] = digest
        return results

    def _refuse_matches(
        self, vectors: Mapping[str, np.ndarray], threshold_for: Callable[[int], float]
    ) -> None:
        """Raise :class:`MatchesEnrolledError` for the first template that matches a searchable
        subject other than its own at or above ``threshold_for(N)`` (the caller holds the
        gallery's locks), or another template of the same enrolment at that threshold (the
        search sees only stored templates: one face under two new pids would pass it). Only
        searchable subjects are compared: a restricted, objecting or withdrawn subject's
        template may not be processed, not even to refuse a copy of it."""
        pids = list(vectors)
        stacked = np.stack([vectors[p] for p in pids])
        rows, _, threshold = self.search(stacked, top_k=2, threshold_for=threshold_for)
        for pid, row in zip(pids, rows, strict=True):
            if any(m.pid != pid for m in row):
                raise MatchesEnrolledError(pid)
        # Scored as the search scores (the served calibration), at the threshold it applied.
        for i, pid in enumerate(pids[1:], start=1):
            if (self.compare(stacked[:i], stacked[i]) >= threshold).any():
                raise MatchesEnrolledError(pid)

    def _same_template(self, pid: str, blob: bytes, vec: np.ndarray, magic: bytes = MAGIC) -> bool:
        try:
            old, _ = self._decrypt(pid, blob, magic)
        except (KeyDestroyedError, InvalidTag, ValueError, orjson.JSONDecodeError, struct.error):
            return False
        return old is not None and np.array_equal(old, vec)

    def _write_anchor(
        self, pid: str, vec: np.ndarray, images: int, undo: list[tuple[Path, bytes | None]]
    ) -> str:
        """Make ``vec`` ``pid``'s anchor template (atomically; nothing when it already is),
        noting the file's previous bytes in ``undo``; returns the anchor file's SHA-256, for
        the ledger to record. Call with the locks of the write held."""
        path = self.anchor_path(pid)
        old = path.read_bytes() if path.exists() else None
        if old is not None and self._same_template(pid, old, vec, ANCHOR_MAGIC):
            return sha256_bytes(old)
        blob = self._seal(pid, self.keys.get(pid, create=True), vec, images, ANCHOR_MAGIC)
        undo.append((path, old))
        if not path.parent.is_dir():
            private_dir(self.directory / ANCHORS_DIR)
            private_dir(path.parent)
        atomic_write_bytes(path, blob, mode=0o600)
        return sha256_bytes(blob)

    def _check_unchanged(self, ref: Reference, template: bytes | None, state: Any) -> None:
        """Raise :class:`ReferenceChangedError` (logged with the pid) unless ``ref.pid``'s
        stored ``template`` bytes, and for a re-enrolment its anchor file, are still those
        ``ref`` was read from, and the anchor is still the one the ledger records (``state``,
        the registry's). Call with the locks of the write held."""
        stored = sha256_bytes(template) if template is not None else None
        changed = stored != ref.template_sha256
        if not changed and ref.template_sha256 is not None:
            path = self.anchor_path(ref.pid)
            anchor = sha256_file(path) if path.is_file() else None
            recorded = state.anchor_sha256 if state is not None else None
            changed = anchor != ref.anchor_sha256 or recorded not in (None, anchor)
        if changed:
            logger.warning(MSG_REFERENCE_CHANGED.format(pid=ref.pid))
            raise ReferenceChangedError(ref.pid)

    @staticmethod
    def _undo(undo: Iterable[tuple[Path, bytes | None]]) -> None:
        for path, old in undo:
            with contextlib.suppress(OSError):
                if old is None:
                    if path.exists():
                        path.unlink()
                        fsync_dir(path.parent)
                else:
                    atomic_write_bytes(path, old, mode=0o600)

    def erase(self, pid: str, *, reason: str = ERASURE_REASON) -> Removal:
        """Remove ``pid`` from the gallery for good: row, key, ciphertext; durable.

        Order: the row leaves memory (never scored again), the key file is destroyed (commit
        point: the ciphertext is unreadable from here on, in every copy), the anchor and the
        template files are overwritten and unlinked, each step fsync'd, then ``gallery.removed``
        is appended.

        Returns
        -------
        Removal
            Each removed file (project-relative path) with its SHA-256 taken before deletion;
            empty when the subject had nothing in the gallery.
        """
        check_pid(pid)
        root = self.paths.root
        with self.lock, file_lock(self._file_lock):
            removed: dict[str, str] = {}
            path = self.template_path(pid)
            template_hash = sha256_file(path) if path.exists() else None
            anchor = self.anchor_path(pid)
            anchor_hash = sha256_file(anchor) if anchor.exists() else None
            self._drop(pid)
            faults.crash_point("gallery:erase:dropped")
            key_path = self.keys.path(pid)
            self._key_sought(pid)
            keys = self.keys.destroy_files(pid, erasure=reason == ERASURE_REASON)
            faults.crash_point("gallery:erase:key-destroyed")
            key_hash = keys.get(key_path)
            removed.update((_rel(p, root), h) for p, h in keys.items())
            # The anchor before the template: a crash between leaves a template without a key,
            # which start-up finishes removing (anchor included).
            if anchor_hash is not None:
                secure_unlink(anchor)
                removed[_rel(anchor, root)] = anchor_hash
            if template_hash is not None:
                secure_unlink(path)
                removed[_rel(path, root)] = template_hash
            faults.crash_point("gallery:erase:template-removed")
            self._stored.discard(pid)
            self._stale.discard(pid)
            self._unrecorded.discard(pid)
            if removed:
                self.core.ledger.append(
                    "gallery.removed",
                    pid,
                    {
                        "template_sha256": template_hash,
                        "anchor_sha256": anchor_hash,
                        "key_sha256": key_hash,
                        "reason": reason,
                    },
                )
        return Removal(pid, removed)

    def _key_sought(self, pid: str) -> None:
        """Add ``pid``'s gallery key as unwrapped to the tombstones (:meth:`~visage_ml.privacy.
        tombstones.Tombstones.add_keys`) before it is destroyed, whatever the reason: every
        later scan for copies (the subject's erasure, another's, the certificate's verifier)
        then finds the key an operator printed in a notebook or saved to a file, which opens the
        template's sealed copy in any backup. An erasure's ``unwrapped`` step added it already
        (nothing is written again); a purge without basis (consent withdrawn or expired, an
        objection, the retention) destroys the key and keeps the subject, whose later erasure
        finds no key file left to take it from. Tombstones that cannot be written do not keep
        the template: its removal is the subject's right, the key's tag a further safeguard
        (:func:`~visage_ml.privacy.tombstones.seek_key`, which logs it)."""
        seek_key(self.core.tombstones, self.keys, pid, name=KEY_CONTEXT)

    def purge_without_basis(self) -> list[Removal]:
        """Erase stored templates whose subject no longer has any legal basis for them.

        Consent withdrawn, expired or never given for identification, an objection to it, or
        unknown subjects: the template has no basis to be kept. Restricted subjects keep theirs
        (Art. 18: stored, not used); pending erasures are left to the erasure. A gallery opened
        without loading is loaded first (its templates without basis are in no refresh).
        """
        self._load_once()
        self.refresh()
        registry = self.core.registry
        out = []
        with self.lock:
            for pid in sorted(self._stored):
                if registry.may_process(pid, PURPOSE).reason in NO_BASIS_REASONS:
                    out.append(self.erase(pid, reason="no_legal_basis"))
        return out
