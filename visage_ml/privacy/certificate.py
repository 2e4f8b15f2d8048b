"""Erasure certificates: signed, self-contained proof that a subject was erased, and its check.

A certificate (``privacy/certificates/<request id>.json``) holds

- ``claims``: every artefact removed (where it was, its SHA-256 taken before deletion and, for
  DVC objects, its md5), the dataset md5 before and after, and the models trained on data that
  contained the subject with their status (``stale`` until retrained);
- ``claims_sha256``, which the signed ``erasure.completed`` ledger entry also carries;
- ``ledger``: that entry, a later ``tree_head`` entry (RFC 9162 Merkle root, signed) and the
  inclusion proof of the entry under that root;
- ``proof``: the offline proof bundle in the spirit of c2sp.org/tlog-proof: a
  ``c2sp.org/tlog-proof@v1`` text whose ``extra`` is the exact ledger line of
  ``erasure.completed``, its inclusion proof and the checkpoint (C2SP signed note) signed by the
  ledger key and cosigned by the witnesses; the log's key (vkey, fingerprint, key history) and
  the witnesses' keys;
- ``signature``: Ed25519 with the ledger key over the canonical JSON of everything else.

The file is written in one deterministic form (:func:`render`: sorted keys, two-space indent,
UTF-8, final newline) and a verifier re-renders what it parsed and compares bytes, so that
changing any byte, even whitespace, fails verification rather than going unnoticed.

:func:`verify_proof` needs only the certificate and the public key: it checks the encoding,
the signature, both ledger entries (hash and signature), the inclusion proof and that the claims
are the ones the ledger entry committed to. :func:`verify_offline` adds the witnessed
checkpoint: the tlog-proof's inclusion of the completion entry under the checkpoint's root, the
log's signature on the checkpoint and the witnesses' cosignatures, against keys the verifier
pins (``docs/verify.md`` holds the same checks in ~260 lines that need only
``cryptography``). Both need nothing above the privacy core, so a verifier can run without the
rest of visage-ml. Whether the listed content is still in any of
the project's stores is checked above, in :mod:`visage_ml.rights.certify`. A readable page of a
certificate, for the DPO's file and the data subject, is :mod:`visage_ml.privacy.certificate_page`
(the JSON stays the proof).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_text, canonical_json
from visage_ml.privacy import merkle
from visage_ml.privacy.checkpoint import (
    ED25519,
    NoteError,
    TlogProof,
    Verifier,
    cosignature_timestamp,
    cosigner,
    parse_checkpoint,
    parse_note,
    parse_tlog_proof,
    parse_vkey,
    verified_cosigners,
    verify_note,
)
from visage_ml.privacy.keys import (
    key_id,
    load_or_create_signing_key,
    load_public_keys,
)
from visage_ml.privacy.ledger import (
    KEYS_FILE,
    Entry,
    Ledger,
    LedgerError,
    entry_hash_of,
    verify_inclusion_record,
)
from visage_ml.privacy.witness import LOCAL_WITNESS_PREFIX
from visage_ml.privacy.witnessed import make_client, witness_params, witness_set_lines

log = logging.getLogger(__name__)

CERTIFICATE_FORMAT = "visage-erasure-certificate/1"
SIGNATURE_ALG = "Ed25519"
PROOF_FORMAT = "c2sp.org/tlog-proof@v1"
_RETRAINED_MARK = b'"erasure.models_retrained"'

# The verdicts of both verifiers (this module's and docs/verify.md's) and their exit codes:
# every check passed with a ledger key, witness keys and log name the verifier pinned (0); a
# check failed (1); every check passed but something came from the certificate itself, which
# shows the certificate is consistent, not who made it (3; 2 is a usage error); every check
# passed with what was pinned but the completion date's: the certificate is the controller's
# and proves the erasure done, by the witnesses' time rather than the date it states (4; its
# witnesses could not be reached when it completed, or the ledger's clock was set back: the
# file cannot tell which, and it need not, as the witnesses' time is what is proven).
VALID = "VALID"
INVALID = "INVALID"
CONSISTENT_ONLY = "CONSISTENT ONLY, NOT AUTHENTICATED"
EXIT_CONSISTENT_ONLY = 3
DATE_NOT_WITNESSED = "COMPLETION DATE NOT WITNESSED"
EXIT_DATE_NOT_WITNESSED = 4
DATE_CHECK = "completion date witnessed"
MSG_VERDICT_DATE = (
    "(every other check passed: the erasure is proven done by {first} at the latest, when the "
    "witnesses cosigned; the completion date it states, {entry}, is the controller's clock)"
)
MSG_UNPINNED_DATE = "and its completion date is not witnessed: see that check"

MSG_KEYS_FROM_CERT = (
    "{what} taken from the certificate itself: this shows the certificate is consistent, not "
    "who made it; pin {option} with the key the controller (or witness) published"
)

MSG_RECEIVED_UNCOMMITTED = (
    "received_at ({received}) is not in the ledger entry (a certificate of an older version): "
    "the date the request arrived rests on the certificate's signature alone"
)
MSG_DATE_NOT_WITNESSED = (
    "the entry's time is {entry}, but the witness {name} cosigned at {at}, {gap} {side}: no "
    "witness dates the completion, which rests on the controller's clock alone (its witnesses "
    "could not be reached when it completed, or the ledger's clock was set back). What is "
    "proven: the erasure was done by {first} at the latest (the earliest cosignature)"
)
MSG_DATE_WITNESSED = (
    "{names} cosigned at {at}, within {within} of the entry's time {entry}: the erasure was "
    "done by then"
)
MSG_DATE_CONTROLLERS = (
    "the completion date is the controller's statement ({entry}, the ledger's clock): no pinned "
    "witness run by someone else dates it; pin one with --witness-key"
)
MSG_RECEIVED_CONTROLLERS = "the controller's statement: no witness dates the request's arrival"
# A request received before its subject was added to the registry (a letter answered after the
# import of their data): the certificate and its entry carry both, as the request does.
BEFORE_REGISTRATION = ("received_before_registration", "subject_added_at")
# An erasure.completed entry is witnessed at once (a narrowing event: the append returns only once
# the witnesses cosigned), and the certificate carries that checkpoint (kept in
# privacy/checkpoints/kept, even when the certificate is made later by a resume), so an honest
# certificate's cosignatures follow its entry within seconds, whatever the checkpoint cadence of
# other events (privacy.witness.every_seconds). The window allows two hosts' clocks to differ by
# CLOCK_SKEW_S (as the retention clock does) and the cosignature to come up to WITNESS_DELAY_S
# later: witnesses answering at their timeout (up to 600 s each) and a large ledger hashed before
# its checkpoint is signed. Past it the date is not the witness's: an hour hides nothing against
# the month of Art. 12(3); a day let a set-back clock hide a day.
CLOCK_SKEW_S = 300
WITNESS_DELAY_S = 3600
MSG_OTHER_KEY = (
    "the certificate names key {signer}: a key from before a rotation? give the controller's "
    "privacy/ledger-keys.pem (every key the ledger has had) as the public key"
)
MSG_LOCAL_WITNESS = (
    "{name} is a directory witness of this project (kind directory in privacy.witness or its "
    "ledger's witness.set record: a folder "
    "the controller keeps, whatever its name): it proves nothing against the controller, who "
    "can restore or copy it with the ledger, and its clock is the controller's; rely on a "
    "witness run by someone else (docs/verify.md)"
)
MSG_WITNESS_NAME = (
    "{name}: a witness's name is chosen by whoever creates it and proves nothing of who runs "
    "it; check that the witness whose key you pinned is run by someone other than the "
    "controller (its own folder, whatever its name, proves nothing against it: docs/verify.md)"
)
MSG_DEFAULT_NAME = (
    "; this one bears the name visage-ml gives a witness made without --name, as the "
    "controller's own directory witness is"
)
MSG_NO_OWN_WITNESS = (
    "none of the witnesses this checkout is configured with or its ledger has recorded "
    "(witness.set) cosigned the certificate's checkpoint: they are the certificate's word alone"
)
MSG_LISTED_UNCOSIGNED = (
    "listed but not cosigned: {names}: the certificate names them as witnesses, but no "
    "cosignature of theirs is on its checkpoint; rely only on the witnesses that cosigned"
)
MSG_ORIGIN_FROM_CERT = (
    "log origin taken from the certificate itself: a second log kept under the same key would "
    "verify too; pin --origin with the log name the controller published"
)

MSG_MODELS_OFFLINE = (
    "stale, as the certificate says; whether they were retrained since is in the controller's "
    "ledger (`visage privacy verify-certificate` in its checkout)"
)
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
    key = load_or_create_signing_key(
        paths.signing_key, paths.ledger_public_key, ledger_path=paths.ledger
    )
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
    """Whether ``doc['signature']`` is a valid signature of the rest of ``doc``.

    The signature member is the one part of the file the signature cannot cover, so it must be
    exactly what :func:`sign` writes: no other member, and the value in canonical base64 (its
    spare bits could otherwise change a byte of a certificate that still verifies).
    """
    sig = doc.get("signature")
    if (
        not isinstance(sig, Mapping)
        or set(sig) != {"alg", "key_id", "value"}
        or sig["alg"] != SIGNATURE_ALG
        or not isinstance(sig["value"], str)
    ):
        return False
    try:
        raw = base64.b64decode(sig["value"], validate=True)
        public_key.verify(raw, canonical_json(unsigned(doc)))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return base64.b64encode(raw).decode("ascii") == sig["value"]


def entry_ok(obj: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """A ledger entry (as a mapping) whose hash recomputes and whose signature verifies."""
    try:
        h = entry_hash_of(obj)
        if h != obj["hash"]:
            return False
        public_key.verify(base64.b64decode(obj["sig"], validate=True), obj["hash"].encode())
    except (KeyError, InvalidSignature, ValueError, TypeError):
        return False
    return True


def _object(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one: a member of the wrong type in a
    hostile file then fails its check instead of stopping the verifier."""
    return value if isinstance(value, Mapping) else {}


