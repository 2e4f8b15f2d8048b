"""Project paths and the typed, validated view of ``params.yaml``.

Every knob of the pipeline lives in ``params.yaml`` (one top-level section per stage plus shared
sections) and is read through :func:`load_params`, which returns frozen dataclasses. A key that
is unknown, of the wrong type or out of range is refused with a message naming the file, the key,
what was found and what is accepted.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import functools
import ipaddress
import math
import os
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from visage_ml.io import atomic_write_text

PARAMS_FILE = "params.yaml"
TRACKING_URI = "sqlite:///mlruns/mlflow.db"
# The purposes of the records of processing (privacy/records.yaml, Art. 30): every consent,
# basis, withdrawal and objection names some of them.
PURPOSES: tuple[str, ...] = ("training", "evaluation", "identification", "analytics")
GROUPS: tuple[str, ...] = ("g1", "g2", "g3", "g4")
GENDERS: tuple[str, ...] = ("female", "male")


class ConfigError(ValueError):
    """A configuration file holds a key, type or value that visage-ml does not accept."""


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectPaths:
    """Where a visage-ml project keeps each kind of data, relative to its root.

    The root is the directory holding ``params.yaml`` and ``dvc.yaml``; ``VISAGE_PROJECT``
    overrides the current directory.
    """

    root: Path

    @classmethod
    def discover(cls, root: str | os.PathLike[str] | None = None) -> ProjectPaths:
        """Return the paths of the project at ``root``, ``$VISAGE_PROJECT`` or the cwd."""
        chosen = root if root is not None else os.environ.get("VISAGE_PROJECT") or Path.cwd()
        return cls(Path(chosen).resolve())

    # acquisition (DVC-tracked sources)
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def subjects(self) -> Path:
        return self.raw / "subjects.parquet"

    @property
    def scenes(self) -> Path:
        return self.root / "data" / "scenes"

    @property
    def protocols(self) -> Path:
        return self.root / "data" / "protocols"

    # pipeline
    @property
    def registry_dir(self) -> Path:
        return self.root / "data" / "registry"

    @property
    def consents(self) -> Path:
        return self.registry_dir / "consents.parquet"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def eval_population(self) -> Path:
        """The synthetic evaluation-only population (no data subjects; never trained on)."""
        return self.root / "data" / "eval_population"

    @property
    def demographic_population(self) -> Path:
        """Synthetic training people of the demographic model (no data subjects; not evaluated)."""
        return self.root / "data" / "demographic_population"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def gallery(self) -> Path:
        return self.root / "gallery"

    # privacy core
    @property
    def privacy(self) -> Path:
        return self.root / "privacy"

    @property
    def ledger(self) -> Path:
        return self.privacy / "ledger.jsonl"

    @property
    def ledger_public_key(self) -> Path:
        return self.privacy / "ledger.pub"

    @property
    def vault(self) -> Path:
        return self.privacy / "vault"

    @property
    def requests(self) -> Path:
        return self.privacy / "requests"

    @property
    def certificates(self) -> Path:
        return self.privacy / "certificates"

    @property
    def checkpoints(self) -> Path:
        """The ledger's latest witnessed checkpoint (C2SP signed note) and its lock."""
        return self.privacy / "checkpoints"

    @property
    def data_keys(self) -> Path:
        """Per-subject data keys sealing raw images, crops and kept bundles (wrapped)."""
        return self.privacy / "keys"

    @property
    def tombstones(self) -> Path:
        return self.privacy / "tombstones.jsonl"

    @property
    def tombstone_key(self) -> Path:
        return self.secrets / "tombstone.key"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def signing_key(self) -> Path:
        return self.secrets / "ledger.key"

    @property
    def master_key(self) -> Path:
        return self.secrets / "master.key"

    @property
    def api_keys(self) -> Path:
        return self.secrets / "api_keys.json"

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def sqlite_tracking_uri(self) -> str:
        """The one-machine MLflow store: SQLite under ``mlruns/`` (MLflow 3 refuses file stores)."""
        return f"sqlite:///{self.mlruns / 'mlflow.db'}"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking (and registry) URI of the project, from ``stack.tracking``.

        ``sqlite`` (the default): :attr:`sqlite_tracking_uri`. ``server``: ``stack.mlflow.uri``
        in external mode, else the local stack's server on ``127.0.0.1:stack.mlflow.port``.
        """
        if not self.params.is_file():
            return self.sqlite_tracking_uri
        stack = load_params(self.params).stack
        if stack.tracking == "sqlite":
            return self.sqlite_tracking_uri
        if stack.mode == "external" and stack.mlflow.uri:
            return stack.mlflow.uri.rstrip("/")
        return f"http://127.0.0.1:{stack.mlflow.port}"

    @property
    def stack_dir(self) -> Path:
        """The local stack's servers (``stack.dir``; git- and dvc-ignored)."""
        if self.params.is_file():
            return self.root / load_params(self.params).stack.dir
        return self.root / ".stack"

    @property
    def stack_secrets(self) -> Path:
        """Generated stack credentials (PostgreSQL password, S3 keys), 0600."""
        return self.secrets / "stack.json"


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def rng(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> dict[str, float | None]:
    """Field metadata bounding a number (or every number of a list) to a range."""
    return {"ge": ge, "gt": gt, "le": le, "lt": lt}


def _bounds_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]}")
    return " and ".join(parts)


def _in_bounds(value: float, meta: Mapping[str, Any]) -> bool:
    if meta.get("ge") is not None and value < meta["ge"]:
        return False
    if meta.get("gt") is not None and value <= meta["gt"]:
        return False
    if meta.get("le") is not None and value > meta["le"]:
        return False
    return not (meta.get("lt") is not None and value >= meta["lt"])


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} items ({', '.join(_type_name(a) for a in args)})"
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _InvalidError(Exception):
    def __init__(self, key: str, found: Any, accepted: str) -> None:
        super().__init__(key)
        self.key, self.found, self.accepted = key, found, accepted


