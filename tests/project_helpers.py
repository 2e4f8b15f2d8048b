"""Helpers shared by conftest and test modules: params overrides, subprocess environment.

A test module cannot ``from conftest import ...`` reliably: tests/ and tests/reliability/ each
hold a conftest.py, and whichever was imported first answers to that name.
"""

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import yaml

# libyaml's loader and dumper where PyYAML has them: nine tests in ten start from a copy of
# params.yaml (the `project` fixture), and the pure-Python parser spent 14 ms a copy on it (13 s
# of the suite on one core). Both read and write the same documents: only the speed differs.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _load(text: str):
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader: libyaml's or PyYAML's)


def write_overrides(params_file: Path, overrides: dict) -> None:
    """Apply dotted-key overrides to a params.yaml in place."""
    raw = _load(params_file.read_text())
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    params_file.write_text(yaml.dump(raw, Dumper=_DUMPER, sort_keys=False))


def pipeline_env(root: Path) -> dict[str, str]:
    """Environment for CLI / DVC subprocesses acting on the project at ``root``."""
    return {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "VISAGE_PROJECT": str(root),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


REPO = Path(__file__).resolve().parents[1]
# What a user's own project changes in the checkout's params.yaml, per the README: `visage stack
# up` sets stack.tracking to server, the shared-gallery sed sets the backend to pgvector. A test
# project starts from the product's values of these, not from the checkout's current ones.
USER_SETTINGS = {"stack.tracking": "sqlite", "serving.gallery.backend": "memory"}


def copy_repo_params(dst: Path) -> Path:
    """The repository's params.yaml at ``dst``, with :data:`USER_SETTINGS` put back (its text,
    comments included, as it is when they hold already)."""
    shutil.copy(REPO / "params.yaml", dst)
    raw = _load(Path(dst).read_text())
    for dotted, value in USER_SETTINGS.items():
        node = raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            write_overrides(dst, USER_SETTINGS)
            break
    return dst


def init_dvc_repo(root: Path) -> None:
    """Make ``root`` a git + DVC repository running the repository's dvc.yaml.

    ``visage_ml`` is linked in because dvc.yaml lists the stage code as dependencies.
    """
    import subprocess
    import sys

    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    (root / "visage_ml").symlink_to(REPO / "visage_ml")
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    for cmd in (
        ["git", "init", "-q"],
        [dvc, "init", "-q"],
        [dvc, "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "project"],
    ):
        subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)


def free_port_range(n: int) -> int:
    """The first of ``n`` consecutive loopback ports nothing is bound to now, below the
    system's ephemeral range: a port there may be the local end of any process's outgoing
    connection (the other test process's clients, under ``make test``) when a server comes
    to bind it, though nothing listened on it when it was chosen."""
    import random

    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        ephemeral = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    for _ in range(500):
        base = random.randint(10000, max(10000, ephemeral - n - 1))
        if all(_bindable(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free range of loopback ports")


def _bindable(port: int) -> bool:
    """Whether a server could bind ``port`` on loopback now (as the stack's servers bind)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing is bound to now (the system's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def run_server(app, options: dict):
    """uvicorn on ``app`` with ``options`` (a free loopback port) in a thread; yields the port
    once it serves, and stops it (the thread joined) on leaving."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, **{**options, "port": port}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert not thread.is_alive(), "the server did not stop within 20 s"


def stack_project_on(stack, root: Path, *, tracking: str = "server") -> Path:
    """Make the project at ``root`` use the session's `stack` (its `.stack` linked there).

    Writes the stack's ports into params.yaml (``stack.tracking`` = ``tracking``) and its
    credentials into ``secrets/stack.json`` (0600), as `visage stack up` would.
    """
    import json

    write_overrides(root / "params.yaml", {**stack.overrides, "stack.tracking": tracking})
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    (secrets / "stack.json").write_text(json.dumps(stack.creds))
    (secrets / "stack.json").chmod(0o600)
    (root / ".stack").symlink_to(stack.root)
    return root


# Who commits in a test repository (git refuses to commit without a name).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(root: Path, *args: str) -> str:
    """Run git in ``root`` (it must succeed); its output, stripped."""
    import subprocess

    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, env={**os.environ, **GIT_ENV}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def committed_then_removed(root: Path, *paths: str) -> None:
    """``paths`` committed to git in ``root``, then removed in a second commit: gone from the
    work tree, held by the history."""
    git(root, "add", *paths)
    git(root, "commit", "-qm", "add")
    git(root, "rm", "-rq", *paths)
    git(root, "commit", "-qm", "tidy")


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file below ``root`` (a server's data folder) holding ``needle``, relative to it."""
    hits = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            try:
                if needle in path.read_bytes():
                    hits.append(str(path.relative_to(root)))
            except OSError:
                continue  # a file the server removed or rotated while it was walked
    return hits


def cached_object(root: Path, md5: str) -> Path:
    """Where the object ``md5`` (a ``.dir`` one with its suffix) lies in the DVC cache of the
    project at ``root`` (DVC 3's default cache)."""
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def follow_first_advice(said: str, root: Path, copy: Path):
    """Run the first command ``said`` advises (``run `dvc ...```) in ``copy``, a copy of the
    project at ``root`` (links kept as links): what a user following the message would have.
    Returns the completed process."""
    import re
    import subprocess

    advised = re.search(r"run `(dvc [^`]+)`", said)
    assert advised, said
    shutil.copytree(root, copy, symlinks=True)
    dvc = str(Path(sys.executable).with_name("dvc"))
    return subprocess.run(
        [dvc, *advised.group(1).split()[1:]],
        cwd=copy,
        env=pipeline_env(copy),
        capture_output=True,
        text=True,
    )
