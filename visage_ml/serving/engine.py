"""The serving engine: image -> MTCNN detect + align -> ONNX embed or ONNX demographics.

Models are ONNX Runtime sessions (:class:`visage_ml.inference.OnnxModel`) fed through the one
preprocessing (:func:`visage_ml.preprocess.align_face`, then
:func:`visage_ml.preprocess.to_model_input` inside the model). torch is never imported for
embeddings; it is only used inside MTCNN detection, which is serialised by a lock because one
MTCNN module is not safe to call from several threads at once. ONNX Runtime sessions accept
concurrent ``run`` calls, so embedding and demographic inference run unserialised.

Images are downscaled to ``max_detect_side`` (longest side) before detection: a small,
highly compressible file can decode to tens of megapixels, and MTCNN's cost grows with the
pixel count while the lock makes every other request wait. Boxes and landmarks are mapped back
to the image's own coordinates, and faces are aligned from the full-resolution image.

Each model is loaded on first use (or by :meth:`Engine.load`), so an engine in analytics mode
never loads the embedder, and is checked against what the configuration and the gallery expect
(input size, standardisation, embedding size, model version) before it is used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from visage_ml.preprocess import MEAN, STD, PreprocessSpec, align_face
from visage_ml.serving.upscale import face_region

logger = logging.getLogger(__name__)

EMBEDDER = "embedder"
DEMOGRAPHICS = "demographics"
DETECTOR = "detector"

MSG_MISMATCH = "{what} model {path} does not fit {source}: {details}. {fix}"
FIX_PARAMS = (
    "Re-run `dvc repro export` so the model matches params.yaml, or point serving at the "
    "right model file"
)
FIX_GALLERY = (
    "The gallery's templates were made with another embedder; run `visage gallery rebuild` to "
    "re-enrol consented subjects with this model"
)
MSG_NOT_CONFIGURED = (
    "this engine has no {what} model (serving.mode is '{mode}'); start `visage serve` in full "
    "mode to identify, verify or enrol"
)
MSG_NO_HASH = (
    "models/{kind}.onnx has no hash recorded in reports/export.json, so it is used without an "
    "integrity check; run `dvc repro export` to record one"
)
MSG_NO_EXPECTED = (
    "models/{kind}.onnx has no expected hash, so it is not loaded; run `dvc repro export` to "
    "release it"
)
MSG_NO_FACE = "no face found in the image (minimum detection probability {min_prob})"
MSG_TOO_MANY = (
    "{n} faces found in the image but at most {max_faces} are processed per image "
    "(serving.max_faces); crop the image or raise the limit"
)


class ModelMismatchError(ValueError):
    """A model's self-description does not match what the configuration or gallery expects."""


class NoFaceError(ValueError):
    """The image holds no face above the detection threshold."""


class TooManyFacesError(ValueError):
    """The image holds more faces than ``serving.max_faces``."""


class ModelUnavailableError(RuntimeError):
    """The engine was built without the model a call needs (e.g. analytics mode)."""


# ---------------------------------------------------------------------------------------------
# What the engine needs of its parts (dependency injection: tests pass fakes)
# ---------------------------------------------------------------------------------------------


class Embedder(Protocol):
    """What the engine needs of :class:`visage_ml.inference.OnnxModel` of kind ``embedder``."""

    @property
    def spec(self) -> PreprocessSpec: ...

    @property
    def embedding_dim(self) -> int | None: ...

    @property
    def model_version(self) -> str: ...

    def embed(self, crops_u8_nhwc: np.ndarray, *, batch_size: int = ...) -> np.ndarray: ...


class DemographicModel(Protocol):
    """What the engine needs of :class:`visage_ml.inference.OnnxModel` of kind ``demographics``."""

    @property
    def spec(self) -> PreprocessSpec: ...

    @property
    def model_version(self) -> str: ...

    @property
    def labels(self) -> Any: ...

    def predict(
        self, crops_u8_nhwc: np.ndarray, *, batch_size: int = ...
    ) -> dict[str, np.ndarray]: ...


