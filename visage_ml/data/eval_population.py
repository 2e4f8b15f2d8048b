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

The same machinery renders the demographic model's synthetic *training* people
(:data:`TRAINING`, the ``demographic_population`` stage, ``data/demographic_population``): another
seed, another id namespace (``d`` + 16 hex), part ``train``, sealed under another collection key,
so neither population's files open as the other's.

Layout of ``data/eval_population`` (:data:`FILES`)::

    faces.sealed        (N, S, S, 3) uint8 aligned crops of the detected images (.npy bytes,
                        sealed under the collection key; row i = manifest row i)
    manifest.parquet    one row per detected image: row, pid (the synthetic id), image_id,
                        group, gender, age, part (measure | calibration), source, role,
                        det_prob, fallback
    detection.parquet   one row per rendered image: detected, group, gender, image_id, split,
                        source, fallback, part, pid (the detector's misses per group and
                        person: the intervals resample people)
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

from visage_ml.config import (
    GENDERS,
    GROUPS,
    DemographicPopulationParams,
    EvalPopulationParams,
    PrepareParams,
    SynthParams,
)
from visage_ml.data.detect import FaceDetector, detect_and_align
from visage_ml.data.synth import make_population, photograph
from visage_ml.data.synth_identity import Identity, derive_hex
from visage_ml.io import atomic_write_bytes, private_dir
from visage_ml.privacy.datakeys import DataKeys

logger = logging.getLogger(__name__)

SOURCE = "synthfaces:evaluation"
ROLE = "evaluation"
MEASURE, CALIBRATION, TRAIN = "measure", "calibration", "train"
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

MSG_MISSING = "{path} is missing: the {what} is made by `dvc repro {stage}`"
MSG_ROWS = (
    "{manifest} lists {rows} crops but {faces} holds {found}: they are from different runs; "
    "re-run `dvc repro {stage}`"
)
MSG_FOREIGN = (
    "{path} holds rows that are not the {what} (source {found!r}, expected {expected!r}): the "
    "files were copied from another population; re-run `dvc repro {stage}`"
)
MSG_EMPTY = (
    "eval_population asks for no identities (identities_per_cell and "
    "calibration_identities_per_cell are 0); set them in params.yaml"
)


@dataclass(frozen=True)
class Purpose:
    """What a synthetic population is for: its id namespace, labels, sealing and stage."""

    what: str  # in messages
    namespace: str  # derive_hex namespace of its cells, ids and images
    id_prefix: str  # first letter of its synthetic ids (never ``p``: not pids)
    source: str
    role: str
    split: str  # the split its rows record in detection.parquet
    part: str  # the part of its identities beyond the calibration ones
    parts: tuple[str, ...]
    collection: str  # DataKeys collection the crops are sealed under
    sealed_role: str
    stage: str  # the DVC stage that makes it


EVALUATION = Purpose(
    what="evaluation population",
    namespace="synthfaces-eval",
    id_prefix="e",
    source=SOURCE,
    role=ROLE,
    split="test",
    part=MEASURE,
    parts=PARTS,
    collection=COLLECTION,
    sealed_role=SEALED_ROLE,
    stage="eval_population",
)
# The demographic model's synthetic training people: never evaluated, never the above.
TRAINING = Purpose(
    what="demographic training population",
    namespace="synthfaces-demographic-training",
    id_prefix="d",
    source="synthfaces:demographic-training",
    role="training",
    split="train",
    part=TRAIN,
    parts=(TRAIN,),
    collection="demographic-population",
    sealed_role="demographic-crops",
    stage="demographic_population",
)
PopulationParams = EvalPopulationParams | DemographicPopulationParams


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


def cell_seed(seed: int, group: str, gender: str, *, purpose: Purpose | None = None) -> int:
    """The seed of one group x gender cell: its own stream, never ``project.seed``'s."""
    namespace = (purpose or EVALUATION).namespace
    return int(derive_hex(namespace, "cell", seed, group, gender, n_hex=15), 16)


