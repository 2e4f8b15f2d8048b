"""The HTTP API of visage-ml (FastAPI): identification, analytics, subject rights, audit.

Build it with :func:`create_app` (nothing happens at import time); ``visage serve`` runs it
under uvicorn.

Requests carry images as base64 inside a JSON body (``{"image": "<base64>"}``), not as
multipart uploads: the request is held in memory only (the framework would spool multipart
parts over 1 MB to temporary files, i.e. write face images to disk), and one schema describes
every endpoint. Each request but ``GET /healthz`` needs an API key in the ``X-API-Key`` header
(or ``Authorization: Bearer``), checked by the ASGI boundary before the body is read; its role
decides what it may call:

========  ==============================================================================
role      endpoints
========  ==============================================================================
operator  ``POST /v1/identify`` (ranked candidates, no scores), ``/v1/verify`` (a decision,
          no score), ``/v1/enroll`` (a re-enrolment must match both the stored template and
          the subject's anchor template, which it leaves as it is),
          ``/v1/analytics`` (frames; never the windows, which would tell the key that feeds
          them whether a person it put in a cell was seen)
dpo       ``POST /v1/verify`` (with the score), ``/v1/enroll`` (re-enrolment as well),
          ``GET /v1/subjects/{pid}``, ``POST /v1/subjects/{pid}/consent/withdraw``,
          ``/restrict``, ``/lift``, ``/object``, ``/erasure``, ``/requests``,
          ``GET /v1/subjects/{pid}/export``, ``GET /v1/requests[/{id}]``,
          ``POST /v1/requests/{id}/verify``, ``/extend``, ``/deny``,
          ``GET /v1/analytics/windows``
auditor   ``POST /v1/verify`` (with the score), ``GET /v1/subjects/{pid}``, ``GET /v1/ledger``,
          ``GET /v1/certificates[/{name}]``, ``GET /metrics``, ``GET /v1/analytics/windows``
metrics   ``GET /metrics`` (a Prometheus scraper's key)
========  ==============================================================================

``GET /openapi.json`` exists only with ``serving.openapi: true``, for any valid key; there is
no ``/docs`` or ``/redoc`` page (they load scripts from a CDN).

Every error is ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status; an unexpected
exception becomes a 500 with code ``internal_error`` and the server keeps running. Each request
is counted in ``/metrics`` and written to the audit log (``privacy/audit.jsonl``), but for
``/healthz`` without a key and the 429 of the failed-authentication limit, counted only.

The package: :mod:`.schemas` (request/response models), :mod:`.errors` (the error shape and
handlers), :mod:`.boundary` (ASGI body limit, request id, metrics, audit), :mod:`.service` (the
object behind the routes, API-key roles), :mod:`.routers` (one router per area), and this
module, which wires them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from visage_ml.app import logsafe
from visage_ml.app.http.audit import AuditLog, anchor_periodically
from visage_ml.app.http.auth import FailureLimiter, KeyStore
from visage_ml.app.http.boundary import Boundary, InFlight
from visage_ml.app.http.errors import install_error_handlers
from visage_ml.app.http.metrics import Metrics
from visage_ml.app.http.routers import analytics, health, ledger, recognition, requests, subjects
from visage_ml.app.http.service import ANY_KEY, Service, known_query_only
from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import SCHEDULER, acting_as, warm_folds
from visage_ml.rights.enforce import LAST_PASS, Enforcer, run_periodically
from visage_ml.rights.notify import DeliveryReport, Notifier
from visage_ml.serving.analytics import Analytics, close_windows_periodically
from visage_ml.serving.correction import ConfusionModel, load_confusion
from visage_ml.serving.engine import Engine
from visage_ml.serving.gallery import Gallery, load_threshold, read_meta
from visage_ml.serving.operating_point import (
    IdentificationPolicy,
    ScoreModel,
    load_score_model,
)
from visage_ml.serving.pg_gallery import PgGallery, PgOptions, resolve_dsn
from visage_ml.serving.quality import QualityGate
from visage_ml.serving.release import (
    DEMOGRAPHIC_CONFUSION_JSON,
    ONNX_FILE_OF,
    SCORE_MODEL_JSON,
    THRESHOLD_JSON,
    check_released,
    latest_releases,
    released_digest,
    verify_files,
)
from visage_ml.serving.score_calibration import released_calibration

API_VERSION = "1"
DESCRIPTION = """\
On-premise face identification and demographic analytics with data-subject rights.

**Images** travel as base64 inside JSON bodies (`{"image": "<base64 of a JPEG, PNG, WebP or
BMP file>"}`), never as multipart uploads, so no face image is spooled to a temporary file.

**Authentication**: an API key in the `X-API-Key` header (`visage apikey create --role ...`),
checked before the request body is read. Roles: `operator` (identify, verify, enroll,
analytics), `dpo` (subject state and rights), `auditor` (subject state, ledger, certificates,
metrics), `metrics` (metrics only). Keys expire; an expired key gets 401 `key_expired`.
Repeated failed authentications from one client are answered with 429 for a while; more
requests in flight than the server allows get 503 with `Retry-After`.

