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

:func:`verify_certificate` needs only the certificate, the public key and the checkout: it
checks the encoding, the signature, both ledger entries (hash and signature), the inclusion
proof, that the claims are the ones the ledger entry committed to, that none of the listed
content hashes exists in any file under ``data/``, ``gallery/``, ``mlruns/``,
``privacy/exports``, the DVC cache, the configured remotes and DVC's site cache (every file is
hashed; ``.dir`` manifests are also read for the listed objects and the subject's folder), and
whether the models in use were trained without the subject.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from visage_ml.config import ProjectPaths
from visage_ml.io import CHUNK, atomic_write_text, canonical_json
from visage_ml.privacy.keys import key_id, load_or_create_signing_key, load_public_key
from visage_ml.privacy.ledger import Entry, entry_hash, verify_inclusion_record

log = logging.getLogger(__name__)

CERTIFICATE_FORMAT = "visage-erasure-certificate/1"
SIGNATURE_ALG = "Ed25519"
# Folders of the checkout that may hold subject data (hashed in full by the verifier).
SCANNED_FOLDERS: tuple[str, ...] = ("data", "gallery", "mlruns", "privacy/exports")

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


def _sha256_stream(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _walk_files(root: Path) -> Iterable[Path]:
    if not root.exists():
        return
    if root.is_file():
        yield root
        return
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p


def scan_for_hashes(
    roots: Iterable[Path], sha256s: set[str], *, pid: str, md5s: set[str], report: CertificateReport
) -> None:
    """Hash every file under ``roots``; record any whose SHA-256 is listed, and any ``.dir``
    manifest that names a listed md5 or the subject's folder."""
    from visage_ml.privacy.dvc_purge import manifest_lists, read_manifest

    seen: set[Path] = set()
    for root in roots:
        for path in _walk_files(Path(root)):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                digest, n = _sha256_stream(path)
            except OSError:
                continue
            report.files_hashed += 1
            report.bytes_hashed += n
            if digest in sha256s:
                report.findings.append({"path": str(path), "sha256": digest, "why": "listed hash"})
            if path.name.endswith(".dir") and n < (64 << 20):
                with contextlib.suppress(OSError):
                    entries = read_manifest(path.read_bytes())
                    if entries is None:
                        continue
                    named = {str(e.get("md5")) for e in entries} & md5s
                    if named or manifest_lists(entries, pid):
                        report.findings.append(
                            {
                                "path": str(path),
                                "why": "a .dir manifest lists an erased object or the subject",
                                "md5s": sorted(named),
                            }
                        )


def verify_certificate(
    cert_path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    public_key: Ed25519PublicKey | Path | None = None,
    scan: bool = True,
    models: bool = True,
) -> CertificateReport:
    """Verify an erasure certificate against the public key and the checkout at ``root``.

    Parameters
    ----------
    cert_path
        The certificate file.
    root
        The checkout (default ``$VISAGE_PROJECT`` or the current folder).
    public_key
        The ledger's public key (a key, or a PEM file); ``privacy/ledger.pub`` by default.
    scan
        Hash every file of the places the subject's data could be (see the module docstring).
    models
        Say whether the models in use were trained without the subject (informative: a stale
        model does not fail verification; the certificate says models stay stale until
        retrained).

    Returns
    -------
    CertificateReport
        ``ok`` is true when every check passed.
    """
    paths = ProjectPaths.discover(root)
    report = CertificateReport(path=str(cert_path))
    try:
        raw = Path(cert_path).read_bytes()
        text = raw.decode("utf-8")
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        report.add("readable", False, f"not a readable JSON certificate ({type(exc).__name__})")
        return report
    if not isinstance(doc, dict):
        report.add("readable", False, "not a JSON object")
        return report
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
        key_path = Path(public_key) if public_key is not None else paths.ledger_public_key
        if not key_path.is_file():
            report.add("public key", False, MSG_NO_KEY)
            return report
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
    _check_against_ledger(paths, completed, head, report)
    if scan:
        _scan(paths, doc, claims, report)
    if models:
        report.models = _models_status(paths, doc, claims, pub)
    return report


def _check_against_ledger(
    paths: ProjectPaths, completed: Mapping[str, Any], head: Mapping[str, Any], report: Any
) -> None:
    """When the checkout has the ledger, its lines at those seqs must be the certificate's."""
    ledger = paths.ledger
    if not ledger.is_file():
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


def _scan(
    paths: ProjectPaths, doc: Mapping[str, Any], claims: Mapping[str, Any], report: Any
) -> None:
    from visage_ml.privacy import dvc_purge

    artefacts = claims.get("artefacts") or []
    sha256s = {a["sha256"] for a in artefacts if isinstance(a, Mapping) and a.get("sha256")}
    md5s = {a["md5"] for a in artefacts if isinstance(a, Mapping) and a.get("md5")}
    # Declared in the signed claims: identical content still referenced by current data.
    retained = [r for r in claims.get("retained_shared_content") or [] if isinstance(r, Mapping)]
    sha256s -= {r.get("sha256") for r in retained}
    md5s -= {r.get("md5") for r in retained}
    # An empty file carries no data and has one well-known hash: never a finding.
    sha256s.discard(hashlib.sha256(b"").hexdigest())
    roots = [paths.root / f for f in SCANNED_FOLDERS]
    remote_objects: list[tuple[Any, str]] = []
    if dvc_purge.is_dvc_repo(paths.root):
        try:
            setup = dvc_purge.open_setup(paths.root)
        except Exception as exc:  # DVC unreadable: the local cache folder is still scanned
            log.warning("DVC could not be opened (%s); scanning .dvc/cache only", exc)
            roots.append(paths.root / ".dvc" / "cache")
        else:
            for store in setup.stores:
                if store.local_path is not None:
                    roots.append(store.local_path)
                else:
                    remote_objects.extend((store, m) for m in md5s)
            if setup.site_cache_dir is not None:
                roots.append(setup.site_cache_dir)
    scan_for_hashes(roots, sha256s, pid=str(doc.get("pid")), md5s=md5s, report=report)
    for store, md5 in remote_objects:
        with contextlib.suppress(Exception):
            if store.exists(md5):
                report.findings.append(
                    {"path": store.oid_path(md5), "md5": md5, "why": "object still in remote"}
                )
    declared = f"; {len(retained)} declared as shared content still in use" if retained else ""
    report.add(
        "no erased content remains",
        not report.findings,
        f"{len(sha256s)} hashes looked for in {report.files_hashed} files "
        f"({report.bytes_hashed} bytes): {len(report.findings)} found{declared}",
    )


def _models_status(
    paths: ProjectPaths, doc: Mapping[str, Any], claims: Mapping[str, Any], pub: Any
) -> dict[str, Any]:
    from visage_ml.privacy import lineage

    stale = list(claims.get("models") or [])
    contained = set((claims.get("dataset") or {}).get("processed_md5s_with_subject") or [])
    contained.update(m.get("data_md5") for m in stale if m.get("data_md5"))
    check = lineage.check_retrained(paths, str(doc.get("pid")), contained)
    event = None
    if paths.ledger.is_file():
        import orjson

        with open(paths.ledger, "rb") as fh:
            for line in fh:
                if b"erasure.models_retrained" not in line:
                    continue
                obj = orjson.loads(line)
                if (
                    obj.get("type") == "erasure.models_retrained"
                    and (obj.get("payload") or {}).get("request_id") == doc.get("request_id")
                    and entry_ok(obj, pub)
                ):
                    event = {"seq": obj["seq"], "time": obj["time"]}
    if not stale:
        status = "no model was trained on data containing the subject"
    elif event is not None:
        status = f"retrained (signed erasure.models_retrained, ledger seq {event['seq']})"
    elif check.clean:
        status = "retrained, not yet recorded: run `visage privacy lineage --refresh`"
    else:
        status = "stale until retrained (`dvc repro`)"
    return {
        "status": status,
        "certified_stale": len(stale),
        "current_models_clean": check.clean,
        "retrained_event": event,
        **check.to_dict(),
    }
