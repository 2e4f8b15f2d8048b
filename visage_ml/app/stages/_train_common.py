"""MLflow, output and exit-status glue shared by the two training stages."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow

from visage_ml.config import ProjectPaths, flatten
from visage_ml.io import atomic_write_json
from visage_ml.models.checkpoint import save_checkpoint, save_resume
from visage_ml.privacy.core import store_recorder
from visage_ml.tracking import log_metrics, stage_run
from visage_ml.training.distributed import worker_env
from visage_ml.training.launch import WorkersFailedError

logger = logging.getLogger(__name__)


def tracked_run(
    paths: ProjectPaths,
    *,
    stage: str,
    kind: str,
    section: Any,
    seed: int,
    data_md5: str,
    main: bool = True,
) -> contextlib.AbstractContextManager:
    """The stage's MLflow run (params: the section flattened and ``project.seed``; tags: the
    data md5 and the model kind); nothing on the data-parallel ranks other than 0."""
    if not main:
        return contextlib.nullcontext()
    params = {**flatten(section, stage), "project.seed": seed}
    return stage_run(
        paths,
        stage,
        params=params,
        tags={"visage.data_md5": data_md5, "visage.kind": kind},
        record=store_recorder(paths),
    )


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
            **{f"visage.numerics.{k}": str(v) for k, v in result.numerics.items()},
        }
    )


MSG_INTERRUPTED = (
    "interrupted: the epochs finished so far are kept in models/checkpoints/; run the stage "
    "again (`dvc repro`) with the same params to resume from the last one"
)


def stage_main(run: Callable[..., Any]) -> int:
    """Entry point of a training stage: log to stderr, map bad input to exit status 2.

    In a torchrun worker, errors are also recorded in torchrun's error file.
    """
    if worker_env() is not None:
        # Heavy optional dependency: torch's elastic error file, so torchrun reports a worker's
        # traceback with its failure.
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_stage_main)(run)
    return _stage_main(run)


def _stage_main(run: Callable[..., Any]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Progress bars only on a terminal: in logs (CI, dvc repro > file) they are noise.
        run(progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    except WorkersFailedError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error(MSG_INTERRUPTED)
        return 130
    return 0
