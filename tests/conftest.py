"""Shared fixtures: a temporary project root with the default params."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from project_helpers import (
    copy_repo_params,
    free_port_range,
    init_dvc_repo,
    pipeline_env,
    write_overrides,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Under pytest-xdist (`make test`: a worker per core) every core has a busy process already:
# torch's OpenMP threads, one per core by default, then spin-wait against the other workers (a
# training step of the default backbone on 2 cores beside a busy worker: 1.8 s with 2 threads,
# 0.3 s with 1). One thread per worker process, and per stage process it runs (set before torch
# is imported; subprocesses inherit it). A value the user sets is kept.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The default directory witness of test projects (privacy.witness) lives in a folder of this
# test session, never in the user's ~/.local/share/visage-ml/witness.
# Each pytest process (each xdist worker) makes its own, and removes it as it exits: one was
# left in /tmp by every process of every run.
os.environ["VISAGE_WITNESS_DIR"] = tempfile.mkdtemp(prefix="visage-witness-")
atexit.register(shutil.rmtree, os.environ["VISAGE_WITNESS_DIR"], ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the group into the node id
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test``), the tests of the tiny pipeline all run in one
    process, which builds it once (about 100 s): a session fixture is built in every process
    whose tests ask for it."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if "tiny_pipeline" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tiny_pipeline"))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Warn when pytest-xdist did not group the tiny pipeline's tests, so that each process
    builds it: pytest 9.2's node ids undo loadgroup's (pytest-xdist#1386; pyproject pins
    pytest<9.2), as a group marked after pytest-xdist read the marks did."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [
        item.nodeid
        for item in session.items
        if any(m.args == ("tiny_pipeline",) for m in item.iter_markers("xdist_group"))
        and not item.nodeid.endswith("@tiny_pipeline")
    ]
    if lost:
        session.config.issue_config_time_warning(
            pytest.PytestWarning(
                f"pytest-xdist did not group {len(lost)} tests of the tiny pipeline "
                f"(pytest {pytest.__version__}): every process builds it, about 100 s each. "
                "With pytest 9.2, install pytest<9.2 (pytest-xdist#1386)."
            ),
            stacklevel=1,
        )


@pytest.fixture(autouse=True)
def _own_witness(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
):
    """Each test gets its own directory witness. A test that copies a project and extends the
    copy's ledger leaves a checkpoint that makes the original look rolled back: what a witness
    must say of a copy that went its own way (same ledger key, same log), and no business of
    the next test. The tiny pipeline's ledger records its witness's key, which the open check
    wants in the folder: a test using it gets a copy of that witness."""
    folder = tmp_path_factory.mktemp("witness")
    if "tiny_pipeline" in request.fixturenames:
        pipeline = request.getfixturevalue("tiny_pipeline").root.parent / "witness"
        if pipeline.is_dir():
            shutil.copytree(pipeline, folder, dirs_exist_ok=True)
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(folder))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project root holding a copy of the repository's params.yaml."""
    root = tmp_path / "proj"
    root.mkdir()
    copy_repo_params(root / "params.yaml")
    monkeypatch.setenv("VISAGE_PROJECT", str(root))
    monkeypatch.delenv("VISAGE_MASTER_KEY", raising=False)
    return root


# Tiny SynthFaces: small enough that a stage runs in seconds, large enough for every group.
TINY = {
    "synth.n_identities": 16,
    "synth.images_per_identity": [3, 4],
    "synth.n_scenes": 2,
    "synth.consent.training": 1.0,
    "synth.consent.evaluation": 1.0,
    "synth.consent.identification": 1.0,
    "synth.consent.restricted": 0.0,
    "synth.consent.objected": 0.0,
    "prepare.split.val": 0.15,
    "prepare.split.test": 0.3,
}


@pytest.fixture
def tiny_project(project: Path):
    """Factory: the `project` root with TINY params (+ overrides), optionally DVC-backed."""

    def make(overrides: dict | None = None, *, dvc: bool = False) -> Path:
        write_overrides(project / "params.yaml", {**TINY, **(overrides or {})})
        if dvc:
            init_dvc_repo(project)
        return project

    return make


