"""Subject state and the rights that are one signed ledger event each, for DPOs (auditors read).

``GET /v1/subjects/{pid}``, consent withdrawal (Art. 7(3)), restriction (Art. 18) and its
lifting, objection (Art. 21). Requests with deadlines, export and erasure live in
:mod:`visage_ml.app.http.routers.requests`, under the same ``/v1/subjects/{pid}/`` prefix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from visage_ml.app.http.auth import ApiKey
from visage_ml.app.http.errors import (
    AUTH_ERRORS,
    BODY_ERRORS,
    GALLERY_ERRORS,
    JSON_ERRORS,
    LEDGER_ERRORS,
    SUBJECT_ERRORS,
    WITNESS_ERRORS,
    ApiError,
    error_responses,
    merged,
    request_info,
)
from visage_ml.app.http.schemas import (
    PidPath,
    PurposesRequest,
    RestrictRequest,
    RightsResponse,
    SubjectResponse,
)
from visage_ml.app.http.service import DPO_KEY, READER_KEY, SERVICE, Service
from visage_ml.privacy.consent import ANALYTICS, MSG_ANALYTICS_NOT_CONSENT
from visage_ml.privacy.core import NothingChangedError
from visage_ml.privacy.outbox import Outbox
from visage_ml.rights.rectify import lift_note
from visage_ml.rights.runner import restrict as restrict_request

MSG_NOT_RESTRICTED = "subject {pid} is not restricted; nothing to lift"

router = APIRouter(tags=["rights"])
post = functools.partial(router.post, response_model=RightsResponse)
# What each event recorded here may answer: the subject (on record, not erased), the ledger
# read and appended to, and the answer's subject state, whose gallery part is read after the
# event (`pending` when out of reach, but a rebuild for another embedder is answered).
RIGHTS_ERRORS = merged(
    AUTH_ERRORS,
    BODY_ERRORS,
    SUBJECT_ERRORS,
    LEDGER_ERRORS,
    {503: ("gallery_version_mismatch",)},
)
# ... each event but a lift narrows processing: witnessed at once; and each takes a body.
NARROWING_ERRORS = merged(RIGHTS_ERRORS, JSON_ERRORS, WITNESS_ERRORS)


@router.get(
    "/v1/subjects/{pid}",
    name="subject_state",
    response_model=SubjectResponse,
    responses=error_responses(AUTH_ERRORS, {404: ("unknown_subject",)}, GALLERY_ERRORS),
)
def subject_state(
    pid: PidPath, request: Request, _: ApiKey = READER_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """A subject's processing state per purpose and in the gallery (no identity data)."""
    request_info(request)["pid"] = pid
    return svc.subject_state(pid)


def _done(svc: Service, pid: str, entry: Any) -> dict[str, Any]:
    """The answer to a rights event: the entry appended and the subject's new state."""
    return _answer(svc, pid, event=entry.type, seq=entry.seq)


def _answer(svc: Service, pid: str, *, event: str, seq: int) -> dict[str, Any]:
    """The answer to a rights event: its type and seq, and the subject's new state.

    The event is recorded: its answer is a 200 whatever the gallery, whose part is ``pending``
    when it cannot be read now (an erasure rewrites its table). A 503 there told the client to
    retry what was done; the retry answered 409 (``not_consented``, ``already_restricted``)."""
    return {
        "pid": pid,
        "event": event,
        "seq": seq,
        "subject": svc.subject_state(pid, recorded=True),
    }


def _for_purposes(
    svc: Service,
    pid: str,
    request: Request,
    body: PurposesRequest | None,
    record: Callable[..., Any],
) -> dict[str, Any]:
    """Record a per-purpose event (the purposes given; when omitted, the core's default) for a
    live pid."""
    request_info(request)["pid"] = pid
    with svc.lock:
        svc.live_subject(pid)
        purposes = body.purposes if body is not None else None
        try:
            entry = record(pid, purposes)
        except NothingChangedError as exc:  # as a lift of a subject who is not restricted
            raise ApiError(409, exc.code, str(exc)) from None
    return _done(svc, pid, entry)


