"""Which data versions and models saw a subject, read from DVC lineage, ONNX metadata and MLflow.

The chain is the project's own lineage: a model records the md5 of the ``prepare`` output it
was trained on (``data/processed/faces.sealed``: ``dvc.lock`` deps of the training stages, the
``visage.data_md5`` metadata of the ONNX files, the ``visage.data_md5`` tag of MLflow runs and
registered model versions, read through MLflow's client from whatever backend the tracking URI
names). A processed data version contained the subject when

- it is the workspace's and ``manifest.parquet`` lists the pid (exact), or
- a ``dvc.lock`` (the workspace's or one git holds under any ref: branches, tags,
  ``dvc exp run``'s ``refs/exps``, the stash, the reflogs) produced it from a ``data/raw``
  manifest that lists the subject's folder (conservative: the consent filter may have left the
  subject out, but raw data containing them went in); for a manifest an erasure of someone
  else purged, what :mod:`visage_ml.rights.manifest_index` kept of it.

Erasure calls :func:`subject_lineage` before deleting anything (afterwards the manifests that
prove presence are purged) and puts the result into the certificate. Models in it stay
``stale`` until retrained: :func:`current_models` and :func:`check_retrained` say whether the
models now in use were trained on data known to be without the subject (positive evidence,
:func:`known_without`: a data version lineage has never seen is not clean; for a certificate,
:func:`check_certified`, whichever command asks), and :func:`refresh` appends the signed
``erasure.models_retrained`` event that upgrades a certificate's model status. A certificate is
judged only as :func:`verified_certificate` reads it: signed by a key of the ledger's key chain
and matching its signed ``erasure.completed`` entry (a file edited on disk is not).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from visage_ml import dvcops
from visage_ml.config import ProjectPaths
from visage_ml.data.prepare import FACES_FILE, MANIFEST_FILE
from visage_ml.io import md5_file
from visage_ml.privacy import certificate_page
from visage_ml.privacy.certificate import render, signer_in_history, verify_proof
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import RequestBook
from visage_ml.procenv import child_env
from visage_ml.rights import dvc_objects, manifest_index

log = logging.getLogger(__name__)

# Paths as dvc.yaml and dvc.lock name them.
FACES = f"data/processed/{FACES_FILE}"
MANIFEST = f"data/processed/{MANIFEST_FILE}"
RAW = "data/raw"
# Distinct dvc.lock versions read from git (each a few kilobytes of YAML).
MAX_REVISIONS = 5000
MSG_UNREAD_LOCKS = (
    "{n} older dvc.lock version(s) in git were not read (only the newest {max} are), so "
    "whether their models saw the subject is unknown"
)
DATA_MD5_TAG = "visage.data_md5"
SQLITE_PREFIX = "sqlite:///"
STALE = "stale"
# What lineage says when it lists no model: sure, or only as far as the data versions it read.
NO_MODEL = "no model was trained on data containing the subject"
NO_MODEL_UNKNOWN = (
    "no model is known to have been trained on data containing the subject (some data versions "
    "could not be read: see the notes)"
)
# Models whose training data no lineage records: not ruled out, conceded (claims.lineage_notes).
MSG_UNRECORDED_DATA = (
    "data version {md5}, which no dvc.lock records: whether the models trained on it saw the "
    "subject is unknown ({models})"
)
MSG_NO_DATA = (
    "models that record no training data version: whether they saw the subject is unknown "
    "({models})"
)
RETRAINED = "retrained"
CLEAN = "clean"
# What becomes of a certificate's stale models (:func:`models_verdict`).
RETRAINED_UNRECORDED = "retrained (run --refresh to record it)"
IN_USE_AGAIN = certificate_page.IN_USE_AGAIN
MSG_IN_USE_AGAIN = (
    IN_USE_AGAIN + ": the signed erasure.models_retrained of ledger seq {seq} said they were "
    "retrained, but a model in use now was trained on data that held the subject or on data "
    "not known to be without them (or the processed data holds them again); retrain (`dvc "
    "repro`) and run `visage privacy lineage --refresh`"
)
# Retraining replaces the models in use; those trained on the subject stay restorable.
MSG_RESTORABLE = (
    "{n} model(s) trained on the subject remain restorable in DVC/MLflow: {models} (retraining "
    "does not delete them; docs/security.md says how to purge them)"
)
# A remote that could not be asked whether it holds a model trained on the subject.
MSG_NOT_ASKED = (
    "the DVC remote(s) {names} could not be asked whether they hold the model(s) trained on the "
    "subject (one pushed there comes back with `dvc pull`): make them reachable and run it again"
)
# A certificate whose signature or ledger entry does not verify: its claims are not judged.
MSG_UNVERIFIED = (
    "the erasure certificate {path} failed verification ({failed}): its claims are not judged "
    "and no retraining is recorded on them; run `visage privacy verify-certificate {path}`"
)
NOT_LEDGER_KEY = "signature (by no key of the ledger's key chain)"


@dataclass(frozen=True)
class DataVersion:
    """A version of the data that contained the subject."""

    kind: str  # "raw" (a data/raw .dir md5) or "processed" (md5 of faces.sealed)
    md5: str
    source: str  # "workspace", "dvc.lock", "dvc.lock@<rev>"
    exact: bool  # the subject's rows are known to be in it (else: raw data contained them)


@dataclass(frozen=True)
class ModelVersion:
    """A model and the data version it was trained on."""

    kind: str  # "dvc" (a stage output), "onnx", "mlflow_model", "mlflow_run"
    model: str  # stage:path, file, registered model name or run name
    version: str
    data_md5: str | None
    source: str

    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.model, self.version)


@dataclass
class Lineage:
    """What saw a subject: data versions and the models trained on them."""

    pid: str
    data: list[DataVersion] = field(default_factory=list)
    models: list[ModelVersion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def processed_md5s(self) -> set[str]:
        return {d.md5 for d in self.data if d.kind == "processed"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "data_versions": [asdict(d) for d in self.data],
            "models": [asdict(m) for m in self.models],
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# dvc.lock documents: the workspace's and those in git history
# ---------------------------------------------------------------------------------------------


def lock_documents(
    root: Path, *, history: bool = True, notes: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """``(source, dvc.lock document)``: the workspace's first, then each version git holds.

    Every ref is read, not the branch checked out: other branches, tags, ``dvc exp run``'s
    ``refs/exps/...``, the stash and the reflogs (a model trained there is one `git checkout`
    or `dvc exp apply` away from use). Each distinct version once, newest first, up to
    :data:`MAX_REVISIONS`; when more exist, ``notes`` (when given) says how many were not read.
    """
    root = Path(root)
    out: list[tuple[str, dict[str, Any]]] = []
    lock = root / "dvc.lock"
    if lock.is_file():
        with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError, OSError):
            out.append(("dvc.lock", _load_yaml(lock.read_bytes()) or {}))
    if not history or not (root / ".git").exists():
        return out
    revs = (_git(root, "log", "--all", "--reflog", "--format=%H", "--", "dvc.lock") or b"").split()
    if not revs:
        return out
    names = [f"{rev.decode()}:dvc.lock" for rev in revs]
    found = _git(root, "cat-file", "--batch-check=%(objectname)", stdin=names) or b""
    first: dict[str, str] = {}  # blob -> the newest revision holding it
    for name, line in zip(names, found.decode().splitlines(), strict=False):
        oid = line.strip()
        if oid and not oid.endswith("missing"):
            first.setdefault(oid, name.split(":", 1)[0])
    blobs = list(first)
    if len(blobs) > MAX_REVISIONS and notes is not None:
        notes.append(MSG_UNREAD_LOCKS.format(n=len(blobs) - MAX_REVISIONS, max=MAX_REVISIONS))
    for oid, data in _blobs(root, blobs[:MAX_REVISIONS]):
        with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
            doc = _load_yaml(data) or {}
            if isinstance(doc, dict):
                out.append((f"dvc.lock@{first[oid][:12]}", doc))
    return out


def _load_yaml(data: bytes) -> Any:
    # libyaml when built in: thousands of lock versions are read on every lineage question.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(data.decode("utf-8"))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _git(root: Path, *args: str, stdin: list[str] | None = None) -> bytes | None:
    """git's output (None when it failed or could not run)."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=root,
            env=child_env(),
            input="".join(f"{line}\n" for line in stdin).encode() if stdin is not None else None,
            capture_output=True,
            check=False,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _blobs(root: Path, oids: list[str]) -> Iterator[tuple[str, bytes]]:
    """``(oid, content)`` of git blobs, read by one ``git cat-file --batch``."""
    if not oids:
        return
    data = _git(root, "cat-file", "--batch", stdin=oids) or b""
    pos = 0
    while pos < len(data):
        eol = data.find(b"\n", pos)
        if eol < 0:
            return
        header = data[pos:eol].decode(errors="replace").split()
        pos = eol + 1
        if len(header) != 3:  # "<oid> missing"
            continue
        size = int(header[2])
        yield header[0], data[pos : pos + size]
        pos += size + 1


