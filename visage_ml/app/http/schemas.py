"""Request and response models of the HTTP API (pydantic); they are its OpenAPI schema.

Request bodies are strict (no unknown fields, no coercion); responses describe what the routes
return. Images travel as base64 strings inside JSON (see :mod:`visage_ml.app.http.app`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from visage_ml.serving.analytics import SUPPRESSED

PID_PATTERN = r"^p[0-9a-f]{16}$"
REQUEST_ID_PATTERN = r"^r\d{8}-[0-9a-f]{8}$"
MAX_ENROL_IMAGES = 20
MAX_TOP_K = 100


SUBJECT_MESSAGE = (
    "Where the request's last message to the subject (receipt, extension, completion, denial) "
    "stands now, as the ledger records it: 'no_address', never sent (no contact in the vault; "
    "reach them another way and keep a record); 'queued', waiting for the next delivery pass "
    "(`visage serve` runs one every privacy.retention.serve_interval_seconds, `visage privacy "
    "notify` on demand); 'retrying', a try failed and another is due; 'delivered', accepted by "
    "the subject's mail server or webhook; 'failed', given up after privacy.notify.max_attempts "
    "(`visage privacy notify --retry-dead`). Null where nothing was queued (no request). "
    "GET /v1/requests/{request_id} shows it as it changes."
)
SubjectMessage = Literal["no_address", "queued", "retrying", "delivered", "failed"]  # outbox.py


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code.")
    message: str = Field(description="What went wrong and what to do.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


Pid = Annotated[str, Field(pattern=PID_PATTERN, description="Pseudonymous subject id.")]
Base64Image = Annotated[
    str,
    Field(
        min_length=1,
        description="The image file (JPEG, PNG, WebP or BMP) encoded as base64.",
    ),
]
Purpose = Literal["training", "evaluation", "identification", "analytics"]
PidPath = Annotated[str, Path(pattern=PID_PATTERN, description="Pseudonymous subject id.")]


class _Strict(BaseModel):
    # No unknown fields, and no coercion: "5" is not an integer, 0 is not false.
    model_config = ConfigDict(extra="forbid", strict=True)


class IdentifyRequest(_Strict):
    image: Base64Image
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="Most candidates per face.")


class VerifyRequest(_Strict):
    image: Base64Image
    pid: Pid


class EnrollRequest(_Strict):
    pid: Pid
    images: list[Base64Image] = Field(
        min_length=1,
        max_length=MAX_ENROL_IMAGES,
        description="Enrolment images, one face each; their embeddings are averaged.",
    )


class AnalyticsRequest(_Strict):
    image: Base64Image


class PurposesRequest(_Strict):
    # At least one when given: an empty list names no purpose, and taken for an omitted one it
    # withdrew or objected to every purpose.
    purposes: list[Purpose] | None = Field(
        None,
        min_length=1,
        description=(
            "Purposes concerned, at least one; when omitted, all (a consent withdrawal: every "
            "purpose a consent is given for, which analytics is not)."
        ),
    )


class RestrictRequest(_Strict):
    reason_code: str = Field(
        "subject_request",
        pattern=r"^[a-z0-9_]{1,64}$",
        description="Why, as a code (no free text: the ledger keeps it for ever).",
    )


class MatchOut(BaseModel):
    pid: str
    rank: int = Field(
        ge=1,
        description="1 for the most similar candidate. No score: operators get decisions "
        "(scores go to dpo and auditor keys, through /v1/verify).",
    )


class QualityOut(BaseModel):
    score: float = Field(description="0-1; 0.5 is the gate in every factor (serving.quality).")
    passed: bool
    failed: list[str] = Field(
        description="Factors below their bound: size, sharpness, pose, detection."
    )
    upscale: float = Field(
        1.0,
        description="How many times the face was found enlarged by resampling (1: not found); "
        "its size is judged as the box's shorter side over this.",
    )


class FaceMatches(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in pixels.")
    detection_prob: float
    decision: Literal["match", "unknown", "quality_too_low"] = Field(
        "match",
        description="match: candidates at or above the 1:N threshold; unknown: nobody is; "
        "quality_too_low: the face was not searched (no guess is made).",
    )
    quality: QualityOut | None = None
    matches: list[MatchOut]


class IdentifyResponse(BaseModel):
    faces: list[FaceMatches]
    threshold: float = Field(
        description="The 1:N threshold, derived for target_fpir at this gallery_size."
    )
    gallery_size: int | None = Field(None, description="Searchable templates when searched.")
    target_fpir: float | None = None
    model_version: str


class VerifyResponse(BaseModel):
    pid: str
    decision: Literal["match", "no_match", "quality_too_low"] = "match"
    match: bool
    score: float | None = Field(
        None, description="Cosine similarity: for dpo and auditor keys only (null for operators)."
    )
    threshold: float
    model_version: str


class EnrollResponse(BaseModel):
    pid: str
    template_sha256: str = Field(description="SHA-256 of the stored ciphertext file.")
    images_used: int
    replaced: bool
    model_version: str
    matches_enrolled: list[str] | None = Field(
        default=None,
        description=(
            "dpo keys only: the searchable subjects the new template matched at the 1:N "
            "threshold, enrolled anyway (twins; the ledger records that a match was "
            "overridden). An operator's enrolment of such a face is refused; null for operators."
        ),
    )


Cell = int | Literal["suppressed"]


class CorrectedCell(BaseModel):
    count: float = Field(
        description="Estimated true count: this window's faces, reassigned with the site's mix."
    )
    low: float | None = Field(
        description="95% interval of the correction's uncertainty (the measured confusion and "
        "the site's mix), not of the noise added when serving.analytics.epsilon > 0; null with "
        "serving.analytics.correction_rounds 0."
    )
    high: float | None


CorrectedValue = CorrectedCell | Literal["suppressed", "not_estimated"]


class CorrectedOut(BaseModel):
    age_band: dict[str, CorrectedValue]
    gender: dict[str, CorrectedValue]
    group: dict[str, CorrectedValue]
    not_estimated: dict[str, int] | None = Field(
        None,
        description="Per dimension, released faces predicted in a class the demographic "
        "model's evaluation never predicted (e.g. <18 where it held no minor): no correction "
        "can reassign them, so they are in no corrected cell; those classes read "
        '"not_estimated".',
    )


class CountsOut(BaseModel):
    faces: Cell
    age_band: dict[str, Cell]
    gender: dict[str, Cell]
    group: dict[str, Cell]
    corrected: CorrectedOut | None = Field(
        None,
        description="Closed windows: counts corrected for the demographic model's measured "
        "confusion per group, with 95% intervals of the correction (null without a confusion "
        "report).",
    )


class AnalyticsResponse(BaseModel):
    counts: None = Field(
        None,
        description="Always null: only closed windows are released (GET /v1/analytics/windows), "
        "so no answer singles out the faces of one frame.",
    )
    window_start: str
    window_seconds: float
    k_min: int
    epsilon: float


class WindowOut(BaseModel):
    start: str
    end: str
    frames: int
    counts: CountsOut = Field(
        description=f"Distinct faces per cell; a cell under k_min, or one that would give such "
        f"a cell away, reads '{SUPPRESSED}'."
    )
    privacy: dict[str, Any] | None = Field(
        None, description="The window's privacy budget and what its release spent (OpenDP)."
    )


class WindowsResponse(BaseModel):
    windows: list[WindowOut]


class PurposeState(BaseModel):
    allowed: bool
    reason: str
    basis: list[str]
    receipt_hash: str | None


class GalleryState(BaseModel):
    status: Literal["current", "pending"] = Field(
        description=(
            "current: read now. pending (only in the answer to a rights event): the gallery "
            "could not be read now (an erasure rewrites it, or its database is out of reach); "
            "the event is recorded and in force (every search reads the ledger first) and "
            "applied to the gallery at its next call: do not repeat the request, read "
            "GET /v1/subjects/{pid} later for the gallery's part. The other fields are then "
            "null."
        )
    )
    enrolled: bool | None = Field(description="A template is stored (null when pending).")
    searchable: bool | None = Field(
        description="The subject can be identified now (null when pending)."
    )
    template_model_version: str | None = Field(
        description="The embedder of the stored template (null when none, or pending)."
    )


class SubjectResponse(BaseModel):
    pid: str
    source: str
    added_seq: int
    last_seq: int
    restricted: bool
    objected: list[str]
    erasure_pending: bool
    erased: bool
    purposes: dict[str, PurposeState]
    gallery: GalleryState | None = Field(
        None, description="Gallery state (null in analytics mode)."
    )


class RightsResponse(BaseModel):
    pid: str
    event: str = Field(description="Type of the ledger event appended.")
    seq: int = Field(description="Its sequence number in the ledger.")
    subject: SubjectResponse
    subject_message: SubjectMessage | None = Field(default=None, description=SUBJECT_MESSAGE)
    template: Literal["reenrolled", "reenrolment_needed"] | None = Field(
        default=None,
        description=(
            "A lift only: what became of the template that a rectification removed while "
            "processing was restricted: made again from the rectified images, or not (the "
            "subject must be enrolled again; see note). Null when none was owed."
        ),
    )
    note: str | None = Field(
        default=None, description="A lift only: the same in words, with what to do."
    )


class LedgerEntryOut(BaseModel):
    seq: int
    time: str
    type: str
    pid: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    sig: str


class LedgerResponse(BaseModel):
    entries: list[LedgerEntryOut]
    next_after_seq: int | None = Field(description="Pass as after_seq for the next page.")


class CertificateInfo(BaseModel):
    name: str
    sha256: str
    bytes: int


class CertificatesResponse(BaseModel):
    certificates: list[CertificateInfo]


Code = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$", description="A code, no free text.")]
RequestId = Annotated[str, Path(pattern=REQUEST_ID_PATTERN, description="Request id.")]


class NewRequestBody(_Strict):
    right: Literal["access", "portability", "rectification", "erasure", "restriction", "objection"]
    received_at: str | None = Field(None, description="ISO 8601 receipt time (default now).")
    channel: Code = "api"
    purposes: list[Purpose] | None = Field(
        None,
        min_length=1,
        description="Objection: purposes concerned, at least one (all when omitted).",
    )
    lift: bool = Field(False, description="Restriction: the subject asks to lift it.")


class VerifyRequestBody(_Strict):
    method: Code = "identity_verified"


class ExtendRequestBody(_Strict):
    months: int | None = Field(
        default=None, ge=1, le=12, description="Calendar months added to the deadline."
    )
    days: int | None = Field(default=None, ge=1, le=366, description="Or days added.")
    reason_code: Code


class DenyRequestBody(_Strict):
    reason_code: Code


class ErasureBody(_Strict):
    request_id: str | None = Field(
        None, pattern=REQUEST_ID_PATTERN, description="A verified erasure request."
    )
    received_at: str | None = Field(None, description="ISO 8601 receipt time (default now).")


class RequestFailure(BaseModel):
    step: str
    code: str
    seq: int
    time: str


class RequestOut(BaseModel):
    request_id: str
    pid: str
    right: str
    article: str
    status: str
    received_at: str
    received_before_registration: bool = Field(
        default=False,
        description="The request reached the controller before the subject was added to the "
        "registry (at subject_added_at); its deadline counts from received_at all the same.",
    )
    subject_added_at: str | None = Field(
        default=None,
        description="When the subject was added, for a request received before; else null.",
    )
    deadline: str
    days_left: int | None
    overdue: bool
    extended_days: int
    denied_reason: str | None
    completed_at: str | None
    receipt_sha256: str | None
    failure: RequestFailure | None = Field(
        default=None,
        description="The last failed attempt (step, code, seq, time); an open request with a "
        "failure waits for the DPO to fix the cause and run it again with its request_id.",
    )
    failure_hint: str | None = Field(
        default=None,
        description="What the last failed attempt of an open request was (step, code) and what "
        "the DPO does next: the fix, then the action again with its request_id, or a denial; "
        "null when nothing failed or the request is closed (`visage privacy requests` says the "
        "same).",
    )
    subject_message: SubjectMessage | None = Field(default=None, description=SUBJECT_MESSAGE)


class RequestsResponse(BaseModel):
    requests: list[RequestOut]


class ErasureResponse(BaseModel):
    request_id: str
    pid: str
    certificate: str = Field(description="Name under GET /v1/certificates/{name}.")
    certificate_sha256: str
    artefacts: int = Field(description="Artefacts removed (hashes in the certificate).")
    models_stale: int = Field(description="Models trained with the subject, stale until retrained.")
    timings_s: dict[str, float]
    subject_message: SubjectMessage | None = Field(default=None, description=SUBJECT_MESSAGE)


class ExportBundle(BaseModel):
    filename: str
    sha256: str = Field(description="SHA-256 of the delivered bytes (the age file, or the zip).")
    bytes: int
    delivery: str = Field(
        default="none", description="age-x25519 (encrypted for the recipients) or none."
    )
    zip_sha256: str | None = Field(default=None, description="SHA-256 of the zip inside.")
    age_base64: str | None = Field(
        default=None, description="The zip encrypted for the requester (an age file)."
    )
    zip_base64: str | None = Field(
        default=None, description="The zip bundle in clear (plaintext=true only)."
    )


class ExportResponse(BaseModel):
    request_id: str
    pid: str
    bundle: ExportBundle
    images: int = Field(description="The subject's photographs in the bundle.")
    images_missing: int = Field(
        description="Photographs the raw table lists for the subject whose file could not be "
        "read (deleted, or `dvc checkout` not run): named in the bundle's subject.json, not in "
        "it. Restore them (`dvc checkout`) and answer a new request to hand them over."
    )


class IdentificationStatus(BaseModel):
    gallery_size: int
    target_fpir: float
    threshold: float = Field(
        description="The 1:N threshold at this gallery size, never below the 1:1 threshold."
    )
    required_fmr: float | None
    expected_fpir: float | None
    expected_fnir: float | None
    too_large: bool = Field(
        description="The gallery is too large for the target at this model's accuracy."
    )
    warning: str | None
    source: str
    at_verify_threshold: bool = Field(
        False,
        description="Searched at the 1:1 threshold: the target FPIR allows a lower one at this "
        "gallery size, and identify never names a subject whom verify would refuse.",
    )
    confidence: float | None = None
    min_bounded_fmr: float | None = None
    verify_threshold: float | None = Field(
        None, description="The 1:1 threshold (at evaluate.target_fmr), unchanged by N."
    )


class HealthResponse(BaseModel):
    status: Literal["ok"]
    mode: str
    models: dict[str, str | None]
    identification: IdentificationStatus | None = None
