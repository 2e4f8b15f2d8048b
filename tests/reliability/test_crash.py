"""Crash consistency: kill the process (``os._exit``, as ``kill -9``) at every fault point of
enrolment, erasure, ledger append and import, then restart and check the stores.

The cases and their checks are in ``crashcases.py`` (the benchmark runs them too): a few points
of each kind by default, all of them under the slow marker.
"""

from __future__ import annotations

import pytest
from crashcases import CASES, DEFAULT, crash_and_recover


def params():
    for op, fault in CASES:
        marks = () if (op, fault) in DEFAULT else (pytest.mark.slow,)
        yield pytest.param(op, fault, marks=marks, id=f"{op}-{fault}")


@pytest.mark.parametrize(("op", "fault"), params())
def test_killed_at_a_fault_point_then_restart_is_consistent(project, tmp_path, op, fault):
    crash_and_recover(project, tmp_path, op, fault)
