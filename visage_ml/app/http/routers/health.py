"""Service routes without authentication: liveness (``/healthz``) and Prometheus ``/metrics``.

(``/docs`` and ``/openapi.json`` are FastAPI's own.)
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from visage_ml.app.http.errors import error_responses
from visage_ml.app.http.metrics import CONTENT_TYPE
from visage_ml.app.http.schemas import HealthResponse
from visage_ml.app.http.service import SERVICE, Service
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
    responses=error_responses(422),
)
def health(svc: Service = SERVICE) -> dict[str, Any]:
    """Liveness: the server answers and its models are loaded (no authentication)."""
    models: dict[str, str | None] = {"embedder": None, "demographics": None}
    loaded = svc.engine.loaded
    if "embedder" in loaded:
        models["embedder"] = svc.engine.embedder.model_version
    if "demographics" in loaded:
        models["demographics"] = svc.engine.demographics.model_version
    return {"status": "ok", "mode": svc.mode, "models": models}


@router.get(
    "/metrics",
    name="metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}, **error_responses(422)},
)
def metrics(svc: Service = SERVICE) -> Response:
    """Prometheus metrics: request counts and latencies per endpoint, gallery size."""
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
