"""Export of trained models to self-describing ONNX files, with a parity check against torch.

:func:`to_onnx` writes the graph (dynamic batch, explicit opset, input ``input``, outputs named
per kind) and the ``visage.*`` metadata that :class:`visage_ml.inference.OnnxModel` reads back:
preprocessing, sizes, class orders and lineage (backbone, model version, data md5, git revision).
:func:`check_parity` runs torch eager and ONNX Runtime on the same standardised crops;
:func:`export_with_parity` only replaces a model file once its candidate passed. PReLU nodes
are rewritten into an equivalent form (equal within rounding) that ONNX Runtime runs ~3x faster
on the CPU (:func:`decompose_prelu`).

The exporter is torch's TorchScript-based one (``dynamo=False``): the dynamo exporter needs the
``onnxscript`` package, which visage-ml does not depend on, while the TorchScript exporter ships
with torch, handles every registered backbone, and writes byte-identical files for the same
weights and metadata (the metadata names the code revision: a new commit alone changes the file).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from visage_ml.config import GENDERS, GROUPS, ExportParams, ProjectPaths
from visage_ml.data.crops import read_crops
from visage_ml.data.prepare import FACES_FILE, MANIFEST_FILE
from visage_ml.data.processed import check_allowed
from visage_ml.dvcops import git_revision
from visage_ml.inference import (
    DEMOGRAPHICS,
    EMBEDDER,
    FORMAT_VERSION,
    INPUT_NAME,
    KINDS,
    META_BACKBONE,
    META_COLOR,
    META_DATA_MD5,
    META_EMBEDDING_DIM,
    META_FORMAT,
    META_GIT_REV,
    META_INPUT_SIZE,
    META_KIND,
    META_LABELS,
    META_LAYOUT,
    META_MEAN,
    META_MODEL_VERSION,
    META_OPSET,
    META_STD,
    OUTPUT_NAMES,
    OnnxModel,
)
from visage_ml.io import atomic_write_bytes, fsync_dir, sha256_file
from visage_ml.preprocess import PreprocessSpec, to_model_input
from visage_ml.privacy.datakeys import DataKeys
from visage_ml.privacy.registry import Registry

if TYPE_CHECKING:
    import onnx
    import torch

logger = logging.getLogger(__name__)

# The TorchScript exporter stops at opset 20 (torch.onnx._constants).
MAX_OPSET = 20
MIN_OPSET = 11
META_DATA_FILES = "visage.data_files"
# The prepare output whose md5 is "the data md5" (the checkpoint's ``data_md5`` is the same file's).
DATA_FILE = "data/processed/faces.sealed"
REQUIRED_METADATA: tuple[str, ...] = (
    META_BACKBONE,
    META_MODEL_VERSION,
    META_DATA_MD5,
    META_GIT_REV,
)
UNKNOWN = "unknown"
# The models of a project that the export stage exports, each from ``models/<name>.pt``.
MODELS: tuple[str, ...] = ("embedder", "demographics")
# The numbers of a parity report that reports/export.json keeps (DVC metrics).
SUMMARY_KEYS: tuple[str, ...] = (
    "n_samples",
    "max_abs_diff",
    "min_cosine",
    "argmax_agreement",
    "passed",
    "opset",
    "onnx_sha256",
    "size_bytes",
)
# ``path -> (model, checkpoint meta)``: visage_ml.models.checkpoint.load_model or a stand-in.
Loader = Callable[[Path], tuple[Any, dict[str, Any]]]

MSG_OPSET = (
    "opset {opset} is outside what the TorchScript ONNX exporter writes ({lo}..{hi}); "
    "set export.opset in params.yaml within that range"
)
MSG_MISSING_META = (
    "export metadata lacks {keys}; build it with visage_ml.export.build_metadata(checkpoint_meta, "
    "root=...) so the ONNX file records its lineage"
)
MSG_STALE_MODEL = (
    "the {kind} checkpoint was trained on data md5 {trained}, but dvc.lock records {locked} for "
    "{file}: the model is older than the data, and its ONNX file would name data it was not "
    "trained on; run `dvc repro` (which trains it again) instead of exporting it alone"
)
MSG_PARITY = (
    "ONNX parity failed for the {kind} model: {failures}. The ONNX graph does not compute what "
    "the torch model computes; look for layers the exporter mistranslates (data-dependent "
    "control flow, layers left in training mode) and export again"
)


class ExportError(ValueError):
    """A model or its metadata cannot be exported as a visage-ml ONNX file."""


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from torch eager's beyond the configured bounds.

    ``report`` holds the numbers (the dict :func:`check_parity` would have returned).
    """

    def __init__(self, message: str, report: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.report = dict(report)


# ---------------------------------------------------------------------------------------------
# Lineage metadata
# ---------------------------------------------------------------------------------------------


def read_prepare_outs(lock_path: str | os.PathLike[str]) -> dict[str, str]:
    """``{path: md5}`` of the ``prepare`` stage's outputs in ``dvc.lock`` (empty when absent)."""
    import yaml

    p = Path(lock_path)
    if not p.is_file():
        return {}
    try:
        lock = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        logger.warning("%s is not valid YAML; using the checkpoint's data md5", p.name)
        return {}
    stage = (lock.get("stages") or {}).get("prepare") or {}
    outs: dict[str, str] = {}
    for out in stage.get("outs") or []:
        if isinstance(out, dict) and out.get("path") and out.get("md5"):
            outs[str(out["path"])] = str(out["md5"])
    return dict(sorted(outs.items()))


def build_metadata(
    checkpoint_meta: Mapping[str, Any], *, root: str | os.PathLike[str]
) -> dict[str, str]:
    """Lineage metadata of a checkpoint for :func:`to_onnx`.

    Parameters
    ----------
    checkpoint_meta
        The ``meta`` dict of ``visage_ml.models.checkpoint.load_model``.
    root
        The project root: the data md5 is the checkpoint's ``data_md5`` (what the model was
        trained on), which must be what ``dvc.lock`` there records for the prepare stage's
        ``data/processed/faces.sealed`` when it records one; git there gives the code revision.

    Raises
    ------
    ExportError
        The checkpoint was trained on other data than ``dvc.lock`` records (the model is
        stale): its file would name data it was not trained on, and an erasure's lineage, which
        matches models by that md5, would miss it.

    Returns
    -------
    dict
        ``visage.backbone``, ``visage.model_version``, ``visage.data_md5``, ``visage.git_rev``,
        ``visage.data_files`` (JSON ``{path: md5}`` of every prepare output, when ``dvc.lock``
        has them) and, for demographic models,
        ``visage.labels`` (JSON: gender and group orders, age bands).
    """
    config = checkpoint_meta.get("config") or {}
    kind = checkpoint_meta.get("kind")
    metadata = {
        META_BACKBONE: str(config.get("backbone") or UNKNOWN),
        META_MODEL_VERSION: str(checkpoint_meta.get("model_version") or UNKNOWN),
        # "+dirty" when tracked files differ from the commit (a `dvc exp run -S` edits
        # params.yaml), as evaluation records it: the file never names a revision it was not.
        META_GIT_REV: git_revision(Path(root), mark_dirty=True),
    }
    trained_on = str(checkpoint_meta.get("data_md5") or UNKNOWN)
    outs = read_prepare_outs(Path(root) / "dvc.lock")
    locked = outs.get(DATA_FILE)
    if trained_on != UNKNOWN and locked is not None and trained_on != locked:
        raise ExportError(
            MSG_STALE_MODEL.format(kind=kind, trained=trained_on, locked=locked, file=DATA_FILE)
        )
    metadata[META_DATA_MD5] = trained_on if trained_on != UNKNOWN else (locked or UNKNOWN)
    if outs:
        metadata[META_DATA_FILES] = json.dumps(outs, sort_keys=True)
    if kind == DEMOGRAPHICS:
        labels = checkpoint_meta.get("labels") or {}
        age_bands = labels.get("age_bands", config.get("age_bands", []))
        metadata[META_LABELS] = json.dumps(
            {
                "gender": list(labels.get("gender", GENDERS)),
                "group": list(labels.get("group", GROUPS)),
                "age_bands": list(age_bands),
            },
            sort_keys=True,
        )
    return metadata


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode for the block and restore its training flag after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device_of(model: torch.nn.Module) -> torch.device:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _outputs(result: Any, kind: str) -> list[torch.Tensor]:
    """The model's outputs as a list in :data:`OUTPUT_NAMES` order, checked for shape."""
    import torch

    outs = [result] if isinstance(result, torch.Tensor) else list(result)
    names = OUTPUT_NAMES[kind]
    if len(outs) != len(names) or not all(isinstance(o, torch.Tensor) for o in outs):
        raise ExportError(
            f"a {kind} model must return {len(names)} tensor(s) ({', '.join(names)}), "
            f"this one returns {len(outs)} value(s); check that kind={kind!r} is right"
        )
    if kind == EMBEDDER and outs[0].ndim != 2:
        raise ExportError(
            f"an embedder must return (N, D) embeddings, got shape {tuple(outs[0].shape)}"
        )
    if kind == DEMOGRAPHICS:
        age, gender, group = outs
        if age.ndim != 1 or gender.ndim != 2 or group.ndim != 2:
            raise ExportError(
                "a demographic model must return age (N,), gender_logits (N, G) and "
                f"group_logits (N, K); got {[tuple(o.shape) for o in outs]}"
            )
    return outs


def _channel_slope(
    x_rank: int | None, slope_name: str, inits: Mapping[str, Any]
) -> np.ndarray | None:
    """The per-channel slope vector of a PRelu over NCHW input, or ``None`` for another PRelu."""
    from onnx import numpy_helper

    if slope_name not in inits or x_rank != 4:
        return None
    slope = numpy_helper.to_array(inits[slope_name])
    if slope.dtype != np.float32 or slope.ndim != 3 or slope.shape[1:] != (1, 1):
        return None
    return slope.reshape(-1)


def decompose_prelu(model: onnx.ModelProto) -> int:
    """Rewrite each ``PRelu`` of ``model`` into operators ONNX Runtime's CPU kernels run fast.

    ONNX Runtime's ``PRelu`` kernel is slow, and no layout optimisation passes through it: in
    the MobileFaceNet backbone (17 PReLUs) it took ~70% of the run time. A per-channel PReLU
    over NCHW input becomes ``x + BN_{1-slope}(Relu(BN_{-1}(x)))``, where ``BN_s`` is a
    BatchNormalization that only scales channels by ``s``: ONNX Runtime turns each into a 1x1
    depthwise convolution in its blocked (NCHWc) layout, fusing the ``Relu`` into the first and
    the ``Add`` into the second, so a PReLU costs two passes over the tensor and the tensor
    never leaves that layout. Positive inputs come out exactly; a negative ``x`` comes out as
    ``x + (1 - slope) * -x``, within two roundings of ``slope * x``. Any other PReLU becomes
    ``r + slope * (x - r)`` with ``r = Relu(x)``, which is exact. Rewriting PReLU as
    ``Relu(x) + BN_{-slope}(Relu(BN_{-1}(x)))`` made MobileFaceNet about 3x faster at batch 1
    and at batch 32 (one thread, ONNX Runtime 1.32); that form left a third pass, the unfused
    ``Relu`` (14% of the time at batch 32), which the form above saves. Names derive from the
    original nodes, so the export stays deterministic.

    Returns
    -------
    int
        How many ``PRelu`` nodes were rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    if not any(n.op_type == "PRelu" for n in graph.node):
        return 0
    inits = {t.name: t for t in graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in (*inferred.value_info, *inferred.input, *inferred.output)
        if vi.type.tensor_type.HasField("shape")
    }
    added: dict[str, np.ndarray] = {}

    def constant(name: str, value: np.ndarray) -> str:
        added.setdefault(name, value.astype(np.float32))
        return name

    def scale(x: str, y: str, factors: np.ndarray, name: str) -> onnx.NodeProto:
        c = factors.size
        zeros, ones = np.zeros(c, np.float32), np.ones(c, np.float32)
        inputs = [
            x,
            constant(f"{name}__scale", factors),
            constant(f"prelu__zeros_{c}", zeros),
            constant(f"prelu__zeros_{c}", zeros),
            constant(f"prelu__ones_{c}", ones),
        ]
        return helper.make_node("BatchNormalization", inputs, [y], name=name, epsilon=0.0)

    nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    count = 0
    for node in graph.node:
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        count += 1
        x, slope_name = node.input
        y, base = node.output[0], node.name or node.output[0]
        # The exporter shares equal constants through Identity nodes (e.g. untrained slopes).
        source = slope_name
        while source in aliases:
            source = aliases[source]
        slope = _channel_slope(ranks.get(x), source, inits)
        if slope is not None:
            negx, rneg, neg = (f"{base}__{part}" for part in ("negx", "rneg", "neg"))
            nodes += [
                scale(x, negx, -np.ones_like(slope), negx),
                helper.make_node("Relu", [negx], [rneg], name=rneg),
                scale(rneg, neg, 1 - slope, neg),
                helper.make_node("Add", [x, neg], [y], name=f"{base}__add"),
            ]
            replaced.add(source)
        else:
            relu, negpart, scaled = (f"{base}__{part}" for part in ("relu", "negpart", "scaled"))
            nodes += [
                helper.make_node("Relu", [x], [relu], name=relu),
                helper.make_node("Sub", [x, relu], [negpart], name=negpart),
                helper.make_node("Mul", [slope_name, negpart], [scaled], name=scaled),
                helper.make_node("Add", [relu, scaled], [y], name=f"{base}__add"),
            ]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in added.items())
    # Slopes now folded into BatchNormalization scales go, with the Identity nodes that shared
    # them, unless something else still reads them.
    outputs = {o.name for o in graph.output}
    used = {name for n in graph.node for name in n.input} | outputs
    dead = [
        n
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in replaced and n.output[0] not in used
    ]
    for n in dead:
        graph.node.remove(n)
    used = {name for n in graph.node for name in n.input} | outputs
    for t in [t for t in graph.initializer if t.name in replaced - used]:
        graph.initializer.remove(t)
    return count


def _spec_metadata(spec: PreprocessSpec, kind: str, opset: int) -> dict[str, str]:
    return {
        META_FORMAT: FORMAT_VERSION,
        META_KIND: kind,
        META_INPUT_SIZE: str(int(spec.input_size)),
        META_MEAN: repr(float(spec.mean)),
        META_STD: repr(float(spec.std)),
        META_LAYOUT: spec.layout,
        META_COLOR: spec.color,
        META_OPSET: str(opset),
    }


def _check_labels(metadata: Mapping[str, str], outs: list[torch.Tensor]) -> None:
    raw = metadata.get(META_LABELS)
    if raw is None:
        raise ExportError(MSG_MISSING_META.format(keys=META_LABELS))
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError:
        raise ExportError(f"metadata '{META_LABELS}' must be a JSON object, got {raw!r}") from None
    for key, out in (("gender", outs[1]), ("group", outs[2])):
        names = labels.get(key) if isinstance(labels, dict) else None
        if not isinstance(names, list) or len(names) != out.shape[1]:
            raise ExportError(
                f"metadata '{META_LABELS}' must list the {out.shape[1]} {key} classes the model "
                f"predicts, in output order; found {names!r}"
            )


def to_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    spec: PreprocessSpec,
    kind: str,
    opset: int,
    metadata: Mapping[str, str],
) -> None:
    """Export ``model`` to a self-describing ONNX file, atomically.

    Parameters
    ----------
    model
        An embedder (NCHW float32 -> L2-normalised ``(N, D)``) or a demographic model
        (-> ``age (N,)``, ``gender_logits (N, G)``, ``group_logits (N, K)``). Exported in eval
        mode; its training flag is restored afterwards.
    path
        Destination ``.onnx`` file (replaced atomically).
    spec
        The preprocessing the model expects; recorded as ``visage.input_size``, ``visage.mean``,
        ``visage.std``, ``visage.layout``, ``visage.color``.
    kind
        ``"embedder"`` or ``"demographics"``; names the outputs (``embedding`` or ``age``,
        ``gender_logits``, ``group_logits``).
    opset
        ONNX opset (11..20).
    metadata
        Lineage entries (:func:`build_metadata`): at least ``visage.backbone``,
        ``visage.model_version``, ``visage.data_md5``, ``visage.git_rev``, plus
        ``visage.labels`` for demographic models. String keys and values.

    Raises
    ------
    ExportError
        On an unknown kind, an opset out of range, missing or non-string metadata, or a model
        whose outputs do not fit ``kind``.
    """
    import onnx
    import torch

    if kind not in KINDS:
        raise ExportError(f"kind must be one of {KINDS}, not {kind!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(MSG_OPSET.format(opset=opset, lo=MIN_OPSET, hi=MAX_OPSET))
    if spec.layout != "NCHW" or spec.color != "RGB":
        raise ExportError(
            f"only NCHW RGB input is exported, the spec says {spec.layout} {spec.color}"
        )
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ExportError(f"metadata keys and values must be strings; fix {bad}")
    missing = [k for k in REQUIRED_METADATA if not metadata.get(k)]
    if missing:
        raise ExportError(MSG_MISSING_META.format(keys=", ".join(missing)))

    names = OUTPUT_NAMES[kind]
    props = _spec_metadata(spec, kind, opset)
    with _eval_mode(model):
        gen = torch.Generator().manual_seed(0)
        # Batch 2, so that nothing specialises on a batch of one.
        dummy = torch.randn(2, 3, spec.input_size, spec.input_size, generator=gen)
        dummy = dummy.to(_device_of(model))
        with torch.no_grad():
            outs = _outputs(model(dummy), kind)
        if kind == EMBEDDER:
            props[META_EMBEDDING_DIM] = str(int(outs[0].shape[1]))
        else:
            _check_labels(metadata, outs)
        clash = {k for k in props if k in metadata and metadata[k] != props[k]}
        if clash:
            raise ExportError(
                f"metadata {sorted(clash)} contradicts the model and spec; leave these keys to "
                "to_onnx, which derives them"
            )
        buf = io.BytesIO()
        with warnings.catch_warnings():
            # The exporter announces that it is the legacy one; that is a deliberate choice.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                model,
                (dummy,),
                buf,
                dynamo=False,
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                input_names=[INPUT_NAME],
                output_names=list(names),
                dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *names)},
            )
    proto = onnx.load_model_from_string(buf.getvalue())
    if decompose_prelu(proto):
        logger.debug("rewrote PRelu nodes for ONNX Runtime's CPU kernels")
    del proto.metadata_props[:]
    for key, value in sorted({**metadata, **props}.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"visage-ml {kind} model"
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString(deterministic=True)
    atomic_write_bytes(Path(path), data)
    logger.debug("wrote %s model %s (%d bytes, opset %d)", kind, Path(path).name, len(data), opset)


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def check_parity(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs_u8_nhwc: np.ndarray,
    *,
    spec: PreprocessSpec,
    min_cosine: float,
    max_abs_diff: float,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Compare torch eager and ONNX Runtime on the same standardised crops.

    Parameters
    ----------
    model
        The torch model that was exported (run in eval mode, training flag restored).
    onnx_path
        The exported file; its kind and preprocessing come from its metadata.
    inputs_u8_nhwc
        uint8 RGB crops ``(N, H, W, 3)``; standardised once with ``spec`` for both runtimes.
    spec
        The model's preprocessing; must equal the one recorded in the ONNX file.
    min_cosine
        Lowest accepted cosine between torch and ONNX embeddings of one crop (embedders).
    max_abs_diff
        Largest accepted absolute difference of any output value.
    batch_size
        Crops per forward pass.

    Returns
    -------
    dict
        ``kind``, ``n_samples``, ``max_abs_diff``, ``max_abs_diff_by_output``, ``min_cosine``
        (embedders), ``argmax_agreement`` (share of crops whose gender / group argmax agree;
        demographic models), ``passed`` and the bounds used.

    Raises
    ------
    ParityError
        When an output is not finite, the ONNX preprocessing differs from ``spec``, a cosine
        is below ``min_cosine`` or a difference above ``max_abs_diff``.
    """
    import torch

    onnx_model = OnnxModel(onnx_path)
    kind = onnx_model.kind
    x_all = to_model_input(np.asarray(inputs_u8_nhwc), spec)
    if x_all.shape[0] == 0:
        raise ValueError("parity needs at least one crop; give inputs_u8_nhwc with N >= 1")
    names = OUTPUT_NAMES[kind]
    torch_parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    onnx_parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    device = _device_of(model)
    with _eval_mode(model), torch.inference_mode():
        for i in range(0, x_all.shape[0], batch_size):
            x = x_all[i : i + batch_size]
            outs = _outputs(model(torch.from_numpy(x).to(device)), kind)
            ort_outs = onnx_model.run(x)
            for name, out in zip(names, outs, strict=True):
                torch_parts[name].append(out.detach().float().cpu().numpy())
                onnx_parts[name].append(np.asarray(ort_outs[name], dtype=np.float32))
    ref = {n: np.concatenate(v, axis=0) for n, v in torch_parts.items()}
    got = {n: np.concatenate(v, axis=0).reshape(ref[n].shape) for n, v in onnx_parts.items()}

    failures: list[str] = []
    finite = all(np.isfinite(ref[n]).all() and np.isfinite(got[n]).all() for n in names)
    if not finite:
        failures.append("an output is not finite (NaN or inf)")
    by_output = {n: float(np.max(np.abs(ref[n] - got[n]), initial=0.0)) for n in names}
    worst = max(by_output.values())
    report: dict[str, Any] = {
        "kind": kind,
        "n_samples": int(x_all.shape[0]),
        "max_abs_diff": worst,
        "max_abs_diff_by_output": by_output,
        "bounds": {"min_cosine": float(min_cosine), "max_abs_diff": float(max_abs_diff)},
    }
    if onnx_model.spec != spec:
        failures.append(f"the file's preprocessing {onnx_model.spec} differs from {spec}")
    if not worst <= max_abs_diff:
        failures.append(f"max abs diff {worst:.3g} > {max_abs_diff:g} allowed")
    if kind == EMBEDDER:
        cos = float(np.min(_row_cosines(ref["embedding"], got["embedding"])))
        report["min_cosine"] = cos
        if not cos >= min_cosine:
            failures.append(f"min cosine {cos:.6f} < {min_cosine:g} required")
    else:
        report["argmax_agreement"] = {
            n: float(np.mean(ref[n].argmax(axis=1) == got[n].argmax(axis=1)))
            for n in ("gender_logits", "group_logits")
        }
    report["passed"] = not failures
    if failures:
        raise ParityError(
            MSG_PARITY.format(kind=kind, failures="; ".join(failures)),
            report,
        )
    logger.info("parity %s: max abs diff %.3g over %d crops", kind, worst, report["n_samples"])
    return report


def export_with_parity(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    spec: PreprocessSpec,
    kind: str,
    opset: int,
    metadata: Mapping[str, str],
    inputs_u8_nhwc: np.ndarray,
    min_cosine: float,
    max_abs_diff: float,
) -> dict[str, Any]:
    """Export to a candidate next to ``path``, check parity, and only then replace ``path``.

    A model that fails parity never overwrites the previous file: the candidate is removed and
    :class:`ParityError` raised (its ``report`` carries the numbers plus ``opset``).

    Parameters
    ----------
    model, spec, kind, opset, metadata
        As for :func:`to_onnx`.
    path
        Final ``.onnx`` file.
    inputs_u8_nhwc, min_cosine, max_abs_diff
        As for :func:`check_parity`.

    Returns
    -------
    dict
        The parity report plus ``opset``, ``onnx_sha256`` and ``size_bytes`` of the file.
    """
    final = Path(path)
    candidate = final.with_name(f".{final.name}.candidate")
    try:
        to_onnx(model, candidate, spec=spec, kind=kind, opset=opset, metadata=metadata)
        try:
            report = check_parity(
                model,
                candidate,
                inputs_u8_nhwc,
                spec=spec,
                min_cosine=min_cosine,
                max_abs_diff=max_abs_diff,
            )
        except ParityError as exc:
            exc.report["opset"] = opset
            raise
        report["opset"] = opset
        report["onnx_sha256"] = sha256_file(candidate)
        report["size_bytes"] = candidate.stat().st_size
        os.replace(candidate, final)
        fsync_dir(final.parent)
        logger.info("exported %s model to %s (%d bytes)", kind, final, report["size_bytes"])
    finally:
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
    return report


# ---------------------------------------------------------------------------------------------
# A project's models
# ---------------------------------------------------------------------------------------------


def parity_crops(
    processed: Path, n: int, *, keys: DataKeys, registry: Registry | None = None
) -> np.ndarray:
    """``n`` validation crops (train when there is no validation split), spread evenly.

    ``manifest.parquet``'s ``row`` column indexes the crops of ``faces.sealed``; only the
    chosen split's subjects are decrypted, in memory, and only once ``registry`` (when given)
    still allows each of them for the split's purpose, as training and evaluation check
    (:func:`visage_ml.data.processed.check_allowed`).
    """
    faces_path, manifest_path = processed / FACES_FILE, processed / MANIFEST_FILE
    for p in (faces_path, manifest_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing; run `dvc repro prepare` first")
    full = pd.read_parquet(manifest_path, columns=["row", "pid", "split"])
    chosen = "val" if (full["split"] == "val").any() else "train"
    if registry is not None:  # before any crop is decrypted (data/processed may be older)
        check_allowed(full, [chosen], registry)
    faces = read_crops(
        faces_path, keys, full, pids=set(full.loc[full["split"] == chosen, "pid"].astype(str))
    )
    manifest = full[["row", "split"]].sort_values("row")
    index = manifest["row"].to_numpy(dtype=np.int64)
    if len(index) and (index.min() < 0 or index.max() >= faces.shape[0]):
        raise ValueError(
            f"{manifest_path.name} points at rows outside {faces_path.name} "
            f"({faces.shape[0]} crops); re-run `dvc repro prepare` to rebuild both together"
        )
    split = manifest["split"].to_numpy()
    rows = index[split == "val"]
    if rows.size == 0:
        logger.info("no validation crops; checking parity on training crops")
        rows = index[split == "train"]
    if rows.size == 0:
        raise ValueError(f"{manifest_path.name} has no val or train rows; nothing to check")
    pick = rows[np.unique(np.linspace(0, rows.size - 1, num=min(n, rows.size)).astype(int))]
    return np.ascontiguousarray(faces[pick])


def parity_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The DVC-metrics view of one parity report (:data:`SUMMARY_KEYS`; non-finite numbers
    become null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return {k: clean(report[k]) for k in SUMMARY_KEYS if k in report}


def export_models(
    paths: ProjectPaths, params: ExportParams, *, loader: Loader
) -> tuple[dict[str, Any], list[str]]:
    """Export each of :data:`MODELS` from ``models/<name>.pt`` to ``models/<name>.onnx``.

    Each is checked against torch on :func:`parity_crops`; one that fails parity does not
    overwrite its previous ONNX file (under ``dvc repro`` there is none: DVC removed the stage's
    outputs before running it) and the others are still exported.

    Parameters
    ----------
    paths
        The project: checkpoints and ONNX files under ``models/``, crops under
        ``data/processed/``.
    params
        The ``export`` section of ``params.yaml``.
    loader
        ``path -> (model, meta)`` (:func:`visage_ml.models.checkpoint.load_model`).

    Returns
    -------
    tuple
        ``({name: parity_summary}, [the message of each model that failed parity])``.

    Raises
    ------
    ExportError
        A checkpoint holds another kind of model than its name says.
    """
    crops = parity_crops(
        paths.processed,
        params.parity_samples,
        keys=DataKeys.for_project(paths),
        registry=Registry.for_project(paths),
    )
    summaries: dict[str, Any] = {}
    failed: list[str] = []
    for name in MODELS:
        model, meta = loader(paths.models / f"{name}.pt")
        if meta.get("kind") != name:
            raise ExportError(
                f"models/{name}.pt holds a '{meta.get('kind')}' checkpoint, not a {name}; "
                f"re-run `dvc repro train_{name}`"
            )
        try:
            report = export_with_parity(
                model,
                paths.models / f"{name}.onnx",
                spec=PreprocessSpec.from_dict(meta["preprocess"]),
                kind=name,
                opset=params.opset,
                metadata=build_metadata(meta, root=paths.root),
                inputs_u8_nhwc=crops,
                min_cosine=params.min_cosine,
                max_abs_diff=params.max_abs_diff,
            )
        except ParityError as exc:
            report = exc.report
            failed.append(str(exc))
        summaries[name] = parity_summary(report)
    return summaries, failed
