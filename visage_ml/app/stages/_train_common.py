"""MLflow and process glue shared by the two training stages."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_json
from visage_ml.models.checkpoint import save_checkpoint, save_resume
from visage_ml.privacy.keys import MASTER_KEY_ENV
from visage_ml.procenv import child_env
from visage_ml.tracking import log_metrics

logger = logging.getLogger(__name__)

MSG_WORKERS_FAILED = (
    "distributed training failed: {failures}. Each failed process's error is in the log above "
    "(torchrun stopped the others). Fix it and run again; the run resumes from the last "
    "finished epoch when params, data and code are unchanged"
)


class WorkersFailedError(RuntimeError):
    """A torchrun worker of a training stage failed (the job was stopped)."""


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """This process's environment replaced by ``values`` while the block runs (torchrun's
    workers inherit it), then restored."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def launch_workers(module: str, *, nproc: int, root: Path) -> None:
    """Run ``python -m module`` in ``nproc`` torchrun processes on this host; wait for them.

    The same as ``torchrun --standalone --nproc-per-node=nproc -m module`` with the project at
    ``root`` (``$VISAGE_PROJECT``) and ``OMP_NUM_THREADS`` = cores / nproc unless set. The
    workers inherit this environment without its secrets (:func:`visage_ml.procenv.child_env`)
    but the master key: each decrypts the sealed crops into its own memory, as the single
    process does. A worker that fails stops the job
    (torchrun terminates the others) and raises :class:`WorkersFailedError`.
    """
    # Heavy optional dependency: torch's launcher (elastic agent), only for nproc > 1.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    argv = ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", module]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    logger.info("starting %d processes: torchrun %s", nproc, " ".join(argv))
    # The workers' environment: this one without secrets but the master key they decrypt with.
    env = child_env(
        {"VISAGE_PROJECT": str(root), "OMP_NUM_THREADS": threads}, keep=(MASTER_KEY_ENV,)
    )
    with _environ(env):
        try:
            torchrun(parse_args(argv))
        except ChildFailedError as exc:
            failures = ", ".join(
                f"rank {rank} exit code {f.exitcode}" for rank, f in sorted(exc.failures.items())
            )
            raise WorkersFailedError(MSG_WORKERS_FAILED.format(failures=failures)) from exc


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
    except WorkersFailedError as exc:
        logger.error("%s", exc)
        return 1
    return 0
