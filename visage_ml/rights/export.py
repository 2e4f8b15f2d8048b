"""Access and portability export (Art. 15, 20): build, write, read and validate the bundle.

Export bundle (one zip, written atomically with mode 0600)::

    manifest.json     schema version, controller, pid, request, generated at, SHA-256 of every
                      other file in the bundle
    subject.json      identity record (from the vault), current state per purpose, attributes,
                      the image list, the history of consents, bases, restrictions, objections
    templates.json    the biometric template(s): float32 little-endian as base64, with the
                      embedder's model id, version, embedding size, preprocessing, and how to
                      compare two templates (cosine of L2-normalised vectors, the threshold)
    processing.json   dataset versions, model versions and gallery enrolments that involved the
                      subject, the subject's requests, every ledger event about them
    schema.json       the JSON Schema (draft 2020-12) of the object
                      ``{manifest, subject, templates, processing}`` made of the files above
    images/<id>.png   the source images as stored in ``data/raw``

The pydantic models below describe those files; ``schema.json`` is generated from them
(:func:`bundle_schema`) and :func:`validate_bundle` checks a bundle against it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from visage_ml.config import PURPOSES, Params, ProjectPaths, load_params
from visage_ml.data.rawstore import read_images, read_subjects
from visage_ml.io import atomic_write_bytes, sha256_bytes, sha256_file
from visage_ml.privacy.core import ALREADY_ERASED, PrivacyCore
from visage_ml.privacy.keys import check_pid
from visage_ml.privacy.ledger import utc_now
from visage_ml.privacy.requests import RequestBook
from visage_ml.rights.lifecycle import begin
from visage_ml.rights.lineage import subject_lineage
from visage_ml.serving.gallery import Gallery, NotEnrolledError, read_meta

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"
BUNDLE_FORMAT = "visage-subject-export"
EXPORTS_DIR = Path("privacy") / "exports"
JSON_FILES = ("subject.json", "templates.json", "processing.json", "schema.json")
CONSENT_EVENTS = frozenset(
    {
        "subject.added",
        "consent.given",
        "consent.withdrawn",
        "basis.recorded",
        "restriction.set",
        "restriction.lifted",
        "objection",
        "objection.withdrawn",
        "rectification",
    }
)
COMPARISON = (
    "Decode 'vector' from base64 as little-endian float32 (numpy: np.frombuffer(base64."
    "b64decode(v), '<f4')); the vector is L2-normalised. Two templates of the same model_version "
    "are compared by their dot product (cosine similarity); a score at or above 'threshold' is "
    "a match. Templates of different model versions are not comparable."
)
VALIDATION = (
    "schema.json validates the object {manifest, subject, templates, processing} made "
    "of the JSON files of those names; every file's SHA-256 is in manifest.files"
)
MSG_HASH_MISMATCH = (
    "{name} in the bundle does not match manifest.json: the bundle was altered or damaged; "
    "ask the controller for a fresh export"
)

# ---------------------------------------------------------------------------------------------
# The bundle's files, as models (their JSON Schema is the bundle's schema.json)
# ---------------------------------------------------------------------------------------------
# The contract of schema version 1.0: unknown fields are allowed, fields whose values it leaves
# open are typed Any (their description says more), and an optional field that is present is
# never null unless its type says so.

Sha256 = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
Pid = Annotated[str, Field(pattern="^p[0-9a-f]{16}$", description="pseudonymous subject id")]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional(description: str | None = None) -> Any:
    """A field a bundle may leave out, but not set to null (no default in the schema)."""
    return Field(default=None, description=description, json_schema_extra=_drop_default)


class Controller(BaseModel):
    """The controller answering the request (Art. 15(1))."""

    name: str
    contact: str


class Manifest(BaseModel):
    """manifest.json: what the bundle is, for whom, and the SHA-256 of every other file."""

    format: Literal["visage-subject-export"]
    schema_version: Literal["1.0"]
    controller: Controller
    pid: Pid
    request_id: str | None = None
    generated_at: str = Field(description="UTC time, ISO 8601")
    articles: list[str] = _optional("GDPR articles answered")
    files: dict[str, Sha256] = Field(min_length=1, description="file name -> SHA-256")
    validation: str = _optional("how to check the bundle")


class Event(BaseModel):
    """One ledger event about the subject (the payload holds hashes and codes only)."""

    seq: int = Field(ge=0)
    time: str
    type: str
    payload: dict[str, Any] = _optional()


class Identity(BaseModel):
    """The identity vault's record."""

    external_ref: str | None = None
    contact: str | None = None
    source: str | None = None
    notes: Any = Field(default=None, description="free text kept with the record")


