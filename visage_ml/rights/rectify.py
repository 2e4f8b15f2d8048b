"""Rectification (Art. 16) inside the request lifecycle, and re-enrolment after it.

Rectification replaces attributes or images through :class:`~visage_ml.data.rawstore.RawStore`
(``dvc add`` makes every derived output stale through DVC lineage), records before/after hashes
in a ``rectification`` ledger event, and re-enrols the subject in the gallery from the corrected
images (or, without an embedder, removes the now-inaccurate template until ``dvc repro gallery``
enrols it again).

A subject whose processing is restricted is rectified too: that is Art. 18(1)(a), where the
accuracy is contested, processing restricted while it is checked, and the data then rectified.
The corrected images are stored (sealed, as always) and the template made from the old ones,
now inaccurate, is removed; no new template is computed while the restriction lasts (computing
an embedding is processing beyond storage). Lifting the restriction
(:func:`~visage_ml.rights.runner.restrict`) makes it again from the corrected images
(:func:`owed_enrolment`, :func:`enrol_owed`), or says that the subject must be enrolled again.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from visage_ml import dvcops
from visage_ml.config import GENDERS, GROUPS, ProjectPaths, load_params
from visage_ml.data.imagecheck import (
    ALLOWED_FORMATS,
    MIN_SIDE,
    CheckedImage,
    ImageRejectedError,
    check_image,
)
from visage_ml.data.importers.common import MAX_AGE
from visage_ml.data.rawstore import (
    BAD_GENDER,
    ImageMissingError,
    ImageUnreadableError,
    RawStore,
    read_images,
    read_subjects,
)
from visage_ml.inference import ModelFileError
from visage_ml.io import canonical_json, sha256_file
from visage_ml.privacy.core import ALREADY_ERASED, PrivacyCore
from visage_ml.privacy.datakeys import SealedFileError
from visage_ml.privacy.keys import check_pid
from visage_ml.privacy.outbox import (
    REENROLLED,
    REENROLMENT_NEEDED,
    REMOVED_NO_BASIS,
    REMOVED_NO_FACE,
    REMOVED_UNTIL_REENROLMENT,
    REMOVED_WHILE_RESTRICTED,
)
from visage_ml.privacy.registry import NO_BASIS_REASONS
from visage_ml.privacy.requests import RequestBook
from visage_ml.rights.export import jsonable, row_dict
from visage_ml.rights.lifecycle import begin, checked_first, recorded
from visage_ml.rights.rawcheck import check_raw
from visage_ml.serving.engine import Engine, TooManyFacesError
from visage_ml.serving.gallery import PURPOSE as IDENTIFICATION
from visage_ml.serving.gallery import EnrolmentRefusedError, Gallery, GalleryError, read_meta
from visage_ml.serving.pg_gallery import open_project_gallery

log = logging.getLogger(__name__)

MSG_NOTHING = "nothing to rectify: give attributes (age, gender, group) or images"
MSG_BAD_AGE = "age must be a whole number of years from 0 to {max_age}, found {found!r}"
MSG_BAD_GROUP = (
    "group must be one of {groups} or a group data/raw already holds ({known}), found {found!r}; "
    "a new label would count as a group of its own in every fairness figure"
)
MSG_NOT_THEIRS = (
    "image {image_id} is not one of subject {pid}'s images in data/raw; give the id of one of "
    "theirs (the image_id column of data/raw/images.parquet, rows with their pid)"
)
MSG_BAD_IMAGE = (
    "image {image_id}: the replacement is refused ({why}); give a photo of the subject's face "
    "as " + ", ".join(ALLOWED_FORMATS) + f", at least {MIN_SIDE} pixels a side"
)
MSG_NO_ROW = (
    "subject {pid} has no row in data/raw/subjects.parquet: there are no attributes to correct"
)
# What a rectification did to the subject's template (``gallery`` of the result, of the
# ``rectification`` event and of the request's outcome), and what the lift of a restriction
# did to a template a rectification removed while it lasted (``gallery`` of its outcome): the
# codes are visage_ml.privacy.outbox's, which words them for the subject; these, for the DPO.
MSG_REMOVED_WHILE_RESTRICTED = (
    "the template made from subject {pid}'s old images was removed, and no new one is made "
    "while their processing is restricted; lifting the restriction (`visage privacy lift "
    "{pid}`, POST /v1/subjects/{pid}/lift) makes it again from the rectified images"
)
MSG_REENROLLED = (
    "subject {pid}'s template, removed when their images were rectified during the "
    "restriction, was made again from the rectified images"
)
MSG_REENROLMENT_NEEDED = (
    "subject {pid}'s template, removed when their images were rectified during the "
    "restriction, could not be made again ({why}); they are not identified until enrolled "
    "again: run `dvc repro gallery` (its prepare stage reads the rectified images in "
    "data/raw), or enrol them with a dpo key (POST /v1/enroll)"
)
# Why a template owed after a lift could not be made (the ``status`` of the attempt).
REENROLMENT_WHY = {
    "no_gallery": "there is no gallery",
    "no_embedder": "there is no embedder, models/embedder.onnx",
    REMOVED_NO_FACE: "no single face was found in the rectified images",
    "gallery_error": "the gallery could not be written; see the log",
    "model_error": "a model failed on the rectified images, damaged: restore it first with "
    "`dvc repro export` and restart the server; see the log",
    # The file's name is the log's (the HTTP answer carries the note).
    "sealed_file_error": "a stored photograph of theirs fails authentication, altered or "
    "truncated on disk: restore it first with `dvc checkout` (or re-import the image); the log "
    "names it",
    "image_missing": "a stored photograph of theirs is missing from disk (deleted, or "
    "`dvc checkout` not run): restore it first with `dvc checkout` (or re-import the image); "
    "the log names it",
    "image_unreadable": "a stored photograph of theirs is on disk but cannot be read (its "
    "permissions, a folder in its place, the storage failing): first make it readable by the "
    "server (check its permissions, owner and storage) or restore it with `dvc checkout`; the "
    "log names it",
}
ATTRIBUTES = ("age", "gender", "group")
# What the data key is stretched for to MAC the attributes (a subkey for this use only).
ATTRIBUTES_MAC_CONTEXT = b"visage-ml rectification attributes v1"


@dataclass
class RectificationResult:
    """Before/after digests of what changed (no values).

    The ledger keeps them for good, so none is a digest that something of the subject's can be
    hashed to once they are erased: an image is named by the SHA-256 of its sealed file (the
    ciphertext), and the attributes (a few hundred possible values, which a plain hash would
    give away by enumeration) by an HMAC under a key derived from the subject's data key, which
    their erasure destroys. While the subject is on record a DPO can check a digest against the
    data (:func:`attributes_mac`).
    """

    request_id: str
    pid: str
    fields: list[str]
    attributes_mac_before: str | None
    attributes_mac_after: str | None
    files: list[dict[str, str]] = field(default_factory=list)
    raw_md5_before: str | None = None
    raw_md5_after: str | None = None
    gallery: str = "unchanged"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def attributes_mac(data_key: bytes, row: Mapping[str, Any] | None) -> str | None:
    """HMAC-SHA256 of a subject's ``age``, ``gender`` and ``group`` under their data key.

    A subkey is derived for this use (the data key itself seals their files), so the digest
    says nothing once the data key is destroyed.
    """
    if row is None:
        return None
    keep = {k: jsonable(row.get(k)) for k in ATTRIBUTES}
    subkey = hmac.new(data_key, ATTRIBUTES_MAC_CONTEXT, hashlib.sha256).digest()
    return hmac.new(subkey, canonical_json(keep), hashlib.sha256).hexdigest()


def _tracked(paths: ProjectPaths) -> str | None:
    return dvcops.tracked_md5(paths.root, paths.raw)


def rectify(
    paths: ProjectPaths,
    pid: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    images: Mapping[str, bytes] | None = None,
    request_id: str | None = None,
    core: PrivacyCore | None = None,
    gallery: Gallery | None = None,
    engine: Engine | None = None,
) -> RectificationResult:
    """Correct a subject's attributes and/or replace images (Art. 16).

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    attributes
        New ``age`` / ``gender`` / ``group`` values (None clears one).
    images
        ``{image_id: file bytes}``: replacements for existing images (any accepted format; it
        is checked and stored as a metadata-free PNG).
    request_id
        The verified rectification request answered (one is recorded when None).
    core, gallery
        Open privacy core and gallery (opened when None).
    engine
        A :class:`~visage_ml.serving.engine.Engine` to re-enrol the subject from the corrected
        images; without one (and without ``models/embedder.onnx``) the subject's template is
        removed until ``dvc repro gallery`` enrols them again.
        While the subject's processing is restricted no template is made: the old one is
        removed, and lifting the restriction makes it again.

    Returns
    -------
    RectificationResult
        What changed, as hashes; also in the ``rectification`` ledger event and the receipt.

    Raises
    ------
    visage_ml.data.rawstore.RawDataMissingError
        ``data/raw``'s tables are not checked out, though the subject's rows are expected in
        them, or photographs the tables list are not there though DVC's record of
        ``data/raw`` holds them (:func:`~visage_ml.rights.rawcheck.check_raw`): nothing
        changes, and a request answered keeps the failure.
    """
    check_pid(pid)
    attributes = dict(attributes or {})
    images = dict(images or {})
    if not attributes and not images:
        raise ValueError(MSG_NOTHING)
    core = core if core is not None else PrivacyCore(paths)
    params = load_params(paths.params)
    state = core.subject(pid)
    if state.erased:
        raise ValueError(ALREADY_ERASED.format(pid=pid))
    book = RequestBook(core, params=params.privacy)
    # data/raw's tables not checked out would be read as empty: the subject's own image taken
    # for not theirs, or the tables written again without anyone's rows. Refused first, the
    # failure kept on the request.
    with checked_first(book, pid, ("rectification",), request_id, step="rectification"):
        check_raw(paths, pid, source=state.source, everyone=True)
    # Everything that can be refused is checked before the request starts: bad input leaves the
    # request (and data/raw and the gallery) as it was.
    store = RawStore(paths, core=core, track=True)
    before_row, file_changes, checked = _check_input(
        store, pid, attributes, images, max_pixels=params.serving.max_image_pixels
    )
    enrolment = (
        _enrolment(paths, pid, core=core, gallery=gallery, engine=engine) if checked else None
    )
    details = {"fields": sorted(attributes), "replaced_files": len(images)}
    st = begin(book, pid, ("rectification",), request_id, details=details)
    with recorded(book, st, step="rectification"):
        raw_before = _tracked(paths)
        gallery_result = "unchanged"
        with store.transaction() as txn:
            if attributes:
                txn.update_subject(pid, attributes)
            for image_id, c in checked.items():
                txn.replace_image(
                    pid,
                    image_id,
                    c.png,
                    {"sha256": c.sha256, "width": c.width, "height": c.height},
                )
            if enrolment is not None:
                # Last, inside the transaction: a gallery that fails leaves data/raw unchanged.
                replaced = {image_id: c.png for image_id, c in checked.items()}
                gallery_result = _reenrol(paths, pid, enrolment, core=core, replaced=replaced)
        after = read_subjects(paths.raw)
        after_row = after[after["pid"].astype(str) == pid]
        for change in file_changes:
            change["sealed_sha256_after"] = sha256_file(store.image_path(pid, change["image_id"]))
        data_key = core.data_keys.key(pid, create=True) if attributes else b""
        result = RectificationResult(
            request_id=st.request_id,
            pid=pid,
            fields=sorted(attributes),
            attributes_mac_before=attributes_mac(data_key, before_row) if attributes else None,
            attributes_mac_after=attributes_mac(data_key, row_dict(after_row.iloc[0]))
            if attributes and len(after_row)
            else None,
            files=file_changes,
            raw_md5_before=raw_before,
            raw_md5_after=txn.dvc_md5 or _tracked(paths),
            gallery=gallery_result,
        )
        core.ledger.append(
            "rectification",
            pid,
            {
                "request_id": st.request_id,
                "fields": result.fields,
                "attributes_mac_before": result.attributes_mac_before,
                "attributes_mac_after": result.attributes_mac_after,
                "files": file_changes,
                "raw_md5_before": result.raw_md5_before,
                "raw_md5_after": result.raw_md5_after,
                "gallery": result.gallery,
            },
        )
        book.complete(
            st.request_id,
            outcome={
                "fields": result.fields,
                "files": len(file_changes),
                "raw_md5_after": result.raw_md5_after,
                "gallery": result.gallery,
            },
        )
    return result


def _check_input(
    store: RawStore,
    pid: str,
    attributes: Mapping[str, Any],
    images: Mapping[str, bytes],
    *,
    max_pixels: int,
) -> tuple[dict[str, Any] | None, list[dict[str, str]], dict[str, CheckedImage]]:
    """Refuse what the raw store would refuse mid-way, before anything is recorded.

    Returns the subject's row before, the images' sealed files' hashes before and the checked
    images.
    """
    unknown = sorted(set(attributes) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"only age, gender and group can be corrected, not {unknown}")
    gender = attributes.get("gender")
    if gender is not None and gender not in GENDERS:
        raise ValueError(BAD_GENDER.format(allowed=", ".join(GENDERS), found=gender))
    age = attributes.get("age")
    if age is not None and (
        isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= MAX_AGE
    ):
        raise ValueError(MSG_BAD_AGE.format(max_age=MAX_AGE, found=age))
    paths = store.paths
    subjects = read_subjects(paths.raw)
    group = attributes.get("group")
    if group is not None and group not in GROUPS:
        # Imported sets keep their own labels (UTKFace's race names): those already held pass.
        known = (
            sorted(set(subjects["group"].dropna().astype(str)) - set(GROUPS))
            if len(subjects) and "group" in subjects
            else []
        )
        if group not in known:
            raise ValueError(
                MSG_BAD_GROUP.format(
                    groups=", ".join(GROUPS), known=", ".join(known) or "none", found=group
                )
            )
    row = subjects[subjects["pid"].astype(str) == pid]
    if attributes and not len(row):
        raise ValueError(MSG_NO_ROW.format(pid=pid))
    before_row = row_dict(row.iloc[0]) if len(row) else None
    rows = read_images(paths.raw)
    theirs = set(rows.loc[rows["pid"].astype(str) == pid, "image_id"].astype(str))
    checked: dict[str, CheckedImage] = {}
    file_changes = []
    for image_id, data in images.items():
        path = store.image_path(pid, image_id)  # a malformed id: ValueError
        if image_id not in theirs or not path.is_file():
            raise ValueError(MSG_NOT_THEIRS.format(image_id=image_id, pid=pid))
        try:
            checked[image_id] = check_image(data, max_pixels=max_pixels)
        except ImageRejectedError as exc:
            raise ValueError(MSG_BAD_IMAGE.format(image_id=image_id, why=exc)) from None
        store.read_image(pid, image_id)  # a plaintext or altered file: ValueError, before anything
        # The ciphertext's hash: the PNG's would lead a photograph of them to the pid for good.
        file_changes.append({"image_id": image_id, "sealed_sha256_before": sha256_file(path)})
    return before_row, file_changes, checked


def reenrol(
    paths: ProjectPaths,
    pid: str,
    *,
    core: PrivacyCore,
    gallery: Gallery | None,
    engine: Engine | None,
) -> str:
    """Re-enrol ``pid`` from their corrected images in ``data/raw``.

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    core, gallery
        Open privacy core, and the gallery (opened when None).
    engine
        The engine that detects and embeds; loaded from ``models/embedder.onnx`` when None and
        the file exists.

    Returns
    -------
    str
        What happened: ``no_gallery``, ``not_enrolled``, ``reenrolled``,
        ``template_removed_until_reenrolment`` (no embedder), ``template_removed_no_face``,
        ``template_removed_while_restricted`` (made again when the restriction is lifted) or
        ``template_removed_no_legal_basis`` (identification not allowed: withdrawn, objected).
    """
    enrolment = _enrolment(paths, pid, core=core, gallery=gallery, engine=engine)
    return _reenrol(paths, pid, enrolment, core=core)


@dataclass
class _Enrolment:
    """The gallery and engine a re-enrolment uses, or why there is none (``status``)."""

    status: str | None
    gallery: Gallery | None = None
    engine: Engine | None = None

    @property
    def reads_raw(self) -> bool:
        """Whether making the template reads the subject's images in ``data/raw`` (a gallery
        and an engine to make it with)."""
        return self.status is None and self.engine is not None


def _enrolment(
    paths: ProjectPaths,
    pid: str,
    *,
    core: PrivacyCore,
    gallery: Gallery | None,
    engine: Engine | None,
    enrolled_only: bool = True,
) -> _Enrolment:
    # Opened (and the model loaded) before a rectification starts: a gallery or model that
    # cannot be opened leaves its request as it was.
    meta = read_meta(paths.gallery)
    if meta is None:
        return _Enrolment("no_gallery")
    g = gallery
    if g is None:
        g = open_project_gallery(paths, core=core, load=False)
    if g is None:
        return _Enrolment("no_gallery")
    # status(), not stored(): a gallery opened without loading lists in stored() only the
    # subjects allowed for identification, so a restricted subject's template was missed.
    if enrolled_only and not g.status(pid)["enrolled"]:
        return _Enrolment("not_enrolled")
    if engine is None and (paths.models / "embedder.onnx").is_file():
        engine = Engine.from_project(paths, load_params(paths.params), gallery_meta=meta)
    return _Enrolment(None, g, engine)


def _reenrol(
    paths: ProjectPaths,
    pid: str,
    enrolment: _Enrolment,
    *,
    core: PrivacyCore,
    replaced: Mapping[str, bytes] | None = None,
) -> str:
    """Re-enrol from ``pid``'s images in ``data/raw``, ``replaced`` ones (PNG bytes) instead
    of the stored ones."""
    if enrolment.status is not None:
        return enrolment.status
    g, engine = enrolment.gallery, enrolment.engine
    assert g is not None
    replaced = dict(replaced or {})
    state = core.subject(pid)
    if state.restricted or state.decision(IDENTIFICATION).reason in NO_BASIS_REASONS:
        # The old images' template is inaccurate, so it is not kept; a new one would be
        # processing that a restriction stops until it is lifted (Art. 18(1)(a): the accuracy
        # was contested), or that no legal basis covers. The lift makes it (enrol_owed).
        g.erase(pid, reason="rectification")
        return REMOVED_WHILE_RESTRICTED if state.restricted else REMOVED_NO_BASIS
    if engine is None:
        g.erase(pid, reason="rectification")
        return REMOVED_UNTIL_REENROLMENT
    rows = read_images(paths.raw)
    rows = rows[rows["pid"].astype(str) == pid].sort_values("image_id")
    per_subject = load_params(paths.params).gallery.images_per_subject
    crops = []
    store = RawStore(paths, core=core, track=False)
    for image_id in rows["image_id"].astype(str):
        # Decrypted in memory only.
        data = replaced.get(image_id) or store.read_image(pid, image_id)
        with Image.open(io.BytesIO(data)) as im:
            try:
                faces = engine.detect(im.convert("RGB"), look_again=engine.second_look)
            except TooManyFacesError:
                # More than serving.max_faces: not a single face, like two (passed over).
                continue
        if len(faces) == 1:
            crops.append(faces[0].crop)
        if len(crops) >= per_subject:
            break
    if not crops:
        g.erase(pid, reason="rectification")
        return REMOVED_NO_FACE
    emb = engine.embed(np.stack(crops))
    g.enroll(pid, emb, model_version=engine.embedder.model_version)
    return REENROLLED


def _removed_while_restricted(core: PrivacyCore, pid: str) -> bool:
    """Whether ``pid``'s last rectification removed their template during a restriction and no
    enrolment has made one since (the ledger's ``rectification`` and ``gallery.enrolled``)."""
    if core.subject(pid).template_sha256 is not None:
        return False
    last = None
    for e in core.ledger.entries(containing=pid.encode()):
        if e.pid != pid:
            continue
        if e.type == "rectification":
            last = e.payload.get("gallery")
        elif e.type == "gallery.enrolled":
            last = None
    return last == REMOVED_WHILE_RESTRICTED


def owed_enrolment(
    paths: ProjectPaths,
    pid: str,
    *,
    core: PrivacyCore,
    gallery: Gallery | None = None,
    engine: Engine | None = None,
) -> _Enrolment | None:
    """The template a restriction's lift owes ``pid``: None when none is owed, else the gallery
    and engine to make it with (opened, and the model loaded, here: before the lift is
    recorded, so that one that cannot be opened leaves the request as it was).

    One is owed when a rectification removed the subject's template while their processing was
    restricted (``template_removed_while_restricted``) and nothing enrolled them since.
    """
    if not _removed_while_restricted(core, pid):
        return None
    return _enrolment(paths, pid, core=core, gallery=gallery, engine=engine, enrolled_only=False)


def enrol_owed(
    paths: ProjectPaths, pid: str, owed: _Enrolment, *, core: PrivacyCore
) -> dict[str, str]:
    """Make ``pid``'s template again from their rectified images, once the restriction is lifted.

    Returns
    -------
    dict
        For the lift's outcome: ``{"gallery": "reenrolled"}``; ``{"gallery":
        "reenrolment_needed", "gallery_reason": why}`` when it could not be made (no gallery or
        embedder, no single face, the gallery or a model failed, a stored photograph fails
        authentication, is missing or cannot be read; :func:`lift_note` says what to do); empty
        when identification is still not allowed (an objection, a withdrawn consent): no
        template is owed then.
    """
    if not core.may_process(pid, IDENTIFICATION).allowed:
        return {}
    status = owed.status
    if status is None and owed.engine is None:
        status = "no_embedder"
    if status is None:
        try:
            status = _reenrol(paths, pid, owed, core=core)
        except SealedFileError as exc:
            # A damaged photograph is not passed over: it may be the rectified one, and a
            # template made from the others would be the inaccurate one the rectification
            # removed. Its message names the file (pid/image id) and says how to restore it.
            log.warning("subject %s: template not made again after the lift: %s", pid, exc)
            status = "sealed_file_error"
        except ImageMissingError as exc:
            # A missing one neither, for the same reason; the message names it (pid/image id).
            log.warning("subject %s: template not made again after the lift: %s", pid, exc)
            status = "image_missing"
        except ImageUnreadableError as exc:
            # Nor one there that cannot be read (permissions, storage); the message names it.
            log.warning("subject %s: template not made again after the lift: %s", pid, exc)
            status = "image_unreadable"
        except (GalleryError, EnrolmentRefusedError, ModelFileError) as exc:
            # The restriction is lifted already: the lift is answered, and says what to do.
            log.warning(
                "subject %s: template not made again after the lift (%s)", pid, type(exc).__name__
            )
            status = "model_error" if isinstance(exc, ModelFileError) else "gallery_error"
    if status == REENROLLED:
        return {"gallery": REENROLLED}
    log.warning(lift_note(pid, {"gallery": REENROLMENT_NEEDED, "gallery_reason": status}))
    return {"gallery": REENROLMENT_NEEDED, "gallery_reason": status}


def lift_note(pid: str, outcome: Mapping[str, Any]) -> str | None:
    """What a lift's ``outcome`` says of the subject's template, in words for the DPO (None:
    nothing to say). The same for the CLI and the HTTP answer."""
    if outcome.get("gallery") == REENROLLED:
        return MSG_REENROLLED.format(pid=pid)
    if outcome.get("gallery") == REENROLMENT_NEEDED:
        why = str(outcome.get("gallery_reason") or "")
        return MSG_REENROLMENT_NEEDED.format(pid=pid, why=REENROLMENT_WHY.get(why, why))
    return None
