"""Training loops for the identity embedder and the demographic net (no file I/O).

The stage hands in the face array (usually the ``faces.u8.npy`` memmap), row indices and labels,
and gets back a :class:`FitResult`; checkpoints leave through the ``on_epoch_end`` callback.

Data path: a background thread gathers uint8 batches from the array by index into reusable
(pinned, on CUDA) buffers; the batch is copied to the device without blocking, and augmentation
(random crop/scale, flip, colour jitter) and standardisation run batched on the device. On CUDA
the step runs under bf16 autocast with channels-last tensors; on the CPU it is seeded and
deterministic, and resuming from the state saved after epoch ``k`` reproduces the next step's
loss bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visage_ml.evaluation.verification import tar_at_far
from visage_ml.preprocess import standardize

logger = logging.getLogger(__name__)

Sampling = Literal["uniform", "class_balanced", "group_balanced"]
SAMPLINGS: tuple[str, ...] = ("uniform", "class_balanced", "group_balanced")
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
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
    ``max_steps`` stops after that many optimizer steps (benchmarks and smoke runs).
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


@dataclass
class FitResult:
    """What a training run produced.

    ``best_state`` is the inference network's weights (CPU tensors) at the best validation epoch
    (the last epoch without validation); ``history`` has one record per epoch; ``step_losses``
    holds the loss of each optimizer step this call ran.
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


@dataclass(frozen=True)
class DemographicTargets:
    """Per-image targets of the demographic net: age in years, gender and group indices."""

    age: np.ndarray
    gender: np.ndarray
    group: np.ndarray


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
    """Autocast dtype: ``auto`` is bf16 on CUDA and full fp32 on the CPU (``None``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed % 2**63, *keys]).generate_state(1, np.uint64)[0] >> 1)


def epoch_batches(
    *,
    n: int,
    batch_size: int,
    sampling: str,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """One epoch of index batches into ``range(n)``.

    ``uniform`` is a random permutation; ``class_balanced`` draws (with replacement) so that each
    identity is equally likely, ``group_balanced`` so that each skin-tone group is, which is the
    fairness mitigation for groups under-represented in training. The last, incomplete batch is
    dropped unless it is the only one (batch norm needs more than one image).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling '{sampling}'; choose one of: {', '.join(SAMPLINGS)}")
    if sampling == "uniform":
        order = rng.permutation(n)
    else:
        keys = labels if sampling == "class_balanced" else groups
        if keys is None:
            raise ValueError(f"sampling '{sampling}' needs per-image {sampling.split('_')[0]}s")
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        p = 1.0 / counts[inverse]
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    bs = min(batch_size, n)
    steps = max(1, n // bs)
    return [np.sort(order[i * bs : (i + 1) * bs]) for i in range(steps)]


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, floor: float = 0.01) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``floor`` at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    modules: Sequence[nn.Module], *, lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices and kernels only (not norms or biases).

    Parameters already on a GPU get the fused CUDA implementation (one kernel per step).
    """
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
    fused = all(p.is_cuda for p in decay + no_decay) or None
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        fused=fused,
    )


# ---------------------------------------------------------------------------------------------
# data path
# ---------------------------------------------------------------------------------------------


class BatchPrefetcher:
    """Gather uint8 batches ``images[rows[idx]]`` in a background thread, ahead of the step.

    Buffers are reused round-robin (pinned on CUDA, with an event guarding each buffer until its
    asynchronous host-to-device copy is done); iterating yields ``(batch_on_device, idx)``
    where ``batch`` is an ``(n, H, W, 3)`` uint8 tensor.
    """

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        batches: Sequence[np.ndarray],
        *,
        device: torch.device,
        depth: int = 3,
    ):
        self.images, self.rows, self.batches = images, np.asarray(rows), list(batches)
        self.device = device
        self.cuda = device.type == "cuda"
        self.depth = depth
        n_slots = depth + 2
        biggest = max((len(b) for b in self.batches), default=1)
        shape = (biggest, *images.shape[1:])
        self.slots = [
            torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(n_slots)
        ]
        self.events: list[Any] = [None] * n_slots
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="visage-prefetch", daemon=True)

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for i, idx in enumerate(self.batches):
                slot = i % len(self.slots)
                event = self.events[slot]
                if event is not None:
                    event.synchronize()
                buf = self.slots[slot][: len(idx)]
                np.take(self.images, self.rows[idx], axis=0, out=buf.numpy(), mode="clip")
                if not self._put((slot, idx)):
                    return
            self._put(None)
        except BaseException as exc:  # re-raised in the consumer thread
            self._put(exc)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        self.thread.start()
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                slot, idx = item
                buf = self.slots[slot][: len(idx)]
                if self.cuda:
                    x = buf.to(self.device, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    self.events[slot] = event
                else:
                    x = buf
                yield x, idx
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer thread and wait for it."""
        self.stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


