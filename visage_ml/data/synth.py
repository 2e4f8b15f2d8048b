"""SynthFaces: the embedded, deterministic synthetic face data set of visage-ml.

visage-ml downloads nothing, so the whole pipeline (MTCNN detection and 5-point alignment,
embedding and demographic training, fairness evaluation, serving analytics) runs on synthetic
people. A *population* of identities is drawn from ``params.synth``: age, gender and skin-tone
group (``g1`` light .. ``g4`` dark, imbalanced shares by default) plus a stable appearance
(:mod:`visage_ml.data.synth_identity`). Each identity is photographed several times under
per-image nuisance (:mod:`visage_ml.data.synth_render`): pose, scale and shift, light direction
and level, expression, glasses, occluders, blur, sensor noise, JPEG quality and cluttered
backgrounds. ``group_contrast`` and ``group_difficulty`` make one group's photographs dimmer,
flatter or noisier, planting a known bias that evaluation must find.

Everything is a function of ``(params, seed)``: the same pair gives byte-identical images and
tables. Identities are drawn from per-index random streams, so a larger population extends a
smaller one (the first identities keep their pids and looks).

On disk (:func:`write_synthfaces`)::

    raw_dir/<pid>/<image_id>.png        face photographs, image_size x image_size RGB
                                        (``.sealed``: sealed under the subject's data key)
    raw_dir/subjects.parquet            pid, age, gender, group, n_images
    scenes_dir/<scene_id>.png           frames with 0..n passers-by (not population members;
                                        ``.sealed``: sealed under the ``scenes`` key)
    scenes_dir/scenes.parquet           one row per face, one row per empty scene (see below)

``pid`` is ``p`` + 16 lowercase hex characters, ``image_id`` ``i`` + 12, ``scene_id`` ``s`` + 12.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from isal import isal_zlib
from PIL import Image

from visage_ml.config import GROUPS, SynthDifficulty, SynthParams
from visage_ml.data.synth_identity import Identity, derive_hex, sample_identity
from visage_ml.data.synth_render import (
    View,
    backdrop,
    effective_difficulty,
    finish,
    render,
    sample_view,
)
from visage_ml.io import atomic_write_bytes, fsync_dir
from visage_ml.privacy.datakeys import SUFFIX as SEALED
from visage_ml.privacy.datakeys import DataKeys

__all__ = [
    "GROUPS",
    "SCENE_COLUMNS",
    "SUBJECT_COLUMNS",
    "ConsentPlan",
    "Identity",
    "SynthSummary",
    "consent_plan",
    "encode_png",
    "make_population",
    "photograph",
    "render_face",
    "render_grid",
    "render_scene",
    "write_synthfaces",
]

logger = logging.getLogger(__name__)

# Independent random streams, so that changing one part (say the number of scenes) never
# changes another (the population).
_POPULATION, _COUNTS, _IMAGES, _CONSENT, _SCENES, _GRID = 1, 2, 3, 4, 5, 6

SUBJECT_COLUMNS: tuple[str, ...] = ("pid", "age", "gender", "group", "n_images")
LANDMARK_COLUMNS: tuple[str, ...] = (
    "left_eye_x",
    "left_eye_y",
    "right_eye_x",
    "right_eye_y",
    "nose_x",
    "nose_y",
    "mouth_left_x",
    "mouth_left_y",
    "mouth_right_x",
    "mouth_right_y",
)
SCENE_COLUMNS: tuple[str, ...] = (
    "scene_id",
    "width",
    "height",
    "n_faces",
    "face",
    "x1",
    "y1",
    "x2",
    "y2",
    *LANDMARK_COLUMNS,
    "age",
    "gender",
    "group",
    "yaw",
    "occluder",
)

MSG_EXISTS = (
    "{path} already exists and is not empty; SynthFaces never overwrites data. Remove it "
    "(or `dvc remove` the tracked data set first) or choose another directory, then run again."
)


@dataclass(frozen=True)
class ConsentPlan:
    """Simulated state of a subject at acquisition: consents, restriction, objection."""

    training: bool
    evaluation: bool
    identification: bool
    restricted: bool
    objected: bool


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthfaces` wrote, and the consent plan to register for each pid."""

    n_identities: int
    n_images: int
    n_scenes: int
    consent_plan: dict[str, ConsentPlan]
    # (pid, image_id, sha256 of the PNG, width, height) per image written.
    images: list[tuple[str, str, str, int, int]] = dataclasses.field(default_factory=list)
    # Identities of the population left out (``exclude``: erased subjects).
    excluded: int = 0