def _coerce(value: Any, tp: Any, meta: Mapping[str, Any], key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in its dataclass form."""
    origin = typing.get_origin(tp)
    accepted = _type_name(tp)
    if meta and _bounds_text(meta):
        accepted += f" {_bounds_text(meta)}"
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, meta, key)
            except _InvalidError:
                continue
        raise _InvalidError(key, value, accepted)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _InvalidError(key, value, accepted)
    if tp is type(None):
        if value is None:
            return None
        raise _InvalidError(key, value, accepted)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _InvalidError(key, value, accepted)
        return _build(tp, value, prefix=key + ".")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _InvalidError(key, value, accepted)
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _InvalidError(key, value, accepted)
            return tuple(
                _coerce(v, a, meta, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        return tuple(_coerce(v, args[0], meta, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _InvalidError(key, value, accepted)
        vtype = typing.get_args(tp)[1]
        return types.MappingProxyType(
            {str(k): _coerce(v, vtype, meta, f"{key}.{k}") for k, v in value.items()}
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _InvalidError(key, value, accepted)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _InvalidError(key, value, accepted)
        if meta and not _in_bounds(value, meta):
            raise _InvalidError(key, value, accepted)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _InvalidError(key, value, accepted)
        if not math.isfinite(value) or (meta and not _in_bounds(value, meta)):
            raise _InvalidError(key, value, accepted + " (finite)")
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _InvalidError(key, value, accepted)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


# While :func:`validate_all` runs: every problem found, instead of raising at the first.
_COLLECTED: contextvars.ContextVar[list[_InvalidError] | None] = contextvars.ContextVar(
    "visage_config_problems", default=None
)


def _problem(exc: _InvalidError) -> None:
    """Raise ``exc``, or note it and go on when every problem is being collected."""
    collected = _COLLECTED.get()
    if collected is None:
        raise exc
    collected.append(exc)


def _build(cls: type, raw: Mapping[str, Any], *, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in sorted(set(raw) - set(fields), key=str):
        _problem(_InvalidError(prefix + str(name), raw[name], "known keys: " + ", ".join(fields)))
    collected = _COLLECTED.get()
    before = len(collected) if collected is not None else 0
    kwargs = {}
    for name, value in raw.items():
        if name not in fields:
            continue
        try:
            kwargs[name] = _coerce(value, hints[name], fields[name].metadata, prefix + name)
        except _InvalidError as exc:
            _problem(exc)  # collecting: the default stands in, so the rest is checked too
    obj = cls(**kwargs)
    # The section's cross-field check would judge a default standing in for a bad value, and
    # report keys the user wrote correctly: only a section whose fields all parsed is checked.
    check = getattr(obj, "check", None)
    if collected is not None and len(collected) > before:
        check = None
    if check is not None:
        problem = check()
        if problem is not None:
            key, found, accepted = problem
            _problem(_InvalidError(prefix + key, found, accepted))
    return obj


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 2, 6, 6, 80


def parse_section(cls: type, raw: Mapping[str, Any], *, source: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, raising :class:`ConfigError` on any bad key."""
    try:
        return _build(cls, raw, prefix=prefix)
    except _InvalidError as exc:
        # Every problem at once: a stage run by DVC has already removed its outputs, and each
        # run that names one more key costs another.
        problems = validate_all(cls, raw, source=source, prefix=prefix) or [_message(exc, source)]
        how = "(see README, 'Configuration') and run again."
        if len(problems) == 1:
            raise ConfigError(f"{problems[0]} Fix the value in {source} {how}") from None
        listed = "\n".join(f"- {p}" for p in problems)
        raise ConfigError(
            f"{len(problems)} problems:\n{listed}\nFix the values in {source} {how}"
        ) from None


def _message(exc: _InvalidError, source: str) -> str:
    # reprlib keeps the message short even for a huge value (a YAML alias bomb).
    return f"{source}: key '{exc.key}': found {_SHORT.repr(exc.found)}; accepted: {exc.accepted}."


def validate_all(cls: type, raw: Mapping[str, Any], *, source: str, prefix: str = "") -> list[str]:
    """Every problem of ``raw`` as section ``cls`` (empty when valid), not only the first."""
    collected: list[_InvalidError] = []
    token = _COLLECTED.set(collected)
    try:
        _build(cls, raw, prefix=prefix)  # collecting: every problem is noted, none raised
    finally:
        _COLLECTED.reset(token)
    return [_message(exc, source) for exc in collected]


def to_dict(obj: Any) -> Any:
    """Plain-Python (JSON/YAML-ready) form of a params dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` view of a params dataclass (for MLflow params)."""
    out: dict[str, Any] = {}
    plain = to_dict(obj)
    if isinstance(plain, dict):
        for k, v in plain.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


# ---------------------------------------------------------------------------------------------
# Sections of params.yaml
# ---------------------------------------------------------------------------------------------

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class ProjectParams:
    """Shared: identity of the controller and the base seed."""

    seed: int = field(default=20261126, metadata=rng(ge=0))
    controller: str = "Example Controller Ltd"
    controller_contact: str = "dpo@example.org"


@dataclass(frozen=True)
class SynthDifficulty:
    """Per-image nuisance strengths of SynthFaces, 0 = none, 1 = strong."""

    pose: float = field(default=0.5, metadata=rng(ge=0, le=1))
    scale_shift: float = field(default=0.5, metadata=rng(ge=0, le=1))
    illumination: float = field(default=0.5, metadata=rng(ge=0, le=1))
    expression: float = field(default=0.5, metadata=rng(ge=0, le=1))
    occlusion: float = field(default=0.15, metadata=rng(ge=0, le=1))
    blur: float = field(default=0.3, metadata=rng(ge=0, le=1))
    noise: float = field(default=0.3, metadata=rng(ge=0, le=1))
    jpeg_quality: tuple[int, int] = field(default=(55, 95), metadata=rng(ge=5, le=100))
    clutter: float = field(default=0.5, metadata=rng(ge=0, le=1))

    def check(self) -> tuple[str, Any, str] | None:
        lo, hi = self.jpeg_quality
        if lo > hi:
            return "jpeg_quality", list(self.jpeg_quality), "[low, high] with low <= high"
        return None


@dataclass(frozen=True)
class SynthConsentShares:
    """Shares of simulated subjects with each consent / state at acquisition."""

    training: float = field(default=0.9, metadata=rng(ge=0, le=1))
    evaluation: float = field(default=0.9, metadata=rng(ge=0, le=1))
    identification: float = field(default=0.6, metadata=rng(ge=0, le=1))
    restricted: float = field(default=0.05, metadata=rng(ge=0, le=1))
    objected: float = field(default=0.03, metadata=rng(ge=0, le=1))


@dataclass(frozen=True)
class SynthParams:
    """SynthFaces, the embedded default data set (acquisition, outside the DVC pipeline)."""

    n_identities: int = field(default=300, metadata=rng(ge=2, le=1_000_000))
    images_per_identity: tuple[int, int] = field(default=(4, 20), metadata=rng(ge=1, le=1000))
    image_size: int = field(default=160, metadata=rng(ge=64, le=1024))
    group_shares: tuple[float, ...] = field(
        default=(0.5, 0.25, 0.15, 0.10), metadata=rng(ge=0, le=1)
    )
    female_share: float = field(default=0.5, metadata=rng(ge=0, le=1))
    age_range: tuple[int, int] = field(default=(18, 80), metadata=rng(ge=0, le=120))
    difficulty: SynthDifficulty = SynthDifficulty()
    # Multiplier of the illumination contrast per skin-tone group (1 = as others): a knob that
    # plants a known bias for tests and demonstrations.
    group_contrast: tuple[float, ...] = field(
        default=(1.0, 1.0, 1.0, 1.0), metadata=rng(gt=0, le=4)
    )
    # Extra per-group difficulty (0 = as others) added to every nuisance strength.
    group_difficulty: tuple[float, ...] = field(
        default=(0.0, 0.0, 0.0, 0.0), metadata=rng(ge=0, le=1)
    )
    n_scenes: int = field(default=40, metadata=rng(ge=0, le=1_000_000))
    scene_size: tuple[int, int] = field(default=(640, 480), metadata=rng(ge=128, le=8192))
    faces_per_scene: tuple[int, int] = field(default=(0, 8), metadata=rng(ge=0, le=64))
    consent: SynthConsentShares = SynthConsentShares()

    def check(self) -> tuple[str, Any, str] | None:
        if len(self.group_shares) != len(GROUPS) or abs(sum(self.group_shares) - 1) > 1e-6:
            return "group_shares", list(self.group_shares), f"{len(GROUPS)} shares summing to 1"
        for name in ("group_contrast", "group_difficulty"):
            if len(getattr(self, name)) != len(GROUPS):
                return name, list(getattr(self, name)), f"{len(GROUPS)} values, one per group"
        for name in ("images_per_identity", "age_range", "faces_per_scene"):
            lo, hi = getattr(self, name)
            if lo > hi:
                return name, [lo, hi], "[low, high] with low <= high"
        return None


@dataclass(frozen=True)
class SplitParams:
    """Fractions of identities held out (identity-disjoint splits)."""

    val: float = field(default=0.1, metadata=rng(ge=0, lt=1))
    test: float = field(default=0.25, metadata=rng(gt=0, lt=1))

    def check(self) -> tuple[str, Any, str] | None:
        if self.val + self.test >= 1:
            return "test", self.test, "val + test < 1"
        return None


@dataclass(frozen=True)
class PrepareParams:
    """Stage ``prepare``: purpose filter, MTCNN detection and alignment, splits."""

    image_size: int = field(default=112, metadata=rng(ge=32, le=512))
    min_face_prob: float = field(default=0.9, metadata=rng(ge=0, le=1))
    min_face_size: int = field(default=20, metadata=rng(ge=8, le=1024))
    detect_batch: int = field(default=64, metadata=rng(ge=1, le=4096))
    # Where no face passed, look again in the mirror image and a contrast-stretched one (enrol,
    # identify, verify and every data set; not analytics scenes): MTCNN missed darker-skinned
    # faces about 3x as often without it (benchmarks/bench_detect.py --second-look).
    second_look: bool = True
    split: SplitParams = SplitParams()
    device: Device = "cpu"
    # Where the detector finds no face: `none` leaves the image out (counted); `center` takes
    # the centre square of an aligned, centred data set (LFW), counted as a fallback crop.
    fallback_crop: Literal["none", "center"] = "none"
    # Side of the fallback square as a share of the image's shorter side (LFW: ~0.55 of 250 px).
    fallback_share: float = field(default=0.55, metadata=rng(gt=0, le=1))


@dataclass(frozen=True)
class MarginParams:
    """``CombinedMarginLoss(s, m1, m2, m3)``: cos(m1*theta + m2) - m3, scaled by s.

    ``head: arcface`` uses ``(1, m2, 0)``, ``cosface`` ``(1, 0, m3)``, ``combined`` all three;
    ``softmax`` only ``s`` (the scale of the embeddings fed to its linear classifier).
    """

    s: float = field(default=32.0, metadata=rng(gt=0, le=256))
    m1: float = field(default=1.0, metadata=rng(ge=0.5, le=4))
    m2: float = field(default=0.3, metadata=rng(ge=0, le=1.5))
    m3: float = field(default=0.35, metadata=rng(ge=0, le=1))


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = True
    color_jitter: float = field(default=0.2, metadata=rng(ge=0, le=1))
    crop_scale: tuple[float, float] = field(default=(0.85, 1.0), metadata=rng(gt=0, le=1))


@dataclass(frozen=True)
class EvalPopulationParams:
    """Stage ``eval_population``: the synthetic evaluation-only population (never trained on).

    Synthetic people, not data subjects: balanced per skin-tone group x gender cell, drawn from
    their own ``seed``, photographed with the ``synth`` nuisance and detected/aligned as
    ``prepare`` does. The ``calibration`` part fits the label-free score calibration; only the
    other identities are measured.
    """

    seed: int = field(default=97_531, metadata=rng(ge=0))
    # Measured identities per group x gender cell (2 cells per group).
    identities_per_cell: int = field(default=150, metadata=rng(ge=0, le=100_000))
    # Identities per cell of the calibration part (k-means and calibration maps; never measured).
    calibration_identities_per_cell: int = field(default=15, metadata=rng(ge=0, le=100_000))
    images_per_identity: int = field(default=3, metadata=rng(ge=2, le=1000))


@dataclass(frozen=True)
class DemographicPopulationParams:
    """Stage ``demographic_population``: synthetic training people of the demographic model.

    Synthetic people, not data subjects, balanced per skin-tone group x gender cell (SynthFaces'
    acquisition shares leave few people in some groups), rendered as the evaluation population is
    but from their own ``seed`` and id namespace: never the evaluation population's people, never
    evaluated. Only the demographic model trains on them; the embedder never does.
    """

    seed: int = field(default=86_421, metadata=rng(ge=0))
    # Training identities per group x gender cell (0: train on the processed data alone).
    identities_per_cell: int = field(default=80, metadata=rng(ge=0, le=100_000))
    images_per_identity: int = field(default=2, metadata=rng(ge=1, le=1000))


@dataclass(frozen=True)
class DistributedParams:
    """Data-parallel training under torchrun DDP (docs/gpu.md, "Several processes").

    ``nproc`` 1 is one process without ``torch.distributed``. With more, the stage re-launches
    itself with ``torchrun --standalone --nproc-per-node=nproc``; each process trains on a
    disjoint ``batch_size / nproc`` share of every global batch.
    """

    nproc: int = field(default=1, metadata=rng(ge=1, le=1024))
    # auto: nccl on CUDA, gloo on the CPU
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # Batch-norm statistics over the global batch (what one process computes), not per process.
    sync_batchnorm: bool = True
    # A collective that waits longer than this (a hung or lost process) fails the whole job.
    timeout_s: float = field(default=600.0, metadata=rng(gt=0, le=86_400))


@dataclass(frozen=True)
class TrainEmbedderParams:
    """Stage ``train_embedder``: identity embedding network and its margin loss."""

    backbone: str = "mobilefacenet"
    init: str = "scratch"
    input_size: int = field(default=96, metadata=rng(ge=32, le=512))
    embedding_dim: int = field(default=128, metadata=rng(ge=8, le=2048))
    head: Literal["arcface", "cosface", "combined", "softmax"] = "arcface"
    margin: MarginParams = MarginParams()
    sampling: Literal["uniform", "class_balanced", "group_balanced"] = "uniform"
    epochs: int = field(default=10, metadata=rng(ge=1, le=10_000))
    batch_size: int = field(default=64, metadata=rng(ge=2, le=65_536))
    lr: float = field(default=6e-3, metadata=rng(gt=0, le=10))
    weight_decay: float = field(default=0.05, metadata=rng(ge=0, le=10))
    warmup_epochs: float = field(default=1.0, metadata=rng(ge=0, le=1000))
    early_stopping_patience: int = field(default=3, metadata=rng(ge=1, le=1000))
    val_far: float = field(default=1e-2, metadata=rng(gt=0, lt=1))
    augment: AugmentParams = AugmentParams()
    device: Device = "auto"
    # autocast: bf16 | fp32; auto = fp32 (bf16 was slower on the GPU measured, docs/gpu.md)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    max_minutes: float = field(default=0.0, metadata=rng(ge=0))
    # Stop after this many optimizer steps (0 = no limit): smoke runs of a preset.
    max_steps: int = field(default=0, metadata=rng(ge=0))
    # torch.compile the networks: fewer, fused kernels (docs/gpu.md); first steps compile.
    compile: bool = False
    distributed: DistributedParams = DistributedParams()


@dataclass(frozen=True)
class TrainDemographicsParams:
    """Stage ``train_demographics``: the separate age / gender / group network."""

    backbone: str = "demographic_cnn"
    input_size: int = field(default=64, metadata=rng(ge=32, le=512))
    epochs: int = field(default=30, metadata=rng(ge=1, le=10_000))
    batch_size: int = field(default=64, metadata=rng(ge=2, le=65_536))
    lr: float = field(default=3e-3, metadata=rng(gt=0, le=10))
    weight_decay: float = field(default=0.01, metadata=rng(ge=0, le=10))
    warmup_epochs: float = field(default=0.5, metadata=rng(ge=0, le=1000))
    group_balanced_loss: bool = True
    age_bands: tuple[int, ...] = field(default=(18, 30, 45, 60), metadata=rng(ge=0, le=120))
    early_stopping_patience: int = field(default=30, metadata=rng(ge=1, le=1000))
    augment: AugmentParams = AugmentParams()
    device: Device = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    max_minutes: float = field(default=0.0, metadata=rng(ge=0))
    # Stop after this many optimizer steps (0 = no limit): smoke runs of a preset.
    max_steps: int = field(default=0, metadata=rng(ge=0))
    # torch.compile the networks: fewer, fused kernels (docs/gpu.md); first steps compile.
    compile: bool = False


@dataclass(frozen=True)
class ExportParams:
    """Stage ``export``: ONNX opset and the parity bar with torch."""

    # torch's TorchScript ONNX exporter (the one used; see visage_ml.export) writes opset <= 20.
    opset: int = field(default=17, metadata=rng(ge=11, le=20))
    parity_samples: int = field(default=64, metadata=rng(ge=1, le=100_000))
    min_cosine: float = field(default=0.9999, metadata=rng(gt=0, le=1))
    max_abs_diff: float = field(default=1e-3, metadata=rng(gt=0))


Breakdown = Literal["group", "gender", "group_gender"]


DemographicTask = Literal["gender_accuracy", "group_accuracy", "age_band_accuracy"]


def _frozen(d: dict[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(d))


@dataclass(frozen=True)
class DemographicGateParams:
    """The gate's checks of the demographic model, per skin-tone group, on identity-bootstrap
    intervals (``evaluation.gate``): each listed task's lowest group accuracy and min/max."""

    enforce: bool = True
    min_accuracy: dict[DemographicTask, float] = field(
        default_factory=lambda: _frozen({"gender_accuracy": 0.85}), metadata=rng(ge=0, le=1)
    )
    min_ratio: dict[DemographicTask, float] = field(
        default_factory=lambda: _frozen({"gender_accuracy": 0.9}), metadata=rng(ge=0, le=1)
    )
    # Fewer identities in a group: the check is inconclusive.
    min_identities: int = field(default=50, metadata=rng(ge=0))


@dataclass(frozen=True)
class GateParams:
    """Fairness gate: bounds on demographic differentials at the global threshold, decided on
    bootstrap intervals (pass, fail or inconclusive; ``evaluation.gate``)."""

    enforce: bool = False
    # One limit for every breakdown, or one per breakdown ({group: 2.0, group_gender: 3.0}).
    max_fmr_ratio: float | dict[Breakdown, float] = field(
        default_factory=lambda: _frozen({"group": 2.0, "gender": 2.0, "group_gender": 3.0}),
        metadata=rng(ge=1),
    )
    max_fnmr_ratio: float | dict[Breakdown, float] = field(default=3.0, metadata=rng(ge=1))
    # Demographic partitions whose max/min ratios the bounds apply to.
    breakdowns: tuple[Breakdown, ...] = ("group", "group_gender")
    # Fewer identities in any group of a breakdown: its checks are inconclusive.
    min_identities: dict[Breakdown, int] = field(
        default_factory=lambda: _frozen({"group": 50, "gender": 50, "group_gender": 25}),
        metadata=rng(ge=0),
    )
    # What an enforced gate does when it cannot decide: warn (and go on) or fail the stage.
    on_inconclusive: Literal["warn", "fail"] = "warn"
    demographics: DemographicGateParams = DemographicGateParams()

    def check(self) -> tuple[str, Any, str] | None:
        if not self.breakdowns:
            return "breakdowns", [], "at least one of 'group', 'gender', 'group_gender'"
        for name in ("max_fmr_ratio", "max_fnmr_ratio"):
            limits = getattr(self, name)
            if isinstance(limits, Mapping):
                missing = [b for b in self.breakdowns if b not in limits]
                if missing:
                    return name, dict(limits), f"a limit for each of {list(self.breakdowns)}"
        # A gated breakdown left out would need no identities at all, silently.
        if any(b not in self.min_identities for b in self.breakdowns):
            found = dict(self.min_identities)
            return "min_identities", found, f"a minimum for each of {list(self.breakdowns)}"
        return None


ScoreCalibrationMethod = Literal["none", "fsn", "faircal", "asnorm"]


@dataclass(frozen=True)
class CalibrationParams:
    """Label-free score calibration (``evaluation.calibration``), fitted at evaluation on the
    calibration part of the evaluation population and applied by serving.

    ``method`` is served (``reports/score_calibration.json``) and used for every figure of the
    evaluation; ``compare`` are measured side by side in the report (``fairness.json``
    ``score_calibration``) against the goals: the gate's FMR ratio limits at a TAR@target_fmr
    cost of at most ``max_tar_cost``.
    """

    method: ScoreCalibrationMethod = "asnorm"
    compare: tuple[ScoreCalibrationMethod, ...] = ("none", "fsn", "faircal", "asnorm")
    # k-means clusters of the embedding space.
    n_clusters: int = field(default=4, metadata=rng(ge=1, le=1000))
    # A cluster touched by fewer calibration impostor comparisons keeps the global behaviour.
    min_cluster_impostors: int = field(default=1000, metadata=rng(ge=1))
    # Impostor comparisons of the calibration images (a seeded sample beyond).
    impostor_pairs: int = field(default=2_000_000, metadata=rng(ge=100, le=100_000_000))
    # Identity resamples of the comparison's intervals.
    bootstrap: int = field(default=100, metadata=rng(ge=0, le=100_000))
    # Goal: TAR at evaluate.target_fmr lost to a method, at most (0.02 = 2 points).
    max_tar_cost: float = field(default=0.02, metadata=rng(ge=0, le=1))
    # asnorm: cohort scores per side (the calibration images are the cohort), the weight of the
    # cohort mean and the power of the cohort deviation (1 and 1: classic AS-norm; these values
    # were chosen by benchmarks/bench_score_norm.py, README "Fairness, decided on enough people").
    cohort_top_k: int = field(default=30, metadata=rng(ge=1, le=100_000))
    cohort_mean_weight: float = field(default=0.8, metadata=rng(ge=0, le=2))
    cohort_sd_power: float = field(default=0.5, metadata=rng(ge=0, le=1))


@dataclass(frozen=True)
class ScoreModelParams:
    """The score model serving derives its 1:N threshold from (``reports/score_model.json``)."""

    # Enrolment images averaged into a template: gallery.images_per_subject of the served gallery.
    template_images: int = field(default=3, metadata=rng(ge=1, le=100))
    # Share of impostor comparisons above the tail threshold the GPD is fitted over.
    tail_share: float = field(default=0.001, metadata=rng(gt=0, lt=0.5))
    min_exceedances: int = field(default=100, metadata=rng(ge=10, le=10_000_000))
    # Identity resamples of the upper confidence bounds on FMR.
    bootstrap: int = field(default=200, metadata=rng(ge=0, le=100_000))
    # One-sided levels of the stored upper bounds (serving.identify.confidence picks one).
    confidence_levels: tuple[float, ...] = field(
        default=(0.5, 0.8, 0.9, 0.95), metadata=rng(gt=0, lt=1)
    )
    # The model bounds FMR down to 1/n_impostor times 10**-decades, no further (1: the 0.5 level
    # served 2-6 times the target a decade further out; README, bench_fpir_draws.py).
    max_extrapolation_decades: float = field(default=1.0, metadata=rng(ge=0, le=6))


@dataclass(frozen=True)
class EvaluateParams:
    """Stage ``evaluate``: verification, identification and demographic differentials."""

    target_fmr: float = field(default=1e-3, metadata=rng(gt=0, lt=1))
    impostor_pairs: int = field(default=2_000_000, metadata=rng(ge=100, le=100_000_000))
    bootstrap: int = field(default=200, metadata=rng(ge=0, le=100_000))
    fdr_alpha: float = field(default=0.5, metadata=rng(ge=0, le=1))
    gate: GateParams = GateParams()
    batch_size: int = field(default=64, metadata=rng(ge=1, le=65_536))
    fars: tuple[float, ...] = field(default=(1e-2, 1e-3, 1e-4), metadata=rng(gt=0, lt=1))
    fpirs: tuple[float, ...] = field(default=(1e-2, 1e-1), metadata=rng(gt=0, lt=1))
    ci_level: float = field(default=0.95, metadata=rng(gt=0, lt=1))
    # Open-set identification: share of test identities enrolled, gallery images per identity.
    enrolled_share: float = field(default=0.5, metadata=rng(gt=0, lt=1))
    gallery_images: int = field(default=1, metadata=rng(ge=1, le=1000))
    max_curve_points: int = field(default=500, metadata=rng(ge=10, le=100_000))
    score_model: ScoreModelParams = ScoreModelParams()
    calibration: CalibrationParams = CalibrationParams()


@dataclass(frozen=True)
class GalleryParams:
    """Stage ``gallery`` and the serving gallery."""

    images_per_subject: int = field(default=3, metadata=rng(ge=1, le=1000))
    top_k: int = field(default=5, metadata=rng(ge=1, le=1000))


@dataclass(frozen=True)
class AnalyticsParams:
    """Analytics mode: counts per window, cells below ``k_min`` suppressed, Laplace noise."""

    k_min: int = field(default=5, metadata=rng(ge=1, le=10_000))
    window_seconds: float = field(default=60.0, metadata=rng(gt=0))
    # Privacy budget per released count table (0 = no noise).
    epsilon: float = field(default=0.0, metadata=rng(ge=0))
    # Closed windows kept in memory for GET /v1/analytics/windows.
    keep_windows: int = field(default=60, metadata=rng(ge=1, le=100_000))
    # Windows also report counts corrected for the demographic model's measured confusion
    # (reports/demographic_confusion.json), with intervals from this many resamples.
    correct: bool = True
    correction_rounds: int = field(default=200, metadata=rng(ge=0, le=100_000))
    # A face within this share of differing perceptual-hash bits of one already counted in the
    # window counts once (tiled or replayed faces; serving/disclosure.py).
    dedupe_distance: float = field(default=0.1, metadata=rng(ge=0, le=0.5))


@dataclass(frozen=True)
class IdentifyParams:
    """1:N identification: the threshold is derived for ``target_fpir`` at the gallery's size."""

    # False positive identification rate aimed at (a stranger matched to anyone).
    target_fpir: float = field(default=0.01, metadata=rng(gt=0, lt=1))
    # Level of the bound on FMR the threshold is placed with (a level the score model holds):
    # 0.5, the median over identity resamples, serves FPIR about the target; 0.8 and above
    # keep it under the target, at a cost in misses (README, bench_fpir_draws.py).
    confidence: float = field(default=0.5, metadata=rng(gt=0, lt=1))
    # A gallery whose expected FNIR exceeds this is flagged too large for the target.
    max_expected_fnir: float = field(default=0.5, metadata=rng(gt=0, le=1))


@dataclass(frozen=True)
class QualityParams:
    """Face-quality gate of enrolment and identification (``visage_ml.serving.quality``)."""

    enabled: bool = True
    # Shorter side of the detected face box, in pixels of the image.
    min_face_px: float = field(default=32.0, metadata=rng(ge=0))
    # Variance of the Laplacian of the aligned grey crop (sharpness).
    min_sharpness: float = field(default=20.0, metadata=rng(ge=0))
    # |nose offset from the eye midpoint| / eye distance (0 frontal, about 0.5 in profile).
    max_yaw: float = field(default=0.3, metadata=rng(gt=0))
    # Above prepare.min_face_prob (which decides what counts as a face at all).
    min_detection_prob: float = field(default=0.92, metadata=rng(ge=0, le=1))
    # A face found enlarged k times by resampling is judged by its box / k (min_face_px): k
    # counts when the detail a k times smaller face cannot hold is at most this share of the
    # face region's detail (visage_ml.serving.upscale) ...
    upscale_tolerance: float = field(default=0.01, metadata=rng(ge=0, le=1))
    # ... plus this, in grey levels squared (8-bit rounding). Both 0: only lossless enlargements.
    upscale_floor: float = field(default=0.05, metadata=rng(ge=0, le=100))


@dataclass(frozen=True)
class AuthParams:
    """Failed API-key attempts allowed per client address within a sliding window."""

    max_failures: int = field(default=10, metadata=rng(ge=1, le=1_000_000))
    window_seconds: float = field(default=60.0, metadata=rng(gt=0))
    # A new API key expires this many days after creation (`visage apikey create --expires-in`).
    key_ttl_days: float = field(default=90.0, metadata=rng(gt=0, le=3650))
    # `visage apikey rotate`: the old key keeps working this long, then expires.
    rotation_grace_hours: float = field(default=24.0, metadata=rng(ge=0, le=24 * 365))
    # Reverse proxies (addresses or networks, e.g. 127.0.0.1 or 10.0.8.0/29) that append the
    # client's address to X-Forwarded-For: behind one, failures count per client, not per proxy.
    # Proxies only: a client in a trusted network is believed about its own address.
    trusted_proxies: tuple[str, ...] = ()

    def check(self) -> tuple[str, Any, str] | None:
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                return ("trusted_proxies", entry, "an IP address or network (10.0.0.0/8)")
        return None


@dataclass(frozen=True)
class AuditParams:
    """How often ``visage serve`` anchors the audit log's head in the signed ledger.

    Each anchor is one ledger entry (``audit.anchored``); a rewrite of the log before the last
    anchor is detected, one of the lines after it is not (``visage privacy audit verify`` says
    how many there are).
    """

    # Anchor once the process has written this many lines since its last anchor ...
    anchor_every_lines: int = field(default=1000, metadata=rng(ge=1, le=10_000_000))
    # ... or this many seconds after its last anchor, if it wrote any line since.
    anchor_every_seconds: float = field(default=300.0, metadata=rng(gt=0, le=86_400))


@dataclass(frozen=True)
class ServingGalleryParams:
    """Where the served gallery lives (``visage_ml.serving.pg_gallery`` for ``pgvector``)."""

    # memory: sealed files under gallery/, searched in RAM; pgvector: one gallery in PostgreSQL
    # shared by several `visage serve` replicas.
    backend: Literal["memory", "pgvector"] = "memory"
    # libpq URI of the pgvector gallery; "" = $VISAGE_GALLERY_DSN.
    dsn: str = ""
    table: str = "visage_gallery"
    # Exact search by default; an HNSW index (approximate, recall measured by
    # benchmarks/bench_identify_pgvector.py) when true.
    hnsw: bool = False
    ef_search: int = field(default=400, metadata=rng(ge=1, le=1000))
    hnsw_m: int = field(default=16, metadata=rng(ge=2, le=100))
    ef_construction: int = field(default=64, metadata=rng(ge=4, le=1000))
    # Fallback poll of the shared change counter beside LISTEN/NOTIFY (seconds).
    poll_interval_s: float = field(default=0.25, metadata=rng(gt=0, le=60))
    # How long a search or enrolment of `visage serve` waits for a lock on the gallery's tables
    # (an erasure's purge: a swap holds one briefly at its end, a VACUUM FULL for the whole
    # rewrite) before it answers 503 gallery_unavailable
    # with Retry-After (seconds; 0: as long as it takes). Commands, rights and the erasure itself
    # always wait.
    lock_timeout_s: float = field(default=2.0, metadata=rng(ge=0, le=600))
    # The most maintenance_work_mem (MB) an erasure's purge gives the rebuild of the HNSW
    # index (sized from the index, never below the server's own setting): a graph that does not
    # fit is built on disk, several times slower (under VACUUM FULL, with serving locked out
    # meanwhile).
    purge_memory_mb: int = field(default=1024, metadata=rng(ge=1, le=1_048_576))


@dataclass(frozen=True)
class ServingParams:
    """``visage serve``: HTTP limits and analytics mode."""

    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=rng(ge=1, le=65535))
    # full: identification, verification, enrolment and analytics; analytics: counts only
    # (the embedder is never loaded).
    mode: Literal["full", "analytics"] = "full"
    max_request_bytes: int = field(default=10_000_000, metadata=rng(ge=1024))
    max_image_pixels: int = field(default=40_000_000, metadata=rng(ge=1024))
    max_faces: int = field(default=32, metadata=rng(ge=1, le=4096))
    batch_size: int = field(default=32, metadata=rng(ge=1, le=4096))
    # Requests in flight at once (authenticated ones; /healthz is not counted); more get 503.
    max_concurrent: int = field(default=16, metadata=rng(ge=1, le=1024))
    # A request body not received whole within this many seconds gets 408.
    body_timeout_s: float = field(default=30.0, metadata=rng(gt=0, le=3600))
    # A request's line, headers and body must all be in within this many seconds of its first
    # byte (of the connection's opening, for its first one), however steadily they trickle;
    # else the connection is closed (visage_ml.app.http.deadline), so a client that sends
    # slowly or stops halfway holds a connection and its file descriptor that long at most.
    # body_timeout_s (30 s for the body, the largest of which, serving.max_request_bytes, a
    # camera must send at about 2.7 Mbit/s) plus 10 s for a head of a few hundred bytes over a
    # lossy link (TCP retransmits after 1, 2 and 4 s): above body_timeout_s, so that the
    # body's own 408, which names that limit, comes first.
    request_read_timeout_s: float = field(default=40.0, metadata=rng(gt=0, le=3600))
    # Images are downscaled to this longest side before face detection.
    max_detect_side: int = field(default=1280, metadata=rng(ge=64, le=16384))
    # GET /openapi.json (for any valid API key); off by default. /docs and /redoc never exist.
    openapi: bool = False
    analytics: AnalyticsParams = AnalyticsParams()
    auth: AuthParams = AuthParams()
    identify: IdentifyParams = IdentifyParams()
    quality: QualityParams = QualityParams()
    gallery: ServingGalleryParams = ServingGalleryParams()
    audit: AuditParams = AuditParams()

    def check(self) -> tuple[str, Any, str] | None:
        if self.request_read_timeout_s <= self.body_timeout_s:
            return (
                "request_read_timeout_s",
                self.request_read_timeout_s,
                f"more than serving.body_timeout_s ({self.body_timeout_s:g}), whose 408 names "
                "the body's limit",
            )
        return None


@dataclass(frozen=True)
class WitnessSpec:
    """One witness of the ledger's checkpoints (``privacy.witness.witnesses``).

    ``kind: directory``: a folder (``path``; ``~`` and ``$VARS`` expanded; ``default`` is
    ``$VISAGE_WITNESS_DIR`` or ``~/.local/share/visage-ml/witness``) holding the witness's key
    and state, ideally on another volume. ``kind: http``: a ``visage witness serve`` (or any
    C2SP tlog-witness) at ``url``, whose cosignature key ``key`` (a vkey) is pinned here.
    """

    kind: Literal["directory", "http"] = "directory"
    path: str = ""
    url: str = ""
    key: str = ""

    def check(self) -> tuple[str, Any, str] | None:
        if self.kind == "directory" and not self.path:
            return ("path", self.path, "a folder (or `default`) for a directory witness")
        if self.kind == "http" and not self.url.startswith(("http://", "https://")):
            return ("url", self.url, "an http:// or https:// URL for an http witness")
        if self.kind == "http" and self.key.count("+") < 2:
            return ("key", self.key, "the witness's verifier key (name+keyid+base64)")
        return None


@dataclass(frozen=True)
class WitnessParams:
    """Witnessed checkpoints of the privacy ledger (C2SP tlog-witness).

    Events that narrow processing are witnessed before the command reports success; other
    events when ``every_entries`` entries or ``every_seconds`` seconds passed since the last
    witnessed checkpoint (checked when an event is appended).
    """

    witnesses: tuple[WitnessSpec, ...] = (WitnessSpec(kind="directory", path="default"),)
    # The checkpoints' origin line (the log's name); empty: derived from the project folder.
    # Set it when a project moves, to keep its witnesses' history.
    origin: str = ""
    every_entries: int = field(default=1000, metadata=rng(ge=1, le=10_000_000))
    every_seconds: float = field(default=300.0, metadata=rng(gt=0))
    # Cosignatures needed for a checkpoint to count as witnessed (0 = every witness).
    quorum: int = field(default=0, metadata=rng(ge=0, le=100))
    timeout_seconds: float = field(default=10.0, metadata=rng(gt=0, le=600))

    def check(self) -> tuple[str, Any, str] | None:
        if self.origin and ("+" in self.origin or any(c.isspace() for c in self.origin)):
            return ("origin", self.origin, "a name without spaces or '+' (e.g. example.org/log)")
        if self.quorum > len(self.witnesses):
            return ("quorum", self.quorum, f"at most the {len(self.witnesses)} witnesses listed")
        return None


@dataclass(frozen=True)
class RetentionParams:
    """``visage privacy enforce``: consent expiry, kept files, and what policy carries out.

    Retention of each data category (facial images, templates, ...) is in the records of
    processing (``privacy/records.yaml``); these are the operational knobs.
    """

    # A consent lapses this many calendar months after it was given (0 = never).
    consent_months: int = field(default=12, metadata=rng(ge=0, le=1200))
    # Export bundles kept under privacy/exports are removed after this many days, or after the
    # records' export_bundles retention when that ends first.
    exports_days: int = field(default=30, metadata=rng(ge=1, le=36600))
    # Signed request receipts (privacy/requests/*.receipt.json) are removed after this many
    # months, or after the records' request_receipts retention when that ends first (their
    # SHA-256 stays in the ledger).
    receipts_months: int = field(default=36, metadata=rng(ge=1, le=1200))
    # A message the outbox gave up on (dead after notify.max_attempts) holds the address it was
    # for, an erased subject's too: it is discarded this many days after it died (its hash stays
    # in the ledger), time enough for `visage privacy notify --retry-dead`.
    dead_messages_days: int = field(default=30, metadata=rng(ge=1, le=36600))
    # Erase a subject for whom no purpose has a legal basis any more (withdrawn, expired,
    # objected to) without waiting for a request.
    erase_without_basis: bool = True
    # Restricted subjects (Art. 18): keep everything (stored, not used), or also remove their
    # gallery template.
    restricted: Literal["keep", "purge_template"] = "keep"
    # `visage serve` runs enforcement and notification delivery this often, the first time this
    # long after it starts (0 = never: run `visage privacy enforce --apply` by timer instead).
    # The notice says which: "enforced automatically ... at least once every <interval>", or
    # "when the controller's scheduled retention check runs".
    serve_interval_seconds: float = field(default=3600.0, metadata=rng(ge=0))


@dataclass(frozen=True)
class NotifyParams:
    """Delivery of notifications (``visage privacy notify``): SMTP and webhooks, retried.

    The SMTP password, when the server needs one, comes from ``$VISAGE_SMTP_PASSWORD``.
    """

    smtp_host: str = "127.0.0.1"
    smtp_port: int = field(default=25, metadata=rng(ge=1, le=65535))
    smtp_from: str = "dpo@example.org"
    smtp_starttls: bool = False
    smtp_user: str = ""
    # A message is tried this many times, waiting backoff_seconds, doubled each time, between.
    max_attempts: int = field(default=8, metadata=rng(ge=1, le=1000))
    backoff_seconds: float = field(default=60.0, metadata=rng(ge=0))
    timeout_seconds: float = field(default=10.0, metadata=rng(gt=0, le=600))


@dataclass(frozen=True)
class LegitimateInterestParams:
    """The legitimate interests pursued (Art. 6(1)(f)), which the notice states (Art. 13(1)(d),
    14(2)(b)), per class of data subjects whose processing rests on them.

    Project set-up writes them into ``privacy/records.yaml`` (the records are the one source of
    the notice; edit them there afterwards). The shipped texts are examples: documents rendered
    from records still holding them say they are drafts.
    """

    # Demographic counting of persons passing the camera (analytics): they are not enrolled and
    # cannot consent.
    passer_by: str = (
        "knowing how many people pass this site per time window, by age band, gender and "
        "skin-tone group, to plan the service and check that it reaches every group alike, "
        "without identifying anyone"
    )
    # Training and evaluation on research data sets imported under a basis other than consent.
    research: str = (
        "developing face-recognition models and measuring their accuracy and demographic bias, "
        "so that they work equally well for every group"
    )


@dataclass(frozen=True)
class PrivacyParams:
    """Data-subject rights: deadlines and how erasure treats derived data."""

    # Art. 12(3): answer within one calendar month of receipt ...
    deadline_months: int = field(default=1, metadata=rng(ge=1, le=12))
    # ... extendable by up to two further months where necessary, with a reason, before the
    # deadline passed.
    max_extension_months: int = field(default=2, metadata=rng(ge=0, le=12))
    # Erasure: `purge` rewrites data/processed without the subject's rows (seconds);
    # `rebuild` runs `dvc repro prepare` (detection again, minutes on large sets).
    processed_on_erasure: Literal["rebuild", "purge"] = "purge"
    witness: WitnessParams = WitnessParams()
    retention: RetentionParams = RetentionParams()
    notify: NotifyParams = NotifyParams()
    legitimate_interests: LegitimateInterestParams = LegitimateInterestParams()


@dataclass(frozen=True)
class StackPostgresParams:
    """The stack's PostgreSQL (pgvector gallery, MLflow backend store)."""

    port: int = field(default=55432, metadata=rng(ge=1, le=65535))
    user: str = "visage"
    database: str = "visage"
    # external: a libpq URI without password (postgresql://user@host:port/db); the password
    # comes from secrets/stack.json (postgres_password) or $VISAGE_STACK_POSTGRES_PASSWORD.
    dsn: str = ""


@dataclass(frozen=True)
class StackS3Params:
    """The stack's S3 object store (DVC remote, MLflow artefacts)."""

    # local: S3 on this port, SeaweedFS's internal servers on the nine ports after it.
    port: int = field(default=18333, metadata=rng(ge=1, le=65525))
    bucket: str = "visage"
    # external: the endpoint URL (https://s3.example.org); the keys come from
    # secrets/stack.json (s3_access_key, s3_secret_key) or $VISAGE_STACK_S3_ACCESS_KEY/_SECRET_KEY.
    endpoint: str = ""
    dvc_prefix: str = "dvc"
    mlflow_prefix: str = "mlflow"
    # SeaweedFS volume size (local): a vacuum rewrites a whole volume, smaller is faster.
    volume_size_mb: int = field(default=64, metadata=rng(ge=1, le=30000))


@dataclass(frozen=True)
class StackMlflowParams:
    """The stack's MLflow tracking server."""

    port: int = field(default=15000, metadata=rng(ge=1, le=65535))
    database: str = "mlflow"
    # external: the tracking server's URI (http://mlflow.example.org).
    uri: str = ""


@dataclass(frozen=True)
class StackParams:
    """``visage stack up | down | status`` (docs/deploy.md): PostgreSQL, S3, MLflow server.

    ``mode: local`` starts the three on loopback in ``dir``; ``external`` uses a team's
    services named below and starts nothing. ``tracking`` chooses the MLflow store of the
    pipeline: ``sqlite`` (``mlruns/mlflow.db``, one machine) or ``server`` (the stack's);
    ``visage stack up`` sets it to ``server``.
    """

    mode: Literal["local", "external"] = "local"
    dir: str = ".stack"
    tracking: Literal["sqlite", "server"] = "sqlite"
    dvc_remote: str = "stack"
    start_timeout_s: float = field(default=90.0, metadata=rng(gt=0, le=3600))
    postgres: StackPostgresParams = StackPostgresParams()
    s3: StackS3Params = StackS3Params()
    mlflow: StackMlflowParams = StackMlflowParams()

    def check(self) -> tuple[str, Any, str] | None:
        if self.mode == "external":
            if self.s3.endpoint and not self.s3.endpoint.startswith(("http://", "https://")):
                return ("s3.endpoint", self.s3.endpoint, "an http:// or https:// URL")
            if self.mlflow.uri and not self.mlflow.uri.startswith(("http://", "https://")):
                return ("mlflow.uri", self.mlflow.uri, "an http:// or https:// URL")
            if self.postgres.dsn and not self.postgres.dsn.startswith("postgresql://"):
                return ("postgres.dsn", self.postgres.dsn, "a postgresql:// URI")
        if Path(self.dir).is_absolute() or ".." in Path(self.dir).parts:
            return ("dir", self.dir, "a folder inside the project (relative, no '..')")
        return None


@dataclass(frozen=True)
class Params:
    """The whole of ``params.yaml``."""

    project: ProjectParams = ProjectParams()
    synth: SynthParams = SynthParams()
    prepare: PrepareParams = PrepareParams()
    eval_population: EvalPopulationParams = EvalPopulationParams()
    demographic_population: DemographicPopulationParams = DemographicPopulationParams()
    train_embedder: TrainEmbedderParams = TrainEmbedderParams()
    train_demographics: TrainDemographicsParams = TrainDemographicsParams()
    export: ExportParams = ExportParams()
    evaluate: EvaluateParams = EvaluateParams()
    gallery: GalleryParams = GalleryParams()
    serving: ServingParams = ServingParams()
    privacy: PrivacyParams = PrivacyParams()
    stack: StackParams = StackParams()

    def check(self) -> tuple[str, Any, str] | None:
        # The demographic model's synthetic training people come from a seed of their own:
        # never the evaluation population's (it would be trained on what measures it) nor the
        # acquisition population's (project.seed).
        seed = self.demographic_population.seed
        if seed in (self.eval_population.seed, self.project.seed):
            return (
                "demographic_population.seed",
                seed,
                f"a seed of its own, not eval_population.seed ({self.eval_population.seed}) "
                f"nor project.seed ({self.project.seed})",
            )
        return None


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, typing.Hashable) and key in seen:
            raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
        if isinstance(key, typing.Hashable):
            seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _load_yaml(text: str) -> Any:
    """Safe YAML, refusing duplicate keys (a second ``prepare:`` would replace the first).

    The parse of a text is remembered (the caller gets its own copy): a served request reads
    ``params.yaml`` several times, and PyYAML took 35 ms each time."""
    return copy.deepcopy(_parsed_yaml(text))


