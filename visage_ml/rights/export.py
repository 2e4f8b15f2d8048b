"""Access and portability export (Art. 15, 20): build, write, read and validate the bundle.

Export bundle (one zip, encrypted for the requester in the age format, written atomically
with mode 0600)::

    manifest.json     schema version, controller, pid, request, generated at, SHA-256 of every
                      other file in the bundle
    subject.json      identity record (from the vault), current state per purpose, attributes,
                      the image list, the history of consents, bases, restrictions, objections
    templates.json    the biometric template(s): float32 little-endian as base64, with the
                      embedder's model id, version, embedding size, preprocessing, and how to
                      compare two templates (cosine of L2-normalised vectors, the threshold);
                      under ``anchors`` the subject's anchor template (the one a re-enrolment
                      must also match), decrypted and described the same way
    processing.json   dataset versions, model versions and gallery enrolments that involved the
                      subject, the subject's requests, every ledger event about them
    information.json  the Art. 15(1) information from the records of processing (purposes,
                      recipients, retention, source, rights, the right to complain) and the
                      subject's identification events (:mod:`visage_ml.rights.information`)
    schema.json       the JSON Schema (draft 2020-12) of the object
                      ``{manifest, subject, templates, processing, information}`` made of the
                      files above
    index.html        all of it as a page a person can read
    images/<id>.png   the source images as stored in ``data/raw`` (decrypted in memory)

The pydantic models below describe those files; ``schema.json`` is generated from them
(:func:`bundle_schema`) and :func:`validate_bundle` checks a bundle against it.

Delivery (:class:`Delivery`): the zip holds the subject's face and template, so it leaves
encrypted for the requester with pyrage (the age format, https://age-encryption.org): for one
or more X25519 recipients (``age1...``) or a passphrase (scrypt), as
``privacy/exports/<request id>.zip.age``; the requester opens it with any age tool
(``age -d -i key.txt``). A plaintext zip needs the explicit ``plaintext`` choice
(``--plaintext``) and is recorded by its own ledger event, ``export.plaintext_released``, with
its SHA-256; the project keeps it only sealed under the subject's data key
(``<request id>.zip.sealed``, written out for hand-over by ``visage data decrypt``), so no face
lies in clear under ``privacy/`` and the erasure's key destruction reaches every copy of it.
Age bundles kept under ``privacy/exports`` are listed in ``.owners.json`` (file -> pid, mode
0600), so an erasure finds them without being able to open them.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from visage_ml.config import PURPOSES, Params, ProjectPaths, load_params
from visage_ml.data.rawstore import RawStore, read_images, read_subjects
from visage_ml.io import (
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    private_dir,
    sha256_bytes,
    sha256_file,
)
from visage_ml.privacy.core import ALREADY_ERASED, PrivacyCore
from visage_ml.privacy.datakeys import ROLE_BUNDLE, SUFFIX, parse_header, sniff
from visage_ml.privacy.keys import check_pid
from visage_ml.privacy.ledger import utc_now
from visage_ml.privacy.requests import RequestBook, SubjectErasedError
from visage_ml.rights.information import access_page, subject_information
from visage_ml.rights.lifecycle import begin, recorded
from visage_ml.rights.lineage import subject_lineage
from visage_ml.rights.rawcheck import check_raw, processed_rows
from visage_ml.serving.gallery import Gallery, NotEnrolledError, read_meta
from visage_ml.serving.pg_gallery import open_project_gallery

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.1"
BUNDLE_FORMAT = "visage-subject-export"
EXPORTS_DIR = Path("privacy") / "exports"
JSON_FILES = (
    "subject.json",
    "templates.json",
    "processing.json",
    "information.json",
    "schema.json",
)
CONSENT_EVENTS = frozenset(
    {
        "subject.added",
        "consent.given",
        "consent.withdrawn",
        "consent.expired",  # lapsed after privacy.retention.consent_months
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
    "schema.json validates the object {manifest, subject, templates, processing, information} "
    "made of the JSON files of those names; every file's SHA-256 is in manifest.files"
)
MSG_HASH_MISMATCH = (
    "{name} in the bundle does not match manifest.json: the bundle was altered or damaged; "
    "ask the controller for a fresh export"
)
MSG_DELIVERY = (
    "an export bundle holds the subject's face and template: encrypt it for the requester with "
    "--recipient age1... (their age public key; repeatable) or --passphrase-file FILE, or pass "
    "--plaintext to hand it out unencrypted (recorded in the ledger with the bundle's hash)"
)
MSG_ONE_DELIVERY = "choose one of --recipient, --passphrase-file and --plaintext, not several"
MSG_BAD_RECIPIENT = (
    "{recipient!r} is not an age X25519 recipient (age1... as `age-keygen` prints it); ask the "
    "requester for their age public key"
)
MSG_BLANK_PHRASE = "the passphrase is empty; put the requester's passphrase in the file"
MSG_AGE_LOCKED = (
    "{path} is encrypted (age); give the requester's identity (AGE-SECRET-KEY-...) or "
    "passphrase to read it"
)
OWNERS_FILE = ".owners.json"
AGE = "age-x25519"
AGE_SCRYPT = "age-scrypt"
PLAINTEXT = "none"


@dataclass(frozen=True)
class Delivery:
    """How an export bundle leaves the project: encrypted for the requester, or plaintext.

    Exactly one of ``recipients`` (age X25519 public keys), ``passphrase`` and ``plaintext``.
    """

    recipients: tuple[str, ...] = ()
    passphrase: str | None = None
    plaintext: bool = False

    @property
    def mode(self) -> str:
        """``age-x25519``, ``age-scrypt`` or ``none``."""
        return AGE if self.recipients else AGE_SCRYPT if self.passphrase else PLAINTEXT

    def check(self) -> Delivery:
        """Refuse no choice, several choices, a malformed recipient or an empty passphrase."""
        chosen = sum([bool(self.recipients), self.passphrase is not None, self.plaintext])
        if chosen == 0:
            raise ValueError(MSG_DELIVERY)
        if chosen > 1:
            raise ValueError(MSG_ONE_DELIVERY)
        if self.passphrase is not None and not self.passphrase:
            raise ValueError(MSG_BLANK_PHRASE)
        self._recipients()
        return self

    def _recipients(self) -> list[Any]:
        from pyrage import x25519  # only when a bundle is encrypted

        out = []
        for r in self.recipients:
            try:
                out.append(x25519.Recipient.from_str(str(r).strip()))
            except Exception:  # pyrage raises its own RecipientError (or ValueError)
                raise ValueError(MSG_BAD_RECIPIENT.format(recipient=str(r)[:80])) from None
        return out

    def seal(self, data: bytes) -> bytes:
        """``data`` as delivered: an age file, or unchanged for a plaintext delivery."""
        import pyrage  # only when a bundle is encrypted

        if self.recipients:
            return pyrage.encrypt(data, self._recipients())
        if self.passphrase:
            return pyrage.passphrase.encrypt(data, self.passphrase)
        return data

    @property
    def suffix(self) -> str:
        """File suffix of the delivered bundle."""
        return ".zip" if self.plaintext else ".zip.age"


def open_delivered(
    data: bytes, *, identity: str | None = None, passphrase: str | None = None, what: str = ""
) -> bytes:
    """The zip inside a delivered bundle (an age file opened with the requester's identity or
    passphrase; a plaintext zip as it is). What a requester's tool does, for tests and DPOs."""
    if not data.startswith(b"age-encryption.org/"):
        return data
    import pyrage  # only when a bundle is encrypted

    if identity:
        return pyrage.decrypt(data, [pyrage.x25519.Identity.from_str(identity.strip())])
    if passphrase:
        return pyrage.passphrase.decrypt(data, passphrase)
    raise ValueError(MSG_AGE_LOCKED.format(path=what or "the bundle"))


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
    schema_version: Literal["1.1"]
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
    images_missing: list[str] = Field(
        default_factory=list,
        description="image ids the raw table lists for the subject whose file could not be "
        "read (not in the bundle)",
    )
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
    anchors: list[Template] = _optional(
        "the anchor template that an operator's re-enrolment must also match (that of the first "
        "enrolment or of the last by a dpo, the gallery stage or a rebuild); stored_sha256 is "
        "the sealed anchor file's"
    )


