"""The DVC store: objects of the subject's files, ``.dir`` manifests listing them, old table
versions naming the pid, purged by hash from the cache, every remote and the site cache.

The machinery (finding, hashing and deleting objects) is :mod:`.dvc_objects`; this module plans
with the MD5s of the files the raw step removed and records what was kept because the current
data still references identical content.

Each object is recorded with its store, path, md5 and SHA-256, except a plaintext image's (a PNG
of a project not yet sealed): the raw step planned that file without its MD5, so its objects are
found through the ``.dir`` manifests that list it under ``<pid>/`` (old manifests stay in the
stores after the raw step's ``dvc add``) and recorded by the file they held, as the raw step
records its path (a name someone chose keyed, :func:`.raw.recorded_name`), without md5, SHA-256
or a path naming the object (``content``
:data:`~visage_ml.rights.content_hashes.PLAINTEXT_WITHHELD`); the kept ones are counted
(``kept_plaintext``), not named. A resumed run takes the other objects an interrupted one
planned from the ledger and finds the plaintext ones again through the manifests, which the
purge deletes last. Before the purge, the pids each ``.dir`` manifest to go listed (but the
subject's) are kept in :mod:`visage_ml.rights.manifest_index`, for the lineage of the others.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from visage_ml.rights import dvc_objects, manifest_index
from visage_ml.rights.erasure import raw
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan
from visage_ml.stack.manager import Stack

log = logging.getLogger(__name__)

# A remote the erasure reaches only through its API: deleting an object there says nothing of
# the provider's disks, object versions, replicas or backups (the local stack's S3 is compacted
# by the dvc_remote step, which notes an external stack S3 itself; a path is deleted here).
API_NOTE = (
    "DVC remote(s) {names}: objects deleted through the remote's API; the provider's disk "
    "compaction, object versions, replication and backups are not observable from this "
    "project (objects sealed under the subject's key are unreadable whatever remains)"
)


def plan(ctx: Context, pid: str) -> Plan | None:
    """The subject's objects in every DVC store and site-cache rows; None outside DVC."""
    if not ctx.is_dvc:
        return None
    known, plain = known_md5s(ctx, pid)
    purge_plan = dvc_objects.plan(
        ctx.dvc_setup(),
        pid,
        known_md5s=known,
        plain_md5s=plain,
        name=raw.recorded_name(ctx, pid),
    )
    found = stack_remote(ctx)
    if found is not None and found[0].local:
        # The local stack's S3 is the dvc_remote store's: it deletes, vacuums and records
        # those objects; listed here too, each would appear twice in the certificate.
        theirs = {"dvc-" + s.name for s in found[1]}
        purge_plan.objects = [a for a in purge_plan.objects if a["store"] not in theirs]
    return Plan(purge_plan.artefacts(), _kept_info(purge_plan), state=purge_plan)


def stack_remote(ctx: Context) -> tuple[Stack, list[Any]] | None:
    """The project's stack and its DVC remote's object stores, when that remote is configured."""
    if not ctx.is_dvc or not ctx.paths.params.is_file():
        return None
    stack = Stack.of(ctx.paths)
    name = stack.params.dvc_remote
    setup = ctx.dvc_setup()
    if name not in setup.remote_urls:
        return None
    return stack, [s for s in setup.stores if s.name.startswith(f"remote:{name}")]


def api_remotes(ctx: Context, setup: dvc_objects.DvcSetup) -> list[str]:
    """Names of the project's DVC remotes reached only through an API (a URL with a scheme),
    but the stack's own remote, whose step compacts (local) or notes (external) it."""
    found = stack_remote(ctx)
    stack_name = found[0].params.dvc_remote if found is not None else None
    return sorted(
        name
        for name, url in setup.remote_urls.items()
        if name != stack_name and urlsplit(url).scheme not in ("", "file")
    )


