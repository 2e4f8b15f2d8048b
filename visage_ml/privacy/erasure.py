"""Erasure (Art. 17) across every store, orchestrated, resumable, and ending in a certificate.

One erasure request runs these steps in order; each is idempotent and recorded:

=============  =================================================================================
step           what it does
=============  =================================================================================
lineage        (reads only) which data versions and models saw the subject; needed before the
               manifests that prove presence are purged
gallery        the subject's template and gallery key (:meth:`Gallery.erase`): from the end of
               this step the subject is never matched again
vault          the identity-vault key, record and blind-index entry (cryptographic erase)
raw            the subject's files and rows leave ``data/raw`` through :class:`RawStore` (under
               its lock) and ``dvc add`` records the new ``.dir`` md5
dvc            DVC objects of those files, ``.dir`` manifests that list them, old table versions
               naming the pid: purged by hash from the cache, every remote and the site cache
processed      ``data/processed`` without the subject (``privacy.processed_on_erasure``:
               ``purge`` rewrites the files, ``rebuild`` runs ``dvc repro prepare``) and the
               subject's export bundles under ``privacy/exports``
mlflow         MLflow artefacts and rows naming the subject (by design none) purged, SQLite pages
               included (``PRAGMA secure_delete=ON`` + ``VACUUM``)
snapshot       the consent snapshot refreshed
certificate    ``erasure.completed`` (committing to the claims), a tree head, the signed
               certificate ``privacy/certificates/<request id>.json``, the request's receipt
=============  =================================================================================

Each destructive step appends ``erasure.step`` with ``phase: planned`` (the artefacts it is about
to remove, each with its SHA-256 taken before deletion), acts, then appends ``erasure.step`` with
``phase: done``. A process killed anywhere (``kill -9``) leaves either nothing, or a plan the
next run (``visage privacy resume``) completes; the certificate's claims are built from the
ledger alone, so a resumed run certifies exactly what the first one planned.

Fault injection for tests: ``VISAGE_FAULT=erasure:<step>`` ends the process (``os._exit``)
after the step acted and before it recorded ``done``; ``erasure:<step>:planned`` right after the
plan was recorded; ``erasure:certificate:completed`` right after ``erasure.completed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sqlite3
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.io import (
    CHUNK,
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    md5_file,
    secure_unlink,
    sha256_file,
)
from visage_ml.privacy import merkle
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.keys import check_pid
from visage_ml.privacy.requests import (
    IN_PROGRESS,
    RECEIVED,
    VERIFIED,
    RequestBook,
    RequestState,
    RequestStateError,
)

log = logging.getLogger(__name__)

STEPS: tuple[str, ...] = (
    "lineage",
    "gallery",
    "vault",
    "raw",
    "dvc",
    "processed",
    "mlflow",
    "snapshot",
    "certificate",
)
FAULT_ENV = "VISAGE_FAULT"
FAULT_EXIT = 137
LOCK = Path(".visage") / "locks" / "erasure.lock"
EXPORTS_DIR = Path("privacy") / "exports"
PROCESSED_FILES = ("faces.u8.npy", "manifest.parquet", "detection.parquet", "splits.json")
FACES_FILE = PROCESSED_FILES[0]
MLFLOW_LEAF_TABLES = frozenset(
    {
        "tags",
        "params",
        "metrics",
        "latest_metrics",
        "experiment_tags",
        "model_version_tags",
        "registered_model_tags",
        "input_tags",
        "trace_tags",
        "trace_request_metadata",
        "logged_model_tags",
        "logged_model_params",
    }
)
ERASED_TEXT = "[erased]"

MSG_NOT_ERASURE = "request {rid} is a {right} request, not an erasure"
MSG_NOT_VERIFIED = (
    "erasure request {rid} is not verified yet; verify the requester's identity first "
    "(`visage privacy request verify {rid}`)"
)
MSG_CLOSED = "erasure request {rid} is already {status}"


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


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _hash_pair(path: Path) -> tuple[str, str]:
    """(SHA-256, MD5) of a file in one pass.

    Past the first chunk the MD5 runs in a helper thread while this one computes the SHA-256
    and reads ahead (hashlib releases the GIL on large buffers): the crops of a default project
    (140 MB) take the time of their MD5 alone on two cores.
    """
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        chunk = fh.read(CHUNK)
        if len(chunk) < CHUNK:
            sha.update(chunk)
            md5.update(chunk)
            return sha.hexdigest(), md5.hexdigest()
        with ThreadPoolExecutor(max_workers=1) as pool:
            while chunk:
                job = pool.submit(md5.update, chunk)
                sha.update(chunk)
                ahead = fh.read(CHUNK)
                job.result()
                chunk = ahead
    return sha.hexdigest(), md5.hexdigest()


def _merge(*lists: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Artefact lists merged, each (store, path, sha256) once, in first-seen order."""
    seen: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for items in lists:
        for a in items:
            seen.setdefault((a.get("store"), a.get("path"), a.get("sha256")), dict(a))
    return list(seen.values())


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
        self._setup: Any = None

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
            result = ErasureResult(request_id, st.pid)
            if st.status == VERIFIED:
                t = time.perf_counter()
                self.book.start(request_id)
                result.timings["start"] = time.perf_counter() - t
            actions: dict[str, Callable[[RequestState, list[dict[str, Any]]], Any]] = {
                "lineage": self._lineage,
                "gallery": self._gallery,
                "vault": self._vault,
                "raw": self._raw,
                "dvc": self._dvc,
                "processed": self._processed,
                "mlflow": self._mlflow,
                "snapshot": self._snapshot,
            }
            for step in STEPS[:-1]:
                st = self.book.get(request_id)
                rec = st.steps.get(step)
                if rec is not None and rec.done:
                    continue
                if rec is not None:
                    result.resumed_steps.append(step)
                t = time.perf_counter()
                actions[step](st, list(rec.planned) if rec is not None else [])
                result.timings[step] = time.perf_counter() - t
                log.info("erasure %s: step %s done", request_id, step)
            t = time.perf_counter()
            self._certificate(result)
            result.timings["certificate"] = time.perf_counter() - t
            return result

    # -- recording -----------------------------------------------------------------------------
    def _record(
        self,
        st: RequestState,
        step: str,
        phase: str,
        artefacts: list[dict[str, Any]],
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
        previous: list[dict[str, Any]],
        found: list[dict[str, Any]],
        info: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Record the plan (unless an earlier run did and nothing new was found)."""
        merged = _merge(previous, found)
        if not previous or len(merged) != len(previous):
            self._record(st, step, "planned", merged, info)
        _fault(step, "planned")
        return merged

    # -- steps ---------------------------------------------------------------------------------
    def _dvc_setup(self) -> Any:
        from visage_ml.privacy import dvc_purge

        if self._setup is None:
            self._setup = dvc_purge.open_setup(self.paths.root)
        return self._setup

    def _lineage(self, st: RequestState, previous: list[dict[str, Any]]) -> None:
        from dataclasses import asdict

        from visage_ml.privacy import dvc_purge
        from visage_ml.privacy.lineage import subject_lineage

        setup = self._dvc_setup() if dvc_purge.is_dvc_repo(self.paths.root) else None
        lin = subject_lineage(self.paths, st.pid, setup=setup)
        info = {
            "data_versions": [asdict(d) for d in lin.data],
            "models": [asdict(m) for m in lin.models],
            "notes": lin.notes,
            "raw_md5_before": _tracked_md5(self.paths),
        }
        _fault("lineage")
        self._record(st, "lineage", "done", [], info)

    def _gallery(self, st: RequestState, previous: list[dict[str, Any]]) -> None:
        from visage_ml.serving import gallery as gal

        root = self.paths.root
        found = []
        key = self.paths.gallery / gal.KEYS_DIR / f"{st.pid}.key"
        tpl = self.paths.gallery / gal.TEMPLATES_DIR / st.pid[1:3] / f"{st.pid}{gal.SUFFIX}"
        for p in (tpl, key):
            if p.is_file():
                found.append({"store": "gallery", "path": _rel(p, root), "sha256": sha256_file(p)})
        planned = self._planned(st, "gallery", previous, found)
        removed: dict[str, str] = {}
        gallery = self.gallery if self.gallery is not None else self._open_gallery()
        if gallery is not None:
            removed = gallery.erase(st.pid, reason="erasure").removed
        else:
            for p in (key, tpl):
                if p.is_file():
                    removed[_rel(p, root)] = sha256_file(p)
                    secure_unlink(p)
        _fault("gallery")
        done = _merge(
            planned, [{"store": "gallery", "path": k, "sha256": v} for k, v in removed.items()]
        )
        self._record(st, "gallery", "done", done)

    def _open_gallery(self) -> Any:
        from visage_ml.serving.gallery import Gallery

        return Gallery.open_existing(self.paths, core=self.core, load=False)

    def _vault(self, st: RequestState, previous: list[dict[str, Any]]) -> None:
        root = self.paths.root
        vault_dir = self.paths.vault
        found = []
        for p in (vault_dir / "records" / f"{st.pid}.bin", vault_dir / "keys" / f"{st.pid}.key"):
            if p.is_file():
                found.append({"store": "vault", "path": _rel(p, root), "sha256": sha256_file(p)})
        index = vault_dir / "index.json"
        if index.is_file() and st.pid.encode() in index.read_bytes():
            found.append(
                {"store": "vault", "path": _rel(index, root), "sha256": sha256_file(index)}
            )
        planned = self._planned(st, "vault", previous, found)
        removed: dict[str, str] = {}
        if (vault_dir / "keys").is_dir():
            removed = self.core.vault.destroy(st.pid).removed
        _fault("vault")
        done = _merge(
            planned,
            [
                {"store": "vault", "path": _rel(Path(k), root), "sha256": v}
                for k, v in removed.items()
            ],
        )
        self._record(st, "vault", "done", done)

    def _raw(self, st: RequestState, previous: list[dict[str, Any]]) -> None:
        from visage_ml import dvcops
        from visage_ml.data.rawstore import IMAGES_FILE, SUBJECTS_FILE, RawStore

        root, raw = self.paths.root, self.paths.raw
        found = []
        folder = raw / st.pid
        if folder.is_dir():
            for f in sorted(p for p in folder.rglob("*") if p.is_file()):
                sha, md5 = _hash_pair(f)
                found.append({"store": "data", "path": _rel(f, root), "sha256": sha, "md5": md5})
        for name in (SUBJECTS_FILE, IMAGES_FILE):
            f = raw / name
            if f.is_file() and _table_names(f, st.pid):
                sha, md5 = _hash_pair(f)
                found.append({"store": "data", "path": _rel(f, root), "sha256": sha, "md5": md5})
        before = _tracked_md5(self.paths)
        planned = self._planned(st, "raw", previous, found, {"raw_md5_before": before})
        store = RawStore(self.paths, core=self.core, track=False)
        with store.transaction() as txn:
            if not txn.remove_subject(st.pid) and not found:
                txn.discard()
        # `dvc add` under the raw store's lock, in this process (DVC is imported for the purge
        # anyway); a resumed run whose removal was already committed runs it too.
        after = _tracked_md5(self.paths)
        if dvcops.is_dvc_repo(root):
            from visage_ml.privacy.dvc_purge import add

            with store.lock():
                try:
                    after = add(root, raw)
                except Exception as exc:  # DVC's own errors: say how to finish
                    raise RuntimeError(
                        "data/raw no longer holds the subject but `dvc add data/raw` failed; fix "
                        f"DVC and run `visage privacy resume`: {exc}"
                    ) from exc
        _fault("raw")
        self._record(st, "raw", "done", planned, {"raw_md5_before": before, "raw_md5_after": after})

    def _dvc(self, st: RequestState, previous: list[dict[str, Any]]) -> None:
        from visage_ml.privacy import dvc_purge

        if not dvc_purge.is_dvc_repo(self.paths.root):
            _fault("dvc")
            self._record(st, "dvc", "done", [], {"dvc": False})
            return
        setup = self._dvc_setup()
        raw_rec = st.steps.get("raw")
        known = [a["md5"] for a in (raw_rec.planned if raw_rec else []) if a.get("md5")]
        purge_plan = dvc_purge.plan(setup, st.pid, known_md5s=known)
        planned = self._planned(
            st, "dvc", previous, purge_plan.artefacts(), {"kept_still_referenced": purge_plan.kept}
        )
        # Objects planned by an interrupted run and still present are deleted too.
        by_store = {(a["store"], a["md5"]) for a in purge_plan.objects}
        purge_plan.objects.extend(
            a for a in planned if a.get("md5") and (a["store"], a["md5"]) not in by_store
        )
        purge_plan.targets = sorted(
            set(purge_plan.targets) | {a["md5"] for a in planned if a.get("md5")}
        )
        removed = dvc_purge.execute(setup, purge_plan)
        if purge_plan.kept:
            log.warning(
                "%d DVC object(s) of the subject are byte-identical to data still in use under "
                "another path and were kept; the certificate declares them",
                len(purge_plan.kept),
            )
        _fault("dvc")
        self._record(
            st,
            "dvc",
            "done",
            _merge(planned, removed),
            {
                "remotes": sorted(setup.remote_urls),
                "site_cache": str(setup.site_cache_dir) if setup.site_cache_dir else None,
                "kept_still_referenced": purge_plan.kept,
            },
        )

    def _processed(self, st: RequestState, previous: list[dict[str, Any]]) -> None:
        from visage_ml.privacy import dvc_purge

        root = self.paths.root
        processed = self.paths.processed
        found = []
        for name in PROCESSED_FILES:
            f = processed / name
            if f.is_file() and _processed_names(processed, name, st.pid):
                sha, md5 = _hash_pair(f)
                found.append({"store": "data", "path": _rel(f, root), "sha256": sha, "md5": md5})
        # Versions of those outputs DVC may hold (`cache: true`, `dvc commit`, a push): purged
        # by hash like raw objects; a stale dvc.lock naming them does not keep them.
        old_md5s = {a["md5"] for a in [*previous, *found] if a.get("md5")}
        stores = self._dvc_setup().stores if dvc_purge.is_dvc_repo(root) else []
        # An object with the md5 of a file hashed above has its content: reuse its SHA-256
        # rather than read another 100 MB per store.
        known = {a["md5"]: a["sha256"] for a in found}
        for store in stores:
            for md5 in sorted(old_md5s):
                with contextlib.suppress(OSError):
                    if store.exists(md5):
                        found.append(
                            {
                                "store": "dvc-" + store.name,
                                "path": store.display(md5, root),
                                "md5": md5,
                                "sha256": known.get(md5) or store.sha256(md5),
                            }
                        )
        for f in _export_bundles(self.paths, st.pid):
            found.append({"store": "exports", "path": _rel(f, root), "sha256": sha256_file(f)})
        # Temporary files an interrupted `prepare` (or purge) left: crops of anyone, deleted.
        leftovers = sorted(processed.glob(".*.tmp")) if processed.is_dir() else []
        for f in leftovers:
            found.append({"store": "data", "path": _rel(f, root), "sha256": sha256_file(f)})
        mode = self.params.privacy.processed_on_erasure
        faces = [a for a in found if a["store"] == "data" and a["path"].endswith("faces.u8.npy")]
        before = faces[0]["md5"] if faces else None
        planned = self._planned(st, "processed", previous, found, {"mode": mode})
        for f in leftovers:
            secure_unlink(f)
        if any(a["store"] == "data" and not a["path"].endswith(".tmp") for a in found):
            if mode == "rebuild":
                _rebuild_processed(self.paths)
            else:
                purge_processed(self.paths, st.pid)
        by_name = {"dvc-" + s.name: s for s in stores}
        in_dvc = [a for a in planned if a["store"] in by_name]
        # md5 of what the outputs hold now (the crops: 140 MB), only when something asks.
        now = (
            {n: md5_file(processed / n) for n in PROCESSED_FILES if (processed / n).is_file()}
            if in_dvc or faces
            else {}
        )
        for a in in_dvc:
            if a["md5"] not in now.values():
                by_name[a["store"]].remove(a["md5"])
        for f in _export_bundles(self.paths, st.pid):
            secure_unlink(f)
        after = now.get(FACES_FILE) if faces else None
        _fault("processed")
        info = {"mode": mode, "processed_md5_before": before, "processed_md5_after": after}
        self._record(st, "processed", "done", planned, info)

    def _mlflow(self, st: RequestState, previous: list[dict[str, Any]]) -> None:
        raw_rec = st.steps.get("raw")
        file_hashes = {a["sha256"] for a in (raw_rec.planned if raw_rec else []) if a.get("sha256")}
        found = scan_mlflow(self.paths, st.pid, file_hashes)
        planned = self._planned(st, "mlflow", previous, found)
        purge_mlflow(self.paths, st.pid, planned)
        _fault("mlflow")
        self._record(st, "mlflow", "done", planned, {"found": len(planned)})

    def _snapshot(self, st: RequestState, previous: list[dict[str, Any]]) -> None:
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
                artefacts = _merge(artefacts, [{**a, "step": step} for a in rec.artefacts])
        info = {k: v.info for k, v in st.steps.items()}
        lin = info.get("lineage", {})
        data_versions = lin.get("data_versions") or []
        processed_with = sorted({d["md5"] for d in data_versions if d.get("kind") == "processed"})
        raw_info = info.get("raw", {})
        proc = info.get("processed", {})
        kept = set((info.get("dvc") or {}).get("kept_still_referenced") or [])
        retained = sorted(
            {(a["md5"], a["sha256"]) for a in artefacts if a.get("md5") in kept and a.get("sha256")}
        )
        return {
            "artefacts": artefacts,
            "dataset": {
                "raw_md5_before": raw_info.get("raw_md5_before") or lin.get("raw_md5_before"),
                "raw_md5_after": raw_info.get("raw_md5_after"),
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
            "steps": [
                {"step": s, "seq": st.steps[s].seq, "artefacts": len(st.steps[s].artefacts)}
                for s in STEPS[:-1]
                if s in st.steps
            ],
            "dvc": {
                "remotes": (info.get("dvc") or {}).get("remotes", []),
                "kept_still_referenced": sorted(kept),
            },
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
        }

    def _certificate(self, result: ErasureResult) -> None:
        from visage_ml.privacy.certificate import build_certificate, claims_digest
        from visage_ml.privacy.certificate import write_certificate as write

        st = self.book.get(result.request_id)
        claims = self.claims(st)
        ledger = self.core.ledger
        if st.erasure_completed_seq is not None:
            completed, head = _completion_entries(ledger, st.erasure_completed_seq)
        else:
            completed = ledger.append(
                "erasure.completed",
                st.pid,
                {
                    "request_id": st.request_id,
                    "claims_sha256": claims_digest(claims),
                    "artefacts": len(claims["artefacts"]),
                    "raw_md5_after": claims["dataset"]["raw_md5_after"],
                },
            )
            head = None
        self.core.snapshot()
        _fault("certificate", "completed")
        # One pass over the ledger gives the tree head and the inclusion proof.
        hashes = ledger.leaf_hashes(int(head.payload["size"]) if head is not None else None)
        tree = merkle.MerkleTree(hashes)
        root = tree.root().hex()
        if head is None:
            head = ledger.append("tree_head", None, {"size": len(hashes), "root": root})
        inclusion = _inclusion(tree, completed.seq)
        project = self.params.project
        doc = build_certificate(
            self.paths,
            request={
                "request_id": st.request_id,
                "pid": st.pid,
                "received_at": st.received_at,
            },
            claims=claims,
            completed=completed,
            tree_head=head,
            inclusion=inclusion,
            controller={"name": project.controller, "contact": project.controller_contact},
        )
        path = write(self.paths, doc)
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
        result.certificate_path = path
        result.certificate = doc


# ---------------------------------------------------------------------------------------------
# Helpers of the steps
# ---------------------------------------------------------------------------------------------


def _completion_entries(ledger: Any, seq: int) -> tuple[Any, Any]:
    """The ``erasure.completed`` entry at ``seq`` and the first tree head after it (or None)."""
    from visage_ml.privacy.ledger import Entry

    completed = head = None
    for i, (_, line) in enumerate(ledger.iter_lines()):
        if i == seq:
            completed = Entry(**json.loads(line))
        elif i > seq and b'"tree_head"' in line:
            entry = Entry(**json.loads(line))
            if entry.type == "tree_head":
                head = entry
                break
    if completed is None:
        raise RuntimeError(f"the ledger has no entry {seq}; restore it from a backup")
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


def _tracked_md5(paths: ProjectPaths) -> str | None:
    from visage_ml import dvcops

    return dvcops.tracked_md5(paths.root, paths.raw)


def _table_names(path: Path, pid: str) -> bool:
    from visage_ml.privacy.dvc_purge import parquet_names

    return parquet_names(path.read_bytes(), pid)


def _processed_names(processed: Path, name: str, pid: str) -> bool:
    f = processed / name
    if name.endswith(".parquet"):
        return _table_names(f, pid)
    if name == "faces.u8.npy":
        manifest = processed / "manifest.parquet"
        return manifest.is_file() and _table_names(manifest, pid)
    return pid.encode() in f.read_bytes()


def _export_bundles(paths: ProjectPaths, pid: str) -> list[Path]:
    """Export bundles under ``privacy/exports`` whose manifest names ``pid``."""
    folder = paths.root / EXPORTS_DIR
    out = []
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.zip")):
        try:
            with zipfile.ZipFile(f) as z:
                manifest = json.loads(z.read("manifest.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
        if manifest.get("pid") == pid:
            out.append(f)
    return out


def purge_processed(paths: ProjectPaths, pid: str) -> dict[str, int]:
    """Remove ``pid`` from ``data/processed``: crops, manifest, detection table, splits.

    The subject's crops are overwritten with zeros in place (their bytes do not survive in
    freed disk blocks, as they would after a copy-and-rename, and the other 100 MB are not
    rewritten); the manifest loses their rows and keeps every other ``row`` index, which is how
    consumers address ``faces.u8.npy``. Safe to run again after an interruption.

    Returns
    -------
    dict
        ``{"rows_removed": n, "rows_kept": m}``.
    """
    import numpy as np
    import pandas as pd

    processed = paths.processed
    manifest_path = processed / "manifest.parquet"
    faces_path = processed / "faces.u8.npy"
    manifest = pd.read_parquet(manifest_path)
    mask = manifest["pid"].astype(str) == pid
    kept = manifest.loc[~mask]
    removed = int(mask.sum())
    if faces_path.is_file() and removed:
        faces = np.load(faces_path, mmap_mode="r+")
        rows = manifest.loc[mask, "row"].to_numpy(dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < faces.shape[0])]
        faces[rows] = 0
        faces.flush()
        del faces
        with open(faces_path, "rb+") as fh:
            os.fsync(fh.fileno())
    if removed:
        _write_parquet(kept.reset_index(drop=True), manifest_path)
    detection_path = processed / "detection.parquet"
    if detection_path.is_file():
        det = pd.read_parquet(detection_path)
        dmask = det["pid"].astype(str) == pid
        if dmask.any():
            _write_parquet(det.loc[~dmask].reset_index(drop=True), detection_path)
    splits_path = processed / "splits.json"
    if splits_path.is_file():
        doc = json.loads(splits_path.read_text(encoding="utf-8"))
        changed = False
        for k, v in list(doc.items()):
            if isinstance(v, list) and pid in v:
                doc[k] = [p for p in v if p != pid]
                changed = True
        if changed:
            atomic_write_json(splits_path, doc)
    return {"rows_removed": removed, "rows_kept": len(kept)}


def _write_parquet(df: Any, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def _rebuild_processed(paths: ProjectPaths) -> None:
    """``dvc repro prepare`` (or the stage itself outside DVC), which re-reads the snapshot."""
    import subprocess
    import sys

    from visage_ml import dvcops

    if dvcops.is_dvc_repo(paths.root):
        dvcops.run_dvc(paths.root, "repro", "prepare")
        return
    proc = subprocess.run(
        [sys.executable, "-m", "visage_ml.stages.prepare"],
        cwd=paths.root,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "VISAGE_PROJECT": str(paths.root)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the prepare stage failed: {proc.stderr.strip()[-1000:]}")


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------


def _mlflow_db(paths: ProjectPaths) -> Path:
    return paths.mlruns / "mlflow.db"


def _db_rows_naming(db: Path, pid: str) -> int:
    """How many rows of the MLflow database hold ``pid`` in any column."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return 0
    n = 0
    try:
        for table, cols in _text_columns(con):
            for col in cols:
                # Names come from the database's own schema; the value is bound.
                n += con.execute(
                    f'SELECT COUNT(*) FROM "{table}" WHERE instr(CAST("{col}" AS BLOB), ?) > 0',  # noqa: S608
                    (pid.encode(),),
                ).fetchone()[0]
    finally:
        con.close()
    return n