# ---------------------------------------------------------------------------------------------
# Population
# ---------------------------------------------------------------------------------------------


def make_population(params: SynthParams, seed: int) -> list[Identity]:
    """Draw the population of ``params.n_identities`` synthetic people.

    Parameters
    ----------
    params
        The ``synth`` section (group shares, female share, age range).
    seed
        Base seed; identity ``i`` uses its own stream ``(seed, i)``.

    Returns
    -------
    list of Identity
        In pid-derivation order; pids are unique, ``p`` + 16 lowercase hex.
    """
    people: list[Identity] = []
    seen: set[str] = set()
    for i in range(params.n_identities):
        rng = np.random.default_rng([seed, _POPULATION, i])
        salt = 0
        pid = "p" + derive_hex("synthfaces", "pid", seed, i, n_hex=16)
        while pid in seen:  # a 64-bit collision: practically never, but pids must be unique
            salt += 1
            pid = "p" + derive_hex("synthfaces", "pid", seed, i, salt, n_hex=16)
        seen.add(pid)
        people.append(sample_identity(rng, params, pid=pid))
    return people


def consent_plan(people: list[Identity], params: SynthParams, seed: int) -> dict[str, ConsentPlan]:
    """Draw each person's simulated consent state at acquisition.

    Parameters
    ----------
    people
        The population (its order fixes the draws).
    params
        The ``synth`` section; ``params.consent`` holds the share of each purpose and state.
    seed
        Base seed.

    Returns
    -------
    dict
        ``pid -> ConsentPlan``; purposes, restriction and objection are independent draws.
    """
    rng = np.random.default_rng([seed, _CONSENT])
    c = params.consent
    shares = np.array([c.training, c.evaluation, c.identification, c.restricted, c.objected])
    plan: dict[str, ConsentPlan] = {}
    for person in people:
        draw = rng.random(5) < shares
        plan[person.pid] = ConsentPlan(*(bool(x) for x in draw))
    return plan


@lru_cache(maxsize=64)
def _group_difficulty(
    difficulty: SynthDifficulty, extra: float
) -> dict[str, float | tuple[int, int]]:
    return effective_difficulty(dataclasses.asdict(difficulty), extra)


