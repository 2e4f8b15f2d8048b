"""Verifying an erasure certificate against the project: the proof, then every store.

:func:`verify_certificate` runs the proof checks of
:func:`visage_ml.privacy.certificate.verify_proof` and those of the witnessed checkpoint
(:func:`~visage_ml.privacy.certificate.check_witnessed`, with the witness keys and log name
pinned, else the checkout's witnesses, configured or recorded in its ledger), then looks for
the erased content: none of the listed content hashes, no erased subject's image in clear
(the tombstones know its PNG, :mod:`visage_ml.rights.content_hashes`) and no erased subject's
key as unwrapped (printed as hex or base64, or saved as it is: the tombstones know it too,
:mod:`visage_ml.rights.erasure.unwrapped`), may exist in any file
of the project but the tools' folders (``privacy/``, its keys and vault, included), an image a
notebook shows, an object of the git history, the DVC cache, the configured remotes and DVC's
site cache (one walk with the erasure's, :mod:`visage_ml.rights.content_scan`: every file is
looked at and hashed, but one of a size none of that content has, which cannot be a copy and is
not read; a notebook is read whatever its size; ``.dir`` manifests are also read for the listed
objects and the subject's folder; outside a checkout, or with no file to look at, the content is
not shown clean: the check fails; so too where a file DVC's record of ``data/raw`` holds is
neither checked out nor in a DVC store looked at, or, that record's listing not in the DVC
cache, where ``data/raw`` is not shown to be what it holds, counted: it cannot tell); and it
says whether the models in use were trained without the subject.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection, Container, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from visage_ml import dvcops
from visage_ml.config import ProjectPaths
from visage_ml.data.rawstore import (
    CHECKOUT_TAKES_ALL,
    IMAGES_FILE,
    absent_images,
    absent_tables,
    dvc_file,
    tables_expected,
    uncached_shown,
)
from visage_ml.privacy.certificate import (
    CertificateReport,
    check_witnessed,
    checkout_ledger,
    checkout_witnesses,
    models_retrained_event,
    published_keys,
    signer_in_history,
    verify_proof,
)
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import LedgerError
from visage_ml.privacy.requests import RequestBook
from visage_ml.privacy.tombstones import Tombstones
from visage_ml.rights import content_scan, dvc_objects, embedded, lineage
from visage_ml.rights.content_hashes import LISTED, ContentHashes
from visage_ml.rights.erasure.copies import git_allowed

log = logging.getLogger(__name__)

MSG_REMOTE_UNREACHABLE = (
    "the DVC remote(s) {names} could not be reached or listed, so their objects were not "
    "checked: make them reachable (`visage stack up`, the network, the remote's credentials) and "
    "verify again"
)

UNREAD = "could not be read, so not shown to hold no erased content: make it readable"
OPAQUE = "a notebook too large to look inside, so not shown to hold no erased content"
OPAQUE_OBJECT = (
    "too large a notebook, or expanding too far, to look inside, so not shown to hold no erased "
    "content"
)
EXPANDS = (
    "expands too far to look inside (an archive or table of far more than its size: a zip "
    "bomb, or near enough), or it holds more image starts than any image file has, or a "
    "member of it is damaged (the others read), or there was no "
    "room to unpack it to look inside, so not shown to hold no erased content: remove it, or "
    "unpack it (or free disk space)"
)
NOT_READ_DB = (
    "a database that could not be read to its end (damaged, encrypted, a value too large to "
    "read, or a -wal file not yet checkpointed or a -journal left by a crash that it is too "
    "large to read with, or that is alone), or whose freed space holds deleted rows that may "
    "be a photograph, so not shown to hold no erased content: repair it "
    "(`sqlite3 <file> .recover`), checkpoint its -wal "
    '(`sqlite3 <file> "PRAGMA wal_checkpoint(TRUNCATE)"`), play its -journal back '
    '(`sqlite3 <file> "PRAGMA integrity_check"`), clear its freed space '
    '(`sqlite3 <file> "VACUUM"`), or remove it'
)
NOTEBOOK_SHOWS = "a notebook's output shows erased content"
HELD_INSIDE = (
    "holds erased content inside (base64-encoded, an archive's member, a photo's bytes in a "
    "pickle, an array, a table, a database, a PDF or a data set's container)"
)
# What the scan can find, said beside what it found (docs/security.md, the certificate's page).
SCOPE = (
    "exact bytes only, whole or inside notebooks, text (base64; an erased subject's key, "
    "unwrapped, as 64 hex digits or base64 too), archives, pickles, NumPy, "
    "Parquet, SQLite and PDF files (their ASCII85 and deflated streams too: an attached file), "
    "Arrow and Feather files (their LZ4 or ZSTD buffers too), and HDF5, LMDB and TFRecord files "
    "where a photo's bytes lie as they are (not in HDF5 datasets chunked and compressed or "
    "TFRecords compressed with ZLIB); not inside other formats, and a re-encoded image is never "
    "found by hash; in the project only: a data set a subject was imported from, outside it, is "
    "not looked at"
)
GIT_OBJECT = "an object of the git history: rewrite it out, see `visage privacy doctor`"
MSG_NOT_DECLARED = (
    "a file of another current subject in data/raw holds erased content, and the certificate "
    "does not declare it kept: filed under that subject since? review it"
)
# data/raw's images table not checked out where the verifier runs: it lists the current
# subjects' photographs (a file a subject shared with the erased one stays theirs), and read as
# empty it lists none, so their own file would be taken for an erased one's copy.
MSG_UNLISTED = (
    "{found}, or another current subject's own photograph, kept as theirs: which cannot be "
    "told without data/raw/images.parquet, not checked out here though {why}; {fix}"
)
MSG_UNLISTED_CHECK = (
    "data/raw/images.parquet is not checked out here, though {why}: whether a file found is "
    "another current subject's own photograph cannot be told; {fix}"
)
# What to run for the table, {fix} above: the checkout, or a fetch first where the DVC cache
# lacks an object the checkout needs (it would take the whole of data/raw out of the workspace).
FIX_CHECKOUT = "run `dvc checkout data/raw` and verify again"
FIX_FETCH_FIRST = "{uncached} not in the DVC cache, and " + CHECKOUT_TAKES_ALL + " and verify again"

# data/raw checked out only in part where the verifier runs (a `dvc checkout` or `dvc pull` cut
# short, or run for some files): a file DVC's record of data/raw holds whose bytes are nowhere
# looked at, not in the workspace, the DVC cache or a remote, may be a copy of an erased one.
MSG_NOT_CHECKED_OUT = (
    "cannot tell: {n} {what} of data/raw that DVC's record of it (data/raw.dvc) holds "
    "are not checked out here, nor in the DVC cache or a remote looked at, so not shown to "
    "hold no erased content; run `dvc fetch data/raw` from a remote that holds them, then `dvc "
    "checkout data/raw` (before it, the checkout would take the whole of data/raw out of the "
    "workspace: DVC checks a folder out whole or not at all), and verify again"
)

# data/raw.dvc's listing not in the DVC cache where the verifier runs (a regulator's copy without
# it), and data/raw not shown to be what that record holds: a file it holds that the images table
# does not list (any file, or a copy of an erased photograph under a new name), deleted from the
# workspace, was read nowhere. Told by the record's hash of data/raw (dvcops.folder_state).
MSG_RAW_NOT_RECORDED = (
    "cannot tell: data/raw here ({here} file(s)) is not shown to be what DVC's record of it "
    "(data/raw.dvc, {recorded} file(s)) holds, and the listing of that record is not in the DVC "
    "cache, so a file it holds may be neither here nor looked at, not shown to hold no erased "
    "content; run `dvc fetch data/raw` from a remote that holds it (it brings the listing and "
    "the files into the DVC cache, where they are read), and verify again"
)

MSG_NOT_SCANNED = (
    "not checked: {root} is not the controller's checkout (no ledger, or no file to hash); run "
    "it there (or set VISAGE_PROJECT), or check the proof alone with --offline"
)


def verify_certificate(
    cert_path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    public_key: Ed25519PublicKey | Path | None = None,
    scan: bool = True,
    models: bool = True,
    witness_keys: Sequence[str] = (),
    origin: str | None = None,
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
    witness_keys
        Witness keys the verifier pins: each must have cosigned the certificate's checkpoint.
        Without them one of the checkout's witnesses must have, those it is configured with or
        its ledger recorded (the checkout's word, as its ledger key is).
    origin
        The log name the verifier pins: the checkpoint must be of that log.

    Returns
    -------
    CertificateReport
        ``ok`` is true when every check passed.
    """
    paths = ProjectPaths.discover(root)
    if public_key is None:
        public_key = signer_in_history(paths, cert_path)
    report, doc, pub = verify_proof(
        cert_path,
        public_key=public_key,
        ledger_path=paths.ledger,
        # Every key the ledger has had once it was rotated: a certificate of before verifies.
        default_key_path=published_keys(paths),
    )
    if doc is None or pub is None:
        return report
    # The witnessed proof bundle is checked here too: pins given on site are not dropped, and a
    # certificate stripped of its proof and signed again does not pass in the checkout.
    own = checkout_witnesses(paths)
    check_witnessed(
        doc,
        pub,
        report,
        witness_keys=witness_keys,
        origin=origin,
        own_witnesses=() if witness_keys else own.vkeys,
        directory_witnesses=own.directory,
    )
    claims = doc.get("claims") or {}
    if scan:
        _scan(paths, doc, claims, report)
    if models:
        report.models = _models_status(paths, doc, claims, pub, report)
    return report


