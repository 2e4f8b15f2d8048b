"""The HTTP API of visage-ml (FastAPI): identification, analytics, subject rights, audit.

Build it with :func:`create_app` (nothing happens at import time); ``visage serve`` runs it
under uvicorn.

Requests carry images as base64 inside a JSON body (``{"image": "<base64>"}``), not as
multipart uploads: the request is held in memory only (the framework would spool multipart
parts over 1 MB to temporary files, i.e. write face images to disk), and one schema describes
every endpoint. Each request needs an API key in the ``X-API-Key`` header; its role decides what
it may call:

========  ==============================================================================
role      endpoints
========  ==============================================================================
operator  ``POST /v1/identify``, ``/v1/verify``, ``/v1/enroll``, ``/v1/analytics``,
          ``GET /v1/analytics/windows``
dpo       ``GET /v1/subjects/{pid}``, ``POST /v1/subjects/{pid}/consent/withdraw``,
          ``/restrict``, ``/lift``, ``/object``, ``/erasure``, ``/requests``,
          ``GET /v1/subjects/{pid}/export``, ``GET /v1/requests``,
          ``POST /v1/requests/{id}/verify``, ``/extend``, ``/deny``
auditor   ``GET /v1/subjects/{pid}``, ``GET /v1/ledger``, ``GET /v1/certificates[/{name}]``
========  ==============================================================================

Every error is ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status; an unexpected
exception becomes a 500 with code ``internal_error`` and the server keeps running. Each request
is counted in ``/metrics`` and written to the audit log (``privacy/audit.jsonl``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import io
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from visage_ml.config import PURPOSES, Params, ProjectPaths, load_params
from visage_ml.inference import ModelFileError
from visage_ml.serving import metrics as metrics_mod
from visage_ml.serving.analytics import SUPPRESSED, Analytics
from visage_ml.serving.audit import AuditLog
from visage_ml.serving.auth import (
    AUDITOR,
    DPO,
    OPERATOR,
    ApiKey,
    ApiKeyFileError,
    FailureLimiter,
    KeyStore,
)
from visage_ml.serving.engine import (
    Engine,
    ModelMismatchError,
    ModelUnavailableError,
    NoFaceError,
    TooManyFacesError,
)
from visage_ml.serving.gallery import (
    EnrolmentRefusedError,
    Gallery,
    GalleryVersionError,
    NotEnrolledError,
    load_threshold,
    read_meta,
)

logger = logging.getLogger(__name__)

API_VERSION = "1"
DESCRIPTION = """\
On-premise face identification and demographic analytics with data-subject rights.

**Images** travel as base64 inside JSON bodies (`{"image": "<base64 of a JPEG, PNG, WebP or
BMP file>"}`), never as multipart uploads, so no face image is spooled to a temporary file.

**Authentication**: an API key in the `X-API-Key` header (`visage apikey create --role ...`).
Roles: `operator` (identify, verify, enroll, analytics), `dpo` (subject state and rights),
`auditor` (subject state, ledger, certificates). Repeated failed authentications from one
client are answered with 429 for a while.

**Errors** are `{"error": {"code": "...", "message": "..."}}` with a 4xx or 5xx status.

