"""The ``data/raw`` store: the subject's files and table rows, through :class:`RawStore`.

The subject leaves ``data/raw`` in one raw-store transaction (under its lock); in a DVC
repository ``dvc add`` then records the new ``.dir`` md5, in this process and under the same
lock. The MD5 of each removed file (DVC's object name) is planned with its SHA-256: the DVC step
purges those objects.
"""

from __future__ import annotations

from pathlib import Path

from visage_ml import dvcops
from visage_ml.data.rawstore import IMAGE_EXT, RawStore, read_images
from visage_ml.privacy.tombstones import Tombstones
from visage_ml.rights import dvc_objects
from visage_ml.rights.content_hashes import plain_mac
from visage_ml.rights.erasure.base import Artefact, Context, Outcome, Plan, file_artefact

STORE = "data"
MSG_DVC_ADD = (
    "data/raw no longer holds the subject but `dvc add data/raw` failed; fix DVC and run "
    "`visage privacy resume`: {error}"
)


def tracked_md5(ctx: Context) -> str | None:
    """The ``.dir`` md5 that ``data/raw.dvc`` records now (None outside DVC)."""
    return dvcops.tracked_md5(ctx.paths.root, ctx.paths.raw)


def plan(ctx: Context, pid: str) -> Plan:
    """The subject's files and the tables naming them, each with SHA-256 and MD5.

    A sealed image also carries ``plain_mac``, the keyed SHA-256 of its PNG as ``images.parquet``
    records it (:mod:`visage_ml.rights.content_hashes`), so that a plaintext copy of it
    elsewhere (an MLflow artefact) is found too, while the ledger and the certificate keep
    nothing a photograph of the subject could be checked against.
    """
    store = RawStore(ctx.paths, core=ctx.core, track=False)
    found = [file_artefact(ctx, STORE, f, md5=True) for f in store.files_of(pid)]
    images = read_images(ctx.paths.raw)
    rows = images[images["pid"].astype(str) == pid]
    plain = dict(zip(rows["image_id"].astype(str), rows["sha256"].astype(str), strict=True))
    tombstones = Tombstones.open(ctx.paths)
    for a in found:
        image_id = Path(a["path"]).stem
        if a["path"].endswith(IMAGE_EXT) and image_id in plain:
            a["plain_mac"] = plain_mac(tombstones, plain[image_id])
    before = tracked_md5(ctx)
    return Plan(found, {"raw_md5_before": before}, state=before)


def erase(ctx: Context, pid: str, planned: list[Artefact], plan: Plan | None) -> Outcome:
    """Remove the subject in one raw-store transaction, then ``dvc add data/raw``."""
    found = plan.artefacts if plan is not None else []
    store = RawStore(ctx.paths, core=ctx.core, track=False)
    with store.transaction() as txn:
        if not txn.remove_subject(pid) and not found:
            txn.discard()
    # `dvc add` under the raw store's lock, in this process (DVC is imported for the purge
    # anyway); a resumed run whose removal was already committed runs it too.
    after = tracked_md5(ctx)
    if dvcops.is_dvc_repo(ctx.paths.root):
        with store.lock():
            try:
                after = dvc_objects.add(ctx.paths.root, ctx.paths.raw)
            except Exception as exc:  # DVC's own errors: say how to finish
                raise RuntimeError(MSG_DVC_ADD.format(error=exc)) from exc
    before = plan.state if plan is not None else None
    return Outcome(info={"raw_md5_before": before, "raw_md5_after": after})


def verify(ctx: Context, pid: str) -> list[str]:
    """The subject's files in ``data/raw`` and the tables that still name them."""
    store = RawStore(ctx.paths, core=ctx.core, track=False)
    return [ctx.rel(f) for f in store.files_of(pid)]