def scan_for_hashes(
    paths: ProjectPaths,
    walked: Sequence[content_scan.Root],
    sha256s: ContentHashes,
    *,
    pid: str,
    md5s: set[str],
    declared_in_use: Mapping[str | None, Collection[str]],
    allowed_in_git: Container[str] = frozenset(),
    report: CertificateReport,
    unreachable: dict[str, str] | None = None,
    unlisted: tuple[str, str] | None = None,
    objects: set[str] | None = None,
) -> int:
    """Hash every file under ``walked`` and every git object (but those of a size nothing in
    ``sha256s`` has, :meth:`~visage_ml.rights.content_hashes.ContentHashes.may_match`, which are
    not read); record any whose SHA-256 is in
    ``sha256s`` (listed, or an erased image's plaintext or source file), or a notebook holding
    such an image,
    but the files of other current subjects (:func:`~visage_ml.rights.content_scan.in_use`,
    the erasure's rule) that an erasure lists kept (``declared_in_use``: by request id, the
    names as :func:`~visage_ml.rights.content_scan.in_use_name` gives them for that request,
    or as it gave them before, unbound); and any ``.dir`` manifest
    that names a listed md5 or the subject's folder. Returns how many files current subjects
    hold; a DVC remote that could not be listed goes into ``unreachable`` (its name: why).
    ``unlisted``: why data/raw's images table, not there, is expected and what to run
    (:func:`_unlisted`): a found file that may be another current subject's own says that this
    cannot be told.
    ``objects``: the md5 of each DVC object looked at (in the cache or a remote) goes into it."""
    embedded.spill_into(paths.root)
    hashed = content_scan.hash_files(walked, sizes=sha256s)
    hits = [h for h in hashed if h.matches(sha256s)]
    kept = content_scan.in_use(paths, hits, pid=pid)
    declared = {(rid, str(n)) for rid, names in declared_in_use.items() for n in names}
    if sha256s.key is not None:
        key = sha256s.key

        def mac(kind: str, value: str) -> str:
            return Tombstones.mac_with(key, kind, value)

        def name(f: Path, rid: str | None) -> str:
            return content_scan.in_use_name(mac, paths.root, f, request_id=rid)

        # A certificate made before names were bound to their request lists the path's alone.
        unbound = {n for _, n in declared}
        accepted = {
            f
            for f in kept.files
            if name(f, None) in unbound
            or any((rid, name(f, rid)) in declared for rid in declared_in_use if rid)
        }
    elif len(kept.files) <= len(declared):  # without the key, as many as they list
        accepted = set(kept.files)
    else:
        accepted = set()
    for h in hashed:
        if h.down and unreachable is not None:
            unreachable[h.root.remote.name] = h.down
        if h.unreadable:  # not shown clean: it may be a copy
            why = (
                (NOT_READ_DB if h.kind == embedded.SQLITE else EXPANDS)
                if h.expands
                else OPAQUE
                if h.opaque
                else UNREAD
            )
            report.findings.append({"path": str(h.path), "why": why})
        if h.gone:
            continue
        if objects is not None and h.oid is not None:
            objects.add(h.oid)
        report.files_looked_at += 1
        if not h.read:
            continue
        report.files_hashed += 1
        report.bytes_hashed += h.size
        if h.root.remote is None and h.path.name.endswith(".dir") and h.size < (64 << 20):
            _check_manifest(h.path, pid=pid, md5s=md5s, report=report)
    try:
        # Every object read, the scan cache never: whoever can write the git folder can edit it.
        history = content_scan.git_hits(paths.root, sha256s, allowed=allowed_in_git, cached=False)
    except content_scan.GitUnreadableError as exc:  # not shown clean: a finding says why
        history = []
        report.findings.append({"path": str(paths.root / ".git"), "why": str(exc)})
    for h in hits + history:
        if h.path in kept.objects or h.path in accepted:
            continue
        whole = h.digest is not None and h.digest in sha256s
        shown_in = any(d in sha256s for d in h.inner)
        if whole:
            why = str(sha256s.why(str(h.digest)))
        elif shown_in:
            why = NOTEBOOK_SHOWS
        elif h.opaque and not h.matches(sha256s):  # a git object: too large, or a bomb
            why = OPAQUE_OBJECT
        else:
            why = HELD_INSIDE
        if h.path in kept.files:
            why = MSG_NOT_DECLARED
        elif unlisted is not None and _may_be_theirs(paths, h):
            why = MSG_UNLISTED.format(found=why, why=unlisted[0], fix=unlisted[1])
        # An erased image's plaintext or source by its path only: the report names the pid, so its
        # SHA-256 would pair a photograph with them (as content_hit in the ledger); a git
        # object by the repository alone (its id is a hash of the content too).
        named = h.digest if whole and sha256s.why(str(h.digest)) == LISTED else None
        shown = f"{h.path} ({GIT_OBJECT})" if h.root.git else str(h.path)
        report.findings.append({"path": shown, "sha256": named, "why": why})
    return len(kept.files)


