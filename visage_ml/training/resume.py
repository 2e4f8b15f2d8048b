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

logger = logging.getLogger(__name__)

# Code whose change makes an old resume checkpoint meaningless (part of its fingerprint), relative
# to the package: every module of the training loop, and the networks it trains.
CODE_FILES = (
    "training/batches.py",
    "training/config.py",
    "training/distributed.py",
    "training/loop.py",
    "training/tasks.py",
    "models/backbones.py",
    "models/heads.py",
    "models/demographic.py",
)


def code_hash() -> str:
    """SHA-256 of the training code that a resume checkpoint's tensors depend on."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in CODE_FILES:
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
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
    fp = fingerprint({**section, "code": code_hash()}, data_md5, seed=seed)
    folder = paths.models / "checkpoints" / kind
    return fp, folder, start_or_resume(folder, fp, clear_stale=clear_stale)
