"""Stand-ins for the evaluate stage's inputs: a processed data set and two tiny real ONNX models.

Faces are synthetic: each identity has a random low-resolution pattern (its "face"), each image
adds pixel noise; the skin-tone group shifts the green channel and gender the blue channel. The
embedder is a real ONNX graph (flatten + random projection) read through
``visage_ml.inference.OnnxModel``, so identity structure survives into the embeddings, and more
noise for one group plants a known FNMR differential. Not a test module (no ``test_`` prefix);
``benchmarks/bench_evaluate.py`` imports it too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from train_fakes import register_consenting

from visage_ml.config import ProjectPaths
from visage_ml.data.crops import write_crops
from visage_ml.privacy.datakeys import DataKeys

GROUPS = ("g1", "g2", "g3", "g4")
GENDERS = ("female", "male")
GROUP_SHIFT = {"g1": -15.0, "g2": -5.0, "g3": 5.0, "g4": 15.0}
GENDER_SHIFT = {"female": -10.0, "male": 10.0}


def make_dataset(
    root: Path,
    *,
    n_identities: int = 40,
    images: tuple[int, int] = (4, 12),
    size: int = 16,
    test_share: float = 0.5,
    noise: float = 18.0,
    group_noise: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    group_shares: Sequence[float] = (0.4, 0.3, 0.2, 0.1),
    miss_rate: Sequence[float] = (0.02, 0.02, 0.05, 0.1),
    seed: int = 0,
    register: bool = True,
) -> dict[str, np.ndarray]:
    """Write ``data/processed/{faces.sealed, manifest.parquet, detection.parquet, splits.json}``.

    With ``register`` its subjects are registered consenting to training and evaluation (a test
    that records their consent itself passes False).

    Returns the per-row arrays (pid, split, group) for assertions.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    processed = root / "data" / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    pids = np.array([f"p{rng.integers(0, 2**63):016x}" for _ in range(n_identities)])
    group_of = rng.choice(len(GROUPS), size=n_identities, p=np.asarray(group_shares))
    # Every group present in the test identities: the last ones cycle through the groups.
    n_test = max(round(test_share * n_identities), 2)
    group_of[-len(GROUPS) :] = np.arange(len(GROUPS))
    gender_of = rng.integers(0, 2, size=n_identities)
    age_of = rng.integers(18, 80, size=n_identities)
    split_of = np.array(["train"] * (n_identities - n_test) + ["test"] * n_test)
    counts = rng.integers(images[0], images[1] + 1, size=n_identities)
    rows, crops, det_rows = [], [], []
    rep = max(size // 8, 1)
    for k in range(n_identities):
        base = rng.normal(0.0, 40.0, size=(8, 8, 3))
        base = np.repeat(np.repeat(base, rep, axis=0), rep, axis=1)[:size, :size]
        group = GROUPS[group_of[k]]
        gender = GENDERS[gender_of[k]]
        shift = np.array([0.0, GROUP_SHIFT[group], GENDER_SHIFT[gender]])
        sigma = noise * float(group_noise[group_of[k]])
        for j in range(counts[k]):
            image_id = f"i{k:04d}{j:03d}"
            detected = bool(rng.random() >= miss_rate[group_of[k]])
            det_rows.append(
                {
                    "pid": pids[k],
                    "image_id": image_id,
                    "group": group,
                    "gender": gender,
                    "age": int(age_of[k]),
                    "detected": detected,
                    "prob": 0.99 if detected else 0.0,
                }
            )
            if not detected:
                continue
            img = 127.5 + base + shift + rng.normal(0.0, sigma, size=base.shape)
            crops.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
            rows.append(
                {
                    "row": len(rows),
                    "pid": pids[k],
                    "image_id": image_id,
                    "split": split_of[k],
                    "age": int(age_of[k] + rng.integers(-2, 3)),
                    "gender": gender,
                    "group": group,
                    "det_prob": 0.99,
                    "box_x1": 0.0,
                    "box_y1": 0.0,
                    "box_x2": float(size),
                    "box_y2": float(size),
                }
            )
    faces = np.stack(crops)
    manifest = pd.DataFrame(rows)
    keys = DataKeys.for_project(ProjectPaths(root))
    write_crops(processed / "faces.sealed", keys, list(manifest["pid"]), faces)
    manifest.to_parquet(processed / "manifest.parquet", index=False)
    if register:
        register_consenting(root, [str(p) for p in pids])
    pd.DataFrame(det_rows).to_parquet(processed / "detection.parquet", index=False)
    splits = {
        s: sorted(set(manifest.loc[manifest["split"] == s, "pid"])) for s in ("train", "test")
    }
    (processed / "splits.json").write_text(json.dumps(splits))
    return {
        "pid": manifest["pid"].to_numpy(),
        "split": manifest["split"].to_numpy(),
        "group": manifest["group"].to_numpy(),
        "image_id": manifest["image_id"].to_numpy(),
    }


def _model(nodes, inputs, outputs, initializers, metadata: dict[str, str]):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "fake", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model


def _common_meta(kind: str, size: int, version: str) -> dict[str, str]:
    return {
        "visage.format": "1",
        "visage.kind": kind,
        "visage.input_size": str(size),
        "visage.mean": "127.5",
        "visage.std": "128.0",
        "visage.layout": "NCHW",
        "visage.color": "RGB",
        "visage.model_version": version,
        "visage.data_md5": "0123456789abcdef0123456789abcdef",
        "visage.git_rev": "unknown",
    }


def write_models(root: Path, *, size: int = 16, dim: int = 64, seed: int = 1) -> None:
    """Write ``models/embedder.onnx`` and ``models/demographics.onnx`` (tiny linear graphs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    flat = 3 * size * size
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])

    w = numpy_helper.from_array(rng.normal(size=(flat, dim)).astype(np.float32), "w")
    emb = _model(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["embedding"]),
        ],
        [x],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [w],
        {**_common_meta("embedder", size, "emb-test-1"), "visage.embedding_dim": str(dim)},
    )
    onnx.save(emb, models / "embedder.onnx")

    # Channel means in standardised units; logits linear in them (nearest-centre classifier).
    pix = size * size
    mean_g = np.zeros((flat, 1), dtype=np.float32)
    mean_g[pix : 2 * pix] = 1.0 / pix  # NCHW flatten: channel 1 (green) block
    mean_b = np.zeros((flat, 1), dtype=np.float32)
    mean_b[2 * pix :] = 1.0 / pix
    centres_g = np.array([GROUP_SHIFT[g] / 128.0 for g in GROUPS], dtype=np.float32)
    centres_b = np.array([GENDER_SHIFT[s] / 128.0 for s in GENDERS], dtype=np.float32)
    scale = 400.0
    w_group = (mean_g * centres_g[None, :]) * scale
    b_group = -(centres_g**2) / 2 * scale
    w_gender = (mean_b * centres_b[None, :]) * scale
    b_gender = -(centres_b**2) / 2 * scale
    w_age = (mean_b * 50.0).astype(np.float32)
    inits = [
        numpy_helper.from_array(w_group.astype(np.float32), "wg"),
        numpy_helper.from_array(b_group.astype(np.float32), "bg"),
        numpy_helper.from_array(w_gender.astype(np.float32), "ws"),
        numpy_helper.from_array(b_gender.astype(np.float32), "bs"),
        numpy_helper.from_array(w_age, "wa"),
        numpy_helper.from_array(np.array([45.0], dtype=np.float32), "ba"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape1d"),
    ]
    dem = _model(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "wa"], ["age2d"]),
            helper.make_node("Add", ["age2d", "ba"], ["age2"]),
            helper.make_node("Reshape", ["age2", "shape1d"], ["age"]),
            helper.make_node("MatMul", ["flat", "ws"], ["gs"]),
            helper.make_node("Add", ["gs", "bs"], ["gender_logits"]),
            helper.make_node("MatMul", ["flat", "wg"], ["gg"]),
            helper.make_node("Add", ["gg", "bg"], ["group_logits"]),
        ],
        [x],
        [
            helper.make_tensor_value_info("age", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("gender_logits", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("group_logits", TensorProto.FLOAT, ["batch", 4]),
        ],
        inits,
        {
            **_common_meta("demographics", size, "dem-test-1"),
            "visage.labels": json.dumps(
                {"gender": list(GENDERS), "group": list(GROUPS), "age_bands": [18, 30, 45, 60]}
            ),
        },
    )
    onnx.save(dem, models / "demographics.onnx")


def make_eval_population(
    root: Path,
    *,
    per_cell: int = 6,
    calibration_per_cell: int = 3,
    images: int = 3,
    size: int = 16,
    noise: float = 18.0,
    seed: int = 7,
) -> object:
    """Write ``data/eval_population`` (sealed, as the ``eval_population`` stage does) with faces
    made like :func:`make_dataset`'s; returns its manifest."""
    import pandas as pd

    from visage_ml.data import eval_population as evalpop

    rng = np.random.default_rng(seed)
    rep = max(size // 8, 1)
    rows, crops, det = [], [], []
    k = 0
    for group in GROUPS:
        for gender in GENDERS:
            for i in range(per_cell + calibration_per_cell):
                pid = f"e{k:016x}"
                part = evalpop.CALIBRATION if i < calibration_per_cell else evalpop.MEASURE
                base = rng.normal(0.0, 40.0, size=(8, 8, 3))
                base = np.repeat(np.repeat(base, rep, axis=0), rep, axis=1)[:size, :size]
                shift = np.array([0.0, GROUP_SHIFT[group], GENDER_SHIFT[gender]])
                for j in range(images):
                    img = 127.5 + base + shift + rng.normal(0.0, noise, size=base.shape)
                    crops.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
                    image_id = f"x{k:05d}{j:02d}"
                    rows.append(
                        {
                            "row": len(rows),
                            "pid": pid,
                            "image_id": image_id,
                            "group": group,
                            "gender": gender,
                            "age": int(rng.integers(18, 80)),
                            "part": part,
                            "source": evalpop.SOURCE,
                            "role": evalpop.ROLE,
                            "det_prob": 0.99,
                            "fallback": False,
                        }
                    )
                    det.append(
                        {
                            "detected": True,
                            "group": group,
                            "gender": gender,
                            "image_id": image_id,
                            "split": "test",
                            "source": evalpop.SOURCE,
                            "fallback": False,
                            "part": part,
                        }
                    )
                k += 1
    manifest = evalpop._typed(pd.DataFrame(rows, columns=list(evalpop.MANIFEST_COLUMNS)))
    population = evalpop.Population(
        faces=np.stack(crops), manifest=manifest, detection=pd.DataFrame(det)
    )
    paths = ProjectPaths(root)
    evalpop.write(paths.eval_population, DataKeys.for_project(paths), population)
    return manifest
