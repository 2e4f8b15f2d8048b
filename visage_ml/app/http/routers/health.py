"""Service routes: liveness (``/healthz``, the one route without a key; with a key it shows the
identification operating point too) and Prometheus ``/metrics`` (for keys of role ``auditor``
or ``metrics``).

(``/openapi.json`` is added by the app when ``serving.openapi`` is on; there is no ``/docs``.)
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from visage_ml.app.http.auth import ApiKey
from visage_ml.app.http.errors import (
    KEY_ERRORS,
    LEDGER_ERRORS,
    ROLE_ERRORS,
    error_responses,
)
from visage_ml.app.http.metrics import CONTENT_TYPE
from visage_ml.app.http.schemas import HealthResponse
from visage_ml.app.http.service import METRICS_KEY, OPTIONAL_KEY, SERVICE, Service
from visage_ml.serving.gallery import GalleryUnavailableError, GalleryVersionError

GALLERY_TEMPLATES = "visage_gallery_templates"
GALLERY_AVAILABLE = "visage_gallery_available"

router = APIRouter(tags=["service"])


def register_gauges(svc: Service) -> None:
    """The scrape-time gauges of ``svc.metrics``: analytics frames and, with a gallery, its size
    and whether it could be read."""
    svc.metrics.gauge(
        "visage_analytics_frames",
        "Frames analysed since the server started.",
        lambda: float(svc.analytics.frames_total),
    )
    gallery = svc.gallery
    if gallery is not None:

        def read() -> dict[str, float]:
            try:
                # Another process may have changed the gallery; a rebuild for another embedder
                # is reported by the routes (503), not by a failing scrape.
                with contextlib.suppress(GalleryVersionError):
                    gallery.refresh()
                size = gallery.size
            except GalleryUnavailableError:
                # An erasure's rewrite holds the table (or the database is out of reach): the
                # rest of the scrape is answered, so that a monitor does not mark the replica
                # down during every erasure; the size is left out, not a stale one given.
                return {GALLERY_AVAILABLE: 0.0}
            return {GALLERY_AVAILABLE: 1.0, GALLERY_TEMPLATES: float(size)}

        svc.metrics.gauges(
            {
                GALLERY_TEMPLATES: "Searchable templates (subjects allowed for identification).",
                GALLERY_AVAILABLE: (
                    "1 when the gallery answered this scrape; 0 when it could not be read (an "
                    "erasure rewrites its table, or its database is out of reach): "
                    f"{GALLERY_TEMPLATES} is then left out."
                ),
            },
            read,
        )


@router.get(
    "/healthz",
    name="health",
    response_model=HealthResponse,
    # The key's codes only for a key presented (no key: never), and for no role; with one, the
    # operating point reads the gallery (a rebuild for another embedder is left to the routes).
    responses=error_responses(KEY_ERRORS, {503: ("gallery_unavailable",)}, LEDGER_ERRORS),
)
def health(key: ApiKey | None = OPTIONAL_KEY, svc: Service = SERVICE) -> dict[str, Any]:
    """Liveness: the server answers and its models are loaded (no authentication).

    With an API key (any role), in full mode, also the identification operating point: gallery
    size, target FPIR, the 1:N threshold derived for them, expected FNIR, and whether the
    gallery is too large for the target at this model's accuracy (counts and rates only).
    Without one it is left out: whoever can reach the port would otherwise watch the gallery's
    size move as people are enrolled, withdraw or are erased.
    """
    models: dict[str, str | None] = {"embedder": None, "demographics": None}
    loaded = svc.engine.loaded
    if "embedder" in loaded:
        models["embedder"] = svc.engine.embedder.model_version
    if "demographics" in loaded:
        models["demographics"] = svc.engine.demographics.model_version
    out: dict[str, Any] = {"status": "ok", "mode": svc.mode, "models": models}
    if key is not None and svc.gallery is not None and svc.identification is not None:
        gallery = svc.gallery
        with contextlib.suppress(GalleryVersionError):
            gallery.refresh()
        out["identification"] = {
            **svc.identification.status(gallery.size),
            "verify_threshold": gallery.threshold,
        }
    return out


@router.get(
    "/metrics",
    name="metrics",
    response_class=Response,
    # The gallery's gauges apply the ledger's new events (an unreadable gallery is a gauge).
    responses={
        200: {"content": {CONTENT_TYPE: {}}},
        **error_responses(KEY_ERRORS, ROLE_ERRORS, LEDGER_ERRORS),
    },
)
def metrics(_: ApiKey = METRICS_KEY, svc: Service = SERVICE) -> Response:
    """Prometheus metrics: request counts and latencies per endpoint, gallery size, requests in
    flight (a key of role `auditor` or `metrics`).

    Answered while the gallery cannot be read (an erasure rewrites its table):
    `visage_gallery_available` is then 0 and `visage_gallery_templates` left out."""
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
