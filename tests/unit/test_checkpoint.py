from pathlib import Path

import pytest
import torch

from visage_ml.models.backbones import create_backbone
from visage_ml.models.checkpoint import (
    fingerprint,
    inference_payload,
    load_model,
    load_resume,
    model_version,
    save_checkpoint,
    save_resume,
)
from visage_ml.models.demographic import create_demographic_net
from visage_ml.preprocess import PreprocessSpec


def _embedder_payload(model):
    return inference_payload(
        kind="embedder",
        config={"backbone": "mobilefacenet", "embedding_dim": 32, "input_size": 40},
        preprocess=PreprocessSpec(input_size=40).to_dict(),
        state_dict=model.state_dict(),
        data_md5="a" * 32,
        labels={"group": ["g1", "g2", "g3", "g4"]},
        metrics={"best_val_tar_at_far": 0.5},
    )


def test_embedder_checkpoint_rebuilds_the_model_alone(tmp_path: Path):
    torch.manual_seed(0)
    model = create_backbone("mobilefacenet", embedding_dim=32, input_size=40).eval()
    save_checkpoint(tmp_path / "embedder.pt", _embedder_payload(model))
    # Plain tensors and Python values only: opens with weights_only=True.
    raw = torch.load(tmp_path / "embedder.pt", weights_only=True)
    assert raw["kind"] == "embedder"
    rebuilt, meta = load_model(tmp_path / "embedder.pt")
    assert not rebuilt.training
    assert "state_dict" not in meta
    assert meta["preprocess"]["input_size"] == 40
    assert meta["model_version"] == model_version(model.state_dict())
    assert len(meta["model_version"]) == 16
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_demographics_checkpoint_rebuilds_the_model_alone(tmp_path: Path):
    torch.manual_seed(0)
    net = create_demographic_net("demographic_cnn", input_size=32, age_mean=33.0, age_std=9.0)
    payload = inference_payload(
        kind="demographics",
        config={"backbone": "demographic_cnn", "input_size": 32, "age_mean": 33.0, "age_std": 9.0},
        preprocess=PreprocessSpec(input_size=32).to_dict(),
        state_dict=net.state_dict(),
        data_md5="b" * 32,
        labels={"gender": ["female", "male"], "group": ["g1", "g2", "g3", "g4"]},
        metrics={},
    )
    save_checkpoint(tmp_path / "demographics.pt", payload)
    rebuilt, meta = load_model(tmp_path / "demographics.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(net.eval()(x), rebuilt(x), strict=True):
            assert torch.equal(a, b)
    assert meta["labels"]["gender"] == ["female", "male"]


def test_model_version_follows_the_weights():
    torch.manual_seed(0)
    model = create_backbone("mobilefacenet", embedding_dim=16, input_size=32)
    v1 = model_version(model.state_dict())
    assert v1 == model_version(model.state_dict())
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert model_version(model.state_dict()) != v1


def test_missing_checkpoint_says_how_to_create_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        load_model(tmp_path / "embedder.pt")


def test_resume_only_with_matching_fingerprint(tmp_path: Path, caplog):
    fp = fingerprint({"epochs": 3}, "c" * 32, seed=1)
    assert fp != fingerprint({"epochs": 4}, "c" * 32, seed=1)
    assert fp != fingerprint({"epochs": 3}, "d" * 32, seed=1)
    for epoch in (1, 2, 3):
        save_resume(tmp_path, {"epoch": epoch, "w": torch.ones(2) * epoch}, fingerprint=fp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]
    state = load_resume(tmp_path, fingerprint=fp)
    assert state is not None and state["epoch"] == 3
    with caplog.at_level("WARNING"):
        assert load_resume(tmp_path, fingerprint="other") is None
    assert "starting fresh" in caplog.text
