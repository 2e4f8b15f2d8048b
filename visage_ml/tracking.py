"""MLflow set-up and logging, called only from stages (nothing happens on import).

The tracking store is SQLite at ``mlruns/mlflow.db`` with artefacts under ``mlruns/artifacts``,
or the stack's MLflow server (``stack.tracking: server``, artefacts in its S3);
:func:`configure` is the one place that sets it. Only pseudonymous, aggregate values are logged:
no image, template, name or per-subject row ever reaches MLflow.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visage_ml.config import ProjectPaths
from visage_ml.stack import stores

if TYPE_CHECKING:
    import mlflow

EXPERIMENT = "visage"
MSG_UNRECORDED = (
    "tracking to a server needs the ledger recorder (visage_ml.privacy.core.store_recorder): "
    "every erasure must know the servers the project logged to"
)
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def sanitize_key(key: str) -> str:
    """MLflow accepts letters, digits, ``_ - . /`` and spaces in keys; replace anything else."""
    return _KEY_BAD.sub("_", key)


def configure(
    paths: ProjectPaths, experiment: str = EXPERIMENT, *, record: stores.Recorder | None = None
) -> str:
    """Point MLflow at the project's store and make sure ``experiment`` exists; return its id.

    ``record`` signs the ledger entry by which a tracking server is remembered
    (:mod:`visage_ml.stack.stores`); a server cannot be used without it.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # deferred: slow to import, and only stages that log need it

    uri = paths.tracking_uri
    # SQLite: artefacts beside the database under mlruns/. A tracking server (the stack's,
    # `stack.tracking: server`) keeps its own artefact root (S3 through the server's proxy).
    local = uri.startswith("sqlite:")
    if not local:
        # Before anything is logged there: every later erasure looks at this server, even
        # after the project goes back to SQLite (visage_ml.stack.stores).
        if record is None:
            raise ValueError(MSG_UNRECORDED)
        stores.remember_mlflow_server(paths, uri, record=record)
    mlflow.set_tracking_uri(uri)
    if local:
        paths.mlruns.mkdir(parents=True, exist_ok=True)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        location = (paths.mlruns / "artifacts").as_uri() if local else None
        exp_id = mlflow.create_experiment(experiment, artifact_location=location)
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
    record: stores.Recorder | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open an MLflow run named after ``stage`` with flattened ``params`` and ``tags``
    (``record``: as :func:`configure` takes it)."""
    configure(paths, record=record)
    import mlflow  # deferred: slow to import, and only stages that log need it

    with mlflow.start_run(run_name=stage) as run:
        mlflow.set_tag("visage.stage", stage)
        if tags:
            mlflow.set_tags({sanitize_key(k): str(v) for k, v in tags.items()})
        if params:
            mlflow.log_params({sanitize_key(k): _param_value(v) for k, v in params.items()})
        yield run


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics with sanitised keys (non-finite values are skipped)."""
    import mlflow  # deferred: slow to import, and only stages that log need it

    clean = {
        sanitize_key(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    }
    if clean:
        mlflow.log_metrics(clean, step=step)


def flat_metrics(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested document as ``{"a.b.c": value}`` (booleans and text left out)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flat_metrics(v, key))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def log_contents(files: Mapping[str, bytes | str], artifact_path: str) -> None:
    """Log in-memory files (bytes, or UTF-8 text) under ``artifact_path`` of the active run."""
    import mlflow  # deferred: slow to import, and only stages that log need it

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "contents"
        folder.mkdir()
        for name, content in files.items():
            target = folder / sanitize_key(name)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def pinned_requirements(packages: Sequence[str]) -> list[str]:
    """``pkg==installed version`` per package (bare name when not installed).

    Given to MLflow's model flavours so they do not infer requirements, which is slow.
    """
    out = []
    for pkg in packages:
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def _param_value(v: Any) -> str:
    text = str(list(v)) if isinstance(v, tuple) else str(v)
    return text[:500]