def conceded(claims: Any) -> list[str]:
    """What a certificate's ``claims`` themselves concede, one line each, as both verifiers say
    it beside the verdict: models trained on the subject (stale when it was made), data versions
    whose models could not be judged, what a store could not guarantee, the subject's photographs
    kept in clear, files other current subjects hold identical to erased content, and content
    kept because other current data refers to it. Members of the wrong type in a hostile file
    say nothing (its other checks fail)."""
    claims = _object(claims)

    def many(name: str) -> list[Any]:
        value = claims.get(name)
        return value if isinstance(value, list) else []

    out = []
    if models := many("models"):
        out.append(
            f"{len(models)} model(s) trained on data that held the subject, stale when the "
            "certificate was made (until retrained without them; retraining does not delete "
            "them: DVC and MLflow may still hold them)"
        )
    if notes := many("lineage_notes"):
        out.append(
            f"{len(notes)} data version(s) could not be read or are recorded by no dvc.lock, so "
            "other models may have seen the subject (claims.lineage_notes)"
        )
    out.extend(f"a store could not guarantee: {n}" for n in many("store_notes") if n)
    kept = _object(claims.get("dvc")).get("kept_plaintext")
    if isinstance(kept, int) and not isinstance(kept, bool) and kept > 0:
        out.append(
            f"{kept} DVC object(s) holding the subject's photographs in clear kept, unencrypted, "
            "because other current data holds the same photograph"
        )
    if in_use := many("copies_in_use"):
        out.append(
            f"{len(in_use)} file(s) of other current subjects' data identical to erased content "
            "kept as theirs (a photograph they share)"
        )
    if retained := many("retained_shared_content"):
        out.append(
            f"{len(retained)} file(s) byte-identical to erased content kept because other "
            "current data still refers to them"
        )
    return out


