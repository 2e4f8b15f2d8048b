"""The evaluation protocol runs on in-memory inputs and writes nothing."""

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest

from visage_ml.config import EvaluateParams, GateParams
from visage_ml.evaluation.decision import blocked_message, blocking
from visage_ml.evaluation.protocol import (
    MSG_NO_TEST,
    EvaluationInputs,
    evaluate,
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


def _inputs(
    n_ids: int = 24,
    per_id: int = 5,
    noise: float = 0.6,
    seed: int = 0,
    g4_noise: float | None = None,
):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 32))
    ids = np.repeat(np.arange(n_ids), per_id)
    spread = np.where(ids % 4 == 3, noise if g4_noise is None else g4_noise, noise)
    emb = centres[ids] + spread[:, None] * rng.normal(size=(ids.size, 32))
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
    gate = result.fairness["gate"]
    assert result.gate.describe() == gate["summary"]
    assert gate["outcome"] == result.metrics["fairness"]["gate_outcome"]
    # 24 people in all are too few for the default gate to decide on.
    assert gate["parts"]["differentials"]["outcome"] == "inconclusive"
    assert "too few identities" in gate["parts"]["differentials"]["summary"]


def test_select_test_rows_refuses_a_single_identity():
    manifest = pd.DataFrame({"row": [0, 1], "pid": ["a", "a"], "split": ["test", "test"]})
    with pytest.raises(ValueError, match="at least 2"):
        select_test_rows(manifest, 2)
    # A manifest naming a crop the file does not hold is refused (one an erasure shortened is
    # not: tests/unit/test_crops.py).
    with pytest.raises(ValueError, match="dvc repro prepare"):
        select_test_rows(manifest, 1)
    assert "prepare.split.test" in MSG_NO_TEST


def test_gate_message_names_the_bound_to_change():
    gate = GateParams(
        enforce=True,
        max_fnmr_ratio=1.0,
        max_fmr_ratio=1000.0,
        breakdowns=("group",),
        min_identities={"group": 2},
    )
    cfg = EvaluateParams(bootstrap=30, gate=gate)
    # g4's photographs are far noisier: its genuine comparisons fail, the others' do not.
    result = evaluate(_inputs(n_ids=48, noise=0.4, g4_noise=2.0), cfg=cfg, seed=0)
    assert result.gates["differentials"].outcome == "fail"
    assert blocking(result.gates, gate) == ["differentials"]
    message = blocked_message(result.gates, ["differentials"], "reports")
    assert "evaluate.gate.max_fnmr_ratio = 1" in message
    assert "fnmr_max_min_ratio across group: interval" in message


def _mixed_inputs(n_unlabeled: int = 12, per_id: int = 4):
    """24 labeled SynthFaces identities + unlabeled imported ones with an LFW protocol and
    detector misses (test images of the imported set without a crop)."""
    base = _inputs()
    rng = np.random.default_rng(5)
    n0 = len(base.test)
    ids = np.repeat(np.arange(n_unlabeled), per_id)
    centres = rng.normal(size=(n_unlabeled, 32))
    emb = centres[ids] + 0.5 * rng.normal(size=(ids.size, 32))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    lfw = pd.DataFrame(
        {
            "row": n0 + np.arange(ids.size),
            "pid": [f"q{i:03d}" for i in ids],
            "image_id": [f"j{k:04d}" for k in range(ids.size)],
            "split": "test",
            "group": pd.array([None] * ids.size, dtype="string"),
            "gender": pd.array([None] * ids.size, dtype="string"),
            "age": pd.array([None] * ids.size, dtype="Int16"),
            "source": "import:lfw",
        }
    )
    test = pd.concat([base.test.assign(source="synthfaces"), lfw], ignore_index=True)
    test["group"] = test["group"].astype("string")
    test["gender"] = test["gender"].astype("string")
    test["age"] = test["age"].astype("Int16")
    predictions = {k: np.concatenate([v, v[: ids.size]]) for k, v in base.predictions.items()}
    # Two images of the imported set were missed by the detector: no crop, counted.
    missed = ["j9000", "j9001"]
    detection = pd.DataFrame(
        {
            "image_id": list(test["image_id"]) + missed,
            "split": "test",
            "detected": [True] * len(test) + [False, False],
            "group": [*list(test["group"]), None, None],
            "gender": [*list(test["gender"]), None, None],
            "source": list(test["source"]) + ["import:lfw"] * 2,
        }
    )
    image = {i: f"j{i * per_id:04d}" for i in range(n_unlabeled)}
    pairs = []
    for fold in range(10):
        a = fold % n_unlabeled
        pairs.append((fold, image[a], f"j{a * per_id + 1:04d}", True))
        pairs.append((fold, image[a], image[(a + 1) % n_unlabeled], False))
    pairs.append((0, missed[0], image[0], False))  # an impostor pair with a miss
    pairs.append((1, missed[1], image[1], True))  # a genuine pair with a miss
    pairs.append((2, "i0000", image[2], False))  # an image outside the protocol's set: counted
    pairs.append((3, "not-imported", image[3], False))  # never evaluated: counted apart
    protocol = pd.DataFrame(pairs, columns=["fold", "image_id_a", "image_id_b", "same"])
    return EvaluationInputs(
        test=test,
        embeddings=np.concatenate([base.embeddings, emb]),
        predictions=predictions,
        demographic_labels=base.demographic_labels,
        lineage=LINEAGE,
        detection=detection,
        lfw_pairs=protocol,
    )