class ProcessingFile(BaseModel):
    """processing.json: data and model versions, enrolments, requests and ledger events."""

    dataset_versions: list[dict[str, Any]]
    processed: dict[str, Any] = _optional("the subject in data/processed")
    model_versions: list[dict[str, Any]]
    gallery_enrolments: list[Event]
    requests: list[dict[str, Any]]
    ledger_events: list[Event]
    notes: Any = Field(default=None, description="lineage notes")


class InformationFile(BaseModel):
    """information.json: Art. 15(1) information and the subject's identification events."""

    controller: dict[str, Any]
    dpo: dict[str, Any]
    purposes: dict[str, Any]
    data_categories: dict[str, Any]
    recipients: list[dict[str, Any]]
    registered_recipients: list[dict[str, Any]] = Field(
        default_factory=list, description="the Art. 19 register: id and name"
    )
    transfers: list[dict[str, Any]]
    retention: dict[str, str]
    source: str
    rights: dict[str, str]
    right_to_complain: dict[str, Any]
    automated_decision_making: bool
    identification_events: list[dict[str, Any]]


class Bundle(BaseModel):
    """The object ``{manifest, subject, templates, processing}`` made of the bundle's files."""

    manifest: Manifest
    subject: SubjectFile
    templates: TemplatesFile
    processing: ProcessingFile
    information: InformationFile


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
    """Where the bundle went and what it holds (no personal data).

    ``sha256`` and ``data`` are the delivered file's (the age file, or the zip when plaintext);
    ``bundle_sha256`` is the zip's.
    """

    path: Path | None
    sha256: str
    files: dict[str, str]
    request_id: str | None
    templates: int
    images: int
    data: bytes = field(default=b"", repr=False)
    bundle_sha256: str = ""
    delivery: str = PLAINTEXT
    # Photographs the raw table lists for the subject whose file could not be read: named in
    # the bundle (subject.json's images_missing), not in it.
    images_missing: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path is not None else None,
            "sha256": self.sha256,
            "bundle_sha256": self.bundle_sha256,
            "delivery": self.delivery,
            "files": len(self.files),
            "images": self.images,
            "images_missing": self.images_missing,
            "templates": self.templates,
            "request_id": self.request_id,
        }


