"""A torchrun worker for tests/unit/test_distributed.py: the tiny embedder run, data-parallel.

    python -m torch.distributed.run --standalone --nproc-per-node=2 dist_worker.py OUT MODE...

Each MODE trains the same tiny MobileFaceNet on the same fake faces as the single-process run
of the test (:func:`tiny_fit`) and rank 0 saves the result to ``OUT/MODE.pt``:

- ``sync``: the design (disjoint shares, batch norm over the global batch);
- ``nosync``: batch norm statistics per process;
- ``overlap``: a wrong sharding, every rank training on the first half of each global batch;
- ``resume``: stop after epoch 1 and resume from rank 0's saved state (as the stage does);
- ``fail``: rank 1 raises at its third step (the job must stop with that error, not hang).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fakes import fake_faces

from visage_ml.models.backbones import create_backbone
from visage_ml.models.heads import create_head
from visage_ml.training import distributed
from visage_ml.training.config import LoopConfig, seed_everything
from visage_ml.training.loop import fit_embedder

SIZE = 32
EPOCHS = 2
BATCH = 8
FAIL_AT_STEP = 3


class Float64(torch.nn.Module):
    """Runs ``inner`` in float64: summation order then moves results by ~1e-16, not ~1e-7.

    In float32, AdamW's first steps normalise every gradient entry (``g / sqrt(g*g)``), so an
    entry near zero whose sign the summation order flips moves by a whole learning rate:
    weights differ by ~lr after one step for reasons that have nothing to do with sharding.
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.double())


def tiny_fit(
    dist: distributed.DistContext | None,
    *,
    fp64: bool = True,
    threads: int = 1,
    epochs: int = EPOCHS,
    resume: dict[str, Any] | None = None,
    on_step: Any = None,
    **config: Any,
) -> dict[str, Any]:
    """Train the tiny embedder; the final weights, per-step losses and validation history."""
    torch.set_num_threads(threads)
    imgs, ids = fake_faces(10, 6, SIZE)
    train, val = np.where(ids >= 3)[0], np.where(ids < 3)[0]
    seed_everything(1)
    model = create_backbone("mobilefacenet", embedding_dim=32, input_size=SIZE)
    head = create_head("arcface", embedding_dim=32, num_classes=7, s=16.0, m2=0.2)
    if fp64:
        model, head = Float64(model), head.double()
    states: dict[int, dict[str, Any]] = {}
    result = fit_embedder(
        model,
        head,
        images=imgs,
        rows=train,
        labels=ids[train] - 3,
        val_rows=val,
        val_labels=ids[val],
        config=LoopConfig(
            epochs=epochs, batch_size=BATCH, lr=3e-3, progress=False, seed=5, device="cpu", **config
        ),
        resume=resume,
        on_epoch_end=lambda rec, st: states.update({rec["epoch"]: st}),
        on_step=on_step,
        dist=dist,
    )
    final = states[max(states)] if states else None
    return {
        "weights": None if final is None else final["modules"],
        "states": states,
        "step_losses": result.step_losses,
        "val_tar": [h.get("val_tar") for h in result.history],
        "history": result.history,
        "best_metric": result.best_metric,
    }


def _overlapping(self: distributed.DistContext, idx: np.ndarray) -> tuple[np.ndarray, int]:
    per = len(idx) // self.world_size
    return idx[:per], 0  # every rank the same first share: half the batch twice


def main(out: Path, modes: list[str]) -> None:
    torch.set_num_threads(1)
    for mode in modes:
        ctx = distributed.init_from_env(
            device="cpu", backend="gloo", timeout_s=60, sync_batchnorm=mode != "nosync"
        )
        result: dict[str, Any]
        if mode == "overlap":
            original = distributed.DistContext.shard
            distributed.DistContext.shard = _overlapping  # type: ignore[method-assign]
            try:
                result = tiny_fit(ctx)
            finally:
                distributed.DistContext.shard = original  # type: ignore[method-assign]
        elif mode == "resume":
            first = tiny_fit(ctx, epochs=1)
            # Rank 0 alone saw the state (on_epoch_end); the stage's ranks read its file.
            state = ctx.from_main(first["states"][1] if ctx.is_main else None)
            result = tiny_fit(ctx, resume=state)
        elif mode == "fail":

            def on_step(step: int, rank: int = ctx.rank) -> None:
                if rank == 1 and step == FAIL_AT_STEP:
                    raise RuntimeError("rank 1 failed on purpose")

            result = tiny_fit(ctx, on_step=on_step)
        elif mode == "fp32":
            result = tiny_fit(ctx, fp64=False)
        elif mode.startswith("steps"):
            result = tiny_fit(ctx, max_steps=int(mode[5:]))
        else:
            result = tiny_fit(ctx)
        if ctx.is_main:
            torch.save({k: v for k, v in result.items() if k != "states"}, out / f"{mode}.pt")
        ctx.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)(Path(sys.argv[1]), sys.argv[2:])