def augment_batch(
    batch: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Augment and standardise an ``(N, H, W, 3)`` uint8 batch; returns ``(N, 3, H, W)`` float.

    Random numbers come from ``generator`` (a CPU generator, so results do not depend on the
    device); the image work runs on the batch's device. The result is channels-last in memory.
    """
    n = batch.shape[0]
    dev = batch.device
    x = batch.permute(0, 3, 1, 2).float()
    lo, hi = cfg.crop_scale
    flip = (torch.rand(n, generator=generator) < 0.5) if cfg.flip else torch.zeros(n, dtype=bool)
    if lo < 1.0:
        area = lo + (hi - lo) * torch.rand(n, generator=generator)
        side = area.sqrt()
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - side)[:, None]
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -side, side)
        theta[:, 1, 1] = side
        theta[:, :, 2] = shift
        grid = F.affine_grid(to_device(theta, dev), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    elif cfg.flip:
        x = torch.where(to_device(flip, dev)[:, None, None, None], x.flip(3), x)
    j = cfg.color_jitter
    if j > 0:
        factors = to_device(1 - j + 2 * j * torch.rand(n, 3, generator=generator), dev)
        bright, contrast, sat = (factors[:, k, None, None, None] for k in range(3))
        x = x * bright
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).contiguous(
            memory_format=torch.channels_last
        )
        x = gray + (x - gray) * sat
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        x = x.clamp(0.0, 255.0)
    return standardize(x).contiguous(memory_format=torch.channels_last)


def standardized_batch(batch: torch.Tensor) -> torch.Tensor:
    """An ``(N, H, W, 3)`` uint8 batch as standardised ``(N, 3, H, W)`` float, no augmentation."""
    return standardize(batch.permute(0, 3, 1, 2).float()).contiguous(
        memory_format=torch.channels_last
    )


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to ``device`` without making the host wait for the GPU.

    A copy from pageable memory synchronises with the stream; from pinned memory it is queued.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _eval_batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


@torch.no_grad()
def embed_rows(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Embeddings ``(len(rows), D)`` float32 of ``images[rows]`` (model switched to eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, _ in BatchPrefetcher(
            images, rows, _eval_batches(len(rows), batch_size), device=device
        ):
            with _autocast(device, amp_dtype):
                out.append(model(standardized_batch(x)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def verification_pairs(
    labels: np.ndarray, *, max_impostors: int = 50_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """All genuine pairs of ``labels`` and up to ``max_impostors`` impostor pairs.

    Returns ``(pairs (P, 2) int, genuine (P,) bool)``; impostors are all pairs when there are
    few, else a seeded sample without repeats.
    """
    labels = np.asarray(labels)
    n = len(labels)
    i, j = np.triu_indices(n, k=1)
    same = labels[i] == labels[j]
    gen = np.stack([i[same], j[same]], axis=1)
    imp_i, imp_j = i[~same], j[~same]
    if len(imp_i) > max_impostors:
        pick = np.random.default_rng(seed).choice(len(imp_i), size=max_impostors, replace=False)
        imp_i, imp_j = imp_i[np.sort(pick)], imp_j[np.sort(pick)]
    imp = np.stack([imp_i, imp_j], axis=1)
    pairs = np.concatenate([gen, imp]).astype(np.int64)
    genuine = np.concatenate([np.ones(len(gen), bool), np.zeros(len(imp), bool)])
    return pairs, genuine


def pair_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of (unit-length) embeddings."""
    return np.einsum("ij,ij->i", embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])


# ---------------------------------------------------------------------------------------------
# tasks: what differs between the embedder and the demographic net
# ---------------------------------------------------------------------------------------------


