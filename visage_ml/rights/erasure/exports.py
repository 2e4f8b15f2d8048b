"""The export-bundle store: the subject's access/portability bundles under ``privacy/exports``.

Driven from the ``processed`` step (its artefacts are recorded there, store ``exports``).
Bundles sealed under the subject's data key (``visage privacy seal``) are crypto-shredded by the
``raw`` step already; age-encrypted and plaintext ones are found through the owners index and
physically removed. A bundle is recorded by its name when the export named it
(``<request id>.zip.age``); one written under another name (``--out``) by ``~`` and a MAC of
it (:func:`~visage_ml.rights.erasure.base.chosen_names`): the name may be the person's.
"""

from __future__ import annotations

from visage_ml.io import secure_unlink
from visage_ml.privacy.requests import REQUEST_ID_RE
from visage_ml.rights.erasure.base import (
    Artefact,
    Context,
    Outcome,
    Plan,
    chosen_names,
    file_artefact,
)
from visage_ml.rights.export import EXPORTS_DIR, bundles_of, forget_owner

STORE = "exports"
# What an export appends to the request id in the name of a bundle it keeps.
BUNDLE_SUFFIXES = frozenset({".zip", ".zip.age", ".zip.sealed"})


def _export_made(name: str) -> bool:
    """Whether ``name`` is one an export gives a bundle: its request id and suffix."""
    rid, dot, suffix = name.partition(".")
    return REQUEST_ID_RE.fullmatch(rid) is not None and dot + suffix in BUNDLE_SUFFIXES


def plan(ctx: Context, pid: str) -> Plan:
    """The subject's bundles, hashed."""
    under = ctx.rel(ctx.paths.root / EXPORTS_DIR)
    return Plan(
        [
            chosen_names(ctx, file_artefact(ctx, STORE, f), under=under, made=_export_made)
            for f in bundles_of(ctx.paths, pid)
        ]
    )


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
