"""The serving engine: detect + align + ONNX embed, batching, thread safety, model checks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving_fakes import DIM, MODEL_SIZE, TILE, TileDetector, fake_engine, make_world, scene

from visage_ml.config import load_params, write_params
from visage_ml.preprocess import PreprocessSpec
from visage_ml.serving.engine import (
    Engine,
    ModelExpectation,
    ModelMismatchError,
    ModelUnavailableError,
    NoFaceError,
    TooManyFacesError,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(project):
    return make_world(project, n_subjects=6)


def test_every_face_is_detected_and_aligned_back_to_its_cell(world):
    engine = fake_engine(world.paths.root)
    pids = list(world.people)
    tiles = [world.photo(pids[i])[0] for i in range(3)]
    faces = engine.detect(scene([tiles[0], None, tiles[1], tiles[2]], cols=2))
    assert len(faces) == 3
    assert {f.box for f in faces} == {
        (0.0, 0.0, 32.0, 32.0),
        (0.0, 32.0, 32.0, 64.0),
        (32.0, 32.0, 64.0, 64.0),
    }
    for f in faces:
        assert f.crop.shape == (TILE, TILE, 3) and f.crop.dtype == np.uint8
        x, y = int(f.box[0]) // TILE, int(f.box[1]) // TILE
        original = tiles[[0, None, 1, 2][y * 2 + x]]
        # align_face maps the template landmarks onto themselves: the cell comes back.
        assert np.abs(f.crop.astype(int) - original.astype(int)).mean() < 3


def test_no_face_and_too_many_faces_are_refused_clearly(world):
    engine = fake_engine(world.paths.root, max_faces=2)
    pids = list(world.people)
    assert engine.detect(scene([None, None])) == []
    with pytest.raises(NoFaceError, match="no face"):
        engine.embed_image(scene([None]))
    with pytest.raises(TooManyFacesError, match=r"serving\.max_faces"):
        engine.detect(scene([world.photo(p)[0] for p in pids[:3]]))


def test_batched_embeddings_equal_one_at_a_time_and_are_unit_length(world):
    engine = fake_engine(world.paths.root, batch_size=2)
    crops = np.concatenate([world.photo(p) for p in world.people])
    together = engine.embed(crops)
    alone = np.concatenate([engine.embed(c) for c in crops])
    assert together.shape == (6, DIM) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_detector_calls_never_overlap_but_embedding_runs_from_many_threads(world):
    detector = TileDetector(delay=0.01)
    engine = fake_engine(world.paths.root, detector=detector)
    image = scene([world.photo(p)[0] for p in list(world.people)[:2]])
    results, errors = [], []

    def work():
        try:
            results.append(engine.embed_image(image)[1])
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert detector.calls == 8 and detector.max_concurrent == 1
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


@dataclass
class SizeRecorder(TileDetector):
    """The tile detector, recording the size of every image it is given."""

    sizes: list = None  # type: ignore[assignment]

    def detect(self, images):
        self.sizes = (self.sizes or []) + [im.size for im in images]
        return super().detect(images)


def test_large_images_are_downscaled_before_detection_and_mapped_back(world):
    detector = SizeRecorder()
    engine = fake_engine(world.paths.root, detector=detector, max_detect_side=64)
    pids = list(world.people)[:2]
    small = scene([world.photo(p)[0] for p in pids], cols=2)  # 32 x 64: two tiles
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)  # 128 x 256, faces 128 px
    faces, emb = engine.embed_image(big)
    # The detector saw the image at 64 px on its longest side, not 256.
    assert detector.sizes == [(64, 32)]
    # Boxes are in the image's own coordinates ...
    assert [f.box for f in faces] == [(0.0, 0.0, 128.0, 128.0), (128.0, 0.0, 256.0, 128.0)]
    # ... and the faces, aligned from the full image, embed like the originals.
    ref = engine.embed_image(small)[1]
    assert detector.sizes[-1] == (64, 32)  # at the limit: not resized
    assert np.all(np.sum(emb * ref, axis=1) > 0.95)
    # At or under the limit nothing is resized.
    assert engine.detection_view(Image.fromarray(small))[1] == 1.0


@dataclass
class _Model:
    spec: PreprocessSpec
    embedding_dim: int | None = DIM
    model_version: str = "emb-test-1"
    path: str = "models/embedder.onnx"


@pytest.mark.parametrize(
    ("model", "expected", "words"),
    [
        (_Model(PreprocessSpec(96)), ModelExpectation(input_size=112), ["input size 96", "112"]),
        (
            _Model(PreprocessSpec(112, mean=0.0, std=1.0)),
            ModelExpectation(mean=127.5, std=128.0),
            ["mean 0.0", "std 1.0"],
        ),
        (
            _Model(PreprocessSpec(112), embedding_dim=512),
            ModelExpectation(embedding_dim=128),
            ["embedding size 512", "128"],
        ),
    ],
)
def test_model_that_does_not_fit_the_configuration_is_refused(model, expected, words):
    engine = Engine(embedder=lambda: model, expect_embedder=expected)
    with pytest.raises(ModelMismatchError) as err:
        engine.load()
    msg = str(err.value)
    for w in [*words, "models/embedder.onnx", "dvc repro export"]:
        assert w in msg
    assert "embedder" not in engine.loaded


def test_model_that_does_not_fit_the_gallery_says_to_rebuild():
    engine = Engine(
        embedder=lambda: _Model(PreprocessSpec(112), model_version="v2"),
        expect_embedder=ModelExpectation(model_version="v1", source="gallery/gallery.json"),
    )
    with pytest.raises(ModelMismatchError, match="visage gallery rebuild"):
        engine.load()


def test_analytics_engine_has_no_embedder_and_never_loads_it(world):
    engine = fake_engine(world.paths.root, mode="analytics")
    crops = world.photo(next(iter(world.people)), 2)
    assert engine.predict(crops)["age"].shape == (2,)
    with pytest.raises(ModelUnavailableError, match="analytics"):
        engine.embed(crops)
    assert engine.loaded == {"demographics"}


def test_engine_from_project_checks_models_against_params(world):
    params = load_params(world.paths.params)
    engine = Engine.from_project(world.paths, params, mode="full")
    expected = f"input size {MODEL_SIZE}, expected {params.train_embedder.input_size}"
    with pytest.raises(ModelMismatchError, match=expected):
        engine.load("embedder")
    fitted = load_params(
        world.paths.params,
        overrides={
            "train_embedder.input_size": MODEL_SIZE,
            "train_embedder.embedding_dim": DIM,
            "train_demographics.input_size": MODEL_SIZE,
        },
    )
    write_params(fitted, world.paths.params)
    engine = Engine.from_project(world.paths, fitted, mode="analytics")
    assert engine.demographics.spec.input_size == MODEL_SIZE
    assert not engine.has("embedder")
    full = Engine.from_project(world.paths, fitted, mode="full")
    assert full.embedder.embedding_dim == DIM
    assert full.crop_size == fitted.prepare.image_size


def test_serving_path_does_not_import_torch(world):
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests" / "unit")!r})
        from pathlib import Path
        from serving_fakes import fake_engine, scene, make_person, face_tile
        import numpy as np
        engine = fake_engine(Path({str(world.paths.root)!r}))
        rng = np.random.default_rng(0)
        person = make_person("p" + "a" * 16, rng, "g1", "male")
        faces, emb = engine.embed_image(scene([face_tile(person, rng)]))
        engine.predict(np.stack([f.crop for f in faces]))
        import visage_ml.app.http.app, visage_ml.serving.gallery, visage_ml.serving.analytics
        assert emb.shape == (1, {DIM})
        print("torch" in sys.modules)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@dataclass
class FirstLookBlind(TileDetector):
    """The tile detector, blind on every odd call: what MTCNN misses at the first look."""

    def detect(self, images):
        found = super().detect(images)
        return [[] for _ in images] if self.calls % 2 == 1 else found


def test_a_face_missed_at_the_first_look_is_found_on_the_second_where_it_is(world):
    pids = list(world.people)[:2]
    tiles = [world.photo(p)[0] for p in pids]
    image = scene([tiles[0], None, None, tiles[1]], cols=2)
    with_look = fake_engine(world.paths.root, detector=FirstLookBlind(), second_look=True)
    faces = with_look.detect_one(image)
    # Found in the mirror image, put back in the image's own coordinates, aligned from it.
    assert sorted(f.box for f in faces) == [(0.0, 0.0, 32.0, 32.0), (32.0, 32.0, 64.0, 64.0)]
    by_box = {f.box: f for f in faces}
    for box, tile in (((0.0, 0.0, 32.0, 32.0), tiles[0]), ((32.0, 32.0, 64.0, 64.0), tiles[1])):
        crop = by_box[box].crop.astype(int)
        # the template is not quite symmetric: a sub-pixel shift, not the mirror image
        assert np.abs(crop - tile.astype(int)).mean() < 6
        assert np.abs(crop - tile[:, ::-1].astype(int)).mean() > 15
    # Off, or for an analytics scene (detect without look_again), a miss stays a miss.
    without = fake_engine(world.paths.root, detector=FirstLookBlind(), second_look=False)
    with pytest.raises(NoFaceError):
        without.detect_one(image)
    scene_engine = fake_engine(world.paths.root, detector=FirstLookBlind(), second_look=True)
    assert scene_engine.detect(image) == []
    assert scene_engine.detector.calls == 1