def _difficulty(params: SynthParams, group_index: int) -> dict[str, float | tuple[int, int]]:
    # A fresh copy: callers may change it (scenes zero the scale shift).
    return dict(_group_difficulty(params.difficulty, params.group_difficulty[group_index]))


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def photograph(
    identity: Identity,
    *,
    rng: np.random.Generator,
    params: SynthParams,
    size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one photograph of ``identity`` with nuisance drawn from ``rng``, as pixels.

    What :func:`write_synthfaces` stores; :func:`render_face` gives the same as an image.

    Parameters
    ----------
    identity
        The person (from :func:`make_population`).
    rng
        The photograph's random stream; the same stream state gives the same image.
    params
        The ``synth`` section: nuisance strengths and the per-group contrast and difficulty.
    size
        Side in pixels; ``params.image_size`` by default.

    Returns
    -------
    pixels, landmarks
        RGB pixels, ``uint8 (size, size, 3)``, and the true 5x2 landmarks (x, y) in the order
        of :data:`visage_ml.preprocess.TEMPLATE_112`: the subject's right eye (image left),
        left eye, nose tip, right and left mouth corners (image left first).
    """
    g = identity.group_index
    view = sample_view(
        rng,
        _difficulty(params, g),
        appearance=identity.appearance,
        contrast=params.group_contrast[g],
    )
    out = render(identity, view, rng, size=size or params.image_size)
    return out.image, out.landmarks


def render_face(
    identity: Identity,
    *,
    rng: np.random.Generator,
    params: SynthParams,
    size: int | None = None,
) -> tuple[Image.Image, np.ndarray]:
    """:func:`photograph` as an RGB image (same arguments, same landmarks)."""
    pixels, landmarks = photograph(identity, rng=rng, params=params, size=size)
    return Image.fromarray(pixels), landmarks


def encode_png(image: Image.Image | np.ndarray, *, level: int = 1) -> bytes:
    """Encode an RGB image as PNG (``Up`` filter, ISA-L deflate at ``level`` 0-3): lossless.

    Pillow's encoder tries every row filter with full LZ77 matching; for noisy photographs one
    fixed filter and a fast deflate compress as well at a small fraction of the time, which
    keeps SynthFaces generation fast. The output is deterministic.
    """
    if isinstance(image, Image.Image) and image.mode != "RGB":
        image = image.convert("RGB")
    a = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {a.shape}")
    h, w, _ = a.shape
    rows = a.reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # "Up": each byte minus the byte above it (mod 256)
    filtered[0, 0] = 0
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", _deflate(filtered.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def _deflate(data: bytes, level: int) -> bytes:
    """A zlib stream of ``data`` from ISA-L's deflate (``level`` 0-3).

    At level 1 it compresses filtered SynthFaces rows as well as zlib's RLE strategy (about
    33 KB per 160 px face) in a fifth of the time, which was a third of generation time.
    """
    return isal_zlib.compress(data, max(0, min(level, isal_zlib.ISAL_BEST_COMPRESSION)))


def render_scene(
    params: SynthParams, rng: np.random.Generator
) -> tuple[Image.Image, list[dict[str, object]]]:
    """Render one frame of ``params.scene_size`` with 0..n passers-by.

    Passers-by are fresh identities, not population members. Faces get sizes from 24 px to a
    third of the frame's short side, never overlap, and each follows its group's difficulty.

    Returns
    -------
    image, faces
        The frame and one dict per face: ``box`` (x1, y1, x2, y2: forehead to chin, cheek to
        cheek), ``landmarks`` (5x2), ``age``, ``gender``, ``group``, ``yaw`` (degrees) and
        ``occluder``.
    """
    w, h = params.scene_size
    lo, hi = params.faces_per_scene
    wall = backdrop((w, h), params.difficulty.clutter, rng)
    scene = Image.fromarray((wall.transpose(1, 2, 0) + 0.5).astype(np.uint8))
    n_wanted = int(rng.integers(lo, hi + 1))
    short = min(w, h)
    # Face widths, log-uniform; drawn largest last so nearer people overlap farther ones.
    widths = np.sort(
        np.exp(rng.uniform(math.log(24.0), math.log(max(25.0, short / 3.0)), n_wanted))
    )
    taken: list[tuple[float, float, float, float]] = []
    faces: list[dict[str, object]] = []
    for face_w in widths:
        person = sample_identity(rng, params)
        g = person.group_index
        diff = _difficulty(params, g)
        diff["scale_shift"] = 0.0  # placement is the scene's job
        view = sample_view(
            rng, diff, appearance=person.appearance, contrast=params.group_contrast[g]
        )
        view = dataclasses.replace(view, noise=0.0, jpeg_quality=100)  # the camera adds these once
        size = math.ceil(face_w / (0.47 * person.appearance.face_w))
        size = max(24, min(size, short))
        placed = None
        for _ in range(30):
            x0 = int(rng.integers(-size // 8, max(1, w - size + size // 8)))
            y0 = int(rng.integers(-size // 10, max(1, h - size + size // 4)))
            # The box is known only after rendering; place by the nominal face position.
            est = (x0 + 0.27 * size, y0 + 0.2 * size, x0 + 0.73 * size, y0 + 0.85 * size)
            if est[0] < 0 or est[1] < 0 or est[2] > w or est[3] > h:
                continue
            if any(_overlap(est, t) for t in taken):
                continue
            placed = (x0, y0)
            break
        if placed is None:
            continue
        x0, y0 = placed
        # The patch reaches the bottom of the frame, so bodies are not cut mid-frame.
        tall = min(7.5, max(1.0, (h - y0) / size))
        out = render(person, view, rng, size=size, with_mask=True, background=False, tall=tall)
        scene.paste(Image.fromarray(out.image), (x0, y0), out.mask)
        box = (out.box[0] + x0, out.box[1] + y0, out.box[2] + x0, out.box[3] + y0)
        taken.append(box)
        faces.append(
            {
                "box": box,
                "landmarks": out.landmarks + np.array([x0, y0], dtype=np.float64),
                "age": person.age,
                "gender": person.gender,
                "group": person.group,
                "yaw": math.degrees(view.yaw),
                "occluder": view.occluder,
            }
        )
    d = params.difficulty
    q_lo, q_hi = d.jpeg_quality
    camera = View(
        noise=float(rng.uniform(0.0, 1.0)) * 10.0 * d.noise,
        jpeg_quality=int(rng.integers(q_lo, q_hi + 1)),
    )
    return Image.fromarray(finish(scene, None, camera, rng)), faces


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    margin = 0.1 * min(a[2] - a[0], b[2] - b[0])
    return not (
        a[2] + margin <= b[0]
        or b[2] + margin <= a[0]
        or a[3] + margin <= b[1]
        or b[3] + margin <= a[1]
    )


# ---------------------------------------------------------------------------------------------
# Writing the data set
# ---------------------------------------------------------------------------------------------


def _non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet(path: Path, columns: dict[str, list], types: dict[str, object]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, types[name]) for name in columns])
    table = pa.table({k: pa.array(v, type=types[k]) for k, v in columns.items()}, schema=schema)
    pq.write_table(table, path, compression="zstd")
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary sibling of ``target``; removed unless the caller renamed it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path) -> None:
    if target.exists():
        target.rmdir()  # checked empty before generation; rmdir refuses anything else
    os.replace(tmp, target)
    fsync_dir(target.parent)


def write_synthfaces(
    raw_dir: Path,
    scenes_dir: Path,
    params: SynthParams,
    *,
    seed: int,
    progress: bool = True,
    keys: DataKeys | None = None,
    exclude: Collection[str] = (),
) -> SynthSummary:
    """Generate SynthFaces: the population's photographs and the scene frames.

    Everything is built in temporary sibling directories and renamed into place at the end, so
    an interrupted run leaves nothing behind. Files are fsync'd before the rename.

    ``scenes.parquet`` schema (one row per face; a scene without faces has one row with
    ``face = -1`` and nulls in the face columns):

    ==============================  =========  ===============================================
    column                          type       meaning
    ==============================  =========  ===============================================
    scene_id                        string     ``s`` + 12 hex; the frame is ``<scene_id>.png``
                                               (or ``.sealed``)
    width, height                   int32      frame size in pixels
    n_faces                         int32      faces in the frame
    face                            int32      face index within the frame, -1 for none
    x1, y1, x2, y2                  float64    face box: forehead (about the hairline) to chin,
                                               cheek to cheek, pixels
    left_eye_x .. mouth_right_y     float64    true 5 landmarks in TEMPLATE_112 order
    age                             int16      years
    gender                          string     ``female`` / ``male``
    group                           string     ``g1`` .. ``g4``
    yaw                             float64    head turn in degrees (+ = towards image right)
    occluder                        string     ``none``, ``hand``, ``scarf``, ``cap``, ...
    ==============================  =========  ===============================================

    Parameters
    ----------
    raw_dir
        Destination of ``<pid>/<image_id>.png`` and ``subjects.parquet``.
    scenes_dir
        Destination of ``<scene_id>.png`` and ``scenes.parquet``.
    params
        The ``synth`` section.
    seed
        Base seed (``project.seed``).
    progress
        Show a progress bar on stderr.
    keys
        Seal every photograph under its subject's data key (``<image_id>.sealed``) and every
        scene under the ``scenes`` collection key (``<scene_id>.sealed``), as acquisition
        does; None writes plain PNG files (a library user's own folders, benchmarks).
    exclude
        Pids of the population never to write (erased subjects: the population is
        deterministic, so a regeneration would otherwise bring them back).

    Returns
    -------
    SynthSummary
        Counts, the consent plan per pid and one row per image written.

    Raises
    ------
    FileExistsError
        When ``raw_dir`` or ``scenes_dir`` exists and is not empty.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    raw_dir, scenes_dir = Path(raw_dir), Path(scenes_dir)
    for path in (raw_dir, scenes_dir):
        if _non_empty(path):
            raise FileExistsError(MSG_EXISTS.format(path=path))
    people = make_population(params, seed)
    plan = consent_plan(people, params, seed)
    lo, hi = params.images_per_identity
    counts = [
        int(np.random.default_rng([seed, _COUNTS, i]).integers(lo, hi + 1))
        for i in range(len(people))
    ]
    # Indices stay those of the whole population: every kept image is drawn as before.
    skip = set(exclude)
    kept_people = [(i, p, n) for i, (p, n) in enumerate(zip(people, counts, strict=True))]
    kept_people = [(i, p, n) for i, p, n in kept_people if p.pid not in skip]
    plan = {pid: v for pid, v in plan.items() if pid not in skip}
    rows_written: list[tuple[str, str, str, int, int]] = []
    total = sum(n for _, _, n in kept_people) + params.n_scenes
    bar = tqdm(total=total, unit="img", desc="SynthFaces", disable=not progress, leave=False)

    with _staging(raw_dir) as raw_tmp, _staging(scenes_dir) as scenes_tmp:
        seen_ids: set[str] = set()
        for i, person, n_images in kept_people:
            folder = raw_tmp / person.pid
            folder.mkdir(mode=0o700)
            for j in range(n_images):
                image_id = "i" + derive_hex("synthfaces", "image", seed, person.pid, j, n_hex=12)
                salt = 0
                while image_id in seen_ids:
                    salt += 1
                    image_id = "i" + derive_hex(
                        "synthfaces", "image", seed, person.pid, j, salt, n_hex=12
                    )
                seen_ids.add(image_id)
                rng = np.random.default_rng([seed, _IMAGES, i, j])
                pixels, _ = photograph(person, rng=rng, params=params)
                png = encode_png(pixels)
                height, width = pixels.shape[:2]
                sha = hashlib.sha256(png).hexdigest()
                rows_written.append((person.pid, image_id, sha, int(width), int(height)))
                if keys is None:
                    _write_file(folder / f"{image_id}.png", png)
                else:
                    sealed = keys.seal_raw(person.pid, image_id, png)
                    _write_file(folder / f"{image_id}{SEALED}", sealed)
                bar.update(1)
            fsync_dir(folder)
        _write_parquet(
            raw_tmp / "subjects.parquet",
            {
                "pid": [p.pid for _, p, _ in kept_people],
                "age": [p.age for _, p, _ in kept_people],
                "gender": [p.gender for _, p, _ in kept_people],
                "group": [p.group for _, p, _ in kept_people],
                "n_images": [n for _, _, n in kept_people],
            },
            {
                "pid": pa.string(),
                "age": pa.int16(),
                "gender": pa.string(),
                "group": pa.string(),
                "n_images": pa.int32(),
            },
        )
        fsync_dir(raw_tmp)

        rows: dict[str, list] = {c: [] for c in SCENE_COLUMNS}
        for k in range(params.n_scenes):
            scene_id = "s" + derive_hex("synthfaces", "scene", seed, k, n_hex=12)
            frame, faces = render_scene(params, np.random.default_rng([seed, _SCENES, k]))
            if keys is None:
                _write_file(scenes_tmp / f"{scene_id}.png", encode_png(frame))
            else:
                sealed = keys.seal_scene(scene_id, encode_png(frame))
                _write_file(scenes_tmp / f"{scene_id}{SEALED}", sealed)
            _append_scene_rows(rows, scene_id, frame.size, faces)
            bar.update(1)
        _write_parquet(scenes_tmp / "scenes.parquet", rows, _scene_types())
        fsync_dir(scenes_tmp)
        bar.close()

        _publish(scenes_tmp, scenes_dir)
        try:
            _publish(raw_tmp, raw_dir)
        except BaseException:
            # Put the scenes back so that a retry finds both destinations as they were.
            with contextlib.suppress(OSError):
                os.replace(scenes_dir, scenes_tmp)
            raise
    n_images = len(rows_written)
    logger.info(
        "SynthFaces written: %d identities, %d images, %d scenes",
        len(kept_people),
        n_images,
        params.n_scenes,
    )
    return SynthSummary(
        n_identities=len(kept_people),
        n_images=n_images,
        n_scenes=params.n_scenes,
        consent_plan=plan,
        images=rows_written,
        excluded=len(people) - len(kept_people),
    )


def _scene_types() -> dict[str, object]:
    import pyarrow as pa

    types: dict[str, object] = {
        "scene_id": pa.string(),
        "width": pa.int32(),
        "height": pa.int32(),
        "n_faces": pa.int32(),
        "face": pa.int32(),
        "age": pa.int16(),
        "gender": pa.string(),
        "group": pa.string(),
        "yaw": pa.float64(),
        "occluder": pa.string(),
    }
    for name in ("x1", "y1", "x2", "y2", *LANDMARK_COLUMNS):
        types[name] = pa.float64()
    return types


def _append_scene_rows(
    rows: dict[str, list], scene_id: str, size: tuple[int, int], faces: list[dict[str, object]]
) -> None:
    entries: list[dict[str, object] | None] = list(faces) if faces else [None]
    for index, face in enumerate(entries):
        rows["scene_id"].append(scene_id)
        rows["width"].append(size[0])
        rows["height"].append(size[1])
        rows["n_faces"].append(len(faces))
        rows["face"].append(index if face is not None else -1)
        box = face["box"] if face is not None else (None,) * 4
        for name, value in zip(("x1", "y1", "x2", "y2"), box, strict=True):  # type: ignore[arg-type]
            rows[name].append(None if value is None else float(value))
        lms = np.asarray(face["landmarks"]).ravel() if face is not None else [None] * 10
        for name, value in zip(LANDMARK_COLUMNS, lms, strict=True):
            rows[name].append(None if value is None else float(value))
        for name in ("age", "gender", "group", "yaw", "occluder"):
            rows[name].append(face[name] if face is not None else None)


# ---------------------------------------------------------------------------------------------
# Documentation grid
# ---------------------------------------------------------------------------------------------


def render_grid(params: SynthParams, *, seed: int, path: Path) -> None:
    """Write the sample grid shown in the docs (``docs/synthfaces.png``).

    One row per skin-tone group; across a row, people of increasing age (alternating gender)
    under one nuisance each: clean frontal, smile, head turn, side light, glasses or occluder,
    blur and noise, dim light, low JPEG quality.

    Parameters
    ----------
    params
        The ``synth`` section (image size, nuisance strengths).
    seed
        Seed of the people and photographs shown.
    path
        Destination PNG (written atomically).
    """
    size = params.image_size
    cols = 8
    ages = np.linspace(params.age_range[0], params.age_range[1], cols).round().astype(int)
    grid = Image.new("RGB", (cols * size, len(GROUPS) * size), (255, 255, 255))
    for r in range(len(GROUPS)):
        for c in range(cols):
            cell = dataclasses.replace(
                params,
                group_shares=tuple(float(k == r) for k in range(len(GROUPS))),
                female_share=float(c % 2 == 0),
                age_range=(int(ages[c]), int(ages[c])),
            )
            rng = np.random.default_rng([seed, _GRID, r, c])
            person = sample_identity(rng, cell)
            base = sample_view(rng, _difficulty(params, r), appearance=person.appearance)
            view = _grid_view(base, c)
            out = render(person, view, rng, size=size)
            grid.paste(Image.fromarray(out.image), (c * size, r * size))
    buf = io.BytesIO()
    grid.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(Path(path), buf.getvalue())


def _grid_view(base: View, column: int) -> View:
    clean = dataclasses.replace(
        base,
        yaw=0.0,
        pitch=0.0,
        roll=0.0,
        scale=1.0,
        shift=(0.0, 0.0),
        light_side=0.3,
        light_level=1.0,
        expression="neutral",
        expression_amount=0.0,
        blink=False,
        occluder="none",
        blur=0.0,
        noise=1.5,
        jpeg_quality=92,
        contrast=1.0,
        glasses=base.glasses,
    )
    variants = [
        {},
        {"expression": "smile", "expression_amount": 0.9},
        {"yaw": math.radians(24), "pitch": math.radians(-6), "roll": math.radians(5)},
        {"light_side": 1.4, "light_azimuth": 0.2, "ambient": 0.4},
        {"glasses": True, "occluder": "hand", "occluder_amount": 0.5},
        {"blur": 1.3, "noise": 8.0, "roll": math.radians(-12)},
        {"light_level": 0.55, "contrast": 0.6, "expression": "open", "expression_amount": 0.6},
        {
            "jpeg_quality": 18,
            "yaw": math.radians(-18),
            "expression": "surprise",
            "expression_amount": 0.7,
        },
    ]
    return dataclasses.replace(clean, **variants[column % len(variants)])
