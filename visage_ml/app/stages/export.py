"""Stage ``export``: both checkpoints to ONNX, each checked against torch on validation crops.

Reads ``models/{embedder,demographics}.pt``, writes ``models/{embedder,demographics}.onnx`` and
``reports/export.json`` (per model: parity numbers, opset, SHA-256 and size of the file). A model
that fails parity is not written and the stage exits non-zero, naming the model and the number
that failed. Run by hand, the previous ONNX file stays; under `dvc repro`, DVC has removed the
stage's outputs before it ran, so `dvc checkout models/<model>.onnx` restores the last released
one (`visage serve` serves only files whose SHA-256 a ``model.released`` entry names). When both
pass, their SHA-256s are recorded in the privacy ledger as a ``model.released`` event: ``visage
serve`` serves those files and no others.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from visage_ml.app.stages._release import release
from visage_ml.config import ExportParams, ProjectPaths, load_params
from visage_ml.export import MODELS, ExportError, Loader, ParityError, export_models
from visage_ml.io import atomic_write_json
from visage_ml.models.checkpoint import load_model
from visage_ml.serving.release import ONNX_FILE_OF


def run(
    paths: ProjectPaths, params: ExportParams, *, loader: Loader | None = None
) -> dict[str, Any]:
    """Export both models; return ``{name: summary}`` and write ``reports/export.json``.

    Parameters
    ----------
    paths
        The project: checkpoints and ONNX files under ``models/``, crops under
        ``data/processed/``, the report under ``reports/``.
    params
        The ``export`` section of ``params.yaml``.
    loader
        ``path -> (model, meta)``; ``visage_ml.models.checkpoint.load_model`` by default.

    Raises
    ------
    ParityError
        After the report is written, when a model failed parity (naming each that did).
    """
    summaries, failed = export_models(paths, params, loader=loader or load_model)
    atomic_write_json(paths.reports / "export.json", summaries)
    if failed:
        raise ParityError("\n".join(failed), summaries)
    return summaries


def main() -> int:
    """Entry point of ``python -m visage_ml.app.stages.export``; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.discover()
    try:
        summaries = run(paths, load_params(paths.params).export)
    except (ParityError, ExportError, FileNotFoundError, ValueError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    status = release(paths, [ONNX_FILE_OF[m] for m in MODELS], stage="export", names=MODELS)
    if status:
        return status
    for name, s in summaries.items():
        print(f"export: {name} passed parity (max abs diff {s['max_abs_diff']:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
