"""The evaluation-only population: synthetic people no model ever trains on, balanced per
skin-tone group x gender, so that fairness is decided on enough people.

A project's test split holds whoever consented to evaluation, in the shares of acquisition: with
SynthFaces' defaults a few dark-skinned identities, too few to tell a differential from noise.
This module renders a separate population, ``identities_per_cell +
calibration_identities_per_cell`` identities in each of the eight group x gender cells, from its
own seed (``eval_population.seed``; the training population is drawn from ``project.seed``), each
photographed ``images_per_identity`` times with the ``synth`` nuisance, and detects and aligns
them as ``prepare`` does (MTCNN, the 5-point template). Evaluation embeds them with the
exported ONNX models.

**These are synthetic people, not data subjects.** Nobody consented because nobody exists: they
are not in ``data/raw``, the consent snapshot, the privacy registry or ledger, the gallery or any
training split, and their ids (``e`` + 16 hex) are not pids (``p`` + 16 hex), so no command
that takes a pid accepts one. Their crops are still sealed at rest (``faces.sealed``, the
``eval-population`` collection key, as the scene frames' passers-by are): face pixels are never
written in clear, whoever they show.

Layout of ``data/eval_population`` (:data:`FILES`)::

    faces.sealed        (N, S, S, 3) uint8 aligned crops of the detected images (.npy bytes,
                        sealed under the collection key; row i = manifest row i)
    manifest.parquet    one row per detected image: row, pid (the synthetic id), image_id,
                        group, gender, age, part (measure | calibration), source, role,
                        det_prob, fallback
    detection.parquet   one row per rendered image: detected, group, gender, image_id, split,
                        source, fallback (the detector's misses per group)
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from visage_ml.config import GENDERS, GROUPS, EvalPopulationParams, PrepareParams, SynthParams
from visage_ml.data.detect import FaceDetector, detect_and_align
from visage_ml.data.synth import make_population, photograph
from visage_ml.data.synth_identity import Identity, derive_hex
from visage_ml.io import atomic_write_bytes, private_dir
from visage_ml.privacy.datakeys import DataKeys

logger = logging.getLogger(__name__)

SOURCE = "synthfaces:evaluation"
ROLE = "evaluation"
MEASURE, CALIBRATION = "measure", "calibration"
PARTS: tuple[str, ...] = (MEASURE, CALIBRATION)
# The DataKeys collection the crops are sealed under (no registered subject owns them).
COLLECTION = "eval-population"
SEALED_ROLE = "eval-crops"
FACES_FILE = "faces.sealed"
MANIFEST_FILE = "manifest.parquet"
DETECTION_FILE = "detection.parquet"
FILES: tuple[str, ...] = (FACES_FILE, MANIFEST_FILE, DETECTION_FILE)
# Random streams of the population (as SynthFaces' own: identities, then images).
_IMAGES = 3
MANIFEST_COLUMNS: tuple[str, ...] = (
    "row",
    "pid",
    "image_id",
    "group",
    "gender",
    "age",
    "part",
    "source",
    "role",
    "det_prob",
    "fallback",
)

MSG_MISSING = "{path} is missing: the evaluation population is made by `dvc repro eval_population`"
MSG_ROWS = (
    "{manifest} lists {rows} crops but {faces} holds {found}: they are from different runs; "
    "re-run `dvc repro eval_population`"
)
MSG_EMPTY = (
    "eval_population asks for no identities (identities_per_cell and "
    "calibration_identities_per_cell are 0); set them in params.yaml"
)


@dataclass(frozen=True)
class Member:
    """One synthetic identity of the population (not a data subject)."""

    pid: str  # ``e`` + 16 hex: a synthetic id, never a pid
    cell_seed: int
    index: int  # within its cell
    part: str
    identity: Identity


@dataclass
class Population:
    """The population's aligned crops (in memory) with their rows and the detector's outcome."""

    faces: np.ndarray
    manifest: pd.DataFrame
    detection: pd.DataFrame

    def part(self, name: str) -> pd.DataFrame:
        """Manifest rows of ``part`` ``name`` (``measure`` or ``calibration``), by row."""
        m = self.manifest
        return m[m["part"] == name].sort_values("row").reset_index(drop=True)


def cell_seed(seed: int, group: str, gender: str) -> int:
    """The seed of one group x gender cell: its own stream, never ``project.seed``'s."""
    return int(derive_hex("synthfaces-eval", "cell", seed, group, gender, n_hex=15), 16)


