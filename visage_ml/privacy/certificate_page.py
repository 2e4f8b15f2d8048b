"""A readable page of an erasure certificate: what a DPO files and hands to the data subject.

The certificate (``privacy/certificates/<request id>.json``, :mod:`visage_ml.privacy.certificate`)
is the proof; this page (``<request id>.html`` beside it) says in words what it states and
which checks passed, made by whom:

- the request, the subject's pseudonymous id (pid) and nothing else of them, the controller,
  when the request was received (the controller's statement) and when the erasure completed
  (the controller's clock), with the time a pinned witness not kept by the controller cosigned
  it, or that none corroborates it (the ``completion date witnessed`` check);
- what was erased, counted by store and by outcome (key destroyed, crypto-shredded, physically
  removed), the shared file rewritten without the subject rather than deleted, the exact
  copies found elsewhere in the project and removed (counted by top folder), what a store
  could not guarantee and the content kept because other data shares it;
- the models trained on data that held the subject, stale or retrained since (the signed
  ``erasure.models_retrained`` entry the caller found);
- the ``erasure.completed`` ledger entry, its tree head and checkpoint, and the witnesses whose
  cosignature verified, with their keys' fingerprints and the witness's own time, each marked
  by the kind the checkout configures or its ledger recorded for it (a directory witness is the
  controller's own folder, whatever its name);
- the checks of :func:`~visage_ml.privacy.certificate.verify_offline`, the keys they used and
  where those keys came from, and how anyone can check the file themselves;
- the certificate file's SHA-256, which ties the page to one JSON file.

The page never shows an artefact's path or hash: a path can name a person's folder, and a hash
of a file can be compared with a copy of a photograph. It claims no more than was checked: a
failed check reads NOT VERIFIED (the completion date's alone: completion date not witnessed, the
erasure proven done by the witnesses' time), keys taken from the certificate itself read as
consistency, not authenticity, and checks that all passed read as the word of whoever rendered
the page (the controller's own installation, for the page beside its certificate), not as a
verification a reader can rely on: that is the offline verifier, run by the reader with the
published keys. The same certificate, keys and retraining event give the same bytes (no
rendering time), so the controller's copy is rewritten rather than versioned: an erasure writes
it beside its certificate (:func:`write_page`, with the controller's published key, log name and
its witnesses, configured or recorded in its ledger), ``visage privacy lineage --refresh``
rewrites it once the models were retrained, and ``visage privacy certificate-page`` renders any
certificate.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from visage_ml import __version__
from visage_ml.io import atomic_write_text
from visage_ml.privacy.certificate import (
    CLOCK_SKEW_S,
    CONSISTENT_ONLY,
    INVALID,
    CertificateReport,
    checkout_witnesses,
    published_keys,
    verify_offline,
)
from visage_ml.privacy.certificate import DATE_NOT_WITNESSED as CERT_DATE_NOT_WITNESSED
from visage_ml.privacy.checkpoint import (
    NoteError,
    cosigner,
    parse_note,
    parse_tlog_proof,
    verified_cosigners,
)
from visage_ml.privacy.pages import template_env
from visage_ml.privacy.records import EXAMPLE_CONTROLLER, at_example_domain, plural

PAGE_SUFFIX = ".html"

MSG_NO_FILE = "no certificate at {path}: give the path of privacy/certificates/<request id>.json"
MSG_NOT_CERTIFICATE = (
    "{path} is not an erasure certificate ({why}): give a privacy/certificates/<request id>.json "
    "file as the erasure wrote it"
)
MSG_CHANGED = "{path} changed while it was read: render the page again"
MSG_EXAMPLE_CONTROLLER = (
    "EXAMPLE CONTROLLER: the certificate names the controller visage-ml ships with ({names}): "
    "params.yaml's project.controller and project.controller_contact were not filled in before "
    "this erasure. A signed certificate keeps the names it was signed with; do not hand this "
    "page to the data subject without a covering letter naming the controller"
)

# The three outcomes of visage_ml.rights.erasure.base.outcome_of (the rights layer sits above
# this one), in the order a reader takes them in, each explained.
KEY_DESTROYED = "key destroyed"
CRYPTO_SHREDDED = "crypto-shredded"
PHYSICALLY_REMOVED = "physically removed"
NOT_RECORDED = "not recorded"
# Models trained on the subject in use after a signed "retrained" (lineage.models_verdict).
IN_USE_AGAIN = "models trained on the subject are in use again"
OUTCOME_TEXT = {
    KEY_DESTROYED: (
        "a key that encrypted the subject's data was destroyed: every copy encrypted under it, "
        "wherever it is (backups, remote storage, clones), can no longer be read by anyone"
    ),
    CRYPTO_SHREDDED: (
        "encrypted under a destroyed key, so unreadable everywhere; where the controller could "
        "reach it, deleted as well, unless it is a file shared with other people and still in "
        "use: from that, only the subject's part was removed"
    ),
    PHYSICALLY_REMOVED: (
        "a file not encrypted under the subject's key (an index or a list shared with other "
        "people) deleted, or rewritten without the subject: copies outside the controller's "
        "reach are not covered by this, nor the disk blocks the old file used, which the "
        "filesystem overwrites in time, not at once"
    ),
    NOT_RECORDED: "the certificate does not say how (one made by an earlier version)",
}
STORE_TEXT = {
    "gallery": "search gallery: templates, anchors and their key",
    "vault": "identity vault: the link between the pid and the person",
    "keys": "the subject's data key",
    "data": "data set files (data/raw, data/processed)",
    "dvc-remote": "DVC remote storage",
    "exports": "export bundles kept by the controller",
    "imports": "import reports",
    "mlflow": "experiment tracking (MLflow)",
    "mlflow-server": "MLflow tracking server",
    "pgvector": "PostgreSQL gallery",
    "models": "model checkpoints",
}

VERIFIED = "verified"
CONSISTENT = "consistent only"
NOT_VERIFIED = "NOT VERIFIED"
# Every check passed but no witness cosigned the completion at its time (the verifiers'
# COMPLETION DATE NOT WITNESSED): proven done by the witnesses' time, not at the date stated.
DATE_NOT_WITNESSED = "completion date not witnessed"
# What the page calls a verdict: every check passing with pinned keys is still only the word of
# whoever rendered the page (the controller, for the page beside its certificate); a reader
# verifies by running the offline verifier themselves.
HEADLINE = {
    VERIFIED: "checks passed",
    CONSISTENT: CONSISTENT,
    NOT_VERIFIED: NOT_VERIFIED,
    DATE_NOT_WITNESSED: DATE_NOT_WITNESSED,
}
_PAGE_VERDICT = {
    INVALID: NOT_VERIFIED,
    CONSISTENT_ONLY: CONSISTENT,
    CERT_DATE_NOT_WITNESSED: DATE_NOT_WITNESSED,
}
OWN_CHECKER = "this project's own visage-ml installation, with the keys it holds"
OTHER_CHECKER = "visage-ml run by whoever rendered this copy, with the keys they gave"
# The prepared training data (data/processed/faces.sealed): every subject's crops, each sealed
# under its own subject's key, in one file that an erasure rewrites without the subject.
SHARED_KEPT = (
    "1 crypto-shredded item is a file shared with other people (the prepared training data, "
    "each person's face crops sealed under their own key): it was not deleted but rewritten "
    "without the subject and kept for the others; the subject's part, unreadable once their key "
    "was destroyed, was removed"
)
SHARED_KEPT_MANY = (
    "{n} crypto-shredded items are files shared with other people (the prepared training data, "
    "each person's face crops sealed under their own key): they were not deleted but rewritten "
    "without the subject and kept for the others; the subject's part, unreadable once their key "
    "was destroyed, was removed"
)

# What dates the request and the completion, beside the dates the certificate states.
RECEIVED_CONTROLLERS = (
    "the controller's statement: it enters this date (any past date since 25 May 2018 is "
    "accepted) and no witness dates it"
)
# A receipt the controller dated before it added the subject to the registry (a letter answered
# after the import of their data): taken as it is, so the deadline counts from it.
RECEIVED_BEFORE_REGISTRATION = (
    "Received before the subject was added to the registry ({added}): the controller dated "
    "this receipt before it registered the subject, and the deadline counts from it."
)
COMPLETION_CONTROLLERS = (
    "the controller's clock: no pinned witness run by someone else cosigned at that time"
)
COMPLETION_NOT_CORROBORATED = "not corroborated by the witnesses"

# A value shown inside the command a reader copies: anything else (a certificate is a file
# anyone can edit) stands as a placeholder, never as text a shell would run.
_SHELL_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,199}")


class CertificatePageError(ValueError):
    """The file cannot be rendered: missing, not JSON, or not an erasure certificate."""


@dataclass(frozen=True)
class Pins:
    """The keys a page's check uses instead of the ones the certificate carries.

    Attributes
    ----------
    public_key
        The controller's published ledger key (a key, or a PEM file such as ``ledger.pub`` or
        ``ledger-keys.pem``); None: the certificate's own, and the page says so.
    witness_keys
        Witness verifier keys, each of which must have cosigned; empty: the certificate's list.
    origin
        The log name the controller published; None: the checkpoint's own.
    by
        Who chose these keys, as the page names them (``the controller's checkout``).
    own
        The checks are made by the project's own installation with the keys it holds (the page
        then says they are the controller's word, not an independent verification).
    directory
        The vkeys of the witnesses configured (``privacy.witness``) or recorded in the ledger
        (``witness.set``) as directory witnesses (folders on the controller's disk, stamped by
        its clock), which the page marks so whatever their names; None: not known (a copy
        rendered elsewhere).
    """

    public_key: Ed25519PublicKey | Path | None = None
    witness_keys: tuple[str, ...] = ()
    origin: str | None = None
    by: str = ""
    own: bool = False
    directory: tuple[str, ...] | None = None


@dataclass
class CertificatePage:
    """A rendered page: its HTML, the verdict it states and the check behind it."""

    html: str
    verdict: str
    sha256: str
    request_id: str
    report: CertificateReport = field(repr=False)

    @property
    def verified(self) -> bool:
        return self.verdict == VERIFIED


@dataclass
class Counts:
    """A certificate's artefacts counted by store (rows) and outcome (columns)."""

    outcomes: list[str]
    rows: list[dict[str, Any]]
    totals: dict[str, int]
    total: int


def page_path(cert_path: str | os.PathLike[str]) -> Path:
    """Where a certificate's page goes by default: beside it, ``<request id>.html``."""
    return Path(cert_path).with_suffix(PAGE_SUFFIX)


def load_certificate(cert_path: str | os.PathLike[str]) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and its parsed document.

    Raises
    ------
    CertificatePageError
        No such file, not UTF-8 JSON, or not an object with a request id and claims.
    """
    path = Path(cert_path)
    if not path.is_file():
        raise CertificatePageError(MSG_NO_FILE.format(path=path))
    raw = path.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CertificatePageError(MSG_NOT_CERTIFICATE.format(path=path, why="not JSON")) from None
    if not isinstance(doc, dict) or not {"request_id", "claims"} <= set(doc):
        why = "no request_id and claims"
        raise CertificatePageError(MSG_NOT_CERTIFICATE.format(path=path, why=why))
    return raw, doc


def outcome_counts(claims: Any) -> Counts:
    """The artefacts of ``claims`` counted by store and outcome (known outcomes first, then
    any other the file states, then those it states none for)."""
    found: Counter[tuple[str, str]] = Counter()
    for a in _list(_obj(claims).get("artefacts")):
        a = _obj(a)
        outcome = a.get("outcome")
        found[str(a.get("store") or "?"), str(outcome) if outcome else NOT_RECORDED] += 1
    known = [KEY_DESTROYED, CRYPTO_SHREDDED, PHYSICALLY_REMOVED]
    others = sorted({o for _, o in found} - {*known, NOT_RECORDED})
    outcomes = [
        *known,
        *others,
        *([NOT_RECORDED] if any(o == NOT_RECORDED for _, o in found) else []),
    ]
    rows = []
    for store in sorted({s for s, _ in found}):
        by = {o: found[store, o] for o in outcomes}
        rows.append(
            {"store": store, "text": _store_text(store), "by": by, "total": sum(by.values())}
        )
    totals = {o: sum(r["by"][o] for r in rows) for o in outcomes}
    return Counts(outcomes, rows, totals, sum(totals.values()))


def shared_kept(claims: Any) -> int:
    """How many crypto-shredded artefacts of ``claims`` are a shared file that the erasure
    rewrote and kept, not deleted: the prepared data, whose md5 the certificate records before
    (the artefact's) and after the erasure (none when no file was left)."""
    dataset = _obj(_obj(claims).get("dataset"))
    before, after = dataset.get("processed_md5_before"), dataset.get("processed_md5_after")
    if not before or not after:
        return 0
    return sum(
        1
        for a in map(_obj, _list(_obj(claims).get("artefacts")))
        if a.get("store") == "data"
        and a.get("md5") == before
        and a.get("outcome") == CRYPTO_SHREDDED
    )


def render_page(
    cert_path: str | os.PathLike[str],
    *,
    pins: Pins | None = None,
    retrained: Mapping[str, Any] | None = None,
) -> CertificatePage:
    """Check the certificate at ``cert_path`` and render its page.

    Parameters
    ----------
    cert_path
        The certificate file.
    pins
        The keys to check it with (:class:`Pins`); none: the certificate's own, which the page
        states as consistency only.
    retrained
        ``{"seq", "time"}`` of the signed ``erasure.models_retrained`` entry of this request
        (:func:`~visage_ml.privacy.certificate.models_retrained_event`), None when the caller
        found none or has no ledger: the page then says what the certificate says.

    Raises
    ------
    CertificatePageError
        The file is missing, not a certificate, or changed while it was read.
    """
    pins = pins or Pins()
    raw, doc = load_certificate(cert_path)
    report = verify_offline(
        cert_path,
        public_key=pins.public_key,
        witness_keys=pins.witness_keys,
        origin=pins.origin,
        directory_witnesses=pins.directory,
    )
    if Path(cert_path).read_bytes() != raw:  # what was checked must be what is shown
        raise CertificatePageError(MSG_CHANGED.format(path=cert_path))
    sha256 = hashlib.sha256(raw).hexdigest()
    verdict = _PAGE_VERDICT.get(report.verdict, VERIFIED)
    context = _context(
        doc,
        report,
        verdict=verdict,
        sha256=sha256,
        file_name=Path(cert_path).name,
        pins=pins,
        retrained=retrained,
    )
    html = template_env().get_template("certificate.html.j2").render(**context)
    return CertificatePage(html, verdict, sha256, str(doc.get("request_id")), report)


def controller_pins(core: Any, cert_path: str | os.PathLike[str]) -> Pins:
    """The controller's own keys for its certificate's page: the published ledger key file,
    the project's log name, and the checkout's witnesses (configured, or recorded in its
    ledger: a witness replaced since cosigned the certificates of its time) whose cosignature
    is on the certificate's checkpoint (their keys taken from the checkout, not from the file),
    and which of them are directory witnesses (by their configured or recorded kind: a name
    proves nothing)."""
    paths = core.paths
    key_file = published_keys(paths)
    own = checkout_witnesses(paths)
    witness_keys: tuple[str, ...] = ()
    try:
        _, doc = load_certificate(cert_path)
        note = parse_tlog_proof(str(_obj(doc.get("proof")).get("tlog_proof"))).checkpoint
        keys = [cosigner(k) for k in own.vkeys]
        witness_keys = tuple(v.vkey for v in verified_cosigners(parse_note(note), keys))
    except (CertificatePageError, NoteError, ValueError, TypeError):
        witness_keys = ()  # the page's check then names the failure
    return Pins(
        public_key=key_file if key_file.is_file() else None,
        witness_keys=witness_keys,
        origin=core.witnessing.origin,
        by="the controller's checkout",
        own=True,
        directory=own.directory,
    )


def write_page(
    core: Any,
    cert_path: str | os.PathLike[str],
    *,
    retrained: Mapping[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> CertificatePage:
    """Render the page of the project's certificate with the controller's keys
    (:func:`controller_pins`) and write it atomically (default: beside the certificate)."""
    page = render_page(cert_path, pins=controller_pins(core, cert_path), retrained=retrained)
    atomic_write_text(Path(out) if out is not None else page_path(cert_path), page.html)
    return page


# ---------------------------------------------------------------------------------------------
# What the template shows (every value from the file coerced: a hostile file is a page that
# says NOT VERIFIED, never a traceback)
# ---------------------------------------------------------------------------------------------


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _count(value: Any) -> int:
    """A non-negative count from the certificate (0 for anything else)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _copies(value: Any) -> dict[str, Any]:
    """Exact copies the erasure removed, by top folder: their total and ``data 2, reports 1``."""
    counts = {str(k): _count(v) for k, v in _obj(value).items() if _count(v)}
    where = ", ".join(f"{folder} {n}" for folder, n in sorted(counts.items()))
    return {"total": sum(counts.values()), "where": where}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _store_text(store: str) -> str:
    if store in STORE_TEXT:
        return STORE_TEXT[store]
    if store.startswith("dvc-"):
        return f"DVC storage ({store.removeprefix('dvc-')})"
    return ""


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _received_before(doc: Mapping[str, Any]) -> str:
    """:data:`RECEIVED_BEFORE_REGISTRATION` for a certificate that says its request was received
    before its subject was registered; empty otherwise (a certificate of an older version)."""
    if doc.get("received_before_registration") is not True:
        return ""
    return RECEIVED_BEFORE_REGISTRATION.format(added=_text(doc.get("subject_added_at"))[:10])


def _elapsed(received: Any, completed: Any, *, slack: float = 0) -> str:
    """How long after ``received`` ``completed`` is; ``slack``: seconds before it that still
    read as at once (a witness's time is in whole seconds, on another host's clock)."""
    start, end = _when(received), _when(completed)
    if start is None or end is None or (start.tzinfo is None) != (end.tzinfo is None):
        return ""
    seconds = (end - start).total_seconds()
    if -slack <= seconds < 0:
        seconds = 0
    if seconds < 0:
        return "before the request was received: the dates do not agree"
    if seconds < 60:
        took = "less than a minute"
    elif seconds < 3600:
        took = plural(int(seconds // 60), "minute")
    elif seconds < 86400:
        took = f"{seconds / 3600:.1f} hours"
    else:
        took = f"{seconds / 86400:.1f} days"
    return f"{took} after the request was received"


def _completion(doc: Mapping[str, Any], report: CertificateReport) -> dict[str, Any]:
    """What dates the completion: witnesses on other hosts that cosigned at that time, or the
    controller's clock alone (the ``completion date witnessed`` check of the verifier)."""
    check = next((c for c in report.checks if c.name == "completion date witnessed"), None)
    cosigned = report.cosignatures
    if check is not None and not check.ok and cosigned:
        first = min(cosigned, key=lambda c: c["time"])
        elapsed = _elapsed(doc.get("received_at"), first["time"], slack=CLOCK_SKEW_S)
        times = ", ".join(f"{c['name']} at {c['time']}" for c in cosigned)
        return {
            "ok": False,
            "text": f"{COMPLETION_NOT_CORROBORATED}: cosigned by {times} (the witness's clock), "
            f"so the erasure is proven done by {first['time']} at the latest"
            + (f" ({elapsed})" if elapsed else ""),
        }
    dating = [c for c in cosigned if c["pinned"] and not c["local"]]
    if check is not None and check.ok and dating:
        first = min(dating, key=lambda c: c["time"])
        elapsed = _elapsed(doc.get("received_at"), first["time"], slack=CLOCK_SKEW_S)
        by = ", ".join(f"{c['name']} at {c['time']}" for c in dating)
        return {
            "ok": True,
            "text": f"witnessed by {by} (the witness's clock"
            + (f"; {elapsed}" if elapsed else "")
            + ")",
        }
    return {"ok": True, "text": COMPLETION_CONTROLLERS}


def _draft(controller: Mapping[str, Any]) -> str:
    name, contact = _text(controller.get("name")), _text(controller.get("contact"))
    found = [v for v in (name,) if v == EXAMPLE_CONTROLLER]
    found += [v for v in (contact,) if v and at_example_domain(v)]
    return MSG_EXAMPLE_CONTROLLER.format(names=", ".join(found)) if found else ""


def _shell(value: Any, placeholder: str) -> str:
    text = _text(value)
    return shlex.quote(text) if _SHELL_SAFE.fullmatch(text) else placeholder


def _models(claims: Mapping[str, Any], retrained: Mapping[str, Any] | None) -> list[dict]:
    rows = []
    for m in _list(claims.get("models")):
        m = _obj(m)
        if retrained is not None and retrained.get("in_use_again"):
            status = (
                f"{IN_USE_AGAIN}: the signed ledger entry {retrained.get('seq')} "
                f"({retrained.get('time')}) said they were retrained, but a model in use now was "
                "trained on data that held the subject"
            )
        elif retrained is not None:
            status = (
                f"retrained without the subject (signed ledger entry {retrained.get('seq')}, "
                f"{retrained.get('time')})"
            )
        elif m.get("status") == "stale":
            status = "stale: trained on data that held the subject, until retrained without them"
        else:
            status = _text(m.get("status"))
        rows.append(
            {
                "model": _text(m.get("model")),
                "version": _text(m.get("version")),
                "kind": _text(m.get("kind")),
                "status": status,
                "retrained": retrained is not None and not retrained.get("in_use_again"),
                # The status is the ledger's and the checkout's, not the certificate's.
                "checked": retrained is not None,
            }
        )
    return rows


def _shared_text(n: int) -> str:
    if n > 1:
        return SHARED_KEPT_MANY.format(n=n)
    return SHARED_KEPT if n == 1 else ""


def _key_source(pins: Pins) -> dict[str, str]:
    by = f" ({pins.by})" if pins.by else ""
    if isinstance(pins.public_key, Path):
        ledger = f"the published key file {pins.public_key.name}{by}"
    elif pins.public_key is not None:
        ledger = f"a key given{by}"
    else:
        ledger = "taken from the certificate itself: not pinned"
    n = len(pins.witness_keys)
    return {
        "ledger": ledger,
        "witnesses": f"{plural(n, 'witness key')}{by}"
        if n
        else "taken from the certificate itself",
        "origin": f"{pins.origin}{by}" if pins.origin else "taken from the checkpoint itself",
    }


def _context(
    doc: Mapping[str, Any],
    report: CertificateReport,
    *,
    verdict: str,
    sha256: str,
    file_name: str,
    pins: Pins,
    retrained: Mapping[str, Any] | None,
) -> dict[str, Any]:
    claims = _obj(doc.get("claims"))
    ledger = _obj(doc.get("ledger"))
    completed = _obj(ledger.get("erasure_completed"))
    head = _obj(ledger.get("tree_head"))
    proof = _obj(doc.get("proof"))
    controller = _obj(doc.get("controller"))
    cosigned = {c["name"] for c in report.cosignatures}
    listed = [
        _text(_obj(w).get("name"))
        for w in _list(proof.get("witnesses"))
        if _text(_obj(w).get("name")) not in cosigned
    ]
    signature = next((c for c in report.checks if c.name == "signature"), None)
    origin = report.checkpoint.get("origin") or pins.origin
    command = [
        "visage privacy verify-certificate --offline",
        _shell(file_name, "CERT.json"),
        "--public-key ledger.pub",
        "--witness-key '<witness key>'",
        f"--origin {_shell(origin, '<log name>')}",
        f"--request-id {_shell(doc.get('request_id'), '<request id>')}",
        f"--subject {_shell(doc.get('pid'), '<pid>')}",
    ]
    return {
        "verdict": verdict,
        "headline": HEADLINE.get(verdict, verdict),
        "verified": verdict == VERIFIED,
        "own": pins.own,
        "checker": OWN_CHECKER if pins.own else OTHER_CHECKER,
        "signature_ok": None if signature is None else signature.ok,
        "report": report,
        "draft": _draft(controller),
        "file_name": file_name,
        "sha256": sha256,
        "request_id": _text(doc.get("request_id")),
        "pid": _text(doc.get("pid")),
        "article": _text(doc.get("article")) or "Art. 17",
        "controller": {k: _text(controller.get(k)) for k in ("name", "contact")},
        "received_at": _text(doc.get("received_at")),
        "completed_at": _text(doc.get("completed_at")),
        "elapsed": _elapsed(doc.get("received_at"), doc.get("completed_at")),
        "received_note": RECEIVED_CONTROLLERS,
        "received_before": _received_before(doc),
        "completion": _completion(doc, report),
        "counts": outcome_counts(claims),
        "outcome_text": OUTCOME_TEXT,
        "shared_kept": _shared_text(shared_kept(claims)),
        "store_notes": [_text(n) for n in _list(claims.get("store_notes"))],
        "lineage_notes": [_text(n) for n in _list(claims.get("lineage_notes"))],
        "copies": _copies(claims.get("copies_removed")),
        "retained": len(_list(claims.get("retained_shared_content"))),
        # Files of data/raw identical to erased content that other current subjects hold.
        "in_use": len(_list(claims.get("copies_in_use"))),
        # The subject's photographs kept in clear in DVC because other current data holds the
        # same photograph: counted in the certificate, their hashes withheld.
        "kept_plaintext": _count(_obj(claims.get("dvc")).get("kept_plaintext")),
        "models": _models(claims, retrained),
        "claims_sha256": _text(doc.get("claims_sha256")),
        "entry": {
            "seq": _text(completed.get("seq")),
            "time": _text(completed.get("time")),
            "hash": _text(completed.get("hash")),
        },
        "head": {
            "seq": _text(head.get("seq")),
            "size": _text(_obj(head.get("payload")).get("size")),
            "root": _text(_obj(head.get("payload")).get("root")),
        },
        "checkpoint": report.checkpoint,
        "cosignatures": report.cosignatures,
        "uncosigned": listed,
        "keys": _key_source(pins),
        "version": __version__,
        "command": " ".join(command),
        # Only a fingerprint that verified: a reader compares it with the published one.
        "fingerprint": report.checkpoint.get("fingerprint", ""),
    }
