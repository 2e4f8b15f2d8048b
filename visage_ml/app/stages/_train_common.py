"""MLflow and process glue shared by the two training stages."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow

from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_json
from visage_ml.models.checkpoint import save_checkpoint, save_resume
from visage_ml.tracking import log_metrics

logger = logging.getLogger(__name__)


def epoch_logger(
    *,
    kind: str,
    folder: Path,
    fingerprint: str,
    metric_keys: tuple[str, ...],
) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """``on_epoch_end`` callback: save the resume state and log the epoch's metrics to MLflow."""

    def on_epoch_end(record: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        path = save_resume(folder, state, fingerprint=fingerprint)
        logger.info("%s resume checkpoint: %s", kind, path.name)
        log_metrics(
            {k: v for k, v in record.items() if k in metric_keys}, step=int(record["epoch"])
        )

    return on_epoch_end


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
