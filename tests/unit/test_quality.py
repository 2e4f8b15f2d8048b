"""Face quality: each measurement responds to what it measures, and the gate names what failed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from visage_ml.config import load_params
from visage_ml.preprocess import template
from visage_ml.serving.quality import QualityGate, face_size, refusal, sharpness, yaw_ratio

FRONTAL = template(112)


def textured(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 40, (14, 14, 3)).repeat(8, axis=0).repeat(8, axis=1)
    return np.clip(127 + base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def test_sharpness_falls_with_blur():
    crop = textured()
    values = [
        sharpness(np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(r))))
        for r in (0, 1, 2, 4)
    ]
    assert values == sorted(values, reverse=True)
    assert values[0] > 10 * values[-1]
    assert sharpness(np.full((112, 112, 3), 128, np.uint8)) == 0.0


def test_yaw_is_zero_frontal_and_grows_as_the_head_turns():
    assert yaw_ratio(FRONTAL) < 0.01
    turned = FRONTAL.copy()
    eye_distance = FRONTAL[1, 0] - FRONTAL[0, 0]
    turned[2, 0] += 0.3 * eye_distance  # the nose moves towards one eye
    assert yaw_ratio(turned) == pytest.approx(0.3, abs=0.01)
    # Rolled (the whole face rotated in the image): still frontal.
    angle = np.deg2rad(25)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    assert yaw_ratio(FRONTAL @ rot.T) < 0.01
    assert yaw_ratio(np.zeros((5, 2))) == float("inf")  # degenerate landmarks fail the gate


def test_the_gate_names_every_failed_factor_and_scores_half_at_the_bounds():
    gate = QualityGate.from_params(load_params("params.yaml").serving.quality)
    crop = textured()
    good = gate.assess(box=(0, 0, 80, 90), prob=0.999, crop=crop, landmarks=FRONTAL)
    assert good.passed and good.failed == () and good.score > 0.5
    blurred = np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(4)))
    turned = FRONTAL.copy()
    turned[2, 0] += 0.4 * (FRONTAL[1, 0] - FRONTAL[0, 0])
    bad = gate.assess(box=(0, 0, 20, 90), prob=0.91, crop=blurred, landmarks=turned)
    assert not bad.passed
    assert set(bad.failed) == {"size", "sharpness", "pose", "detection"}
    assert bad.score < 0.5
    message = refusal(bad, what="enrol", where=" in images[0]")
    assert "face too small" in message and "image too blurred" in message
    assert "serving.quality" in message
    # At exactly the bound a factor passes and scores 0.5.
    edge = gate.assess(box=(0, 0, gate.min_face_px, 200), prob=1.0, crop=crop, landmarks=FRONTAL)
    assert edge.passed and edge.score == pytest.approx(0.5)
    assert face_size((10, 10, 50, 30)) == 20


def test_a_disabled_gate_still_measures_but_lets_every_face_through():
    gate = QualityGate(enabled=False)
    q = gate.assess(
        box=(0, 0, 5, 5), prob=0.5, crop=np.zeros((16, 16, 3), np.uint8), landmarks=None
    )
    assert q.passed and set(q.failed) == {"size", "sharpness", "pose", "detection"}
