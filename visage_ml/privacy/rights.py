"""Access and portability export (Art. 15, 20), rectification (Art. 16), restriction and
objection (Art. 18, 21), each inside the request lifecycle of :mod:`visage_ml.privacy.requests`.

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

Rectification replaces attributes or images through :class:`~visage_ml.data.rawstore.RawStore`
(``dvc add`` makes every derived output stale through DVC lineage), records before/after hashes
in a ``rectification`` ledger event, and re-enrols the subject in the gallery from the corrected
images (or, without an embedder, removes the now-inaccurate template until ``dvc repro gallery``
enrols it again).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.config import PURPOSES, Params, ProjectPaths, load_params
from visage_ml.io import atomic_write_bytes, canonical_json, sha256_bytes
from visage_ml.privacy.core import ALREADY_ERASED, PrivacyCore
from visage_ml.privacy.keys import check_pid
from visage_ml.privacy.ledger import utc_now
from visage_ml.privacy.requests import (
    COMPLETED,
    IN_PROGRESS,
    RECEIVED,
    VERIFIED,
    RequestBook,
    RequestState,
    RequestStateError,
)

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
MSG_WRONG_RIGHT = "request {rid} is a {right} request; this action answers {want} requests"
MSG_NOT_READY = (
    "request {rid} is {status}; verify the requester's identity first "
    "(`visage privacy request verify {rid}`)"
)


# ---------------------------------------------------------------------------------------------
# The request lifecycle around an action
# ---------------------------------------------------------------------------------------------


def begin(
    book: RequestBook,
    pid: str,
    rights: tuple[str, ...],
    request_id: str | None,
    *,
    details: Mapping[str, Any] | None = None,
) -> RequestState:
    """The request an action answers, moved to ``in_progress``.

    Without ``request_id`` a request is recorded, verified (``dpo_initiated``: the DPO acts on
    a request they verified outside the tool) and started.
    """
    if request_id is None:
        st = book.receive(pid, rights[0], details=details, channel="dpo")
        st = book.verify(st.request_id, method="dpo_initiated")
    else:
        st = book.get(request_id)
        if st.right not in rights:
            raise RequestStateError(
                MSG_WRONG_RIGHT.format(rid=request_id, right=st.right, want=" or ".join(rights))
            )
        if st.pid != pid:
            raise RequestStateError(f"request {request_id} is about another subject")
        if st.status == RECEIVED:
            raise RequestStateError(MSG_NOT_READY.format(rid=request_id, status=st.status))
    if st.status == VERIFIED:
        st = book.start(st.request_id)
    if st.status != IN_PROGRESS:
        raise RequestStateError(f"request {st.request_id} is already {st.status}")
    return st


# ---------------------------------------------------------------------------------------------
# Export (Art. 15, 20)
# ---------------------------------------------------------------------------------------------


def bundle_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of ``{manifest, subject, templates, processing}``."""
    sha = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    pid = {"type": "string", "pattern": "^p[0-9a-f]{16}$"}
    nullable_str = {"type": ["string", "null"]}
    event = {
        "type": "object",
        "required": ["seq", "time", "type"],
        "properties": {
            "seq": {"type": "integer", "minimum": 0},
            "time": {"type": "string"},
            "type": {"type": "string"},
            "payload": {"type": "object"},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://visage-ml.invalid/schemas/subject-export/{SCHEMA_VERSION}",
        "title": "visage-ml data-subject export (Art. 15 access, Art. 20 portability)",
        "type": "object",
        "required": ["manifest", "subject", "templates", "processing"],
        "properties": {
            "manifest": {
                "type": "object",
                "required": [
                    "format",
                    "schema_version",
                    "controller",
                    "pid",
                    "generated_at",
                    "files",
                ],
                "properties": {
                    "format": {"const": BUNDLE_FORMAT},
                    "schema_version": {"const": SCHEMA_VERSION},
                    "controller": {
                        "type": "object",
                        "required": ["name", "contact"],
                        "properties": {"name": {"type": "string"}, "contact": {"type": "string"}},
                    },
                    "pid": pid,
                    "request_id": nullable_str,
                    "generated_at": {"type": "string"},
                    "articles": {"type": "array", "items": {"type": "string"}},
                    "files": {"type": "object", "additionalProperties": sha, "minProperties": 1},
                    "validation": {"type": "string"},
                },
            },
            "subject": {
                "type": "object",
                "required": ["pid", "identity", "state", "attributes", "images", "history"],
                "properties": {
                    "pid": pid,
                    "identity": {
                        "type": ["object", "null"],
                        "properties": {
                            "external_ref": nullable_str,
                            "contact": nullable_str,
                            "source": nullable_str,
                        },
                    },
                    "state": {
                        "type": "object",
                        "required": ["purposes", "restricted", "objected", "erased"],
                        "properties": {
                            "purposes": {
                                "type": "object",
                                "required": list(PURPOSES),
                                "additionalProperties": {
                                    "type": "object",
                                    "required": ["allowed", "reason"],
                                },
                            },
                            "restricted": {"type": "boolean"},
                            "objected": {"type": "array", "items": {"type": "string"}},
                            "erased": {"type": "boolean"},
                        },
                    },
                    "attributes": {
                        "type": ["object", "null"],
                        "properties": {
                            "age": {"type": ["integer", "null"]},
                            "gender": nullable_str,
                            "group": nullable_str,
                            "n_images": {"type": ["integer", "null"]},
                            "source": nullable_str,
                        },
                    },
                    "images": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["image_id", "file", "sha256"],
                            "properties": {
                                "image_id": {"type": "string", "pattern": "^i[0-9a-f]{12}$"},
                                "file": {"type": "string", "pattern": "^images/"},
                                "sha256": sha,
                                "width": {"type": ["integer", "null"]},
                                "height": {"type": ["integer", "null"]},
                            },
                        },
                    },
                    "history": {"type": "array", "items": event},
                },
            },
            "templates": {
                "type": "object",
                "required": ["templates", "comparison"],
                "properties": {
                    "comparison": {"type": "string"},
                    "templates": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": [
                                "model_id",
                                "model_version",
                                "embedding_dim",
                                "dtype",
                                "byte_order",
                                "encoding",
                                "vector",
                                "metric",
                            ],
                            "properties": {
                                "model_id": {"type": "string"},
                                "model_version": {"type": "string"},
                                "embedding_dim": {"type": "integer", "minimum": 1},
                                "dtype": {"const": "float32"},
                                "byte_order": {"const": "little"},
                                "encoding": {"const": "base64"},
                                "vector": {"type": "string", "contentEncoding": "base64"},
                                "l2_normalised": {"type": "boolean"},
                                "metric": {"const": "cosine"},
                                "threshold": {"type": ["number", "null"]},
                                "preprocess": {"type": "object"},
                                "stored_sha256": sha,
                            },
                        },
                    },
                },
            },
            "processing": {
                "type": "object",
                "required": [
                    "dataset_versions",
                    "model_versions",
                    "gallery_enrolments",
                    "requests",
                    "ledger_events",
                ],
                "properties": {
                    "dataset_versions": {"type": "array", "items": {"type": "object"}},
                    "processed": {"type": "object"},
                    "model_versions": {"type": "array", "items": {"type": "object"}},
                    "gallery_enrolments": {"type": "array", "items": event},
                    "requests": {"type": "array", "items": {"type": "object"}},
                    "ledger_events": {"type": "array", "items": event},
                },
            },
        },
    }


