"""Errors of the HTTP API: one JSON shape, ``{"error": {"code", "message"}}``, for every failure.

:class:`ApiError` is what routes raise; :func:`install_error_handlers` maps it, the framework's
own errors and the library's exceptions (no face, model mismatch, ...) to that shape and records
the code in the request's audit record; :func:`error_responses` documents the codes a route may
answer, by status, in the OpenAPI schema (each route declares them from the groups below).
"""

from __future__ import annotations

import functools
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from visage_ml.app.http.auth import DPO, ApiKeyFileError
from visage_ml.app.http.schemas import ErrorResponse
from visage_ml.data.rawstore import ImageUnreadableError, RawDataMissingError
from visage_ml.inference import ModelFileError
from visage_ml.privacy.auditlog import AuditLogError
from visage_ml.privacy.datakeys import SealedFileError
from visage_ml.privacy.registry import LedgerRefusedError
from visage_ml.privacy.witnessed import LedgerRollbackError, WitnessUnavailableError
from visage_ml.rights.content_scan import ScanIncompleteError
from visage_ml.serving.engine import (
    ModelMismatchError,
    ModelUnavailableError,
    NoFaceError,
    TooManyFacesError,
)
from visage_ml.serving.gallery import (
    EnrolmentRefusedError,
    GalleryUnavailableError,
    GalleryVersionError,
    NotEnrolledError,
    TemplateFileError,
)
from visage_ml.serving.pg_swap import OldTableHeldError
from visage_ml.stack.proc import StackError

logger = logging.getLogger(__name__)

