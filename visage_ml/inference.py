"""ONNX Runtime inference for the models visage-ml exports (serving imports this: never torch).

An exported model describes itself in its ONNX ``metadata_props`` (keys ``visage.*``, written by
:func:`visage_ml.export.to_onnx`): its kind, input size, standardisation, embedding size, the
data and code it came from. :class:`OnnxModel` reads and checks that description before it
accepts a file, then runs aligned crops through the one preprocessing function,
:func:`visage_ml.preprocess.to_model_input`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.io import sha256_file
from visage_ml.preprocess import PreprocessSpec, to_model_input

logger = logging.getLogger(__name__)

EMBEDDER = "embedder"
DEMOGRAPHICS = "demographics"
KINDS: tuple[str, ...] = (EMBEDDER, DEMOGRAPHICS)
INPUT_NAME = "input"
OUTPUT_NAMES: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {EMBEDDER: ("embedding",), DEMOGRAPHICS: ("age", "gender_logits", "group_logits")}
)

# metadata_props keys (the ONNX file's self-description)
META_PREFIX = "visage."
META_FORMAT = "visage.format"
META_KIND = "visage.kind"
META_INPUT_SIZE = "visage.input_size"
META_MEAN = "visage.mean"
META_STD = "visage.std"
META_LAYOUT = "visage.layout"
META_COLOR = "visage.color"
META_EMBEDDING_DIM = "visage.embedding_dim"
META_BACKBONE = "visage.backbone"
META_MODEL_VERSION = "visage.model_version"
META_DATA_MD5 = "visage.data_md5"
META_GIT_REV = "visage.git_rev"
META_LABELS = "visage.labels"
META_OPSET = "visage.opset"
FORMAT_VERSION = "1"

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)

_REEXPORT = "re-export it with `dvc repro export` (visage_ml.export.to_onnx)"
MSG_MISSING = "no ONNX model at {path}; build it with `dvc repro export` or give the right path"
MSG_UNREADABLE = "{path} is not a readable ONNX model ({reason}); " + _REEXPORT
MSG_NOT_VISAGE = (
    "{path} is an ONNX model but not a visage-ml one (its metadata has no 'visage.kind'); "
    "export models with visage_ml.export.to_onnx so they carry their preprocessing"
)
MSG_BAD_META = "{path}: metadata '{key}' is {found!r}, expected {expected}; " + _REEXPORT
MSG_WRONG_KIND = (
    "{path} holds a '{found}' model but a '{expected}' model is needed here; "
    "point to the {expected} file (e.g. models/{expected}.onnx)"
)
MSG_GRAPH = "{path}: {what} disagrees with its metadata ({detail}); " + _REEXPORT
MSG_HASH = (
    "{path} has SHA-256 {found} but {expected} was recorded when it was exported: the file was "
    "changed or replaced since; restore it or re-run `dvc repro export` and use the new hash"
)
MSG_CROPS = (
    "expected aligned uint8 RGB crops of shape (N, H, W, 3) or (H, W, 3), got {dtype} {shape}; "
    "align faces with visage_ml.preprocess.align_face first"
)


class ModelFileError(ValueError):
    """A model file is missing its visage metadata, of the wrong kind or inconsistent."""


class ModelHashError(ValueError):
    """A model file's content differs from the hash recorded at export."""


EXPORT_REPORT = "export.json"
MSG_EXPORT_REPORT = (
    "{path} is unreadable ({reason}); it records the hashes the models are checked against: "
    "restore it or re-run `dvc repro export`"
)
MSG_NONFINITE = (
    "{path} produced non-finite values (NaN or infinity) for {n} of {total} crops: the model "
    "is damaged or was exported wrongly; " + _REEXPORT
)