@functools.lru_cache(maxsize=8)
def _parsed_yaml(text: str) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_raw(p: Path) -> dict[str, Any]:
    """``params.yaml`` as read (a mapping of sections), before validation."""
    source = str(p)
    raw: dict[str, Any] = {}
    if p.exists():
        try:
            loaded = _load_yaml(p.read_text(encoding="utf-8"))
        except _DuplicateKeyError as exc:
            raise ConfigError(
                f"{source}: key '{exc.key}' is given twice (line {exc.line}); YAML would keep "
                "only the last one silently. Keep one and run again."
            ) from None
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(
                f"{source}: not valid YAML ({exc.__class__.__name__}); fix the syntax and run again"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{source}: top level must be a mapping of sections, found {type(loaded).__name__}"
            )
        raw = loaded
    else:
        raise ConfigError(
            f"{source}: file not found; run visage from the project root or set VISAGE_PROJECT"
        )
    return raw


def validate_params(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of the params file at ``path`` (empty when valid); reads, writes nothing."""
    p = Path(path)
    try:
        raw = _read_raw(p)
    except ConfigError as exc:
        return [str(exc)]
    return validate_all(Params, raw, source=str(p))


def load_params(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Params:
    """Read and validate ``params.yaml``.

    Parameters
    ----------
    path
        The params file; by default ``params.yaml`` of the discovered project.
    overrides
        Dotted keys to replace after reading, e.g. ``{"train_embedder.epochs": 1}``.

    Raises
    ------
    ConfigError
        When the file is unreadable or a key is unknown, of the wrong type or out of range.
    """
    p = Path(path) if path is not None else ProjectPaths.discover().params
    source = str(p)
    raw = _read_raw(p)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_section(Params, raw, source=source)


def params_from_dict(raw: Mapping[str, Any], *, source: str = "<params>") -> Params:
    """Validate an in-memory params mapping (tests, notebooks)."""
    return parse_section(Params, raw, source=source)


def write_params(params: Params, path: str | os.PathLike[str]) -> None:
    """Write ``params`` as YAML (used by tests and ``visage config init``)."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(params), sort_keys=False))
