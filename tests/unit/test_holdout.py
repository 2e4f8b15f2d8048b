"""`visage gallery holdout`: held-out probes of enrolled subjects; no face in clear by default."""

from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path

import pandas as pd
from rights_fakes import make_project
from typer.testing import CliRunner

from visage_ml.app.cli import app as cli
from visage_ml.config import load_params
from visage_ml.serving.rebuild import select_enrolment_rows

runner = CliRunner()


def _enrolment_images(root: Path) -> set[str]:
    manifest = pd.read_parquet(root / "data" / "processed" / "manifest.parquet")
    per = load_params(root / "params.yaml").gallery.images_per_subject
    rows = select_enrolment_rows(manifest, set(manifest["pid"]), per_subject=per)
    used = {int(r) for v in rows.values() for r in v}
    return set(manifest[manifest["row"].isin(used)]["image_id"])


def test_listing_probes_writes_no_face_anywhere(project, tmp_path, monkeypatch):
    """The README's first step must not leave decrypted faces in /tmp, out of erasure's reach."""
    proj = make_project(project, n_subjects=4, n_images=4)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    r = runner.invoke(cli, ["gallery", "holdout", "--count", "3", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 3
    assert all(set(row) == {"pid", "image_id"} for row in rows)
    assert not any(tmp.rglob("*")), "holdout without --out wrote files"
    assert {row["pid"] for row in rows} <= set(proj.pids)
    assert not {row["image_id"] for row in rows} & _enrolment_images(project)


def test_out_decrypts_private_copies_of_held_out_images_only(project, tmp_path):
    proj = make_project(project, n_subjects=4, n_images=4)
    out = tmp_path / "probes"
    r = runner.invoke(cli, ["gallery", "holdout", "--count", "2", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 2
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for row in rows:
        image = Path(row["image"])
        assert image.parent == out
        assert stat.S_IMODE(image.stat().st_mode) == 0o600
        assert image.read_bytes() == proj.images[row["pid"]][row["image_id"]]
    assert not {row["image_id"] for row in rows} & _enrolment_images(project)


def test_out_inside_data_is_refused_and_nothing_is_written(project):
    make_project(project, n_subjects=4, n_images=4)
    out = project / "data" / "probes"
    r = runner.invoke(cli, ["gallery", "holdout", "--out", str(out)])
    assert r.exit_code != 0
    assert "inside the project" in r.output
    assert not out.exists()


def test_no_probe_left_says_how_many_templates_are_searchable_and_what_to_do(project):
    # After the shared gallery was tried and left, one template of 139 was searchable and the
    # command said "every image was enrolled", which was not the cause.
    from project_helpers import write_overrides

    proj = make_project(project, n_subjects=4, n_images=4)
    gallery = proj.gallery()
    stored = len(gallery.stored())
    for pid in proj.pids[1:]:  # a template the ledger does not record: refused, not searchable
        path = gallery.template_path(pid)
        path.write_bytes(gallery.template_path(proj.pids[0]).read_bytes())
    write_overrides(project / "params.yaml", {"gallery.images_per_subject": 1000})
    r = runner.invoke(cli, ["gallery", "holdout"])
    said = " ".join(r.output.split())
    assert r.exit_code != 0
    assert f"1 of {stored} stored template(s) searchable" in said, said
    assert "visage gallery rebuild" in said
