"""Stage ``gallery``: enrol every subject allowed for identification from the processed crops.

Reads ``models/embedder.onnx``, ``reports/threshold.json`` and
``data/processed/{faces.sealed, manifest.parquet}``; asks the privacy registry (the ledger) who
may be identified; writes the encrypted gallery under ``gallery/`` (see
:mod:`visage_ml.serving.gallery`), or with ``serving.gallery.backend: pgvector`` into the
shared gallery in PostgreSQL (:mod:`visage_ml.serving.pg_gallery`), and ``reports/gallery.json``
(counts only, no pids). The
gallery folder is not a DVC output: it holds per-subject keys and ciphertext that an erasure
must be able to destroy in one place, and subjects enrolled through the API live there too.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.io import atomic_write_json
from visage_ml.serving.engine import Engine
from visage_ml.serving.gallery import GalleryError
from visage_ml.serving.pg_gallery import BACKEND, PgOptions, resolve_dsn
from visage_ml.serving.rebuild import RebuildReport, rebuild

logger = logging.getLogger(__name__)


def load_embedder(paths: ProjectPaths, params: Params) -> Any:
    """The exported embedder, checked against ``params.yaml`` (input size, embedding size)."""

    return Engine.from_project(paths, params).embedder


def run(paths: ProjectPaths, params: Params, *, embedder: Any = None) -> RebuildReport:
    """Rebuild the gallery and write ``reports/gallery.json``; returns the counts."""
    emb = embedder if embedder is not None else load_embedder(paths, params)
    pg_options = None
    if params.serving.gallery.backend == BACKEND:  # the shared gallery (docs/deploy.md)
        dsn = resolve_dsn(params, os.environ, paths=paths)
        pg_options = PgOptions.from_params(params, dsn=dsn, listen=False, serving=False)
    report = rebuild(
        paths,
        embedder=emb,
        images_per_subject=params.gallery.images_per_subject,
        progress=sys.stderr.isatty(),
        pg_options=pg_options,
    )
    atomic_write_json(paths.reports / "gallery.json", report.to_dict())
    return report


def main() -> int:
    """Entry point of ``python -m visage_ml.app.stages.gallery``; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.discover()
    try:
        report = run(paths, load_params(paths.params))
    except (FileNotFoundError, ValueError, GalleryError) as exc:
        print(f"gallery: {exc}", file=sys.stderr)
        return 2
    print(
        f"gallery: {report.searchable} searchable subjects ({report.templates_written} written, "
        f"{report.templates_unchanged} unchanged, {report.removed_without_basis} removed without "
        f"a legal basis, {report.stale_templates} stale) for embedder {report.model_version}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