def _templates(
    paths: ProjectPaths, pid: str, core: PrivacyCore, gallery: Gallery | None
) -> tuple[list[dict], list[dict]]:
    """(the subject's gallery template, their anchor template), each decrypted, as lists."""
    meta = read_meta(paths.gallery)
    if meta is None:
        return [], []
    g = gallery
    if g is None:
        g = open_project_gallery(paths, core=core, load=False)
    if g is None:
        return [], []
    # The gallery as opened holds the 1:1 threshold its server uses (serving.gallery.
    # served_threshold), which gallery.json may predate.
    meta = g.meta
    try:
        vector, header = g.template(pid)
    except NotEnrolledError:
        templates = []
    else:
        templates = [_template_item(meta, vector, header, g.stored_sha256(pid))]
    try:
        vector, header = g.anchor(pid)
    except NotEnrolledError:
        anchors = []
    else:
        anchors = [_template_item(meta, vector, header, sha256_file(g.anchor_path(pid)))]
    return templates, anchors


def _template_item(
    meta: Any, vector: np.ndarray, header: dict[str, Any], stored_sha256: str
) -> dict[str, Any]:
    """One decrypted template (or anchor template) as templates.json describes it, with the
    1:1 threshold of the gallery's ``meta`` as opened (the one its server uses)."""
    version = str(header.get("model_version", ""))
    comparable = version == meta.model_version
    return {
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
        "stored_sha256": stored_sha256,
    }


