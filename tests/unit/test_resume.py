"""Which resume checkpoint a run continues from, alone and as one rank of several."""

from __future__ import annotations

from pathlib import Path

import pytest

from visage_ml.config import ProjectPaths
from visage_ml.models.checkpoint import resume_files, save_resume
from visage_ml.training.resume import resume_point, shared_resume_point

SECTION = {"epochs": 2, "lr": 0.01}


class OtherRank:
    """Rank 1 of a data-parallel run whose rank 0 found the checkpoint of epoch ``main_epoch``."""

    rank = 1
    is_main = False

    def __init__(self, main_epoch: int | None) -> None:
        self.main_epoch = main_epoch
        self.waited = False

    def barrier(self) -> None:
        self.waited = True

    def from_main(self, mine):
        assert self.waited, "rank 1 read the folder before rank 0 had cleared it"
        return self.main_epoch


def test_a_run_resumes_only_its_own_checkpoint_and_clears_stale_ones(tmp_path: Path):
    paths = ProjectPaths(tmp_path)
    fp, folder, state = resume_point(paths, "embedder", SECTION, "d" * 32, 7)
    assert state is None and folder == tmp_path / "models" / "checkpoints" / "embedder"
    save_resume(folder, {"epoch": 1}, fingerprint=fp)
    assert shared_resume_point(paths, "embedder", SECTION, "d" * 32, 7, ctx=None)[2]["epoch"] == 1
    # Another seed is another run: the checkpoint is stale and goes.
    assert shared_resume_point(paths, "embedder", SECTION, "d" * 32, 8, ctx=None)[2] is None
    assert resume_files(folder) == []


def test_a_rank_that_finds_another_checkpoint_than_rank_0_stops_and_deletes_nothing(
    tmp_path: Path,
):
    paths = ProjectPaths(tmp_path)
    fp, folder, _ = resume_point(paths, "embedder", SECTION, "d" * 32, 7)
    save_resume(folder, {"epoch": 1}, fingerprint="another run")
    with pytest.raises(
        RuntimeError,
        match=r"rank 1 found another resume checkpoint than rank 0 "
        r"in models/checkpoints/embedder",
    ):
        shared_resume_point(paths, "embedder", SECTION, "d" * 32, 7, ctx=OtherRank(2))
    assert [p.name for p in resume_files(folder)] == ["epoch-0001.pt"]  # rank 0's to manage
    save_resume(folder, {"epoch": 2}, fingerprint=fp)
    point = shared_resume_point(paths, "embedder", SECTION, "d" * 32, 7, ctx=OtherRank(2))
    assert point[2]["epoch"] == 2


def test_turning_compile_on_or_off_resumes_the_same_run(tmp_path: Path):
    # torch.compile runs the same networks: an interrupted run resumes with it switched, and
    # its checkpoint is not thrown away (10 CPU-minutes of epoch were lost this way).
    paths = ProjectPaths(tmp_path)
    fp, folder, _ = resume_point(paths, "embedder", {**SECTION, "compile": False}, "d" * 32, 7)
    save_resume(folder, {"epoch": 1}, fingerprint=fp)
    point = resume_point(paths, "embedder", {**SECTION, "compile": True}, "d" * 32, 7)
    assert point[2] is not None and point[2]["epoch"] == 1
    # A setting that changes the training is another run.
    assert resume_point(paths, "embedder", {**SECTION, "lr": 0.02}, "d" * 32, 7)[2] is None


def test_every_code_dependency_of_the_training_stages_is_in_the_fingerprint():
    """dvc.yaml re-runs a training stage when one of its code dependencies changes. The
    checkpoint of the finished run stays (its folder persists), and its fingerprint covered the
    loop and the networks only: after an edit of preprocess.py (mean, std, resize) the run
    resumed at its last epoch, trained nothing and released the old weights under the new
    preprocessing record. Every visage_ml dependency of those stages is now part of it."""
    import yaml

    from visage_ml.training.resume import CODE_PATHS

    repo = Path(__file__).resolve().parents[2]
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    deps = {
        d.removeprefix("visage_ml/")
        for name in ("train_embedder", "train_demographics")
        for d in stages[name]["deps"]
        if d.startswith("visage_ml/")
    }
    assert deps <= set(CODE_PATHS), sorted(deps - set(CODE_PATHS))


def test_an_edit_of_the_preprocessing_starts_training_again(tmp_path: Path, monkeypatch):
    from visage_ml.training import resume

    paths = ProjectPaths(tmp_path)
    fp, folder, _ = resume_point(paths, "embedder", SECTION, "md5", 0)
    save_resume(folder, {"epoch": 2}, fingerprint=fp)
    real = Path(resume.__file__).resolve().parents[1] / "preprocess.py"
    edited = real.read_bytes().replace(b"MEAN", b"MEAN_EDITED", 1)
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: edited if self == real else original(self))
    fp2, _, state = resume_point(paths, "embedder", SECTION, "md5", 0)
    assert fp2 != fp and state is None
