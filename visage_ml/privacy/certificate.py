"""Erasure certificates: signed, self-contained proof that a subject was erased, and its check.

A certificate (``privacy/certificates/<request id>.json``) holds

- ``claims``: every artefact removed (where it was, its SHA-256 taken before deletion and, for
  DVC objects, its md5), the dataset md5 before and after, and the models trained on data that
  contained the subject with their status (``stale`` until retrained);
- ``claims_sha256``, which the signed ``erasure.completed`` ledger entry also carries;
- ``ledger``: that entry, a later ``tree_head`` entry (RFC 9162 Merkle root, signed) and the
  inclusion proof of the entry under that root;
- ``signature``: Ed25519 with the ledger key over the canonical JSON of everything else.

The file is written in one deterministic form (:func:`render`: sorted keys, two-space indent,
UTF-8, final newline) and a verifier re-renders what it parsed and compares bytes, so that
changing any byte, even whitespace, fails verification rather than going unnoticed.

:func:`verify_proof` needs only the certificate and the public key: it checks the encoding,
the signature, both ledger entries (hash and signature), the inclusion proof and that the claims
are the ones the ledger entry committed to. It needs nothing above the privacy core, so a
verifier can run without the rest of visage-ml. Whether the listed content is still in any of
the project's stores is checked above, in :mod:`visage_ml.rights.certify`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_text, canonical_json
from visage_ml.privacy.keys import key_id, load_or_create_signing_key, load_public_key
from visage_ml.privacy.ledger import Entry, entry_hash, verify_inclusion_record

log = logging.getLogger(__name__)

CERTIFICATE_FORMAT = "visage-erasure-certificate/1"
SIGNATURE_ALG = "Ed25519"

MSG_NO_KEY = (
    "no public key to verify with: pass --public-key (the controller's published ledger.pub) "
    "or run inside the checkout, which keeps it in privacy/ledger.pub"
)


# ---------------------------------------------------------------------------------------------
# Signing and the canonical file form
# ---------------------------------------------------------------------------------------------


def render(doc: Mapping[str, Any]) -> str:
    """The one text form of a signed document (certificates, receipts)."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def unsigned(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` without its ``signature`` member."""
    return {k: v for k, v in doc.items() if k != "signature"}


def sign(doc: Mapping[str, Any], paths: ProjectPaths) -> dict[str, Any]:
    """``doc`` plus an Ed25519 ``signature`` (ledger key) over its canonical JSON."""
    key = load_or_create_signing_key(paths.signing_key, paths.ledger_public_key)
    body = unsigned(doc)
    sig = key.sign(canonical_json(body))
    return {
        **body,
        "signature": {
            "alg": SIGNATURE_ALG,
            "key_id": key_id(key.public_key()),
            "value": base64.b64encode(sig).decode("ascii"),
        },
    }


