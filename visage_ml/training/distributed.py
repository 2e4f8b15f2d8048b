"""Data-parallel training across processes (torchrun DDP): process group, shards, synced BN.

One process per device; every process builds the same global batch from the same seeds and
trains on its own contiguous, disjoint share of it (``batch / world`` images); DDP averages the
gradients, so each optimizer step sees the gradient of the global batch's mean loss, as one
process would. Batch norm is synchronised (the statistics of the global batch) unless switched
off: torch's ``SyncBatchNorm`` on CUDA, :class:`CrossRankBatchNorm` on the CPU, where torch's
refuses to run. With it the only difference from one process is the order of floating-point
sums (tests/unit/test_distributed.py states the tolerance that follows).

Seeds: every rank seeds alike (model initialisation, batch order, augmentation draws), so all
ranks agree on each global batch; a rank augments its images with its slice of the draws one
process makes for the whole batch. DDP broadcasts rank 0's weights when it wraps the model.

Nothing happens on import; :func:`init_from_env` joins the process group that ``torchrun``
describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from visage_ml.training.config import resolve_device

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "gloo", "nccl")
MSG_INDIVISIBLE = (
    "the global batch of {batch} images does not split evenly among {world} processes; set "
    "batch_size to a multiple of distributed.nproc ({world}) so every process trains on "
    "batch_size / nproc images, or change nproc"
)
MSG_TOO_FEW_GPUS = (
    "distributed.nproc asks for {world} processes on CUDA but this machine has {gpus} GPU(s); "
    "set distributed.nproc to at most {gpus}, or device: cpu to train on the CPU with gloo"
)
MSG_NCCL_CPU = (
    "backend nccl needs CUDA devices, but training runs on the CPU; set distributed.backend to "
    "auto or gloo"
)
MSG_NOT_TORCHRUN = (
    "this process is not one of torchrun's workers (RANK / WORLD_SIZE / LOCAL_RANK are not "
    "set); start it with `torchrun --standalone --nproc-per-node=N ...`"
)


def worker_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` that torchrun set for this process, else ``None``."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))


def check_global_batch(batch_size: int, world_size: int, *, n_images: int | None = None) -> int:
    """The per-process batch ``batch / world``; a clear ``ValueError`` when it does not divide.

    ``n_images`` (the training rows) caps the global batch as
    :func:`~visage_ml.training.batches.epoch_batches` does: fewer images than ``batch_size``
    make one batch of all of them, which must divide too.
    """
    batch = min(batch_size, n_images) if n_images is not None else batch_size
    if world_size < 1 or batch % world_size:
        raise ValueError(MSG_INDIVISIBLE.format(batch=batch, world=world_size))
    return batch // world_size


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``nccl`` on CUDA, ``gloo`` on the CPU; nccl on the CPU is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(MSG_NCCL_CPU)
    return backend


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str = "gloo"
    sync_batchnorm: bool = True

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, outputs, metrics and MLflow."""
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> tuple[np.ndarray, int]:
        """This rank's contiguous share of the global batch ``idx`` and its offset in it.

        Shares are disjoint and together are the whole batch, in order; the offset tells the
        augmentation which of the global batch's random draws are this rank's.
        """
        per = check_global_batch(len(idx), self.world_size)
        lo = self.rank * per
        return idx[lo : lo + per], lo

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over the ranks (element-wise; equal shares give the global
        mean of per-rank means)."""
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a collective stop decision)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable values, e.g. validation metrics)."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank is here (bounded by the process group's timeout)."""
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()


def init_from_env(
    *,
    device: str = "auto",
    backend: str = "auto",
    timeout_s: float = 600.0,
    sync_batchnorm: bool = True,
) -> DistContext:
    """Join the process group torchrun describes in the environment; return this rank's context.

    CUDA ranks use GPU ``LOCAL_RANK``. ``timeout_s`` bounds every collective: a rank that hangs
    or dies makes the others fail with a timeout instead of waiting forever (torchrun also stops
    the survivors as soon as one worker exits with an error).
    """
    place = worker_env()
    if place is None:
        raise RuntimeError(MSG_NOT_TORCHRUN)
    rank, world, local_rank = place
    dev = resolve_device(device)
    if dev.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise ValueError(MSG_TOO_FEW_GPUS.format(world=world, gpus=gpus))
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    chosen = resolve_backend(backend, dev)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if chosen == "nccl":
            kwargs["device_id"] = dev  # eager NCCL init: a bad device fails here, not later
        dist.init_process_group(
            chosen,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
    logger.info("rank %d of %d on %s (%s)", rank, world, dev, chosen)
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=dev,
        backend=chosen,
        sync_batchnorm=sync_batchnorm,
    )


