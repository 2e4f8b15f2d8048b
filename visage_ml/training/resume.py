"""Which resume checkpoint fits a training run: its settings, data and training code.

A checkpoint saved after an epoch carries a fingerprint of the params section, the data md5,
the seed and the training code; a run resumes only from a checkpoint with its own fingerprint
and clears stale ones.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.models.checkpoint import clear_resume, fingerprint, load_resume, resume_files
from visage_ml.training.distributed import DistContext

logger = logging.getLogger(__name__)

MSG_RESUME_DISAGREES = (
    "rank {rank} found another resume checkpoint than rank 0 in models/checkpoints/{kind} "
    "(changed while starting?); run the stage again"
)

# Code whose change makes an old resume checkpoint meaningless (part of its fingerprint), relative
# to the package: every code dependency of the training stages in dvc.yaml (a folder: each of
# its modules). DVC re-runs a stage when one changes; had the checkpoint of a finished run
# survived that (a change of preprocess.py's mean, say), the run would resume at its last epoch,
# train nothing and release the old weights under the new preprocessing record.
CODE_PATHS = (
    "training",
    "models",
    "preprocess.py",
    "data/processed.py",
    "data/crops.py",
    "data/eval_population.py",
    "app/stages/_train_common.py",
    "app/stages/train_embedder.py",
    "app/stages/train_demographics.py",
)


# Settings of a section that change how a run executes, not what it computes: a checkpoint
# resumes across them (``compile`` runs the same networks through torch.compile).
HOW_ONLY = ("compile",)


def code_hash() -> str:
    """SHA-256 of the training code that a resume checkpoint's tensors depend on."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in CODE_PATHS:
        path = root / rel
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def start_or_resume(
    folder: Path, fingerprint: str, *, clear_stale: bool = True
) -> dict[str, Any] | None:
    """The matching resume state in ``folder``, or ``None`` after clearing stale ones.

    ``clear_stale`` False only reads (the data-parallel ranks other than 0, which must not
    delete files rank 0 manages)."""
    state = load_resume(folder, fingerprint=fingerprint)
    if clear_stale and state is None and resume_files(folder):
        clear_resume(folder)
    if state is None:
        logger.info("training from scratch (no matching resume checkpoint in %s)", folder)
    return state


def resume_point(
    paths: ProjectPaths,
    kind: str,
    section: Mapping[str, Any],
    data_md5: str,
    seed: int,
    *,
    clear_stale: bool = True,
) -> tuple[str, Path, dict[str, Any] | None]:
    """``(fingerprint, folder, state)`` of ``kind``'s resume checkpoints for these settings.

    The settings include ``distributed``: a checkpoint resumes only under the process count
    that wrote it (another count sums in another order, so "exactly from there" would not hold).
    """
    settings = {k: v for k, v in section.items() if k not in HOW_ONLY}
    fp = fingerprint({**settings, "code": code_hash()}, data_md5, seed=seed)
    folder = paths.models / "checkpoints" / kind
    return fp, folder, start_or_resume(folder, fp, clear_stale=clear_stale)


def shared_resume_point(
    paths: ProjectPaths,
    kind: str,
    section: Mapping[str, Any],
    data_md5: str,
    seed: int,
    *,
    ctx: DistContext | None,
) -> tuple[str, Path, dict[str, Any] | None]:
    """:func:`resume_point` for every process of a run (``ctx`` None: the only one).

    Rank 0 clears stale checkpoints before the other ranks read the folder; every rank must
    find the same checkpoint, since ranks that started from different epochs would wait for
    each other's collectives.

    Raises
    ------
    RuntimeError
        A rank found another checkpoint than rank 0 (the folder changed while starting).
    """
    if ctx is None:
        return resume_point(paths, kind, section, data_md5, seed)
    if ctx.is_main:
        point = resume_point(paths, kind, section, data_md5, seed)
    ctx.barrier()
    if not ctx.is_main:
        point = resume_point(paths, kind, section, data_md5, seed, clear_stale=False)
    resume = point[2]
    mine = None if resume is None else int(resume["epoch"])
    if ctx.from_main(mine) != mine:
        raise RuntimeError(MSG_RESUME_DISAGREES.format(rank=ctx.rank, kind=kind))
    return point