def _unlisted(paths: ProjectPaths) -> tuple[str, str] | None:
    """Why data/raw's images table is expected where it is not there (``dvc checkout`` not run
    or cut short: :func:`~visage_ml.data.rawstore.tables_expected`) and what to run
    (:data:`FIX_CHECKOUT`; :data:`FIX_FETCH_FIRST` where the DVC cache lacks what the checkout
    needs, :func:`~visage_ml.data.rawstore.uncached_shown`), else None."""
    missing = absent_tables(paths.raw)
    why = tables_expected(paths.raw, missing) if IMAGES_FILE in missing else None
    if why is None:
        return None
    uncached = uncached_shown(paths.raw)
    fix = FIX_CHECKOUT if uncached is None else FIX_FETCH_FIRST.format(uncached=uncached)
    return why, fix


def _not_checked_out(paths: ProjectPaths, objects: Container[str]) -> str | None:
    """What of ``data/raw`` is not checked out here and nowhere looked at (``objects``: the md5s
    of the DVC objects the scan looked at), as :data:`MSG_NOT_CHECKED_OUT` counts it, or None.

    Each file DVC's record of ``data/raw`` lists is in the workspace or its object was looked at;
    where that record's listing is not in the cache, each photograph ``images.parquet`` lists
    is in the workspace, and ``data/raw`` is what the record holds, told by its hash
    (:func:`~visage_ml.dvcops.folder_state`, as :data:`MSG_RAW_NOT_RECORDED` counts it): a file
    the table does not list may be recorded too. Where DVC does not track ``data/raw``, nothing
    can bring back a file not there: it holds nothing. Counted only: a path would name its
    subject."""
    if not dvc_file(paths.raw).is_file():
        return None
    entries = dvcops.tracked_objects(paths.raw)
    if entries is None:
        missing = absent_images(paths.raw)
        photos = len(missing)
        if not missing and not (state := dvcops.folder_state(paths.raw)).same:
            recorded = "an unknown number of" if state.recorded is None else state.recorded
            return MSG_RAW_NOT_RECORDED.format(here=state.files, recorded=recorded)
    else:
        missing = [
            rel
            for rel, md5 in entries.items()
            if md5 not in objects and not (paths.raw / rel).is_file()
        ]
        photos = sum(1 for rel in missing if "/" in rel)
    if not missing:
        return None
    what = "photograph(s)" if photos == len(missing) else "file(s)"
    return MSG_NOT_CHECKED_OUT.format(n=len(missing), what=what)