def _history(core: PrivacyCore, pid: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(consent-related history, gallery events, every event) about ``pid``."""
    history, gallery, events = [], [], []
    for e in core.ledger.entries(containing=pid.encode()):
        if e.pid != pid:
            continue
        item = {"seq": e.seq, "time": e.time, "type": e.type, "payload": dict(e.payload)}
        events.append({"seq": e.seq, "time": e.time, "type": e.type})
        if e.type in CONSENT_EVENTS:
            history.append(item)
        elif e.type.startswith("gallery."):
            gallery.append(item)
    return history, gallery, events


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
        ``pid`` is malformed, or the subject was erased
        (:class:`~visage_ml.privacy.requests.SubjectErasedError`), or the audit log fails
        verification against its ledger anchors
        (:class:`~visage_ml.privacy.auditlog.AuditLogError`: its identification events could be
        incomplete).
    visage_ml.data.rawstore.RawDataMissingError
        ``data/raw``'s tables are not there, though the subject's rows in them are expected
        (DVC tracks ``data/raw``, the other table is there, ``data/processed`` holds crops of
        theirs, or the registry says they came from an import or SynthFaces).
    visage_ml.data.rawstore.ImageUnreadableError
        A photograph of theirs is there but cannot be read.
    """
    check_pid(pid)
    core = core if core is not None else PrivacyCore(paths)
    params = params if params is not None else load_params(paths.params)
    state = core.subject(pid)
    if state.erased:
        raise SubjectErasedError(ALREADY_ERASED.format(pid=pid))
    try:
        identity = core.vault.get(pid)
    except KeyError:
        identity = None
    processed = processed_rows(paths, pid)
    check_raw(paths, pid, source=state.source, crops=int(processed.get("crops") or 0))
    subjects = read_subjects(paths.raw)
    row = subjects[subjects["pid"].astype(str) == pid]
    attributes = row_dict(row.iloc[0]) if len(row) else None
    images = read_images(paths.raw)
    images = images[images["pid"].astype(str) == pid].sort_values("image_id")
    files: dict[str, bytes] = {}
    image_items = []
    missing: list[str] = []
    store = RawStore(paths, core=core, track=False)
    for _, img in images.iterrows():
        try:
            data = store.read_image(pid, str(img["image_id"]))  # decrypted in memory
        except KeyError:
            # Listed in images.parquet but its file is gone: said, not silently left out.
            missing.append(str(img["image_id"]))
            continue
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
    templates, anchors = _templates(paths, pid, core, gallery)
    doc = {
        "subject": {
            "pid": pid,
            "identity": identity,
            "state": state.to_dict(),
            "attributes": attributes,
            "images": image_items,
            "images_missing": missing,
            "history": history,
        },
        "templates": {"comparison": COMPARISON, "templates": templates, "anchors": anchors},
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
    doc["information"] = subject_information(paths, pid, source=state.source, core=core)
    for name in ("subject", "templates", "processing", "information"):
        files[f"{name}.json"] = _json_bytes(doc[name])
    files["schema.json"] = _json_bytes(bundle_schema())
    files["index.html"] = access_page(
        pid=pid,
        information=doc["information"],
        state=doc["subject"]["state"],
        events=events,
        images=len(image_items),
        templates=len(templates) + len(anchors),
        generated=utc_now(),
    )
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
    counts = {"templates": len(templates), "images": len(image_items), "missing": len(missing)}
    return buf.getvalue(), hashes, counts


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
    delivery: Delivery | None = None,
) -> ExportResult:
    """Answer an access (Art. 15) or portability (Art. 20) request with one zip bundle.

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    out
        Where to write the bundle (default ``privacy/exports/<request id>.zip.age``); written
        atomically, mode 0600. A plaintext zip without ``out`` is kept only sealed under the
        subject's data key, ``privacy/exports/<request id>.zip.sealed`` (opened for hand-over
        with ``visage data decrypt``).
    request_id
        The verified request answered (one is recorded when None).
    core, gallery
        Open privacy core and gallery to use (opened when None).
    right
        ``access`` or ``portability`` when a request is recorded here.
    keep
        Write the bundle (``out``); False keeps it in memory only (``ExportResult.data``), for
        handing over directly (the HTTP API).
    delivery
        How the bundle leaves (:class:`Delivery`): for age recipients, with a passphrase, or
        plaintext. Required: ``ValueError`` (:data:`MSG_DELIVERY`) without it, before any
        request is recorded.

    Returns
    -------
    ExportResult
        The delivered file's path and SHA-256, and the zip's. The request is completed with a
        signed receipt and ``access.exported`` is recorded (hashes and the delivery mode); a
        plaintext delivery also appends ``export.plaintext_released`` with the zip's hash.
    """
    delivery = (delivery or Delivery()).check()
    core = core if core is not None else PrivacyCore(paths)
    params = load_params(paths.params)
    book = RequestBook(core, params=params.privacy)
    st = begin(book, pid, (right, "access", "portability"), request_id)
    # Once started, a failure (the audit log refused, a disk full) is recorded on the request.
    with recorded(book, st, step="export"):
        zipped, hashes, counts = build_bundle(
            paths, pid, core=core, gallery=gallery, request_id=st.request_id, params=params
        )
        data = delivery.seal(zipped)
        zip_digest = sha256_bytes(zipped)
        path = None
        if keep and out is None and delivery.plaintext:
            # The zip in clear holds the subject's face: kept in the project only sealed under their
            # data key (dies with it); `visage data decrypt` hands it out where the DPO says.
            name = f"{st.request_id}{delivery.suffix}"
            path = private_dir(paths.root / EXPORTS_DIR) / f"{name}{SUFFIX}"
            atomic_write_bytes(path, core.data_keys.seal_bundle(pid, name, zipped), mode=0o600)
        elif keep:
            exports = private_dir(paths.root / EXPORTS_DIR)
            path = Path(out) if out is not None else exports / f"{st.request_id}{delivery.suffix}"
            atomic_write_bytes(path, data, mode=0o600)
            if path.parent.resolve() == exports.resolve():
                _record_owner(exports, path.name, pid)
        digest = sha256_bytes(data)
        core.ledger.append(
            "access.exported",
            pid,
            {
                "request_id": st.request_id,
                "bundle_sha256": zip_digest,
                "files": len(hashes) + 1,
                "schema_version": SCHEMA_VERSION,
                "delivery": delivery.mode,
                "delivered_sha256": digest,
            },
        )
        if delivery.plaintext:
            core.ledger.append(
                "export.plaintext_released",
                pid,
                {
                    "request_id": st.request_id,
                    "bundle_sha256": zip_digest,
                    "kept": path is not None,
                },
            )
            log.warning("export %s handed out unencrypted (--plaintext); recorded", st.request_id)
        book.complete(
            st.request_id,
            outcome={
                "bundle_sha256": zip_digest,
                "files": len(hashes) + 1,
                "delivery": delivery.mode,
            },
        )
    return ExportResult(
        path,
        digest,
        hashes,
        st.request_id,
        counts["templates"],
        counts["images"],
        data,
        bundle_sha256=zip_digest,
        delivery=delivery.mode,
        images_missing=counts["missing"],
    )


def _read_owners(exports: Path) -> dict[str, str]:
    f = exports / OWNERS_FILE
    if not f.is_file():
        return {}
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def _record_owner(exports: Path, name: str, pid: str) -> None:
    with file_lock(exports / ".owners.lock"):
        owners = _read_owners(exports)
        owners[name] = pid
        atomic_write_json(exports / OWNERS_FILE, owners, mode=0o600)


def forget_owner(paths: ProjectPaths, names: Sequence[str]) -> None:
    """Drop removed bundles from ``privacy/exports/.owners.json``."""
    exports = paths.root / EXPORTS_DIR
    if not (exports / OWNERS_FILE).is_file():
        return
    with file_lock(exports / ".owners.lock"):
        owners = _read_owners(exports)
        kept = {k: v for k, v in owners.items() if k not in set(names)}
        if kept != owners:
            atomic_write_json(exports / OWNERS_FILE, kept, mode=0o600)


# ---------------------------------------------------------------------------------------------
# Reading and validating a bundle
# ---------------------------------------------------------------------------------------------


def bundle_owner(path: Path, owners: dict[str, str] | None = None) -> str | None:
    """The pid an export bundle under ``privacy/exports`` belongs to, without decrypting it:
    a sealed bundle's header, the owners index for an age file, a plaintext zip's manifest."""
    path = Path(path)
    owners = owners if owners is not None else _read_owners(path.parent)
    kind = sniff(path)
    if kind == "sealed":
        try:
            header, _ = parse_header(path.read_bytes()[:4096])
        except ValueError:
            return owners.get(path.name)
        return str(header.get("pid")) if header.get("role") == ROLE_BUNDLE else None
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("manifest.json")).get("pid")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return owners.get(path.name)
    return owners.get(path.name)