# Library exceptions answered directly: (exception, status, code).
LIBRARY_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (NoFaceError, 422, "no_face"),
    (TooManyFacesError, 422, "too_many_faces"),
    # (EnrolmentRefusedError is answered by install_error_handlers: its reason to a dpo key only.)
    (NotEnrolledError, 404, "not_enrolled"),
    (GalleryVersionError, 503, "gallery_version_mismatch"),
    # The shared gallery's database dropped the connection, cannot be reached, or holds the
    # table for an erasure's rewrite longer than serving.gallery.lock_timeout_s: retry.
    (GalleryUnavailableError, 503, "gallery_unavailable"),
    (ModelMismatchError, 503, "model_mismatch"),
    (ModelUnavailableError, 404, "not_available"),
    (ModelFileError, 503, "model_error"),
    (ApiKeyFileError, 503, "api_keys_unreadable"),
    # The ledger failed its check against a witnessed checkpoint: nothing is processed.
    (LedgerRollbackError, 503, "ledger_rollback"),
    (LedgerRefusedError, 503, "ledger_refused"),
    # A narrowing event is recorded and in force, but its witnesses did not cosign it yet.
    (WitnessUnavailableError, 503, "not_witnessed"),
    # The audit log fails verification against its ledger anchors: no access export until it
    # is restored (the message says how), since it could hide identifications.
    (AuditLogError, 503, "audit_log_unverified"),
    # The content scan of an erasure stopped (a read or a process of it hung, or a process was
    # killed): nothing certified, the request open; the message says what to do.
    (ScanIncompleteError, 503, "scan_incomplete"),
    # The shared gallery's purge swapped its copy in, but a session of the database holds the
    # old table (the erased rows in it): nothing certified, the request open; the message names
    # the session's backend and says what to do.
    (OldTableHeldError, 503, "gallery_table_held"),
    # A store the erasure must erase from cannot be reached or opened (its preflight stops it
    # before anything is erased; a step, after): the message names it and says what to do.
    (StackError, 503, "stores_unreachable"),
    # A sealed file the route reads (a subject's stored photograph) fails authentication:
    # altered or truncated on the server's disk. Nothing more is done until it is restored;
    # the request it was read for stays open, its failure recorded with this code.
    (SealedFileError, 503, "sealed_file_error"),
    # Such a photograph is there but cannot be read (its permissions, a folder in its place,
    # the storage failing): as a damaged one, the request stays open until it is repaired.
    (ImageUnreadableError, 503, "image_unreadable"),
    # data/raw's tables are not checked out on the server, though the subject's rows in them
    # are expected: an export would hand over none of their photographs as if they had none, a
    # lift would make no template again from them ("no single face was found"), an erasure
    # would seek no copy of them and certify the subject erased (nothing is erased).
    (RawDataMissingError, 503, "raw_data_missing"),
    # The subject's template (or anchor template) in the gallery fails authentication, read
    # for their export: as a sealed photograph, the request stays open until it is repaired.
    (TemplateFileError, 503, "template_file_error"),
)
# Headers that go with a library error's answer, by code.
LIBRARY_HEADERS: dict[str, dict[str, str]] = {"gallery_unavailable": {"Retry-After": "1"}}
# Answers that do not repeat the library's message (it is for the operator: the server's log).
LIBRARY_MESSAGES: dict[str, str] = {
    "gallery_unavailable": "the gallery's database is unreachable, dropped the connection, or "
    "the gallery is being rewritten (an erasure); the request was not completed: retry it "
    "after Retry-After (repeating it is safe)",
    # The library's names the file's path on the server and says how to mend it.
    "api_keys_unreadable": "the server cannot read its API key file, so no key can be checked "
    "and nothing was done; ask the server's operator to restore secrets/api_keys.json (the "
    "server's log says what is wrong with it) from a backup, or to create new keys with "
    "`visage apikey create`, then retry",
    # The library's names the file (under the subject's pid) for the operator: the log has it.
    "sealed_file_error": "a file the server stores for this subject (a sealed photograph) "
    "fails authentication: it was altered or truncated on the server's disk, and nothing more "
    "was done (an open request stays in progress); ask the server's operator to restore it "
    "(`dvc checkout`, the server's log names it) or to re-import the image, then retry",
    # The library's names the file (under the subject's pid) for the operator: the log has it.
    "image_unreadable": "a photograph the server stores for this subject cannot be read from "
    "its disk (its permissions, something else in its place, or the storage failing), and "
    "nothing more was done (an open request stays in progress); ask the server's operator to "
    "check that the server may read it (its permissions and storage; the server's log names "
    "it) or to restore it with `dvc checkout`, then retry",
    # The library's says why the subject's rows are expected, for the operator: the log has it.
    "raw_data_missing": "the server's raw data (data/raw, the subjects' photographs and their "
    "tables) is not checked out, so the subject's photographs cannot be read, and nothing more "
    "was done (a request answered stays open, its failure recorded); ask the server's operator "
    "to check it out as the server's log says (`dvc checkout data/raw`, after `dvc fetch "
    "data/raw` where the DVC cache lacks a file of it), then retry",
    # The library's names the template's file (the subject's pid) or table: the log has it.
    "template_file_error": "the subject's template stored in the gallery fails "
    "authentication: it was altered, truncated or moved on the server, and nothing more was "
    "done (an open request stays in progress); ask the server's operator to run `visage "
    "gallery verify` (it lists the damaged templates) and to restore the template from a "
    "backup or enrol the subject again, then retry",
}
# One answer for an operator's enrolment, whatever the reason: unknown subject, no
# identification consent (withdrawn, never given, restricted, objected, erased), a stored
# template or anchor template the new images do not match (or no anchor to match), or new images
# identified as another subject. The gallery's own refusal (EnrolmentRefusedError, raised when
# consent changed after the route checked it) gets it too under any key but a dpo's.
MSG_NOT_AVAILABLE = (
    "subject {pid} cannot be enrolled with these images under this key: the subject is not "
    "available for identification, or already has a template these images do not match, or "
    "the images match another enrolled subject; a DPO can check the subject's state and "
    "re-enrol (`POST /v1/enroll` with a dpo key)"
)
MSG_MALFORMED_JSON = "the request body is not valid JSON (UTF-8, not nested thousands deep)"
MSG_INVALID_JSON = "the request body is not valid JSON"
# Unknown fields are counted, never named: their names are the client's (a name, an image).
MSG_UNKNOWN_FIELDS = "{n} unknown field(s) in {where}"
MSG_ACCEPTED_FIELDS = "; the accepted fields are: {fields}"
# Stands for a key of the client's in an error's location (a dict key, say).
CLIENT_KEY = "<key>"
# The first item of a validation error's location: where the input was.
LOCATIONS: frozenset[str] = frozenset({"body", "query", "path", "header", "cookie"})
# The codes a route may answer, by status.
Codes = Mapping[int, tuple[str, ...]]
# What an error status means, whatever the route; each route's OpenAPI description of it adds
# what its codes need explained (EXPLAINED) and names them.
DOCUMENTED: dict[int, str] = {
    400: "Malformed request.",
    401: "Missing, invalid or expired API key (checked before the body is read).",
    403: "The key's role may not call this endpoint.",
    404: "Not found.",
    408: "The request did not arrive in time.",
    409: "The state of the subject or request does not allow this.",
    413: "Request or image too large.",
    422: "Invalid input.",
    429: "Too many failed authentications from this client.",
    503: "The request was not completed: the code says why, and the message what to do.",
}
# What a code means where its name does not say it, for the routes that answer it.
EXPLAINED: dict[tuple[int, str], str] = {
    (400, "malformed_json"): "the body is not valid JSON",
    (400, "bad_request"): "a Content-Length that is not a number, or a client that left before "
    "sending the body",
    (404, "not_enrolled"): "the subject is unknown, never enrolled, or not available for "
    "identification (one answer)",
    (408, "body_timeout"): "the body did not arrive within serving.body_timeout_s",
    (408, "request_timeout"): "the whole request did not arrive within "
    "serving.request_read_timeout_s; the connection is closed",
    (409, "not_available"): "an operator's enrolment of a subject who may not be processed, or "
    "of images that do not match the subject's template or that match another subject's (one "
    "answer for every reason)",
    (409, "processing_not_allowed"): "a dpo's enrolment of a subject whose consent does not "
    "cover identification (the reason is named)",
    (409, "not_allowed"): "what the request says does not allow it to be recorded or changed (a "
    "receipt time that is not one, in the future or before the GDPR applied; an extension not "
    "given in months or days, or past the limit): the message says why",
    (409, "subject_erased"): "the subject was erased: nothing about them can be recorded or "
    "changed any more (the message names the erasure's request and its certificate)",
    (422, "invalid_request"): "a malformed or unknown field or query parameter",
    (503, "busy"): "the server is answering serving.max_concurrent requests: retry after "
    "Retry-After",
    (503, "api_keys_unreadable"): "the server's API key file cannot be read, so no key can be "
    "checked: retry once its operator has restored it",
    (503, "gallery_unavailable"): "the shared gallery's database dropped the connection, cannot "
    "be reached, or is being rewritten by an erasure: retry after Retry-After",
    (503, "gallery_version_mismatch"): "the gallery was rebuilt for another embedder: restart "
    "the server",
    (503, "model_mismatch"): "a model is not the one the gallery was built with: restart the "
    "server after `visage gallery rebuild` or `dvc repro export`",
    (503, "model_error"): "a model is damaged: restart the server after `dvc repro export`",
    (503, "ledger_rollback"): "the privacy ledger is shorter than, or forked from, a checkpoint "
    "it signed: nothing is processed until it is restored (the message says how)",
    (503, "ledger_refused"): "an entry of the privacy ledger does not verify: nothing is "
    "processed until it is restored (the message says how)",
    (503, "not_witnessed"): "the event is recorded and in force, but the ledger's witnesses did "
    "not cosign it yet (the message says what to do)",
    (503, "audit_log_unverified"): "the audit log fails verification against its anchors in the "
    "ledger: no access export until privacy/audit.jsonl is restored from a backup",
    (503, "scan_incomplete"): "an erasure's content scan stopped before it had looked at every "
    "file (a read or a process of it hung, or a process was killed): nothing was certified and "
    "the request stays open, its failure recorded with this code; do what the message says, "
    "then send the erasure again with its request_id (or run `visage privacy resume`)",
    (503, "gallery_table_held"): "the shared gallery's purge could not drop the table's old "
    "copy, which holds the erased rows: another session of the database holds it (the message "
    "names its backend); nothing was certified and the request stays open, its failure "
    "recorded with this code; end that session, then send the erasure again with its "
    "request_id (or run `visage privacy resume`)",
    (503, "stores_unreachable"): "a store the erasure must erase from cannot be reached or "
    "opened (a stack service down, a DVC remote without its plugin, a gallery table or an MLflow "
    "server the project once wrote to): nothing was certified and the request stays open, its "
    "failure recorded with this code; do what the message says (`visage stack up`, say), then "
    "send the erasure again (the subject's open request is taken up)",
    (503, "sealed_file_error"): "a file the server stores for the subject (a sealed "
    "photograph) fails authentication, altered or truncated on its disk: nothing more was done "
    "and the request stays in progress; retry once the server's operator has restored it "
    "(`dvc checkout`) or re-imported the image",
    (503, "image_unreadable"): "a photograph the server stores for the subject cannot be read "
    "from its disk (permissions, something else in its place, the storage failing): nothing "
    "more was done and the request stays in progress; retry once the server's operator has "
    "made it readable or restored it (`dvc checkout`)",
    (503, "raw_data_missing"): "the server's raw data (data/raw) is not checked out, though "
    "the subject's photographs are expected in it: nothing more was done and a request answered "
    "stays open, its failure recorded (an export without them would say they have none, a lift "
    "would make no template again from them, an erasure would seek no copy of them: nothing "
    "was erased); retry once the server's operator has checked it out as the server's log "
    "says (`dvc checkout data/raw`, after `dvc fetch data/raw` where the DVC cache lacks a "
    "file of it; an erasure: send it again, the subject's open request is taken up)",
    (503, "template_file_error"): "the subject's template (or anchor template) stored in the "
    "gallery fails authentication: nothing more was done and the request stays in progress; "
    "retry once the server's operator has restored it from a backup or enrolled the subject "
    "again (`visage gallery verify` lists the damaged templates)",
}
# The codes the HTTP layer answers itself, by status; :data:`ERROR_CODES` adds the library's.
_HTTP_CODES: dict[int, tuple[str, ...]] = {
    400: ("malformed_json", "bad_request"),
    401: ("unauthenticated", "key_expired"),
    403: ("forbidden",),
    404: ("not_found", "unknown_subject", "unknown_request"),
    405: ("method_not_allowed",),
    408: ("body_timeout", "request_timeout"),
    409: (
        "not_available",
        "processing_not_allowed",
        "not_allowed",
        "subject_erased",
        "request_state",
        "not_restricted",
        "already_restricted",
        "already_objected",
        "not_objected",
        "not_consented",
    ),
    413: ("request_too_large", "image_too_large"),
    422: (
        "invalid_request",
        "invalid_base64",
        "invalid_image",
        "multiple_faces",
        "quality_too_low",
        "not_by_consent",
        "delivery",
    ),
    429: ("too_many_failed_attempts",),
    500: ("internal_error",),
    503: ("busy",),
}