def _may_be_theirs(paths: ProjectPaths, h: content_scan.Hashed) -> bool:
    """Whether a found file is of a kind the images table tells as a current subject's own
    (:func:`~visage_ml.rights.content_scan.in_use`, :func:`git_allowed`): a file in data/raw, a
    DVC object, a git object."""
    return h.root.git or h.oid is not None or paths.raw.resolve() in h.path.resolve().parents


def _declared_in_use(paths: ProjectPaths) -> dict[str | None, set[str]]:
    """The kept files every erasure of the checkout's ledger declared, by its request id (its
    copies step's ``copies_in_use``, each a keyed name of the request and a path)."""
    try:
        states = RequestBook(PrivacyCore(paths)).all()
    except (LedgerError, OSError, ValueError) as exc:
        log.warning(
            "the request book could not be read (%s): only this certificate's kept files", exc
        )
        return {}
    out: dict[str | None, set[str]] = {}
    for st in states:
        rec = st.steps.get("copies")
        names = (rec.info or {}).get(content_scan.IN_USE) if rec is not None else None
        if isinstance(names, list):
            out.setdefault(st.request_id, set()).update(str(n) for n in names)
    return out


def _check_manifest(path: Path, *, pid: str, md5s: set[str], report: CertificateReport) -> None:
    with contextlib.suppress(OSError):
        entries = dvc_objects.read_manifest(path.read_bytes())
        if entries is None:
            return
        named = {str(e.get("md5")) for e in entries} & md5s
        if named or dvc_objects.manifest_lists(entries, pid):
            report.findings.append(
                {
                    "path": str(path),
                    "why": "a .dir manifest lists an erased object or the subject",
                    "md5s": sorted(named),
                }
            )


