"""The processed data: purpose filter, MTCNN detection + alignment, identity-disjoint splits.

This module owns the layout of ``data/processed`` (:data:`PROCESSED_FILES`): :func:`prepare`
writes it from ``data/raw`` and the consent snapshot (aligned crops sealed per subject in
``faces.sealed``, see :mod:`visage_ml.data.crops`; ``manifest.parquet``,
``detection.parquet``, ``splits.json``, and the report ``reports/prepare.json``);
:func:`purge_subject` takes one subject out of it in place, and
:func:`files_naming` / :func:`leftover_files` say what of it holds a subject or was left by an
interrupted run. The ``prepare`` stage and an erasure's rebuild both call :func:`prepare`.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

from visage_ml.config import PURPOSES, Params, ProjectPaths
from visage_ml.data.crops import CropWriter, purge_chunks
from visage_ml.data.detect import FaceDetector, center_crop, detect_and_align
from visage_ml.data.manifest import (
    MANIFEST_COLUMNS,
    SPLITS,
    UNLABELED,
    assign_splits,
    inventory,
    label_coverage,
    parquet_names,
    purpose_filter,
    read_subjects,
    source_summary,
    usable_splits,
)
from visage_ml.data.rawstore import (
    PLAIN_EXTS,
    check_checked_out,
    frame_parquet_bytes,
    read_raw_image,
)
from visage_ml.io import (
    NONCE_KEY,
    atomic_write_bytes,
    atomic_write_json,
    private_dir,
    secure_unlink,
    sha256_bytes,
    version_nonce,
)
from visage_ml.privacy.datakeys import DataKeys, SealedFileError
from visage_ml.privacy.registry import UNKNOWN, Registry
from visage_ml.privacy.snapshot import read_snapshot

log = logging.getLogger(__name__)

FACES_FILE = "faces.sealed"
# The plaintext crop array of projects from before sealing: removed by prepare and by
# `visage privacy seal`.
LEGACY_FACES_FILE = "faces.u8.npy"
NO_DATA_KEY = "no_data_key"
MANIFEST_FILE = "manifest.parquet"
DETECTION_FILE = "detection.parquet"
SPLITS_FILE = "splits.json"
PROCESSED_FILES: tuple[str, ...] = (FACES_FILE, MANIFEST_FILE, DETECTION_FILE, SPLITS_FILE)
REPORT_FILE = "prepare.json"
# Temporary files of a run (or purge) that was killed: the crop writer's ``.faces.sealed.<pid>
# .tmp`` (ciphertext), an older version's ``.faces.all.<pid>.tmp`` and the staging files of
# atomic writes. They may hold anyone's crops.
LEFTOVER_GLOB = ".*.tmp"

MSG_SNAPSHOT_WIDER = (
    "%s allows %d subject-purpose pair(s) that the ledger does not (the file was edited, or a "
    "command stopped before refreshing it); they are left out. Run `visage privacy snapshot` "
    "to rewrite it from the ledger"
)
# What prepare would do without photographs data/raw lists (rawstore.check_images).
EFFECT_PREPARED = "data/processed would be built without them, the data set one part short"
MSG_RAW_IMAGE = (
    "{path} cannot be read as an image ({reason}): data/raw was changed outside visage-ml. "
    "Restore it (`dvc checkout data/raw`) or re-import the subject's images, then run again"
)


def open_raw_image(path: Path, root: Path, keys: DataKeys) -> tuple[Image.Image, bytes]:
    """One sealed ``data/raw`` image decrypted in memory: (RGB image, its PNG bytes).

    A file that is not a sealed image of the subject and image id its path names, or that does
    not decode, raises a ``ValueError`` naming the file (pid and image id).
    """
    try:
        shown = path.relative_to(root).as_posix()
    except ValueError:
        shown = str(path)
    try:
        png = read_raw_image(keys, path)
    except SealedFileError as exc:
        # Altered, truncated or moved ciphertext: as damaged as a broken image.
        raise ValueError(MSG_RAW_IMAGE.format(path=shown, reason=type(exc).__name__)) from None
    try:
        with Image.open(io.BytesIO(png)) as im:
            return im.convert("RGB"), png
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ValueError(MSG_RAW_IMAGE.format(path=shown, reason=type(exc).__name__)) from None


def prepare(
    paths: ProjectPaths,
    params: Params,
    *,
    progress: bool = False,
    detector_factory: Callable[..., Any] = FaceDetector,
    keys: DataKeys | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Write ``data/processed`` and ``reports/prepare.json`` for the project at ``paths``.

    Raw images are decrypted in memory and the crops sealed per subject as they are made
    (:mod:`visage_ml.data.crops`): no face is written in clear. Subjects without a data key
    (erased, or restored from a backup after their key was destroyed) are left out with reason
    ``no_data_key``, like subjects the consent snapshot excludes.

    Parameters
    ----------
    paths
        The project.
    params
        Its parameters (``project``, ``prepare``).
    progress
        Show a progress bar (on a terminal).
    detector_factory
        Makes the face detector from ``device`` and ``min_face_size`` (``params.prepare``),
        once the inputs were read.
    keys
        The project's data keys (opened from ``paths`` when None).
    registry
        The project's subject registry (opened from ``paths`` when None). A subject the
        snapshot allows is used only when the registry, the fold of the verified ledger,
        allows it too: an edited ``consents.parquet`` lets nobody in.

    Returns
    -------
    dict
        The report written to ``reports/prepare.json``.

    Raises
    ------
    FileNotFoundError
        ``data/raw`` or the consent snapshot is missing.
    RawDataMissingError
        A table of ``data/raw`` is not there though rows are expected in it (DVC tracks it, or
        the other table is there: :func:`~visage_ml.data.rawstore.check_tables`), or
        photographs the tables list are not there though DVC's record of ``data/raw`` holds
        them (:func:`~visage_ml.data.rawstore.check_images`); the message says to run
        ``dvc checkout data/raw``.
    ValueError
        A raw image cannot be read, or is a plaintext file (run ``visage privacy seal``).
    LedgerError
        The ledger does not verify (the registry refuses it).
    """
    pp = params.prepare
    t0 = time.perf_counter()
    keys = keys if keys is not None else DataKeys.for_project(paths)

    # Not from a data/raw that is not checked out (or cut short): the advice to acquire data
    # would write it anew without the tracked subjects, and a part of it is not the data set
    # (the folders are listed, every subject's: dvc.lock would record data/raw as found).
    check_checked_out(paths.raw, effect=EFFECT_PREPARED, written=False)
    subjects = read_subjects(paths.raw)
    snapshot = _narrowed_to_registry(
        read_snapshot(paths.consents),
        registry if registry is not None else Registry.for_project(paths),
        shown=paths.consents,
    )
    pools = purpose_filter(subjects["pid"].tolist(), snapshot)
    attrs = subjects.set_index("pid")
    all_splits = assign_splits(
        attrs["group"].astype("string").fillna("unknown").to_dict(),
        val=pp.split.val,
        test=pp.split.test,
        seed=params.project.seed,
        roles=attrs["role"].to_dict(),
        sources=attrs["source"].to_dict(),
    )
    splits = usable_splits(all_splits, pools)
    images = inventory(paths.raw, set(splits))
    plain = images[images["path"].str.lower().str.endswith(PLAIN_EXTS)]
    if len(plain):
        read_raw_image(keys, Path(plain["path"].iloc[0]))  # raises MSG_PLAINTEXT
    # No key, no processing: a subject whose key was destroyed never comes back from a backup.
    for pid in sorted(p for p in splits if not keys.exists(p)):
        del splits[pid]
        pools.excluded[pid] = NO_DATA_KEY
    images = images[images["pid"].isin(set(splits))].reset_index(drop=True)
    images["split"] = images["pid"].map(splits)
    # Counted from the table: the excluded subjects' files are never opened.
    n_images_of = subjects.set_index("pid")["n_images"]
    n_excluded_images = int(sum(int(n_images_of.get(pid, 0)) for pid in pools.excluded))

    detector = detector_factory(device=pp.device, min_face_size=pp.min_face_size)
    size = pp.image_size
    n = len(images)
    processed = private_dir(paths.processed)
    for stale in [*processed.glob(".faces.all.*.tmp"), *processed.glob(f".{FACES_FILE}.*.tmp")]:
        # Left by a run that was killed: face crops nobody will read.
        secure_unlink(stale)
    writer = CropWriter(processed / FACES_FILE, keys, size)
    try:
        det_rows = []
        kept = 0
        keep_rows: list[dict] = []
        bar = tqdm(
            total=n, desc="prepare: detect + align", unit="img", disable=None if progress else True
        )
        for start in range(0, n, pp.detect_batch):
            chunk = images.iloc[start : start + pp.detect_batch]
            opened = [open_raw_image(Path(p), paths.root, keys) for p in chunk["path"]]
            pil = [im for im, _ in opened]
            shas = [sha256_bytes(png) for _, png in opened]
            del opened
            crops, dets = detect_and_align(
                detector, pil, size=size, min_prob=pp.min_face_prob, look_again=pp.second_look
            )
            for (_, img), im, sha, crop, det in zip(
                chunk.iterrows(), pil, shas, crops, dets, strict=True
            ):
                a = attrs.loc[img.pid]
                detected = det is not None
                # A miss stays a miss (detected False) even when a fallback crop stands in.
                fallback = not detected and pp.fallback_crop == "center"
                det_rows.append(
                    {
                        "pid": img.pid,
                        "image_id": img.image_id,
                        "split": img.split,
                        "age": a["age"],
                        "gender": a["gender"],
                        "group": a["group"],
                        "detected": detected,
                        "prob": float(det.prob) if detected else 0.0,
                        # Found by the second look (mirror or contrast), not the first pass.
                        "second_look": detected and det.view != "direct",
                        "source": a["source"],
                        "role": a["role"],
                        "fallback": fallback,
                    }
                )
                if not detected and not fallback:
                    continue
                if fallback:
                    crop, box = center_crop(im, size=size, share=pp.fallback_share)
                else:
                    box = det.box
                writer.add(img.pid, crop)
                x1, y1, x2, y2 = box
                keep_rows.append(
                    {
                        "row": kept,
                        "pid": img.pid,
                        "image_id": img.image_id,
                        "source_sha256": sha,
                        "split": img.split,
                        "age": a["age"],
                        "gender": a["gender"],
                        "group": a["group"],
                        "det_prob": float(det.prob) if detected else 0.0,
                        "box_x1": float(x1),
                        "box_y1": float(y1),
                        "box_x2": float(x2),
                        "box_y2": float(y2),
                        "source": a["source"],
                        "role": a["role"],
                        "fallback": fallback,
                    }
                )
                kept += 1
            bar.update(len(chunk))
        bar.close()
        writer.commit()
    except BaseException:
        # Nothing of a failed run stays in data/processed (ciphertext, but of no use).
        writer.abort()
        raise
    legacy = processed / LEGACY_FACES_FILE
    if legacy.is_file():
        # The plaintext crops of a run from before sealing: not an output any more.
        secure_unlink(legacy)

    manifest = pd.DataFrame(keep_rows, columns=list(MANIFEST_COLUMNS))
    manifest = manifest.astype(
        {
            "age": "Int16",
            "gender": "string",
            "group": "string",
            "source": "string",
            "role": "string",
            "fallback": "bool",
        }
    )
    _write_parquet(manifest, processed / MANIFEST_FILE)
    detection = pd.DataFrame(det_rows)
    _write_parquet(detection, processed / DETECTION_FILE)

    split_ids = {s: sorted(p for p, v in splits.items() if v == s) for s in SPLITS}
    atomic_write_json(
        processed / SPLITS_FILE,
        {"seed": params.project.seed, **split_ids, NONCE_KEY: version_nonce()},
        mode=0o600,
    )

    seconds = time.perf_counter() - t0
    report = _report(
        detection=detection,
        manifest=manifest,
        excluded=pools.exclusion_counts(),
        by_source=source_summary(
            detection, manifest, excluded=pools.excluded, sources=attrs["source"].to_dict()
        ),
        n_subjects=len(subjects),
        n_excluded_images=n_excluded_images,
        seconds=seconds,
    )
    atomic_write_json(paths.reports / REPORT_FILE, report)
    return report


