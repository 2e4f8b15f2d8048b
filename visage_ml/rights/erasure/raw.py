"""The ``data/raw`` store: the subject's files and table rows, through :class:`RawStore`.

The subject leaves ``data/raw`` in one raw-store transaction (under its lock); in a DVC
repository ``dvc add`` then records the new ``.dir`` md5, in this process and under the same
lock. The MD5 of each removed file (DVC's object name) is planned with its SHA-256: the DVC step
purges those objects.

A file in clear in the subject's folder (any but a sealed ``.sealed`` one: a PNG of a project
not yet sealed by ``visage privacy seal``, ``rawstore.PLAIN_EXTS``, or a copy under another
name, as the DVC step takes them) is planned by its path alone (``"sha256": None``, ``content``
:data:`~visage_ml.rights.content_hashes.PLAINTEXT_WITHHELD`, no MD5): its hashes are those of a
photograph of the subject. Its SHA-256 goes to the tombstones instead (an import of it is
refused, a copy elsewhere is still found), and the DVC step finds its objects through the
``.dir`` manifests that list it.

An import names each file by its image id (``<image id>.sealed``, ``.png`` before sealing); a
file placed there by hand keeps the name someone gave it, which may be the person's: the plan
records such a name (a folder's too) as ``~`` and a MAC of it
(:func:`~visage_ml.rights.erasure.base.chosen_names`, :func:`recorded_name`), and so does the
DVC step for the objects of a file in clear. The removal takes the whole folder, whatever the
plan names.

The LFW pairs protocol (``data/protocols/lfw_pairs.parquet``) names images of ``data/raw``: its
rows naming the subject's images are removed in the same transaction, after the swap and before
the lock is released (:meth:`RawTransaction.then`, where the import writes it), the table
replaced atomically. It is planned, hashed and certified like ``images.parquet``; in a DVC
repository ``data/protocols`` is added again, so the DVC step can purge the old table's object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from visage_ml import dvcops
from visage_ml.data.importers import drop_lfw_pairs, lfw_pairs_file, lfw_pairs_naming
from visage_ml.data.rawstore import (
    IMAGE_EXT,
    IMAGE_ID_RE,
    PLAIN_EXTS,
    RawStore,
    dvc_file,
    read_images,
)
from visage_ml.io import sha256_sized
from visage_ml.rights import dvc_objects
from visage_ml.rights.erasure.base import (
    Artefact,
    Context,
    Outcome,
    Plan,
    chosen_names,
    chosen_path,
    file_artefact,
    withheld_artefact,
)
from visage_ml.rights.erasure.tombstone import png_sizes

STORE = "data"
STEP = "raw"  # the orchestrator's step this store belongs to (its plan holds the image ids)
MSG_DVC_ADD = (
    "data/raw no longer holds the subject but `dvc add {target}` failed; fix DVC and run "
    "`visage privacy resume`: {error}"
)
# What an import appends to an image id in a subject's folder: sealed, or in clear before
# `visage privacy seal`.
RAW_SUFFIXES = frozenset({IMAGE_EXT, *PLAIN_EXTS})


def raw_made(name: str) -> bool:
    """Whether ``name`` is one an import gives a file of a subject's folder: its image id and
    suffix (any other was chosen by whoever put the file there)."""
    stem, dot, suffix = name.partition(".")
    return IMAGE_ID_RE.fullmatch(stem) is not None and (dot + suffix).lower() in RAW_SUFFIXES


def recorded_name(ctx: Context, pid: str) -> Callable[[str], str]:
    """How a path under the subject's folder is recorded (``data/raw/<pid>/...`` or a DVC
    manifest's ``<pid>/...``): each name after the pid that an import did not make keyed."""

    def name(path: str) -> str:
        parts = path.split("/")
        if pid not in parts[:-1]:
            return path
        under = "/".join(parts[: parts.index(pid) + 1])
        return chosen_path(ctx, path, under=under, made=raw_made)

    return name


def tracked_md5(ctx: Context) -> str | None:
    """The ``.dir`` md5 that ``data/raw.dvc`` records now (None outside DVC)."""
    return dvcops.tracked_md5(ctx.paths.root, ctx.paths.raw)


def _image_ids(pid: str, paths: Iterable[str | Path]) -> set[str]:
    """Image ids of the subject's files among ``paths`` (``.../<pid>/<image_id>.<ext>``)."""
    out = set()
    for p in map(Path, paths):
        stem = p.name.split(".")[0]
        if p.parent.name == pid and IMAGE_ID_RE.fullmatch(stem):
            out.add(stem)
    return out


def subject_image_ids(ctx: Context, pid: str, files: Iterable[Path] = ()) -> set[str]:
    """The subject's image ids: their ``images.parquet`` rows, ``files`` and what was planned.

    The plan recorded in the ledger keeps them once ``data/raw`` has forgotten them (a resumed
    erasure, a verification afterwards).
    """
    images = read_images(ctx.paths.raw)
    ids = set(images.loc[images["pid"].astype(str) == pid, "image_id"].astype(str))
    ids |= _image_ids(pid, files)
    ids |= _image_ids(pid, (a.get("path", "") for a in ctx.planned.get(STEP, [])))
    return ids