def merged(*groups: Codes) -> dict[int, tuple[str, ...]]:
    """The codes of ``groups`` together, by status (each once, in the order first given)."""
    out: dict[int, tuple[str, ...]] = {}
    for group in groups:
        for status, codes in group.items():
            have = out.get(status, ())
            out[status] = (*have, *(c for c in codes if c not in have))
    return dict(sorted(out.items()))


# Every error code the API answers, by status: what a client may switch on (``error.code``).
# A route's OpenAPI description of a status names the codes that route declares (a few of
# these); tests/unit/test_api.py reads the package for every code it answers and checks that it
# is here, and that each is documented.
ERROR_CODES: dict[int, tuple[str, ...]] = merged(
    _HTTP_CODES, *({status: (code,)} for _, status, code in LIBRARY_ERRORS)
)

# The groups a route declares its codes from (error_responses), by what it does.
# The boundary's, before a route runs (boundary.py): a key presented, checked on every route
# (on the public /healthz only when one is presented) ...
KEY_ERRORS: Codes = {
    401: ("unauthenticated", "key_expired"),
    429: ("too_many_failed_attempts",),
    503: ("api_keys_unreadable",),
}
# ... its role (every route but /healthz) ...
ROLE_ERRORS: Codes = {403: ("forbidden",)}
# ... a slot among serving.max_concurrent (every route but /healthz and /metrics) ...
BUSY_ERRORS: Codes = {503: ("busy",)}
# ... together, for a route with a key;
AUTH_ERRORS: Codes = merged(KEY_ERRORS, ROLE_ERRORS, BUSY_ERRORS)
# the body of a POST, read whole before the route sees it ...
BODY_ERRORS: Codes = {
    400: ("bad_request",),
    408: ("body_timeout", "request_timeout"),
    413: ("request_too_large",),
}
# ... and parsed, where the route takes a JSON body.
JSON_ERRORS: Codes = {400: ("malformed_json",), 422: ("invalid_request",)}
# A query parameter the route does not define (the app's known_query_only), or a parameter it
# refuses: every route (error_responses adds it).
INPUT_ERRORS: Codes = {422: ("invalid_request",)}
# An image field (Service.decode).
IMAGE_ERRORS: Codes = {413: ("image_too_large",), 422: ("invalid_base64", "invalid_image")}
# The models: a detection of more than serving.max_faces faces, a damaged model's output, a
# model loaded that is not the gallery's.
MODEL_ERRORS: Codes = {422: ("too_many_faces",), 503: ("model_error", "model_mismatch")}
# The privacy ledger read: a privacy core opened checks it against its witnessed checkpoints,
# and the registry verifies every entry it folds (a subject's state, a consent decision).
LEDGER_ERRORS: Codes = {503: ("ledger_refused", "ledger_rollback")}
# A narrowing event appended (consent withdrawn, restriction, objection, erasure): the
# witnesses must cosign it at once (every other event waits for the next checkpoint).
WITNESS_ERRORS: Codes = {503: ("not_witnessed",)}
# The gallery: each read applies the ledger's new events first (LEDGER_ERRORS), and the shared
# one's database may be out of reach.
GALLERY_ERRORS: Codes = merged(
    {503: ("gallery_unavailable", "gallery_version_mismatch")}, LEDGER_ERRORS
)
# A subject who must be on record and not erased (Service.live_subject).
SUBJECT_ERRORS: Codes = {404: ("unknown_subject",), 409: ("subject_erased",)}


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def request_info(request: Request) -> dict[str, Any]:
    """The request's audit record (``scope["visage"]``): routes and handlers fill it, the
    boundary writes it to the audit log."""
    return request.scope.setdefault("visage", {})