def registration_note(request: Any) -> dict[str, Any]:
    """``received_before_registration`` and ``subject_added_at`` of a request (a
    :class:`~visage_ml.privacy.requests.RequestState`) received before its subject was added to
    the registry, for its certificate and completion entry; empty otherwise (as a certificate of
    a version that did not say so)."""
    if not request.received_before_registration:
        return {}
    return {"received_before_registration": True, "subject_added_at": request.subject_added_at}


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
    proof: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble and sign a certificate; returns the signed document (not yet written).

    ``proof`` is the offline proof bundle of :func:`offline_proof` (left out when None).
    """
    doc = {
        "format": CERTIFICATE_FORMAT,
        "request_id": request["request_id"],
        "pid": request["pid"],
        "article": "Art. 17",
        "received_at": request["received_at"],
        **{k: request[k] for k in BEFORE_REGISTRATION if k in request},
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
    if proof is not None:
        doc["proof"] = dict(proof)
        doc["verify"] = (
            "visage privacy verify-certificate --offline <this file> --public-key ledger.pub "
            "--witness-key <witness vkey>; or the stand-alone verifier of docs/verify.md"
        )
    return sign(doc, paths)


def offline_proof(
    completed: Entry,
    *,
    note: bytes,
    path: Sequence[bytes],
    log_key: Ed25519PublicKey,
    key_history: Sequence[str],
    witnesses: Sequence[Verifier],
) -> dict[str, Any]:
    """The certificate's offline proof bundle (see the module docstring).

    Parameters
    ----------
    completed
        The ``erasure.completed`` entry.
    note
        The cosigned checkpoint (signed note) whose tree contains the entry.
    path
        The entry's RFC 9162 inclusion proof in that tree.
    log_key
        The ledger key that signed the checkpoint and the entry.
    key_history
        Fingerprints of the ledger's keys so far, oldest first.
    witnesses
        The witnesses whose cosignatures the note carries (cosignature/v1 verifiers).
    """
    cp = parse_checkpoint(parse_note(note).text)
    log_v = Verifier(cp.origin, ED25519, log_key)
    text = TlogProof(completed.seq, tuple(path), note, extra=completed.line()).to_text()
    return {
        "format": PROOF_FORMAT,
        "tlog_proof": text,
        "log": {"origin": cp.origin, "vkey": log_v.vkey, "fingerprint": log_v.fingerprint},
        "key_history": list(key_history),
        "witnesses": [
            {"name": w.name, "vkey": w.vkey, "fingerprint": w.fingerprint} for w in witnesses
        ],
    }


def write_certificate(paths: ProjectPaths, doc: Mapping[str, Any]) -> Path:
    """Write ``privacy/certificates/<request id>.json`` atomically; return its path."""
    path = paths.certificates / f"{doc['request_id']}.json"
    atomic_write_text(path, render(doc))
    return path


def published_keys(paths: ProjectPaths) -> Path:
    """The controller's published ledger key file: ``privacy/ledger-keys.pem`` (every key the
    ledger has had) once a rotation wrote it, else ``privacy/ledger.pub``."""
    every = paths.ledger_public_key.with_name(KEYS_FILE)
    return every if every.is_file() else paths.ledger_public_key


def checkout_ledger(paths: ProjectPaths) -> Ledger:
    """The checkout's ledger, to read (nothing is signed with it here)."""
    return Ledger(paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key)


