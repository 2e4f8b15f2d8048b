"""`visage demo`'s closing summary: the gate's three-way outcome, the served 1:N operating point
and the demographic model's accuracy per group, as a user reads them after `make demo`."""

from __future__ import annotations

import json
import shutil
import sys
import time

import pytest
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.app.cli.demo_cmd import _operating_point, _release_for_new_project
from visage_ml.app.cli.fairness_summary import fairness_lines
from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.witness import Witness, default_witness_dir, project_id
from visage_ml.privacy.witnessed import forget_checks


@pytest.mark.pipeline
def test_summary_shows_the_gate_outcome_the_served_point_and_group_accuracy(
    tiny_pipeline, monkeypatch
):
    monkeypatch.setenv("VISAGE_PROJECT", str(tiny_pipeline.root))
    r = CliRunner().invoke(app, ["gallery", "info", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output[r.output.index("{") : r.output.rindex("}") + 1])
    lines = _operating_point(tiny_pipeline)
    # The same operating point `visage gallery info` and /healthz show.
    assert f"{info['gallery_size']} enrolled" in lines[0]
    assert f"target FPIR {info['target_fpir']:g}" in lines[0]
    assert f"threshold {info['threshold']:.4f}" in lines[0]
    assert ("too large" in "\n".join(lines)) is bool(info["too_large"])

    summary = "\n".join(fairness_lines(tiny_pipeline.reports))
    metrics = json.loads((tiny_pipeline.reports / "metrics.json").read_text())
    outcome = str(metrics["fairness"]["gate_outcome"]).upper()
    assert f"fairness gate        {outcome}" in summary
    for group in ("g1", "g2", "g3", "g4"):
        assert f"{group} " in summary.split("gender accuracy")[1].splitlines()[0]
    # The detector misses some groups more than others: the summary says by how much.
    missed = json.loads((tiny_pipeline.reports / "fairness.json").read_text())
    g1 = missed["detection_intervals"]["group"]["groups"]["g1"]
    line = summary.split("detector miss rate")[1].splitlines()[0]
    assert f"g1 {g1['value']:.3g} [{g1['ci_low']:.3g}, {g1['ci_high']:.3g}]" in line


def test_without_a_gallery_report_the_point_is_not_made_up(tmp_path):
    lines = _operating_point(ProjectPaths(tmp_path))
    assert lines == ["  served 1:N point     n/a (FileNotFoundError: run `visage gallery info`)"]


def test_a_demo_in_a_re_created_folder_releases_the_old_binding_only_when_nothing_is_left(
    project, monkeypatch
):
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    core.add_subject(source="t")
    core.witnessing.checkpoint_and_witness()
    witness = Witness(default_witness_dir())
    assert witness.bound(project_id(project)) is not None
    # A project still here (its ledger, or its raw data): nothing is released.
    assert _release_for_new_project(paths) == []
    shutil.rmtree(paths.privacy)
    paths.signing_key.unlink()
    (paths.raw / "p1").mkdir(parents=True)
    assert _release_for_new_project(paths) == []
    # The folder emptied (as a fresh clone where an earlier one stood): released, recorded.
    shutil.rmtree(paths.raw)
    (line,) = _release_for_new_project(paths)
    assert "released" in line and witness.bound(project_id(project)) is None
    forget_checks()
    PrivacyCore(paths).add_subject(source="t")  # the new project's ledger is witnessed


FAKE_DVC = """\
import sys, time
print("'data/raw.dvc' didn't change, skipping")
print("Stage 'prepare' didn't change, skipping")
print("Running stage 'train':")
print("> python -m visage_ml.app.stages.train")
print("epoch 1/2", file=sys.stderr)
time.sleep(1.0)
print("Stage 'report.html' is not a stage of ours")
print("Running stage 'evaluate':")
time.sleep(0.5)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("status", [0, 3])
def test_the_demo_runs_dvc_once_and_times_each_stage_from_its_output(tmp_path, capfd, status):
    """One `dvc repro` for the whole pipeline (not one DVC start per stage): its output, the
    stages' own included, reaches the user as it comes, and each stage's time is read off the
    lines where DVC starts or skips it; a failure names the stage it stopped in."""
    from visage_ml.app.cli.demo_cmd import repro_timed

    fake = tmp_path / "fake_dvc.py"
    fake.write_text(FAKE_DVC)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    returncode, last = repro_timed(
        [sys.executable, str(fake), str(status)],
        tmp_path,
        ["prepare", "train", "evaluate", "gallery"],
        timings,
    )
    assert (returncode, last) == (status, "evaluate")
    assert list(timings) == ["prepare", "train", "evaluate"]
    assert sum(timings.values()) <= time.perf_counter() - t
    # The sleeps land in their stages; the skipped stage holds DVC's start only.
    assert timings["train"] >= 1.0 and timings["evaluate"] >= 0.5
    assert timings["prepare"] < 1.0
    out = capfd.readouterr().out
    assert "epoch 1/2" in out and "> python -m visage_ml.app.stages.train" in out
