"""The training loop of the identity embedder and the demographic net (no file I/O).

The stage hands in the face array (the prepare stage's crops, decrypted into memory), row
indices and labels, and gets back a :class:`~visage_ml.training.config.FitResult`; checkpoints
leave through the ``on_epoch_end`` callback. On CUDA the step runs with channels-last tensors
(under bf16 autocast with ``precision: bf16``); on the CPU it is seeded and deterministic, and
resuming from the state saved after epoch ``k`` reproduces the next step's loss bit for bit, on
the same machine: another thread count or CPU (:func:`~visage_ml.training.config.numerics`, in
the training reports) sums in another order, and the weights and metrics differ slightly.

Given a :class:`~visage_ml.training.distributed.DistContext` (``dist``), the same loop runs in
each of several torchrun processes: every process trains on its share of each global batch
under DDP, rank 0 alone validates (the others receive its metrics) and alone gets the
``on_epoch_end`` call, and the stop decisions are taken together so no process waits for one
that has left the loop.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from visage_ml.models.checkpoint import cpu_state_dict
from visage_ml.training.batches import (
    BatchPrefetcher,
    augment_batch,
    epoch_batches,
)
from visage_ml.training.config import (
    DemographicTargets,
    EpochCallback,
    FitResult,
    LoopConfig,
    StepCallback,
    autocast,
    derived_seed,
    numerics,
    resolve_device,
    resolve_precision,
)
from visage_ml.training.distributed import (
    DistContext,
    check_global_batch,
    convert_batchnorm,
    revert_batchnorm,
    wrap_task,
)
from visage_ml.training.tasks import DemographicTask, EmbedderTask

logger = logging.getLogger(__name__)


# torch.compile's backend for ``LoopConfig.compile`` (inductor: fused kernels; the tests also
# use "aot_eager", which traces the same graphs without generating code).
COMPILE_BACKEND = "inductor"


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
# the loop
# ---------------------------------------------------------------------------------------------


def _rate(images: int, seconds: float) -> float:
    """Images per second (0 when nothing was timed)."""
    return images / seconds if images > 0 and seconds > 0 else 0.0


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
    dist: DistContext | None = None,
) -> FitResult:
    from tqdm.auto import tqdm

    device = dist.device if dist is not None else resolve_device(config.device)
    amp = resolve_precision(config.precision, device)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 faces of shape (N, S, S, 3), got {images.dtype} {tuple(images.shape)}"
        )
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    if n < 2:
        raise ValueError(f"need at least 2 training images, got {n}; check the training split")
    if dist is not None:
        check_global_batch(config.batch_size, dist.world_size, n_images=n)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    modules = task.modules()
    for m in modules.values():
        m.to(device=device, memory_format=torch.channels_last).train()
        if config.compile:
            m.compile(backend=COMPILE_BACKEND)  # in place: the state dict keeps its keys
    model = modules["model"]
    synced_bn = dist is not None and dist.sync_batchnorm and dist.world_size > 1
    if synced_bn:
        for m in modules.values():
            convert_batchnorm(m, cuda=device.type == "cuda")
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
    prior_warm_seconds, prior_warm_images = 0.0, 0
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
        prior_warm_seconds = float(resume.get("warmup_seconds", 0.0))
        prior_warm_images = int(resume.get("warmup_images", 0))
        _set_rng_state(resume["rng"])
    else:
        torch.manual_seed(config.seed)
    # DDP broadcasts rank 0's (resumed or initial) weights when it wraps them.
    ddp = wrap_task(task, modules, dist) if dist is not None else None
    main = dist is None or dist.is_main

    step_losses: list[float] = []
    train_seconds, images_seen = prior_seconds, prior_images
    # The first step a process runs also compiles (``compile``), autotunes cuDNN and fills the
    # allocator: timed apart, so that images/s is the speed of training, not of starting it.
    warm_seconds, warm_images = prior_warm_seconds, prior_warm_images
    warmed = False
    budget = config.max_minutes * 60.0
    t_begin = time.perf_counter()
    epoch = start_epoch
    while epoch < config.epochs and not stopped:
        rng = np.random.default_rng(derived_seed(config.seed, epoch, 0))
        aug_gen = torch.Generator().manual_seed(derived_seed(config.seed, epoch, 1))
        batches = epoch_batches(
            n=n,
            batch_size=config.batch_size,
            sampling=config.sampling,
            rng=rng,
            labels=sampling_labels,
            groups=sampling_groups,
        )
        parts: list[tuple[int, int] | None] = [None] * len(batches)
        if dist is not None:
            shares = [dist.shard(b) for b in batches]
            parts = [(offset, len(b)) for (_, offset), b in zip(shares, batches, strict=True)]
            batches = [share for share, _ in shares]
        losses: list[torch.Tensor] = []
        t0 = time.perf_counter()
        seen = 0
        epoch_warm_s, epoch_warm_n = 0.0, 0
        bar = tqdm(
            total=len(batches),
            desc=f"{config.desc} {epoch + 1}/{config.epochs}",
            disable=not config.progress or not main,
            leave=False,
            unit="step",
        )
        prefetch = BatchPrefetcher(images, rows, batches, device=device)
        for step_in_epoch, (x_u8, idx) in enumerate(prefetch):
            part = parts[step_in_epoch]
            x = augment_batch(x_u8, config.augment, aug_gen, part=part)
            with autocast(device, amp):
                loss = task.loss(x, idx, device) if ddp is None else ddp(x, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
            global_step += 1
            seen += len(idx) if part is None else part[1]
            if not warmed:
                warmed = True
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                epoch_warm_s, epoch_warm_n = time.perf_counter() - t0, seen
            bar.update(1)
            if len(losses) % 25 == 0:  # .item() waits for the device
                bar.set_postfix(loss=f"{losses[-1].item():.3f}")
            if on_step is not None:
                on_step(global_step)
            if config.max_steps is not None and global_step >= config.max_steps:
                stopped = "max_steps"
                break
            over = budget > 0 and time.perf_counter() - t_begin > budget
            if budget > 0 and dist is not None:
                over = dist.any(over)  # every rank leaves at the same step
            if over:
                stopped = "time_budget"
                logger.info("time budget of %.1f min reached", config.max_minutes)
                break
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        images_seen += seen
        if seen > epoch_warm_n:  # an epoch of one step is all warm-up: timed whole
            warm_seconds += epoch_warm_s
            warm_images += epoch_warm_n
        else:
            epoch_warm_s, epoch_warm_n = 0.0, 0
        stacked = torch.stack(losses).float() if losses else None
        if stacked is not None and dist is not None:
            stacked = dist.mean(stacked)  # equal shares: the global batch's mean loss
        epoch_losses = stacked.cpu().tolist() if stacked is not None else []
        step_losses.extend(epoch_losses)
        epoch += 1
        if dist is None:
            metrics = task.evaluate(images, device, amp, config.eval_batch_size)
        else:
            # Every rank holds the same weights: rank 0 validates and tells the others, so
            # best epoch and early stopping are decided alike everywhere.
            metrics = dist.from_main(
                task.evaluate(images, device, amp, config.eval_batch_size) if main else None
            )
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            "images_per_s": _rate(seen - epoch_warm_n, seconds - epoch_warm_s),
            "seconds": seconds,
            "warmup_seconds": epoch_warm_s,
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
        if on_epoch_end is not None and main:
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
                "warmup_seconds": warm_seconds,
                "warmup_images": warm_images,
                "rng": _rng_state(),
            }
            on_epoch_end(record, state)
    if best_state is None:
        best_state = cpu_state_dict(model)
    if synced_bn:
        for m in modules.values():
            revert_batchnorm(m)
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
        images_per_second=_rate(images_seen - warm_images, train_seconds - warm_seconds),
        train_seconds=train_seconds,
        warmup_seconds=warm_seconds,
        stopped=stopped or "completed",
        device=str(device),
        val_metrics={k: float(v) for k, v in best_record.items() if k.startswith("val_")},
        numerics=numerics(device),
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
    dist: DistContext | None = None,
) -> FitResult:
    """Train an identity embedder with a margin head; early-stop on validation TAR@FAR.

    Parameters
    ----------
    model, head
        The embedder (``(N, 3, S, S)`` -> unit ``(N, D)``) and the head giving the loss from
        embeddings and labels (:func:`visage_ml.models.heads.create_head`).
    images
        ``(N, S, S, 3)`` uint8 faces, typically the decrypted crops of ``faces.sealed``.
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
    dist
        This process's place among torchrun's data-parallel processes
        (:func:`visage_ml.training.distributed.init_from_env`); ``None`` trains in this process
        alone. ``config.batch_size`` is then the global batch, split evenly among the
        processes; ``on_epoch_end`` is called on rank 0 only; every rank returns the result.
    """
    task = EmbedderTask(model, head, labels, val_rows, val_labels, far=val_far, seed=config.seed)
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
        dist=dist,
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
    task = DemographicTask(
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
