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

The package: :mod:`.schemas` (request/response models), :mod:`.errors` (the error shape and
handlers), :mod:`.boundary` (ASGI body limit, request id, metrics, audit), :mod:`.service` (the
object behind the routes, API-key roles), :mod:`.routers` (one router per area), and this
module, which wires them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI

from visage_ml.app.http.audit import AuditLog
from visage_ml.app.http.auth import FailureLimiter, KeyStore
from visage_ml.app.http.boundary import Boundary
from visage_ml.app.http.errors import install_error_handlers
from visage_ml.app.http.metrics import Metrics
from visage_ml.app.http.routers import analytics, health, ledger, recognition, requests, subjects
from visage_ml.app.http.service import Service, known_query_only
from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.privacy.core import PrivacyCore
from visage_ml.serving.analytics import Analytics
from visage_ml.serving.engine import Engine
from visage_ml.serving.gallery import Gallery, load_threshold, read_meta

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
MODES = ("full", "analytics")
MSG_MODE = "mode must be 'full' or 'analytics', not {mode!r}"


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
    params = params if params is not None else load_params(paths.params)
    mode = mode or params.serving.mode
    if mode not in MODES:
        raise ValueError(MSG_MODE.format(mode=mode))
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
        metrics=Metrics(),
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
        dependencies=[Depends(known_query_only)],
    )
    app.state.visage = service
    install_error_handlers(app)
    # Included in the order of the OpenAPI schema's paths.
    app.include_router(health.router)
    if mode == "full":
        app.include_router(recognition.router)
    app.include_router(analytics.router)
    app.include_router(subjects.router)
    app.include_router(requests.router)
    app.include_router(ledger.router)
    health.register_gauges(service)
    app.add_middleware(
        Boundary,
        service=lambda: service,
        max_bytes=params.serving.max_request_bytes,
    )
    return app