def _narrowed_to_registry(
    snapshot: pd.DataFrame, registry: Registry, *, shown: Path
) -> pd.DataFrame:
    """``snapshot`` with each pair allowed only where the registry allows it too (else the
    registry's reason). The snapshot is the pipeline's DVC input, but a file anyone who can
    write ``data/`` can edit; the registry folds only signed ledger entries."""
    registry.refresh()
    allowed: list[bool] = []
    reasons = snapshot["reason"].astype("string").tolist()
    wider = 0
    for i, (pid, purpose, claimed) in enumerate(
        zip(snapshot["pid"], snapshot["purpose"], snapshot["allowed"], strict=True)
    ):
        # As purpose_filter reads the column: whatever is truthy (and not missing) grants.
        if pd.isna(claimed) or not bool(claimed):
            allowed.append(False)
            continue
        st = registry.peek(str(pid))
        decision = st.decision(str(purpose)) if st is not None and purpose in PURPOSES else None
        if decision is not None and decision.allowed:
            allowed.append(True)
            continue
        allowed.append(False)
        reasons[i] = decision.reason if decision is not None else UNKNOWN
        wider += 1
    out = snapshot.copy()
    out["allowed"] = pd.array(allowed, dtype="bool")
    out["reason"] = pd.array(reasons, dtype="string")
    if wider:
        log.warning(MSG_SNAPSHOT_WIDER, shown, wider)
    return out


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, frame_parquet_bytes(df), mode=0o600)


