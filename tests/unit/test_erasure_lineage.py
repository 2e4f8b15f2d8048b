"""Which models saw a subject, after an erasure of someone else purged the data versions they
shared (rights/lineage.py, rights/manifest_index.py)."""

from __future__ import annotations

import pytest
from rights_fakes import make_project, write_pipeline_lock
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.dvcops import tracked_md5
from visage_ml.io import md5_file
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.lineage import NO_MODEL, NO_MODEL_UNKNOWN, subject_lineage

MODEL = "a" * 32


def _lock(root, raw_md5: str, faces_md5: str) -> None:
    """A dvc.lock: prepare made faces.sealed from data/raw, the embedder was trained on it."""
    write_pipeline_lock(root, raw_md5, faces_md5, MODEL)


@pytest.mark.pipeline
def test_an_erasure_that_purges_a_shared_data_version_leaves_the_others_lineage_whole(
    tiny_project,
):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True)
    first, second, never = proj.pids
    paths = proj.paths
    raw_md5 = tracked_md5(root, paths.raw)
    faces_md5 = md5_file(paths.processed / "faces.sealed")
    _lock(root, raw_md5, faces_md5)
    model = ("dvc", "train_embedder:models/embedder.pt", MODEL)

    def models(pid):
        return {(m.kind, m.model, m.version) for m in subject_lineage(paths, pid).models}

    assert models(second) == {model}
    # Erasing the first subject purges the data/raw manifest that listed both (and rewrites
    # data/processed): the embedder trained on it still saw the second.
    first_cert = Erasure(paths, core=proj.core).erase(first).certificate
    assert model[1] in {m["model"] for m in first_cert["claims"]["models"]}
    lin = subject_lineage(paths, second)
    assert {(m.kind, m.model, m.version) for m in lin.models} == {model}, lin.notes
    result = Erasure(paths, core=proj.core).erase(second)
    assert model[1] in {m["model"] for m in result.certificate["claims"]["models"]}
    # Nobody erased is named by what is kept of the purged manifests, and the rest are.
    assert {(m.kind, m.model, m.version) for m in subject_lineage(paths, never).models} == {model}
    assert Erasure(paths, core=proj.core).remaining(second)["dvc"] == []
    for pid in (first, second):
        assert pid.encode() not in b"".join(
            f.read_bytes() for f in (paths.privacy).rglob("manifest*") if f.is_file()
        )


@pytest.mark.pipeline
def test_lineage_does_not_say_no_model_saw_a_subject_when_a_version_could_not_be_read(
    tiny_project,
):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=2, track=True)
    paths = proj.paths
    _lock(root, tracked_md5(root, paths.raw), md5_file(paths.processed / "faces.sealed"))
    Erasure(paths, core=proj.core).erase(proj.pids[0])
    # Added since: not in the purged version's kept list, which therefore cannot rule it out.
    newcomer = proj.core.add_subject(source="test")
    lin = subject_lineage(paths, newcomer)
    assert lin.models == [] and lin.notes
    out = (
        CliRunner()
        .invoke(app, ["privacy", "lineage", newcomer], env={"VISAGE_PROJECT": str(root)})
        .output
    )
    assert NO_MODEL_UNKNOWN in " ".join(out.split()) and NO_MODEL not in out


def test_a_model_of_unknown_training_data_is_not_called_retrained(project, monkeypatch):
    """`lineage --refresh` signs "retrained without the subject" only for models shown to be:
    an ONNX file with no lineage metadata (its data version unknown) counted as clean, and so
    did a project with no model at all, and a model trained on a data version lineage had never
    seen (neither among those that held the subject nor known to be without them)."""
    from visage_ml.rights import lineage

    proj = make_project(project, n_subjects=3)
    contained, without = {"a" * 32}, ["b" * 32]
    known = lineage.ModelVersion("onnx", "models/embedder.onnx", "v2", "b" * 32, "models")
    unknown = lineage.ModelVersion("onnx", "models/embedder.onnx", "v3", None, "models")
    unseen = lineage.ModelVersion("onnx", "models/embedder.onnx", "v4", "c" * 32, "models")
    monkeypatch.setattr(lineage, "processed_has", lambda paths, pid: False)
    for current, clean in (
        ([known], True),
        ([known, unknown], False),
        ([known, unseen], False),
        ([], False),
    ):
        monkeypatch.setattr(lineage, "current_models", lambda paths, c=current: c)
        check = lineage.check_retrained(proj.paths, proj.pids[0], contained, clean_md5s=without)
        assert check.clean is clean, current
    assert check.stale == []
    monkeypatch.setattr(lineage, "current_models", lambda paths: [known, unknown, unseen])
    check = lineage.check_retrained(proj.paths, proj.pids[0], contained, clean_md5s=without)
    assert check.stale == [unknown, unseen]
    assert lineage.check_retrained(proj.paths, proj.pids[0], contained).stale == [
        known,
        unknown,
        unseen,
    ]
