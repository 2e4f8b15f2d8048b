"""The stack's S3 DVC remote down to disk: the subject's objects deleted, then SeaweedFS vacuumed.

Deleting an S3 object on SeaweedFS only marks its needle deleted; its bytes stay in the volume
file until the volume is compacted. This step runs before the ``dvc`` step: it plans the
subject's objects on the stack remote (the same finding as :mod:`.dvc`, so objects still
referenced by current data are kept alike), notes the volume needles that hold them, deletes
the objects, waits until the volume server no longer serves those needles and compacts every
volume holding deleted bytes (``/vol/vacuum``). ``verify`` reports any object still there and
any deleted bytes still inside a volume file. Objects are recorded as the dvc step records them
(a plaintext image's without md5 or SHA-256, a name someone chose keyed) with their volume
needles, and deleted before the ``.dir`` manifests.

An external S3 (``stack.mode: external``) gets the deletion through DVC's own step; compaction
is the provider's, which this project cannot observe: the plan's info says so.
"""

from __future__ import annotations

import logging
from typing import Any

from visage_ml.rights import dvc_objects
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan
from visage_ml.rights.erasure.dvc import known_md5s, stack_remote
from visage_ml.rights.erasure.raw import recorded_name
from visage_ml.stack.proc import StackError

log = logging.getLogger(__name__)

STORE = "dvc-remote"
NOT_RUNNING = (
    "the stack's S3 (SeaweedFS) is not running, so the subject's DVC objects on it cannot be "
    "deleted and vacuumed; run `visage stack up` and resume the erasure"
)
EXTERNAL_NOTE = (
    "external S3: objects are deleted through the S3 API (dvc step); the provider's compaction "
    "removes their bytes from disk and is not observable from this project"
)


def object_key(store: Any, oid: str, bucket: str) -> str:
    """The S3 key of object ``oid`` of ``store`` in ``bucket`` (its path less the bucket)."""
    path = store.oid_path(oid)
    return path[len(bucket) + 1 :] if path.startswith(f"{bucket}/") else path


def plan(ctx: Context, pid: str) -> Plan | None:
    """The subject's objects on the stack remote and the volume needles holding them."""
    found = stack_remote(ctx)
    if found is None:
        return None
    stack, stores = found
    if not stack.local:
        return Plan([], {"note": EXTERNAL_NOTE})
    seaweed = stack.seaweed()
    if not seaweed.running():
        raise StackError(NOT_RUNNING)
    known, plain = known_md5s(ctx, pid)
    purge = dvc_objects.plan(
        ctx.dvc_setup(),
        pid,
        known_md5s=known,
        plain_md5s=plain,
        name=recorded_name(ctx, pid),
    )
    names = {"dvc-" + s.name: s for s in stores}
    artefacts: list[Artefact] = []
    chunks: list[str] = []
    # Every object to delete with what the ledger records of it (a plaintext image's without
    # its md5: a resumed run finds it again through the manifests, deleted last).
    objects: list[tuple[str, Artefact]] = []
    for art in purge.objects:
        store = names.get(art["store"])
        if store is None:
            continue
        ids = seaweed.chunk_ids(object_key(store, art["md5"], seaweed.bucket))
        chunks.extend(ids)
        artefacts.append({**purge.recorded(art), "store": STORE, "needles": ids})
        objects.append((art["md5"], artefacts[-1]))
    return Plan(artefacts, {"needles": len(chunks)}, state=(stores, chunks, objects))


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Delete the planned objects, wait for their needles to go, compact the volumes.

    On an external S3 nothing is compacted here: the step's ``note`` says so, and the
    certificate carries it (``store_notes``) beside the objects the dvc step deleted."""
    if plan is None:
        return Outcome(info={"stack_remote": False})
    if (plan.info or {}).get("note") == EXTERNAL_NOTE:
        return Outcome(info={"stack_remote": True, "note": EXTERNAL_NOTE})
    if not plan.artefacts and not planned:
        return Outcome(info={"stack_remote": True})
    found = stack_remote(ctx)
    if found is None:
        return Outcome(info={"stack_remote": False})
    stack, stores = found
    if not stack.local:
        return Outcome(info={"stack_remote": True, "note": EXTERNAL_NOTE})
    seaweed = stack.seaweed()
    if not seaweed.running():
        raise StackError(NOT_RUNNING)
    removed: list[Artefact] = []
    # ``planned`` is the whole step's plan (the dvc store's artefacts too): this store's own.
    mine = [a for a in [*planned, *plan.artefacts] if a.get("store") == STORE]
    needles = [n for a in mine for n in a.get("needles") or []]
    objects = {str(a["md5"]): a for a in mine if a.get("md5")}
    objects.update(plan.state[2] if plan.state is not None else [])
    # Manifests last, as in the dvc step: they lead a resumed run to what is left.
    for oid in sorted(objects, key=dvc_objects.is_manifest):
        for store in stores:
            if store.remove(oid):
                removed.append(objects[oid])
    vacuum = seaweed.vacuum(wait_for=sorted(set(needles)))
    log.info(
        "stack S3: %d object(s) deleted, %d volume(s) compacted in %.2f s",
        len(removed),
        len(vacuum["volumes_compacted"]),
        vacuum["seconds"],
    )
    return Outcome(removed, {"vacuum": vacuum})


def verify(ctx: Context, pid: str) -> list[str]:
    """The subject's objects still on the stack remote, and deleted bytes left in volumes."""
    found = stack_remote(ctx)
    if found is None:
        return []
    stack, stores = found
    left: list[str] = []
    if stack.local:
        seaweed = stack.seaweed()
        if not seaweed.running():
            return [NOT_RUNNING]
        garbage = seaweed.garbage_bytes()
        if garbage:
            left.append(f"{garbage} byte(s) of deleted objects still in SeaweedFS volume files")
    try:
        purge = dvc_objects.plan(ctx.dvc_setup(), pid)
    except RuntimeError as exc:
        return [*left, str(exc)]
    names = {"dvc-" + s.name for s in stores}
    left += [purge.recorded(a)["path"] for a in purge.objects if a["store"] in names]
    return left
