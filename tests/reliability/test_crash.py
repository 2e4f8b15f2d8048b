"""Crash consistency: kill the process (``os._exit``, as ``kill -9``) at every fault point of
enrolment, erasure, ledger append and import, then restart and check the stores.

The cases and their checks are in ``crashcases.py`` (the benchmark runs them too): a few points
of each kind by default, all of them under the slow marker.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest
from crashcases import CASES, DEFAULT, Crashed, child, crash_and_recover
from regulator_helpers import assert_witnessed_valid, later
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.faults import FAULT_EXIT
from visage_ml.privacy.witness import Witness, default_witness_dir


def params():
    for op, fault in CASES:
        marks = () if (op, fault) in DEFAULT else (pytest.mark.slow,)
        yield pytest.param(op, fault, marks=marks, id=f"{op}-{fault}")


@pytest.mark.parametrize(("op", "fault"), list(params()))
def test_killed_at_a_fault_point_then_restart_is_consistent(project, tmp_path, op, fault):
    crash_and_recover(project, tmp_path, op, fault)


@pytest.mark.parametrize(
    "between", ["", "checkpoint"], ids=["resumed", "checkpointed-then-resumed"]
)
def test_an_erasure_killed_once_its_completion_was_cosigned_verifies_when_resumed_hours_later(
    project, tmp_path, monkeypatch, between
):
    """The process dies (kill -9) right after the witnesses cosigned `erasure.completed`, before
    the checkpoint they cosigned is kept; 3 hours later `visage privacy resume` issues the
    certificate (with, in between, a checkpoint that moves the witness on to a newer tree). The
    completion was witnessed at its time: the certificate must carry that checkpoint and verify
    VALID, its completion date witnessed. It carried one cosigned at the resume, and both
    verifiers failed the completion date of an honest controller's erasure."""
    witness = Witness.create(default_witness_dir(), name="witness.example.org/w1")
    c = Crashed(project)
    died = child(c.paths.root, "witness:kept:cosigned", "erase", c.pids[0])
    assert died.returncode == FAULT_EXIT, (died.returncode, died.stderr[-3000:])
    later(monkeypatch, timedelta(hours=3))
    runner = CliRunner()
    if between:
        res = runner.invoke(app, ["privacy", between])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["privacy", "resume", "--json"])
    assert res.exit_code == 0, res.output
    (done,) = json.loads(res.output[res.output.index("[") :])
    cert = tmp_path / "cert.json"
    shutil.copy(done["certificate"], cert)
    pub = tmp_path / "ledger.pub"
    shutil.copy(c.paths.ledger_public_key, pub)
    doc = json.loads(cert.read_text())
    vkey = witness.verifier.vkey

    assert_witnessed_valid(tmp_path, cert, pub, doc, vkey)
