"""The data-key store: the subject's data key in ``privacy/keys`` (cryptographic erase).

Run first in the ``raw`` step. The key seals the subject's raw images, their chunks of the
processed crops and kept export bundles, so destroying it is the commit point of the erasure of
all of those, in every copy: the DVC cache, every remote, backups and clones the project cannot
reach hold ciphertext that no one can open any more (NIST SP 800-88 cryptographic erase). The
physical purge of the following steps is defence in depth.
"""

from __future__ import annotations

from visage_ml.rights.erasure.base import (
    Artefact,
    Context,
    Outcome,
    Plan,
    earlier_key_artefacts,
    file_artefact,
)

STORE = "keys"


def _has_keys(ctx: Context) -> bool:
    # Opening the key ring of a project that never had one would create it (and perhaps a
    # master key): without the folder there is nothing to destroy.
    return ctx.paths.data_keys.is_dir()


def plan(ctx: Context, pid: str) -> Plan:
    """The subject's wrapped data key and the copies of it killed writes left, hashed, and the
    versions of it master-key rotations replaced (sought as copies: a backup before holds one)."""
    if not _has_keys(ctx):
        return Plan()
    keys = ctx.core.data_keys
    return Plan(
        [file_artefact(ctx, STORE, p) for p in keys.files(pid)]
        + earlier_key_artefacts(ctx, STORE, keys.path(pid))
    )


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Destroy the subject's data key and its leftover copies (overwrite, fsync, unlink)."""
    if not _has_keys(ctx):
        return Outcome(info={"data_key": "none"})
    removed = ctx.core.data_keys.destroy_files(pid, erasure=True)
    artefacts = [{"store": STORE, "path": ctx.rel(p), "sha256": d} for p, d in removed.items()]
    return Outcome(artefacts, {"data_key": "destroyed" if removed or planned else "none"})


def verify(ctx: Context, pid: str) -> list[str]:
    """The subject's data key and its leftover copies, while they exist."""
    if not _has_keys(ctx):
        return []
    return [ctx.rel(p) for p in ctx.core.data_keys.files(pid)]
