"""Requests with deadlines (Art. 12), export (Art. 15, 20) and erasure (Art. 17), for DPOs.

Each delegates to :mod:`visage_ml.privacy.requests`, :mod:`~visage_ml.rights.subject` and
:mod:`~visage_ml.rights.erasure.orchestrator` with a privacy core of its own (the service's
registry is only touched under its lock); erasure removes the template from this server's
gallery, so the subject is never matched again once that step returns.
"""

from __future__ import annotations

import base64
import contextlib
import functools
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

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
    REQUEST_ID_PATTERN,
    DenyRequestBody,
    ErasureBody,
    ErasureResponse,
    ExportResponse,
    ExtendRequestBody,
    NewRequestBody,
    PidPath,
    RequestId,
    RequestOut,
    RequestsResponse,
    VerifyRequestBody,
)
from visage_ml.app.http.service import DPO_KEY, SERVICE, Service
from visage_ml.config import PURPOSES
from visage_ml.io import sha256_file
from visage_ml.privacy.auditlog import AuditLogError
from visage_ml.privacy.core import PrivacyCore, UnknownSubjectError
from visage_ml.privacy.outbox import Outbox
from visage_ml.privacy.requests import (
    RequestBook,
    RequestRefusedError,
    RequestStateError,
    SubjectErasedError,
    UnknownRequestError,
    failure_hint,
)
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.export import Delivery, export_subject
from visage_ml.serving.gallery import GalleryUnavailableError

MSG_OTHER_SUBJECT = "request {request_id} is about another subject"

router = APIRouter(tags=["rights"])
post = functools.partial(router.post, response_model=RequestOut)
# What every route here may answer: each opens a privacy core of its own, which checks the
# ledger against its witnessed checkpoints, and reads the requests and subjects on it.
BOOK_ERRORS = merged(AUTH_ERRORS, LEDGER_ERRORS)
# A request named (its id) and taken a step further: unknown, in another state, refused
# (_answered).
REQUEST_ERRORS = {404: ("unknown_request",), 409: ("request_state", "not_allowed")}
# A step of a request recorded (_transition): the request refused (_answered), and the served
# gallery told (_refresh_after: one out of reach applies it at its next call, but a rebuild for
# another embedder is answered).
STEP_ERRORS = merged(
    BOOK_ERRORS,
    BODY_ERRORS,
    JSON_ERRORS,
    REQUEST_ERRORS,
    {503: ("gallery_version_mismatch",)},
)


MSG_HTTP_DELIVERY = (
    "an export bundle holds the subject's face and template: give recipient=age1... (the "
    "requester's age public key; repeat for several), or plaintext=true to hand it out "
    "unencrypted (recorded in the ledger with its hash)"
)


@contextlib.contextmanager
def _answered() -> Iterator[None]:
    """The request book's and registry's refusals as API errors (404, 409: ``subject_erased``
    for an erased subject, ``not_allowed`` for the book's other refusals; or 503 for an audit
    log that fails verification).

    Only refusals: any other error (a library error answered with its own code, a damaged
    file, a bug) goes on to the app's handlers, not taken for what the request's state does
    not allow."""
    try:
        yield
    except UnknownRequestError as exc:
        raise ApiError(404, "unknown_request", str(exc)) from None
    except UnknownSubjectError as exc:
        raise ApiError(404, "unknown_subject", str(exc)) from None
    except RequestStateError as exc:
        raise ApiError(409, "request_state", _message(exc)) from None
    except SubjectErasedError as exc:
        # These routes are a DPO's: an operator's never tell an erased subject from another.
        raise ApiError(409, "subject_erased", _message(exc)) from None
    except RequestRefusedError as exc:
        raise ApiError(409, "not_allowed", _message(exc)) from None
    except AuditLogError as exc:
        # Not the subject's state nor the caller's permission: the server's audit log must be
        # restored before any access export (it could hide identifications).
        raise ApiError(503, "audit_log_unverified", _message(exc)) from None


def _refresh_after(svc: Service) -> None:
    """Apply the ledger events just recorded to the served gallery, if it answers now.

    The action is done and recorded: a gallery being rewritten (another erasure's ``VACUUM
    FULL``) or out of reach applies them at its next call (a search refreshes first), so it must
    not turn the answer into a 503 that says the request was not completed."""
    if svc.gallery is not None:
        with contextlib.suppress(GalleryUnavailableError):
            svc.gallery.refresh()


def _message(exc: BaseException) -> str:
    """The error's message and its notes (e.g. which request stays open after a failure)."""
    return " ".join([str(exc), *getattr(exc, "__notes__", ())])


