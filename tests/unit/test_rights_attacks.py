"""Attacks on the rights of access and rectification, and on personal data in logs and errors.

Each test is an attack that once worked: an export or a store that kept what a rectification
corrected, a training run fed data prepared before a rectification, a person's name reaching a
log record or an exception text.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rights_fakes import PrepareTileDetector, make_project, png
from serving_fakes import face_tile

from visage_ml.app.stages import prepare
from visage_ml.config import ProjectPaths
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.processed import RectifiedSinceError, load_processed
from visage_ml.data.rawstore import read_images, read_subjects
from visage_ml.rights.export import Delivery, export_subject
from visage_ml.rights.rectify import rectify

SECRET_NAME = "Zelda_Quinterra_Secret"
LEGAL = "art6(1)(f)+art9(2)(j)"
PLAIN = Delivery(plaintext=True)


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _fairface(root: Path, name: str = SECRET_NAME) -> Path:
    """A FairFace label CSV of two people, the first with files named after a person."""
    folder = root / "fairface"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / f"{name}.jpg").write_bytes(_jpeg(1))
    (folder / "train" / "other.jpg").write_bytes(_jpeg(2))
    rows = [
        "file,age,gender,race",
        f"train/{name}.jpg,20-29,Male,East Asian",
        "train/other.jpg,50-59,Female,White",
    ]
    csv = folder / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def _import(project: Path, fmt: str, root: Path):
    basis = ImportBasis.from_options(legal_basis=LEGAL)
    return import_dataset(fmt, root, paths=ProjectPaths(project), basis=basis)


# -- rectification (Art. 16) ------------------------------------------------------------------


def test_rectified_attributes_leave_no_old_value_in_the_images_table_or_the_export(
    project, tmp_path
):
    """The per-image labels a data set brought (FairFace's age band, gender, race) are the
    inaccurate data a subject has corrected: neither ``data/raw/images.parquet`` nor their
    access export may go on stating them after the rectification."""
    _import(project, "fairface", _fairface(tmp_path))
    paths = ProjectPaths(project)
    images = read_images(paths.raw)
    pid = str(images.loc[images["age_band"] == "20-29", "pid"].iloc[0])
    rectify(paths, pid, attributes={"age": 41, "gender": "female", "group": "white"})
    subject = read_subjects(paths.raw).set_index("pid").loc[pid]
    assert (int(subject["age"]), subject["gender"], subject["group"]) == (41, "female", "white")
    rows = read_images(paths.raw)
    mine = rows[rows["pid"] == pid]
    assert len(mine) == 1
    row = mine.iloc[0]
    assert (int(row["age"]), row["gender"], row["group"]) == (41, "female", "white")
    assert pd.isna(row["age_band"])
    # The other person's labels are untouched.
    other = rows[rows["pid"] != pid].iloc[0]
    assert (int(other["age"]), other["age_band"], other["gender"]) == (55, "50-59", "female")
    result = export_subject(paths, pid, delivery=PLAIN, keep=False)
    with zipfile.ZipFile(io.BytesIO(result.data)) as z:
        subject_doc = json.loads(z.read("subject.json"))
    (item,) = subject_doc["images"]
    assert item["age"] == 41 and item["gender"] == "female" and item["group"] == "white"
    assert item.get("age_band") is None
    text = json.dumps(subject_doc)
    assert "20-29" not in text and "east_asian" not in text and '"male"' not in text


@pytest.mark.parametrize("what", ["attributes", "image"])
def test_training_refuses_data_prepared_before_a_rectification(project, monkeypatch, what):
    """``data/processed`` prepared before a rectification still holds the subject's old label
    or old face: a training or evaluation run started on it (a stage run on its own, not through
    ``dvc repro``) must stop, as it does for a withdrawal, not learn from the corrected data."""
    proj = make_project(project, n_subjects=4, processed=False)
    monkeypatch.setattr(prepare, "FaceDetector", PrepareTileDetector)
    prepare.run(proj.paths)
    manifest = pd.read_parquet(proj.paths.processed / "manifest.parquet")
    pid = str(manifest.loc[manifest["split"] == "train", "pid"].iloc[0])
    load_processed(proj.paths, splits=("train", "val"))  # current: accepted
    if what == "attributes":
        rectify(proj.paths, pid, attributes={"age": 77}, core=proj.core, engine=proj.engine)
    else:
        image_id = sorted(proj.images[pid])[0]
        new = png(face_tile(proj.world.people[pid], np.random.default_rng(9), noise=3.0))
        rectify(proj.paths, pid, images={image_id: new}, core=proj.core, engine=proj.engine)
    with pytest.raises(RectifiedSinceError, match="dvc repro"):
        load_processed(proj.paths, splits=("train", "val"))
    # The other splits' users are not stopped by a subject they never read.
    load_processed(proj.paths, splits=("test",))
    prepare.run(proj.paths)
    load_processed(proj.paths, splits=("train", "val"))
