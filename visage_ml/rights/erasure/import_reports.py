"""The import reports: ``privacy/imports/import-*.json`` without the erased person's lines.

A report names the files an import did not take by their path in the source tree, where a
folder or a file name is the person's reference (:mod:`visage_ml.data.importers.reports`): one
that refused a photograph of someone it imported names them in clear. The lines that name the
subject are rewritten without their path and detail (their reason code stays, so the counts
still add up); so are those naming anyone erased before (an older erasure left them), asked of
the tombstones.

Run in the ``vault`` step, after the tombstone and before the vault store: the reference is read
from the vault record before it is destroyed. :func:`verify` asks the tombstones, so it finds a
line naming any erased person. A later import of their folder writes none: it counts the files
it refuses as ``erased_subject`` without their path (:mod:`visage_ml.data.importers.result`).

A report is recorded by the name the import gave it (``import-<time>.json``); one renamed by
hand by ``~`` and a MAC of its name (:func:`~visage_ml.rights.erasure.base.chosen_names`): the
name may be the person's. The rewrite takes the reports the folder holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from visage_ml.data.importers.common import IMPORTS_DIR
from visage_ml.data.importers.reports import Names, redact_reports, reports_naming
from visage_ml.privacy.tombstones import normalise_ref
from visage_ml.rights.erasure.base import (
    Artefact,
    Context,
    Outcome,
    Plan,
    chosen_names,
    file_artefact,
)

STORE = "imports"
# The name an import gives its report (visage_ml.data.importers.result.write_report).
REPORT_NAME = re.compile(r"import-\d{8}T\d{6}Z(?:-\d+)?\.json")


def _import_made(name: str) -> bool:
    """Whether ``name`` is one an import gives its report."""
    return REPORT_NAME.fullmatch(name) is not None


def _ref(ctx: Context, pid: str) -> str | None:
    if not (ctx.paths.vault.is_dir() and pid in ctx.core.vault):
        return None
    try:
        ref = ctx.core.vault.get(pid).get("external_ref")
    except KeyError:
        return None
    return str(ref) if ref else None


def _names(ctx: Context, ref: str | None) -> Names:
    """Whether a line's references name the subject (``ref``) or anyone erased before."""
    own = normalise_ref(ref) if ref else None
    tombstones = ctx.core.tombstones

    def names(refs: Iterable[str]) -> bool:
        refs = list(refs)
        if own is not None and any(normalise_ref(r) == own for r in refs):
            return True
        return any(tombstones.has_ref(r) for r in refs)

    return names


def plan(ctx: Context, pid: str) -> Plan:
    """The reports with a line naming the subject (or anyone erased), hashed; the reference is
    kept in memory for :func:`erase`, never recorded."""
    ref = _ref(ctx, pid)
    found = reports_naming(ctx.paths, _names(ctx, ref))
    under = ctx.rel(ctx.paths.privacy / IMPORTS_DIR)
    return Plan(
        [
            chosen_names(ctx, file_artefact(ctx, STORE, f), under=under, made=_import_made)
            for f in found
        ],
        state=ref,
    )


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Rewrite the reports without those lines (a resumed run finds the subject through their
    tombstone, written before in this step)."""
    ref = plan.state if plan is not None else _ref(ctx, pid)
    redact_reports(ctx.paths, _names(ctx, ref))
    return Outcome()


def verify(ctx: Context, pid: str) -> list[str]:
    """Reports that still name an erased person."""
    found = reports_naming(ctx.paths, _names(ctx, None))
    return [ctx.rel(f) for f in found]