class DetectionLike(Protocol):
    """One detected face: ``box`` (x1, y1, x2, y2), ``prob`` and 5x2 ``landmarks``."""

    box: Any
    prob: float
    landmarks: Any


class Detector(Protocol):
    """What the engine needs of :class:`visage_ml.data.detect.FaceDetector`."""

    def detect(self, images: Sequence[Image.Image]) -> list[list[Any]]: ...


@dataclass(frozen=True)
class ModelExpectation:
    """What a model must declare to be accepted (``None`` fields are not checked).

    Parameters
    ----------
    input_size, mean, std
        The preprocessing the model must have been trained with.
    embedding_dim
        Length of an embedding (embedders only).
    model_version
        Exact model version (set from ``gallery/gallery.json``: templates only match the
        embedder that made them).
    source
        Who expects it, for the error message (``params.yaml``, ``gallery/gallery.json``).
    """

    input_size: int | None = None
    mean: float | None = None
    std: float | None = None
    embedding_dim: int | None = None
    model_version: str | None = None
    source: str = "params.yaml"


def check_model(
    model: Any, expected: ModelExpectation | None, *, what: str, path: str = "(in memory)"
) -> None:
    """Refuse ``model`` when its metadata differs from ``expected``.

    Raises
    ------
    ModelMismatchError
        Naming every field that differs, the source of the expectation and what to do.
    """
    if expected is None:
        return
    spec: PreprocessSpec = model.spec
    problems: list[str] = []
    fix = FIX_PARAMS
    if expected.input_size is not None and spec.input_size != expected.input_size:
        problems.append(f"input size {spec.input_size}, expected {expected.input_size}")
    if expected.mean is not None and not np.isclose(spec.mean, expected.mean):
        problems.append(f"mean {spec.mean}, expected {expected.mean}")
    if expected.std is not None and not np.isclose(spec.std, expected.std):
        problems.append(f"std {spec.std}, expected {expected.std}")
    if expected.embedding_dim is not None:
        dim = getattr(model, "embedding_dim", None)
        if dim != expected.embedding_dim:
            problems.append(f"embedding size {dim}, expected {expected.embedding_dim}")
    if expected.model_version is not None and model.model_version != expected.model_version:
        problems.append(
            f"model version {model.model_version!r}, expected {expected.model_version!r}"
        )
    if not problems:
        return
    if expected.source.startswith("gallery"):
        fix = FIX_GALLERY
    raise ModelMismatchError(
        MSG_MISMATCH.format(
            what=what, path=path, source=expected.source, details="; ".join(problems), fix=fix
        )
    )


@dataclass(frozen=True)
class _Detection:
    box: Any
    prob: float
    landmarks: Any


def _rescaled(d: Any, factor: float) -> _Detection:
    """A detection's box and landmarks multiplied by ``factor`` (back to the full image)."""
    box = None if d.box is None else np.asarray(d.box, dtype=np.float64) * factor
    lm = None if d.landmarks is None else np.asarray(d.landmarks, dtype=np.float64) * factor
    return _Detection(box=box, prob=float(d.prob), landmarks=lm)


@dataclass(frozen=True)
class Face:
    """One detected face: its box in the image, detection probability and aligned crop.

    ``landmarks`` (5x2, image coordinates) are kept for the face-quality pose measurement and
    ``region`` (the central pixels of the box in the image as sent,
    :func:`visage_ml.serving.upscale.face_region`) for its effective size
    (:mod:`visage_ml.serving.quality`); like the crop, they live only for the request.
    """

    box: tuple[float, float, float, float]
    prob: float
    crop: np.ndarray
    landmarks: np.ndarray | None = None
    region: np.ndarray | None = None