def error_json(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error answer."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def error_responses(*groups: Codes) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route may answer: ``groups`` (the groups
    above, and codes of its own), with :data:`INPUT_ERRORS`, which every route may answer.

    Each status's description is its general sentence (:data:`DOCUMENTED`), what the route's
    codes of it need explained (:data:`EXPLAINED`), and those codes, in the order of
    :data:`ERROR_CODES`.

    Raises
    ------
    ValueError
        A code that :data:`ERROR_CODES` does not list under its status (when the route is
        defined).
    """
    declared = merged(INPUT_ERRORS, *groups)
    for status, codes in declared.items():
        unknown = [c for c in codes if c not in ERROR_CODES.get(status, ())]
        if unknown:
            raise ValueError(f"{status} {', '.join(unknown)}: not in ERROR_CODES")
    return {
        status: {"model": ErrorResponse, "description": _described(status, codes)}
        for status, codes in declared.items()
    }


def _described(status: int, codes: tuple[str, ...]) -> str:
    ordered = [c for c in ERROR_CODES[status] if c in codes]
    parts = [DOCUMENTED[status]]
    parts += [f"`{c}`: {EXPLAINED[status, c]}." for c in ordered if (status, c) in EXPLAINED]
    parts.append(f"Codes: {', '.join(f'`{c}`' for c in ordered)}.")
    return " ".join(parts)


def library_message(code: str, exc: Exception) -> str:
    """The message answered with a library error's ``code``: the library's own, or one of
    :data:`LIBRARY_MESSAGES` where the library's is for the operator (then logged)."""
    message = LIBRARY_MESSAGES.get(code)
    if message is None:
        return str(exc)
    logger.warning("%s: %s", code, exc)
    return message


