"""What the embedder trains on (training/embedder.py): the training split's identities only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from train_fakes import write_processed

from visage_ml.config import ProjectPaths
from visage_ml.training.embedder import embedder_data


def test_the_embedder_trains_on_training_identities_and_validates_on_others(project: Path):
    write_processed(project, n_ids=12, per_id=3, size=48)
    path = project / "data" / "processed" / "manifest.parquet"
    manifest = pd.read_parquet(path)
    manifest["group"] = manifest["group"].astype("string")
    unlabeled = manifest.loc[manifest["split"] == "train", "pid"].iloc[0]
    manifest.loc[manifest["pid"] == unlabeled, "group"] = pd.NA
    manifest.to_parquet(path, index=False)

    data = embedder_data(ProjectPaths(project), 32)
    assert data.num_classes == 9  # 2 validation and 1 test identity held out
    assert len(data.train_rows) == 27 and len(data.val_rows) == 6
    assert data.images.shape[1:] == (32, 32, 3)  # resized once from 48 px
    assert sorted(set(data.labels)) == list(range(9)) and sorted(set(data.val_labels)) == [0, 1]
    # An unlabeled subject still trains the embedder, in a stratum of its own.
    assert (data.groups == -1).sum() == 3 and set(data.groups) - {-1} <= {0, 1, 2, 3}
    inputs = data.fit_inputs()
    assert inputs["val_rows"] is data.val_rows and inputs["rows"] is data.train_rows


def test_fewer_than_two_training_identities_is_refused_saying_what_to_do(project: Path):
    write_processed(project, n_ids=4, per_id=2, size=48)  # 2 validation, 1 test, 1 training
    with pytest.raises(ValueError, match=r"fewer than 2 identities.*prepare\.split\.val"):
        embedder_data(ProjectPaths(project), 48)


def test_without_validation_rows_the_loop_gets_no_validation(project: Path):
    write_processed(project, n_ids=6, per_id=2, size=48)
    path = project / "data" / "processed" / "manifest.parquet"
    manifest = pd.read_parquet(path)
    manifest.loc[manifest["split"] == "val", "split"] = "train"
    manifest.to_parquet(path, index=False)
    data = embedder_data(ProjectPaths(project), 48)
    assert len(data.val_rows) == 0 and np.array_equal(data.train_rows, np.arange(10))
    inputs = data.fit_inputs()
    assert inputs["val_rows"] is None and inputs["val_labels"] is None