def signer_in_history(
    paths: ProjectPaths, cert_path: str | os.PathLike[str]
) -> Ed25519PublicKey | None:
    """The key of the checkout's ledger history that signed the certificate (a certificate
    made before a key rotation is signed by an earlier key than ``privacy/ledger.pub``); None
    when the certificate names no key of the ledger's key chain."""
    if not paths.ledger.is_file() or not paths.ledger_public_key.is_file():
        return None
    try:
        wanted = json.loads(Path(cert_path).read_text(encoding="utf-8")).get("signature") or {}
        chain = checkout_ledger(paths).key_chain()
    except (OSError, ValueError, AttributeError, LedgerError):
        return None
    for key in chain.public_keys():
        if key_id(key) == wanted.get("key_id"):
            return key
    return None


@dataclass(frozen=True)
class OwnWitnesses:
    """The witnesses a checkout knows as its own (:func:`checkout_witnesses`), by key."""

    vkeys: tuple[str, ...] = ()
    directory: tuple[str, ...] = ()  # configured or recorded as directory witnesses


def checkout_witnesses(paths: ProjectPaths) -> OwnWitnesses:
    """The witnesses of the checkout: those its params.yaml configures (their keys as their
    folders or configuration publish them) and every one a ``witness.set`` entry of its
    ledger records, the entry signed by the ledger key of its time. A witness replaced since
    cosigned the certificates of its time: they are still the checkout's own. A witness
    configured or recorded as a directory witness is in ``directory`` (the controller's own,
    by its kind, never by its name). Nothing is created or asked over the network."""
    found: list[tuple[str, str]] = []  # (kind, vkey), configured first
    try:
        params = witness_params(paths)
        for spec in params.witnesses:
            v = make_client(spec, timeout=params.timeout_seconds).cosigner()
            if v is not None:
                found.append((spec.kind, v.vkey))
    except (OSError, ValueError, TypeError) as exc:  # unreadable params: none configured
        log.warning("the configured witnesses could not be read (%s)", type(exc).__name__)
    try:
        chain = checkout_ledger(paths).key_chain() if paths.ledger.is_file() else None
        for line, recorded in witness_set_lines(paths.ledger) if chain else ():
            # Only the ledger's own word: a line written in without its key names nobody.
            key = Ed25519PublicKey.from_public_bytes(chain.key_at(recorded.seq))
            if entry_ok(json.loads(line), key):
                found.extend((w.kind, w.vkey) for w in recorded.witnesses if w.vkey)
    except (OSError, ValueError, LedgerError) as exc:
        log.warning("the ledger's witness record could not be read (%s)", type(exc).__name__)
    return OwnWitnesses(
        vkeys=tuple(dict.fromkeys(vkey for _, vkey in found)),
        directory=tuple(dict.fromkeys(vkey for kind, vkey in found if kind == "directory")),
    )


