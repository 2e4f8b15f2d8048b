"""Export to ONNX: parity with torch, self-describing metadata, lineage, the export stage."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from visage_ml import export as export_mod
from visage_ml.app.stages import export as stage
from visage_ml.config import ExportParams, ProjectPaths
from visage_ml.data.crops import write_crops
from visage_ml.data.processed import ConsentChangedError
from visage_ml.dvcops import git_revision
from visage_ml.export import (
    ExportError,
    ParityError,
    build_metadata,
    check_parity,
    export_with_parity,
    parity_crops,
    read_prepare_outs,
    to_onnx,
)
from visage_ml.inference import OnnxModel
from visage_ml.io import sha256_file
from visage_ml.preprocess import PreprocessSpec, to_model_input
from visage_ml.privacy.datakeys import DataKeys

SIZE = 32
DIM = 16
SPEC = PreprocessSpec(input_size=SIZE)
BOUNDS = {"min_cosine": 0.9999, "max_abs_diff": 1e-3}
LABELS = {"gender": ["female", "male"], "group": ["g1", "g2", "g3", "g4"], "age_bands": [18, 30]}


def _trunk() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.PReLU(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    # Non-trivial running statistics, so folding BatchNorm into the conv is exercised.
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    # Slopes of both signs: the exported PReLU is rewritten and must stay exact for each.
    net[2].weight.data.uniform_(-0.5, 0.5)
    return net


class TinyEmbedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = _trunk()
        self.fc = nn.Linear(8, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.trunk(x)), dim=1)


class TinyDemographics(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = _trunk()
        self.age = nn.Linear(8, 1)
        self.gender = nn.Linear(8, 2)
        self.group = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return 40 + 10 * self.age(h).squeeze(1), self.gender(h), self.group(h)


class TracedDiffersEmbedder(TinyEmbedder):
    """Computes something else while being exported: the kind of bug parity exists to catch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = super().forward(x)
        return -emb if torch.onnx.is_in_onnx_export() else emb


def lineage(**extra: str) -> dict[str, str]:
    meta = {
        "visage.backbone": "tiny",
        "visage.model_version": "v-test",
        "visage.data_md5": "d" * 32,
        "visage.git_rev": "unknown",
    }
    meta.update(extra)
    return meta


