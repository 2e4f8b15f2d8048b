"""OnnxModel: metadata checks, embedding / demographic inference, hash check; no torch needed.

The ONNX files here are built with onnx.helper so each can break one promise at a time; the
round trip through the real exporter is in test_export.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from visage_ml.inference import (
    CACHE_BUDGET_BYTES,
    MICRO_BATCH_RANGE,
    ModelFileError,
    ModelHashError,
    OnnxModel,
    micro_batch_for,
    peak_activation_bytes,
    verify_model_hash,
)
from visage_ml.io import sha256_file
from visage_ml.preprocess import PreprocessSpec, to_model_input

SIZE = 16
DIM = 8
LABELS = {"gender": ["female", "male"], "group": ["g1", "g2", "g3", "g4"], "age_bands": [18, 30]}
W_EMB = np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32)
W_GENDER = np.random.default_rng(2).normal(size=(3, 2)).astype(np.float32)
W_GROUP = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
W_AGE = np.array([[10.0], [5.0], [-3.0]], dtype=np.float32)


def base_metadata(kind: str) -> dict[str, str]:
    meta = {
        "visage.kind": kind,
        "visage.input_size": str(SIZE),
        "visage.mean": "127.5",
        "visage.std": "128.0",
        "visage.layout": "NCHW",
        "visage.color": "RGB",
        "visage.backbone": "tiny",
        "visage.model_version": "v-test",
        "visage.data_md5": "0" * 32,
        "visage.git_rev": "unknown",
    }
    if kind == "embedder":
        meta["visage.embedding_dim"] = str(DIM)
    else:
        meta["visage.labels"] = json.dumps(LABELS)
    return meta


def write_model(
    path: Path,
    kind: str = "embedder",
    *,
    metadata: dict[str, str] | None = None,
    batch: str | int = "batch",
    input_size: int = SIZE,
) -> Path:
    """A linear model over channel means: embedding = mean_hw(x) @ W (or three heads)."""
    x = helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [batch, 3, input_size, input_size]
    )
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["feat"]),
    ]
    inits = []
    if kind == "embedder":
        inits.append(numpy_helper.from_array(W_EMB, "w_emb"))
        nodes.append(helper.make_node("MatMul", ["feat", "w_emb"], ["embedding"]))
        outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, DIM])]
    else:
        inits += [
            numpy_helper.from_array(W_AGE, "w_age"),
            numpy_helper.from_array(W_GENDER, "w_gender"),
            numpy_helper.from_array(W_GROUP, "w_group"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
        ]
        nodes += [
            helper.make_node("MatMul", ["feat", "w_age"], ["age2d"]),
            helper.make_node("Reshape", ["age2d", "flat"], ["age"]),
            helper.make_node("MatMul", ["feat", "w_gender"], ["gender_logits"]),
            helper.make_node("MatMul", ["feat", "w_group"], ["group_logits"]),
        ]
        outputs = [
            helper.make_tensor_value_info("age", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("gender_logits", TensorProto.FLOAT, [batch, 2]),
            helper.make_tensor_value_info("group_logits", TensorProto.FLOAT, [batch, 4]),
        ]
    graph = helper.make_graph(nodes, "tiny", [x], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, base_metadata(kind) if metadata is None else metadata)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def crops(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def reference_features(batch: np.ndarray) -> np.ndarray:
    x = to_model_input(batch, PreprocessSpec(input_size=SIZE))
    return x.mean(axis=(2, 3))


@pytest.fixture
def embedder_path(tmp_path: Path) -> Path:
    return write_model(tmp_path / "embedder.onnx")


@pytest.fixture
def demographics_path(tmp_path: Path) -> Path:
    return write_model(tmp_path / "demographics.onnx", "demographics")


def test_metadata_is_exposed(embedder_path: Path, demographics_path: Path):
    emb = OnnxModel(embedder_path, expected_kind="embedder")
    assert emb.kind == "embedder"
    assert emb.spec == PreprocessSpec(input_size=SIZE, mean=127.5, std=128.0)
    assert emb.embedding_dim == DIM
    assert emb.model_version == "v-test"
    assert emb.data_md5 == "0" * 32
    assert emb.metadata["visage.backbone"] == "tiny"
    assert dict(emb.labels) == {}
    dem = OnnxModel(demographics_path)
    assert dem.kind == "demographics"
    assert dem.embedding_dim is None
    assert dem.labels["group"] == ["g1", "g2", "g3", "g4"]


@pytest.mark.parametrize("n", [1, 7])
def test_embed_dynamic_batch_standardises_and_normalises(embedder_path: Path, n: int):
    model = OnnxModel(embedder_path, intra_op_threads=1)
    batch = crops(n)
    emb = model.embed(batch)
    assert emb.shape == (n, DIM)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    expected = reference_features(batch) @ W_EMB
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, expected, atol=1e-5)


def test_embed_batches_single_crops_and_resizes(embedder_path: Path):
    model = OnnxModel(embedder_path)
    batch = crops(7)
    whole = model.embed(batch)
    np.testing.assert_allclose(model.embed(batch, batch_size=3), whole, atol=1e-6)
    np.testing.assert_allclose(model.embed(batch[2]), whole[2:3], atol=1e-6)
    assert model.embed(crops(3, size=2 * SIZE)).shape == (3, DIM)
    assert model.embed(np.zeros((0, SIZE, SIZE, 3), dtype=np.uint8)).shape == (0, DIM)


@pytest.mark.parametrize("kind", ["embedder", "demographics"])
def test_large_inputs_run_in_micro_batches_with_the_same_results(tmp_path: Path, kind: str):
    path = write_model(tmp_path / f"{kind}.onnx", kind)
    x = to_model_input(crops(10), PreprocessSpec(input_size=SIZE))
    whole = OnnxModel(path, micro_batch=64).run(x)
    sliced = OnnxModel(path, micro_batch=3)
    assert sliced.micro_batch == 3
    got = sliced.run(x)
    assert list(got) == list(whole)
    for name, value in whole.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=1e-6)
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        OnnxModel(path, micro_batch=0)


def conv_model(path: Path, channels: int, side: int) -> bytes:
    """input (N, 3, side, side) -> Conv 3x3 to ``channels`` -> mean over the image -> embedding."""
    w = np.random.default_rng(4).normal(size=(channels, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["features"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"]),
        ],
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", channels])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {**base_metadata("embedder"), "visage.input_size": str(side)}
    meta["visage.embedding_dim"] = str(channels)
    helper.set_model_props(model, meta)
    onnx.save(model, path)
    return path.read_bytes()


def test_micro_batch_keeps_the_largest_activation_near_the_cache_budget(tmp_path: Path):
    lo, hi = MICRO_BATCH_RANGE
    # 16 channels of 32x32 float32: 64 KiB per sample, the largest tensor of the graph.
    small = conv_model(tmp_path / "small.onnx", 16, 32)
    assert peak_activation_bytes(small) == 16 * 32 * 32 * 4
    assert OnnxModel(tmp_path / "small.onnx").micro_batch == hi
    # 64 channels of 96x96: 2.25 MiB per sample, so even two samples outgrow the budget.
    large = conv_model(tmp_path / "large.onnx", 64, 96)
    assert peak_activation_bytes(large) == 64 * 96 * 96 * 4 > CACHE_BUDGET_BYTES // 2
    assert OnnxModel(tmp_path / "large.onnx").micro_batch == lo
    between = CACHE_BUDGET_BYTES // (lo + 4)
    assert micro_batch_for(between) == lo + 4
    assert micro_batch_for(None) == lo
    assert peak_activation_bytes(b"not an onnx model") is None


def test_embed_refuses_float_or_grey_crops(embedder_path: Path):
    model = OnnxModel(embedder_path)
    with pytest.raises(ValueError, match="uint8 RGB crops"):
        model.embed(crops(2).astype(np.float32) / 255)
    with pytest.raises(ValueError, match="uint8 RGB crops"):
        model.embed(np.zeros((2, SIZE, SIZE), dtype=np.uint8))


def test_predict_returns_probabilities_and_age(demographics_path: Path):
    model = OnnxModel(demographics_path, expected_kind="demographics")
    batch = crops(7)
    out = model.predict(batch, batch_size=4)
    assert out["age"].shape == (7,)
    assert out["gender_probs"].shape == (7, 2)
    assert out["group_probs"].shape == (7, 4)
    np.testing.assert_allclose(out["gender_probs"].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out["group_probs"].sum(axis=1), 1.0, atol=1e-6)
    feat = reference_features(batch)
    np.testing.assert_allclose(out["age"], (feat @ W_AGE)[:, 0], atol=1e-4)
    assert (out["group_probs"].argmax(1) == (feat @ W_GROUP).argmax(1)).all()


def test_methods_of_the_other_kind_are_refused(embedder_path: Path, demographics_path: Path):
    with pytest.raises(ModelFileError, match="predict\\(\\) needs a demographics model"):
        OnnxModel(embedder_path).predict(crops(1))
    with pytest.raises(ModelFileError, match="embed\\(\\) needs a embedder model"):
        OnnxModel(demographics_path).embed(crops(1))


def test_wrong_kind_is_refused_naming_both(demographics_path: Path):
    with pytest.raises(ModelFileError) as err:
        OnnxModel(demographics_path, expected_kind="embedder")
    msg = str(err.value)
    assert "'demographics' model" in msg
    assert "'embedder' model is needed" in msg
    assert "models/embedder.onnx" in msg


def test_non_visage_onnx_is_refused(tmp_path: Path):
    path = write_model(tmp_path / "plain.onnx", metadata={})
    with pytest.raises(ModelFileError, match="not a visage-ml one"):
        OnnxModel(path)


def test_corrupt_and_missing_files_give_clear_errors(tmp_path: Path, embedder_path: Path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelFileError, match=r"not a readable ONNX model.*re-export"):
        OnnxModel(corrupt)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(embedder_path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        OnnxModel(truncated)
    with pytest.raises(FileNotFoundError, match="dvc repro export"):
        OnnxModel(tmp_path / "absent.onnx")


def test_input_shape_disagreeing_with_metadata_is_refused(tmp_path: Path):
    meta = base_metadata("embedder")
    meta["visage.input_size"] = str(SIZE * 2)
    path = write_model(tmp_path / "m.onnx", metadata=meta)
    with pytest.raises(ModelFileError, match="input shape disagrees with its metadata"):
        OnnxModel(path)


def test_fixed_batch_and_bad_metadata_are_refused(tmp_path: Path):
    with pytest.raises(ModelFileError, match="input shape"):
        OnnxModel(write_model(tmp_path / "fixed.onnx", batch=1))
    meta = base_metadata("embedder")
    meta["visage.embedding_dim"] = str(DIM + 1)
    with pytest.raises(ModelFileError, match="embedding size"):
        OnnxModel(write_model(tmp_path / "dim.onnx", metadata=meta))
    meta = base_metadata("embedder")
    meta["visage.std"] = "zero"
    with pytest.raises(ModelFileError, match=r"'visage\.std' is 'zero'"):
        OnnxModel(write_model(tmp_path / "std.onnx", metadata=meta))
    meta = base_metadata("demographics")
    meta["visage.labels"] = json.dumps({"gender": ["f", "m"], "group": ["a", "b"]})
    with pytest.raises(ModelFileError, match="group classes"):
        OnnxModel(write_model(tmp_path / "labels.onnx", "demographics", metadata=meta))


def test_zero_mean_is_accepted(tmp_path: Path):
    meta = base_metadata("embedder")
    meta.update({"visage.mean": "0.0", "visage.std": "255.0"})
    model = OnnxModel(write_model(tmp_path / "m.onnx", metadata=meta))
    assert model.spec == PreprocessSpec(input_size=SIZE, mean=0.0, std=255.0)


def test_concurrent_embedding_matches_sequential(embedder_path: Path):
    model = OnnxModel(embedder_path)
    batches = [crops(5, seed=s) for s in range(8)]
    sequential = [model.embed(b) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(model.embed, batches))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(a, b)


def test_verify_model_hash(embedder_path: Path, tmp_path: Path):
    recorded = sha256_file(embedder_path)
    verify_model_hash(embedder_path, recorded.upper())
    data = bytearray(embedder_path.read_bytes())
    data[-1] ^= 0xFF
    embedder_path.write_bytes(bytes(data))
    with pytest.raises(ModelHashError) as err:
        verify_model_hash(embedder_path, recorded)
    assert recorded in str(err.value)
    assert "re-run `dvc repro export`" in str(err.value)
    with pytest.raises(FileNotFoundError):
        verify_model_hash(tmp_path / "absent.onnx", recorded)


def test_inference_runs_without_importing_torch(embedder_path: Path, demographics_path: Path):
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from visage_ml.inference import OnnxModel
        x = np.zeros((2, {SIZE}, {SIZE}, 3), dtype=np.uint8)
        assert OnnxModel({str(embedder_path)!r}).embed(x).shape == (2, {DIM})
        assert OnnxModel({str(demographics_path)!r}).predict(x)["age"].shape == (2,)
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("TORCH:" + ",".join(loaded))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "TORCH:"
