"""I/O shared by the two training stages: processed data, lineage, resume checkpoints, MLflow."""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.config import ProjectPaths
from visage_ml.io import md5_file

logger = logging.getLogger(__name__)

FACES = "faces.u8.npy"
MANIFEST = "manifest.parquet"
REQUIRED_COLUMNS = ("row", "pid", "split", "age", "gender", "group")
# Code whose change makes an old resume checkpoint meaningless (part of its fingerprint).
CODE_FILES = ("training.py", "models/backbones.py", "models/heads.py", "models/demographic.py")


@dataclass
class ProcessedData:
    """The prepare stage's faces (memmap) and manifest, with the data md5 for lineage."""

    faces: np.ndarray
    manifest: Any  # pandas.DataFrame
    data_md5: str

    def split(self, name: str) -> Any:
        """Manifest rows of split ``name`` (``train``, ``val``, ``test``), ordered by ``row``."""
        m = self.manifest
        return m[m["split"] == name].sort_values("row").reset_index(drop=True)


def data_md5(paths: ProjectPaths) -> str:
    """md5 of ``faces.u8.npy``: as ``dvc.lock`` records it for the prepare stage, else computed."""
    import yaml

    faces = paths.processed / FACES
    rel = faces.relative_to(paths.root).as_posix()
    lock = paths.root / "dvc.lock"
    if lock.is_file():
        try:
            doc = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            doc = {}
        stage = (doc.get("stages") or {}).get("prepare") or {}
        for out in stage.get("outs") or []:
            if isinstance(out, dict) and out.get("path") == rel and out.get("md5"):
                return str(out["md5"])
    return md5_file(faces)


def load_processed(paths: ProjectPaths) -> ProcessedData:
    """Open ``faces.u8.npy`` as a memmap and read ``manifest.parquet``, checking both."""
    import pandas as pd

    faces_path, manifest_path = paths.processed / FACES, paths.processed / MANIFEST
    for p in (faces_path, manifest_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found; run the prepare stage first (`dvc repro prepare`)"
            )
    faces = np.load(faces_path, mmap_mode="r")
    if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8:
        raise ValueError(
            f"{faces_path} holds {faces.dtype} {faces.shape}, expected uint8 (N, S, S, 3) crops; "
            "re-run the prepare stage"
        )
    manifest = pd.read_parquet(manifest_path)
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{manifest_path} lacks columns {missing}; re-run the prepare stage")
    rows = manifest["row"].to_numpy()
    if len(rows) and (rows.min() < 0 or rows.max() >= len(faces)):
        raise ValueError(f"{manifest_path} points at rows outside {faces_path}; re-run prepare")
    return ProcessedData(faces=faces, manifest=manifest, data_md5=data_md5(paths))


def images_at_size(faces: np.ndarray, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(array, rows)`` the loop reads: the memmap itself when crops already have side ``size``,
    else the needed rows resized once (with the same function inference uses) into memory."""
    if faces.shape[1] == size and faces.shape[2] == size:
        return faces, np.asarray(rows, dtype=np.int64)
    from visage_ml.preprocess import resize_batch

    rows = np.asarray(rows, dtype=np.int64)
    unique, inverse = np.unique(rows, return_inverse=True)
    logger.info("resizing %d crops from %d to %d px", len(unique), faces.shape[1], size)
    out = np.empty((len(unique), size, size, 3), dtype=np.uint8)
    for i in range(0, len(unique), 512):
        out[i : i + 512] = resize_batch(np.asarray(faces[unique[i : i + 512]]), size)
    return out, inverse.astype(np.int64)


def code_hash() -> str:
    """SHA-256 of the training code that a resume checkpoint's tensors depend on."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in CODE_FILES:
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()


def epoch_logger(
    *,
    kind: str,
    folder: Path,
    fingerprint: str,
    metric_keys: tuple[str, ...],
) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """``on_epoch_end`` callback: save the resume state and log the epoch's metrics to MLflow."""
    from visage_ml.models.checkpoint import save_resume
    from visage_ml.tracking import log_metrics

    def on_epoch_end(record: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        path = save_resume(folder, state, fingerprint=fingerprint)
        logger.info("%s resume checkpoint: %s", kind, path.name)
        log_metrics(
            {k: v for k, v in record.items() if k in metric_keys}, step=int(record["epoch"])
        )

    return on_epoch_end


def start_or_resume(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The matching resume state in ``folder``, or ``None`` after clearing stale ones."""
    from visage_ml.models.checkpoint import clear_resume, load_resume, resume_files

    state = load_resume(folder, fingerprint=fingerprint)
    if state is None and resume_files(folder):
        clear_resume(folder)
    if state is None:
        logger.info("training from scratch (no matching resume checkpoint in %s)", folder)
    return state


def train_val_images(
    data: ProcessedData, train: Any, val: Any, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, train_rows, val_rows)``: the array the loop reads and each split's rows in it."""
    rows = np.concatenate([train["row"].to_numpy(), val["row"].to_numpy()])
    images, local = images_at_size(data.faces, rows, size)
    return images, local[: len(train)], local[len(train) :]


def resume_point(
    paths: ProjectPaths, kind: str, section: Mapping[str, Any], data_md5: str, seed: int
) -> tuple[str, Path, dict[str, Any] | None]:
    """``(fingerprint, folder, state)`` of ``kind``'s resume checkpoints for these settings."""
    from visage_ml.models.checkpoint import fingerprint

    fp = fingerprint({**section, "code": code_hash()}, data_md5, seed=seed)
    folder = paths.models / "checkpoints" / kind
    return fp, folder, start_or_resume(folder, fp)


def loop_config(p: Any, *, seed: int, progress: bool, desc: str, **extra: Any) -> Any:
    """The training loop's settings from a ``train_*`` params section (plus ``extra`` fields)."""
    from visage_ml.training import AugmentConfig, LoopConfig

    return LoopConfig(
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        weight_decay=p.weight_decay,
        warmup_epochs=p.warmup_epochs,
        patience=p.early_stopping_patience,
        augment=AugmentConfig(
            flip=p.augment.flip,
            color_jitter=p.augment.color_jitter,
            crop_scale=tuple(p.augment.crop_scale),
        ),
        device=p.device,
        precision=p.precision,
        max_minutes=p.max_minutes,
        seed=seed,
        progress=progress,
        desc=desc,
        **extra,
    )


def save_outputs(
    paths: ProjectPaths,
    *,
    stage: str,
    kind: str,
    payload: Mapping[str, Any],
    report: Mapping[str, Any],
    result: Any,
) -> None:
    """Inside the stage's MLflow run: write the model and the report, log metrics and tags."""
    import mlflow

    from visage_ml.io import atomic_write_json
    from visage_ml.models.checkpoint import save_checkpoint
    from visage_ml.tracking import log_metrics

    save_checkpoint(paths.models / f"{kind}.pt", dict(payload))
    atomic_write_json(paths.reports / f"{stage}.json", dict(report))
    log_metrics({k: v for k, v in report.items() if isinstance(v, int | float)})
    mlflow.set_tags(
        {
            "visage.model_version": payload["model_version"],
            "visage.stopped": result.stopped,
            "visage.device": result.device,
        }
    )


def stage_main(run: Callable[..., Any]) -> int:
    """Entry point of a training stage: log to stderr, map bad input to exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Progress bars only on a terminal: in logs (CI, dvc repro > file) they are noise.
        run(progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0