def design(
    params: PopulationParams, synth: SynthParams, *, purpose: Purpose | None = None
) -> list[Member]:
    """Every identity of the population, cell by cell (deterministic in ``params.seed``).

    Each cell is a :func:`visage_ml.data.synth.make_population` with that group's share set
    to 1 and the female share to 1 or 0, so the people look like the acquisition population
    of that cell (same appearance model, age range and nuisance). ``purpose`` (default
    :data:`EVALUATION`) sets the id namespace and the part of the identities.
    """
    purpose = purpose or EVALUATION
    n_cal = getattr(params, "calibration_identities_per_cell", 0)
    n = params.identities_per_cell + n_cal
    if n == 0:
        if purpose is EVALUATION:
            raise ValueError(MSG_EMPTY)
        return []  # no synthetic training people: the demographic model trains on data alone
    members: list[Member] = []
    for gi, group in enumerate(GROUPS):
        for gender in GENDERS:
            seed = cell_seed(params.seed, group, gender, purpose=purpose)
            shares = tuple(1.0 if j == gi else 0.0 for j in range(len(GROUPS)))
            cell = dataclasses.replace(
                synth,
                n_identities=n,
                group_shares=shares,
                female_share=1.0 if gender == GENDERS[0] else 0.0,
            )
            for k, person in enumerate(make_population(cell, seed)):
                pid = purpose.id_prefix + derive_hex(purpose.namespace, "id", seed, k, n_hex=16)
                part = CALIBRATION if k < n_cal else purpose.part
                members.append(Member(pid, seed, k, part, person))
    return members


def photographs(
    members: list[Member],
    params: PopulationParams,
    synth: SynthParams,
    *,
    purpose: Purpose | None = None,
) -> Iterator[tuple[Member, str, np.ndarray]]:
    """``(member, image_id, RGB pixels)`` of every photograph, in a fixed order."""
    namespace = (purpose or EVALUATION).namespace
    for m in members:
        for j in range(params.images_per_identity):
            rng = np.random.default_rng([m.cell_seed, _IMAGES, m.index, j])
            pixels, _ = photograph(m.identity, rng=rng, params=synth)
            image_id = "i" + derive_hex(namespace, "image", m.pid, j, n_hex=12)
            yield m, image_id, pixels


def build(
    params: PopulationParams,
    synth: SynthParams,
    prepare: PrepareParams,
    *,
    detector_factory: Callable[..., Any] = FaceDetector,
    progress: bool = False,
    purpose: Purpose | None = None,
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
    purpose
        :data:`EVALUATION` (default) or :data:`TRAINING`.

    Returns
    -------
    Population, dict
        The crops with their manifest and detection table, and a summary (counts per cell and
        part, misses, seconds).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    purpose = purpose or EVALUATION
    members = design(params, synth, purpose=purpose)
    detector = detector_factory(device=prepare.device, min_face_size=prepare.min_face_size)
    total = len(members) * params.images_per_identity
    bar = tqdm(total=total, desc=purpose.what, unit="img", disable=not progress)
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
            look_again=prepare.second_look,
        )
        detect_s += time.perf_counter() - t
        for (m, image_id, _), crop, det in zip(batch, aligned, found, strict=True):
            person = m.identity
            det_rows.append(
                {
                    "detected": det is not None,
                    "second_look": det is not None and det.view != "direct",
                    "group": person.group,
                    "gender": person.gender,
                    "image_id": image_id,
                    "split": purpose.split,
                    "source": purpose.source,
                    "fallback": False,
                    "part": m.part,
                    "pid": m.pid,
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
                    "source": purpose.source,
                    "role": purpose.role,
                    "det_prob": float(det.prob),
                    "fallback": False,
                }
            )
            crops.append(crop)
        bar.update(len(batch))
        batch.clear()

    t = time.perf_counter()
    for item in photographs(members, params, synth, purpose=purpose):
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
        population,
        params,
        seconds=time.perf_counter() - t0,
        render_s=render_s,
        detect_s=detect_s,
        purpose=purpose,
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
    params: PopulationParams,
    *,
    seconds: float = 0.0,
    render_s: float = 0.0,
    detect_s: float = 0.0,
    purpose: Purpose | None = None,
) -> dict[str, Any]:
    """Counts per part and cell, detector misses per group, and the time taken."""
    purpose = purpose or EVALUATION
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
        for part in purpose.parts
    }
    miss = {}
    second = {}
    if len(det):
        grouped = det.assign(missed=~det["detected"].astype(bool)).groupby("group")["missed"]
        miss = {str(g): round(float(v), 4) for g, v in grouped.mean().items()}
        if "second_look" in det:
            found = det.groupby("group")["second_look"].sum()
            second = {str(g): int(v) for g, v in found.items()}
    counts: dict[str, Any]
    if purpose is EVALUATION:
        measured = ids[ids["part"] == MEASURE]
        note = "synthetic people, not data subjects: never trained on, never enrolled"
        counts = {
            "identities_measured": len(measured),
            "identities_calibration": int(len(ids) - len(measured)),
            "identities_measured_by_group": {
                g: int((measured["group"] == g).sum()) for g in GROUPS
            },
        }
    else:
        note = "synthetic people, not data subjects: trained on, never evaluated, never enrolled"
        counts = {"identities_by_group": {g: int((ids["group"] == g).sum()) for g in GROUPS}}
    return {
        "note": note,
        "seed": params.seed,
        "identities": len(ids),
        **counts,
        "identities_by_cell": cells,
        "images_rendered": len(det),
        "images_aligned": len(m),
        "miss_rate_by_group": miss,
        "second_look_found_by_group": second,
        "seconds": round(seconds, 2),
        "render_seconds": round(render_s, 2),
        "detect_seconds": round(detect_s, 2),
    }


