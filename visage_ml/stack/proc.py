"""Process plumbing shared by the stack services: privilege drop, ports, pid files.

PostgreSQL refuses to run as root, and a database or object store has no business running with
root's rights anyway: when visage-ml runs as root, each server is started as ``nobody`` through
``setpriv`` and its folder is handed to that user. Run as anyone else, the servers run as that
user.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat as stat_mod
import subprocess
import tempfile
import time
from pathlib import Path

from visage_ml.io import atomic_write_text
from visage_ml.procenv import child_env

log = logging.getLogger(__name__)

SERVICE_USER = "nobody"
SERVICE_GROUP = "nogroup"

PORT_IN_USE = (
    "port {port} on {host} is already in use by another process, so {service} cannot listen "
    "there; stop that process or choose another port in params.yaml ({key})"
)
STALE_PID = (
    "{service}: the pid file {pid_file} names process {pid}, which is not running (a previous "
    "stack was killed); remove the pid file and run `visage stack up` again"
)
NOT_STOPPED = "process {pid} did not stop; stop it by hand (kill -9 {pid})"
NO_SETPRIV = (
    "running as root, the stack drops to user 'nobody' with setpriv, which is not installed; "
    "install util-linux or run `visage stack` as an unprivileged user"
)
NOT_TRAVERSABLE = (
    "{path} cannot be entered by user 'nobody', which runs the stack's servers when visage-ml "
    "runs as root; make its parent folders world-executable (chmod o+x) or put the stack folder "
    "elsewhere (params.yaml: stack.dir)"
)


MSG_NOT_IN_PLACE = (
    "could not put the copy {staging} of the servers' binaries in place at {target}, which "
    "another process keeps replacing; stop the other stacks starting, remove {target}, then "
    "run again"
)
NOT_OURS = (
    "{path} is not a folder owned by this user and closed to others; remove it (it holds only "
    "copies of the stack's binaries) and run `visage stack up` again"
)


class StackError(RuntimeError):
    """A stack service could not be started, stopped or reached."""


def dropping() -> bool:
    """Whether servers are started as :data:`SERVICE_USER` (we run as root)."""
    return os.geteuid() == 0


def service_ids() -> tuple[int, int]:
    """The uid and gid the servers run under."""
    if dropping():
        pw = pwd.getpwnam(SERVICE_USER)
        return pw.pw_uid, pw.pw_gid
    return os.geteuid(), os.getegid()


def as_service(argv: list[str], *, drop: bool = True) -> list[str]:
    """``argv`` prefixed with the privilege drop when we run as root (and ``drop``)."""
    if not (drop and dropping()):
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise StackError(NO_SETPRIV)
    return [
        setpriv,
        f"--reuid={SERVICE_USER}",
        f"--regid={SERVICE_GROUP}",
        "--clear-groups",
        *argv,
    ]


def reachable(path: Path) -> bool:
    """Whether the service user can reach ``path`` (every parent folder searchable)."""
    if not dropping():
        return True
    uid, gid = service_ids()
    for parent in Path(path).resolve().parents:
        st = parent.stat()
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return False
    return True


def service_copy(source: Path, *, keep: tuple[str, ...] = ()) -> Path:
    """``source`` (a file or folder), or a copy the service user can reach when it cannot.

    Run as root, the servers run as ``nobody``, which cannot execute binaries inside a private
    folder (a virtual environment under a 0700 home or ``mktemp -d``). Then ``source`` and its
    siblings named in ``keep`` (e.g. the folder of bundled shared libraries an RPATH points to)
    are copied once, with their layout, into a root-owned folder under the system's temporary
    folder, keyed by the source's path and modification time; the copy of ``source`` is
    returned.
    """
    source = Path(source).resolve()
    if reachable(source / "x" if source.is_dir() else source):
        return source
    st = source.stat()
    key = hashlib.sha256(f"{source}\n{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"visage-stack-bin-{os.geteuid()}"
    cache.mkdir(mode=0o755, exist_ok=True)
    info = cache.lstat()
    if not stat_mod.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise StackError(NOT_OURS.format(path=cache))
    cache.chmod(0o755)
    target = cache / key
    if not _complete(target):
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=".staging-"))
        staging.chmod(0o755)
        for name in (source.name, *keep):
            item = source.parent / name
            if item.is_dir():
                shutil.copytree(item, staging / name, symlinks=True)
            elif item.exists():
                shutil.copy2(item, staging / name)
        (staging / ".complete").touch()
        _put_in_place(staging, target)
        log.info("binaries of %s copied to %s (the service user cannot reach them)", source, target)
    return target / source.name


def _complete(target: Path) -> bool:
    """Whether ``target``, a copy of :func:`service_copy`, was put in place whole."""
    return (target / ".complete").exists()


def _put_in_place(staging: Path, target: Path) -> None:
    """Rename the finished copy ``staging`` to ``target``, unless another process (a test
    worker, a second server starting) put a copy there first: the servers of that process run
    from it, so it is kept and ``staging`` let go. Removing it (as before) took the files from
    under a PostgreSQL its ``initdb`` was reading. A ``target`` left incomplete (by an older
    version, which copied in place) is moved aside, then removed."""
    for _ in range(3):
        try:
            staging.rename(target)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if _complete(target):
            shutil.rmtree(staging, ignore_errors=True)
            return
        aside = target.with_name(f".stale-{target.name}-{secrets.token_hex(4)}")
        with contextlib.suppress(FileNotFoundError):
            target.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    raise StackError(MSG_NOT_IN_PLACE.format(staging=staging, target=target))


def service_dir(path: Path, *, drop: bool = True) -> Path:
    """Create ``path`` (0700) owned by the service user, checking it can be reached."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if drop and dropping():
        uid, gid = service_ids()
        for item in [path, *path.rglob("*")]:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(item, uid, gid)
        if not reachable(path):
            raise StackError(NOT_TRAVERSABLE.format(path=path))
    return path