# A whole pipeline run, shared by the tests that need real trained and exported models.
PIPELINE = {
    "synth.n_identities": 24,
    "synth.images_per_identity": [6, 8],
    "synth.n_scenes": 3,
    # ~90 training crops: 6 epochs in batches of 64 (about a dozen steps) left a network that
    # embedded every face alike (cosine ~1.0 between any two crops, AUC 0.63-0.81 over six
    # seeds, no better than untrained); batches of 16 for 15 epochs learn (AUC 0.80-0.97, see
    # test_stage_train.py) for about 5 s more.
    "train_embedder.epochs": 15,
    "train_embedder.batch_size": 16,
    "train_embedder.early_stopping_patience": 15,  # a 4-identity val split is too noisy to stop on
    "train_demographics.epochs": 3,
    "evaluate.bootstrap": 20,
    "evaluate.impostor_pairs": 5000,
    # A tiny evaluation population (every cell, both parts); a 3-epoch demographic net cannot
    # pass the demographic gate, so it is advisory here.
    "eval_population.identities_per_cell": 2,
    "eval_population.calibration_identities_per_cell": 2,
    "eval_population.images_per_identity": 2,
    # A tiny demographic training population (every cell) from its own seed.
    "demographic_population.identities_per_cell": 1,
    "demographic_population.images_per_identity": 2,
    "evaluate.calibration.bootstrap": 10,
    "evaluate.calibration.min_cluster_impostors": 50,
    "evaluate.gate.demographics.enforce": False,
}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory):
    """A tiny SynthFaces project after `visage data synth` and a full `dvc repro`.

    Session-scoped and read-only for its users: tests that change it must copy it first.
    """
    import subprocess
    import sys

    from visage_ml.config import ProjectPaths

    root = tmp_path_factory.mktemp("pipeline") / "proj"
    root.mkdir()
    copy_repo_params(root / "params.yaml")
    write_overrides(root / "params.yaml", {**TINY, **PIPELINE})
    init_dvc_repo(root)
    # Its own witness (the ledger records its key): `_own_witness` gives each test a copy.
    env = {**pipeline_env(root), "VISAGE_WITNESS_DIR": str(root.parent / "witness")}
    bindir = Path(sys.executable).parent
    for cmd in ([str(bindir / "visage"), "data", "synth"], [str(bindir / "dvc"), "repro"]):
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (
            f"{cmd[-2:]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return ProjectPaths(root)


# The stack's servers (issue 19). As root they run as `nobody`, who cannot enter pytest's
# 0700 /tmp/pytest-of-root, so their folders are made with tempfile under /tmp (0711) and
# removed at session end, after the servers stop.
@pytest.fixture(scope="session")
def stack_postgres():
    """A PostgreSQL 18 + pgvector cluster on loopback for the whole session (~1 s to start).

    Yields the :class:`visage_ml.stack.postgres.PostgresServer` (``.dsn`` with password,
    ``.data_dir``; database ``visage`` with the ``vector`` extension). Stopped at session end.
    """
    from visage_ml.stack.postgres import temporary_server

    with temporary_server(prefix="visage-stack-pg-") as server:
        yield server


@pytest.fixture
def pg(stack_postgres):
    """The session's PostgreSQL, as the stack configures it for erasure (WAL not recycled)."""
    import psycopg

    with psycopg.connect(stack_postgres.dsn, autocommit=True) as conn:
        if conn.execute("SHOW wal_recycle").fetchone()[0] != "off":
            # The stack writes this into visage.conf; an older cluster may lack it.
            conn.execute("ALTER SYSTEM SET wal_recycle = off")
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.2)
    return stack_postgres


@pytest.fixture
def table():
    """A gallery table of the test's own in the session's PostgreSQL."""
    return f"g_{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def stack(stack_postgres):
    """The whole stack, started the way `visage stack up` starts it, for the session.

    A DVC project under /tmp (``.root_project``) runs :meth:`Stack.up`: PostgreSQL (the
    session's `stack_postgres`, linked in as ``.stack/postgres``), SeaweedFS S3 and an MLflow
    server, the project configured to use them. Yields a :class:`types.SimpleNamespace` with
    ``.dsn``, ``.data_dir`` (PostgreSQL), ``.s3_endpoint``, ``.s3_access_key``,
    ``.s3_secret_key``, ``.s3_bucket``, ``.s3_data_dir``, ``.mlflow_uri``, the service objects
    ``.postgres``, ``.s3``, ``.mlflow``, ``.mlflow_backend`` (for ``mlflow gc``), ``.manager``
    (the :class:`Stack`), and ``.root``, ``.overrides``, ``.creds`` for `stack_project_on`.

    At session end :meth:`Stack.down` stops everything and fails (an error of the session)
    when any process or port of the stack is left.
    """
    import json
    import tempfile
    import types

    from visage_ml.config import ProjectPaths
    from visage_ml.stack import proc
    from visage_ml.stack.manager import Stack

    pg = stack_postgres
    base = Path(tempfile.mkdtemp(prefix="visage-stack-"))
    base.chmod(0o711)
    root = base / "proj"
    root.mkdir()
    root.chmod(0o755)
    copy_repo_params(root / "params.yaml")
    s3_base = free_port_range(10)
    overrides = {
        "stack.postgres.port": pg.port,
        "stack.s3.port": s3_base,
        "stack.mlflow.port": proc.free_port(),
    }
    write_overrides(root / "params.yaml", overrides)
    init_dvc_repo(root)
    creds = {"postgres_password": pg.password}
    (root / "secrets").mkdir(mode=0o700)
    (root / "secrets" / "stack.json").write_text(json.dumps(creds))
    (root / "secrets" / "stack.json").chmod(0o600)
    (root / ".stack").mkdir()
    (root / ".stack" / "postgres").symlink_to(pg.root)
    manager = Stack.of(ProjectPaths(root), generate=True)
    try:
        manager.up()
        s3, ml = manager.seaweed(), manager.mlflow()
        yield types.SimpleNamespace(
            root=root / ".stack",
            root_project=root,
            manager=manager,
            overrides=overrides,
            creds=dict(manager.creds),
            dsn=pg.dsn,
            data_dir=pg.data_dir,
            postgres=pg,
            s3=s3,
            s3_endpoint=s3.endpoint,
            s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key,
            s3_bucket=s3.bucket,
            s3_data_dir=s3.data_dir,
            mlflow=ml,
            mlflow_uri=ml.uri,
            mlflow_backend=manager.backend(),
        )
    finally:
        try:
            manager.down()  # raises when a process or port of the stack is left
        finally:
            shutil.rmtree(base, ignore_errors=True)