Only subjects whose consent covers identification, and who are not restricted, objecting or
erased, are ever searched. Analytics returns counts only; cells under `k_min` read
`"suppressed"`.
"""
PID_PATTERN = r"^p[0-9a-f]{16}$"
CERT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.json$")
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP")
MAX_ENROL_IMAGES = 20
MAX_TOP_K = 100
LEDGER_PAGE = 1000

MSG_UNAUTHENTICATED = (
    "missing or invalid API key: send it in the X-API-Key header (a DPO creates keys with "
    "`visage apikey create --role operator|dpo|auditor`)"
)
MSG_FORBIDDEN = "an API key with role '{role}' may not call this endpoint; it needs role {need}"
MSG_RATE = "too many failed authentications from this client; retry in {s} s"
MSG_TOO_LARGE = "request body over {limit} bytes (serving.max_request_bytes); send a smaller image"
MSG_IMAGE_PIXELS = (
    "field '{field}' holds an image of {w}x{h} pixels, over serving.max_image_pixels ({limit}); "
    "downscale it"
)
MSG_IMAGE_BOMB = (
    "field '{field}' holds an image of more pixels than serving.max_image_pixels ({limit}) "
    "allows (a decompression bomb?); downscale it"
)
MSG_BASE64 = "field '{field}' is not valid base64; send the image file's bytes base64-encoded"
MSG_IMAGE = "field '{field}' is not a readable image ({reason}); send a JPEG, PNG, WebP or BMP file"
MSG_MULTIPLE = (
    "{what} needs an image with exactly one face but {n} were found{where}; crop the image"
)
MSG_ERASED = "subject {pid} was erased; nothing about them can be changed any more"
MSG_NOT_RESTRICTED = "subject {pid} is not restricted; nothing to lift"
MSG_UNKNOWN = "no subject {pid} in the registry"
MSG_INTERNAL = "internal error; the request was not completed (see the server log, request {rid})"
MSG_CERT = "no certificate named {name}"
MSG_UNKNOWN_QUERY = (
    "{n} query parameter(s) that this endpoint does not define; it accepts: {known} "
    "(unknown parameters are refused, not ignored, like unknown body fields)"
)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code.")
    message: str = Field(description="What went wrong and what to do.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _error_json(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed JSON body.",
        401: "Missing or invalid API key.",
        403: "The key's role may not call this endpoint.",
        404: "Unknown subject, certificate or template.",
        409: "The subject's state does not allow this.",
        413: "Request or image too large.",
        422: "Invalid input: a malformed or unknown field or query parameter, bad base64, not an "
        "image, no face, too many faces.",
        429: "Too many failed authentications from this client.",
        503: "The gallery was rebuilt for another embedder, or a model is damaged; restart "
        "the server (after `visage gallery rebuild` or `dvc repro export`).",
    }
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------

Pid = Annotated[str, Field(pattern=PID_PATTERN, description="Pseudonymous subject id.")]
Base64Image = Annotated[
    str,
    Field(
        min_length=1,
        description="The image file (JPEG, PNG, WebP or BMP) encoded as base64.",
    ),
]
Purpose = Literal["training", "evaluation", "identification"]
PidPath = Annotated[str, Path(pattern=PID_PATTERN, description="Pseudonymous subject id.")]


class _Strict(BaseModel):
    # No unknown fields, and no coercion: "5" is not an integer, 0 is not false.
    model_config = ConfigDict(extra="forbid", strict=True)


class IdentifyRequest(_Strict):
    image: Base64Image
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="Most candidates per face.")


class VerifyRequest(_Strict):
    image: Base64Image
    pid: Pid


class EnrollRequest(_Strict):
    pid: Pid
    images: list[Base64Image] = Field(
        min_length=1,
        max_length=MAX_ENROL_IMAGES,
        description="Enrolment images, one face each; their embeddings are averaged.",
    )


class AnalyticsRequest(_Strict):
    image: Base64Image


class PurposesRequest(_Strict):
    purposes: list[Purpose] | None = Field(
        None, description="Purposes concerned; all when omitted."
    )


class RestrictRequest(_Strict):
    reason_code: str = Field(
        "subject_request",
        pattern=r"^[a-z0-9_]{1,64}$",
        description="Why, as a code (no free text: the ledger keeps it for ever).",
    )


class MatchOut(BaseModel):
    pid: str
    score: float = Field(description="Cosine similarity, at or above the threshold.")


class FaceMatches(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in pixels.")
    detection_prob: float
    matches: list[MatchOut]


class IdentifyResponse(BaseModel):
    faces: list[FaceMatches]
    threshold: float
    model_version: str


class VerifyResponse(BaseModel):
    pid: str
    match: bool
    score: float
    threshold: float
    model_version: str


class EnrollResponse(BaseModel):
    pid: str
    template_sha256: str = Field(description="SHA-256 of the stored ciphertext file.")
    images_used: int
    replaced: bool
    model_version: str


Cell = int | Literal["suppressed"]


class CountsOut(BaseModel):
    faces: Cell
    age_band: dict[str, Cell]
    gender: dict[str, Cell]
    group: dict[str, Cell]


class AnalyticsResponse(BaseModel):
    counts: CountsOut = Field(
        description=f"This frame's counts; a cell under k_min reads '{SUPPRESSED}'."
    )
    window_start: str
    window_seconds: float
    k_min: int
    epsilon: float


class WindowOut(BaseModel):
    start: str
    end: str
    frames: int
    counts: CountsOut


class WindowsResponse(BaseModel):
    windows: list[WindowOut]


class PurposeState(BaseModel):
    allowed: bool
    reason: str
    basis: list[str]
    receipt_hash: str | None


class GalleryState(BaseModel):
    enrolled: bool
    searchable: bool
    template_model_version: str | None


class SubjectResponse(BaseModel):
    pid: str
    source: str
    added_seq: int
    last_seq: int
    restricted: bool
    objected: list[str]
    erasure_pending: bool
    erased: bool
    purposes: dict[str, PurposeState]
    gallery: GalleryState | None = Field(
        None, description="Gallery state (null in analytics mode)."
    )


class RightsResponse(BaseModel):
    pid: str
    event: str = Field(description="Type of the ledger event appended.")
    seq: int = Field(description="Its sequence number in the ledger.")
    subject: SubjectResponse


class LedgerEntryOut(BaseModel):
    seq: int
    time: str
    type: str
    pid: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    sig: str


class LedgerResponse(BaseModel):
    entries: list[LedgerEntryOut]
    next_after_seq: int | None = Field(description="Pass as after_seq for the next page.")


class CertificateInfo(BaseModel):
    name: str
    sha256: str
    bytes: int


class CertificatesResponse(BaseModel):
    certificates: list[CertificateInfo]


Code = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$", description="A code, no free text.")]
RequestId = Annotated[str, Path(pattern=r"^r\d{8}-[0-9a-f]{8}$", description="Request id.")]


class NewRequestBody(_Strict):
    right: Literal["access", "portability", "rectification", "erasure", "restriction", "objection"]
    received_at: str | None = Field(None, description="ISO 8601 receipt time (default now).")
    channel: Code = "api"
    purposes: list[Purpose] | None = Field(None, description="Objection: purposes concerned.")
    lift: bool = Field(False, description="Restriction: the subject asks to lift it.")


class VerifyRequestBody(_Strict):
    method: Code = "identity_verified"


class ExtendRequestBody(_Strict):
    days: int = Field(ge=1, le=366, description="Days added to the deadline.")
    reason_code: Code


class DenyRequestBody(_Strict):
    reason_code: Code


class ErasureBody(_Strict):
    request_id: str | None = Field(
        None, pattern=r"^r\d{8}-[0-9a-f]{8}$", description="A verified erasure request."
    )
    received_at: str | None = Field(None, description="ISO 8601 receipt time (default now).")


class RequestOut(BaseModel):
    request_id: str
    pid: str
    right: str
    article: str
    status: str
    received_at: str
    deadline: str
    days_left: int | None
    overdue: bool
    extended_days: int
    denied_reason: str | None
    completed_at: str | None
    receipt_sha256: str | None


class RequestsResponse(BaseModel):
    requests: list[RequestOut]


class ErasureResponse(BaseModel):
    request_id: str
    pid: str
    certificate: str = Field(description="Name under GET /v1/certificates/{name}.")
    certificate_sha256: str
    artefacts: int = Field(description="Artefacts removed (hashes in the certificate).")
    models_stale: int = Field(description="Models trained with the subject, stale until retrained.")
    timings_s: dict[str, float]


class ExportBundle(BaseModel):
    filename: str
    sha256: str
    bytes: int
    zip_base64: str = Field(description="The zip bundle (manifest.json, schema.json, ...).")


class ExportResponse(BaseModel):
    request_id: str
    pid: str
    bundle: ExportBundle


class HealthResponse(BaseModel):
    status: Literal["ok"]
    mode: str
    models: dict[str, str | None]


# ---------------------------------------------------------------------------------------------
# The service behind the routes
# ---------------------------------------------------------------------------------------------


@dataclass
class Service:
    """Everything the routes use (``app.state.visage``)."""

    paths: ProjectPaths
    params: Params
    mode: str
    engine: Engine
    gallery: Gallery | None
    analytics: Analytics
    core: Any
    lock: Any
    keys: KeyStore
    limiter: FailureLimiter
    audit: AuditLog
    metrics: metrics_mod.Metrics

    def decode(self, data: str, field: str = "image") -> Image.Image:
        """A base64 image field as a loaded RGB image, within the size limits."""
        try:
            raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_base64", MSG_BASE64.format(field=field)) from None
        if not raw:
            raise ApiError(422, "invalid_image", MSG_IMAGE.format(field=field, reason="empty"))
        limit = self.params.serving.max_image_pixels
        try:
            im = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError:
            raise ApiError(
                413, "image_too_large", MSG_IMAGE_BOMB.format(field=field, limit=limit)
            ) from None
        except UnidentifiedImageError:
            raise ApiError(
                422, "invalid_image", MSG_IMAGE.format(field=field, reason="unknown format")
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ApiError(
                422, "invalid_image", MSG_IMAGE.format(field=field, reason=type(exc).__name__)
            ) from None
        w, h = im.size
        if w * h > limit:
            raise ApiError(
                413, "image_too_large", MSG_IMAGE_PIXELS.format(field=field, w=w, h=h, limit=limit)
            )
        try:
            im.load()
            with contextlib.suppress(Exception):
                # EXIF orientation of phone photos; unreadable EXIF is simply ignored.
                im = ImageOps.exif_transpose(im) or im
            rgb = im.convert("RGB")
        except Image.DecompressionBombError:
            raise ApiError(
                413, "image_too_large", MSG_IMAGE_PIXELS.format(field=field, w=w, h=h, limit=limit)
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
            raise ApiError(
                422, "invalid_image", MSG_IMAGE.format(field=field, reason=type(exc).__name__)
            ) from None
        return rgb

    def require_gallery(self) -> Gallery:
        if self.gallery is None:
            raise ApiError(404, "not_available", "this server runs in analytics mode")
        return self.gallery

    def subject_state(self, pid: str) -> dict[str, Any]:
        """Registry state (no identity data) plus the gallery state."""
        from visage_ml.privacy.core import UnknownSubjectError

        with self.lock:
            try:
                state = self.core.subject(pid).to_dict()
            except UnknownSubjectError:
                raise ApiError(404, "unknown_subject", MSG_UNKNOWN.format(pid=pid)) from None
            state["gallery"] = self.gallery.status(pid) if self.gallery is not None else None
        return state

    def live_subject(self, pid: str) -> Any:
        from visage_ml.privacy.core import UnknownSubjectError

        try:
            st = self.core.subject(pid)
        except UnknownSubjectError:
            raise ApiError(404, "unknown_subject", MSG_UNKNOWN.format(pid=pid)) from None
        if st.erased:
            raise ApiError(409, "subject_erased", MSG_ERASED.format(pid=pid))
        return st


def _svc(request: Request) -> Service:
    return request.app.state.visage


def _info(request: Request) -> dict[str, Any]:
    return request.scope.setdefault("visage", {})


api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="API key (`visage apikey create --role ...`); its role decides the endpoints.",
)


def require(*roles: str) -> Callable[..., ApiKey]:
    """Dependency: a valid API key whose role is one of ``roles``."""

    def dependency(
        request: Request, key: Annotated[str | None, Security(api_key_header)] = None
    ) -> ApiKey:
        svc = _svc(request)
        client = request.client.host if request.client else "unknown"
        wait = svc.limiter.retry_after(client)
        if wait > 0:
            s = max(1, math.ceil(wait))
            raise ApiError(
                429, "too_many_failed_attempts", MSG_RATE.format(s=s), {"Retry-After": str(s)}
            )
        record = svc.keys.authenticate(key)
        if record is None:
            svc.limiter.failure(client)
            raise ApiError(401, "unauthenticated", MSG_UNAUTHENTICATED)
        info = _info(request)
        info["key_id"], info["role"] = record.key_id, record.role
        if record.role not in roles:
            raise ApiError(
                403,
                "forbidden",
                MSG_FORBIDDEN.format(role=record.role, need=" or ".join(roles)),
            )
        return record

    return dependency


# ---------------------------------------------------------------------------------------------
# ASGI boundary: body size limit, request id, metrics, audit log, last-resort error handler
# ---------------------------------------------------------------------------------------------


class _Boundary:
    """Outermost layer: nothing escapes it unanswered, and every request is counted and audited."""

    def __init__(self, app: Any, *, service: Callable[[], Service], max_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        info: dict[str, Any] = {"request_id": rid}
        scope["visage"] = info
        state = {"status": 500, "started": False}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        async def answer(status: int, code: str, message: str) -> None:
            info["error"] = code
            resp = _error_json(status, code, message)
            await resp(scope, receive, send_wrapper)

        try:
            body_receive = await self._buffer(scope, receive)
            if isinstance(body_receive, tuple):
                await answer(*body_receive)
            else:
                await self.app(scope, body_receive, send_wrapper)
        except Exception:
            logger.exception("unhandled error answering request %s", rid)
            if not state["started"]:
                await answer(500, "internal_error", MSG_INTERNAL.format(rid=rid))
            state["status"] = 500
            info["error"] = info.get("error") or "internal_error"
        finally:
            if self._record(scope, info, state["status"], time.perf_counter() - t0):
                with contextlib.suppress(Exception):
                    await run_in_threadpool(self.service().audit.flush)

    async def _buffer(self, scope: dict[str, Any], receive: Any) -> Any:
        """Read the whole body (refusing it past the limit) and return a replaying receive."""
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return (400, "bad_request", "Content-Length is not a number")
            if n > self.max_bytes:
                return (413, "request_too_large", MSG_TOO_LARGE.format(limit=self.max_bytes))
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return (400, "bad_request", "client disconnected before sending the body")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return (413, "request_too_large", MSG_TOO_LARGE.format(limit=self.max_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _record(self, scope: dict[str, Any], info: dict[str, Any], status: int, dt: float) -> bool:
        """Count and audit the request; returns whether the audit log wants an fsync."""
        try:
            svc = self.service()
        except Exception:  # the app failed before its service existed
            return False
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        action = getattr(route, "name", None) or "unmatched"
        try:
            svc.metrics.observe(
                endpoint=endpoint, method=scope["method"], outcome=str(status), seconds=dt
            )
            return svc.audit.write(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "request_id": info.get("request_id"),
                    "key_id": info.get("key_id"),
                    "role": info.get("role"),
                    "action": action,
                    "method": scope["method"],
                    "pid": info.get("pid"),
                    "pids": info.get("pids"),
                    "status": status,
                    "error": info.get("error"),
                    "latency_ms": round(dt * 1000.0, 3),
                }
            )
        except Exception:
            logger.exception("could not write the audit log or metrics")
            return False


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------


def create_app(
    paths: ProjectPaths,
    *,
    params: Params | None = None,
    engine: Engine | None = None,
    gallery: Gallery | None = None,
    core: Any = None,
    mode: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the HTTP API of the project at ``paths``.

    Parameters
    ----------
    paths
        The project.
    params
        Its parameters (``params.yaml`` when None).
    engine
        The inference engine (``Engine.from_project`` when None); tests inject fakes.
    gallery
        The gallery (opened for the engine's embedder when None; unused in analytics mode).
    core
        The privacy core (``PrivacyCore(paths)`` when None).
    mode
        ``"full"`` or ``"analytics"`` (``serving.mode`` when None). Analytics mode offers
        ``/v1/analytics`` and the rights and audit endpoints only, and never loads the embedder.
    clock, wall_clock
        Monotonic clock of the authentication limiter; wall clock of analytics windows.

    Returns
    -------
    FastAPI
        The application (models loaded and the gallery decrypted into memory).
    """
    from visage_ml.privacy.core import PrivacyCore

    params = params if params is not None else load_params(paths.params)
    mode = mode or params.serving.mode
    if mode not in ("full", "analytics"):
        raise ValueError(f"mode must be 'full' or 'analytics', not {mode!r}")
    core = core if core is not None else PrivacyCore(paths)
    lock = gallery.lock if gallery is not None else threading.RLock()
    if engine is None:
        meta = read_meta(paths.gallery) if mode == "full" else None
        engine = Engine.from_project(paths, params, mode=mode, gallery_meta=meta)
    if mode == "full":
        engine.load()
        if gallery is None:
            emb = engine.embedder
            gallery = Gallery.open(
                paths,
                model_version=emb.model_version,
                embedding_dim=int(emb.embedding_dim or 0),
                threshold=load_threshold(paths, emb.model_version),
                preprocess=emb.spec.to_dict(),
                core=core,
                embed=engine.embed,
                lock=lock,
            )
    else:
        engine.load("demographics", "detector")
        gallery = None
    ap = params.serving.analytics
    service = Service(
        paths=paths,
        params=params,
        mode=mode,
        engine=engine,
        gallery=gallery,
        analytics=Analytics(
            engine,
            k_min=ap.k_min,
            epsilon=ap.epsilon,
            window_seconds=ap.window_seconds,
            keep_windows=ap.keep_windows,
            clock=wall_clock,
        ),
        core=core,
        lock=lock,
        keys=KeyStore(paths.api_keys),
        limiter=FailureLimiter(
            max_failures=params.serving.auth.max_failures,
            window_seconds=params.serving.auth.window_seconds,
            clock=clock,
        ),
        audit=AuditLog(paths.privacy / "audit.jsonl"),
        metrics=metrics_mod.Metrics(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.audit.close()

    app = FastAPI(
        title="visage-ml",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(_known_query_only)],
    )
    app.state.visage = service
    _install_error_handlers(app)
    _add_routes(app, service)
    app.add_middleware(
        _Boundary,
        service=lambda: service,
        max_bytes=params.serving.max_request_bytes,
    )
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def handler(status: int, code: str) -> Callable[[Request, Exception], Any]:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            _info(request)["error"] = code
            return _error_json(status, code, str(exc))

        return handle

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        _info(request)["error"] = exc.code
        return _error_json(exc.status, exc.code, exc.message, exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {400: "malformed_json", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        _info(request)["error"] = code
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        if code == "malformed_json":
            # FastAPI's 400 for a body it cannot parse (not UTF-8, nested too deeply).
            message = "the request body is not valid JSON (UTF-8, not nested thousands deep)"
        return _error_json(exc.status_code, code, message, getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            _info(request)["error"] = "malformed_json"
            return _error_json(400, "malformed_json", "the request body is not valid JSON")
        # Never echo the input: it may be an image.
        parts = []
        for e in errors[:10]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        _info(request)["error"] = "invalid_request"
        return _error_json(422, "invalid_request", "; ".join(parts))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    for exc_type, status, code in (
        (NoFaceError, 422, "no_face"),
        (TooManyFacesError, 422, "too_many_faces"),
        (EnrolmentRefusedError, 409, "processing_not_allowed"),
        (NotEnrolledError, 404, "not_enrolled"),
        (GalleryVersionError, 503, "gallery_version_mismatch"),
        (ModelMismatchError, 503, "model_mismatch"),
        (ModelUnavailableError, 404, "not_available"),
        (ModelFileError, 503, "model_error"),
        (ApiKeyFileError, 503, "api_keys_unreadable"),
    ):
        app.add_exception_handler(exc_type, handler(status, code))


def _known_query_only(request: Request) -> None:
    """Refuse query parameters the route does not define (a typo must not be ignored)."""
    if not request.query_params:
        return
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    known: set[str] = set()
    stack = [dependant]
    while stack:  # the route's own query parameters and those of its dependencies
        d = stack.pop()
        known.update(str(getattr(f, "alias", None) or f.name) for f in d.query_params)
        stack.extend(d.dependencies)
    unknown = set(request.query_params.keys()) - known
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            MSG_UNKNOWN_QUERY.format(n=len(unknown), known=", ".join(sorted(known)) or "none"),
        )


def _add_routes(app: FastAPI, svc: Service) -> None:
    operator = Depends(require(OPERATOR))
    dpo = Depends(require(DPO))
    reader = Depends(require(DPO, AUDITOR))
    auditor = Depends(require(AUDITOR))
    auth_errors = (401, 403, 429)

    @app.get(
        "/healthz",
        name="health",
        response_model=HealthResponse,
        tags=["service"],
        responses=_errors(422),
    )
    def health() -> dict[str, Any]:
        """Liveness: the server answers and its models are loaded (no authentication)."""
        models: dict[str, str | None] = {"embedder": None, "demographics": None}
        loaded = svc.engine.loaded
        if "embedder" in loaded:
            models["embedder"] = svc.engine.embedder.model_version
        if "demographics" in loaded:
            models["demographics"] = svc.engine.demographics.model_version
        return {"status": "ok", "mode": svc.mode, "models": models}

    @app.get(
        "/metrics",
        name="metrics",
        response_class=Response,
        tags=["service"],
        responses={200: {"content": {metrics_mod.CONTENT_TYPE: {}}}, **_errors(422)},
    )
    def metrics() -> Response:
        """Prometheus metrics: request counts and latencies per endpoint, gallery size."""
        gauges: dict[str, tuple[str, float]] = {
            "visage_analytics_frames": (
                "Frames analysed since the server started.",
                float(svc.analytics.frames_total),
            )
        }
        if svc.gallery is not None:
            with contextlib.suppress(GalleryVersionError):
                svc.gallery.refresh()
            gauges["visage_gallery_templates"] = (
                "Searchable templates (subjects allowed for identification).",
                float(svc.gallery.size),
            )
        return Response(svc.metrics.render(gauges), media_type=metrics_mod.CONTENT_TYPE)

    if svc.mode == "full":
        _identification_routes(app, svc, operator, auth_errors)

    @app.post(
        "/v1/analytics",
        name="analytics",
        response_model=AnalyticsResponse,
        tags=["analytics"],
        responses=_errors(400, *auth_errors, 413, 422, 503),
    )
    def analytics(body: AnalyticsRequest, request: Request, _: ApiKey = operator) -> Any:
        """Demographic counts of one frame (no identity is computed; nothing is stored per face).

        Cells below ``serving.analytics.k_min`` read ``"suppressed"``; with
        ``serving.analytics.epsilon`` > 0 counts carry Laplace noise.
        """
        return svc.analytics.analyze(svc.decode(body.image))

    @app.get(
        "/v1/analytics/windows",
        name="analytics_windows",
        response_model=WindowsResponse,
        tags=["analytics"],
        responses=_errors(*auth_errors, 422),
    )
    def analytics_windows(_: ApiKey = operator) -> dict[str, Any]:
        """Closed aggregation windows, oldest first (each released once)."""
        return {"windows": svc.analytics.windows()}

    @app.get(
        "/v1/subjects/{pid}",
        name="subject_state",
        response_model=SubjectResponse,
        tags=["rights"],
        responses=_errors(*auth_errors, 404, 422),
    )
    def subject_state(pid: PidPath, request: Request, _: ApiKey = reader) -> dict[str, Any]:
        """A subject's processing state per purpose and in the gallery (no identity data)."""
        _info(request)["pid"] = pid
        return svc.subject_state(pid)

    _rights_routes(app, svc, dpo, auth_errors)
    _request_routes(app, svc, dpo, auth_errors)

    @app.get(
        "/v1/ledger",
        name="ledger",
        response_model=LedgerResponse,
        tags=["audit"],
        responses=_errors(*auth_errors, 422),
    )
    def ledger(
        after_seq: Annotated[int, Query(ge=-1, description="Entries after this seq.")] = -1,
        limit: Annotated[int, Query(ge=1, le=LEDGER_PAGE)] = 100,
        pid: Annotated[str | None, Query(pattern=PID_PATTERN)] = None,
        type: Annotated[str | None, Query(max_length=64, description="Event type.")] = None,
        _: ApiKey = auditor,
    ) -> dict[str, Any]:
        """Signed ledger entries (pids and hashes only), in order, a page at a time."""
        out: list[dict[str, Any]] = []
        last = None
        for _end, line in svc.core.ledger.iter_lines():
            obj = orjson.loads(line)
            if obj["seq"] <= after_seq:
                continue
            if (pid is not None and obj.get("pid") != pid) or (
                type is not None and obj.get("type") != type
            ):
                continue
            if len(out) == limit:
                break
            out.append(obj)
            last = obj["seq"]
        more = len(out) == limit
        return {"entries": out, "next_after_seq": last if more else None}

    @app.get(
        "/v1/certificates",
        name="certificates",
        response_model=CertificatesResponse,
        tags=["audit"],
        responses=_errors(*auth_errors, 422),
    )
    def certificates(_: ApiKey = auditor) -> dict[str, Any]:
        """Erasure certificates and receipts kept under ``privacy/certificates``."""
        from visage_ml.io import sha256_file

        folder = svc.paths.certificates
        items = []
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.is_file() and CERT_NAME.fullmatch(p.name):
                    items.append(
                        {"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                    )
        return {"certificates": items}

    @app.get(
        "/v1/certificates/{name}",
        name="certificate",
        tags=["audit"],
        responses={
            200: {
                "content": {"application/json": {"schema": {"type": "object"}}},
                "description": "The certificate, byte for byte as stored.",
            },
            **_errors(*auth_errors, 404, 422),
        },
    )
    def certificate(name: str, _: ApiKey = auditor) -> Response:
        """One certificate, byte for byte as stored (so its signature can be checked).

        ``name`` is the file name or the erasure request id (``<id>`` = ``<id>.json``).
        """
        if not name.endswith(".json"):
            name += ".json"
        path = svc.paths.certificates / name
        if not CERT_NAME.fullmatch(name) or not path.is_file():
            raise ApiError(404, "not_found", MSG_CERT.format(name=name[:140]))
        return Response(path.read_bytes(), media_type="application/json")


def _identification_routes(
    app: FastAPI, svc: Service, operator: Any, auth_errors: tuple[int, ...]
) -> None:
    @app.post(
        "/v1/identify",
        name="identify",
        response_model=IdentifyResponse,
        tags=["identification"],
        responses=_errors(400, *auth_errors, 413, 422, 503),
    )
    def identify(body: IdentifyRequest, request: Request, _: ApiKey = operator) -> dict[str, Any]:
        """Who is in the image? For each face, the enrolled subjects at or above the threshold.

        Only subjects whose consent covers identification, and who are not restricted,
        objecting or erased, are searched.
        """
        gallery = svc.require_gallery()
        faces, emb = svc.engine.embed_image(svc.decode(body.image))
        found = gallery.identify_many(emb, top_k=body.top_k)
        _info(request)["pids"] = sorted({m.pid for row in found for m in row}) or None
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

    @app.post(
        "/v1/verify",
        name="verify",
        response_model=VerifyResponse,
        tags=["identification"],
        responses=_errors(400, *auth_errors, 404, 413, 422, 503),
    )
    def verify(body: VerifyRequest, request: Request, _: ApiKey = operator) -> dict[str, Any]:
        """Is the one face in the image subject ``pid``? (404 when ``pid`` is not searchable.)"""
        gallery = svc.require_gallery()
        _info(request)["pid"] = body.pid
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

    @app.post(
        "/v1/enroll",
        name="enroll",
        response_model=EnrollResponse,
        tags=["identification"],
        responses=_errors(400, *auth_errors, 409, 413, 422, 503),
    )
    def enroll(body: EnrollRequest, request: Request, _: ApiKey = operator) -> dict[str, Any]:
        """Enrol (or re-enrol) a subject whose consent covers identification.

        The template is the normalised mean of the images' embeddings; it replaces any earlier
        one. Refused with 409 before any image is looked at when the subject may not be
        processed for identification.
        """
        gallery = svc.require_gallery()
        _info(request)["pid"] = body.pid
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
        import numpy as np

        emb = svc.engine.embed(np.stack(crops))
        result = gallery.enroll(body.pid, emb, model_version=svc.engine.embedder.model_version)
        return {
            "pid": body.pid,
            "template_sha256": result.template_sha256,
            "images_used": result.images,
            "replaced": result.replaced,
            "model_version": gallery.model_version,
        }


def _rights_routes(app: FastAPI, svc: Service, dpo: Any, auth_errors: tuple[int, ...]) -> None:
    """Data-subject rights, each delegating to the privacy core (one signed ledger event).

    Requests with deadlines, access/portability export and erasure live in
    :func:`_request_routes`, under the same ``/v1/subjects/{pid}/`` prefix and ``dpo`` role.
    """
    errors = _errors(400, *auth_errors, 404, 409, 422)
    post = functools.partial(
        app.post, response_model=RightsResponse, tags=["rights"], responses=errors
    )

    def done(pid: str, entry: Any) -> dict[str, Any]:
        if svc.gallery is not None:
            svc.gallery.refresh()
        return {
            "pid": pid,
            "event": entry.type,
            "seq": entry.seq,
            "subject": svc.subject_state(pid),
        }

    def for_purposes(
        pid: str, request: Request, body: PurposesRequest | None, record: Callable[..., Any]
    ) -> dict[str, Any]:
        """Record a per-purpose event (the purposes given, all when omitted) for a live pid."""
        _info(request)["pid"] = pid
        with svc.lock:
            svc.live_subject(pid)
            purposes = body.purposes if body is not None and body.purposes else list(PURPOSES)
            entry = record(pid, purposes)
        return done(pid, entry)

    @post("/v1/subjects/{pid}/consent/withdraw", name="consent_withdraw")
    def consent_withdraw(
        pid: PidPath,
        request: Request,
        body: PurposesRequest | None = None,
        _: ApiKey = dpo,
    ) -> dict[str, Any]:
        """Withdraw consent (Art. 7(3)) for the purposes given (all when omitted)."""
        return for_purposes(pid, request, body, svc.core.withdraw_consent)

    @post("/v1/subjects/{pid}/restrict", name="restrict")
    def restrict(
        pid: PidPath,
        request: Request,
        body: RestrictRequest | None = None,
        _: ApiKey = dpo,
    ) -> dict[str, Any]:
        """Restrict processing (Art. 18): data kept, never searched until lifted."""
        _info(request)["pid"] = pid
        with svc.lock:
            svc.live_subject(pid)
            reason = body.reason_code if body is not None else "subject_request"
            entry = svc.core.restrict(pid, reason_code=reason)
        return done(pid, entry)

    @post("/v1/subjects/{pid}/lift", name="lift")
    def lift(pid: PidPath, request: Request, _: ApiKey = dpo) -> dict[str, Any]:
        """Lift a restriction."""
        _info(request)["pid"] = pid
        with svc.lock:
            if not svc.live_subject(pid).restricted:
                raise ApiError(409, "not_restricted", MSG_NOT_RESTRICTED.format(pid=pid))
            entry = svc.core.lift(pid)
        return done(pid, entry)

    @post("/v1/subjects/{pid}/object", name="object")
    def object_(
        pid: PidPath,
        request: Request,
        body: PurposesRequest | None = None,
        _: ApiKey = dpo,
    ) -> dict[str, Any]:
        """Record an objection (Art. 21) to the purposes given (all when omitted)."""
        return for_purposes(pid, request, body, svc.core.object)


def _request_routes(app: FastAPI, svc: Service, dpo: Any, auth_errors: tuple[int, ...]) -> None:
    """Requests with deadlines (Art. 12), export (Art. 15, 20) and erasure (Art. 17), for DPOs.

    Each delegates to :mod:`visage_ml.privacy.requests`, :mod:`~visage_ml.privacy.rights` and
    :mod:`~visage_ml.privacy.erasure` with a privacy core of its own (the service's registry is
    only touched under its lock); erasure removes the template from this server's gallery, so
    the subject is never matched again once that step returns.
    """
    from visage_ml.privacy.core import PrivacyCore, UnknownSubjectError
    from visage_ml.privacy.requests import RequestBook, RequestStateError, UnknownRequestError

    errors = _errors(400, *auth_errors, 404, 409, 422)
    post = functools.partial(app.post, response_model=RequestOut, tags=["rights"], responses=errors)

    @contextlib.contextmanager
    def answered() -> Any:
        try:
            yield
        except UnknownRequestError as exc:
            raise ApiError(404, "unknown_request", str(exc)) from None
        except UnknownSubjectError as exc:
            raise ApiError(404, "unknown_subject", str(exc)) from None
        except RequestStateError as exc:
            raise ApiError(409, "request_state", str(exc)) from None
        except ValueError as exc:
            raise ApiError(409, "not_allowed", str(exc)) from None

    def book() -> RequestBook:
        return RequestBook(PrivacyCore(svc.paths), params=svc.params.privacy)

    def out(st: Any, b: RequestBook) -> dict[str, Any]:
        return st.to_dict(b.now())

    @app.get(
        "/v1/requests",
        name="requests",
        response_model=RequestsResponse,
        tags=["rights"],
        responses=_errors(*auth_errors, 422),
    )
    def requests_(
        all: Annotated[bool, Query(description="Also completed and denied requests.")] = False,
        _: ApiKey = dpo,
    ) -> dict[str, Any]:
        """Open requests, nearest deadline first, with days left and overdue flags."""
        b = book()
        items = b.all() if all else b.open()
        return {"requests": [out(st, b) for st in items]}

    @post("/v1/subjects/{pid}/requests", name="request_new")
    def request_new(
        pid: PidPath, body: NewRequestBody, request: Request, _: ApiKey = dpo
    ) -> dict[str, Any]:
        """Record a request (status received); its deadline is one month from receipt."""
        _info(request)["pid"] = pid
        details: dict[str, Any] = {}
        if body.right == "objection":
            details["purposes"] = list(body.purposes or PURPOSES)
        if body.right == "restriction":
            details["action"] = "lift" if body.lift else "set"
        b = book()
        with answered():
            st = b.receive(
                pid, body.right, received_at=body.received_at, details=details, channel=body.channel
            )
        return out(st, b)

    def transition(request_id: str, action: Callable[[RequestBook], Any]) -> dict[str, Any]:
        b = book()
        with answered():
            st = action(b)
        if svc.gallery is not None:
            svc.gallery.refresh()
        return out(st, b)

    @post("/v1/requests/{request_id}/verify", name="request_verify")
    def request_verify(
        request_id: RequestId, body: VerifyRequestBody | None = None, _: ApiKey = dpo
    ) -> dict[str, Any]:
        """Record that the requester's identity was verified (Art. 12(6))."""
        method = body.method if body is not None else "identity_verified"
        return transition(request_id, lambda b: b.verify(request_id, method=method))

    @post("/v1/requests/{request_id}/extend", name="request_extend")
    def request_extend(
        request_id: RequestId, body: ExtendRequestBody, _: ApiKey = dpo
    ) -> dict[str, Any]:
        """Extend the deadline by up to two further months in total, with a reason code."""
        return transition(
            request_id,
            lambda b: b.extend(request_id, days=body.days, reason_code=body.reason_code),
        )

    @post("/v1/requests/{request_id}/deny", name="request_deny")
    def request_deny(
        request_id: RequestId, body: DenyRequestBody, _: ApiKey = dpo
    ) -> dict[str, Any]:
        """Refuse a request with a reason code (a denied erasure lifts its processing stop)."""
        return transition(request_id, lambda b: b.deny(request_id, reason_code=body.reason_code))

    @app.post(
        "/v1/subjects/{pid}/erasure",
        name="erasure",
        response_model=ErasureResponse,
        tags=["rights"],
        responses=errors,
    )
    def erasure(
        pid: PidPath, request: Request, body: ErasureBody | None = None, _: ApiKey = dpo
    ) -> dict[str, Any]:
        """Erase the subject from every store and return the signed certificate's name.

        Without ``request_id`` a request is recorded and verified by the calling DPO. The
        subject is never matched again from the gallery step on; the certificate is served to
        auditors at ``GET /v1/certificates/{request_id}``.
        """
        from visage_ml.io import sha256_file
        from visage_ml.privacy.erasure import Erasure

        _info(request)["pid"] = pid
        with svc.lock:
            svc.live_subject(pid)
        er = Erasure(svc.paths, core=PrivacyCore(svc.paths), gallery=svc.gallery, params=svc.params)
        with answered():
            if body is not None and body.request_id:
                if er.book.get(body.request_id).pid != pid:
                    raise RequestStateError(f"request {body.request_id} is about another subject")
                result = er.run(body.request_id)
            else:
                received = body.received_at if body is not None else None
                result = er.erase(pid, received_at=received, channel="api")
        if svc.gallery is not None:
            svc.gallery.refresh()
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
        }

    @app.get(
        "/v1/subjects/{pid}/export",
        name="export",
        response_model=ExportResponse,
        tags=["rights"],
        responses=errors,
    )
    def export(
        pid: PidPath,
        request: Request,
        request_id: Annotated[
            str | None, Query(pattern=r"^r\d{8}-[0-9a-f]{8}$", description="A verified request.")
        ] = None,
        portability: Annotated[bool, Query(description="Record as Art. 20 portability.")] = False,
        _: ApiKey = dpo,
    ) -> dict[str, Any]:
        """Access / portability export (Art. 15, 20): the zip bundle, base64 in JSON.

        The bundle is built in memory and not kept on the server; the request is completed
        with a signed receipt and ``access.exported`` records the bundle's hash.
        """
        from visage_ml.privacy.rights import export_subject

        _info(request)["pid"] = pid
        with svc.lock:
            svc.live_subject(pid)
        with answered():
            result = export_subject(
                svc.paths,
                pid,
                request_id=request_id,
                core=PrivacyCore(svc.paths),
                gallery=svc.gallery,
                right="portability" if portability else "access",
                keep=False,
            )
        return {
            "request_id": result.request_id,
            "pid": pid,
            "bundle": {
                "filename": f"{result.request_id}.zip",
                "sha256": result.sha256,
                "bytes": len(result.data),
                "zip_base64": base64.b64encode(result.data).decode("ascii"),
            },
        }
