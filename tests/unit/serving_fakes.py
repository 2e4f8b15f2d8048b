"""A deterministic stand-in world for serving tests: tiled "faces", a tile detector, real ONNX.

An image is a grid of ``TILE`` x ``TILE`` cells on black; every non-black cell is a face. A
subject's face is a fixed 8x8 random pattern (zero mean per channel, upscaled), plus per-image
noise; the skin-tone group shifts the green channel and gender the blue channel, exactly what
the tiny demographic ONNX model of ``evaluate_fakes`` reads. :class:`TileDetector` reports
each face cell with the 5-point template landmarks, so the real ``align_face`` recovers the cell,
and the real ONNX embedder (a random projection) keeps identity structure. Not a test module.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from evaluate_fakes import GENDER_SHIFT, GENDERS, GROUP_SHIFT, GROUPS, write_models
from PIL import Image

from visage_ml.config import ProjectPaths
from visage_ml.preprocess import template
from visage_ml.privacy.consent import ConsentReceipt, sha256_text
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.serving.engine import Engine

TILE = 32
MODEL_SIZE = 32
DIM = 64
THRESHOLD = 0.7


@dataclass(frozen=True)
class FakeDetection:
    box: tuple[float, float, float, float]
    prob: float
    landmarks: np.ndarray


@dataclass
class TileDetector:
    """Finds the non-black ``TILE`` cells; records how many calls ever overlapped."""

    tile: int = TILE
    delay: float = 0.0
    calls: int = 0
    max_concurrent: int = 0
    _active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def detect(self, images):
        with self._lock:
            self._active += 1
            self.calls += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
        try:
            if self.delay:
                time.sleep(self.delay)
            out = []
            for im in images:
                arr = np.asarray(im)
                found = []
                for y in range(0, arr.shape[0] - self.tile + 1, self.tile):
                    for x in range(0, arr.shape[1] - self.tile + 1, self.tile):
                        if arr[y : y + self.tile, x : x + self.tile].mean() > 10:
                            lm = template(self.tile) + np.array([x, y], dtype=np.float64)
                            box = (float(x), float(y), float(x + self.tile), float(y + self.tile))
                            found.append(FakeDetection(box, 0.99, lm))
                out.append(found)
            return out
        finally:
            with self._lock:
                self._active -= 1


@dataclass
class Person:
    pid: str
    pattern: np.ndarray
    group: str
    gender: str


def make_person(pid: str, rng: np.random.Generator, group: str, gender: str) -> Person:
    base = rng.normal(0.0, 40.0, size=(8, 8, 3))
    base -= base.mean(axis=(0, 1), keepdims=True)
    return Person(pid, base, group, gender)


def face_tile(person: Person, rng: np.random.Generator, *, noise: float = 12.0) -> np.ndarray:
    """One photograph of ``person`` as a ``TILE`` x ``TILE`` uint8 cell."""
    rep = TILE // 8
    img = np.repeat(np.repeat(person.pattern, rep, axis=0), rep, axis=1)
    shift = np.array([0.0, GROUP_SHIFT[person.group], GENDER_SHIFT[person.gender]])
    img = 127.5 + img + shift + rng.normal(0.0, noise, size=img.shape)
    return np.clip(np.rint(img), 30, 255).astype(np.uint8)


def scene(tiles: list[np.ndarray | None], *, cols: int = 4) -> np.ndarray:
    """Tiles on a black grid (None leaves a cell empty)."""
    rows = max(1, -(-len(tiles) // cols))
    out = np.zeros((rows * TILE, cols * TILE, 3), dtype=np.uint8)
    for i, t in enumerate(tiles):
        if t is not None:
            r, c = divmod(i, cols)
            out[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = t
    return out


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def receipt(purposes) -> ConsentReceipt:
    return ConsentReceipt(
        controller="Example Controller Ltd",
        controller_contact="dpo@example.org",
        purposes=tuple(purposes),
        notice_version="v1",
        notice_hash=sha256_text("notice"),
        collection_method="test",
        given_at="2026-11-26T07:00:00.000Z",
    )


@dataclass
class World:
    paths: ProjectPaths
    core: PrivacyCore
    people: dict[str, Person]
    rng: np.random.Generator

    def photo(self, pid: str, n: int = 1) -> np.ndarray:
        return np.stack([face_tile(self.people[pid], self.rng) for _ in range(n)])


def make_world(
    root: Path,
    *,
    n_subjects: int = 20,
    without_identification: int = 0,
    seed: int = 0,
) -> World:
    """Models under ``root/models`` and ``n_subjects`` registered subjects with consent.

    The last ``without_identification`` subjects consent to training and evaluation only.
    """
    write_models(root, size=MODEL_SIZE, dim=DIM)
    paths = ProjectPaths(root)
    core = PrivacyCore(paths)
    rng = np.random.default_rng(seed)
    pids = [f"p{rng.integers(0, 2**63):016x}" for _ in range(n_subjects)]
    core.add_subjects([NewSubject(pid=p) for p in pids], source="test", snapshot=False)
    people = {}
    events = []
    for i, pid in enumerate(pids):
        purposes = ("training", "evaluation")
        if i < n_subjects - without_identification:
            purposes = (*purposes, "identification")
        r = receipt(purposes)
        events.append(("consent.given", pid, {"receipt": r.to_dict(), "receipt_hash": r.digest()}))
        people[pid] = make_person(pid, rng, GROUPS[i % len(GROUPS)], GENDERS[i % 2])
    core.ledger.append_many(events)  # one fsync, as acquisition does
    core.snapshot()
    return World(paths, core, people, rng)


def fake_engine(
    root: Path,
    *,
    detector=None,
    embedder=None,
    mode: str = "full",
    **kw,
):
    """An engine on the real tiny ONNX models and the tile detector.

    ``detector`` is a detector object (a :class:`TileDetector` by default); ``embedder`` a
    factory replacing the ONNX embedder's.
    """
    from visage_ml.inference import OnnxModel

    det = detector if detector is not None else TileDetector()
    models = Path(root) / "models"
    if embedder is None:

        def embedder():
            return OnnxModel(models / "embedder.onnx", expected_kind="embedder")

    return Engine(
        embedder=embedder if mode == "full" else None,
        demographics=lambda: OnnxModel(models / "demographics.onnx", expected_kind="demographics"),
        detector=lambda: det,
        crop_size=TILE,
        min_face_prob=0.9,
        mode=mode,
        **kw,
    )


def open_gallery(paths: ProjectPaths, core: PrivacyCore, engine: Engine, *, version: str):
    """The memory gallery of ``paths`` on the fakes' embedding size and threshold, embedding
    with ``engine`` (as ``visage serve`` opens it)."""
    from visage_ml.serving.gallery import Gallery

    return Gallery.open(
        paths,
        model_version=version,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=core,
        embed=engine.embed,
    )
