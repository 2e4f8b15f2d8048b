"""The evaluation protocol runs on in-memory inputs and writes nothing."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from visage_ml.config import EvaluateParams, GateParams
from visage_ml.evaluation.protocol import (
    MSG_NO_TEST,
    EvaluationInputs,
    evaluate,
    gate_message,
    select_test_rows,
)

GROUPS = ("g1", "g2", "g3", "g4")
LINEAGE = {
    "eval_data_md5": "e" * 32,
    "embedder_model_version": "emb-1",
    "embedder_data_md5": "d" * 32,
    "demographics_model_version": "dem-1",
    "demographics_data_md5": "d" * 32,
    "git_rev": "abc",
}


def _inputs(n_ids: int = 24, per_id: int = 5, noise: float = 0.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 32))
    ids = np.repeat(np.arange(n_ids), per_id)
    emb = centres[ids] + noise * rng.normal(size=(ids.size, 32))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    group = np.array(GROUPS)[ids % 4]
    gender = np.where(ids % 2 == 0, "female", "male")
    test = pd.DataFrame(
        {
            "row": np.arange(ids.size),
            "pid": [f"p{i:03d}" for i in ids],
            "image_id": [f"i{k:04d}" for k in range(ids.size)],
            "split": "test",
            "group": group,
            "gender": gender,
            "age": 20 + 2 * ids,
        }
    )
    predictions = {
        "age": (20 + 2 * ids + rng.normal(0, 3, ids.size)).astype(np.float32),
        "gender_probs": np.eye(2)[(ids % 2 + (rng.random(ids.size) < 0.1)) % 2],
        "group_probs": np.eye(4)[ids % 4],
    }
    labels = {"gender": ["female", "male"], "group": list(GROUPS), "age_bands": [18, 30, 45, 60]}
    return EvaluationInputs(
        test=test,
        embeddings=emb,
        predictions=predictions,
        demographic_labels=labels,
        lineage=LINEAGE,
    )


def test_evaluate_returns_every_document_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = EvaluateParams(bootstrap=10, impostor_pairs=2000)
    result = evaluate(_inputs(), cfg=cfg, seed=3)
    assert os.listdir(tmp_path) == []

    for doc in (result.metrics, result.fairness, result.threshold):
        json.dumps(doc, allow_nan=False)
    assert result.fairness["n_identities"] == 24 and result.fairness["n_images"] == 120
    assert result.threshold["embedder_model_version"] == "emb-1"
    assert result.threshold["git_rev"] == "abc"
    assert result.metrics["verification"]["auc"] > 0.9
    assert set(result.fairness["breakdowns"]) == {"group", "gender", "group_gender"}
    assert result.fairness["demographic_model"]["group_accuracy"]["group"]["overall"] == 1.0
    assert {"roc_overall.csv", "roc_g1.csv", "det_g4.csv"} <= set(result.plots)
    assert {"rates_group.csv", "cross_fmr_gender.csv"} <= set(result.tables)
    assert "roc_group.png" in result.figures
    assert result.html.startswith("<!DOCTYPE html>") and "emb-1" in result.html
    assert result.params["project.seed"] == 3
    assert result.gate.describe() == result.fairness["gate"]["outcome"]


def test_select_test_rows_refuses_a_single_identity():
    manifest = pd.DataFrame({"row": [0, 1], "pid": ["a", "a"], "split": ["test", "test"]})
    with pytest.raises(ValueError, match="at least 2"):
        select_test_rows(manifest, 2)
    with pytest.raises(ValueError, match="dvc repro prepare"):
        select_test_rows(manifest, 3)
    assert "prepare.split.test" in MSG_NO_TEST


def test_gate_message_names_the_bound_to_change():
    cfg = EvaluateParams(bootstrap=0, gate=GateParams(max_fnmr_ratio=1.0))
    result = evaluate(_inputs(noise=0.9), cfg=cfg, seed=0)
    assert not result.gate.passed
    assert "evaluate.gate.max_fnmr_ratio = 1" in gate_message(result.gate, "reports")
