"""Rebuilding the gallery from ``data/processed`` (`visage gallery rebuild`, stage ``gallery``).

Every subject the registry allows for identification is enrolled from up to
``gallery.images_per_subject`` of their crops (train images first, so test images stay held
out); templates of subjects without a basis are purged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from visage_ml.config import ProjectPaths
from visage_ml.data.crops import check_manifest_rows, crops_info, read_crops
from visage_ml.data.prepare import FACES_FILE, MANIFEST_FILE
from visage_ml.privacy.core import PrivacyCore
from visage_ml.serving.gallery import (
    PURPOSE,
    Gallery,
    GalleryVersionError,
    Threshold,
    load_threshold,
)
from visage_ml.serving.pg_gallery import PgGallery, PgOptions, reset_table

SPLIT_PREFERENCE: Mapping[str, int] = {"train": 0, "val": 1, "test": 2}
MSG_NO_PROCESSED = "{path} is missing; run `dvc repro prepare` first"
# Embedding is chunked so that only this many crops are in memory at once.
EMBED_CHUNK = 2048
ENROL_BATCH = 512


def select_enrolment_rows(
    manifest: Any, allowed: Iterable[str], *, per_subject: int
) -> dict[str, np.ndarray]:
    """Rows of ``faces.sealed`` to enrol each allowed subject from.

    Up to ``per_subject`` images per subject, train images first, then validation, then test
    (so that test images stay held out whenever a subject has others), the most confidently
    detected first, then by image id (deterministic).
    """
    allowed = set(allowed)
    df = manifest[manifest["pid"].astype(str).isin(allowed)].copy()
    if df.empty:
        return {}
    df["pid"] = df["pid"].astype(str)
    df["_rank"] = df["split"].map(dict(SPLIT_PREFERENCE)).fillna(len(SPLIT_PREFERENCE))
    df["_prob"] = df.get("det_prob", 1.0)
    df = df.sort_values(
        ["pid", "_rank", "_prob", "image_id"], ascending=[True, True, False, True], kind="stable"
    )
    heads = df.groupby("pid", sort=True).head(per_subject)
    return {
        str(pid): rows["row"].to_numpy(dtype=np.int64)
        for pid, rows in heads.groupby("pid", sort=True)
    }


def select_holdout(
    manifest: Any, searchable: Iterable[str], *, per_subject: int, count: int
) -> Any:
    """Up to ``count`` images of searchable subjects that enrolment does not use, one per subject.

    The rows (``pid``, ``image_id``, ...) of ``manifest`` that :func:`select_enrolment_rows`
    leaves out, in split then image-id order: probes for trying identification on faces the
    gallery was not built from.
    """
    searchable = {str(p) for p in searchable}
    enrolled = select_enrolment_rows(manifest, searchable, per_subject=per_subject)
    used = {int(r) for rows in enrolled.values() for r in rows}
    spare = manifest[manifest["pid"].astype(str).isin(searchable) & ~manifest["row"].isin(used)]
    return spare.sort_values(["split", "image_id"]).groupby("pid").head(1).head(count)


@dataclass
class RebuildReport:
    """Counts of a rebuild (no pids: this goes to ``reports/gallery.json``)."""

    model_version: str
    embedding_dim: int
    threshold: float
    subjects_allowed: int
    subjects_enrolled: int
    templates_written: int
    templates_unchanged: int
    images_used: int
    allowed_without_images: int
    removed_without_basis: int
    stale_templates: int
    searchable: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rebuild(
    paths: ProjectPaths,
    *,
    embedder: Any,
    images_per_subject: int,
    threshold: Threshold | float | None = None,
    core: Any = None,
    progress: bool = False,
    pg_options: PgOptions | None = None,
) -> RebuildReport:
    """Re-enrol every subject allowed for identification from ``data/processed``.

    Parameters
    ----------
    paths
        The project (reads ``data/processed/{faces.sealed, manifest.parquet}``).
    embedder
        The serving embedder (:class:`visage_ml.inference.OnnxModel`); its version becomes the
        gallery's.
    images_per_subject
        ``gallery.images_per_subject``.
    threshold
        The match threshold; ``reports/threshold.json`` for this embedder when None.
    core
        The project's privacy core (a new one when None).
    progress
        Show a progress bar.
    pg_options
        Rebuild the shared gallery in PostgreSQL (``serving.gallery.backend: pgvector``)
        instead of the one under ``gallery/``; its tables are re-created when they hold another
        embedder's templates.

    Returns
    -------
    RebuildReport
        Counts only.
    """
    t0 = time.perf_counter()
    manifest_path = paths.processed / MANIFEST_FILE
    faces_path = paths.processed / FACES_FILE
    for p in (manifest_path, faces_path):
        if not p.is_file():
            raise FileNotFoundError(MSG_NO_PROCESSED.format(path=p))
    thr = threshold if threshold is not None else load_threshold(paths, embedder.model_version)
    core = core if core is not None else PrivacyCore(paths)
    dim = int(embedder.embedding_dim)
    opening: dict[str, Any] = {
        "model_version": embedder.model_version,
        "embedding_dim": dim,
        "threshold": thr,
        "preprocess": embedder.spec.to_dict(),
        "core": core,
    }
    gallery: Gallery
    if pg_options is None:
        gallery = Gallery.open(paths, rebuild=True, **opening)
    else:
        options = replace(pg_options, listen=False)
        try:
            gallery = PgGallery.open(paths, options=options, **opening)
        except GalleryVersionError:
            reset_table(options.dsn, table=options.table)
            gallery = PgGallery.open(paths, options=options, **opening)
    manifest = pd.read_parquet(manifest_path)
    n_crops = crops_info(faces_path).rows
    check_manifest_rows(manifest, n_crops)  # an erasure leaves fewer rows than crops
    allowed = core.registry.allowed(PURPOSE)
    selection = select_enrolment_rows(manifest, allowed, per_subject=images_per_subject)
    # Only the enrolled subjects' crops are decrypted, in memory.
    faces = read_crops(faces_path, core.data_keys, manifest, pids=set(selection))
    pids = sorted(selection)
    written = unchanged = images = 0
    bar = tqdm(total=len(pids), desc="gallery: enrol", unit="subject", disable=not progress)
    batch: dict[str, np.ndarray] = {}
    pending_rows: list[int] = []
    pending_pids: list[str] = []

    def flush_batch() -> None:
        nonlocal written, unchanged
        if not batch:
            return
        for e in gallery.enroll_many(batch, model_version=embedder.model_version):
            written += int(e.changed)
            unchanged += int(not e.changed)
        bar.update(len(batch))
        batch.clear()

    def embed_pending() -> None:
        if not pending_rows:
            return
        order = np.asarray(pending_rows, dtype=np.int64)
        emb = np.asarray(embedder.embed(np.ascontiguousarray(faces[order])), dtype=np.float32)
        start = 0
        for pid in pending_pids:
            n = selection[pid].size
            batch[pid] = emb[start : start + n]
            start += n
            if len(batch) >= ENROL_BATCH:
                flush_batch()
        pending_rows.clear()
        pending_pids.clear()

    for pid in pids:
        rows = selection[pid]
        if len(pending_rows) + rows.size > EMBED_CHUNK:
            embed_pending()
        pending_rows.extend(rows.tolist())
        pending_pids.append(pid)
        images += rows.size
    embed_pending()
    flush_batch()
    bar.close()
    gallery.write_meta()
    purged = gallery.purge_without_basis()
    gallery.reload()
    stats = gallery.stats()
    if isinstance(gallery, PgGallery):
        gallery.close()
    return RebuildReport(
        model_version=embedder.model_version,
        embedding_dim=dim,
        threshold=gallery.threshold,
        subjects_allowed=len(allowed),
        subjects_enrolled=len(pids),
        templates_written=written,
        templates_unchanged=unchanged,
        images_used=int(images),
        allowed_without_images=len(allowed - set(pids)),
        removed_without_basis=len(purged),
        stale_templates=int(stats["stale"]),
        searchable=int(stats["searchable"]),
        seconds=round(time.perf_counter() - t0, 3),
    )