def _scan(
    paths: ProjectPaths, doc: Mapping[str, Any], claims: Mapping[str, Any], report: Any
) -> None:
    artefacts = claims.get("artefacts") or []
    md5s = {a["md5"] for a in artefacts if isinstance(a, Mapping) and a.get("md5")}
    # Declared in the signed claims: identical content still referenced by current data.
    retained = [r for r in claims.get("retained_shared_content") or [] if isinstance(r, Mapping)]
    md5s -= {r.get("md5") for r in retained}
    # A plaintext copy of an erased image counts too: the tombstones know its PNG (older
    # certificates name it, keyed: plain_mac, or in clear: plain_sha256).
    sha256s = ContentHashes.of(
        paths,
        artefacts,
        exclude=[r.get("sha256") for r in retained],
        pid=str(doc.get("pid")) if doc.get("pid") else None,
    )
    setup = None
    walked: list[content_scan.Root] = []
    # A remote DVC cannot open, or cannot reach or list (:func:`scan_for_hashes`), is not shown
    # to be clean.
    unreachable: dict[str, str] = {}
    if dvcops.is_dvc_repo(paths.root):
        try:
            setup = dvc_objects.open_setup(paths.root)
        except Exception as exc:  # DVC unreadable: the local cache folder is still scanned
            log.warning("DVC could not be opened (%s); scanning .dvc/cache only", exc)
            walked.append(content_scan.Root(paths.root / ".dvc" / "cache", "dvc cache", True))
        else:
            unreachable = {f"remote:{n}": f"not opened: {why}" for n, why in setup.unopened.items()}
    walked = content_scan.roots(paths, setup) + walked
    listed = claims.get(content_scan.IN_USE)
    in_use = [str(n) for n in listed] if isinstance(listed, list) else []
    # The file of a current subject that a later erasure declared kept (a photograph its
    # subject shared) is found through the tombstones too: accepted as that erasure declared it.
    declared = _declared_in_use(paths)
    rid = doc.get("request_id")
    declared.setdefault(rid if isinstance(rid, str) else None, set()).update(in_use)
    unlisted = _unlisted(paths)
    objects: set[str] = set()
    held = scan_for_hashes(
        paths,
        walked,
        sha256s,
        pid=str(doc.get("pid")),
        md5s=md5s,
        declared_in_use=declared,
        allowed_in_git=git_allowed(paths, str(doc.get("pid")), artefacts),
        report=report,
        unreachable=unreachable,
        unlisted=unlisted,
        objects=objects,
    )
    declared = f"; {len(retained)} declared as shared content still in use" if retained else ""
    if held:
        declared += f"; {held} file(s) of current subjects' data kept, {len(in_use)} declared"
    # Files that could not be checked for a plaintext copy: not shown to be clean.
    unkeyed = sha256s.gap is not None and report.files_looked_at > 0
    unkeyed_note = f"; {sha256s.gap}" if unkeyed else ""
    if unreachable:
        names = ", ".join(f"{n} ({why})" for n, why in sorted(unreachable.items()))
        unkeyed = True  # not shown to be clean either
        unkeyed_note += f"; {MSG_REMOTE_UNREACHABLE.format(names=names)}"
    if unlisted is not None and report.findings:
        unkeyed_note += f"; {MSG_UNLISTED_CHECK.format(why=unlisted[0], fix=unlisted[1])}"
    if (absent := _not_checked_out(paths, objects)) is not None:
        unkeyed = True  # not shown to be clean
        unkeyed_note += f"; {absent}"
    images = (
        " and every erased image's plaintext and source file, and erased subjects' keys as "
        "unwrapped"
        if sha256s.key is not None
        else ""
    )
    unread = report.files_looked_at - report.files_hashed
    if not paths.ledger.is_file() or report.files_looked_at == 0:
        # Not the controller's checkout: nothing was looked at, so nothing is shown clean.
        report.add("no erased content remains", False, MSG_NOT_SCANNED.format(root=paths.root))
        return
    report.add(
        "no erased content remains",
        not report.findings and not unkeyed,
        f"{len(sha256s)} hashes{images} looked for: {report.files_looked_at} files looked at "
        f"({report.files_hashed} read, {report.bytes_hashed} bytes; {unread} of a size nothing "
        f"sought has, not read): {len(report.findings)} found{declared}{unkeyed_note}; "
        f"{SCOPE}",
    )


