"""Analytics routes: an operator's frames counted into the current window; the closed windows
for a dpo or auditor key.

The key that feeds frames does not read the windows: with ``k_min`` - 1 faces of its own in a
person's cell, whether that cell is shown would tell whether the person was seen.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from visage_ml.app.http.auth import ApiKey
from visage_ml.app.http.errors import (
    AUTH_ERRORS,
    BODY_ERRORS,
    IMAGE_ERRORS,
    JSON_ERRORS,
    MODEL_ERRORS,
    error_responses,
)
from visage_ml.app.http.schemas import AnalyticsRequest, AnalyticsResponse, WindowsResponse
from visage_ml.app.http.service import OPERATOR_KEY, READER_KEY, SERVICE, Service

router = APIRouter(tags=["analytics"])


@router.post(
    "/v1/analytics",
    name="analytics",
    response_model=AnalyticsResponse,
    responses=error_responses(AUTH_ERRORS, BODY_ERRORS, JSON_ERRORS, IMAGE_ERRORS, MODEL_ERRORS),
)
def analytics(
    body: AnalyticsRequest, request: Request, _: ApiKey = OPERATOR_KEY, svc: Service = SERVICE
) -> Any:
    """Count one frame's faces into the current window (no identity is computed).

    Nothing about the frame is answered: only closed windows are released
    (``/v1/analytics/windows``), k-suppressed with complementary suppression and, with
    ``serving.analytics.epsilon`` > 0, OpenDP noise drawn once per window. Nor is the
    request's duration, which grows with the faces, kept in the metrics or the audit log
    (the boundary's ``UNTIMED_ROUTES``).
    """
    return svc.analytics.analyze(svc.decode(body.image))


@router.get(
    "/v1/analytics/windows",
    name="analytics_windows",
    response_model=WindowsResponse,
    responses=error_responses(AUTH_ERRORS),
)
def analytics_windows(_: ApiKey = READER_KEY, svc: Service = SERVICE) -> dict[str, Any]:
    """Closed aggregation windows, oldest first (each released once); a dpo or auditor key, not
    the operator's that feeds the frames."""
    return {"windows": svc.analytics.windows()}
