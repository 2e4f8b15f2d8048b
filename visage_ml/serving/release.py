"""Which model and threshold files serving accepts: exactly those a pipeline stage released.

The export stage records the SHA-256 of each ONNX file it writes, and the evaluate stage those
of ``reports/threshold.json``, ``reports/score_model.json`` (the 1:N threshold's score model) and
``reports/demographic_confusion.json`` (analytics' count correction), as a signed
``model.released`` event in the privacy ledger
(:func:`record_release`). ``visage serve`` looks up the latest release of each file it loads and
refuses a file whose hash differs, or a file that was never released, with a message naming the
file and the command that produces a new release (:func:`check_released`). Unlike
``reports/export.json``, which whoever can replace a model can rewrite too, a release is an
entry of the signed, hash-chained ledger: forging one needs the ledger key, and replacing an
old released file over a newer one is refused because only the latest release counts.

A release holds file paths (relative to the project root) and hashes only, never personal data.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from visage_ml.io import sha256_file
from visage_ml.privacy.ledger import Entry, entry_hash

RELEASE_EVENT = "model.released"
EMBEDDER_ONNX = "models/embedder.onnx"
DEMOGRAPHICS_ONNX = "models/demographics.onnx"
THRESHOLD_JSON = "reports/threshold.json"
# The impostor/genuine score model serving derives its 1:N threshold from, and the demographic
# model's measured confusion that analytics corrects its counts with (both from evaluate).
SCORE_MODEL_JSON = "reports/score_model.json"
DEMOGRAPHIC_CONFUSION_JSON = "reports/demographic_confusion.json"
# The label-free score calibration serving applies to every score before thresholding.
SCORE_CALIBRATION_JSON = "reports/score_calibration.json"
EVALUATE_RELEASES: tuple[str, ...] = (
    THRESHOLD_JSON,
    SCORE_MODEL_JSON,
    DEMOGRAPHIC_CONFUSION_JSON,
    SCORE_CALIBRATION_JSON,
)
ONNX_FILE_OF: dict[str, str] = {"embedder": EMBEDDER_ONNX, "demographics": DEMOGRAPHICS_ONNX}
# The command that makes (and records) a new release of each file.
FIX_OF: dict[str, str] = {
    EMBEDDER_ONNX: "dvc repro export",
    DEMOGRAPHICS_ONNX: "dvc repro export",
    THRESHOLD_JSON: "dvc repro evaluate",
    SCORE_MODEL_JSON: "dvc repro evaluate",
    DEMOGRAPHIC_CONFUSION_JSON: "dvc repro evaluate",
    SCORE_CALIBRATION_JSON: "dvc repro evaluate",
}

MSG_NOT_RELEASED = (
    "{file} has no release recorded in the privacy ledger (no signed `model.released` entry "
    "names it), so it is not served; run `{fix}` to produce it and record its hash"
)
MSG_CHANGED = (
    "{file} (sha256 {found}) is not the file released in ledger entry {seq} by the {stage} "
    "stage (sha256 {expected}): it was changed or replaced after its release, so it is not "
    "served; restore the released file or run `{fix}` to make and record a new release"
)
MSG_BAD_ENTRY = (
    "ledger entry {seq} (a model release) does not verify with the ledger's key; run "
    "`visage privacy verify-ledger` and restore the ledger from a backup"
)


class ReleaseError(ValueError):
    """A model or threshold file is not the one its stage released."""


@dataclass(frozen=True)
class Release:
    """The latest release of one file: its hash, the ledger entry and the stage that wrote it."""

    file: str
    sha256: str
    seq: int
    stage: str


def record_release(ledger: Any, root: Path, files: Iterable[str], *, stage: str) -> Entry:
    """Append a ``model.released`` event with the SHA-256 of each of ``files``.

    Parameters
    ----------
    ledger
        The project's :class:`visage_ml.privacy.ledger.Ledger` (``PrivacyCore(paths).ledger``).
    root
        The project root; ``files`` are relative to it (``models/embedder.onnx``).
    files
        The files the stage released.
    stage
        The stage's name (``export``, ``evaluate``).

    Returns
    -------
    Entry
        The appended, signed ledger entry.
    """
    digests = {rel: sha256_file(Path(root) / rel) for rel in files}
    return ledger.append(RELEASE_EVENT, None, {"stage": stage, "files": digests})


def _signed(entry: Entry, public_key: Ed25519PublicKey) -> bool:
    """Whether ``entry``'s hash covers its fields and ``public_key`` signed it."""
    h = entry_hash(
        entry.seq, entry.time, entry.type, entry.pid, entry.payload, entry.prev_hash, entry.actor
    )
    if h != entry.hash:
        return False
    try:
        public_key.verify(base64.b64decode(entry.sig, validate=True), h.encode("ascii"))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def latest_releases(ledger: Any) -> dict[str, Release]:
    """The latest release of every file the ledger names, each entry's signature verified
    with the ledger key in force at its position (the ledger's key chain).

    Raises
    ------
    ReleaseError
        A release entry does not verify (it was forged or altered).
    visage_ml.privacy.ledger.LedgerError
        The ledger's key history does not verify.
    """
    chain = None
    out: dict[str, Release] = {}
    for entry in ledger.entries(containing=f'"{RELEASE_EVENT}"'.encode()):
        if entry.type != RELEASE_EVENT:
            continue
        if chain is None:
            chain = ledger.key_chain()
        key = Ed25519PublicKey.from_public_bytes(chain.key_at(entry.seq))
        if not _signed(entry, key):
            raise ReleaseError(MSG_BAD_ENTRY.format(seq=entry.seq))
        files = entry.payload.get("files")
        stage = str(entry.payload.get("stage", "?"))
        if isinstance(files, Mapping):
            for rel, digest in files.items():
                out[str(rel)] = Release(str(rel), str(digest), entry.seq, stage)
    return out


def check_released(releases: Mapping[str, Release], file: str, sha256: str) -> Release:
    """The release of ``file``, which must have the hash ``sha256`` (of the bytes about to be used).

    Raises
    ------
    ReleaseError
        No release names ``file``, or the latest one recorded another hash.
    """
    fix = FIX_OF.get(file, "dvc repro")
    release = releases.get(file)
    if release is None:
        raise ReleaseError(MSG_NOT_RELEASED.format(file=file, fix=fix))
    if release.sha256 != sha256:
        raise ReleaseError(
            MSG_CHANGED.format(
                file=file,
                found=sha256[:16],
                seq=release.seq,
                stage=release.stage,
                expected=release.sha256[:16],
                fix=fix,
            )
        )
    return release


def released_digest(releases: Mapping[str, Release], file: str) -> str:
    """The released hash of ``file`` (to check the bytes when they are read).

    Raises
    ------
    ReleaseError
        No release names ``file``.
    """
    release = releases.get(file)
    if release is None:
        raise ReleaseError(MSG_NOT_RELEASED.format(file=file, fix=FIX_OF.get(file, "dvc repro")))
    return release.sha256


def verify_files(root: Path, releases: Mapping[str, Release], files: Iterable[str]) -> None:
    """Check the files on disk against their releases (a check before anything loads them).

    Raises
    ------
    ReleaseError
        A file missing from the releases, or changed since.
    FileNotFoundError
        A released file that is not there.
    """
    for rel in files:
        path = Path(root) / rel
        if not path.is_file():
            raise FileNotFoundError(
                f"{rel} is missing; run `{FIX_OF.get(rel, 'dvc repro')}` to produce it"
            )
        check_released(releases, rel, sha256_file(path))
