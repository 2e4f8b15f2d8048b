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
"""

from __future__ import annotations

from pathlib import Path

from visage_ml.data.prepare import files_naming
from visage_ml.io import secure_unlink
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan, file_artefact

STORE = "models"
# models/checkpoints/<kind>, as the training stages write them (visage_ml.training.resume).
FOLDER = Path("checkpoints") / "embedder"


def _files(ctx: Context) -> list[Path]:
    folder = ctx.paths.models / FOLDER
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.is_symlink())


def plan(ctx: Context, pid: str) -> Plan:
    """Every file of the embedder's resume-checkpoint folder, hashed."""
    return Plan([file_artefact(ctx, STORE, f) for f in _files(ctx)])


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Overwrite and delete them (with what an interrupted run planned and left)."""
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