def library_error(exc: Exception) -> ApiError:
    """The answer to a library error raised where the app's handlers do not see it (the
    boundary, before a route runs): its status and code from :data:`LIBRARY_ERRORS`, its
    message (:func:`library_message`) and headers as the handlers give them."""
    status, code = next((s, c) for t, s, c in LIBRARY_ERRORS if isinstance(exc, t))
    return ApiError(status, code, library_message(code, exc), LIBRARY_HEADERS.get(code))


@functools.cache
def _model_fields(model: type[BaseModel]) -> tuple[tuple[str, ...], frozenset[str]]:
    """A body model's own field names: its top-level ones (as sent, in order) and all of them,
    nested models' included."""
    schema = model.model_json_schema()
    top = tuple(schema.get("properties", {}))
    nested = (d.get("properties", {}) for d in schema.get("$defs", {}).values())
    return top, frozenset(top).union(*nested)


def _declared_names(request: Request) -> tuple[tuple[str, ...], frozenset[str]]:
    """The names the matched route declares: its body model's fields (the top-level ones, and
    all) and its parameters. Empty when the route or its body model is not known."""
    route = request.scope.get("route")
    top: tuple[str, ...] = ()
    names: set[str] = set()
    body = getattr(
        getattr(getattr(route, "body_field", None), "field_info", None), "annotation", None
    )
    # A body that may be left out is declared `Model | None`: its model is one of the union's.
    for model in (body, *typing.get_args(body)):
        if isinstance(model, type) and issubclass(model, BaseModel):
            top, every = _model_fields(model)
            names |= every
            break
    stack = [getattr(route, "dependant", None)]
    while stack:
        dep = stack.pop()
        if dep is None:
            continue
        for params in (dep.path_params, dep.query_params, dep.header_params, dep.cookie_params):
            names.update(p.alias for p in params)
        stack.extend(dep.dependencies)
    return top, frozenset(names)


