"""Start a training stage in several torchrun processes on this host, and check it can be.

The parent side of data-parallel training (``distributed.nproc`` > 1): the stage's own process
checks the settings, starts ``nproc`` workers of the same module under torchrun and waits;
:mod:`visage_ml.training.distributed` is what each worker then runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from visage_ml.config import DistributedParams
from visage_ml.privacy.keys import MASTER_KEY_ENV
from visage_ml.procenv import child_env
from visage_ml.training.config import resolve_device
from visage_ml.training.distributed import (
    MSG_TOO_FEW_GPUS,
    DistContext,
    check_global_batch,
    init_from_env,
    worker_env,
)

logger = logging.getLogger(__name__)

MSG_WORKERS_FAILED = (
    "distributed training failed: {failures}. Each failed process's error is in the log above "
    "(torchrun stopped the others). Fix it and run again; the run resumes from the last "
    "finished epoch when params, data and code are unchanged"
)
MSG_WORLD_MISMATCH = (
    "torchrun started {world} processes but train_embedder.distributed.nproc is {nproc}; set "
    "nproc to {world} (the stage starts torchrun itself when nproc > 1: run it plainly)"
)


class WorkersFailedError(RuntimeError):
    """A torchrun worker of a training stage failed (the job was stopped)."""


def torch_gpus(device: str) -> int | None:
    """How many GPUs a run on ``device`` would use processes on (``None``: the CPU)."""
    return torch.cuda.device_count() if resolve_device(device).type == "cuda" else None


def check_launch(*, batch_size: int, nproc: int, device: str) -> None:
    """Refuse, before any process starts, a batch ``nproc`` does not divide or too few GPUs.

    Raises
    ------
    ValueError
        ``batch_size`` is not a multiple of ``nproc``, or ``device`` is a GPU and this host has
        fewer than ``nproc`` of them.
    """
    check_global_batch(batch_size, nproc)
    gpus = torch_gpus(device)
    if gpus is not None and nproc > gpus:
        raise ValueError(MSG_TOO_FEW_GPUS.format(world=nproc, gpus=gpus))


def join_run(d: DistributedParams, *, device: str) -> DistContext | None:
    """This process's place in a run of ``d.nproc`` processes: ``None`` when it is the only
    one, else its context in torchrun's process group (joined here).

    Raises
    ------
    ValueError
        torchrun started another number of processes than ``d.nproc``.
    """
    place = worker_env()
    world = place[1] if place is not None else 1
    if world != d.nproc:
        raise ValueError(MSG_WORLD_MISMATCH.format(world=world, nproc=d.nproc))
    if world <= 1:
        return None
    return init_from_env(
        device=device,
        backend=d.backend,
        timeout_s=d.timeout_s,
        sync_batchnorm=d.sync_batchnorm,
    )


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """This process's environment replaced by ``values`` while the block runs (torchrun's
    workers inherit it), then restored."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def launch_workers(module: str, *, nproc: int, root: Path) -> None:
    """Run ``python -m module`` in ``nproc`` torchrun processes on this host; wait for them.

    The same as ``torchrun --standalone --nproc-per-node=nproc -m module`` with the project at
    ``root`` (``$VISAGE_PROJECT``) and ``OMP_NUM_THREADS`` = cores / nproc unless set. The
    workers inherit this environment without its secrets (:func:`visage_ml.procenv.child_env`)
    but the master key: each decrypts the sealed crops into its own memory, as the single
    process does. A worker that fails stops the job
    (torchrun terminates the others) and raises :class:`WorkersFailedError`.
    """
    # Heavy optional dependency: torch's launcher (elastic agent), only for nproc > 1.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    argv = ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", module]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    logger.info("starting %d processes: torchrun %s", nproc, " ".join(argv))
    # The workers' environment: this one without secrets but the master key they decrypt with.
    env = child_env(
        {"VISAGE_PROJECT": str(root), "OMP_NUM_THREADS": threads}, keep=(MASTER_KEY_ENV,)
    )
    # torchrun's agent keeps its workers' error files in a folder of its own, which it made
    # in the temporary folder and left there at every run; here one of ours, removed after.
    with _environ(env), tempfile.TemporaryDirectory(prefix="visage-torchrun-") as logs:
        try:
            torchrun(parse_args([f"--log-dir={logs}", *argv]))
        except ChildFailedError as exc:
            failures = ", ".join(
                f"rank {rank} exit code {f.exitcode}" for rank, f in sorted(exc.failures.items())
            )
            raise WorkersFailedError(MSG_WORKERS_FAILED.format(failures=failures)) from exc