def _entries(stage: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    items = stage.get(kind) or []
    return [i for i in items if isinstance(i, dict) and i.get("path")]


def _md5_of(stage: Mapping[str, Any], kind: str, path: str) -> str | None:
    for item in _entries(stage, kind):
        if item.get("path") == path and item.get("md5"):
            return str(item["md5"])
    return None


def _stages(doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    stages = doc.get("stages") or {}
    return {k: v for k, v in stages.items() if isinstance(v, Mapping)}


# ---------------------------------------------------------------------------------------------
# Presence of the subject in data versions
# ---------------------------------------------------------------------------------------------


def workspace_processed_md5(paths: ProjectPaths) -> str | None:
    """md5 of the workspace's ``faces.sealed`` (``dvc.lock``'s when it matches, else computed)."""
    faces = paths.root / FACES
    if not faces.is_file():
        return None
    lock = paths.root / "dvc.lock"
    if lock.is_file():
        with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError, OSError):
            doc = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
            prepare = _stages(doc).get("prepare") or {}
            locked_manifest = _md5_of(prepare, "outs", MANIFEST)
            locked_faces = _md5_of(prepare, "outs", FACES)
            manifest = paths.root / MANIFEST
            if (
                locked_faces
                and locked_manifest
                and manifest.is_file()
                and md5_file(manifest) == locked_manifest
                and faces.stat().st_size == _size_of(prepare, FACES)
            ):
                return locked_faces
    return md5_file(faces)


def _size_of(stage: Mapping[str, Any], path: str) -> int | None:
    for item in _entries(stage, "outs"):
        if item.get("path") == path:
            return item.get("size")
    return None


def processed_has(paths: ProjectPaths, pid: str) -> bool:
    """Whether the workspace's processed manifest lists ``pid``."""
    manifest = paths.root / MANIFEST
    if not manifest.is_file():
        return False
    col = pq.read_table(manifest, columns=["pid"]).column("pid")
    return pid in {str(v) for v in col.to_pylist()}


def raw_has(paths: ProjectPaths, pid: str) -> bool:
    """Whether ``data/raw`` holds the subject's folder."""
    return (paths.raw / pid).is_dir()


def _manifest_lists_pid(setup: Any, md5: str, pid: str) -> bool | None:
    """Whether the cached ``.dir`` manifest ``md5`` lists the subject (None: not available)."""
    if setup is None or not md5.endswith(".dir"):
        return None
    data = dvc_objects.read_object(setup.stores, md5)
    if data is None:
        return None
    entries = dvc_objects.read_manifest(data)
    if entries is None:
        return None
    return bool(dvc_objects.manifest_lists(entries, pid))


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def onnx_models(paths: ProjectPaths) -> list[ModelVersion]:
    """ONNX files under ``models/`` with their ``visage.model_version`` and ``visage.data_md5``."""
    out = []
    folder = paths.models
    if not folder.is_dir():
        return out
    files = sorted(folder.glob("*.onnx"))
    if not files:
        return out
    import onnx  # deferred: protobuf-heavy, and only projects with exported models need it

    for f in files:
        try:
            model = onnx.load(str(f), load_external_data=False)
        except Exception:  # not a readable ONNX file: nothing to say about its lineage
            log.warning("%s is not a readable ONNX model; its lineage is unknown", f.name)
            continue
        meta = {p.key: p.value for p in model.metadata_props}
        out.append(
            ModelVersion(
                kind="onnx",
                model=f.relative_to(paths.root).as_posix(),
                version=meta.get("visage.model_version", "unknown"),
                data_md5=meta.get("visage.data_md5"),
                source="models",
            )
        )
    return out


def _paged(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every item of an MLflow search, page after page."""
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


@dataclass
class Registry:
    """What :func:`mlflow_models` read from the MLflow store."""

    # Every registered model version, in the order they were made; ``data_md5`` is the
    # version's ``visage.data_md5`` tag, else the one data version the model it copies (a
    # tagged version of the same run or source) or its run was trained on, else None.
    versions: list[ModelVersion] = field(default_factory=list)
    # Active runs with a ``visage.data_md5`` tag, in run-id order.
    runs: list[ModelVersion] = field(default_factory=list)
    # The versions serving can load: the newest of each model, and those an alias or a stage
    # (Staging, Production) names.
    in_use: list[ModelVersion] = field(default_factory=list)
    # An untagged version's candidate data versions, when it copies models of several.
    copied: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)


SERVING_STAGES = ("Staging", "Production")


def mlflow_models(paths: ProjectPaths) -> Registry:
    """The registered model versions, the runs and the versions in use in the MLflow store.

    Read through MLflow's client from the project's tracking store, whatever its backend (the
    SQLite file, or the stack's tracking server). A version registered without the project's
    tag (``mlflow.register_model``, the UI) is not dropped: it takes the data version of the
    model it copies, when that is one, and is unknown otherwise. A SQLite store that does not
    exist is not created.
    """
    uri = paths.tracking_uri
    if uri.startswith(SQLITE_PREFIX) and not Path(uri[len(SQLITE_PREFIX) :]).is_file():
        return Registry()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Deferred: MLflow takes seconds to import and only projects with a tracking store get here.
    from mlflow import MlflowClient
    from mlflow.entities import LifecycleStage, ViewType
    from mlflow.exceptions import MlflowException

    out = Registry()
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        found = list(_paged(client.search_model_versions))
        found.sort(key=lambda mv: (mv.creation_timestamp or 0, mv.name, int(mv.version)))
        experiments = [
            e.experiment_id for e in _paged(client.search_experiments, view_type=ViewType.ALL)
        ]
        all_runs = (
            list(_paged(client.search_runs, experiment_ids=experiments, run_view_type=ViewType.ALL))
            if experiments
            else []
        )
        aliases = {
            str(rm.name): {str(v) for v in (rm.aliases or {}).values()}
            for rm in _paged(client.search_registered_models)
        }
    except (MlflowException, OSError) as exc:
        log.warning("the MLflow store could not be read (%s); MLflow lineage is unknown", exc)
        return out
    run_md5 = {
        r.info.run_id: str(r.data.tags[DATA_MD5_TAG])
        for r in all_runs
        if DATA_MD5_TAG in r.data.tags
    }
    out.runs = sorted(
        (
            ModelVersion(
                "mlflow_run",
                str(r.info.run_name),
                str(r.info.run_id),
                run_md5[r.info.run_id],
                "mlflow",
            )
            for r in all_runs
            if r.info.run_id in run_md5 and r.info.lifecycle_stage == LifecycleStage.ACTIVE
        ),
        key=lambda m: m.version,
    )
    # A version made from the same run or the same artefact as a tagged one is that model.
    tagged: dict[tuple[str, str, str], set[str]] = {}
    for mv in found:
        if md5 := mv.tags.get(DATA_MD5_TAG):
            for how, value in (("run", mv.run_id), ("source", mv.source)):
                if value:
                    tagged.setdefault((str(mv.name), how, str(value)), set()).add(str(md5))
    newest: dict[str, ModelVersion] = {}
    for mv in found:
        name, own = str(mv.name), mv.tags.get(DATA_MD5_TAG)
        if own:
            candidates = {str(own)}
        else:
            candidates = tagged.get((name, "run", str(mv.run_id)), set()) | tagged.get(
                (name, "source", str(mv.source)), set()
            )
            if mv.run_id in run_md5:
                candidates = candidates | {run_md5[mv.run_id]}
        data = next(iter(candidates)) if len(candidates) == 1 else None
        version = ModelVersion("mlflow_model", name, str(mv.version), data, "mlflow")
        out.versions.append(version)
        if len(candidates) > 1:
            out.copied[version.key()] = candidates
        if name not in newest or int(mv.version) > int(newest[name].version):
            newest[name] = version
        if mv.current_stage in SERVING_STAGES or str(mv.version) in aliases.get(name, set()):
            out.in_use.append(version)
    out.in_use = _dedupe([*newest.values(), *out.in_use])
    return out


def dvc_models(docs: Iterable[tuple[str, Mapping[str, Any]]]) -> list[ModelVersion]:
    """Outputs of stages that depend on the processed faces, with that dependency's md5."""
    out = []
    for source, doc in docs:
        for name, stage in _stages(doc).items():
            data = _md5_of(stage, "deps", FACES)
            if data is None or name == "prepare":
                continue
            for item in _entries(stage, "outs"):
                if item.get("md5"):
                    out.append(
                        ModelVersion(
                            "dvc", f"{name}:{item['path']}", str(item["md5"]), data, source
                        )
                    )
    return out


def _dedupe(models: Iterable[ModelVersion]) -> list[ModelVersion]:
    seen: dict[tuple[str, str, str], ModelVersion] = {}
    for m in models:
        seen.setdefault(m.key(), m)
    return list(seen.values())


# ---------------------------------------------------------------------------------------------
# Public questions
# ---------------------------------------------------------------------------------------------


def subject_lineage(
    paths: ProjectPaths, pid: str, *, setup: Any = None, history: bool = True
) -> Lineage:
    """Data versions that contained ``pid`` and the models trained on them.

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    setup
        :class:`visage_ml.rights.dvc_objects.DvcSetup` to read cached ``.dir`` manifests from
        (opened here when None and the project is a DVC repository).
    history
        Also read ``dvc.lock`` from git history.
    """
    if setup is None and dvcops.is_dvc_repo(paths.root):
        setup = dvc_objects.open_setup(paths.root)
    lin = Lineage(pid)
    raw_md5 = None
    raw_dvc = Path(str(paths.raw) + ".dvc")
    if raw_dvc.is_file():
        with contextlib.suppress(yaml.YAMLError, OSError):
            doc = yaml.safe_load(raw_dvc.read_text(encoding="utf-8")) or {}
            outs = doc.get("outs") or []
            raw_md5 = str(outs[0].get("md5")) if outs else None
    if raw_has(paths, pid) and raw_md5:
        lin.data.append(DataVersion("raw", raw_md5, "workspace", True))
    if processed_has(paths, pid):
        md5 = workspace_processed_md5(paths)
        if md5:
            lin.data.append(DataVersion("processed", md5, "workspace", True))
    docs = lock_documents(paths.root, history=history, notes=lin.notes)
    kept: dict[str, list[str]] | None = None
    for source, doc in docs:
        prepare = _stages(doc).get("prepare")
        if not prepare:
            continue
        raw_dep = _md5_of(prepare, "deps", RAW)
        faces = _md5_of(prepare, "outs", FACES)
        if not raw_dep or not faces:
            continue
        listed = _manifest_lists_pid(setup, raw_dep, pid)
        if listed is None:  # purged by an erasure of someone else: what it listed was kept
            if kept is None:
                kept = manifest_index.load(paths)  # once, for every revision that needs it
            listed = manifest_index.lists(kept, raw_dep, pid)
        if listed is None:
            if faces not in lin.processed_md5s:
                lin.notes.append(
                    f"{source}: the data/raw manifest {raw_dep} is not in any DVC store, so "
                    "whether its models saw the subject is unknown"
                )
            continue
        if listed:
            lin.data.append(DataVersion("raw", raw_dep, source, True))
            if faces not in lin.processed_md5s:
                lin.data.append(DataVersion("processed", faces, source, False))
    contained = lin.processed_md5s
    # No data version held the subject: no model can have seen them, and the model stores
    # (ONNX files, MLflow, both slow to open) need not be read.
    registry = mlflow_models(paths) if contained else Registry()
    # An untagged version copying models of several data versions: listed with one that held
    # the subject, if any did.
    versions = [
        ModelVersion(v.kind, v.model, v.version, min(held), v.source)
        if (held := registry.copied.get(v.key(), set()) & contained)
        else v
        for v in registry.versions
    ]
    candidates = (
        [*dvc_models(docs), *onnx_models(paths), *versions, *registry.runs] if contained else []
    )
    lin.models = _dedupe(m for m in candidates if m.data_md5 in contained)
    lin.notes.extend(_unjudged_notes(paths, docs, contained, candidates))
    lin.data = list({(d.kind, d.md5): d for d in lin.data}.values())
    return lin


def _unjudged_notes(
    paths: ProjectPaths,
    docs: list[tuple[str, dict[str, Any]]],
    contained: set[str],
    candidates: list[ModelVersion],
) -> list[str]:
    """What is said of models whose training data no lineage records (a `dvc repro` whose
    dvc.lock was never committed, an untagged registry version): whether they saw the
    subject is unknown, so it is conceded rather than passed over."""
    recorded = set(contained)
    for _source, doc in docs:
        if faces := _md5_of(_stages(doc).get("prepare") or {}, "outs", FACES):
            recorded.add(faces)
    unjudged = [m for m in _dedupe(candidates) if m.data_md5 not in recorded]
    if unjudged and (workspace := workspace_processed_md5(paths)):
        unjudged = [m for m in unjudged if m.data_md5 != workspace]
    by_md5: dict[str | None, list[str]] = {}
    for m in unjudged:
        by_md5.setdefault(m.data_md5, []).append(f"{m.model} v{m.version} ({m.kind})")
    return [
        MSG_NO_DATA.format(models=", ".join(names))
        if md5 is None
        else MSG_UNRECORDED_DATA.format(md5=md5, models=", ".join(names))
        for md5, names in by_md5.items()
    ]


def current_models(paths: ProjectPaths) -> list[ModelVersion]:
    """The models in use now: workspace ``dvc.lock`` outputs, ONNX files, and of each
    registered model the newest version and those an alias or a stage names (tagged or not)."""
    docs = lock_documents(paths.root, history=False)
    return _dedupe([*dvc_models(docs), *onnx_models(paths), *mlflow_models(paths).in_use])


@dataclass
class RetrainCheck:
    """Whether the models in use were trained on data without the subject."""

    clean: bool
    current: list[ModelVersion]
    stale: list[ModelVersion]
    processed_contains_subject: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "current": [asdict(m) for m in self.current],
            "stale": [asdict(m) for m in self.stale],
            "processed_contains_subject": self.processed_contains_subject,
        }


def check_retrained(
    paths: ProjectPaths,
    pid: str,
    contained_md5s: Iterable[str],
    *,
    clean_md5s: Iterable[str] = (),
) -> RetrainCheck:
    """Were the current models trained on data versions known to be without the subject?

    Only shown so: a model counts as retrained when the data version it was trained on is in
    ``clean_md5s`` (e.g. the one the erasure left) or is shown by :func:`known_without` not to
    hold the subject, and is not in ``contained_md5s``. A model whose training data is unknown
    (an ONNX file without lineage metadata, an untagged registry version) or is a version
    nothing recorded (a `dvc repro` whose dvc.lock was never committed) counts with the stale
    ones, since it may have been trained on the subject; and with no current model at all
    nothing was retrained.
    """
    contained = set(contained_md5s)
    current = current_models(paths)
    in_processed = processed_has(paths, pid)
    shown = set(clean_md5s) - contained
    unjudged = {m.data_md5 for m in current if m.data_md5} - contained - shown
    if unjudged and not in_processed:
        shown |= known_without(paths, pid, unjudged) - contained
    stale = [m for m in current if m.data_md5 in contained or m.data_md5 not in shown]
    clean = bool(current) and not stale and not in_processed
    return RetrainCheck(clean, current, stale, in_processed)


def known_without(paths: ProjectPaths, pid: str, md5s: Iterable[str]) -> set[str]:
    """Which of the processed data versions ``md5s`` are shown not to hold ``pid``.

    A version is when a ``dvc.lock`` (the workspace's or one in git) says ``prepare`` made it
    from a ``data/raw`` whose ``.dir`` manifest, read from a DVC store, does not list the
    subject's folder; or when the workspace's ``dvc.lock`` names it and the processed manifest
    beside it, which does not list the subject. What :mod:`~visage_ml.rights.manifest_index`
    kept of a purged manifest is not enough: an unsigned file, read only to add a model.
    """
    wanted = set(md5s)
    shown: set[str] = set()
    root = paths.root
    lock = root / "dvc.lock"
    manifest = root / MANIFEST
    if lock.is_file() and manifest.is_file() and not processed_has(paths, pid):
        with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError, OSError):
            prepare = _stages(_load_yaml(lock.read_bytes()) or {}).get("prepare") or {}
            faces = _md5_of(prepare, "outs", FACES)
            if faces in wanted and _md5_of(prepare, "outs", MANIFEST) == md5_file(manifest):
                shown.add(str(faces))
    made: dict[str, set[str]] = {}  # data/raw .dir md5 -> processed versions made from it
    for _source, doc in lock_documents(root):
        prepare = _stages(doc).get("prepare") or {}
        faces, raw_dep = _md5_of(prepare, "outs", FACES), _md5_of(prepare, "deps", RAW)
        if faces in wanted - shown and raw_dep:
            made.setdefault(raw_dep, set()).add(str(faces))
    if not made or not dvcops.is_dvc_repo(root):
        return shown
    try:
        setup = dvc_objects.open_setup(root)
    except Exception as exc:  # DVC unreadable: nothing more is shown clean
        log.warning("DVC could not be opened (%s); data versions not judged", type(exc).__name__)
        return shown
    for raw_dep, faces_md5s in made.items():
        if _manifest_lists_pid(setup, raw_dep, pid) is False:
            shown |= faces_md5s
    return shown


def restorable(paths: ProjectPaths, models: Iterable[Any]) -> str | None:
    """:data:`MSG_RESTORABLE` for the certified stale ``models`` whose bytes can still be put
    back (None when none can): a DVC stage output whose object is in the cache or any remote
    (one on this file system as a file; any other, S3, asked through DVC's API, one request per
    model), an MLflow version still registered or run still active. A remote that cannot be
    asked (its endpoint down, its client's error) is named, :data:`MSG_NOT_ASKED`: it may hold
    those not found elsewhere."""
    listed = [m for m in models if isinstance(m, Mapping)]
    kinds = {str(m.get("kind")) for m in listed}
    found: list[str] = []
    down: dict[str, str] = {}
    known: dict[Any, str | None] = {}
    dvc_models = [m for m in listed if m.get("kind") == "dvc"]
    if dvc_models and dvcops.is_dvc_repo(paths.root):
        try:
            stores = dvc_objects.open_setup(paths.root).stores
        except Exception as exc:  # DVC unreadable: its objects are not looked for
            log.warning("DVC could not be opened (%s); cached models not checked", exc)
            stores = []
        found += [
            f"{m.get('model')} {m.get('version')}"
            for m in dvc_models
            if _held(stores, str(m.get("version")), down, known)
        ]
    if kinds & {"mlflow_model", "mlflow_run"}:
        registry = mlflow_models(paths)
        kept = {v.key() for v in [*registry.versions, *registry.runs]}
        found += [
            f"{m.get('model')} v{m.get('version')}"
            for m in listed
            if (str(m.get("kind")), str(m.get("model")), str(m.get("version"))) in kept
        ]
    notes = [MSG_RESTORABLE.format(n=len(found), models=", ".join(found))] if found else []
    if down and len(found) < len(listed):
        names = ", ".join(f"{n} ({why})" for n, why in sorted(down.items()))
        notes.append(MSG_NOT_ASKED.format(names=names))
    return "; ".join(notes) or None


def _held(
    stores: Iterable[Any], md5: str, down: dict[str, str], known: dict[Any, str | None]
) -> bool:
    """Whether a DVC store holds object ``md5``; a remote that cannot be asked goes into
    ``down`` (name: why), is asked no more, and holds it for none (``known``: the endpoints
    tried, :func:`~visage_ml.rights.dvc_objects.endpoint_down`)."""
    for store in stores:
        if store.name in down:
            continue
        try:
            if why := dvc_objects.endpoint_down(store, known):  # at once, not after retries
                down[store.name] = why
            elif store.exists(md5):
                return True
        except Exception as exc:  # the client's own errors (botocore, fsspec; a 403)
            down[store.name] = type(exc).__name__
    return False


def certified_md5s(claims: Mapping[str, Any]) -> set[str]:
    """The data versions an erasure certificate's ``claims`` name as holding the subject: those
    its dataset lists and those the models it lists were trained on (either list may name a
    version the other does not, so a model counts as retrained only when free of both)."""
    dataset = claims.get("dataset") or {}
    contained = {str(m) for m in dataset.get("processed_md5s_with_subject") or [] if m}
    models = [m for m in claims.get("models") or [] if isinstance(m, Mapping)]
    contained.update(str(m["data_md5"]) for m in models if m.get("data_md5"))
    return contained


def check_certified(paths: ProjectPaths, pid: str, claims: Mapping[str, Any]) -> RetrainCheck:
    """:func:`check_retrained` against :func:`certified_md5s`: the one rule by which
    ``lineage PID``, ``lineage --refresh`` and ``verify-certificate`` say the models in use were
    retrained without the subject of a certificate. The processed data the erasure left
    (``processed_md5_after``, signed in the claims) is known to be without the subject."""
    after = (claims.get("dataset") or {}).get("processed_md5_after")
    return check_retrained(
        paths, pid, certified_md5s(claims), clean_md5s=[str(after)] if after else []
    )


def models_verdict(*, recorded: bool, clean: bool) -> str:
    """The one rule for a certificate's stale models: :data:`RETRAINED` only when the signed
    ``erasure.models_retrained`` event exists (``recorded``) and the models in use are clean
    now (:func:`check_certified`); an event with models trained on the subject in use again
    (put back, or the event appended without retraining) is :data:`IN_USE_AGAIN`, since the
    ledger says what was once done and the checkout what is in use; clean without the event is
    :data:`RETRAINED_UNRECORDED`; else :data:`STALE`."""
    if recorded:
        return RETRAINED if clean else IN_USE_AGAIN
    return RETRAINED_UNRECORDED if clean else STALE


def page_retrained(
    paths: ProjectPaths, pid: str, claims: Mapping[str, Any], event: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The signed event as the certificate's page shows it (:func:`models_verdict`): None
    without one, else ``{"seq", "time", "in_use_again"}``."""
    if event is None or not (claims.get("models") or []):
        return None if event is None else dict(event)
    clean = check_certified(paths, pid, claims).clean
    return {**event, "in_use_again": models_verdict(recorded=True, clean=clean) == IN_USE_AGAIN}


def verified_certificate(
    paths: ProjectPaths, cert_path: Path, *, request_id: str, pid: str
) -> tuple[dict[str, Any] | None, str | None]:
    """The certificate of ``request_id`` when it verifies, else None and :data:`MSG_UNVERIFIED`.

    The proof checks of ``verify-certificate`` (:func:`~visage_ml.privacy.certificate.verify_proof`:
    encoding, signature, the ``erasure.completed`` entry, claims committed in it, tree head,
    inclusion, the checkout's ledger holding both entries) and that it is this request's and
    subject's; the key is only one of the ledger's own key chain (never one a key file beside it
    lists), since whoever can edit the certificate can edit that file too.
    """
    key = signer_in_history(paths, cert_path)
    if key is None:
        failed = [NOT_LEDGER_KEY]
    else:
        report, doc, _ = verify_proof(cert_path, public_key=key, ledger_path=paths.ledger)
        report.expect(request_id=request_id, pid=pid)
        if report.ok and doc is not None:
            return doc, None
        failed = [c.name for c in report.checks if not c.ok]
    return None, MSG_UNVERIFIED.format(path=cert_path, failed=", ".join(failed))


@dataclass(frozen=True)
class Refused:
    """A certificate :func:`refresh` did not judge: it failed verification."""

    request_id: str
    certificate: str
    reason: str


@dataclass
class Refreshed:
    """What :func:`refresh` did: certificates upgraded, and those refused."""

    upgraded: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


def _lists_models(cert_path: Path) -> bool:
    """Whether the certificate file, read as it is, lists models (unreadable: yes, so that
    it is verified and refused by name)."""
    try:
        doc = json.loads(cert_path.read_text(encoding="utf-8"))
        return bool(((doc.get("claims") or {}).get("models")) or [])
    except (OSError, ValueError, AttributeError):
        return True


def refresh(paths: ProjectPaths, *, core: Any = None) -> Refreshed:
    """Append ``erasure.models_retrained`` for each erasure whose stale models were replaced.

    For every completed erasure whose certificate lists models trained on the subject and that
    has no such event yet: when the current models (``dvc.lock``, ONNX files, the MLflow
    versions in use: the newest, aliased or staged) were all trained on data versions known to
    be without the subject (:func:`check_certified`), and the processed data no
    longer holds them, a signed event names the certificate and the current models, and a tree
    head is appended so that the event can be proven included. The certificate's readable page
    (``<request id>.html``) is rewritten to say the models were retrained.

    A certificate that fails :func:`verified_certificate` is refused, not judged: nothing is
    appended for it (its claims, edited on disk, could drop the data versions that held the
    subject and have the controller sign "retrained" on models trained on them).

    Returns
    -------
    Refreshed
        The request ids whose certificate was upgraded, and the certificates refused.
    """
    core = core if core is not None else PrivacyCore(paths)
    book = RequestBook(core)
    done = Refreshed()
    pages: list[tuple[Path, dict[str, Any]]] = []
    for st in book.all():
        if st.right != "erasure" or st.erasure_completed_seq is None:
            continue
        if st.models_retrained_seq is not None:
            continue
        cert_path = paths.certificates / f"{st.request_id}.json"
        if not cert_path.is_file():
            continue
        if not _lists_models(cert_path):
            # Nothing to judge, and nothing would be signed for it (a file edited to list no
            # models loses its holder an upgrade, nothing more): not verified, not refused.
            continue
        cert, why = verified_certificate(paths, cert_path, request_id=st.request_id, pid=st.pid)
        if cert is None:
            done.refused.append(Refused(st.request_id, str(cert_path), str(why)))
            continue
        claims = cert.get("claims") or {}
        models = claims.get("models") or []
        if not models:
            continue
        check = check_certified(paths, st.pid, claims)
        if not check.clean:
            continue
        entry = core.ledger.append(
            "erasure.models_retrained",
            st.pid,
            {
                "request_id": st.request_id,
                # The bytes verified (they are the canonical rendering), not the file read
                # again: the event names the certificate that was judged.
                "certificate_sha256": hashlib.sha256(render(cert).encode("utf-8")).hexdigest(),
                "stale_models": len(models),
                "current_models": [asdict(m) for m in check.current],
            },
        )
        done.upgraded.append(st.request_id)
        pages.append((cert_path, {"seq": entry.seq, "time": entry.time}))
    if done.upgraded:
        core.ledger.checkpoint()
    for cert_path, retrained in pages:  # the readable page says retrained from now on
        certificate_page.write_page(core, cert_path, retrained=retrained)
    return done
