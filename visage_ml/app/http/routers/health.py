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
from visage_ml.app.http.errors import AUTH_ERRORS, error_responses
from visage_ml.app.http.metrics import CONTENT_TYPE
from visage_ml.app.http.schemas import HealthResponse
from visage_ml.app.http.service import METRICS_KEY, OPTIONAL_KEY, SERVICE, Service
from visage_ml.serving.gallery import GalleryVersionError

router = APIRouter(tags=["service"])


def register_gauges(svc: Service) -> None:
    """The scrape-time gauges of ``svc.metrics``: analytics frames and, with a gallery, its size."""
    svc.metrics.gauge(
        "visage_analytics_frames",
        "Frames analysed since the server started.",
        lambda: float(svc.analytics.frames_total),
    )
    gallery = svc.gallery
    if gallery is not None:

        def templates() -> float:
            # Another process may have changed the gallery; a rebuild for another embedder is
            # reported by the routes (503), not by a failing scrape.
            with contextlib.suppress(GalleryVersionError):
                gallery.refresh()
            return float(gallery.size)

        svc.metrics.gauge(
            "visage_gallery_templates",
            "Searchable templates (subjects allowed for identification).",
            templates,
        )


@router.get(
    "/healthz",
    name="health",
    response_model=HealthResponse,
    # 401 / 429 only for a key presented and refused (no key: never).
    responses=error_responses(401, 429, 422),
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
    responses={200: {"content": {CONTENT_TYPE: {}}}, **error_responses(*AUTH_ERRORS, 422)},
)
def metrics(_: ApiKey = METRICS_KEY, svc: Service = SERVICE) -> Response:
    """Prometheus metrics: request counts and latencies per endpoint, gallery size, requests in
    flight (a key of role `auditor` or `metrics`)."""
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
