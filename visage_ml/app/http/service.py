"""The service behind the routes, and the dependencies every router uses.

:class:`Service` holds what the routes need (engine, gallery, privacy core, keys, audit,
metrics) and lives in ``app.state.visage``; routes get it with ``svc: Service = SERVICE``.
:func:`require` is the API-key dependency (``OPERATOR_KEY``, ``DPO_KEY``, ``READER_KEY``,
``AUDITOR_KEY``), checked before a body is read; :func:`known_query_only` refuses query
parameters a route does not define.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from PIL import Image, ImageOps, UnidentifiedImageError

from visage_ml.app.http.audit import AuditLog
from visage_ml.app.http.auth import AUDITOR, DPO, OPERATOR, ApiKey, FailureLimiter, KeyStore
from visage_ml.app.http.errors import ApiError, request_info
from visage_ml.app.http.metrics import Metrics
from visage_ml.config import Params, ProjectPaths
from visage_ml.privacy.core import UnknownSubjectError
from visage_ml.serving.analytics import Analytics
from visage_ml.serving.engine import Engine
from visage_ml.serving.gallery import Gallery

IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP")

MSG_UNAUTHENTICATED = (
    "missing or invalid API key: send it in the X-API-Key header (a DPO creates keys with "
    "`visage apikey create --role operator|dpo|auditor`)"
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
MSG_ERASED = "subject {pid} was erased; nothing about them can be changed any more"
MSG_UNKNOWN = "no subject {pid} in the registry"
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

    def subject_state(self, pid: str) -> dict[str, Any]:
        """Registry state (no identity data) plus the gallery state."""
        with self.lock:
            try:
                state = self.core.subject(pid).to_dict()
            except UnknownSubjectError:
                raise ApiError(404, "unknown_subject", MSG_UNKNOWN.format(pid=pid)) from None
            state["gallery"] = self.gallery.status(pid) if self.gallery is not None else None
        return state

    def live_subject(self, pid: str) -> Any:
        """The subject's registry state; 404 when unknown, 409 when erased."""
        try:
            st = self.core.subject(pid)
        except UnknownSubjectError:
            raise ApiError(404, "unknown_subject", MSG_UNKNOWN.format(pid=pid)) from None
        if st.erased:
            raise ApiError(409, "subject_erased", MSG_ERASED.format(pid=pid))
        return st


def get_service(request: Request) -> Service:
    """Dependency: the app's :class:`Service`."""
    return request.app.state.visage


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
        svc = get_service(request)
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
        info = request_info(request)
        info["key_id"], info["role"] = record.key_id, record.role
        if record.role not in roles:
            raise ApiError(
                403,
                "forbidden",
                MSG_FORBIDDEN.format(role=record.role, need=" or ".join(roles)),
            )
        return record

    return dependency


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