def bundles_of(paths: ProjectPaths, pid: str) -> list[Path]:
    """Export bundles under ``privacy/exports`` of ``pid`` (plaintext, age-encrypted, sealed)."""
    folder = paths.root / EXPORTS_DIR
    out: list[Path] = []
    if not folder.is_dir():
        return out
    owners = _read_owners(folder)
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        if bundle_owner(f, owners) == pid:
            out.append(f)
    return out


def _zip_bytes(path: Path, *, identity: str | None = None, passphrase: str | None = None) -> bytes:
    return open_delivered(
        Path(path).read_bytes(), identity=identity, passphrase=passphrase, what=Path(path).name
    )


def read_bundle(
    path: Path, *, identity: str | None = None, passphrase: str | None = None
) -> dict[str, Any]:
    """``{manifest, subject, templates, processing, schema}`` of an export bundle (an age file
    is opened in memory with the requester's ``identity`` or ``passphrase``)."""
    data = _zip_bytes(path, identity=identity, passphrase=passphrase)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {
            "manifest": json.loads(z.read("manifest.json")),
            # A bundle of schema 1.0 has no information.json.
            **{n[: -len(".json")]: json.loads(z.read(n)) for n in JSON_FILES if n in z.namelist()},
        }


def validate_bundle(
    path: Path, *, identity: str | None = None, passphrase: str | None = None
) -> dict[str, Any]:
    """Check an export bundle: file hashes against the manifest, content against the schema.

    An age-encrypted bundle is opened in memory with the requester's ``identity``
    (``AGE-SECRET-KEY-...``) or ``passphrase``.

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
    data = _zip_bytes(path, identity=identity, passphrase=passphrase)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        manifest = json.loads(z.read("manifest.json"))
        for name, digest in manifest["files"].items():
            if sha256_bytes(z.read(name)) != digest:
                raise ValueError(MSG_HASH_MISMATCH.format(name=name))
    # jsonschema's format checkers take over a second to import: only when a bundle is checked.
    import jsonschema

    doc = read_bundle(path, identity=identity, passphrase=passphrase)
    doc.pop("schema")
    jsonschema.validate(doc, bundle_schema(), cls=jsonschema.Draft202012Validator)
    return doc
