"""Audit routes for auditors: the signed privacy ledger, a page at a time, and certificates."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response

from visage_ml.app.http.auth import ApiKey
from visage_ml.app.http.errors import AUTH_ERRORS, ApiError, error_responses
from visage_ml.app.http.schemas import PID_PATTERN, CertificatesResponse, LedgerResponse
from visage_ml.app.http.service import AUDITOR_KEY, SERVICE, Service
from visage_ml.io import sha256_file

CERT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.json$")
LEDGER_PAGE = 1000
MSG_CERT = "no certificate named {name}"

router = APIRouter(tags=["audit"])


@router.get(
    "/v1/ledger",
    name="ledger",
    response_model=LedgerResponse,
    responses=error_responses(AUTH_ERRORS),
)
def ledger(
    after_seq: Annotated[int, Query(ge=-1, description="Entries after this seq.")] = -1,
    limit: Annotated[int, Query(ge=1, le=LEDGER_PAGE)] = 100,
    pid: Annotated[str | None, Query(pattern=PID_PATTERN)] = None,
    type: Annotated[str | None, Query(max_length=64, description="Event type.")] = None,
    _: ApiKey = AUDITOR_KEY,
    svc: Service = SERVICE,
) -> dict[str, Any]:
    """Signed ledger entries (pids and hashes only), in order, a page at a time."""
    out: list[dict[str, Any]] = []
    last = None
    # Lines without the pid or the type asked for are never parsed, and the reading starts
    # near after_seq, not at the ledger's first entry (a page cost 0.4 s at 150k entries).
    needles = [n.encode() for n in (pid, type and f'"{type}"') if n]
    ledger = svc.core.ledger
    start = ledger.offset_before(after_seq)
    lines = (
        ledger.lines_containing(needles[:1], start_offset=start)
        if needles
        else (line for _end, line in ledger.iter_lines(start_offset=start))
    )
    for line in lines:
        if any(n not in line for n in needles[1:]):
            continue
        obj = orjson.loads(line)
        if obj["seq"] <= after_seq:
            continue
        if (pid is not None and obj.get("pid") != pid) or (
            type is not None and obj.get("type") != type
        ):
            continue
        if len(out) == limit:
            break
        out.append(obj)
        last = obj["seq"]
    more = len(out) == limit
    return {"entries": out, "next_after_seq": last if more else None}


@router.get(
    "/v1/certificates",
    name="certificates",
    response_model=CertificatesResponse,
    responses=error_responses(AUTH_ERRORS),
)
def certificates(_: ApiKey = AUDITOR_KEY, svc: Service = SERVICE) -> dict[str, Any]:
    """Erasure certificates and receipts kept under ``privacy/certificates``."""
    folder = svc.paths.certificates
    items = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and CERT_NAME.fullmatch(p.name):
                items.append({"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    return {"certificates": items}


@router.get(
    "/v1/certificates/{name}",
    name="certificate",
    responses={
        200: {
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "The certificate, byte for byte as stored.",
        },
        **error_responses(AUTH_ERRORS, {404: ("not_found",)}),
    },
)
def certificate(name: str, _: ApiKey = AUDITOR_KEY, svc: Service = SERVICE) -> Response:
    """One certificate, byte for byte as stored (so its signature can be checked).

    ``name`` is the file name or the erasure request id (``<id>`` = ``<id>.json``).
    """
    if not name.endswith(".json"):
        name += ".json"
    path = svc.paths.certificates / name
    if not CERT_NAME.fullmatch(name) or not path.is_file():
        raise ApiError(404, "not_found", MSG_CERT.format(name=name[:140]))
    return Response(path.read_bytes(), media_type="application/json")