def design(params: EvalPopulationParams, synth: SynthParams) -> list[Member]:
    """Every identity of the population, cell by cell (deterministic in ``params.seed``).

    Each cell is a :func:`visage_ml.data.synth.make_population` with that group's share set
    to 1 and the female share to 1 or 0, so the people look like the acquisition population
    of that cell (same appearance model, age range and nuisance).
    """
    n_cal = params.calibration_identities_per_cell
    n = params.identities_per_cell + n_cal
    if n == 0:
        raise ValueError(MSG_EMPTY)
    members: list[Member] = []
    for gi, group in enumerate(GROUPS):
        for gender in GENDERS:
            seed = cell_seed(params.seed, group, gender)
            shares = tuple(1.0 if j == gi else 0.0 for j in range(len(GROUPS)))
            cell = dataclasses.replace(
                synth,
                n_identities=n,
                group_shares=shares,
                female_share=1.0 if gender == GENDERS[0] else 0.0,
            )
            for k, person in enumerate(make_population(cell, seed)):
                pid = "e" + derive_hex("synthfaces-eval", "id", seed, k, n_hex=16)
                part = CALIBRATION if k < n_cal else MEASURE
                members.append(Member(pid, seed, k, part, person))
    return members


def photographs(
    members: list[Member], params: EvalPopulationParams, synth: SynthParams
) -> Iterator[tuple[Member, str, np.ndarray]]:
    """``(member, image_id, RGB pixels)`` of every photograph, in a fixed order."""
    for m in members:
        for j in range(params.images_per_identity):
            rng = np.random.default_rng([m.cell_seed, _IMAGES, m.index, j])
            pixels, _ = photograph(m.identity, rng=rng, params=synth)
            image_id = "i" + derive_hex("synthfaces-eval", "image", m.pid, j, n_hex=12)
            yield m, image_id, pixels