@post(
    "/v1/subjects/{pid}/consent/withdraw",
    name="consent_withdraw",
    responses=error_responses(
        NARROWING_ERRORS, {409: ("not_consented",), 422: ("not_by_consent",)}
    ),
)
def consent_withdraw(
    pid: PidPath,
    request: Request,
    body: PurposesRequest | None = None,
    _: ApiKey = DPO_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Withdraw consent (Art. 7(3)) for the purposes given (when omitted, every purpose a
    consent is given for). Analytics is refused (422 ``not_by_consent``): it identifies no one,
    so no one's consent is asked for it and a withdrawal could not change what it counts; an
    objection to it (``/object``) is recorded for the DPO to weigh. 409 ``not_consented`` when
    no purpose given has a consent given now: nothing is recorded."""
    if body is not None and body.purposes is not None and ANALYTICS in body.purposes:
        request_info(request)["pid"] = pid
        raise ApiError(422, "not_by_consent", MSG_ANALYTICS_NOT_CONSENT)
    return _for_purposes(svc, pid, request, body, svc.core.withdraw_consent)


@post(
    "/v1/subjects/{pid}/restrict",
    name="restrict",
    responses=error_responses(NARROWING_ERRORS, {409: ("already_restricted",)}),
)
def restrict(
    pid: PidPath,
    request: Request,
    body: RestrictRequest | None = None,
    _: ApiKey = DPO_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Restrict processing (Art. 18): data kept, never searched until lifted.

    Recorded as a completed restriction request, so the subject and every registered
    recipient (Art. 19) are told. 409 ``already_restricted`` when the subject is restricted
    already: nothing is recorded."""
    request_info(request)["pid"] = pid
    with svc.lock:
        svc.live_subject(pid)
        reason = body.reason_code if body is not None else "subject_request"
        try:
            st = restrict_request(svc.paths, pid, core=svc.core, reason_code=reason)
        except NothingChangedError as exc:  # as a lift of a subject who is not restricted
            raise ApiError(409, exc.code, str(exc)) from None
    answer = _answer(svc, pid, event=st.outcome["event"], seq=st.outcome["seq"])
    return {**answer, "subject_message": Outbox(svc.core).subject_message(st.request_id)}


@post(
    "/v1/subjects/{pid}/lift",
    name="lift",
    # A template a rectification removed during the restriction is made again from the
    # subject's images: the gallery read and the models loaded (analytics mode) before the
    # lift is recorded, and data/raw's tables found there (not checked out: 503
    # raw_data_missing, nothing recorded); what fails once it is in force (a stored photograph
    # read, the gallery written, a detection, a model's output) is the answer's note, not an
    # error.
    responses=error_responses(
        RIGHTS_ERRORS,
        {409: ("not_restricted",)},
        GALLERY_ERRORS,
        {503: ("model_error", "model_mismatch", "raw_data_missing")},
    ),
)
def lift(
    pid: PidPath, request: Request, _: ApiKey = DPO_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Lift a restriction.

    Recorded as a completed restriction request (action ``lift``): the subject is told before
    it is lifted (Art. 18(3)) and every registered recipient after (Art. 19). A template that a
    rectification removed during the restriction is made again from the rectified images
    (``template``: ``reenrolled``), or ``note`` says that the subject must be enrolled again
    (``reenrolment_needed``). Where the server's ``data/raw`` is not checked out, such a lift is
    refused before anything is recorded (503 ``raw_data_missing``): retry once its operator has
    run ``dvc checkout data/raw``."""
    request_info(request)["pid"] = pid
    with svc.lock:
        if not svc.live_subject(pid).restricted:
            raise ApiError(409, "not_restricted", MSG_NOT_RESTRICTED.format(pid=pid))
        st = restrict_request(
            svc.paths,
            pid,
            core=svc.core,
            lift=True,
            gallery=svc.gallery,
            # In analytics mode the engine has no embedder: the project's is loaded, if any.
            engine=svc.engine if svc.gallery is not None else None,
        )
    answer = _answer(svc, pid, event=st.outcome["event"], seq=st.outcome["seq"])
    return {
        **answer,
        "subject_message": Outbox(svc.core).subject_message(st.request_id),
        "template": st.outcome.get("gallery"),
        "note": lift_note(pid, st.outcome),
    }


@post(
    "/v1/subjects/{pid}/object",
    name="object",
    responses=error_responses(NARROWING_ERRORS, {409: ("already_objected",)}),
)
def object_(
    pid: PidPath,
    request: Request,
    body: PurposesRequest | None = None,
    _: ApiKey = DPO_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Record an objection (Art. 21) to the purposes given (all when omitted); 409
    ``already_objected`` when the subject already objects to each: nothing is recorded."""
    return _for_purposes(svc, pid, request, body, svc.core.object)