class PurposeDecision(BaseModel):
    """Whether one purpose may process the subject's data, and why."""

    allowed: Any = Field(description="true or false")
    reason: Any = Field(description="reason code (allowed, withdrawn, restricted, ...)")
    basis: Any = _optional("legal bases recorded for the purpose")
    receipt_hash: Any = _optional("SHA-256 of the consent receipt, or null")


class State(BaseModel):
    """The subject's current state in the registry."""

    purposes: dict[str, PurposeDecision] = Field(
        json_schema_extra={"required": list(PURPOSES)}, description="purpose -> decision"
    )
    restricted: bool
    objected: list[str] = Field(description="purposes objected to")
    erased: bool
    erasure_pending: Any = _optional("an erasure request is open")
    source: Any = _optional("where the subject came from")
    added_seq: Any = _optional("ledger seq of subject.added")
    last_seq: Any = _optional("ledger seq of the last event about the subject")


class Attributes(BaseModel):
    """The subject's row in ``data/raw/subjects.parquet``."""

    age: int | None = None
    gender: str | None = None
    group: str | None = None
    n_images: int | None = None
    source: str | None = None


class ImageItem(BaseModel):
    """One source image: its row in ``data/raw/images.parquet`` and its file in the bundle."""

    image_id: Annotated[str, Field(pattern="^i[0-9a-f]{12}$")]
    file: Annotated[str, Field(pattern="^images/")]
    sha256: Sha256
    width: int | None = None
    height: int | None = None


class SubjectFile(BaseModel):
    """subject.json: identity, state, attributes, images and consent history."""

    pid: Pid
    identity: Identity | None
    state: State
    attributes: Attributes | None
    images: list[ImageItem]
    history: list[Event] = Field(description="consents, bases, restrictions, objections")


class Template(BaseModel):
    """One biometric template and how to compare it."""

    model_id: str
    model_version: str
    embedding_dim: int = Field(ge=1)
    dtype: Literal["float32"]
    byte_order: Literal["little"]
    encoding: Literal["base64"]
    vector: str = Field(json_schema_extra={"contentEncoding": "base64"})
    l2_normalised: bool = _optional()
    metric: Literal["cosine"]
    threshold: float | None = None
    threshold_source: Any = Field(default=None, description="where the threshold came from")
    template_rule: Any = Field(default=None, description="how the template was made")
    preprocess: dict[str, Any] = _optional("the embedder's preprocessing")
    images_enrolled: Any = Field(default=None, description="images averaged into it")
    stored_sha256: Sha256 = _optional("SHA-256 of the sealed template file")


class TemplatesFile(BaseModel):
    """templates.json: the subject's templates and the comparison recipe."""

    comparison: str
    templates: list[Template]


class ProcessingFile(BaseModel):
    """processing.json: data and model versions, enrolments, requests and ledger events."""

    dataset_versions: list[dict[str, Any]]
    processed: dict[str, Any] = _optional("the subject in data/processed")
    model_versions: list[dict[str, Any]]
    gallery_enrolments: list[Event]
    requests: list[dict[str, Any]]
    ledger_events: list[Event]
    notes: Any = Field(default=None, description="lineage notes")


class Bundle(BaseModel):
    """The object ``{manifest, subject, templates, processing}`` made of the bundle's files."""

    manifest: Manifest
    subject: SubjectFile
    templates: TemplatesFile
    processing: ProcessingFile


def bundle_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of ``{manifest, subject, templates, processing}``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://visage-ml.invalid/schemas/subject-export/{SCHEMA_VERSION}",
        **Bundle.model_json_schema(),
        "title": "visage-ml data-subject export (Art. 15 access, Art. 20 portability)",
    }


# ---------------------------------------------------------------------------------------------
# Building the bundle
# ---------------------------------------------------------------------------------------------


def jsonable(v: Any) -> Any:
    """A table cell as JSON: numpy scalars as Python numbers, NaN and ``pd.NA`` as None."""
    if v is None:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if v is pd.NA:
        return None
    return v


def row_dict(row: Any) -> dict[str, Any]:
    """A table row (pandas Series or mapping) as a JSON object."""
    return {str(k): jsonable(v) for k, v in row.items()}


@dataclass
class ExportResult:
    """Where the bundle went and what it holds (no personal data)."""

    path: Path | None
    sha256: str
    files: dict[str, str]
    request_id: str | None
    templates: int
    images: int
    data: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path is not None else None,
            "sha256": self.sha256,
            "files": len(self.files),
            "images": self.images,
            "templates": self.templates,
            "request_id": self.request_id,
        }