def _models_status(
    paths: ProjectPaths,
    doc: Mapping[str, Any],
    claims: Mapping[str, Any],
    pub: Any,
    report: CertificateReport,
) -> dict[str, Any]:
    stale = list(claims.get("models") or [])
    check = lineage.check_certified(paths, str(doc.get("pid")), claims)
    ledger = checkout_ledger(paths)
    # The certificate's key and those it rotated to since (each rotation signed by the key in
    # force), as the page and `lineage --refresh` read the event: a refresh after a rotation is
    # signed by the new key.
    try:
        keys = ledger.key_chain(anchor=pub).public_keys()
    except (LedgerError, ValueError):
        keys = [pub]
    event = models_retrained_event(ledger, doc.get("request_id"), keys)
    verdict = lineage.models_verdict(recorded=event is not None, clean=check.clean)
    if not stale:
        status = lineage.NO_MODEL_UNKNOWN if claims.get("lineage_notes") else lineage.NO_MODEL
    elif verdict == lineage.RETRAINED and event is not None:
        status = f"retrained (signed erasure.models_retrained, ledger seq {event['seq']})"
    elif verdict == lineage.IN_USE_AGAIN and event is not None:
        # The ledger says what was once done; the checkout says what is in use now.
        status = lineage.MSG_IN_USE_AGAIN.format(seq=event["seq"])
        report.notes.append(status)
    elif verdict == lineage.RETRAINED_UNRECORDED:
        status = "retrained, not yet recorded: run `visage privacy lineage --refresh`"
    else:
        status = "stale until retrained (`dvc repro`)"
    if stale and (kept := lineage.restorable(paths, stale)):
        report.conceded.append(kept)  # "retrained" says nothing of the bytes
    return {
        "status": status,
        "certified_stale": len(stale),
        "current_models_clean": check.clean,
        "retrained_event": event,
        **check.to_dict(),
    }
