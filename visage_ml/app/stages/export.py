"""Stage ``export``: both checkpoints to ONNX, each checked against torch on validation crops.

Reads ``models/{embedder,demographics}.pt``, writes ``models/{embedder,demographics}.onnx`` and
``reports/export.json`` (per model: parity numbers, opset, SHA-256 and size of the file). A model
that fails parity leaves its previous ONNX file untouched and the stage exits non-zero, naming
the model and the number that failed. When both pass, their SHA-256s are recorded in the privacy
ledger as a ``model.released`` event: ``visage serve`` serves those files and no others.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.config import ExportParams, ProjectPaths, load_params
from visage_ml.data.crops import read_crops
from visage_ml.data.prepare import FACES_FILE, MANIFEST_FILE
from visage_ml.export import ExportError, ParityError, build_metadata, export_with_parity
from visage_ml.io import atomic_write_json
from visage_ml.models.checkpoint import load_model
from visage_ml.preprocess import PreprocessSpec
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import DataKeys
from visage_ml.privacy.ledger import LedgerError
from visage_ml.serving.release import ONNX_FILE_OF, record_release

logger = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("embedder", "demographics")
Loader = Callable[[Path], tuple[Any, dict[str, Any]]]


def parity_crops(processed: Path, n: int, *, keys: DataKeys) -> np.ndarray:
    """``n`` validation crops (train when there is no validation split), spread evenly.

    ``manifest.parquet``'s ``row`` column indexes the crops of ``faces.sealed``; only the
    chosen split's subjects are decrypted, in memory.
    """
    import pandas as pd

    faces_path, manifest_path = processed / FACES_FILE, processed / MANIFEST_FILE
    for p in (faces_path, manifest_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing; run `dvc repro prepare` first")
    full = pd.read_parquet(manifest_path, columns=["row", "pid", "split"])
    chosen = "val" if (full["split"] == "val").any() else "train"
    faces = read_crops(
        faces_path, keys, full, pids=set(full.loc[full["split"] == chosen, "pid"].astype(str))
    )
    manifest = full[["row", "split"]].sort_values("row")
    index = manifest["row"].to_numpy(dtype=np.int64)
    if len(index) and (index.min() < 0 or index.max() >= faces.shape[0]):
        raise ValueError(
            f"{manifest_path.name} points at rows outside {faces_path.name} "
            f"({faces.shape[0]} crops); re-run `dvc repro prepare` to rebuild both together"
        )
    split = manifest["split"].to_numpy()
    rows = index[split == "val"]
    if rows.size == 0:
        logger.info("no validation crops; checking parity on training crops")
        rows = index[split == "train"]
    if rows.size == 0:
        raise ValueError(f"{manifest_path.name} has no val or train rows; nothing to check")
    pick = rows[np.unique(np.linspace(0, rows.size - 1, num=min(n, rows.size)).astype(int))]
    return np.ascontiguousarray(faces[pick])


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The DVC-metrics view of one parity report (non-finite numbers become null)."""
    keep = (
        "n_samples",
        "max_abs_diff",
        "min_cosine",
        "argmax_agreement",
        "passed",
        "opset",
        "onnx_sha256",
        "size_bytes",
    )

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return {k: clean(report[k]) for k in keep if k in report}


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
    if loader is None:
        loader = load_model
    crops = parity_crops(paths.processed, params.parity_samples, keys=DataKeys.for_project(paths))
    summaries: dict[str, Any] = {}
    failed: list[str] = []
    for name in MODELS:
        model, meta = loader(paths.models / f"{name}.pt")
        if meta.get("kind") != name:
            raise ExportError(
                f"models/{name}.pt holds a '{meta.get('kind')}' checkpoint, not a {name}; "
                f"re-run `dvc repro train_{name}`"
            )
        try:
            report = export_with_parity(
                model,
                paths.models / f"{name}.onnx",
                spec=PreprocessSpec.from_dict(meta["preprocess"]),
                kind=name,
                opset=params.opset,
                metadata=build_metadata(meta, root=paths.root),
                inputs_u8_nhwc=crops,
                min_cosine=params.min_cosine,
                max_abs_diff=params.max_abs_diff,
            )
        except ParityError as exc:
            report = exc.report
            failed.append(str(exc))
        summaries[name] = _summary(report)
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
    try:
        entry = record_release(
            PrivacyCore(paths).ledger,
            paths.root,
            [ONNX_FILE_OF[name] for name in MODELS],
            stage="export",
        )
    except (LedgerError, ValueError, OSError) as exc:
        print(f"export: could not record the release in the privacy ledger: {exc}", file=sys.stderr)
        return 2
    print(f"export: released {', '.join(MODELS)} in ledger entry {entry.seq}")
    for name, s in summaries.items():
        print(f"export: {name} passed parity (max abs diff {s['max_abs_diff']:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