def signature_ok(doc: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """Whether ``doc['signature']`` is a valid signature of the rest of ``doc``."""
    sig = doc.get("signature")
    if not isinstance(sig, Mapping) or sig.get("alg") != SIGNATURE_ALG:
        return False
    try:
        public_key.verify(
            base64.b64decode(str(sig.get("value")), validate=True), canonical_json(unsigned(doc))
        )
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def entry_ok(obj: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """A ledger entry (as a mapping) whose hash recomputes and whose signature verifies."""
    try:
        h = entry_hash(
            obj["seq"], obj["time"], obj["type"], obj["pid"], obj["payload"], obj["prev_hash"]
        )
        if h != obj["hash"]:
            return False
        public_key.verify(base64.b64decode(obj["sig"], validate=True), obj["hash"].encode())
    except (KeyError, InvalidSignature, ValueError, TypeError):
        return False
    return True


def claims_digest(claims: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a certificate's claims."""
    return hashlib.sha256(canonical_json(claims)).hexdigest()


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build_certificate(
    paths: ProjectPaths,
    *,
    request: Mapping[str, Any],
    claims: Mapping[str, Any],
    completed: Entry,
    tree_head: Entry,
    inclusion: Mapping[str, Any],
    controller: Mapping[str, str],
) -> dict[str, Any]:
    """Assemble and sign a certificate; returns the signed document (not yet written)."""
    doc = {
        "format": CERTIFICATE_FORMAT,
        "request_id": request["request_id"],
        "pid": request["pid"],
        "article": "Art. 17",
        "received_at": request["received_at"],
        "completed_at": completed.time,
        "controller": dict(controller),
        "claims": dict(claims),
        "claims_sha256": claims_digest(claims),
        "ledger": {
            "erasure_completed": completed.to_dict(),
            "tree_head": tree_head.to_dict(),
            "inclusion": dict(inclusion),
        },
        "verify": (
            "visage privacy verify-certificate <this file> [--public-key ledger.pub] "
            "in the controller's checkout"
        ),
    }
    return sign(doc, paths)


def write_certificate(paths: ProjectPaths, doc: Mapping[str, Any]) -> Path:
    """Write ``privacy/certificates/<request id>.json`` atomically; return its path."""
    path = paths.certificates / f"{doc['request_id']}.json"
    atomic_write_text(path, render(doc))
    return path


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One verification step."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class CertificateReport:
    """Outcome of :func:`verify_certificate`."""

    path: str
    request_id: str | None = None
    pid: str | None = None
    checks: list[Check] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    files_hashed: int = 0
    bytes_hashed: int = 0
    models: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "request_id": self.request_id,
            "pid": self.pid,
            "checks": [c.__dict__ for c in self.checks],
            "findings": self.findings,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "models": self.models,
        }


def verify_proof(
    cert_path: str | os.PathLike[str],
    *,
    public_key: Ed25519PublicKey | Path | None = None,
    ledger_path: Path | None = None,
    default_key_path: Path | None = None,
) -> tuple[CertificateReport, dict[str, Any] | None, Ed25519PublicKey | None]:
    """Check an erasure certificate as a proof, with nothing but the file and the public key.

    The checks: canonical encoding, the signature, both ledger entries (hash and signature), the
    inclusion proof and that the claims are the ones the ledger entry committed to; when
    ``ledger_path`` names a ledger, its lines at those seqs must be the certificate's. Whether
    the erased content is still in any store is the project's question
    (:func:`visage_ml.rights.certify.verify_certificate` asks it).

    Parameters
    ----------
    cert_path
        The certificate file.
    public_key
        The ledger's public key (a key, or a PEM file); ``default_key_path`` when None.
    ledger_path
        A ledger to compare the certificate's entries with (skipped when None or missing).
    default_key_path
        Where the checkout keeps its public key (``privacy/ledger.pub``).

    Returns
    -------
    tuple
        The report, the parsed certificate (None when unreadable) and the key used (None when
        there was none).
    """
    report = CertificateReport(path=str(cert_path))
    try:
        raw = Path(cert_path).read_bytes()
        text = raw.decode("utf-8")
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        report.add("readable", False, f"not a readable JSON certificate ({type(exc).__name__})")
        return report, None, None
    if not isinstance(doc, dict):
        report.add("readable", False, "not a JSON object")
        return report, None, None
    report.request_id = doc.get("request_id")
    report.pid = doc.get("pid")
    report.add("format", doc.get("format") == CERTIFICATE_FORMAT, str(doc.get("format")))
    report.add(
        "canonical encoding",
        render(doc) == text,
        "bytes match the canonical rendering" if render(doc) == text else "bytes were altered",
    )
    if isinstance(public_key, Ed25519PublicKey):
        pub = public_key
    else:
        key_path = Path(public_key) if public_key is not None else default_key_path
        if key_path is None or not key_path.is_file():
            report.add("public key", False, MSG_NO_KEY)
            return report, doc, None
        pub = load_public_key(key_path)
    sig = doc.get("signature") or {}
    report.add(
        "signature",
        signature_ok(doc, pub) and sig.get("key_id") == key_id(pub),
        f"Ed25519, key {key_id(pub)}",
    )
    ledger = doc.get("ledger") or {}
    completed = ledger.get("erasure_completed") or {}
    head = ledger.get("tree_head") or {}
    inclusion = ledger.get("inclusion") or {}
    claims = doc.get("claims") or {}
    report.add(
        "erasure.completed entry",
        entry_ok(completed, pub)
        and completed.get("type") == "erasure.completed"
        and completed.get("pid") == doc.get("pid")
        and (completed.get("payload") or {}).get("request_id") == doc.get("request_id"),
        f"seq {completed.get('seq')}",
    )
    digest = claims_digest(claims)
    report.add(
        "claims committed in the ledger",
        digest == doc.get("claims_sha256") == (completed.get("payload") or {}).get("claims_sha256"),
        digest,
    )
    head_payload = head.get("payload") or {}
    report.add(
        "tree head",
        entry_ok(head, pub)
        and head.get("type") == "tree_head"
        and head_payload.get("root") == inclusion.get("root")
        and head_payload.get("size") == inclusion.get("tree_size"),
        f"size {head_payload.get('size')} root {head_payload.get('root')}",
    )
    try:
        line = Entry(**completed).line()
        included = verify_inclusion_record(inclusion, line) and inclusion.get(
            "leaf_index"
        ) == completed.get("seq")
    except (TypeError, KeyError, ValueError):
        included = False
    report.add("inclusion proof", included, f"leaf {inclusion.get('leaf_index')}")
    _check_against_ledger(ledger_path, completed, head, report)
    return report, doc, pub


def _check_against_ledger(
    ledger: Path | None, completed: Mapping[str, Any], head: Mapping[str, Any], report: Any
) -> None:
    """When the checkout has the ledger, its lines at those seqs must be the certificate's."""
    if ledger is None or not ledger.is_file():
        report.add("ledger in checkout", True, "no ledger in this checkout; proof checked alone")
        return
    wanted = {int(completed.get("seq", -1)): completed, int(head.get("seq", -1)): head}
    found: dict[int, bytes] = {}
    with open(ledger, "rb") as fh:
        for i, line in enumerate(fh):
            if i in wanted:
                found[i] = line.rstrip(b"\n")
            if len(found) == len(wanted):
                break
    same = all(found.get(seq) == canonical_json(obj) for seq, obj in wanted.items() if seq >= 0)
    report.add(
        "ledger in checkout",
        same,
        "the checkout's ledger holds both entries" if same else "the ledger disagrees",
    )
