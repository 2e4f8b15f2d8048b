"""An MLflow tracking server on the stack's PostgreSQL, proxying artefacts to its S3 bucket.

``mlflow server --serve-artifacts`` keeps runs, metrics, the model registry and lineage tags in
PostgreSQL and writes every artefact under ``s3://<bucket>/<prefix>``; clients talk HTTP to the
server only (``mlflow-artifacts:`` URIs), so they need neither database nor S3 credentials.
Credentials reach the server through its environment (``PGPASSWORD``, ``AWS_*``), never its
command line, which any local user can read in ``ps``.

:func:`gc` runs ``mlflow gc`` against the same backend store and artefact destination: what
removes the rows and S3 objects of runs deleted through the client API.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from visage_ml.procenv import child_env
from visage_ml.stack import proc

log = logging.getLogger(__name__)

START_FAILED = (
    "the MLflow server did not answer /health within {timeout:.0f} s; its log {log_file} says "
    "why: {tail}"
)
NOT_DROPPED = (
    "the Python interpreter %s lies where user 'nobody' cannot reach it, so the MLflow server "
    "runs as the current user; create the virtual environment from an interpreter outside a "
    "private home folder to run it unprivileged"
)
NO_BACKEND = (
    "the MLflow server cannot start without its backend store: the stack's credentials are "
    "missing from secrets/stack.json; run `visage stack up`, which generates them"
)
GC_FAILED = "mlflow gc failed (exit {code}): {err}"


def mlflow_binary() -> str:
    """The ``mlflow`` executable of this environment."""
    return str(Path(sys.executable).with_name("mlflow"))


@dataclass(frozen=True)
class MlflowBackend:
    """Where an MLflow server keeps rows and artefacts, and the credentials to reach them."""

    db_host: str
    db_port: int
    db_user: str
    db_password: str
    db_name: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    artifacts_uri: str  # s3://bucket/prefix

    @property
    def store_uri(self) -> str:
        """SQLAlchemy URI without the password (which travels as ``PGPASSWORD``)."""
        return (
            f"postgresql+psycopg://{quote(self.db_user, safe='')}@{self.db_host}:{self.db_port}"
            f"/{quote(self.db_name, safe='')}"
        )

    def env(self) -> dict[str, str]:
        """The variables a server or ``mlflow gc`` needs: database and S3 credentials."""
        return {
            "PGPASSWORD": self.db_password,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "DO_NOT_TRACK": "1",
        }


@dataclass
class MlflowServer(proc.PidFileService):
    """``mlflow server`` in ``root`` (log and pid file) on ``host:port``."""

    name: ClassVar[str] = "MLflow server"
    root: Path
    port: int
    backend: MlflowBackend | None  # None: enough to check or stop a server, not to start one
    host: str = "127.0.0.1"
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        """The tracking (and registry) URI clients use."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return Path(self.root) / "mlflow.log"

    @property
    def pid_file(self) -> Path:
        return Path(self.root) / "mlflow.pid"

    def healthy(self) -> bool:
        """Whether ``/health`` answers OK."""
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:  # noqa: S310
                return resp.status == 200
        except OSError:
            return False

    def running(self) -> bool:
        return self.pid() is not None and self.healthy()

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the server and wait for ``/health``; idempotent."""
        if self.pid() is not None:
            self._wait_ready(timeout)
            return
        stale = self.stale_pid()
        if stale is not None:
            raise proc.StackError(
                proc.STALE_PID.format(service="mlflow", pid_file=self.pid_file, pid=stale)
            )
        if self.backend is None:
            raise proc.StackError(NO_BACKEND)
        proc.require_port_free(self.port, host=self.host, service="mlflow")
        # The server is a Python program: it can drop to `nobody` only where that user can
        # execute this environment's interpreter (a pyenv under /root it cannot).
        interpreter = Path(sys.executable).resolve()
        drop = proc.reachable(interpreter)
        if proc.dropping() and not drop:
            log.warning(NOT_DROPPED, interpreter)
        proc.service_dir(Path(self.root), drop=drop)
        argv = [
            mlflow_binary(),
            "server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--serve-artifacts",
            "--artifacts-destination",
            self.backend.artifacts_uri,
        ]
        extra = {
            **self.backend.env(),
            "MLFLOW_BACKEND_STORE_URI": self.backend.store_uri,
            "HOME": str(self.root),
        }
        self._launch(
            proc.as_service(argv, drop=drop), cwd=self.root, extra_env=extra, timeout=timeout
        )
        log.info("MLflow server started on %s", self.uri)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                break
            if self.healthy():
                return
            time.sleep(0.25)
        raise proc.StackError(
            START_FAILED.format(timeout=timeout, log_file=self.log_file, tail=self._log_tail())
        )


def gc(
    backend: MlflowBackend,
    *,
    tracking_uri: str,
    run_ids: Sequence[str] = (),
    experiment_ids: Sequence[str] = (),
    timeout: float = 300.0,
) -> None:
    """``mlflow gc``: remove deleted runs' rows and artefacts for good.

    Parameters
    ----------
    backend
        The server's backend store and artefact destination.
    tracking_uri
        The server's URI (``mlflow-artifacts:`` locations resolve through it).
    run_ids, experiment_ids
        Runs / experiments already in the ``deleted`` stage; nothing else is touched.
    timeout
        Seconds before the command is given up.
    """
    if not run_ids and not experiment_ids:
        return
    argv = [
        mlflow_binary(),
        "gc",
        "--backend-store-uri",
        backend.store_uri,
        "--artifacts-destination",
        backend.artifacts_uri,
    ]
    if run_ids:
        argv += ["--run-ids", ",".join(run_ids)]
    if experiment_ids:
        argv += ["--experiment-ids", ",".join(experiment_ids)]
    extra = {**backend.env(), "MLFLOW_TRACKING_URI": tracking_uri}
    result = subprocess.run(
        argv, env=child_env(extra), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise proc.StackError(GC_FAILED.format(code=result.returncode, err=result.stderr[-800:]))