def _jsonable(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    try:
        import pandas as pd

        if v is pd.NA:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return v


def _row_dict(row: Any) -> dict[str, Any]:
    return {str(k): _jsonable(v) for k, v in row.items()}


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


def _templates(paths: ProjectPaths, pid: str, core: PrivacyCore, gallery: Any) -> list[dict]:
    from visage_ml.serving.gallery import Gallery, NotEnrolledError, read_meta

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
    from visage_ml.io import sha256_file

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


def build_bundle(
    paths: ProjectPaths,
    pid: str,
    *,
    core: PrivacyCore | None = None,
    gallery: Any = None,
    request_id: str | None = None,
    params: Params | None = None,
) -> tuple[bytes, dict[str, str], dict[str, int]]:
    """The export zip's bytes, its ``{file: sha256}`` and counts (templates, images)."""
    from visage_ml.data.rawstore import read_images, read_subjects
    from visage_ml.privacy.lineage import subject_lineage

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
    attributes = _row_dict(row.iloc[0]) if len(row) else None
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
        image_items.append({**_row_dict(img), "file": name, "sha256": sha256_bytes(data)})
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
    schema = bundle_schema()
    for name in ("subject", "templates", "processing"):
        files[f"{name}.json"] = _json_bytes(doc[name])
    files["schema.json"] = _json_bytes(schema)
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
        "validation": (
            "schema.json validates the object {manifest, subject, templates, processing} made "
            "of the JSON files of those names; every file's SHA-256 is in manifest.files"
        ),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", _json_bytes(manifest))
        for name in sorted(files):
            z.writestr(name, files[name])
    return buf.getvalue(), hashes, {"templates": len(templates), "images": len(image_items)}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _processed_rows(paths: ProjectPaths, pid: str) -> dict[str, Any]:
    manifest = paths.processed / "manifest.parquet"
    if not manifest.is_file():
        return {"in_processed_data": False}
    import pandas as pd

    df = pd.read_parquet(manifest, columns=["pid", "split"])
    rows = df[df["pid"].astype(str) == pid]
    return {
        "in_processed_data": bool(len(rows)),
        "crops": len(rows),
        "split": str(rows["split"].iloc[0]) if len(rows) else None,
    }


def export_subject(
    paths: ProjectPaths,
    pid: str,
    *,
    out: Path | None = None,
    request_id: str | None = None,
    core: PrivacyCore | None = None,
    gallery: Any = None,
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


def read_bundle(path: Path) -> dict[str, Any]:
    """``{manifest, subject, templates, processing, schema}`` of an export zip."""
    with zipfile.ZipFile(path) as z:
        return {
            "manifest": json.loads(z.read("manifest.json")),
            **{n[: -len(".json")]: json.loads(z.read(n)) for n in JSON_FILES},
        }


def validate_bundle(path: Path) -> dict[str, Any]:
    """Check an export zip: file hashes against the manifest, content against its own schema.

    Raises
    ------
    ValueError
        A file's hash differs from the manifest's, or a file is missing.
    jsonschema.ValidationError
        The content does not match ``schema.json``.
    """
    import jsonschema

    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        for name, digest in manifest["files"].items():
            if sha256_bytes(z.read(name)) != digest:
                raise ValueError(f"{name} in the bundle does not match manifest.json")
    doc = read_bundle(path)
    schema = doc.pop("schema")
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    return doc


# ---------------------------------------------------------------------------------------------
# Rectification (Art. 16)
# ---------------------------------------------------------------------------------------------


@dataclass
class RectificationResult:
    """Before/after hashes of what changed (no values)."""

    request_id: str
    pid: str
    fields: list[str]
    attributes_sha256_before: str | None
    attributes_sha256_after: str | None
    files: list[dict[str, str]] = field(default_factory=list)
    raw_md5_before: str | None = None
    raw_md5_after: str | None = None
    gallery: str = "unchanged"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _attrs_digest(row: Mapping[str, Any] | None) -> str | None:
    if row is None:
        return None
    keep = {k: _jsonable(row.get(k)) for k in ("age", "gender", "group")}
    return hashlib.sha256(canonical_json(keep)).hexdigest()


def rectify(
    paths: ProjectPaths,
    pid: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    images: Mapping[str, bytes] | None = None,
    request_id: str | None = None,
    core: PrivacyCore | None = None,
    gallery: Any = None,
    engine: Any = None,
) -> RectificationResult:
    """Correct a subject's attributes and/or replace images (Art. 16).

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    attributes
        New ``age`` / ``gender`` / ``group`` values (None clears one).
    images
        ``{image_id: file bytes}``: replacements for existing images (any accepted format; it
        is checked and stored as a metadata-free PNG).
    request_id
        The verified rectification request answered (one is recorded when None).
    core, gallery
        Open privacy core and gallery (opened when None).
    engine
        A :class:`~visage_ml.serving.engine.Engine` to re-enrol the subject from the corrected
        images; without one (and without ``models/embedder.onnx``) the subject's template is
        removed until ``dvc repro gallery`` enrols them again.

    Returns
    -------
    RectificationResult
        What changed, as hashes; also in the ``rectification`` ledger event and the receipt.
    """
    from visage_ml.data.imagecheck import check_image
    from visage_ml.data.rawstore import RawStore, read_subjects
    from visage_ml.io import sha256_file

    check_pid(pid)
    attributes = dict(attributes or {})
    images = dict(images or {})
    if not attributes and not images:
        raise ValueError("nothing to rectify: give attributes (age, gender, group) or images")
    core = core if core is not None else PrivacyCore(paths)
    params = load_params(paths.params)
    if core.subject(pid).erased:
        raise ValueError(ALREADY_ERASED.format(pid=pid))
    book = RequestBook(core, params=params.privacy)
    details = {"fields": sorted(attributes), "replaced_files": len(images)}
    st = begin(book, pid, ("rectification",), request_id, details=details)
    subjects = read_subjects(paths.raw)
    row = subjects[subjects["pid"].astype(str) == pid]
    before_row = _row_dict(row.iloc[0]) if len(row) else None
    checked = {
        image_id: check_image(data, max_pixels=params.serving.max_image_pixels)
        for image_id, data in images.items()
    }
    file_changes = []
    for image_id, c in checked.items():
        f = paths.raw / pid / f"{image_id}.png"
        file_changes.append(
            {
                "image_id": image_id,
                "sha256_before": sha256_file(f) if f.is_file() else "",
                "sha256_after": c.sha256,
            }
        )
    raw_before = _tracked(paths)
    store = RawStore(paths, core=core, track=True)
    with store.transaction() as txn:
        if attributes:
            txn.update_subject(pid, attributes)
        for image_id, c in checked.items():
            txn.replace_image(
                pid, image_id, c.png, {"sha256": c.sha256, "width": c.width, "height": c.height}
            )
    after = read_subjects(paths.raw)
    after_row = after[after["pid"].astype(str) == pid]
    result = RectificationResult(
        request_id=st.request_id,
        pid=pid,
        fields=sorted(attributes),
        attributes_sha256_before=_attrs_digest(before_row),
        attributes_sha256_after=_attrs_digest(_row_dict(after_row.iloc[0]))
        if len(after_row)
        else None,
        files=file_changes,
        raw_md5_before=raw_before,
        raw_md5_after=txn.dvc_md5 or _tracked(paths),
    )
    if checked:
        result.gallery = _reenrol(paths, pid, core=core, gallery=gallery, engine=engine)
    core.ledger.append(
        "rectification",
        pid,
        {
            "request_id": st.request_id,
            "fields": result.fields,
            "attributes_sha256_before": result.attributes_sha256_before,
            "attributes_sha256_after": result.attributes_sha256_after,
            "files": file_changes,
            "raw_md5_before": result.raw_md5_before,
            "raw_md5_after": result.raw_md5_after,
            "gallery": result.gallery,
        },
    )
    book.complete(
        st.request_id,
        outcome={
            "fields": result.fields,
            "files": len(file_changes),
            "raw_md5_after": result.raw_md5_after,
            "gallery": result.gallery,
        },
    )
    return result


def _tracked(paths: ProjectPaths) -> str | None:
    from visage_ml import dvcops

    return dvcops.tracked_md5(paths.root, paths.raw)


def _reenrol(paths: ProjectPaths, pid: str, *, core: PrivacyCore, gallery: Any, engine: Any) -> str:
    """Re-enrol ``pid`` from their corrected images; returns what happened (a code)."""
    from PIL import Image

    from visage_ml.data.rawstore import read_images
    from visage_ml.serving.gallery import Gallery, read_meta

    meta = read_meta(paths.gallery)
    if meta is None:
        return "no_gallery"
    g = gallery
    if g is None:
        g = Gallery.open_existing(paths, core=core, load=False)
    if not g.template_path(pid).exists():
        return "not_enrolled"
    if engine is None and (paths.models / "embedder.onnx").is_file():
        from visage_ml.serving.engine import Engine

        engine = Engine.from_project(paths, load_params(paths.params), gallery_meta=meta)
    if engine is None:
        g.erase(pid, reason="rectification")
        return "template_removed_until_reenrolment"
    rows = read_images(paths.raw)
    rows = rows[rows["pid"].astype(str) == pid].sort_values("image_id")
    per_subject = load_params(paths.params).gallery.images_per_subject
    crops = []
    for image_id in rows["image_id"].astype(str):
        with Image.open(paths.raw / pid / f"{image_id}.png") as im:
            faces = engine.detect(im.convert("RGB"))
        if len(faces) == 1:
            crops.append(faces[0].crop)
        if len(crops) >= per_subject:
            break
    if not crops:
        g.erase(pid, reason="rectification")
        return "template_removed_no_face"
    emb = engine.embed(np.stack(crops))
    g.enroll(pid, emb, model_version=engine.embedder.model_version)
    return "reenrolled"


# ---------------------------------------------------------------------------------------------
# Restriction and objection (Art. 18, 21)
# ---------------------------------------------------------------------------------------------


def restrict(
    paths: ProjectPaths,
    pid: str,
    *,
    request_id: str | None = None,
    lift: bool = False,
    core: PrivacyCore | None = None,
) -> RequestState:
    """Answer a restriction request: restrict (or lift) processing; complete the request.

    The data is kept; the registry makes ``prepare`` leave the subject out and serving stop
    scoring them until lifted.
    """
    core = core if core is not None else PrivacyCore(paths)
    book = RequestBook(core)
    st = begin(
        book, pid, ("restriction",), request_id, details={"action": "lift" if lift else "set"}
    )
    entry = core.lift(pid) if lift else core.restrict(pid, reason_code="subject_request")
    book.complete(st.request_id, outcome={"event": entry.type, "seq": entry.seq})
    return book.get(st.request_id)


def object_to(
    paths: ProjectPaths,
    pid: str,
    *,
    purposes: list[str] | None = None,
    request_id: str | None = None,
    core: PrivacyCore | None = None,
) -> RequestState:
    """Answer an objection (Art. 21) to ``purposes`` (all when None); complete the request."""
    core = core if core is not None else PrivacyCore(paths)
    book = RequestBook(core)
    chosen = list(purposes or PURPOSES)
    st = begin(book, pid, ("objection",), request_id, details={"purposes": chosen})
    entry = core.object(pid, chosen)
    book.complete(st.request_id, outcome={"event": entry.type, "seq": entry.seq})
    return book.get(st.request_id)


def run_request(paths: ProjectPaths, request_id: str, *, core: PrivacyCore | None = None) -> Any:
    """Carry out a verified request whose right needs no further input.

    Access and portability export, restriction (set or lift, as recorded), objection (to the
    recorded purposes) and erasure; rectification needs the corrected values
    (:func:`rectify`).
    """
    core = core if core is not None else PrivacyCore(paths)
    st = RequestBook(core).get(request_id)
    if st.status == COMPLETED:
        raise RequestStateError(f"request {request_id} is already completed")
    if st.right in ("access", "portability"):
        return export_subject(paths, st.pid, request_id=request_id, core=core, right=st.right)
    if st.right == "restriction":
        lift = st.details.get("action") == "lift"
        return restrict(paths, st.pid, request_id=request_id, lift=lift, core=core)
    if st.right == "objection":
        purposes = st.details.get("purposes") or None
        return object_to(paths, st.pid, purposes=purposes, request_id=request_id, core=core)
    if st.right == "erasure":
        from visage_ml.privacy.erasure import Erasure

        return Erasure(paths, core=core).run(request_id)
    raise RequestStateError(
        f"request {request_id} is a rectification: run `visage privacy rectify {st.pid} "
        f"--request {request_id}` with the corrected values"
    )
