"""Erasure on the stack's S3 DVC remote: objects deleted, SeaweedFS vacuumed, bytes gone."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from project_helpers import init_dvc_repo, stack_project_on

from visage_ml.config import ProjectPaths, load_params
from visage_ml.rights.erasure import dvc_remote
from visage_ml.rights.erasure.base import Context
from visage_ml.stack.manager import Stack, configure_project
from visage_ml.stack.seaweed import scan

PID = "p_stackerase01"
DVC = str(Path(sys.executable).with_name("dvc"))


def _dvc(root: Path, *args: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([DVC, *args], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.pipeline
def test_subject_objects_leave_seaweedfs_volume_files(stack, project):
    init_dvc_repo(project)
    stack_project_on(stack, project)
    paths = ProjectPaths(project)
    configure_project(Stack.of(paths))
    # The subject's sealed image (ciphertext: random bytes) and another subject's.
    raw = project / "data" / "raw"
    (raw / PID).mkdir(parents=True)
    (raw / "p_other").mkdir()
    sealed = os.urandom(20_000)
    (raw / PID / "0.sealed").write_bytes(sealed)
    other = os.urandom(20_000)
    (raw / "p_other" / "0.sealed").write_bytes(other)
    _dvc(project, "add", "data/raw")
    _dvc(project, "push")
    probe = sealed[5000:5064]
    assert scan(stack.s3_data_dir, probe), "the push put the ciphertext into a volume file"
    # The raw-store step of the erasure removed the files and re-tracked data/raw.
    (raw / PID / "0.sealed").unlink()
    (raw / PID).rmdir()
    _dvc(project, "add", "data/raw")
    _dvc(project, "push")

    ctx = Context(
        paths=paths,
        core=None,
        params=load_params(paths.params),
        planned={"raw": [{"md5": hashlib.md5(sealed).hexdigest(), "path": "x"}]},  # noqa: S324
    )
    plan = dvc_remote.plan(ctx, PID)
    assert plan is not None and plan.artefacts
    assert all(a["needles"] for a in plan.artefacts)
    assert dvc_remote.verify(ctx, PID)  # not erased yet: the verify names what is left
    out = dvc_remote.erase(ctx, PID, [], plan)
    assert out.info["vacuum"]["seconds"] < 10
    assert dvc_remote.verify(ctx, PID) == []
    # The attack: grep every file of SeaweedFS's data folder for the erased ciphertext.
    assert scan(stack.s3_data_dir, probe) == []
    assert scan(stack.s3_data_dir, other[5000:5064]), "other subjects' objects are kept"
    _dvc(project, "pull", "--force", "data/raw.dvc")
    assert (raw / "p_other" / "0.sealed").read_bytes() == other
