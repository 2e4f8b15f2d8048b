"""Reading the prepare stage's outputs: the crops (decrypted into memory) and the manifest.

The training stages read ``data/processed`` through here; :mod:`visage_ml.data.prepare` owns
the layout and writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from visage_ml.config import ProjectPaths
from visage_ml.data.crops import read_crops
from visage_ml.data.prepare import FACES_FILE, MANIFEST_FILE
from visage_ml.data.rawstore import read_images, read_subjects
from visage_ml.io import md5_file
from visage_ml.preprocess import resize_batch
from visage_ml.privacy.datakeys import DataKeys
from visage_ml.privacy.registry import Registry

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("row", "pid", "split", "age", "gender", "group")
# What a split's subjects must still allow: prepare put them there by these purposes.
SPLIT_PURPOSES = {"train": "training", "val": "training", "test": "evaluation"}
MSG_NOT_ALLOWED = (
    "{n} subject(s) of the {splits} split(s) of data/processed may no longer be processed for "
    "{purpose} (consent withdrawn, processing restricted or objected to, or erased since this "
    "data was prepared, or it was restored from an older version): run `dvc repro`, whose "
    "prepare stage leaves them out"
)

MSG_RECTIFIED = (
    "{n} subject(s) of the {splits} split(s) of data/processed have labels or images that "
    "differ from data/raw (rectified since this data was prepared): run `dvc repro`, whose "
    "prepare stage prepares them again from the corrected data"
)
LABELS = ("age", "gender", "group")


class ConsentChangedError(ValueError):
    """``data/processed`` holds subjects the registry no longer allows for the split's use."""


class RectifiedSinceError(ValueError):
    """``data/processed`` holds labels or faces of subjects that were corrected since (Art. 16)."""


@dataclass
class ProcessedData:
    """The prepare stage's faces (in memory) and manifest, with the data md5 for lineage."""

    faces: np.ndarray
    manifest: Any  # pandas.DataFrame
    data_md5: str

    def split(self, name: str) -> Any:
        """Manifest rows of split ``name`` (``train``, ``val``, ``test``), ordered by ``row``."""
        m = self.manifest
        return m[m["split"] == name].sort_values("row").reset_index(drop=True)


def data_md5(paths: ProjectPaths) -> str:
    """md5 of ``faces.sealed`` as it is (DVC's md5 of the file; 0.2 s for the demo's 110 MB).

    Not ``dvc.lock``'s record: a stage run by hand after another prepare, or a file restored
    from an older version, would be trained on one file and recorded as another, and an
    erasure's lineage matches models by this md5.
    """
    return md5_file(paths.processed / FACES_FILE)


def load_processed(
    paths: ProjectPaths,
    *,
    splits: Collection[str] | None = None,
    keys: DataKeys | None = None,
    registry: Registry | None = None,
) -> ProcessedData:
    """Read ``manifest.parquet`` and decrypt the crops into memory, checking both.

    Parameters
    ----------
    paths
        The project.
    splits
        Decrypt only the crops of these splits' subjects (the other rows stay zero): training
        never opens the test subjects. All splits when None.
    keys
        The data keys (opened from ``paths`` when None).
        With ``splits``, every subject of them must also still have, in ``data/raw`` (when it is
        there), the labels and images it was prepared from (:func:`check_current`).
    registry
        The subject registry (opened from ``paths`` when None): with ``splits``, every subject of
        them must still be allowed for the split's purpose (:data:`SPLIT_PURPOSES`) before any
        crop is decrypted, whatever data/processed says (it may be older than a withdrawal).

    Raises
    ------
    ConsentChangedError
        A subject of ``splits`` may no longer be processed for its purpose.
    RectifiedSinceError
        A subject of ``splits`` was rectified since the data was prepared.
    """
    faces_path, manifest_path = paths.processed / FACES_FILE, paths.processed / MANIFEST_FILE
    for p in (faces_path, manifest_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found; run the prepare stage first (`dvc repro prepare`)"
            )
    manifest = pd.read_parquet(manifest_path)
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{manifest_path} lacks columns {missing}; re-run the prepare stage")
    keys = keys if keys is not None else DataKeys.for_project(paths)
    pids = None
    if splits is not None:
        pids = set(manifest.loc[manifest["split"].isin(list(splits)), "pid"].astype(str))
        check_allowed(manifest, splits, registry or Registry.for_project(paths))
        check_current(manifest, splits, paths)
    faces = read_crops(faces_path, keys, manifest, pids=pids)
    rows = manifest["row"].to_numpy()
    if len(rows) and (rows.min() < 0 or rows.max() >= len(faces)):
        raise ValueError(f"{manifest_path} points at rows outside {faces_path}; re-run prepare")
    return ProcessedData(faces=faces, manifest=manifest, data_md5=data_md5(paths))


