"""Stage prepare on a tiny SynthFaces set: consent filtering, outputs, DVC staleness."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from visage_ml.app.stages import prepare
from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.processed import load_processed
from visage_ml.privacy.core import PrivacyCore


def test_prepare_outputs_and_withdrawn_subject_is_absent(tiny_project):
    root = tiny_project()
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    report = prepare.run(paths)
    faces = load_processed(paths).faces
    manifest = pd.read_parquet(paths.processed / "manifest.parquet")
    assert faces.shape == (len(manifest), 112, 112, 3) and faces.dtype == np.uint8
    assert (manifest["row"].to_numpy() == np.arange(len(manifest))).all()
    assert report["faces_aligned"] == len(manifest) > 30
    assert report["miss_rate"] < 0.1
    # identity-disjoint splits
    by_split = manifest.groupby("split")["pid"].apply(set)
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])
    splits = json.loads((paths.processed / "splits.json").read_text())
    assert set(splits["test"]) == by_split["test"]

    victim = manifest.loc[manifest.split == "train", "pid"].iloc[0]
    PrivacyCore(paths).withdraw_consent(victim, ["training"])
    report2 = prepare.run(paths)
    manifest2 = pd.read_parquet(paths.processed / "manifest.parquet")
    assert victim not in set(manifest2.pid)
    assert len(load_processed(paths).faces) < len(faces)
    assert report2["subjects_excluded"] == {"no_training_basis": 1}
    detection = pd.read_parquet(paths.processed / "detection.parquet")
    assert victim not in set(detection.pid)  # not even opened


def test_prepare_without_data_says_what_to_do(tiny_project, capsys, monkeypatch):
    root = tiny_project()
    monkeypatch.chdir(root)
    assert prepare.main() == 2
    assert "visage data synth" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["tracked", "no_images_table"])
def test_prepare_where_data_raw_is_not_checked_out_says_to_check_it_out(
    tiny_project, capsys, monkeypatch, how
):
    """DVC tracks data/raw, not checked out here: prepare said to acquire data with `visage
    data synth` or `visage data import`, which then wrote data/raw anew without the tracked
    subjects. images.parquet alone missing (a checkout cut short): prepare built
    data/processed from whatever was checked out. Both refused now, saying what to run."""
    root = tiny_project()
    paths = ProjectPaths(root)
    if how == "tracked":
        (paths.data).mkdir()
        (paths.data / "raw.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n")
    else:
        acquire_synthfaces(paths, load_params(paths.params), progress=False)
        (paths.raw / "images.parquet").unlink()
    monkeypatch.chdir(root)

    assert prepare.main() == 2

    said = " ".join(capsys.readouterr().err.split())
    assert "run `dvc checkout data/raw`" in said and "visage data synth" not in said, said
    assert not (paths.processed / "manifest.parquet").exists()


@pytest.mark.pipeline
def test_prepare_where_data_raw_is_checked_out_in_part_says_to_check_it_out(
    tiny_project, capsys, monkeypatch
):
    """Both tables there, a photograph they list not (a `dvc checkout` cut short): prepare
    built data/processed from the photographs there, one short, and said nothing. Refused now,
    saying what to run; once checked out, every photograph is prepared."""
    root = tiny_project(dvc=True)
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    folder = sorted(p for p in paths.raw.iterdir() if p.is_dir())[0]
    photo = sorted(folder.iterdir())[0]
    photo.unlink()
    monkeypatch.chdir(root)

    assert prepare.main() == 2

    said = " ".join(capsys.readouterr().err.split())
    assert "checked out only in part" in said and "run `dvc checkout data/raw`" in said, said
    assert folder.name not in said and photo.stem not in said
    assert not (paths.processed / "manifest.parquet").exists()

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).with_name("dvc"))
    checkout = subprocess.run([dvc, "checkout", "data/raw"], cwd=root, env=env, check=False)
    assert checkout.returncode == 0 and photo.is_file()
    assert prepare.main() == 0
    detection = pd.read_parquet(paths.processed / "detection.parquet")
    assert photo.stem in set(detection["image_id"])


@pytest.mark.pipeline
def test_dvc_repro_prepare_then_consent_change_makes_it_stale(tiny_project):
    root = tiny_project(dvc=True)
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "DVC_NO_ANALYTICS": "1",
        "HOME": str(root),
        # The witness the ledger records (its key): the test's, not one under this HOME.
        "VISAGE_WITNESS_DIR": os.environ["VISAGE_WITNESS_DIR"],
    }

    def run(*args):
        return subprocess.run([dvc, *args], cwd=root, env=env, capture_output=True, text=True)

    first = run("repro", "prepare")
    assert first.returncode == 0, first.stderr
    again = run("repro", "prepare")
    assert "didn't change, skipping" in again.stdout + again.stderr
    before = len(pd.read_parquet(paths.processed / "manifest.parquet"))
    victim = pd.read_parquet(paths.processed / "manifest.parquet").pid.iloc[0]
    PrivacyCore(paths).withdraw_consent(victim)
    status = run("status", "prepare")
    assert "consents.parquet" in status.stdout
    assert run("repro", "prepare").returncode == 0
    manifest = pd.read_parquet(paths.processed / "manifest.parquet")
    assert victim not in set(manifest.pid) and len(manifest) < before