class _EmbedderTask:
    metric_name = "val_tar"

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module,
        labels: np.ndarray,
        val_rows: np.ndarray | None,
        val_labels: np.ndarray | None,
        *,
        far: float,
        seed: int,
    ):
        self.model, self.head = model, head
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        self.val_rows = val_rows
        self.far = far
        self.pairs: tuple[np.ndarray, np.ndarray] | None = None
        if val_rows is not None and val_labels is not None and len(val_rows) > 1:
            pairs, genuine = verification_pairs(np.asarray(val_labels), seed=seed)
            if genuine.any() and (~genuine).any():
                self.pairs = (pairs, genuine)
        if self.pairs is None:
            logger.warning("no usable validation pairs: training without early stopping")

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "head": self.head}

    def loss(self, x: torch.Tensor, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        y = to_device(self.labels[idx], device)
        return self.head(self.model(x), y)

    def evaluate(
        self, images: np.ndarray, device: torch.device, amp: torch.dtype | None, batch: int
    ) -> dict[str, float]:
        if self.pairs is None or self.val_rows is None:
            return {}
        emb = embed_rows(
            self.model, images, self.val_rows, device=device, batch_size=batch, amp_dtype=amp
        )
        pairs, genuine = self.pairs
        scores = pair_scores(emb, pairs)
        return {
            "val_tar": tar_at_far(scores[genuine], scores[~genuine], self.far),
            "val_genuine_mean": float(scores[genuine].mean()),
            "val_impostor_mean": float(scores[~genuine].mean()),
        }


class _DemographicTask:
    metric_name = "val_score"

    def __init__(
        self,
        model: nn.Module,
        targets: DemographicTargets,
        val_rows: np.ndarray | None,
        val_targets: DemographicTargets | None,
        *,
        group_balanced_loss: bool,
    ):
        from visage_ml.models.demographic import demographic_loss

        self.model = model
        self._loss = demographic_loss
        self.age = torch.tensor(np.asarray(targets.age), dtype=torch.float32)
        self.gender = torch.tensor(np.asarray(targets.gender), dtype=torch.long)
        self.group = torch.tensor(np.asarray(targets.group), dtype=torch.long)
        self.weights: torch.Tensor | None = None
        if group_balanced_loss:
            _, inverse, counts = np.unique(
                np.asarray(targets.group), return_inverse=True, return_counts=True
            )
            w = 1.0 / counts[inverse]
            self.weights = torch.as_tensor(w / w.mean(), dtype=torch.float32)
        self.val_rows = val_rows if val_rows is not None and len(val_rows) > 0 else None
        self.val_targets = val_targets

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def loss(self, x: torch.Tensor, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        outputs = self.model(x)
        return self._loss(
            outputs,
            age=to_device(self.age[idx], device),
            gender=to_device(self.gender[idx], device),
            group=to_device(self.group[idx], device),
            age_std=float(self.model.age_std),
            weights=None if self.weights is None else to_device(self.weights[idx], device),
        )

    def evaluate(
        self, images: np.ndarray, device: torch.device, amp: torch.dtype | None, batch: int
    ) -> dict[str, float]:
        if self.val_rows is None or self.val_targets is None:
            return {}
        return evaluate_demographics(
            self.model,
            images,
            self.val_rows,
            self.val_targets,
            device=device,
            batch_size=batch,
            amp_dtype=amp,
        )


@torch.no_grad()
def evaluate_demographics(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    targets: DemographicTargets,
    *,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Gender and group accuracy, age MAE (years) and ``val_score`` (their summary, higher is
    better: mean accuracy minus MAE / 100) of ``model`` on ``images[rows]``."""
    was_training = model.training
    model.eval()
    ages, genders, groups = [], [], []
    try:
        for x, _ in BatchPrefetcher(
            images, rows, _eval_batches(len(rows), batch_size), device=device
        ):
            with _autocast(device, amp_dtype):
                age, g, r = model(standardized_batch(x))
            ages.append(age.float().cpu())
            genders.append(g.argmax(1).cpu())
            groups.append(r.argmax(1).cpu())
    finally:
        model.train(was_training)
    age_mae = float(
        (torch.cat(ages).numpy() - np.asarray(targets.age, np.float64)).__abs__().mean()
    )
    gender_acc = float((torch.cat(genders).numpy() == np.asarray(targets.gender)).mean())
    group_acc = float((torch.cat(groups).numpy() == np.asarray(targets.group)).mean())
    return {
        "val_gender_accuracy": gender_acc,
        "val_group_accuracy": group_acc,
        "val_age_mae": age_mae,
        "val_score": (gender_acc + group_acc) / 2 - age_mae / 100.0,
    }


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _fit(
    task: Any,
    *,
    images: np.ndarray,
    rows: np.ndarray,
    sampling_labels: np.ndarray | None,
    sampling_groups: np.ndarray | None,
    config: LoopConfig,
    resume: Mapping[str, Any] | None,
    on_epoch_end: EpochCallback | None,
    on_step: StepCallback | None,
) -> FitResult:
    from tqdm.auto import tqdm

    from visage_ml.models.checkpoint import cpu_state_dict

    device = resolve_device(config.device)
    amp = resolve_precision(config.precision, device)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 faces of shape (N, S, S, 3), got {images.dtype} {tuple(images.shape)}"
        )
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    if n < 2:
        raise ValueError(f"need at least 2 training images, got {n}; check the training split")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    modules = task.modules()
    for m in modules.values():
        m.to(device=device, memory_format=torch.channels_last).train()
    model = modules["model"]
    opt = make_optimizer(list(modules.values()), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(
        epoch_batches(
            n=n, batch_size=config.batch_size, sampling="uniform", rng=np.random.default_rng(0)
        )
    )
    total = steps_per_epoch * config.epochs
    warm = round(config.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup_steps=warm, total_steps=total)
    )

    start_epoch, global_step = 0, 0
    best_metric: float | None = None
    best_epoch, bad_epochs = 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    stopped = ""
    prior_seconds, prior_images = 0.0, 0
    if resume is not None:
        for name, m in modules.items():
            m.load_state_dict(resume["modules"][name])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start_epoch = int(resume["epoch"])
        global_step = int(resume["global_step"])
        best_metric = resume["best_metric"]
        best_epoch = int(resume["best_epoch"])
        bad_epochs = int(resume["bad_epochs"])
        best_state = dict(resume["best_state"])
        history = [dict(h) for h in resume["history"]]
        stopped = str(resume.get("stopped", ""))
        prior_seconds = float(resume.get("train_seconds", 0.0))
        prior_images = int(resume.get("images_seen", 0))
        _set_rng_state(resume["rng"])
    else:
        torch.manual_seed(config.seed)

    step_losses: list[float] = []
    train_seconds, images_seen = prior_seconds, prior_images
    budget = config.max_minutes * 60.0
    t_begin = time.perf_counter()
    epoch = start_epoch
    while epoch < config.epochs and not stopped:
        rng = np.random.default_rng(_derived_seed(config.seed, epoch, 0))
        aug_gen = torch.Generator().manual_seed(_derived_seed(config.seed, epoch, 1))
        batches = epoch_batches(
            n=n,
            batch_size=config.batch_size,
            sampling=config.sampling,
            rng=rng,
            labels=sampling_labels,
            groups=sampling_groups,
        )
        losses: list[torch.Tensor] = []
        t0 = time.perf_counter()
        seen = 0
        bar = tqdm(
            total=len(batches),
            desc=f"{config.desc} {epoch + 1}/{config.epochs}",
            disable=not config.progress,
            leave=False,
            unit="step",
        )
        for x_u8, idx in BatchPrefetcher(images, rows, batches, device=device):
            x = augment_batch(x_u8, config.augment, aug_gen)
            with _autocast(device, amp):
                loss = task.loss(x, idx, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
            global_step += 1
            seen += len(idx)
            bar.update(1)
            if len(losses) % 25 == 0:  # .item() waits for the device
                bar.set_postfix(loss=f"{losses[-1].item():.3f}")
            if on_step is not None:
                on_step(global_step)
            if config.max_steps is not None and global_step >= config.max_steps:
                stopped = "max_steps"
                break
            if budget > 0 and time.perf_counter() - t_begin > budget:
                stopped = "time_budget"
                logger.info("time budget of %.1f min reached", config.max_minutes)
                break
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        images_seen += seen
        epoch_losses = torch.stack(losses).float().cpu().tolist() if losses else []
        step_losses.extend(epoch_losses)
        epoch += 1
        metrics = task.evaluate(images, device, amp, config.eval_batch_size)
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            "images_per_s": seen / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
            "lr": float(sched.get_last_lr()[0]),
            **metrics,
        }
        history.append(record)
        value = metrics.get(task.metric_name)
        if value is None or best_metric is None or value > best_metric:
            best_metric = value if value is not None else best_metric
            best_epoch, bad_epochs = epoch, 0
            best_state = cpu_state_dict(model)
        else:
            bad_epochs += 1
            if config.patience is not None and bad_epochs >= config.patience and not stopped:
                stopped = "early_stopping"
                logger.info(
                    "early stopping: no better %s for %d epochs", task.metric_name, bad_epochs
                )
        logger.info(
            "epoch %d/%d: %s",
            epoch,
            config.epochs,
            ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"),
        )
        if on_epoch_end is not None:
            state = {
                "epoch": epoch,
                "global_step": global_step,
                "modules": {k: cpu_state_dict(m) for k, m in modules.items()},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "best_metric": best_metric,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "best_state": best_state,
                "history": history,
                "stopped": stopped,
                "train_seconds": train_seconds,
                "images_seen": images_seen,
                "rng": _rng_state(),
            }
            on_epoch_end(record, state)
    if best_state is None:
        best_state = cpu_state_dict(model)
    last = history[-1] if history else {}
    best_record = next((h for h in history if h["epoch"] == best_epoch), last)
    return FitResult(
        best_state=best_state,
        history=history,
        step_losses=step_losses,
        best_metric=best_metric,
        best_epoch=best_epoch,
        epochs_run=len(history),
        final_loss=float(last.get("loss", float("nan"))),
        images_per_second=images_seen / train_seconds if train_seconds > 0 else 0.0,
        train_seconds=train_seconds,
        stopped=stopped or "completed",
        device=str(device),
        val_metrics={k: float(v) for k, v in best_record.items() if k.startswith("val_")},
    )


def fit_embedder(
    model: nn.Module,
    head: nn.Module,
    *,
    images: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    config: LoopConfig,
    groups: np.ndarray | None = None,
    val_rows: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    val_far: float = 1e-2,
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_step: StepCallback | None = None,
) -> FitResult:
    """Train an identity embedder with a margin head; early-stop on validation TAR@FAR.

    Parameters
    ----------
    model, head
        The embedder (``(N, 3, S, S)`` -> unit ``(N, D)``) and the head giving the loss from
        embeddings and labels (:func:`visage_ml.models.heads.create_head`).
    images
        ``(N, S, S, 3)`` uint8 faces, typically the ``faces.u8.npy`` memmap.
    rows, labels, groups
        Training rows of ``images``, their identity class ``0..C-1`` and (for
        ``group_balanced`` sampling) their group.
    config
        Loop settings; ``config.patience`` is the early-stopping patience in epochs.
    val_rows, val_labels, val_far
        Validation rows and identities: all genuine pairs and sampled impostors give the
        TAR at false-accept rate ``val_far`` after each epoch.
    resume
        A state passed earlier to ``on_epoch_end``: training continues exactly from there.
    on_epoch_end
        ``fn(record, state)`` after each epoch: ``record`` holds the epoch's metrics, ``state``
        (tensors and plain values only) is what ``resume`` accepts.
    on_step
        ``fn(global_step)`` after each optimizer step (benchmarks).
    """
    task = _EmbedderTask(model, head, labels, val_rows, val_labels, far=val_far, seed=config.seed)
    return _fit(
        task,
        images=images,
        rows=rows,
        sampling_labels=np.asarray(labels),
        sampling_groups=None if groups is None else np.asarray(groups),
        config=config,
        resume=resume,
        on_epoch_end=on_epoch_end,
        on_step=on_step,
    )


def fit_demographics(
    model: nn.Module,
    *,
    images: np.ndarray,
    rows: np.ndarray,
    targets: DemographicTargets,
    config: LoopConfig,
    val_rows: np.ndarray | None = None,
    val_targets: DemographicTargets | None = None,
    group_balanced_loss: bool = False,
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_step: StepCallback | None = None,
) -> FitResult:
    """Train the demographic net (age, gender, group); keep the best validation epoch.

    ``group_balanced_loss`` weights each image inversely to its group's share of the training
    set. The validation summary ``val_score`` (mean of gender and group accuracy minus age MAE /
    100) chooses the best epoch and drives early stopping (``config.patience``). Other
    parameters are as in :func:`fit_embedder`.
    """
    task = _DemographicTask(
        model, targets, val_rows, val_targets, group_balanced_loss=group_balanced_loss
    )
    return _fit(
        task,
        images=images,
        rows=rows,
        sampling_labels=None,
        sampling_groups=np.asarray(targets.group),
        config=config,
        resume=resume,
        on_epoch_end=on_epoch_end,
        on_step=on_step,
    )
