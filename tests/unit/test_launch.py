"""Starting a training stage in torchrun processes: refused before any starts, failures named."""

from __future__ import annotations

from pathlib import Path

import pytest

from visage_ml.config import DistributedParams
from visage_ml.training import launch
from visage_ml.training.launch import WorkersFailedError, check_launch, join_run, launch_workers


def test_a_failed_worker_fails_the_stage_naming_its_rank(tmp_path: Path, monkeypatch):
    # torchrun's agent made a torchelastic_* folder in the temporary folder at each run and
    # left it there: one per training run with distributed.nproc > 1.
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(WorkersFailedError, match=r"rank 0 exit code 1, rank 1 exit code 1"):
        launch_workers("visage_ml.no_such_stage", nproc=2, root=tmp_path)
    assert list(temp.iterdir()) == []


def test_a_batch_the_processes_cannot_share_is_refused_before_any_starts():
    with pytest.raises(ValueError, match=r"multiple of distributed\.nproc"):
        check_launch(batch_size=16, nproc=3, device="cpu")
    check_launch(batch_size=16, nproc=2, device="cpu")  # on the CPU any count of processes


def test_more_processes_than_gpus_is_refused_naming_the_fix(monkeypatch):
    monkeypatch.setattr(launch, "torch_gpus", lambda device: 1)
    with pytest.raises(ValueError, match=r"set distributed\.nproc to at most 1"):
        check_launch(batch_size=16, nproc=2, device="cuda")
    check_launch(batch_size=16, nproc=1, device="cuda")


def test_a_process_joins_only_a_run_of_the_configured_size(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert join_run(DistributedParams(nproc=1), device="cpu") is None  # alone: no process group
    # torchrun started with another count than params.yaml says (a hand-made command line).
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"torchrun started 3 processes but .*nproc is 2"):
        join_run(DistributedParams(nproc=2), device="cpu")