def _text_columns(con: sqlite3.Connection) -> list[tuple[str, list[str]]]:
    out = []
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        cols = [
            r[1]
            for r in con.execute(f'PRAGMA table_info("{table}")')
            if not str(r[2]).upper().startswith(("INT", "REAL", "FLOAT", "DOUBLE", "BOOL"))
        ]
        if cols:
            out.append((str(table), cols))
    return out


def scan_mlflow(paths: ProjectPaths, pid: str, file_sha256s: set[str]) -> list[dict[str, Any]]:
    """MLflow artefacts and database content that hold the subject: pid or image files.

    Every file under ``mlruns/`` is read: a file naming the pid, or whose SHA-256 is one of the
    subject's image files, is listed; the SQLite store is listed when a row names the pid or
    when its file still holds the pid in freed pages.
    """
    root = paths.root
    found = []
    needle = pid.encode()
    db = _mlflow_db(paths)
    if not paths.mlruns.is_dir():
        return found
    for dirpath, _dirs, files in os.walk(paths.mlruns):
        for name in files:
            f = Path(dirpath) / name
            if f == db or name.startswith("mlflow.db-"):
                continue
            try:
                data = f.read_bytes()
            except OSError:
                continue
            if needle in data or hashlib.sha256(data).hexdigest() in file_sha256s:
                found.append(
                    {
                        "store": "mlflow",
                        "path": _rel(f, root),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
    if db.is_file():
        in_bytes = any(
            p.is_file() and needle in p.read_bytes()
            for p in (db, Path(f"{db}-wal"), Path(f"{db}-journal"))
        )
        if in_bytes or _db_rows_naming(db, pid):
            found.append({"store": "mlflow", "path": _rel(db, root), "sha256": sha256_file(db)})
    return found


def purge_mlflow(paths: ProjectPaths, pid: str, artefacts: Iterable[Mapping[str, Any]]) -> None:
    """Remove what :func:`scan_mlflow` listed.

    Artefact files are overwritten and deleted. In the database, rows of tag, param and metric
    tables that name the pid are deleted and other tables' values have the pid replaced by
    ``[erased]``; then ``PRAGMA secure_delete=ON`` and ``VACUUM`` rewrite the file so that no
    freed page keeps the old bytes.
    """
    root = paths.root
    db = _mlflow_db(paths)
    for a in artefacts:
        f = root / a["path"] if not Path(a["path"]).is_absolute() else Path(a["path"])
        if f.resolve() == db.resolve():
            continue
        secure_unlink(f)
    if not db.is_file():
        return
    needle = pid.encode()
    if not any(
        p.is_file() and needle in p.read_bytes()
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-journal"))
    ):
        return
    con = sqlite3.connect(db, timeout=60)
    try:
        con.execute("PRAGMA secure_delete = ON")
        for table, cols in _text_columns(con):
            for col in cols:
                # Names come from the database's own schema; values are bound.
                where = f'instr(CAST("{col}" AS BLOB), ?) > 0'
                if table in MLFLOW_LEAF_TABLES:
                    con.execute(f'DELETE FROM "{table}" WHERE {where}', (needle,))  # noqa: S608
                else:
                    con.execute(
                        f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE {where}',  # noqa: S608
                        (pid, ERASED_TEXT, needle),
                    )
        con.commit()
        con.execute("VACUUM")
        with contextlib.suppress(sqlite3.Error):
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# Convenience
# ---------------------------------------------------------------------------------------------


def erase_subject(paths: ProjectPaths, pid: str, **kwargs: Any) -> ErasureResult:
    """Receive, verify and run an erasure of ``pid`` (see :class:`Erasure`)."""
    return Erasure(paths).erase(pid, **kwargs)


def resume_all(paths: ProjectPaths) -> list[ErasureResult]:
    """Finish every interrupted erasure of the project."""
    return Erasure(paths).resume()
