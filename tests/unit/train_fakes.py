"""Fake processed data for the training tests: learnable 'faces' without real images.

Each identity is a smooth random colour pattern; its images add noise and a brightness shift,
so a small network can tell identities apart within a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GROUPS = ("g1", "g2", "g3", "g4")


def fake_faces(
    n_ids: int, per_id: int, size: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(faces (n_ids*per_id, size, size, 3) uint8, identity (n,) int)``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    faces, ids = [], []
    for i in range(n_ids):
        proto = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.uint8)
        base = np.asarray(
            Image.fromarray(proto).resize((size, size), Image.Resampling.BILINEAR), np.float32
        )
        for _ in range(per_id):
            img = base + rng.normal(0, 20, base.shape) + rng.uniform(-30, 30)
            faces.append(np.clip(img, 0, 255).astype(np.uint8))
            ids.append(i)
    return np.stack(faces), np.asarray(ids)


def register_consenting(root: Path, pids: list[str]) -> None:
    """Register ``pids`` not yet registered with consent to training and evaluation, as imports
    and SynthFaces do: the stages read only the subjects the registry allows."""
    from visage_ml.config import ProjectPaths
    from visage_ml.privacy.consent import ConsentReceipt, sha256_text
    from visage_ml.privacy.core import NewSubject, PrivacyCore

    core = PrivacyCore(ProjectPaths(root))
    # Subjects a test registered itself keep the consent it gave them.
    pids = [p for p in pids if p not in core.registry]
    if not pids:
        return
    core.add_subjects([NewSubject(pid=p) for p in pids], source="test", snapshot=False)
    receipt = ConsentReceipt(
        controller="Example Controller Ltd",
        controller_contact="dpo@example.org",
        purposes=("training", "evaluation"),
        notice_version="v1",
        notice_hash=sha256_text("notice"),
        collection_method="test",
        given_at="2026-11-26T07:00:00.000Z",
    )
    core.give_consents(pids, receipt, snapshot=False)


def write_processed(root: Path, *, n_ids: int = 12, per_id: int = 6, size: int = 48) -> None:
    """A ``data/processed`` folder as the prepare stage writes it (sealed crops + manifest)."""
    import pandas as pd

    from visage_ml.config import ProjectPaths
    from visage_ml.data.crops import write_crops
    from visage_ml.privacy.datakeys import DataKeys

    faces, ids = fake_faces(n_ids, per_id, size)
    rng = np.random.default_rng(1)
    processed = root / "data" / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    pids = [f"p{rng.integers(0, 2**63):016x}" for _ in range(n_ids)]
    keys = DataKeys.for_project(ProjectPaths(root))
    write_crops(processed / "faces.sealed", keys, [pids[i] for i in ids], faces)
    n_val = max(2, n_ids // 5)
    split_of = ["val" if i < n_val else "train" for i in range(n_ids)]
    split_of[-1] = "test"
    # Attributes vary with the identity so the demographic net has something to learn.
    age_of = rng.integers(18, 80, n_ids)
    manifest = pd.DataFrame(
        {
            "row": np.arange(len(ids)),
            "pid": [pids[i] for i in ids],
            "image_id": [f"i{k:06d}" for k in range(len(ids))],
            "source_sha256": ["0" * 64] * len(ids),
            "split": [split_of[i] for i in ids],
            "age": [int(age_of[i]) for i in ids],
            "gender": ["female" if i % 2 else "male" for i in ids],
            "group": [GROUPS[i % 4] for i in ids],
            "det_prob": np.ones(len(ids)),
            "box_x1": np.zeros(len(ids)),
            "box_y1": np.zeros(len(ids)),
            "box_x2": np.full(len(ids), float(size)),
            "box_y2": np.full(len(ids), float(size)),
        }
    )
    manifest.to_parquet(processed / "manifest.parquet", index=False)
    register_consenting(root, pids)