def plan(ctx: Context, pid: str) -> Plan:
    """The subject's files and the tables naming them, each with SHA-256 and MD5, except
    plaintext images (path only).

    A sealed image is named by its ciphertext alone. The SHA-256 of its PNG (as
    ``images.parquet`` records it), by which a plaintext copy elsewhere is found (an MLflow
    artefact), goes to the tombstones, not to the plan: anything the ledger and the
    certificate keep of it, even keyed, would let a photograph of the subject find the pid
    (:mod:`visage_ml.rights.content_hashes`). A file in clear in the subject's folder
    (whatever its extension) is that photograph: it is planned without any hash, and its
    SHA-256 goes to the tombstones too.
    """
    store = RawStore(ctx.paths, core=ctx.core, track=False)
    files = store.files_of(pid)
    folder = ctx.paths.raw / pid
    under = ctx.rel(folder)
    found: list[Artefact] = []
    plain_files: list[str] = []
    sizes: dict[str, int] = {}
    for f in files:
        # Whatever is not sealed there: the rule by which the DVC step takes its objects.
        if folder in f.parents and dvc_objects.is_plaintext_entry(f.name):
            sha, size = sha256_sized(f)
            plain_files.append(sha)
            sizes[sha] = size
            art = withheld_artefact(ctx, STORE, f)
        else:
            art = file_artefact(ctx, STORE, f, md5=True)
        found.append(chosen_names(ctx, art, under=under, made=raw_made))
    if lfw_pairs_naming(ctx.paths, subject_image_ids(ctx, pid, files)):
        found.append(file_artefact(ctx, STORE, lfw_pairs_file(ctx.paths), md5=True))
    images = read_images(ctx.paths.raw)
    rows = images.loc[images["pid"].astype(str) == pid].dropna(subset=["sha256"])
    plains = rows["sha256"].astype(str)
    # The vault step's tombstone holds the PNGs' already; one written by an earlier version (an
    # erasure resumed since) did not: added now, while data/raw still names the images, with
    # their sizes. A plaintext file is added as it is on disk (refused on import, found as a
    # copy), whatever the table says of it.
    sizes |= png_sizes(ctx, pid, zip(rows["image_id"].astype(str), plains, strict=True))
    ctx.core.tombstones.add(
        pid, sha256s=plain_files, plains=[*plains, *plain_files], plain_sizes=sizes
    )
    before = tracked_md5(ctx)
    return Plan(found, {"raw_md5_before": before}, state=before)


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Remove the subject (files, rows, LFW pairs naming their images) in one raw-store
    transaction, then ``dvc add data/raw`` (and ``data/protocols`` when its pairs changed)."""
    found = plan.artefacts if plan is not None else []
    # Ids from the recorded plan too: a resumed run finds data/raw without them.
    ids = subject_image_ids(ctx, pid) | _image_ids(pid, (a.get("path", "") for a in planned))
    pairs_rel = ctx.rel(lfw_pairs_file(ctx.paths))
    pairs_planned = any(a.get("path") == pairs_rel for a in [*planned, *found])
    dropped: list[int] = []
    store = RawStore(ctx.paths, core=ctx.core, track=False)
    with store.transaction() as txn:
        if not txn.remove_subject(pid) and not found:
            txn.discard()
        ids |= txn.removed_image_ids
        # After the swap, still under the lock: no import writes the pairs in between.
        txn.then(lambda: dropped.append(drop_lfw_pairs(ctx.paths, ids)))
    # `dvc add` under the raw store's lock, in this process (DVC is imported for the purge
    # anyway); a resumed run whose removal was already committed runs it too.
    after = tracked_md5(ctx)
    if dvcops.is_dvc_repo(ctx.paths.root):
        targets = [ctx.paths.raw]
        if pairs_planned and ctx.paths.protocols.is_dir():
            targets.append(ctx.paths.protocols)  # the old table's object is then unreferenced
        with store.lock():
            for target in targets:
                md5 = _add(ctx, target)
                after = md5 if target == ctx.paths.raw else after
    before = plan.state if plan is not None else None
    return Outcome(
        info={"raw_md5_before": before, "raw_md5_after": after, "lfw_pairs_removed": sum(dropped)}
    )


def _add(ctx: Context, target: Path) -> str | None:
    """``dvc add`` ``target`` in this process; DVC's own error says how to finish
    (:data:`MSG_DVC_ADD`)."""
    try:
        return dvc_objects.add(ctx.paths.root, target)
    except Exception as exc:  # DVC's own errors: say how to finish
        raise RuntimeError(MSG_DVC_ADD.format(target=ctx.rel(target), error=exc)) from exc


def tracked(ctx: Context) -> bool:
    """Whether DVC tracks ``data/raw`` (``data/raw.dvc`` in a DVC repository)."""
    return ctx.is_dvc and dvc_file(ctx.paths.raw).is_file()


def record_again(ctx: Context) -> str | None:
    """``dvc add data/raw`` once a later step took a file out of it (the copies step: a copy
    filed under another subject, which the raw step's ``dvc add`` recorded); its new md5.

    The version the raw step recorded, made by this erasure and referenced by nothing now,
    leaves the DVC cache: its listing names that copy (under a name someone chose, which may be
    the person's) and its md5. The caller holds the raw store's lock; a resumed run does it
    again (the same md5, nothing left to remove).
    """
    made = str((ctx.infos.get(STEP) or {}).get("raw_md5_after") or "")
    after = _add(ctx, ctx.paths.raw)
    if made.endswith(".dir") and made != after:
        setup = ctx.dvc_setup()
        if made not in dvc_objects.current_references(setup, unreachable_ok=True):
            for store in setup.stores:
                if store.kind == "cache":
                    store.remove(made)
    return after


def verify(ctx: Context, pid: str) -> list[str]:
    """The subject's files in ``data/raw``, the tables that still name them, and the LFW pairs
    protocol while it names one of their images (known from ``data/raw`` or the plan)."""
    store = RawStore(ctx.paths, core=ctx.core, track=False)
    files = store.files_of(pid)
    left = [ctx.rel(f) for f in files]
    if lfw_pairs_naming(ctx.paths, subject_image_ids(ctx, pid, files)):
        left.append(ctx.rel(lfw_pairs_file(ctx.paths)))
    return left