def build(
    params: EvalPopulationParams,
    synth: SynthParams,
    prepare: PrepareParams,
    *,
    detector_factory: Callable[..., Any] = FaceDetector,
    progress: bool = False,
) -> tuple[Population, dict[str, Any]]:
    """Render, detect and align the population in memory.

    Parameters
    ----------
    params
        The ``eval_population`` section.
    synth
        Nuisance, image size and appearance (the ``synth`` section).
    prepare
        Detection and alignment as the pipeline does it (``image_size``, ``min_face_prob``,
        ``min_face_size``, ``detect_batch``, ``device``).
    detector_factory
        Makes the face detector (``device``, ``min_face_size``).
    progress
        Show a progress bar.

    Returns
    -------
    Population, dict
        The crops with their manifest and detection table, and a summary (counts per cell and
        part, misses, seconds).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    members = design(params, synth)
    detector = detector_factory(device=prepare.device, min_face_size=prepare.min_face_size)
    total = len(members) * params.images_per_identity
    bar = tqdm(total=total, desc="eval population", unit="img", disable=not progress)
    crops: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    det_rows: list[dict[str, Any]] = []
    batch: list[tuple[Member, str, np.ndarray]] = []
    render_s = detect_s = 0.0

    def flush() -> None:
        nonlocal detect_s
        t = time.perf_counter()
        aligned, found = detect_and_align(
            detector,
            [px for _, _, px in batch],
            size=prepare.image_size,
            min_prob=prepare.min_face_prob,
        )
        detect_s += time.perf_counter() - t
        for (m, image_id, _), crop, det in zip(batch, aligned, found, strict=True):
            person = m.identity
            det_rows.append(
                {
                    "detected": det is not None,
                    "group": person.group,
                    "gender": person.gender,
                    "image_id": image_id,
                    "split": "test",
                    "source": SOURCE,
                    "fallback": False,
                    "part": m.part,
                }
            )
            if det is None:
                continue
            rows.append(
                {
                    "row": len(rows),
                    "pid": m.pid,
                    "image_id": image_id,
                    "group": person.group,
                    "gender": person.gender,
                    "age": person.age,
                    "part": m.part,
                    "source": SOURCE,
                    "role": ROLE,
                    "det_prob": float(det.prob),
                    "fallback": False,
                }
            )
            crops.append(crop)
        bar.update(len(batch))
        batch.clear()

    t = time.perf_counter()
    for item in photographs(members, params, synth):
        batch.append(item)
        if len(batch) >= prepare.detect_batch:
            render_s += time.perf_counter() - t
            flush()
            t = time.perf_counter()
    render_s += time.perf_counter() - t
    if batch:
        flush()
    bar.close()
    size = prepare.image_size
    faces = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    manifest = _typed(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)))
    detection = pd.DataFrame(det_rows)
    population = Population(faces=faces, manifest=manifest, detection=detection)
    return population, summary(
        population, params, seconds=time.perf_counter() - t0, render_s=render_s, detect_s=detect_s
    )


def _typed(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.astype(
        {
            "row": "int64",
            "age": "Int16",
            "gender": "string",
            "group": "string",
            "source": "string",
            "role": "string",
            "part": "string",
            "fallback": "bool",
        }
    )


def summary(
    population: Population,
    params: EvalPopulationParams,
    *,
    seconds: float = 0.0,
    render_s: float = 0.0,
    detect_s: float = 0.0,
) -> dict[str, Any]:
    """Counts per part and cell, detector misses per group, and the time taken."""
    m, det = population.manifest, population.detection
    ids = m.drop_duplicates("pid")
    cells = {
        part: {
            f"{g}_{s}": int(
                ((ids["part"] == part) & (ids["group"] == g) & (ids["gender"] == s)).sum()
            )
            for g in GROUPS
            for s in GENDERS
        }
        for part in PARTS
    }
    measured = ids[ids["part"] == MEASURE]
    miss = {}
    if len(det):
        grouped = det.assign(missed=~det["detected"].astype(bool)).groupby("group")["missed"]
        miss = {str(g): round(float(v), 4) for g, v in grouped.mean().items()}
    return {
        "note": "synthetic people, not data subjects: never trained on, never enrolled",
        "seed": params.seed,
        "identities": len(ids),
        "identities_measured": len(measured),
        "identities_calibration": int(len(ids) - len(measured)),
        "identities_measured_by_group": {g: int((measured["group"] == g).sum()) for g in GROUPS},
        "identities_by_cell": cells,
        "images_rendered": len(det),
        "images_aligned": len(m),
        "miss_rate_by_group": miss,
        "seconds": round(seconds, 2),
        "render_seconds": round(render_s, 2),
        "detect_seconds": round(detect_s, 2),
    }


def _header() -> dict[str, str]:
    return {"role": SEALED_ROLE, "collection": COLLECTION, "id": FACES_FILE}


def write(directory: Path, keys: DataKeys, population: Population) -> None:
    """Write :data:`FILES` into ``directory`` (0700): crops sealed, tables 0600, atomically."""
    folder = private_dir(Path(directory))
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(population.faces, dtype=np.uint8), allow_pickle=False)
    atomic_write_bytes(folder / FACES_FILE, keys.seal(_header(), buf.getvalue()), mode=0o600)
    for name, frame in (
        (MANIFEST_FILE, population.manifest),
        (DETECTION_FILE, population.detection),
    ):
        out = io.BytesIO()
        frame.to_parquet(out, index=False)
        atomic_write_bytes(folder / name, out.getvalue(), mode=0o600)


def read(directory: Path, keys: DataKeys) -> Population:
    """The population written by :func:`write`, crops decrypted into memory.

    Raises
    ------
    FileNotFoundError
        A file is missing (run ``dvc repro eval_population``).
    ValueError
        The crops were altered or sealed as another file, or do not match the manifest.
    """
    folder = Path(directory)
    for name in FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(MSG_MISSING.format(path=folder / name))
    plain = keys.open_file(folder / FACES_FILE, expect=_header())
    faces = np.load(io.BytesIO(plain), allow_pickle=False)
    manifest = pd.read_parquet(folder / MANIFEST_FILE)
    if len(manifest) != len(faces) or (
        len(manifest) and not np.array_equal(manifest["row"].to_numpy(), np.arange(len(faces)))
    ):
        raise ValueError(
            MSG_ROWS.format(
                manifest=MANIFEST_FILE, rows=len(manifest), faces=FACES_FILE, found=len(faces)
            )
        )
    return Population(
        faces=faces, manifest=manifest, detection=pd.read_parquet(folder / DETECTION_FILE)
    )
