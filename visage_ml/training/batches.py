"""The data path of the training loops (no file I/O).

A background thread gathers uint8 batches from the face array by index into reusable (pinned, on
CUDA) buffers; the batch is copied to the device without blocking, and augmentation (random
crop/scale, flip, colour jitter) and standardisation run batched on the device.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visage_ml.preprocess import standardize
from visage_ml.training.config import SAMPLINGS, AugmentConfig


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
    batch: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    *,
    part: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Augment and standardise an ``(N, H, W, 3)`` uint8 batch; returns ``(N, 3, H, W)`` float.

    Random numbers come from ``generator`` (a CPU generator, so results do not depend on the
    device); the image work runs on the batch's device. The result is channels-last in memory.
    ``part`` ``(offset, total)`` says that ``batch`` is images ``offset .. offset + N`` of a
    global batch of ``total`` (one process's share in data-parallel training): the draws are
    made for the whole global batch and this share takes its slice, so each image is augmented
    exactly as one process augmenting the global batch would.
    """
    n = batch.shape[0]
    offset, total = part if part is not None else (0, n)
    if offset < 0 or offset + n > total:
        raise ValueError(f"part {part} does not hold a batch of {n} images")

    def draw(*shape: int) -> torch.Tensor:
        values = torch.rand(total, *shape, generator=generator)
        return values if part is None else values[offset : offset + n]

    dev = batch.device
    x = batch.permute(0, 3, 1, 2).float()
    lo, hi = cfg.crop_scale
    flip = (draw() < 0.5) if cfg.flip else torch.zeros(n, dtype=bool)
    if lo < 1.0:
        area = lo + (hi - lo) * draw()
        side = area.sqrt()
        shift = (draw(2) * 2 - 1) * (1 - side)[:, None]
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
        factors = to_device(1 - j + 2 * j * draw(3), dev)
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


def eval_batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
