"""Stage ``gallery``: enrol consented subjects from processed data; counts-only report."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets

import numpy as np
import pandas as pd
import pytest
from evaluate_fakes import make_dataset, write_models
from serving_fakes import receipt

from visage_ml.app.stages import gallery as stage
from visage_ml.config import ProjectPaths, load_params, write_params
from visage_ml.data.rawstore import (
    IMAGES_FILE,
    IMAGES_SCHEMA,
    SUBJECTS_FILE,
    SUBJECTS_SCHEMA,
    empty_table,
    table_bytes,
)
from visage_ml.privacy.core import NewSubject, PrivacyCore
from visage_ml.serving.gallery import Gallery, GalleryVersionError
from visage_ml.serving.pg_gallery import PgGallery, open_project_gallery

SIZE = 32
DIM = 64


@pytest.fixture
def setup(project):
    rows = make_dataset(project, n_identities=12, size=SIZE, images=(4, 8), register=False)
    write_models(project, size=SIZE, dim=DIM)
    params = load_params(
        project / "params.yaml",
        overrides={
            "train_embedder.input_size": SIZE,
            "train_embedder.embedding_dim": DIM,
            "train_demographics.input_size": SIZE,
        },
    )
    write_params(params, project / "params.yaml")
    paths = ProjectPaths(project)
    (paths.reports).mkdir(parents=True, exist_ok=True)
    (paths.reports / "threshold.json").write_text(
        json.dumps({"threshold": 0.5, "target_fmr": 0.001, "embedder_model_version": "emb-test-1"})
    )
    core = PrivacyCore(paths)
    pids = sorted(set(rows["pid"]))
    core.add_subjects([NewSubject(pid=p) for p in pids], source="test", snapshot=False)
    for i, pid in enumerate(pids):
        purposes = ["training", "evaluation"] + (["identification"] if i < 8 else [])
        core.give_consent(pid, receipt(purposes), snapshot=False)
    core.snapshot()
    return paths, params, core, pids


def events(core, type_):
    return [e for e in core.ledger.entries() if e.type == type_]


def test_stage_enrols_allowed_subjects_and_reports_counts_only(setup):
    paths, params, core, pids = setup
    report = stage.run(paths, params)
    assert report.subjects_allowed == 8
    assert report.subjects_enrolled == report.templates_written == report.searchable == 8
    assert report.images_used == 8 * params.gallery.images_per_subject
    assert report.model_version == "emb-test-1" and report.threshold == 0.5
    text = (paths.reports / "gallery.json").read_text()
    assert json.loads(text) == report.to_dict()
    assert not re.search(r"p[0-9a-f]{16}", text)
    assert {e.pid for e in events(core, "gallery.enrolled")} == set(pids[:8])
    meta = json.loads((paths.gallery / "gallery.json").read_text())
    assert meta["threshold"]["source"] == "reports/threshold.json"
    assert meta["preprocess"]["input_size"] == SIZE


def test_rerun_changes_nothing_and_consent_changes_are_applied(setup):
    paths, params, core, pids = setup
    stage.run(paths, params)
    again = stage.run(paths, params)
    assert (again.templates_written, again.templates_unchanged) == (0, 8)
    assert len(events(core, "gallery.enrolled")) == 8
    core.withdraw_consent(pids[0], ["identification"])
    core.restrict(pids[1])
    third = stage.run(paths, params)
    assert third.removed_without_basis == 1
    assert third.searchable == 6
    gallery = Gallery.open(
        paths, model_version="emb-test-1", embedding_dim=DIM, threshold=0.5, create=False
    )
    assert not gallery.status(pids[0])["enrolled"]  # no basis: erased
    assert gallery.status(pids[1]) == {  # restricted: kept, not used
        "enrolled": True,
        "searchable": False,
        "template_model_version": "emb-test-1",
    }


class _NewVersion:
    def __init__(self, model):
        self._m = model
        self.spec = model.spec
        self.embedding_dim = model.embedding_dim
        self.model_version = "emb-test-2"

    def embed(self, crops, *, batch_size=64):
        return self._m.embed(crops, batch_size=batch_size)


def test_new_embedder_version_re_enrols_and_the_old_one_is_refused(setup):
    paths, params, _, _ = setup
    stage.run(paths, params)
    old = stage.load_embedder(paths, params)
    (paths.reports / "threshold.json").write_text(
        json.dumps({"threshold": 0.5, "target_fmr": 0.001, "embedder_model_version": "emb-test-2"})
    )
    report = stage.run(paths, params, embedder=_NewVersion(old))
    assert report.model_version == "emb-test-2"
    assert report.templates_written == 8 and report.stale_templates == 0
    # The anchors (what an operator's re-enrolment must match) are re-made from data/processed
    # with the new embedder, as the templates are.
    gallery = Gallery.open(paths, model_version="emb-test-2", embedding_dim=DIM, threshold=0.5)
    for pid in gallery.stored():
        anchor, header = gallery.anchor(pid)
        assert header["model_version"] == "emb-test-2"
        np.testing.assert_array_equal(anchor, gallery.template(pid)[0])
    with pytest.raises(GalleryVersionError, match="visage gallery rebuild"):
        Gallery.open(paths, model_version="emb-test-1", embedding_dim=DIM, threshold=0.5)


def test_main_exits_2_with_what_to_do_when_the_threshold_is_missing(setup, capsys):
    paths, _, _, _ = setup
    (paths.reports / "threshold.json").unlink()
    assert stage.main() == 2
    assert "dvc repro evaluate" in capsys.readouterr().err


def test_main_builds_the_gallery(setup, capsys):
    assert stage.main() == 0
    assert "8 searchable subjects" in capsys.readouterr().out


def test_cli_rebuild_reports_counts(setup):
    from typer.testing import CliRunner

    from visage_ml.app.cli import app as cli

    result = CliRunner().invoke(cli, ["gallery", "rebuild", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["searchable"] == 8


def test_stage_builds_the_shared_gallery_in_postgres_and_a_new_embedder_replaces_it(
    setup, stack_postgres
):
    paths, params, core, pids = setup
    table = f"g_{secrets.token_hex(6)}"
    g = dataclasses.replace(
        params.serving.gallery, backend="pgvector", dsn=stack_postgres.dsn, table=table
    )
    params = dataclasses.replace(params, serving=dataclasses.replace(params.serving, gallery=g))
    report = stage.run(paths, params)
    assert report.searchable == report.templates_written == 8
    assert not list((paths.gallery / "templates").rglob("*.tpl"))  # nothing in the folder
    shared = open_project_gallery(paths, core=core, params=params)
    assert isinstance(shared, PgGallery) and shared.stored() == sorted(pids[:8])
    shared.close()
    core.withdraw_consent(pids[0], ["identification"])
    assert stage.run(paths, params).removed_without_basis == 1
    # Another embedder: its templates replace the table's (another version, same size).
    (paths.reports / "threshold.json").write_text(
        json.dumps({"threshold": 0.5, "target_fmr": 0.001, "embedder_model_version": "emb-test-2"})
    )
    newer = stage.run(paths, params, embedder=_NewVersion(stage.load_embedder(paths, params)))
    assert newer.model_version == "emb-test-2" and newer.searchable == 7


def test_the_gallery_is_rebuilt_after_an_erasure_without_preparing_again(setup):
    # An erasure purges the subject's crops in place (zeroed, their rows gone from the manifest,
    # every other row keeping its address): the gallery stage and `visage gallery rebuild` must
    # work on that, not ask for `dvc repro prepare` because the manifest is shorter.
    from visage_ml.data.crops import crops_info
    from visage_ml.rights.erasure import Erasure

    paths, params, core, pids = setup
    stage.run(paths, params)
    # data/raw checked out, its tables holding none of these crops' photographs (the erasure
    # refuses to read absent tables as empty where data/processed holds the subject's crops).
    paths.raw.mkdir(parents=True, exist_ok=True)
    for name, schema in ((SUBJECTS_FILE, SUBJECTS_SCHEMA), (IMAGES_FILE, IMAGES_SCHEMA)):
        (paths.raw / name).write_bytes(table_bytes(empty_table(schema), schema))
    Erasure(paths, core=core).erase(pids[0])
    manifest = pd.read_parquet(paths.processed / "manifest.parquet")
    assert len(manifest) < crops_info(paths.processed / "faces.sealed").rows
    report = stage.run(paths, params)
    assert report.subjects_allowed == report.subjects_enrolled == report.searchable == 7
    gallery = Gallery.open(
        paths, model_version="emb-test-1", embedding_dim=DIM, threshold=0.5, create=False
    )
    assert sorted(gallery.stored()) == sorted(gallery.searchable()) == sorted(pids[1:8])