def known_md5s(ctx: Context, pid: str) -> tuple[list[str], dict[str, str]]:
    """MD5s the raw step planned: of sealed files and tables, and (md5: file) of files in
    clear, which a raw plan of an earlier version named (this one does not). A file in clear is
    told by the rule the raw step and :func:`dvc_objects.find_subject_objects` use (any file of
    the subject's folder that is not sealed, whatever its extension), so that an erasure begun
    by an earlier version and resumed now does not name a ``.webp`` photograph by its hash.
    A file the raw plan records keyed (``~`` and a MAC: placed by hand under a name someone
    chose) is taken as one in clear whatever it was: its suffix is not recorded, and a file
    taken for a photograph is recorded by its path alone."""
    known: list[str] = []
    plain: dict[str, str] = {}
    for a in ctx.planned.get(raw.STEP, []):
        if not a.get("md5"):
            continue
        path = str(a.get("path", ""))
        rel = PurePosixPath(path)
        if pid in rel.parts[:-1] and dvc_objects.is_plaintext_entry(rel.name):
            plain[str(a["md5"])] = path
        else:
            known.append(str(a["md5"]))
    return known, plain


def _kept_info(purge_plan: dvc_objects.PurgePlan) -> dict[str, Any]:
    info: dict[str, Any] = {"kept_still_referenced": purge_plan.kept_named}
    if purge_plan.kept_withheld:
        info["kept_plaintext"] = purge_plan.kept_withheld
    return info


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Delete what was planned, including what an interrupted run planned and left."""
    if plan is None:
        return Outcome(info={"dvc": False})
    setup = ctx.dvc_setup()
    purge_plan: dvc_objects.PurgePlan = plan.state
    # Objects planned by an interrupted run and still present are deleted too.
    by_store = {(a["store"], a["md5"]) for a in purge_plan.objects}
    purge_plan.objects.extend(
        a for a in planned if a.get("md5") and (a["store"], a["md5"]) not in by_store
    )
    purge_plan.targets = sorted(
        set(purge_plan.targets) | {a["md5"] for a in planned if a.get("md5")}
    )
    _keep_listings(ctx, setup, pid, purge_plan)
    removed = dvc_objects.execute(setup, purge_plan)
    manifest_index.forget(ctx.paths, pid)
    if purge_plan.kept:
        log.warning(
            "%d DVC object(s) of the subject are byte-identical to data still in use under "
            "another path and were kept; the certificate declares them",
            len(purge_plan.kept),
        )
    info: dict[str, Any] = {
        "remotes": sorted(setup.remote_urls),
        "site_cache": str(setup.site_cache_dir) if setup.site_cache_dir else None,
        **_kept_info(purge_plan),
    }
    if names := api_remotes(ctx, setup):
        info["note"] = API_NOTE.format(names=", ".join(names))  # the certificate's store_notes
    return Outcome(removed, info)


def _keep_listings(
    ctx: Context, setup: dvc_objects.DvcSetup, pid: str, purge_plan: dvc_objects.PurgePlan
) -> None:
    """Before the manifests go, the others they listed (:mod:`visage_ml.rights.manifest_index`:
    the lineage of everyone else still finds the models trained on those versions)."""
    listings = {}
    for md5 in {str(a["md5"]) for a in purge_plan.objects if str(a.get("md5")).endswith(".dir")}:
        data = dvc_objects.read_object(setup.stores, md5)
        entries = dvc_objects.read_manifest(data) if data is not None else None
        if entries:
            listings[md5] = manifest_index.pids_listed(entries)
    tombstones = ctx.core.tombstones
    manifest_index.remember(
        ctx.paths, listings, erased=lambda p: p == pid or tombstones.has_subject(p)
    )


def verify(ctx: Context, pid: str) -> list[str]:
    """Objects and site-cache files of DVC's stores that still hold or name the subject, and
    the index of purged manifests while it names them."""
    named = manifest_index.names(ctx.paths, pid)
    left = [ctx.rel(manifest_index.index_path(ctx.paths))] if named else []
    if not ctx.is_dvc:
        return left
    try:
        found = dvc_objects.plan(ctx.dvc_setup(), pid)
    except RuntimeError as exc:  # the current data/raw manifest still lists the subject
        return [*left, str(exc)]
    return [*left, *(a["path"] for a in found.artefacts())]