def _report(
    *,
    detection: pd.DataFrame,
    manifest: pd.DataFrame,
    excluded: dict[str, int],
    by_source: dict[str, Any],
    n_subjects: int,
    n_excluded_images: int,
    seconds: float,
) -> dict[str, Any]:
    n_img = len(detection)
    miss = {}
    if n_img:
        grp = detection.assign(
            missed=~detection["detected"],
            group=detection["group"].astype("string").fillna(UNLABELED),
        ).groupby("group", dropna=False)
        miss = {str(g): round(float(v), 4) for g, v in grp["missed"].mean().items()}
    split_counts = {
        s: {
            "subjects": int(manifest.loc[manifest.split == s, "pid"].nunique()),
            "images": int((manifest.split == s).sum()),
        }
        for s in SPLITS
    }
    return {
        "subjects_total": n_subjects,
        "subjects_used": int(detection["pid"].nunique()) if n_img else 0,
        "subjects_excluded": excluded,
        "images_excluded": n_excluded_images,
        "images_processed": n_img,
        "faces_aligned": len(manifest),
        "miss_rate": round(float((~detection["detected"]).mean()), 4) if n_img else 0.0,
        "miss_rate_by_group": miss,
        "splits": split_counts,
        "fallback_crops": int(detection["fallback"].sum()) if n_img else 0,
        "second_look_found": int(detection["second_look"].sum()) if n_img else 0,
        "labels": label_coverage(manifest),
        "by_source": by_source,
        "seconds": round(seconds, 2),
        "faces_per_second": round(n_img / seconds, 1) if seconds > 0 else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# One subject in the processed data
# ---------------------------------------------------------------------------------------------


def _names(processed: Path, name: str, pid: str) -> bool:
    f = processed / name
    if name.endswith(".parquet"):
        return parquet_names(f.read_bytes(), pid)
    if name == FACES_FILE:
        # The crops name nobody: they hold the subject when the manifest lists their rows.
        manifest = processed / MANIFEST_FILE
        return manifest.is_file() and parquet_names(manifest.read_bytes(), pid)
    return pid.encode() in f.read_bytes()


def files_naming(processed_dir: Path, pid: str) -> list[Path]:
    """The files of :data:`PROCESSED_FILES` in ``processed_dir`` that hold ``pid``, in order."""
    processed = Path(processed_dir)
    return [
        processed / name
        for name in PROCESSED_FILES
        if (processed / name).is_file() and _names(processed, name, pid)
    ]


def leftover_files(processed_dir: Path) -> list[Path]:
    """Temporary files an interrupted :func:`prepare` (or purge) left in ``processed_dir``."""
    processed = Path(processed_dir)
    return sorted(processed.glob(LEFTOVER_GLOB)) if processed.is_dir() else []


def purge_subject(processed_dir: Path, pid: str) -> dict[str, int]:
    """Remove ``pid`` from ``processed_dir``: crops, manifest, detection table, splits.

    The subject's sealed chunks are overwritten with zeros in place (their key is destroyed by
    the erasure first, so this is defence in depth; the other subjects' chunks are not
    rewritten); the manifest loses their rows and keeps every other ``row`` index, which is how
    consumers address the crops. Safe to run again after an interruption.

    Returns
    -------
    dict
        ``{"rows_removed": n, "rows_kept": m}``.
    """
    processed = Path(processed_dir)
    manifest_path = processed / MANIFEST_FILE
    faces_path = processed / FACES_FILE
    manifest = pd.read_parquet(manifest_path)
    mask = manifest["pid"].astype(str) == pid
    kept = manifest.loc[~mask]
    removed = int(mask.sum())
    if faces_path.is_file() and removed:
        purge_chunks(faces_path, manifest, pid)
    if removed:
        _write_parquet(kept.reset_index(drop=True), manifest_path)
    detection_path = processed / DETECTION_FILE
    if detection_path.is_file():
        det = pd.read_parquet(detection_path)
        dmask = det["pid"].astype(str) == pid
        if dmask.any():
            _write_parquet(det.loc[~dmask].reset_index(drop=True), detection_path)
    splits_path = processed / SPLITS_FILE
    if splits_path.is_file():
        doc = json.loads(splits_path.read_text(encoding="utf-8"))
        changed = False
        for k, v in list(doc.items()):
            if isinstance(v, list) and pid in v:
                doc[k] = [p for p in v if p != pid]
                changed = True
        if changed:
            atomic_write_json(splits_path, {**doc, NONCE_KEY: version_nonce()})
    return {"rows_removed": removed, "rows_kept": len(kept)}