def _location(loc: Sequence[Any], declared: frozenset[str]) -> str:
    """An error's location as ``images.1`` or ``query.top_k``, naming only what the route
    declares: a key of the client's own (of a dict, say) is written :data:`CLIENT_KEY`."""
    head = [str(loc[0])] if loc and loc[0] in LOCATIONS and loc[0] != "body" else []
    rest = loc[1:] if loc and loc[0] in LOCATIONS else loc
    parts = [str(x) if isinstance(x, int) or x in declared else CLIENT_KEY for x in rest]
    return ".".join(head + parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every known exception with :func:`error_json` and note its code for the audit."""

    def handler(status: int, code: str) -> Callable[[Request, Exception], Any]:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            request_info(request)["error"] = code
            message = library_message(code, exc)
            return error_json(status, code, message, LIBRARY_HEADERS.get(code))

        return handle

    async def enrolment_refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EnrolmentRefusedError)
        info = request_info(request)
        if info.get("role") == DPO:
            info["error"] = "processing_not_allowed"
            return error_json(409, "processing_not_allowed", str(exc))
        # Not the reason (consent withdrawn, restricted, erased ...): no oracle for consent.
        info["error"] = "not_available"
        return error_json(409, "not_available", MSG_NOT_AVAILABLE.format(pid=exc.pid))

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        request_info(request)["error"] = exc.code
        return error_json(exc.status, exc.code, exc.message, exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {400: "malformed_json", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        request_info(request)["error"] = code
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        if code == "malformed_json":
            # FastAPI's 400 for a body it cannot parse (not UTF-8, nested too deeply).
            message = MSG_MALFORMED_JSON
        return error_json(exc.status_code, code, message, getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            request_info(request)["error"] = "malformed_json"
            return error_json(400, "malformed_json", MSG_INVALID_JSON)
        # Never echo the input: it may be an image. Nor a key the client chose (an unknown
        # field's name may be an image or a name too): only the route's own names are named.
        top, declared = _declared_names(request)
        unknown: dict[str, int] = {}
        parts = []
        for e in errors:
            loc = tuple(e.get("loc", ()))
            if e.get("type") == "extra_forbidden":
                # "the body", "the query", or the nested object's location ("body" stripped).
                outer = loc[:-1]
                top_level = len(outer) == 1 and outer[0] in LOCATIONS
                where = f"the {outer[0]}" if top_level else _location(outer, declared)
                unknown[where] = unknown.get(where, 0) + 1
            elif len(parts) < 10:
                parts.append(f"{_location(loc, declared)}: {e.get('msg', 'invalid')}")
        for where, n in unknown.items():
            message = MSG_UNKNOWN_FIELDS.format(n=n, where=where)
            if where == "the body" and top:
                message += MSG_ACCEPTED_FIELDS.format(fields=", ".join(top))
            parts.append(message)
        request_info(request)["error"] = "invalid_request"
        return error_json(422, "invalid_request", "; ".join(parts))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    for exc_type, status, code in LIBRARY_ERRORS:
        app.add_exception_handler(exc_type, handler(status, code))
    app.add_exception_handler(EnrolmentRefusedError, enrolment_refused)