**Errors** are `{"error": {"code": "...", "message": "..."}}` with a 4xx or 5xx status. Each
endpoint's error responses name the codes it answers with each status; besides them, a path the
API does not have is answered 404 `not_found`, a method a path does not take 405
`method_not_allowed`, and an unexpected failure 500 `internal_error`.

Only subjects whose consent covers identification, and who are not restricted, objecting or
erased, are ever searched. Analytics returns counts only; cells under `k_min` read
`"suppressed"`.
"""
MODES = ("full", "analytics")
MSG_MODE = "mode must be 'full' or 'analytics', not {mode!r}"


def deliver_outbox(paths: ProjectPaths, params: Params) -> DeliveryReport:
    """One delivery pass of the notification outbox as the actor ``scheduler`` (``visage
    serve``'s), on a privacy core of its own: it needs none of the server's locks."""
    with acting_as(SCHEDULER):
        return Notifier(paths, core=PrivacyCore(paths), params=params.privacy.notify).deliver()


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
    score_model: ScoreModel | None = None,
    confusion: ConfusionModel | None = None,
) -> FastAPI:
    """Build the HTTP API of the project at ``paths``.

    Parameters
    ----------
    paths
        The project.
    params
        Its parameters (``params.yaml`` when None).
    engine
        The inference engine (``Engine.from_project`` when None, its ONNX files checked against
        their releases in the ledger); tests inject fakes.
    gallery
        The gallery (opened for the engine's embedder when None, with the released
        ``reports/threshold.json``; unused in analytics mode).
    core
        The privacy core (``PrivacyCore(paths)`` when None).
    mode
        ``"full"`` or ``"analytics"`` (``serving.mode`` when None). Analytics mode offers
        ``/v1/analytics`` and the rights and audit endpoints only, and never loads the embedder.
    clock, wall_clock
        Monotonic clock of the authentication limiter; wall clock of analytics windows and
        API key expiry.
    score_model
        What the 1:N threshold is derived from (:mod:`visage_ml.serving.operating_point`).
        When the gallery is opened here, the released ``reports/score_model.json`` (required);
        with a gallery given and no score model, searches use the gallery's 1:1 threshold and
        ``/healthz`` says so.
    confusion
        The demographic model's measured confusion for analytics' corrected counts. When the
        engine is built here and ``serving.analytics.correct`` is on, the released
        ``reports/demographic_confusion.json`` (required); with an engine given and none,
        windows report raw counts only.

    Returns
    -------
    FastAPI
        The application (models loaded and the gallery decrypted into memory).

    Raises
    ------
    visage_ml.serving.release.ReleaseError
        A model, threshold, score model or confusion file it loads is not the one released in
        the ledger.
    FileNotFoundError
        The score model (or, with correction on, the confusion report) is missing.
    """
    params = params if params is not None else load_params(paths.params)
    mode = mode or params.serving.mode
    if mode not in MODES:
        raise ValueError(MSG_MODE.format(mode=mode))
    # Before any image is decoded: Pillow would log EXIF tags (names) at DEBUG.
    logsafe.quiet_third_party()
    core = core if core is not None else PrivacyCore(paths)
    lock = gallery.lock if gallery is not None else threading.RLock()
    releases = None
    correct = params.serving.analytics.correct
    build_engine = engine is None
    if engine is None or (mode == "full" and gallery is None):
        releases = latest_releases(core.ledger)
    if engine is None:
        kinds = ("embedder", "demographics") if mode == "full" else ("demographics",)
        files = [ONNX_FILE_OF[k] for k in kinds]
        verify_files(paths.root, releases, files)  # a clear message before anything loads
        meta = read_meta(paths.gallery) if mode == "full" else None
        engine = Engine.from_project(
            paths,
            params,
            mode=mode,
            gallery_meta=meta,
            # ... and the bytes each session is built from are checked again when loaded.
            expected_sha256={k: released_digest(releases, ONNX_FILE_OF[k]) for k in kinds},
        )
    if mode == "full":
        engine.load()
        if gallery is None:
            emb = engine.embedder
            threshold = load_threshold(paths, emb.model_version)
            check_released(releases or {}, THRESHOLD_JSON, threshold.sha256)
            opened = dict(
                model_version=emb.model_version,
                embedding_dim=int(emb.embedding_dim or 0),
                threshold=threshold,
                preprocess=emb.spec.to_dict(),
                core=core,
                embed=engine.embed,
                lock=lock,
            )
            if params.serving.gallery.backend == "pgvector":
                # One gallery in PostgreSQL shared by every replica (serving/pg_gallery.py).
                dsn = resolve_dsn(params, os.environ, paths=paths)
                gallery = PgGallery.open(
                    paths, options=PgOptions.from_params(params, dsn=dsn), **opened
                )
            else:
                gallery = Gallery.open(paths, **opened)
            if score_model is None:
                score_model, digest = load_score_model(
                    paths,
                    model_version=emb.model_version,
                    confidence=params.serving.identify.confidence,
                )
                check_released(releases or {}, SCORE_MODEL_JSON, digest)
            # Thresholds were measured on calibrated scores: score as evaluation did.
            gallery.set_calibration(
                released_calibration(paths, releases or {}, model_version=emb.model_version)
            )
    else:
        engine.load("demographics", "detector")
        gallery = None
    if confusion is None and build_engine and correct:
        dem = engine.demographics
        confusion, digest = load_confusion(
            paths, model_version=dem.model_version, labels=dem.labels
        )
        check_released(releases or {}, DEMOGRAPHIC_CONFUSION_JSON, digest)
    identification = None
    if gallery is not None:
        identification = IdentificationPolicy.from_params(
            score_model, params, verify_threshold=gallery.threshold
        )
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
            confusion=confusion if correct else None,
            correction_rounds=ap.correction_rounds,
            dedupe_distance=ap.dedupe_distance,
        ),
        core=core,
        lock=lock,
        keys=KeyStore(paths.api_keys, ttl_days=params.serving.auth.key_ttl_days, clock=wall_clock),
        limiter=FailureLimiter(
            max_failures=params.serving.auth.max_failures,
            window_seconds=params.serving.auth.window_seconds,
            clock=clock,
            trusted_proxies=params.serving.auth.trusted_proxies,
        ),
        audit=AuditLog.for_serving(paths, params.serving.audit, core=core, lock=lock),
        metrics=Metrics(),
        identification=identification,
        quality=QualityGate.from_params(params.serving.quality),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The ledger folds read now, before the first request, not by it (requests, notices,
        # the clock and the ledger's pages each read a long ledger whole on first use).
        warm_folds(paths.ledger)
        # Retention enforcement and notification delivery in the background, every
        # privacy.retention.serve_interval_seconds (hourly by default; the notice says so), the
        # first pass one interval after the last one began, across restarts (LAST_PASS). The
        # policies run under the lock that guards the shared privacy core and gallery;
        # delivery, which waits on SMTP servers and webhooks, runs without it, on a core of its
        # own as a request's rights calls do.
        # (0: none here; run `visage privacy enforce --apply` by timer.)
        stop = threading.Event()
        interval = params.privacy.retention.serve_interval_seconds
        if interval > 0:
            threading.Thread(
                target=run_periodically,
                kwargs={
                    "make": lambda: Enforcer(
                        paths, core=core, params=params, gallery=service.gallery
                    ),
                    "interval_seconds": interval,
                    "stop": stop,
                    "lock": lock,
                    "deliver": functools.partial(deliver_outbox, paths, params),
                    "mark": paths.root / LAST_PASS,
                },
                name="visage-enforce",
                daemon=True,
            ).start()
        # On time even when no request comes: an analytics window closes (its face hashes and
        # exact counts are dropped then, not at the next request), and the audit log's head is
        # anchored in the ledger.
        for target, of, name in (
            (close_windows_periodically, service.analytics, "visage-analytics-close"),
            (anchor_periodically, service.audit, "visage-audit-anchor"),
        ):
            threading.Thread(
                target=target, args=(of,), kwargs={"stop": stop}, name=name, daemon=True
            ).start()
        yield
        stop.set()
        service.audit.close()
        if isinstance(service.gallery, PgGallery):
            service.gallery.close()  # its listener thread and connection

    app = FastAPI(
        title="visage-ml",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(known_query_only)],
        # No /docs or /redoc (their pages load scripts from a CDN), and no unauthenticated
        # schema: /openapi.json is added below, behind a key, when serving.openapi is on.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.visage = service
    install_error_handlers(app)
    # Included in the order of the OpenAPI schema's paths.
    routers = [health.router]
    if mode == "full":
        routers.append(recognition.router)
    routers += [analytics.router, subjects.router, requests.router, ledger.router]
    for router in routers:
        app.include_router(router)
    if params.serving.openapi:

        @app.get("/openapi.json", name="openapi", include_in_schema=False)
        def openapi(_: Any = ANY_KEY) -> dict[str, Any]:
            return app.openapi()

    in_flight = InFlight(params.serving.max_concurrent)
    health.register_gauges(service)
    service.metrics.gauge(
        "visage_http_in_flight",
        "Requests being answered (at most serving.max_concurrent).",
        lambda: float(in_flight.current),
    )
    app.add_middleware(
        Boundary,
        service=lambda: service,
        # The routes as declared (FastAPI may wrap included routers in objects of its own).
        routes=lambda: [
            *(r for r in app.router.routes if isinstance(r, APIRoute)),
            *(r for router in routers for r in router.routes),
        ],
        max_bytes=params.serving.max_request_bytes,
        in_flight=in_flight,
        body_timeout_s=params.serving.body_timeout_s,
    )
    return app
