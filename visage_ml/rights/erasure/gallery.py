"""The gallery store: the subject's template and gallery key (:meth:`Gallery.erase`).

From the end of this step the subject is never matched again: a running server passes its own
open gallery, whose memory is updated at once.
"""

from __future__ import annotations

from visage_ml.io import secure_unlink, sha256_file
from visage_ml.privacy.sealed import was_path
from visage_ml.rights.erasure.base import (
    Artefact,
    Context,
    Outcome,
    Plan,
    earlier_key_artefacts,
    file_artefact,
)
from visage_ml.serving.gallery import ERASURE_REASON, KEYS_DIR, subject_files
from visage_ml.serving.pg_gallery import open_project_gallery

STORE = "gallery"


def plan(ctx: Context, pid: str) -> Plan:
    """The subject's template and key files, hashed (found without opening the gallery), and
    the versions of the key master-key rotations replaced."""
    key = ctx.paths.gallery / KEYS_DIR / f"{pid}.key"
    return Plan(
        [file_artefact(ctx, STORE, p) for p in subject_files(ctx.paths.gallery, pid)]
        + earlier_key_artefacts(ctx, STORE, key)
    )


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Remove the subject from the open gallery (or the files, when there is none on disk)."""
    gallery = ctx.gallery
    if gallery is None:
        gallery = open_project_gallery(ctx.paths, core=ctx.core, load=False, params=ctx.params)
    removed: dict[str, str] = {}
    if gallery is not None:
        removed = dict(gallery.erase(pid, reason=ERASURE_REASON).removed)
    # What is left: every file when no gallery is on disk (nothing can load them, they only
    # need to go), or the memory gallery's template of a project since switched to pgvector
    # (docs/deploy.md), which the shared gallery neither loads nor removes.
    for p in reversed(subject_files(ctx.paths.gallery, pid)):
        removed[ctx.rel(p)] = sha256_file(p)
        secure_unlink(p)
    # The names of the key's versions (a purge's, a rotation's), sought by this erasure: with no
    # gallery to erase through, nothing else removes them.
    secure_unlink(was_path(ctx.paths.gallery / KEYS_DIR / f"{pid}.key"))
    return Outcome([{"store": STORE, "path": k, "sha256": v} for k, v in removed.items()])


def verify(ctx: Context, pid: str) -> list[str]:
    """The subject's gallery files that still exist."""
    return [ctx.rel(p) for p in subject_files(ctx.paths.gallery, pid)]
