"""Model releases in the ledger: the latest release of each file, signed, is what serving takes."""

from __future__ import annotations

import pytest

from visage_ml.config import ProjectPaths
from visage_ml.io import sha256_file
from visage_ml.privacy.core import PrivacyCore
from visage_ml.serving.release import (
    DEMOGRAPHICS_ONNX,
    EMBEDDER_ONNX,
    THRESHOLD_JSON,
    ReleaseError,
    check_released,
    latest_releases,
    record_release,
    released_digest,
    verify_files,
)


@pytest.fixture
def core(project):
    paths = ProjectPaths(project)
    for rel, text in ((EMBEDDER_ONNX, "e1"), (DEMOGRAPHICS_ONNX, "d1"), (THRESHOLD_JSON, "{}")):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    return PrivacyCore(paths)


def test_the_latest_release_of_each_file_counts(core, project):
    assert latest_releases(core.ledger) == {}
    first = record_release(core.ledger, project, [EMBEDDER_ONNX, DEMOGRAPHICS_ONNX], stage="export")
    assert first.type == "model.released" and first.pid is None
    record_release(core.ledger, project, [THRESHOLD_JSON], stage="evaluate")
    (project / EMBEDDER_ONNX).write_text("e2")
    second = record_release(core.ledger, project, [EMBEDDER_ONNX], stage="export")
    releases = latest_releases(core.ledger)
    assert releases[EMBEDDER_ONNX].seq == second.seq
    assert releases[DEMOGRAPHICS_ONNX].seq == first.seq
    assert releases[THRESHOLD_JSON].stage == "evaluate"
    assert released_digest(releases, EMBEDDER_ONNX) == sha256_file(project / EMBEDDER_ONNX)
    verify_files(project, releases, [EMBEDDER_ONNX, DEMOGRAPHICS_ONNX, THRESHOLD_JSON])
    assert core.ledger.verify().ok


def test_an_unreleased_changed_or_missing_file_is_refused_by_name(core, project):
    releases = latest_releases(core.ledger)
    with pytest.raises(ReleaseError, match=r"reports/threshold\.json .*`dvc repro evaluate`"):
        check_released(releases, THRESHOLD_JSON, "0" * 64)
    record_release(core.ledger, project, [EMBEDDER_ONNX], stage="export")
    releases = latest_releases(core.ledger)
    (project / EMBEDDER_ONNX).write_text("tampered")
    with pytest.raises(ReleaseError, match=r"models/embedder\.onnx .*by the export stage"):
        verify_files(project, releases, [EMBEDDER_ONNX])
    (project / EMBEDDER_ONNX).unlink()
    with pytest.raises(FileNotFoundError, match="dvc repro export"):
        verify_files(project, releases, [EMBEDDER_ONNX])


def test_releases_signed_before_a_ledger_key_rotation_still_verify(core, project):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    before = record_release(core.ledger, project, [THRESHOLD_JSON], stage="evaluate")
    core.ledger.rotate_key(Ed25519PrivateKey.generate())
    after = record_release(core.ledger, project, [EMBEDDER_ONNX], stage="export")
    releases = latest_releases(core.ledger)
    assert releases[THRESHOLD_JSON].seq == before.seq
    assert releases[EMBEDDER_ONNX].seq == after.seq
