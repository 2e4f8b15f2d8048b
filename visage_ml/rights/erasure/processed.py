"""The ``data/processed`` store: the prepare outputs without the subject, and their DVC copies.

``privacy.processed_on_erasure`` says how: ``purge`` takes the subject out of the files in place
(:func:`visage_ml.data.prepare.purge_subject`), ``rebuild`` runs the prepare step again from
``data/raw`` without them (``dvc repro prepare`` in a DVC repository, else
:func:`visage_ml.data.prepare.prepare` in this process). Versions of the outputs that DVC may
hold (``cache: true``, ``dvc commit``, a push) are purged by hash like raw objects; a stale
``dvc.lock`` naming them does not keep them. Temporary files an interrupted ``prepare`` (or
purge) left hold anyone's crops: they are deleted too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from visage_ml import dvcops
from visage_ml.data.prepare import (
    FACES_FILE,
    PROCESSED_FILES,
    files_naming,
    leftover_files,
    prepare,
    purge_subject,
)
from visage_ml.io import md5_file, secure_unlink
from visage_ml.rights import dvc_objects
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan, file_artefact

STORE = "data"
REBUILD = "rebuild"
MSG_PREPARE_FAILED = (
    "rebuilding data/processed without the subject failed: {error}; fix the cause and run "
    "`visage privacy resume`"
)


@dataclass
class _Found:
    """What erase needs from the plan beyond its artefacts."""

    stores: list[dvc_objects.ObjectStore] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    outputs: bool = False
    faces_before: str | None = None


def plan(ctx: Context, pid: str) -> Plan:
    """Outputs naming the subject, DVC copies of their versions, leftovers; all hashed."""
    root = ctx.paths.root
    files = files_naming(ctx.paths.processed, pid)
    found = [file_artefact(ctx, STORE, f, md5=True) for f in files]
    faces = [a for a in found if a["path"].endswith(FACES_FILE)]
    previous = ctx.planned.get("processed", [])
    old_md5s = {a["md5"] for a in [*previous, *found] if a.get("md5")}
    stores = ctx.dvc_setup().stores if ctx.is_dvc else []
    # An object with the md5 of a file hashed above has its content: reuse its SHA-256
    # rather than read another 100 MB per store.
    known = {a["md5"]: (a["sha256"], a["size"]) for a in found}
    for store in stores:
        for md5 in sorted(old_md5s):
            with contextlib.suppress(OSError):
                if store.exists(md5):
                    digest, size = known.get(md5) or store.sha256(md5)
                    found.append(
                        {
                            "store": "dvc-" + store.name,
                            "path": store.display(md5, root),
                            "md5": md5,
                            "sha256": digest,
                            "size": size,
                        }
                    )
    leftovers = leftover_files(ctx.paths.processed)
    found.extend(file_artefact(ctx, STORE, f) for f in leftovers)
    state = _Found(
        stores=list(stores),
        leftovers=leftovers,
        outputs=bool(files),
        faces_before=faces[0]["md5"] if faces else None,
    )
    return Plan(found, {"mode": ctx.params.privacy.processed_on_erasure}, state=state)


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Purge or rebuild the outputs, then delete DVC copies of versions no longer current."""
    state: _Found = plan.state if plan is not None else _Found()
    processed = ctx.paths.processed
    mode = ctx.params.privacy.processed_on_erasure
    for f in state.leftovers:
        secure_unlink(f)
    if state.outputs:
        if mode == REBUILD:
            _rebuild(ctx)
        else:
            purge_subject(processed, pid)
    by_name = {"dvc-" + s.name: s for s in state.stores}
    in_dvc = [a for a in planned if a["store"] in by_name]
    faces = state.faces_before is not None
    # md5 of what the outputs hold now (the crops: 140 MB), only when something asks.
    now = (
        {n: md5_file(processed / n) for n in PROCESSED_FILES if (processed / n).is_file()}
        if in_dvc or faces
        else {}
    )
    for a in in_dvc:
        if a["md5"] not in now.values():
            by_name[a["store"]].remove(a["md5"])
    after = now.get(FACES_FILE) if faces else None
    return Outcome(
        info={
            "mode": mode,
            "processed_md5_before": state.faces_before,
            "processed_md5_after": after,
        }
    )


def _rebuild(ctx: Context) -> None:
    """``dvc repro prepare`` (DVC runs the pipeline), or :func:`prepare` here outside DVC.

    Either re-reads ``data/raw`` and the consent snapshot, which no longer hold the subject.
    """
    if dvcops.is_dvc_repo(ctx.paths.root):
        dvcops.run_dvc(ctx.paths.root, "repro", "prepare")
        return
    try:
        prepare(ctx.paths, ctx.params)
    except (FileNotFoundError, ValueError) as exc:
        raise RuntimeError(MSG_PREPARE_FAILED.format(error=exc)) from exc


def verify(ctx: Context, pid: str) -> list[str]:
    """The outputs in ``data/processed`` that still name the subject."""
    return [ctx.rel(f) for f in files_naming(ctx.paths.processed, pid)]