def give_to_service(path: Path) -> None:
    """Hand one file to the service user (a no-op unless we run as root)."""
    if dropping():
        uid, gid = service_ids()
        os.chown(path, uid, gid)


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on now (for tests and ``port: 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", *, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_port_free(port: int, *, host: str, service: str, key: str | None = None) -> None:
    """Raise a :class:`StackError` that says what to do when ``port`` is taken.

    ``key`` names the params setting of the port (``stack.<service>.port`` by default).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers bind: connections of a server just stopped (TIME_WAIT) do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StackError(
                    PORT_IN_USE.format(
                        port=port, host=host, service=service, key=key or f"stack.{service}.port"
                    )
                ) from exc
            raise


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_until(check, *, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``check()`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate(pid: int, *, timeout: float = 15.0) -> None:
    """Stop process group ``pid`` (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_until(lambda: not pid_alive(pid) and not group_members(pid), timeout=wait):
            return
    raise StackError(NOT_STOPPED.format(pid=pid))


def generate_secret(nbytes: int = 24) -> str:
    """A random URL-safe credential."""
    return secrets.token_urlsafe(nbytes)


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid`` (what a stop must leave empty)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def log_tail(path: Path, n: int = 5) -> str:
    """The last ``n`` lines of log ``path`` on one line (what a start failure quotes)."""
    try:
        return " | ".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class PidFileService(abc.ABC):
    """What a server started by the stack with a pid file shares: its pid (live or stale), how
    it is launched and how it stops. A subclass provides ``pid_file``, ``log_file``,
    ``_popen``, ``name`` and :meth:`_wait_ready`."""

    pid_file: Path
    log_file: Path
    _popen: subprocess.Popen[bytes] | None
    name: str = "server"

    def _pid_in_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The server's pid when its pid file names a live process."""
        pid = self._pid_in_file()
        return pid if pid is not None and pid_alive(pid) else None

    def stale_pid(self) -> int | None:
        """A pid left in the pid file by a server that no longer runs."""
        pid = self._pid_in_file()
        return pid if pid is not None and not pid_alive(pid) else None

    def _log_tail(self, n: int = 5) -> str:
        return log_tail(self.log_file, n)

    @abc.abstractmethod
    def _wait_ready(self, timeout: float) -> None:
        """Return once the server answers; raise (saying why) when it does not in ``timeout``."""

    def _launch(
        self, argv: list[str], *, cwd: Path, extra_env: dict[str, str], timeout: float
    ) -> None:
        """Start ``argv`` in its own session (environment without secrets plus ``extra_env``)
        with output to the log, record its pid and wait until it is ready; a server that does
        not come up is stopped again (StackError)."""
        with open(self.log_file, "ab") as logf:
            self._popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=child_env(extra_env),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atomic_write_text(self.pid_file, f"{self._popen.pid}\n")
        try:
            self._wait_ready(timeout)
        except StackError:
            self.stop()
            raise

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop the server's whole process group; a no-op when it is not running."""
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=timeout)
        if self._popen is not None:
            with contextlib.suppress(Exception):
                self._popen.wait(timeout=1)
            self._popen = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        if pid is not None:
            log.info("%s stopped", self.name)