def check_allowed(manifest: pd.DataFrame, splits: Collection[str], registry: Registry) -> None:
    """Raise :class:`ConsentChangedError` unless the registry still allows every subject of
    ``splits`` for the purpose that put them there."""
    for purpose in sorted({SPLIT_PURPOSES[s] for s in splits if s in SPLIT_PURPOSES}):
        names = [s for s in splits if SPLIT_PURPOSES.get(s) == purpose]
        pids = set(manifest.loc[manifest["split"].isin(names), "pid"].astype(str))
        refused = pids - registry.allowed(purpose)
        if refused:
            raise ConsentChangedError(
                MSG_NOT_ALLOWED.format(n=len(refused), splits="/".join(names), purpose=purpose)
            )


def _same(a: object, b: object) -> bool:
    if pd.isna(a) and pd.isna(b):  # type: ignore[call-overload]
        return True
    if pd.isna(a) or pd.isna(b):  # type: ignore[call-overload]
        return False
    return str(a) == str(b)


def check_current(manifest: pd.DataFrame, splits: Collection[str], paths: ProjectPaths) -> None:
    """Raise :class:`RectifiedSinceError` when a subject of ``splits`` has, in ``data/raw``,
    other labels (``age``, ``gender``, ``group``) or another image (by SHA-256) than
    ``manifest`` was prepared from: a rectification (Art. 16) since ``prepare`` ran, whose old,
    inaccurate values must not be trained or evaluated on.

    Subjects or images that ``data/raw`` does not hold (it may not be checked out where a model
    is trained) are not compared; leaving a subject out is the consent check's business.
    """
    rows = manifest[manifest["split"].isin(list(splits))]
    if rows.empty:
        return
    stale: set[str] = set()
    subjects = read_subjects(paths.raw)
    if len(subjects):
        raw = subjects.drop_duplicates("pid").set_index(subjects["pid"].astype(str))
        first = rows.drop_duplicates("pid")
        for r in first.itertuples(index=False):
            pid = str(r.pid)
            if pid in raw.index and not all(
                _same(getattr(r, c), raw.at[pid, c]) for c in LABELS if c in raw.columns
            ):
                stale.add(pid)
    if "source_sha256" in rows.columns and "image_id" in rows.columns:
        images = read_images(paths.raw)
        if len(images):
            sha = dict(zip(images["image_id"].astype(str), images["sha256"], strict=True))
            for r in rows[["pid", "image_id", "source_sha256"]].itertuples(index=False):
                now = sha.get(str(r.image_id))
                if now is not None and not _same(r.source_sha256, now):
                    stale.add(str(r.pid))
    if stale:
        raise RectifiedSinceError(
            MSG_RECTIFIED.format(n=len(stale), splits="/".join(sorted(set(splits))))
        )


def images_at_size(faces: np.ndarray, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(array, rows)`` the loop reads: the crops themselves when they already have side ``size``,
    else the needed rows resized once (with the same function inference uses) into memory."""
    if faces.shape[1] == size and faces.shape[2] == size:
        return faces, np.asarray(rows, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    unique, inverse = np.unique(rows, return_inverse=True)
    logger.info("resizing %d crops from %d to %d px", len(unique), faces.shape[1], size)
    out = np.empty((len(unique), size, size, 3), dtype=np.uint8)
    for i in range(0, len(unique), 512):
        out[i : i + 512] = resize_batch(np.asarray(faces[unique[i : i + 512]]), size)
    return out, inverse.astype(np.int64)


def train_val_images(
    data: ProcessedData, train: Any, val: Any, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, train_rows, val_rows)``: the array the loop reads and each split's rows in it."""
    rows = np.concatenate([train["row"].to_numpy(), val["row"].to_numpy()])
    images, local = images_at_size(data.faces, rows, size)
    return images, local[: len(train)], local[len(train) :]
