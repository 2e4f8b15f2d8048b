"""MLflow set-up and logging, called only from stages (nothing happens on import).

The tracking store is SQLite at ``mlruns/mlflow.db`` with artefacts under ``mlruns/artifacts``;
:func:`configure` is the one place that sets it. Only pseudonymous, aggregate values are logged:
no image, template, name or per-subject row ever reaches MLflow.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from visage_ml.config import ProjectPaths

if TYPE_CHECKING:
    import mlflow

EXPERIMENT = "visage"
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def sanitize_key(key: str) -> str:
    """MLflow accepts letters, digits, ``_ - . /`` and spaces in keys; replace anything else."""
    return _KEY_BAD.sub("_", key)


def configure(paths: ProjectPaths, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the project's store and make sure ``experiment`` exists; return its id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    paths.mlruns.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(paths.tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(
            experiment, artifact_location=(paths.mlruns / "artifacts").as_uri()
        )
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def stage_run(
    paths: ProjectPaths,
    stage: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open an MLflow run named after ``stage`` with flattened ``params`` and ``tags``."""
    configure(paths)
    import mlflow

    with mlflow.start_run(run_name=stage) as run:
        mlflow.set_tag("visage.stage", stage)
        if tags:
            mlflow.set_tags({sanitize_key(k): str(v) for k, v in tags.items()})
        if params:
            mlflow.log_params({sanitize_key(k): _param_value(v) for k, v in params.items()})
        yield run


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics with sanitised keys (non-finite values are skipped)."""
    import math

    import mlflow

    clean = {
        sanitize_key(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    }
    if clean:
        mlflow.log_metrics(clean, step=step)


def _param_value(v: Any) -> str:
    text = str(list(v)) if isinstance(v, tuple) else str(v)
    return text[:500]
