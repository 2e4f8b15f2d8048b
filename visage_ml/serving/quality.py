"""Face quality: is this face good enough to enrol or to search for, or would any answer be a guess?

Four measurements of one detected face, each against its bound in ``serving.quality``:

- **size**: the shorter side of the detected box, in pixels of the image (``min_face_px``): a
  face of a few pixels is upscaled into the crop and carries little identity;
- **sharpness**: the variance of the Laplacian of the aligned grey crop (``min_sharpness``;
  Pech-Pacheco et al. 2000): motion or focus blur removes the high frequencies it measures.
  Measured on the aligned crop, so it does not depend on the image's resolution;
- **pose**: yaw from the landmark geometry, the nose tip's offset from the midpoint of the eyes
  along the eye line, over the eye distance (``max_yaw``; 0 frontal, about 0.5 in profile);
- **detection probability** of the detector (``min_detection_prob``).

A face passes when every measurement is within its bound. Its ``score`` (0 to 1) is the worst
measurement's ratio to its bound, halved and capped: 0.5 is the gate in every factor, 1.0 is
twice as good as the bound in the worst one. Nothing is kept: the measurements describe the
image, not the person, and are computed per request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

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
        return ", ".join(REASON_TEXT[f] for f in self.failed) or "none"

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
    """

    enabled: bool = True
    min_face_px: float = 32.0
    min_sharpness: float = 20.0
    max_yaw: float = 0.3
    min_detection_prob: float = 0.92

    @classmethod
    def from_params(cls, params: Any) -> QualityGate:
        """The gate of a :class:`visage_ml.config.QualityParams`."""
        return cls(
            enabled=bool(params.enabled),
            min_face_px=float(params.min_face_px),
            min_sharpness=float(params.min_sharpness),
            max_yaw=float(params.max_yaw),
            min_detection_prob=float(params.min_detection_prob),
        )

    def assess(self, *, box: Any, prob: float, crop: np.ndarray, landmarks: Any) -> Quality:
        """Measure one face (its box, detection probability, aligned crop and landmarks).

        A face without landmarks has an unknown pose and fails ``pose``.
        """
        m = {
            "size": face_size(box),
            "sharpness": sharpness(crop),
            "pose": yaw_ratio(landmarks) if landmarks is not None else math.inf,
            "detection": float(prob),
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
            box=face.box, prob=face.prob, crop=face.crop, landmarks=getattr(face, "landmarks", None)
        )


def _ratio(value: float, bound: float) -> float:
    """``value / bound`` (how many times the bound is met), infinite for a zero bound."""
    return value / bound if bound > 0 else math.inf


def refusal(quality: Quality, *, what: str, where: str = "") -> str:
    """The message of a face refused for its quality (:data:`MSG_QUALITY`)."""
    return MSG_QUALITY.format(where=where, what=what, reasons=quality.reasons())
