"""Identification routes (full mode only): 1:N identify, 1:1 verify, enrol.

- identify (operators) searches at the 1:N threshold derived for ``serving.identify.target_fpir``
  at the gallery's current size (:mod:`visage_ml.serving.operating_point`) and answers
  ``"unknown"`` below it;
- every face is measured by the quality gate (:mod:`visage_ml.serving.quality`) first: a face
  too small, blurred, turned or faint is answered ``"quality_too_low"`` and never searched,
  verified or enrolled;
- identify and verify give operators decisions only (identify ranks its candidates, without
  their scores, which would let an operator read what verify withholds); the score of a
  verification goes to dpo and auditor keys;
- an operator gets one answer whether a subject is unknown, may not be processed, already has
  a template that the new images do not match (re-enrolment needs every image, and their
  template, to match both the stored template and the subject's anchor template as verify
  scores a probe, or a dpo key), or the images are identified as another subject (one face, one
  pid, at the 1:N threshold identify answers at: a face identify names as one subject never
  takes a second pid, where it would outlive that subject's erasure): no oracle for consent
  state. An operator's images are checked (one face, quality) before
  the subject is, so an unusable image cannot serve as that oracle either, and a refusal of a
  subject who may not be processed does the work of one who may (embedding, the comparisons, a
  search) on a decoy, so the time an answer takes cannot;
- the anchor (:meth:`visage_ml.serving.gallery.Gallery.anchor`) is the template of the
  subject's first enrolment or of the last privileged one (dpo key, gallery stage or rebuild,
  rectification); an operator's re-enrolment leaves it as it is. Without it, re-enrolments that
  each matched only the template before could walk a subject's template, step by step, to
  another face. Only the anchor file the ledger records is compared with (an older one put back
  is refused), and an operator's enrolment is written only over the template and anchor it was
  checked against (:meth:`visage_ml.serving.gallery.Gallery.reference`, ``expect``), so that a
  dpo's enrolment in between is never overwritten.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request

from visage_ml.app.http.auth import AUDITOR, DPO, OPERATOR, ApiKey
from visage_ml.app.http.errors import (
    AUTH_ERRORS,
    BODY_ERRORS,
    GALLERY_ERRORS,
    IMAGE_ERRORS,
    JSON_ERRORS,
    MODEL_ERRORS,
    MSG_NOT_AVAILABLE,
    ApiError,
    error_responses,
    merged,
    request_info,
)
from visage_ml.app.http.schemas import (
    EnrollRequest,
    EnrollResponse,
    IdentifyRequest,
    IdentifyResponse,
    VerifyRequest,
    VerifyResponse,
)
from visage_ml.app.http.service import OPERATOR_KEY, SERVICE, Service, require
from visage_ml.serving.gallery import (
    EnrolmentRefusedError,
    Gallery,
    GalleryError,
    GalleryUnavailableError,
    MatchesEnrolledError,
    NotEnrolledError,
    Reference,
    ReferenceChangedError,
)
from visage_ml.serving.index import template_of
from visage_ml.serving.quality import refusal

MSG_MULTIPLE = (
    "{what} needs an image with exactly one face but {n} were found{where}; crop the image"
)
SCORE_ROLES: frozenset[str] = frozenset({DPO, AUDITOR})
# The subject of a refusal's decoy work: no subject has it (a pid is 64 random bits).
DECOY_PID = "p" + "0" * 16
VERIFY_KEY = Depends(require(OPERATOR, DPO, AUDITOR))
ENROL_KEY = Depends(require(OPERATOR, DPO))
# The most subjects a dpo's enrolment answer names as matched (the search's top_k).
MATCHES_SHOWN = 5
# What every route here may answer: an image (or images) with a face detected and embedded, and
# the gallery searched or written.
FACE_ERRORS = merged(
    AUTH_ERRORS,
    BODY_ERRORS,
    JSON_ERRORS,
    IMAGE_ERRORS,
    MODEL_ERRORS,
    GALLERY_ERRORS,
    {422: ("no_face",)},
)

router = APIRouter(tags=["identification"])


@router.post(
    "/v1/identify",
    name="identify",
    response_model=IdentifyResponse,
    responses=error_responses(FACE_ERRORS),
)
def identify(
    body: IdentifyRequest, request: Request, _: ApiKey = OPERATOR_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Who is in the image? For each face, the enrolled subjects at or above the 1:N threshold,
    most similar first (ranked, without scores: operators get decisions).

    The threshold is derived for ``serving.identify.target_fpir`` at the gallery's size at the
    time of the search; below it the face is ``"unknown"``. A face of too low quality is
    ``"quality_too_low"`` and not searched. Only subjects whose consent covers identification,
    and who are not restricted, objecting or erased, are searched.
    """
    gallery = svc.require_gallery()
    policy = svc.identification
    faces = svc.engine.detect_one(svc.decode(body.image))
    qualities = [svc.quality.assess_face(f) for f in faces]
    searched = [i for i, q in enumerate(qualities) if q.passed]
    found: dict[int, list[Any]] = {}
    if searched:
        emb = svc.engine.embed(np.stack([faces[i].crop for i in searched]))
        rows, n, threshold = gallery.search(
            emb, top_k=body.top_k, threshold_for=_identify_threshold(svc)
        )
        found = dict(zip(searched, rows, strict=True))
    else:
        # Nothing searched: the size a search would have used now (changes by other processes
        # applied first, as a search and /healthz apply them).
        gallery.refresh()
        n = gallery.size
        threshold = policy.threshold(n) if policy is not None else gallery.threshold
    request_info(request)["pids"] = sorted({m.pid for row in found.values() for m in row}) or None
    out = []
    for i, (f, q) in enumerate(zip(faces, qualities, strict=True)):
        matches = found.get(i, [])
        decision = "quality_too_low" if i not in found else ("match" if matches else "unknown")
        out.append(
            {
                "box": f.box,
                "detection_prob": f.prob,
                "decision": decision,
                "quality": {
                    "score": q.score,
                    "passed": q.passed,
                    "failed": list(q.failed),
                    "upscale": q.measurements["upscale"],
                },
                "matches": [{"pid": m.pid, "rank": r} for r, m in enumerate(matches, 1)],
            }
        )
    return {
        "faces": out,
        "threshold": threshold,
        "gallery_size": n,
        "target_fpir": policy.target_fpir if policy is not None else None,
        "model_version": gallery.model_version,
    }