def _book(svc: Service) -> RequestBook:
    return RequestBook(PrivacyCore(svc.paths), params=svc.params.privacy)


def _out(st: Any, b: RequestBook, *, now: datetime | None = None) -> dict[str, Any]:
    """A request's state at ``now`` (default: the book's clock), with where its last message
    to the subject stands (``subject_message``, as the ledger says now)."""
    return {
        **st.to_dict(now or b.now()),
        "failure_hint": failure_hint(st),
        "subject_message": Outbox(b.core).subject_message(st.request_id),
    }


def _transition(svc: Service, action: Callable[[RequestBook], Any]) -> dict[str, Any]:
    """Apply ``action`` to a fresh request book and answer the request's new state."""
    b = _book(svc)
    with _answered():
        st = action(b)
    _refresh_after(svc)
    return _out(st, b)


@router.get(
    "/v1/requests",
    name="requests",
    response_model=RequestsResponse,
    responses=error_responses(BOOK_ERRORS),
)
def requests_(
    all: Annotated[bool, Query(description="Also completed and denied requests.")] = False,
    _: ApiKey = DPO_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Open requests, nearest deadline first, with days left and overdue flags; a request
    whose last attempt failed says at which step, with which code, and what to do next."""
    b = _book(svc)
    items = b.all() if all else b.open()
    now = b.now()  # one reading of the clock for the whole listing (it folds the ledger)
    return {"requests": [_out(st, b, now=now) for st in items]}


@router.get(
    "/v1/requests/{request_id}",
    name="request_get",
    response_model=RequestOut,
    responses=error_responses(BOOK_ERRORS, {404: ("unknown_request",)}),
)
def request_get(
    request_id: RequestId, _: ApiKey = DPO_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """One request as it stands now: status, deadline, the last failure and what to do, and
    where its last message to the subject stands (queued, delivered, ...)."""
    b = _book(svc)
    with _answered():
        st = b.get(request_id)
    return _out(st, b)


@post(
    "/v1/subjects/{pid}/requests",
    name="request_new",
    responses=error_responses(
        BOOK_ERRORS, BODY_ERRORS, JSON_ERRORS, SUBJECT_ERRORS, {409: ("not_allowed",)}
    ),
)
def request_new(
    pid: PidPath,
    body: NewRequestBody,
    request: Request,
    _: ApiKey = DPO_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Record a request (status received); its deadline is one month from receipt."""
    request_info(request)["pid"] = pid
    details: dict[str, Any] = {}
    if body.right == "objection":
        details["purposes"] = list(PURPOSES if body.purposes is None else body.purposes)
    if body.right == "restriction":
        details["action"] = "lift" if body.lift else "set"
    b = _book(svc)
    with _answered():
        st = b.receive(
            pid, body.right, received_at=body.received_at, details=details, channel=body.channel
        )
    return _out(st, b)


@post(
    "/v1/requests/{request_id}/verify",
    name="request_verify",
    responses=error_responses(STEP_ERRORS),
)
def request_verify(
    request_id: RequestId,
    body: VerifyRequestBody | None = None,
    _: ApiKey = DPO_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Record that the requester's identity was verified (Art. 12(6))."""
    method = body.method if body is not None else "identity_verified"
    # Verifying queues no message to the subject: subject_message is still the receipt's.
    return _transition(svc, lambda b: b.verify(request_id, method=method))


@post(
    "/v1/requests/{request_id}/extend",
    name="request_extend",
    responses=error_responses(STEP_ERRORS),
)
def request_extend(
    request_id: RequestId, body: ExtendRequestBody, _: ApiKey = DPO_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Extend the deadline, before it passes, by up to two further months in total, with a
    reason code (calendar ``months`` or ``days``); the subject is told why."""
    return _transition(
        svc,
        lambda b: b.extend(
            request_id, months=body.months, days=body.days, reason_code=body.reason_code
        ),
    )


@post("/v1/requests/{request_id}/deny", name="request_deny", responses=error_responses(STEP_ERRORS))
def request_deny(
    request_id: RequestId, body: DenyRequestBody, _: ApiKey = DPO_KEY, svc: Service = SERVICE
) -> dict[str, Any]:
    """Refuse a request with a reason code (a denied erasure lifts its processing stop)."""
    return _transition(svc, lambda b: b.deny(request_id, reason_code=body.reason_code))


@router.post(
    "/v1/subjects/{pid}/erasure",
    name="erasure",
    response_model=ErasureResponse,
    # Every store of the subject's erased (the gallery's too, the shared one purged), each
    # reached first, data/raw's tables found there, and its request's start and completion
    # witnessed at once.
    responses=error_responses(
        STEP_ERRORS,
        SUBJECT_ERRORS,
        GALLERY_ERRORS,
        WITNESS_ERRORS,
        {
            503: (
                "scan_incomplete",
                "gallery_table_held",
                "stores_unreachable",
                "raw_data_missing",
            )
        },
    ),
)
def erasure(
    pid: PidPath,
    request: Request,
    body: ErasureBody | None = None,
    _: ApiKey = DPO_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Erase the subject from every store and return the signed certificate's name.

    Without ``request_id`` a request is recorded and verified by the calling DPO. The
    subject is never matched again from the gallery step on; the certificate is served to
    auditors at ``GET /v1/certificates/{request_id}``.
    """
    request_info(request)["pid"] = pid
    with svc.lock:
        svc.live_subject(pid)
    er = Erasure(svc.paths, core=PrivacyCore(svc.paths), gallery=svc.gallery, params=svc.params)
    with _answered():
        if body is not None and body.request_id:
            if er.book.get(body.request_id).pid != pid:
                raise RequestStateError(MSG_OTHER_SUBJECT.format(request_id=body.request_id))
            result = er.run(body.request_id)
        else:
            received = body.received_at if body is not None else None
            result = er.erase(pid, received_at=received, channel="api")
    _refresh_after(svc)
    claims = result.certificate.get("claims") or {}
    path = result.certificate_path
    return {
        "request_id": result.request_id,
        "pid": pid,
        "certificate": path.name if path else "",
        "certificate_sha256": sha256_file(path) if path else "",
        "artefacts": result.artefacts,
        "models_stale": len(claims.get("models") or []),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "subject_message": Outbox(er.core).subject_message(result.request_id),
    }


@router.get(
    "/v1/subjects/{pid}/export",
    name="export",
    response_model=ExportResponse,
    # The subject's data read from every store (the gallery's template and anchor too, both
    # authenticated, their sealed photographs read and decrypted), and their identifications
    # from the audit log, verified against its anchors first.
    responses=error_responses(
        BOOK_ERRORS,
        SUBJECT_ERRORS,
        GALLERY_ERRORS,
        REQUEST_ERRORS,
        {
            422: ("delivery",),
            503: (
                "audit_log_unverified",
                "sealed_file_error",
                "image_unreadable",
                "raw_data_missing",
                "template_file_error",
            ),
        },
    ),
)
def export(
    pid: PidPath,
    request: Request,
    request_id: Annotated[
        str | None, Query(pattern=REQUEST_ID_PATTERN, description="A verified request.")
    ] = None,
    portability: Annotated[bool, Query(description="Record as Art. 20 portability.")] = False,
    recipient: Annotated[
        list[str] | None,
        Query(description="The requester's age public key (age1...); repeat for several."),
    ] = None,
    plaintext: Annotated[
        bool, Query(description="Unencrypted zip (recorded in the ledger with its hash).")
    ] = False,
    _: ApiKey = DPO_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Access / portability export (Art. 15, 20): the bundle, base64 in JSON.

    The zip is encrypted for the requester's age ``recipient`` (``age_base64``: an age file,
    opened with ``age -d -i key.txt``); a plaintext zip (``zip_base64``) only with
    ``plaintext=true``, recorded by ``export.plaintext_released``. Built in memory and not
    kept on the server; the request is completed with a signed receipt and
    ``access.exported`` records the hashes.
    """
    request_info(request)["pid"] = pid
    if not recipient and not plaintext:
        raise ApiError(422, "delivery", MSG_HTTP_DELIVERY)
    try:
        delivery = Delivery(recipients=tuple(recipient or ()), plaintext=plaintext).check()
    except ValueError as exc:
        raise ApiError(422, "delivery", str(exc)) from None
    with svc.lock:
        svc.live_subject(pid)
    with _answered():
        result = export_subject(
            svc.paths,
            pid,
            request_id=request_id,
            core=PrivacyCore(svc.paths),
            gallery=svc.gallery,
            right="portability" if portability else "access",
            keep=False,
            delivery=delivery,
        )
    data = base64.b64encode(result.data).decode("ascii")
    return {
        "request_id": result.request_id,
        "pid": pid,
        "bundle": {
            "filename": f"{result.request_id}{delivery.suffix}",
            "sha256": result.sha256,
            "bytes": len(result.data),
            "delivery": result.delivery,
            "zip_sha256": result.bundle_sha256,
            **({"zip_base64": data} if delivery.plaintext else {"age_base64": data}),
        },
        "images": result.images,
        "images_missing": result.images_missing,
    }
