"""The service behind the routes, and the dependencies every router uses.

:class:`Service` holds what the routes need (engine, gallery, privacy core, keys, audit,
metrics) and lives in ``app.state.visage``; routes get it with ``svc: Service = SERVICE``.
:func:`authorize` checks an API key (rate limit of failed attempts, hash, expiry, role); the
ASGI boundary calls it before a body is read, and :func:`require` (``OPERATOR_KEY``,
``DPO_KEY``, ``READER_KEY``, ``AUDITOR_KEY``, ``METRICS_KEY``, ``ANY_KEY``) declares each route's
roles, which the boundary reads, and documents the key in the OpenAPI schema.
:func:`known_query_only` refuses query parameters a route does not define.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from PIL import Image, ImageOps, UnidentifiedImageError

from visage_ml.app.http.audit import AuditLog
from visage_ml.app.http.auth import (
    AUDITOR,
    DPO,
    EXPIRED,
    METRICS,
    OPERATOR,
    ROLES,
    ApiKey,
    FailureLimiter,
    KeyStore,
)
from visage_ml.app.http.errors import ApiError, request_info
from visage_ml.app.http.metrics import Metrics
from visage_ml.config import Params, ProjectPaths
from visage_ml.privacy.core import UnknownSubjectError
from visage_ml.privacy.requests import RequestBook
from visage_ml.serving.analytics import Analytics
from visage_ml.serving.engine import Engine
from visage_ml.serving.gallery import Gallery, GalleryUnavailableError
from visage_ml.serving.operating_point import IdentificationPolicy
from visage_ml.serving.quality import QualityGate

IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP")

MSG_UNAUTHENTICATED = (
    "missing or invalid API key: send it in the X-API-Key header (a DPO creates keys with "
    "`visage apikey create --role operator|dpo|auditor|metrics`)"
)
MSG_EXPIRED = (
    "API key {key_id} expired at {when}; ask a DPO for its successor (`visage apikey rotate "
    "{key_id}`) or a new key (`visage apikey create --role {role}`)"
)
MSG_FORBIDDEN = "an API key with role '{role}' may not call this endpoint; it needs role {need}"
MSG_RATE = "too many failed authentications from this client; retry in {s} s"
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
MSG_UNKNOWN = "no subject {pid} in the registry"
# A subject's gallery state: read now, or not readable now after an event was recorded (see
# Service.subject_state).
GALLERY_CURRENT = "current"
GALLERY_PENDING = {
    "status": "pending",
    "enrolled": None,
    "searchable": None,
    "template_model_version": None,
}
MSG_UNKNOWN_QUERY = (
    "{n} query parameter(s) that this endpoint does not define; it accepts: {known} "
    "(unknown parameters are refused, not ignored, like unknown body fields)"
)
MSG_ANALYTICS_MODE = "this server runs in analytics mode"


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
    metrics: Metrics
    # The 1:N threshold at the gallery's size (None in analytics mode), and the quality gate.
    identification: IdentificationPolicy | None = None
    quality: QualityGate = field(default_factory=QualityGate)
    # What a refused operator enrolment of a subject who may not be processed embeds in place
    # of the images (:mod:`.routers.recognition`): one aligned crop of noise, drawn here, when
    # the service starts. Drawn per refusal, it was work (shaped like the request's crops) that
    # a refusal of a subject who may be enrolled never does, and its time told the two apart.
    decoy_crop: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        side = self.engine.crop_size
        self.decoy_crop = np.random.default_rng().integers(0, 256, (side, side, 3), np.uint8)

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
        """The gallery; 404 in analytics mode, which has none."""
        if self.gallery is None:
            raise ApiError(404, "not_available", MSG_ANALYTICS_MODE)
        return self.gallery

    def subject_state(self, pid: str, *, recorded: bool = False) -> dict[str, Any]:
        """Registry state (no identity data) plus the gallery state (``status`` ``current``).

        ``recorded``: the answer to an event just recorded in the ledger. A gallery that cannot
        be read then (an erasure rewrites its table, its database is out of reach) gives the
        gallery state ``pending``, its fields null, rather than a 503 that says the request was
        not completed: it was, and its retry would be refused as done already. The event is in
        force meanwhile: every search reads the ledger before it searches."""
        with self.lock:
            try:
                state = self.core.subject(pid).to_dict()
            except UnknownSubjectError:
                raise ApiError(404, "unknown_subject", MSG_UNKNOWN.format(pid=pid)) from None
            gallery = self.gallery
            state["gallery"] = None if gallery is None else _gallery_state(gallery, pid, recorded)
        return state

    def live_subject(self, pid: str) -> Any:
        """The subject's registry state; 404 when unknown, 409 when erased, naming the erasure's
        request and certificate (:meth:`~visage_ml.privacy.requests.RequestBook.erased_message`,
        as a new request's refusal does).

        For a DPO's routes only (every caller is one): an operator's answers never tell an
        erased subject from one they may not process."""
        try:
            st = self.core.subject(pid)
        except UnknownSubjectError:
            raise ApiError(404, "unknown_subject", MSG_UNKNOWN.format(pid=pid)) from None
        if st.erased:
            book = RequestBook(self.core, params=self.params.privacy)
            raise ApiError(409, "subject_erased", book.erased_message(pid))
        return st


def _gallery_state(gallery: Gallery, pid: str, recorded: bool) -> dict[str, Any]:
    try:
        return {"status": GALLERY_CURRENT, **gallery.status(pid)}
    except GalleryUnavailableError:
        if not recorded:
            raise  # nothing was done: the 503 to retry
        return dict(GALLERY_PENDING)


def get_service(request: Request) -> Service:
    """Dependency: the app's :class:`Service`."""
    return request.app.state.visage


api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="API key (`visage apikey create --role ...`); its role decides the endpoints.",
)


