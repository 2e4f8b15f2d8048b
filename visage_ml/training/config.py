"""Settings and results of a training run, and the device and precision it runs on."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from visage_ml.config import GENDERS, GROUPS

Sampling = Literal["uniform", "class_balanced", "group_balanced"]
SAMPLINGS: tuple[str, ...] = ("uniform", "class_balanced", "group_balanced")
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
# Impostor pairs sampled from the validation split (all of them when there are fewer).
VAL_IMPOSTOR_PAIRS = 50_000
MSG_NO_LABELS = (
    "none of the {n} {split} images carries an age, gender ({genders}) or group ({groups}) label, "
    "so the demographic model has nothing to learn from. Import a labeled data set (`visage data "
    "import utkface|fairface ...`, or SynthFaces with `visage data synth`) and run `dvc repro`"
)
EpochCallback = Callable[[dict[str, Any], dict[str, Any]], None]
StepCallback = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# configuration and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Batched, on-device augmentation: horizontal flip, colour jitter, random crop and scale.

    ``crop_scale`` bounds the area of the random crop as a fraction of the image; the crop is
    resampled to the full input size.
    """

    flip: bool = True
    color_jitter: float = 0.2
    crop_scale: tuple[float, float] = (0.85, 1.0)


@dataclass(frozen=True)
class LoopConfig:
    """Knobs of one training run (the stage builds it from ``params.yaml``).

    ``patience`` ``None`` disables early stopping; ``max_minutes`` 0 means no time budget;
    ``max_steps`` stops after that many optimizer steps (benchmarks and smoke runs);
    ``compile`` compiles the modules' forward with ``torch.compile`` (fewer, fused kernels: on a
    GPU the eager step is bound by kernel launches, docs/gpu.md).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    patience: int | None = None
    sampling: str = "uniform"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"
    precision: str = "auto"
    max_minutes: float = 0.0
    max_steps: int | None = None
    seed: int = 0
    eval_batch_size: int = 256
    progress: bool = True
    desc: str = "train"
    compile: bool = False

    @classmethod
    def from_params(
        cls, section: Any, *, seed: int, progress: bool, desc: str, **extra: Any
    ) -> LoopConfig:
        """The loop's settings from a ``train_*`` params section (plus ``extra`` fields)."""
        return cls(
            epochs=section.epochs,
            batch_size=section.batch_size,
            lr=section.lr,
            weight_decay=section.weight_decay,
            warmup_epochs=section.warmup_epochs,
            patience=section.early_stopping_patience,
            augment=AugmentConfig(
                flip=section.augment.flip,
                color_jitter=section.augment.color_jitter,
                crop_scale=tuple(section.augment.crop_scale),
            ),
            device=section.device,
            precision=section.precision,
            max_minutes=section.max_minutes,
            max_steps=getattr(section, "max_steps", 0) or None,
            compile=section.compile,
            seed=seed,
            progress=progress,
            desc=desc,
            **extra,
        )


@dataclass
class FitResult:
    """What a training run produced.

    ``best_state`` is the inference network's weights (CPU tensors) at the best validation epoch
    (the last epoch without validation); ``history`` has one record per epoch; ``step_losses``
    holds the loss of each optimizer step this call ran. ``images_per_second`` leaves out the
    first step of each process (``warmup_seconds``: compilation, cuDNN autotuning), which
    ``train_seconds`` counts. ``numerics``: :func:`numerics` of the device it ran on.
    """

    best_state: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    step_losses: list[float]
    best_metric: float | None
    best_epoch: int
    epochs_run: int
    final_loss: float
    images_per_second: float
    train_seconds: float
    stopped: str
    device: str
    val_metrics: dict[str, float]
    warmup_seconds: float = 0.0
    numerics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemographicTargets:
    """Per-image targets of the demographic net: age in years, gender and group indices.

    A label may be unknown: age ``NaN``, gender or group ``-1`` (an unlabeled or partly labeled
    data set, or a group label outside the model's classes such as UTKFace's race names). Each
    head of the net learns and is scored only where its label is known.
    """

    age: np.ndarray
    gender: np.ndarray
    group: np.ndarray

    @classmethod
    def from_manifest(cls, frame: Any) -> DemographicTargets:
        """Targets of the manifest rows ``frame`` (labels as ``config.GENDERS`` / ``GROUPS``).

        Missing ages become ``NaN``; genders and groups missing or outside the configured
        labels become ``-1``.
        """
        gender = frame["gender"].map({g: i for i, g in enumerate(GENDERS)})
        group = frame["group"].map({g: i for i, g in enumerate(GROUPS)})
        age = frame["age"].astype("Float64").to_numpy(dtype=np.float32, na_value=np.nan)
        return cls(
            age=age,
            gender=gender.fillna(-1).to_numpy(dtype=np.int64),
            group=group.fillna(-1).to_numpy(dtype=np.int64),
        )

    @property
    def known(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boolean masks ``(age, gender, group)``: where each label is known."""
        return (
            ~np.isnan(np.asarray(self.age, dtype=np.float64)),
            np.asarray(self.gender) >= 0,
            np.asarray(self.group) >= 0,
        )

    @property
    def complete(self) -> bool:
        """Every label of every image is known (the fully labeled case)."""
        return all(bool(m.all()) for m in self.known)

    def labeled(self) -> np.ndarray:
        """Boolean mask of the images with at least one known label."""
        age, gender, group = self.known
        return age | gender | group

    def take(self, mask: np.ndarray) -> DemographicTargets:
        """The targets of the images selected by ``mask`` (or an index array)."""
        return DemographicTargets(
            age=np.asarray(self.age)[mask],
            gender=np.asarray(self.gender)[mask],
            group=np.asarray(self.group)[mask],
        )

    def coverage(self) -> dict[str, int]:
        """Images with each label known, with at least one, and in total."""
        age, gender, group = self.known
        return {
            "images": int(age.size),
            "age": int(age.sum()),
            "gender": int(gender.sum()),
            "group": int(group.sum()),
            "labeled": int((age | gender | group).sum()),
        }


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was requested but no CUDA device is available; set device to "
            "'auto' or 'cpu'"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device '{name}'; choose one of: auto, cpu, cuda")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``bf16``, or ``None`` (fp32) for ``fp32`` and ``auto``.

    ``auto`` is fp32 on CUDA too: on the one GPU measured (an H200, docs/gpu.md) bf16 autocast
    trained the GPU preset slower, eager and compiled, its step bound by kernel launches.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    del device  # the same answer on every device, measured so far
    return torch.bfloat16 if precision == "bf16" else None


def numerics(device: torch.device) -> dict[str, Any]:
    """What the low bits of a training run depend on beyond its params and data: the torch
    build, and on the CPU the threads and the vector instructions its kernels use (another
    core count or CPU sums in another order: the same seed then gives slightly other weights
    and metrics); on CUDA the GPU. Written into the training reports."""
    out: dict[str, Any] = {"torch": str(torch.__version__), "device": device.type}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    else:
        out["cpu_threads"] = torch.get_num_threads()
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed % 2**63, *keys]).generate_state(1, np.uint64)[0] >> 1)
