"""Face quality: is this face good enough to enrol or to search for, or would any answer be a guess?

Four measurements of one detected face, each against its bound in ``serving.quality``:

- **size**: the effective size of the face (``min_face_px``): the shorter side of the detected
  box, in pixels of the image, over the factor the face was found enlarged by resampling
  (``upscale``, :mod:`visage_ml.serving.upscale`, measured on the box's pixels in the image as
  sent). A face of a few pixels carries little identity, and enlarging it adds none: 8 x 8
  pixels enlarged 4 times is judged as 8 pixels, not 32. Found: nearest-neighbour, bilinear
  and bicubic enlargements by whole factors (2 to 8); not found: a learned upscaler, which
  invents detail, fractional factors, and most enlargements followed by JPEG (bilinear and
  bicubic ones) or by added noise;
- **sharpness**: the variance of the Laplacian of the aligned grey crop (``min_sharpness``;
  Pech-Pacheco et al. 2000): motion or focus blur removes the high frequencies it measures.
  Measured on the aligned crop, so it does not depend on the image's resolution;
- **pose**: yaw from the landmark geometry, the nose tip's offset from the midpoint of the eyes
  along the eye line, over the eye distance (``max_yaw``; 0 frontal, about 0.5 in profile);
- **detection probability** of the detector (``min_detection_prob``).

``upscale`` is reported with the measurements (1 when not enlarged, or not measured) but has
no bound of its own. A face passes when every measurement is within its bound. Its ``score``
(0 to 1) is the worst measurement's ratio to its bound, halved and capped: 0.5 is the gate in
every factor, 1.0 is twice as good as the bound in the worst one. Nothing is kept: the
measurements describe the image, not the person, and are computed per request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from visage_ml.serving.upscale import FLOOR, TOLERANCE, upscale_factor

FACTORS: tuple[str, ...] = ("size", "sharpness", "pose", "detection")
MSG_QUALITY = (
    "the face{where} is of too low quality to {what} ({reasons}); take a sharper, frontal photo "
    "in which the face is larger (the bounds are serving.quality in params.yaml)"
)
REASON_TEXT: Mapping[str, str] = {
    "size": "face too small",
    "sharpness": "image too blurred",
    "pose": "head turned too far",
    "detection": "face not clearly detected",
}


@dataclass(frozen=True)
class Quality:
    """The quality of one face: measurements, the factors that failed, and the 0-1 score."""

    measurements: dict[str, float]
    failed: tuple[str, ...]
    score: float
    passed: bool

    def reasons(self) -> str:
        """The failed factors in words (``image too blurred, head turned too far``)."""
        out = []
        for f in self.failed:
            text = REASON_TEXT[f]
            k = self.measurements.get("upscale", 1.0)
            if f == "size" and k > 1:
                text += (
                    f" (enlarged {k:g} times from about {self.measurements['size']:.0f} px: "
                    "enlarging adds no detail; send the original photo)"
                )
            out.append(text)
        return ", ".join(out) or "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4),
            "passed": self.passed,
            "failed": list(self.failed),
            "measurements": {k: round(v, 4) for k, v in self.measurements.items()},
        }


def sharpness(crop: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the crop's grey levels (0-255 scale)."""
    a = np.asarray(crop, dtype=np.float32)
    grey = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if a.ndim == 3 else a
    lap = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )
    return float(lap.var()) if lap.size else 0.0


def yaw_ratio(landmarks: np.ndarray) -> float:
    """|nose offset from the eye midpoint, along the eye line| / eye distance (5x2 landmarks)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left, right, nose = lm[0], lm[1], lm[2]
    eye = right - left
    dist = float(np.hypot(*eye))
    if not math.isfinite(dist) or dist < 1e-6:
        return math.inf
    return abs(float(np.dot(nose - (left + right) / 2.0, eye / dist))) / dist


def face_size(box: Any) -> float:
    """Shorter side of the ``(x1, y1, x2, y2)`` box in pixels."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    return max(0.0, min(x2 - x1, y2 - y1))


@dataclass(frozen=True)
class QualityGate:
    """The bounds of ``serving.quality``; :meth:`assess` measures a face against them.

    Parameters
    ----------
    enabled
        When false, :meth:`assess` still measures but every face passes.
    min_face_px, min_sharpness, max_yaw, min_detection_prob
        The bounds (see the module docstring).
    upscale_tolerance, upscale_floor
        How little detail beyond a ``k`` times smaller face a region may hold to count as
        enlarged ``k`` times (:func:`visage_ml.serving.upscale.upscale_factor`).
    """

    enabled: bool = True
    min_face_px: float = 32.0
    min_sharpness: float = 20.0
    max_yaw: float = 0.3
    min_detection_prob: float = 0.92
    upscale_tolerance: float = TOLERANCE
    upscale_floor: float = FLOOR

    @classmethod
    def from_params(cls, params: Any) -> QualityGate:
        """The gate of a :class:`visage_ml.config.QualityParams`."""
        return cls(
            enabled=bool(params.enabled),
            min_face_px=float(params.min_face_px),
            min_sharpness=float(params.min_sharpness),
            max_yaw=float(params.max_yaw),
            min_detection_prob=float(params.min_detection_prob),
            upscale_tolerance=float(params.upscale_tolerance),
            upscale_floor=float(params.upscale_floor),
        )

    def assess(
        self,
        *,
        box: Any,
        prob: float,
        crop: np.ndarray,
        landmarks: Any,
        region: np.ndarray | None = None,
    ) -> Quality:
        """Measure one face (its box, detection probability, aligned crop and landmarks).

        ``region`` holds the pixels of the box in the image as sent
        (:func:`visage_ml.serving.upscale.face_region`); without it the face's enlargement is
        not measured (``upscale`` 1). A face without landmarks has an unknown pose and fails
        ``pose``.
        """
        upscale = 1
        if region is not None:
            upscale = upscale_factor(
                region, tolerance=self.upscale_tolerance, floor=self.upscale_floor
            )
        m = {
            "size": face_size(box) / upscale,
            "sharpness": sharpness(crop),
            "pose": yaw_ratio(landmarks) if landmarks is not None else math.inf,
            "detection": float(prob),
            "upscale": float(upscale),
        }
        ratios = {
            "size": _ratio(m["size"], self.min_face_px),
            "sharpness": _ratio(m["sharpness"], self.min_sharpness),
            "pose": _ratio(self.max_yaw, m["pose"]),
            "detection": _ratio(m["detection"], self.min_detection_prob),
        }
        failed = tuple(f for f in FACTORS if not ratios[f] >= 1.0)
        worst = min(ratios.values())
        score = min(max(worst / 2.0, 0.0), 1.0) if math.isfinite(worst) else 1.0
        passed = not failed or not self.enabled
        return Quality(measurements=m, failed=failed, score=score, passed=passed)

    def assess_face(self, face: Any) -> Quality:
        """:meth:`assess` of a :class:`visage_ml.serving.engine.Face`."""
        return self.assess(
            box=face.box,
            prob=face.prob,
            crop=face.crop,
            landmarks=getattr(face, "landmarks", None),
            region=getattr(face, "region", None),
        )


def _ratio(value: float, bound: float) -> float:
    """``value / bound`` (how many times the bound is met), infinite for a zero bound."""
    return value / bound if bound > 0 else math.inf


def refusal(quality: Quality, *, what: str, where: str = "") -> str:
    """The message of a face refused for its quality (:data:`MSG_QUALITY`)."""
    return MSG_QUALITY.format(where=where, what=what, reasons=quality.reasons())
