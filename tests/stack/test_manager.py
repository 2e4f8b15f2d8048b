"""`visage stack up | down | status` on a project: configuration, idempotence, nothing left."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from project_helpers import copy_repo_params, free_port_range, write_overrides

from visage_ml.config import ProjectPaths
from visage_ml.stack import proc
from visage_ml.stack.manager import Stack, set_tracking

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack_project(monkeypatch):
    # /tmp, not pytest's 0700 folder: the servers run as `nobody` when the tests run as root.
    base = Path(tempfile.mkdtemp(prefix="visage-stackproj-"))
    base.chmod(0o711)
    root = base / "proj"
    root.mkdir()
    root.chmod(0o755)
    copy_repo_params(root / "params.yaml")
    write_overrides(
        root / "params.yaml",
        {
            "stack.postgres.port": proc.free_port(),
            "stack.s3.port": free_port_range(10),
            "stack.mlflow.port": proc.free_port(),
        },
    )
    monkeypatch.setenv("VISAGE_PROJECT", str(root))
    yield ProjectPaths(root)
    st = Stack.of(ProjectPaths(root))
    if st.creds:
        st.down()
    shutil.rmtree(base, ignore_errors=True)


def test_postgres_only_down_leaves_nothing_and_errors_say_what_to_do(stack_project):
    stack = Stack.of(stack_project, generate=True)
    creds = stack_project.stack_secrets
    assert creds.stat().st_mode & 0o077 == 0
    pg = stack.postgres()
    pg.start()
    assert pg.running()
    # A second `up` of a running service is a no-op.
    pg.start()
    stack.down()
    assert stack.leftovers() == []
    assert not proc.port_open(pg.port)
    # A stale pid file (a stack killed with -9) is named, with what to do.
    s3 = stack.seaweed()
    s3.root.mkdir(parents=True, exist_ok=True)
    s3.pid_file.write_text("999999\n")
    with pytest.raises(proc.StackError, match="remove the pid file"):
        s3.start()
    s3.pid_file.unlink()
    # A port taken by another program is named, with what to do.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", s3.ports.s3))
        blocker.listen()
        with pytest.raises(proc.StackError, match="choose another port"):
            s3.start()


def test_configure_sets_tracking_and_keeps_comments(stack_project):
    text = stack_project.params.read_text()
    assert stack_project.tracking_uri.startswith("sqlite:///")
    assert set_tracking(stack_project, "server")
    after = stack_project.params.read_text()
    assert after.replace("tracking: server", "tracking: sqlite") == text
    port = Stack.of(stack_project).params.mlflow.port
    assert stack_project.tracking_uri == f"http://127.0.0.1:{port}"
    assert not set_tracking(stack_project, "server")


def test_stack_up_configures_project_and_is_idempotent(stack):
    """The session stack was started by `Stack.up` on a DVC project (tests/conftest.py); its
    `down` at session end fails the session when any process or port is left."""
    import subprocess
    import sys

    root = stack.root_project
    status = stack.manager.status()
    assert all(s["up"] for s in status.values()), status
    pids = [s["pid"] for s in status.values()]
    committed = (root / ".dvc" / "config").read_text()
    local = (root / ".dvc" / "config.local").read_text()
    secret = stack.s3_secret_key
    assert secret in local and secret not in committed
    assert "endpointurl" in local
    assert (root / ".dvc" / "config.local").stat().st_mode & 0o077 == 0
    assert (root / "secrets" / "stack.json").stat().st_mode & 0o077 == 0
    assert "/.stack/" in (root / ".gitignore").read_text().splitlines()
    dvc = str(Path(sys.executable).with_name("dvc"))
    out = subprocess.run(
        [dvc, "check-ignore", ".stack/s3"], cwd=root, capture_output=True, text=True
    )
    assert ".stack" in out.stdout
    assert ProjectPaths(root).tracking_uri == stack.mlflow_uri
    stack.manager.up()  # idempotent: the same processes
    assert [s["pid"] for s in stack.manager.status().values()] == pids
    # Every server listens on loopback only.
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    ports = {stack.postgres.port, stack.mlflow.port, *stack.s3.ports.all().values()}
    for line in listening:
        local_addr, state = line.split()[1], line.split()[3]
        host, port = local_addr.split(":")
        if state == "0A" and int(port, 16) in ports:
            assert host == "0100007F", f"port {int(port, 16)} listens beyond loopback"


def test_the_stack_keeps_its_data_and_its_credentials_out_of_git_and_dvc(tmp_path):
    """A project without the repository's ignore files (one made by hand, or its .gitignore
    lost): `stack up` adds both the services' folder and ``secrets/`` (the PostgreSQL password
    and the S3 keys), so `git add -A` or `dvc add` cannot take the credentials."""
    root = tmp_path / "proj"
    root.mkdir()
    copy_repo_params(root / "params.yaml")
    (root / ".gitignore").write_text("/data/raw\n")  # no final newline would also do
    stack = Stack.of(ProjectPaths(root))
    stack._ignore_stack_dir()
    stack._ignore_stack_dir()  # idempotent
    for name in (".gitignore", ".dvcignore"):
        lines = (root / name).read_text().splitlines()
        assert "/.stack/" in lines and "/secrets/" in lines, (name, lines)
        assert len(lines) == len(set(lines))
    assert (root / ".gitignore").read_text().startswith("/data/raw\n")
