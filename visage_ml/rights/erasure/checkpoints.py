"""The embedder's resume checkpoints: ``models/checkpoints/embedder`` (the training's margin head).

Driven from the ``processed`` step (its artefacts are recorded there, store ``models``). A resume
checkpoint holds the margin head with the rest of the training state: one row per training
identity, the centre of their embeddings, which with the released backbone identifies them as
well as a gallery template does; it is written in clear (``cache: false``, so DVC holds no
copy). Its fingerprint binds the crops it trained on, which the erasure of a training subject
changes, so it could not be resumed anyway; and whose rows its head holds cannot be told without
the data it trained on. Every file of the folder is overwritten and deleted (a save killed
before its rename leaves a temporary copy there too); a later training starts from scratch,
on data without the subject. The demographic net has no row per person: its checkpoints stay.

A file the training did not name (``epoch-0001.pt``, its temporary copy) was put there by hand
under a name someone chose, which may be the person's: recorded as ``~`` and a MAC of it
(:func:`~visage_ml.rights.erasure.base.chosen_names`); the purge takes what is in the folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from visage_ml.data.prepare import files_naming
from visage_ml.io import leftover_target, secure_unlink
from visage_ml.rights.erasure.base import (
    Artefact,
    Context,
    Outcome,
    Plan,
    chosen_names,
    file_artefact,
)

STORE = "models"
# models/checkpoints/<kind>, as the training stages write them (visage_ml.training.resume).
FOLDER = Path("checkpoints") / "embedder"
# The name of a resume checkpoint (visage_ml.models.checkpoint.save_resume, which needs torch).
RESUME_NAME = re.compile(r"epoch-\d{4,}\.pt")


def _training_made(name: str) -> bool:
    """Whether ``name`` is a checkpoint's the training wrote (or its temporary copy's)."""
    return RESUME_NAME.fullmatch(leftover_target(name) or name) is not None


def _files(ctx: Context) -> list[Path]:
    folder = ctx.paths.models / FOLDER
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.is_symlink())


def plan(ctx: Context, pid: str) -> Plan:
    """Every file of the embedder's resume-checkpoint folder, hashed (a name the training did
    not give keyed)."""
    under = ctx.rel(ctx.paths.models / FOLDER)
    return Plan(
        [
            chosen_names(ctx, file_artefact(ctx, STORE, f), under=under, made=_training_made)
            for f in _files(ctx)
        ]
    )


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Overwrite and delete them (with what an interrupted run planned and left: a keyed name
    matches no file, and the folder's scan finds it)."""
    found = {f.resolve() for f in _files(ctx)}
    found |= {(ctx.paths.root / a["path"]).resolve() for a in planned if a["store"] == STORE}
    for f in sorted(found):
        secure_unlink(f)
    return Outcome()


def verify(ctx: Context, pid: str) -> list[str]:
    """The checkpoints, while ``data/processed`` (the crops they trained on) holds the subject."""
    if not files_naming(ctx.paths.processed, pid):
        return []
    return [ctx.rel(f) for f in _files(ctx)]