def authorize(
    svc: Service,
    *,
    client: str,
    presented: str | None,
    roles: Collection[str] | None,
    info: dict[str, Any],
) -> ApiKey:
    """Check ``presented`` for a request from ``client`` that needs one of ``roles``.

    In this order: the client's failed attempts (429 while over the limit, even with a good
    key), the key (401, counted as a failure; an expired key is told so), the role (403). The
    key id and role go into ``info`` (the request's audit record) once the key is known.

    Parameters
    ----------
    svc
        The service (keys and limiter).
    client
        The client address the limiter counts failures of.
    presented
        The key as sent (``X-API-Key`` or ``Authorization: Bearer``), or None.
    roles
        Roles allowed; None allows any valid key.
    info
        The request's audit record.

    Raises
    ------
    ApiError
        429, 401 or 403.
    """
    wait = svc.limiter.retry_after(client)
    if wait > 0:
        s = max(1, math.ceil(wait))
        raise ApiError(
            429, "too_many_failed_attempts", MSG_RATE.format(s=s), {"Retry-After": str(s)}
        )
    result = svc.keys.check(presented)
    if result.record is None or result.outcome == EXPIRED:
        svc.limiter.failure(client)
        if result.outcome == EXPIRED and result.record is not None:
            rec = result.record
            info["key_id"], info["role"] = rec.key_id, rec.role
            raise ApiError(
                401,
                "key_expired",
                MSG_EXPIRED.format(key_id=rec.key_id, when=rec.expires, role=rec.role),
            )
        raise ApiError(401, "unauthenticated", MSG_UNAUTHENTICATED)
    record = result.record
    info["key_id"], info["role"] = record.key_id, record.role
    if roles is not None and record.role not in roles:
        raise ApiError(
            403,
            "forbidden",
            MSG_FORBIDDEN.format(role=record.role, need=" or ".join(roles)),
        )
    return record


def require(*roles: str) -> Callable[..., ApiKey]:
    """Dependency: a valid API key whose role is one of ``roles`` (any role when none given).

    The ASGI boundary reads ``roles`` (an attribute of the returned dependency) and checks the
    key before the body is read; the dependency then only hands the checked record to the
    route. It checks the key itself only where no boundary did (an app built without it).
    """
    allowed: tuple[str, ...] | None = tuple(roles) or None

    def dependency(
        request: Request, key: Annotated[str | None, Security(api_key_header)] = None
    ) -> ApiKey:
        info = request_info(request)
        record = info.get("key")
        if isinstance(record, ApiKey):
            if allowed is not None and record.role not in allowed:  # the boundary refused it
                raise ApiError(
                    403,
                    "forbidden",
                    MSG_FORBIDDEN.format(role=record.role, need=" or ".join(allowed)),
                )
            return record
        svc = get_service(request)
        client = svc.limiter.client_of(request.scope)
        return authorize(svc, client=client, presented=key, roles=allowed, info=info)

    dependency.roles = allowed  # type: ignore[attr-defined]
    return dependency


def optional_key(request: Request) -> ApiKey | None:
    """Dependency of a public route that says more to a caller with a key: the checked key
    record (any role), or None when no key was presented.

    The ASGI boundary checks a presented key as it does on every other route (a wrong one is a
    401 counted as a failed attempt, so the route is no free oracle for guessing keys); the
    dependency checks it itself only where no boundary did. The header is read directly, not
    declared as the security of the route: OpenAPI has the route public, as it is.
    """
    info = request_info(request)
    record = info.get("key")
    if isinstance(record, ApiKey):
        return record
    key = request.headers.get("x-api-key")
    if key is None:
        return None
    svc = get_service(request)
    return authorize(
        svc, client=svc.limiter.client_of(request.scope), presented=key, roles=None, info=info
    )


def known_query_only(request: Request) -> None:
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


SERVICE = Depends(get_service)
OPERATOR_KEY = Depends(require(OPERATOR))
DPO_KEY = Depends(require(DPO))
READER_KEY = Depends(require(DPO, AUDITOR))
AUDITOR_KEY = Depends(require(AUDITOR))
METRICS_KEY = Depends(require(AUDITOR, METRICS))
ANY_KEY = Depends(require(*ROLES))
OPTIONAL_KEY = Depends(optional_key)
