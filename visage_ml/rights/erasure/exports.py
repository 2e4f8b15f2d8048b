"""The export-bundle store: the subject's access/portability bundles under ``privacy/exports``.

Driven from the ``processed`` step (its artefacts are recorded there, store ``exports``).
Bundles sealed under the subject's data key (``visage privacy seal``) are crypto-shredded by the
``raw`` step already; age-encrypted and plaintext ones are found through the owners index and
physically removed.
"""

from __future__ import annotations

from visage_ml.io import secure_unlink
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan, file_artefact
from visage_ml.rights.export import bundles_of, forget_owner

STORE = "exports"


def plan(ctx: Context, pid: str) -> Plan:
    """The subject's bundles, hashed."""
    return Plan([file_artefact(ctx, STORE, f) for f in bundles_of(ctx.paths, pid)])


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Overwrite and delete the subject's bundles."""
    found = bundles_of(ctx.paths, pid)
    for f in found:
        secure_unlink(f)
    forget_owner(ctx.paths, [f.name for f in found])
    return Outcome()


def verify(ctx: Context, pid: str) -> list[str]:
    """The subject's bundles that still exist."""
    return [ctx.rel(f) for f in bundles_of(ctx.paths, pid)]