def _templates(
    paths: ProjectPaths, pid: str, core: PrivacyCore, gallery: Gallery | None
) -> list[dict]:
    meta = read_meta(paths.gallery)
    if meta is None:
        return []
    g = gallery
    if g is None:
        g = Gallery.open_existing(paths, core=core, load=False)
    try:
        vector, header = g.template(pid)
    except NotEnrolledError:
        return []
    version = str(header.get("model_version", ""))
    comparable = version == meta.model_version
    return [
        {
            "model_id": "visage-embedder (models/embedder.onnx)",
            "model_version": version,
            "embedding_dim": int(vector.shape[0]),
            "dtype": "float32",
            "byte_order": "little",
            "encoding": "base64",
            "vector": base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii"),
            "l2_normalised": True,
            "metric": "cosine",
            "threshold": float(meta.threshold.get("value")) if comparable else None,
            "threshold_source": meta.threshold.get("source") if comparable else None,
            "template_rule": meta.template,
            "preprocess": dict(meta.preprocess) if comparable else {},
            "images_enrolled": header.get("n_images"),
            "stored_sha256": sha256_file(g.template_path(pid)),
        }
    ]


def _history(core: PrivacyCore, pid: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(consent-related history, gallery events, every event) about ``pid``."""
    history, gallery, events = [], [], []
    for e in core.ledger.entries():
        if e.pid != pid:
            continue
        item = {"seq": e.seq, "time": e.time, "type": e.type, "payload": dict(e.payload)}
        events.append({"seq": e.seq, "time": e.time, "type": e.type})
        if e.type in CONSENT_EVENTS:
            history.append(item)
        elif e.type.startswith("gallery."):
            gallery.append(item)
    return history, gallery, events


def _processed_rows(paths: ProjectPaths, pid: str) -> dict[str, Any]:
    manifest = paths.processed / "manifest.parquet"
    if not manifest.is_file():
        return {"in_processed_data": False}
    df = pd.read_parquet(manifest, columns=["pid", "split"])
    rows = df[df["pid"].astype(str) == pid]
    return {
        "in_processed_data": bool(len(rows)),
        "crops": len(rows),
        "split": str(rows["split"].iloc[0]) if len(rows) else None,
    }


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def build_bundle(
    paths: ProjectPaths,
    pid: str,
    *,
    core: PrivacyCore | None = None,
    gallery: Gallery | None = None,
    request_id: str | None = None,
    params: Params | None = None,
) -> tuple[bytes, dict[str, str], dict[str, int]]:
    """The export zip's bytes, its ``{file: sha256}`` and counts (templates, images).

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    core, gallery
        Open privacy core and gallery to use (opened when None).
    request_id
        The request the bundle answers (recorded in the manifest).
    params
        The project's parameters (read when None).

    Raises
    ------
    ValueError
        ``pid`` is malformed or the subject was erased.
    """
    check_pid(pid)
    core = core if core is not None else PrivacyCore(paths)
    params = params if params is not None else load_params(paths.params)
    state = core.subject(pid)
    if state.erased:
        raise ValueError(ALREADY_ERASED.format(pid=pid))
    try:
        identity = core.vault.get(pid)
    except KeyError:
        identity = None
    subjects = read_subjects(paths.raw)
    row = subjects[subjects["pid"].astype(str) == pid]
    attributes = row_dict(row.iloc[0]) if len(row) else None
    images = read_images(paths.raw)
    images = images[images["pid"].astype(str) == pid].sort_values("image_id")
    files: dict[str, bytes] = {}
    image_items = []
    for _, img in images.iterrows():
        f = paths.raw / pid / f"{img['image_id']}.png"
        if not f.is_file():
            continue
        data = f.read_bytes()
        name = f"images/{img['image_id']}.png"
        files[name] = data
        image_items.append({**row_dict(img), "file": name, "sha256": sha256_bytes(data)})
    history, gallery_events, events = _history(core, pid)
    lineage = subject_lineage(paths, pid)
    book = RequestBook(core, params=params.privacy)
    requests = [
        {
            k: v
            for k, v in r.to_dict().items()
            if k in ("request_id", "right", "article", "status", "received_at", "completed_at")
        }
        for r in book.all(pid=pid)
    ]
    processed = _processed_rows(paths, pid)
    templates = _templates(paths, pid, core, gallery)
    doc = {
        "subject": {
            "pid": pid,
            "identity": identity,
            "state": state.to_dict(),
            "attributes": attributes,
            "images": image_items,
            "history": history,
        },
        "templates": {"comparison": COMPARISON, "templates": templates},
        "processing": {
            "dataset_versions": [d.__dict__ for d in lineage.data],
            "processed": processed,
            "model_versions": [m.__dict__ for m in lineage.models],
            "gallery_enrolments": gallery_events,
            "requests": requests,
            "ledger_events": events,
            "notes": lineage.notes,
        },
    }
    for name in ("subject", "templates", "processing"):
        files[f"{name}.json"] = _json_bytes(doc[name])
    files["schema.json"] = _json_bytes(bundle_schema())
    hashes = {name: sha256_bytes(data) for name, data in sorted(files.items())}
    project = params.project
    manifest = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "controller": {"name": project.controller, "contact": project.controller_contact},
        "pid": pid,
        "request_id": request_id,
        "generated_at": utc_now(),
        "articles": ["Art. 15", "Art. 20"],
        "files": hashes,
        "validation": VALIDATION,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", _json_bytes(manifest))
        for name in sorted(files):
            z.writestr(name, files[name])
    return buf.getvalue(), hashes, {"templates": len(templates), "images": len(image_items)}


def export_subject(
    paths: ProjectPaths,
    pid: str,
    *,
    out: Path | None = None,
    request_id: str | None = None,
    core: PrivacyCore | None = None,
    gallery: Gallery | None = None,
    right: str = "access",
    keep: bool = True,
) -> ExportResult:
    """Answer an access (Art. 15) or portability (Art. 20) request with one zip bundle.

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    out
        Where to write the zip (default ``privacy/exports/<request id>.zip``); written
        atomically, mode 0600.
    request_id
        The verified request answered (one is recorded when None).
    core, gallery
        Open privacy core and gallery to use (opened when None).
    right
        ``access`` or ``portability`` when a request is recorded here.
    keep
        Write the zip (``out``); False keeps it in memory only (``ExportResult.data``), for
        handing over directly (the HTTP API).

    Returns
    -------
    ExportResult
        The bundle's path and SHA-256. The request is completed with a signed receipt and
        ``access.exported`` is recorded (hashes only).
    """
    core = core if core is not None else PrivacyCore(paths)
    params = load_params(paths.params)
    book = RequestBook(core, params=params.privacy)
    st = begin(book, pid, (right, "access", "portability"), request_id)
    data, hashes, counts = build_bundle(
        paths, pid, core=core, gallery=gallery, request_id=st.request_id, params=params
    )
    path = None
    if keep:
        path = Path(out) if out is not None else paths.root / EXPORTS_DIR / f"{st.request_id}.zip"
        atomic_write_bytes(path, data, mode=0o600)
    digest = sha256_bytes(data)
    core.ledger.append(
        "access.exported",
        pid,
        {
            "request_id": st.request_id,
            "bundle_sha256": digest,
            "files": len(hashes) + 1,
            "schema_version": SCHEMA_VERSION,
        },
    )
    book.complete(st.request_id, outcome={"bundle_sha256": digest, "files": len(hashes) + 1})
    return ExportResult(
        path, digest, hashes, st.request_id, counts["templates"], counts["images"], data
    )


# ---------------------------------------------------------------------------------------------
# Reading and validating a bundle
# ---------------------------------------------------------------------------------------------


def bundles_of(paths: ProjectPaths, pid: str) -> list[Path]:
    """Export bundles under ``privacy/exports`` whose manifest names ``pid``."""
    folder = paths.root / EXPORTS_DIR
    out: list[Path] = []
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


def read_bundle(path: Path) -> dict[str, Any]:
    """``{manifest, subject, templates, processing, schema}`` of an export zip."""
    with zipfile.ZipFile(path) as z:
        return {
            "manifest": json.loads(z.read("manifest.json")),
            **{n[: -len(".json")]: json.loads(z.read(n)) for n in JSON_FILES},
        }


def validate_bundle(path: Path) -> dict[str, Any]:
    """Check an export zip: file hashes against the manifest, content against the schema.

    The content is checked against :func:`bundle_schema` (the schema this version writes into
    ``schema.json``), not against the bundle's own copy, which an altered bundle could change.

    Returns
    -------
    dict
        ``{manifest, subject, templates, processing}``.

    Raises
    ------
    ValueError
        A file's hash differs from the manifest's.
    KeyError
        A file is missing.
    jsonschema.ValidationError
        The content does not match the schema.
    """
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        for name, digest in manifest["files"].items():
            if sha256_bytes(z.read(name)) != digest:
                raise ValueError(MSG_HASH_MISMATCH.format(name=name))
    # jsonschema's format checkers take over a second to import: only when a bundle is checked.
    import jsonschema

    doc = read_bundle(path)
    doc.pop("schema")
    jsonschema.validate(doc, bundle_schema(), cls=jsonschema.Draft202012Validator)
    return doc
