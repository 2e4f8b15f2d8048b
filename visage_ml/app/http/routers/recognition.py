"""Identification routes for operators (full mode only): 1:N identify, 1:1 verify, enrol."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from visage_ml.app.http.auth import ApiKey
from visage_ml.app.http.errors import AUTH_ERRORS, ApiError, error_responses, request_info
from visage_ml.app.http.schemas import (
    EnrollRequest,
    EnrollResponse,
    IdentifyRequest,
    IdentifyResponse,
    VerifyRequest,
    VerifyResponse,
)
from visage_ml.app.http.service import OPERATOR_KEY, SERVICE, Service
from visage_ml.serving.gallery import EnrolmentRefusedError, NotEnrolledError

MSG_MULTIPLE = (
    "{what} needs an image with exactly one face but {n} were found{where}; crop the image"
)

router = APIRouter(tags=["identification"])


@router.post(
    "/v1/identify",
    name="identify",
    response_model=IdentifyResponse,
    responses=error_responses(400, *AUTH_ERRORS, 413, 422, 503),
)
def identify(
    body: IdentifyRequest, request: Request, _: ApiKey = OPERATOR_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Who is in the image? For each face, the enrolled subjects at or above the threshold.

    Only subjects whose consent covers identification, and who are not restricted,
    objecting or erased, are searched.
    """
    gallery = svc.require_gallery()
    faces, emb = svc.engine.embed_image(svc.decode(body.image))
    found = gallery.identify_many(emb, top_k=body.top_k)
    request_info(request)["pids"] = sorted({m.pid for row in found for m in row}) or None
    return {
        "faces": [
            {
                "box": f.box,
                "detection_prob": f.prob,
                "matches": [{"pid": m.pid, "score": m.score} for m in row],
            }
            for f, row in zip(faces, found, strict=True)
        ],
        "threshold": gallery.threshold,
        "model_version": gallery.model_version,
    }


@router.post(
    "/v1/verify",
    name="verify",
    response_model=VerifyResponse,
    responses=error_responses(400, *AUTH_ERRORS, 404, 413, 422, 503),
)
def verify(
    body: VerifyRequest, request: Request, _: ApiKey = OPERATOR_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Is the one face in the image subject ``pid``? (404 when ``pid`` is not searchable.)"""
    gallery = svc.require_gallery()
    request_info(request)["pid"] = body.pid
    # Refuse before looking at the image: a subject who is not searchable is not scored.
    if not gallery.is_searchable(body.pid):
        raise NotEnrolledError(body.pid)
    faces, emb = svc.engine.embed_image(svc.decode(body.image))
    if len(faces) != 1:
        raise ApiError(
            422, "multiple_faces", MSG_MULTIPLE.format(what="verify", n=len(faces), where="")
        )
    match, score = gallery.verify(emb[0], body.pid)
    return {
        "pid": body.pid,
        "match": match,
        "score": score,
        "threshold": gallery.threshold,
        "model_version": gallery.model_version,
    }


@router.post(
    "/v1/enroll",
    name="enroll",
    response_model=EnrollResponse,
    responses=error_responses(400, *AUTH_ERRORS, 409, 413, 422, 503),
)
def enroll(
    body: EnrollRequest, request: Request, _: ApiKey = OPERATOR_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Enrol (or re-enrol) a subject whose consent covers identification.

    The template is the normalised mean of the images' embeddings; it replaces any earlier
    one. Refused with 409 before any image is looked at when the subject may not be
    processed for identification.
    """
    gallery = svc.require_gallery()
    request_info(request)["pid"] = body.pid
    with svc.lock:
        decision = svc.core.may_process(body.pid, "identification")
    if not decision.allowed:
        raise EnrolmentRefusedError(body.pid, decision.reason)
    crops = []
    for i, data in enumerate(body.images):
        faces = svc.engine.detect_one(svc.decode(data, field=f"images[{i}]"))
        if len(faces) != 1:
            raise ApiError(
                422,
                "multiple_faces",
                MSG_MULTIPLE.format(what="enrol", n=len(faces), where=f" in images[{i}]"),
            )
        crops.append(faces[0].crop)
    emb = svc.engine.embed(np.stack(crops))
    result = gallery.enroll(body.pid, emb, model_version=svc.engine.embedder.model_version)
    return {
        "pid": body.pid,
        "template_sha256": result.template_sha256,
        "images_used": result.images,
        "replaced": result.replaced,
        "model_version": gallery.model_version,
    }