def models_retrained_event(
    ledger: Ledger, request_id: Any, keys: Sequence[Ed25519PublicKey]
) -> dict[str, Any] | None:
    """``{"seq", "time"}`` of the last ``erasure.models_retrained`` entry of ``request_id`` in
    ``ledger`` whose signature one of ``keys`` verifies (None when there is none).

    The certificate says ``stale``; this event, appended by ``visage privacy lineage
    --refresh`` once the models in use were retrained without the subject, upgrades it. Only
    the lines naming the type are parsed (:meth:`Ledger.lines_containing`).
    """
    event = None
    for line in ledger.lines_containing((_RETRAINED_MARK,)):
        obj = json.loads(line)
        if (
            obj.get("type") == "erasure.models_retrained"
            and _object(obj.get("payload")).get("request_id") == request_id
            and any(entry_ok(obj, k) for k in keys)
        ):
            event = {"seq": obj["seq"], "time": obj["time"]}
    return event


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
    # Files the scan looked at (each file's size, at least), and of those the files it read
    # and hashed (a file of a size nothing erased has cannot be a copy: it is not read).
    files_looked_at: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    models: dict[str, Any] = field(default_factory=dict)
    # What a VALID does not show (keys taken from the certificate itself): said beside it.
    notes: list[str] = field(default_factory=list)
    # A key, witness or origin was taken from the certificate itself (see the notes).
    unpinned: bool = False
    # The witnessed checkpoint as verified (origin, size, ledger key fingerprint) and each
    # cosignature that verified (witness name, key fingerprint, the witness's time, whether the
    # key was pinned): what a reader or a rendered page names, never taken unchecked.
    checkpoint: dict[str, Any] = field(default_factory=dict)
    cosignatures: list[dict[str, Any]] = field(default_factory=list)
    # What the verified claims themselves concede (:func:`conceded`): said beside the verdict.
    conceded: list[str] = field(default_factory=list)
    # The completion date not witnessed (the :data:`DATE_CHECK` failed): the time stated and
    # the earliest cosignature's, by which the erasure is proven done. Empty otherwise.
    completion: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def date_only(self) -> bool:
        """Every check passed but :data:`DATE_CHECK`: what the certificate states holds, but no
        witness dates its completion (the erasure is proven done by the witnesses' time)."""
        failed = [c.name for c in self.checks if not c.ok]
        return bool(failed) and set(failed) == {DATE_CHECK}

    @property
    def verdict(self) -> str:
        """:data:`VALID`, :data:`INVALID`, :data:`CONSISTENT_ONLY` when every check passed
        but a key, witness or log name was taken from the certificate itself, or
        :data:`DATE_NOT_WITNESSED` when, with everything pinned, only the completion date's
        check failed."""
        if not self.ok and not self.date_only:
            return INVALID
        if self.unpinned:
            return CONSISTENT_ONLY
        return VALID if self.ok else DATE_NOT_WITNESSED

    @property
    def exit_code(self) -> int:
        return {VALID: 0, INVALID: 1, DATE_NOT_WITNESSED: EXIT_DATE_NOT_WITNESSED}.get(
            self.verdict, EXIT_CONSISTENT_ONLY
        )

    def verdict_line(self) -> str:
        """The verdict as both verifiers print it, with what a date not witnessed proves."""
        line = f"certificate {self.verdict}"
        if self.verdict == DATE_NOT_WITNESSED:
            line += " " + MSG_VERDICT_DATE.format(**self.completion)
        return line

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def expect(self, *, request_id: str | None = None, pid: str | None = None) -> None:
        """Add a check that the certificate is for the erasure asked about.

        A valid certificate of another request proves nothing about this one, and the signed
        values are only printed otherwise: a script that reads the exit code alone would take
        any valid certificate the controller hands over.
        """
        for what, asked, found in (
            ("request", request_id, self.request_id),
            ("subject", pid, self.pid),
        ):
            if asked is not None:
                self.add(f"the {what} asked about", asked == found, f"asked {asked}, found {found}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "verdict": self.verdict,
            "request_id": self.request_id,
            "pid": self.pid,
            "checks": [c.__dict__ for c in self.checks],
            "findings": self.findings,
            "files_looked_at": self.files_looked_at,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "models": self.models,
            "notes": self.notes,
            "unpinned": self.unpinned,
            "checkpoint": self.checkpoint,
            "cosignatures": self.cosignatures,
            "conceded": self.conceded,
            "completion": self.completion,
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
        keys = load_public_keys(key_path)  # ledger-keys.pem: the key of the certificate's time
        wanted = _object(doc.get("signature")).get("key_id")
        pub = next((k for k in keys if key_id(k) == wanted), keys[0])
    signer = _object(doc.get("signature")).get("key_id")
    report.add(
        "signature",
        signature_ok(doc, pub) and signer == key_id(pub),
        f"Ed25519, key {key_id(pub)}"
        + ("" if signer == key_id(pub) else f"; {MSG_OTHER_KEY.format(signer=signer)}"),
    )
    ledger = _object(doc.get("ledger"))
    completed = _object(ledger.get("erasure_completed"))
    head = _object(ledger.get("tree_head"))
    inclusion = _object(ledger.get("inclusion"))
    claims = doc.get("claims") or {}
    committed = _object(completed.get("payload"))
    report.add(
        "erasure.completed entry",
        entry_ok(completed, pub)
        and completed.get("type") == "erasure.completed"
        and completed.get("pid") == doc.get("pid")
        and committed.get("request_id") == doc.get("request_id"),
        # What the certificate is for: a valid one of another request must not pass unseen.
        f"seq {completed.get('seq')}: request {doc.get('request_id')}, subject {doc.get('pid')}",
    )
    # The dates: completed_at is the entry's own time; received_at is in its payload (entries
    # written before this check carry none, and the report says the date rests on the signature).
    report.add(
        "completion date",
        doc.get("completed_at") == completed.get("time"),
        f"completed_at {doc.get('completed_at')}, the entry's time {completed.get('time')}",
    )
    if "received_at" in committed:
        # A receipt before the subject's registration, committed too (an entry of an older
        # version says nothing of it: the certificate may then say it alone).
        keys = ("received_at", *(k for k in BEFORE_REGISTRATION if k in committed))
        before = (
            f", before the subject was added to the registry at {committed['subject_added_at']}"
            if committed.get("received_before_registration")
            else ""
        )
        report.add(
            "reception date",
            all(doc.get(k) == committed.get(k) for k in keys),
            f"received_at {doc.get('received_at')}, in the entry {committed.get('received_at')}"
            f"{before} ({MSG_RECEIVED_CONTROLLERS})",
        )
    else:
        report.notes.append(MSG_RECEIVED_UNCOMMITTED.format(received=doc.get("received_at")))
    digest = claims_digest(claims)
    report.add(
        "claims committed in the ledger",
        digest == doc.get("claims_sha256") == committed.get("claims_sha256"),
        digest,
    )
    head_payload = _object(head.get("payload"))
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
    report.conceded = conceded(claims)
    return report, doc, pub


def _check_against_ledger(
    ledger: Path | None, completed: Mapping[str, Any], head: Mapping[str, Any], report: Any
) -> None:
    """When the checkout has the ledger, its lines at those seqs must be the certificate's."""
    if ledger is None:
        return  # offline: the proof stands alone (no check is reported as made)
    if not ledger.is_file():
        report.notes.append("no ledger in this checkout: the proof was checked alone")
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


# ---------------------------------------------------------------------------------------------
# Offline verification (the proof bundle, with pinned keys only)
# ---------------------------------------------------------------------------------------------


def verify_offline(
    cert_path: str | os.PathLike[str],
    *,
    public_key: Ed25519PublicKey | Path | None = None,
    witness_keys: Sequence[str] = (),
    origin: str | None = None,
    directory_witnesses: Collection[str] | None = None,
) -> CertificateReport:
    """Check a certificate with nothing but the file and the keys the verifier pins.

    Besides :func:`verify_proof` (encoding, signature, entries, claims, tree head): the
    tlog-proof carries exactly the ``erasure.completed`` line, that line is included in the
    checkpoint's tree, the checkpoint is signed by the ledger key and cosigned by the witnesses.

    Parameters
    ----------
    cert_path
        The certificate.
    public_key
        The controller's published ledger key (a key or a PEM file). Without it the key in the
        certificate is used, and the report says so: that proves consistency, not origin.
    witness_keys
        Witness verifier keys (vkeys) to require: each must have cosigned. Without them the
        certificate's own list is used (at least one must verify), and the report says so.
    origin
        The controller's log name as published with its key: the checkpoint must be of that
        log, not of a second log kept under the same key. Without it the report says so.
    directory_witnesses
        The vkeys of the witnesses the caller knows to be directory witnesses (the controller's
        own configuration: a folder on its disk, stamped by its clock): marked ``local``, and
        their time dates nothing. None: not known; a witness's name proves nothing either way
        (its creator chose it), and the report says so of each pinned witness.
    """
    pub: Ed25519PublicKey | Path | None = public_key
    from_cert: list[str] = []
    if pub is None:
        try:
            doc = json.loads(Path(cert_path).read_text(encoding="utf-8"))
            pub = parse_vkey(doc["proof"]["log"]["vkey"]).public_key
            from_cert.append(MSG_KEYS_FROM_CERT.format(what="ledger key", option="--public-key"))
        except (OSError, ValueError, KeyError, TypeError, NoteError):
            pub = None
    if pub is None:
        report = CertificateReport(path=str(cert_path))
        report.add("public key", False, MSG_NO_KEY)
        return report
    report, doc, key = verify_proof(cert_path, public_key=pub)
    if doc is None or key is None:
        return report
    if origin is None:
        from_cert.append(MSG_ORIGIN_FROM_CERT)
    stale = _object(doc.get("claims")).get("models")
    if isinstance(stale, list) and stale:  # the certificate's status: no ledger to say more
        report.models = {"status": MSG_MODELS_OFFLINE, "certified_stale": len(stale)}
    check_witnessed(
        doc,
        key,
        report,
        witness_keys=witness_keys,
        origin=origin,
        notes=from_cert,
        directory_witnesses=directory_witnesses,
    )
    return report


def check_witnessed(
    doc: Mapping[str, Any],
    pub: Ed25519PublicKey,
    report: CertificateReport,
    *,
    witness_keys: Sequence[str] = (),
    origin: str | None = None,
    own_witnesses: Sequence[str] = (),
    notes: list[str] | None = None,
    directory_witnesses: Collection[str] | None = None,
) -> None:
    """Check the certificate's witnessed checkpoint (its ``proof`` bundle) with the ledger key
    ``pub``: the tlog-proof carries the ``erasure.completed`` line, included under the
    checkpoint, which the ledger key signed and the witnesses cosigned.

    Parameters
    ----------
    witness_keys
        Witness keys the verifier pins: each must have cosigned.
    origin
        The log name the verifier pins (else not checked).
    own_witnesses
        Without pinned keys: the witnesses of the controller's checkout (configured, or
        recorded by its ledger: :func:`checkout_witnesses`), one of which must have cosigned
        (the checkout's word, as its ledger key is). Without either, the certificate's own
        list, and a note says so.
    notes
        Notes on what was not pinned, said beside the verdict (and making it unpinned).
    directory_witnesses
        The vkeys the caller knows to be directory witnesses (see :func:`verify_offline`).
    """
    notes = [] if notes is None else notes
    proof = doc.get("proof")
    if not isinstance(proof, Mapping) or proof.get("format") != PROOF_FORMAT:
        report.add("witnessed checkpoint", False, "the certificate carries no tlog-proof")
        return
    completed = _object(_object(doc.get("ledger")).get("erasure_completed"))
    try:
        tp = parse_tlog_proof(str(proof.get("tlog_proof")))
        note = parse_note(tp.checkpoint)
        cp = parse_checkpoint(note.text)
        line = Entry(**completed).line()
    except (NoteError, TypeError, ValueError) as exc:
        report.add("witnessed checkpoint", False, f"unreadable tlog-proof ({exc})")
        return
    report.add(
        "tlog-proof entry",
        tp.extra == line and tp.index == completed.get("seq"),
        f"index {tp.index}: the exact erasure.completed ledger line",
    )
    try:
        verify_note(note, [Verifier(cp.origin, ED25519, pub)])
        log_ok = True
    except NoteError:
        log_ok = False
    log_v = Verifier(cp.origin, ED25519, pub)
    report.add(
        "checkpoint signature",
        log_ok,
        f"{cp.origin} size {cp.size}, signed by the ledger key (fingerprint {log_v.fingerprint})",
    )
    # What the certificate says of its keys must be the keys' own: a reader compares these
    # fingerprints with the ones the controller published (and a listed witness that did not
    # cosign is named in a note, below).
    log_doc = _object(proof.get("log"))
    history = proof.get("key_history") or []
    report.add(
        "key fingerprints",
        log_doc.get("fingerprint") == log_v.fingerprint
        and log_doc.get("vkey") == log_v.vkey
        and log_doc.get("origin") == cp.origin
        and isinstance(history, list)
        and bool(history)
        and history[-1] == log_v.fingerprint
        and _witness_fields_ok(proof.get("witnesses")),
        "the certificate's ledger key, key history and witness fingerprints are the keys' own",
    )
    if origin is not None:
        report.add("log origin", cp.origin == origin, f"asked {origin}, found {cp.origin}")
    included = tp.extra is not None and merkle.verify_inclusion(
        merkle.leaf_hash(tp.extra), tp.index, cp.size, list(tp.hashes), cp.root
    )
    report.add("checkpoint inclusion", included, f"leaf {tp.index} of {cp.size}")
    if log_ok:
        report.checkpoint = {
            "origin": cp.origin,
            "size": cp.size,
            "fingerprint": log_v.fingerprint,
        }
    try:
        own = [cosigner(k) for k in own_witnesses]
        if witness_keys:
            keys = [cosigner(k) for k in witness_keys]
        elif own and verified_cosigners(note, own):
            keys = own
        else:
            # A witness the checkout never knew leaves the certificate's own list, said so.
            if own:
                notes.append(MSG_NO_OWN_WITNESS)
            keys = [cosigner(str(w["vkey"])) for w in proof.get("witnesses") or []]
            notes.append(MSG_KEYS_FROM_CERT.format(what="witness keys", option="--witness-key"))
        cosigned = verified_cosigners(note, keys)
    except (NoteError, KeyError, TypeError) as exc:
        report.add("witness cosignatures", False, f"a cosignature does not verify ({exc})")
        return
    _note_uncosigned(note, proof.get("witnesses"), report)
    enough = bool(cosigned) and (not witness_keys or len(cosigned) == len(keys))
    times = _cosigned_times(note, cosigned)
    detail = f"{len(cosigned)} of {len(keys)} witnesses cosigned: " + (
        ", ".join(f"{v.name} at {_utc(times[v.name])}" for v in cosigned) or "none"
    )
    report.add("witness cosignatures", enough, detail)
    # Kept by the controller: as its configuration says, when the caller knows it. A name is
    # whatever its creator typed, so it marks nothing (the notes say so of each pinned one).
    local = {v.name for v in cosigned if v.vkey in (directory_witnesses or ())}
    report.cosignatures = [
        {
            "name": v.name,
            "fingerprint": v.fingerprint,
            "time": _utc(times[v.name]),
            "pinned": bool(witness_keys),
            "local": v.name in local,
        }
        for v in cosigned
    ]
    dating = [v.name for v in cosigned if witness_keys and v.name not in local]
    _check_completion_date(completed.get("time"), times, report, dating=dating)
    for v in cosigned:
        if v.name in local:
            report.notes.append(MSG_LOCAL_WITNESS.format(name=v.name))
        elif witness_keys:
            default = v.name.startswith(LOCAL_WITNESS_PREFIX)
            report.notes.append(
                MSG_WITNESS_NAME.format(name=v.name) + (MSG_DEFAULT_NAME if default else "")
            )
    report.unpinned = report.unpinned or bool(notes)
    report.notes.extend(notes)


def _note_uncosigned(note: Any, witnesses: Any, report: CertificateReport) -> None:
    """Name each witness the certificate lists whose cosignature is not on its checkpoint (an
    erasure lists only those that cosigned: another is a name the file claims, nothing more)."""
    try:
        listed = [cosigner(str(w["vkey"])) for w in witnesses or []]
        named = {v.name for v in verified_cosigners(note, listed)}
    except (NoteError, KeyError, TypeError):
        return  # the key fingerprints check fails on such a list already
    missing = [v.name for v in listed if v.name not in named]
    if missing:
        report.notes.append(MSG_LISTED_UNCOSIGNED.format(names=", ".join(missing)))


def _witness_fields_ok(witnesses: Any) -> bool:
    """Each listed witness's name and fingerprint are those of its vkey."""
    if not isinstance(witnesses, list):
        return False
    try:
        for w in witnesses:
            v = cosigner(str(w["vkey"]))
            if w.get("fingerprint") != v.fingerprint or w.get("name") != v.name:
                return False
    except (NoteError, KeyError, TypeError, AttributeError):
        return False
    return True


def _cosigned_times(note: Any, cosigned: Sequence[Verifier]) -> dict[str, int]:
    """When each verified witness cosigned (cosignature/v1 carries the witness's clock)."""
    out: dict[str, int] = {}
    for v in cosigned:
        for sig in note.signatures:
            if sig.name == v.name and sig.key_id == v.key_id:
                out[v.name] = cosignature_timestamp(sig)
    return out


def _utc(stamp: int) -> str:
    try:
        return datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # only a forged cosignature gets here
        return f"POSIX time {stamp} (out of range)"


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 3600:
        return f"{seconds / 60:.0f} minute(s)"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} hour(s)"
    return f"{seconds / 86400:.1f} day(s)"


