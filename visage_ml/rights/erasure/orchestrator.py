"""Erasure (Art. 17) across every store, orchestrated, resumable, and ending in a certificate.

One erasure request runs these steps in order; each is idempotent and recorded:

=============  =================================================================================
step           what it does
=============  =================================================================================
lineage        (reads only) which data versions and models saw the subject; needed before the
               manifests that prove presence are purged
gallery        with a shared gallery (``serving.gallery.backend: pgvector``, or a table the
               project once wrote to: :mod:`visage_ml.stack.stores`) first its row,
               revoked for every replica and deleted, then the table rewritten and the WAL
               switched (:mod:`.pgvector`); the subject's template and gallery key
               (:mod:`.gallery`): from the end of this step the subject is never matched again
vault          a keyed tombstone of the subject's reference and file hashes
               (:mod:`.tombstone`: re-imports are refused), the import reports' lines naming
               them (:mod:`.import_reports`), then the identity-vault key, record and
               blind-index entry (:mod:`.vault`, cryptographic erase)
raw            the subject's data key (:mod:`.datakey`: every sealed raw image, crop chunk and
               kept bundle of theirs, in every copy, becomes unreadable), then their files and
               rows leave ``data/raw``, and the LFW pairs naming their images leave
               ``data/protocols/lfw_pairs.parquet`` (:mod:`.raw`)
dvc            DVC objects of those files, ``.dir`` manifests that list them, old table versions
               naming the pid, purged by hash from the cache, every remote and the site cache
               (:mod:`.dvc`); on the stack's S3 remote deleted, then SeaweedFS's volumes
               compacted so the bytes leave the disk (:mod:`.dvc_remote`)
processed      ``data/processed`` without the subject (:mod:`.processed`), the subject's
               export bundles under ``privacy/exports`` (:mod:`.exports`) and the embedder's
               resume checkpoints, whose margin head holds a row per training identity
               (:mod:`.checkpoints`)
mlflow         MLflow artefacts and rows naming the subject (by design none), SQLite pages
               included (:mod:`.mlflow`); on the MLflow server the project tracks or once
               tracked to, its runs deleted and garbage-collected, its rows rewritten
               (:mod:`.mlflow_server`)
copies         exact copies of what the steps listed, of any erased image's plaintext, and of
               the subject's keys as unwrapped (printed as hex or base64: :mod:`.unwrapped`
               adds them to the tombstones first in each step that destroys a key),
               wherever the verifier looks (``data/``, ``reports/``, ``notebooks/``, the top,
               ...): removed, counted by top folder (:mod:`.copies`); a copy that cannot be
               removed stops the erasure before the certificate; one taken out of
               ``data/raw`` after the raw step recorded it: ``data/raw`` recorded again
snapshot       the consent snapshot refreshed
certificate    ``erasure.completed`` (committing to the claims, cosigned by the witnesses
               at once), a tree head, the signed certificate carrying the checkpoint the
               completion was cosigned under (kept until the certificate is issued: a
               resume hours later carries it too)
               ``privacy/certificates/<request id>.json`` with its offline proof bundle
               (c2sp.org/tlog-proof) and its readable page ``<request id>.html``
               (:mod:`visage_ml.privacy.certificate_page`), the request's receipt
=============  =================================================================================

Before the steps, on every run (a resumed one's too), the preflight stops the erasure, its
request kept open with the failure recorded, where a store it needs cannot be reached
(:mod:`.preflight`) or ``data/raw``'s tables are not checked out though the subject's rows are
expected in them (:func:`~visage_ml.rights.rawcheck.check_raw`: read as empty, the tombstone would
seek none of their photographs, and the raw step would write the tables without anyone's rows).

This module knows the request lifecycle, the step order and the ledger records; what each store
holds of a subject and how it goes is in the store's module (:mod:`.base` says what each one
provides). Each destructive step appends ``erasure.step`` with ``phase: planned`` (the artefacts
its stores are about to remove, each with its SHA-256 taken before deletion, a plaintext image's
withheld (:mod:`.base`), and its ``outcome``: ``key destroyed``, ``crypto-shredded`` or
``physically removed``), acts, then appends ``erasure.step`` with ``phase: done``. A process
killed anywhere (``kill -9``) leaves either nothing, or a plan the next run (``visage privacy
resume``) completes; the certificate's claims are built from the ledger alone, so a resumed run
certifies exactly what the first one planned.

Fault injection for tests: ``VISAGE_FAULT=erasure:<step>`` ends the process (``os._exit``)
after the step acted and before it recorded ``done``; ``erasure:<step>:planned`` right after the
plan was recorded; ``erasure:certificate:completed`` right after ``erasure.completed``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.data.rawstore import RawDataMissingError
from visage_ml.faults import FAULT_ENV, FAULT_EXIT
from visage_ml.io import file_lock, sha256_file
from visage_ml.privacy import certificate_page, merkle
from visage_ml.privacy.certificate import (
    build_certificate,
    claims_digest,
    models_retrained_event,
    registration_note,
    write_certificate,
)
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.keys import check_pid
from visage_ml.privacy.ledger import Entry
from visage_ml.privacy.requests import (
    IN_PROGRESS,
    RECEIVED,
    VERIFIED,
    RequestBook,
    RequestState,
    RequestStateError,
)
from visage_ml.privacy.witnessed import WitnessUnavailableError

# A module, not its function: lineage imports this package's DVC machinery.
from visage_ml.rights import lineage
from visage_ml.rights.content_scan import ScanIncompleteError
from visage_ml.rights.erasure import (
    checkpoints,
    copies,
    datakey,
    dvc,
    dvc_remote,
    exports,
    gallery,
    import_reports,
    mlflow,
    mlflow_server,
    pgvector,
    preflight,
    processed,
    raw,
    tombstone,
    unwrapped,
    vault,
)
from visage_ml.rights.erasure.base import (
    Artefact,
    Context,
    Plan,
    Store,
    label_outcomes,
    merge,
    retained_shared,
)
from visage_ml.rights.lifecycle import recorded
from visage_ml.rights.rawcheck import check_raw
from visage_ml.serving.pg_swap import OldTableHeldError
from visage_ml.stack.proc import StackError

log = logging.getLogger(__name__)

STEPS: tuple[str, ...] = (
    "lineage",
    "gallery",
    "vault",
    "raw",
    "dvc",
    "processed",
    "mlflow",
    "copies",
    "snapshot",
    "certificate",
)
# The failure codes an erasure's stops are recorded under on its request (request.failed),
# those the HTTP API answers them with (any other: its class, lifecycle.failure_code).
STOP_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (StackError, "stores_unreachable"),
    (ScanIncompleteError, "scan_incomplete"),
    (OldTableHeldError, "gallery_table_held"),
    (RawDataMissingError, "raw_data_missing"),
)
# The stores each destructive step drives, in order (their artefacts are recorded under the
# step): export bundles and resume checkpoints go with the processed data.
STORES: Mapping[str, tuple[Store, ...]] = {
    # Each step that destroys a key first adds the keys, unwrapped, to what is sought
    # (:mod:`.unwrapped`: their MACs in the tombstones), while they are there to unwrap.
    # The shared gallery's row first: no replica returns the subject from then on, before the
    # key that seals the row's template goes.
    "gallery": (unwrapped, pgvector, gallery),
    # The tombstone reads the vault record and the image hashes before they go; the import
    # reports are cleaned of the reference the vault record holds.
    "vault": (unwrapped, tombstone, import_reports, vault),
    # The data key first: destroying it crypto-shreds every copy of the sealed files.
    "raw": (unwrapped, datakey, raw),
    # The stack's S3 remote first (it notes where the objects sit in the volume files before
    # they are deleted, then compacts them); then DVC's purge of the cache and every remote.
    "dvc": (dvc_remote, dvc),
    # The embedder's resume checkpoints: their margin head is a row per training identity.
    "processed": (processed, exports, checkpoints),
    # The local SQLite file, then the stack's MLflow server (client API, `mlflow gc`, vacuum).
    "mlflow": (mlflow, mlflow_server),
    # Last: it looks for everything the steps before listed, wherever a copy may have been put.
    "copies": (copies,),
}
LOCK = Path(".visage") / "locks" / "erasure.lock"

MSG_NOT_ERASURE = "request {rid} is a {right} request, not an erasure"
MSG_NOT_VERIFIED = (
    "erasure request {rid} is not verified yet; verify the requester's identity first "
    "(`visage privacy request verify {rid}`)"
)
MSG_CLOSED = "erasure request {rid} is already {status}"
MSG_REQUEST_UNWITNESSED = (
    "The erasure request is recorded and the subject is no longer processed, but nothing was "
    "erased yet: the erasure starts once its request is witnessed. Run `visage privacy "
    "checkpoint` when the witnesses answer, then `visage privacy erase {pid}` again."
)
MSG_COMPLETION_UNWITNESSED = (
    "The subject's data is erased (every step has run); the certificate waits for the "
    "witnesses to cosign the completion. Run `visage privacy checkpoint` when they answer, then "
    "`visage privacy resume` to issue it. Until they cosign, nothing dates the completion: a "
    "certificate shows the erasure proven done only by the time they cosign (its verdict then "
    "reads COMPLETION DATE NOT WITNESSED when that is more than an hour from now), so bring "
    "them back soon."
)
MSG_NO_ENTRY = "the ledger has no entry {seq}; restore it from a backup"
MSG_RAW_NOT_ERASED = (
    "nothing was erased: without data/raw's tables the erasure would seek none of the "
    "subject's photographs by their content, and would write the tables again without anyone's "
    "rows; once they are checked out, run the erasure again: `visage privacy erase {pid}`"
)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class ErasureResult:
    """What one run of an erasure request did."""

    request_id: str
    pid: str
    certificate_path: Path | None = None
    certificate: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    resumed_steps: list[str] = field(default_factory=list)

    @property
    def artefacts(self) -> int:
        return len((self.certificate.get("claims") or {}).get("artefacts") or [])

    def to_dict(self) -> dict[str, Any]:
        claims = self.certificate.get("claims") or {}
        return {
            "request_id": self.request_id,
            "pid": self.pid,
            "certificate": str(self.certificate_path) if self.certificate_path else None,
            "artefacts": self.artefacts,
            "dataset": claims.get("dataset"),
            "models": claims.get("models"),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "resumed_steps": self.resumed_steps,
        }


def _fault(step: str, where: str = "") -> None:
    """Die like ``kill -9`` when ``$VISAGE_FAULT`` names this point (tests only)."""
    want = os.environ.get(FAULT_ENV)
    if not want:
        return
    here = f"erasure:{step}" + (f":{where}" if where else "")
    if want == here:
        log.warning("fault injection: exiting at %s", here)
        os._exit(FAULT_EXIT)


# ---------------------------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------------------------


class Erasure:
    """Runs erasure requests of the project at ``paths``.

    Parameters
    ----------
    paths
        The project.
    core
        Its privacy core (a new one when None).
    gallery
        An open :class:`~visage_ml.serving.gallery.Gallery` to erase from (a running server
        passes its own, so that its memory is updated at once); opened from disk when None.
    params
        The project's parameters (``params.yaml`` when None).
    """

    def __init__(
        self,
        paths: ProjectPaths,
        *,
        core: PrivacyCore | None = None,
        gallery: Any = None,
        params: Params | None = None,
    ) -> None:
        self.paths = paths
        self.core = core if core is not None else PrivacyCore(paths)
        self.gallery = gallery
        self.params = params if params is not None else load_params(paths.params)
        self.book = RequestBook(self.core, params=self.params.privacy)
        self.ctx = Context(paths, self.core, self.params, gallery=gallery)

    # -- requests ------------------------------------------------------------------------------
    def request(
        self,
        pid: str,
        *,
        received_at: str | None = None,
        channel: str = "unspecified",
        verification: str | None = "identity_verified",
    ) -> RequestState:
        """Record an erasure request (and its verification, when ``verification`` is given)."""
        st = self.book.receive(pid, "erasure", received_at=received_at, channel=channel)
        if verification:
            st = self.book.verify(st.request_id, method=verification)
        return st

    def erase(
        self, pid: str, *, received_at: str | None = None, channel: str = "unspecified"
    ) -> ErasureResult:
        """Receive, verify and run an erasure request for ``pid`` in one go."""
        check_pid(pid)
        open_ = [s for s in self.book.open(pid=pid) if s.right == "erasure"]
        st = open_[0] if open_ else self.request(pid, received_at=received_at, channel=channel)
        if st.status == RECEIVED:
            st = self.book.verify(st.request_id)
        return self.run(st.request_id)

    def pending(self) -> list[RequestState]:
        """Erasure requests that were started and not finished (what :meth:`resume` runs)."""
        return [s for s in self.book.open() if s.right == "erasure" and s.status == IN_PROGRESS]

    def resume(self) -> list[ErasureResult]:
        """Finish every interrupted erasure request."""
        return [self.run(st.request_id) for st in self.pending()]

    def remaining(self, pid: str) -> dict[str, list[str]]:
        """What the stores of each step still hold of ``pid`` (all empty once it is erased)."""
        check_pid(pid)
        return {
            step: [left for s in stores for left in s.verify(self.ctx, pid)]
            for step, stores in STORES.items()
        }

    def run(self, request_id: str) -> ErasureResult:
        """Run (or finish) erasure request ``request_id``; returns the certificate.

        Raises
        ------
        RequestStateError
            The request is not an erasure, not verified, or already closed.
        """
        with file_lock(self.paths.root / LOCK):
            st = self.book.get(request_id)
            if st.right != "erasure":
                raise RequestStateError(MSG_NOT_ERASURE.format(rid=request_id, right=st.right))
            if st.status == RECEIVED:
                raise RequestStateError(MSG_NOT_VERIFIED.format(rid=request_id))
            if st.status not in (VERIFIED, IN_PROGRESS):
                raise RequestStateError(MSG_CLOSED.format(rid=request_id, status=st.status))
            # Every service the stores need answers, and data/raw's tables are there, or
            # nothing is erased (one message); what stops it, or a step, is recorded on the
            # request, which stays open.
            with recorded(self.book, st, step="preflight", codes=STOP_CODES):
                preflight.check(self.ctx, st.pid)
                self._check_raw(st.pid)
            result = ErasureResult(request_id, st.pid)
            if st.status == VERIFIED:
                t = time.perf_counter()
                try:
                    self.book.start(request_id)
                except WitnessUnavailableError as exc:
                    # The start is on the ledger and in force (the subject is not processed),
                    # but "in force" must not read as "erased": no step has run.
                    exc.add_note(MSG_REQUEST_UNWITNESSED.format(pid=st.pid))
                    raise
                result.timings["start"] = time.perf_counter() - t
            actions: dict[str, Callable[[RequestState, list[Artefact]], None]] = {
                "lineage": self._lineage,
                "snapshot": self._snapshot,
            }
            for step in STEPS[:-1]:
                st = self.book.get(request_id)
                rec = st.steps.get(step)
                if rec is not None and rec.done:
                    continue
                if rec is None and st.erasure_completed_seq is not None:
                    # Completed by a version without this step: the claims are committed.
                    continue
                if rec is not None:
                    result.resumed_steps.append(step)
                t = time.perf_counter()
                previous = list(rec.planned) if rec is not None else []
                with recorded(self.book, st, step=step, codes=STOP_CODES):
                    if step in actions:
                        actions[step](st, previous)
                    else:
                        self._store_step(st, step, previous)
                result.timings[step] = time.perf_counter() - t
                log.info("erasure %s: step %s done", request_id, step)
            t = time.perf_counter()
            with recorded(
                self.book, self.book.get(request_id), step="certificate", codes=STOP_CODES
            ):
                self._certificate(result)
            result.timings["certificate"] = time.perf_counter() - t
            return result

    def _check_raw(self, pid: str) -> None:
        """Stop before anything is erased where ``data/raw``'s tables are not checked out (on
        every run, a resumed one's too): read as empty, the subject's images are none, so the
        tombstone holds no photograph of theirs to seek copies by (a copy elsewhere is kept and
        certified gone), the raw step writes the tables again without anyone's rows, and the
        copies step takes another subject's photograph for no one's. Nor where photographs
        the tables list are not there though DVC's record holds them (checked out in part):
        the raw step's ``dvc add`` would make them gone from data/raw's current version."""
        try:
            check_raw(self.paths, pid, source=self.core.subject(pid).source, everyone=True)
        except RawDataMissingError as exc:
            exc.add_note(MSG_RAW_NOT_ERASED.format(pid=pid))
            raise

    # -- recording -----------------------------------------------------------------------------
    def _record(
        self,
        st: RequestState,
        step: str,
        phase: str,
        artefacts: list[Artefact],
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.core.ledger.append(
            "erasure.step",
            st.pid,
            {
                "request_id": st.request_id,
                "step": step,
                "phase": phase,
                "artefacts": [{**a, "step": step} for a in artefacts],
                "info": dict(info or {}),
            },
        )

    def _planned(
        self,
        st: RequestState,
        step: str,
        previous: list[Artefact],
        found: list[Artefact],
        info: Mapping[str, Any] | None = None,
    ) -> list[Artefact]:
        """Record the plan (unless an earlier run did and nothing new was found)."""
        merged = merge(previous, found)
        if not previous or len(merged) != len(previous):
            self._record(st, step, "planned", merged, info)
        _fault(step, "planned")
        return merged

    # -- steps ---------------------------------------------------------------------------------
    def _store_step(self, st: RequestState, step: str, previous: list[Artefact]) -> None:
        """Plan with every store of ``step``, record the plan, erase, record what was done."""
        ctx = self.ctx
        ctx.request_id = st.request_id
        ctx.planned = {name: list(rec.planned) for name, rec in st.steps.items()}
        ctx.done = {name: list(rec.artefacts) for name, rec in st.steps.items() if rec.done}
        ctx.infos = {name: dict(rec.info) for name, rec in st.steps.items()}
        stores = STORES[step]
        plans: list[Plan | None] = [s.plan(ctx, st.pid) for s in stores]
        planned: list[Artefact] = []
        if any(p is not None for p in plans):
            found = label_outcomes(
                (a for p in plans if p is not None for a in p.artefacts), ctx.planned
            )
            infos = [p.info for p in plans if p is not None and p.info is not None]
            info = merge_infos(infos) if infos else None
            planned = self._planned(st, step, previous, found, info)
        outcomes = [s.erase(ctx, st.pid, planned, p) for s, p in zip(stores, plans, strict=True)]
        _fault(step)
        done = label_outcomes(merge(planned, *(o.artefacts for o in outcomes)), ctx.planned)
        self._record(st, step, "done", done, merge_infos([o.info for o in outcomes]))

    def _lineage(self, st: RequestState, previous: list[Artefact]) -> None:
        setup = self.ctx.dvc_setup() if self.ctx.is_dvc else None
        lin = lineage.subject_lineage(self.paths, st.pid, setup=setup)
        info = {
            "data_versions": [asdict(d) for d in lin.data],
            "models": [asdict(m) for m in lin.models],
            "notes": lin.notes,
            "raw_md5_before": raw.tracked_md5(self.ctx),
        }
        _fault("lineage")
        self._record(st, "lineage", "done", [], info)

    def _snapshot(self, st: RequestState, previous: list[Artefact]) -> None:
        self.core.snapshot()
        _fault("snapshot")
        digest = sha256_file(self.paths.consents) if self.paths.consents.is_file() else None
        self._record(st, "snapshot", "done", [], {"consents_sha256": digest})

    # -- certificate ---------------------------------------------------------------------------
    def claims(self, st: RequestState) -> dict[str, Any]:
        """The certificate's claims, from the ledger's step records alone (deterministic)."""
        artefacts: list[dict[str, Any]] = []
        for step in STEPS[:-1]:
            rec = st.steps.get(step)
            if rec is not None:
                artefacts = merge(artefacts, [{**a, "step": step} for a in rec.artefacts])
        info = {k: v.info for k, v in st.steps.items()}
        lin = info.get("lineage", {})
        data_versions = lin.get("data_versions") or []
        processed_with = sorted({d["md5"] for d in data_versions if d.get("kind") == "processed"})
        raw_info = info.get("raw", {})
        proc = info.get("processed", {})
        dvc_info = info.get("dvc") or {}
        dvc_claims = {
            "remotes": dvc_info.get("remotes", []),
            "kept_still_referenced": sorted(set(dvc_info.get("kept_still_referenced") or [])),
        }
        if dvc_info.get("kept_plaintext"):
            # Plaintext images' objects kept alike: counted, their md5 withheld.
            dvc_claims["kept_plaintext"] = dvc_info["kept_plaintext"]
        retained = retained_shared(artefacts, dvc_info)
        extra: dict[str, Any] = {}
        if copies_removed := (info.get("copies") or {}).get(copies.REMOVED):
            # Exact copies found elsewhere in the project, by top folder: no path, no hash.
            extra["copies_removed"] = copies_removed
        if in_use := (info.get("copies") or {}).get(copies.IN_USE):
            # Files of data/raw identical to erased content that other current subjects hold:
            # kept, counted (the verifier accepts that many and no more).
            extra[copies.IN_USE] = in_use
        return {
            "artefacts": artefacts,
            "dataset": {
                "raw_md5_before": raw_info.get("raw_md5_before") or lin.get("raw_md5_before"),
                # Recorded again where the copies step took a copy out of data/raw.
                "raw_md5_after": (info.get("copies") or {}).get(copies.RAW_AFTER)
                or raw_info.get("raw_md5_after"),
                "processed_md5_before": proc.get("processed_md5_before"),
                "processed_md5_after": proc.get("processed_md5_after"),
                "processed_on_erasure": proc.get("mode"),
                "processed_md5s_with_subject": processed_with,
                "data_versions_with_subject": data_versions,
            },
            "models": [
                {**m, "status": "stale", "until": "retrained without the subject (dvc repro)"}
                for m in lin.get("models") or []
            ],
            "lineage_notes": lin.get("notes") or [],
            # What a store could not guarantee (e.g. WAL the database server may still keep).
            "store_notes": [
                str(v["note"]) for v in info.values() if isinstance(v, dict) and v.get("note")
            ],
            "steps": [
                {"step": s, "seq": st.steps[s].seq, "artefacts": len(st.steps[s].artefacts)}
                for s in STEPS[:-1]
                if s in st.steps
            ],
            "dvc": dvc_claims,
            # Content byte-identical to a removed file that the current data still holds under
            # another path (e.g. a duplicate photo filed under another subject): kept, because
            # DVC objects the workspace references are never purged, and declared here.
            "retained_shared_content": [
                {
                    "md5": m,
                    "sha256": h,
                    "why": "identical content is still referenced by the current data/raw",
                }
                for m, h in retained
            ],
            **extra,
        }

    def _certificate(self, result: ErasureResult) -> None:
        st = self.book.get(result.request_id)
        claims = self.claims(st)
        ledger = self.core.ledger
        # A receipt dated before the subject was added to the registry (the deadline counts
        # from it): the certificate says so, as the request does, for a regulator to weigh.
        before = registration_note(st)
        if st.erasure_completed_seq is not None:
            completed, head = _completion_entries(ledger, st.erasure_completed_seq)
        else:
            payload = {
                "request_id": st.request_id,
                "claims_sha256": claims_digest(claims),
                "artefacts": len(claims["artefacts"]),
                "raw_md5_after": claims["dataset"]["raw_md5_after"],
                # Committed, so that the certificate's date of reception is the ledger's.
                "received_at": st.received_at,
                **before,
            }
            try:
                completed = ledger.append("erasure.completed", st.pid, payload)
            except WitnessUnavailableError as exc:
                exc.add_note(MSG_COMPLETION_UNWITNESSED)
                raise
            head = None
        self.core.snapshot()
        _fault("certificate", "completed")
        # One pass over the ledger gives the tree head and the inclusion proof.
        hashes = ledger.leaf_hashes(int(head.payload["size"]) if head is not None else None)
        tree = merkle.tree(hashes)
        root = tree.root().hex()
        if head is None:
            head = ledger.append("tree_head", None, {"size": len(hashes), "root": root})
        inclusion = _inclusion(tree, completed.seq)
        # The checkpoint the completion was cosigned under (its witnesses' times date it), or,
        # when they did not answer then, one cosigned now: the offline proof.
        proof = self.core.offline_proof(completed)
        project = self.params.project
        doc = build_certificate(
            self.paths,
            request={
                "request_id": st.request_id,
                "pid": st.pid,
                "received_at": st.received_at,
                **before,
            },
            claims=claims,
            completed=completed,
            tree_head=head,
            inclusion=inclusion,
            controller={"name": project.controller, "contact": project.controller_contact},
            proof=proof,
        )
        path = write_certificate(self.paths, doc)
        # Resumed after `lineage --refresh` upgraded it: the page says retrained, as it did.
        retrained = (
            models_retrained_event(
                self.core.ledger, st.request_id, self.core.ledger.key_chain().public_keys()
            )
            if st.models_retrained_seq is not None
            else None
        )
        certificate_page.write_page(self.core, path, retrained=retrained)
        _fault("certificate")
        st = self.book.get(result.request_id)
        if st.status == IN_PROGRESS:
            self.book.complete(
                st.request_id,
                outcome={
                    "certificate_sha256": sha256_file(path),
                    "artefacts": len(claims["artefacts"]),
                    "models_stale": len(claims["models"]),
                },
            )
        # Issued, the certificate carries its checkpoint: the kept copy goes, and so does any
        # a process killed between an issue and this left. A file that cannot go fails nothing
        # (it holds no personal data): `visage privacy doctor` names it.
        try:
            self.core.witnessing.prune_kept(needed=self.book.uncertified_completions())
        except OSError as exc:
            log.warning("kept checkpoints not removed (%s): see `visage privacy doctor`", exc)
        result.certificate_path = path
        result.certificate = doc


# ---------------------------------------------------------------------------------------------
# Ledger helpers of the certificate
# ---------------------------------------------------------------------------------------------


def _completion_entries(ledger: Any, seq: int) -> tuple[Any, Any]:
    """The ``erasure.completed`` entry at ``seq`` and the first tree head after it (or None)."""
    completed = head = None
    # Read from near seq (Ledger.offset_before), not from the first entry.
    for _, line in ledger.iter_lines(start_offset=ledger.offset_before(seq)):
        if completed is None:
            obj = json.loads(line)
            if obj["seq"] == seq:
                completed = Entry(**obj)
            elif obj["seq"] > seq:
                break
        elif b'"tree_head"' in line:
            entry = Entry(**json.loads(line))
            if entry.type == "tree_head":
                head = entry
                break
    if completed is None:
        raise RuntimeError(MSG_NO_ENTRY.format(seq=seq))
    return completed, head


def _inclusion(tree: merkle.MerkleTree, seq: int) -> dict[str, Any]:
    """RFC 9162 inclusion proof of leaf ``seq`` in ``tree`` (the record
    :func:`visage_ml.privacy.ledger.inclusion_for` makes, from a tree in hand)."""
    return {
        "leaf_index": seq,
        "tree_size": tree.size,
        "leaf_hash": tree.levels[0][seq].hex(),
        "path": [p.hex() for p in tree.inclusion_proof(seq)],
        "root": tree.root().hex(),
    }


# ---------------------------------------------------------------------------------------------
# Convenience
# ---------------------------------------------------------------------------------------------


def erase_subject(paths: ProjectPaths, pid: str, **kwargs: Any) -> ErasureResult:
    """Receive, verify and run an erasure of ``pid`` (see :class:`Erasure`)."""
    return Erasure(paths).erase(pid, **kwargs)


def resume_all(paths: ProjectPaths) -> list[ErasureResult]:
    """Finish every interrupted erasure of the project."""
    return Erasure(paths).resume()


def merge_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's record from its stores' outcomes: a later store's key replaces an earlier
    one's, except ``note``, what a store could not guarantee, which are all kept (the
    certificate's ``store_notes``): the dvc step's stack S3 and another API remote each have
    one."""
    out: dict[str, Any] = {}
    notes: list[str] = []
    for info in infos:
        out.update(info)
        if info.get("note") and str(info["note"]) not in notes:
            notes.append(str(info["note"]))
    if notes:
        out["note"] = "; ".join(notes)
    return out