def shutdown() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# batch norm over the global batch
# ---------------------------------------------------------------------------------------------


class _SumAcrossRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` with its gradient: the gradient of a sum over ranks is the sum of
    every rank's gradient (the same all-reduce backwards)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = grad.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def differentiable_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, differentiable (see :class:`_SumAcrossRanks`)."""
    return _SumAcrossRanks.apply(tensor)


class CrossRankBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch across all ranks.

    torch's ``SyncBatchNorm`` runs on GPUs only; this is its CPU (gloo) counterpart: the sum,
    then the centred sum of squares (two passes, as accurate as one process's) are all-reduced
    with differentiable collectives, so the backward pass carries every rank's share of the
    gradient through the shared statistics. In evaluation mode, or outside a process group, it
    is plain batch norm. State dict keys are batch norm's.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_initialized() and dist.get_world_size() > 1
        ):  # evaluation, or a single process: batch norm as usual
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local = input.numel() // input.size(1)
        head = torch.cat([input.sum(dims), input.new_tensor([float(local)])])
        total = differentiable_all_reduce(head)
        count = total[-1].detach()
        mean = total[:-1] / count
        centred = input - mean.view(shape)
        var = differentiable_all_reduce((centred * centred).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return out


def _swap_bn(parent: nn.Module, name: str, old: _BatchNorm, cls: type[_BatchNorm]) -> None:
    new = cls(
        old.num_features,
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
        device="meta",
    )
    # The very same parameters and buffers: an optimizer built on them keeps working.
    if old.affine:
        new.weight, new.bias = old.weight, old.bias
    new.running_mean, new.running_var = old.running_mean, old.running_var
    new.num_batches_tracked = old.num_batches_tracked
    new.train(old.training)
    new._visage_bn_class = getattr(old, "_visage_bn_class", type(old))  # type: ignore[assignment]
    setattr(parent, name, new)


def convert_batchnorm(module: nn.Module, *, cuda: bool) -> int:
    """Replace, in place, every batch norm below ``module`` by its synchronised form.

    ``SyncBatchNorm`` on CUDA, :class:`CrossRankBatchNorm` on the CPU; parameters and buffers
    are shared, not copied. Returns how many layers were replaced (``module`` itself must not
    be a batch norm). :func:`revert_batchnorm` undoes it.
    """
    target: type[_BatchNorm] = nn.SyncBatchNorm if cuda else CrossRankBatchNorm
    count = 0
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(
            child, nn.SyncBatchNorm | CrossRankBatchNorm
        ):
            _swap_bn(module, name, child, target)
            count += 1
        else:
            count += convert_batchnorm(child, cuda=cuda)
    return count


def revert_batchnorm(module: nn.Module) -> int:
    """Put back, in place, the batch norm classes :func:`convert_batchnorm` replaced."""
    count = 0
    for name, child in module.named_children():
        original = getattr(child, "_visage_bn_class", None)
        if isinstance(child, _BatchNorm) and original is not None:
            _swap_bn(module, name, child, original)
            delattr(getattr(module, name), "_visage_bn_class")
            count += 1
        else:
            count += revert_batchnorm(child)
    return count


class _LossModule(nn.Module):
    """The task's modules under one parent, so DDP sees and all-reduces all their gradients."""

    def __init__(self, task: Any, modules: Mapping[str, nn.Module], device: torch.device):
        super().__init__()
        self.parts = nn.ModuleDict(dict(modules))
        self._task = task
        self._device = device

    def forward(self, x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return self._task.loss(x, idx, self._device)


def wrap_task(task: Any, modules: Mapping[str, nn.Module], ctx: DistContext) -> nn.Module:
    """A DDP module whose ``forward(x, idx)`` is ``task.loss`` with gradients all-reduced.

    With synchronised batch norm the running statistics agree on every rank, so buffers are
    not broadcast each step; without it rank 0's are (DDP's default).
    """
    step = _LossModule(task, modules, ctx.device)
    return DistributedDataParallel(
        step,
        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        forward_sync_buffers=not ctx.sync_batchnorm,
        gradient_as_bucket_view=True,
    )
