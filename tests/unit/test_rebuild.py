"""Gallery rebuild: which crops each allowed subject is enrolled from."""

from __future__ import annotations

import pandas as pd

from visage_ml.serving.rebuild import select_enrolment_rows


def test_enrolment_prefers_train_and_val_images_so_test_stays_held_out():
    manifest = pd.DataFrame(
        {
            "row": range(7),
            "pid": ["pa"] * 5 + ["pb"] * 2,
            "image_id": ["a1", "a2", "a3", "a4", "a5", "b1", "b2"],
            "split": ["test", "val", "train", "test", "train", "test", "test"],
            "det_prob": [0.99, 0.98, 0.95, 0.99, 0.999, 0.9, 0.95],
        }
    )
    rows = select_enrolment_rows(manifest, {"pa", "pb", "pc"}, per_subject=3)
    assert rows["pa"].tolist() == [4, 2, 1]
    assert rows["pb"].tolist() == [6, 5]
    assert "pc" not in rows