def _check_completion_date(
    entry_time: Any, times: Mapping[str, int], report: Any, *, dating: Sequence[str]
) -> None:
    """Whether the witnesses' clocks date the completion entry (the ``completion date
    witnessed`` check), or say that its time is the controller's statement.

    Every witness that cosigned must have done so within the window of :data:`WITNESS_DELAY_S`
    (:data:`CLOCK_SKEW_S` before): one further off shows the ledger's clock was not the time
    (whether or not the witness is pinned: the certificate disagrees with itself). Within it,
    the date is witnessed when ``dating`` (pinned witnesses not known to be the controller's
    own) is not empty, and is the controller's statement (a note) otherwise.
    """
    if not times:
        return  # no cosignature verified: the witness check failed and says why
    try:
        parsed = datetime.fromisoformat(str(entry_time).replace("Z", "+00:00"))
        written = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    except ValueError:
        # Signed, but no time: the entry is malformed, not merely undated by a witness.
        report.add("completion entry time", False, f"{entry_time!r} is not ISO 8601")
        return
    off = {
        n: t - written
        for n, t in times.items()
        if not -CLOCK_SKEW_S <= t - written <= WITNESS_DELAY_S
    }
    if off:
        name, gap = max(off.items(), key=lambda item: abs(item[1]))
        report.completion = {"entry": str(entry_time), "first": _utc(min(times.values()))}
        report.add(
            DATE_CHECK,
            False,
            MSG_DATE_NOT_WITNESSED.format(
                entry=entry_time,
                name=name,
                at=_utc(times[name]),
                gap=_span(gap),
                side="before it" if gap < 0 else "after it",
                first=_utc(min(times.values())),
            ),
        )
    elif dating:
        report.add(
            DATE_CHECK,
            True,
            MSG_DATE_WITNESSED.format(
                names=", ".join(dating),
                at=", ".join(_utc(times[n]) for n in dating),
                within=f"{WITNESS_DELAY_S // 60} minutes",
                entry=entry_time,
            ),
        )
    else:
        report.notes.append(MSG_DATE_CONTROLLERS.format(entry=entry_time))