@router.post(
    "/v1/verify",
    name="verify",
    response_model=VerifyResponse,
    responses=error_responses(FACE_ERRORS, {404: ("not_enrolled",), 422: ("multiple_faces",)}),
)
def verify(
    body: VerifyRequest, request: Request, key: ApiKey = VERIFY_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Is the one face in the image subject ``pid``? A decision at the 1:1 threshold.

    404 when ``pid`` is not searchable (unknown, never enrolled, or not available for
    identification: one answer). ``score`` only for dpo and auditor keys; an operator gets the
    decision. A face of too low quality is ``"quality_too_low"`` and not compared.
    """
    gallery = svc.require_gallery()
    request_info(request)["pid"] = body.pid
    # Refuse before looking at the image: a subject who is not searchable is not scored.
    if not gallery.is_searchable(body.pid):
        raise NotEnrolledError(body.pid)
    faces = svc.engine.detect_one(svc.decode(body.image))
    if len(faces) != 1:
        raise ApiError(
            422, "multiple_faces", MSG_MULTIPLE.format(what="verify", n=len(faces), where="")
        )
    out: dict[str, Any] = {
        "pid": body.pid,
        "decision": "quality_too_low",
        "match": False,
        "score": None,
        "threshold": gallery.threshold,
        "model_version": gallery.model_version,
    }
    if not svc.quality.assess_face(faces[0]).passed:
        return out
    match, score = gallery.verify(svc.engine.embed(faces[0].crop)[0], body.pid)
    out["decision"] = "match" if match else "no_match"
    out["match"] = match
    if key.role in SCORE_ROLES:
        out["score"] = score
    return out


def _not_available(pid: str) -> ApiError:
    return ApiError(409, "not_available", MSG_NOT_AVAILABLE.format(pid=pid))


def _as_if_refused(svc: Service, crops: list[np.ndarray]) -> None:
    """The work of refusing a subject who may be enrolled (embed the images, look the subject
    up, compare the images with a template and an anchor, search the gallery for someone else),
    done on a decoy for one who may not.

    Refused at once, a subject who may not be processed was answered sooner than one who may
    by the embedder's time (tens of ms a face): the one answer's timing told consent state,
    which verify (404 for both) does not. The decoy is the service's noise crop, once for each
    image (stacked as a real refusal stacks the crops: nothing is drawn here, which it does not
    do), and a pid no subject has, so the images of a subject who may not be processed are
    never embedded.
    """
    emb = _embed(svc, [svc.decoy_crop] * len(crops))
    gallery = svc.require_gallery()
    _has_reference(gallery, DECOY_PID)
    decoy = template_of(emb, gallery.embedding_dim)
    _same_person(gallery, emb, (decoy, decoy))
    with contextlib.suppress(ApiError):  # the noise matched someone: nothing to tell
        _check_not_someone_else(svc, DECOY_PID, emb)


@router.post(
    "/v1/enroll",
    name="enroll",
    response_model=EnrollResponse,
    responses=error_responses(
        FACE_ERRORS,
        {
            409: ("not_available", "processing_not_allowed"),
            422: ("multiple_faces", "quality_too_low"),
        },
    ),
)
def enroll(
    body: EnrollRequest, request: Request, key: ApiKey = ENROL_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Enrol (or re-enrol) a subject whose consent covers identification.

    The template is the normalised mean of the images' embeddings; it replaces any earlier
    one. Refused with 409 when the subject may not be processed for identification: for a dpo
    key before any image is looked at, with the reason; for an operator, one answer for every
    reason, after the images were checked (never embedded; the work of a refusal is done on a
    decoy), so that neither an image that could not be enrolled nor the time taken tells who the
    subject is. Re-enrolling a subject who has a template (or whom the ledger records one for,
    its file missing) needs a dpo key, or images each of which, and their template, match (as
    verify scores a probe) both the stored template and the subject's anchor template (that of
    the first enrolment, or of the last by a dpo key, the gallery stage or a rebuild); an
    operator's re-enrolment keeps the anchor, a dpo's replaces it. Under an operator key, images
    whose template matches another searchable subject at the 1:N threshold ``/v1/identify``
    answers at are refused (checked again under the gallery's lock as it is written); a dpo key
    enrols them (twins), is told whom they matched (``matches_enrolled``), and the ledger's
    ``gallery.enrolled`` records that a match was overridden.
    Every image must pass the quality gate.
    """
    gallery = svc.require_gallery()
    request_info(request)["pid"] = body.pid
    operator = key.role != DPO
    # A dpo key is refused before any image is looked at. An operator's images are checked
    # first (decoded, detected, measured; never embedded): refused only for a subject who may
    # be enrolled, they would tell an operator who may and who may not.
    crops = None if not operator else _enrolment_crops(svc, body.images)
    with svc.lock:
        decision = svc.core.may_process(body.pid, "identification")
    if not decision.allowed:
        if operator:
            _as_if_refused(svc, crops)
            raise _not_available(body.pid)
        raise EnrolmentRefusedError(body.pid, decision.reason)
    if crops is None:
        crops = _enrolment_crops(svc, body.images)
    emb = _embed(svc, crops)
    checked = None
    if operator:
        checked = Reference.none_stored(body.pid)
        mismatch = None
        if _has_reference(gallery, body.pid):
            try:
                checked = _check_same_person(svc, body.pid, emb)
            except ApiError as exc:
                mismatch = exc
        # Searched even after a mismatch: every refusal (the decoy's too) does the search, the
        # longest part on a large gallery, so its time does not tell a mismatch from consent.
        _check_not_someone_else(svc, body.pid, emb)
        if mismatch is not None:
            raise mismatch
        matched = None
    else:
        matched = _matching_others(svc, body.pid, emb)
        request_info(request)["pids"] = matched or None
    try:
        result = gallery.enroll(
            body.pid,
            emb,
            model_version=svc.engine.embedder.model_version,
            # Only a dpo's (or a first) enrolment re-anchors the subject.
            keep_anchor=checked is not None and checked.template_sha256 is not None,
            # An operator's is written only over the template and anchor it was checked
            # against (or none), under the gallery's lock: a concurrent enrolment is never
            # overwritten by one checked against what that replaced.
            expect=checked,
            # An operator's is searched again under the gallery's lock as it is written: two
            # enrolments of one face under two pids cannot both pass the check above.
            distinct_at=_identify_threshold(svc) if operator else None,
            match_overridden=bool(matched),
        )
    except (ReferenceChangedError, MatchesEnrolledError):
        raise _not_available(body.pid) from None
    return {
        "pid": body.pid,
        "template_sha256": result.template_sha256,
        "images_used": result.images,
        "replaced": result.replaced,
        "model_version": gallery.model_version,
        "matches_enrolled": matched,
    }


def _embed(svc: Service, crops: Sequence[np.ndarray]) -> np.ndarray:
    """The embeddings of an enrolment's crops, or of a refusal's decoy (one way for both)."""
    return svc.engine.embed(np.stack(crops))


def _enrolment_crops(svc: Service, images: list[str]) -> list[np.ndarray]:
    """The aligned face of each enrolment image; 422 naming the first image without exactly one
    face, or whose face is of too low quality."""
    crops = []
    for i, data in enumerate(images):
        faces = svc.engine.detect_one(svc.decode(data, field=f"images[{i}]"))
        if len(faces) != 1:
            raise ApiError(
                422,
                "multiple_faces",
                MSG_MULTIPLE.format(what="enrol", n=len(faces), where=f" in images[{i}]"),
            )
        quality = svc.quality.assess_face(faces[0])
        if not quality.passed:
            raise ApiError(
                422,
                "quality_too_low",
                refusal(quality, what="enrol", where=f" in images[{i}]"),
            )
        crops.append(faces[0].crop)
    return crops


def _has_reference(gallery: Gallery, pid: str) -> bool:
    """Whether an operator's enrolment of ``pid`` is a re-enrolment, to be matched against the
    subject's template and anchor: a template is stored, or the ledger records a template or an
    anchor for the subject.

    Not the file alone: with a recorded template's file missing (deleted, or a backup restored
    without it), a first enrolment asked for no match and re-anchored the subject to whatever
    face it was given. Such a subject is refused (no template to match) until a dpo key, the
    gallery stage or a rebuild re-enrols it.
    """
    if gallery.status(pid)["enrolled"]:
        return True
    with gallery.lock:
        state = gallery.core.registry.peek(pid)
    return state is not None and (
        state.template_sha256 is not None or state.anchor_sha256 is not None
    )


def _check_same_person(svc: Service, pid: str, emb: np.ndarray) -> Reference:
    """Refuse (one answer) unless every new image, and their template, match both the stored
    template and the subject's anchor template (:func:`_same_person`); returns what was
    compared, for the enrolment to be written only over it.

    The anchor stops a walk: re-enrolments each a little further toward another face, each
    matching the template the one before stored. A template or anchor of another embedder
    cannot be compared, a subject without an anchor (enrolled before anchors were kept, or
    a backend that keeps none) has nothing to compare with, and an anchor file that is not the
    one the ledger records (an older one put back) is not compared with: all are refused too,
    until a dpo key, the gallery stage or a rebuild re-enrols the subject.
    """
    gallery = svc.require_gallery()
    try:
        ref = gallery.reference(pid)
    except GalleryUnavailableError:
        raise  # a 503 to retry, not an answer about the subject
    except (NotEnrolledError, GalleryError):
        raise _not_available(pid) from None
    compared = []
    for old, header in ((ref.template, ref.template_header), (ref.anchor, ref.anchor_header)):
        if old is None or header.get("model_version") != gallery.model_version:
            raise _not_available(pid)
        if old.shape[0] != emb.shape[1]:
            raise _not_available(pid)
        compared.append(old)
    if not _same_person(gallery, emb, compared):
        raise _not_available(pid)
    return ref


def _same_person(gallery: Gallery, emb: np.ndarray, references: Sequence[np.ndarray]) -> bool:
    """Whether each image's embedding, and the template the images make, match every one of
    ``references`` at the 1:1 threshold, each scored as verify scores a probe against a
    subject's template (:meth:`visage_ml.serving.gallery.Gallery.compare`: the served score
    calibration, on whose scores the threshold was measured; a raw cosine is not on that scale).

    Every image, not the template only: three photographs of the subject and three of another
    face make a template between the two that matches both, and the other face would then
    verify as the subject. Every comparison is made before deciding, so the time taken does
    not tell which one failed.
    """
    probes = np.vstack([emb, template_of(emb, gallery.embedding_dim)[None, :]])
    worst = min(float(gallery.compare(probes, ref).min()) for ref in references)
    return worst >= gallery.threshold


def _identify_threshold(svc: Service) -> Callable[[int], float]:
    """``N -> threshold``: what ``/v1/identify`` answers at for a gallery of ``N`` searchable
    templates (the 1:N operating point, or the 1:1 threshold without a score model)."""
    gallery = svc.require_gallery()
    policy = svc.identification
    return policy.threshold if policy is not None else (lambda _n: gallery.threshold)


def _matching_others(svc: Service, pid: str, emb: np.ndarray) -> list[str]:
    """The searchable subjects other than ``pid`` whose templates the images' template matches
    as ``/v1/identify`` would decide (for a dpo's answer and the audit log only)."""
    gallery = svc.require_gallery()
    template = template_of(emb, gallery.embedding_dim)
    rows, _, _ = gallery.search(
        template[None, :], top_k=MATCHES_SHOWN + 1, threshold_for=_identify_threshold(svc)
    )
    return [m.pid for m in rows[0] if m.pid != pid][:MATCHES_SHOWN]


def _check_not_someone_else(svc: Service, pid: str, emb: np.ndarray) -> None:
    """Refuse (one answer) when the new template matches another searchable subject as
    ``/v1/identify`` would decide (the 1:N threshold at the gallery's size, never below the 1:1
    one): one face may not take a second pid under an operator key.

    At identify's own threshold, whatever it is: at a higher one a face identify names as a
    would be enrolled as b, and once a is erased identify would answer b for a's photograph.
    A newcomer refused so (about ``target_fpir`` of strangers) is one identify would name as
    someone else too; a dpo key enrols it.
    """
    gallery = svc.require_gallery()
    template = template_of(emb, gallery.embedding_dim)
    rows, _, _ = gallery.search(template[None, :], top_k=2, threshold_for=_identify_threshold(svc))
    if any(m.pid != pid for m in rows[0]):
        raise _not_available(pid)
