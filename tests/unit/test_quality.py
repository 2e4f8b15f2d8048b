"""Face quality: each measurement responds to what it measures, and the gate names what failed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from visage_ml.config import SynthParams, load_params
from visage_ml.data.synth import make_population
from visage_ml.data.synth_render import View, render
from visage_ml.preprocess import align_face, template
from visage_ml.serving.quality import (
    Quality,
    QualityGate,
    face_size,
    refusal,
    sharpness,
    yaw_ratio,
)
from visage_ml.serving.upscale import face_region, upscale_factor

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


# -- effective size: a face enlarged by resampling is judged by the pixels it came from -------


def _portrait(size: int, *, seed: int = 0, jpeg: int = 100) -> tuple[np.ndarray, tuple, np.ndarray]:
    """A frontal SynthFaces portrait of ``size`` px: pixels, face box and landmarks."""
    person = make_population(SynthParams(n_identities=4), seed=seed)[seed % 4]
    out = render(person, View(jpeg_quality=jpeg), np.random.default_rng(seed), size=size)
    return out.image, out.box, out.landmarks


def _assess(gate: QualityGate, image: np.ndarray, box, landmarks) -> Quality:
    crop = align_face(Image.fromarray(image), landmarks, 112)
    region = face_region(image, box)
    return gate.assess(box=box, prob=0.999, crop=crop, landmarks=landmarks, region=region)


@pytest.mark.parametrize("resample", ["NEAREST", "BILINEAR", "BICUBIC"])
def test_a_face_enlarged_by_resampling_is_judged_by_its_effective_size(resample):
    gate = QualityGate.from_params(load_params("params.yaml").serving.quality)
    small, box, lm = _portrait(44)  # a face box of about 20 px: too small
    assert face_size(box) < gate.min_face_px
    k = 4
    big = np.asarray(
        Image.fromarray(small).resize((44 * k, 44 * k), getattr(Image.Resampling, resample))
    )
    big_box = tuple(v * k for v in box)
    q = _assess(gate, big, big_box, lm * k)
    assert face_size(big_box) > 2 * gate.min_face_px  # the box alone would pass
    assert not q.passed and "size" in q.failed
    assert q.measurements["upscale"] >= 2
    assert q.measurements["size"] == pytest.approx(face_size(big_box) / q.measurements["upscale"])
    assert q.to_dict()["measurements"]["upscale"] == q.measurements["upscale"]
    if resample == "NEAREST":
        assert q.measurements["upscale"] == k
        assert "face too small" in refusal(q, what="search for")


def test_a_native_face_with_as_many_pixels_passes_and_is_not_found_enlarged():
    gate = QualityGate.from_params(load_params("params.yaml").serving.quality)
    image, box, lm = _portrait(176)
    q = _assess(gate, image, box, lm)
    assert q.measurements["upscale"] == 1 and q.measurements["size"] == face_size(box)
    assert q.passed, q.to_dict()


@pytest.mark.parametrize("quality", [75, 85, 95])
def test_jpeg_compressed_native_faces_are_not_found_enlarged(quality):
    gate = QualityGate.from_params(load_params("params.yaml").serving.quality)
    for seed in range(4):
        image, box, lm = _portrait(160, seed=seed, jpeg=quality)
        q = _assess(gate, image, box, lm)
        assert q.measurements["upscale"] == 1, (seed, q.to_dict())
        assert "size" not in q.failed


def test_the_face_region_is_the_central_part_of_the_box_clipped_to_the_image():
    image = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    region = face_region(image, (10, 20, 210, 120), side=64)
    assert region.shape == (64, 64, 3)
    assert np.array_equal(region, image[38:102, 78:142])
    assert face_region(image, (-50, -50, 20, 30)).shape == (30, 20, 3)
    assert face_region(image, (400, 400, 500, 500)).size == 0
    assert upscale_factor(face_region(image, (400, 400, 500, 500))) == 1
    flat = np.full((64, 64, 3), 120, np.uint8)  # no detail: nothing to tell, left to sharpness
    assert upscale_factor(flat) == 1


def test_without_a_region_the_enlargement_is_not_measured():
    gate = QualityGate()
    q = gate.assess(box=(0, 0, 80, 90), prob=0.999, crop=textured(), landmarks=FRONTAL)
    assert q.measurements["upscale"] == 1 and q.measurements["size"] == 80


def test_the_refusal_of_an_enlarged_face_says_it_was_enlarged():
    # A face found enlarged 4x (box 64 px, judged 16 px) was refused with "face too small ...
    # take a photo in which the face is larger": the user enlarges it again, and is refused again.
    gate = QualityGate.from_params(load_params("params.yaml").serving.quality)
    small, box, lm = _portrait(44)
    big = np.asarray(Image.fromarray(small).resize((176, 176), Image.Resampling.NEAREST))
    q = _assess(gate, big, tuple(v * 4 for v in box), lm * 4)
    assert q.measurements["upscale"] == 4 and "size" in q.failed
    msg = refusal(q, what="search for")
    assert "enlarged" in msg, msg