class Engine:
    """Detection, alignment and ONNX inference for serving.

    Parameters
    ----------
    embedder, demographics, detector
        Zero-argument callables returning the model (loaded on first use, once); ``None`` when
        this engine does not offer it. Tests inject fakes here.
    crop_size
        Side of the aligned crops (``prepare.image_size``: the crops the models were trained
        on); each model resizes them to its own input size.
    min_face_prob
        Detections below this probability are ignored (``prepare.min_face_prob``).
    second_look
        :meth:`detect_one` looks again, mirrored then contrast-stretched, at an image where no
        face passed (``prepare.second_look``; :func:`visage_ml.data.detect.second_look`).
    max_faces
        More faces than this in one image is refused (:class:`TooManyFacesError`).
    max_detect_side
        Longest side an image is downscaled to before detection (``serving.max_detect_side``).
    batch_size
        Crops standardised at a time (:meth:`OnnxModel.run` splits them into micro-batches).
    expect_embedder, expect_demographics
        Checked against each model when it is loaded.
    mode
        Named in the message when a model that was not configured is asked for.
    """

    def __init__(
        self,
        *,
        embedder: Callable[[], Embedder] | None = None,
        demographics: Callable[[], DemographicModel] | None = None,
        detector: Callable[[], Detector] | None = None,
        crop_size: int = 112,
        min_face_prob: float = 0.9,
        second_look: bool = False,
        max_faces: int = 32,
        max_detect_side: int = 1280,
        batch_size: int = 32,
        expect_embedder: ModelExpectation | None = None,
        expect_demographics: ModelExpectation | None = None,
        mode: str = "full",
    ) -> None:
        if crop_size < 8 or max_faces < 1 or batch_size < 1 or max_detect_side < 16:
            raise ValueError(
                "crop_size >= 8, max_faces >= 1, batch_size >= 1 and max_detect_side >= 16 are "
                "required"
            )
        self._factories: dict[str, Callable[[], Any] | None] = {
            EMBEDDER: embedder,
            DEMOGRAPHICS: demographics,
            DETECTOR: detector,
        }
        self._expect = {EMBEDDER: expect_embedder, DEMOGRAPHICS: expect_demographics}
        self._models: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        # One MTCNN instance is not thread-safe (torch modules keep per-call state); serialise.
        self._detect_lock = threading.Lock()
        self.crop_size = int(crop_size)
        self.min_face_prob = float(min_face_prob)
        self.second_look = bool(second_look)
        self.max_faces = int(max_faces)
        self.max_detect_side = int(max_detect_side)
        self.batch_size = int(batch_size)
        self.mode = mode

    # -- construction from a project -----------------------------------------------------------

    @classmethod
    def from_project(
        cls,
        paths: Any,
        params: Any,
        *,
        mode: str | None = None,
        gallery_meta: Any = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        expected_sha256: Mapping[str, str] | None = None,
    ) -> Engine:
        """The engine of a project: ``models/*.onnx`` and MTCNN, as ``params.yaml`` says.

        Parameters
        ----------
        paths
            :class:`visage_ml.config.ProjectPaths`.
        params
            :class:`visage_ml.config.Params`.
        mode
            ``"full"`` (embedder, demographics, detector) or ``"analytics"`` (no embedder);
            ``serving.mode`` by default.
        gallery_meta
            :class:`visage_ml.serving.gallery.GalleryMeta` whose model version and embedding
            size the embedder must match (``None``: checked against params.yaml only).
        providers, intra_op_threads
            Passed to :class:`visage_ml.inference.OnnxModel`.
        expected_sha256
            ``{kind: sha256}`` each ONNX file must have (``visage serve`` passes the hashes
            released in the ledger, :mod:`visage_ml.serving.release`); a kind missing from it
            is refused. When None, the hashes the export stage wrote to ``reports/export.json``.

        Each ONNX file is checked against its expected SHA-256 when it is loaded
        (:class:`visage_ml.inference.ModelHashError` when it differs), and the session is built
        from exactly the bytes checked.
        """
        mode = mode or params.serving.mode
        if mode not in ("full", "analytics"):
            raise ValueError(f"mode must be 'full' or 'analytics', not {mode!r}")
        models_dir = Path(paths.models)

        def onnx(kind: str) -> Callable[[], Any]:
            def load() -> Any:
                # onnxruntime loads only with a model: analytics mode never loads the embedder.
                from visage_ml.inference import ModelHashError, OnnxModel, recorded_sha256

                if expected_sha256 is not None:
                    digest = expected_sha256.get(kind)
                    if digest is None:
                        raise ModelHashError(MSG_NO_EXPECTED.format(kind=kind))
                else:
                    # The file must be the one the export stage wrote (reports/export.json).
                    digest = recorded_sha256(paths.reports, kind)
                    if digest is None:
                        logger.warning(MSG_NO_HASH.format(kind=kind))
                return OnnxModel(
                    models_dir / f"{kind}.onnx",
                    expected_kind=kind,
                    providers=providers,
                    intra_op_threads=intra_op_threads,
                    expected_sha256=digest,
                )

            return load

        def detector() -> Detector:
            # torch + facenet-pytorch load only when a detector is first needed.
            from visage_ml.data.detect import FaceDetector

            return FaceDetector(
                device=params.prepare.device, min_face_size=params.prepare.min_face_size
            )

        te = params.train_embedder
        expect_emb = ModelExpectation(
            input_size=te.input_size, mean=MEAN, std=STD, embedding_dim=te.embedding_dim
        )
        if gallery_meta is not None:
            expect_emb = ModelExpectation(
                input_size=gallery_meta.preprocess.get("input_size", te.input_size),
                mean=gallery_meta.preprocess.get("mean", MEAN),
                std=gallery_meta.preprocess.get("std", STD),
                embedding_dim=gallery_meta.embedding_dim,
                model_version=gallery_meta.model_version,
                source="gallery/gallery.json",
            )
        expect_dem = ModelExpectation(
            input_size=params.train_demographics.input_size, mean=MEAN, std=STD
        )
        return cls(
            embedder=onnx(EMBEDDER) if mode == "full" else None,
            demographics=onnx(DEMOGRAPHICS),
            detector=detector,
            crop_size=params.prepare.image_size,
            min_face_prob=params.prepare.min_face_prob,
            second_look=params.prepare.second_look,
            max_faces=params.serving.max_faces,
            max_detect_side=params.serving.max_detect_side,
            batch_size=params.serving.batch_size,
            expect_embedder=expect_emb,
            expect_demographics=expect_dem,
            mode=mode,
        )

    # -- models --------------------------------------------------------------------------------

    def _get(self, name: str) -> Any:
        model = self._models.get(name)
        if model is not None:
            return model
        factory = self._factories[name]
        if factory is None:
            raise ModelUnavailableError(MSG_NOT_CONFIGURED.format(what=name, mode=self.mode))
        with self._load_lock:
            model = self._models.get(name)
            if model is None:
                model = factory()
                if name in self._expect:
                    check_model(
                        model,
                        self._expect[name],
                        what=name,
                        path=str(getattr(model, "path", "(in memory)")),
                    )
                self._models[name] = model
                logger.info("serving engine loaded its %s", name)
        return model

    def has(self, name: str) -> bool:
        """Whether this engine can offer ``name`` (``embedder``, ``demographics``, ``detector``)."""
        return self._factories.get(name) is not None

    def load(self, *names: str) -> Engine:
        """Load (and check) the named models now, all configured ones when none are named."""
        for name in names or tuple(n for n, f in self._factories.items() if f is not None):
            self._get(name)
        return self

    @property
    def loaded(self) -> frozenset[str]:
        """Names of the models loaded so far."""
        return frozenset(self._models)

    @property
    def embedder(self) -> Embedder:
        """The embedder (loaded and checked on first use)."""
        return self._get(EMBEDDER)

    @property
    def demographics(self) -> DemographicModel:
        """The demographic model (loaded and checked on first use)."""
        return self._get(DEMOGRAPHICS)

    @property
    def detector(self) -> Detector:
        """The face detector (loaded on first use)."""
        return self._get(DETECTOR)

    # -- inference -----------------------------------------------------------------------------

    def detect(self, image: Image.Image | np.ndarray, *, look_again: bool = False) -> list[Face]:
        """Faces of one RGB image, most probable first, each aligned to ``crop_size``.

        ``look_again``: where no face passed, a second look (mirrored, then contrast-stretched);
        :meth:`detect_one` asks for it when ``second_look`` is on. Analytics scenes do not: an
        empty scene would cost two more detection passes.

        Raises
        ------
        ValueError
            When an array is not an 8-bit image (H x W, or H x W x 1, 3 or 4 channels).
        TooManyFacesError
            When more than ``max_faces`` faces pass ``min_face_prob``.
        """
        if isinstance(image, Image.Image):
            pil = image if image.mode == "RGB" else image.convert("RGB")
        else:
            # data.detect imports torch: only for arrays, never on the PIL path.
            from visage_ml.data.detect import to_rgb_array

            # Refuses what is not an 8-bit image (float, NaN, 5 channels) with a clear message.
            pil = Image.fromarray(to_rgb_array(image))
        detector = self.detector
        small, scale = self.detection_view(pil)
        with self._detect_lock:
            found = detector.detect([small])[0]
            if look_again:
                from visage_ml.data.detect import second_look

                pixels = np.asarray(small)
                found = second_look(detector, [pixels], [found], min_prob=self.min_face_prob)[0]
        if scale != 1.0:
            found = [_rescaled(d, 1.0 / scale) for d in found if d is not None]
        kept = [
            d
            for d in found
            if d is not None and d.landmarks is not None and float(d.prob) >= self.min_face_prob
        ]
        if len(kept) > self.max_faces:
            raise TooManyFacesError(MSG_TOO_MANY.format(n=len(kept), max_faces=self.max_faces))
        kept.sort(key=lambda d: -float(d.prob))
        faces = []
        pixels = np.asarray(pil) if kept else None
        for d in kept:
            lm = np.asarray(d.landmarks, dtype=np.float64).reshape(5, 2)
            crop = align_face(pil, lm, self.crop_size)
            box = tuple(float(v) for v in np.asarray(d.box, dtype=np.float64).reshape(4))
            faces.append(
                Face(
                    box=box,  # type: ignore[arg-type]
                    prob=float(d.prob),
                    crop=crop,
                    landmarks=lm,
                    region=face_region(pixels, box),
                )
            )
        return faces

    def detection_view(self, image: Image.Image) -> tuple[Image.Image, float]:
        """``image`` with its longest side at most ``max_detect_side``, and the scale applied.

        Returns
        -------
        tuple
            The image to detect on and its size relative to ``image`` (1.0 when unchanged).
        """
        w, h = image.size
        longest = max(w, h)
        if longest <= self.max_detect_side:
            return image, 1.0
        scale = self.max_detect_side / longest
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # reducing_gap: a fast integer reduction first, then a bilinear resize of what is left.
        return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), scale

    def detect_one(self, image: Image.Image | np.ndarray) -> list[Face]:
        """Faces of ``image``, refusing an image without any (:class:`NoFaceError`)."""
        faces = self.detect(image, look_again=self.second_look)
        if not faces:
            raise NoFaceError(MSG_NO_FACE.format(min_prob=self.min_face_prob))
        return faces

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised float32 embeddings ``(N, D)`` of aligned uint8 crops ``(N, S, S, 3)``."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        out = np.asarray(self.embedder.embed(crops, batch_size=self.batch_size), np.float32)
        return out

    def embed_image(self, image: Image.Image | np.ndarray) -> tuple[list[Face], np.ndarray]:
        """Detect, align and embed every face of ``image`` (at least one, else NoFaceError)."""
        faces = self.detect_one(image)
        return faces, self.embed(np.stack([f.crop for f in faces]))

    def predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Demographic estimates (``age``, ``gender_probs``, ``group_probs``) of aligned crops."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        return self.demographics.predict(crops, batch_size=self.batch_size)