def recorded_sha256(reports_dir: str | os.PathLike[str], kind: str) -> str | None:
    """The SHA-256 that the export stage recorded for ``models/<kind>.onnx``, if any.

    Parameters
    ----------
    reports_dir
        The project's ``reports/`` folder (``export.json`` is read from it).
    kind
        ``"embedder"`` or ``"demographics"``.

    Returns
    -------
    str or None
        The lowercase hex digest, or None when no export report exists or it names no hash.

    Raises
    ------
    ModelHashError
        When ``export.json`` exists but cannot be read as JSON.
    """
    path = Path(reports_dir) / EXPORT_REPORT
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelHashError(
            MSG_EXPORT_REPORT.format(path=path, reason=type(exc).__name__)
        ) from None
    entry = doc.get(kind) if isinstance(doc, dict) else None
    digest = entry.get("onnx_sha256") if isinstance(entry, dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        return None
    return digest.lower()


def verify_model_hash(path: str | os.PathLike[str], expected_sha256: str) -> None:
    """Check that the model file at ``path`` is byte-for-byte the one that was exported.

    Parameters
    ----------
    path
        The ONNX file.
    expected_sha256
        Hex SHA-256 recorded at export (``reports/export.json``, ``onnx_sha256``).

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path``.
    ModelHashError
        When the file's SHA-256 differs from ``expected_sha256``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(MSG_MISSING.format(path=p))
    found = sha256_file(p)
    if found != expected_sha256.strip().lower():
        raise ModelHashError(MSG_HASH.format(path=p, found=found, expected=expected_sha256))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


# ONNX Runtime runs a batch one layer at a time: a layer writes its whole output before the next
# one reads it. Once that output outgrows the cores' caches, every layer streams through main
# memory. The compact embedder holds 0.6 MB of activations per crop at 96 px; with two threads
# here, batches of 8 ran 0-20% faster than batches of 32 (more while other tenants loaded the
# machine), and the demographic model (66 kB per crop) was fastest at 32. On the CPU,
# OnnxModel.run therefore hands ONNX Runtime micro-batches whose largest activation fills about
# CACHE_BUDGET_BYTES (the L2 of two server cores), within MICRO_BATCH_RANGE: large convolutional
# models are bound by arithmetic, not memory, and need a few crops per call to keep the matrix
# kernels busy. A GPU gets whole batches.
CACHE_BUDGET_BYTES = 4 << 20
MICRO_BATCH_RANGE = (8, 32)


def peak_activation_bytes(model_bytes: bytes) -> int | None:
    """Bytes of the largest intermediate tensor per sample of a serialised ONNX model.

    Shapes come from ONNX shape inference; the first (batch) axis is left out. Returns ``None``
    when no intermediate tensor has a fully known per-sample shape.
    """
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(onnx.load_model_from_string(model_bytes)).graph
    except Exception:  # onnx raises several unexported types; the caller falls back
        return None
    peak = 0
    for info in (*graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        dims = tensor.shape.dim[1:]
        if not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in dims):
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
        except (KeyError, TypeError):  # an element type numpy has no dtype for
            continue
        peak = max(peak, int(np.prod([d.dim_value for d in dims])) * itemsize)
    return peak or None


def micro_batch_for(peak_bytes: int | None) -> int:
    """Samples per ONNX Runtime call for a model whose largest activation is ``peak_bytes``."""
    lo, hi = MICRO_BATCH_RANGE
    if not peak_bytes:
        return lo
    return max(lo, min(hi, CACHE_BUDGET_BYTES // peak_bytes))


class OnnxModel:
    """A visage-ml ONNX model (embedder or demographics) behind an ONNX Runtime session.

    The object is immutable after construction and ONNX Runtime sessions accept concurrent
    ``run`` calls, so one instance may serve many threads.

    Parameters
    ----------
    path
        The ``.onnx`` file written by :func:`visage_ml.export.to_onnx`.
    expected_kind
        ``"embedder"`` or ``"demographics"`` to refuse a file of the other kind; ``None`` accepts
        either.
    providers
        ONNX Runtime execution providers, in order of preference; CPU by default.
    intra_op_threads
        Threads ONNX Runtime may use inside one operator; ``None`` lets it choose.
    expected_sha256
        The hash recorded at export (:func:`recorded_sha256`): the file is read once, refused
        when its SHA-256 differs, and the session is built from exactly the bytes checked.
    micro_batch
        The most samples :meth:`run` passes to ONNX Runtime in one call; larger inputs are run
        in slices of this size. ``None`` derives it from the model's activation sizes
        (:func:`micro_batch_for`) when the session runs on the CPU, and passes whole batches
        to any other execution provider.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ModelHashError
        When ``expected_sha256`` is given and the file's hash differs.
    ModelFileError
        When the file is not ONNX, not a visage-ml model, of the wrong kind, or its graph
        disagrees with its metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        expected_kind: str | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        expected_sha256: str | None = None,
        micro_batch: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self._path = Path(path)
        if expected_kind is not None and expected_kind not in KINDS:
            raise ValueError(f"expected_kind must be one of {KINDS} or None, not {expected_kind!r}")
        if not self._path.is_file():
            raise FileNotFoundError(MSG_MISSING.format(path=self._path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(f"intra_op_threads must be >= 1, not {intra_op_threads}")
            options.intra_op_num_threads = intra_op_threads
            options.inter_op_num_threads = 1
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, not {micro_batch}")
        chosen = list(providers) if providers is not None else list(DEFAULT_PROVIDERS)
        source = self._path.read_bytes()
        if expected_sha256 is not None:
            found = hashlib.sha256(source).hexdigest()
            if found != expected_sha256.strip().lower():
                raise ModelHashError(
                    MSG_HASH.format(path=self._path, found=found, expected=expected_sha256)
                )
        try:
            self._session = ort.InferenceSession(source, sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ModelFileError(MSG_UNREADABLE.format(path=self._path, reason=reason)) from None
        props = self._session.get_modelmeta().custom_metadata_map
        self._metadata = types.MappingProxyType(
            {k: v for k, v in sorted(props.items()) if k.startswith(META_PREFIX)}
        )
        self._read_metadata(expected_kind)
        self._check_graph()
        self._micro_batch: int | None = micro_batch
        if micro_batch is None and self.providers[0] == "CPUExecutionProvider":
            self._micro_batch = micro_batch_for(peak_activation_bytes(source))
        logger.debug("loaded %s model %s", self._kind, self._path.name)

    # -- metadata ------------------------------------------------------------------------------

    def _meta(self, key: str, expected: str) -> str:
        value = self._metadata.get(key)
        if value is None or value == "":
            raise ModelFileError(
                MSG_BAD_META.format(path=self._path, key=key, found=value, expected=expected)
            )
        return value

    def _meta_number(self, key: str, cast: type, expected: str, *, positive: bool = True) -> Any:
        raw = self._meta(key, expected)
        try:
            value = cast(raw)
        except ValueError:
            raise ModelFileError(
                MSG_BAD_META.format(path=self._path, key=key, found=raw, expected=expected)
            ) from None
        if not np.isfinite(value) or (positive and value <= 0):
            raise ModelFileError(
                MSG_BAD_META.format(path=self._path, key=key, found=raw, expected=expected)
            )
        return value

    def _read_metadata(self, expected_kind: str | None) -> None:
        if META_KIND not in self._metadata:
            raise ModelFileError(MSG_NOT_VISAGE.format(path=self._path))
        kind = self._meta(META_KIND, f"one of {KINDS}")
        if kind not in KINDS:
            raise ModelFileError(
                MSG_BAD_META.format(
                    path=self._path, key=META_KIND, found=kind, expected=f"one of {KINDS}"
                )
            )
        if expected_kind is not None and kind != expected_kind:
            raise ModelFileError(
                MSG_WRONG_KIND.format(path=self._path, found=kind, expected=expected_kind)
            )
        self._kind = kind
        layout = self._meta(META_LAYOUT, "'NCHW'")
        if layout != "NCHW":
            raise ModelFileError(
                MSG_BAD_META.format(path=self._path, key=META_LAYOUT, found=layout, expected="NCHW")
            )
        color = self._metadata.get(META_COLOR, "RGB")
        if color != "RGB":
            raise ModelFileError(
                MSG_BAD_META.format(path=self._path, key=META_COLOR, found=color, expected="RGB")
            )
        self._spec = PreprocessSpec(
            input_size=self._meta_number(META_INPUT_SIZE, int, "a positive integer"),
            mean=float(self._meta_number(META_MEAN, float, "a finite number", positive=False)),
            std=float(self._meta_number(META_STD, float, "a positive number")),
            layout=layout,
            color=color,
        )
        self._embedding_dim: int | None = None
        if kind == EMBEDDER:
            self._embedding_dim = self._meta_number(META_EMBEDDING_DIM, int, "a positive integer")
        self._labels: Mapping[str, Any] = types.MappingProxyType({})
        if kind == DEMOGRAPHICS:
            raw = self._meta(META_LABELS, "a JSON object with 'gender' and 'group' lists")
            try:
                labels = json.loads(raw)
            except json.JSONDecodeError:
                labels = None
            if not (
                isinstance(labels, dict)
                and isinstance(labels.get("gender"), list)
                and isinstance(labels.get("group"), list)
            ):
                raise ModelFileError(
                    MSG_BAD_META.format(
                        path=self._path,
                        key=META_LABELS,
                        found=raw,
                        expected="a JSON object with 'gender' and 'group' lists",
                    )
                )
            self._labels = types.MappingProxyType(labels)

    def _check_graph(self) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            names = [i.name for i in inputs]
            raise ModelFileError(
                MSG_GRAPH.format(
                    path=self._path, what="the input", detail=f"inputs {names}, want ['input']"
                )
            )
        shape = list(inputs[0].shape)
        size = self._spec.input_size
        want = ["batch", 3, size, size]
        if len(shape) != 4 or shape[1:] != [3, size, size] or isinstance(shape[0], int):
            raise ModelFileError(
                MSG_GRAPH.format(
                    path=self._path,
                    what="the input shape",
                    detail=f"graph input {shape}, metadata input_size {size} means {want}",
                )
            )
        if inputs[0].type != "tensor(float)":
            raise ModelFileError(
                MSG_GRAPH.format(
                    path=self._path, what="the input type", detail=f"{inputs[0].type}, want float"
                )
            )
        outputs = {o.name: list(o.shape) for o in self._session.get_outputs()}
        expected = OUTPUT_NAMES[self._kind]
        if tuple(outputs) != expected:
            raise ModelFileError(
                MSG_GRAPH.format(
                    path=self._path,
                    what="the outputs",
                    detail=f"outputs {list(outputs)}, a {self._kind} has {list(expected)}",
                )
            )
        if self._kind == EMBEDDER:
            dim = outputs["embedding"][-1]
            if isinstance(dim, int) and dim != self._embedding_dim:
                raise ModelFileError(
                    MSG_GRAPH.format(
                        path=self._path,
                        what="the embedding size",
                        detail=f"graph gives {dim}, metadata says {self._embedding_dim}",
                    )
                )
        else:
            for name, key in (("gender_logits", "gender"), ("group_logits", "group")):
                n = outputs[name][-1]
                if isinstance(n, int) and n != len(self._labels[key]):
                    raise ModelFileError(
                        MSG_GRAPH.format(
                            path=self._path,
                            what=f"the {key} classes",
                            detail=f"graph gives {n}, labels list {len(self._labels[key])}",
                        )
                    )

    # -- properties ----------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The ONNX file this model was loaded from."""
        return self._path

    @property
    def kind(self) -> str:
        """``"embedder"`` or ``"demographics"``."""
        return self._kind

    @property
    def spec(self) -> PreprocessSpec:
        """The preprocessing the model was trained and exported with."""
        return self._spec

    @property
    def embedding_dim(self) -> int | None:
        """Length of an embedding (``None`` for a demographic model)."""
        return self._embedding_dim

    @property
    def model_version(self) -> str:
        """The model version recorded at export (``"unknown"`` when none was)."""
        return self._metadata.get(META_MODEL_VERSION, "unknown")

    @property
    def data_md5(self) -> str:
        """MD5 of the training data the model came from (``"unknown"`` when none was recorded)."""
        return self._metadata.get(META_DATA_MD5, "unknown")

    @property
    def labels(self) -> Mapping[str, Any]:
        """Class orders of a demographic model (``gender``, ``group``, ``age_bands``), else {}."""
        return self._labels

    @property
    def metadata(self) -> Mapping[str, str]:
        """Every ``visage.*`` metadata entry of the file (read-only)."""
        return self._metadata

    @property
    def micro_batch(self) -> int | None:
        """The most samples one ONNX Runtime call gets (see :meth:`run`); ``None``: no limit."""
        return self._micro_batch

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses."""
        return list(self._session.get_providers())

    def __repr__(self) -> str:
        return f"OnnxModel(kind={self._kind!r}, path={str(self._path)!r})"

    # -- inference -----------------------------------------------------------------------------

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run already standardised NCHW float32 input; return the raw outputs by name.

        Inputs of more than :attr:`micro_batch` samples are run in slices of that size, which
        keeps each layer's output in cache (see :data:`CACHE_BUDGET_BYTES`).
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self._micro_batch
        if step is None or x.shape[0] <= step:
            outs = self._session.run(None, {INPUT_NAME: x})
        else:
            parts = [
                self._session.run(None, {INPUT_NAME: x[i : i + step]})
                for i in range(0, x.shape[0], step)
            ]
            outs = [np.concatenate(column, axis=0) for column in zip(*parts, strict=True)]
        return dict(zip(OUTPUT_NAMES[self._kind], outs, strict=True))

    def _batches(self, crops: np.ndarray, batch_size: int) -> list[dict[str, np.ndarray]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        arr = np.asarray(crops)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape[1:3]:
            raise ValueError(MSG_CROPS.format(dtype=arr.dtype, shape=tuple(arr.shape)))
        return [
            self.run(to_model_input(arr[i : i + batch_size], self._spec))
            for i in range(0, arr.shape[0], batch_size)
        ]

    def _require(self, kind: str, method: str) -> None:
        if self._kind != kind:
            raise ModelFileError(
                f"{method}() needs a {kind} model but {self._path} holds a {self._kind} model; "
                f"load models/{kind}.onnx for it"
            )

    def _check_finite(self, rows: np.ndarray) -> None:
        """Refuse outputs holding NaN or infinity (a damaged model), naming the file."""
        bad = ~np.isfinite(rows).reshape(rows.shape[0], -1).all(axis=1)
        if bad.any():
            raise ModelFileError(
                MSG_NONFINITE.format(path=self._path, n=int(bad.sum()), total=rows.shape[0])
            )

    def embed(self, crops_u8_nhwc: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Identity embeddings of aligned face crops.

        Parameters
        ----------
        crops_u8_nhwc
            uint8 RGB crops, shape ``(N, H, W, 3)`` (or one ``(H, W, 3)``); resized to the
            model's input size when they differ.
        batch_size
            Crops standardised at a time (bounds the float32 copy); :meth:`run` then hands them
            to ONNX Runtime :attr:`micro_batch` at a time.

        Returns
        -------
        numpy.ndarray
            float32 ``(N, embedding_dim)``, each row of unit L2 norm.
        """
        self._require(EMBEDDER, "embed")
        dim = int(self._embedding_dim or 0)
        parts = [out["embedding"] for out in self._batches(crops_u8_nhwc, batch_size)]
        if not parts:
            return np.zeros((0, dim), dtype=np.float32)
        emb = np.concatenate(parts, axis=0)
        self._check_finite(emb)
        return l2_normalize(emb)

    def predict(self, crops_u8_nhwc: np.ndarray, *, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Age, gender and group estimates for aligned face crops.

        Parameters
        ----------
        crops_u8_nhwc
            uint8 RGB crops, shape ``(N, H, W, 3)`` (or one ``(H, W, 3)``).
        batch_size
            Crops standardised at a time (bounds the float32 copy); :meth:`run` then hands them
            to ONNX Runtime :attr:`micro_batch` at a time.

        Returns
        -------
        dict
            ``age`` float32 ``(N,)`` in years; ``gender_probs`` ``(N, len(labels["gender"]))``
            and ``group_probs`` ``(N, len(labels["group"]))``, rows summing to 1, columns in
            the order of :attr:`labels`.
        """
        self._require(DEMOGRAPHICS, "predict")
        outs = self._batches(crops_u8_nhwc, batch_size)
        n_gender, n_group = len(self._labels["gender"]), len(self._labels["group"])
        if not outs:
            return {
                "age": np.zeros((0,), dtype=np.float32),
                "gender_probs": np.zeros((0, n_gender), dtype=np.float32),
                "group_probs": np.zeros((0, n_group), dtype=np.float32),
            }
        age = np.concatenate([o["age"].reshape(-1) for o in outs]).astype(np.float32)
        gender = np.concatenate([o["gender_logits"] for o in outs], axis=0)
        group = np.concatenate([o["group_logits"] for o in outs], axis=0)
        self._check_finite(np.concatenate([age[:, None], gender, group], axis=1))
        return {"age": age, "gender_probs": _softmax(gender), "group_probs": _softmax(group)}