def _header(purpose: Purpose) -> dict[str, str]:
    return {"role": purpose.sealed_role, "collection": purpose.collection, "id": FACES_FILE}


def write(
    directory: Path, keys: DataKeys, population: Population, *, purpose: Purpose | None = None
) -> None:
    """Write :data:`FILES` into ``directory`` (0700): crops sealed, tables 0600, atomically."""
    folder = private_dir(Path(directory))
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(population.faces, dtype=np.uint8), allow_pickle=False)
    header = _header(purpose or EVALUATION)
    atomic_write_bytes(folder / FACES_FILE, keys.seal(header, buf.getvalue()), mode=0o600)
    for name, frame in (
        (MANIFEST_FILE, population.manifest),
        (DETECTION_FILE, population.detection),
    ):
        out = io.BytesIO()
        frame.to_parquet(out, index=False)
        atomic_write_bytes(folder / name, out.getvalue(), mode=0o600)


def read(directory: Path, keys: DataKeys, *, purpose: Purpose | None = None) -> Population:
    """The population written by :func:`write`, crops decrypted into memory.

    ``purpose`` (default :data:`EVALUATION`) must be the one it was written for: the crops of
    one population do not open as the other's, and manifest rows of another source are refused.

    Raises
    ------
    FileNotFoundError
        A file is missing (run ``dvc repro eval_population`` or ``demographic_population``).
    ValueError
        The crops were altered or sealed as another file, do not match the manifest, or the
        manifest lists rows of another population.
    """
    purpose = purpose or EVALUATION
    folder = Path(directory)
    for name in FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(
                MSG_MISSING.format(path=folder / name, what=purpose.what, stage=purpose.stage)
            )
    plain = keys.open_file(folder / FACES_FILE, expect=_header(purpose))
    faces = np.load(io.BytesIO(plain), allow_pickle=False)
    manifest = pd.read_parquet(folder / MANIFEST_FILE)
    sources = set(manifest["source"].astype(str)) | set(
        manifest["pid"].astype(str).str[:1].map({purpose.id_prefix: purpose.source}).fillna("?")
    )
    foreign = sorted(sources - {purpose.source})
    if foreign:
        raise ValueError(
            MSG_FOREIGN.format(
                path=folder / MANIFEST_FILE,
                what=purpose.what,
                found=foreign[0],
                expected=purpose.source,
                stage=purpose.stage,
            )
        )
    if len(manifest) != len(faces) or (
        len(manifest) and not np.array_equal(manifest["row"].to_numpy(), np.arange(len(faces)))
    ):
        raise ValueError(
            MSG_ROWS.format(
                manifest=MANIFEST_FILE,
                rows=len(manifest),
                faces=FACES_FILE,
                found=len(faces),
                stage=purpose.stage,
            )
        )
    return Population(
        faces=faces, manifest=manifest, detection=pd.read_parquet(folder / DETECTION_FILE)
    )
