"""The identity-vault store: key, record and blind-index entry (cryptographic erase)."""

from __future__ import annotations

from pathlib import Path

from visage_ml.rights.erasure.base import (
    Artefact,
    Context,
    Outcome,
    Plan,
    earlier_key_artefacts,
    file_artefact,
)

STORE = "vault"


def _has_vault(ctx: Context) -> bool:
    # Opening the vault of a project that never had one would create its folder and a master
    # key: without a vault folder there is nothing to destroy.
    return ctx.paths.vault.is_dir()


def plan(ctx: Context, pid: str) -> Plan:
    """The vault's files that hold something of the subject, hashed, and the versions of its
    key master-key rotations replaced."""
    if not _has_vault(ctx):
        return Plan()
    vault = ctx.core.vault
    return Plan(
        [file_artefact(ctx, STORE, p) for p in vault.files_of(pid)]
        + earlier_key_artefacts(ctx, STORE, vault.keys.path(pid))
    )


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Destroy the subject's data key, record and index entry."""
    removed: dict[str, str] = {}
    if _has_vault(ctx):
        removed = ctx.core.vault.destroy(pid, erasure=True).removed
    return Outcome(
        [{"store": STORE, "path": ctx.rel(Path(k)), "sha256": v} for k, v in removed.items()]
    )


def verify(ctx: Context, pid: str) -> list[str]:
    """The vault's files that still hold something of the subject."""
    return [ctx.rel(p) for p in ctx.core.vault.files_of(pid)] if _has_vault(ctx) else []
