"""``visage stack up | down | status``: the three services together, and the project on them.

Local mode starts PostgreSQL (+ pgvector), SeaweedFS S3 and an MLflow server on loopback, in
``stack.dir`` of the project, with credentials generated once into ``secrets/stack.json``
(0600). External mode starts nothing: the same settings name a team's PostgreSQL, S3 and MLflow
server. Either way :func:`configure_project` points the project at them: ``stack.tracking:
server`` in ``params.yaml`` (the MLflow URI follows from it) and a DVC remote whose endpoint
and credentials live in ``.dvc/config.local`` only, never in committed configuration.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from visage_ml.config import ConfigError, ProjectPaths, StackParams, load_params
from visage_ml.io import atomic_write_text, file_lock, private_dir
from visage_ml.stack import proc
from visage_ml.stack.mlflow_server import MlflowBackend, MlflowServer
from visage_ml.stack.postgres import PostgresServer
from visage_ml.stack.seaweed import SeaweedPorts, SeaweedServer

log = logging.getLogger(__name__)

NO_CREDENTIALS = (
    "{what} is not set: put it in {path} (key {key}) or ${env}, then run `visage stack up` again"
)
EXTERNAL_INCOMPLETE = (
    "stack.mode is external but stack.{key} is empty; name the team's service there "
    "(docs/deploy.md) or set stack.mode: local"
)
LEFT_RUNNING = (
    "after `stack down` these are still running: {what}; stop them by pid (kill PID) and check "
    "with `visage stack status`"
)
TRACKING_EDIT_FAILED = (
    "params.yaml is not valid after setting stack.tracking ({err}); set `stack: {{tracking: "
    "server}}` by hand and run `visage stack up` again"
)
TRACKING_LINE = re.compile(r"^(\s+tracking:\s*)(sqlite|server)(\b.*)$", re.MULTILINE)
IGNORED = (".gitignore", ".dvcignore")

_CRED_ENV = {
    "postgres_password": "VISAGE_STACK_POSTGRES_PASSWORD",
    "s3_access_key": "VISAGE_STACK_S3_ACCESS_KEY",
    "s3_secret_key": "VISAGE_STACK_S3_SECRET_KEY",
}


# -- credentials -------------------------------------------------------------------------------


def load_credentials(paths: ProjectPaths, *, generate: bool) -> dict[str, str]:
    """The stack's credentials from ``secrets/stack.json`` (then the environment).

    Parameters
    ----------
    paths
        The project.
    generate
        Create what is missing (local mode) and write the file 0600; otherwise a missing
        credential raises a :class:`~proc.StackError` that says where to put it.
    """
    path = paths.stack_secrets
    creds: dict[str, str] = {}
    if path.is_file():
        creds = json.loads(path.read_text())
    changed = False
    for key, env in _CRED_ENV.items():
        if creds.get(key):
            continue
        if os.environ.get(env):
            creds[key] = os.environ[env]
        elif generate:
            creds[key] = proc.generate_secret(12 if key == "s3_access_key" else 32)
            changed = True
    if changed:
        private_dir(path.parent)
        atomic_write_text(path, json.dumps(creds, indent=2), mode=0o600)
    return creds


def _need(creds: dict[str, str], key: str, paths: ProjectPaths, what: str) -> str:
    value = creds.get(key)
    if not value:
        raise proc.StackError(
            NO_CREDENTIALS.format(what=what, path=paths.stack_secrets, key=key, env=_CRED_ENV[key])
        )
    return value


# -- the stack of a project --------------------------------------------------------------------


# The stack's services, in the order they are reported.
SERVICES: tuple[str, ...] = ("postgres", "s3", "mlflow")


@dataclass
class Stack:
    """The services of one project, local or external, and how to reach each."""

    paths: ProjectPaths
    params: StackParams
    creds: dict[str, str]

    @classmethod
    def of(cls, paths: ProjectPaths, *, generate: bool = False) -> Stack:
        """The stack of ``paths`` (credentials generated when ``generate`` and local)."""
        params = load_params(paths.params).stack
        local = params.mode == "local"
        return cls(paths, params, load_credentials(paths, generate=generate and local))

    @property
    def local(self) -> bool:
        return self.params.mode == "local"

    @property
    def root(self) -> Path:
        return self.paths.root / self.params.dir

    # services (local mode)
    def postgres(self) -> PostgresServer:
        return PostgresServer(
            root=self.root / "postgres",
            port=self.params.postgres.port,
            # Not needed to stop or check a server; `up` has generated it (see `up`).
            password=self.creds.get("postgres_password", ""),
            user=self.params.postgres.user,
            database=self.params.postgres.database,
        )

    def seaweed(self) -> SeaweedServer:
        return SeaweedServer(
            root=self.root / "s3",
            ports=SeaweedPorts.from_base(self.params.s3.port),
            access_key=self.creds.get("s3_access_key", ""),
            secret_key=self.creds.get("s3_secret_key", ""),
            bucket=self.params.s3.bucket,
            volume_size_mb=self.params.s3.volume_size_mb,
        )

    def mlflow(self) -> MlflowServer:
        backend = self.backend() if self.creds else None
        return MlflowServer(
            root=self.root / "mlflow", port=self.params.mlflow.port, backend=backend
        )

    # how to reach each (both modes)
    def postgres_dsn(self, database: str | None = None) -> str:
        """libpq URI of ``database`` (default ``stack.postgres.database``), password included."""
        password = _need(self.creds, "postgres_password", self.paths, "the PostgreSQL password")
        if self.local:
            return self.postgres().dsn_for(database or self.params.postgres.database)
        if not self.params.postgres.dsn:
            raise proc.StackError(EXTERNAL_INCOMPLETE.format(key="postgres.dsn"))
        parts = urlsplit(self.params.postgres.dsn)
        user = parts.username or self.params.postgres.user
        host = parts.hostname or "127.0.0.1"
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        path = f"/{database}" if database else parts.path
        return urlunsplit((parts.scheme, netloc, path, parts.query, ""))

    @property
    def s3_endpoint(self) -> str:
        if self.local:
            return f"http://127.0.0.1:{self.params.s3.port}"
        if not self.params.s3.endpoint:
            raise proc.StackError(EXTERNAL_INCOMPLETE.format(key="s3.endpoint"))
        return self.params.s3.endpoint.rstrip("/")

    @property
    def mlflow_uri(self) -> str:
        if self.local:
            return f"http://127.0.0.1:{self.params.mlflow.port}"
        if not self.params.mlflow.uri:
            raise proc.StackError(EXTERNAL_INCOMPLETE.format(key="mlflow.uri"))
        return self.params.mlflow.uri.rstrip("/")

    @property
    def dvc_url(self) -> str:
        return f"s3://{self.params.s3.bucket}/{self.params.s3.dvc_prefix}"

    def backend(self) -> MlflowBackend:
        """The MLflow server's backend store and artefact root (for the server and ``gc``)."""
        parts = urlsplit(self.postgres_dsn(self.params.mlflow.database))
        return MlflowBackend(
            db_host=parts.hostname or "127.0.0.1",
            db_port=parts.port or 5432,
            db_user=parts.username or self.params.postgres.user,
            db_password=self.creds["postgres_password"],
            db_name=self.params.mlflow.database,
            s3_endpoint=self.s3_endpoint,
            s3_access_key=_need(self.creds, "s3_access_key", self.paths, "the S3 access key"),
            s3_secret_key=_need(self.creds, "s3_secret_key", self.paths, "the S3 secret key"),
            artifacts_uri=f"s3://{self.params.s3.bucket}/{self.params.s3.mlflow_prefix}",
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def up(self, *, configure: bool = True) -> dict[str, Any]:
        """Start the local services (idempotent) and point the project at the stack."""
        started: dict[str, float] = {}
        if self.local:
            for key, what in (
                ("postgres_password", "the PostgreSQL password"),
                ("s3_access_key", "the S3 access key"),
                ("s3_secret_key", "the S3 secret key"),
            ):
                _need(self.creds, key, self.paths, what)
            with file_lock(self._lock_path()):
                self._ignore_stack_dir()
                self.root.mkdir(parents=True, exist_ok=True)
                os.chmod(self.root, 0o711)  # noqa: S103 - searchable by the service user, not listable
                timeout = self.params.start_timeout_s
                t0 = time.monotonic()
                pg = self.postgres()
                pg.start(timeout=timeout)
                pg.ensure_database(self.params.mlflow.database)
                started["postgres"] = time.monotonic() - t0
                t0 = time.monotonic()
                self.seaweed().start(timeout=timeout)
                started["s3"] = time.monotonic() - t0
                t0 = time.monotonic()
                self.mlflow().start(timeout=timeout)
                started["mlflow"] = time.monotonic() - t0
        if configure:
            configure_project(self)
        return {k: round(v, 2) for k, v in started.items()}

    def down(self) -> list[str]:
        """Stop every local service (MLflow first) and check that none is left.

        What is checked: every process the stack ran (and its process group) is gone, and the
        ports of those services no longer accept connections. A port some other program holds
        while this stack was not running is not ours and not reported.
        """
        if not self.local:
            return []
        with file_lock(self._lock_path()):
            servers = {"mlflow": self.mlflow(), "s3": self.seaweed(), "postgres": self.postgres()}
            pids = {name: srv.pid() for name, srv in servers.items()}
            for srv in servers.values():
                srv.stop()
            left = [
                f"{name} (pid {member})"
                for name, pid in pids.items()
                if pid is not None
                for member in sorted({pid, *proc.group_members(pid)})
                if proc.pid_alive(member)
            ]
            ports = self._ports()
            left += [
                f"port {port} ({name})"
                for name, port in ports.items()
                if pids.get(name.split()[0]) is not None and proc.port_open(port)
            ]
        if left:
            raise proc.StackError(LEFT_RUNNING.format(what=", ".join(left)))
        return left

    def _ports(self) -> dict[str, int]:
        ports = {"postgres": self.params.postgres.port, "mlflow": self.params.mlflow.port}
        s3 = SeaweedPorts.from_base(self.params.s3.port)
        ports.update({f"s3 {k}": v for k, v in s3.all().items()})
        return ports

    def leftovers(self) -> list[str]:
        """Processes of the stack still running and any of its ports still listening."""
        left = []
        pg, s3, ml = self.postgres(), self.seaweed(), self.mlflow()
        for name, pid in (("postgres", pg.pid()), ("s3", s3.pid()), ("mlflow", ml.pid())):
            if pid is not None:
                left.append(f"{name} (pid {pid})")
        ports = self._ports()
        left += [f"port {port} ({name})" for name, port in ports.items() if proc.port_open(port)]
        return left

    def _servers(self) -> dict[str, Any]:
        """The local services' server objects, by service name."""
        return {"postgres": self.postgres(), "s3": self.seaweed(), "mlflow": self.mlflow()}

    def _reach(self, service: str, servers: dict[str, Any] | None = None) -> tuple[bool, str]:
        """Whether ``service`` answers, and where it is; raises :class:`~proc.StackError` when
        an external stack leaves it unconfigured."""
        if self.local:
            srv = (servers or self._servers())[service]
            where = {
                "postgres": f"127.0.0.1:{self.params.postgres.port}",
                "s3": self.s3_endpoint,
                "mlflow": self.mlflow_uri,
            }
            return srv.running(), where[service]
        if service == "postgres":
            return _pg_reachable(self.postgres_dsn()), _redact(self.params.postgres.dsn)
        if service == "s3":
            return _http_up(self.s3_endpoint), self.s3_endpoint
        return _http_up(f"{self.mlflow_uri}/health"), self.mlflow_uri

    def probe(self, service: str) -> tuple[bool, str]:
        """Whether ``service`` (``postgres``, ``s3`` or ``mlflow``) answers, and where it is
        (or why it cannot be reached: an external stack may leave a service it does not use
        unconfigured). Only that service is looked at."""
        try:
            return self._reach(service)
        except proc.StackError as exc:
            return False, str(exc)

    def status(self) -> dict[str, dict[str, Any]]:
        """Each service: up or down, where, and (local) its pid."""
        servers = self._servers() if self.local else None
        out: dict[str, dict[str, Any]] = {}
        for name in SERVICES:
            up, where = self._reach(name, servers)
            out[name] = {"up": up, "where": where}
            if servers is not None:
                out[name]["pid"] = servers[name].pid()
        return out

    def _lock_path(self) -> Path:
        private_dir(self.paths.root / ".visage")
        return self.paths.root / ".visage" / "stack.lock"

    def _ignore_stack_dir(self) -> None:
        """``stack.dir`` and ``secrets/`` in the project's .gitignore and .dvcignore: the
        services' data (plaintext gallery embeddings in PostgreSQL among it) and the
        credentials ``secrets/stack.json`` holds must never be committed or pushed."""
        entries = (f"/{self.params.dir.strip('/')}/", f"/{self.paths.secrets.name}/")
        for name in IGNORED:
            path = self.paths.root / name
            text = path.read_text() if path.is_file() else ""
            lines = {line.strip() for line in text.splitlines()}
            missing = [e for e in entries if e not in lines and e.lstrip("/") not in lines]
            if missing:
                sep = "" if not text or text.endswith("\n") else "\n"
                atomic_write_text(path, text + sep + "".join(f"{e}\n" for e in missing))


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def _pg_reachable(dsn: str) -> bool:
    import psycopg  # heavy optional dependency: only the stack and pgvector backend need it

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _http_up(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3):  # noqa: S310 - a configured service URL
            return True
    except urllib.error.HTTPError:
        return True  # it answered (S3 answers 403 to an unsigned request)
    except OSError:
        return False


# -- the project on the stack ------------------------------------------------------------------


def set_tracking(paths: ProjectPaths, value: str) -> bool:
    """Set ``stack.tracking`` in ``params.yaml`` (one line, comments kept); True if changed."""
    text = paths.params.read_text()
    start = re.search(r"^stack:", text, re.MULTILINE)
    if start is None:
        text = text.rstrip("\n") + f"\n\nstack:\n  tracking: {value}\n"
    else:
        body = text[start.end() :]
        match = TRACKING_LINE.search(body)
        nxt = re.search(r"^\S", body, re.MULTILINE)
        if match is None or (nxt is not None and match.start() > nxt.start()):
            text = text[: start.end()] + f"\n  tracking: {value}" + body
        else:
            if match.group(2) == value:
                return False
            body = body[: match.start(2)] + value + body[match.end(2) :]
            text = text[: start.end()] + body
    atomic_write_text(paths.params, text)
    try:
        load_params(paths.params)
    except ConfigError as exc:  # pragma: no cover - our edit broke the file
        raise proc.StackError(TRACKING_EDIT_FAILED.format(err=exc)) from exc
    return True


def set_dvc_remote(root: Path, name: str, conf: dict[str, str]) -> None:
    """Add (or replace) DVC remote ``name``, made the default, in ``.dvc/config.local`` (0600).

    DVC's own configuration API, so the file is validated against DVC's schema as
    ``dvc remote add --local`` would.
    """
    from dvc.config import Config  # heavy optional dependency: only the stack needs DVC here

    local = root / ".dvc" / "config.local"
    if not local.exists():
        fd = os.open(local, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    os.chmod(local, 0o600)
    config = Config(str(root / ".dvc"))
    with config.edit("local") as edit:
        edit["remote"][name] = dict(conf)
        edit["core"]["remote"] = name
    os.chmod(local, 0o600)


def configure_project(stack: Stack) -> dict[str, Any]:
    """Point the project at ``stack``: MLflow through the server, a DVC remote on S3.

    The DVC remote (``stack.dvc_remote``, made the default) is written to
    ``.dvc/config.local`` with its endpoint and keys: the committed ``.dvc/config`` never holds
    a credential. Outside a DVC repository only the tracking setting changes.
    """
    paths = stack.paths
    changed = set_tracking(paths, "server")
    remote = None
    if (paths.root / ".dvc").is_dir():
        remote = stack.params.dvc_remote
        set_dvc_remote(
            paths.root,
            remote,
            {
                "url": stack.dvc_url,
                "endpointurl": stack.s3_endpoint,
                "access_key_id": _need(stack.creds, "s3_access_key", paths, "the S3 access key"),
                "secret_access_key": _need(
                    stack.creds, "s3_secret_key", paths, "the S3 secret key"
                ),
                "region": "us-east-1",
            },
        )
    return {"tracking_uri": paths.tracking_uri, "tracking_changed": changed, "dvc_remote": remote}


def stack_of(root: Path | None = None) -> Stack:
    """The stack of the project at ``root`` (or the discovered one), credentials as stored."""
    return Stack.of(ProjectPaths.discover(root))