def test_unlabeled_identities_are_an_explicit_share_and_sources_are_named():
    cfg = EvaluateParams(bootstrap=10, impostor_pairs=3000)
    result = evaluate(_mixed_inputs(), cfg=cfg, seed=3)
    fair, metrics = result.fairness, result.metrics
    for doc in (metrics, fair):
        json.dumps(doc, allow_nan=False)
    assert fair["n_identities"] == 36
    for name in ("group", "gender", "group_gender"):
        b = fair["breakdowns"][name]
        assert b["unlabeled"]["n_identities"] == 12
        assert b["unlabeled"]["share"] == pytest.approx(12 / 36)
        assert "unlabeled" not in b["labels"] and "<NA>" not in b["labels"]
    assert fair["breakdowns"]["group"]["labels"] == list(GROUPS)
    # The demographic model is judged on labeled images only: perfect group predictions on
    # them stay perfect whatever it says about the unlabeled faces.
    group_acc = fair["demographic_model"]["group_accuracy"]["group"]
    assert group_acc["overall"] == 1.0 and sum(group_acc["n"].values()) == 120
    assert fair["demographic_model"]["age_mae"]["gender"]["unlabeled"]["n"] == 0
    miss = fair["detection"]["group"]
    assert miss["unlabeled"]["n"] == 48 + 2 and miss["unlabeled"]["value"] == pytest.approx(2 / 50)
    assert fair["detection_intervals"] is None  # the table does not say whose each image is
    # Which source each figure comes from.
    assert metrics["population"]["sources"] == "import:lfw, synthfaces"
    assert metrics["population"]["identities_by_source"] == {"import:lfw": 12, "synthfaces": 24}
    assert metrics["population"]["unlabeled_group_share"] == pytest.approx(1 / 3)
    assert set(metrics["sources"]) == {"import:lfw", "synthfaces"}
    assert metrics["sources"]["synthfaces"]["n_identities"] == 24
    assert metrics["sources"]["import:lfw"]["detection_miss_rate"] == pytest.approx(2 / 50)
    lfw = metrics["lfw"]
    assert lfw["source"] == "import:lfw, synthfaces"  # one pair reaches a SynthFaces image
    assert (lfw["pairs_in_protocol"], lfw["pairs_used"], lfw["pairs_not_evaluated"]) == (24, 23, 1)
    assert lfw["pairs_with_undetected_image"] == 2 and lfw["images_missed"] == 2
    assert lfw["miss_rate"] == pytest.approx(2 / lfw["images"])
    assert "import:lfw" in result.html and "unlabeled" in result.html


def test_fully_labeled_inputs_report_an_empty_unlabeled_share():
    result = evaluate(_inputs(), cfg=EvaluateParams(bootstrap=0, impostor_pairs=2000), seed=1)
    assert result.fairness["breakdowns"]["group"]["unlabeled"]["n_identities"] == 0
    summary = result.fairness["demographic_model"]["gender_accuracy"]["group"]
    assert summary["unlabeled"] == {"n": 0, "share": 0.0, "value": None}
    assert result.metrics["population"]["unlabeled_group_share"] == 0.0


def test_a_detection_table_that_names_each_person_gives_miss_rates_intervals():
    inputs = _mixed_inputs()
    det = inputs.detection.copy()
    test = inputs.test
    # The two missed images are of a labelled person of g2 (one of the test's own).
    person = test.loc[test["group"] == "g2", ["pid", "group", "gender"]].iloc[0]
    det["pid"] = [*test["pid"].astype(str), person["pid"], person["pid"]]
    det.loc[len(test) :, ["group", "gender"]] = [person["group"], person["gender"]]
    cfg = EvaluateParams(bootstrap=50, impostor_pairs=3000)
    fair = evaluate(dataclasses.replace(inputs, detection=det), cfg=cfg, seed=3).fairness
    json.dumps(fair, allow_nan=False)
    doc = fair["detection_intervals"]["group"]["groups"]
    point = fair["detection"]["group"]["by_group"]
    assert {g: e["value"] for g, e in doc.items()} == pytest.approx(point)
    g2 = doc["g2"]
    assert g2["value"] > 0 and g2["ci_low"] == 0.0 < g2["value"] < g2["ci_high"]
    assert doc["g1"] == {**doc["g1"], "value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert set(fair["detection_intervals"]["gender"]["groups"]) == set(
        fair["detection"]["gender"]["by_group"]
    )
    assert "second_look" not in fair["detection_intervals"]["group"]  # the table does not say
    # A table that says which faces the second look found counts them per group.
    looked = det.assign(second_look=False)
    looked.loc[looked.index[:3], "second_look"] = True
    fair = evaluate(dataclasses.replace(inputs, detection=looked), cfg=cfg, seed=3).fairness
    counts = fair["detection_intervals"]["group"]["second_look"]
    assert sum(counts.values()) == 3 and set(counts) == set(doc)
    first = looked.loc[looked.index[:3], "group"].astype(str)
    assert counts == {g: int((first == g).sum()) for g in doc}