def u8(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("onnx")
    emb, dem = TinyEmbedder().eval(), TinyDemographics().eval()
    to_onnx(emb, out / "embedder.onnx", spec=SPEC, kind="embedder", opset=17, metadata=lineage())
    to_onnx(
        dem,
        out / "demographics.onnx",
        spec=SPEC,
        kind="demographics",
        opset=17,
        metadata=lineage(**{"visage.labels": json.dumps(LABELS)}),
    )
    return {
        "embedder": (emb, out / "embedder.onnx"),
        "demographics": (dem, out / "demographics.onnx"),
    }


def test_embedder_parity_passes(exported: dict):
    model, path = exported["embedder"]
    report = check_parity(model, path, u8(20), spec=SPEC, **BOUNDS)
    assert report["passed"] is True
    assert report["kind"] == "embedder"
    assert report["n_samples"] == 20
    assert report["min_cosine"] >= 0.9999
    assert report["max_abs_diff"] <= 1e-3


def test_demographics_parity_passes_with_argmax_agreement(exported: dict):
    model, path = exported["demographics"]
    report = check_parity(model, path, u8(20, size=48), spec=SPEC, **BOUNDS)
    assert report["passed"] is True
    assert report["argmax_agreement"] == {"gender_logits": 1.0, "group_logits": 1.0}
    assert set(report["max_abs_diff_by_output"]) == {"age", "gender_logits", "group_logits"}
    assert "min_cosine" not in report


def test_metadata_round_trips_through_onnx_model(exported: dict):
    emb = OnnxModel(exported["embedder"][1], expected_kind="embedder")
    assert emb.spec == SPEC
    assert emb.embedding_dim == DIM
    assert emb.model_version == "v-test"
    assert emb.data_md5 == "d" * 32
    assert emb.metadata["visage.backbone"] == "tiny"
    assert emb.metadata["visage.git_rev"] == "unknown"
    assert emb.metadata["visage.layout"] == "NCHW"
    assert emb.metadata["visage.opset"] == "17"
    dem = OnnxModel(exported["demographics"][1], expected_kind="demographics")
    assert dict(dem.labels) == LABELS
    proto = onnx.load(exported["embedder"][1])
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["embedding"]


@pytest.mark.parametrize("n", [1, 7])
def test_dynamic_batch_matches_torch(exported: dict, n: int):
    emb_model, emb_path = exported["embedder"]
    dem_model, dem_path = exported["demographics"]
    batch = u8(n, seed=n)
    x = torch.from_numpy(to_model_input(batch, SPEC))
    with torch.inference_mode():
        ref_emb = emb_model(x).numpy()
        ref_age, ref_gender, _ = (t.numpy() for t in dem_model(x))
    np.testing.assert_allclose(OnnxModel(emb_path).embed(batch), ref_emb, atol=1e-5)
    out = OnnxModel(dem_path).predict(batch)
    np.testing.assert_allclose(out["age"], ref_age, atol=1e-3)
    probs = torch.softmax(torch.from_numpy(ref_gender), 1).numpy()
    np.testing.assert_allclose(out["gender_probs"], probs, atol=1e-5)


def test_export_is_byte_for_byte_deterministic(exported: dict, tmp_path: Path):
    model, first = exported["embedder"]
    again = tmp_path / "again.onnx"
    to_onnx(model, again, spec=SPEC, kind="embedder", opset=17, metadata=lineage())
    assert sha256_file(again) == sha256_file(first)


def test_tampered_weights_fail_parity(exported: dict, tmp_path: Path):
    model, path = exported["embedder"]
    proto = onnx.load(path)
    biggest = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    arr = numpy_helper.to_array(biggest).copy()
    arr += np.random.default_rng(0).normal(scale=0.5, size=arr.shape).astype(arr.dtype)
    biggest.CopyFrom(numpy_helper.from_array(arr, biggest.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, tampered)
    with pytest.raises(ParityError) as err:
        check_parity(model, tampered, u8(8), spec=SPEC, **BOUNDS)
    assert "embedder model" in str(err.value)
    assert "max abs diff" in str(err.value)
    assert err.value.report["passed"] is False
    assert err.value.report["max_abs_diff"] > 1e-3


def test_spec_mismatch_fails_parity(exported: dict):
    model, path = exported["embedder"]
    other = PreprocessSpec(input_size=SIZE, mean=0.0, std=255.0)
    with pytest.raises(ParityError, match="preprocessing"):
        check_parity(model, path, u8(4), spec=other, **BOUNDS)


def test_failing_candidate_never_replaces_the_previous_file(exported: dict, tmp_path: Path):
    target = tmp_path / "embedder.onnx"
    target.write_bytes(exported["embedder"][1].read_bytes())
    before = sha256_file(target)
    with pytest.raises(ParityError) as err:
        export_with_parity(
            TracedDiffersEmbedder().eval(),
            target,
            spec=SPEC,
            kind="embedder",
            opset=17,
            metadata=lineage(),
            inputs_u8_nhwc=u8(6),
            **BOUNDS,
        )
    assert "min cosine" in str(err.value)
    assert err.value.report["opset"] == 17
    assert sha256_file(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedder.onnx"]


def test_passing_export_reports_hash_and_size(tmp_path: Path):
    target = tmp_path / "embedder.onnx"
    report = export_with_parity(
        TinyEmbedder().eval(),
        target,
        spec=SPEC,
        kind="embedder",
        opset=13,
        metadata=lineage(),
        inputs_u8_nhwc=u8(4),
        **BOUNDS,
    )
    assert report["onnx_sha256"] == sha256_file(target)
    assert report["size_bytes"] == target.stat().st_size
    assert report["opset"] == 13
    assert onnx.load(target).opset_import[0].version == 13


def test_export_refuses_bad_arguments_with_a_remedy(tmp_path: Path):
    model = TinyEmbedder().eval()
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"export\.opset"):
        to_onnx(model, path, spec=SPEC, kind="embedder", opset=21, metadata=lineage())
    meta = lineage()
    del meta["visage.data_md5"]
    with pytest.raises(ExportError, match=r"visage\.data_md5.*build_metadata"):
        to_onnx(model, path, spec=SPEC, kind="embedder", opset=17, metadata=meta)
    with pytest.raises(ExportError, match="must return 3 tensor"):
        to_onnx(model, path, spec=SPEC, kind="demographics", opset=17, metadata=lineage())
    bad_labels = lineage(**{"visage.labels": json.dumps({"gender": ["f", "m"], "group": ["a"]})})
    with pytest.raises(ExportError, match="4 group classes"):
        to_onnx(
            TinyDemographics().eval(),
            path,
            spec=SPEC,
            kind="demographics",
            opset=17,
            metadata=bad_labels,
        )
    with pytest.raises(ExportError, match="contradicts"):
        to_onnx(
            model,
            path,
            spec=SPEC,
            kind="embedder",
            opset=17,
            metadata=lineage(**{"visage.input_size": "224"}),
        )
    assert not path.exists()


def test_export_restores_training_mode(tmp_path: Path):
    model = TinyEmbedder().train()
    to_onnx(model, tmp_path / "m.onnx", spec=SPEC, kind="embedder", opset=17, metadata=lineage())
    assert model.training


DVC_LOCK = """\
schema: '2.0'
stages:
  prepare:
    cmd: python -m visage_ml.app.stages.prepare
    outs:
    - path: data/processed/manifest.parquet
      hash: md5
      md5: 22222222222222222222222222222222
      size: 10
    - path: data/processed/faces.sealed
      hash: md5
      md5: 11111111111111111111111111111111
      size: 20
"""


def checkpoint_meta(kind: str) -> dict:
    return {
        "kind": kind,
        "config": {"backbone": f"tiny_{kind}", "age_bands": [18, 30]},
        "preprocess": SPEC.to_dict(),
        "data_md5": "c" * 32,
        "model_version": f"{kind}-v1",
        "labels": LABELS if kind == "demographics" else {},
        "metrics": {},
    }


def test_build_metadata_names_the_data_the_model_was_trained_on(tmp_path: Path):
    meta = build_metadata(checkpoint_meta("embedder"), root=tmp_path)
    assert meta["visage.data_md5"] == "c" * 32
    assert meta["visage.git_rev"] == "unknown"
    assert meta["visage.backbone"] == "tiny_embedder"
    assert meta["visage.model_version"] == "embedder-v1"
    assert "visage.labels" not in meta

    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    outs = read_prepare_outs(tmp_path / "dvc.lock")
    assert outs == {
        "data/processed/faces.sealed": "1" * 32,
        "data/processed/manifest.parquet": "2" * 32,
    }
    trained = {**checkpoint_meta("demographics"), "data_md5": "1" * 32}
    meta = build_metadata(trained, root=tmp_path)
    assert meta["visage.data_md5"] == "1" * 32
    assert json.loads(meta["visage.data_files"]) == outs
    assert json.loads(meta["visage.labels"]) == LABELS
    # `dvc repro -s export` after prepare ran again: the model was trained on older data. Its
    # file named the newer data (dvc.lock's), so an erasure's lineage, which matches models by
    # that md5, missed it; the export now refuses, saying what to run.
    with pytest.raises(ExportError, match=r"trained on data md5 c{32}.*dvc repro"):
        build_metadata(checkpoint_meta("embedder"), root=tmp_path)


def test_git_rev_inside_a_repository(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "PATH": "/usr/bin:/bin",
    }
    for cmd in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    rev = git_revision(repo)
    assert len(rev) == 40
    assert all(c in "0123456789abcdef" for c in rev)
    assert git_revision(tmp_path / "missing-folder") == "unknown"
    (repo / "f").write_text("x")
    subprocess.run(["git", "add", "f"], cwd=repo, env=env, check=True)
    assert git_revision(repo, mark_dirty=True) == rev + "+dirty"
    # The ONNX file says so too: it named the clean commit while params.yaml (a `dvc exp run
    # -S`) or the code differed from it.
    assert build_metadata(checkpoint_meta("embedder"), root=repo)["visage.git_rev"] == (
        rev + "+dirty"
    )


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------


def pids_of(n: int) -> list[str]:
    return [f"p{k:016x}" for k in range(n)]


class Allowing:
    """A subject registry that allows ``pids`` (all when None) for every purpose."""

    def __init__(self, pids=None) -> None:
        self.pids = pids

    def allowed(self, purpose: str) -> set[str]:
        return set(self.pids if self.pids is not None else pids_of(64))


@pytest.fixture(autouse=True)
def _registry_allows_the_fake_subjects(monkeypatch):
    # These projects are crops and a manifest, with no ledger: their subjects are allowed.
    monkeypatch.setattr(export_mod.Registry, "for_project", lambda paths: Allowing())


def test_parity_decrypts_no_subject_who_may_no_longer_be_processed(tmp_path: Path, monkeypatch):
    """The parity check decrypted the validation subjects with no look at the registry, which
    training and evaluation consult before any crop is decrypted (data/processed may be older
    than a withdrawal)."""
    paths = make_project(tmp_path, ["train"] * 3 + ["val"] * 3)
    withdrawn = pids_of(6)[4]
    allowed = Allowing([p for p in pids_of(6) if p != withdrawn])
    monkeypatch.setattr(export_mod.Registry, "for_project", lambda paths: allowed)
    opened = []
    real = export_mod.read_crops
    monkeypatch.setattr(export_mod, "read_crops", lambda *a, **k: opened.append(k) or real(*a, **k))
    with pytest.raises(ConsentChangedError, match="val split"):
        stage.run(paths, ExportParams(parity_samples=4), loader=loader_for(TinyEmbedder()))
    assert opened == []


def make_project(root: Path, splits: list[str]) -> ProjectPaths:
    paths = ProjectPaths(root)
    paths.processed.mkdir(parents=True)
    pids = pids_of(len(splits))
    write_crops(
        paths.processed / "faces.sealed", DataKeys.for_project(paths), pids, u8(len(splits), 40)
    )
    manifest = pd.DataFrame({"row": np.arange(len(splits)), "pid": pids, "split": splits})
    manifest.to_parquet(paths.processed / "manifest.parquet")
    return paths


def loader_for(embedder: nn.Module):
    torch.manual_seed(1)
    models = {"embedder": embedder.eval(), "demographics": TinyDemographics().eval()}

    def load(path: Path) -> tuple[nn.Module, dict]:
        kind = path.stem
        return models[kind], checkpoint_meta(kind)

    return load


def test_stage_exports_both_models_and_writes_the_report(tmp_path: Path):
    paths = make_project(tmp_path, ["train"] * 6 + ["val"] * 5 + ["test"] * 3)
    params = ExportParams(parity_samples=4)
    summaries = stage.run(paths, params, loader=loader_for(TinyEmbedder()))
    report = json.loads((paths.reports / "export.json").read_text())
    assert report == summaries
    for name in ("embedder", "demographics"):
        onnx_path = paths.models / f"{name}.onnx"
        assert report[name]["passed"] is True
        assert report[name]["n_samples"] == 4
        assert report[name]["opset"] == params.opset
        assert report[name]["onnx_sha256"] == sha256_file(onnx_path)
        assert report[name]["size_bytes"] == onnx_path.stat().st_size
        assert OnnxModel(onnx_path, expected_kind=name).data_md5 == "c" * 32
    assert report["embedder"]["min_cosine"] >= params.min_cosine
    assert report["demographics"]["argmax_agreement"]["group_logits"] == 1.0


def test_stage_falls_back_to_training_crops_and_checks_alignment(tmp_path: Path):
    paths = make_project(tmp_path, ["train"] * 3 + ["test"] * 2)
    keys = DataKeys.for_project(paths)
    assert parity_crops(paths.processed, 10, keys=keys).shape == (3, 40, 40, 3)
    # rows left by an erasure (zeroed crops, no manifest row) are simply not addressed
    pids = pids_of(5)
    pd.DataFrame({"row": [0, 2], "pid": [pids[0], pids[2]], "split": ["train"] * 2}).to_parquet(
        paths.processed / "manifest.parquet"
    )
    assert parity_crops(paths.processed, 10, keys=keys).shape == (2, 40, 40, 3)
    pd.DataFrame({"row": [0, 7], "pid": [pids[0], pids[1]], "split": ["train"] * 2}).to_parquet(
        paths.processed / "manifest.parquet"
    )
    with pytest.raises(ValueError, match="dvc repro prepare"):
        parity_crops(paths.processed, 10, keys=keys)


def test_stage_fails_naming_the_model_and_the_number(tmp_path: Path):
    paths = make_project(tmp_path, ["val"] * 4)
    with pytest.raises(ParityError) as err:
        stage.run(paths, ExportParams(), loader=loader_for(TracedDiffersEmbedder()))
    assert "embedder model" in str(err.value)
    assert "min cosine" in str(err.value)
    report = json.loads((paths.reports / "export.json").read_text())
    assert report["embedder"]["passed"] is False
    assert report["demographics"]["passed"] is True
    assert not (paths.models / "embedder.onnx").exists()


def test_stage_exports_real_checkpoints(tmp_path: Path):
    from visage_ml.models.backbones import create_backbone
    from visage_ml.models.checkpoint import inference_payload, save_checkpoint
    from visage_ml.models.demographic import create_demographic_net

    paths = make_project(tmp_path, ["val"] * 3 + ["train"] * 3)
    torch.manual_seed(2)
    configs = {
        "embedder": {"backbone": "mobilefacenet", "embedding_dim": DIM, "input_size": SIZE},
        "demographics": {"backbone": "demographic_cnn", "input_size": SIZE},
    }
    configs["demographics"].update(age_mean=40.0, age_std=15.0)
    nets = {
        "embedder": create_backbone("mobilefacenet", embedding_dim=DIM, input_size=SIZE),
        "demographics": create_demographic_net("demographic_cnn", input_size=SIZE),
    }
    versions = {}
    for kind, net in nets.items():
        payload = inference_payload(
            kind=kind,
            config=configs[kind],
            preprocess=SPEC.to_dict(),
            state_dict=net.state_dict(),
            data_md5="e" * 32,
            labels=LABELS if kind == "demographics" else {},
            metrics={},
        )
        versions[kind] = payload["model_version"]
        save_checkpoint(paths.models / f"{kind}.pt", payload)
    report = stage.run(paths, ExportParams(parity_samples=3))
    assert report["embedder"]["passed"] and report["demographics"]["passed"]
    emb = OnnxModel(paths.models / "embedder.onnx", expected_kind="embedder")
    assert emb.metadata["visage.backbone"] == "mobilefacenet"
    assert emb.model_version == versions["embedder"]
    assert emb.data_md5 == "e" * 32
    assert emb.embed(u8(2, size=40)).shape == (2, DIM)
    dem = OnnxModel(paths.models / "demographics.onnx", expected_kind="demographics")
    assert dem.model_version == versions["demographics"]
    assert dem.labels["gender"] == LABELS["gender"]


@pytest.mark.parametrize(
    ("shape", "slope_shape", "per_channel"),
    [((3, 16, 5, 5), (16, 1, 1), True), ((4, 6), (6,), False), ((2, 8, 3, 3), (1,), False)],
)
def test_prelu_rewrite_computes_prelu(
    shape: tuple[int, ...], slope_shape: tuple[int, ...], per_channel: bool
):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from visage_ml.export import decompose_prelu

    rng = np.random.default_rng(0)
    slope = rng.uniform(-0.5, 0.5, size=slope_shape).astype(np.float32)
    dims = ["batch", *shape[1:]]
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["input", "slope"], ["out"], name="prelu")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)],
        initializer=[numpy_helper.from_array(slope, "slope")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert decompose_prelu(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert "PRelu" not in ops
    assert ("BatchNormalization" in ops) == per_channel
    x = rng.normal(size=shape).astype(np.float32)
    x.flat[0] = 0.0
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    want = np.where(x > 0, x, slope * x)
    # Positive inputs pass exactly; a negative x comes out as x + (1 - slope) * -x, within two
    # roundings of x (the other rewrite is exact).
    np.testing.assert_array_equal(got[x >= 0], want[x >= 0])
    tol = 2 * np.finfo(np.float32).eps * np.abs(x) if per_channel else 0.0
    assert (np.abs(got - want) <= tol).all()
